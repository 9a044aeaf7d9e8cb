"""peftc.nn.Linear: forward/backward on any leading shape, torch-style init, zero-copy weights."""
from __future__ import annotations

import numpy as np
import pytest

import peftc
from peftc import reference as R
from peftc.nn import Linear

from .conftest import assert_close, f32


def test_linear_module_forward_backward_match_reference_on_3d_input(rng):
    layer = Linear.from_weights(f32(rng, 4, 6), f32(rng, 4))
    x, dy = f32(rng, 2, 3, 6), f32(rng, 2, 3, 4)
    y = layer(x)
    assert y.shape == (2, 3, 4)
    assert_close(y, R.linear_forward(x, layer.weight.data, layer.bias.data), 1e-5, 1e-5, "y")
    dx = layer.backward(dy)
    want = {"dx": np.zeros((6, 6)), "dw": np.zeros((4, 6)), "db": np.zeros(4)}
    R.linear_backward(dy.reshape(6, 4).astype(np.float64), x.reshape(6, 6).astype(np.float64),
                      layer.weight.data.astype(np.float64), dx=want["dx"], dweight=want["dw"], dbias=want["db"])
    assert dx.shape == x.shape
    assert_close(dx.reshape(6, 6), want["dx"], 1e-5, 1e-5, "dx")
    assert_close(layer.weight.grad, want["dw"], 1e-5, 1e-5, "dweight")
    assert_close(layer.bias.grad, want["db"], 1e-5, 1e-5, "dbias")


def test_linear_module_gradients_accumulate_until_zeroed(rng):
    layer = Linear(5, 3, generator=peftc.Generator(1))
    x, dy = f32(rng, 4, 5), f32(rng, 4, 3)
    layer(x)
    layer.backward(dy)
    once = layer.weight.grad.copy()
    layer(x)
    layer.backward(dy)
    assert_close(layer.weight.grad, 2 * once, 1e-6, 1e-6, "accumulated")
    layer.zero_grad()
    assert not layer.weight.grad.any()


def test_linear_module_frozen_weights_get_no_gradient_but_pass_dx(rng):
    layer = Linear(5, 3).requires_grad_(False)
    x, dy = f32(rng, 4, 5), f32(rng, 4, 3)
    layer(x)
    dx = layer.backward(dy)
    assert layer.weight.grad is None and layer.bias.grad is None
    assert_close(dx, dy.astype(np.float64) @ layer.weight.data, 1e-5, 1e-5, "dx")


def test_linear_module_init_is_torch_uniform_bound_and_reproducible():
    a = Linear(50, 40, generator=peftc.Generator(3))
    b = Linear(50, 40, generator=peftc.Generator(3))
    bound = 1 / np.sqrt(50)
    assert np.array_equal(a.weight.data, b.weight.data) and np.array_equal(a.bias.data, b.bias.data)
    assert np.abs(a.weight.data).max() < bound and np.abs(a.weight.data).max() > 0.95 * bound
    assert abs(a.weight.data.std() - bound / np.sqrt(3)) < 0.05 * bound
    assert np.abs(a.bias.data).max() < bound
    assert not np.array_equal(Linear(50, 40, generator=peftc.Generator(4)).weight.data, a.weight.data)


def test_linear_from_weights_uses_the_arrays_in_place(rng):
    w, b = f32(rng, 3, 2), f32(rng, 3)
    layer = Linear.from_weights(w, b)
    assert layer.weight.data is w and layer.bias.data is b


def test_linear_module_rejects_bad_input(rng):
    layer = Linear(4, 3)
    with pytest.raises(ValueError, match="x"):
        layer(f32(rng, 5, 5))
    with pytest.raises(ValueError, match="C-contiguous"):
        layer(f32(rng, 4, 5).T)
    with pytest.raises(TypeError, match="'x'"):
        layer(np.ones((2, 4)))
    with pytest.raises(RuntimeError, match="before forward"):
        Linear(4, 3).backward(f32(rng, 2, 3))
    with pytest.raises(ValueError, match="bias"):
        Linear.from_weights(f32(rng, 3, 4), f32(rng, 4))


def test_linear_module_matches_torch_linear(rng, torch):
    layer = Linear(6, 4, generator=peftc.Generator(2))
    x, dy = f32(rng, 5, 6), f32(rng, 5, 4)
    y = layer(x)
    dx = layer.backward(dy)
    ref = torch.nn.Linear(6, 4)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(layer.weight.data))
        ref.bias.copy_(torch.tensor(layer.bias.data))
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(dy))
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-5, "y")
    assert_close(dx, xt.grad.numpy(), 1e-5, 1e-5, "dx")
    assert_close(layer.weight.grad, ref.weight.grad.numpy(), 1e-5, 1e-5, "dweight")
    assert_close(layer.bias.grad, ref.bias.grad.numpy(), 1e-5, 1e-5, "dbias")


def test_linear_backward_accumulates_into_a_given_dx_and_can_skip_it(rng):
    layer = Linear.from_weights(f32(rng, 4, 6), f32(rng, 4))
    x, dy = f32(rng, 2, 3, 6), f32(rng, 2, 3, 4)
    layer(x)
    fresh = layer.backward(dy)
    grads = (layer.weight.grad.copy(), layer.bias.grad.copy())
    layer.zero_grad()
    buf = np.ones_like(x)
    assert layer.backward(dy, dx=buf) is buf
    assert_close(buf, 1.0 + fresh.astype(np.float64), 1e-6, 1e-6, "dx accumulated into the buffer")
    layer.zero_grad()
    assert layer.backward(dy, input_grad=False) is None
    assert_close(layer.weight.grad, grads[0], 1e-6, 1e-6, "dweight without dx")
    assert_close(layer.bias.grad, grads[1], 1e-6, 1e-6, "dbias without dx")


def test_frozen_linear_keeps_no_input_and_refuses_a_weight_unfrozen_after_forward(rng):
    layer = Linear(5, 3).requires_grad_(False)
    x, dy = f32(rng, 4, 5), f32(rng, 4, 3)
    layer(x)
    assert layer._x is None, "a frozen layer needs only the input's shape for dx"
    assert_close(layer.backward(dy), dy.astype(np.float64) @ layer.weight.data, 1e-5, 1e-5, "dx")
    layer.weight.requires_grad = True
    with pytest.raises(RuntimeError, match="frozen in the forward"):
        layer.backward(dy)
