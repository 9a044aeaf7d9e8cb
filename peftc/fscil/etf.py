"""Pre-assigned class prototypes: a simplex equiangular tight frame (ETF), or a near-ETF when the width is short.

A simplex ETF of K unit vectors has every pairwise cosine equal to -1/(K-1), the most any K vectors can be
spread (Papyan et al. 2020; used as fixed FSCIL targets by NC-FSCIL, Yang et al. 2023). With
``E = sqrt(K/(K-1)) (I_K - 11^T/K)`` (columns in the (K-1)-dim subspace orthogonal to 1), its coordinates
in an orthonormal basis of that subspace are placed in the H-dim space by a seeded random orthonormal map;
this needs H >= K-1. For H < K-1 the vectors are spread by projected gradient descent on a soft maximum of
the pairwise cosines (the near-ETF of maximal minimum angle, approximately), from a seeded start.
"""
from __future__ import annotations

import functools

import numpy as np


def _orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diag(r))  # a unique sign per column, so the map depends only on the seed


def simplex_etf(num_classes: int, width: int, seed: int = 0, steps: int = 2000) -> np.ndarray:
    """(K, H) float32 unit rows, one fixed target per class.

    >>> m = simplex_etf(4, 8)
    >>> [round(float(c), 3) for c in (m @ m.T)[0]]
    [1.0, -0.333, -0.333, -0.333]
    """
    k, h = int(num_classes), int(width)
    if k < 2 or h < 2:
        raise ValueError(f"num_classes and width must be >= 2, got {num_classes}, {width}")
    return _frame(k, h, int(seed), int(steps)).copy()


@functools.lru_cache(maxsize=8)
def _frame(k: int, h: int, seed: int, steps: int) -> np.ndarray:
    """simplex_etf's computation, kept per arguments (the short-width descent takes a while for 100 classes)."""
    rng = np.random.default_rng(seed)
    if h >= k - 1:
        e = np.sqrt(k / (k - 1)) * (np.eye(k) - np.full((k, k), 1.0 / k))
        ones = np.full((k, 1), 1.0 / np.sqrt(k))
        # an orthonormal basis of the complement of 1: QR of [1 | I] drops the first column
        q, _ = np.linalg.qr(np.concatenate([ones, np.eye(k)], axis=1))
        basis = q[:, 1:k]  # (K, K-1)
        coords = e.T @ basis  # (K, K-1): row c is class c's vector in that basis
        m = coords @ _orthonormal(rng, h, k - 1).T
    else:
        m = rng.standard_normal((k, h))
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        beta = 20.0
        for _ in range(int(steps)):
            g = m @ m.T
            np.fill_diagonal(g, -np.inf)
            w = np.exp(beta * (g - g.max()))
            w /= w.sum()
            m -= 0.05 * (w + w.T) @ m  # descend the soft maximum of the cosines
            m /= np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)
