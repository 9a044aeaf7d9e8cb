"""Migration of a distilled student to a new class (AF-STip's "knowledge migration"): the head grows one
output, then the student trains on a few labelled examples of the new class mixed with pseudo-samples of the
old classes, which keep their teacher labels (CE) and the teacher's distribution (KD on the old logits)
against forgetting. Neither the old classes' data nor the teacher's is read.

The new examples are an array shaped like the pseudo-samples (images), or, for text, a dict of
``inputs_embeds`` (k, T, H) and ``attention_mask`` (k, T) (:func:`peftc.distill.text.embed_tokens`): each batch
then joins them with the (N, T', H) pseudo-samples, padded to the longer length with masked positions.
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


def _count(x: np.ndarray | dict) -> int:
    return len(x["attention_mask"]) if isinstance(x, dict) else len(x)


def _rows(x: np.ndarray | dict, idx: np.ndarray) -> np.ndarray | dict:
    return {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]


def _join(new: np.ndarray | dict, pseudo: np.ndarray) -> np.ndarray | dict:
    """One batch: the new examples first, then the pseudo-samples (see the module docstring)."""
    if not isinstance(new, dict):
        return np.ascontiguousarray(np.concatenate([new.reshape(len(new), *pseudo.shape[1:]), pseudo]),
                                    dtype=np.float32)
    emb, mask = new["inputs_embeds"], new["attention_mask"]
    if pseudo.ndim != 3 or emb.ndim != 3 or emb.shape[2] != pseudo.shape[2]:
        raise ValueError(f"migrate_to_new_class: new inputs_embeds {emb.shape} and pseudo-samples {pseudo.shape} "
                         f"must both be (N, T, H) with one H")
    t = max(emb.shape[1], pseudo.shape[1])
    k, n = len(emb), len(pseudo)
    x = np.zeros((k + n, t, emb.shape[2]), np.float32)
    m = np.zeros((k + n, t), np.int64)
    x[:k, :emb.shape[1]], m[:k, :emb.shape[1]] = emb, mask
    x[k:, :pseudo.shape[1]], m[k:, :pseudo.shape[1]] = pseudo, 1
    return {"inputs_embeds": x, "attention_mask": m}


@dataclass
class MigrationConfig:
    steps: int = 200
    new_per_batch: int = 16  # drawn with replacement from the few labelled examples
    pseudo_per_batch: int = 48
    sigma: float = 0.5
    lr: float = 1e-3
    kd: KDConfig = field(default_factory=lambda: KDConfig(tau=4.0, lambda_kd=1.0))
    seed: int = 0


def migrate_to_new_class(student: Module, teacher: Module, new_x: np.ndarray | dict, centres: np.ndarray,
                         config: MigrationConfig | None = None) -> dict:
    """Extend ``student`` (C old classes, the teacher's) by one class, label C, learnt from ``new_x``; old
    classes rehearsed on pseudo-samples around ``centres``. ``new_x``: an array, or for text a dict (see the
    module docstring). Returns ``{"loss": [...]}``.

    >>> from peftc.models import SmallResNet
    >>> t, s = SmallResNet((4, 8), 3), SmallResNet((4, 4), 3, seed=1)
    >>> x_new = np.zeros((2, 1, 28, 28), np.float32)
    >>> h = migrate_to_new_class(s, t, x_new, np.zeros((3, 1, 28, 28), np.float32), MigrationConfig(steps=2))
    >>> s.head.out_features, len(h["loss"])
    (4, 2)
    """
    cfg = config or MigrationConfig()
    n_new = _count(new_x)
    if n_new == 0:
        raise ValueError("migrate_to_new_class: needs at least one example of the new class")
    old_c = student.head.out_features
    extend_head(student, 1, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    history: dict = {"loss": []}
    for _ in range(cfg.steps):
        xn = _rows(new_x, rng.integers(0, n_new, cfg.new_per_batch))
        xp = perturb(centres, cfg.sigma, cfg.pseudo_per_batch, rng)
        zt = teacher_logits(teacher, xp)
        x = _join(xn, xp)
        k = cfg.new_per_batch
        labels = np.concatenate([np.full(k, old_c), zt.argmax(axis=1)]).astype(np.int64)
        student.train()
        opt.zero_grad()
        z = student.forward(x)
        ce, _, probs = F.cross_entropy_forward(z, labels)
        dz = np.zeros_like(z)
        F.cross_entropy_backward(1.0, probs, labels, dlogits=dz)
        kd, dkd, _ = student_loss(np.ascontiguousarray(z[k:, :old_c]), zt, cfg.kd)
        dz[k:, :old_c] += dkd
        student.backward(dz, input_grad=False)
        opt.step()
        history["loss"].append(ce + kd)
    return history
