"""Trainer: loss goes down, resume from a checkpoint is bit-identical, checkpoints are atomic."""
from __future__ import annotations

import os

import numpy as np
import pytest

import peftc.checkpoint as ckpt
from peftc import Generator, Trainer, TrainingConfig
from peftc.nn import Linear, LoraLinear, Module, ReLU


class LoraMLP(Module):
    """Frozen base Linear with a LoRA adapter (dropout draws from its generator) and a trainable head."""

    def __init__(self, seed: int = 0) -> None:
        g = Generator(seed)
        base = Linear(6, 16, generator=g)
        base.requires_grad_(False)
        self.hidden = LoraLinear(base, r=4, lora_alpha=8, lora_dropout=0.2, init_lora_weights=False,
                                 generator=Generator(seed + 100))
        self.act = ReLU()
        self.head = Linear(16, 3, generator=g)

    def forward(self, batch: dict) -> np.ndarray:
        return self.head(self.act(self.hidden(batch["x"])))

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return self.hidden.backward(self.act.backward(self.head.backward(dy)))


def _data(n: int = 90, seed: int = 0) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, 6)).astype(np.float32)
    return {"x": x, "labels": ((x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5))}


def _config(tmp_path, name: str, **kw) -> TrainingConfig:
    base = dict(learning_rate=2e-2, weight_decay=0.01, batch_size=8, num_epochs=3, warmup_steps=4,
                max_grad_norm=0.5, seed=11, save_every=5, log_every=1, output_dir=str(tmp_path / name),
                progress=False)
    return TrainingConfig(**{**base, **kw})


def _trainable(model: Module) -> dict[str, np.ndarray]:
    return {n: p.data.copy() for n, p in model.named_parameters() if p.requires_grad}


def test_tiny_training_reduces_loss_and_raises_accuracy(tmp_path):
    data = _data(200)
    trainer = Trainer(LoraMLP(), _config(tmp_path, "t", num_epochs=15, output_dir=None), data, data)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["loss"] < 0.6 * before["loss"], (before, after)
    assert after["accuracy"] > 0.85 and after["accuracy"] > before["accuracy"] + 0.2


def test_frozen_parameters_are_left_untouched(tmp_path):
    model = LoraMLP()
    w = model.hidden.base.weight.data.copy()
    Trainer(model, _config(tmp_path, "t", num_epochs=1, output_dir=None), _data()).train()
    assert np.array_equal(model.hidden.base.weight.data, w)
    assert model.hidden.base.weight.grad is None


@pytest.mark.parametrize("stop", [7, 12, 23])  # mid-epoch, end of epoch 0 (12 batches), mid-epoch 1
def test_resume_from_checkpoint_is_bit_identical_to_uninterrupted_run(tmp_path, stop):
    data, held_out = _data(90), _data(30, seed=1)
    full = Trainer(LoraMLP(), _config(tmp_path, "full", eval_every=6), data, held_out)
    full.train()

    first = Trainer(LoraMLP(), _config(tmp_path, "cut", eval_every=6), data, held_out)
    first.train(until_step=stop)
    assert first.global_step == stop
    model = LoraMLP()
    second = Trainer(model, _config(tmp_path, "cut", eval_every=6), data, held_out)
    second.train(resume_from=tmp_path / "cut" / "checkpoint.npz")

    got, want = _trainable(model), _trainable(full.model)
    assert got.keys() == want.keys()
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    assert model.hidden.generator.offset == full.model.hidden.generator.offset
    assert second.history == full.history
    for s_full, s_resumed in zip(full.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]):
        assert s_full["step"] == s_resumed["step"] and np.array_equal(s_full["v"], s_resumed["v"])


def test_failed_checkpoint_write_leaves_previous_file_and_no_temp_file(tmp_path, monkeypatch):
    trainer = Trainer(LoraMLP(), _config(tmp_path, "a"), _data())
    trainer.train(until_step=5)
    path = tmp_path / "a" / "checkpoint.npz"
    good = path.read_bytes()

    def crash(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path / "a") == ["checkpoint.npz"]


def test_corrupt_or_mismatched_checkpoint_raises_value_error(tmp_path):
    trainer = Trainer(LoraMLP(), _config(tmp_path, "a"), _data())
    trainer.train(until_step=5)
    path = tmp_path / "a" / "checkpoint.npz"
    other = Trainer(LoraMLP(), _config(tmp_path, "a", seed=12), _data())
    with pytest.raises(ValueError, match="written for data/schedule"):
        other.load_checkpoint(path)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="unreadable"):
        trainer.load_checkpoint(truncated)


def test_trainer_rejects_missing_labels_and_models_without_trainable_parameters(tmp_path):
    with pytest.raises(KeyError, match="labels"):
        Trainer(LoraMLP(), _config(tmp_path, "a"), {"x": _data()["x"]})
    with pytest.raises(ValueError, match="no trainable"):
        Trainer(LoraMLP().requires_grad_(False), _config(tmp_path, "a"), _data())
