"""The Conformer convolution module, split into groups of channels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dmao.modules.common import (
    GroupedModule,
    GroupedModuleConfig,
    check_odd_kernel,
    check_positive,
    check_probability,
    depthwise_over_time,
    dropout,
    zero_padding,
)
from dmao.modules.normalization import MaskedBatchNorm
from dmao.resizable import GroupAxis

ConvNorm = Literal["batch", "layer"]


@dataclass(kw_only=True)
class ConvolutionConfig(GroupedModuleConfig):
    d_model: int
    group_size: int
    """Channels per group; the module has ``num_groups * group_size`` channels."""
    kernel_size: int = 31
    norm: ConvNorm = "batch"
    """``batch``: per-channel batch norm over the inside frames (groups independent); ``layer``: LayerNorm over the
    channels (normalisation spans the groups, its weight and bias are still per channel)."""
    dropout: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "d_model", "group_size")
        check_odd_kernel(self, "kernel_size")
        check_probability(self, "dropout")
        if self.norm not in ("batch", "layer"):
            raise ValueError(f"ConvolutionConfig.norm must be 'batch' or 'layer', got {self.norm!r}")


class Convolution(GroupedModule):
    """Pre-LayerNorm -> pointwise d->2C (value | gate) -> GLU -> depthwise conv over time -> norm -> SiLU ->
    pointwise C->d -> dropout.

    Group g owns channels ``g*U ... (g+1)*U``: rows ``i`` and ``C+i`` of ``pointwise_in`` (its value and gate rows;
    scored), the depthwise kernels and biases, the norm's per-channel tensors and columns of ``pointwise_out``. The
    input LayerNorm and ``pointwise_out.bias`` are module-wide.
    """

    def __init__(self, cfg: ConvolutionConfig) -> None:
        super().__init__(cfg, group_size=cfg.group_size)
        self.base_dropout = cfg.dropout
        self.norm_type = cfg.norm
        if cfg.num_groups == 0:
            return
        channels = cfg.num_groups * cfg.group_size
        self.norm_in = nn.LayerNorm(cfg.d_model)
        self.pointwise_in = nn.Linear(cfg.d_model, 2 * channels)
        self.depthwise = nn.Conv1d(
            channels, channels, cfg.kernel_size, padding=(cfg.kernel_size - 1) // 2, groups=channels
        )
        self.norm: MaskedBatchNorm | nn.LayerNorm = (
            MaskedBatchNorm(channels) if cfg.norm == "batch" else nn.LayerNorm(channels)
        )
        self.pointwise_out = nn.Linear(channels, cfg.d_model)

    def weight_axes(self) -> list[GroupAxis]:
        axes = [
            GroupAxis("pointwise_in.weight", dim=0, blocks=2, primary=True),
            GroupAxis("pointwise_in.bias", dim=0, blocks=2),
            GroupAxis("depthwise.weight", dim=0),
            GroupAxis("depthwise.bias", dim=0),
            GroupAxis("norm.weight", dim=0, init="ones"),
            GroupAxis("norm.bias", dim=0, init="zeros"),
        ]
        if self.norm_type == "batch":
            axes += [
                GroupAxis("norm.running_mean", dim=0, init="zeros"),
                GroupAxis("norm.running_var", dim=0, init="ones"),
            ]
        return axes + [GroupAxis("pointwise_out.weight", dim=1, outgoing=True)]

    def grouped_forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.pointwise_in(self.norm_in(x)), dim=-1)  # [B, T, C]
        h = depthwise_over_time(self.depthwise, zero_padding(h, mask))  # [B, T, C]
        h = self.norm(h, mask) if isinstance(self.norm, MaskedBatchNorm) else self.norm(h)  # [B, T, C]
        h = self.apply_gates(F.silu(h))  # [B, T, C]
        return dropout(self.pointwise_out(h), self.dropout_rate(self.base_dropout), self.training)
