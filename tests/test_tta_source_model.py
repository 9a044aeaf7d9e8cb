"""The TTA source model looks in its cache before it touches the data set: a cached model costs
neither training nor reading Fashion-MNIST."""
from __future__ import annotations

import numpy as np
import pytest

import peftc.tta.source_model as source_model
from peftc.tta import SourceConfig, train_source_model

TINY = SourceConfig(widths=(4, 8), epochs=1, batch_size=32, learning_rate=1e-2)


class LoaderCalled(Exception):
    pass


def _no_loading(split="train", root=None):
    raise LoaderCalled(f"load_fashion_mnist({split!r}) called")


def _brightness_data(n: int = 64):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n)
    x = (rng.random((n, 28, 28)) * 0.2 + (y[:, None, None] / 10.0)).astype(np.float32)  # class = brightness
    return x, y, x, y


def test_cached_source_model_loads_without_reading_the_data_set(tmp_path, monkeypatch):
    trained, info = train_source_model(TINY, cache=tmp_path, data=_brightness_data())
    assert not info["cached"]
    monkeypatch.setattr(source_model, "load_fashion_mnist", _no_loading)
    loaded, info2 = train_source_model(TINY, cache=tmp_path)  # no data given: the Debian loader would run
    assert info2["cached"] and info2["path"] == info["path"]
    assert info2["test_accuracy"] == info["test_accuracy"]
    state = loaded.state_dict()
    assert all(np.array_equal(a, state[k]) for k, a in trained.state_dict().items())
    assert not loaded.training


def test_source_model_reads_the_data_set_when_it_must_train(tmp_path, monkeypatch):
    # the patched loader is the one train_source_model calls: without a cache it is reached
    monkeypatch.setattr(source_model, "load_fashion_mnist", _no_loading)
    with pytest.raises(LoaderCalled, match="'train'"):
        train_source_model(TINY, cache=tmp_path)
