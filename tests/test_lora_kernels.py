"""LoRA kernels: C against the NumPy reference, float64 finite differences, torch autograd."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad

N, IC, OC, RANK = 7, 6, 5, 3


def lora_case(rng, bias=True, lora_bias=True):
    return dict(
        x=f32(rng, N, IC), weight=f32(rng, OC, IC), bias=f32(rng, OC) if bias else None,
        lora_A=f32(rng, RANK, IC), lora_B=f32(rng, OC, RANK), lora_bias=f32(rng, OC) if lora_bias else None,
    )


@pytest.mark.parametrize("p", [0.0, 0.4])
@pytest.mark.parametrize("bias,lora_bias", [(True, True), (False, False), (True, False)])
def test_lora_forward_matches_reference(rng, p, bias, lora_bias):
    c = lora_case(rng, bias, lora_bias)
    args = (c["x"], c["weight"], c["bias"], c["lora_A"], c["lora_B"], c["lora_bias"], 0.75, p, 5, 17)
    y, xd, u = F.lora_forward(*args)
    y_ref, xd_ref, u_ref = R.lora_forward(*args)
    assert_close(y, y_ref, 1e-5, 1e-5, "y")
    assert_close(u, u_ref, 1e-5, 1e-5, "u")
    if p > 0:
        assert_close(xd, xd_ref, 1e-6, 1e-6, "xd")
    else:
        assert xd is None


@pytest.mark.parametrize("p", [0.0, 0.4])
def test_lora_backward_matches_finite_differences(rng, p):
    c = lora_case(rng)
    c64 = {k: (v.astype(np.float64) if v is not None else None) for k, v in c.items()}
    dy = f32(rng, N, OC)
    s, seed, offset = 0.75, 5, 17

    def loss():
        y, _, _ = R.lora_forward(c64["x"], c64["weight"], c64["bias"], c64["lora_A"], c64["lora_B"],
                                 c64["lora_bias"], s, p, seed, offset)
        return float(np.sum(y * dy))

    y, xd, u = F.lora_forward(c["x"], c["weight"], c["bias"], c["lora_A"], c["lora_B"], c["lora_bias"], s, p,
                              seed, offset)
    grads = {k: np.zeros_like(c[k]) for k in ("x", "lora_A", "lora_B", "lora_bias")}
    F.lora_backward(dy, xd if p > 0 else c["x"], u, c["weight"], c["lora_A"], c["lora_B"], s, p, seed, offset,
                    dx=grads["x"], dlora_A=grads["lora_A"], dlora_B=grads["lora_B"], dlora_bias=grads["lora_bias"])
    for k in grads:
        assert_close(grads[k], numerical_grad(loss, c64[k]), 1e-4, 1e-4, f"d{k}")


def test_lora_backward_accumulates(rng):
    c = lora_case(rng, lora_bias=False)
    dy = f32(rng, N, OC)
    y, xd, u = F.lora_forward(c["x"], c["weight"], c["bias"], c["lora_A"], c["lora_B"], None, 2.0)
    once = np.zeros_like(c["lora_A"])
    F.lora_backward(dy, c["x"], u, c["weight"], c["lora_A"], c["lora_B"], 2.0, dlora_A=once)
    twice = once.copy()
    F.lora_backward(dy, c["x"], u, c["weight"], c["lora_A"], c["lora_B"], 2.0, dlora_A=twice)
    assert_close(twice, 2 * once, 1e-6, 1e-6, "accumulated dA")


def test_lora_merge_matches_unmerged(rng):
    c = lora_case(rng)
    y, _, _ = F.lora_forward(c["x"], c["weight"], c["bias"], c["lora_A"], c["lora_B"], c["lora_bias"], 0.5)
    w0, b0 = c["weight"].copy(), c["bias"].copy()
    F.lora_merge(c["weight"], c["bias"], c["lora_A"], c["lora_B"], c["lora_bias"], 0.5)
    assert_close(F.linear_forward(c["x"], c["weight"], c["bias"]), y, 1e-5, 1e-5, "merged forward")
    F.lora_merge(c["weight"], c["bias"], c["lora_A"], c["lora_B"], c["lora_bias"], 0.5, sign=-1.0)
    assert_close(c["weight"], w0, 1e-6, 1e-6, "unmerged weight")
    assert_close(c["bias"], b0, 1e-6, 1e-6, "unmerged bias")


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_lora_matches_torch_autograd(rng, torch, p):
    c = lora_case(rng)
    dy = f32(rng, N, OC)
    s, seed, offset = 1.5, 9, 3
    y, xd, u = F.lora_forward(c["x"], c["weight"], c["bias"], c["lora_A"], c["lora_B"], c["lora_bias"], s, p,
                              seed, offset)
    grads = {k: np.zeros_like(c[k]) for k in ("x", "lora_A", "lora_B", "lora_bias")}
    F.lora_backward(dy, xd if p > 0 else c["x"], u, c["weight"], c["lora_A"], c["lora_B"], s, p, seed, offset,
                    dx=grads["x"], dlora_A=grads["lora_A"], dlora_B=grads["lora_B"], dlora_bias=grads["lora_bias"])

    t = {k: torch.tensor(v, requires_grad=True) for k, v in c.items()}
    mask = torch.tensor(R.dropout_mask((N, IC), p, seed, offset).astype(np.float32))
    xt = t["x"] * mask / (1 - p) if p > 0 else t["x"]
    yt = torch.nn.functional.linear(t["x"], t["weight"], t["bias"]) + s * (
        torch.nn.functional.linear(torch.nn.functional.linear(xt, t["lora_A"]), t["lora_B"], t["lora_bias"]))
    yt.backward(torch.tensor(dy))
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-5, "y")
    for k in grads:
        assert_close(grads[k], t[k].grad.numpy(), 1e-5, 1e-5, f"d{k}")


@pytest.mark.parametrize("r,alpha,rslora,expected", [(8, 16.0, False, 2.0), (16, 16.0, True, 4.0), (1, 3.0, True, 3.0)])
def test_lora_scaling_is_alpha_over_r_or_over_sqrt_r_with_rslora(r, alpha, rslora, expected):
    assert F.lora_scaling(r, alpha, rslora) == expected
    assert R.lora_scaling(r, alpha, rslora) == expected


@pytest.mark.parametrize("r", [0, -2])
def test_lora_scaling_rejects_non_positive_rank(r):
    with pytest.raises(ValueError, match="r"):
        F.lora_scaling(r, 8.0)


@pytest.mark.parametrize("p", [0.0, 0.4])
def test_lora_backward_matches_reference(rng, p):
    c = lora_case(rng)
    dy = f32(rng, N, OC)
    s, seed, offset = 0.75, 5, 17
    y, xd, u = F.lora_forward(c["x"], c["weight"], c["bias"], c["lora_A"], c["lora_B"], c["lora_bias"], s, p,
                              seed, offset)
    xin = xd if p > 0 else c["x"]
    got = {k: f32(rng, *c[k].shape) for k in ("x", "lora_A", "lora_B", "lora_bias")}
    want = {k: v.astype(np.float64) for k, v in got.items()}
    F.lora_backward(dy, xin, u, c["weight"], c["lora_A"], c["lora_B"], s, p, seed, offset, dx=got["x"],
                    dlora_A=got["lora_A"], dlora_B=got["lora_B"], dlora_bias=got["lora_bias"])
    R.lora_backward(dy.astype(np.float64), xin.astype(np.float64), u.astype(np.float64), c["weight"], c["lora_A"],
                    c["lora_B"], s, p, seed, offset, dx=want["x"], dlora_A=want["lora_A"], dlora_B=want["lora_B"],
                    dlora_bias=want["lora_bias"])
    for k in got:
        assert_close(got[k], want[k], 1e-5, 1e-5, f"d{k}")
