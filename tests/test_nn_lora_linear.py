"""peftc.nn.LoraLinear: forward/backward, merge/unmerge, PEFT-style init, scaling, dropout modes."""
from __future__ import annotations

import numpy as np
import pytest

import peftc
from peftc import reference as R
from peftc.nn import Linear, LoraLinear

from .conftest import assert_close, f32

IN, OUT, RANK = 6, 5, 3


def make_layer(rng, **kw) -> LoraLinear:
    base = Linear.from_weights(f32(rng, OUT, IN), f32(rng, OUT)).requires_grad_(False)
    layer = LoraLinear(base, r=RANK, lora_alpha=6.0, generator=peftc.Generator(4), **kw)
    layer.lora_B.data[...] = f32(rng, OUT, RANK)  # a trained-looking adapter, not the zero init
    return layer


@pytest.mark.parametrize("lora_bias", [False, True])
def test_lora_linear_forward_backward_match_reference(rng, lora_bias):
    layer = make_layer(rng, lora_bias=lora_bias)
    if lora_bias:
        layer.lora_bias.data[...] = f32(rng, OUT)
    x, dy = f32(rng, 2, 4, IN), f32(rng, 2, 4, OUT)
    lb = layer.lora_bias.data if lora_bias else None
    y = layer(x)
    y_ref, _, u = R.lora_forward(x.reshape(8, IN), layer.base.weight.data, layer.base.bias.data,
                                 layer.lora_A.data, layer.lora_B.data, lb, layer.scaling)
    assert_close(y.reshape(8, OUT), y_ref, 1e-5, 1e-5, "y")
    dx = layer.backward(dy)
    want = {"dx": np.zeros((8, IN)), "dA": np.zeros((RANK, IN)), "dB": np.zeros((OUT, RANK)), "dbb": np.zeros(OUT)}
    R.lora_backward(dy.reshape(8, OUT).astype(np.float64), x.reshape(8, IN).astype(np.float64), u,
                    layer.base.weight.data, layer.lora_A.data, layer.lora_B.data, layer.scaling, dx=want["dx"],
                    dlora_A=want["dA"], dlora_B=want["dB"], dlora_bias=want["dbb"] if lora_bias else None)
    assert_close(dx.reshape(8, IN), want["dx"], 1e-5, 1e-5, "dx")
    assert_close(layer.lora_A.grad, want["dA"], 1e-5, 1e-5, "dlora_A")
    assert_close(layer.lora_B.grad, want["dB"], 1e-5, 1e-5, "dlora_B")
    if lora_bias:
        assert_close(layer.lora_bias.grad, want["dbb"], 1e-5, 1e-5, "dlora_bias")
    assert layer.base.weight.grad is None and layer.base.bias.grad is None


def test_lora_linear_trainable_base_also_gets_gradients(rng):
    layer = make_layer(rng)
    layer.base.requires_grad_(True)
    x, dy = f32(rng, 7, IN), f32(rng, 7, OUT)
    layer(x)
    layer.backward(dy)
    assert_close(layer.base.weight.grad, dy.T.astype(np.float64) @ x, 1e-5, 1e-5, "dweight")
    assert_close(layer.base.bias.grad, dy.sum(axis=0, dtype=np.float64), 1e-5, 1e-5, "dbias")


def test_lora_linear_merged_forward_equals_unmerged(rng):
    layer = make_layer(rng, lora_bias=True)
    layer.lora_bias.data[...] = f32(rng, OUT)
    x = f32(rng, 9, IN)
    y = layer(x)
    layer.merge()
    layer.merge()  # merging twice must not add the update twice
    assert_close(layer(x), y, 1e-5, 1e-5, "merged forward")


def test_lora_linear_unmerge_restores_the_base_weight(rng):
    layer = make_layer(rng, lora_bias=True)
    layer.lora_bias.data[...] = f32(rng, OUT)
    w0, b0 = layer.base.weight.data.copy(), layer.base.bias.data.copy()
    layer.merge()
    assert_close(layer.base.weight.data, w0 + layer.delta_weight(), 1e-6, 1e-6, "merged weight")
    layer.unmerge()
    assert not layer.merged
    assert_close(layer.base.weight.data, w0, 1e-6, 1e-6, "weight")
    assert_close(layer.base.bias.data, b0, 1e-6, 1e-6, "bias")


def test_lora_linear_lora_bias_cannot_merge_into_bias_free_base(rng):
    base = Linear.from_weights(f32(rng, OUT, IN))
    layer = LoraLinear(base, r=2, lora_bias=True)
    with pytest.raises(ValueError, match="bias"):
        layer.merge()
    assert not layer.merged


def test_lora_linear_default_init_is_kaiming_uniform_a_and_zero_b():
    base = Linear(400, 7)
    layer = LoraLinear(base, r=8, generator=peftc.Generator(11))
    bound = 1 / np.sqrt(400)
    a = layer.lora_A.data
    assert np.abs(a).max() < bound and np.abs(a).max() > 0.97 * bound
    assert abs(a.std() - bound / np.sqrt(3)) < 0.05 * bound
    assert not layer.lora_B.data.any()
    x = np.random.default_rng(0).standard_normal((3, 400)).astype(np.float32)
    assert np.array_equal(layer(x), base(x))  # a fresh adapter is a no-op


def test_lora_linear_gaussian_init_has_std_one_over_r():
    layer = LoraLinear(Linear(2000, 3), r=4, init_lora_weights="gaussian", generator=peftc.Generator(12))
    a = layer.lora_A.data
    assert abs(a.mean()) < 5 * 0.25 / np.sqrt(a.size)
    assert abs(a.std() - 0.25) < 0.02 * 0.25
    assert not layer.lora_B.data.any()


