"""Paired bootstrap: bit-for-bit against scipy.stats.bootstrap(paired=True), the spec's hand cases, the
law of the resampled difference, and coverage."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from peftc.evaluation import bootstrap as B
from peftc.evaluation import macro_f1, metric_value, paired_bootstrap, verdict_of

scipy_stats = pytest.importorskip("scipy.stats")


def two_models(n: int, k: int, acc_a: float, acc_b: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    pa = np.where(rng.random(n) < acc_a, y, rng.integers(0, k, n))
    pb = np.where(rng.random(n) < acc_b, y, rng.integers(0, k, n))
    return y, pa, pb


def accuracy_diff_statistic(sign: int, n: int):
    """scipy-side statistic: the integer difference of correct counts divided once by n, like peftc."""
    def stat(y, pa, pb, axis=-1):
        return sign * (np.sum(pa == y, axis=axis) - np.sum(pb == y, axis=axis)) / n
    return stat


def macro_f1_rows(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Macro-F1 along the last axis over the classes present in y or p (scikit-learn's macro average)."""
    y, p = np.broadcast_arrays(y, p)
    classes = np.union1d(np.unique(y), np.unique(p[p >= 0]))
    f1_sum = np.zeros(y.shape[:-1])
    present = np.zeros(y.shape[:-1])
    for k in classes:
        t, q = np.sum(y == k, axis=-1), np.sum(p == k, axis=-1)
        tp = np.sum((y == k) & (p == k), axis=-1)
        here = t + q > 0
        f1_sum += np.where(here, 2.0 * tp / np.maximum(t + q, 1), 0.0)
        present += here
    return f1_sum / present


def macro_f1_diff(y, pa, pb, axis=-1):
    return macro_f1_rows(y, pa) - macro_f1_rows(y, pb)


@pytest.mark.parametrize("method", ["percentile", "bca"])
@pytest.mark.parametrize("metric", ["accuracy", "error"])
def test_accuracy_bootstrap_equals_scipy_exactly(metric, method):
    n, resamples = 300, 3000
    y, pa, pb = two_models(n, 4, 0.7, 0.62)
    ours = paired_bootstrap(y, pa, pb, seed=3, metric=metric, method=method, n_resamples=resamples)
    ref = scipy_stats.bootstrap((y, pa, pb), accuracy_diff_statistic(1 if metric == "accuracy" else -1, n),
                                paired=True, vectorized=True, n_resamples=resamples, method=method,
                                rng=np.random.default_rng(3))
    # same Generator, same index stream: the distributions are identical, so the intervals are too
    np.testing.assert_array_equal(ours.distribution, ref.bootstrap_distribution)
    np.testing.assert_allclose(ours.ci, tuple(ref.confidence_interval), rtol=1e-12, atol=1e-15)
    assert ours.method == method and ours.n == n and ours.n_resamples == resamples


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_macro_f1_bootstrap_equals_scipy(method):
    n, resamples = 240, 600
    y, pa, pb = two_models(n, 5, 0.75, 0.6, seed=1)
    pb[:7] = -1  # a few "no answer" predictions
    ours = paired_bootstrap(y, pa, pb, seed=11, metric="macro_f1", method=method, n_resamples=resamples)
    ref = scipy_stats.bootstrap((y, pa, pb), macro_f1_diff, paired=True, vectorized=True, n_resamples=resamples,
                                method=method, rng=np.random.default_rng(11))
    np.testing.assert_allclose(ours.distribution, ref.bootstrap_distribution, rtol=0, atol=1e-14)
    np.testing.assert_allclose(ours.ci, tuple(ref.confidence_interval), rtol=1e-10, atol=1e-13)
    assert ours.estimate == pytest.approx(macro_f1_diff(y, pa, pb), abs=1e-15)


