"""PassUntil: the exact inverse-sampling interval (against SciPy), the estimators' bias and the interval's
coverage on simulated negative-binomial runs, the sampling loop's exact stopping position, censoring, the
task score, and the task scaling law recovering (c, alpha) and predicting a larger size."""
from __future__ import annotations

import math

import numpy as np
import pytest

from peftc.evaluation import (beta_ppf, estimate_pass_probability, fit_task_scaling_law, pass_until,
                              passuntil_score)


def test_beta_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for q, a, b in [(0.025, 2, 1000), (0.975, 2, 999), (0.5, 1, 1), (0.025, 1, 2e5), (0.975, 5, 3), (0.9, 0.5, 0.5)]:
        assert beta_ppf(q, a, b) == pytest.approx(stats.beta.ppf(q, a, b), rel=1e-9, abs=1e-300)


def simulate(p: np.ndarray, r: int, rng: np.random.Generator) -> np.ndarray:
    """K = r + failures before the r-th success, for each p."""
    return r + rng.negative_binomial(r, p)


def test_unbiased_estimator_and_the_papers_bias():
    rng = np.random.default_rng(0)
    p = 1e-3
    k2 = simulate(np.full(200_000, p), 2, rng)
    assert np.mean(1.0 / (k2 - 1)) / p == pytest.approx(1.0, abs=0.02)  # (r-1)/(K-1), r = 2
    assert np.mean(2.0 / k2) / p == pytest.approx(2.0, abs=0.05)  # r/K: about r/(r-1)-fold
    k1 = simulate(np.full(200_000, p), 1, rng)
    assert np.mean(1.0 / k1) / p == pytest.approx(-math.log(p) / (1 - p), rel=0.05)  # r = 1: ln(1/p)-fold
    est = [estimate_pass_probability(2, int(k), 2).estimate for k in k2[:200]]
    assert est == pytest.approx(list(1.0 / (k2[:200] - 1)))
    assert estimate_pass_probability(2, 101, 2, estimator="mle").estimate == pytest.approx(2 / 101)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_exact_interval_covers_the_true_probability_95_percent_of_the_time(r):
    rng = np.random.default_rng(r)
    p = 10.0 ** rng.uniform(-4, -0.5, 800)
    k = simulate(p, r, rng)
    est = "mvue" if r >= 2 else "mle"
    hits = [(e.ci95[0] <= pi <= e.ci95[1]) for pi, e in
            zip(p, (estimate_pass_probability(r, int(ki), r, estimator=est) for ki in k))]
    assert 0.925 <= np.mean(hits) <= 0.99, np.mean(hits)  # exact intervals are conservative


def test_pass_until_stops_at_the_exact_position_of_the_target_pass():
    outcomes = np.zeros(1000, dtype=bool)
    outcomes[[137, 300, 301, 999]] = True
    pos = [0]

    def draw(n):
        out = outcomes[pos[0]:pos[0] + n]
        pos[0] += n
        return out

    assert pass_until(draw, target_passes=2, max_draws=1000, batch=64) == (2, 301)
    pos[0] = 0
    assert pass_until(draw, target_passes=3, max_draws=1000, batch=7) == (3, 302)
    pos[0] = 0
    assert pass_until(draw, target_passes=5, max_draws=500, batch=100) == (3, 500)  # censored: 3 passes in 500


def test_censored_instances_keep_their_draws_and_an_upper_bound():
    e = estimate_pass_probability(0, 10_000, 2)
    assert e.censored and e.estimate == 0.0 and e.ci95[0] == 0.0
    assert e.ci95[1] == pytest.approx(1 - 0.025 ** (1 / 10_000), rel=1e-6)  # about 3.7 / K
    one = estimate_pass_probability(1, 10_000, 2)
    assert one.estimate == 1e-4 and one.ci95[0] < 1e-4 < one.ci95[1]
    score = passuntil_score([e, one, estimate_pass_probability(2, 11, 2)], seed=0)
    assert score.n_censored == 2 and score.draws == 20_011
    assert score.pu == pytest.approx((0 + 1e-4 + 0.1) / 3)
    assert score.ci95[0] <= score.pu <= score.ci95[1]


