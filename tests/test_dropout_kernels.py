"""Dropout kernels: counter-based mask, C against reference, finite differences, torch autograd."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_dropout_forward_matches_reference(rng, p):
    x = f32(rng, 9, 7)
    assert_close(F.dropout_forward(x, p, 3, 11), R.dropout_forward(x, p, 3, 11), 1e-6, 0, "out")


def test_dropout_with_zero_probability_is_identity(rng):
    x = f32(rng, 4, 5)
    assert np.array_equal(F.dropout_forward(x, 0.0, 1, 0), x)


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_dropout_backward_matches_reference_and_accumulates(rng, p):
    dout, dx0 = f32(rng, 6, 5), f32(rng, 6, 5)
    dx, want = dx0.copy(), dx0.astype(np.float64)
    F.dropout_backward(dout, p, 8, 4, dx=dx)
    R.dropout_backward(dout.astype(np.float64), p, 8, 4, dx=want)
    assert_close(dx, want, 1e-6, 1e-6, "dx")


def test_dropout_backward_matches_finite_differences(rng):
    x, dout = f32(rng, 5, 4), f32(rng, 5, 4)
    p, seed, offset = 0.35, 21, 6
    x64 = x.astype(np.float64)

    def loss():
        return float(np.sum(R.dropout_forward(x64, p, seed, offset) * dout))

    dx = np.zeros_like(x)
    F.dropout_backward(dout, p, seed, offset, dx=dx)
    assert_close(dx, numerical_grad(loss, x64), 1e-5, 1e-6, "dx")


def test_dropout_matches_torch_autograd_with_the_same_mask(rng, torch):
    x, dout = f32(rng, 8, 6), f32(rng, 8, 6)
    p, seed, offset = 0.4, 2, 100
    y = F.dropout_forward(x, p, seed, offset)
    dx = np.zeros_like(x)
    F.dropout_backward(dout, p, seed, offset, dx=dx)
    xt = torch.tensor(x, requires_grad=True)
    mask = torch.tensor(R.dropout_mask(x.shape, p, seed, offset))
    yt = torch.where(mask, xt / (1 - p), torch.zeros_like(xt))
    yt.backward(torch.tensor(dout))
    assert_close(y, yt.detach().numpy(), 1e-6, 0, "y")
    assert_close(dx, xt.grad.numpy(), 1e-6, 0, "dx")


def test_dropout_mask_depends_only_on_seed_and_element_counter():
    ones = np.ones(64, np.float32)
    whole = F.dropout_forward(ones, 0.5, 9, 0)
    assert np.array_equal(F.dropout_forward(ones[:40], 0.5, 9, 24), whole[24:])
    assert np.array_equal(F.dropout_forward(ones.reshape(8, 8), 0.5, 9, 0).ravel(), whole)
    assert not np.array_equal(F.dropout_forward(ones, 0.5, 10, 0), whole)


def test_dropout_keeps_about_one_minus_p_and_preserves_the_mean():
    n, p = 200_000, 0.3
    y = F.dropout_forward(np.ones(n, np.float32), p, 5, 0)
    kept = np.count_nonzero(y) / n
    assert abs(kept - (1 - p)) < 4 * np.sqrt(p * (1 - p) / n)
    assert np.all((y == 0) | np.isclose(y, 1 / (1 - p)))
    assert abs(y.mean() - 1.0) < 0.01
