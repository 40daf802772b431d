"""The Conformer block (positional information comes from the convolutions only) and its block type."""

from __future__ import annotations

import torch
from torch import nn

from dmao.encoders.common import EncoderConfig, feed_forward, self_attention
from dmao.encoders.layout import Layout
from dmao.encoders.registry import BlockType, register_block_type
from dmao.modules.convolution import Convolution, ConvolutionConfig

# The feed-forward modules add half their output (macaron style).
_RESIDUAL_SCALE = {"ff1": 0.5, "conv": 1.0, "mhsa": 1.0, "ff2": 0.5}


class ConformerBlock(nn.Module):
    """x += 1/2 FF1(x), then the middle modules in the configured order (x += M(x)), x += 1/2 FF2(x), LayerNorm.
    A module without groups is skipped: it contributes exactly zero."""

    def __init__(self, cfg: EncoderConfig, layout: Layout, counts: dict[str, int], reference: dict[str, int]) -> None:
        super().__init__()
        self.module_order = cfg.module_order
        self.ff1 = feed_forward(cfg, layout, counts["ff1"], reference["ff1"])
        self.mhsa = self_attention(cfg, layout, counts["mhsa"], reference["mhsa"])
        self.conv = Convolution(
            ConvolutionConfig(
                d_model=layout.d_model,
                group_size=layout.conv_group_size,
                kernel_size=cfg.conv_kernel_size,
                norm=cfg.conv_norm,
                dropout=cfg.dropout,
                **cfg.group_options(counts["conv"], reference["conv"]),
            )
        )
        self.ff2 = feed_forward(cfg, layout, counts["ff2"], reference["ff2"])
        self.final_norm = nn.LayerNorm(layout.d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        :param x: [B, T, F]
        :param mask: [B, T], True inside the sequence
        :return: [B, T, F]
        """
        for name in self.module_order:
            module = getattr(self, name)
            if module.num_groups > 0:
                x = x + _RESIDUAL_SCALE[name] * module(x, mask)  # [B, T, F]
        return self.final_norm(x)


def _check_module_order(cfg: EncoderConfig) -> None:
    order, modules = cfg.module_order, CONFORMER.module_names
    if sorted(order) != sorted(modules) or order[0] != "ff1" or order[-1] != "ff2":
        raise ValueError(
            f"EncoderConfig.module_order must order {sorted(modules)} with ff1 first and ff2 last, got {list(order)}"
        )


CONFORMER = register_block_type(
    BlockType(
        name="conformer",
        block=ConformerBlock,
        module_names=("ff1", "mhsa", "conv", "ff2"),
        channel_module="conv",
        conv_expansion=1,
        check_config=_check_module_order,
    )
)
