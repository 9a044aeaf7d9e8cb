"""PromptSRC's objective on unit-norm features (methods spec §0, §1.3), forward and backward.

``L = CE(z, y) + lam_text * mean|v - v0| + lam_input * mean|u - u0| + w_kl * sum_i KL(q_i || p_i) / (B C)``

with ``z = s u v^T`` the prompted cosine logits (inputs u (B, H), labels v (C, H)), ``z0 = s u0 v0^T``
the frozen teacher's, ``p = softmax(z)``, ``q = softmax(z0)``. The KL is divided by B*C as in the
released code (an effective per-sample weight of 1/C; spec §1.3). Everything here is small (C x H),
so it is plain NumPy and dtype-generic; the cross-entropy is the library's kernel, taken from
``ops`` (:mod:`peftc.functional` by default, :mod:`peftc.reference` for float64 gradient checks).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from .. import functional as F


def cosine_logits_forward(u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """z = scale * u v^T: (B, H), (C, H) -> (B, C)."""
    return scale * (u @ v.T)


def cosine_logits_backward(dz: np.ndarray, u: np.ndarray, v: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(du, dv) of :func:`cosine_logits_forward` given dz (B, C)."""
    return scale * (dz @ v), scale * (dz.T @ u)


def l1_mean_forward(a: np.ndarray, b: np.ndarray) -> float:
    """mean |a - b| over all elements."""
    return float(np.abs(a - b).mean())


def l1_mean_backward(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """d/da mean|a - b| = sign(a - b) / numel (0 at a tie); b is a fixed target."""
    return np.sign(a - b) / a.size


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def kl_teacher_forward(z: np.ndarray, z0: np.ndarray, denom: float) -> float:
    """sum_i KL(softmax(z0_i) || softmax(z_i)) / denom: the teacher z0 is fixed."""
    log_q, log_p = _log_softmax(z0), _log_softmax(z)
    return float((np.exp(log_q) * (log_q - log_p)).sum() / denom)


def kl_teacher_backward(z: np.ndarray, z0: np.ndarray, denom: float) -> np.ndarray:
    """d/dz of :func:`kl_teacher_forward`: (softmax(z) - softmax(z0)) / denom."""
    return (np.exp(_log_softmax(z)) - np.exp(_log_softmax(z0))) / denom


PAPER_LOGIT_SCALE = 100.0  # CLIP's frozen exp(logit_scale), PromptSRC's teacher and student alike


@dataclass(frozen=True)
class LossWeights:
    """Weights of the regularisers; ``scale`` is the fixed logit scale s (teacher and student alike)."""

    scale: float = 20.0
    text_l1: float = 25.0
    input_l1: float = 10.0
    kl: float = 1.0

    @classmethod
    def for_dim(cls, dim: int, scale: float = 20.0) -> LossWeights:
        """PromptSRC's (25, 10) tuned at d = 512, times sqrt(d / 512): mean|u - u0| of unit vectors grows
        like 1/sqrt(d) for a fixed angle, so this keeps each term's size as at d = 512 (spec §1.8)."""
        r = float(np.sqrt(dim / 512.0))
        return cls(scale=scale, text_l1=25.0 * r, input_l1=10.0 * r, kl=1.0)


def promptsrc_loss(u: np.ndarray, v: np.ndarray, labels: np.ndarray, u0: np.ndarray | None, v0: np.ndarray | None,
                   w: LossWeights, ops: ModuleType = F) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """The PromptSRC objective: ``(terms, du, dv)``; terms holds "ce", "text_l1", "input_l1", "kl", "total".

    ``u`` (B, H) prompted input features, ``v`` (C, H) prompted label features, ``labels`` (B,) int64
    in [0, C), ``u0``/``v0`` the frozen features (needed only where a weight using them is nonzero;
    the KL needs both). A zero weight skips its term (CoOp-style training is all weights zero).
    """
    b, c = u.shape[0], v.shape[0]
    z = cosine_logits_forward(u, v, w.scale)
    z = np.ascontiguousarray(z)
    ce, _, probs = ops.cross_entropy_forward(z, labels)
    dz = np.zeros_like(z)
    ops.cross_entropy_backward(1.0, probs, labels, dlogits=dz)
    terms = {"ce": float(ce), "text_l1": 0.0, "input_l1": 0.0, "kl": 0.0}
    du_extra = np.zeros_like(u)
    dv_extra = np.zeros_like(v)
    if w.text_l1:
        terms["text_l1"] = l1_mean_forward(v, v0)
        dv_extra += w.text_l1 * l1_mean_backward(v, v0)
    if w.input_l1:
        terms["input_l1"] = l1_mean_forward(u, u0)
        du_extra += w.input_l1 * l1_mean_backward(u, u0)
    if w.kl:
        z0 = cosine_logits_forward(u0, v0, w.scale)
        terms["kl"] = kl_teacher_forward(z, z0, b * c)
        dz += w.kl * kl_teacher_backward(z, z0, b * c)
    du, dv = cosine_logits_backward(dz, u, v, w.scale)
    terms["total"] = terms["ce"] + w.text_l1 * terms["text_l1"] + w.input_l1 * terms["input_l1"] + w.kl * terms["kl"]
    return terms, du + du_extra, dv + dv_extra
