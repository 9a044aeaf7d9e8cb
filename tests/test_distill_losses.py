"""Data-free distillation losses (KD divergence, BN-statistics matching, DAFL terms, TV): the C kernels
against the NumPy reference, float64 finite differences of the reference, and torch autograd."""
from __future__ import annotations

import math

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad


# ---- KD divergence -------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_kd_kl_matches_reference_and_accumulates(rng, tau):
    zs, zt = f32(rng, 6, 5, scale=2.0), f32(rng, 6, 5, scale=2.0)
    loss, ps, pt = F.kd_kl_forward(zs, zt, tau)
    loss_r, ps_r, pt_r = R.kd_kl_forward(zs, zt, tau)
    assert_close(loss, loss_r, 1e-5, 1e-7, "loss")
    assert_close(ps, ps_r, 1e-5, 1e-7, "student probs")
    assert_close(pt, pt_r, 1e-5, 1e-7, "teacher probs")
    ds, dt = np.full_like(zs, 0.25), np.full_like(zt, -0.5)
    F.kd_kl_backward(0.7, ps, pt, zs, zt, tau, dstudent_logits=ds, dteacher_logits=dt)
    ds_r, dt_r = np.full_like(zs, 0.25), np.full_like(zt, -0.5)
    R.kd_kl_backward(0.7, ps_r, pt_r, zs, zt, tau, dstudent_logits=ds_r, dteacher_logits=dt_r)
    assert_close(ds, ds_r, 1e-5, 1e-7, "dstudent")
    assert_close(dt, dt_r, 1e-5, 1e-7, "dteacher")


def test_kd_kl_is_zero_for_equal_logits_and_positive_otherwise(rng):
    z = f32(rng, 4, 7, scale=3.0)
    assert F.kd_kl_forward(z, z.copy(), 2.0)[0] == pytest.approx(0.0, abs=1e-6)
    assert F.kd_kl_forward(z, f32(rng, 4, 7), 2.0)[0] > 0.0


def test_kd_kl_gradients_match_finite_differences(rng):
    tau = 3.0
    zs, zt = rng.standard_normal((4, 5)) * 2, rng.standard_normal((4, 5)) * 2
    _, ps, pt = R.kd_kl_forward(zs, zt, tau)
    ds, dt = np.zeros_like(zs), np.zeros_like(zt)
    R.kd_kl_backward(1.0, ps, pt, zs, zt, tau, dstudent_logits=ds, dteacher_logits=dt)
    num_s = numerical_grad(lambda: R.kd_kl_forward(zs, zt, tau)[0], zs)
    num_t = numerical_grad(lambda: R.kd_kl_forward(zs, zt, tau)[0], zt)
    assert_close(ds, num_s, 1e-6, 1e-8, "float64 dKL/dzs")
    assert_close(dt, num_t, 1e-6, 1e-8, "float64 dKL/dzt")
    zs32, zt32 = zs.astype(np.float32), zt.astype(np.float32)
    _, ps32, pt32 = F.kd_kl_forward(zs32, zt32, tau)
    cs, ct = np.zeros_like(zs32), np.zeros_like(zt32)
    F.kd_kl_backward(1.0, ps32, pt32, zs32, zt32, tau, dstudent_logits=cs, dteacher_logits=ct)
    assert_close(cs, num_s, 1e-4, 1e-6, "C dKL/dzs")
    assert_close(ct, num_t, 1e-4, 1e-6, "C dKL/dzt")


def test_kd_kl_matches_torch_batchmean_times_tau_squared(rng, torch):
    tau = 4.0
    zs, zt = f32(rng, 8, 10, scale=3.0), f32(rng, 8, 10, scale=3.0)
    ts, tt = torch.tensor(zs, requires_grad=True), torch.tensor(zt, requires_grad=True)
    ref = torch.nn.functional.kl_div(torch.log_softmax(ts / tau, 1), torch.softmax(tt / tau, 1),
                                     reduction="batchmean") * tau * tau
    ref.backward()
    loss, ps, pt = F.kd_kl_forward(zs, zt, tau)
    ds, dt = np.zeros_like(zs), np.zeros_like(zt)
    F.kd_kl_backward(1.0, ps, pt, zs, zt, tau, dstudent_logits=ds, dteacher_logits=dt)
    assert_close(loss, ref.item(), 1e-5, 1e-7, "loss")
    assert_close(ds, ts.grad.numpy(), 1e-4, 1e-7, "dstudent")
    assert_close(dt, tt.grad.numpy(), 1e-4, 1e-7, "dteacher")


