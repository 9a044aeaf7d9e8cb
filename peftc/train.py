"""Trainer: seeded minibatch training of a peftc Module with AdamW, warm-up/decay, clipping and exact resume.

Interface the model must follow
-------------------------------
Data are dicts of NumPy arrays with a common first axis, e.g. ``{"x": (N, 784) float32,
"labels": (N,) int64}`` or ``{"input_ids": (N, T) int64, "attention_mask": (N, T), "labels": (N,)}``.
A batch is the same dict restricted to some rows. Each training step runs

    output = model.forward(batch)                     # input_keys=None: the whole batch dict
    output = model.forward(*[batch[k] for k in input_keys])   # otherwise
    loss = loss_fn.forward(output, batch[label_key])  # a float
    model.backward(loss_fn.backward())                # accumulates into Parameter.grad

then clips the global gradient norm of the trainable parameters (``requires_grad``), takes an
AdamW step and advances the learning-rate schedule. ``loss_fn`` defaults to
:class:`peftc.nn.CrossEntropyLoss` (output (N, C) logits, labels (N,) int64). Evaluation reports
the mean loss and the accuracy of ``argmax(output, -1)`` in ``model.eval()`` mode.

Reproducibility
---------------
A run is a function of the model's initial state, the data and :class:`TrainingConfig`: the
data order comes from (seed, epoch) (:mod:`peftc.data.batching`), and every
:class:`peftc.Generator` held by a module (dropout streams) is saved with its offset. A
checkpoint holds the trainable parameters, the AdamW moments and step counts, the schedule, the
generators and the position in the data order, so a resumed run continues bit for bit as the
uninterrupted one would have.

Hooks and logs
--------------
``callbacks`` (:mod:`peftc.callbacks`) are called at the start and end of ``train()``, after every
step, log record, evaluation and checkpoint; :class:`peftc.callbacks.EarlyStopping` and
:class:`peftc.callbacks.MetricsLogger` (CSV / JSON lines) are two of them. ``Trainer.log_history``
is the list of records (what ``train()`` returns and checkpoints keep); ``Trainer.history`` is the
same as a plain dict of lists. The progress bar shows when ``TrainingConfig.progress`` is true and
the environment variable ``TQDM_DISABLE`` is unset or false (see :func:`progress_disabled`).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from . import functional as F
from .callbacks import Callback, records_to_columns
from .checkpoint import load_npz, save_npz_atomic
from .data.batching import BatchSampler, num_rows, take
from .nn.loss import CrossEntropyLoss
from .nn.module import Module, Parameter
from .optim import AdamW, clip_grad_norm_
from .random import Generator
from .schedule import LinearWarmupSchedule


@dataclass
class TrainingConfig:
    """Hyper-parameters of a run. ``max_steps`` (if set) overrides ``num_epochs``.

    ``warmup_steps`` wins over ``warmup_ratio`` when both are given. ``eval_every`` / ``save_every``
    are in optimizer steps; ``eval_every=None`` evaluates at the end of each epoch, and the last
    step is always evaluated (when there are eval data). ``save_every=None`` saves only at the end
    (when ``output_dir`` is set).
    """

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    batch_size: int = 32
    eval_batch_size: int = 256
    num_epochs: int = 1
    max_steps: int | None = None
    warmup_steps: int | None = None
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0
    drop_last: bool = False
    eval_every: int | None = None
    save_every: int | None = None
    log_every: int = 10
    output_dir: str | None = None
    progress: bool = True
    label_key: str = "labels"
    input_keys: tuple[str, ...] | None = None


CHECKPOINT_NAME = "checkpoint.npz"
_FALSE_WORDS = ("", "0", "false", "no", "off")


def progress_disabled(progress: bool) -> bool:
    """True when a progress bar should stay hidden: ``progress`` is false or ``TQDM_DISABLE`` is set to a true value.

    ``TQDM_DISABLE`` counts as false when unset, empty, ``0``, ``false``, ``no`` or ``off`` (any
    case), and as true otherwise. It is read at each call, so it may be set after ``import peftc``.
    (tqdm reads it once at import and would take ``TQDM_DISABLE=0`` as true; a bar given an explicit
    ``disable=`` ignores it, hence this function.)

    Example:
        >>> os.environ["TQDM_DISABLE"] = "1"; progress_disabled(True)
        True
        >>> os.environ["TQDM_DISABLE"] = "0"; progress_disabled(True), progress_disabled(False)
        (False, True)
        >>> del os.environ["TQDM_DISABLE"]
    """
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__} {progress!r}")
    return not progress or os.environ.get("TQDM_DISABLE", "").strip().lower() not in _FALSE_WORDS


def named_generators(model: Module) -> dict[str, Generator]:
    """Every :class:`Generator` held as an attribute of a module, by "module.attribute" name."""
    found: dict[str, Generator] = {}
    for mod_name, mod in model.named_modules():
        for attr, value in vars(mod).items():
            if isinstance(value, Generator):
                found[f"{mod_name}.{attr}" if mod_name else attr] = value
    return found


class Trainer:
    """Train ``model`` on ``train_data`` (a dict of arrays); see the module docstring for the interface.

    ``callbacks`` is a sequence of :class:`peftc.callbacks.Callback` (more can be added with
    :meth:`add_callback`).

    Example:
        >>> from peftc.callbacks import EarlyStopping, MetricsLogger
        >>> # trainer = Trainer(model, TrainingConfig(num_epochs=5, eval_every=50), train, val,
        >>> #                   callbacks=[EarlyStopping("eval_loss", patience=3), MetricsLogger("log.csv")])
        >>> # trainer.train(); trainer.history["loss"]
    """

    def __init__(self, model: Module, config: TrainingConfig, train_data: dict[str, np.ndarray],
                 eval_data: dict[str, np.ndarray] | None = None, loss_fn=None,
                 callbacks: Iterable[Callback] | None = None) -> None:
        self.model = model
        self.config = config
        self.train_data = train_data
        self.eval_data = eval_data
        self.loss_fn = loss_fn if loss_fn is not None else CrossEntropyLoss()
        if config.label_key not in train_data:
            raise KeyError(f"train_data has no label array {config.label_key!r} (keys: {sorted(train_data)})")
        self.sampler = BatchSampler(num_rows(train_data), config.batch_size, config.seed, shuffle=True,
                                    drop_last=config.drop_last)
        self.named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.named_params:
            raise ValueError("the model has no trainable parameter (requires_grad=True)")
        self.total_steps = config.max_steps if config.max_steps is not None else config.num_epochs * len(self.sampler)
        warmup = config.warmup_steps if config.warmup_steps is not None else int(config.warmup_ratio * self.total_steps)
        self.optimizer = AdamW(self.params, lr=config.learning_rate, betas=config.betas, eps=config.eps,
                               weight_decay=config.weight_decay)
        self.scheduler = LinearWarmupSchedule(self.optimizer, warmup, self.total_steps)
        self.global_step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.log_history: list[dict] = []
        self.should_stop = False
        self.callbacks: list[Callback] = []
        for callback in callbacks or ():
            self.add_callback(callback)

    def add_callback(self, callback: Callback) -> None:
        """Append ``callback`` (a :class:`peftc.callbacks.Callback` instance) to the ones called during training.

        Example:
            >>> from peftc.callbacks import MetricsLogger
            >>> # trainer.add_callback(MetricsLogger("metrics.jsonl"))
        """
        if not isinstance(callback, Callback):
            raise TypeError(f"callbacks must be peftc.callbacks.Callback instances, got {type(callback).__name__} "
                            f"{callback!r}")
        self.callbacks.append(callback)

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    @property
    def history(self) -> dict[str, list]:
        """The history as a plain dict of lists (:func:`peftc.callbacks.records_to_columns` of ``log_history``).

        ``step``, ``epoch``, ``loss``, ``lr``, ``grad_norm``: one entry per logged training step;
        ``eval_step``, ``eval_loss``, ``eval_accuracy``: one entry per evaluation.
        """
        return records_to_columns(self.log_history)

    def _log(self, record: dict) -> None:
        self.log_history.append(record)
        self._call("on_log", dict(record))

    @property
    def params(self) -> list[Parameter]:
        return [p for _, p in self.named_params]

    # -- one step ----------------------------------------------------------------------------------
    def _forward(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        keys = self.config.input_keys
        return self.model.forward(batch) if keys is None else self.model.forward(*[batch[k] for k in keys])

    def training_step(self, batch: dict[str, np.ndarray]) -> tuple[float, float, float]:
        """Forward, backward, clip, AdamW step, schedule step.

        Returns (loss, gradient norm before clipping, learning rate of the first group used by the step).
        """
        self.model.train()
        for p in self.params:
            if p.grad is not None:
                p.grad.fill(0.0)
        loss = self.loss_fn.forward(self._forward(batch), batch[self.config.label_key])
        if not np.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss} at step {self.global_step}")
        self.model.backward(self.loss_fn.backward())
        norm, lr = self.apply_gradients()
        return loss, norm, lr

    def apply_gradients(self) -> tuple[float, float]:
        """The step's end once the gradients are in: clip them, AdamW step, schedule step.

        Returns (gradient norm before clipping, learning rate of the first group used by the step).
        """
        if self.config.max_grad_norm is not None:
            norm = clip_grad_norm_(self.params, self.config.max_grad_norm)
        else:
            norm = float(np.sqrt(sum(F.sumsq(p.grad) for p in self.params if p.grad is not None)))
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        return norm, lr

    # -- evaluation --------------------------------------------------------------------------------
    def predict(self, data: dict[str, np.ndarray]) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """(output, batch) over ``data`` in order, in eval mode (the mode is restored afterwards)."""
        was_training = self.model.training
        self.model.eval()
        try:
            sampler = BatchSampler(num_rows(data), self.config.eval_batch_size, shuffle=False)
            for rows in sampler.batches(0):
                batch = take(data, rows)
                yield self._forward(batch), batch
        finally:
            self.model.train(was_training)

    def evaluate(self, data: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        """{"loss", "accuracy", "count"} over ``data`` (default: the eval data)."""
        data = self.eval_data if data is None else data
        if data is None:
            raise ValueError("evaluate: no data given and the Trainer has no eval_data")
        total_loss, correct, count = 0.0, 0, 0
        for out, batch in self.predict(data):
            labels = batch[self.config.label_key]
            counted = labels >= 0
            n = int(counted.sum())
            if n:
                total_loss += self.loss_fn.forward(out, labels) * n
                correct += int((np.argmax(out, axis=-1)[counted] == labels[counted]).sum())
                count += n
        return {"loss": total_loss / max(count, 1), "accuracy": correct / max(count, 1), "count": count}

    # -- the loop ----------------------------------------------------------------------------------
    def train(self, resume_from: str | os.PathLike | None = None, until_step: int | None = None) -> list[dict]:
        """Run to ``total_steps`` (or stop after ``until_step``, saving a checkpoint, as if interrupted).

        ``resume_from`` is a checkpoint file written by this class. A callback may end the run
        early by setting ``should_stop`` (:class:`peftc.callbacks.EarlyStopping`). Returns
        ``log_history``: one dict per logged step ({"step", "epoch", "loss", "lr", "grad_norm"}) and
        per evaluation ({"step", "eval_loss", "eval_accuracy"}); ``history`` has the same as lists.
        """
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        cfg = self.config
        stop = self.total_steps if until_step is None else min(until_step, self.total_steps)
        self.should_stop = False
        self._call("on_train_begin")
        bar = tqdm(total=self.total_steps, initial=self.global_step, disable=progress_disabled(cfg.progress),
                   desc="train", dynamic_ncols=True)
        try:
            for rows in self.batch_rows():
                if self.global_step >= stop or self.should_stop:
                    break
                self.end_step(*self.training_step(take(self.train_data, rows)), bar)
        finally:
            bar.close()
        if self.batch_in_epoch == len(self.sampler):  # a run that ends with an epoch stands at the next one
            self.epoch += 1
            self.batch_in_epoch = 0
        self.end_training()
        return self.log_history

    def batch_rows(self) -> Iterator[np.ndarray]:
        """The rows of each training batch from the current position on, epoch after epoch (endless); the
        position advances as :meth:`end_step` counts the steps."""
        while True:
            for rows in self.sampler.batches(self.epoch, self.batch_in_epoch):
                yield rows
            if self.batch_in_epoch == len(self.sampler):
                self.epoch += 1
                self.batch_in_epoch = 0

    def end_step(self, loss: float, norm: float, lr: float, bar=None) -> None:
        """Count a finished step, then log, evaluate, checkpoint and call ``on_step_end`` as the loop says."""
        cfg = self.config
        self.global_step += 1
        self.batch_in_epoch += 1
        if bar is not None:
            bar.update(1)
        logs = {"step": self.global_step, "epoch": self.epoch, "loss": loss, "lr": lr, "grad_norm": norm}
        if self.global_step % cfg.log_every == 0 or self.global_step == 1:
            self._log(dict(logs))
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        end_of_epoch = self.batch_in_epoch == len(self.sampler)
        if self.eval_data is not None and (
                (cfg.eval_every is not None and self.global_step % cfg.eval_every == 0)
                or (cfg.eval_every is None and end_of_epoch)):
            self._log_eval()
        if cfg.output_dir and cfg.save_every and self.global_step % cfg.save_every == 0:
            self._save(os.path.join(cfg.output_dir, CHECKPOINT_NAME))
        self._call("on_step_end", self.global_step, logs)

    def end_training(self) -> None:
        """After the last step: the final evaluation (unless that step had one), the checkpoint, ``on_train_end``."""
        evaluated = any(e["step"] == self.global_step and "eval_accuracy" in e for e in self.log_history)
        if self.global_step >= self.total_steps and self.eval_data is not None and not evaluated:
            self._log_eval()
        if self.config.output_dir:
            self._save(os.path.join(self.config.output_dir, CHECKPOINT_NAME))
        self._call("on_train_end")

    def _log_eval(self) -> None:
        result = self.evaluate()
        record = {"step": self.global_step, "eval_loss": result["loss"], "eval_accuracy": result["accuracy"]}
        self._log(record)
        self._call("on_evaluate", self.global_step, dict(record))

    def _save(self, path: str) -> None:
        self.save_checkpoint(path)
        self._call("on_save", self.global_step, path)

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write the whole training state to ``path`` atomically (see :mod:`peftc.checkpoint`)."""
        arrays: dict[str, np.ndarray] = {f"param/{n}": p.data for n, p in self.named_params}
        opt = self.optimizer.state_dict()
        scalars = []
        for i, s in enumerate(opt["state"]):
            scalars.append({k: v for k, v in s.items() if not isinstance(v, np.ndarray)})
            arrays.update({f"optim/{i}/{k}": v for k, v in s.items() if isinstance(v, np.ndarray)})
        meta = {
            "kind": "trainer",
            "param_names": [n for n, _ in self.named_params],
            "position": {"global_step": self.global_step, "epoch": self.epoch,
                         "batch_in_epoch": self.batch_in_epoch},
            "data": {"rows": self.sampler.n, "batch_size": self.sampler.batch_size, "seed": self.sampler.seed,
                     "drop_last": self.sampler.drop_last, "total_steps": self.total_steps},
            "optimizer": {"scalars": scalars, "param_groups": opt["param_groups"]},
            "scheduler": self.scheduler.state_dict(),
            "generators": {n: g.state_dict() for n, g in named_generators(self.model).items()},
            "history": self.log_history,
            "config": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in dataclasses.asdict(self.config).items()},
        }
        states = {f"{i}.{type(c).__name__}": c.state_dict() for i, c in enumerate(self.callbacks)}
        states = {k: v for k, v in states.items() if v}
        if states:  # without stateful callbacks the file is what it was before callbacks existed
            meta["callbacks"] = states
        save_npz_atomic(path, arrays, meta)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore a state written by :meth:`save_checkpoint` into this trainer and its model."""
        arrays, meta = load_npz(path)
        if meta.get("kind") != "trainer":
            raise ValueError(f"checkpoint {path} is not a Trainer checkpoint (kind {meta.get('kind')!r})")
        names = [n for n, _ in self.named_params]
        if meta["param_names"] != names:
            raise ValueError(f"checkpoint {path} holds trainable parameters {meta['param_names'][:4]}..., "
                             f"this model has {names[:4]}...")
        expect = {"rows": self.sampler.n, "batch_size": self.sampler.batch_size, "seed": self.sampler.seed,
                  "drop_last": self.sampler.drop_last, "total_steps": self.total_steps}
        if meta["data"] != expect:
            raise ValueError(f"checkpoint {path} was written for data/schedule {meta['data']}, this run has {expect}")
        generators = named_generators(self.model)
        if sorted(meta["generators"]) != sorted(generators):
            raise ValueError(f"checkpoint {path} has generators {sorted(meta['generators'])}, "
                             f"the model has {sorted(generators)}")
        for n, p in self.named_params:
            value = arrays[f"param/{n}"]
            if value.shape != p.shape or value.dtype != p.data.dtype:
                raise ValueError(f"checkpoint {path}: {n} is {value.dtype} {value.shape}, "
                                 f"the model has {p.data.dtype} {p.shape}")
            p.data[...] = value
        state = []
        for i, scalars in enumerate(meta["optimizer"]["scalars"]):
            prefix = f"optim/{i}/"
            state.append({**scalars, **{k[len(prefix):]: v.copy() for k, v in arrays.items() if k.startswith(prefix)}})
        groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()}
                  for g in meta["optimizer"]["param_groups"]]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        self.scheduler.load_state_dict(meta["scheduler"])
        for n, g in generators.items():
            g.load_state_dict(meta["generators"][n])
        pos = meta["position"]
        self.global_step, self.epoch, self.batch_in_epoch = pos["global_step"], pos["epoch"], pos["batch_in_epoch"]
        self.log_history = list(meta["history"])
        saved = meta.get("callbacks", {})
        for i, callback in enumerate(self.callbacks):
            key = f"{i}.{type(callback).__name__}"
            if key in saved:
                callback.load_state_dict(saved[key])
