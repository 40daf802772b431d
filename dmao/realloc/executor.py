"""Carry out a plan: physically resize the modules (no masks) and move the optimizer state along.

For every tensor named by a group axis the new tensor is ``old.index_select(dim, group_indices(selection))``; a
parameter is replaced by a new ``nn.Parameter`` object, a buffer by the new tensor, and then the module is told its
new group count. Grown copies are then shaped by the grow mode:

* ``copy``: an exact duplicate next to the original (the paper's default; the group's contribution doubles),
  optionally plus Gaussian noise on the copy relative to each tensor's spread (``copy_noise_relative_std``);
* ``random``: fresh values per the axis ``init`` rule;
* ``split``: original and copy each take half of the outgoing weights, plus a tiny perturbation that is added to one
  half and subtracted from the other: both compute the same activation, so the module output is unchanged, while
  their incoming weights now receive different gradients.

Independently of the mode, ``rebuilt_noise_variance`` adds absolute Gaussian noise N(0, variance) to every parameter
of every module the event changed, originals and module-wide parameters included (group gates excepted): the noise
of the authors' ablation (variance 0, 1e-4 and 0.1).

All noise comes from a generator passed in (seeded from the event), never the global RNG, so every DDP rank
resizes identically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from dmao.realloc.groups import BoundAxis, bind_axes
from dmao.realloc.optim_state import ParameterMove, move_optimizer_state
from dmao.realloc.planner import Plan
from dmao.resizable import group_indices

GrowMode = Literal["copy", "random", "split"]


@dataclass
class GrowConfig:
    mode: GrowMode = "copy"
    copy_noise_relative_std: float = 0.0
    """``copy``: std of Gaussian noise added to the copies only, relative to each tensor's std (0: exact copies)."""
    rebuilt_noise_variance: float = 0.0
    """Variance of absolute Gaussian noise added to all parameters of every module the event rebuilt, whatever the
    mode (the authors' ablation: 0, 1e-4, 0.1)."""
    split_noise: float = 0.01
    """``split``: std of the +/- perturbation of the halved outgoing weights, relative to that tensor's std."""
    copy_moments: bool = True
    """A copy starts with its original's optimizer moments (False: zeros). ``random`` growth always starts at 0."""

    def __post_init__(self) -> None:
        if self.mode not in ("copy", "random", "split"):
            raise ValueError(f"GrowConfig.mode must be copy, random or split, got {self.mode!r}")
        for name in ("copy_noise_relative_std", "rebuilt_noise_variance", "split_noise"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"GrowConfig.{name} must be a finite number >= 0, got {getattr(self, name)!r}")


@torch.no_grad()
def resize_module(
    name: str, module: nn.Module, selection: Sequence[int], cfg: GrowConfig, generator: torch.Generator
) -> list[ParameterMove]:
    """Resize one module to ``selection`` (old group indices in new order; a grown group's second occurrence is its
    copy) and call ``module.set_num_groups``. Returns how each axis parameter moved (for the optimizer state)."""
    old_groups, selection = module.num_groups, list(selection)
    first_slot: dict[int, int] = {}
    grown, original_slots, copy_slots = set(), [], []
    for slot, group in enumerate(selection):
        if not 0 <= group < old_groups:
            raise ValueError(f"module {name!r}: selection names group {group}, the module has {old_groups}")
        if group not in first_slot:
            first_slot[group] = slot
        elif group in grown:
            raise ValueError(f"module {name!r}: group {group} appears more than twice in the selection")
        else:
            grown.add(group)
            original_slots.append(first_slot[group])
            copy_slots.append(slot)
    new_groups = len(selection)
    fresh_state = cfg.mode == "random" or not cfg.copy_moments
    moves = []
    for bound in bind_axes(name, module):
        old = bound.tensor
        index = group_indices(bound.axis, old_groups, bound.unit, selection).to(old.device)
        new = old.detach().index_select(bound.dim, index)
        copies = group_indices(bound.axis, new_groups, bound.unit, copy_slots).to(old.device)
        if copy_slots:
            originals = group_indices(bound.axis, new_groups, bound.unit, original_slots).to(old.device)
            _shape_copies(new, old, bound, originals, copies, cfg, generator)
        if bound.is_parameter:
            param = nn.Parameter(new, requires_grad=old.requires_grad)
            setattr(bound.owner, bound.attr, param)
            fresh = copies if fresh_state else copies[:0]
            moves.append(ParameterMove(old, param, bound.dim, index, fresh))
        else:
            setattr(bound.owner, bound.attr, new)
    module.set_num_groups(new_groups)
    if cfg.rebuilt_noise_variance > 0:
        gate = getattr(module, "group_gate", None)
        std = cfg.rebuilt_noise_variance**0.5
        for param in module.parameters():
            if param is not gate:
                param.add_(_noise(tuple(param.shape), std, generator, param))
    return moves


