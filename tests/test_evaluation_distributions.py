"""The distributions behind peftc.evaluation's tests, against SciPy and exact enumeration."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from peftc.evaluation import distributions as D

scipy_stats = pytest.importorskip("scipy.stats")
scipy_special = pytest.importorskip("scipy.special")

DFS = [1, 2, 3, 4, 5, 7, 10, 19, 30, 50, 99, 100, 101, 300, 1000, 10_000]
TS = np.concatenate([-np.logspace(-3, 3, 50), [0.0], np.logspace(-3, 3, 50)])


def rel_err(actual: float, expected: float) -> float:
    return abs(actual - expected) / abs(expected) if expected != 0 else abs(actual)


@pytest.mark.parametrize("df", DFS)
def test_t_sf_matches_scipy_to_1e_11_relative(df):
    # tighter than 1e-10 on purpose: plain lgamma differences in the beta prefactor give ~1e-10 at df = 1e4
    errs = [(rel_err(D.t_sf(t, df), scipy_stats.t.sf(t, df)), t) for t in TS]
    worst, at = max(errs)
    assert worst < 1e-11, f"df={df}: max relative error {worst:.2e} at t={at}"
    assert D.t_cdf(1.5, df) == pytest.approx(scipy_stats.t.cdf(1.5, df), rel=1e-12)


@pytest.mark.parametrize("df", [0.5, 2.5, 1e5])
def test_t_sf_non_integer_and_huge_df(df):
    for t in (-3.0, 0.2, 2.0, 8.0):
        assert rel_err(D.t_sf(t, df), scipy_stats.t.sf(t, df)) < 1e-10, (df, t)


@pytest.mark.parametrize("df", [1, 2, 4, 9, 30, 1000])
def test_t_isf_inverts_scipy(df):
    for q in (1e-10, 1e-4, 0.005, 0.025, 0.05, 0.2, 0.5, 0.8, 0.975):
        assert D.t_isf(q, df) == pytest.approx(scipy_stats.t.isf(q, df), rel=1e-11, abs=1e-14), (df, q)


def test_t_special_values():
    assert D.t_sf(0.0, 3) == 0.5
    assert D.t_sf(math.inf, 3) == 0.0 and D.t_sf(-math.inf, 3) == 1.0
    # Cauchy (df = 1) in closed form
    assert D.t_sf(1.0, 1) == pytest.approx(0.25, rel=1e-14)
    assert D.t_isf(0.25, 1) == pytest.approx(1.0, rel=1e-13)


def test_betainc_matches_scipy_on_random_arguments():
    rng = np.random.default_rng(0)
    for _ in range(500):
        a, b = np.exp(rng.uniform(-2, 6, 2))
        x = rng.uniform()
        expected = scipy_special.betainc(a, b, x)
        if expected > 1e-250:
            assert rel_err(D.betainc(a, b, x), expected) < 1e-11, (a, b, x)
        lower, upper = D.betainc_pair(a, b, x)
        assert lower + upper == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("n", [1, 2, 10, 37, 500, 5000])
@pytest.mark.parametrize("p", [0.5, 0.03, 0.7])
def test_binom_cdf_and_pmf_match_scipy(n, p):
    for k in np.unique(np.linspace(-1, n + 1, 23).astype(int)):
        expected = scipy_stats.binom.cdf(k, n, p)
        if expected > 1e-280:
            assert rel_err(D.binom_cdf(k, n, p), expected) < 1e-11, (n, p, k)
        expected = scipy_stats.binom.pmf(k, n, p)
        if expected > 1e-280:
            assert rel_err(D.binom_pmf(k, n, p), expected) < 1e-11, (n, p, k)


def test_binom_cdf_small_case_is_exact():
    # P(X <= 1 | n = 10, 1/2) = (1 + 10) / 1024
    assert D.binom_cdf(1, 10, 0.5) == pytest.approx(11 / 1024, rel=1e-14)
    assert D.binom_pmf(1, 10, 0.5) == pytest.approx(10 / 1024, rel=1e-14)


def test_normal_functions():
    for z in (-8.0, -1.96, 0.0, 0.5, 3.0, 30.0):
        # z / sqrt(2) rounds once, and erfc's relative error grows like z^2 eps in the tail
        assert rel_err(D.normal_sf(z), scipy_stats.norm.sf(z)) < 1e-12
        assert rel_err(D.normal_cdf(z), scipy_stats.norm.cdf(z)) < 1e-12
    for q in (1e-12, 0.025, 0.5, 0.9):
        assert D.normal_ppf(q) == pytest.approx(scipy_stats.norm.ppf(q), rel=1e-14, abs=1e-15)


def brute_signed_rank_pmf(doubled: list[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for signs in itertools.product((0, 1), repeat=len(doubled)):
        s = sum(r for r, on in zip(doubled, signs) if on)
        out[s] = out.get(s, 0.0) + 0.5 ** len(doubled)
    return out


@pytest.mark.parametrize("doubled", [[2, 4, 6, 8, 10], [3, 3, 6, 8], [5, 5, 5, 5, 10, 12, 14], [1], []])
def test_signed_rank_null_matches_enumeration(doubled):
    pmf = D.signed_rank_null(np.array(doubled, dtype=np.int64))
    brute = brute_signed_rank_pmf(doubled)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-15)
    for s, p in enumerate(pmf):
        assert p == pytest.approx(brute.get(s, 0.0), abs=1e-15), s


def test_signed_rank_null_without_ties_is_wilcoxons_table():
    from scipy.stats._hypotests import _get_wilcoxon_distr  # SciPy's own exact table for n without ties

    n = 12
    pmf = D.signed_rank_null(2 * np.arange(1, n + 1))
    np.testing.assert_allclose(pmf[::2], _get_wilcoxon_distr(n), rtol=1e-13, atol=0)
    assert not pmf[1::2].any()


def test_distribution_arguments_are_checked():
    with pytest.raises(ValueError, match="df"):
        D.t_sf(1.0, 0)
    with pytest.raises(ValueError, match="t must not be NaN"):
        D.t_sf(math.nan, 3)
    with pytest.raises(ValueError, match="q"):
        D.t_isf(0.0, 3)
    with pytest.raises(ValueError, match="p must be"):
        D.binom_cdf(1, 10, 1.5)
    with pytest.raises(ValueError, match="doubled_ranks"):
        D.signed_rank_null(np.array([1.5]))
