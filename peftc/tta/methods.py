"""Test-time adaptation methods: Source, BNAdapt, TENT, EATA, SAR, and the open-set "wisdom of crowds" filter.

Each method wraps a deep copy of a BatchNorm model (a :class:`peftc.nn.Module` with explicit
backward) and exposes ``forward_and_adapt(x) -> logits`` (the logits of the forward that precedes
the update, as the reference implementations return) and ``reset()`` (back to the state at
construction: parameters, buffers, optimizer, moving averages). ``stats`` counts batches,
samples, optimizer steps and the samples that went through a backward pass.

Adapting methods put every BatchNorm2d on test-batch statistics and train only the BN affine
parameters (SAR: all but those of the top residual block); in a model with LayerNorm layers (a
transformer text classifier) the LN affine parameters are trained as well, LN statistics being
per sample already. The batch ``x`` is an array, or a dict of arrays (token ids and mask) whose
first axis is the batch. The open-set filter (``open_set=True``)
keeps a frozen copy taken after that configuration (so it also normalises with test-batch
statistics, the UniEnt choice) and drops sample i from the loss when the adapted model's
probability of the frozen model's predicted class is lower than the frozen model's.
"""
from __future__ import annotations

import copy
import math

import numpy as np

from .. import functional as F
from ..nn import BatchNorm2d
from ..nn.layernorm import LayerNorm
from ..nn.module import Module, Parameter
from ..optim import SGD, AdamW


def configure_for_tta(model: Module, exclude: tuple[str, ...] = ()) -> list[Parameter]:
    """Freeze everything, put every BatchNorm2d on test-batch statistics, unfreeze their affine pairs
    and those of every LayerNorm.

    Norm layers whose name starts with a prefix in ``exclude`` keep batch statistics but stay frozen.
    Returns the trainable parameters.
    """
    model.requires_grad_(False)
    params = []
    for name, m in model.named_modules():
        if isinstance(m, (BatchNorm2d, LayerNorm)):
            if isinstance(m, BatchNorm2d):
                m.mode = "test_batch"
            if m.weight is not None and not any(name.startswith(p) for p in exclude):
                for p in (m.weight, m.bias):
                    p.requires_grad = True
                    params.append(p)
    return params


def diversity_backward(probs: np.ndarray, scale: float, dlogits: np.ndarray) -> float:
    """dlogits += scale * dH(mean_i p_i)/dlogits; returns H(mean p) (the SWR/NSP diversity term)."""
    b = len(probs)
    p = probs.astype(np.float64)
    log_bar = np.log(np.maximum(p.mean(0), 1e-30))
    g = -(p * (log_bar[None] - (p * log_bar[None]).sum(1, keepdims=True))) / b
    dlogits += (scale * g).astype(dlogits.dtype)
    return float(-(p.mean(0) * log_bar).sum())


def batch_rows(x) -> int:
    """Rows of a batch: ``len(x)`` of an array, of the first array of a dict batch."""
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