def _shape_copies(
    new: torch.Tensor,
    old: torch.Tensor,
    bound: BoundAxis,
    originals: torch.Tensor,
    copies: torch.Tensor,
    cfg: GrowConfig,
    generator: torch.Generator,
) -> None:
    """Apply the grow mode to the copied entries of ``new`` (``originals[i]`` and ``copies[i]`` hold equal values)."""
    dim = bound.dim
    slice_shape = (*new.shape[:dim], copies.numel(), *new.shape[dim + 1 :])
    if cfg.mode == "random":
        init = bound.axis.init
        if init == "normal":
            fresh = _noise(slice_shape, _std(old), generator, new)
        else:
            fresh = torch.full(slice_shape, 1.0 if init == "ones" else 0.0, dtype=new.dtype, device=new.device)
        new.index_copy_(dim, copies, fresh)
    elif cfg.mode == "copy" and cfg.copy_noise_relative_std > 0 and bound.is_parameter:
        new.index_add_(dim, copies, _noise(slice_shape, cfg.copy_noise_relative_std * _std(old), generator, new))
    elif cfg.mode == "split" and bound.axis.outgoing:
        half = new.index_select(dim, originals) * 0.5
        perturbation = _noise(slice_shape, cfg.split_noise * _std(old), generator, new)
        new.index_copy_(dim, originals, half + perturbation)
        new.index_copy_(dim, copies, half - perturbation)


def _std(tensor: torch.Tensor) -> float:
    return float(tensor.float().std()) if tensor.numel() > 1 else 0.0


def _noise(shape: tuple[int, ...], std: float, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    # Drawn on the CPU from the event's generator, so that every device and rank gets the same numbers.
    return (torch.randn(shape, generator=generator) * std).to(device=like.device, dtype=like.dtype)


def execute_plan(
    modules: Mapping[str, nn.Module],
    plan: Plan,
    cfg: GrowConfig,
    optimizer: torch.optim.Optimizer | None = None,
    seed: int = 0,
) -> None:
    """Resize every module the plan changes and, if given, update ``optimizer`` in place: resized parameters are
    replaced (state gathered along), parameters a module removed (when emptied) leave it."""
    generator = torch.Generator().manual_seed(seed)
    moves: list[ParameterMove] = []
    removed: list[nn.Parameter] = []
    for name, module_plan in plan.modules.items():
        if not module_plan.changed:
            continue
        module = modules[name]
        if module.num_groups != module_plan.num_groups_before:
            raise ValueError(
                f"module {name!r} has {module.num_groups} groups, the plan was made for {module_plan.num_groups_before}"
            )
        before = list(module.parameters())
        module_moves = resize_module(name, module, module_plan.selection, cfg, generator)
        after = {id(p) for p in module.parameters()}
        successor = {id(move.old): move.new for move in module_moves}
        known = {id(p) for p in before} | {id(p) for p in successor.values()}
        if not after <= known:
            raise RuntimeError(f"module {name!r} created new parameters in set_num_groups; they cannot be optimized")
        moves += [move for move in module_moves if id(move.new) in after]
        removed += [p for p in before if id(successor.get(id(p), p)) not in after]
    if optimizer is not None:
        move_optimizer_state(optimizer, moves, removed)
