"""peftc's seeded generator: a (seed, offset) pair over the C counter-based generator.

Every draw takes the next block of counters, so a run is reproducible from its seed alone, and a
draw can be replayed from the (seed, offset) it used (dropout masks in the backward pass do this).
"""
from __future__ import annotations

import numpy as np

from . import functional as F


class Generator:
    """A reproducible stream of random numbers: ``Generator(seed)``."""

    def __init__(self, seed: int = 0) -> None:
        if not 0 <= int(seed) < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self.seed = int(seed)
        self.offset = 0

    def take(self, count: int) -> int:
        """Reserve ``count`` counters; return the offset of the first."""
        start = self.offset
        self.offset += int(count)
        return start

    def uniform(self, shape: tuple[int, ...], low: float = 0.0, high: float = 1.0) -> np.ndarray:
        n = int(np.prod(shape))
        return F.rng_uniform(tuple(shape), low, high, self.seed, self.take(n))

    def normal(self, shape: tuple[int, ...], mean: float = 0.0, std: float = 1.0) -> np.ndarray:
        n = int(np.prod(shape))
        return F.rng_normal(tuple(shape), mean, std, self.seed, self._take_normal(n))

    def _take_normal(self, n: int) -> int:
        # a normal draw uses counters 2k and 2k+1, k = offset + i: reserve 2n counters, aligned to even
        start = (self.offset + 1) // 2
        self.offset = 2 * (start + n)
        return start

    def state_dict(self) -> dict:
        return {"seed": self.seed, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.offset = int(state["seed"]), int(state["offset"])
