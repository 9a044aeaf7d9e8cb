"""Data-free distillation methods: the student loss (AF-STip's CE + tau^2 KL with a confidence threshold),
DeepInversion's objective through a CNN teacher, DAFL's generator and its loss, and the guarantee that the
data-free arms never read a data set."""
from __future__ import annotations

import numpy as np
import pytest

from peftc.distill import KDConfig, student_loss
from peftc.distill.dafl import DAFLConfig, dafl_distill, generator_loss
from peftc.distill.deepinversion import (DeepInversionConfig, attach_bn_hooks, deepinversion_distill,
                                         inversion_loss, synthesize)
from peftc.distill.generator import DAFLGenerator
from peftc.distill.migrate import MigrationConfig, migrate_to_new_class
from peftc.distill.pseudo import AFSTipConfig, afstip_distill, build_anchors, class_anchors, perturb
from peftc.distill.teacher import teacher_logits
from peftc.models import SmallResNet

from .conftest import assert_close, f32


def _teacher(seed: int = 0, classes: int = 3) -> SmallResNet:
    """A small CNN whose norms hold non-trivial running statistics (as a trained one would)."""
    t = SmallResNet((4, 8), classes, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for _, bn in t.batchnorms():
        bn.running_mean[:] = 0.3 * rng.standard_normal(bn.num_features)
        bn.running_var[:] = 0.5 + rng.random(bn.num_features)
    t.eval()
    return t


def _directional_check(f, x: np.ndarray, grad: np.ndarray, rng, eps: float = 1e-2, rel: float = 0.03) -> None:
    """Central differences of the float32 objective f along random directions against <grad, v>."""
    for _ in range(3):
        v = rng.standard_normal(x.shape).astype(np.float32)
        numeric = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
        analytic = float((grad.astype(np.float64) * v).sum())
        assert abs(numeric - analytic) <= rel * abs(analytic) + 1e-3, (numeric, analytic)


def test_student_loss_matches_torch_on_the_confident_rows(rng, torch):
    zs, zt = f32(rng, 8, 5, scale=2.0), f32(rng, 8, 5, scale=3.0)
    cfg = KDConfig(tau=3.0, lambda_kd=0.7, lambda_cls=0.4, confidence=0.6)
    loss, d, kept = student_loss(zs, zt, cfg)
    tt = torch.tensor(zt)
    keep = torch.softmax(tt, 1).max(1).values >= cfg.confidence
    assert 0 < kept == int(keep.sum()) < 8
    ts = torch.tensor(zs, requires_grad=True)
    s, t = ts[keep], tt[keep]
    kl = torch.nn.functional.kl_div(torch.log_softmax(s / cfg.tau, 1), torch.softmax(t / cfg.tau, 1),
                                    reduction="batchmean") * cfg.tau ** 2
    ce = torch.nn.functional.cross_entropy(s, t.argmax(1))
    ref = cfg.lambda_kd * kl + cfg.lambda_cls * ce
    ref.backward()
    assert_close(loss, ref.item(), 1e-5, 1e-7, "loss")
    assert_close(d, ts.grad.numpy(), 1e-4, 1e-7, "dstudent")
    assert not d[~keep.numpy()].any()


def test_student_loss_with_no_confident_row_is_zero(rng):
    loss, d, kept = student_loss(f32(rng, 4, 3), np.zeros((4, 3), np.float32), KDConfig(confidence=0.9))
    assert (loss, kept) == (0.0, 0) and not d.any()


def test_inversion_loss_gradient_matches_finite_differences(rng):
    t = _teacher()
    x = f32(rng, 3, 1, 12, 12)
    y = np.array([0, 1, 2])
    cfg = DeepInversionConfig(alpha_f=1.0, first_bn_multiplier=3.0, alpha_tv1=0.1, alpha_tv2=0.05, alpha_l2=0.2)
    loss, dx, parts = inversion_loss(t, x, y, cfg)
    assert parts["bn"] > 0 and parts["prior"] > 0
    _directional_check(lambda z: inversion_loss(t, z, y, cfg)[0], x, dx, rng)


def test_bn_term_is_the_weighted_sum_over_the_norms_and_hooks_are_removed(rng):
    t = _teacher()
    x = f32(rng, 2, 1, 10, 10)
    cfg = DeepInversionConfig(alpha_ce=0.0, alpha_f=2.0, first_bn_multiplier=5.0, alpha_tv2=0.0)
    _, _, parts = inversion_loss(t, x, np.array([0, 1]), cfg)
    hooks = attach_bn_hooks(t, 1.0)
    t.forward(x)
    expected = 2.0 * (5.0 * hooks[0].loss + sum(h.loss for h in hooks[1:]))
    for h in hooks:
        h.bn.input_hook = None
    assert_close(parts["bn"], expected, 1e-5, 0, "bn term")
    assert all(bn.input_hook is None for _, bn in t.batchnorms())
    assert all(p.requires_grad for p in t.parameters()) and not t.training


def test_deepinversion_synthesis_lowers_its_objective():
    t = _teacher()
    cfg = DeepInversionConfig(iterations=25, lr=0.05, pixel_range=None)  # the test teacher's inputs are standardised
    imgs, hist = synthesize(t, np.arange(6) % 3, (1, 12, 12), cfg)
    assert hist[-1]["loss"] < 0.7 * hist[0]["loss"]
    assert hist[-1]["bn"] < hist[0]["bn"]


def test_images_and_anchors_stay_in_the_pixel_range():
    t = _teacher()
    imgs, _ = synthesize(t, np.arange(3), (1, 12, 12), DeepInversionConfig(iterations=5, lr=0.5))
    anchors, _ = class_anchors(t, 3, (1, 12, 12), per_class=2, steps=5, lr=0.5)
    inverted, _ = build_anchors(t, 3, (1, 12, 12), AFSTipConfig(anchors_per_class=2, anchor_steps=5))
    for x in (imgs, anchors, inverted):
        assert x.min() >= 0.0 and x.max() <= 1.0 and 0.0 < x.mean() < 1.0


@pytest.mark.parametrize("pixel_range", [None, (0.0, 1.0)])
def test_generator_backward_matches_finite_differences(rng, pixel_range):
    g = DAFLGenerator(latent_dim=6, width=4, size=8, seed=1, pixel_range=pixel_range)
    z = f32(rng, 5, 6)
    w = f32(rng, 5, 1, 8, 8)
    x = g.forward(z)
    if pixel_range is not None:
        assert x.min() >= 0.0 and x.max() <= 1.0
    dz = g.backward(w)
    _directional_check(lambda q: float((g.forward(q).astype(np.float64) * w).sum()), z, dz, rng)


@pytest.mark.parametrize("weights", [(1.0, 0.0, 0.0), (0.0, 5.0, 0.0), (0.0, 0.0, 0.1), (1.0, 5.0, 0.1)])
def test_dafl_generator_loss_gradient_matches_finite_differences(rng, weights):
    t = _teacher()
    t.head.weight.data *= 5.0  # imbalanced predictions, so the entropy term has a gradient worth checking
    x = f32(rng, 6, 1, 12, 12)
    cfg = DAFLConfig(w_oh=weights[0], w_ie=weights[1], w_a=weights[2])
    loss, dx, _, parts = generator_loss(t, x, cfg)
    assert parts["activation"] < 0 and parts["entropy"] < -0.01
    _directional_check(lambda z: generator_loss(t, z, cfg)[0], x, dx, rng, eps=2e-3)


def test_class_anchors_make_the_teacher_predict_their_class():
    t = _teacher()
    anchors, labels = class_anchors(t, 3, (1, 12, 12), per_class=4, steps=40, lr=0.3, pixel_range=None)
    assert (teacher_logits(t, anchors).argmax(1) == labels).mean() >= 0.9
    x = perturb(anchors, 0.1, 50, np.random.default_rng(0))
    assert x.shape == (50, 1, 12, 12) and x.dtype == np.float32


def test_afstip_student_learns_to_agree_with_the_teacher():
    t = _teacher()
    s = SmallResNet((4, 4), 3, seed=5)
    anchors, _ = class_anchors(t, 3, (1, 12, 12), per_class=4, steps=40, lr=0.3, pixel_range=None)
    probe = perturb(anchors, 0.3, 60, np.random.default_rng(9))
    target = teacher_logits(t, probe).argmax(1)
    before = (teacher_logits(s, probe).argmax(1) == target).mean()
    # a random teacher is unsure everywhere: no confidence threshold here
    cfg = AFSTipConfig(sigma=0.3, steps=40, batch_size=16, lr=1e-2, kd=KDConfig(tau=1.0, lambda_cls=1.0),
                       pixel_range=None)
    afstip_distill(t, s, 3, (1, 12, 12), cfg, centres=anchors)
    after = (teacher_logits(s, probe).argmax(1) == target).mean()
    assert after >= 0.9 and after > before + 0.3


def test_data_free_arms_never_read_the_data(monkeypatch):
    import peftc.data.fashion_mnist as fm

    def refuse(*args, **kwargs):
        raise AssertionError("a data-free method read the data set")

    monkeypatch.setattr(fm, "load_fashion_mnist", refuse)
    monkeypatch.setattr(fm, "read_idx", refuse)
    t = _teacher()
    afstip_distill(t, SmallResNet((4, 4), 3, seed=1), 3, (1, 28, 28),
                   AFSTipConfig(steps=2, batch_size=4, anchors_per_class=1, anchor_steps=1))
    deepinversion_distill(t, SmallResNet((4, 4), 3, seed=2), 3, (1, 28, 28),
                          DeepInversionConfig(batch_size=3, iterations=2, batches=1, kd_steps=2, kd_batch_size=2))
    dafl_distill(t, SmallResNet((4, 4), 3, seed=3), DAFLConfig(iterations=2, batch_size=4, latent_dim=8, width=8))


def test_methods_reject_bad_configurations():
    with pytest.raises(ValueError, match="confidence"):
        KDConfig(confidence=1.0)
    with pytest.raises(ValueError, match="sigma"):
        perturb(np.zeros((2, 3), np.float32), -1.0, 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="size"):
        DAFLGenerator(size=30)
    with pytest.raises(ValueError, match="anchor_method"):
        build_anchors(_teacher(), 3, (1, 12, 12), AFSTipConfig(anchor_method="gan"))


def test_migration_learns_the_new_class_and_keeps_the_old_ones():
    t = _teacher()
    s = SmallResNet((4, 4), 3, seed=5)
    anchors, _ = class_anchors(t, 3, (1, 12, 12), per_class=4, steps=40, lr=0.3, pixel_range=None)
    afstip_distill(t, s, 3, (1, 12, 12), AFSTipConfig(sigma=0.3, steps=40, batch_size=16, lr=1e-2,
                                                      kd=KDConfig(tau=1.0, lambda_cls=1.0), pixel_range=None),
                   centres=anchors)
    rng = np.random.default_rng(4)
    new_x = (2.0 + 0.3 * rng.standard_normal((5, 1, 12, 12))).astype(np.float32)  # a distinct new class
    probe_old = perturb(anchors, 0.3, 60, np.random.default_rng(9))
    old_target = teacher_logits(t, probe_old).argmax(1)
    migrate_to_new_class(s, t, new_x, anchors, MigrationConfig(steps=40, new_per_batch=8, pseudo_per_batch=24,
                                                               sigma=0.3, lr=1e-2))
    assert s.head.out_features == 4
    probe_new = (2.0 + 0.3 * rng.standard_normal((20, 1, 12, 12))).astype(np.float32)
    assert (teacher_logits(s, probe_new).argmax(1) == 3).mean() >= 0.9
    assert (teacher_logits(s, probe_old).argmax(1) == old_target).mean() >= 0.8


@pytest.mark.parametrize("only", ["adi", "all"])
def test_adi_inversion_loss_gradient_matches_finite_differences(rng, only):
    t, s = _teacher(), _teacher(seed=7)  # the student: another BN CNN, frozen in eval mode during synthesis
    for net in (t, s):
        net.head.weight.data *= 20.0  # logits that move with the input, so both networks' paths count
    x = f32(rng, 4, 1, 12, 12)
    y = np.array([0, 1, 2, 0])
    cfg = DeepInversionConfig(alpha_adi=50.0, adi_tau=3.0)
    if only == "adi":  # the competition term alone, so that a missing path cannot hide behind the others
        cfg = DeepInversionConfig(alpha_ce=0.0, alpha_f=0.0, alpha_tv2=0.0, alpha_adi=50.0)
    loss, dx, parts = inversion_loss(t, x, y, cfg, student=s)
    assert 0.0 < parts["adi"] < 50.0 and not s.training and all(p.requires_grad for p in s.parameters())
    _directional_check(lambda z: inversion_loss(t, z, y, cfg, student=s)[0], x, dx, rng, eps=2e-3)


def test_adi_rounds_alternate_synthesis_and_kd_without_reading_data(monkeypatch):
    import peftc.data.fashion_mnist as fm

    def refuse(*args, **kwargs):
        raise AssertionError("ADI read the data set")

    monkeypatch.setattr(fm, "load_fashion_mnist", refuse)
    monkeypatch.setattr(fm, "read_idx", refuse)
    t, s = _teacher(), SmallResNet((4, 4), 3, seed=2)
    cfg = DeepInversionConfig(batch_size=3, iterations=2, batches=2, kd_steps=5, kd_batch_size=2, alpha_adi=1.0,
                              pixel_range=None)
    out = deepinversion_distill(t, s, 3, (1, 12, 12), cfg)
    assert out["images"].shape == (6, 1, 12, 12) and len(out["loss"]) == 5
    assert all("adi" in h for h in out["synthesis"])
    with pytest.raises(ValueError, match="student"):
        inversion_loss(t, out["images"][:3], np.arange(3), cfg)
    with pytest.raises(ValueError, match="images"):
        deepinversion_distill(t, s, 3, (1, 12, 12), cfg, images=out["images"])
