"""Adapt-inf's sample vectors: per-example adapter gradients reduced by a seeded random projection, unit length.

Following the paper's code, a sample's vector is the gradient of its own loss with respect to the LoRA
parameters of one block (the last one by default), projected by a Rademacher matrix with entries +-1/sqrt(d)
and L2-normalised; the constant scale does not matter after the normalisation. peftc materialises the matrix
once per (P, d, seed), stored (d, P) as a linear layer's weight, and projects a whole batch with one GEMM
(:func:`peftc.functional.linear_forward`).
"""
from __future__ import annotations

import numpy as np

from .. import functional as F



def projection_matrix(p: int, d: int, seed: int) -> np.ndarray:
    """The Rademacher projection from p to d dimensions as a (d, p) float32 weight, entries +-1/sqrt(d), a
    function of (p, d, seed) alone.

    >>> projection_matrix(3, 2, seed=0).shape
    (2, 3)
    """
    if int(p) != p or p < 1 or int(d) != d or d < 1:
        raise ValueError(f"p and d must be positive integers, got p={p}, d={d}")
    signs = np.random.default_rng([int(seed), 0x5A4D]).integers(0, 2, size=(int(d), int(p)), dtype=np.int8)
    return ((signs.astype(np.float32) * 2.0 - 1.0) / np.float32(np.sqrt(d))).astype(np.float32)


def sample_vectors(grads: np.ndarray, projection: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors (E, d) float32, gradient norms (E,) float64) of per-example flat gradients ``grads`` (E, P)
    under ``projection`` (d, P) (:func:`projection_matrix`).

    A row with a zero gradient maps to the zero vector. NaN or Inf in ``grads`` is an error naming the rows.

    >>> g = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    >>> u, norms = sample_vectors(g, np.eye(2, dtype=np.float32))
    >>> u.tolist(), norms.tolist()
    ([[0.6000000238418579, 0.800000011920929], [0.0, 0.0]], [5.0, 0.0])
    """
    if grads.ndim != 2 or projection.ndim != 2 or grads.shape[1] != projection.shape[1]:
        raise ValueError(f"grads (E, P) and projection (d, P) must agree on P, got grads {grads.shape} and "
                         f"projection {projection.shape}")
    bad = ~np.isfinite(grads).all(axis=1)
    if bad.any():
        raise ValueError(f"grads {grads.shape} holds NaN or Inf in rows {np.flatnonzero(bad)[:8].tolist()}: a "
                         f"non-finite per-example gradient has no sample vector")
    norms = np.sqrt(np.einsum("ij,ij->i", grads, grads, dtype=np.float64))
    v = F.linear_forward(np.ascontiguousarray(grads, dtype=np.float32), projection, None)  # (E, P) x (P, d)
    length = np.linalg.norm(v, axis=1, keepdims=True)
    v = np.divide(v, length, out=np.zeros_like(v), where=length > 0)
    return v.astype(np.float32), norms
