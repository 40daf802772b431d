"""SpecAugment: time and frequency masks on log-mel features, in training only.

Random numbers come from the global torch generator of the features' device, so restoring the RNG states saved in
a checkpoint reproduces the masks exactly. Masked entries take the utterance's mean feature value: the features are
not normalised, so a constant such as 0 would be far outside their range (silence is about -23).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class SpecAugmentConfig:
    num_time_masks: int = 2
    max_time_mask_width: int = 40
    """Upper bound on one time mask's width, in frames."""
    max_time_mask_ratio: float = 0.2
    """Upper bound on the share of an utterance's frames the time masks cover together: one mask is at most
    ``max_time_mask_ratio * T / num_time_masks`` frames wide, so short utterances get narrow masks."""
    num_freq_masks: int = 2
    max_freq_mask_width: int = 15
    """Upper bound on one frequency mask's width, in bins."""

    def __post_init__(self) -> None:
        for name in ("num_time_masks", "max_time_mask_width", "num_freq_masks", "max_freq_mask_width"):
            if getattr(self, name) < 0:
                raise ValueError(f"SpecAugmentConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.max_time_mask_ratio <= 1.0:
            raise ValueError(f"SpecAugmentConfig.max_time_mask_ratio must be in [0, 1], got {self.max_time_mask_ratio}")


def _random_spans(num_masks: int, max_width: torch.Tensor, extent: torch.Tensor, size: int) -> torch.Tensor:
    """Union of ``num_masks`` random spans per row, ``[B, size]`` bool (True = masked).

    Row b draws each width uniformly from ``0 .. max_width[b]`` and its start uniformly from the positions where
    the span fits inside ``0 .. extent[b]``; ``max_width[b] <= extent[b]`` is assumed.
    """
    batch = extent.shape[0]
    device = extent.device
    widths = (torch.rand(batch, num_masks, device=device) * (max_width[:, None] + 1)).floor().long()  # [B, N]
    room = extent[:, None] - widths + 1  # [B, N], >= 1
    starts = (torch.rand(batch, num_masks, device=device) * room).floor().long()  # [B, N]
    position = torch.arange(size, device=device)[None, None, :]  # [1, 1, size]
    inside = (position >= starts[:, :, None]) & (position < (starts + widths)[:, :, None])  # [B, N, size]
    return inside.any(dim=1)  # [B, size]


class SpecAugment(nn.Module):
    """``[B, T, F]`` features with per-utterance frame counts -> masked features (unchanged in eval mode).

    Masks never reach past an utterance's own frames; frames beyond it are returned unchanged.
    """

    def __init__(self, cfg: SpecAugmentConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def draw_masks(
        self, feature_lens: torch.Tensor, num_frames: int, num_bins: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random ``time_mask [B, T]`` and ``freq_mask [B, F]`` (True = masked); time masks stay within each
        utterance's frames."""
        cfg = self.cfg
        lens = feature_lens.long()  # [B]
        share_bound = (cfg.max_time_mask_ratio * lens / max(cfg.num_time_masks, 1)).floor().long()  # [B]
        max_time_width = torch.clamp(share_bound, max=cfg.max_time_mask_width)  # [B]
        time_mask = _random_spans(cfg.num_time_masks, max_time_width, lens, num_frames)  # [B, T]
        num_bins_per_row = torch.full_like(lens, num_bins)  # [B]
        max_freq_width = torch.clamp(num_bins_per_row, max=cfg.max_freq_mask_width)  # [B]
        freq_mask = _random_spans(cfg.num_freq_masks, max_freq_width, num_bins_per_row, num_bins)  # [B, F]
        return time_mask, freq_mask

    def forward(self, features: torch.Tensor, feature_lens: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return features
        if features.dim() != 3:
            raise ValueError(f"SpecAugment: features must be [B, T, F], got shape {tuple(features.shape)}")
        _, num_frames, num_bins = features.shape
        inside = torch.arange(num_frames, device=features.device)[None, :] < feature_lens[:, None]  # [B, T]
        time_mask, freq_mask = self.draw_masks(feature_lens, num_frames, num_bins)
        masked = (time_mask[:, :, None] | freq_mask[:, None, :]) & inside[:, :, None]  # [B, T, F]
        valid_count = torch.clamp(feature_lens, min=1).to(features.dtype) * num_bins  # [B]
        mean = (features * inside[:, :, None]).sum(dim=(1, 2)) / valid_count  # [B]
        return torch.where(masked, mean[:, None, None], features)
