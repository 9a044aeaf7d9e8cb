"""DeepInversion (Yin et al., CVPR 2020): synthesise inputs by optimising the images themselves so that the
frozen teacher classifies them as chosen targets while the statistics of every BatchNorm layer's input match
that layer's running statistics, under total-variation and L2 image priors; then distil the student on them.

Per step, on the jittered batch x' (random roll by up to ``jitter`` pixels each way, horizontal flip with
probability 1/2, as the reference code does):

    L = alpha_ce CE(T(x'), y) + alpha_f sum_l w_l (||mu_l - mu_l^BN||_2 + ||var_l - var_l^BN||_2)
        + alpha_tv1 TV1(x') + alpha_tv2 TV2(x') + alpha_l2 mean_b ||x'_b||_2

with w_1 = ``first_bn_multiplier`` and w_l = 1 after (:func:`peftc.functional.bn_stat_match_forward`,
:func:`peftc.functional.tv_forward`). The BN terms reach the input through each norm's ``input_hook``; the
gradient to the pixels through the teacher's ``backward(dy)``. Adam on the pixels; the learning rate is
constant (the reference code's cosine schedule and its half-resolution warm-up phase are left out: 28x28
inputs).

Adaptive DeepInversion (ADI) adds ``alpha_adi (1 - clamp(JS, 0, 1))`` with JS the Jensen-Shannon divergence
between the student's and the teacher's softmaxes at temperature ``adi_tau`` (3 in the reference code),
probabilities clamped to [0.01, 0.99] (:func:`peftc.functional.adi_js_forward`): minimising it makes inputs on
which the current student disagrees with the teacher. Its gradient reaches the pixels through both networks
(the student frozen, in eval mode, as the reference code's). With ``alpha_adi > 0``,
:func:`deepinversion_distill` alternates: each synthesised batch is made against the student as it is, then
the student takes its share of the KD steps on everything synthesised so far.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import functional as F
from ..nn.batchnorm import BatchNorm2d
from ..nn.module import Module, Parameter
from ..optim import AdamW
from .kd import KDConfig, distill_step
from .teacher import ce_to_targets, frozen, teacher_logits


class BNStatHook:
    """A BatchNorm ``input_hook``: on forward, the statistics-matching loss of the norm's input; on backward,
    ``scale`` times its gradient added into the norm's input gradient.

    >>> from peftc.nn import BatchNorm2d
    >>> bn = BatchNorm2d(2).eval()
    >>> bn.input_hook = BNStatHook(bn, 1.0)
    >>> _ = bn.forward(np.zeros((1, 2, 2, 2), np.float32))
    >>> bn.input_hook.loss  # mean 0 matches, var 0 is 1 away from each running var 1: sqrt(2)
    1.4142135381698608
    """

    def __init__(self, bn: BatchNorm2d, scale: float) -> None:
        if bn.running_mean is None:
            raise ValueError("BNStatHook: the norm has no running statistics to match")
        self.bn, self.scale = bn, float(scale)
        self.loss = 0.0
        self._saved: tuple | None = None

    def forward(self, x: np.ndarray) -> None:
        self.loss, mean, var = F.bn_stat_match_forward(x, self.bn.running_mean, self.bn.running_var)
        self._saved = (x, mean, var)

    def backward(self, dx: np.ndarray) -> None:
        if self._saved is None:
            raise RuntimeError("BNStatHook.backward called before forward")
        x, mean, var = self._saved
        F.bn_stat_match_backward(self.scale, x, mean, var, self.bn.running_mean, self.bn.running_var, dx=dx)


def attach_bn_hooks(teacher: Module, alpha_f: float, first_bn_multiplier: float = 1.0) -> list[BNStatHook]:
    """Put a :class:`BNStatHook` on every BatchNorm2d of ``teacher`` (input to output; the first weighted by
    ``first_bn_multiplier``); :func:`detach_bn_hooks` removes them.

    >>> from peftc.models import SmallResNet
    >>> t = SmallResNet((4, 8), 3)
    >>> hooks = attach_bn_hooks(t, 0.5, first_bn_multiplier=10.0)
    >>> [h.scale for h in hooks][:2], len(hooks) == len(t.batchnorms())
    ([5.0, 0.5], True)
    >>> detach_bn_hooks(hooks)
    """
    norms = [m for _, m in teacher.named_modules() if isinstance(m, BatchNorm2d)]
    if not norms:
        raise ValueError("attach_bn_hooks: the teacher has no BatchNorm2d layer")
    hooks = []
    for i, bn in enumerate(norms):
        if bn.input_hook is not None:
            raise ValueError("attach_bn_hooks: a norm already has an input_hook")
        bn.input_hook = BNStatHook(bn, alpha_f * (first_bn_multiplier if i == 0 else 1.0))
        hooks.append(bn.input_hook)
    return hooks


def detach_bn_hooks(hooks: list[BNStatHook]) -> None:
    """Take the hooks of :func:`attach_bn_hooks` off their norms (see its example)."""
    for h in hooks:
        h.bn.input_hook = None


@dataclass
class DeepInversionConfig:
    """Synthesis knobs (defaults scaled to 28x28 single-channel images and small CNNs) and the student's KD
    afterwards. The reference ImageNet script's defaults, for comparison: alpha_f 0.05, first-BN multiplier 10,
    alpha_tv1 0, alpha_tv2 1e-4, alpha_l2 1e-5, lr 0.2, Adam betas (0.5, 0.9), jitter 30 px on 224 px images."""

    batch_size: int = 64
    iterations: int = 200
    lr: float = 0.1
    betas: tuple[float, float] = (0.5, 0.9)
    alpha_ce: float = 1.0
    alpha_f: float = 1.0
    first_bn_multiplier: float = 10.0
    alpha_tv1: float = 0.0
    alpha_tv2: float = 1e-3
    alpha_l2: float = 0.0
    jitter: int = 2
    flip: bool = True
    # the valid input range (the reference code clips the images to it after each step and starts from noise
    # in it); (0, 1) for raw pixels, None for no range (then the start is N(0, 1), for standardised inputs)
    pixel_range: tuple[float, float] | None = (0.0, 1.0)
    batches: int = 4  # synthesised batches for the student
    kd_steps: int = 300
    kd_batch_size: int = 64
    kd_lr: float = 2e-3
    kd: KDConfig = field(default_factory=lambda: KDConfig(tau=4.0))
    alpha_adi: float = 0.0  # ADI's competition weight (0: plain DeepInversion, the reference code's default)
    adi_tau: float = 3.0
    seed: int = 0


def _jitter(x: np.ndarray, off: tuple[int, int], flip: bool) -> np.ndarray:
    y = np.roll(x, off, axis=(2, 3))
    return np.ascontiguousarray(y[..., ::-1] if flip else y)


def _unjitter(d: np.ndarray, off: tuple[int, int], flip: bool) -> np.ndarray:
    d = d[..., ::-1] if flip else d
    return np.ascontiguousarray(np.roll(d, (-off[0], -off[1]), axis=(2, 3)))


def image_prior_losses(x: np.ndarray, cfg: DeepInversionConfig) -> tuple[float, np.ndarray]:
    """``alpha_tv1 TV1 + alpha_tv2 TV2 + alpha_l2 mean_b ||x_b||_2`` of images ``x`` and its gradient.

    >>> cfg = DeepInversionConfig(alpha_tv2=1.0)
    >>> loss, g = image_prior_losses(np.ones((2, 1, 4, 4), np.float32), cfg)
    >>> loss, float(np.abs(g).max())
    (0.0, 0.0)
    """
    l1, l2, norms = F.tv_forward(x)
    d = np.zeros_like(x)
    F.tv_backward(cfg.alpha_tv1, cfg.alpha_tv2, x, norms, dx=d)
    loss = cfg.alpha_tv1 * l1 + cfg.alpha_tv2 * l2
    if cfg.alpha_l2 > 0:
        flat = x.reshape(len(x), -1).astype(np.float64)
        n = np.linalg.norm(flat, axis=1)
        loss += cfg.alpha_l2 * float(n.mean())
        d += (cfg.alpha_l2 / len(x) * flat / np.maximum(n, 1e-12)[:, None]).reshape(x.shape).astype(np.float32)
    return float(loss), d


def competition_loss(student_logits: np.ndarray, teacher_logits: np.ndarray, alpha: float, tau: float = 3.0
                     ) -> tuple[float, np.ndarray, np.ndarray]:
    """ADI's ``alpha (1 - clamp(JS, 0, 1))`` and its gradients to the student's and the teacher's logits
    (zero where JS is clamped).

    >>> z = np.array([[3.0, 0.0], [0.0, 3.0]], np.float32)
    >>> loss, ds, dt = competition_loss(z, z, 2.0)
    >>> loss, float(np.abs(ds).max())
    (2.0, 0.0)
    """
    js, ps, pt = F.adi_js_forward(student_logits, teacher_logits, tau)
    ds, dt = np.zeros_like(ps), np.zeros_like(pt)
    if 0.0 < js < 1.0:
        F.adi_js_backward(-alpha, ps, pt, tau, dstudent_logits=ds, dteacher_logits=dt)
    return alpha * (1.0 - min(max(js, 0.0), 1.0)), ds, dt


def inversion_loss(teacher: Module, x: np.ndarray, targets: np.ndarray,
                   config: DeepInversionConfig | None = None, student: Module | None = None
                   ) -> tuple[float, np.ndarray, dict]:
    """DeepInversion's objective on images ``x`` (no jitter: the caller's) and its gradient to the pixels:
    ``(loss, dx, parts)``, parts {"ce", "bn", "prior"} and "adi" when ``config.alpha_adi > 0`` (then a
    ``student`` is needed). Teacher and student are frozen meanwhile.

    >>> from peftc.models import SmallResNet
    >>> x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    >>> loss, dx, parts = inversion_loss(SmallResNet((4, 8), 3), x, np.array([0, 2]))
    >>> dx.shape, sorted(parts)
    ((2, 1, 28, 28), ['bn', 'ce', 'prior'])
    """
    cfg = config or DeepInversionConfig()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if cfg.alpha_adi > 0 and student is None:
        raise ValueError("inversion_loss: alpha_adi > 0 needs the student")
    parts: dict = {}
    with frozen(teacher):
        hooks = attach_bn_hooks(teacher, cfg.alpha_f, cfg.first_bn_multiplier)
        try:
            zt = teacher.forward(x)
            parts["ce"], dlogits = ce_to_targets(zt, targets, cfg.alpha_ce)
            parts["bn"] = float(sum(h.scale * h.loss for h in hooks))
            dx_student = None
            if cfg.alpha_adi > 0:
                with frozen(student):
                    parts["adi"], dzs, dzt = competition_loss(student.forward(x), zt, cfg.alpha_adi, cfg.adi_tau)
                    dx_student = student.backward(dzs)
                dlogits += dzt
            dx = teacher.backward(dlogits)  # the BN hooks add their gradients on the way
        finally:
            detach_bn_hooks(hooks)
    if dx_student is not None:
        dx += dx_student
    parts["prior"], dprior = image_prior_losses(x, cfg)
    dx += dprior
    return float(sum(parts.values())), dx, parts


def synthesize(teacher: Module, targets: np.ndarray, input_shape: tuple[int, ...],
               config: DeepInversionConfig | None = None, seed: int = 0,
               student: Module | None = None) -> tuple[np.ndarray, list[dict]]:
    """DeepInversion images for the class ``targets`` (one image each): ``(images, history)``, history one
    dict per iteration (total, ce, bn and prior losses, and adi with ``config.alpha_adi > 0``, which needs
    the ``student`` to compete with).

    >>> from peftc.models import SmallResNet
    >>> imgs, h = synthesize(SmallResNet((4, 8), 3), np.array([0, 1]), (1, 28, 28),
    ...                      DeepInversionConfig(iterations=2))
    >>> imgs.shape, len(h)
    ((2, 1, 28, 28), 2)
    """
    cfg = config or DeepInversionConfig()
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets, dtype=np.int64)
    shape = (len(targets), *input_shape)
    lo_hi = cfg.pixel_range
    start = rng.standard_normal(shape) if lo_hi is None else rng.uniform(lo_hi[0], lo_hi[1], shape)
    x = Parameter(start.astype(np.float32))
    opt = AdamW([x], lr=cfg.lr, betas=cfg.betas, weight_decay=0.0)
    history = []
    for _ in range(cfg.iterations):
        off = (int(rng.integers(-cfg.jitter, cfg.jitter + 1)), int(rng.integers(-cfg.jitter, cfg.jitter + 1)))
        flip = bool(cfg.flip and rng.random() < 0.5)
        loss, dxj, parts = inversion_loss(teacher, _jitter(x.data, off, flip), targets, cfg, student)
        opt.zero_grad()
        x.grad_buffer()[...] = _unjitter(dxj, off, flip)
        opt.step()
        if lo_hi is not None:
            np.clip(x.data, lo_hi[0], lo_hi[1], out=x.data)
        history.append({"loss": loss, **parts})
    return x.data, history


def deepinversion_distill(teacher: Module, student: Module, num_classes: int, input_shape: tuple[int, ...],
                          config: DeepInversionConfig | None = None, images: np.ndarray | None = None) -> dict:
    """Synthesise ``config.batches`` class-balanced batches from the teacher (or take ``images``, an earlier
    call's synthesised pool, to train another student on the same images), then train ``student`` by KD on
    them; returns ``{"images": ..., "synthesis": [...], "loss": [...]}``. With ``config.alpha_adi > 0`` (ADI)
    synthesis and KD alternate batch by batch (see the module docstring; ``images`` cannot be given then).

    >>> from peftc.models import SmallResNet
    >>> cfg = DeepInversionConfig(batch_size=3, iterations=1, batches=1, kd_steps=2, kd_batch_size=2)
    >>> out = deepinversion_distill(SmallResNet((4, 8), 3), SmallResNet((4, 4), 3, seed=1), 3, (1, 28, 28), cfg)
    >>> out["images"].shape, len(out["loss"])
    ((3, 1, 28, 28), 2)
    """
    cfg = config or DeepInversionConfig()
    rng = np.random.default_rng(cfg.seed)
    synthesis: list[dict] = []
    if cfg.alpha_adi > 0:
        if images is not None:
            raise ValueError("deepinversion_distill: ADI (alpha_adi > 0) synthesises against the student being "
                             "trained; its images cannot be given")
        return _adi_rounds(teacher, student, num_classes, input_shape, cfg, rng)
    if images is None:
        batches = []
        for b in range(cfg.batches):
            targets = rng.permutation(np.arange(cfg.batch_size) % num_classes)
            imgs, hist = synthesize(teacher, targets, input_shape, cfg, seed=cfg.seed * 1000 + b)
            batches.append(imgs)
            synthesis.append(hist[-1] if hist else {})
        images = np.concatenate(batches)
    pool = images
    zt = teacher_logits(teacher, pool)
    opt = AdamW(student.parameters(), lr=cfg.kd_lr, weight_decay=0.0)
    losses = []
    for _ in range(cfg.kd_steps):
        pick = rng.choice(len(pool), min(cfg.kd_batch_size, len(pool)), replace=False)
        losses.append(distill_step(student, opt, pool[pick], zt[pick], cfg.kd))
    return {"images": pool, "synthesis": synthesis, "loss": losses}


def _adi_rounds(teacher: Module, student: Module, num_classes: int, input_shape: tuple[int, ...],
                cfg: DeepInversionConfig, rng: np.random.Generator) -> dict:
    """ADI: per batch, synthesise against the current student, then its share of the KD steps on the pool."""
    opt = AdamW(student.parameters(), lr=cfg.kd_lr, weight_decay=0.0)
    batches: list[np.ndarray] = []
    synthesis: list[dict] = []
    losses: list[float] = []
    for b in range(cfg.batches):
        targets = rng.permutation(np.arange(cfg.batch_size) % num_classes)
        imgs, hist = synthesize(teacher, targets, input_shape, cfg, seed=cfg.seed * 1000 + b, student=student)
        batches.append(imgs)
        synthesis.append(hist[-1] if hist else {})
        pool = np.concatenate(batches)
        zt = teacher_logits(teacher, pool)
        steps = cfg.kd_steps // cfg.batches + (cfg.kd_steps % cfg.batches if b == cfg.batches - 1 else 0)
        for _ in range(steps):
            pick = rng.choice(len(pool), min(cfg.kd_batch_size, len(pool)), replace=False)
            losses.append(distill_step(student, opt, pool[pick], zt[pick], cfg.kd))
    return {"images": np.concatenate(batches), "synthesis": synthesis, "loss": losses}