class TTAMethod:
    """Shared machinery: the model copy, the snapshot for ``reset``, counters, the entropy backward."""

    adapts = True

    def __init__(self, model: Module, optimizer: str = "adam", lr: float = 1e-3, momentum: float = 0.9,
                 open_set: bool = False, exclude: tuple[str, ...] = ()) -> None:
        self.model = copy.deepcopy(model)
        self.params = configure_for_tta(self.model, exclude) if self.adapts else []
        if self.adapts and not self.params:
            raise ValueError(f"{type(self).__name__}: the model has no BatchNorm or LayerNorm affine parameter "
                             "to adapt")
        self._opt_kind, self._lr, self._momentum = optimizer, lr, momentum
        self.optimizer = self._make_optimizer()
        self.frozen = copy.deepcopy(self.model) if open_set else None
        self._snapshot = {k: v.copy() for k, v in self.model.state_dict().items()}
        self.stats = self._zero_stats()

    def _make_optimizer(self):
        if not self.params:
            return None
        if self._opt_kind == "adam":
            return AdamW(self.params, lr=self._lr, betas=(0.9, 0.999), weight_decay=0.0)
        if self._opt_kind == "sgd":
            return SGD(self.params, lr=self._lr, momentum=self._momentum)
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self._opt_kind!r}")

    @staticmethod
    def _zero_stats() -> dict[str, int]:
        return {"batches": 0, "samples": 0, "steps": 0, "backward_samples": 0}

    def reset(self) -> None:
        """Restore the state at construction: parameters, buffers, optimizer and method state, counters."""
        self.model.load_state_dict(self._snapshot)
        self.optimizer = self._make_optimizer()
        self.model.zero_grad()
        self.stats = self._zero_stats()

    def _keep_mask(self, x: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Open-set filter: p_adapted(c_o) >= p_frozen(c_o), c_o the frozen model's prediction; all True without it."""
        if self.frozen is None:
            return np.ones(len(probs), dtype=bool)
        _, p_o = F.softmax_entropy_forward(self.frozen.forward(x))
        c_o = p_o.argmax(1)
        rows = np.arange(len(probs))
        return probs[rows, c_o] >= p_o[rows, c_o]

    def _zero_grads(self) -> None:
        """Zero the trained parameters' gradients (the only ones configure_for_tta leaves trainable)."""
        for p in self.params:
            if p.grad is not None:
                p.grad.fill(0.0)

    def _entropy_backward(self, logits: np.ndarray, probs: np.ndarray, dent: np.ndarray,
                          extra: np.ndarray | None = None) -> None:
        """Backward of sum_n dent[n] H_n (+ an extra logit gradient) through the model into the BN affine grads."""
        dlogits = np.zeros_like(logits) if extra is None else extra
        F.softmax_entropy_backward(dent.astype(np.float32), probs, logits, dlogits=dlogits)
        self.model.backward(dlogits, input_grad=False)  # nothing reads the gradient of the input batch

    def forward_and_adapt(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Source(TTAMethod):
    """No adaptation: the source model with its running statistics."""

    adapts = False

    def __init__(self, model: Module) -> None:
        super().__init__(model)
        self.model.eval()

    def forward_and_adapt(self, x: np.ndarray) -> np.ndarray:
        self.stats["batches"] += 1
        self.stats["samples"] += batch_rows(x)
        return self.model.forward(x)


class BNAdapt(TTAMethod):
    """Normalise with each test batch's statistics; no parameter changes."""

    adapts = False

    def __init__(self, model: Module) -> None:
        super().__init__(model)
        configure_for_tta(self.model)
        self.model.requires_grad_(False)

    def forward_and_adapt(self, x: np.ndarray) -> np.ndarray:
        self.stats["batches"] += 1
        self.stats["samples"] += batch_rows(x)
        return self.model.forward(x)


class TENT(TTAMethod):
    """Entropy minimisation of the BN affine parameters, one step per batch (Wang et al., ICLR 2021).

    Loss: mean entropy over the batch. With ``open_set=True`` the mean runs over the kept samples
    and ``diversity_weight`` (alpha, default 0.5 then, else 0) subtracts alpha * H(mean prediction)
    over the whole batch, the UniEnt re-implementation's loss. ``steps`` updates per batch.
    """

    def __init__(self, model: Module, optimizer: str = "adam", lr: float = 1e-3, momentum: float = 0.9,
                 steps: int = 1, open_set: bool = False, diversity_weight: float | None = None) -> None:
        super().__init__(model, optimizer, lr, momentum, open_set)
        self.steps = steps
        self.diversity_weight = (0.5 if open_set else 0.0) if diversity_weight is None else diversity_weight

    def forward_and_adapt(self, x: np.ndarray) -> np.ndarray:
        first = None
        for _ in range(self.steps):
            logits = self.model.forward(x)
            first = logits if first is None else first
            ent, probs = F.softmax_entropy_forward(logits)
            keep = self._keep_mask(x, probs)
            n = int(keep.sum())
            extra = None
            if self.diversity_weight:
                extra = np.zeros_like(logits)
                diversity_backward(probs, -self.diversity_weight, extra)
            if n == 0 and extra is None:
                continue
            self._entropy_backward(logits, probs, np.where(keep, 1.0 / max(n, 1), 0.0), extra)
            self.optimizer.step()
            self._zero_grads()
            self.stats["steps"] += 1
            self.stats["backward_samples"] += n if extra is None else batch_rows(x)
        self.stats["batches"] += 1
        self.stats["samples"] += batch_rows(x)
        return first


def compute_fisher(model: Module, params: list[Parameter], images: np.ndarray, batch_size: int
                   ) -> list[np.ndarray]:
    """EATA's diagonal Fisher: mean over batches of the squared batch-mean CE gradient with argmax pseudo-labels.

    ``images``: an array, or a dict of arrays (a tokenised text batch) sliced along the first axis.
    """
    from ..nn.loss import CrossEntropyLoss

    fisher = [np.zeros_like(p.data) for p in params]
    loss = CrossEntropyLoss()
    batches = 0
    for i in range(0, batch_rows(images), batch_size):
        model.zero_grad()
        rows = slice(i, i + batch_size)
        logits = model.forward({k: v[rows] for k, v in images.items()} if isinstance(images, dict) else images[rows])
        loss.forward(logits, logits.argmax(1).astype(np.int64))
        model.backward(loss.backward(), input_grad=False)
        for f, p in zip(fisher, params):
            f += p.grad ** 2
        batches += 1
    model.zero_grad()
    return [f / max(batches, 1) for f in fisher]


class EATA(TTAMethod):
    """Efficient anti-forgetting TTA (Niu et al., ICML 2022): reliable, non-redundant samples,
    weights exp(E0 - H), and a Fisher penalty ``fisher_alpha * sum F (theta - theta0)^2``.

    ``fisher_images`` (clean in-distribution images, 2,000 in the paper's code) give the Fisher
    and theta0; without them the penalty is off (that is "ETA"). E0 = ``e0_factor`` * ln C.
    With ``open_set=True`` the weights are also masked by the open-set filter and the entropy term
    is a mean over the samples both filters keep. ``diversity_weight`` (alpha, default 0) subtracts
    alpha * H(mean prediction over the whole batch), as the UniEnt re-implementation's EATA baseline
    does with alpha 0.5; with it a step is taken even when no sample passes the filters, and every
    sample of the batch counts as a backward sample.

    >>> from peftc.models import SmallResNet
    >>> eata = EATA(SmallResNet((4, 8), num_classes=10, seed=0), e0_factor=1.0, diversity_weight=0.5)
    >>> eata.forward_and_adapt(np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)).shape
    (8, 10)
    >>> eata.stats["steps"], eata.stats["backward_samples"]
    (1, 8)
    """

    def __init__(self, model: Module, fisher_images: np.ndarray | None = None, optimizer: str = "sgd",
                 lr: float = 2.5e-4, momentum: float = 0.9, num_classes: int = 10, e0_factor: float = 0.4,
                 d_margin: float = 0.4, fisher_alpha: float = 1.0, fisher_batch_size: int = 200,
                 open_set: bool = False, diversity_weight: float = 0.0) -> None:
        super().__init__(model, optimizer, lr, momentum, open_set)
        self.diversity_weight = float(diversity_weight)
        self.e0 = e0_factor * math.log(num_classes)
        self.d_margin, self.fisher_alpha = d_margin, fisher_alpha
        self.ema = np.zeros(num_classes, dtype=np.float32)
        self.ema_set = False
        self.fisher = None
        if fisher_images is not None:
            self.fisher = compute_fisher(self.model, self.params, fisher_images, fisher_batch_size)
        self.theta0 = [p.data.copy() for p in self.params]

    @staticmethod
    def _zero_stats() -> dict[str, int]:
        return {**TTAMethod._zero_stats(), "reliable": 0}

    def reset(self) -> None:
        super().reset()
        self.ema[...] = 0.0
        self.ema_set = False

    def forward_and_adapt(self, x: np.ndarray) -> np.ndarray:
        logits = self.model.forward(x)
        ent, probs = F.softmax_entropy_forward(logits)
        weight, reliable, _, self.ema_set = F.eata_select(ent, probs, self.ema, self.ema_set, self.e0,
                                                                 self.d_margin, 0.9)
        if self.frozen is not None:
            weight = np.where(self._keep_mask(x, probs), weight, 0.0).astype(np.float32)
        # the loss is a mean over the samples kept by every filter (S2, or S2 and the open-set S):
        # divide by their count n, not by |S2| before the open-set filter
        n = int((weight != 0).sum())
        self.stats["reliable"] += reliable
        # Filtered-out rows get a zero logit gradient, but BN on batch statistics couples the rows:
        # below the last BN every row carries gradient, so the backward runs over the whole batch
        # (as the reference implementation's autograd does).
        extra = None
        if self.diversity_weight:
            extra = np.zeros_like(logits)
            diversity_backward(probs, -self.diversity_weight, extra)
        if n > 0 or extra is not None:
            self._entropy_backward(logits, probs, weight / np.float32(max(n, 1)), extra)
            if self.fisher is not None:
                for p, f, t0 in zip(self.params, self.fisher, self.theta0):
                    p.grad += (2.0 * self.fisher_alpha) * f * (p.data - t0)
            self.optimizer.step()
            self._zero_grads()
            self.stats["steps"] += 1
            self.stats["backward_samples"] += n if extra is None else batch_rows(x)
        self.stats["batches"] += 1
        self.stats["samples"] += batch_rows(x)
        return logits


class SAR(TTAMethod):
    """Sharpness-aware reliable entropy minimisation with model recovery (Niu et al., ICLR 2023).

    Trains the BN affine parameters except those under ``exclude`` (the top residual block by
    default: ``blocks.<last>`` of :class:`peftc.models.SmallResNet`). Per batch: entropy filter
    H < E0, SAM ascent of radius ``rho``, second forward, re-filter, step with the perturbed-point
    gradient; the moving average of the second loss (0.9) triggers a reset below ``reset_below``.
    """

    def __init__(self, model: Module, optimizer: str = "sgd", lr: float = 2.5e-4, momentum: float = 0.9,
                 num_classes: int = 10, e0_factor: float = 0.4, rho: float = 0.05, reset_below: float = 0.2,
                 exclude: tuple[str, ...] | None = None) -> None:
        if exclude is None:
            blocks = getattr(model, "blocks", None)
            exclude = (f"blocks.{len(blocks) - 1}",) if blocks is not None and len(blocks) else ()
        super().__init__(model, optimizer, lr, momentum, False, exclude)
        self.e0 = e0_factor * math.log(num_classes)
        self.rho, self.reset_below = rho, reset_below
        self.loss_ema: float | None = None

    @staticmethod
    def _zero_stats() -> dict[str, int]:
        return {**TTAMethod._zero_stats(), "recoveries": 0}

    def reset(self) -> None:
        super().reset()
        self.loss_ema = None

    def forward_and_adapt(self, x: np.ndarray) -> np.ndarray:
        self.stats["batches"] += 1
        self.stats["samples"] += batch_rows(x)
        logits = self.model.forward(x)
        ent, probs = F.softmax_entropy_forward(logits)
        sel = ent < self.e0
        if not sel.any():
            return logits
        self._entropy_backward(logits, probs, np.where(sel, 1.0 / sel.sum(), 0.0))
        norm = math.sqrt(sum(F.sumsq(p.grad) for p in self.params))
        scale = self.rho / (norm + 1e-12)
        eps = [p.grad * scale for p in self.params]
        for p, e in zip(self.params, eps):
            p.data += e
        self.model.zero_grad()
        logits2 = self.model.forward(x)
        ent2, probs2 = F.softmax_entropy_forward(logits2)
        sel2 = sel & (ent2 < self.e0)
        n2 = int(sel2.sum())
        if n2:
            self._entropy_backward(logits2, probs2, np.where(sel2, 1.0 / n2, 0.0))
        for p, e in zip(self.params, eps):
            p.data -= e
        if n2:
            self.optimizer.step()
            self.stats["steps"] += 1
        self.model.zero_grad()
        self.stats["backward_samples"] += int(sel.sum()) + n2
        if n2:
            loss2 = float(ent2[sel2].mean())
            self.loss_ema = loss2 if self.loss_ema is None else 0.9 * self.loss_ema + 0.1 * loss2
            if self.loss_ema < self.reset_below:
                stats = self.stats
                self.reset()
                self.stats = stats
                self.stats["recoveries"] += 1
        return logits
