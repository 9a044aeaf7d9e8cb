"""Trainer callbacks: hooks into :class:`peftc.train.Trainer`, early stopping and a CSV / JSON-lines metrics log.

The Trainer keeps a list of *records*: one per logged training step
``{"step", "epoch", "loss", "lr", "grad_norm"}`` (every ``log_every`` steps and step 1) and one per
evaluation ``{"step", "eval_loss", "eval_accuracy"}``. Every hook receives the trainer first; the
dicts it receives are fresh copies of records (changing them changes nothing in the trainer).

When the Trainer calls each hook (``Trainer.train``):

=====================================  ==============================================================
``on_train_begin(trainer)``            once per ``train()`` call, after a checkpoint was resumed
``on_log(trainer, record)``            each time a record (training or evaluation) joins the history
``on_evaluate(trainer, step, metrics)`` after each evaluation; ``metrics`` is its record
``on_save(trainer, step, path)``       after each checkpoint file is written (periodic and final)
``on_step_end(trainer, step, logs)``   after every optimizer step, once its logging, evaluation and
                                       saving are done; ``logs`` is the step's training record
``on_train_end(trainer)``              once per ``train()`` call that returns normally
=====================================  ==============================================================

A callback stops training by setting ``trainer.should_stop = True``: the Trainer finishes the
current step (its evaluation and checkpoint) and returns. A callback with state that a resumed
run needs (:class:`EarlyStopping`) returns it from ``state_dict``; the Trainer saves it in its
checkpoint and loads it back, so a resumed run stops where the uninterrupted one would.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable

from .io.atomic import write_bytes_atomic

TRAIN_KEYS = ("step", "epoch", "loss", "lr", "grad_norm")
EVAL_KEYS = ("step", "eval_loss", "eval_accuracy")


def is_eval_record(record: dict) -> bool:
    """True for an evaluation record (it has a key starting with ``eval_``), False for a training record.

    Example:
        >>> is_eval_record({"step": 5, "eval_loss": 0.3}), is_eval_record({"step": 5, "loss": 0.4})
        (True, False)
    """
    return any(k.startswith("eval_") for k in record)


def records_to_columns(records: Iterable[dict]) -> dict[str, list]:
    """History records as a plain dict of lists: training columns beside ``step``, evaluation columns beside
    ``eval_step``.

    Training records give the lists ``step``, ``epoch``, ``loss``, ``lr``, ``grad_norm`` (index i of
    each is the i-th logged step); evaluation records give ``eval_step``, ``eval_loss``,
    ``eval_accuracy`` (index j is the j-th evaluation). A key that only some records of a kind have is
    None where it is missing, so every list of a kind has the same length.

    Example:
        >>> records_to_columns([{"step": 1, "epoch": 0, "loss": 2.0, "lr": 0.1, "grad_norm": 1.5},
        ...                     {"step": 1, "eval_loss": 1.9, "eval_accuracy": 0.5}])
        {'step': [1], 'epoch': [0], 'loss': [2.0], 'lr': [0.1], 'grad_norm': [1.5], 'eval_step': [1], \
'eval_loss': [1.9], 'eval_accuracy': [0.5]}
    """
    records = list(records)
    train = [r for r in records if not is_eval_record(r)]
    evals = [{("eval_step" if k == "step" else k): v for k, v in r.items()} for r in records if is_eval_record(r)]
    columns: dict[str, list] = {}
    for rows in (train, evals):
        keys = list(dict.fromkeys(k for r in rows for k in r))
        for k in keys:
            columns[k] = [r.get(k) for r in rows]
    return columns


class Callback:
    """Base class of Trainer callbacks: every hook is a no-op; override the ones you need.

    See the module docstring for when each hook runs. ``state_dict`` / ``load_state_dict`` carry the
    state a resumed run needs (default: none).

    Example:
        >>> class PrintEval(Callback):
        ...     def on_evaluate(self, trainer, step, metrics):
        ...         print(step, round(metrics["eval_accuracy"], 3))
        >>> # Trainer(model, config, train_data, eval_data, callbacks=[PrintEval()]).train()
    """

    def on_train_begin(self, trainer) -> None:
        """Called once at the start of ``Trainer.train`` (after resuming a checkpoint)."""

    def on_step_end(self, trainer, step: int, logs: dict) -> None:
        """Called after every optimizer step; ``logs`` = {"step", "epoch", "loss", "lr", "grad_norm"}."""

    def on_log(self, trainer, record: dict) -> None:
        """Called when ``record`` (a training or an evaluation record) is appended to the history."""

    def on_evaluate(self, trainer, step: int, metrics: dict) -> None:
        """Called after each evaluation; ``metrics`` = {"step", "eval_loss", "eval_accuracy"}."""

    def on_save(self, trainer, step: int, path: str) -> None:
        """Called after the checkpoint at ``path`` was written."""

    def on_train_end(self, trainer) -> None:
        """Called when ``Trainer.train`` returns normally."""

    def state_dict(self) -> dict:
        """JSON-serialisable state saved in Trainer checkpoints (only when not empty)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""


