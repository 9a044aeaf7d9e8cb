"""Paired significance tests: per example within one run, and per seed (or task) across runs.

Within a run (two models' predictions on the same test examples):
- ``mcnemar``: the exact McNemar test, a two-sided binomial test on the discordant pairs
  (n10 = A right and B wrong, n01 = the reverse): p = min(1, 2 P(X <= min(n10, n01))),
  X ~ Binomial(n10 + n01, 1/2) (``scipy.stats.binomtest(..., p=0.5)``); ``mid_p=True`` subtracts
  P(X = min(n10, n01)) once, i.e. counts the observed table with weight 1/2 in each tail.
- ``paired_permutation_test``: exchanges A's and B's prediction on each example with probability
  1/2 and compares |metric(A) - metric(B)| with the observed one; p = (1 + #{|T*| >= |T|}) / (R + 1).
  Examples with the same (label, pred A, pred B) are interchangeable, so per resample the number
  of exchanged examples of each type is drawn as Binomial(count, 1/2): the same law as flipping
  every example, at a cost per resample of the number of types instead of n. For accuracy the
  exact permutation distribution is McNemar's.

Across seeds or tasks (one score per seed for each of A and B, paired by seed), reported side by
side by ``compare_paired_scores``:
- ``paired_t_test``: t = mean(d) / (sd(d) / sqrt(n)), two-sided p from Student's t with n - 1 df
  (``scipy.stats.ttest_rel``), and the t interval mean(d) +- t_{n-1} sd / sqrt(n). When every
  difference is equal the t statistic is undefined; peftc returns p = 1 if they are all 0 and
  p = 0 otherwise (SciPy returns NaN for the former).
- ``wilcoxon_signed_rank``: Wilcoxon's test with SciPy's defaults (zero differences dropped,
  average ranks for ties, two-sided, no continuity correction, method "auto"): the exact null
  distribution when n <= 50 with no ties and no zeros; the exact distribution of the tied ranks
  (SciPy enumerates the same 2^n sign flips) when n <= 13 with ties or zeros; otherwise the
  normal approximation with the tie correction sum(t^3 - t) / 48 in the variance. The statistic is
  min(R+, R-), as SciPy reports it. Note: with 5 seeds the smallest two-sided p it can give is
  2 / 2^5 = 0.0625, so it can never reach 0.05; the t test is the one the verdicts use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._inputs import (as_classes, as_scores, check_confidence, check_count, check_n_classes, generator,
                      same_length)
from .distributions import binom_cdf, binom_pmf, normal_sf, signed_rank_null, t_isf, t_sf
from .metrics import PairedTable

_CHUNK_ELEMENTS = 1 << 22
WILCOXON_METHODS = ("auto", "exact", "approx")


@dataclass(frozen=True)
class SignificanceResult:
    """One test: the difference it is about (A - B), its statistic, the two-sided p-value, the sample
    size, how p was computed, and (for the t test) the confidence interval of the mean difference."""

    estimate: float
    statistic: float
    p_value: float
    n: int
    method: str
    ci: tuple[float, float] | None = None


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test: n10 = A right and B wrong, n01 = A wrong and B right, out of n examples;
    ``estimate`` = (n10 - n01) / n = accuracy(A) - accuracy(B)."""

    n10: int
    n01: int
    n: int
    estimate: float
    p_value: float
    method: str


def mcnemar(labels, pred_a, pred_b, *, mid_p: bool = False, n_classes: int | None = None) -> McNemarResult:
    """Exact (binomial) McNemar test of equal accuracy of two models on the same examples."""
    y = as_classes("labels", labels, predictions=False)
    pa = as_classes("pred_a", pred_a, predictions=True)
    pb = as_classes("pred_b", pred_b, predictions=True)
    n = same_length(labels=y, pred_a=pa, pred_b=pb)
    check_n_classes(n_classes, y, ("pred_a", pa), ("pred_b", pb))
    ca, cb = pa == y, pb == y
    n10, n01 = int(np.count_nonzero(ca & ~cb)), int(np.count_nonzero(~ca & cb))
    k, m = min(n10, n01), n10 + n01
    p = 2.0 * binom_cdf(k, m, 0.5)
    if mid_p:
        p -= binom_pmf(k, m, 0.5)
    return McNemarResult(n10, n01, n, (n10 - n01) / n, min(1.0, p), "exact mid-p" if mid_p else "exact")


