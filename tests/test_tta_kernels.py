"""Softmax entropy and EATA selection kernels: C vs NumPy reference, finite differences, torch."""
from __future__ import annotations

import math

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad


def test_softmax_entropy_forward_matches_reference(rng):
    z = f32(rng, 7, 10, scale=3.0)
    ent, probs = F.softmax_entropy_forward(z)
    ent_r, probs_r = R.softmax_entropy_forward(z)
    assert_close(ent, ent_r, 1e-5, 1e-6, "ent")
    assert_close(probs, probs_r, 1e-5, 1e-7, "probs")


def test_softmax_entropy_is_stable_for_huge_logits():
    z = np.array([[1e4, 0.0, -1e4], [50.0, 50.0, 50.0]], dtype=np.float32)
    ent, probs = F.softmax_entropy_forward(z)
    assert_close(ent, [0.0, math.log(3)], 0, 1e-6, "ent")
    assert np.isfinite(probs).all()


def test_softmax_entropy_rejects_nonfinite_logits():
    with pytest.raises((ValueError, FloatingPointError, ArithmeticError)):
        F.softmax_entropy_forward(np.array([[np.nan, 0.0]], dtype=np.float32))


def test_softmax_entropy_backward_matches_reference_and_accumulates(rng):
    z = f32(rng, 6, 5, scale=2.0)
    dent = f32(rng, 6)
    dent[2] = 0.0
    _, probs = F.softmax_entropy_forward(z)
    d = np.full_like(z, 0.5)
    F.softmax_entropy_backward(dent, probs, z, dlogits=d)
    d_r = np.full_like(z, 0.5)
    R.softmax_entropy_backward(dent, probs, z, dlogits=d_r)
    assert_close(d, d_r, 1e-5, 1e-6, "dlogits")
    assert np.all(d[2] == 0.5)


def test_softmax_entropy_gradient_matches_finite_differences(rng):
    z = rng.standard_normal((4, 6)) * 2.0
    w = rng.random(4)
    analytic = np.zeros_like(z)
    R.softmax_entropy_backward(w, R.softmax_entropy_forward(z)[1], z, dlogits=analytic)
    numeric = numerical_grad(lambda: float(w @ R.softmax_entropy_forward(z)[0]), z)
    assert_close(analytic, numeric, 1e-6, 1e-8, "float64 dH/dz")
    c = np.zeros((4, 6), dtype=np.float32)
    zf = z.astype(np.float32)
    F.softmax_entropy_backward(w.astype(np.float32), F.softmax_entropy_forward(zf)[1], zf, dlogits=c)
    assert_close(c, numeric, 1e-4, 1e-5, "C dH/dz")


def test_weighted_mean_entropy_gradient_matches_torch(rng, torch):
    z = f32(rng, 8, 10, scale=2.0)
    w = rng.random(8).astype(np.float32)
    zt = torch.tensor(z, requires_grad=True)
    logp = zt.log_softmax(1)
    h = -(logp.exp() * logp).sum(1)
    (h * torch.tensor(w)).mean().backward()
    ent, probs = F.softmax_entropy_forward(z)
    d = np.zeros_like(z)
    F.softmax_entropy_backward(w / 8, probs, z, dlogits=d)
    assert_close(ent, h.detach().numpy(), 1e-5, 1e-6, "entropy")
    assert_close(d, zt.grad.numpy(), 1e-4, 1e-7, "dlogits")


def _batch(rng, n=32, c=10):
    z = f32(rng, n, c, scale=4.0)
    ent, probs = F.softmax_entropy_forward(z)
    return ent, probs


def test_eata_first_batch_selects_by_entropy_threshold_and_sets_average(rng):
    ent, probs = _batch(rng)
    e0 = 0.4 * math.log(10)
    ema = np.zeros(10, dtype=np.float32)
    w, reliable, selected, ema_set = F.eata_select(ent, probs, ema, False, e0, 0.4)
    keep = ent < e0
    assert 0 < keep.sum() < len(ent)
    assert reliable == selected == keep.sum() and ema_set
    assert_close(w[keep], np.exp(e0 - ent[keep]), 1e-6, 0, "weights")
    assert np.all(w[~keep] == 0) and np.all(w[keep] > 1)
    assert_close(ema, probs[keep].mean(0), 1e-6, 1e-7, "ema")


def test_eata_redundancy_filter_and_average_match_reference(rng):
    e0 = 0.4 * math.log(10)
    ema, ema_r = (np.full(10, 0.1, dtype=np.float32) for _ in range(2))
    ema[3] = ema_r[3] = 0.5
    for _ in range(3):
        ent, probs = _batch(rng)
        w, rel, sel, st = F.eata_select(ent, probs, ema, True, e0, 0.4)
        w_r, rel_r, sel_r, st_r = R.eata_select(ent, probs, ema_r, True, e0, 0.4)
        assert (rel, sel, st) == (rel_r, sel_r, st_r) and sel < rel
        assert_close(w, w_r, 1e-6, 0, "weights")
        assert_close(ema, ema_r, 1e-6, 1e-7, "ema")


def test_eata_without_selection_leaves_average_unchanged(rng):
    ent, probs = _batch(rng)
    ema = np.zeros(10, dtype=np.float32)
    w, rel, sel, st = F.eata_select(ent, probs, ema, False, 0.0, 0.4)
    assert (rel, sel, st) == (0, 0, False) and not w.any() and not ema.any()


def test_eata_select_rejects_bad_arguments(rng):
    ent, probs = _batch(rng)
    with pytest.raises(ValueError, match="momentum"):
        F.eata_select(ent, probs, np.zeros(10, np.float32), True, 1.0, 0.4, momentum=1.5)
    with pytest.raises(ValueError, match="ema"):
        F.eata_select(ent, probs, np.zeros(9, np.float32), True, 1.0, 0.4)
    with pytest.raises(TypeError):
        F.eata_select(ent.astype(np.float64), probs, np.zeros(10, np.float32), True, 1.0, 0.4)
