"""Fused batch norm + ReLU kernels: C against the NumPy reference, bit-for-bit against the unfused
batch-norm and ReLU kernels, float64 finite differences of the reference, torch autograd parity.
Planes wider than the kernels' 16 float lanes (and with a remainder) exercise the vectorised sums."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad

SHAPES = [(4, 3, 3, 2), (3, 2, 5, 7), (2, 3, 8, 8)]  # plane sizes 6, 35, 64


def bn_relu_case(rng, shape):
    n, ch, ih, iw = shape
    x = f32(rng, n, ch, ih, iw) * 2.0 + 0.5
    return (x, f32(rng, ch) * 0.3 + 1.0, f32(rng, ch) * 0.5, f32(rng, ch) * 0.1, np.abs(f32(rng, ch)) + 0.5)


def _stats(mode, rm, rv, dtype=np.float32):
    return (None, None) if mode == "test_batch" else (rm.astype(dtype), rv.astype(dtype))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["train", "test_batch", "eval"])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm2d_relu_forward_matches_reference(rng, shape, mode, affine):
    x, g, b, rm, rv = bn_relu_case(rng, shape)
    g, b = (g, b) if affine else (None, None)
    training = mode != "eval"
    run, ref_run = _stats(mode, rm, rv), _stats(mode, rm, rv, np.float64)
    y, mean, rstd = F.batchnorm2d_relu_forward(x, *run, g, b, training, 0.2, 1e-5)
    y_ref, mean_ref, rstd_ref = R.batchnorm2d_relu_forward(x.astype(np.float64), *ref_run, g, b, training, 0.2, 1e-5)
    assert (y >= 0).all() and (y == 0).any() and (y > 0).any()
    assert_close(y, y_ref, 1e-5, 1e-5, "y")
    assert_close(mean, mean_ref, 1e-6, 1e-6, "mean")
    assert_close(rstd, rstd_ref, 1e-5, 1e-6, "rstd")
    if run[0] is not None:
        assert_close(run[0], ref_run[0], 1e-6, 1e-6, "running_mean")
        assert_close(run[1], ref_run[1], 1e-6, 1e-6, "running_var")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_relu_backward_matches_reference_and_the_unfused_kernels_exactly(rng, shape, training):
    x, g, b, rm, rv = bn_relu_case(rng, shape)
    run = (None, None) if training else (rm, rv)
    y, mean, rstd = F.batchnorm2d_relu_forward(x, *run, g, b, training)
    pre, mean2, rstd2 = F.batchnorm2d_forward(x, *run, g, b, training)
    np.testing.assert_array_equal(y, F.relu_forward(pre))
    np.testing.assert_array_equal(mean, mean2)
    dy = f32(rng, *x.shape)
    init = [f32(rng, *x.shape), f32(rng, *g.shape), f32(rng, *b.shape)]  # backward accumulates
    fused = [a.copy() for a in init]
    F.batchnorm2d_relu_backward(dy, y, x, mean, rstd, g, training, dx=fused[0], dweight=fused[1], dbias=fused[2])
    unfused = [a.copy() for a in init]
    d = np.zeros_like(dy)
    F.relu_backward(dy, y, dx=d)
    F.batchnorm2d_backward(d, x, mean, rstd, g, training, dx=unfused[0], dweight=unfused[1], dbias=unfused[2])
    ref = [a.astype(np.float64) for a in init]
    R.batchnorm2d_relu_backward(dy, y, x, mean, rstd, g, training, dx=ref[0], dweight=ref[1], dbias=ref[2])
    for name, got, same, want in zip(("dx", "dweight", "dbias"), fused, unfused, ref):
        np.testing.assert_array_equal(got, same, err_msg=name)
        assert_close(got, want, 1e-5, 1e-5, name)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mask_from", ["y", "map"])
def test_batchnorm2d_relu_backward_matches_finite_differences(rng, training, mask_from):
    x, g, b, rm, rv = bn_relu_case(rng, (3, 2, 2, 3))
    x64, g64, b64 = (v.astype(np.float64) for v in (x, g, b))
    run64 = (None, None) if training else (rm.astype(np.float64), rv.astype(np.float64))
    dy = f32(rng, *x.shape)

    def loss():
        return float(np.sum(R.batchnorm2d_relu_forward(x64, *run64, g64, b64, training)[0] * dy))

    run = (None, None) if training else (rm, rv)
    scale, shift = np.empty(2, np.float32), np.empty(2, np.float32)
    y, mean, rstd = F.batchnorm2d_relu_forward(x, *run, g, b, training, scale=scale, shift=shift)
    pre = R.batchnorm2d_forward(x64, *run64, g64, b64, training)[0]
    assert np.abs(pre).min() > 1e-3, "a pre-activation at the ReLU kink would make finite differences meaningless"
    dx, dg, db = np.zeros_like(x), np.zeros_like(g), np.zeros_like(b)
    mask = dict(scale=scale, shift=shift) if mask_from == "map" else {}
    F.batchnorm2d_relu_backward(dy, y if mask_from == "y" else None, x, mean, rstd, g, training, dx=dx, dweight=dg,
                                dbias=db, **mask)
    assert_close(dx, numerical_grad(loss, x64), 1e-4, 1e-4, "dx")
    assert_close(dg, numerical_grad(loss, g64), 1e-4, 1e-4, "dweight")
    assert_close(db, numerical_grad(loss, b64), 1e-4, 1e-4, "dbias")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mask_from", ["y", "map"])
def test_batchnorm2d_relu_matches_torch_autograd(rng, torch, training, mask_from):
    """The backward masks by the forward's output, or by the per-channel map (scale, shift) it rebuilds
    the output's sign from."""
    x, g, b, rm, rv = bn_relu_case(rng, (3, 4, 5, 7))
    run = (None, None) if training else (rm, rv)
    scale, shift = np.empty(4, np.float32), np.empty(4, np.float32)
    y, mean, rstd = F.batchnorm2d_relu_forward(x, *run, g, b, training, scale=scale, shift=shift)
    dy = f32(rng, *x.shape)
    dx, dg, db = np.zeros_like(x), np.zeros_like(g), np.zeros_like(b)
    mask = dict(scale=scale, shift=shift) if mask_from == "map" else {}
    F.batchnorm2d_relu_backward(dy, y if mask_from == "y" else None, x, mean, rstd, g, training, dx=dx, dweight=dg,
                                dbias=db, **mask)
    xt, gt, bt = (torch.tensor(v, requires_grad=True) for v in (x, g, b))
    rt = (None, None) if training else (torch.tensor(rm), torch.tensor(rv))
    yt = torch.relu(torch.nn.functional.batch_norm(xt, *rt, gt, bt, training=training, eps=1e-5))
    (yt * torch.tensor(dy)).sum().backward()
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-5, "y")
    assert_close(dx, xt.grad.numpy(), 1e-4, 1e-5, "dx")
    assert_close(dg, gt.grad.numpy(), 1e-4, 1e-5, "dweight")
    assert_close(db, bt.grad.numpy(), 1e-4, 1e-5, "dbias")


def test_batchnorm2d_relu_rejects_bad_arguments_with_named_errors(rng):
    x, g, b, rm, rv = bn_relu_case(rng, (2, 3, 3, 2))
    with pytest.raises(ValueError, match="batchnorm2d_relu_forward"):
        F.batchnorm2d_relu_forward(x, rm, None, g, b, True)
    with pytest.raises(ValueError, match="batchnorm2d_relu_forward"):
        F.batchnorm2d_relu_forward(x, rm, -rv, g, b, False)
    y, mean, rstd = F.batchnorm2d_relu_forward(x, None, None, g, b, True)
    with pytest.raises(ValueError, match="batchnorm2d_relu_backward"):
        F.batchnorm2d_relu_backward(x, y[:1].copy(), x, mean, rstd, g, True, dx=np.zeros_like(x))
