"""MeanPooling: a sentence vector from token states, the mean over the real tokens, optionally L2-normalised."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .module import Module


class MeanPooling(Module):
    """sentence-transformers' mean pooling (and, with ``normalize=True``, its ``Normalize`` module).

    ``forward(x, attention_mask=None)``: x (B, T, H) float32, attention_mask (B, T) int64 (nonzero = a token
    that counts; None = all) -> (B, H): the mean of x over the counted tokens (an all-zero mask row gives
    0), divided by max(||mean||, eps) when ``normalize``. ``backward(dy)`` gives d(x), zero at the tokens
    the mask leaves out. The mask is not an input with a gradient; it is cached with the forward.
    """

    def __init__(self, normalize: bool = False, eps: float = F.NORMALIZE_EPS) -> None:
        if not eps > 0.0:
            raise ValueError(f"MeanPooling eps must be > 0, got {eps}")
        self.normalize = bool(normalize)
        self.eps = float(eps)
        self._cache: tuple | None = None

    def forward(self, x: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        pooled = F.mean_pool_forward(x, attention_mask)
        if not self.normalize:
            self._cache = (x.shape, attention_mask, None, None)
            return pooled
        out, norm = F.l2_normalize_forward(pooled, self.eps)
        self._cache = (x.shape, attention_mask, out, norm)
        return out

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """d(x) (B, T, H): a new array, added into ``dx``, or None with ``input_grad=False`` (no parameters)."""
        if self._cache is None:
            raise RuntimeError("MeanPooling.backward called before forward")
        if not input_grad:
            return None
        shape, mask, out, norm = self._cache
        dpooled = dy
        if self.normalize:
            dpooled = F.zeros(out.shape)
            F.l2_normalize_backward(dy, out, norm, self.eps, dx=dpooled)
        dx = self._input_grad_buffer(dx, shape)
        F.mean_pool_backward(dpooled, mask, dx=dx)
        return dx

    def __repr__(self) -> str:
        return f"MeanPooling(normalize={self.normalize})"