def test_bca_differs_from_percentile_on_a_skewed_case_and_follows_scipy():
    # a rare-event accuracy difference: a skewed bootstrap distribution, so BCa's bias correction and
    # acceleration move the interval visibly away from the percentile one
    n = 200
    y = np.zeros(n, dtype=np.int64)
    pa = np.zeros(n, dtype=np.int64)
    pb = np.zeros(n, dtype=np.int64)
    pb[:9] = 1   # B wrong on 9, A right there
    pa[9:10] = 1  # A wrong on 1
    kw = dict(seed=5, n_resamples=4000)
    pct = paired_bootstrap(y, pa, pb, method="percentile", **kw)
    bca = paired_bootstrap(y, pa, pb, method="bca", **kw)
    ref = scipy_stats.bootstrap((y, pa, pb), accuracy_diff_statistic(1, n), paired=True, vectorized=True,
                                n_resamples=4000, method="bca", rng=np.random.default_rng(5))
    assert abs(bca.ci[0] - pct.ci[0]) > 1e-3
    np.testing.assert_allclose(bca.ci, tuple(ref.confidence_interval), rtol=1e-12)


def test_chunking_does_not_change_the_draws(monkeypatch):
    y, pa, pb = two_models(1000, 3, 0.8, 0.78)
    for metric in ("accuracy", "macro_f1"):
        whole = paired_bootstrap(y, pa, pb, seed=2, metric=metric, n_resamples=700)
        monkeypatch.setattr(B, "_CHUNK_ELEMENTS", 3 * 1000 + 17)  # chunks of 3 resamples
        chunked = paired_bootstrap(y, pa, pb, seed=2, metric=metric, n_resamples=700)
        monkeypatch.undo()
        np.testing.assert_array_equal(whole.distribution, chunked.distribution)


def test_seed_and_generator_agree_and_results_are_reproducible():
    y, pa, pb = two_models(150, 3, 0.8, 0.7)
    a = paired_bootstrap(y, pa, pb, seed=9, n_resamples=500)
    b = paired_bootstrap(y, pa, pb, seed=np.random.default_rng(9), n_resamples=500)
    c = paired_bootstrap(y, pa, pb, seed=9, n_resamples=500)
    np.testing.assert_array_equal(a.distribution, b.distribution)
    assert a == c
    assert paired_bootstrap(y, pa, pb, seed=10, n_resamples=500).ci != a.ci


def test_identical_models_tie_with_a_zero_interval():
    y, pa, _ = two_models(80, 3, 0.6, 0.6)
    for method in ("percentile", "bca"):
        res = paired_bootstrap(y, pa, pa.copy(), seed=0, n_resamples=300, method=method)
        assert res.estimate == 0.0 and res.ci == (0.0, 0.0) and res.verdict == "tie"
        assert res.p_value == 1.0


def test_all_right_against_all_wrong_is_a_win_of_one():
    y = np.zeros(100, dtype=np.int64)
    res = paired_bootstrap(y, y, np.ones(100, dtype=np.int64), seed=0, n_resamples=200)
    assert res.estimate == 1.0 and res.ci == (1.0, 1.0) and res.verdict == "win"
    assert res.metric_a == 1.0 and res.metric_b == 0.0
    assert res.p_value == pytest.approx(2 / 201)  # no resample <= 0: 2 (1 + 0) / (B + 1)


def test_swapping_models_negates_the_difference_and_the_verdict():
    y, pa, pb = two_models(400, 4, 0.75, 0.6, seed=4)
    ab = paired_bootstrap(y, pa, pb, seed=1, n_resamples=2000)
    ba = paired_bootstrap(y, pb, pa, seed=1, n_resamples=2000)
    assert ab.verdict == "win" and ba.verdict == "loss"
    assert ba.estimate == -ab.estimate
    np.testing.assert_array_equal(ba.distribution, -ab.distribution)  # same indices, negated differences
    assert ba.ci == (-ab.ci[1], -ab.ci[0])


