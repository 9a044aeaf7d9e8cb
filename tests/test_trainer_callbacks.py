"""Trainer hooks: callback order and arguments, early stopping (also across a resume), the CSV / JSON-lines
metrics log, ``Trainer.history`` as a dict of lists, and the progress switch (``progress``, ``TQDM_DISABLE``)."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

import peftc.callbacks as cb_module
import peftc.train as train_module
from peftc import Trainer
from peftc.callbacks import Callback, EarlyStopping, MetricsLogger, read_metrics, records_to_columns
from peftc.checkpoint import load_npz
from peftc.train import progress_disabled
from tests.test_trainer import LoraMLP, _config, _data, _trainable


class Recorder(Callback):
    """Every hook call as (hook name, step or None, a copy of the dict / path it received)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_train_begin(self, trainer):
        self.calls.append(("train_begin", trainer.global_step, None))

    def on_step_end(self, trainer, step, logs):
        assert step == trainer.global_step
        self.calls.append(("step_end", step, dict(logs)))

    def on_log(self, trainer, record):
        self.calls.append(("log", record["step"], dict(record)))

    def on_evaluate(self, trainer, step, metrics):
        self.calls.append(("evaluate", step, dict(metrics)))

    def on_save(self, trainer, step, path):
        assert os.path.exists(path)
        self.calls.append(("save", step, path))

    def on_train_end(self, trainer):
        self.calls.append(("train_end", trainer.global_step, None))

    def named(self, hook: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == hook]


def _trainer(tmp_path, name="run", callbacks=(), eval_data=True, **kw) -> Trainer:
    data = _data(90)
    held_out = _data(30, seed=1) if eval_data else None
    return Trainer(LoraMLP(), _config(tmp_path, name, **kw), data, held_out, callbacks=list(callbacks))


# -- hooks ---------------------------------------------------------------------------------------------
def test_hooks_run_in_order_with_the_records_of_the_history(tmp_path):
    rec = Recorder()
    trainer = _trainer(tmp_path, callbacks=[rec], eval_every=6, log_every=4)
    trainer.train()
    n = trainer.total_steps  # 3 epochs of 12 batches
    assert n == 36
    assert rec.calls[0] == ("train_begin", 0, None) and rec.calls[-1] == ("train_end", n, None)
    steps = rec.named("step_end")
    assert [c[1] for c in steps] == list(range(1, n + 1))
    assert all(set(c[2]) == {"step", "epoch", "loss", "lr", "grad_norm"} for c in steps)
    assert [c[2] for c in rec.named("log")] == trainer.log_history
    evals = rec.named("evaluate")
    assert [c[1] for c in evals] == [6, 12, 18, 24, 30, 36]
    assert [c[2] for c in evals] == [r for r in trainer.log_history if "eval_loss" in r]
    path = os.path.join(tmp_path, "run", "checkpoint.npz")
    assert rec.named("save") == [("save", s, path) for s in (5, 10, 15, 20, 25, 30, 35)] + [("save", 36, path)]
    # within a step: its log and evaluation come before on_step_end
    order = [(c[0], c[1]) for c in rec.calls]
    assert order.index(("evaluate", 6)) < order.index(("step_end", 6)) < order.index(("log", 8))


def test_callbacks_leave_training_and_checkpoints_unchanged(tmp_path):
    plain = _trainer(tmp_path, "plain", eval_every=6)
    plain.train()
    hooked = _trainer(tmp_path, "hooked", callbacks=[Recorder(), MetricsLogger(tmp_path / "m.csv")], eval_every=6)
    hooked.train()
    got, want = _trainable(hooked.model), _trainable(plain.model)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert hooked.log_history == plain.log_history
    arrays_p, meta_p = load_npz(tmp_path / "plain" / "checkpoint.npz")
    arrays_h, meta_h = load_npz(tmp_path / "hooked" / "checkpoint.npz")
    assert "callbacks" not in meta_h  # stateless callbacks add nothing to the file
    meta_p["config"].pop("output_dir"), meta_h["config"].pop("output_dir")
    assert meta_h == meta_p and arrays_h.keys() == arrays_p.keys()
    assert all(np.array_equal(arrays_h[k], arrays_p[k]) for k in arrays_p)


def test_history_is_a_dict_of_lists_aligned_with_the_records(tmp_path):
    trainer = _trainer(tmp_path, eval_every=12, log_every=5)
    returned = trainer.train()
    assert returned is trainer.log_history
    h = trainer.history
    assert isinstance(h, dict) and all(isinstance(v, list) for v in h.values())
    assert list(h) == ["step", "epoch", "loss", "lr", "grad_norm", "eval_step", "eval_loss", "eval_accuracy"]
    assert h["step"] == [1, 5, 10, 15, 20, 25, 30, 35]
    assert h["eval_step"] == [12, 24, 36]
    train_records = [r for r in trainer.log_history if "loss" in r]
    assert h["loss"] == [r["loss"] for r in train_records] and h["lr"] == [r["lr"] for r in train_records]
    assert h["eval_accuracy"] == [r["eval_accuracy"] for r in trainer.log_history if "eval_accuracy" in r]
    # a key only some records of a kind have is None elsewhere, so the lists of a kind stay aligned
    cols = records_to_columns([{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5, "extra": 3.0}])
    assert cols == {"step": [1, 2], "loss": [1.0, 0.5], "extra": [None, 3.0]}


