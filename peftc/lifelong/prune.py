"""Permanent cluster-wise pruning: semantic de-duplication of the stored pool by cosine similarity.

Inside a cluster (rows in pool order, i.e. arrival order), M_j is the highest cosine similarity of row j to
any earlier row of the cluster (0 for the first). Two steps, both permanent:

1. threshold (SemDeDup, Abbas et al. 2023): rows with M_j above ``threshold`` are near-duplicates of an
   earlier row and are dropped;
2. bound (Adapt-inf's code): if the pool still exceeds ``bound``, each cluster keeps its share of the bound
   (:func:`peftc.lifelong.budget.allocate` over the cluster sizes), the rows with the smallest M_j (a stable
   sort, so earlier rows win ties).

So the stored pool never exceeds ``bound`` however long the stream grows. M_j is computed blockwise
(row block J against the rows before it: one GEMM per block), holding O(n * block) floats.
"""
from __future__ import annotations

import numpy as np

from .budget import allocate


def max_earlier_similarity(vectors: np.ndarray, block: int = 1024) -> np.ndarray:
    """(n,) float64: the largest cosine similarity of each row to an earlier row (0 for the first; negative
    similarities count as 0).

    >>> max_earlier_similarity(np.array([[1., 0.], [1., 0.], [0., 1.]])).tolist()
    [0.0, 1.0, 0.0]
    """
    v = np.asarray(vectors, np.float32)
    if v.ndim != 2:
        raise ValueError(f"vectors must be (n, d), got {v.shape}")
    length = np.linalg.norm(v, axis=1, keepdims=True)
    u = np.divide(v, length, out=np.zeros_like(v), where=length > 0)
    n = u.shape[0]
    m = np.zeros(n, dtype=np.float64)
    for start in range(0, n, block):
        stop = min(start + block, n)
        s = u[start:stop] @ u[:stop].T  # (block, stop): one GEMM
        s[:, start:stop] = np.where(np.tri(stop - start, k=-1, dtype=bool), s[:, start:stop], 0.0)
        m[start:stop] = np.maximum(s.max(axis=1), 0.0)
    return m


def prune_pool(vectors: np.ndarray, labels: np.ndarray, bound: int, threshold: float | None = None
               ) -> np.ndarray:
    """Sorted indices of the rows the pool keeps (see the module docstring); ``labels`` are the clusters.

    >>> v = np.array([[1., 0.], [1., 0.], [0., 1.], [0.6, 0.8]])
    >>> prune_pool(v, np.array([0, 0, 1, 1]), bound=3, threshold=0.99).tolist()
    [0, 2, 3]
    >>> prune_pool(v, np.array([0, 0, 1, 1]), bound=2).tolist()
    [0, 2]
    """
    v = np.asarray(vectors)
    labels = np.asarray(labels, dtype=np.int64)
    if v.ndim != 2 or labels.shape != (v.shape[0],):
        raise ValueError(f"vectors (n, d) and labels (n,) must agree, got {v.shape} and {labels.shape}")
    if int(bound) != bound or bound < 1:
        raise ValueError(f"bound must be a positive integer, got {bound}")
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold}")
    if not np.isfinite(v).all():
        raise ValueError(f"vectors {v.shape} hold NaN or Inf")
    clusters = np.unique(labels)
    m = np.zeros(v.shape[0])
    for c in clusters:
        rows = np.flatnonzero(labels == c)
        m[rows] = max_earlier_similarity(v[rows])
    keep = np.ones(v.shape[0], dtype=bool)
    if threshold is not None:
        keep &= m <= threshold
    if keep.sum() <= bound:
        return np.flatnonzero(keep)
    sizes = np.array([np.count_nonzero(keep & (labels == c)) for c in clusters], dtype=np.int64)
    shares = allocate(sizes, int(bound))
    out = []
    for c, share in zip(clusters, shares):
        rows = np.flatnonzero(keep & (labels == c))
        out.append(rows[np.argsort(m[rows], kind="stable")[:share]])
    return np.sort(np.concatenate(out))
