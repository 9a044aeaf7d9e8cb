"""Seeded minibatch order: the permutation of an epoch is a pure function of (seed, epoch).

The shuffle ranks ``n`` uniforms from peftc's counter-based generator (counters
``epoch * n .. epoch * n + n - 1`` under ``seed``) with a stable sort, so the order is the same on
every machine and can be regenerated for any epoch without replaying earlier ones: a resumed run
needs only (seed, epoch, batch position).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .. import functional as F


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """(n,) int64: the order of rows in ``epoch`` under ``seed``."""
    if n <= 0:
        raise ValueError(f"cannot shuffle {n} rows")
    keys = F.rng_uniform((n,), 0.0, 1.0, seed, epoch * n)
    return np.argsort(keys, kind="stable").astype(np.int64)


class BatchSampler:
    """Row indices of minibatches over ``n`` rows, epoch by epoch.

    ``shuffle=False`` keeps the rows in order; ``drop_last=True`` drops a final batch shorter
    than ``batch_size``.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = False) -> None:
        if n <= 0 or batch_size <= 0:
            raise ValueError(f"BatchSampler needs n > 0 and batch_size > 0, got n={n}, batch_size={batch_size}")
        if drop_last and batch_size > n:
            raise ValueError(f"drop_last with batch_size {batch_size} > n {n} gives no batch at all")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        return epoch_permutation(self.n, self.seed, epoch) if self.shuffle else np.arange(self.n, dtype=np.int64)

    def batches(self, epoch: int, start: int = 0) -> Iterator[np.ndarray]:
        """The batches of ``epoch`` from batch number ``start`` on (to resume mid-epoch)."""
        order = self.epoch_order(epoch)
        for b in range(start, len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]


def take(data: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The batch dict ``{key: array[rows]}`` (fresh C-contiguous copies)."""
    return {k: np.ascontiguousarray(v[rows]) for k, v in data.items()}


def num_rows(data: dict[str, np.ndarray]) -> int:
    """The common length of the arrays of a data dict; raises if they disagree."""
    if not data:
        raise ValueError("data dict is empty")
    lengths = {k: len(v) for k, v in data.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"data arrays differ in length: {lengths}")
    return next(iter(lengths.values()))