def test_add_callback_rejects_objects_that_are_not_callbacks(tmp_path):
    with pytest.raises(TypeError, match="Callback instances, got type"):
        _trainer(tmp_path, callbacks=[Recorder])  # the class, not an instance
    trainer = _trainer(tmp_path)
    with pytest.raises(TypeError, match="got function"):
        trainer.add_callback(lambda t: None)


# -- early stopping ------------------------------------------------------------------------------------
def _feed(stopper: EarlyStopping, values) -> SimpleNamespace:
    trainer = SimpleNamespace(should_stop=False, eval_data={"x": 1}, global_step=0)
    stopper.on_train_begin(trainer)
    for step, v in enumerate(values, 1):
        stopper.on_evaluate(trainer, step, {"step": step, "eval_loss": v, "eval_accuracy": v})
        if trainer.should_stop:
            break
    return trainer


@pytest.mark.parametrize("mode, values, stop, best_step, best", [
    ("min", [3.0, 2.0, 2.0, 2.4, 1.0], 4, 2, 2.0),     # a tie and 2.4 do not beat 2.0
    ("max", [3.0, 2.0, 2.5, 4.0, 1.0], 3, 1, 3.0),     # 2.0 and 2.5 do not beat 3.0
    ("min", [3.0, 2.0, 1.0, 0.5, 0.25], None, 5, 0.25),  # always improving: never stops
    ("min", [1.0, float("nan"), float("nan")], 3, 1, 1.0),  # NaN never improves
])
def test_early_stopping_counts_evaluations_without_improvement(mode, values, stop, best_step, best):
    stopper = EarlyStopping("eval_loss" if mode == "min" else "eval_accuracy", patience=2, mode=mode)
    trainer = _feed(stopper, values)
    assert trainer.should_stop == (stop is not None)
    assert stopper.stopped_step == stop and stopper.best_step == best_step and stopper.best == best


def test_early_stopping_min_delta_requires_a_large_enough_gain():
    stopper = EarlyStopping("eval_loss", patience=2, min_delta=0.1)
    _feed(stopper, [1.0, 0.95, 0.85, 0.8])  # 0.95 is within 0.1 of 1.0; 0.85 beats it by 0.15
    assert stopper.best_step == 3 and stopper.stopped_step is None and stopper.wait == 1


def test_early_stopping_ends_training_after_the_stopping_evaluation(tmp_path):
    # min_delta=1 on an accuracy: nothing after the first evaluation can improve
    stopper = EarlyStopping("eval_accuracy", patience=2, mode="max", min_delta=1.0)
    rec = Recorder()
    trainer = _trainer(tmp_path, callbacks=[stopper, rec], eval_every=2)
    trainer.train()
    assert trainer.global_step == 6 and stopper.stopped_step == 6 and stopper.best_step == 2
    assert trainer.log_history[-1]["step"] == 6 and "eval_accuracy" in trainer.log_history[-1]
    assert rec.named("save")[-1][1] == 6 and rec.calls[-1] == ("train_end", 6, None)
    arrays, meta = load_npz(tmp_path / "run" / "checkpoint.npz")
    assert meta["position"]["global_step"] == 6
    assert meta["callbacks"] == {"0.EarlyStopping": stopper.state_dict()}
    # resuming the stopped run's checkpoint does not train on
    again = _trainer(tmp_path, callbacks=[EarlyStopping("eval_accuracy", patience=2, mode="max", min_delta=1.0)],
                     eval_every=2)
    again.train(resume_from=tmp_path / "run" / "checkpoint.npz")
    assert again.global_step == 6


@pytest.mark.parametrize("cut", [3, 5])
def test_early_stopping_survives_resume_and_stops_at_the_same_step(tmp_path, cut):
    def stopper():
        return EarlyStopping("eval_accuracy", patience=3, mode="max", min_delta=1.0)

    full = _trainer(tmp_path, "full", callbacks=[stopper()], eval_every=2)
    full.train()
    first = _trainer(tmp_path, "cut", callbacks=[stopper()], eval_every=2)
    first.train(until_step=cut)
    second = _trainer(tmp_path, "cut", callbacks=[stopper()], eval_every=2)
    second.train(resume_from=tmp_path / "cut" / "checkpoint.npz")
    assert full.global_step == second.global_step == 8
    assert second.callbacks[0].state_dict() == full.callbacks[0].state_dict()
    assert second.log_history == full.log_history
    got, want = _trainable(second.model), _trainable(full.model)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_early_stopping_rejects_bad_arguments_and_a_run_without_eval_data(tmp_path):
    for kw, match in [({"metric": "loss"}, "metric"), ({"patience": 0}, "patience"), ({"patience": 1.5}, "patience"),
                      ({"mode": "lower"}, "mode"), ({"min_delta": -1.0}, "min_delta"),
                      ({"min_delta": float("nan")}, "min_delta")]:
        with pytest.raises(ValueError, match=match):
            EarlyStopping(**kw)
    with pytest.raises(ValueError, match="needs eval_data"):
        _trainer(tmp_path, callbacks=[EarlyStopping()], eval_data=False).train()
    with pytest.raises(KeyError, match="eval_f1.*eval_accuracy"):
        _trainer(tmp_path, callbacks=[EarlyStopping("eval_f1")], eval_every=2).train()


