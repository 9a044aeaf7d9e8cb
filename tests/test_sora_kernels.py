"""SoRA kernels: C against the NumPy reference, float64 finite differences, torch autograd, and the
proximal step (paper soft threshold vs the official code's double threshold) on hand-made values."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad

N, IC, OC, RANK = 7, 6, 5, 4


def sora_case(rng, bias=True):
    gate = f32(rng, RANK)
    gate[1] = 0.0  # a pruned rank: its column must carry no output and no A/B gradient
    return dict(x=f32(rng, N, IC), weight=f32(rng, OC, IC), bias=f32(rng, OC) if bias else None,
                lora_A=f32(rng, RANK, IC), lora_B=f32(rng, OC, RANK), gate=gate)


def _args(c, s=0.75, p=0.0, seed=5, offset=17):
    return (c["x"], c["weight"], c["bias"], c["lora_A"], c["lora_B"], c["gate"], s, p, seed, offset)


@pytest.mark.parametrize("p", [0.0, 0.4])
@pytest.mark.parametrize("bias", [True, False])
def test_sora_forward_matches_reference(rng, p, bias):
    c = sora_case(rng, bias)
    y, xd, u = F.sora_forward(*_args(c, p=p))
    y_ref, xd_ref, u_ref = R.sora_forward(*_args(c, p=p))
    assert_close(y, y_ref, 1e-5, 1e-5, "y")
    assert_close(u, u_ref, 1e-5, 1e-5, "u")
    assert (xd is None) == (p == 0.0)


def test_sora_with_all_gates_one_is_lora(rng):
    c = sora_case(rng)
    c["gate"][:] = 1.0
    y, _, _ = F.sora_forward(*_args(c))
    y_lora, _, _ = F.lora_forward(c["x"], c["weight"], c["bias"], c["lora_A"], c["lora_B"], None, 0.75)
    np.testing.assert_array_equal(y, y_lora)


@pytest.mark.parametrize("p", [0.0, 0.4])
def test_sora_backward_matches_reference(rng, p):
    c = sora_case(rng)
    dy = f32(rng, N, OC)
    y, xd, u = F.sora_forward(*_args(c, p=p))
    xin = xd if p > 0 else c["x"]
    names = ("x", "lora_A", "lora_B", "gate")
    ours = {k: np.zeros_like(c[k]) for k in names}
    ref = {k: np.zeros_like(c[k]) for k in names}
    rest = (c["weight"], c["lora_A"], c["lora_B"], c["gate"], 0.75, p, 5, 17)
    F.sora_backward(dy, xin, u, *rest, dx=ours["x"], dlora_A=ours["lora_A"], dlora_B=ours["lora_B"],
                    dgate=ours["gate"])
    R.sora_backward(dy, xin, u, *rest, dx=ref["x"], dlora_A=ref["lora_A"], dlora_B=ref["lora_B"], dgate=ref["gate"])
    for k in names:
        assert_close(ours[k], ref[k], 1e-5, 1e-5, f"d{k}")


@pytest.mark.parametrize("p", [0.0, 0.4])
def test_sora_backward_matches_finite_differences(rng, p):
    c = sora_case(rng)
    c["gate"][1] = 0.3  # finite differences of a smooth function: no zero gate needed here
    c64 = {k: (v.astype(np.float64) if v is not None else None) for k, v in c.items()}
    dy = f32(rng, N, OC)

    def loss():
        y, _, _ = R.sora_forward(*_args(c64, p=p))
        return float(np.sum(y * dy))

    y, xd, u = F.sora_forward(*_args(c, p=p))
    grads = {k: np.zeros_like(c[k]) for k in ("x", "lora_A", "lora_B", "gate")}
    F.sora_backward(dy, xd if p > 0 else c["x"], u, c["weight"], c["lora_A"], c["lora_B"], c["gate"], 0.75, p, 5,
                    17, dx=grads["x"], dlora_A=grads["lora_A"], dlora_B=grads["lora_B"], dgate=grads["gate"])
    for k in grads:
        assert_close(grads[k], numerical_grad(loss, c64[k]), 1e-4, 1e-4, f"d{k}")


def test_sora_backward_accumulates_and_skips_unwanted(rng):
    c = sora_case(rng)
    dy = f32(rng, N, OC)
    _, _, u = F.sora_forward(*_args(c))
    once = np.zeros_like(c["gate"])
    rest = (c["weight"], c["lora_A"], c["lora_B"], c["gate"], 0.75)
    F.sora_backward(dy, c["x"], u, *rest, dgate=once)
    twice = once.copy()
    F.sora_backward(dy, c["x"], u, *rest, dgate=twice)
    assert_close(twice, 2 * once, 1e-6, 1e-6, "accumulated dgate")
    dB = np.zeros_like(c["lora_B"])
    F.sora_backward(dy, c["x"], u, *rest, dlora_B=dB)
    assert np.all(dB[:, 1] == 0.0), "a zero gate passes no gradient to its column of B"


def test_sora_gradients_match_torch_autograd(rng, torch):
    c = sora_case(rng)
    dy = f32(rng, N, OC)
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k != "weight") for k, v in c.items()}
    yt = t["x"] @ t["weight"].T + t["bias"] + 0.75 * ((t["x"] @ t["lora_A"].T) * t["gate"]) @ t["lora_B"].T
    (yt * torch.tensor(dy, dtype=torch.float64)).sum().backward()
    y, _, u = F.sora_forward(*_args(c))
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-5, "y")
    grads = {k: np.zeros_like(c[k]) for k in ("x", "lora_A", "lora_B", "gate")}
    F.sora_backward(dy, c["x"], u, c["weight"], c["lora_A"], c["lora_B"], c["gate"], 0.75, dx=grads["x"],
                    dlora_A=grads["lora_A"], dlora_B=grads["lora_B"], dgate=grads["gate"])
    for k in grads:
        assert_close(grads[k], t[k].grad.numpy(), 1e-4, 1e-5, f"d{k}")


def test_sora_merge_through_lora_merge_matches_unmerged(rng):
    c = sora_case(rng)
    y, _, _ = F.sora_forward(*_args(c, s=0.5))
    w = c["weight"].copy()
    F.lora_merge(w, None, c["lora_A"], (c["lora_B"] * c["gate"]).astype(np.float32), None, 0.5)
    assert_close(F.linear_forward(c["x"], w, c["bias"]), y, 1e-5, 1e-5, "merged forward")


# ---- the proximal step ----------------------------------------------------------------------------
GATES = np.array([0.5, -0.5, 0.15, -0.15, 0.25, -0.25, 0.1, -0.1, 0.05, 0.0, 0.3, -0.35], dtype=np.float32)
TAU = 0.1
# paper soft threshold: sign(g) * max(|g| - tau, 0)
PAPER = np.array([0.4, -0.4, 0.05, -0.05, 0.15, -0.15, 0.0, 0.0, 0.0, 0.0, 0.2, -0.25], dtype=np.float32)
# official code: (tau, 2 tau) is zeroed, |g| == tau stays, the rest shrinks by tau
COMPAT = np.array([0.4, -0.4, 0.0, 0.0, 0.15, -0.15, 0.1, -0.1, 0.0, 0.0, 0.2, -0.25], dtype=np.float32)


def test_gate_threshold_paper_is_the_soft_threshold():
    g = GATES.copy()
    F.sora_gate_threshold(g, TAU, compat=False)
    assert_close(g, PAPER, 0, 1e-7, "paper threshold")


def test_gate_threshold_compat_reproduces_the_official_double_threshold():
    g = GATES.copy()
    F.sora_gate_threshold(g, TAU, compat=True)
    assert_close(g, COMPAT, 0, 1e-7, "compat threshold")
    # entries with tau < |g| < 2 tau survive the paper step but not the official one
    between = (np.abs(GATES) > TAU) & (np.abs(GATES) < 2 * TAU)
    assert between.any() and np.all(g[between] == 0) and np.all(PAPER[between] != 0)


@pytest.mark.parametrize("compat", [False, True])
def test_gate_threshold_matches_reference_and_keeps_nan(rng, compat):
    g = f32(rng, 257, scale=0.2)
    g[3] = np.nan
    ref = g.copy()
    R.sora_gate_threshold(ref, 0.07, compat)
    F.sora_gate_threshold(g, 0.07, compat)
    np.testing.assert_array_equal(g, ref)
    assert np.isnan(g[3])


def test_gate_threshold_with_tau_zero_changes_nothing_nonzero(rng):
    g = f32(rng, 9)
    for compat in (False, True):
        h = g.copy()
        F.sora_gate_threshold(h, 0.0, compat)
        np.testing.assert_array_equal(h, g)


def test_sora_kernels_reject_bad_arguments(rng):
    c = sora_case(rng)
    with pytest.raises(ValueError, match="tau"):
        F.sora_gate_threshold(c["gate"], -0.1)
    with pytest.raises(ValueError, match="tau"):
        F.sora_gate_threshold(c["gate"], float("inf"))
    with pytest.raises(TypeError):
        F.sora_gate_threshold(c["gate"].astype(np.float64), 0.1)
    bad = dict(c, gate=f32(rng, RANK + 1))
    with pytest.raises(ValueError, match="gate"):
        F.sora_forward(*_args(bad))
    _, _, u = F.sora_forward(*_args(c))
    with pytest.raises(ValueError, match="work"):
        F.sora_backward(f32(rng, N, OC), c["x"], u, c["weight"], c["lora_A"], c["lora_B"], c["gate"], 1.0,
                        dgate=np.zeros_like(c["gate"]), work=np.empty(3, dtype=np.float32))
