"""Optimizer and norm kernels: AdamW and SGD against the reference and torch.optim over several
steps, sumsq (double accumulation) and scale_."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32

P, STEPS = 33, 6
ADAMW_SETTINGS = [
    dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01),
    dict(lr=3e-3, beta1=0.5, beta2=0.9, eps=1e-6, weight_decay=0.0),
    dict(lr=1e-1, beta1=0.0, beta2=0.99, eps=1e-3, weight_decay=0.3),
]
SGD_SETTINGS = [
    dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01, nesterov=False),
    dict(lr=0.02, momentum=0.8, dampening=0.0, weight_decay=0.1, nesterov=True),
]


def grads(rng, steps: int = STEPS) -> list[np.ndarray]:
    return [f32(rng, P) for _ in range(steps)]


@pytest.mark.parametrize("hp", ADAMW_SETTINGS)
def test_adamw_matches_reference_over_steps(rng, hp):
    param = f32(rng, P)
    ref = [param.astype(np.float64), np.zeros(P), np.zeros(P)]
    m, v = np.zeros_like(param), np.zeros_like(param)
    for step, g in enumerate(grads(rng), start=1):
        F.adamw_step(param, m, v, g, hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"], step)
        R.adamw_step(*ref, g.astype(np.float64), hp["lr"], hp["beta1"], hp["beta2"], hp["eps"],
                     hp["weight_decay"], step)
        assert_close(param, ref[0], 1e-5, 1e-6, f"param after step {step}")
        assert_close(m, ref[1], 1e-5, 1e-6, f"m after step {step}")
        assert_close(v, ref[2], 1e-5, 1e-7, f"v after step {step}")


@pytest.mark.parametrize("hp", ADAMW_SETTINGS)
def test_adamw_matches_torch_optim_adamw(rng, torch, hp):
    param = f32(rng, P)
    m, v = np.zeros_like(param), np.zeros_like(param)
    pt = torch.nn.Parameter(torch.tensor(param))
    opt = torch.optim.AdamW([pt], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                            weight_decay=hp["weight_decay"])
    for step, g in enumerate(grads(rng), start=1):
        F.adamw_step(param, m, v, g, hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"], step)
        pt.grad = torch.tensor(g)
        opt.step()
        assert_close(param, pt.detach().numpy(), 1e-6, 1e-7, f"param after step {step}")
    state = opt.state[pt]
    assert_close(m, state["exp_avg"].numpy(), 1e-6, 1e-7, "exp_avg")
    assert_close(v, state["exp_avg_sq"].numpy(), 1e-6, 1e-8, "exp_avg_sq")


def test_adamw_first_step_moves_each_weight_by_about_lr():
    # bias correction makes |update| = lr * |g| / (|g| + eps) on step 1
    param, g = np.zeros(P, np.float32), np.linspace(-2, 2, P).astype(np.float32)
    g[P // 2] = 0.5
    F.adamw_step(param, np.zeros_like(param), np.zeros_like(param), g, 0.01, 0.9, 0.999, 1e-8, 0.0, 1)
    assert_close(np.abs(param), np.full(P, 0.01) * (np.abs(g) > 0), 1e-5, 1e-7, "|step|")


@pytest.mark.parametrize("hp", SGD_SETTINGS)
def test_sgd_matches_reference_over_steps(rng, hp):
    param = f32(rng, P)
    ref_param, ref_buf = param.astype(np.float64), np.zeros(P)
    buf = np.zeros_like(param) if hp["momentum"] else None
    for step, g in enumerate(grads(rng), start=1):
        F.sgd_step(param, buf, g, step=step, **hp)
        R.sgd_step(ref_param, ref_buf, g.astype(np.float64), step=step, **hp)
        assert_close(param, ref_param, 1e-5, 1e-6, f"param after step {step}")
    if buf is not None:
        assert_close(buf, ref_buf, 1e-5, 1e-6, "momentum buffer")


@pytest.mark.parametrize("hp", SGD_SETTINGS)
def test_sgd_matches_torch_optim_sgd(rng, torch, hp):
    param = f32(rng, P)
    buf = np.zeros_like(param) if hp["momentum"] else None
    pt = torch.nn.Parameter(torch.tensor(param))
    opt = torch.optim.SGD([pt], **hp)
    for step, g in enumerate(grads(rng), start=1):
        F.sgd_step(param, buf, g, step=step, **hp)
        pt.grad = torch.tensor(g)
        opt.step()
        assert_close(param, pt.detach().numpy(), 1e-6, 1e-7, f"param after step {step}")
    if buf is not None:
        assert_close(buf, opt.state[pt]["momentum_buffer"].numpy(), 1e-6, 1e-7, "momentum buffer")


def test_sgd_first_momentum_step_starts_the_buffer_at_the_gradient(rng):
    param, g = f32(rng, P), f32(rng, P)
    buf = np.full_like(param, 123.0)  # stale contents must be ignored on step 1
    F.sgd_step(param, buf, g, 0.1, momentum=0.9, dampening=0.5, step=1)
    assert np.array_equal(buf, g)


def test_sumsq_matches_reference_and_accumulates_in_double(rng):
    x = f32(rng, 1000)
    assert_close(F.sumsq(x), R.sumsq(x), 1e-12, 0, "sumsq")
    # 2**24 + 1 ones: a float32 accumulator stops at 2**24
    big = np.ones(2**24 + 1, np.float32)
    assert F.sumsq(big) == 2**24 + 1
    assert F.sumsq(np.zeros(0, np.float32)) == 0.0


def test_sumsq_is_the_squared_norm_of_any_shape(rng):
    x = f32(rng, 4, 3, 2)
    assert_close(F.sumsq(x), np.linalg.norm(x.astype(np.float64)) ** 2, 1e-12, 0, "sumsq")


def test_scale_in_place_matches_reference(rng):
    x = f32(rng, 5, 7)
    want = x.copy()
    R.scale_(want, np.float32(-0.37))
    F.scale_(x, -0.37)
    assert np.array_equal(x, want)
