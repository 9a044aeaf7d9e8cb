"""McNemar, the paired permutation test, paired t and Wilcoxon: hand-made exact cases and SciPy."""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest

from peftc.evaluation import (compare_paired_scores, mcnemar, paired_permutation_test, paired_t_test,
                              wilcoxon_signed_rank)

scipy_stats = pytest.importorskip("scipy.stats")


def discordant(n10: int, n01: int, concordant: int = 10):
    """Labels and predictions with n10 examples only A gets right and n01 only B gets right."""
    n = n10 + n01 + concordant
    y = np.zeros(n, dtype=np.int64)
    pa = np.zeros(n, dtype=np.int64)
    pb = np.zeros(n, dtype=np.int64)
    pb[:n10] = 1
    pa[n10:n10 + n01] = 1
    pa[n - concordant // 2:] = 2  # half the concordant pairs both wrong
    pb[n - concordant // 2:] = 2
    return y, pa, pb


def test_mcnemar_exact_two_sided_by_hand():
    y, pa, pb = discordant(1, 9)
    res = mcnemar(y, pa, pb)
    assert (res.n10, res.n01, res.n) == (1, 9, 20)
    # 2 P(X <= 1 | n = 10, 1/2) = 2 (1 + 10) / 1024
    assert res.p_value == pytest.approx(22 / 1024, rel=1e-14)
    assert res.estimate == (1 - 9) / 20
    assert mcnemar(y, pb, pa).p_value == res.p_value  # symmetric in A and B


def test_mcnemar_mid_p_by_hand():
    y, pa, pb = discordant(9, 1)
    res = mcnemar(y, pa, pb, mid_p=True)
    # 2 P(X <= 1) - P(X = 1) = (22 - 10) / 1024
    assert res.p_value == pytest.approx(12 / 1024, rel=1e-14)
    assert res.method == "exact mid-p"


@pytest.mark.parametrize("n10,n01", [(0, 0), (5, 5), (0, 7), (13, 40), (120, 95), (3, 0)])
def test_mcnemar_matches_scipy_binomtest(n10, n01):
    y, pa, pb = discordant(n10, n01)
    expected = 1.0 if n10 + n01 == 0 else scipy_stats.binomtest(n10, n10 + n01, 0.5).pvalue
    assert mcnemar(y, pa, pb).p_value == pytest.approx(expected, rel=1e-12)


def test_mcnemar_balanced_table_has_p_one_for_both_variants():
    y, pa, pb = discordant(6, 6)
    assert mcnemar(y, pa, pb).p_value == 1.0
    assert mcnemar(y, pa, pb, mid_p=True).p_value == pytest.approx(1.0, abs=1e-14)


def two_models(n: int, k: int, acc_a: float, acc_b: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    pa = np.where(rng.random(n) < acc_a, y, rng.integers(0, k, n))
    pb = np.where(rng.random(n) < acc_b, y, rng.integers(0, k, n))
    return y, pa, pb


def test_permutation_test_on_accuracy_converges_to_mcnemar():
    # exchanging A and B on an example flips only discordant pairs, so the exact permutation
    # distribution of the accuracy difference is McNemar's binomial
    y, pa, pb = two_models(400, 3, 0.7, 0.63)
    exact = mcnemar(y, pa, pb).p_value
    res = paired_permutation_test(y, pa, pb, seed=0, n_resamples=40_000)
    assert res.estimate == mcnemar(y, pa, pb).estimate
    assert abs(res.p_value - exact) < 4 * math.sqrt(exact * (1 - exact) / 40_000), (res.p_value, exact)


def test_permutation_test_on_macro_f1_matches_scipy_within_monte_carlo_error():
    y, pa, pb = two_models(300, 3, 0.72, 0.62, seed=3)

    def f1(p):
        classes = np.union1d(np.unique(y), np.unique(p))
        out = np.zeros(p.shape[:-1])
        for k in classes:
            tp = np.sum((y == k) & (p == k), axis=-1)
            out += 2.0 * tp / (np.sum(y == k) + np.sum(p == k, axis=-1))
        return out / classes.size

    ref = scipy_stats.permutation_test((pa, pb), lambda a, b, axis=-1: f1(a) - f1(b), permutation_type="samples",
                                       vectorized=True, n_resamples=4000, rng=np.random.default_rng(1))
    res = paired_permutation_test(y, pa, pb, seed=0, n_resamples=20_000, metric="macro_f1")
    assert res.estimate == pytest.approx(ref.statistic, abs=1e-15)
    tol = 4 * math.sqrt(ref.pvalue * (1 - ref.pvalue) * (1 / 4000 + 1 / 20_000))
    assert abs(res.p_value - ref.pvalue) < tol, (res.p_value, ref.pvalue)


def test_permutation_test_of_identical_models_gives_p_one():
    y, pa, _ = two_models(50, 3, 0.6, 0.6)
    assert paired_permutation_test(y, pa, pa, seed=0, n_resamples=99).p_value == 1.0


def test_permutation_test_p_never_below_one_over_resamples_plus_one():
    y = np.zeros(60, dtype=np.int64)
    res = paired_permutation_test(y, y, np.ones(60, dtype=np.int64), seed=0, n_resamples=199)
    assert res.p_value == pytest.approx(1 / 200)


def seed_pairs():
    rng = np.random.default_rng(42)
    cases = [
        (np.array([0.81, 0.79, 0.84, 0.80, 0.83]), np.array([0.78, 0.80, 0.79, 0.77, 0.80])),
        (rng.normal(size=12), rng.normal(size=12) + 0.4),
        (rng.normal(size=2), rng.normal(size=2)),
        (rng.normal(size=40), rng.normal(size=40) - 0.1),
    ]
    return cases


@pytest.mark.parametrize("case", range(4))
def test_paired_t_test_matches_scipy_ttest_rel(case):
    a, b = seed_pairs()[case]
    ref = scipy_stats.ttest_rel(a, b)
    res = paired_t_test(a, b)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert res.ci == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert res.estimate == pytest.approx(np.mean(a - b), rel=1e-14) and res.n == a.size


def test_paired_t_test_by_hand():
    # d = (1, 2, 3): mean 2, sd 1, t = 2 sqrt(3), df 2: two-sided p = 1 - t / sqrt(t^2 + 2) (closed form for df 2)
    res = paired_t_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    t = 2 * math.sqrt(3)
    assert res.statistic == pytest.approx(t, rel=1e-14)
    assert res.p_value == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-12)


def test_paired_t_test_with_equal_differences():
    assert paired_t_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).p_value == 1.0
    res = paired_t_test([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])
    assert res.p_value == 0.0 and res.statistic == math.inf and res.ci == (0.5, 0.5)


def wilcoxon_cases():
    rng = np.random.default_rng(7)
    out = []
    for n in (2, 3, 5, 8, 13, 14, 25, 50, 51, 90):
        out.append((f"continuous n={n}", rng.normal(size=n), rng.normal(size=n) + 0.3))
        out.append((f"ties+zeros n={n}", rng.integers(0, 5, n).astype(float), rng.integers(0, 5, n).astype(float)))
        out.append((f"ties n={n}", np.round(rng.normal(size=n), 1) + 0.05, np.round(rng.normal(size=n), 1)))
    return out


@pytest.mark.parametrize("name,a,b", wilcoxon_cases(), ids=[c[0] for c in wilcoxon_cases()])
def test_wilcoxon_auto_matches_scipy_defaults(name, a, b):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = scipy_stats.wilcoxon(a, b)
    res = wilcoxon_signed_rank(a, b)
    if np.all(a == b):
        assert res.p_value == 1.0
        return
    assert res.statistic == ref.statistic
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-12), res.method