def paired_permutation_test(labels, pred_a, pred_b, *, seed: int | np.random.Generator, metric: str = "accuracy",
                            n_resamples: int = 10_000, n_classes: int | None = None) -> SignificanceResult:
    """Two-sided paired permutation test of metric(A) = metric(B) (Monte Carlo, ``n_resamples`` draws)."""
    n_resamples = check_count("n_resamples", n_resamples, 1)
    table = PairedTable.build(labels, pred_a, pred_b, metric, n_classes)
    rng = generator(seed)
    full = table.full_confusion()
    observed = float(table.difference(full, table.n)[0])
    exchange = table.swapped - table.design  # what moving one example of a type from "kept" to "swapped" adds
    chunk = max(1, _CHUNK_ELEMENTS // table.n_types)
    tol = 1e-12 * abs(observed)  # mathematically equal statistics may differ in the last bits (macro-F1)
    extreme = 0
    for start in range(0, n_resamples, chunk):
        m = min(chunk, n_resamples - start)
        swaps = rng.binomial(table.counts, 0.5, size=(m, table.n_types)).astype(np.float64)
        stat = table.difference(full + swaps @ exchange, table.n)
        extreme += int(np.count_nonzero(np.abs(stat) >= abs(observed) - tol))
    p = (1 + extreme) / (n_resamples + 1)
    return SignificanceResult(observed, observed, p, table.n, f"paired permutation ({n_resamples} resamples)")


def _paired_differences(a, b) -> np.ndarray:
    a = as_scores("a", a, min_size=2, what="paired scores (seeds or tasks)")
    b = as_scores("b", b, min_size=2, what="paired scores (seeds or tasks)")
    same_length(a=a, b=b)
    return a - b


def paired_t_test(a, b, *, confidence: float = 0.95) -> SignificanceResult:
    """Paired t test of mean(a - b) = 0 over seeds (or tasks); ``ci`` is the t interval of the mean."""
    confidence = check_confidence(confidence)
    d = _paired_differences(a, b)
    n = d.size
    mean = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        t, p = (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
        ci = (mean, mean)
    else:
        t = mean / se
        p = min(1.0, 2.0 * t_sf(abs(t), n - 1))
        half = t_isf((1.0 - confidence) / 2.0, n - 1) * se
        ci = (mean - half, mean + half)
    return SignificanceResult(mean, t, p, n, "paired t", ci)


def average_ranks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ranks 1..n with ties given their average rank, sizes of the tie groups) of a 1-D array."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.concatenate([[True], xs[1:] != xs[:-1]]))
    sizes = np.diff(np.append(starts, x.size))
    group_rank = starts + (sizes + 1) / 2.0  # positions start..start+size-1, ranks +1, averaged
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(group_rank, sizes)
    return ranks, sizes


def wilcoxon_signed_rank(a, b, *, method: str = "auto", correction: bool = False) -> SignificanceResult:
    """Two-sided Wilcoxon signed-rank test of the paired differences a - b (see the module docstring).

    method: "auto" (SciPy's rule), "exact" (the exact distribution of the tied ranks, for any n),
    "approx" (normal approximation; ``correction`` applies a continuity correction of 1/2).
    """
    if method not in WILCOXON_METHODS:
        raise ValueError(f"method must be one of {WILCOXON_METHODS}, got {method!r}")
    d = _paired_differences(a, b)
    n = d.size
    nonzero = d[d != 0]
    count = nonzero.size
    estimate = float(np.median(d))
    if count == 0:
        return SignificanceResult(estimate, 0.0, 1.0, n, "no non-zero differences")
    ranks, ties = average_ranks(np.abs(nonzero))
    r_plus = float(ranks[nonzero > 0].sum())
    r_minus = float(ranks[nonzero < 0].sum())
    if method == "auto":
        clean = count == n and bool(np.all(ties == 1))  # no zeros, no ties
        method = "exact" if (n <= 50 and clean) or n <= 13 else "approx"
    if method == "exact":
        doubled = np.rint(2.0 * ranks).astype(np.int64)
        pmf = signed_rank_null(doubled)
        s = int(round(2.0 * r_plus))
        p = min(1.0, 2.0 * min(float(pmf[:s + 1].sum()), float(pmf[s:].sum())))
        label = "exact"
    else:
        mean = count * (count + 1) / 4.0
        var = count * (count + 1) * (2 * count + 1) / 24.0 - float(np.sum(ties**3 - ties)) / 48.0
        sd = math.sqrt(var)
        z = (r_plus - mean) / sd
        if correction:
            z -= math.copysign(0.5, z) / sd if z != 0 else 0.0
        p = min(1.0, 2.0 * normal_sf(abs(z)))
        label = "normal approximation" + (" with continuity correction" if correction else "")
    return SignificanceResult(estimate, min(r_plus, r_minus), p, n, f"Wilcoxon signed-rank, {label}")


@dataclass(frozen=True)
class PairedScoresComparison:
    """A vs B over paired seeds (or tasks): the mean difference, its t interval, and both tests."""

    diff: float
    ci: tuple[float, float]
    n: int
    t_test: SignificanceResult
    wilcoxon: SignificanceResult


def compare_paired_scores(a, b, *, confidence: float = 0.95) -> PairedScoresComparison:
    """Paired t test and Wilcoxon signed-rank test of per-seed (or per-task) scores, side by side."""
    t = paired_t_test(a, b, confidence=confidence)
    w = wilcoxon_signed_rank(a, b)
    assert t.ci is not None
    return PairedScoresComparison(t.estimate, t.ci, t.n, t, w)
