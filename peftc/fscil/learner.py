"""FSCILLearner: few-shot class-incremental learning on a BERT encoder with LoRA: incremental-frozen plus tricks.

1. ``fit_base(session)``: LoRA (query, value) on the encoder plus a linear head, trained on the base classes
   with AdamW (the main job's recipe: warm-up and linear decay, clipping, weight decay); then the encoder
   is frozen and every base class gets a prototype, the mean of its L2-normalised base features
   (the head's weights are not used for prediction).
2. ``add_session(shots)``: each new class's prototype is the mean of its shots' normalised features.
3. ``predict(texts)``: the class of the nearest prototype by cosine, over every class seen so far.

The tricks (:class:`peftc.fscil.tricks.Tricks`, all off = the baseline) change these steps: ``ssl`` adds a
SimCSE-style contrastive phase before step 1 (each text's positive is its own second view); ``supcon``,
``etf``, ``pretext`` add their terms to the step-1 loss (:class:`peftc.fscil.objective.FSCILObjective`) and
``pseudo_classes`` adds mixed-class texts as extra classes to step 1's data; ``subnet`` fine-tunes the top
blocks' LoRA on each session's shots before their prototypes are taken (step 2): cosine-prototype CE over
every seen class with the stored prototypes fixed, a low learning rate, few steps, and an L2 pull of the
tuned values back to their pre-session values (the guard: no old data is kept, so the stored prototypes
stay valid only while the encoder moves little). The blocks below the tuned ones and the embeddings stay
frozen from ``fit_base`` on, so with ``subnet`` their output for each text is computed once
(:class:`peftc.fscil.block_cache.FrozenBlockCache`): the tuning steps and every later encoding of a text run
the top blocks alone. Those frozen blocks then run without dropout during the tuning steps (dropout still acts
in the tuned blocks).

Nothing of an earlier session's data is kept beyond the prototypes. ``save_pretrained`` writes the adapter in
PEFT's format (with the heads as ``modules_to_save``), the prototypes in safetensors and the settings as JSON.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import functional as F
from ..io.atomic import write_bytes_atomic
from ..io.safetensors import load_file, save_file
from ..models.bert import BertModel
from ..nn.loss import CrossEntropyLoss
from ..optim import AdamW, clip_grad_norm_
from ..random import Generator
from ..train import Trainer, TrainingConfig
from ..tuners import LoraConfig, PeftModel, get_peft_model
from .block_cache import FrozenBlockCache
from .network import FSCILNetwork
from .objective import FSCILObjective
from .prototypes import PrototypeClassifier, class_means
from .etf import simplex_etf
from .session import Session
from .tricks import Tricks
from .views import mixed_class_texts

PROTOTYPES_FILE, SETTINGS_FILE = "prototypes.safetensors", "fscil_config.json"


@dataclass
class FSCILConfig:
    """Settings of the base training and the sessions (defaults: the main WordNet job's recipe)."""

    shots: int = 5
    max_length: int = 64
    batch_size: int = 32
    base_epochs: int = 2
    base_max_steps: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] = ("query", "value")
    eval_batch_size: int = 128
    seed: int = 0
    progress: bool = False
    total_classes: int = 100  # base + every session's: the pre-assigned prototypes reserve a slot for each
    # -- trick knobs (used only by the tricks switched on) --
    supcon_weight: float = 0.5
    temperature: float = 0.1
    projection_dim: int = 128
    deletion: float = 0.15
    etf_weight: float = 1.0
    pseudo_classes: int = 20
    pseudo_per_class: int = 20
    pretext_weight: float = 0.5
    ssl_epochs: int = 1
    ssl_max_steps: int | None = None
    ssl_temperature: float = 0.05
    subnet_layers: int = 1
    subnet_steps: int = 20
    subnet_lr: float = 1e-4
    subnet_guard: float = 1.0
    subnet_scale: float = 16.0


