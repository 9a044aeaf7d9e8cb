"""Linear kernels: C against the NumPy reference, float64 finite differences, torch autograd."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad

N, IC, OC = 6, 5, 4


@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward_matches_reference(rng, bias):
    x, w, b = f32(rng, N, IC), f32(rng, OC, IC), (f32(rng, OC) if bias else None)
    assert_close(F.linear_forward(x, w, b), R.linear_forward(x, w, b), 1e-5, 1e-5, "y")


def test_linear_backward_matches_reference(rng):
    x, w, dy = f32(rng, N, IC), f32(rng, OC, IC), f32(rng, N, OC)
    got = [f32(rng, N, IC), f32(rng, OC, IC), f32(rng, OC)]
    want = [g.astype(np.float64) for g in got]
    F.linear_backward(dy, x, w, dx=got[0], dweight=got[1], dbias=got[2])
    R.linear_backward(dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), dx=want[0],
                      dweight=want[1], dbias=want[2])
    for name, g, r in zip(("dx", "dweight", "dbias"), got, want):
        assert_close(g, r, 1e-5, 1e-5, name)


def test_linear_backward_matches_finite_differences(rng):
    x, w, b, dy = f32(rng, N, IC), f32(rng, OC, IC), f32(rng, OC), f32(rng, N, OC)
    x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)

    def loss():
        return float(np.sum(R.linear_forward(x64, w64, b64) * dy))

    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    F.linear_backward(dy, x, w, dx=dx, dweight=dw, dbias=db)
    assert_close(dx, numerical_grad(loss, x64), 1e-4, 1e-4, "dx")
    assert_close(dw, numerical_grad(loss, w64), 1e-4, 1e-4, "dweight")
    assert_close(db, numerical_grad(loss, b64), 1e-4, 1e-4, "dbias")


def test_linear_backward_accumulates(rng):
    x, w, dy = f32(rng, N, IC), f32(rng, OC, IC), f32(rng, N, OC)
    once = [np.zeros((N, IC), np.float32), np.zeros((OC, IC), np.float32), np.zeros(OC, np.float32)]
    F.linear_backward(dy, x, w, dx=once[0], dweight=once[1], dbias=once[2])
    twice = [g.copy() for g in once]
    F.linear_backward(dy, x, w, dx=twice[0], dweight=twice[1], dbias=twice[2])
    for name, a, b in zip(("dx", "dweight", "dbias"), twice, once):
        assert_close(a, 2 * b, 1e-6, 1e-6, name)


def test_linear_backward_frozen_weight_gives_only_dx(rng):
    x, w, dy = f32(rng, N, IC), f32(rng, OC, IC), f32(rng, N, OC)
    dx = np.zeros_like(x)
    F.linear_backward(dy, None, w, dx=dx)
    assert_close(dx, dy.astype(np.float64) @ w.astype(np.float64), 1e-5, 1e-5, "dx")


def test_linear_empty_batch_gives_empty_output_and_no_gradient(rng):
    x, w, b = np.zeros((0, IC), np.float32), f32(rng, OC, IC), f32(rng, OC)
    assert F.linear_forward(x, w, b).shape == (0, OC)
    dw, db = np.zeros_like(w), np.zeros_like(b)
    F.linear_backward(np.zeros((0, OC), np.float32), x, w, dweight=dw, dbias=db)
    assert not dw.any() and not db.any()


def test_linear_with_zero_input_features_returns_bias(rng):
    b = f32(rng, OC)
    y = F.linear_forward(np.zeros((N, 0), np.float32), np.zeros((OC, 0), np.float32), b,
                         out=np.full((N, OC), np.nan, np.float32))
    assert_close(y, np.broadcast_to(b, (N, OC)), 0, 0, "y")


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch_autograd(rng, torch, bias):
    x, w, b, dy = f32(rng, N, IC), f32(rng, OC, IC), (f32(rng, OC) if bias else None), f32(rng, N, OC)
    y = F.linear_forward(x, w, b)
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    db = np.zeros(OC, np.float32) if bias else None
    F.linear_backward(dy, x, w, dx=dx, dweight=dw, dbias=db)
    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True) if bias else None
    yt = torch.nn.functional.linear(xt, wt, bt)
    yt.backward(torch.tensor(dy))
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-5, "y")
    assert_close(dx, xt.grad.numpy(), 1e-5, 1e-5, "dx")
    assert_close(dw, wt.grad.numpy(), 1e-5, 1e-5, "dweight")
    if bias:
        assert_close(db, bt.grad.numpy(), 1e-5, 1e-5, "dbias")
