"""Pseudo-skill clusters: k-means with k-means++ seeding on the sample vectors, and the choice of k.

The assignment and update steps are C kernels (:func:`peftc.lifelong.kernels.kmeans_assign`,
:func:`~peftc.lifelong.kernels.kmeans_update`); ``backend="reference"`` runs their NumPy twins instead, so
the two can be compared end to end. An empty cluster is re-seeded with the row farthest from its centroid.

Choosing k: the paper's code prints the within-cluster sum of (unsquared) distances, WSS, for its k
(default 10) with the silhouette commented out, i.e. k was read off a WSS sweep. :func:`choose_k` makes that
rule explicit (ours): over the candidate ks, the elbow of the WSS curve, the candidate farthest below the
chord from the first to the last point; ``rule="silhouette"`` takes the best mean silhouette instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels, reference


@dataclass
class KMeansResult:
    labels: np.ndarray  # (N,) int64
    centroids: np.ndarray  # (K, D) float32
    wss: float  # sum over rows of the (unsquared) distance to the own centroid
    iterations: int


def _check_input(x: np.ndarray, k: int) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError(f"x must be a 2-D (N, D) array, got {getattr(x, 'shape', type(x).__name__)}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    if k > x.shape[0]:
        raise ValueError(f"k = {k} clusters need at least k samples, x has {x.shape[0]} (x is {x.shape})")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"x {x.shape} holds NaN or Inf in rows {np.flatnonzero(bad)[:8].tolist()}")
    return np.ascontiguousarray(x, dtype=np.float32)


def kmeans_pp_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: the first centroid uniformly, each next one with probability proportional to the
    squared distance to the nearest centroid so far (uniformly among the rows when all distances are 0).

    >>> kmeans_pp_init(np.array([[0., 0.], [0., 1.], [9., 9.]], np.float32), 2, np.random.default_rng(0)).shape
    (2, 2)
    """
    x = _check_input(x, k)
    n = x.shape[0]
    chosen = [int(rng.integers(n))]
    d2 = ((x - x[chosen[0]]) ** 2).sum(axis=1, dtype=np.float64)
    for _ in range(1, k):
        total = d2.sum()
        if total > 0:
            nxt = int(rng.choice(n, p=d2 / total))
        else:
            nxt = int(rng.choice(np.setdiff1d(np.arange(n), chosen)))
        chosen.append(nxt)
        d2 = np.minimum(d2, ((x - x[nxt]) ** 2).sum(axis=1, dtype=np.float64))
    return x[chosen].copy()


def kmeans(x: np.ndarray, k: int, seed: int = 0, max_iter: int = 50, backend: str = "c") -> KMeansResult:
    """Lloyd's k-means from a k-means++ seeding; stops when no label changes or after ``max_iter`` rounds.

    >>> x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], np.float32)
    >>> kmeans(x, 2, seed=0).labels.tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])
    True
    """
    if backend not in ("c", "reference"):
        raise ValueError(f"backend must be 'c' or 'reference', got {backend!r}")
    x = _check_input(x, k)
    rng = np.random.default_rng([int(seed), 0x4B4D])
    c = kmeans_pp_init(x, k, rng)
    labels = np.full(x.shape[0], -1, dtype=np.int64)
    it = 0
    for it in range(1, max_iter + 1):
        if backend == "c":
            new, dist = kernels.kmeans_assign(x, c)
        else:
            new, dist = reference.kmeans_assign(x, c)
        counts = np.bincount(new, minlength=k)
        for empty in np.flatnonzero(counts == 0):  # re-seed from the row farthest from its centroid
            far = int(np.argmax(dist))
            new[far], dist[far] = empty, 0.0
            counts = np.bincount(new, minlength=k)
        if np.array_equal(new, labels):
            break
        labels = new
        if backend == "c":
            kernels.kmeans_update(x, labels, c)
        else:
            c = reference.kmeans_update(x, labels, c)[0].astype(np.float32)
    return KMeansResult(labels, c, wss(x, labels, c), it)


def wss(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> float:
    """Sum over rows of the Euclidean (unsquared) distance to the row's centroid, as the paper's code prints.

    >>> wss(np.array([[0., 0.], [3., 4.]]), np.array([0, 0]), np.array([[0., 0.]]))
    5.0
    """
    return float(np.linalg.norm(np.asarray(x, np.float64) - centroids[labels], axis=1).sum())


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette (Euclidean) over the rows; a row alone in its cluster scores 0.

    >>> silhouette(np.array([[0.], [0.1], [5.], [5.1]]), np.array([0, 0, 1, 1])) > 0.9
    True
    """
    x = np.asarray(x, np.float64)
    sq = (x * x).sum(axis=1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0))
    ks = np.unique(labels)
    if ks.size < 2:
        return 0.0
    mean_to = np.stack([d[:, labels == c].sum(axis=1) for c in ks], axis=1)
    sizes = np.array([(labels == c).sum() for c in ks], dtype=np.float64)
    own = np.searchsorted(ks, labels)
    rows = np.arange(len(x))
    a = mean_to[rows, own] / np.maximum(sizes[own] - 1.0, 1.0)
    other = mean_to / sizes
    other[rows, own] = np.inf
    b = other.min(axis=1)
    s = np.where(sizes[own] > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def elbow(ks: list[int], values: list[float]) -> int:
    """The k whose (k, value) point lies farthest below the chord from the first to the last point, both axes
    scaled to [0, 1] (the first k when the curve has no bend).

    >>> elbow([2, 4, 6, 8], [10.0, 4.0, 3.0, 2.5])
    4
    """
    k = np.asarray(ks, np.float64)
    v = np.asarray(values, np.float64)
    if k.size < 3:
        return int(k[0])
    kx = (k - k[0]) / max(k[-1] - k[0], 1e-12)
    vy = (v - v[-1]) / max(v[0] - v[-1], 1e-12)
    gap = (1.0 - kx) - vy  # the chord runs from (0, 1) to (1, 0)
    return int(k[int(np.argmax(gap))])


def choose_k(x: np.ndarray, candidates: list[int], seed: int = 0, rule: str = "wss") -> tuple[int, dict[int, float]]:
    """(k, {candidate: WSS or silhouette}) by the rule; candidates larger than the sample count are skipped.

    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(c, 0.05, (20, 2)) for c in (0, 3, 6)]).astype(np.float32)
    >>> choose_k(x, [1, 2, 3, 4, 5, 6], seed=0)[0]
    3
    """
    if rule not in ("wss", "silhouette"):
        raise ValueError(f"rule must be 'wss' or 'silhouette', got {rule!r}")
    ks = sorted(int(c) for c in candidates if 1 <= int(c) <= x.shape[0])
    if not ks:
        raise ValueError(f"no candidate k in {list(candidates)} fits x with {x.shape[0]} samples (x is {x.shape})")
    if rule == "wss":
        values = {k: kmeans(x, k, seed).wss for k in ks}
        return elbow(ks, [values[k] for k in ks]), values
    values = {k: silhouette(x, kmeans(x, k, seed).labels) for k in ks if k >= 2}
    if not values:
        return ks[0], values
    return max(values, key=lambda k: (values[k], -k)), values