def test_kd_kl_stays_finite_for_huge_logits():
    zs = np.array([[1e4, 0.0, -1e4]], np.float32)
    zt = np.array([[-1e4, 0.0, 1e4]], np.float32)
    loss, ps, pt = F.kd_kl_forward(zs, zt, 1.0)
    ds, dt = np.zeros_like(zs), np.zeros_like(zt)
    F.kd_kl_backward(1.0, ps, pt, zs, zt, 1.0, dstudent_logits=ds, dteacher_logits=dt)
    assert math.isfinite(loss) and loss == pytest.approx(2e4, rel=1e-6)
    assert np.isfinite(ds).all() and np.isfinite(dt).all()


def test_kd_kl_rejects_bad_temperature_and_nonfinite_logits(rng):
    z = f32(rng, 3, 4)
    with pytest.raises(ValueError, match="tau"):
        F.kd_kl_forward(z, z, 0.0)
    bad = z.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError):
        F.kd_kl_forward(z, bad, 1.0)
    with pytest.raises(ValueError, match=r"teacher_logits.*\(3, 5\)"):
        F.kd_kl_forward(z, f32(rng, 3, 5), 1.0, teacher_probs=np.empty((3, 4), np.float32))


# ---- ADI's Jensen-Shannon competition term ------------------------------------------------------------

def _adi_logits(rng, n: int = 6, c: int = 5):
    """Logits whose softmaxes at tau 3 hold values inside, below and above the clamp range [0.01, 0.99], none
    within 1e-3 of its ends (where a finite difference would straddle a kink)."""
    zs = rng.standard_normal((n, c)) * 2.0
    zt = rng.standard_normal((n, c)) * 2.0
    zs[0] = [30.0, 0.0, 0.0, -5.0, 1.0]  # a student probability above 0.99, the others of the row below 0.01
    zt[0] = [25.0, 1.0, 0.0, -4.0, 0.0]  # with it, m of row 0 above 0.99 and below 0.01 too
    zt[1] = [-30.0, 0.0, 0.0, 0.0, 0.0]  # a teacher probability below 0.01
    # m clamped while the student's probability is not, below and above the range (rows 2 and 3)
    zs[2], zt[2] = 3.0 * np.log([0.015, 0.5, 0.2, 0.185, 0.1]), 3.0 * np.log([0.002, 0.3, 0.3, 0.198, 0.2])
    zs[3] = 3.0 * np.log([0.985, 0.005, 0.004, 0.003, 0.003])
    zt[3] = 3.0 * np.log([0.9991, 0.0003, 0.0002, 0.0002, 0.0002])
    ps, pt = (np.exp(R._log_softmax(z / 3.0)) for z in (zs, zt))
    m = 0.5 * (ps + pt)
    for p in (ps, pt, m):
        assert not (np.abs(p - 0.01) < 1e-3).any() and not (np.abs(p - 0.99) < 1e-3).any()
    assert (ps > 0.99).any() and (pt < 0.01).any() and ((ps > 0.01) & (ps < 0.99)).any()
    assert (m > 0.99).any() and (m < 0.01).any()
    return zs, zt


def test_adi_js_matches_reference_and_accumulates(rng):
    zs, zt = (z.astype(np.float32) for z in _adi_logits(rng))
    js, ps, pt = F.adi_js_forward(zs, zt, 3.0)
    js_r, ps_r, pt_r = R.adi_js_forward(zs, zt, 3.0)
    assert_close(js, js_r, 1e-5, 1e-7, "js")
    assert_close(ps, ps_r, 1e-6, 1e-8, "student probs")
    ds, dt = np.full_like(zs, 0.25), np.full_like(zt, -0.5)
    F.adi_js_backward(0.7, ps, pt, 3.0, dstudent_logits=ds, dteacher_logits=dt)
    ds_r, dt_r = np.full_like(zs, 0.25), np.full_like(zt, -0.5)
    R.adi_js_backward(0.7, ps_r, pt_r, 3.0, dstudent_logits=ds_r, dteacher_logits=dt_r)
    assert_close(ds, ds_r, 1e-5, 1e-7, "dstudent")
    assert_close(dt, dt_r, 1e-5, 1e-7, "dteacher")
    assert F.adi_js_forward(zs, zs.copy(), 3.0)[0] == pytest.approx(0.0, abs=1e-6)


