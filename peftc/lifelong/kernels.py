"""Stateless calls of the lifelong data-selection kernels (csrc/lifelong.c); the NumPy twins with the same
names are in :mod:`peftc.lifelong.reference`.

Each function validates what the C wrapper cannot know (the meaning of its arguments) and raises a
ValueError naming the argument and the shapes; the C wrapper checks dtype, contiguity, shapes and aliasing.
"""
from __future__ import annotations

import numpy as np

from .. import _C
from .. import functional as F


def lora_per_example_grad(x: np.ndarray, dy: np.ndarray, lora_A: np.ndarray, lora_B: np.ndarray,
                          offsets: np.ndarray, scaling: float, *, dlora_A: np.ndarray | None = None,
                          dlora_B: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-example gradients of a LoRA adapter ``y = x W^T + scaling * x A^T B^T`` (no dropout), one C call.

    ``x`` (N, IC) are the layer's input rows and ``dy`` (N, OC) the gradient of the loss at its output rows;
    rows ``offsets[e]:offsets[e+1]`` belong to example e. Returns ``(dlora_A, dlora_B)`` of shapes
    (E, R, IC) and (E, OC, R), accumulated into the arrays given (new zeroed arrays otherwise). Summed over
    e they equal the batch gradient :func:`peftc.functional.lora_backward` accumulates.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, dy = rng.standard_normal((5, 4), dtype=np.float32), rng.standard_normal((5, 3), dtype=np.float32)
    >>> a, b = rng.standard_normal((2, 4), dtype=np.float32), rng.standard_normal((3, 2), dtype=np.float32)
    >>> da, db = lora_per_example_grad(x, dy, a, b, np.array([0, 2, 5]), 0.5)
    >>> da.shape, db.shape
    ((2, 2, 4), (2, 3, 2))
    """
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or offsets.size < 1:
        raise ValueError(f"offsets must be a 1-D array of E + 1 row indices, got shape {offsets.shape}")
    if offsets[0] < 0 or np.any(np.diff(offsets) < 0) or offsets[-1] > x.shape[0]:
        raise ValueError(f"offsets must be non-decreasing within [0, N = {x.shape[0]}] (x is {x.shape}), "
                         f"got {offsets.tolist()[:8]}{' ...' if offsets.size > 8 else ''}")
    e, r = offsets.size - 1, lora_A.shape[0]
    if dlora_A is None:
        dlora_A = F.zeros((e, r, lora_A.shape[1]))
    if dlora_B is None:
        dlora_B = F.zeros((e, lora_B.shape[0], r))
    work = np.empty(_C.lora_per_example_grad_workspace_size(x.shape[0], r), dtype=np.float32)
    try:
        _C.lora_per_example_grad(dlora_A, dlora_B, work, x, dy, lora_A, lora_B, offsets, float(scaling))
    except ValueError as err:
        if "NaN" not in str(err):
            raise
        raise ValueError(f"lora_per_example_grad: dy {dy.shape} (the output gradient of the rows offsets[0]:"
                         f"offsets[-1] = {offsets[0]}:{offsets[-1]}) holds NaN or Inf, so the per-example "
                         f"gradients would too") from None
    return dlora_A, dlora_B


def kmeans_assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,) int64, squared distances (N,) float32): each row's nearest centroid, ties to the lowest index.

    >>> kmeans_assign(np.array([[0, 0], [3, 1]], np.float32), np.array([[0, 1], [3, 0]], np.float32))[0]
    array([0, 1])
    """
    n, k = x.shape[0], centroids.shape[0]
    labels = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float32)
    work = np.empty(_C.kmeans_assign_workspace_size(n, k), dtype=np.float32)
    try:
        _C.kmeans_assign(labels, dist, work, x, centroids)
    except ValueError as err:
        if "NaN" not in str(err):
            raise
        raise ValueError(f"kmeans_assign: x {x.shape} holds NaN or Inf (centroids {centroids.shape})") from None
    return labels, dist


def kmeans_update(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """In place: every non-empty cluster's centroid becomes the mean of its rows (an empty one keeps its
    centroid). Returns the counts (K,) int64.

    >>> c = np.zeros((2, 2), np.float32)
    >>> kmeans_update(np.array([[0, 0], [2, 2], [5, 5]], np.float32), np.array([0, 0, 1]), c), c[0]
    (array([2, 1]), array([1., 1.], dtype=float32))
    """
    counts = np.empty(centroids.shape[0], dtype=np.int64)
    _C.kmeans_update(centroids, counts, x, np.ascontiguousarray(labels, dtype=np.int64))
    return counts
