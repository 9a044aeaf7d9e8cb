"""GELU (the exact erf form BERT uses), elementwise, with its input cached for backward."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .module import Module


class GELU(Module):
    """``torch.nn.GELU()`` (approximate="none")."""

    def __init__(self) -> None:
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = F.gelu_forward(x)
        self._x = x
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._x is None:
            raise RuntimeError("GELU.backward called before forward")
        dx = np.zeros_like(self._x)
        F.gelu_backward(dy, self._x, dx=dx)
        return dx

    def __repr__(self) -> str:
        return "GELU()"
