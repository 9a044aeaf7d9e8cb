"""DAFL, Data-Free Learning of student networks (Chen et al., ICCV 2019): a generator G is trained so that the
frozen teacher T, on x = G(z), gives confident (one-hot loss), strongly activated (activation loss) and
class-balanced (information-entropy loss) outputs, while the student learns T's predictions on x by KD.

    L_G = w_oh CE(T(x), argmax T(x)) + w_ie sum_c pbar_c log10 pbar_c - w_a mean |f_T(x)|
    L_S = KL(softmax T(x) || softmax S(x)) at tau = 1, on x detached (the reference code's ``kdloss``: the KL
          summed over the batch and divided by its size, i.e. "batchmean")

f_T is the teacher's pooled penultimate features (``forward_features``). The information-entropy term uses
log10 as the reference code does (:func:`peftc.functional.dafl_entropy_forward` takes ln; the weight is
divided by ln 10). Both optimisers step once per iteration, as in the reference code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import functional as F
from ..nn.module import Module
from ..optim import AdamW
from .generator import DAFLGenerator
from .kd import KDConfig, distill_step
from .teacher import frozen


@dataclass
class DAFLConfig:
    """DAFL's knobs; the loss weights default to the MNIST values of the reference code (w_oh 1, w_ie 5,
    w_a 0.1)."""

    iterations: int = 300
    batch_size: int = 64
    latent_dim: int = 100
    width: int = 64
    lr_g: float = 0.2
    lr_s: float = 2e-3
    w_oh: float = 1.0
    w_ie: float = 5.0
    w_a: float = 0.1
    kd: KDConfig = field(default_factory=lambda: KDConfig(tau=1.0))
    pixel_range: tuple[float, float] | None = (0.0, 1.0)  # the generator's output range (None: DAFL's final BN)
    seed: int = 0


def generator_loss(teacher: Module, x: np.ndarray, cfg: DAFLConfig) -> tuple[float, np.ndarray, np.ndarray, dict]:
    """DAFL's generator loss on images ``x`` through the frozen teacher: ``(loss, dx, teacher_logits, parts)``.

    >>> from peftc.models import SmallResNet
    >>> x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    >>> loss, dx, zt, parts = generator_loss(SmallResNet((4, 8), 3), x, DAFLConfig())
    >>> dx.shape, zt.shape, sorted(parts)
    ((4, 1, 28, 28), (4, 3), ['activation', 'entropy', 'one_hot'])
    """
    with frozen(teacher):
        feats = teacher.forward_features(np.ascontiguousarray(x, dtype=np.float32))
        zt = teacher.head(feats)
        labels = zt.argmax(axis=1).astype(np.int64)
        oh, _, probs = F.cross_entropy_forward(zt, labels)
        ie, p, pbar = F.dafl_entropy_forward(zt)
        act = F.dafl_activation_forward(feats)
        dz = np.zeros_like(zt)
        F.cross_entropy_backward(cfg.w_oh, probs, labels, dlogits=dz)
        F.dafl_entropy_backward(cfg.w_ie / math.log(10.0), p, pbar, dlogits=dz)
        dfeat = teacher.head.backward(dz)
        F.dafl_activation_backward(cfg.w_a, feats, dfeatures=dfeat)
        dx = teacher.backward_features(dfeat)
    ie10 = ie / math.log(10.0)
    loss = cfg.w_oh * oh + cfg.w_ie * ie10 + cfg.w_a * act
    return float(loss), dx, zt, {"one_hot": oh, "entropy": ie10, "activation": act}


def dafl_distill(teacher: Module, student: Module, config: DAFLConfig | None = None,
                 generator: DAFLGenerator | None = None) -> dict:
    """Train a generator and ``student`` together by DAFL; returns ``{"generator", "loss_g", "loss_s"}``.

    >>> from peftc.models import SmallResNet
    >>> cfg = DAFLConfig(iterations=2, batch_size=4, latent_dim=8, width=8)
    >>> out = dafl_distill(SmallResNet((4, 8), 3), SmallResNet((4, 4), 3, seed=1), cfg)
    >>> len(out["loss_g"]), len(out["loss_s"])
    (2, 2)
    """
    cfg = config or DAFLConfig()
    g = generator or DAFLGenerator(cfg.latent_dim, cfg.width, size=28, seed=cfg.seed, pixel_range=cfg.pixel_range)
    g.train()
    rng = np.random.default_rng(cfg.seed)
    opt_g = AdamW(g.parameters(), lr=cfg.lr_g, weight_decay=0.0)
    opt_s = AdamW(student.parameters(), lr=cfg.lr_s, weight_decay=0.0)
    out: dict = {"generator": g, "loss_g": [], "loss_s": []}
    for _ in range(cfg.iterations):
        z = rng.standard_normal((cfg.batch_size, cfg.latent_dim)).astype(np.float32)
        x = g.forward(z)
        opt_g.zero_grad()
        loss_g, dx, zt, _ = generator_loss(teacher, x, cfg)
        g.backward(dx, input_grad=False)
        opt_g.step()
        out["loss_g"].append(loss_g)
        out["loss_s"].append(distill_step(student, opt_s, x, zt, cfg.kd))
    return out
