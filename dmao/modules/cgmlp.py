"""The convolutional gating MLP (cgMLP) branch of the E-Branchformer, split into groups of channel pairs."""

from __future__ import annotations

from dataclasses import dataclass

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
from dmao.resizable import GroupAxis


@dataclass(kw_only=True)
class CgMLPConfig(GroupedModuleConfig):
    d_model: int
    group_size: int
    """Channels per group in each half; the first linear has ``H = 2 * num_groups * group_size`` outputs."""
    kernel_size: int = 31
    dropout: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "d_model", "group_size")
        check_odd_kernel(self, "kernel_size")
        check_probability(self, "dropout")


class CgMLP(GroupedModule):
    """LayerNorm -> Linear d->H -> GELU -> split into a content half and a gate half; the gate half goes through a
    LayerNorm and a depthwise conv over time -> content * gate -> dropout -> Linear H/2->d -> dropout.

    Group g owns channels ``i`` in ``g*U ... (g+1)*U`` of the halves: rows ``i`` and ``H/2+i`` of ``linear_in``
    (scored), channel ``i`` of the gate LayerNorm and of the depthwise conv, column ``i`` of ``linear_out``. The input
    LayerNorm and ``linear_out.bias`` are module-wide. The gate LayerNorm normalises across all groups' channels.
    """

    def __init__(self, cfg: CgMLPConfig) -> None:
        super().__init__(cfg, group_size=cfg.group_size)
        self.base_dropout = cfg.dropout
        if cfg.num_groups == 0:
            return
        half = cfg.num_groups * cfg.group_size
        self.norm = nn.LayerNorm(cfg.d_model)
        self.linear_in = nn.Linear(cfg.d_model, 2 * half)
        self.gate_norm = nn.LayerNorm(half)
        self.depthwise = nn.Conv1d(half, half, cfg.kernel_size, padding=(cfg.kernel_size - 1) // 2, groups=half)
        self.linear_out = nn.Linear(half, cfg.d_model)

    def weight_axes(self) -> list[GroupAxis]:
        return [
            GroupAxis("linear_in.weight", dim=0, blocks=2, primary=True),
            GroupAxis("linear_in.bias", dim=0, blocks=2),
            GroupAxis("gate_norm.weight", dim=0, init="ones"),
            GroupAxis("gate_norm.bias", dim=0, init="zeros"),
            GroupAxis("depthwise.weight", dim=0),
            GroupAxis("depthwise.bias", dim=0),
            GroupAxis("linear_out.weight", dim=1, outgoing=True),
        ]

    def grouped_forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        p = self.dropout_rate(self.base_dropout)
        content, gate = F.gelu(self.linear_in(self.norm(x))).chunk(2, dim=-1)  # each [B, T, H/2]
        gate = zero_padding(self.gate_norm(gate), mask)  # [B, T, H/2]
        gate = depthwise_over_time(self.depthwise, gate)  # [B, T, H/2]
        h = dropout(self.apply_gates(content * gate), p, self.training)  # [B, T, H/2]
        return dropout(self.linear_out(h), p, self.training)  # [B, T, F]