def test_lora_linear_init_false_gives_nonzero_b_and_bad_init_raises():
    layer = LoraLinear(Linear(6, 5), r=2, init_lora_weights=False)
    assert layer.lora_B.data.any()
    with pytest.raises(ValueError, match="init_lora_weights"):
        LoraLinear(Linear(6, 5), r=2, init_lora_weights="orthogonal")


def test_lora_linear_init_is_reproducible_from_the_generator_seed():
    a = LoraLinear(Linear(6, 5), r=2, generator=peftc.Generator(5))
    b = LoraLinear(Linear(6, 5), r=2, generator=peftc.Generator(5))
    assert np.array_equal(a.lora_A.data, b.lora_A.data)


@pytest.mark.parametrize("use_rslora,expected", [(False, 16.0 / 4), (True, 16.0 / 2)])
def test_lora_linear_scaling_is_alpha_over_r_or_sqrt_r(use_rslora, expected):
    layer = LoraLinear(Linear(6, 5), r=4, lora_alpha=16.0, use_rslora=use_rslora)
    assert layer.scaling == expected


@pytest.mark.parametrize("kw", [dict(r=0), dict(r=2.5), dict(lora_dropout=1.0), dict(lora_dropout=-0.1)])
def test_lora_linear_rejects_bad_hyperparameters(kw):
    with pytest.raises(ValueError):
        LoraLinear(Linear(6, 5), **{"r": 2, **kw})


def test_lora_linear_dropout_applies_only_in_training_mode(rng):
    layer = make_layer(rng, lora_dropout=0.5)
    plain = make_layer(np.random.default_rng(1234))  # the same weights, no dropout
    x = f32(rng, 16, IN)
    layer.eval()
    assert np.array_equal(layer(x), plain(x))
    offset = layer.generator.offset
    assert np.array_equal(layer(x), plain(x))
    assert layer.generator.offset == offset  # eval draws no random numbers
    layer.train()
    assert not np.allclose(layer(x), plain(x))


def test_lora_linear_dropout_is_reproducible_from_the_seed_and_advances(rng):
    a, b = make_layer(np.random.default_rng(0), lora_dropout=0.3), make_layer(np.random.default_rng(0), lora_dropout=0.3)
    x = f32(rng, 8, IN)
    first_a, first_b = a(x), b(x)
    assert np.array_equal(first_a, first_b)
    assert not np.array_equal(a(x), first_a)  # the next step uses a fresh mask


def test_lora_linear_dropout_backward_uses_the_forward_mask(rng):
    layer = make_layer(rng, lora_dropout=0.4)
    x, dy = f32(rng, 6, IN), f32(rng, 6, OUT)
    offset = layer.generator.offset
    layer(x)
    layer.backward(dy)
    seed, p = layer.generator.seed, 0.4
    y, xd, u = R.lora_forward(x, layer.base.weight.data, layer.base.bias.data, layer.lora_A.data,
                              layer.lora_B.data, None, layer.scaling, p, seed, offset)
    dA = np.zeros((RANK, IN))
    R.lora_backward(dy.astype(np.float64), xd, u, layer.base.weight.data, layer.lora_A.data, layer.lora_B.data,
                    layer.scaling, p, seed, offset, dlora_A=dA)
    assert_close(layer.lora_A.grad, dA, 1e-5, 1e-5, "dlora_A")


def test_lora_linear_merged_layer_backpropagates_through_the_base(rng):
    layer = make_layer(rng)
    x, dy = f32(rng, 4, IN), f32(rng, 4, OUT)
    layer.merge()
    layer(x)
    dx = layer.backward(dy)
    assert_close(dx, dy.astype(np.float64) @ layer.base.weight.data, 1e-5, 1e-5, "dx")
    assert layer.lora_A.grad is None


def test_lora_linear_matches_torch_autograd(rng, torch):
    layer = make_layer(rng)
    x, dy = f32(rng, 5, IN), f32(rng, 5, OUT)
    y = layer(x)
    dx = layer.backward(dy)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in
         dict(x=x, A=layer.lora_A.data, B=layer.lora_B.data).items()}
    w, b = torch.tensor(layer.base.weight.data), torch.tensor(layer.base.bias.data)
    yt = t["x"] @ w.T + b + layer.scaling * (t["x"] @ t["A"].T @ t["B"].T)
    yt.backward(torch.tensor(dy))
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-5, "y")
    assert_close(dx, t["x"].grad.numpy(), 1e-5, 1e-5, "dx")
    assert_close(layer.lora_A.grad, t["A"].grad.numpy(), 1e-5, 1e-5, "dlora_A")
    assert_close(layer.lora_B.grad, t["B"].grad.numpy(), 1e-5, 1e-5, "dlora_B")


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_lora_linear_backward_accumulates_into_a_given_dx_and_can_skip_it(rng, dropout):
    layer = make_layer(rng, lora_dropout=dropout)
    x, dy = f32(rng, 2, 4, IN), f32(rng, 2, 4, OUT)
    layer(x)
    fresh = layer.backward(dy)
    grads = (layer.lora_A.grad.copy(), layer.lora_B.grad.copy())
    layer.zero_grad()
    buf = np.full_like(x, 2.0)
    assert layer.backward(dy, dx=buf) is buf
    assert_close(buf, 2.0 + fresh.astype(np.float64), 1e-6, 1e-6, "dx accumulated into the buffer")
    layer.zero_grad()
    assert layer.backward(dy, input_grad=False) is None
    assert_close(layer.lora_A.grad, grads[0], 1e-6, 1e-6, "dlora_A without dx")
    assert_close(layer.lora_B.grad, grads[1], 1e-6, 1e-6, "dlora_B without dx")
