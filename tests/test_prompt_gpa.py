"""Gaussian prompt aggregation: the weight formula, the spec's base-to-novel weights, the aggregate."""
from __future__ import annotations

import numpy as np
import pytest

from peftc.nn import Parameter
from peftc.prompt import GaussianPromptAggregator, gaussian_epoch_weights

from .conftest import assert_close


def test_gpa_weights_are_normalised_gaussian_density_at_epoch_indices():
    w = gaussian_epoch_weights(20, 6.0, 10.0)
    e = np.arange(1, 21)
    dens = np.exp(-((e - 6.0) ** 2) / 200.0)
    assert_close(w, dens / dens.sum(), 1e-12, 0, "weights")
    assert_close(w.sum(), 1.0, 0, 1e-12, "sum")


def test_gpa_weights_match_base_to_novel_table():
    w = gaussian_epoch_weights(20, 15.0, 1.0)
    assert_close(w[12:17], [0.054, 0.242, 0.399, 0.242, 0.054], 0, 5e-4, "epochs 13..17")
    assert int(np.argmax(gaussian_epoch_weights(50, 45.0, 5.0))) == 44


def test_gpa_rejects_bad_settings():
    with pytest.raises(ValueError):
        gaussian_epoch_weights(0, 1.0, 1.0)
    with pytest.raises(ValueError):
        gaussian_epoch_weights(5, 1.0, 0.0)
    with pytest.raises(ValueError, match="no representable mass"):
        gaussian_epoch_weights(5, 1e6, 1.0)


def test_gpa_aggregate_is_weighted_sum_of_epoch_snapshots(rng):
    p = Parameter(np.zeros((2, 3), dtype=np.float32))
    agg = GaussianPromptAggregator([p], 4, 3.0, 1.0)
    snaps = []
    for _ in range(4):
        p.data[...] = rng.standard_normal((2, 3))
        snaps.append(p.data.astype(np.float64).copy())
        agg.update()
    agg.load()
    assert_close(p.data, sum(w * s for w, s in zip(agg.weights, snaps)), 1e-6, 1e-7, "aggregate")
    with pytest.raises(RuntimeError):
        agg.update()


def test_gpa_load_before_last_epoch_raises():
    agg = GaussianPromptAggregator([Parameter(np.zeros(3, dtype=np.float32))], 3, 2.0, 1.0)
    agg.update()
    with pytest.raises(RuntimeError, match="1 of 3"):
        agg.load()