class EarlyStopping(Callback):
    """Stop training when an evaluation metric has not improved for ``patience`` evaluations in a row.

    ``metric`` is a key of the evaluation record (``"eval_loss"`` or ``"eval_accuracy"``); ``mode``
    is ``"min"`` (lower is better) or ``"max"``. An evaluation improves when it beats the best so far
    by more than ``min_delta``; a NaN value never improves. After ``patience`` evaluations without an
    improvement the callback sets ``trainer.should_stop``. ``best``, ``best_step`` and
    ``stopped_step`` tell what happened; they travel in the Trainer's checkpoints, so a resumed run
    stops at the same step, and a checkpoint of a stopped run does not start again. A run started
    from step 0 resets them.

    Example:
        >>> stopper = EarlyStopping("eval_accuracy", patience=2, mode="max")
        >>> # Trainer(model, config, train_data, eval_data, callbacks=[stopper]).train()
        >>> # stopper.stopped_step, stopper.best_step, stopper.best
    """

    def __init__(self, metric: str = "eval_loss", patience: int = 3, mode: str = "min",
                 min_delta: float = 0.0) -> None:
        if not isinstance(metric, str) or not metric.startswith("eval_"):
            raise ValueError(f"EarlyStopping: metric must name an evaluation value such as 'eval_loss' or "
                             f"'eval_accuracy', got {metric!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"EarlyStopping: patience must be an int >= 1, got {patience!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}")
        if not (isinstance(min_delta, (int, float)) and math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"EarlyStopping: min_delta must be a finite number >= 0, got {min_delta!r}")
        self.metric, self.patience, self.mode, self.min_delta = metric, patience, mode, float(min_delta)
        self._reset()

    def _reset(self) -> None:
        self.best: float | None = None
        self.best_step: int | None = None
        self.wait = 0
        self.stopped_step: int | None = None

    def on_train_begin(self, trainer) -> None:
        if trainer.eval_data is None:
            raise ValueError("EarlyStopping needs eval_data: the Trainer was given none, so nothing is evaluated")
        if trainer.global_step == 0:
            self._reset()
        if self.stopped_step is not None:
            trainer.should_stop = True

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_evaluate(self, trainer, step: int, metrics: dict) -> None:
        if self.metric not in metrics:
            raise KeyError(f"EarlyStopping: metric {self.metric!r} is not in the evaluation "
                           f"(keys: {sorted(k for k in metrics if k != 'step')})")
        value = float(metrics[self.metric])
        if self._improves(value):
            self.best, self.best_step, self.wait = value, int(step), 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_step = int(step)
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "wait": self.wait, "stopped_step": self.stopped_step}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state["best"], state["best_step"]
        self.wait, self.stopped_step = state["wait"], state["stopped_step"]


_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
_INT_KEYS = ("step", "epoch")


