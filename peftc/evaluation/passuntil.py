"""PassUntil (Hu et al., ICLR 2024): sample until a pass, estimate tiny pass probabilities, fit the task scaling law.

Per test instance, independent decodes are drawn until ``target_passes`` (r) of them pass the instance's
check or a budget of ``max_draws`` is spent (:func:`pass_until`). The number of draws K then gives the
pass probability: the paper's r / K (the maximum-likelihood estimate, biased upward: about ln(1/p)-fold
at r = 1, r / (r - 1)-fold at r >= 2) or, by default, the unbiased (r - 1) / (K - 1) (needs r >= 2),
with an exact interval from the negative binomial (:func:`estimate_pass_probability`). The task score
PU is the mean over instances, with a bootstrap interval over instances (:func:`passuntil_score`).

The task scaling law is PU(N) = exp(-c N^-alpha), i.e. log(-log PU) = log c - alpha log N, linear in
log N; :func:`fit_task_scaling_law` fits it on the smaller models (weighted by the delta-method
variance of each point when standard errors are given) and :meth:`TaskScalingLaw.predict` extrapolates
to a larger N with an interval from the fit's covariance.

Against the paper (arXiv 2310.03262v3, Sec. 4.1, Eq. 2 and Thm 1; checked against verbatim quotes): it samples
"until r (a constant) samples have passed" and records K, scores PU = r / K, "a maximum likelihood estimate"
(f = K - r negative binomial), sets "r to as small as 1 or 2" and caps K at a budget "such as 10^5"; its
smallest models score "0 PassUntil ... even with 10^5 sampling time" (Sec. 6). Here:

- ``target_passes`` (r) defaults to 2, the larger of the paper's two values: the unbiased (r - 1) / (K - 1)
  needs r >= 2, and r / K at r = 1 overstates p by about ln(1/p) (4.6x at p = 1e-2, 11.5x at 1e-5), a
  p-dependent factor that bends log(-log PU) against log N. ``estimator="mle"`` gives the paper's r / K (and
  r = 1); at r = 2 it is about twice the unbiased value for small p, so PU numbers compare with the paper's
  only under ``estimator="mle"``.
- ``max_draws`` (K_max) defaults to 10^5, the paper's cap. A completed r = 2 run measures p down to about
  r / K_max; below that the instance is censored: its estimate is j / K (0 with no pass, the paper's "0
  PassUntil") with the binomial Clopper-Pearson interval of j in K, and it stays in the task mean
  (dropping it would bias PU upward).
- The paper's decoding temperature and top-p were not found (benchmarks sample at temperature 1, no top-k /
  top-p), nor whether its N counts embedding parameters (benchmarks use non-embedding parameters).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ._inputs import check_confidence, check_count, generator
from .distributions import betainc, normal_ppf

ESTIMATORS = ("mvue", "mle")


@dataclass(frozen=True)
class PassEstimate:
    """One instance: ``passes`` of ``draws`` decodes passed; ``censored`` when the budget ran out first."""

    passes: int
    draws: int
    censored: bool
    estimate: float
    ci95: tuple[float, float]


def beta_ppf(q: float, a: float, b: float) -> float:
    """The q-quantile of Beta(a, b): the x with I_x(a, b) = q, by bisection on log x over [-700, 0] to a relative
    precision of 1e-12 (so a tiny quantile keeps it too) with the regularised incomplete beta of distributions.py.

    >>> round(beta_ppf(0.5, 1.0, 1.0), 6)
    0.5
    """
    if not (0.0 <= q <= 1.0) or a <= 0 or b <= 0:
        raise ValueError(f"beta_ppf needs q in [0, 1] and a, b > 0, got q={q}, a={a}, b={b}")
    if q in (0.0, 1.0):
        return q
    lo, hi = -700.0, 0.0
    while hi - lo > 1e-12:  # a relative precision of 1e-12 in x
        mid = 0.5 * (lo + hi)
        if betainc(a, b, math.exp(mid)) < q:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def estimate_pass_probability(passes: int, draws: int, target_passes: int, *, estimator: str = "mvue",
                              confidence: float = 0.95) -> PassEstimate:
    """The pass probability of one instance from ``passes`` passes in ``draws`` draws of a run that stops at the
    ``target_passes``-th pass (then ``passes == target_passes`` and the last draw passed) or at its budget
    (``passes < target_passes``: censored).

    Completed runs: ``estimator="mvue"`` gives (r - 1) / (K - 1) (unbiased; r >= 2), ``"mle"`` the paper's
    r / K; the interval is exact for inverse sampling: [BetaInv(a/2; r, K-r+1), BetaInv(1-a/2; r, K-r)]
    (upper 1 when K = r). Censored runs: j / K and the binomial Clopper-Pearson interval of j in K.

    >>> e = estimate_pass_probability(2, 1001, 2)
    >>> e.estimate, e.censored
    (0.001, False)
    """
    r = check_count("target_passes", target_passes, 1)
    k = check_count("draws", draws, 1)
    j = check_count("passes", passes, 0)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "mvue" and r < 2:
        raise ValueError("the unbiased estimator (r - 1) / (K - 1) needs target_passes >= 2 (it is 0 at r = 1); "
                         "use estimator='mle' (the paper's r / K) for r = 1")
    if j > r or j > k:
        raise ValueError(f"passes={j} exceeds target_passes={r} or draws={k}")
    alpha = 1.0 - check_confidence(confidence)
    if j == r:
        est = (r - 1) / (k - 1) if estimator == "mvue" and k > 1 else r / k
        lo = beta_ppf(alpha / 2, r, k - r + 1)
        hi = 1.0 if k == r else beta_ppf(1 - alpha / 2, r, k - r)
        return PassEstimate(j, k, False, float(est), (lo, hi))
    lo = 0.0 if j == 0 else beta_ppf(alpha / 2, j, k - j + 1)
    hi = 1.0 if j == k else beta_ppf(1 - alpha / 2, j + 1, k - j)  # every draw passed: no upper bound below 1
    return PassEstimate(j, k, True, j / k, (lo, hi))


def pass_until(draw: Callable[[int], np.ndarray], target_passes: int = 2, max_draws: int = 100_000,
               batch: int = 256) -> tuple[int, int]:
    """Draw in batches until ``target_passes`` passes or ``max_draws`` draws; return (passes, draws), where draws
    is the exact position of the last counted pass when the target is reached (the rest of that batch is
    not counted). ``draw(n)`` returns n booleans: whether each of n new independent decodes passed.

    >>> rng = np.random.default_rng(0)
    >>> pass_until(lambda n: rng.random(n) < 0.01, target_passes=2, max_draws=10_000)[0]
    2
    """
    r = check_count("target_passes", target_passes, 1)
    cap = check_count("max_draws", max_draws, 1)
    size = check_count("batch", batch, 1)
    passes = drawn = 0
    while drawn < cap:
        n = min(size, cap - drawn)
        ok = np.asarray(draw(n), dtype=bool).reshape(-1)
        if ok.size != n:
            raise ValueError(f"draw({n}) returned {ok.size} results")
        hits = np.flatnonzero(ok)
        need = r - passes
        if hits.size >= need:
            return r, drawn + int(hits[need - 1]) + 1
        passes += int(hits.size)
        drawn += n
    return passes, drawn


@dataclass(frozen=True)
class TaskScore:
    """PU of a task: the mean of the instances' estimates, its bootstrap interval and standard error."""

    pu: float
    ci95: tuple[float, float]
    se: float
    n_instances: int
    n_censored: int
    draws: int