def test_adi_js_gradients_match_finite_differences(rng):
    zs, zt = _adi_logits(rng)
    _, ps, pt = R.adi_js_forward(zs, zt, 3.0)
    ds, dt = np.zeros_like(zs), np.zeros_like(zt)
    R.adi_js_backward(1.0, ps, pt, 3.0, dstudent_logits=ds, dteacher_logits=dt)
    num_s = numerical_grad(lambda: R.adi_js_forward(zs, zt, 3.0)[0], zs)
    num_t = numerical_grad(lambda: R.adi_js_forward(zs, zt, 3.0)[0], zt)
    assert_close(ds, num_s, 1e-6, 1e-8, "float64 dJS/dzs")
    assert_close(dt, num_t, 1e-6, 1e-8, "float64 dJS/dzt")
    zs32, zt32 = zs.astype(np.float32), zt.astype(np.float32)
    _, ps32, pt32 = F.adi_js_forward(zs32, zt32, 3.0)
    cs, ct = np.zeros_like(zs32), np.zeros_like(zt32)
    F.adi_js_backward(1.0, ps32, pt32, 3.0, dstudent_logits=cs, dteacher_logits=ct)
    assert_close(cs, num_s, 1e-4, 1e-6, "C dJS/dzs")
    assert_close(ct, num_t, 1e-4, 1e-6, "C dJS/dzt")


def test_adi_js_matches_the_deepinversion_code_in_torch(rng, torch):
    zs, zt = (z.astype(np.float32) for z in _adi_logits(rng))
    ts, tt = torch.tensor(zs, requires_grad=True), torch.tensor(zt, requires_grad=True)
    p, q = torch.softmax(ts / 3.0, 1), torch.softmax(tt / 3.0, 1)
    m = torch.clamp(0.5 * (p + q), 0.01, 0.99)
    p, q = torch.clamp(p, 0.01, 0.99), torch.clamp(q, 0.01, 0.99)
    kl = torch.nn.KLDivLoss(reduction="batchmean")
    ref = 0.5 * kl(torch.log(p), m) + 0.5 * kl(torch.log(q), m)
    ref.backward()
    js, ps, pt = F.adi_js_forward(zs, zt, 3.0)
    ds, dt = np.zeros_like(zs), np.zeros_like(zt)
    F.adi_js_backward(1.0, ps, pt, 3.0, dstudent_logits=ds, dteacher_logits=dt)
    assert_close(js, ref.item(), 1e-5, 1e-7, "js")
    assert_close(ds, ts.grad.numpy(), 1e-4, 1e-7, "dstudent")
    assert_close(dt, tt.grad.numpy(), 1e-4, 1e-7, "dteacher")


# ---- BN-statistics matching ----------------------------------------------------------------------

def _bn_inputs(rng, n=3, ch=4, h=3, w=5):
    x = f32(rng, n, ch, h, w, scale=1.5) + 0.3
    rm = f32(rng, ch, scale=0.5)
    rv = (0.5 + rng.random(ch)).astype(np.float32)
    return x, rm, rv


def test_bn_stat_match_matches_reference_and_accumulates(rng):
    x, rm, rv = _bn_inputs(rng)
    loss, mean, var = F.bn_stat_match_forward(x, rm, rv)
    loss_r, mean_r, var_r = R.bn_stat_match_forward(x, rm, rv)
    assert_close(loss, loss_r, 1e-5, 1e-7, "loss")
    assert_close(mean, mean_r, 1e-5, 1e-7, "mean")
    assert_close(var, var_r, 1e-5, 1e-7, "biased var")
    dx, dx_r = np.full_like(x, 0.1), np.full_like(x, 0.1)
    F.bn_stat_match_backward(0.6, x, mean, var, rm, rv, dx=dx)
    R.bn_stat_match_backward(0.6, x, mean_r, var_r, rm, rv, dx=dx_r)
    assert_close(dx, dx_r, 1e-5, 1e-7, "dx")


def test_bn_stat_match_gradient_matches_finite_differences(rng):
    x32, rm, rv = _bn_inputs(rng, 2, 3, 2, 3)
    x = x32.astype(np.float64)
    _, mean, var = R.bn_stat_match_forward(x, rm, rv)
    g = np.zeros_like(x)
    R.bn_stat_match_backward(1.0, x, mean, var, rm, rv, dx=g)
    num = numerical_grad(lambda: R.bn_stat_match_forward(x, rm, rv)[0], x)
    assert_close(g, num, 1e-6, 1e-8, "float64 dR/dx")
    _, mean32, var32 = F.bn_stat_match_forward(x32, rm, rv)
    c = np.zeros_like(x32)
    F.bn_stat_match_backward(1.0, x32, mean32, var32, rm, rv, dx=c)
    assert_close(c, num, 1e-4, 1e-6, "C dR/dx")


