"""The student's loss on pseudo-samples, shared by every data-free method here: AF-STip's
``lambda_cls * CE(teacher argmax) + lambda_kd * tau^2 * KL(teacher || student)`` (the KL summed over
classes and averaged over the kept rows: "batchmean"), with the teacher's pseudo-labels kept only where
its top probability (at temperature 1) reaches a confidence threshold. ``lambda_cls = 0`` and
``confidence = 0`` give plain Hinton KD (DAFL's student loss at tau = 1, DeepInversion's KD rounds).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import functional as F
from ..nn.module import Module
from ..optim import Optimizer


@dataclass
class KDConfig:
    """Weights of the student loss; ``confidence`` in [0, 1) drops pseudo-samples the teacher is unsure of."""

    tau: float = 4.0
    lambda_kd: float = 1.0
    lambda_cls: float = 0.0
    confidence: float = 0.0

    def __post_init__(self) -> None:
        if not self.tau > 0 or self.lambda_kd < 0 or self.lambda_cls < 0 or not 0.0 <= self.confidence < 1.0:
            raise ValueError(f"KDConfig needs tau > 0, lambda_kd, lambda_cls >= 0 and confidence in [0, 1), got {self}")


def confident_rows(teacher_logits: np.ndarray, confidence: float) -> np.ndarray:
    """Indices of the rows whose top softmax probability (temperature 1) is >= ``confidence``.

    >>> confident_rows(np.array([[4.0, 0.0], [0.1, 0.0]], np.float32), 0.9).tolist()
    [0]
    """
    if confidence <= 0.0:
        return np.arange(teacher_logits.shape[0])
    _, probs = F.softmax_entropy_forward(np.ascontiguousarray(teacher_logits, dtype=np.float32))
    return np.flatnonzero(probs.max(axis=1) >= confidence)


def student_loss(student_logits: np.ndarray, teacher_logits: np.ndarray, config: KDConfig
                 ) -> tuple[float, np.ndarray, int]:
    """``(loss, dstudent_logits, kept)``: the AF-STip student loss over the confident rows and its gradient
    (zero on the dropped rows; with none kept the loss is 0). The teacher is a constant here.

    >>> z = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]], np.float32)
    >>> loss, d, kept = student_loss(z, z, KDConfig(tau=2.0, lambda_cls=0.5))
    >>> kept, bool(loss > 0), d.shape
    (2, True, (2, 3))
    """
    zs = np.ascontiguousarray(student_logits, dtype=np.float32)
    zt = np.ascontiguousarray(teacher_logits, dtype=np.float32)
    if zs.shape != zt.shape or zs.ndim != 2:
        raise ValueError(f"student_loss: student_logits {zs.shape} and teacher_logits {zt.shape} must be the same "
                         f"(N, C)")
    dlogits = np.zeros_like(zs)
    rows = confident_rows(zt, config.confidence)
    if rows.size == 0:
        return 0.0, dlogits, 0
    s, t = np.ascontiguousarray(zs[rows]), np.ascontiguousarray(zt[rows])
    ds = np.zeros_like(s)
    loss = 0.0
    if config.lambda_kd > 0:
        kl, ps, pt = F.kd_kl_forward(s, t, config.tau)
        F.kd_kl_backward(config.lambda_kd, ps, pt, s, t, config.tau, dstudent_logits=ds)
        loss += config.lambda_kd * kl
    if config.lambda_cls > 0:
        labels = t.argmax(axis=1).astype(np.int64)
        ce, _, probs = F.cross_entropy_forward(s, labels)
        F.cross_entropy_backward(config.lambda_cls, probs, labels, dlogits=ds)
        loss += config.lambda_cls * ce
    dlogits[rows] = ds
    return float(loss), dlogits, int(rows.size)


def distill_step(student: Module, optimizer: Optimizer, x: np.ndarray, teacher_logits: np.ndarray,
                 config: KDConfig) -> float:
    """One optimiser step of ``student`` on the pseudo-batch ``x`` against the teacher's logits; the loss.

    >>> from peftc.models import SmallResNet
    >>> from peftc.optim import AdamW
    >>> s = SmallResNet((4, 8), 3, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    >>> loss = distill_step(s, AdamW(s.parameters(), lr=1e-3), x, np.eye(4, 3, dtype=np.float32) * 5, KDConfig())
    >>> loss > 0
    True
    """
    student.train()
    optimizer.zero_grad()
    loss, dlogits, _ = student_loss(student.forward(x), teacher_logits, config)
    student.backward(dlogits, input_grad=False)
    optimizer.step()
    return loss
