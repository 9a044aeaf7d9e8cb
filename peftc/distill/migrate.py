"""Migration of a distilled student to a new class (AF-STip's "knowledge migration"): the head grows one
output, then the student trains on a few labelled examples of the new class mixed with pseudo-samples of the
old classes, which keep their teacher labels (CE) and the teacher's distribution (KD on the old logits)
against forgetting. Neither the old classes' data nor the teacher's is read.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import functional as F
from ..nn import Linear
from ..nn.module import Module
from ..optim import AdamW
from .kd import KDConfig, student_loss
from .pseudo import perturb
from .teacher import teacher_logits


def extend_head(model: Module, extra: int = 1, seed: int = 0) -> None:
    """Give ``model.head`` (a Linear) ``extra`` more outputs: old rows kept, new rows small random, bias 0.

    >>> from peftc.models import SmallResNet
    >>> m = SmallResNet((4, 8), 3)
    >>> extend_head(m)
    >>> m.head.out_features
    4
    """
    old = model.head
    rng = np.random.default_rng(seed)
    w = np.concatenate([old.weight.data, 0.01 * rng.standard_normal((extra, old.in_features))]).astype(np.float32)
    b_old = old.bias.data if old.bias is not None else np.zeros(old.out_features, np.float32)
    b = np.concatenate([b_old, np.zeros(extra, np.float32)]).astype(np.float32)
    model.head = Linear.from_weights(np.ascontiguousarray(w), b)


@dataclass
class MigrationConfig:
    steps: int = 200
    new_per_batch: int = 16  # drawn with replacement from the few labelled examples
    pseudo_per_batch: int = 48
    sigma: float = 0.5
    lr: float = 1e-3
    kd: KDConfig = field(default_factory=lambda: KDConfig(tau=4.0, lambda_kd=1.0))
    seed: int = 0


def migrate_to_new_class(student: Module, teacher: Module, new_x: np.ndarray, centres: np.ndarray,
                         config: MigrationConfig | None = None) -> dict:
    """Extend ``student`` (C old classes, the teacher's) by one class, label C, learnt from ``new_x``; old
    classes rehearsed on pseudo-samples around ``centres``. Returns ``{"loss": [...]}``.

    >>> from peftc.models import SmallResNet
    >>> t, s = SmallResNet((4, 8), 3), SmallResNet((4, 4), 3, seed=1)
    >>> x_new = np.zeros((2, 1, 28, 28), np.float32)
    >>> h = migrate_to_new_class(s, t, x_new, np.zeros((3, 1, 28, 28), np.float32), MigrationConfig(steps=2))
    >>> s.head.out_features, len(h["loss"])
    (4, 2)
    """
    cfg = config or MigrationConfig()
    if len(new_x) == 0:
        raise ValueError("migrate_to_new_class: needs at least one example of the new class")
    old_c = student.head.out_features
    extend_head(student, 1, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    history: dict = {"loss": []}
    for _ in range(cfg.steps):
        xn = new_x[rng.integers(0, len(new_x), cfg.new_per_batch)]
        xp = perturb(centres, cfg.sigma, cfg.pseudo_per_batch, rng)
        zt = teacher_logits(teacher, xp)
        x = np.ascontiguousarray(np.concatenate([xn.reshape(len(xn), *xp.shape[1:]), xp]), dtype=np.float32)
        labels = np.concatenate([np.full(len(xn), old_c), zt.argmax(axis=1)]).astype(np.int64)
        student.train()
        opt.zero_grad()
        z = student.forward(x)
        ce, _, probs = F.cross_entropy_forward(z, labels)
        dz = np.zeros_like(z)
        F.cross_entropy_backward(1.0, probs, labels, dlogits=dz)
        kd, dkd, _ = student_loss(np.ascontiguousarray(z[len(xn):, :old_c]), zt, cfg.kd)
        dz[len(xn):, :old_c] += dkd
        student.backward(dz, input_grad=False)
        opt.step()
        history["loss"].append(ce + kd)
    return history
