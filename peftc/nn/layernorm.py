"""LayerNorm over the last axis, like ``torch.nn.LayerNorm(H, eps)``; statistics cached for backward."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import as_rows
from .module import Module, Parameter


class LayerNorm(Module):
    """``LayerNorm(H, eps)`` starts at weight 1, bias 0; ``from_weights(w, b, eps)`` wraps arrays in place."""

    def __init__(self, normalized_shape: int, eps: float = F.LAYER_NORM_EPS) -> None:
        self._init(np.ones(normalized_shape, dtype=np.float32), np.zeros(normalized_shape, dtype=np.float32), eps)

    @classmethod
    def from_weights(cls, weight: np.ndarray, bias: np.ndarray, eps: float = F.LAYER_NORM_EPS) -> LayerNorm:
        layer = cls.__new__(cls)
        layer._init(weight, bias, eps)
        return layer

    def _init(self, weight: np.ndarray, bias: np.ndarray, eps: float) -> None:
        if weight.ndim != 1 or bias.shape != weight.shape:
            raise ValueError(f"LayerNorm weight and bias must both have shape (H,), got {weight.shape}, {bias.shape}")
        if not eps >= 0.0:
            raise ValueError(f"LayerNorm eps must be >= 0, got {eps}")
        self.weight = Parameter(weight)
        self.bias = Parameter(bias)
        self.eps = float(eps)
        self._cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def normalized_shape(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: np.ndarray) -> np.ndarray:
        rows = as_rows(x, "x", self.normalized_shape)
        y, mean, rstd = F.layernorm_forward(rows, self.weight.data, self.bias.data, self.eps)
        self._cache = (rows, mean, rstd)
        return y.reshape(x.shape)

    def forward_residual(self, x: np.ndarray, residual: np.ndarray) -> np.ndarray:
        """LayerNorm(x + residual) in one kernel; ``x`` is overwritten with the sum, so the caller must own it.

        The backward is :meth:`backward` as after :meth:`forward` (its dx is the gradient of the sum, i.e. of
        both x and residual).
        """
        rows = as_rows(x, "x", self.normalized_shape)
        res = as_rows(residual, "residual", self.normalized_shape)
        if res.shape != rows.shape:
            raise ValueError(f"LayerNorm.forward_residual: x has shape {x.shape}, residual {residual.shape}")
        y, mean, rstd = F.layernorm_residual_forward(rows, res, self.weight.data, self.bias.data, self.eps)
        self._cache = (rows, mean, rstd)
        return y.reshape(x.shape)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the affine gradients (when trainable); the input gradient as the module contract says
        (a new array, added into ``dx``, or None with ``input_grad=False``)."""
        if self._cache is None:
            raise RuntimeError("LayerNorm.backward called before forward")
        rows, mean, rstd = self._cache
        out = None
        if input_grad:
            out = F.zeros(rows.shape) if dx is None else self._check_dx(dx, dy.shape).reshape(rows.shape)
        dw, db = self.weight.grad_buffer(), self.bias.grad_buffer()
        if out is not None or dw is not None or db is not None:
            F.layernorm_backward(as_rows(dy, "dy", self.normalized_shape), rows, self.weight.data, mean, rstd, dx=out,
                                 dweight=dw, dbias=db)
        if out is None:
            return None
        return out.reshape(dy.shape) if dx is None else dx

    def __repr__(self) -> str:
        return f"LayerNorm({self.normalized_shape}, eps={self.eps})"
