import json
import random
from collections import Counter

import pytest

from dmao.realloc.planner import Plan, largest_balanced_delta, plan_event

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


def test_ties_are_broken_by_a_seeded_permutation_not_by_module_order():
    # Every score equal: no information. Module order would drop the first layers and grow the last ones.
    names = [f"layers.{i}.{kind}" for i in range(6) for kind in TYPES]
    scores = {name: [1.0] * 4 for name in names}
    costs = dict.fromkeys(names, 10.0)
    plans = {seed: plan_event(scores, costs, budget=100.0, tie_seed=seed) for seed in range(6)}
    assert plan_event(scores, costs, budget=100.0, tie_seed=3) == plans[3]  # the same seed, the same plan
    dropped = {seed: {(n, i) for n, m in plan.modules.items() for i in m.dropped} for seed, plan in plans.items()}
    assert len({frozenset(d) for d in dropped.values()}) == 6  # each seed another choice
    for seed, plan in plans.items():
        first_layers = {n for n, _ in dropped[seed]} <= {f"layers.{i}.{k}" for i in range(3) for k in TYPES}
        assert not first_layers, f"seed {seed}: only the first layers were dropped"
        assert plan.tied_share == 1.0  # the whole ranking is one tie, and both cuts fall inside it


def test_tied_share_counts_only_ties_that_a_cut_falls_into():
    costs = {"l.ff1": 10.0, "l.ff2": 10.0}
    distinct = plan_event({"l.ff1": [0.1, 0.2, 0.3, 0.4], "l.ff2": [0.5, 0.6, 0.7, 0.8]}, costs, budget=15.0)
    assert distinct.tied_share == 0.0
    # The two lowest are dropped (cost 20 > 15) and tied with each other only: the cut is not inside the tie.
    below = plan_event({"l.ff1": [0.1, 0.1, 0.3, 0.4], "l.ff2": [0.5, 0.6, 0.7, 0.8]}, costs, budget=15.0)
    assert below.tied_share == 0.0
    # Three tied at the bottom, two of them dropped: which two was the tie-break's choice.
    straddling = plan_event({"l.ff1": [0.1, 0.1, 0.1, 0.4], "l.ff2": [0.5, 0.6, 0.7, 0.8]}, costs, budget=15.0)
    assert straddling.tied_share == pytest.approx(3 / 8)
    assert sorted(straddling.modules["l.ff1"].dropped) != [] and len(straddling.modules["l.ff1"].dropped) == 2


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
    normalised = plan_event(scores, costs, budget=15.0, normalize_as={})
    # Type means ff1 15, mhsa 1.5: ff1 ranks [0.67, 0.8, 2.0, 0.53], mhsa [0.33, 2.2, 0.6, 0.87].
    assert normalised.type_scale == pytest.approx({"ff1": 15.0, "mhsa": 1.5})
    assert (normalised.modules["l.mhsa"].dropped, normalised.modules["l.mhsa"].grown) == ([0], [1, 3])
    assert (normalised.modules["l.ff1"].dropped, normalised.modules["l.ff1"].grown) == ([3], [2])
    assert normalised.modules["l.mhsa"].scores == scores["l.mhsa"]  # the plan keeps the raw scores


def test_pooling_ff1_and_ff2_keeps_their_comparison():
    # FF2 is uniformly weaker than FF1 in the middle layer: the paper's "middle FF2 removed" pattern.
    scores = {
        "layers.0.ff1": [4.0, 4.2, 3.9, 4.1],
        "layers.0.ff2": [1.0, 1.1, 0.9, 1.2],
        "layers.0.mhsa": [0.3, 0.5, 0.4, 0.2],
    }
    costs = dict.fromkeys(scores, 10.0)
    pooled = plan_event(scores, costs, budget=25.0, normalize_as={"ff1": "ffn", "ff2": "ffn"})
    assert pooled.type_scale == pytest.approx({"ffn": 2.55, "mhsa": 0.35})
    assert sorted(pooled.modules["layers.0.ff2"].dropped) == [0, 1, 2]  # the weak FFN loses its groups
    assert not pooled.modules["layers.0.ff1"].dropped
    # Separately normalised, each FFN type averages 1: the FF1-vs-FF2 difference is gone from the ranking.
    separate = plan_event(scores, costs, budget=25.0, normalize_as={})
    assert separate.type_scale == pytest.approx({"ff1": 4.05, "ff2": 1.05, "mhsa": 0.35})
    assert len(separate.modules["layers.0.ff2"].dropped) < 3


def test_largest_balanced_delta_is_exact_for_the_worst_ranking():
    """Below the limit no ranking fails to balance; just above it the ranking that puts the dearest group at the
    drop cut does."""
    rng = random.Random(1)
    for _ in range(40):
        costs = {f"layers.{i}.{kind}": float(rng.choice([10, 20, 40])) for i in range(3) for kind in TYPES}
        costs["layers.0.ff1"] = 10.0  # enough small groups to fill any budget in steps of 10
        counts = {name: rng.randint(1, 6) for name in costs}
        counts["layers.0.ff1"] = 8
        if sum(costs[n] * counts[n] for n in costs) % 20:
            counts["layers.0.ff1"] += 1  # an even total: half of it is a sum of group costs
        total = sum(costs[n] * counts[n] for n in costs)
        dearest_name = max(costs, key=costs.get)
        dearest = costs[dearest_name]
        limit = largest_balanced_delta(total, dearest, num_events=1)
        for _ in range(20):  # random rankings just below the limit all balance
            scores = {n: [rng.random() for _ in range(counts[n])] for n in costs}
            plan_event(scores, costs, budget=(limit - 1e-9) * total)
        # Just above the limit: groups worth exactly limit * P ranked lowest, then the dearest group, which is
        # dropped last and brings the drop to P / 2; what is left cannot grow past it.
        others = sorted(
            ((costs[n], n, i) for n in costs for i in range(counts[n]) if (n, i) != (dearest_name, 0)), reverse=True
        )
        filled, lowest, rest = 0.0, [], []
        for cost, name, index in others:  # largest first, the 10s fill the remainder exactly
            if filled + cost <= limit * total + 1e-9:
                filled += cost
                lowest.append((name, index))
            else:
                rest.append((name, index))
        assert filled == pytest.approx(limit * total)
        scores = {n: [0.0] * counts[n] for n in costs}
        for position, (name, index) in enumerate(lowest + [(dearest_name, 0)] + rest):
            scores[name][index] = float(position)
        with pytest.raises(ValueError, match="cannot balance"):
            plan_event(scores, costs, budget=limit * total + 1e-6)


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
