"""Move an optimizer's state along with re-allocated parameters.

The optimizer keeps its ``param_groups`` (dicts and lists are edited in place, so LR schedulers keep working); in
them each old parameter is replaced by its resized successor and its per-element state (AdamW ``exp_avg``,
``exp_avg_sq``, ...: every tensor shaped like the parameter) is gathered with the same index map as the weights.
Scalars such as ``step`` are kept. Removed parameters leave the optimizer together with their state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class ParameterMove:
    """A parameter replaced by a resized one: ``new = old.index_select(dim, index)`` (plus growth)."""

    old: nn.Parameter
    new: nn.Parameter
    dim: int
    index: torch.Tensor
    """[new size along ``dim``] position in ``old`` of every entry of ``new``."""
    fresh: torch.Tensor
    """Positions along ``dim`` in ``new`` whose optimizer state starts at zero (grown entries without copied
    moments)."""


def move_optimizer_state(
    optimizer: torch.optim.Optimizer, moves: Iterable[ParameterMove], removed: Iterable[nn.Parameter]
) -> None:
    """Replace moved parameters in ``optimizer`` (state gathered along), drop removed ones (state dropped).
    Parameters the optimizer does not hold are ignored."""
    by_id = {id(move.old): move for move in moves}
    removed_ids = {id(param) for param in removed}
    for group in optimizer.param_groups:
        kept = []
        for param in group["params"]:
            if id(param) in removed_ids:
                optimizer.state.pop(param, None)
                continue
            move = by_id.get(id(param))
            if move is None:
                kept.append(param)
                continue
            state = optimizer.state.pop(param, None)
            if state:
                optimizer.state[move.new] = {key: _moved(key, value, move) for key, value in state.items()}
            kept.append(move.new)
        group["params"][:] = kept


def _moved(key: str, value: Any, move: ParameterMove) -> Any:
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    if value.shape != move.old.shape:
        raise ValueError(
            f"optimizer state {key!r} has shape {tuple(value.shape)} but its parameter {tuple(move.old.shape)}: only "
            f"state shaped like its parameter (or scalar) can follow a re-allocation"
        )
    moved = value.index_select(move.dim, move.index.to(value.device))
    if move.fresh.numel():
        moved.index_fill_(move.dim, move.fresh.to(value.device), 0)
    return moved
