"""Adjusted p-values over a family of comparisons: Holm-Bonferroni and Benjamini-Hochberg.

Both return adjusted p-values in the input order (reject hypothesis i at level alpha when
adjusted[i] <= alpha), the convention of ``statsmodels.stats.multitest.multipletests`` ("holm",
"fdr_bh").
- Holm (family-wise error): with p sorted ascending p_(1) <= ... <= p_(m),
  adjusted_(i) = min(1, max_{j <= i} (m - j + 1) p_(j)) - the running maximum makes the
  step-down monotone, so a hypothesis is never rejected while a smaller p is kept.
- Benjamini-Hochberg (false discovery rate, independent or positively dependent tests):
  adjusted_(i) = min(1, min_{j >= i} m p_(j) / j).
"""
from __future__ import annotations

import numpy as np

from ._inputs import check_probabilities


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the order given."""
    p = check_probabilities("pvalues", pvalues)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]  # (m - j + 1) p_(j), j = 1..m
    adjusted = np.minimum(1.0, np.maximum.accumulate(scaled))
    out = np.empty(m)
    out[order] = adjusted
    return out


def benjamini_hochberg(pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), in the order given."""
    p = check_probabilities("pvalues", pvalues)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = m * p[order] / np.arange(1, m + 1)  # m p_(j) / j
    adjusted = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    out = np.empty(m)
    out[order] = adjusted
    return out
