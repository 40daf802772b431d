import json
import random
from collections import Counter

import pytest

from dmao.realloc.planner import Plan, plan_event

TYPES = ("ff1", "mhsa", "conv", "ff2")


def random_case(rng: random.Random):
    scores, costs = {}, {}
    for layer in range(rng.randint(1, 4)):
        for kind in TYPES:
            groups = rng.choice([0, 1, 2, 4, 6, 8])
            if groups == 0:
                continue  # an emptied module is never given to the planner
            name = f"layers.{layer}.{kind}"
            # Coarse values make ties common; the planner must still be deterministic and consistent.
            scores[name] = [rng.choice([rng.random(), round(rng.random(), 1)]) for _ in range(groups)]
            costs[name] = float(rng.choice([100, 250, 400, 1000]) + rng.randint(0, 3))
    total = sum(len(v) * costs[n] for n, v in scores.items())
    return scores, costs, rng.uniform(0.02, 0.3) * total


def test_planner_properties_over_random_scores():
    rng = random.Random(0)
    checked = 0
    while checked < 400:
        scores, costs, budget = random_case(rng)
        if not scores:
            continue
        try:
            plan = plan_event(scores, costs, budget)
        except ValueError as error:  # budget too large for a tiny model: must say so, never silently unbalance
            assert "cannot balance" in str(error)
            continue
        checked += 1
        largest = max(costs.values())
        ranked = sorted((v, n, i) for n, values in scores.items() for i, v in enumerate(values))
        dropped = {(n, i) for n, m in plan.modules.items() for i in m.dropped}
        grown = {(n, i) for n, m in plan.modules.items() for i in m.grown}
        # Budget: dropped cost exceeds the budget by less than one group; grown exceeds dropped by at most one group.
        assert plan.dropped_cost == pytest.approx(sum(costs[n] for n, _ in dropped))
        assert plan.grown_cost == pytest.approx(sum(costs[n] for n, _ in grown))
        assert budget < plan.dropped_cost <= budget + largest
        assert plan.dropped_cost < plan.grown_cost <= plan.dropped_cost + largest
        # Dropped groups are the lowest-scored ones, grown the highest-scored of the rest.
        kept = [v for v, n, i in ranked if (n, i) not in dropped]
        untouched = [v for v, n, i in ranked if (n, i) not in dropped | grown]
        assert max(scores[n][i] for n, i in dropped) <= min(kept)
        assert min(scores[n][i] for n, i in grown) >= max(untouched, default=float("-inf"))
        assert not dropped & grown
        for name, module in plan.modules.items():
            count = Counter(module.selection)
            assert set(count.values()) <= {1, 2}, "a group grows at most once"
            assert sorted(i for i, c in count.items() if c == 2) == module.grown
            assert set(range(len(scores[name]))) - set(count) == set(module.dropped)
            # Originals keep their order; a copy sits right after its original.
            firsts = [i for k, i in enumerate(module.selection) if i not in module.selection[:k]]
            assert firsts == sorted(firsts)
            for k, i in enumerate(module.selection):
                if i in module.selection[:k]:
                    assert module.selection[k - 1] == i
            if not module.selection:
                assert not module.grown, "an emptied module does not grow"
            assert module.cost_after - module.cost_before == pytest.approx(
                costs[name] * (len(module.grown) - len(module.dropped))
            )


def test_planner_is_deterministic_with_ties():
    scores = {"a.ff1": [1.0, 1.0, 1.0], "a.mhsa": [1.0, 1.0], "b.ff1": [1.0, 1.0, 1.0]}
    costs = {"a.ff1": 10.0, "a.mhsa": 10.0, "b.ff1": 10.0}
    plans = [plan_event(scores, costs, budget=15.0).to_dict() for _ in range(3)]
    assert plans[0] == plans[1] == plans[2]
    # Ties break by the fixed group order: the first groups are dropped, the last ones grown.
    assert plans[0]["modules"]["a.ff1"]["dropped"] == [0, 1]
    assert plans[0]["modules"]["b.ff1"]["grown"] == [0, 1, 2]


def test_small_budget_drops_one_group_and_grows_past_it():
    scores = {"l.ff1": [0.1, 5.0], "l.mhsa": [3.0, 4.0, 6.0]}
    costs = {"l.ff1": 100.0, "l.mhsa": 40.0}
    plan = plan_event(scores, costs, budget=10.0)
    assert plan.modules["l.ff1"].dropped == [0]
    # 100 dropped; heads grow from the top: 6.0 (40), 4.0 (80), then ff1's 5.0 sits between them: 6, 5 -> 140 > 100.
    assert plan.modules["l.mhsa"].grown == [2] and plan.modules["l.ff1"].grown == [1]
    assert plan.modules["l.ff1"].selection == [1, 1]
    assert plan.modules["l.mhsa"].selection == [0, 1, 2, 2]


def test_per_type_normalisation_changes_the_ranking_as_intended():
    # Raw attention scores are ten times smaller than feed-forward ones, but within its type head 1 is strong.
    scores = {"l.ff1": [10.0, 12.0, 30.0, 8.0], "l.mhsa": [0.5, 3.3, 0.9, 1.3]}
    costs = {"l.ff1": 10.0, "l.mhsa": 10.0}
    raw = plan_event(scores, costs, budget=15.0)
    assert (raw.modules["l.mhsa"].dropped, raw.modules["l.mhsa"].grown) == ([0, 2], [])
    assert (raw.modules["l.ff1"].dropped, raw.modules["l.ff1"].grown) == ([], [0, 1, 2])
    normalised = plan_event(scores, costs, budget=15.0, normalize_per_type=True)
    # Type means ff1 15, mhsa 1.5: ff1 ranks [0.67, 0.8, 2.0, 0.53], mhsa [0.33, 2.2, 0.6, 0.87].
    assert normalised.type_scale == pytest.approx({"ff1": 15.0, "mhsa": 1.5})
    assert (normalised.modules["l.mhsa"].dropped, normalised.modules["l.mhsa"].grown) == ([0], [1, 3])
    assert (normalised.modules["l.ff1"].dropped, normalised.modules["l.ff1"].grown) == ([3], [2])
    assert normalised.modules["l.mhsa"].scores == scores["l.mhsa"]  # the plan keeps the raw scores


def test_plan_round_trips_through_json():
    plan = plan_event({"l.ff1": [0.1, 0.9, 0.5], "l.conv": [0.3, 0.7]}, {"l.ff1": 10.0, "l.conv": 7.0}, budget=5.0)
    restored = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert restored == plan
    assert restored.modules["l.ff1"].num_groups_after == len(plan.modules["l.ff1"].selection)


def test_planner_errors():
    with pytest.raises(ValueError, match="non-finite score"):
        plan_event({"l.ff1": [0.1, float("nan")]}, {"l.ff1": 1.0}, budget=1.0)
    with pytest.raises(ValueError, match="cannot balance"):
        plan_event({"l.ff1": [0.1, 0.2], "l.ff2": [0.3]}, {"l.ff1": 1.0, "l.ff2": 1.0}, budget=2.5)
    with pytest.raises(ValueError, match="budget must be positive"):
        plan_event({"l.ff1": [0.1]}, {"l.ff1": 1.0}, budget=0.0)
