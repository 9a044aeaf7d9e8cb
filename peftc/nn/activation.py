"""Element-wise activations as modules. ReLU is a NumPy one-liner each way (memory-bound, no C kernel)."""
from __future__ import annotations

import numpy as np

from .module import Module


class ReLU(Module):
    """y = max(x, 0); the backward passes dy where x > 0."""

    def __init__(self) -> None:
        self._mask: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._mask = x > 0
        return np.maximum(x, np.float32(0.0), dtype=x.dtype)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._mask is None:
            raise RuntimeError("ReLU.backward called before forward")
        if dy.shape != self._mask.shape:
            raise ValueError(f"ReLU.backward: dy has shape {dy.shape}, the forward input had {self._mask.shape}")
        return np.where(self._mask, dy, np.float32(0.0)).astype(dy.dtype, copy=False)

    def __repr__(self) -> str:
        return "ReLU()"
