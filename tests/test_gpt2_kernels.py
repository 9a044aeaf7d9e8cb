"""Kernels the GPT-2 decoder adds: the tanh GELU ("gelu_new"). C against the NumPy reference, float64
finite differences and torch autograd."""
from __future__ import annotations

import numpy as np

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad


def test_gelu_tanh_matches_reference_and_finite_differences(rng):
    x, dout = f32(rng, 3, 7, scale=3.0), f32(rng, 3, 7)
    assert_close(F.gelu_tanh_forward(x), R.gelu_tanh_forward(x.astype(np.float64)), 1e-6, 1e-6, "gelu_tanh")
    x64 = x.astype(np.float64)
    loss = lambda: float(np.sum(R.gelu_tanh_forward(x64) * dout))  # noqa: E731
    start = f32(rng, *x.shape)  # the backward adds into dx
    dx = start.copy()
    F.gelu_tanh_backward(dout, x, dx=dx)
    assert_close(dx, start + numerical_grad(loss, x64), 1e-4, 1e-5, "dx")


def test_gelu_tanh_matches_torch_tanh_gelu_over_the_whole_range(rng, torch):
    x = np.concatenate([np.linspace(-12, 12, 2001), [-90.0, -30.0, 0.0, 30.0, 90.0]]).astype(np.float32)
    dout = f32(rng, x.size)
    start = f32(rng, x.size)
    dx = start.copy()
    F.gelu_tanh_backward(dout, x, dx=dx)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.gelu(xt, approximate="tanh")
    yt.backward(torch.tensor(dout))
    y = F.gelu_tanh_forward(x)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    assert_close(y, yt.detach().numpy(), 1e-6, 1e-6, "gelu_tanh")
    # torch's float32 backward computes 1 - tanh^2 by subtraction and is ~1e-6 off float64 near x = 5, where
    # the kernel (1 - g taken as e g) stays within 2e-7: torch within 3e-6, float64 within 3e-7
    assert_close(dx, start + xt.grad.numpy().astype(np.float64), 1e-5, 3e-6, "dx vs torch")
    ref = start.astype(np.float64)
    R.gelu_tanh_backward(dout.astype(np.float64), x.astype(np.float64), dx=ref)
    assert_close(dx, ref, 1e-6, 3e-7, "dx vs float64")


def test_gelu_tanh_differs_from_the_exact_gelu(rng):
    # the two forms differ by up to ~5e-4 near |x| = 2: a model on the wrong one fails the logits parity
    x = np.linspace(-3, 3, 61).astype(np.float32)
    gap = np.abs(F.gelu_tanh_forward(x) - F.gelu_forward(x)).max()
    assert 1e-4 < gap < 1e-3, gap
