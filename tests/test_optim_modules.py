"""peftc.optim: AdamW, SGD and clip_grad_norm_ against torch, and a LoRA fit that lowers the loss."""
from __future__ import annotations

import numpy as np
import pytest

import peftc
from peftc import functional as F
from peftc.nn import Linear, LoraLinear, Parameter
from peftc.optim import SGD, AdamW, clip_grad_norm_

from .conftest import assert_close, f32

SHAPES = [(4, 3), (5,), (2, 2, 2)]
STEPS = 6


def params_and_torch(rng, torch):
    ps = [Parameter(f32(rng, *s)) for s in SHAPES]
    ts = [torch.nn.Parameter(torch.tensor(p.data)) for p in ps]
    return ps, ts


def run_both(rng, ps, ts, opt, topt, torch):
    for step in range(STEPS):
        for p, t in zip(ps, ts):
            g = f32(rng, *p.shape)
            p.grad = g.copy()
            t.grad = torch.tensor(g)
        opt.step()
        topt.step()
        for i, (p, t) in enumerate(zip(ps, ts)):
            assert_close(p.data, t.detach().numpy(), 1e-6, 1e-7, f"param {i} after step {step + 1}")


@pytest.mark.parametrize("kw", [dict(lr=1e-2), dict(lr=5e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)])
def test_adamw_optimizer_matches_torch(rng, torch, kw):
    ps, ts = params_and_torch(rng, torch)
    run_both(rng, ps, ts, AdamW(ps, **kw), torch.optim.AdamW(ts, **kw), torch)


@pytest.mark.parametrize("kw", [dict(lr=0.1), dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=0.01),
                                dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.05)])
def test_sgd_optimizer_matches_torch(rng, torch, kw):
    ps, ts = params_and_torch(rng, torch)
    run_both(rng, ps, ts, SGD(ps, **kw), torch.optim.SGD(ts, **kw), torch)


def test_adamw_param_groups_use_their_own_hyperparameters(rng, torch):
    ps, ts = params_and_torch(rng, torch)
    opt = AdamW([{"params": ps[:1], "lr": 0.1}, {"params": ps[1:]}], lr=0.01, weight_decay=0.0)
    topt = torch.optim.AdamW([{"params": ts[:1], "lr": 0.1}, {"params": ts[1:]}], lr=0.01, weight_decay=0.0)
    run_both(rng, ps, ts, opt, topt, torch)


@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(rng, torch, max_norm):
    ps, ts = params_and_torch(rng, torch)
    for p, t in zip(ps, ts):
        g = f32(rng, *p.shape)
        p.grad, t.grad = g.copy(), torch.tensor(g)
    total = clip_grad_norm_(ps, max_norm)
    total_t = torch.nn.utils.clip_grad_norm_(ts, max_norm)
    assert_close(total, total_t.item(), 1e-6, 0, "norm")
    for i, (p, t) in enumerate(zip(ps, ts)):
        assert_close(p.grad, t.grad.numpy(), 1e-6, 1e-8, f"grad {i}")


def test_clip_grad_norm_scales_to_max_norm_and_rejects_nonfinite(rng):
    ps = [Parameter(f32(rng, 10)) for _ in range(2)]
    for p in ps:
        p.grad = f32(rng, 10, scale=10.0)
    clip_grad_norm_(ps, 1.0)
    assert_close(np.sqrt(sum(F.sumsq(p.grad) for p in ps)), 1.0, 1e-5, 0, "clipped norm")
    ps[0].grad[3] = np.nan
    with pytest.raises(FloatingPointError):
        clip_grad_norm_(ps, 1.0)


def test_optimizers_skip_parameters_without_gradient(rng):
    a, b = Parameter(f32(rng, 4)), Parameter(f32(rng, 4))
    b0 = b.data.copy()
    a.grad = f32(rng, 4)
    for opt in (AdamW([a, b], lr=0.1), SGD([a, b], lr=0.1, momentum=0.9)):
        opt.step()
    assert np.array_equal(b.data, b0)
    assert clip_grad_norm_([a, b], 1e9) == pytest.approx(np.sqrt(F.sumsq(a.grad)))


def test_optimizer_state_dict_resumes_identically(rng):
    def fresh():
        return Parameter(np.linspace(-1, 1, 6).astype(np.float32))

    grads = [f32(rng, 6) for _ in range(4)]
    p1 = fresh()
    opt1 = AdamW([p1], lr=0.05)
    for g in grads:
        p1.grad = g.copy()
        opt1.step()
    p2 = fresh()
    opt2 = AdamW([p2], lr=0.05)
    for g in grads[:2]:
        p2.grad = g.copy()
        opt2.step()
    state = opt2.state_dict()
    p3 = Parameter(p2.data.copy())
    opt3 = AdamW([p3], lr=0.05)
    opt3.load_state_dict(state)
    for g in grads[2:]:
        p3.grad = g.copy()
        opt3.step()
    assert np.array_equal(p3.data, p1.data)


def test_optimizers_reject_bad_hyperparameters():
    p = [Parameter(np.zeros(3, np.float32))]
    for bad in (lambda: AdamW(p, lr=-1.0), lambda: AdamW(p, betas=(1.0, 0.9)), lambda: SGD(p, lr=-0.1),
                lambda: SGD(p, lr=0.1, nesterov=True), lambda: AdamW([], lr=0.1)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(TypeError):
        SGD([np.zeros(3, np.float32)], lr=0.1)


def test_lora_fit_reduces_regression_loss():
    # targets from the frozen base plus a rank-2 update: a rank-4 LoRA can fit them
    rng = np.random.default_rng(0)
    base = Linear(16, 8, generator=peftc.Generator(1)).requires_grad_(False)
    delta = (rng.standard_normal((8, 2)) @ rng.standard_normal((2, 16)) / 4).astype(np.float32)
    x = rng.standard_normal((64, 16)).astype(np.float32)
    target = x @ (base.weight.data + delta).T + base.bias.data
    layer = LoraLinear(base, r=4, lora_alpha=4.0, generator=peftc.Generator(2))
    w0 = base.weight.data.copy()
    opt = AdamW([layer.lora_A, layer.lora_B], lr=0.02, weight_decay=0.0)
    losses = []
    for _ in range(150):
        err = layer(x) - target
        losses.append(float(np.mean(err**2)))
        opt.zero_grad()
        layer.backward((2.0 / err.size) * err)
        clip_grad_norm_([layer.lora_A, layer.lora_B], 5.0)
        opt.step()
    assert losses[-1] < 0.02 * losses[0], f"loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    assert np.array_equal(layer.base.weight.data, w0)  # the base stays frozen
    layer.merge()
    assert_close(layer(x), target, 0.0, 0.1, "merged fit")
