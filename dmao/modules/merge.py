"""The E-Branchformer merge of the attention and cgMLP branches (fixed size, never re-allocated)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dmao.modules.common import (
    check_odd_kernel,
    check_positive,
    check_probability,
    depthwise_over_time,
    dropout,
    zero_padding,
)


@dataclass
class MergeConfig:
    d_model: int
    kernel_size: int = 31
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_positive(self, "d_model")
        check_odd_kernel(self, "kernel_size")
        check_probability(self, "dropout")


class Merge(nn.Module):
    """concat(a, c) -> depthwise conv over time (+ the concatenation) -> Linear 2d->d -> dropout."""

    def __init__(self, cfg: MergeConfig) -> None:
        super().__init__()
        width = 2 * cfg.d_model
        self.depthwise = nn.Conv1d(width, width, cfg.kernel_size, padding=(cfg.kernel_size - 1) // 2, groups=width)
        self.linear = nn.Linear(width, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, attention: torch.Tensor, cgmlp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        :param attention: [B, T, F], the attention branch
        :param cgmlp: [B, T, F], the cgMLP branch
        :param mask: [B, T], True inside the sequence
        :return: [B, T, F]
        """
        both = zero_padding(torch.cat([attention, cgmlp], dim=-1), mask)  # [B, T, 2F]
        mixed = depthwise_over_time(self.depthwise, both) + both  # [B, T, 2F]
        return dropout(self.linear(mixed), self.dropout, self.training)  # [B, T, F]