def test_bn_stat_match_matches_deepinversion_hook_in_torch(rng, torch):
    x, rm, rv = _bn_inputs(rng)
    t = torch.tensor(x, requires_grad=True)
    nch = t.shape[1]
    mean = t.mean([0, 2, 3])
    var = t.permute(1, 0, 2, 3).contiguous().view([nch, -1]).var(1, unbiased=False)
    ref = torch.norm(torch.tensor(rv) - var, 2) + torch.norm(torch.tensor(rm) - mean, 2)
    ref.backward()
    loss, m, v = F.bn_stat_match_forward(x, rm, rv)
    dx = np.zeros_like(x)
    F.bn_stat_match_backward(1.0, x, m, v, rm, rv, dx=dx)
    assert_close(loss, ref.item(), 1e-5, 1e-7, "loss")
    assert_close(dx, t.grad.numpy(), 1e-4, 1e-7, "dx")


def test_bn_stat_match_at_the_running_statistics_has_zero_loss_and_gradient(rng):
    x, _, _ = _bn_inputs(rng)
    _, mean, var = F.bn_stat_match_forward(x, np.zeros(4, np.float32), np.ones(4, np.float32))
    loss, _, _ = F.bn_stat_match_forward(x, mean.copy(), var.copy())
    dx = np.zeros_like(x)
    F.bn_stat_match_backward(1.0, x, mean, var, mean.copy(), var.copy(), dx=dx)
    assert loss == 0.0 and not dx.any()


# ---- DAFL terms ----------------------------------------------------------------------------------

def test_dafl_activation_matches_reference_finite_differences_and_torch(rng, torch):
    f = f32(rng, 6, 8)
    assert_close(F.dafl_activation_forward(f), R.dafl_activation_forward(f), 1e-6, 1e-8, "loss")
    d, d_r = np.full_like(f, 0.2), np.full_like(f, 0.2)
    F.dafl_activation_backward(0.5, f, dfeatures=d)
    R.dafl_activation_backward(0.5, f, dfeatures=d_r)
    assert_close(d, d_r, 1e-6, 1e-8, "dfeatures")
    f64 = f.astype(np.float64)
    g = np.zeros_like(f64)
    R.dafl_activation_backward(1.0, f64, dfeatures=g)
    assert_close(g, numerical_grad(lambda: R.dafl_activation_forward(f64), f64), 1e-6, 1e-9, "float64 d/df")
    t = torch.tensor(f, requires_grad=True)
    ref = -t.abs().mean()
    ref.backward()
    c = np.zeros_like(f)
    F.dafl_activation_backward(1.0, f, dfeatures=c)
    assert_close(F.dafl_activation_forward(f), ref.item(), 1e-6, 1e-8, "torch loss")
    assert_close(c, t.grad.numpy(), 1e-6, 1e-9, "torch dfeatures")


def test_dafl_entropy_matches_reference_and_accumulates(rng):
    z = f32(rng, 7, 5, scale=2.0)
    loss, probs, pbar = F.dafl_entropy_forward(z)
    loss_r, probs_r, pbar_r = R.dafl_entropy_forward(z)
    assert_close(loss, loss_r, 1e-5, 1e-7, "loss")
    assert_close(pbar, pbar_r, 1e-5, 1e-7, "mean probs")
    d, d_r = np.full_like(z, -0.3), np.full_like(z, -0.3)
    F.dafl_entropy_backward(0.8, probs, pbar, dlogits=d)
    R.dafl_entropy_backward(0.8, probs_r, pbar_r, dlogits=d_r)
    assert_close(d, d_r, 1e-5, 1e-7, "dlogits")


def test_dafl_entropy_gradient_matches_finite_differences(rng):
    z = rng.standard_normal((5, 4)) * 2
    _, probs, pbar = R.dafl_entropy_forward(z)
    g = np.zeros_like(z)
    R.dafl_entropy_backward(1.0, probs, pbar, dlogits=g)
    num = numerical_grad(lambda: R.dafl_entropy_forward(z)[0], z)
    assert_close(g, num, 1e-6, 1e-8, "float64 d/dz")
    z32 = z.astype(np.float32)
    _, p32, pb32 = F.dafl_entropy_forward(z32)
    c = np.zeros_like(z32)
    F.dafl_entropy_backward(1.0, p32, pb32, dlogits=c)
    assert_close(c, num, 1e-4, 1e-6, "C d/dz")


