"""Hydra kernels: C against the NumPy reference, float64 finite differences, torch autograd, merge."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad

N, IC, OC, RP, RS = 7, 6, 5, 2, 3
SP, SS = 0.75, 0.5


def hydra_case(rng, bias=True, scale=1.0):
    return dict(x=f32(rng, N, IC), weight=f32(rng, OC, IC), bias=f32(rng, OC) if bias else None,
                par_A=f32(rng, RP, IC, scale=scale), par_B=f32(rng, OC, RP, scale=scale),
                seq_A=f32(rng, RS, OC, scale=scale), seq_B=f32(rng, OC, RS, scale=scale))


def _args(c):
    return (c["x"], c["weight"], c["bias"], c["par_A"], c["par_B"], c["seq_A"], c["seq_B"], SP, SS)


BRANCHES = ("par_A", "par_B", "seq_A", "seq_B")


def _backward(fn, c, dy, cache):
    grads = {k: np.zeros_like(c[k]) for k in ("x", *BRANCHES)}
    _, y0, p, q = cache
    fn(dy, c["x"], y0, p, q, c["weight"], c["par_A"], c["par_B"], c["seq_A"], c["seq_B"], SP, SS, dx=grads["x"],
       dpar_A=grads["par_A"], dpar_B=grads["par_B"], dseq_A=grads["seq_A"], dseq_B=grads["seq_B"])
    return grads


@pytest.mark.parametrize("bias", [True, False])
def test_hydra_forward_matches_reference(rng, bias):
    c = hydra_case(rng, bias)
    for name, a, b in zip(("y", "y0", "p", "q"), F.hydra_forward(*_args(c)), R.hydra_forward(*_args(c))):
        assert_close(a, b, 1e-5, 1e-5, name)


def test_hydra_backward_matches_reference(rng):
    c = hydra_case(rng)
    dy = f32(rng, N, OC)
    ours = _backward(F.hydra_backward, c, dy, F.hydra_forward(*_args(c)))
    ref = _backward(R.hydra_backward, c, dy, R.hydra_forward(*_args(c)))
    for k in ours:
        assert_close(ours[k], ref[k], 1e-5, 1e-5, f"d{k}")


@pytest.mark.parametrize("bias", [True, False])
def test_hydra_backward_matches_finite_differences(rng, bias):
    c = hydra_case(rng, bias)
    c64 = {k: (v.astype(np.float64) if v is not None else None) for k, v in c.items()}
    dy = f32(rng, N, OC)

    def loss():
        return float(np.sum(R.hydra_forward(*_args(c64))[0] * dy))

    grads = _backward(F.hydra_backward, c, dy, F.hydra_forward(*_args(c)))
    for k in grads:
        assert_close(grads[k], numerical_grad(loss, c64[k]), 1e-4, 1e-4, f"d{k}")


def test_hydra_gradients_match_torch_autograd(rng, torch):
    c = hydra_case(rng)
    dy = f32(rng, N, OC)
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k not in ("weight", "bias")) for k, v in c.items()}
    y0 = t["x"] @ t["weight"].T + t["bias"]
    yt = y0 + SP * (t["x"] @ t["par_A"].T) @ t["par_B"].T + SS * (y0 @ t["seq_A"].T) @ t["seq_B"].T
    (yt * torch.tensor(dy, dtype=torch.float64)).sum().backward()
    cache = F.hydra_forward(*_args(c))
    assert_close(cache[0], yt.detach().numpy(), 1e-5, 1e-5, "y")
    grads = _backward(F.hydra_backward, c, dy, cache)
    for k in grads:
        assert_close(grads[k], t[k].grad.numpy(), 1e-4, 1e-5, f"d{k}")


def test_hydra_backward_accumulates_and_skips_unwanted(rng):
    c = hydra_case(rng)
    dy = f32(rng, N, OC)
    _, y0, p, q = F.hydra_forward(*_args(c))
    rest = (c["weight"], c["par_A"], c["par_B"], c["seq_A"], c["seq_B"], SP, SS)
    once = np.zeros_like(c["seq_A"])
    F.hydra_backward(dy, c["x"], y0, p, q, *rest, dseq_A=once)
    twice = once.copy()
    F.hydra_backward(dy, c["x"], y0, p, q, *rest, dseq_A=twice)
    assert_close(twice, 2 * once, 1e-6, 1e-6, "accumulated dseq_A")


@pytest.mark.parametrize("bias", [True, False])
def test_hydra_merge_matches_unmerged_and_reference(rng, bias):
    c = hydra_case(rng, bias, scale=0.3)
    y = F.hydra_forward(*_args(c))[0]
    w, b = c["weight"].copy(), (c["bias"].copy() if bias else None)
    F.hydra_merge(w, b, c["par_A"], c["par_B"], c["seq_A"], c["seq_B"], SP, SS)
    assert_close(F.linear_forward(c["x"], w, b), y, 1e-5, 1e-5, "merged forward")
    w_ref, b_ref = c["weight"].copy(), (c["bias"].copy() if bias else None)
    R.hydra_merge(w_ref, b_ref, c["par_A"], c["par_B"], c["seq_A"], c["seq_B"], SP, SS)
    assert_close(w, w_ref, 1e-6, 1e-6, "merged weight")


@pytest.mark.parametrize("bias", [True, False])
def test_hydra_unmerge_restores_the_base_weight(rng, bias):
    c = hydra_case(rng, bias, scale=0.3)
    w, b = c["weight"].copy(), (c["bias"].copy() if bias else None)
    args = (c["par_A"], c["par_B"], c["seq_A"], c["seq_B"], SP, SS)
    F.hydra_merge(w, b, *args)
    F.hydra_merge(w, b, *args, sign=-1.0)
    assert_close(w, c["weight"], 1e-5, 1e-5, "unmerged weight")
    if bias:
        assert_close(b, c["bias"], 1e-5, 1e-5, "unmerged bias")


def test_hydra_unmerge_of_a_singular_map_is_a_clear_error(rng):
    c = hydra_case(rng)
    # ss * seq_B seq_A = -e0 e0^T makes I + ss seq_B seq_A singular
    seq_A = np.zeros((RS, OC), np.float32)
    seq_B = np.zeros((OC, RS), np.float32)
    seq_A[0, 0], seq_B[0, 0] = 1.0, -1.0 / SS
    w = c["weight"].copy()
    with pytest.raises(ValueError, match="singular"):
        F.hydra_merge(w, c["bias"].copy(), c["par_A"], c["par_B"], seq_A, seq_B, SP, SS, sign=-1.0)


def test_hydra_kernels_reject_bad_arguments(rng):
    c = hydra_case(rng)
    with pytest.raises(ValueError, match="seq_A"):
        F.hydra_forward(*_args(dict(c, seq_A=f32(rng, RS, IC + 1))))
    with pytest.raises(ValueError, match="sign"):
        F.hydra_merge(c["weight"], None, c["par_A"], c["par_B"], c["seq_A"], c["seq_B"], SP, SS, sign=2.0)
    with pytest.raises(TypeError):
        F.hydra_forward(*_args(dict(c, x=c["x"].astype(np.float64))))
    _, y0, p, q = F.hydra_forward(*_args(c))
    with pytest.raises(ValueError, match="work"):
        F.hydra_backward(f32(rng, N, OC), c["x"], y0, p, q, c["weight"], c["par_A"], c["par_B"], c["seq_A"],
                         c["seq_B"], SP, SS, dx=np.zeros_like(c["x"]), work=np.empty(2, np.float32))
