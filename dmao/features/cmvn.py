"""Per-utterance mean and variance normalisation of features (each bin over the utterance's own frames)."""

from __future__ import annotations

import torch


def utterance_normalize(features: torch.Tensor, feature_lens: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """
    :param features: [B, T, F]
    :param feature_lens: [B] valid frames per utterance
    :return: [B, T, F], zero mean and unit variance per utterance and bin inside each utterance; padding stays 0
    """
    inside = (torch.arange(features.shape[1], device=features.device) < feature_lens[:, None])[:, :, None]  # [B,T,1]
    count = feature_lens.clamp(min=1).to(features.dtype)[:, None, None]  # [B, 1, 1]
    mean = (features * inside).sum(dim=1, keepdim=True) / count  # [B, 1, F]
    centred = (features - mean) * inside  # [B, T, F]
    var = centred.square().sum(dim=1, keepdim=True) / count  # [B, 1, F]
    return centred * torch.rsqrt(var + eps)
