import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from dmao.analysis.stats import Summary, paired_bootstrap, paired_t_test, seeds_needed, verdict


def test_paired_t_test_matches_scipy_and_the_textbook_interval():
    arm = [27.74, 27.49, 28.37, 26.9, 27.8]
    reference = [27.69, 26.29, 27.27, 26.5, 27.0]
    test = paired_t_test(arm, reference)
    expected = scipy_stats.ttest_rel(arm, reference)
    assert test.p_value == pytest.approx(expected.pvalue)
    differences = np.subtract(arm, reference)
    half = scipy_stats.t.ppf(0.975, 4) * differences.std(ddof=1) / math.sqrt(5)
    assert (test.low, test.high) == pytest.approx((differences.mean() - half, differences.mean() + half))
    assert test.relative == pytest.approx(differences.mean() / np.mean(reference))
    assert test.relative_interval[0] == pytest.approx(test.low / np.mean(reference))


def test_a_paired_test_without_pairs_or_spread_decides_nothing_it_cannot():
    assert math.isnan(paired_t_test([1.0], [2.0]).low)
    assert verdict(*(lambda t: (t.low, t.high))(paired_t_test([1.0], [2.0])), "better") == "undecided"
    same = paired_t_test([3.0, 4.0], [3.0, 4.0])
    assert (same.low, same.high, same.p_value) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="paired"):
        paired_t_test([1.0, 2.0], [1.0])


def test_summary_is_the_mean_and_sample_std():
    summary = Summary.of([1.0, 2.0, 4.0])
    assert (summary.n, summary.mean) == (3, pytest.approx(7 / 3))
    assert summary.std == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert math.isnan(Summary.of([5.0]).std)


@pytest.mark.parametrize(("low", "high", "direction", "expected"), [
    (-0.5, -0.1, "better", "agree"),
    (0.1, 0.5, "better", "disagree"),
    (-0.1, 0.5, "better", "undecided"),
    (0.1, 0.5, "worse", "agree"),
    (-0.5, -0.1, "worse", "disagree"),
    (-0.1, 0.2, "same", "undecided"),  # no difference seen, but one as large as 0.2 is not ruled out
    (0.1, 0.2, "same", "disagree"),
    (0.0, 0.0, "same", "agree"),
    (math.nan, math.nan, "same", "undecided"),
])  # fmt: skip
def test_verdict(low, high, direction, expected):
    assert verdict(low, high, direction) == expected


def test_an_equivalence_check_agrees_only_inside_its_margin():
    assert verdict(-0.1, 0.2, "same", margin=0.25) == "agree"
    assert verdict(-0.1, 0.3, "same", margin=0.25) == "undecided"


def test_rounding_noise_is_no_spread_and_decides_nothing():
    # The same error-count difference over the same reference length in both pairs: the float rates differ by
    # ~1e-17, which must not become a zero-width interval with p ~ 0.
    test = paired_t_test([0.14, 0.13], [0.15, 0.14])
    assert test.mean_difference == pytest.approx(-0.01) and math.isnan(test.low) and math.isnan(test.p_value)
    assert verdict(test.low, test.high, "better") == "undecided"


def test_seeds_needed_is_the_smallest_n_that_meets_the_power_condition():
    def meets(n: int, ratio: float) -> bool:
        return scipy_stats.t.ppf(0.975, n - 1) + scipy_stats.t.ppf(0.8, n - 1) <= ratio * math.sqrt(n)

    for std, effect in ((1.0, 1.0), (1.4, 0.5), (0.3, 1.2)):
        n = seeds_needed(std, effect)
        assert meets(n, effect / std)
        assert n == 2 or not meets(n - 1, effect / std)
    # Close to the normal approximation ((1.96 + 0.84) / d)^2 for a small effect, a little above it (t, not z).
    assert 31 <= seeds_needed(1.0, 0.5) <= 36
    assert seeds_needed(1.0, 0.25) > seeds_needed(1.0, 0.5)
    assert seeds_needed(0.0, 1.0) is None and seeds_needed(1.0, 0.0) is None and seeds_needed(math.nan, 1.0) is None


def _loop_bootstrap(arm, reference, lengths, resamples, seed):
    """The definition, one resample at a time: draw utterance indices, pool the corpus rates, average over seeds."""
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(resamples):
        index = rng.integers(0, len(lengths), len(lengths))
        rates = (arm[:, index].sum(axis=1) - reference[:, index].sum(axis=1)) / lengths[index].sum()
        means.append(rates.mean())
    return np.quantile(means, [0.025, 0.975])


def test_paired_bootstrap_agrees_with_the_definition():
    rng = np.random.default_rng(3)
    lengths = rng.integers(5, 40, size=60)
    reference = rng.binomial(lengths, 0.2, size=(3, 60))
    arm = rng.binomial(lengths, 0.25, size=(3, 60))
    result = paired_bootstrap(arm, reference, lengths, resamples=20_000, seed=1)
    assert result.difference == pytest.approx(((arm - reference).sum(axis=1) / lengths.sum()).mean())
    expected = _loop_bootstrap(arm, reference, lengths, 20_000, seed=2)
    assert (result.low, result.high) == pytest.approx(tuple(expected), abs=0.004)
    assert result.low < result.difference < result.high
    assert (result.utterances, result.seeds) == (60, 3)


def test_paired_bootstrap_of_identical_arms_is_zero_and_pairing_matters():
    lengths = np.array([10, 20, 30, 40])
    errors = np.array([[1, 5, 2, 9]])
    same = paired_bootstrap(errors, errors, lengths)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    # One more error on every utterance: the paired difference is the same shape in every draw, a narrow interval.
    shifted = paired_bootstrap(errors + 1, errors, lengths)
    assert 4 / 100 * 0.5 < shifted.low <= shifted.high < 4 / 100 * 2.5
    with pytest.raises(ValueError, match="shapes"):
        paired_bootstrap(errors, errors[:, :3], lengths)
