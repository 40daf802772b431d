"""Batch normalisation over the channels of padded sequences, with statistics from the inside frames only."""

from __future__ import annotations

import torch
from torch import nn


class MaskedBatchNorm(nn.Module):
    """Per-channel batch norm for [B, T, C] sequences. In training, the mean and variance come from the frames inside
    the sequences only, so padding (and thus batch composition by length) does not shift them; the running statistics
    follow ``torch.nn.BatchNorm1d`` (exponential average with ``momentum``, unbiased variance). In eval mode the
    running statistics are used. Statistics are computed in float32, also under autocast.

    Every tensor here is per channel (``weight``, ``bias``, ``running_mean``, ``running_var``), so a channel slice can
    be cut out of all of them consistently.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"MaskedBatchNorm: num_channels must be positive, got {num_channels}")
        self.num_channels = num_channels
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        :param x: [B, T, C]
        :param mask: [B, T], True inside the sequence
        :return: [B, T, C]
        """
        x32 = x.float()
        if self.training:
            inside = mask.unsqueeze(-1)  # [B, T, 1]
            count = mask.sum().to(torch.float32)
            mean = torch.where(inside, x32, 0.0).sum(dim=(0, 1)) / count.clamp_min(1.0)  # [C]
            centred = torch.where(inside, x32 - mean, 0.0)  # [B, T, C]
            var = (centred * centred).sum(dim=(0, 1)) / count.clamp_min(1.0)  # [C], biased
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * count / (count - 1.0).clamp_min(1.0), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.weight * torch.rsqrt(var + self.eps)  # [C]
        y = torch.addcmul(self.bias - mean * scale, x32, scale)  # [B, T, C]: (x - mean) * scale + bias, one pass
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, momentum={self.momentum}"