@pytest.mark.parametrize("correction", [False, True])
def test_wilcoxon_normal_approximation_matches_scipy(correction):
    for _, a, b in wilcoxon_cases():
        if np.all(a == b):
            continue
        ref = scipy_stats.wilcoxon(a, b, method="asymptotic", correction=correction)
        res = wilcoxon_signed_rank(a, b, method="approx", correction=correction)
        assert res.p_value == pytest.approx(ref.pvalue, rel=1e-12), (a.size, res.method)


def test_wilcoxon_exact_by_hand_and_by_enumeration():
    # five positive differences: R+ = 15 is the largest of 32 equally likely sign patterns
    res = wilcoxon_signed_rank([1.0, 2.0, 3.0, 4.0, 5.0], [0.0] * 5)
    assert res.p_value == pytest.approx(2 / 32, rel=1e-14) and res.statistic == 0.0
    # ties and a zero, exact for n = 16 (SciPy's auto would switch to the normal approximation here)
    d = np.array([0, 1, 1, -1, 2, 2, 2, -3, 4, 4, -5, 6, 6, 6, 7, -8], dtype=float)
    res = wilcoxon_signed_rank(d, np.zeros_like(d), method="exact")
    nz = d[d != 0]
    ranks = scipy_stats.rankdata(np.abs(nz))
    observed = ranks[nz > 0].sum()
    sums = np.array([ranks[list(s)].sum() for s in itertools.product([False, True], repeat=nz.size)
                     for s in [np.array(s)]])
    p = 2 * min(np.mean(sums <= observed + 1e-9), np.mean(sums >= observed - 1e-9))
    assert res.p_value == pytest.approx(min(1.0, p), rel=1e-12)


def test_compare_paired_scores_reports_both_tests():
    a = [0.81, 0.79, 0.84, 0.80, 0.83]
    b = [0.78, 0.80, 0.79, 0.77, 0.80]
    cmp = compare_paired_scores(a, b)
    assert cmp.n == 5 and cmp.diff == pytest.approx(0.026, abs=1e-12)
    assert cmp.t_test.p_value == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, rel=1e-10)
    assert cmp.wilcoxon.p_value == pytest.approx(scipy_stats.wilcoxon(a, b).pvalue, rel=1e-12)
    assert cmp.ci == cmp.t_test.ci
