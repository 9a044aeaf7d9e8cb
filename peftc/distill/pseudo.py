"""AF-STip's data-free recipe (Wang and Jiang 2024, as far as the public abstract and summary describe it):
pseudo-samples are inputs distorted with Gaussian noise, labelled by the teacher, and the student learns
from them with ``lambda_cls * CE + lambda_kd * tau^2 * KL`` (:mod:`peftc.distill.kd`).

What the noise perturbs is our reading (the paper's details were not published in what we could read):
with seed inputs ``x_0`` given (embeddings of public text, a few public images) they are the centres;
truly data-free, the centres are *class anchors* built from the teacher alone: by default DeepInversion's
objective (cross-entropy to the class, the BatchNorm-statistics match and the image priors) optimised for a
few iterations (``anchor_method="inversion"``), or plain normalised gradient steps towards each class's
logit (``"ce"``), which give inputs the teacher is sure of but that look like no image. Pixel space for images; for text the same
functions work on an embedding-space teacher (``forward`` on (N, T, H) embeddings).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..nn.module import Module
from ..optim import AdamW
from .deepinversion import DeepInversionConfig, synthesize
from .kd import KDConfig, confident_rows, distill_step
from .teacher import ce_to_targets, frozen, teacher_logits


def class_anchors(teacher: Module, num_classes: int, input_shape: tuple[int, ...], per_class: int = 8,
                  steps: int = 20, lr: float = 0.1, seed: int = 0,
                  pixel_range: tuple[float, float] | None = (0.0, 1.0), start: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(anchors, labels)``: ``per_class`` inputs per class, each drawn uniformly from the valid input range
    (N(0, 1) with ``pixel_range=None``, for standardised inputs), or taken from ``start`` (num_classes *
    per_class, *input_shape; rows of one class together, not modified), and moved by ``steps`` normalised
    gradient steps (step ``lr`` times g / mean|g| per sample) down the teacher's cross-entropy to its class,
    clipped to the range after each. Only the teacher is read.

    >>> from peftc.models import SmallResNet
    >>> a, y = class_anchors(SmallResNet((4, 8), 3), 3, (1, 28, 28), per_class=2, steps=2)
    >>> a.shape, y.tolist()
    ((6, 1, 28, 28), [0, 0, 1, 1, 2, 2])
    """
    if num_classes < 1 or per_class < 1 or steps < 0 or not lr > 0:
        raise ValueError(f"class_anchors: needs num_classes, per_class >= 1, steps >= 0, lr > 0; got "
                         f"{num_classes}, {per_class}, {steps}, {lr}")
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    shape = (len(labels), *input_shape)
    if start is not None:
        if start.shape != shape:
            raise ValueError(f"class_anchors: start must be {shape}, got {start.shape}")
        x = np.array(start, dtype=np.float32)
    else:
        x = (rng.standard_normal(shape) if pixel_range is None else rng.uniform(*pixel_range, shape)).astype(np.float32)
    with frozen(teacher):
        for _ in range(steps):
            _, d = ce_to_targets(teacher.forward(x), labels)
            g = teacher.backward(d)
            scale = np.abs(g).reshape(len(x), -1).mean(axis=1) + 1e-12
            x -= (lr / scale).reshape(-1, *([1] * len(input_shape))).astype(np.float32) * g
            if pixel_range is not None:
                np.clip(x, *pixel_range, out=x)
    return x, labels