def test_a_budget_spent_with_every_draw_passing_is_censored_with_upper_bound_one():
    """max_draws below r: the budget ends before the r-th pass although every draw passed (j = K < r)."""
    for j, k, r in ((1, 1, 2), (2, 2, 3)):
        e = estimate_pass_probability(j, k, r)
        assert e.censored and e.estimate == 1.0 and e.ci95[1] == 1.0
        assert 0.0 < e.ci95[0] == pytest.approx(0.025 ** (1 / k), rel=1e-9)  # Clopper-Pearson lower bound
    j, k = pass_until(lambda n: np.ones(n, bool), target_passes=3, max_draws=2)
    assert (j, k) == (2, 2) and estimate_pass_probability(j, k, 3).censored


def test_scaling_law_recovers_c_and_alpha_and_predicts_the_largest_size():
    rng = np.random.default_rng(3)
    c, alpha = 40.0, 0.35
    n = np.array([1e3, 3e3, 1e4, 3e4, 1e5, 3e5])
    true = np.exp(-c * n ** -alpha)
    se = 0.03 * true
    noisy = true + se * rng.standard_normal(n.size)
    law = fit_task_scaling_law(n[:-1], noisy[:-1], se[:-1])
    assert law.alpha == pytest.approx(alpha, abs=0.03)
    assert math.exp(law.log_c) == pytest.approx(c, rel=0.3)
    pred, (lo, hi) = law.predict(n[-1])
    assert lo <= true[-1] <= hi and lo < pred < hi
    ols = fit_task_scaling_law(n, true)
    assert ols.alpha == pytest.approx(alpha, rel=1e-9) and ols.predict(1e6)[0] == pytest.approx(
        math.exp(-c * 1e6 ** -alpha), rel=1e-9)


def test_points_at_zero_or_one_are_excluded_and_reported():
    law = fit_task_scaling_law([1e2, 1e3, 1e4, 1e5], [0.0, 0.01, 0.2, 1.0])
    assert law.excluded == (1e2, 1e5) and law.n_points == 2
    with pytest.raises(ValueError, match="at least two sizes"):
        fit_task_scaling_law([1e2, 1e3], [0.0, 0.5])


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="target_passes >= 2"):
        estimate_pass_probability(1, 10, 1)
    with pytest.raises(ValueError, match="passes=3 exceeds"):
        estimate_pass_probability(3, 10, 2)
    with pytest.raises(ValueError, match="estimator"):
        estimate_pass_probability(2, 10, 2, estimator="mean")
    with pytest.raises(ValueError, match="returned 3 results"):
        pass_until(lambda n: np.zeros(3, bool), batch=4, max_draws=8)
    with pytest.raises(ValueError, match="n_params"):
        fit_task_scaling_law([1e2, -1.0], [0.1, 0.2])


def test_interval_is_the_negative_binomial_clopper_pearson_pair():
    stats = pytest.importorskip("scipy.stats")
    e = estimate_pass_probability(3, 5000, 3)
    assert e.ci95[0] == pytest.approx(stats.beta.ppf(0.025, 3, 4998), rel=1e-9)
    assert e.ci95[1] == pytest.approx(stats.beta.ppf(0.975, 3, 4997), rel=1e-9)
    assert estimate_pass_probability(2, 2, 2).ci95[1] == 1.0


def test_weighted_fit_uses_the_delta_method_variance_of_log_minus_log():
    n = np.array([1e3, 1e4, 1e5])
    pu = np.array([0.01, 0.1, 0.4])
    se = np.array([0.002, 0.01, 0.02])
    law = fit_task_scaling_law(n, pu, se)
    x = np.log(n)
    w = ((pu * np.log(pu)) / se) ** 2  # 1 / Var(log(-log PU)), Var by the delta method
    design = np.stack([np.ones(3), x], axis=1)
    np.testing.assert_allclose(law.cov, np.linalg.inv(design.T @ (design * w[:, None])), rtol=1e-10)
