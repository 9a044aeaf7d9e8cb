"""Plain-NumPy twins of :mod:`peftc.lifelong.kernels`, written for clarity (the test oracle; float64 inside)."""
from __future__ import annotations

import numpy as np


def lora_per_example_grad(x: np.ndarray, dy: np.ndarray, lora_A: np.ndarray, lora_B: np.ndarray,
                          offsets: np.ndarray, scaling: float) -> tuple[np.ndarray, np.ndarray]:
    """(dA (E, R, IC), dB (E, OC, R)): example e's gradients from its rows offsets[e]:offsets[e+1].

    >>> x, dy = np.ones((2, 3)), np.ones((2, 2))
    >>> lora_per_example_grad(x, dy, np.ones((1, 3)), np.ones((2, 1)), np.array([0, 1, 2]), 1.0)[1][0]
    array([[3.],
           [3.]])
    """
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    a, b = np.asarray(lora_A, np.float64), np.asarray(lora_B, np.float64)
    e = len(offsets) - 1
    da = np.zeros((e, a.shape[0], a.shape[1]))
    db = np.zeros((e, b.shape[0], b.shape[1]))
    for i in range(e):
        xs, gs = x[offsets[i]:offsets[i + 1]], dy[offsets[i]:offsets[i + 1]]
        # y = x W^T + s x A^T B^T: dL/dB = s dy^T (x A^T), dL/dA = s (dy B)^T x
        db[i] = scaling * gs.T @ (xs @ a.T)
        da[i] = scaling * (gs @ b).T @ xs
    return da, db


def kmeans_assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (first of equals) and the squared distance to it, by explicit differences.

    >>> kmeans_assign(np.array([[0., 0.]]), np.array([[1., 0.], [0., 2.]]))
    (array([0]), array([1.]))
    """
    x, c = np.asarray(x, np.float64), np.asarray(centroids, np.float64)
    d = ((x[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
    labels = d.argmin(axis=1)
    return labels, d[np.arange(len(x)), labels]


def kmeans_update(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(new centroids, counts): each non-empty cluster's mean, the old centroid for an empty one.

    >>> kmeans_update(np.array([[1., 1.], [3., 3.]]), np.array([0, 0]), np.zeros((2, 2)))[0]
    array([[2., 2.],
           [0., 0.]])
    """
    c = np.array(centroids, np.float64)
    counts = np.bincount(labels, minlength=len(c))
    for k in range(len(c)):
        if counts[k]:
            c[k] = np.asarray(x, np.float64)[labels == k].mean(axis=0)
    return c, counts
