"""A frozen teacher: eval mode (BatchNorm on its running statistics) and no parameter gradients, restored
afterwards, so that the data-free methods can back-propagate to the teacher's input only."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from .. import functional as F
from ..nn.module import Module


@contextmanager
def frozen(teacher: Module) -> Iterator[Module]:
    """Within the block the teacher is in eval mode with every parameter frozen; both are restored after.

    >>> from peftc.models import SmallResNet
    >>> t = SmallResNet((4, 8), 3)
    >>> with frozen(t):
    ...     any(p.requires_grad for p in t.parameters())
    False
    >>> all(p.requires_grad for p in t.parameters()), t.training
    (True, True)
    """
    params = teacher.parameters()
    flags = [p.requires_grad for p in params]
    was = teacher.training
    teacher.eval()
    for p in params:
        p.requires_grad = False
    try:
        yield teacher
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad = flag
        teacher.train(was)


def teacher_logits(teacher: Module, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """The frozen teacher's logits on ``x``, in batches (no gradient kept).

    >>> from peftc.models import SmallResNet
    >>> teacher_logits(SmallResNet((4, 8), 3), np.zeros((5, 1, 28, 28), np.float32), batch_size=2).shape
    (5, 3)
    """
    with frozen(teacher):
        return np.concatenate([teacher.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def ce_to_targets(logits: np.ndarray, targets: np.ndarray, weight: float = 1.0) -> tuple[float, np.ndarray]:
    """``(weight * mean CE(logits, targets), its gradient)``: the class term of the input-space methods.

    >>> loss, d = ce_to_targets(np.zeros((2, 4), np.float32), np.array([0, 3]), 2.0)
    >>> round(loss, 4), d.shape
    (2.7726, (2, 4))
    """
    labels = np.ascontiguousarray(targets, dtype=np.int64)
    loss, _, probs = F.cross_entropy_forward(logits, labels)
    d = np.zeros_like(logits)
    F.cross_entropy_backward(weight, probs, labels, dlogits=d)
    return weight * loss, d
