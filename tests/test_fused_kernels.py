"""Fused encoder kernels: LayerNorm(x + residual) with the sum written into x. C against the NumPy
reference and against the unfused add-then-LayerNorm, float64 finite differences through the fused
forward, torch autograd, and the module path the BERT blocks take."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R
from peftc.nn import LayerNorm

from .conftest import assert_close, f32, numerical_grad

N, H = 6, 40  # H not a multiple of the kernel's 16 lanes: the tail loop runs too


def case(rng):
    return f32(rng, N, H, scale=2.0) + 3.0, f32(rng, N, H), f32(rng, H), f32(rng, H)


def test_layernorm_residual_forward_matches_reference_and_writes_the_sum(rng):
    x, res, w, b = case(rng)
    x0, res0 = x.copy(), res.copy()
    y, mean, rstd = F.layernorm_residual_forward(x, res, w, b)
    x_ref = x0.astype(np.float64)
    y_ref, mean_ref, rstd_ref = R.layernorm_residual_forward(x_ref, res0.astype(np.float64), w, b)
    assert_close(x, x_ref, 1e-7, 1e-7, "x (the sum)")
    assert_close(y, y_ref, 1e-5, 1e-5, "y")
    assert_close(mean, mean_ref, 1e-6, 1e-6, "mean")
    assert_close(rstd, rstd_ref, 1e-5, 1e-6, "rstd")
    assert np.array_equal(res, res0), "residual changed"


def test_layernorm_residual_forward_is_bitwise_add_then_layernorm(rng):
    x, res, w, b = case(rng)
    s = x + res
    want = F.layernorm_forward(s, w, b)
    got = F.layernorm_residual_forward(x, res, w, b)
    assert np.array_equal(x, s)
    for g, e, name in zip(got, want, ("y", "mean", "rstd")):
        assert np.array_equal(g, e), name


def test_layernorm_residual_backward_matches_finite_differences(rng):
    x, res, w, b = case(rng)
    dout = f32(rng, N, H)
    x64, res64, w64, b64 = (a.astype(np.float64) for a in (x, res, w, b))

    def loss() -> float:
        return float(np.sum(R.layernorm_residual_forward(x64.copy(), res64, w64, b64, 1e-5)[0] * dout))

    _, mean, rstd = F.layernorm_residual_forward(x, res, w, b, 1e-5)
    start = f32(rng, N, H)  # the backward adds into dx
    dsum = start.copy()
    F.layernorm_backward(dout, x, w, mean, rstd, dx=dsum)  # x now holds the sum
    assert_close(dsum, start + numerical_grad(loss, x64), 1e-4, 1e-4, "d x")
    assert_close(dsum, start + numerical_grad(loss, res64), 1e-4, 1e-4, "d residual")


def test_layernorm_residual_matches_torch_autograd(rng, torch):
    x, res, w, b = case(rng)
    dout = f32(rng, N, H)
    t = [torch.tensor(a, requires_grad=True) for a in (x, res, w, b)]
    yt = torch.nn.functional.layer_norm(t[0] + t[1], (H,), t[2], t[3], eps=1e-12)
    yt.backward(torch.tensor(dout))
    norm = LayerNorm.from_weights(w, b)
    start = f32(rng, H), f32(rng, H)  # parameter gradients accumulate
    norm.weight.grad, norm.bias.grad = start[0].copy(), start[1].copy()
    y = norm.forward_residual(x, res)
    dsum = norm.backward(dout)
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-5, "y")
    assert_close(dsum, t[0].grad.numpy(), 1e-4, 1e-5, "dx")
    assert_close(dsum, t[1].grad.numpy(), 1e-4, 1e-5, "dresidual")
    assert_close(norm.weight.grad, start[0] + t[2].grad.numpy().astype(np.float64), 1e-4, 1e-5, "dweight")
    assert_close(norm.bias.grad, start[1] + t[3].grad.numpy().astype(np.float64), 1e-4, 1e-5, "dbias")


def test_layernorm_forward_residual_module_matches_forward_of_the_sum(rng):
    x, res, w, b = case(rng)
    fused, plain = LayerNorm.from_weights(w, b), LayerNorm.from_weights(w.copy(), b.copy())
    want = plain.forward(x + res)
    got = fused.forward_residual(x.reshape(2, 3, H), res.reshape(2, 3, H))
    assert got.shape == (2, 3, H)
    assert np.array_equal(got.reshape(N, H), want)
    dy = f32(rng, N, H)
    assert np.array_equal(fused.backward(dy.reshape(2, 3, H)).reshape(N, H), plain.backward(dy))


def test_layernorm_residual_rejects_mismatched_shapes_and_aliasing(rng):
    x, res, w, b = case(rng)
    with pytest.raises(ValueError, match="residual"):
        F.layernorm_residual_forward(x, res[:-1].copy(), w, b)
    with pytest.raises(ValueError):
        F.layernorm_residual_forward(x, x, w, b)
    with pytest.raises(ValueError, match="residual"):
        LayerNorm.from_weights(w, b).forward_residual(x, res[:-1].copy())
