"""The per-cluster budget and coverage-centric sampling (CCS) inside a cluster, as in Adapt-inf's code.

:func:`allocate` splits a total over clusters: an equal share ceil(B/K) when every cluster can give it,
otherwise water-filling from the smallest cluster up (a cluster smaller than the running share gives all
it has and the shortfall is spread over the larger clusters). The code's ceilings can overshoot B; peftc
trims the overshoot from the largest allocations (ours), so the allocation sums to min(B, pool).

:func:`ccs_sample` stratifies the score range between the 5% and 95% quantiles into 50 equal-width strata,
walks them from high to low and draws ceil(remaining / strata left) from each uniformly (all of a stratum
that has fewer, moving its shortfall on). Scores at or below the low cut or above the high cut are outliers
the paper's code never selects; when the strata cannot fill the budget, peftc fills the rest uniformly
from the unselected rows (ours, so a cluster always meets its budget), which ``fill=False`` turns off.
"""
from __future__ import annotations

import math

import numpy as np


def allocate(sizes: np.ndarray, budget: int) -> np.ndarray:
    """(K,) int64 per-cluster budgets for cluster sizes ``sizes`` and a total ``budget`` <= sum(sizes).

    >>> allocate(np.array([2, 10, 10]), 12).tolist()
    [2, 5, 5]
    >>> allocate(np.array([5, 5]), 6).tolist()
    [3, 3]
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.ndim != 1 or sizes.size == 0 or (sizes < 0).any():
        raise ValueError(f"sizes must be a non-empty 1-D array of counts >= 0, got {sizes.tolist()}")
    if int(budget) != budget or budget < 0:
        raise ValueError(f"budget must be a non-negative integer, got {budget}")
    total = int(sizes.sum())
    if budget > total:
        raise ValueError(f"budget {budget} exceeds the pool: the clusters hold {total} samples (sizes "
                         f"{sizes.tolist()[:10]}{' ...' if sizes.size > 10 else ''})")
    k = sizes.size
    if sizes.min() * k >= budget:
        out = np.full(k, math.ceil(budget / k), dtype=np.int64)
    else:
        out = np.zeros(k, dtype=np.int64)
        order = np.argsort(sizes, kind="stable")
        share = math.ceil(budget / k)
        for i, c in enumerate(order):
            if sizes[c] < share:
                out[c] = sizes[c]
                if i + 1 < k:
                    share += math.ceil((share - sizes[c]) / (k - i - 1))
            else:
                out[c] = share
    out = np.minimum(out, sizes)
    over = int(out.sum()) - budget
    while over > 0:  # trim the ceilings' overshoot, one from each of the largest allocations in turn
        for c in np.argsort(-out, kind="stable"):
            if over == 0:
                break
            if out[c] > 0:
                out[c] -= 1
                over -= 1
    return out


def ccs_sample(scores: np.ndarray, budget: int, rng: np.random.Generator, strata: int = 50,
               low_q: float = 0.05, high_q: float = 0.95, fill: bool = True) -> np.ndarray:
    """Indices (sorted, distinct) of ``budget`` rows chosen by coverage-centric sampling over ``scores``.

    >>> ccs_sample(np.arange(100.0), 10, np.random.default_rng(0)).size
    10
    """
    x = np.asarray(scores, np.float64)
    n = x.size
    if int(budget) != budget or budget < 0:
        raise ValueError(f"budget must be a non-negative integer, got {budget}")
    if budget > n:
        raise ValueError(f"budget {budget} exceeds the pool: scores has {n} samples (shape {x.shape})")
    if not np.isfinite(x).all():
        raise ValueError(f"scores {x.shape} hold NaN or Inf")
    if budget == 0:
        return np.zeros(0, dtype=np.int64)
    s = np.sort(x)
    lo, hi = s[int(n * low_q)], s[min(int(n * high_q), n - 1)]
    width = (hi - lo) / strata
    chosen: list[int] = []
    remaining, quota, right = budget, math.ceil(budget / strata), hi
    for i in range(strata):
        if remaining <= 0 or quota <= 0:
            break
        left = right - width
        cand = np.flatnonzero((x > left) & (x <= right))
        if cand.size < quota:
            chosen.extend(cand.tolist())
            if i + 1 < strata:
                quota = math.ceil((remaining - cand.size) / (strata - i - 1))
                remaining -= cand.size
        else:
            chosen.extend(rng.choice(cand, size=quota, replace=False).tolist())
            remaining -= quota
        right = left
    picked = np.unique(np.asarray(chosen, dtype=np.int64))
    if picked.size > budget:  # the strata's ceilings can overshoot
        picked = np.sort(rng.choice(picked, size=budget, replace=False))
    if fill and picked.size < budget:
        rest = np.setdiff1d(np.arange(n), picked)
        picked = np.sort(np.concatenate([picked, rng.choice(rest, size=budget - picked.size, replace=False)]))
    return picked
