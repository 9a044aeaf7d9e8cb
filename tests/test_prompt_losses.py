"""PromptSRC objective: each term's gradient against float64 finite differences, the C cross-entropy
path against the NumPy one, the KL against torch's kl_div, and the loss-weight rescaling."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import reference
from peftc.prompt import LossWeights, promptsrc_loss
from peftc.prompt.losses import kl_teacher_forward

from .conftest import assert_close, numerical_grad

B, C, H = 5, 4, 6


def unit(rng, *shape):
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def case(rng):
    u, v = unit(rng, B, H), unit(rng, C, H)
    u0, v0 = unit(rng, B, H), unit(rng, C, H)
    return u, v, u0, v0, rng.integers(0, C, B).astype(np.int64)


WEIGHTS = {
    "ce_only": LossWeights(20.0, 0.0, 0.0, 0.0),
    "text_l1": LossWeights(20.0, 25.0, 0.0, 0.0),
    "input_l1": LossWeights(20.0, 0.0, 10.0, 0.0),
    "kl": LossWeights(20.0, 0.0, 0.0, 3.0),
    "all": LossWeights.for_dim(384, 20.0),
}


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_promptsrc_loss_gradient_matches_finite_differences(rng, name):
    w = WEIGHTS[name]
    u, v, u0, v0, y = case(rng)
    terms, du, dv = promptsrc_loss(u, v, y, u0, v0, w, ops=reference)

    def total():
        return promptsrc_loss(u, v, y, u0, v0, w, ops=reference)[0]["total"]

    assert_close(du, numerical_grad(total, u), 1e-5, 1e-7, f"du ({name})")
    assert_close(dv, numerical_grad(total, v), 1e-5, 1e-7, f"dv ({name})")
    used = {"ce"} | {k for k in ("text_l1", "input_l1", "kl") if getattr(w, k)}
    assert all(terms[k] > 0 for k in used)
    assert all(terms[k] == 0.0 for k in {"text_l1", "input_l1", "kl"} - used)


def test_promptsrc_loss_kernel_path_matches_numpy_path(rng):
    u, v, u0, v0, y = (a.astype(np.float32) if a.dtype == np.float64 else a for a in case(rng))
    w = WEIGHTS["all"]
    t32, du32, dv32 = promptsrc_loss(u, v, y, u0, v0, w)
    t64, du64, dv64 = promptsrc_loss(*(a.astype(np.float64) if a.dtype == np.float32 else a
                                       for a in (u, v, y, u0, v0)), w, ops=reference)
    assert_close(t32["total"], t64["total"], 1e-5, 1e-6, "total")
    assert_close(du32, du64, 1e-4, 1e-5, "du")
    assert_close(dv32, dv64, 1e-4, 1e-5, "dv")


def test_kl_term_matches_torch_kl_div_with_teacher_first(rng, torch):
    z, z0 = rng.standard_normal((B, C)), rng.standard_normal((B, C))
    f = torch.nn.functional
    ref = f.kl_div(f.log_softmax(torch.tensor(z), 1), f.log_softmax(torch.tensor(z0), 1), reduction="sum",
                   log_target=True) / (B * C)
    assert_close(kl_teacher_forward(z, z0, B * C), float(ref), 1e-10, 1e-12, "KL(q || p) / (B C)")


def test_regularisers_vanish_when_prompted_equals_frozen(rng):
    u, v, _, _, y = case(rng)
    terms, _, _ = promptsrc_loss(u, v, y, u.copy(), v.copy(), WEIGHTS["all"], ops=reference)
    assert terms["text_l1"] == 0.0 and terms["input_l1"] == 0.0 and abs(terms["kl"]) < 1e-12


def test_loss_weights_scale_with_sqrt_dim():
    w = LossWeights.for_dim(384)
    assert_close([w.text_l1, w.input_l1, w.kl], [25 * np.sqrt(0.75), 10 * np.sqrt(0.75), 1.0], 1e-12, 0, "weights")
    assert LossWeights.for_dim(512) == LossWeights(20.0, 25.0, 10.0, 1.0)
