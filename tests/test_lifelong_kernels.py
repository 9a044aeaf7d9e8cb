"""The lifelong data-selection kernels: per-example LoRA gradients and k-means steps against their NumPy
twins, float64 finite differences, the batched backward, and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc.lifelong import kernels as K
from peftc.lifelong import reference as R


def lora_case(seed=0, n=13, ic=6, oc=5, r=3):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return f(n, ic), f(n, oc), f(r, ic), f(oc, r), np.array([0, 2, 2, 7, n])


def test_per_example_grad_matches_reference():
    x, dy, a, b, off = lora_case()
    da, db = K.lora_per_example_grad(x, dy, a, b, off, 0.7)
    ra, rb = R.lora_per_example_grad(x, dy, a, b, off, 0.7)
    err = max(np.abs(da - ra).max(), np.abs(db - rb).max())
    assert err < 1e-5, f"max abs error {err}"
    assert not da[1].any() and not db[1].any()  # the empty example


def test_per_example_grads_sum_to_the_batch_backward():
    x, dy, a, b, off = lora_case(seed=1)
    off = np.array([0, 4, 9, 13])
    da, db = K.lora_per_example_grad(x, dy, a, b, off, 2.0)
    w = np.zeros((b.shape[0], x.shape[1]), np.float32)
    _, _, u = F.lora_forward(x, w, None, a, b, None, 2.0)
    ga, gb = np.zeros_like(a), np.zeros_like(b)
    F.lora_backward(dy, x, u, w, a, b, 2.0, dlora_A=ga, dlora_B=gb)
    err = max(np.abs(da.sum(0) - ga).max(), np.abs(db.sum(0) - gb).max())
    assert err < 1e-5, f"max abs error {err} against lora_backward"


def test_per_example_grad_matches_finite_differences_in_float64():
    x, dy, a, b, off = lora_case(seed=2, n=6, ic=4, oc=3, r=2)
    off = np.array([0, 3, 6])
    s = 0.5
    x64, dy64, a64, b64 = (v.astype(np.float64) for v in (x, dy, a, b))

    def loss(e, a_, b_):  # example e's loss: <dy_e, s x_e A^T B^T>
        rows = slice(off[e], off[e + 1])
        return float((dy64[rows] * (s * x64[rows] @ a_.T @ b_.T)).sum())

    da, db = K.lora_per_example_grad(x, dy, a, b, off, s)
    h = 1e-6
    for e in range(2):
        for (i, j) in [(0, 0), (1, 3)]:
            ap, am = a64.copy(), a64.copy()
            ap[i, j] += h
            am[i, j] -= h
            fd = (loss(e, ap, b64) - loss(e, am, b64)) / (2 * h)
            assert abs(fd - da[e, i, j]) < 1e-4 * max(1.0, abs(fd)), (e, i, j, fd, da[e, i, j])
        bp, bm = b64.copy(), b64.copy()
        bp[2, 1] += h
        bm[2, 1] -= h
        fd = (loss(e, a64, bp) - loss(e, a64, bm)) / (2 * h)
        assert abs(fd - db[e, 2, 1]) < 1e-4 * max(1.0, abs(fd))


def test_per_example_grad_rejects_bad_input():
    x, dy, a, b, off = lora_case()
    with pytest.raises(ValueError, match="offsets"):
        K.lora_per_example_grad(x, dy, a, b, np.array([0, 5, 3, 13]), 1.0)
    with pytest.raises(ValueError, match="offsets"):
        K.lora_per_example_grad(x, dy, a, b, np.array([0, 20]), 1.0)
    bad = dy.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"dy \(13, 5\).*NaN"):
        K.lora_per_example_grad(x, bad, a, b, off, 1.0)
    with pytest.raises(ValueError, match="IC"):
        K.lora_per_example_grad(np.ascontiguousarray(x[:, :4]), dy, a, b, off, 1.0)
    before = x.copy()
    K.lora_per_example_grad(x, dy, a, b, off, 1.0)
    assert np.array_equal(before, x)


def test_kmeans_steps_match_reference():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 7)).astype(np.float32)
    c = rng.standard_normal((4, 7)).astype(np.float32)
    labels, dist = K.kmeans_assign(x, c)
    rl, rd = R.kmeans_assign(x, c)
    assert np.array_equal(labels, rl)
    assert np.abs(dist - rd).max() < 1e-4
    c2 = c.copy()
    c2[3] = 100.0  # far away: stays empty and must keep its centroid
    labels, _ = K.kmeans_assign(x, c2)
    new = c2.copy()
    counts = K.kmeans_update(x, labels, new)
    ref, rcounts = R.kmeans_update(x, labels, c2)
    assert np.array_equal(counts, rcounts) and counts[3] == 0
    assert np.abs(new - ref).max() < 1e-5


def test_kmeans_kernels_reject_bad_input():
    x = np.zeros((5, 3), np.float32)
    x[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"x \(5, 3\) holds NaN"):
        K.kmeans_assign(x, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError):
        K.kmeans_update(np.zeros((5, 3), np.float32), np.array([0, 1, 2, 0, 1]), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="D"):
        K.kmeans_assign(np.zeros((5, 3), np.float32), np.zeros((2, 4), np.float32))
