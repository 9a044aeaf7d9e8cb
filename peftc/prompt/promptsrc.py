"""PromptSRC on a text dual encoder: one frozen sentence model, label-side and input-side deep prompts.

The CLIP -> text mapping of the methods spec §1.8: label descriptions play CLIP's class-name
texts (label prompts ``P^L``), input texts play the images (a separate set of input prompts
``P^X``), both through the same frozen weights. Training minimises :func:`promptsrc_loss` with SGD
(momentum, weight decay), one constant-lr warm-up epoch then a cosine schedule stepped per epoch,
and Gaussian prompt aggregation over the epoch snapshots. Every regulariser can be switched off,
which gives the CoOp / IVLP baselines and the ablations (see :data:`METHODS`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from .. import functional as F
from ..models.bert import BertModel
from ..models.tokenizer import Tokenizer
from ..nn import MeanPooling
from ..optim import SGD
from .deep_prompts import PromptedEncoder, insert_prompt_slots, phrase_prompts, twin_encoder
from .gpa import GaussianPromptAggregator
from .losses import LossWeights, promptsrc_loss


@dataclass(frozen=True)
class PromptSRCConfig:
    """Method and training settings. Defaults follow PromptSRC's base-to-novel config, scaled to MiniLM.

    ``label_depth``/``input_depth``: J per branch (0 = no prompts on that branch); PromptSRC puts
    prompts in 9 of CLIP's 12 blocks, here 4 of MiniLM's 6. ``label_init``/``input_init``: the
    phrases whose tokens set the number of prompts and the layer-0 initialisation.
    ``gpa``: (mean, std) over epochs 1..epochs, or None for the last epoch's prompts.
    ``text_diversity``: frozen label targets averaged over :data:`TEXT_TEMPLATES` (else the label
    template alone).
    ``stop_epoch``: train only epochs 1..stop_epoch of the ``epochs``-epoch schedule (early stopping at
    a step count chosen on validation; the learning rates are those of the full schedule, GPA weighs
    epochs 1..stop_epoch); None trains every epoch.
    """

    label_depth: int = 4
    input_depth: int = 4
    label_init: str = "this text is about"
    input_init: str = "a dictionary definition :"
    deep_init: str = "phrase"
    weights: LossWeights = field(default_factory=lambda: LossWeights.for_dim(384))
    epochs: int = 8
    batch_size: int = 4
    lr: float = 0.0025
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_lr: float = 1e-5
    gpa: tuple[float, float] | None = (6.0, 1.0)
    text_diversity: bool = True
    seed: int = 0
    max_length: int = 64
    eval_batch_size: int = 64
    stop_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.stop_epoch is not None and not 1 <= self.stop_epoch <= self.epochs:
            raise ValueError(f"stop_epoch must be in [1, epochs={self.epochs}], got {self.stop_epoch}")

    @property
    def trained_epochs(self) -> int:
        """The number of epochs :meth:`PromptSRCDualEncoder.fit` runs (``stop_epoch`` or ``epochs``)."""
        return self.epochs if self.stop_epoch is None else self.stop_epoch


# Methods of the comparison: name -> overrides of the default config (None = zero-shot, no training).
METHODS: dict[str, dict | None] = {
    "zero_shot": None,
    "coop": dict(label_depth=1, input_depth=0, weights=LossWeights(20.0, 0.0, 0.0, 0.0), gpa=None),
    "ivlp": dict(weights=LossWeights(20.0, 0.0, 0.0, 0.0), gpa=None),
    "promptsrc": {},
    "no_text_l1": dict(weights=replace(LossWeights.for_dim(384), text_l1=0.0)),
    "no_input_l1": dict(weights=replace(LossWeights.for_dim(384), input_l1=0.0)),
    "no_kl": dict(weights=replace(LossWeights.for_dim(384), kl=0.0)),
    "no_l1": dict(weights=replace(LossWeights.for_dim(384), text_l1=0.0, input_l1=0.0)),  # both L1 terms off
    "no_gpa": dict(gpa=None),
    "no_text_diversity": dict(text_diversity=False),
    "normal_deep_init": dict(deep_init="normal"),  # the paper's N(0, 0.02^2) deep prompts
}


def with_logit_scale(config: PromptSRCConfig, scale: float) -> PromptSRCConfig:
    """``config`` with the logit scale ``scale`` for the prompted and the frozen (teacher) logits alike.

    The scale multiplies every logit gradient (CE and KL) but not the L1 terms', so it sets how strong the L1
    regularisers are against the CE: the paper's CLIP scale :data:`peftc.prompt.PAPER_LOGIT_SCALE` (100) against
    MiniLM's training scale 20 makes the L1 terms 5x weaker relative to the CE.

    >>> with_logit_scale(PromptSRCConfig(), 100.0).weights.scale
    100.0
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return replace(config, weights=replace(config.weights, scale=float(scale)))