def _plain(value):
    """A record value as a plain int / float / str for the log (NumPy scalars included)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
        return int(value)
    return float(value)


class MetricsLogger(Callback):
    """Write the Trainer's history, one record per row, to a CSV or JSON-lines file as training runs.

    ``format`` is ``"csv"`` or ``"jsonl"``; by default it comes from the file suffix (``.csv``;
    ``.jsonl``, ``.json``, ``.ndjson``). At the start of ``train()`` the file is rewritten atomically
    with the records the trainer already holds (none for a fresh run, those up to the checkpoint for a
    resumed one, so steps replayed after a crash are not logged twice). Each later record is
    appended with one ``write`` of the whole line to a file opened in append mode: the row reaches
    the operating system before training goes on, and a crash leaves complete rows only (a reader,
    :func:`read_metrics`, also skips a last line without its newline). ``fsync=True`` also forces each
    row to disk.

    A CSV file has the columns ``fields`` (default: the training and evaluation keys); a row leaves
    the cells of the other kind empty. A record with a key outside ``fields`` raises ``ValueError``
    (use JSON lines for free-form records).

    Example:
        >>> logger = MetricsLogger("run/metrics.csv")
        >>> # Trainer(model, config, train_data, eval_data, callbacks=[logger]).train()
        >>> # read_metrics("run/metrics.csv")["loss"]  # the training curve
    """

    FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "eval_loss", "eval_accuracy")

    def __init__(self, path: str | os.PathLike, format: str | None = None, fields: Iterable[str] | None = None,
                 fsync: bool = False) -> None:
        self.path = os.fspath(path)
        if format is None:
            suffix = os.path.splitext(self.path)[1].lower()
            if suffix not in _FORMATS:
                raise ValueError(f"MetricsLogger: cannot tell the format of {self.path!r} from its suffix "
                                 f"{suffix!r}; pass format='csv' or format='jsonl'")
            format = _FORMATS[suffix]
        if format not in ("csv", "jsonl"):
            raise ValueError(f"MetricsLogger: format must be 'csv' or 'jsonl', got {format!r}")
        self.format = format
        self.fields = tuple(self.FIELDS if fields is None else fields)
        if not self.fields or "step" not in self.fields or len(set(self.fields)) != len(self.fields):
            raise ValueError(f"MetricsLogger: fields must be distinct names including 'step', got {self.fields}")
        self.fsync = bool(fsync)

    def _line(self, record: dict) -> bytes:
        # keys in ``fields`` order, then the others sorted: a record restored from a checkpoint (whose
        # header sorts keys) gives the same line as the original
        keys = [k for k in self.fields if k in record] + sorted(set(record) - set(self.fields))
        record = {k: _plain(record[k]) for k in keys}
        if self.format == "jsonl":
            return (json.dumps(record) + "\n").encode()
        extra = sorted(set(record) - set(self.fields))
        if extra:
            raise ValueError(f"MetricsLogger: record keys {extra} are not CSV fields {list(self.fields)}; "
                             f"pass fields=... or log JSON lines")
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(["" if record.get(k) is None else record[k]
                                                       for k in self.fields])
        return buf.getvalue().encode()

    def _header(self) -> bytes:
        if self.format == "jsonl":
            return b""
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(self.fields)
        return buf.getvalue().encode()

    def on_train_begin(self, trainer) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        write_bytes_atomic(self.path, self._header() + b"".join(self._line(r) for r in trainer.log_history))

    def on_log(self, trainer, record: dict) -> None:
        line = self._line(record)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)


def _complete_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8", newline="") as fh:
        text = fh.read()
    lines = text.split("\n")
    return lines[:-1]  # the last piece is "" after a final newline, or an incomplete row


def _number(key: str, text: str):
    if text == "":
        return None
    return int(text) if key in _INT_KEYS else float(text)


def read_metrics(path: str | os.PathLike) -> dict[str, list]:
    """Read a :class:`MetricsLogger` file back as a dict of lists, the layout of ``Trainer.history``.

    The format comes from the suffix as in :class:`MetricsLogger`. A last line without its newline
    (a row cut by a crash) is skipped; a complete row that does not parse raises ``ValueError``
    naming the file and the line.

    Example:
        >>> # log = read_metrics("run/metrics.csv")
        >>> # plt.plot(log["step"], log["loss"]); plt.plot(log["eval_step"], log["eval_loss"])
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _FORMATS:
        raise ValueError(f"read_metrics: cannot tell the format of {path!r} from its suffix {suffix!r}")
    lines = _complete_lines(path)
    records: list[dict] = []
    if _FORMATS[suffix] == "jsonl":
        for i, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"read_metrics: {path} line {i} is not JSON: {e}") from e
            if not isinstance(record, dict):
                raise ValueError(f"read_metrics: {path} line {i} is a {type(record).__name__}, not an object")
            records.append(record)
        return records_to_columns(records)
    if not lines:
        return {}
    rows = list(csv.reader(lines))
    header = rows[0]
    for i, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise ValueError(f"read_metrics: {path} line {i} has {len(row)} cells, the header has {len(header)}")
        try:
            record = {k: _number(k, v) for k, v in zip(header, row)}
        except ValueError as e:
            raise ValueError(f"read_metrics: {path} line {i}: {e}") from e
        records.append({k: v for k, v in record.items() if v is not None})
    return records_to_columns(records)
