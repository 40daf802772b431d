"""Plan one grow-and-drop event from group scores and costs: a pure function on plain data.

One global ranking over all groups of all modules (ties broken by a seeded random permutation). Drop from the lowest
score upwards until the dropped cost exceeds the budget; grow from the highest score downwards until the grown cost
exceeds both the budget and the dropped cost, so the total stays constant within one group. A group grows at most
once per event, a dropped group does not grow, and a module with zero groups is no candidate (it never regrows).
"""

from __future__ import annotations

import math
import random
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
    """What each score type's scores were divided by for the ranking (1.0 without per-type normalisation)."""
    dropped_cost: float
    grown_cost: float
    tied_share: float = 0.0
    """Share of all groups in a tie that a cut falls inside (decided by the seeded tie-break, not by the scores)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        modules = {name: ModulePlan(**entry) for name, entry in data["modules"].items()}
        return cls(**{**data, "modules": modules})


TIE_WARNING_SHARE = 0.05
"""A plan whose cuts fall inside a tie of more than this share of all groups is reported (``Plan.tied_share``):
which of the tied groups go was decided by the seeded tie-break, not by their scores."""


def score_type(name: str, normalize_as: Mapping[str, str]) -> str:
    """The type a module's scores are normalised with: its module type, or what ``normalize_as`` maps it to."""
    kind = module_type(name)
    return normalize_as.get(kind, kind)


def plan_event(
    scores: Mapping[str, list[float]],
    group_costs: Mapping[str, float],
    budget: float,
    normalize_as: Mapping[str, str] | None = None,
    tie_seed: int = 0,
) -> Plan:
    """Decide which groups to drop and grow.

    :param scores: per module (in a fixed order, the same on every rank), the smoothed score of each group; modules
        without groups are left out
    :param group_costs: per module, the cost of one of its groups
    :param budget: parameters to move in this event
    :param normalize_as: ``None`` ranks the raw scores; a mapping ranks ``score / mean score of its type``, where a
        module's type is its last name component mapped through ``normalize_as`` (``{"ff1": "ffn", "ff2": "ffn"}``
        pools both feed-forward modules; unlisted types stand alone)
    :param tie_seed: seeds the permutation that orders groups of equal ranking value (pass the same on every rank)
    """
    if budget <= 0:
        raise ValueError(f"the event budget must be positive, got {budget}")
    type_scale = type_scales(scores, normalize_as)
    # One entry per group: (module name, group index), in the order of ranking_values().
    groups = [(name, index) for name, values in scores.items() for index in range(len(values))]
    if not groups:
        raise ValueError("no module has groups to re-allocate")
    rank_by = ranking_values(scores, type_scale, normalize_as)
    # Equal values are ordered by a seeded random permutation: module order would turn "no information" into a
    # structured layout (the first layers dropped, the last grown).
    tie_break = list(range(len(groups)))
    random.Random(tie_seed).shuffle(tie_break)
    ascending = sorted(range(len(groups)), key=lambda k: (rank_by[k], tie_break[k]))

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
    tied = _tied_at_cut(rank_by, dropped, ascending) | _tied_at_cut(
        rank_by, grown, [k for k in ascending if k not in dropped][::-1]
    )
    return Plan(budget, modules, type_scale, dropped_cost, grown_cost, tied_share=len(tied) / len(groups))


def _tied_at_cut(rank_by: list[float], chosen: set[int], order: list[int]) -> set[int]:
    """Groups whose value equals that of the last group chosen (``order`` walked from the start), when such a tie
    straddles the cut (some of it chosen, some not): the cut inside it was made by the tie-break alone."""
    last = order[len(chosen) - 1] if chosen else None
    if last is None:
        return set()
    tie = {k for k in order if rank_by[k] == rank_by[last]}
    return tie if tie - chosen and tie & chosen else set()


def type_scales(scores: Mapping[str, list[float]], normalize_as: Mapping[str, str] | None) -> dict[str, float]:
    """Per score type (see :func:`score_type`), what its scores are divided by for the ranking: the mean over all its
    groups when normalising (1.0 for a type whose scores are all zero); 1.0 per module type without normalisation
    (``normalize_as=None``). Raises on a non-finite score."""
    per_type: dict[str, list[float]] = {}
    for name, values in scores.items():
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"module {name!r} has a non-finite score: {values}")
        per_type.setdefault(score_type(name, normalize_as or {}), []).extend(values)
    if normalize_as is None:
        return {kind: 1.0 for kind in per_type}
    return {kind: (sum(v) / len(v) if sum(v) > 0 else 1.0) for kind, v in per_type.items()}


def ranking_values(
    scores: Mapping[str, list[float]], type_scale: Mapping[str, float], normalize_as: Mapping[str, str] | None
) -> list[float]:
    """The value every group is ranked by, flattened module by module, group by group."""
    return [
        value / type_scale[score_type(name, normalize_as or {})] for name, values in scores.items() for value in values
    ]


def largest_balanced_delta(total_cost: float, largest_group_cost: float, num_events: int) -> float:
    """The supremum of the deltas for which every event balances whatever the scores (an event with a larger delta
    fails for some ranking).

    An event with budget ``B = delta * P / N`` drops groups until their cost ``D`` exceeds ``B``, so
    ``B < D <= B + c`` with ``c`` the dearest group, and can grow at most what was not dropped, ``P - D``; it
    balances iff ``P - D > D``. So ``B + c < P / 2`` is enough for every ranking, and a ranking that puts the
    dearest group at the drop cut needs it: ``delta < N * (1/2 - c / P)``."""
    if total_cost <= 0:
        return 0.0
    return num_events * (0.5 - largest_group_cost / total_cost)
