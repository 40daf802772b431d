"""Statistics that tell an effect from noise when two training set-ups are compared.

Two sources of noise, two views:

* **Seeds** (training noise: initialisation, data order, dropout). Cells of the same seed are paired; the paired
  t-test over seeds and its 95 % interval of the mean difference decide a claim.
* **Utterances** (the evaluation set is a sample too). A paired bootstrap resamples utterances (the same draw for
  both arms and for every seed) and recomputes the corpus error rates: the interval of the difference that another
  evaluation set of the same size could give, with the trained models held fixed. It cannot see the seed noise, so
  it is the second view, never the decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

Direction = Literal["better", "worse", "same"]


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (n - 1) of values over seeds."""

    n: int
    mean: float
    std: float

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        array = np.asarray(values, dtype=float)
        return cls(len(array), float(array.mean()) if len(array) else math.nan,
                   float(array.std(ddof=1)) if len(array) > 1 else math.nan)  # fmt: skip


@dataclass(frozen=True)
class PairedTest:
    """Arm minus reference over paired seeds: the mean difference, its t-interval and the two-sided p-value."""

    n: int
    mean_difference: float
    std_difference: float
    low: float
    high: float
    p_value: float
    reference_mean: float

    @property
    def relative(self) -> float:
        """The mean difference relative to the reference's mean (-0.06: 6 % lower error than the reference)."""
        return self.mean_difference / self.reference_mean if self.reference_mean else math.nan

    @property
    def relative_interval(self) -> tuple[float, float]:
        """The interval relative to the reference's mean (the mean held fixed: a first-order interval)."""
        if not self.reference_mean:
            return math.nan, math.nan
        return self.low / self.reference_mean, self.high / self.reference_mean


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, sample std, and the t-interval of the mean; the interval is NaN with fewer than two values, or when
    values that differ only by rounding leave no spread (nothing to base an interval on), except that values all
    exactly zero give [0, 0] (e.g. two arms that train bit for bit alike)."""
    array = np.round(np.asarray(values, dtype=float), 12)  # rates of equal error counts differ by float rounding
    n = len(array)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(array.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(array.std(ddof=1))
    if std == 0:
        return (mean, 0.0, 0.0, 0.0) if mean == 0 else (mean, 0.0, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def paired_t_test(arm: list[float], reference: list[float], confidence: float = 0.95) -> PairedTest:
    """The paired t-test of ``arm - reference`` (one value per seed, same order). With fewer than two pairs, or a
    difference with no spread, the interval is undefined (NaN) and nothing can be decided; identical pairs give a
    zero difference with the interval [0, 0]."""
    if len(arm) != len(reference):
        raise ValueError(f"paired test: {len(arm)} values against {len(reference)}")
    differences = np.asarray(arm, dtype=float) - np.asarray(reference, dtype=float)
    reference_mean = float(np.mean(reference)) if len(reference) else math.nan
    mean, std, low, high = mean_interval(list(differences), confidence)
    if std > 0:
        p_value = float(2 * stats.t.sf(abs(mean) / (std / math.sqrt(len(differences))), len(differences) - 1))
    else:
        p_value = 1.0 if (std == 0 and mean == 0) else math.nan
    return PairedTest(len(differences), mean, std, low, high, p_value, reference_mean)


def seeds_needed(std_difference: float, effect: float, confidence: float = 0.95, power: float = 0.8) -> int | None:
    """Seeds per arm (pairs) for a paired t-test at ``confidence`` to detect a true mean difference ``effect`` with
    probability ``power``, at the observed spread of the differences; None when it cannot be estimated (no spread
    measured, or no effect). The smallest n with t(1 - a/2, n-1) + t(power, n-1) <= |effect| sqrt(n) / std."""
    if not (std_difference > 0 and effect) or math.isnan(std_difference) or math.isnan(effect):
        return None
    ratio = abs(effect) / std_difference
    # t quantiles exceed the normal ones, so the normal approximation is a lower bound to count up from.
    normal = (stats.norm.ppf(0.5 + confidence / 2) + stats.norm.ppf(power)) / ratio
    n = max(2, math.floor(normal**2))
    while stats.t.ppf(0.5 + confidence / 2, n - 1) + stats.t.ppf(power, n - 1) > ratio * math.sqrt(n):
        n += 1
    return n


@dataclass(frozen=True)
class BootstrapInterval:
    """The paired bootstrap over utterances of (arm - reference) corpus error rate, averaged over seeds."""

    difference: float
    low: float
    high: float
    utterances: int
    seeds: int
    resamples: int


def paired_bootstrap(
    arm_errors: np.ndarray,
    reference_errors: np.ndarray,
    lengths: np.ndarray,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """``arm_errors`` and ``reference_errors``: [S, U] error counts per seed pair and utterance (the same utterances
    in the same order); ``lengths``: [U] reference lengths. Each resample draws U utterances with replacement, the
    same draw for both arms and every seed, and takes the mean over seeds of the corpus-rate difference."""
    arm_errors, reference_errors = np.atleast_2d(arm_errors), np.atleast_2d(reference_errors)
    lengths = np.asarray(lengths, dtype=float)
    if arm_errors.shape != reference_errors.shape or arm_errors.shape[1] != lengths.shape[0]:
        raise ValueError(f"paired bootstrap: shapes {arm_errors.shape}, {reference_errors.shape}, {lengths.shape}")
    seeds, utterances = arm_errors.shape
    if utterances == 0 or lengths.sum() == 0:
        raise ValueError("paired bootstrap: no utterance (or no reference length) to resample")
    difference = (arm_errors - reference_errors).astype(float)  # [S, U]
    observed = float((difference.sum(axis=1) / lengths.sum()).mean())
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, 1000):  # in chunks: [R, U] weights of a large set would not fit in memory
        count = min(1000, resamples - start)
        weights = rng.multinomial(utterances, np.full(utterances, 1.0 / utterances), size=count)  # [R, U]
        totals = (weights @ lengths).astype(float)  # [R]
        totals[totals == 0] = np.nan  # a draw of only empty references has no rate
        means.append(np.nanmean((weights @ difference.T) / totals[:, None], axis=1))  # [R] over the seeds
    means = np.concatenate(means)
    tail = (1 - confidence) / 2
    low, high = np.nanquantile(means, [tail, 1 - tail])
    return BootstrapInterval(observed, float(low), float(high), utterances, seeds, resamples)


Verdict = Literal["agree", "disagree", "undecided"]


def verdict(low: float, high: float, direction: Direction, margin: float = 0.0) -> Verdict:
    """What an interval of (arm - reference) error rate says of a claim. better/worse: agree when the whole
    interval lies on the claimed side of zero, disagree when it lies on the other side, else undecided. same (an
    equivalence check): agree when the whole interval lies within +-``margin``, disagree when it excludes zero, else
    undecided (a wide interval around zero shows no difference, but cannot rule one out)."""
    if math.isnan(low) or math.isnan(high):
        return "undecided"
    if direction == "same":
        if -margin <= low and high <= margin:
            return "agree"
        return "disagree" if low > 0 or high < 0 else "undecided"
    claimed_below = direction == "better"
    if high < 0:
        return "agree" if claimed_below else "disagree"
    if low > 0:
        return "disagree" if claimed_below else "agree"
    return "undecided"