def perturb(centres: np.ndarray, sigma: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` pseudo-samples ``centres[i] + sigma * eps``, i uniform over the centres, eps ~ N(0, I).

    >>> c = np.zeros((2, 3), np.float32)
    >>> perturb(c, 0.5, 4, np.random.default_rng(0)).shape
    (4, 3)
    """
    if not sigma >= 0 or n < 1 or len(centres) == 0:
        raise ValueError(f"perturb: needs sigma >= 0, n >= 1 and a centre; got {sigma}, {n}, {centres.shape}")
    pick = rng.integers(0, len(centres), n)
    return (centres[pick] + sigma * rng.standard_normal((n, *centres.shape[1:]))).astype(np.float32)


@dataclass
class AFSTipConfig:
    """The recipe's knobs: noise ``sigma`` around the centres, student steps and batch, and the student loss."""

    sigma: float = 0.5
    steps: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    kd: KDConfig = field(default_factory=lambda: KDConfig(tau=4.0, lambda_kd=1.0, lambda_cls=0.5, confidence=0.5))
    anchors_per_class: int = 16
    anchor_method: str = "inversion"  # or "ce" (see the module docstring)
    anchor_steps: int = 100
    anchor_lr: float = 0.1
    pixel_range: tuple[float, float] | None = (0.0, 1.0)  # the anchors' range (None: standardised inputs)
    seed: int = 0


def build_anchors(teacher: Module, num_classes: int, input_shape: tuple[int, ...],
                  config: AFSTipConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(anchors, labels)``, ``anchors_per_class`` per class, by ``config.anchor_method`` from the teacher alone.

    >>> from peftc.models import SmallResNet
    >>> cfg = AFSTipConfig(anchors_per_class=2, anchor_steps=2)
    >>> a, y = build_anchors(SmallResNet((4, 8), 3), 3, (1, 28, 28), cfg)
    >>> a.shape, y.tolist(), bool(a.min() >= 0.0 and a.max() <= 1.0)
    ((6, 1, 28, 28), [0, 0, 1, 1, 2, 2], True)
    """
    cfg = config or AFSTipConfig()
    if cfg.anchor_method == "ce":
        return class_anchors(teacher, num_classes, input_shape, cfg.anchors_per_class, cfg.anchor_steps,
                             cfg.anchor_lr, cfg.seed, cfg.pixel_range)
    if cfg.anchor_method != "inversion":
        raise ValueError(f"AFSTipConfig.anchor_method must be 'inversion' or 'ce', got {cfg.anchor_method!r}")
    labels = np.repeat(np.arange(num_classes), cfg.anchors_per_class)
    anchors, _ = synthesize(teacher, labels, input_shape,
                            DeepInversionConfig(iterations=cfg.anchor_steps, pixel_range=cfg.pixel_range), cfg.seed)
    return anchors, labels


def afstip_distill(teacher: Module, student: Module, num_classes: int, input_shape: tuple[int, ...],
                   config: AFSTipConfig | None = None, centres: np.ndarray | None = None) -> dict:
    """Train ``student`` from ``teacher`` alone by the AF-STip recipe; returns ``{"loss": [...], "kept": [...]}``
    (per step: the student loss, the pseudo-samples kept by the confidence threshold). ``centres``: seed
    inputs to perturb; None builds class anchors from the teacher (:func:`build_anchors`). The pseudo-samples
    are clipped to ``config.pixel_range`` when it is set.

    >>> from peftc.models import SmallResNet
    >>> cfg = AFSTipConfig(steps=2, batch_size=4, anchors_per_class=1, anchor_steps=1)
    >>> h = afstip_distill(SmallResNet((4, 8), 3), SmallResNet((4, 4), 3, seed=1), 3, (1, 28, 28), cfg)
    >>> len(h["loss"])
    2
    """
    cfg = config or AFSTipConfig()
    if centres is None:
        centres, _ = build_anchors(teacher, num_classes, input_shape, cfg)
    rng = np.random.default_rng(cfg.seed + 1)
    opt = AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    history: dict = {"loss": [], "kept": []}
    for _ in range(cfg.steps):
        x = perturb(centres, cfg.sigma, cfg.batch_size, rng)
        if cfg.pixel_range is not None:
            np.clip(x, *cfg.pixel_range, out=x)
        zt = teacher_logits(teacher, x)
        history["kept"].append(len(confident_rows(zt, cfg.kd.confidence)))
        history["loss"].append(distill_step(student, opt, x, zt, cfg.kd))
    return history

