"""Elementwise activation layers: ReLU, and GELU (the exact erf form BERT uses, or the tanh approximation
of GPT-2)."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .module import Module


class ReLU(Module):
    """y = max(x, 0). Caches its output (whose positive set is the input's) for the backward."""

    def __init__(self) -> None:
        self._y: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._y = F.relu_forward(x)
        return self._y

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """dx (+)= dy where the output is positive (the module contract: new array, given ``dx``, or None)."""
        if self._y is None:
            raise RuntimeError("ReLU.backward called before forward")
        if not input_grad:
            return None
        dx = self._input_grad_buffer(dx, self._y.shape)
        F.relu_backward(dy, self._y, dx=dx)
        return dx

    def __repr__(self) -> str:
        return "ReLU()"


class GELU(Module):
    """``torch.nn.GELU(approximate)``: "none" (the erf form, BERT) or "tanh" (GPT-2's ``gelu_new``).

    >>> GELU("tanh")
    GELU(approximate='tanh')
    """

    def __init__(self, approximate: str = "none") -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = F.gelu_tanh_forward(x) if self.approximate == "tanh" else F.gelu_forward(x)
        self._x = x
        return y

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """dx (+)= dy * GELU'(x) (the module contract: new array, given ``dx``, or None)."""
        if self._x is None:
            raise RuntimeError("GELU.backward called before forward")
        if not input_grad:
            return None
        dx = self._input_grad_buffer(dx, self._x.shape)
        if self.approximate == "tanh":
            F.gelu_tanh_backward(dy, self._x, dx=dx)
        else:
            F.gelu_backward(dy, self._x, dx=dx)
        return dx

    def __repr__(self) -> str:
        return "GELU()" if self.approximate == "none" else f"GELU(approximate={self.approximate!r})"