class FSCILLearner:
    """``FSCILLearner(base_model, tokenizer, tricks=None, config=None)``: ``base_model`` a
    :class:`peftc.models.BertModel` (adapted in place), ``tokenizer`` a callable texts -> {"input_ids",
    "attention_mask"} (a :class:`peftc.models.Tokenizer`), ``tricks`` a :class:`Tricks` (default: none).

    >>> learner = FSCILLearner(BertModel.from_pretrained(minilm_path()), Tokenizer(minilm_path(), 64))  # doctest: +SKIP
    >>> learner.fit_base(Session(base_texts, base_labels))  # doctest: +SKIP
    >>> learner.add_session(Session(shot_texts, shot_labels)); learner.predict(test_texts)  # doctest: +SKIP
    """

    def __init__(self, base_model: BertModel, tokenizer: Callable[[list[str]], dict[str, np.ndarray]],
                 tricks: Tricks | None = None, config: FSCILConfig | None = None) -> None:
        if not isinstance(base_model, BertModel):
            raise TypeError(f"base_model must be a peftc.models.BertModel, got {type(base_model).__name__}")
        self.bert = base_model
        self.tokenizer = tokenizer
        self.config = config or FSCILConfig()
        self.tricks = tricks or Tricks()
        if not isinstance(self.tricks, Tricks):
            raise TypeError(f"tricks must be a peftc.fscil.Tricks, got {type(self.tricks).__name__}")
        self.model: PeftModel | None = None
        self.classifier = PrototypeClassifier(base_model.config.hidden_size)
        self.base_classes = 0
        self.history: list[dict] = []
        self._block_cache: FrozenBlockCache | None = None
        self._frozen = False  # set once base training is over: from then on the encoder changes only by subnet

    # -- data ------------------------------------------------------------------------------------------
    def _tokens(self, texts: list[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer(list(texts))
        return {"input_ids": np.ascontiguousarray(enc["input_ids"], np.int64),
                "attention_mask": np.ascontiguousarray(enc["attention_mask"], np.int64)}

    @property
    def network(self) -> FSCILNetwork:
        if self.model is None:
            raise RuntimeError("call fit_base first")
        return self.model.get_base_model()

    def features(self, texts: list[str], cache: bool = True) -> np.ndarray:
        """(N, H) float32 pooled features in eval mode, in the order given (batched by length). With ``subnet``
        the frozen lower blocks' output of each text is cached for later sessions; ``cache=False`` keeps
        nothing (texts encoded once, as the base session's for its prototypes)."""
        if not len(texts):
            raise ValueError("features: texts is empty")
        net = self.network
        frozen = self._frozen_cache() if cache else None
        was = net.training
        net.eval()
        try:
            out = np.empty((len(texts), self.bert.config.hidden_size), np.float32)
            bs = self.config.eval_batch_size
            if frozen is not None:  # the frozen lower blocks' output is cached: run the top blocks only
                frozen.fill(texts)  # the new texts' lower blocks first, in length-sorted batches
                order = np.argsort([frozen.length(t) for t in texts], kind="stable")
                for s in range(0, len(order), bs):
                    rows = order[s:s + bs]
                    hidden, mask = frozen.inputs([texts[i] for i in rows])
                    out[rows] = net.pooling(frozen.top(hidden, mask), mask)
                return out
            tok = self._tokens(texts)
            order = np.argsort(tok["attention_mask"].sum(axis=1), kind="stable")
            for s in range(0, len(order), bs):
                rows = order[s:s + bs]
                out[rows] = net.pooled(tok["input_ids"][rows], tok["attention_mask"][rows])
        finally:
            net.train(was)
        return out

    def _frozen_cache(self) -> FrozenBlockCache | None:
        """With ``subnet``, after ``fit_base``: the cache of the states entering the first tuned block (the
        blocks below it and the embeddings are frozen for good); otherwise None (the whole encoder runs)."""
        if not self.tricks.subnet or not self._frozen:
            return None
        if self._block_cache is None:
            layers = self.bert.config.num_hidden_layers
            self._block_cache = FrozenBlockCache(self.bert, max(layers - self.config.subnet_layers, 0), self._tokens,
                                                 self.config.eval_batch_size)
        return self._block_cache

    # -- base session ----------------------------------------------------------------------------------
    def _network(self, num_classes: int) -> FSCILNetwork:
        t, c = self.tricks, self.config
        return FSCILNetwork(self.bert, num_classes, projection_dim=c.projection_dim if t.supcon or t.ssl else 0,
                            pretext=t.pretext, deletion=c.deletion, generator=Generator(c.seed + 1))

    def _etf_targets(self) -> np.ndarray:
        c = self.config
        return simplex_etf(max(c.total_classes, self.base_classes), self.bert.config.hidden_size, seed=c.seed)

    def _objective(self) -> FSCILObjective:
        t, c = self.tricks, self.config
        return FSCILObjective(ce=1.0, supcon=c.supcon_weight if t.supcon else 0.0, temperature=c.temperature,
                              etf=c.etf_weight if t.etf else 0.0, etf_targets=self._etf_targets() if t.etf else None,
                              align_classes=self.base_classes, pretext=c.pretext_weight if t.pretext else 0.0)

    def _base_training_data(self, data: Session) -> tuple[list[str], np.ndarray]:
        """The base texts, plus the pseudo-classes' mixed texts (labels after the base classes) when switched on."""
        if not self.tricks.pseudo_classes:
            return data.texts, data.labels
        c = self.config
        texts, labels = mixed_class_texts(data.texts, data.labels, c.pseudo_classes, c.pseudo_per_class,
                                          first_label=self.base_classes, seed=c.seed)
        return data.texts + texts, np.concatenate([data.labels, labels])

    def _train(self, model, train: dict[str, np.ndarray], objective, learning_rate: float, epochs: int,
               max_steps: int | None, seed: int) -> list[dict]:
        c = self.config
        cfg = TrainingConfig(learning_rate=learning_rate, batch_size=c.batch_size, num_epochs=epochs,
                             max_steps=max_steps, warmup_ratio=c.warmup_ratio, weight_decay=c.weight_decay,
                             max_grad_norm=1.0, seed=seed, progress=c.progress, log_every=10)
        trainer = Trainer(model, cfg, train, loss_fn=objective)
        return trainer.train()

    def fit_base(self, data: Session) -> list[dict]:
        """Train on the base session (labels must be 0..C-1, each present), freeze, store base prototypes.

        Returns the training log (one record per logged step).
        """
        if self.model is not None:
            raise RuntimeError("fit_base was already called on this learner")
        classes = data.classes
        if len(classes) < 2 or not np.array_equal(classes, np.arange(len(classes))):
            raise ValueError(f"the base session's labels must be 0..C-1 with C >= 2 and every class present, got "
                             f"classes {classes[:10].tolist()}... ({len(classes)} distinct)")
        c = self.config
        self.base_classes = len(classes)
        texts, labels = self._base_training_data(data)
        num_outputs = int(labels.max()) + 1
        lora = LoraConfig(r=c.r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                          target_modules=list(c.target_modules), modules_to_save=self._heads())
        self.model = get_peft_model(self._network(num_outputs), lora, generator=Generator(c.seed + 2))
        self._pretrain(data)
        train = {**self._tokens(texts), "labels": labels}
        self.history = self._train(self.model, train, self._objective(), c.learning_rate, c.base_epochs,
                                   c.base_max_steps, c.seed)
        self.model.requires_grad_(False)
        self.model.eval()
        self._frozen = True
        self.classifier.add(class_means(self.features(data.texts, cache=False), data.labels, classes), classes)
        return self.history

    def _heads(self) -> list[str]:
        t = self.tricks
        return ["classifier"] + (["projector"] if t.supcon or t.ssl else []) + (["pretext_head"] if t.pretext else [])

    def _pretrain(self, data: Session) -> None:
        """The ``ssl`` trick: contrastive training on the base texts without their labels (each row's only
        positive is its second view; SupCon with the row index as label is SimCLR / SimCSE's NT-Xent)."""
        if not self.tricks.ssl:
            return
        c = self.config
        net = self.network
        net.pretext_active = False  # the rotation head has no part in this phase
        try:
            train = {**self._tokens(data.texts), "labels": np.arange(len(data), dtype=np.int64)}
            objective = FSCILObjective(ce=0.0, supcon=1.0, temperature=c.ssl_temperature)
            self.history_ssl = self._train(self.model, train, objective, c.learning_rate, c.ssl_epochs,
                                           c.ssl_max_steps, c.seed + 11)
        finally:
            net.pretext_active = True

    # -- incremental sessions --------------------------------------------------------------------------
    def check_session(self, shots: Session) -> None:
        """ValueError unless ``shots`` is non-empty, brings only unseen classes, ``config.shots`` of each."""
        if self.model is None:
            raise RuntimeError("call fit_base before add_session")
        if len(shots) == 0:
            raise ValueError("add_session: the session is empty")
        classes = shots.classes
        seen = np.intersect1d(classes, self.classifier.classes)
        if seen.size:
            raise ValueError(f"add_session: classes {seen.tolist()} were already seen")
        counts = np.array([(shots.labels == k).sum() for k in classes])
        if (counts != self.config.shots).any():
            bad = {int(k): int(n) for k, n in zip(classes, counts) if n != self.config.shots}
            raise ValueError(f"add_session: each class needs exactly {self.config.shots} shots, got {bad}")

    def add_session(self, shots: Session) -> None:
        """Learn the session's new classes from their shots (see :meth:`check_session` for what is refused)."""
        self.check_session(shots)
        self._adapt(shots)
        classes = shots.classes
        self.classifier.add(class_means(self.features(shots.texts), shots.labels, classes), classes)

    def _adapt(self, shots: Session) -> None:
        """The ``subnet`` trick: tune the top ``subnet_layers`` blocks' LoRA on the shots (see the module doc)."""
        if not self.tricks.subnet:
            return
        c = self.config
        net = self.network
        layers = self.bert.config.num_hidden_layers
        top = tuple(f"encoder.layer.{i}." for i in range(max(layers - c.subnet_layers, 0), layers))
        params = [p for n, p in self.model.named_parameters() if ".lora_" in n and any(t in n for t in top)]
        if not params:
            raise RuntimeError(f"subnet tuning found no LoRA parameter in blocks {top}")
        start = [p.data.copy() for p in params]
        classes = shots.classes
        fixed = self.classifier.unit_prototypes()
        fresh = F.l2_normalize_forward(class_means(self.features(shots.texts), shots.labels, classes))[0]
        targets = np.ascontiguousarray(np.concatenate([fixed, fresh]) * np.float32(c.subnet_scale))
        index = {int(k): i for i, k in enumerate(np.concatenate([self.classifier.classes, classes]))}
        y = np.array([index[int(k)] for k in shots.labels], np.int64)
        tok = self._tokens(shots.texts)
        cache = self._frozen_cache()
        states = cache.inputs(shots.texts) if cache is not None else None
        for p in params:
            p.requires_grad = True
        optimizer = AdamW(params, lr=c.subnet_lr, weight_decay=0.0)
        loss_fn = CrossEntropyLoss()
        net.train()
        try:
            for _ in range(c.subnet_steps):
                for p in params:
                    p.grad_buffer().fill(0.0)
                self.subnet_loss = subnet_step(net, tok, targets, y, loss_fn, states, cache)
                for p, p0 in zip(params, start):
                    p.grad += np.float32(c.subnet_guard) * (p.data - p0)  # the L2 pull to the pre-session values
                clip_grad_norm_(params, 1.0)
                optimizer.step()
        finally:
            for p in params:
                p.requires_grad = False
                p.grad = None
            net.eval()

    def predict(self, texts: list[str]) -> np.ndarray:
        """(N,) int64: the nearest prototype's class for each text."""
        return self.classifier.predict(self.features(texts))

    def snapshot(self) -> dict:
        """Copies of what sessions change (the adapter's parameters and the prototypes), for :meth:`restore`:
        one base training can then run the sessions more than once (a validation pass, then the test pass)."""
        return {"params": {n: p.data.copy() for n, p in self.model.named_parameters() if ".lora_" in n},
                "prototypes": self.classifier.prototypes.copy(), "classes": self.classifier.classes.copy()}

    def restore(self, state: dict) -> None:
        """Return to a :meth:`snapshot` taken on this learner."""
        params = dict(self.model.named_parameters())
        for n, data in state["params"].items():
            params[n].data[...] = data
        self.classifier.prototypes = state["prototypes"].copy()
        self.classifier.classes = state["classes"].copy()

    # -- files -----------------------------------------------------------------------------------------
    def _settings(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "tricks": list(self.tricks.enabled()),
                "base_classes": self.base_classes,
                "num_outputs": int(self.network.classifier.out_features)}

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write the adapter (PEFT format), ``prototypes.safetensors`` (prototypes (K, H), classes (K,)) and
        ``fscil_config.json`` into ``folder``."""
        self.model.save_pretrained(folder)
        save_file({"prototypes": self.classifier.prototypes,
                   "classes": self.classifier.classes.astype(np.float32)}, os.path.join(folder, PROTOTYPES_FILE))
        write_bytes_atomic(os.path.join(folder, SETTINGS_FILE), json.dumps(self._settings(), indent=1).encode())

    @classmethod
    def from_pretrained(cls, base_model: BertModel, folder: str | os.PathLike,
                        tokenizer: Callable[[list[str]], dict[str, np.ndarray]]) -> FSCILLearner:
        """The learner ``save_pretrained`` wrote, on a fresh copy of the same base model (frozen, eval mode)."""
        with open(os.path.join(folder, SETTINGS_FILE), encoding="utf-8") as fh:
            settings = json.load(fh)
        kwargs = cls._from_settings(settings)
        learner = cls(base_model, tokenizer, **kwargs)
        learner.model = PeftModel.from_pretrained(learner._network(int(settings["num_outputs"])), folder)
        learner.model.requires_grad_(False)
        learner._frozen = True
        learner.base_classes = int(settings["base_classes"])
        arrays = load_file(os.path.join(folder, PROTOTYPES_FILE))
        learner.classifier.add(arrays["prototypes"], np.rint(arrays["classes"]).astype(np.int64))
        return learner

    @classmethod
    def _from_settings(cls, settings: dict) -> dict:
        c = dict(settings["config"])
        c["target_modules"] = tuple(c["target_modules"])
        return {"config": FSCILConfig(**c), "tricks": Tricks.only(*settings.get("tricks", ()))}


def subnet_step(net: FSCILNetwork, tokens: dict[str, np.ndarray], targets: np.ndarray, labels: np.ndarray,
                loss_fn: CrossEntropyLoss, states: tuple[np.ndarray, np.ndarray] | None = None,
                cache: FrozenBlockCache | None = None) -> float:
    """One forward and backward of the cosine-prototype CE: logits = normalize(pooled) @ targets^T, with
    ``targets`` (K, H) the unit prototypes times the logit scale; gradients accumulate into the trainable
    parameters. Returns the loss. With ``states`` (hidden (B, T, H), mask (B, T)) from ``cache.inputs`` for the
    same rows, only ``cache.top``'s blocks run, forward and backward (the blocks below must be frozen)."""
    if states is not None:
        hidden, mask = states
        pooled = net.pooling(cache.top(hidden, mask), mask)
    else:
        pooled = net.pooled(tokens["input_ids"], tokens["attention_mask"])
    unit, norm = F.l2_normalize_forward(pooled)
    loss = loss_fn.forward(F.linear_forward(unit, targets), labels)
    dunit = loss_fn.backward() @ targets
    dpooled = F.zeros(pooled.shape)
    F.l2_normalize_backward(np.ascontiguousarray(dunit, np.float32), unit, norm, dx=dpooled)
    if states is not None:
        cache.top.backward(net.pooling.backward(dpooled), input_grad=False)
    else:
        net.bert.backward(net.pooling.backward(dpooled))
    return loss
