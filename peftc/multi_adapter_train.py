"""MultiAdapterTrainer: several adapters trained at once on one frozen base model, one batch for all.

Each step takes the next batch of every adapter's own data, stacks them along the batch axis and runs
one forward and one backward of the model with ``adapter_names`` (a mixed-adapter batch): every frozen
linear layer makes one GEMM over all N*B rows instead of N GEMMs over B rows, and the adapters' products
run in the same kernel call, grouped by adapter (:func:`peftc.functional.lora_mixed_forward`); SoRA, Hydra
and Bone / MiSS layers run each adapter's own kernels on its rows (:mod:`peftc.nn.adapter_groups`). The base
activations of different adapters' rows differ after the first adapted layer, so what is shared is the
frozen weights' pass, not the activations: one set of per-call costs and bigger, more efficient GEMMs.
Adapters trained on the same batches (a hyperparameter sweep) share more: the identical rows run the frozen
blocks below the adapters, and the query, key and value products of the first adapted block, once
(:mod:`peftc.nn.shared_rows`). :func:`peftc.multi_adapter_bound.multi_adapter_work` counts what can be shared
and gives the most that training together can gain.
The step runs on the real tokens only (a BERT encoder in training mode packs its batch, see
:meth:`peftc.models.BertModel.forward`; each token runs its row's adapter), so stacking batches of
different widths, and padding them to the widest, costs no padded rows in the encoder's products.

Each adapter keeps what training it alone with :class:`peftc.train.Trainer` gives it: its data order
(its config's seed), its loss (the mean over its own rows; its modules_to_save copy as its head), its
AdamW state (SoRA: its gates in their own proximal group, as :class:`peftc.tuners.sora.SoraTrainer`),
learning-rate schedule and gradient clipping, its evaluations, callbacks and history. With
dropout off, the adapters end where separate runs would (up to float32 rounding): their parameters are
disjoint and the base is frozen, so the gradient of the summed losses is each adapter's own.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .callbacks import Callback
from .data.batching import num_rows, take
from .nn.loss import CrossEntropyLoss
from .train import Trainer, TrainingConfig, progress_disabled
from .nn import SoraLinear
from .tuners.bone_config import BoneConfig
from .tuners.peft_model import PeftModel
from .tuners.sora import use_sparse_adamw
from .tuners.sora_config import SoraConfig


@dataclass
class AdapterTask:
    """One adapter of a :class:`MultiAdapterTrainer` run: its name in the model, its data and its settings.

    Example:
        >>> import numpy as np
        >>> from peftc import AdapterTask, TrainingConfig
        >>> train = {"input_ids": np.array([[2, 7, 3], [2, 5, 3]]), "attention_mask": np.ones((2, 3), np.int64),
        ...          "labels": np.array([0, 1])}
        >>> val = {"input_ids": np.array([[2, 6, 3]]), "attention_mask": np.ones((1, 3), np.int64),
        ...        "labels": np.array([1])}
        >>> task = AdapterTask("nouns", train, TrainingConfig(learning_rate=1e-3, max_steps=200), val)
        >>> task.adapter_name, task.config.max_steps
        ('nouns', 200)
    """

    adapter_name: str
    train_data: dict[str, np.ndarray]
    config: TrainingConfig = field(default_factory=TrainingConfig)
    eval_data: dict[str, np.ndarray] | None = None
    callbacks: Sequence[Callback] = ()


class _AdapterTrainer(Trainer):
    """A Trainer whose forwards run one adapter of a multi-adapter model (evaluation, prediction)."""

    def __init__(self, model: PeftModel, task: AdapterTask, loss_fn) -> None:
        super().__init__(model, task.config, task.train_data, task.eval_data, loss_fn, task.callbacks)
        self.adapter_name = task.adapter_name

    def _forward(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        keys = self.config.input_keys
        names = [self.adapter_name] * num_rows(batch)
        if keys is None:
            return self.model.forward(batch, adapter_names=names)
        return self.model.forward(*[batch[k] for k in keys], adapter_names=names)


class MultiAdapterTrainer:
    """Train the adapters of ``tasks`` together on ``model`` (a :class:`PeftModel` holding all of them: LoRA, or
    SoRA, Hydra or Bone / MiSS adapters).

    ``trainers[name]`` is each adapter's :class:`peftc.train.Trainer` (its optimizer, schedule, ``history``,
    ``evaluate``); ``train()`` runs until every adapter has made its steps (an adapter that is done, or that
    a callback stopped, leaves the batch). ``loss_fn`` (default :class:`peftc.nn.CrossEntropyLoss`) is copied
    per adapter; ``callbacks`` are added to every adapter's Trainer. Requirements: the adapters' outputs
    have one shape (the same number of classes), they share ``input_keys`` and ``label_key``, none has
    dropout (mixed batches train without it), the configs train no base bias, and a run is not
    checkpointed (``output_dir`` unset; save the adapters with ``model.save_pretrained``). Integer (B, T)
    arrays of different widths are right-padded with 0 (the padding token id; mask 0) to stack the batches;
    a packing encoder (BERT in training mode) then computes the real tokens only.

    Example:
        >>> import numpy as np
        >>> from peftc import AdapterTask, LoraConfig, MultiAdapterTrainer, TrainingConfig, get_peft_model
        >>> from peftc.models import BertConfig, BertModel, SentenceClassifier
        >>> bert = BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
        ...                                         num_attention_heads=2, intermediate_size=16))
        >>> base = SentenceClassifier(bert, num_labels=2)
        >>> model = get_peft_model(base, LoraConfig(r=8, target_modules=["query", "value"]), adapter_name="a")
        >>> model.add_adapter("b", LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
        >>> rng = np.random.default_rng(0)
        >>> def data(n):   # n random 5-token texts with random labels
        ...     return {"input_ids": rng.integers(1, 50, (n, 5)), "attention_mask": np.ones((n, 5), np.int64),
        ...             "labels": rng.integers(0, 2, n)}
        >>> data_a, data_b = data(8), data(6)
        >>> config_a = TrainingConfig(learning_rate=1e-3, batch_size=4, max_steps=3, progress=False)
        >>> config_b = TrainingConfig(learning_rate=3e-4, batch_size=4, max_steps=2, progress=False)
        >>> tasks = [AdapterTask("a", data_a, config_a), AdapterTask("b", data_b, config_b)]
        >>> trainer = MultiAdapterTrainer(model, tasks)
        >>> histories = trainer.train()          # {adapter: its Trainer's history}
        >>> {name: t.global_step for name, t in trainer.trainers.items()}   # each adapter made its own steps
        {'a': 3, 'b': 2}
    """

    def __init__(self, model: PeftModel, tasks: Sequence[AdapterTask], loss_fn=None,
                 callbacks: Iterable[Callback] | None = None) -> None:
        if not isinstance(model, PeftModel):
            raise TypeError(f"MultiAdapterTrainer trains the adapters of a peftc PeftModel, got {type(model).__name__}")
        tasks = list(tasks)
        if not tasks or not all(isinstance(t, AdapterTask) for t in tasks):
            raise TypeError("tasks must be a non-empty list of AdapterTask")
        names = [t.adapter_name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"each adapter trains once: tasks name {names}")
        for t in tasks:
            _check_trainable(model, t.adapter_name)
            if t.config.output_dir is not None:
                raise ValueError(f"adapter {t.adapter_name!r}: MultiAdapterTrainer writes no checkpoints; leave "
                                 f"output_dir unset and save the adapters with model.save_pretrained")
        shared = {(t.config.input_keys, t.config.label_key) for t in tasks}
        if len(shared) > 1:
            raise ValueError(f"the adapters' configs must share input_keys and label_key, got {sorted(shared, key=str)}")
        self.model = model
        self.tasks = tasks
        base_loss = loss_fn if loss_fn is not None else CrossEntropyLoss()
        self.trainers: dict[str, _AdapterTrainer] = {}
        for t in tasks:  # each Trainer takes the parameters that are trainable when it is made: its adapter's
            self._train_only(t.adapter_name)
            trainer = _AdapterTrainer(model, t, copy.deepcopy(base_loss))
            config = model.peft_config[t.adapter_name]
            if isinstance(config, SoraConfig):  # SoraTrainer's optimizer, for this adapter's gates
                use_sparse_adamw(trainer, [m.lora_adapters[t.adapter_name].lora_gate for _, m in model.named_modules()
                                           if isinstance(m, SoraLinear) and t.adapter_name in m.lora_adapters], config)
            self.trainers[t.adapter_name] = trainer
        for trainer in self.trainers.values():
            for p in trainer.params:
                p.requires_grad = True
        for callback in callbacks or ():
            for trainer in self.trainers.values():
                trainer.add_callback(callback)

    def _train_only(self, adapter_name: str) -> None:
        for p in self.model.parameters():
            p.requires_grad = False
        for p in self.model.get_adapter_parameters(adapter_name):
            p.requires_grad = True

    @property
    def histories(self) -> dict[str, dict[str, list]]:
        """Each adapter's history (:attr:`peftc.train.Trainer.history`), by adapter name."""
        return {name: t.history for name, t in self.trainers.items()}

    def training_step(self, batches: dict[str, dict[str, np.ndarray]]) -> dict[str, tuple[float, float, float]]:
        """One forward and backward of all the adapters' batches together ({adapter: batch}), then each adapter's
        own clip, AdamW and schedule step. Returns {adapter: (loss, gradient norm, learning rate)}."""
        trainers = [self.trainers[name] for name in batches]
        self.model.train()
        for trainer in trainers:
            for p in trainer.params:
                if p.grad is not None:
                    p.grad.fill(0.0)
        parts = list(batches.values())
        joint = stack_batches(parts)
        names = [name for name, b in batches.items() for _ in range(num_rows(b))]
        cfg = trainers[0].config
        if cfg.input_keys is None:
            out = self.model.forward(joint, adapter_names=names)
        else:
            out = self.model.forward(*[joint[k] for k in cfg.input_keys], adapter_names=names)
        dout = np.empty_like(out)
        losses, start = [], 0
        for trainer, batch in zip(trainers, parts):
            rows = slice(start, start + num_rows(batch))
            start = rows.stop
            loss = trainer.loss_fn.forward(out[rows], batch[cfg.label_key])
            if not np.isfinite(loss):
                raise FloatingPointError(f"adapter {trainer.adapter_name!r}: training loss is {loss} at step "
                                         f"{trainer.global_step}")
            dout[rows] = trainer.loss_fn.backward()
            losses.append(loss)
        self.model.backward(dout)
        return {t.adapter_name: (loss, *t.apply_gradients()) for t, loss in zip(trainers, losses)}

    def train(self) -> dict[str, dict[str, list]]:
        """Train every adapter to its ``total_steps`` (or until a callback stops it); returns :attr:`histories`."""
        trainers = list(self.trainers.values())
        rows_of: dict[str, Iterator[np.ndarray]] = {t.adapter_name: t.batch_rows() for t in trainers}
        for t in trainers:
            t.should_stop = False
            t._call("on_train_begin")
        total = sum(t.total_steps - t.global_step for t in trainers)
        bar = tqdm(total=total, disable=progress_disabled(all(t.config.progress for t in trainers)),
                   desc=f"train {len(trainers)} adapters", dynamic_ncols=True)
        try:
            while True:
                active = [t for t in trainers if t.global_step < t.total_steps and not t.should_stop]
                if not active:
                    break
                batches = {t.adapter_name: take(t.train_data, next(rows_of[t.adapter_name])) for t in active}
                results = self.training_step(batches)
                for t in active:
                    t.end_step(*results[t.adapter_name])
                bar.update(len(active))
        finally:
            bar.close()
        for t in trainers:
            if t.batch_in_epoch == len(t.sampler):  # as Trainer.train: a run that ends an epoch stands at the next
                t.epoch += 1
                t.batch_in_epoch = 0
            t.end_training()
        return self.histories


def _check_trainable(model: PeftModel, adapter_name: str) -> None:
    config = model.peft_config.get(adapter_name)
    if config is None:
        raise ValueError(f"AdapterTask.adapter_name={adapter_name!r} is not an adapter of the model; it has "
                         f"{list(model.peft_config)}")
    if config.bias != "none":
        raise ValueError(f"adapter {adapter_name!r} has bias={config.bias!r}: the base biases are shared by all the "
                         f"adapters, so none of them can train them here")
    field = "miss_dropout" if isinstance(config, BoneConfig) else "lora_dropout"
    if getattr(config, field) > 0.0:
        raise ValueError(f"adapter {adapter_name!r} has {field}={getattr(config, field)}: mixed-adapter batches "
                         f"train without dropout; set {field}=0")


def stack_batches(batches: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The batches' arrays stacked along axis 0, key by key; 2-D integer arrays of different widths (token ids,
    masks) are right-padded with 0 to the widest.

    Example:
        >>> stack_batches([{"input_ids": np.ones((2, 3), np.int64)}, {"input_ids": np.ones((1, 5), np.int64)}]
        ...               )["input_ids"].shape
        (3, 5)
    """
    keys = list(batches[0])
    if any(list(b) != keys for b in batches):
        raise ValueError(f"the adapters' batches have different keys: {[sorted(b) for b in batches]}")
    out = {}
    for key in keys:
        arrays = [b[key] for b in batches]
        if len({a.shape[1:] for a in arrays}) > 1:
            if not all(a.ndim == 2 and np.issubdtype(a.dtype, np.integer) for a in arrays):
                raise ValueError(f"batches' {key!r} arrays have shapes {[a.shape for a in arrays]}: only 2-D "
                                 f"integer arrays (token ids, masks) of different widths can be stacked (padded)")
            width = max(a.shape[1] for a in arrays)
            arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays]
        out[key] = np.ascontiguousarray(np.concatenate(arrays))
    return out
