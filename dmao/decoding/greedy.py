"""Greedy (best-path) CTC decoding."""

from __future__ import annotations

import torch


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Token ids per utterance from ``log_probs [B, T, V]``: the arg-max label of each of the utterance's first
    ``lengths[b]`` frames, with repeated labels merged and blanks removed (a blank between two equal labels keeps
    both)."""
    if log_probs.dim() != 3:
        raise ValueError(f"greedy_decode: log_probs must be [B, T, V], got shape {tuple(log_probs.shape)}")
    batch, num_frames, vocab = log_probs.shape
    if lengths.shape != (batch,):
        raise ValueError(f"greedy_decode: lengths must be [B] = [{batch}], got shape {tuple(lengths.shape)}")
    if batch and not 0 <= int(lengths.min()) <= int(lengths.max()) <= num_frames:
        raise ValueError(f"greedy_decode: lengths must lie in [0, {num_frames}], got {lengths.tolist()}")
    if not 0 <= blank < vocab:
        raise ValueError(f"greedy_decode: blank {blank} outside vocabulary [0, {vocab})")
    best = log_probs.argmax(dim=-1)  # [B, T]
    new_label = torch.ones_like(best, dtype=torch.bool)  # [B, T]
    new_label[:, 1:] = best[:, 1:] != best[:, :-1]
    inside = torch.arange(num_frames, device=best.device)[None, :] < lengths.to(best.device)[:, None]  # [B, T]
    keep = (new_label & (best != blank) & inside).cpu()  # [B, T]
    best = best.cpu()
    return [best[b][keep[b]].tolist() for b in range(batch)]
