"""The null distributions peftc's tests need, without SciPy: normal, binomial, Student t, signed rank.

What is here:
- ``normal_sf`` / ``normal_cdf`` (``math.erfc``) and ``normal_ppf`` (the standard library's
  ``NormalDist.inv_cdf``, Wichura's AS241, about 1e-16 relative);
- ``binom_pmf`` / ``binom_cdf``: exact binomial probabilities, each term in log space from
  ``math.lgamma`` and summed by log-sum-exp (McNemar's test needs the lower tail at p = 1/2);
- ``betainc`` / ``betainc_pair``: the regularized incomplete beta function I_x(a, b) by the continued fraction of
  Numerical Recipes section 6.4, evaluated with the modified Lentz method;
- ``t_sf`` / ``t_isf``: Student's t upper tail through ``betainc``, and its inverse by a Newton
  iteration kept inside a bisection bracket;
- ``signed_rank_null``: the exact null distribution of Wilcoxon's R+ for any set of ranks, ties
  included (average ranks are half-integers, so the rank sums are doubled to stay integral).

What is not here: the tests themselves (hypothesis.py) and anything random.
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

_STANDARD_NORMAL = NormalDist()
_TINY = 1e-300          # Lentz's guard against a zero denominator
_CF_EPS = 1e-16         # continued fraction stops when a step changes the value by less than this
_CF_MAX_TERMS = 100_000


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z, accurate in the far upper tail (erfc, no 1 - cdf)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def normal_cdf(z: float) -> float:
    """P(Z <= z) for a standard normal Z."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def normal_ppf(q: float) -> float:
    """The standard normal quantile: z with P(Z <= z) = q, q in (0, 1)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    return _STANDARD_NORMAL.inv_cdf(q)


def _log_binom_pmf(i: np.ndarray, n: int, p: float) -> np.ndarray:
    """log P(X = i) for X ~ Binomial(n, p), 0 < p < 1, each term from lgamma (no recurrence drift)."""
    lg = np.vectorize(math.lgamma, otypes=[np.float64])
    i = np.asarray(i, dtype=np.float64)
    return (math.lgamma(n + 1.0) - lg(i + 1.0) - lg(n - i + 1.0)
            + i * math.log(p) + (n - i) * math.log1p(-p))


def _check_binom(k: int, n: int, p: float) -> tuple[int, int, float]:
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return int(math.floor(k)), int(n), float(p)


def binom_pmf(k: int, n: int, p: float) -> float:
    """P(X = k) for X ~ Binomial(n, p)."""
    k, n, p = _check_binom(k, n, p)
    if k < 0 or k > n:
        return 0.0
    if p == 0.0 or p == 1.0:
        return float(k == (0 if p == 0.0 else n))
    return float(np.exp(_log_binom_pmf(np.array([k]), n, p))[0])


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed over the shorter tail so neither tail loses digits."""
    k, n, p = _check_binom(k, n, p)
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p == 0.0 or p == 1.0:
        return 1.0 if p == 0.0 else 0.0
    if k < n * p:  # the lower tail is the small one: sum it
        return _log_sum_exp(_log_binom_pmf(np.arange(k + 1), n, p))
    return 1.0 - _log_sum_exp(_log_binom_pmf(np.arange(k + 1, n + 1), n, p))


def _log_sum_exp(logs: np.ndarray) -> float:
    top = float(logs.max())
    return float(math.exp(top) * np.sum(np.exp(logs - top)))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction for I_x(a, b) (Numerical Recipes 6.4.5) by modified Lentz; fast for
    x < (a + 1) / (a + b + 2)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _CF_MAX_TERMS + 1):
        m2 = 2 * m
        # even step: d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m))
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        # odd step: d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1))
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        step = d * c
        h *= step
        if abs(step - 1.0) < _CF_EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def _lgamma_ratio(a: float, b: float) -> float:
    """lgamma(a + b) - lgamma(a) without the cancellation of two large lgamma values.

    For a >= 100 Stirling's series is subtracted term by term: (a + b - 1/2) log(a + b) - (a - 1/2) log a
    is rewritten as (a - 1/2) log1p(b / a) + b log(a + b), and the 1/(12x) ... 1/(1680x^7) corrections
    (next term below 1e-20 there) are differenced. Below that the direct difference loses < 1e-13.
    """
    if a < 100.0:
        return math.lgamma(a + b) - math.lgamma(a)

    def correction(x: float) -> float:
        x2 = x * x
        return (1.0 / 12.0 - (1.0 / 360.0 - (1.0 / 1260.0 - 1.0 / (1680.0 * x2)) / x2) / x2) / x

    return (a - 0.5) * math.log1p(b / a) + b * math.log(a + b) - b + correction(a + b) - correction(a)


