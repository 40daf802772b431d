"""Resolve a resizable module's group axes to its actual tensors, and cost its groups.

Group cost: every axis tensor gives each group ``numel / num_groups`` entries, and the module-wide parameters are
spread evenly over the groups too, so one group costs exactly ``(parameters of the module) / num_groups``. Buffers
(running statistics) are not parameters and cost nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from dmao.resizable import GroupAxis, Resizable


def module_type(name: str) -> str:
    """The type of a module is the last component of its name: ``"layers.3.ff1"`` -> ``"ff1"``."""
    return name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class BoundAxis:
    """A :class:`GroupAxis` resolved against a module with ``num_groups`` groups."""

    axis: GroupAxis
    owner: nn.Module
    """The submodule that holds the tensor (``linear_in`` for ``"linear_in.weight"``)."""
    attr: str
    dim: int
    """``axis.dim`` made non-negative."""
    unit: int
    """Entries per group and block along ``dim``."""
    is_parameter: bool

    @property
    def tensor(self) -> torch.Tensor:
        return getattr(self.owner, self.attr)

    def grouped_view(self, values: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``values`` (shaped like the tensor) viewed as [..., blocks, num_groups, unit, ...] with the groups at dim
        ``self.dim + 1``, and the other dims (to reduce over to get one value per group)."""
        shape = values.shape
        view = values.reshape(*shape[: self.dim], self.axis.blocks, num_groups, self.unit, *shape[self.dim + 1 :])
        return view, tuple(d for d in range(view.dim()) if d != self.dim + 1)


def require_resizable(name: str, module: nn.Module) -> None:
    """Raise a ``TypeError`` naming the module unless it implements :class:`dmao.resizable.Resizable`."""
    if not isinstance(module, nn.Module) or not isinstance(module, Resizable):
        raise TypeError(
            f"module {name!r} ({type(module).__name__}) is not resizable: it needs num_groups, group_axes() and "
            f"set_num_groups() (see dmao.resizable)"
        )


def bind_axes(name: str, module: nn.Module) -> list[BoundAxis]:
    """Resolve every group axis of a module that has groups; errors name the module and the tensor."""
    num_groups = module.num_groups
    if num_groups < 1:
        raise ValueError(f"module {name!r} has no groups; its axes cannot be resolved")
    bound, seen = [], set()
    for axis in module.group_axes():
        where = f"module {name!r}, group axis {axis.tensor!r}"
        if axis.tensor in seen:
            raise ValueError(f"{where}: the tensor is named by two axes")
        seen.add(axis.tensor)
        owner_path, _, attr = axis.tensor.rpartition(".")
        try:
            owner = module.get_submodule(owner_path)
        except AttributeError:
            raise ValueError(f"{where}: no submodule {owner_path!r}") from None
        if isinstance(owner._parameters.get(attr), nn.Parameter):
            is_parameter = True
        elif isinstance(owner._buffers.get(attr), torch.Tensor):
            is_parameter = False
        else:
            raise ValueError(f"{where}: no parameter or buffer of that name")
        tensor = getattr(owner, attr)
        if not -tensor.dim() <= axis.dim < tensor.dim():
            raise ValueError(f"{where}: dim {axis.dim} is out of range for shape {tuple(tensor.shape)}")
        dim = axis.dim % tensor.dim()
        size, sections = tensor.shape[dim], axis.blocks * num_groups
        if size == 0 or size % sections:
            raise ValueError(
                f"{where}: {size} entries along dim {dim} do not split into {axis.blocks} block(s) x "
                f"{num_groups} groups"
            )
        bound.append(BoundAxis(axis, owner, attr, dim, size // sections, is_parameter))
    if not bound:
        raise ValueError(f"module {name!r} has {num_groups} groups but group_axes() names no tensor")
    return bound


def unique_parameters(modules: Mapping[str, nn.Module]) -> list[nn.Parameter]:
    """The parameters of all modules, each once (a parameter shared between modules is counted once)."""
    seen: dict[int, nn.Parameter] = {}
    for module in modules.values():
        for param in module.parameters():
            seen.setdefault(id(param), param)
    return list(seen.values())


def parameter_count(modules: Mapping[str, nn.Module]) -> int:
    """The re-allocatable parameter total of the given modules (buffers excluded)."""
    return sum(p.numel() for p in unique_parameters(modules))


def single_group_cost(module: nn.Module) -> float:
    """What one group would cost if the module were left with only it: its share of the axis parameters plus all
    module-wide ones. No group of the module can ever cost more (a group's share of the module-wide parameters grows
    as the module shrinks); 0 without groups."""
    if module.num_groups == 0:
        return 0.0
    axis_parameters = sum(b.tensor.numel() for b in bind_axes(type(module).__name__, module) if b.is_parameter)
    return axis_parameters / module.num_groups + sum(p.numel() for p in module.parameters()) - axis_parameters


def group_cost(module: nn.Module) -> float:
    """Parameters per group, the module-wide ones spread evenly (see the module docstring); 0 without groups."""
    if module.num_groups == 0:
        return 0.0
    return sum(p.numel() for p in module.parameters()) / module.num_groups