def test_dafl_entropy_matches_torch_code_up_to_the_log_base(rng, torch):
    """DAFL's code: (softmax(z).mean(0) * log10(...)).sum(); the kernel uses ln, a factor ln 10."""
    z = f32(rng, 16, 10, scale=2.0)
    t = torch.tensor(z, requires_grad=True)
    p = torch.softmax(t, 1).mean(0)
    ref = (p * torch.log10(p)).sum()
    ref.backward()
    loss, probs, pbar = F.dafl_entropy_forward(z)
    d = np.zeros_like(z)
    F.dafl_entropy_backward(1.0 / math.log(10.0), probs, pbar, dlogits=d)
    assert_close(loss / math.log(10.0), ref.item(), 1e-5, 1e-7, "loss")
    assert_close(d, t.grad.numpy(), 1e-4, 1e-8, "dlogits")


def test_dafl_entropy_is_lowest_for_balanced_confident_predictions():
    balanced = np.eye(4, dtype=np.float32) * 30
    collapsed = np.tile(np.array([[30, 0, 0, 0]], np.float32), (4, 1))
    assert F.dafl_entropy_forward(balanced)[0] == pytest.approx(-math.log(4), abs=1e-5)
    assert F.dafl_entropy_forward(collapsed)[0] == pytest.approx(0.0, abs=1e-5)


# ---- total variation -----------------------------------------------------------------------------

def test_tv_matches_reference_and_accumulates(rng):
    x = f32(rng, 2, 3, 4, 5)
    l1, l2, norms = F.tv_forward(x)
    l1_r, l2_r, norms_r = R.tv_forward(x)
    assert_close([l1, l2], [l1_r, l2_r], 1e-5, 1e-7, "(l1, l2)")
    assert_close(norms, norms_r, 1e-5, 1e-7, "norms")
    d, d_r = np.full_like(x, 0.5), np.full_like(x, 0.5)
    F.tv_backward(0.3, 0.7, x, norms, dx=d)
    R.tv_backward(0.3, 0.7, x, norms_r, dx=d_r)
    assert_close(d, d_r, 1e-5, 1e-7, "dx")


@pytest.mark.parametrize("shape", [(2, 2, 3, 4), (1, 1, 2, 2), (1, 2, 5, 2)])
def test_tv_gradients_match_finite_differences(rng, shape):
    x = rng.standard_normal(shape)
    l1_grad, l2_grad = np.zeros_like(x), np.zeros_like(x)
    norms = R.tv_forward(x)[2]
    R.tv_backward(1.0, 0.0, x, norms, dx=l1_grad)
    R.tv_backward(0.0, 1.0, x, norms, dx=l2_grad)
    num1 = numerical_grad(lambda: R.tv_forward(x)[0], x)
    num2 = numerical_grad(lambda: R.tv_forward(x)[1], x)
    assert_close(l1_grad, num1, 1e-6, 1e-8, "float64 dl1/dx")
    assert_close(l2_grad, num2, 1e-6, 1e-8, "float64 dl2/dx")
    x32 = x.astype(np.float32)
    n32 = F.tv_forward(x32)[2]
    c = np.zeros_like(x32)
    F.tv_backward(0.4, 0.6, x32, n32, dx=c)
    assert_close(c, 0.4 * num1 + 0.6 * num2, 1e-4, 1e-6, "C d(0.4 l1 + 0.6 l2)/dx")


def test_tv_matches_deepinversion_prior_in_torch(rng, torch):
    x = f32(rng, 3, 2, 6, 7)
    t = torch.tensor(x, requires_grad=True)
    diffs = [t[:, :, :, :-1] - t[:, :, :, 1:], t[:, :, :-1, :] - t[:, :, 1:, :],
             t[:, :, 1:, :-1] - t[:, :, :-1, 1:], t[:, :, :-1, :-1] - t[:, :, 1:, 1:]]
    l2 = sum(torch.norm(d) for d in diffs)
    l1 = sum((d.abs() / 255.0).mean() for d in diffs) * 255.0
    (0.25 * l1 + 2.0 * l2).backward()
    f1, f2, norms = F.tv_forward(x)
    dx = np.zeros_like(x)
    F.tv_backward(0.25, 2.0, x, norms, dx=dx)
    assert_close([f1, f2], [l1.item(), l2.item()], 1e-5, 1e-7, "(l1, l2)")
    assert_close(dx, t.grad.numpy(), 1e-4, 1e-7, "dx")


def test_tv_rejects_planes_without_neighbours(rng):
    with pytest.raises(ValueError):
        F.tv_forward(f32(rng, 2, 1, 1, 5))
    with pytest.raises(ValueError, match="norms"):
        F.tv_forward(f32(rng, 2, 1, 3, 5), norms=np.zeros(3, np.float32))
