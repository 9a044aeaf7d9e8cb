"""Paired bootstrap of the difference of a metric between two models on the same test examples.

One vector of resampled example indices serves both models (that is what makes it paired). The
interval is the percentile interval (type-7 / "linear" quantiles of the bootstrap distribution) or
BCa (Efron and Tibshirani 1993, sections 14.3 and 15.4, with the jackknife acceleration): the same
conventions as ``scipy.stats.bootstrap(..., paired=True, method=...)``, whose resampled indices this
draws in the same order from the same Generator, so with equal seeds the two give the same
distribution and intervals (tests/test_evaluation_bootstrap.py checks this).

Resampling runs in chunks of about 4 M indices (int32), so 10^4 resamples of 10^4 predictions use
some tens of MB. For accuracy and error each resample sums a per-example +1 / 0 / -1; for macro-F1
it is reduced to the counts of each distinct (label, pred A, pred B) triple by one ``bincount`` over
(resample, triple) keys, and the metric follows from those counts (metrics.PairedTable). The chunk
size does not change the result: NumPy's bounded int32 integers come from one continuous stream.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from ._inputs import check_confidence, check_count, generator
from .distributions import normal_cdf, normal_ppf
from .metrics import PairedTable

_CHUNK_ELEMENTS = 1 << 22  # resampled indices held at once
METHODS = ("percentile", "bca")


@dataclass(frozen=True)
class BootstrapResult:
    """A paired bootstrap of metric(A) - metric(B).

    ``p_value`` is the two-sided bootstrap p = min(1, 2 min((1 + #{d* <= 0}) / (B + 1),
    (1 + #{d* >= 0}) / (B + 1))), reported for convenience; the interval is the verdict.
    """

    metric: str
    estimate: float
    metric_a: float
    metric_b: float
    ci: tuple[float, float]
    confidence: float
    method: str
    n: int
    n_resamples: int
    p_value: float
    distribution: np.ndarray = field(repr=False, compare=False)

    @property
    def verdict(self) -> str:
        """"win" when the interval excludes 0 on A's better side (above 0 for accuracy and macro-F1,
        below 0 for error), "loss" when it excludes 0 on the other side, "tie" when it contains 0."""
        return verdict_of(self.ci, higher_is_better=self.metric != "error")


def verdict_of(ci: tuple[float, float], *, higher_is_better: bool = True) -> str:
    """The verdict for A from an interval of metric(A) - metric(B): "win", "tie" (0 inside) or "loss"."""
    lo, hi = ci
    above, below = lo > 0, hi < 0
    if not higher_is_better:
        above, below = below, above
    return "win" if above else "loss" if below else "tie"


def resampled_differences(table: PairedTable, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """metric(A) - metric(B) on ``n_resamples`` bootstrap resamples of the examples, (n_resamples,).

    Accuracy and error sum a per-example +1 / 0 / -1 (A right only / both or neither / B right
    only) over the drawn indices; macro-F1 counts each drawn type per resample with one bincount.
    """
    n, types = table.n, table.n_types
    chunk = max(1, _CHUNK_ELEMENTS // n)
    dtype = np.int32 if n < 2**31 else np.int64
    out = np.empty(n_resamples)
    signed = table.signed_correct() if table.metric in ("accuracy", "error") else None
    offsets = np.arange(chunk, dtype=np.intp)[:, None] * types
    for start in range(0, n_resamples, chunk):
        m = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(m, n), dtype=dtype)
        if signed is not None:
            # (N10 - N01) / n: the integer difference divided once, bit-equal to table.difference
            diff = signed[idx].sum(axis=1, dtype=np.int64) / n
            out[start:start + m] = diff if table.metric == "accuracy" else -diff
        else:
            keys = table.codes[idx]  # (m, n): the type of each drawn example
            keys += offsets[:m]      # resample r's types land in bins r*U .. r*U + U - 1
            counts = np.bincount(keys.ravel(), minlength=m * types).reshape(m, types)
            out[start:start + m] = table.difference(counts.astype(np.float64) @ table.design, n)
    return out


def _bca_levels(table: PairedTable, estimate: float, boot: np.ndarray, alpha: float) -> tuple[float, float] | None:
    """BCa's adjusted quantile levels (alpha_1, alpha_2), or None when the bias correction is infinite
    (the estimate lies outside the bootstrap distribution)."""
    share = (np.count_nonzero(boot < estimate) + np.count_nonzero(boot <= estimate)) / (2.0 * boot.size)
    if share <= 0.0 or share >= 1.0:
        return None
    z0 = normal_ppf(share)
    # jackknife: leaving out one example of type u changes the counts by -1 at u; all examples of a
    # type give the same value, so the n leave-one-out values are the U type values with weights counts
    jack = table.difference(table.full_confusion() - table.design, table.n - 1)
    w = table.counts.astype(np.float64)
    dev = (w @ jack) / table.n - jack
    spread = float(w @ dev**2)
    accel = float(w @ dev**3) / (6.0 * spread**1.5) if spread > 0 else 0.0
    z = normal_ppf(alpha)
    levels = []
    for zz in (z, -z):
        num = z0 + zz
        levels.append(normal_cdf(z0 + num / (1.0 - accel * num)))
    return levels[0], levels[1]


def paired_bootstrap(labels, pred_a, pred_b, *, seed: int | np.random.Generator, metric: str = "accuracy",
                     n_resamples: int = 10_000, confidence: float = 0.95, method: str = "percentile",
                     n_classes: int | None = None) -> BootstrapResult:
    """Paired bootstrap of metric(pred_a) - metric(pred_b) over the test examples.

    labels, pred_a, pred_b: (n,) integer class indices of the same examples in the same order
    (predictions may be -1 for "no answer"); metric: "accuracy", "error" or "macro_f1"; method:
    "percentile" or "bca"; seed: an integer or a ``numpy.random.Generator`` (then drawn from).
    If BCa is undefined because the estimate lies outside the bootstrap distribution, the percentile
    interval is returned with method "percentile" and a RuntimeWarning.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n_resamples = check_count("n_resamples", n_resamples, 1)
    confidence = check_confidence(confidence)
    table = PairedTable.build(labels, pred_a, pred_b, metric, n_classes)
    rng = generator(seed)
    full = table.full_confusion()
    estimate = float(table.difference(full, table.n)[0])
    metric_a, metric_b = (float(v[0]) for v in table.metric_pair(full, table.n))
    boot = resampled_differences(table, n_resamples, rng)
    alpha = (1.0 - confidence) / 2.0
    levels: tuple[float, float] | None = (alpha, 1.0 - alpha)
    if method == "bca":
        levels = _bca_levels(table, estimate, boot, alpha)
        if levels is None:
            warnings.warn("BCa interval undefined (the estimate lies outside the bootstrap distribution); "
                          "returning the percentile interval", RuntimeWarning, stacklevel=2)
            method, levels = "percentile", (alpha, 1.0 - alpha)
    lo, hi = np.quantile(boot, levels, method="linear")
    below, above = np.count_nonzero(boot <= 0), np.count_nonzero(boot >= 0)
    p_value = min(1.0, 2.0 * min(1 + int(below), 1 + int(above)) / (n_resamples + 1))
    return BootstrapResult(metric, estimate, metric_a, metric_b, (float(lo), float(hi)), confidence, method,
                           table.n, n_resamples, p_value, boot)
