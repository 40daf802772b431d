"""The Conformer feed-forward module, split into groups of hidden units."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dmao.modules.common import GroupedModule, GroupedModuleConfig, check_positive, check_probability, dropout
from dmao.resizable import GroupAxis


@dataclass(kw_only=True)
class FeedForwardConfig(GroupedModuleConfig):
    d_model: int
    group_size: int
    """Hidden units per group; the hidden size is ``num_groups * group_size``."""
    dropout: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "d_model", "group_size")
        check_probability(self, "dropout")


class FeedForward(GroupedModule):
    """Pre-LayerNorm -> Linear d->H -> SiLU -> dropout -> Linear H->d -> dropout.

    Group g owns hidden units ``g*U ... (g+1)*U``: those rows of ``linear_in.weight`` (scored), entries of
    ``linear_in.bias`` and columns of ``linear_out.weight``. The LayerNorm and ``linear_out.bias`` are module-wide.
    """

    def __init__(self, cfg: FeedForwardConfig) -> None:
        super().__init__(cfg, group_size=cfg.group_size)
        self.base_dropout = cfg.dropout
        if cfg.num_groups == 0:
            return
        hidden = cfg.num_groups * cfg.group_size
        self.norm = nn.LayerNorm(cfg.d_model)
        self.linear_in = nn.Linear(cfg.d_model, hidden)
        self.linear_out = nn.Linear(hidden, cfg.d_model)

    def weight_axes(self) -> list[GroupAxis]:
        return [
            GroupAxis("linear_in.weight", dim=0, primary=True),
            GroupAxis("linear_in.bias", dim=0),
            GroupAxis("linear_out.weight", dim=1, outgoing=True),
        ]

    def grouped_forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        p = self.dropout_rate(self.base_dropout)
        h = F.silu(self.linear_in(self.norm(x)))  # [B, T, H]
        h = dropout(self.apply_gates(h), p, self.training)  # [B, T, H]
        return dropout(self.linear_out(h), p, self.training)  # [B, T, F]
