"""Seeded minibatch order: a pure function of (seed, epoch), resumable mid-epoch."""
from __future__ import annotations

import numpy as np
import pytest

from peftc.data.batching import BatchSampler, epoch_permutation, num_rows, take


def test_epoch_permutation_is_a_permutation_fixed_by_seed_and_epoch():
    p = epoch_permutation(1000, seed=7, epoch=3)
    assert sorted(p.tolist()) == list(range(1000))
    assert np.array_equal(p, epoch_permutation(1000, seed=7, epoch=3))
    assert not np.array_equal(p, epoch_permutation(1000, seed=7, epoch=4))
    assert not np.array_equal(p, epoch_permutation(1000, seed=8, epoch=3))
    # counter-based: pinned values hold on every machine
    assert epoch_permutation(10, seed=3, epoch=0).tolist() == [8, 2, 1, 6, 4, 5, 7, 0, 3, 9]


def test_batches_cover_each_row_once_and_drop_last_drops_the_short_batch():
    s = BatchSampler(10, 4, seed=1)
    batches = list(s.batches(0))
    assert len(s) == 3 and [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    d = BatchSampler(10, 4, seed=1, drop_last=True)
    assert len(d) == 2 and [b.tolist() for b in d.batches(0)] == [b.tolist() for b in batches[:2]]


def test_batches_resume_mid_epoch_with_the_same_rows():
    s = BatchSampler(50, 8, seed=5)
    full = [b.tolist() for b in s.batches(2)]
    assert [b.tolist() for b in s.batches(2, start=3)] == full[3:]


def test_unshuffled_sampler_keeps_row_order():
    assert np.concatenate(list(BatchSampler(7, 3, shuffle=False).batches(5))).tolist() == list(range(7))


def test_take_and_num_rows_check_lengths():
    data = {"x": np.arange(12, dtype=np.float32).reshape(6, 2), "labels": np.arange(6)}
    assert num_rows(data) == 6
    b = take(data, np.array([4, 1]))
    assert b["x"].tolist() == [[8, 9], [2, 3]] and b["labels"].tolist() == [4, 1]
    with pytest.raises(ValueError, match="differ in length"):
        num_rows({"x": np.zeros(3), "labels": np.zeros(4)})
    with pytest.raises(ValueError):
        BatchSampler(0, 4)
