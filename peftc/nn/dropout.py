"""Dropout: inverted dropout with a counter-based mask, identity in eval mode or at p = 0.

The mask is regenerated in the backward from (seed, offset), so nothing but the offset is kept.
At p = 0 or in eval mode the input array itself is returned (no copy).
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import check_probability
from ..random import Generator
from .module import Module
from .packed_tokens import PackedTokens


class Dropout(Module):
    """``torch.nn.Dropout(p)`` with a peftc :class:`Generator` as the source of masks."""

    def __init__(self, p: float = 0.5, generator: Generator | None = None) -> None:
        self.p = check_probability("p", p)
        self.generator = generator or Generator(0)
        self._offset: int | None = None
        self._rows: np.ndarray | None = None

    def forward(self, x: np.ndarray, packed: PackedTokens | None = None) -> np.ndarray:
        """Drop elements of x. With ``packed``, x is the (N, C) rows of its real tokens and gets the mask the
        padded (B, T, C) batch would get at those tokens (the generator advances by B*T*C, as then)."""
        if not self.training or self.p == 0.0:
            self._offset = None
            return x
        if packed is None:
            self._rows = None
            self._offset = self.generator.take(x.size)
            return F.dropout_forward(x, self.p, self.generator.seed, self._offset)
        if x.ndim != 2 or x.shape[0] != packed.count:
            raise ValueError(f"Dropout: x of shape {x.shape} is not the (N, C) rows of the {packed.count} real tokens")
        self._rows = packed.index
        self._offset = self.generator.take(packed.positions * x.shape[1])
        return F.dropout_rows_forward(x, self._rows, self.p, self.generator.seed, self._offset)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """dx (+)= dy * mask / (1 - p). As an identity (eval mode, p = 0) with ``dx=None`` it returns ``dy``
        itself, no copy: the caller owns dy already."""
        if not input_grad:
            return None
        if self._offset is None:
            if dx is None:
                return dy
            dx = self._check_dx(dx, dy.shape)
            dx += dy
            return dx
        dx = self._input_grad_buffer(dx, dy.shape)
        if self._rows is None:
            F.dropout_backward(dy, self.p, self.generator.seed, self._offset, dx=dx)
        else:
            F.dropout_rows_backward(dy, self._rows, self.p, self.generator.seed, self._offset, dx=dx)
        return dx

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"
