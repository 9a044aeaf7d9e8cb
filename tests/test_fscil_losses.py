"""FSCIL representation losses (SupCon, ETF dot regression): C against the NumPy reference, the reference's
gradient against float64 finite differences, both against torch autograd; bad input; the ETF targets."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R
from peftc.fscil import FSCILObjective
from peftc.fscil.etf import simplex_etf

from .conftest import assert_close, numerical_grad

LABELS = {
    "pairs": np.array([0, 1, 2, 3, 0, 1, 2, 3]),          # two views of four texts (SimCSE)
    "classes": np.array([5, 5, 2, 2, 2, 7, 9, 9]),         # row 5 has no positive: not an anchor
    "no_anchor": np.array([0, 1, 2, 3, 4, 5, 6, 7]),
}


def unit(rng, n, h):
    x = rng.standard_normal((n, h))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("case", list(LABELS))
def test_supcon_kernel_matches_the_reference(rng, case):
    y = LABELS[case]
    z = unit(rng, len(y), 6)
    loss, anchors, probs = F.supcon_forward(z.astype(np.float32), y, 0.3)
    rloss, ranchors, rprobs = R.supcon_forward(z, y, 0.3)
    assert anchors == ranchors == {"pairs": 8, "classes": 7, "no_anchor": 0}[case]
    assert_close(loss, rloss, 1e-5, 1e-6, "loss")
    assert_close(probs, rprobs, 1e-5, 1e-6, "probs")
    dz = np.full(z.shape, 0.5, np.float32)  # accumulates
    F.supcon_backward(1.7, probs, z.astype(np.float32), y, 0.3, dz=dz)
    rdz = np.full(z.shape, 0.5)
    R.supcon_backward(1.7, rprobs, z, y, 0.3, dz=rdz)
    assert_close(dz, rdz, 1e-5, 1e-5, "dz")


@pytest.mark.parametrize("case", ["pairs", "classes"])
def test_supcon_reference_gradient_matches_finite_differences(rng, case):
    y = LABELS[case]
    z = unit(rng, len(y), 5) * 1.3  # the formula holds off the sphere too
    _, _, probs = R.supcon_forward(z, y, 0.5)
    dz = np.zeros_like(z)
    R.supcon_backward(1.0, probs, z, y, 0.5, dz=dz)
    num = numerical_grad(lambda: R.supcon_forward(z, y, 0.5)[0], z)
    assert_close(dz, num, 1e-6, 1e-8, "dz vs finite differences")


def test_supcon_matches_torch_autograd(rng, torch):
    y = LABELS["classes"]
    z = unit(rng, len(y), 6).astype(np.float32)
    t = torch.tensor(z, requires_grad=True)
    yt = torch.tensor(y)
    s = t @ t.T / 0.2
    eye = torch.eye(len(y), dtype=torch.bool)
    log_q = torch.log_softmax(s.masked_fill(eye, float("-inf")), dim=1)
    pos = (yt[:, None] == yt[None, :]) & ~eye
    n_pos = pos.sum(1)
    per = -(log_q.masked_fill(~pos, 0.0)).sum(1)[n_pos > 0] / n_pos[n_pos > 0]
    per.mean().backward()
    loss, _, probs = F.supcon_forward(z, y, 0.2)
    dz = np.zeros_like(z)
    F.supcon_backward(1.0, probs, z, y, 0.2, dz=dz)
    assert_close(loss, per.mean().item(), 1e-5, 1e-6, "loss vs torch")
    assert_close(dz, t.grad.numpy(), 1e-4, 1e-5, "dz vs torch")


def _etf_case(rng):
    targets = simplex_etf(5, 6, seed=1)
    feat = unit(rng, 7, 6)
    y = np.array([0, 4, -100, 2, 2, 1, 3])
    return feat, targets, y


def test_etf_alignment_kernel_reference_and_finite_differences_agree(rng):
    feat, targets, y = _etf_case(rng)
    loss, count, dots = F.etf_align_forward(feat.astype(np.float32), targets, y)
    rloss, rcount, rdots = R.etf_align_forward(feat, targets.astype(np.float64), y)
    assert count == rcount == 6 and dots[2] == 0.0
    assert_close(loss, rloss, 1e-5, 1e-6, "loss")
    dfeat = np.ones(feat.shape, np.float32)
    F.etf_align_backward(0.7, dots, targets, y, dfeat=dfeat)
    rdfeat = np.ones(feat.shape)
    R.etf_align_backward(0.7, rdots, targets.astype(np.float64), y, dfeat=rdfeat)
    assert_close(dfeat, rdfeat, 1e-5, 1e-6, "dfeat")
    g = np.zeros_like(feat)
    R.etf_align_backward(1.0, rdots, targets.astype(np.float64), y, dfeat=g)
    num = numerical_grad(lambda: R.etf_align_forward(feat, targets.astype(np.float64), y)[0], feat)
    assert_close(g, num, 1e-6, 1e-8, "dfeat vs finite differences")


def test_etf_alignment_matches_torch_autograd(rng, torch):
    feat, targets, y = _etf_case(rng)
    keep = y != -100
    t = torch.tensor(feat.astype(np.float32), requires_grad=True)
    dots_t = (t[torch.tensor(keep)] * torch.tensor(targets)[torch.tensor(y[keep])]).sum(1)
    (0.5 * (dots_t - 1) ** 2).mean().backward()
    loss, _, dots = F.etf_align_forward(feat.astype(np.float32), targets, y)
    dfeat = np.zeros(feat.shape, np.float32)
    F.etf_align_backward(1.0, dots, targets, y, dfeat=dfeat)
    assert_close(loss, (0.5 * (dots_t - 1) ** 2).mean().item(), 1e-5, 1e-6, "loss vs torch")
    assert_close(dfeat, t.grad.numpy(), 1e-5, 1e-6, "dfeat vs torch")


def test_bad_input_is_refused_naming_the_argument_and_inputs_stay_unchanged(rng):
    z = unit(rng, 4, 3).astype(np.float32)
    y = np.array([0, 0, 1, 1])
    z0 = z.copy()
    with pytest.raises(ValueError, match=r"supcon_forward.*labels"):
        F.supcon_forward(z, y[:3], 0.1)
    with pytest.raises(ValueError, match="temperature"):
        F.supcon_forward(z, y, 0.0)
    with pytest.raises(TypeError, match="z"):
        F.supcon_forward(z.astype(np.float64), y, 0.1)
    with pytest.raises(ValueError, match=r"supcon_backward: .*N = 3.*N = 4"):
        F.supcon_backward(1.0, np.zeros((3, 3), np.float32), z, y, 0.1, dz=np.zeros_like(z))
    nan = z.copy()
    nan[1, 0] = np.nan
    with pytest.raises(ValueError, match="supcon_forward: input holds NaN"):
        F.supcon_forward(nan, y, 0.1)
    targets = simplex_etf(2, 3)
    with pytest.raises(ValueError, match="label"):
        F.etf_align_forward(z, targets, np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"etf_align_forward.*targets"):
        F.etf_align_forward(z, np.zeros((2, 5), np.float32), y)
    np.testing.assert_array_equal(z, z0)


def test_simplex_etf_is_equiangular_and_the_short_width_spreads_the_vectors():
    m = simplex_etf(100, 384, seed=3)
    g = m.astype(np.float64) @ m.T
    assert_close(np.diag(g), np.ones(100), 0, 1e-6, "unit rows")
    assert_close(g[~np.eye(100, dtype=bool)], np.full(9900, -1 / 99), 0, 1e-6, "cosines")
    np.testing.assert_array_equal(m, simplex_etf(100, 384, seed=3))
    short = simplex_etf(10, 4, seed=0)
    rnd = np.random.default_rng(0).standard_normal((10, 4))
    rnd /= np.linalg.norm(rnd, axis=1, keepdims=True)
    off = ~np.eye(10, dtype=bool)
    assert (short @ short.T)[off].max() < 0.3 < (rnd @ rnd.T)[off].max()


def test_objective_sums_the_weighted_terms_and_their_gradients(rng):
    b, h = 4, 6
    targets = simplex_etf(3, h)
    z = unit(rng, 2 * b, 5).astype(np.float32)
    feat = unit(rng, b, h).astype(np.float32)
    logits = rng.standard_normal((b, 4)).astype(np.float32)
    pretext_logits = rng.standard_normal((b, 4)).astype(np.float32)
    out = {"z": z, "feat": feat, "logits": logits, "pretext_logits": pretext_logits,
           "pretext_labels": np.array([0, 3, -100, 1])}
    y = np.array([0, 2, 3, 2])  # class 3 is a pseudo-class: no ETF target
    obj = FSCILObjective(ce=1.0, supcon=0.5, temperature=0.2, etf=2.0, etf_targets=targets, align_classes=3,
                         pretext=0.25)
    total = obj.forward(out, y)
    want = {"ce": F.cross_entropy_forward(logits, y)[0],
            "supcon": F.supcon_forward(z, np.concatenate([y, y]), 0.2)[0],
            "etf": F.etf_align_forward(feat, targets, np.array([0, 2, -100, 2]))[0],
            "pretext": F.cross_entropy_forward(pretext_logits, out["pretext_labels"])[0]}
    assert_close(total, want["ce"] + 0.5 * want["supcon"] + 2.0 * want["etf"] + 0.25 * want["pretext"], 1e-6, 1e-6)
    grads = obj.backward(1.0)
    _, _, dots = F.etf_align_forward(feat, targets, np.array([0, 2, -100, 2]))
    dfeat = np.zeros_like(feat)
    F.etf_align_backward(2.0, dots, targets, np.array([0, 2, -100, 2]), dfeat=dfeat)
    assert_close(grads["feat"], dfeat, 1e-6, 1e-7, "feat")
    assert set(grads) == {"logits", "z", "feat", "pretext_logits"}