def passuntil_score(estimates: Sequence[PassEstimate], *, seed: int | np.random.Generator,
                    n_resamples: int = 2000, confidence: float = 0.95) -> TaskScore:
    """Mean of the per-instance estimates with a percentile bootstrap over instances (censored ones included,
    at j / K: dropping them would bias PU upward).

    >>> score = passuntil_score([estimate_pass_probability(2, k, 2) for k in (11, 101, 1001)], seed=0)
    >>> round(score.pu, 4)
    0.0370
    """
    if not estimates:
        raise ValueError("passuntil_score needs at least one instance estimate")
    p = np.array([e.estimate for e in estimates], dtype=np.float64)
    alpha = 1.0 - check_confidence(confidence)
    rng = generator(seed)
    boot = p[rng.integers(0, p.size, (check_count("n_resamples", n_resamples, 1), p.size))].mean(axis=1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return TaskScore(float(p.mean()), (float(lo), float(hi)), float(boot.std(ddof=1)) if boot.size > 1 else 0.0,
                     p.size, sum(e.censored for e in estimates), sum(e.draws for e in estimates))


@dataclass(frozen=True)
class TaskScalingLaw:
    """log(-log PU) = log_c - alpha log N, fitted by (weighted) least squares; ``cov`` is the covariance of
    (log_c, -alpha); ``excluded`` lists the N whose PU was 0 or 1 (log(-log PU) undefined)."""

    log_c: float
    alpha: float
    cov: np.ndarray
    n_points: int
    excluded: tuple[float, ...]

    def predict(self, n: float, confidence: float = 0.95) -> tuple[float, tuple[float, float]]:
        """(PU, interval) at size n; the interval maps the fit's interval of log(-log PU) through exp(-exp(.)).

        >>> law = fit_task_scaling_law([1e3, 1e4, 1e5], [math.exp(-50 * n ** -0.5) for n in (1e3, 1e4, 1e5)])
        >>> round(law.alpha, 3), round(law.predict(1e6)[0], 4)
        (0.5, 0.9512)
        """
        x = math.log(n)
        y = self.log_c - self.alpha * x
        g = np.array([1.0, x])
        sd = math.sqrt(max(float(g @ self.cov @ g), 0.0))
        z = normal_ppf(0.5 + check_confidence(confidence) / 2)
        return math.exp(-math.exp(y)), (math.exp(-math.exp(y + z * sd)), math.exp(-math.exp(y - z * sd)))


def fit_task_scaling_law(n_params: Sequence[float], pu: Sequence[float],
                         pu_se: Sequence[float] | None = None) -> TaskScalingLaw:
    """Fit PU(N) = exp(-c N^-alpha) as a line y = a + b log N in y = log(-log PU): ordinary least squares, or with
    ``pu_se`` weighted by 1 / Var(y), Var(y) = (se / (PU log PU))^2 (the delta method). Points with PU at 0 or
    1 are left out and listed in ``excluded``; at least two must remain. The covariance is that of the
    weighted fit with known variances, or OLS's with the residual variance (zero with two points).
    """
    n = np.asarray(n_params, dtype=np.float64)
    p = np.asarray(pu, dtype=np.float64)
    if n.shape != p.shape or n.ndim != 1 or np.any(n <= 0):
        raise ValueError(f"n_params and pu must be 1-D of one length with n_params > 0, got {n.shape}, {p.shape}")
    ok = (p > 0) & (p < 1)
    if ok.sum() < 2:
        raise ValueError(f"the law needs at least two sizes with 0 < PU < 1, got PU {p.tolist()}")
    x, y = np.log(n[ok]), np.log(-np.log(p[ok]))
    design = np.stack([np.ones_like(x), x], axis=1)
    if pu_se is not None:
        se = np.asarray(pu_se, dtype=np.float64)
        if se.shape != p.shape:
            raise ValueError(f"pu_se must match pu's shape {p.shape}, got {se.shape}")
        var = (se[ok] / (p[ok] * np.log(p[ok]))) ** 2
        w = 1.0 / np.maximum(var, 1e-12)
        cov = np.linalg.inv(design.T @ (design * w[:, None]))
        coef = cov @ (design.T @ (w * y))
    else:
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        dof = x.size - 2
        s2 = float(np.sum((y - design @ coef) ** 2) / dof) if dof > 0 else 0.0
        cov = s2 * np.linalg.inv(design.T @ design)
    return TaskScalingLaw(float(coef[0]), float(-coef[1]), cov, int(ok.sum()), tuple(float(v) for v in n[~ok]))
