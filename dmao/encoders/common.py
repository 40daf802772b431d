"""The encoder: its configuration and the stack of blocks of a registered block type, built from a layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dmao.encoders.layout import Layout
from dmao.encoders.registry import block_type as registered_block_type
from dmao.modules.attention import SelfAttention, SelfAttentionConfig
from dmao.modules.common import GroupedModule, check_odd_kernel, check_positive, check_probability
from dmao.modules.convolution import ConvNorm
from dmao.modules.feedforward import FeedForward, FeedForwardConfig


@dataclass
class EncoderConfig:
    """Sizes of the starting layout and everything about the blocks that the layout does not say."""

    block_type: str = "conformer"
    """A registered block type: ``conformer`` or ``ebranchformer`` (see :mod:`dmao.encoders.registry`)."""
    num_layers: int = 12
    d_model: int = 256
    head_dim: int = 64
    ff_groups: int = 4
    ff_expansion: int = 4
    """FFN hidden size = ``ff_expansion * d_model``."""
    conv_groups: int = 4
    conv_expansion: int | None = None
    """Conv channels (cgMLP half-width) = ``conv_expansion * d_model``; ``None``: the block type's default (1 for
    Conformer, 3 for E-Branchformer)."""
    conv_kernel_size: int = 31
    """Depthwise kernel of the conv module / the cgMLP."""
    conv_norm: ConvNorm = "batch"
    """Norm after the Conformer depthwise conv (``batch`` or ``layer``)."""
    module_order: tuple[str, ...] = ("ff1", "conv", "mhsa", "ff2")
    """Conformer block order (the paper's); ``("ff1", "mhsa", "conv", "ff2")`` is the classic one."""
    merge_kernel_size: int = 31
    """Depthwise kernel of the E-Branchformer merge."""
    dropout: float = 0.1
    """Dropout inside and at the output of every module."""
    att_dropout: float = 0.1
    """Dropout on attention weights."""
    group_gates: bool = False
    """Build learnable group gates (needed by the ``learnable`` score)."""
    dropout_scales_with_width: bool = True
    """Scale each module's dropout with its width relative to the starting layout (the authors did in all runs; a
    no-op while the layout stays the starting one, as in a baseline)."""
    max_dropout: float = 0.5

    def __post_init__(self) -> None:
        try:
            spec = registered_block_type(self.block_type)
        except ValueError as err:
            raise ValueError(f"EncoderConfig.block_type: {err}") from None
        check_positive(self, "num_layers", "d_model", "head_dim", "ff_groups", "ff_expansion", "conv_groups")
        if self.conv_expansion is None:
            self.conv_expansion = spec.conv_expansion
        check_positive(self, "conv_expansion")
        check_odd_kernel(self, "conv_kernel_size")
        check_odd_kernel(self, "merge_kernel_size")
        if self.conv_norm not in ("batch", "layer"):
            raise ValueError(f"EncoderConfig.conv_norm must be 'batch' or 'layer', got {self.conv_norm!r}")
        self.module_order = tuple(self.module_order)  # YAML gives a list
        if spec.check_config is not None:
            spec.check_config(self)
        check_probability(self, "dropout", "att_dropout", "max_dropout")
        try:
            self.starting_layout()
        except ValueError as err:
            raise ValueError(f"EncoderConfig: {err}") from None

    def starting_layout(self) -> Layout:
        """Every layer alike: the layout training starts from and the reference width for dropout scaling."""
        assert self.conv_expansion is not None  # set in __post_init__
        return Layout.uniform(
            self.block_type,
            self.num_layers,
            self.d_model,
            head_dim=self.head_dim,
            ff_groups=self.ff_groups,
            conv_groups=self.conv_groups,
            ff_expansion=self.ff_expansion,
            conv_expansion=self.conv_expansion,
        )

    def group_options(self, num_groups: int, reference_num_groups: int) -> dict[str, Any]:
        """The :class:`~dmao.modules.common.GroupedModuleConfig` fields of one module."""
        return {
            "num_groups": num_groups,
            "reference_num_groups": reference_num_groups,
            "group_gates": self.group_gates,
            "dropout_scales_with_width": self.dropout_scales_with_width,
            "max_dropout": self.max_dropout,
        }


def check_layout_matches(cfg: EncoderConfig, layout: Layout) -> None:
    """A layout must have the block type, layer count and group sizes of the configuration it is used with."""
    start = cfg.starting_layout()
    for name in ("block_type", "num_layers", "d_model", "head_dim", "ff_group_size", "conv_group_size"):
        if getattr(layout, name) != getattr(start, name):
            raise ValueError(
                f"layout.{name} = {getattr(layout, name)!r} does not match the encoder configuration "
                f"({getattr(start, name)!r})"
            )


def feed_forward(cfg: EncoderConfig, layout: Layout, num_groups: int, reference: int) -> FeedForward:
    return FeedForward(
        FeedForwardConfig(
            d_model=layout.d_model,
            group_size=layout.ff_group_size,
            dropout=cfg.dropout,
            **cfg.group_options(num_groups, reference),
        )
    )


def self_attention(cfg: EncoderConfig, layout: Layout, num_groups: int, reference: int) -> SelfAttention:
    return SelfAttention(
        SelfAttentionConfig(
            d_model=layout.d_model,
            head_dim=layout.head_dim,
            dropout=cfg.dropout,
            att_dropout=cfg.att_dropout,
            **cfg.group_options(num_groups, reference),
        )
    )


def starting_block(cfg: EncoderConfig) -> nn.Module:
    """One block of the starting layout, in which every layer is alike: what a layer costs, without building all of
    them (build it under ``torch.device("meta")`` to allocate nothing)."""
    start = cfg.starting_layout()
    return registered_block_type(cfg.block_type).block(cfg, start, start.layers[0], start.layers[0])


class Encoder(nn.Module):
    """A stack of blocks of the configured block type, built from a :class:`Layout`; each block holds its resizable
    modules as attributes named like the layout's modules (``ff1``, ``mhsa``, ``conv``/``cgmlp``, ``ff2``)."""

    def __init__(self, cfg: EncoderConfig, layout: Layout | None = None) -> None:
        super().__init__()
        self.block_type = cfg.block_type
        self.spec = registered_block_type(cfg.block_type)
        start = cfg.starting_layout()
        layout = start if layout is None else layout
        check_layout_matches(cfg, layout)
        self.d_model = layout.d_model
        self.head_dim = layout.head_dim
        self.ff_group_size = layout.ff_group_size
        self.conv_group_size = layout.conv_group_size
        self.layers = nn.ModuleList(
            self.spec.block(cfg, layout, counts, reference) for counts, reference in zip(layout.layers, start.layers)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        :param x: [B, T, F]
        :param mask: [B, T], True inside the sequence
        :return: [B, T, F]
        """
        for layer in self.layers:
            x = layer(x, mask)  # [B, T, F]
        return x

    def layout(self) -> Layout:
        """The layout of the current weights, read from the modules' group counts."""
        return Layout(
            block_type=self.block_type,
            d_model=self.d_model,
            head_dim=self.head_dim,
            ff_group_size=self.ff_group_size,
            conv_group_size=self.conv_group_size,
            layers=[
                {name: getattr(layer, name).num_groups for name in self.spec.module_names} for layer in self.layers
            ],
        )

    def resizable_modules(self) -> dict[str, GroupedModule]:
        """Every resizable module by its path in this encoder (``layers.{i}.{module}``), layer by layer."""
        return {
            f"layers.{i}.{name}": getattr(layer, name)
            for i, layer in enumerate(self.layers)
            for name in self.spec.module_names
        }
