"""Plan one grow-and-drop event from group scores and costs: a pure function on plain data.

One global ranking over all groups of all modules. Drop from the lowest score upwards until the dropped cost exceeds
the budget; grow from the highest score downwards until the grown cost exceeds both the budget and the dropped cost,
so the total stays constant within one group. A group grows at most once per event, a dropped group does not grow,
and a module with zero groups is no candidate (it never regrows).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from dmao.realloc.groups import module_type


@dataclass
class ModulePlan:
    """What happens to one module's groups."""

    module_type: str
    group_cost: float
    """Parameters per group, the module-wide ones spread over the groups."""
    scores: list[float]
    """Smoothed score of every old group (before per-type normalisation)."""
    selection: list[int]
    """Old group indices in their new order; a grown group's copy sits right after its original."""
    dropped: list[int] = field(default_factory=list)
    grown: list[int] = field(default_factory=list)

    @property
    def num_groups_before(self) -> int:
        return len(self.scores)

    @property
    def num_groups_after(self) -> int:
        return len(self.selection)

    @property
    def changed(self) -> bool:
        return self.selection != list(range(self.num_groups_before))

    @property
    def cost_before(self) -> float:
        return self.num_groups_before * self.group_cost

    @property
    def cost_after(self) -> float:
        return self.num_groups_after * self.group_cost


@dataclass
class Plan:
    """A serialisable grow-and-drop decision for every module that has groups."""

    budget: float
    modules: dict[str, ModulePlan]
    type_scale: dict[str, float]
    """What each module type's scores were divided by for the ranking (1.0 without per-type normalisation)."""
    dropped_cost: float
    grown_cost: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        modules = {name: ModulePlan(**entry) for name, entry in data["modules"].items()}
        return cls(**{**data, "modules": modules})


def plan_event(
    scores: Mapping[str, list[float]],
    group_costs: Mapping[str, float],
    budget: float,
    normalize_per_type: bool = False,
) -> Plan:
    """Decide which groups to drop and grow.

    :param scores: per module (in a fixed order, the same on every rank), the smoothed score of each group; modules
        without groups are left out
    :param group_costs: per module, the cost of one of its groups
    :param budget: parameters to move in this event
    :param normalize_per_type: rank ``score / mean score of the module type`` instead of the raw score
    """
    if budget <= 0:
        raise ValueError(f"the event budget must be positive, got {budget}")
    type_scale = type_scales(scores, normalize_per_type)
    # One entry per group: (module name, group index), in the order of ranking_values().
    groups = [(name, index) for name, values in scores.items() for index in range(len(values))]
    if not groups:
        raise ValueError("no module has groups to re-allocate")
    rank_by = ranking_values(scores, type_scale)
    ascending = sorted(range(len(groups)), key=lambda k: (rank_by[k], k))  # ties: the fixed group order

    dropped, dropped_cost = set(), 0.0
    for k in ascending:
        if dropped_cost > budget:
            break
        dropped.add(k)
        dropped_cost += group_costs[groups[k][0]]
    grown, grown_cost, target = set(), 0.0, max(budget, dropped_cost)
    for k in reversed(ascending):
        if grown_cost > target:
            break
        if k not in dropped:
            grown.add(k)
            grown_cost += group_costs[groups[k][0]]
    if grown_cost <= target:
        raise ValueError(
            f"cannot balance the event: dropping {dropped_cost:.0f} parameters leaves only {grown_cost:.0f} to grow; "
            f"the budget {budget:.0f} is too large for this model (lower ScheduleConfig.delta)"
        )

    modules = {
        name: ModulePlan(module_type(name), float(group_costs[name]), [float(v) for v in values], selection=[])
        for name, values in scores.items()
    }
    for k, (name, index) in enumerate(groups):
        plan = modules[name]
        if k in dropped:
            plan.dropped.append(index)
            continue
        plan.selection.append(index)
        if k in grown:
            plan.grown.append(index)
            plan.selection.append(index)
    return Plan(budget, modules, type_scale, dropped_cost, grown_cost)


def type_scales(scores: Mapping[str, list[float]], normalize_per_type: bool) -> dict[str, float]:
    """Per module type, what its scores are divided by for the ranking: the mean over all its groups with
    ``normalize_per_type`` (1.0 for a type whose scores are all zero), else 1.0. Raises on a non-finite score."""
    per_type: dict[str, list[float]] = {}
    for name, values in scores.items():
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"module {name!r} has a non-finite score: {values}")
        per_type.setdefault(module_type(name), []).extend(values)
    if not normalize_per_type:
        return {kind: 1.0 for kind in per_type}
    return {kind: (sum(v) / len(v) if sum(v) > 0 else 1.0) for kind, v in per_type.items()}


def ranking_values(scores: Mapping[str, list[float]], type_scale: Mapping[str, float]) -> list[float]:
    """The value every group is ranked by, flattened module by module, group by group."""
    return [value / type_scale[module_type(name)] for name, values in scores.items() for value in values]
