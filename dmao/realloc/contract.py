"""Check that a module's group axes describe its computation: resize copies of it and compare outputs.

Use it on your own resizable module (see docs/resizable.md); every value returned is a maximum absolute output
difference that is zero up to float rounding when the groups are independent (no normalisation across groups):

* ``identity``: keeping every group in place changes nothing;
* ``drop_vs_zeroed``: dropping a group equals zeroing its outgoing weights;
* ``copy_doubles``: a copied group adds its contribution once more: ``f(copy) - f = f - f(drop)``;
* ``split_preserves``: ``split`` growth (with its symmetry-breaking perturbation) keeps the output;
* ``empty_is_zero``: with zero groups the module outputs exactly zero.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dmao.realloc.executor import GrowConfig, resize_module
from dmao.realloc.groups import bind_axes, require_resizable
from dmao.resizable import group_indices


@torch.no_grad()
def contract_deviations(module: nn.Module, *inputs: torch.Tensor, group: int = 0) -> dict[str, float]:
    """Compare the eval-mode outputs of resized copies of ``module`` on ``inputs``; ``module`` is left untouched.

    :param group: the group that is dropped, zeroed, copied and split
    """
    name = type(module).__name__
    require_resizable(name, module)
    num_groups = module.num_groups
    if not 0 <= group < num_groups or num_groups < 2:
        raise ValueError(f"{name}: need at least 2 groups and 0 <= group < {num_groups}, got group {group}")
    if not any(bound.axis.outgoing for bound in bind_axes(name, module)):
        raise ValueError(f"{name}: no group axis is marked outgoing; split growth and these checks need one")

    def output(selection: list[int] | None = None, mode: str = "copy") -> torch.Tensor:
        candidate = copy.deepcopy(module).eval()
        if selection is not None:
            resize_module(name, candidate, selection, GrowConfig(mode=mode), torch.Generator().manual_seed(0))
        return candidate(*inputs)

    def deviation(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max())

    zeroed = copy.deepcopy(module).eval()
    for bound in bind_axes(name, zeroed):
        if bound.axis.outgoing:
            index = group_indices(bound.axis, num_groups, bound.unit, [group]).to(bound.tensor.device)
            bound.tensor.index_fill_(bound.dim, index, 0.0)

    everything = list(range(num_groups))
    without = [g for g in everything if g != group]
    with_copy = everything[: group + 1] + [group] + everything[group + 1 :]
    base, dropped, copied = output(), output(without), output(with_copy)
    empty = output([])
    return {
        "identity": deviation(output(everything), base),
        "drop_vs_zeroed": deviation(dropped, zeroed(*inputs)),
        "copy_doubles": deviation(copied - base, base - dropped),
        "split_preserves": deviation(output(with_copy, "split"), base),
        "empty_is_zero": deviation(empty, torch.zeros_like(empty)),
    }