def test_error_metric_orients_the_verdict():
    y, pa, pb = two_models(400, 4, 0.75, 0.6, seed=4)
    err = paired_bootstrap(y, pa, pb, seed=1, n_resamples=2000, metric="error")
    assert err.estimate < 0 and err.ci[1] < 0 and err.verdict == "win"  # A's error is lower: a win for A
    assert verdict_of((0.1, 0.2)) == "win" and verdict_of((0.1, 0.2), higher_is_better=False) == "loss"
    assert verdict_of((-0.1, 0.2)) == "tie"


def test_resampled_accuracy_difference_has_the_multinomial_law():
    # the spec's O(B) equivalent: (N10, N01, rest) ~ Multinomial(n; n10/n, n01/n, rest/n), diff = (N10 - N01)/n
    n, resamples = 500, 20_000
    y, pa, pb = two_models(n, 3, 0.7, 0.6, seed=7)
    res = paired_bootstrap(y, pa, pb, seed=0, n_resamples=resamples)
    ca, cb = pa == y, pb == y
    p10, p01 = np.mean(ca & ~cb), np.mean(~ca & cb)
    draws = np.random.default_rng(1).multinomial(n, [p10, p01, 1 - p10 - p01], size=resamples)
    law = (draws[:, 0] - draws[:, 1]) / n
    assert scipy_stats.ks_2samp(res.distribution, law).pvalue > 1e-3
    var = (p10 + p01 - (p10 - p01) ** 2) / n
    assert res.distribution.mean() == pytest.approx(p10 - p01, abs=5 * np.sqrt(var / resamples))
    assert res.distribution.var() == pytest.approx(var, rel=0.05)


def test_percentile_interval_covers_a_true_zero_difference_about_95_percent():
    # correlated Bernoullis with equal marginals: true difference 0; the tie rate should be ~95%
    rng = np.random.default_rng(123)
    n, reps, ties = 300, 300, 0
    for r in range(reps):
        shared = rng.random(n) < 0.7
        ca = np.where(rng.random(n) < 0.6, shared, rng.random(n) < 0.7)
        cb = np.where(rng.random(n) < 0.6, shared, rng.random(n) < 0.7)
        labels = np.ones(n, dtype=np.int64)
        res = paired_bootstrap(labels, ca.astype(np.int64), cb.astype(np.int64), seed=r, n_resamples=1000)
        ties += res.verdict == "tie"
    assert 0.91 <= ties / reps <= 0.99, ties / reps


def test_macro_f1_point_values_by_hand():
    y = np.array([0, 0, 1, 1, 2])
    p = np.array([0, 1, 1, 1, -1])
    # class 0: TP 1, T 2, P 1 -> 2/3; class 1: TP 2, T 2, P 3 -> 4/5; class 2: TP 0, T 1, P 0 -> 0
    assert macro_f1(y, p) == pytest.approx((2 / 3 + 4 / 5 + 0) / 3, abs=1e-15)
    # a class that occurs nowhere is not averaged, whatever n_classes says
    assert macro_f1(y, p, n_classes=7) == macro_f1(y, p)
    assert metric_value("accuracy", y, p) == 3 / 5 and metric_value("error", y, p) == 2 / 5


def test_bca_falls_back_to_percentile_when_undefined():
    # with a single resample that differs from the estimate, the estimate lies outside the bootstrap
    # distribution: BCa's bias correction is infinite, so the percentile interval is returned, with a warning
    y, pa, pb = two_models(60, 3, 0.8, 0.5, seed=2)
    estimate = paired_bootstrap(y, pa, pb, seed=0, n_resamples=1).estimate
    seed = next(s for s in range(100) if paired_bootstrap(y, pa, pb, seed=s, n_resamples=1).distribution[0] != estimate)
    with pytest.warns(RuntimeWarning, match="BCa interval undefined"):
        res = paired_bootstrap(y, pa, pb, seed=seed, n_resamples=1, method="bca")
    assert res.method == "percentile"
    assert res.ci == (res.distribution[0], res.distribution[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert paired_bootstrap(y, pa, pb, seed=0, n_resamples=500, method="bca").method == "bca"
