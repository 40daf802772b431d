"""The one-cycle learning-rate schedule of the RWTH setups: linear warm-up, linear decay, final anneal."""

from __future__ import annotations

import torch


def one_cycle_factor(
    step: int, total_steps: int, initial_ratio: float, warmup_fraction: float, decay_fraction: float, final_ratio: float
) -> float:
    """LR multiplier at ``step`` (peak = 1): ``initial_ratio`` → 1 over the warm-up, back to ``initial_ratio`` over the
    decay, then → ``final_ratio`` over the remaining steps."""
    warmup_end = warmup_fraction * total_steps
    decay_end = (warmup_fraction + decay_fraction) * total_steps
    if step < warmup_end:
        return initial_ratio + (1.0 - initial_ratio) * step / warmup_end
    if step < decay_end:
        return 1.0 - (1.0 - initial_ratio) * (step - warmup_end) / (decay_end - warmup_end)
    anneal = max(total_steps - decay_end, 1.0)
    return initial_ratio + (final_ratio - initial_ratio) * min((step - decay_end) / anneal, 1.0)


def one_cycle_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    initial_ratio: float,
    warmup_fraction: float,
    decay_fraction: float,
    final_ratio: float,
):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: one_cycle_factor(step, total_steps, initial_ratio, warmup_fraction, decay_fraction, final_ratio),
    )