def lr_at_epoch(config: PromptSRCConfig, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``: warm-up lr for epoch 0, then cosine from lr over the rest
    (Dassl's constant warm-up epoch followed by a cosine schedule over MAX_EPOCH, stepped per epoch)."""
    if epoch == 0 and config.epochs > 1:
        return config.warmup_lr
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * epoch / config.epochs))


class PromptSRCDualEncoder:
    """Label and input branches of PromptSRC over one frozen :class:`BertModel`.

    ``label_texts`` holds every class's text (``"name: description"``) and ``label_variants`` the
    texts of the frozen ensemble per class (a list of lists); training and evaluation take the
    class indices they work on, so base and novel classes share the same learned prompts.
    """

    def __init__(self, model: BertModel, tokenizer: Tokenizer, label_texts: list[str],
                 label_variants: list[list[str]], config: PromptSRCConfig) -> None:
        model.requires_grad_(False)
        model.eval()
        self.config = config
        self.tokenizer = tokenizer
        self.frozen = model
        self.label_texts = list(label_texts)
        label_ids = tokenizer([config.label_init])["input_ids"][0]
        input_ids = tokenizer([config.input_init])["input_ids"][0]

        def branch(depth: int, ids: np.ndarray, seed: int) -> PromptedEncoder:
            prompts = phrase_prompts(model, ids, depth, config.deep_init, seed=seed) if depth else None
            return PromptedEncoder(twin_encoder(model), prompts)

        self.label_branch = branch(config.label_depth, label_ids, config.seed * 2 + 1)
        self.input_branch = branch(config.input_depth, input_ids, config.seed * 2 + 2)
        self._label_slot_ids = label_ids[1:-1]
        self._input_slot_ids = input_ids[1:-1]
        variants = label_variants if config.text_diversity else [[t] for t in label_texts]
        self.label_targets = self._ensemble(variants)  # (C, H) unit rows, the frozen label features

    # -- features ----------------------------------------------------------------------------------
    def prompt_params(self) -> list:
        return [b.prompts for b in (self.label_branch, self.input_branch) if b.prompts is not None]

    def _batch(self, texts: list[str], branch: PromptedEncoder, slot_ids: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.tokenizer(texts)
        if branch.n_prompts:
            return insert_prompt_slots(batch, branch.n_prompts, slot_ids)
        return {**batch, "pool_mask": batch["attention_mask"]}

    def _pooled_frozen(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled last hidden states of the frozen model (not normalised): (N, H)."""
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.frozen.config.hidden_size), dtype=np.float32)
        pool = MeanPooling()
        for i in range(0, len(texts), self.config.eval_batch_size):
            rows = order[i:i + self.config.eval_batch_size]
            b = self.tokenizer([texts[r] for r in rows])
            hidden = self.frozen(b["input_ids"], b["attention_mask"], b["token_type_ids"])
            out[rows] = pool(hidden, b["attention_mask"])
        return out

    def frozen_features(self, texts: list[str]) -> np.ndarray:
        """Unit-norm features of the frozen, prompt-free model (the sentence model itself)."""
        return F.l2_normalize_forward(self._pooled_frozen(texts))[0]

    def _ensemble(self, variants: list[list[str]]) -> np.ndarray:
        flat = [t for vs in variants for t in vs]
        pooled = self._pooled_frozen(flat)
        sums, k = [], 0
        for vs in variants:
            sums.append(pooled[k:k + len(vs)].mean(axis=0))
            k += len(vs)
        return F.l2_normalize_forward(np.ascontiguousarray(np.stack(sums), dtype=np.float32))[0]

    def input_features(self, texts: list[str]) -> np.ndarray:
        """Prompted input features (N, H), in evaluation batches."""
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths together: less padding
        out = np.empty((len(texts), self.frozen.config.hidden_size), dtype=np.float32)
        for i in range(0, len(texts), self.config.eval_batch_size):
            rows = order[i:i + self.config.eval_batch_size]
            out[rows] = self.input_branch(self._batch([texts[r] for r in rows], self.input_branch,
                                                      self._input_slot_ids))
        return out

    def label_features(self, classes: np.ndarray) -> np.ndarray:
        """Prompted label features (len(classes), H)."""
        return self.label_branch(self._batch([self.label_texts[c] for c in classes], self.label_branch,
                                             self._label_slot_ids))

    def predict(self, texts: list[str], classes: np.ndarray, zero_shot: bool = False) -> np.ndarray:
        """Predicted class ids (from ``classes``) of each text: argmax cosine against the label features.

        ``zero_shot=True`` uses the frozen model on both sides (label template only, no ensemble).
        """
        classes = np.asarray(classes, dtype=np.int64)
        if zero_shot:
            u = self.frozen_features(texts)
            v = self.frozen_features([self.label_texts[c] for c in classes])
        else:
            u, v = self.input_features(texts), self.label_features(classes)
        return classes[np.argmax(u @ v.T, axis=1)]

    # -- training ----------------------------------------------------------------------------------
    def training_step(self, texts: list[str], targets: np.ndarray, classes: np.ndarray,
                      u0: np.ndarray) -> dict[str, float]:
        """Forward, loss, backward for one batch; ``targets`` index ``classes``; ``u0`` frozen input features."""
        u = self.input_branch(self._batch(texts, self.input_branch, self._input_slot_ids))
        v = self.label_features(classes)
        terms, du, dv = promptsrc_loss(u, v, targets, u0, self.label_targets[classes], self.config.weights)
        self.input_branch.backward(du)
        self.label_branch.backward(dv)
        return terms

    def fit(self, texts: list[str], labels: np.ndarray, classes: np.ndarray,
            on_epoch_end: Callable[[int, PromptSRCDualEncoder], None] | None = None) -> list[dict[str, float]]:
        """Train the prompts on (texts, labels) over ``classes`` (labels are global class ids); returns
        per-epoch mean loss terms. The batch order is drawn from ``config.seed``.

        ``on_epoch_end(epoch, self)`` (1-based epoch) runs after each epoch on the raw prompts (before GPA
        is loaded), e.g. to record a validation curve or snapshot the prompts.
        """
        cfg = self.config
        classes = np.asarray(classes, dtype=np.int64)
        index_of = {int(c): i for i, c in enumerate(classes)}
        targets = np.array([index_of[int(y)] for y in labels], dtype=np.int64)
        params = self.prompt_params()
        if not params:
            raise ValueError("nothing to train: both branches have depth 0")
        u0_all = self.frozen_features(texts)
        opt = SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        gpa = GaussianPromptAggregator(params, cfg.trained_epochs, *cfg.gpa) if cfg.gpa else None
        rng = np.random.default_rng(cfg.seed)
        history = []
        for epoch in range(cfg.trained_epochs):
            for g in opt.param_groups:
                g["lr"] = lr_at_epoch(cfg, epoch)
            order = rng.permutation(len(texts))
            sums: dict[str, float] = {}
            steps = 0
            for i in range(0, len(order), cfg.batch_size):
                rows = order[i:i + cfg.batch_size]
                opt.zero_grad()
                terms = self.training_step([texts[r] for r in rows], targets[rows], classes, u0_all[rows])
                opt.step()
                for k, val in terms.items():
                    sums[k] = sums.get(k, 0.0) + val
                steps += 1
            if gpa is not None:
                gpa.update()
            history.append({"epoch": epoch + 1, "lr": lr_at_epoch(cfg, epoch),
                            **{k: val / steps for k, val in sums.items()}})
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, self)
        if gpa is not None:
            gpa.load()
        return history