def _betainc_pair_logs(a: float, b: float, x: float, y: float, log_x: float, log_y: float) -> tuple[float, float]:
    if x == 0.0:
        return 0.0, 1.0
    if y == 0.0:
        return 1.0, 0.0
    # x^a y^b / B(a, b), in log space; the larger of a, b carries the lgamma ratio
    if a >= b:
        log_beta = _lgamma_ratio(a, b) - math.lgamma(b)
    else:
        log_beta = _lgamma_ratio(b, a) - math.lgamma(a)
    log_front = log_beta + a * log_x + b * log_y
    if x < (a + 1.0) / (a + b + 2.0):
        lower = math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
        return lower, 1.0 - lower
    upper = math.exp(log_front) * _beta_continued_fraction(b, a, y) / b  # I_y(b, a) = 1 - I_x(a, b)
    return 1.0 - upper, upper


def betainc_pair(a: float, b: float, x: float) -> tuple[float, float]:
    """(I_x(a, b), 1 - I_x(a, b)), each computed without cancellation where it is the small one."""
    if a <= 0 or b <= 0:
        raise ValueError(f"a and b must be positive, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    y = 1.0 - x
    return _betainc_pair_logs(a, b, x, y, math.log(x) if x > 0 else -math.inf,
                              math.log1p(-x) if y > 0 else -math.inf)


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    return betainc_pair(a, b, x)[0]


def _check_df(df: float) -> float:
    df = float(df)
    if not df > 0 or not math.isfinite(df):
        raise ValueError(f"df must be positive and finite, got {df}")
    return df


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom.

    With x = df / (df + t^2): P(|T| > |t|) = I_x(df/2, 1/2), so the one-sided tail is half of it.
    """
    df = _check_df(df)
    t = float(t)
    if math.isnan(t):
        raise ValueError("t must not be NaN")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    if t == 0.0:
        return 0.5
    t2 = t * t
    # x = df / (df + t^2) and y = 1 - x, with their logs taken from t directly (a = df/2 may be large)
    x, y = df / (df + t2), t2 / (df + t2)
    log_x = -math.log1p(t2 / df)
    log_y = 2.0 * math.log(abs(t)) - math.log(df) + log_x
    two_sided = _betainc_pair_logs(df / 2.0, 0.5, x, y, log_x, log_y)[0]
    return 0.5 * two_sided if t > 0 else 1.0 - 0.5 * two_sided


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t."""
    return t_sf(-float(t), df)


def _t_logpdf(t: float, df: float) -> float:
    return (math.lgamma((df + 1.0) / 2.0) - math.lgamma(df / 2.0) - 0.5 * math.log(df * math.pi)
            - (df + 1.0) / 2.0 * math.log1p(t * t / df))


def t_isf(q: float, df: float) -> float:
    """The t with P(T > t) = q: Newton steps on t_sf, each kept inside a shrinking bisection bracket."""
    df = _check_df(df)
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if q > 0.5:
        return -t_isf(1.0 - q, df)
    if q == 0.5:
        return 0.0
    lo, hi = 0.0, max(1.0, -normal_ppf(q))
    while t_sf(hi, df) > q:  # heavy tails: the normal quantile may fall short
        lo, hi = hi, 2.0 * hi
    t = 0.5 * (lo + hi)
    for _ in range(200):
        f = t_sf(t, df) - q
        if f > 0:
            lo = t
        else:
            hi = t
        step = f / math.exp(_t_logpdf(t, df))  # d sf / dt = -pdf, so Newton adds f / pdf
        new = t + step
        if not lo < new < hi:
            new = 0.5 * (lo + hi)
        if abs(new - t) <= 4e-16 * max(1.0, abs(new)) or hi - lo <= 4e-16 * hi:
            return new
        t = new
    return t


def signed_rank_null(doubled_ranks: np.ndarray) -> np.ndarray:
    """pmf[s] = P(2 R+ = s) under H0 (each rank's sign + or - with probability 1/2, independently).

    ``doubled_ranks`` are twice the (average) ranks of the non-zero |differences|, so they are
    integers even with ties. Dynamic programming over the ranks, O(n * sum); exact in distribution
    for any ties (the no-ties Wilcoxon table is the special case 2, 4, ..., 2n).
    """
    ranks = np.asarray(doubled_ranks)
    if ranks.ndim != 1 or not np.issubdtype(ranks.dtype, np.integer) or (ranks.size and ranks.min() < 0):
        raise ValueError(f"doubled_ranks must be a 1-D array of non-negative integers, got {ranks!r}")
    pmf = np.ones(1)
    for r in ranks.tolist():
        new = np.zeros(pmf.size + r)
        new[:pmf.size] += 0.5 * pmf  # this rank's sign is negative: the sum does not change
        new[r:] += 0.5 * pmf         # positive: the sum grows by r
        pmf = new
    return pmf
