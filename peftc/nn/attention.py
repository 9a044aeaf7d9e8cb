"""The multi-head self-attention core on projected q, k, v: softmax(q k^T / sqrt(HS) + mask) v.

The projections are separate :class:`~peftc.nn.Linear` layers owned by the caller (so adapters can
replace them); this module holds no parameters, only the probabilities cached for backward.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import check_probability
from ..random import Generator
from .module import Module


class SelfAttention(Module):
    """``SelfAttention(num_heads, dropout=0.0, causal=False)``; ``forward(q, k, v, attention_mask)``."""

    def __init__(self, num_heads: int, dropout: float = 0.0, causal: bool = False,
                 generator: Generator | None = None) -> None:
        if int(num_heads) != num_heads or num_heads <= 0:
            raise ValueError(f"num_heads must be a positive integer, got {num_heads}")
        self.num_heads = int(num_heads)
        self.dropout = check_probability("dropout", dropout)
        self.causal = bool(causal)
        self.generator = generator or Generator(0)
        self._cache: tuple | None = None

    def forward(self, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                attention_mask: np.ndarray | None = None) -> np.ndarray:
        """q, k, v (B, T, H) float32; attention_mask (B, T) int64, 1 = keep, 0 = padding."""
        p = self.dropout if self.training else 0.0
        b, t, _ = q.shape
        offset = self.generator.take(b * self.num_heads * t * t) if p > 0.0 else 0
        out, att = F.attention_forward(q, k, v, self.num_heads, attention_mask, self.causal, p,
                                       self.generator.seed, offset)
        self._cache = (q, k, v, att, p, offset)
        return out

    def backward(self, dy: np.ndarray, need: tuple[bool, bool, bool] = (True, True, True)
                 ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Return (dq, dk, dv); an entry whose ``need`` flag is False is not computed and is None."""
        if self._cache is None:
            raise RuntimeError("SelfAttention.backward called before forward")
        q, k, v, att, p, offset = self._cache
        dq, dk, dv = (F.zeros(a.shape) if n else None for a, n in zip((q, k, v), need))
        if dq is not None or dk is not None or dv is not None:
            F.attention_backward(dy, q, k, v, att, self.num_heads, p, self.generator.seed, offset, dq=dq, dk=dk,
                                 dv=dv)
        return dq, dk, dv

    def __repr__(self) -> str:
        return f"SelfAttention(num_heads={self.num_heads}, dropout={self.dropout}, causal={self.causal})"