# -- the metrics log -----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_metrics_log_reads_back_as_the_trainer_history(tmp_path, suffix):
    path = tmp_path / f"metrics{suffix}"
    trainer = _trainer(tmp_path, callbacks=[MetricsLogger(path)], eval_every=6, log_every=3)
    trainer.train()
    assert read_metrics(path) == trainer.history
    lines = path.read_text().splitlines()
    assert len(lines) == len(trainer.log_history) + (suffix == ".csv")
    if suffix == ".csv":
        assert lines[0] == "step,epoch,loss,lr,grad_norm,eval_loss,eval_accuracy"
    else:
        assert [json.loads(line) for line in lines] == trainer.log_history


class CrashAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, step, logs):
        if step == self.step:
            raise KeyboardInterrupt("simulated crash")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_metrics_log_after_crash_and_resume_equals_the_uninterrupted_log(tmp_path, suffix):
    full_log = tmp_path / f"full{suffix}"
    _trainer(tmp_path, "full", callbacks=[MetricsLogger(full_log)], eval_every=6).train()
    log = tmp_path / f"cut{suffix}"
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path, "cut", callbacks=[MetricsLogger(log), CrashAt(13)], eval_every=6).train()
    assert read_metrics(log)["step"][-1] == 13  # rows past the checkpoint at step 10 were written
    resumed = _trainer(tmp_path, "cut", callbacks=[MetricsLogger(log)], eval_every=6)
    resumed.train(resume_from=tmp_path / "cut" / "checkpoint.npz")
    assert log.read_bytes() == full_log.read_bytes()  # steps 11-13 are not logged twice


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_metrics_log_row_cut_by_a_crash_is_skipped_by_the_reader(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"m{suffix}"
    trainer = _trainer(tmp_path, callbacks=[MetricsLogger(path)], eval_every=6, log_every=5)
    real_write, writes = os.write, []

    def torn_write(fd, data):
        writes.append(bytes(data))
        if len(writes) == 4:  # the fourth row: half of it reaches the file, then the process dies
            real_write(fd, bytes(data)[:len(data) // 2])
            raise KeyboardInterrupt("killed mid-row")
        return real_write(fd, data)

    monkeypatch.setattr(cb_module.os, "write", torn_write)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in writes)  # one whole row per write
    got = read_metrics(path)
    assert got == records_to_columns(trainer.log_history[:3])
    assert not path.read_bytes().endswith(b"\n")


def test_metrics_logger_and_reader_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="suffix '.txt'"):
        MetricsLogger(tmp_path / "m.txt")
    with pytest.raises(ValueError, match="format must be"):
        MetricsLogger(tmp_path / "m.txt", format="tsv")
    with pytest.raises(ValueError, match="including 'step'"):
        MetricsLogger(tmp_path / "m.csv", fields=["loss"])
    narrow = MetricsLogger(tmp_path / "m.csv", fields=["step", "loss"])
    with pytest.raises(ValueError, match=r"\['epoch', 'grad_norm', 'lr'\] are not CSV fields"):
        _trainer(tmp_path, callbacks=[narrow]).train()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "loss": 1.0}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_metrics(bad)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("step,loss\n1,0.5\n2\n")
    with pytest.raises(ValueError, match="line 3 has 1 cells, the header has 2"):
        read_metrics(bad_csv)
    bad_csv.write_text("step,loss\n1,zero\n")
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(bad_csv)
    with pytest.raises(ValueError, match="suffix"):
        read_metrics(tmp_path / "m.txt")


# -- the progress bar ----------------------------------------------------------------------------------
@pytest.mark.parametrize("progress, env, disabled", [
    (True, None, False), (False, None, True), (True, "1", True), (True, "true", True), (True, "0", False),
    (True, "False", False), (True, "", False), (False, "0", True),
])
def test_progress_flag_and_tqdm_disable_decide_the_bar(tmp_path, monkeypatch, progress, env, disabled):
    if env is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", env)
    assert progress_disabled(progress) is disabled
    seen = []
    real_tqdm = train_module.tqdm

    def spy(*args, **kw):
        seen.append(kw["disable"])
        return real_tqdm(*args, **kw)

    monkeypatch.setattr(train_module, "tqdm", spy)
    _trainer(tmp_path, progress=progress, max_steps=2, output_dir=None).train()
    assert seen == [disabled]


def test_progress_disabled_rejects_a_non_bool():
    with pytest.raises(TypeError, match="progress must be a bool, got str"):
        progress_disabled("no")
