"""Multi-head self-attention on one input x: q, k, v = query(x), key(x), value(x), then
softmax(q k^T / sqrt(HS) + mask) v.

The module owns the split of x into q, k and v: the projections are its :class:`~peftc.nn.Linear`
children (so adapters replace them), and its backward sums their three input gradients into one
dx, as every module's backward returns the gradient of its one input. The core on projected q, k, v
is :func:`peftc.functional.attention_forward` / ``attention_backward``; with a
:class:`~peftc.nn.packed_tokens.PackedTokens` in place of the mask, x is the (N, H) rows of a batch's real
tokens and the core is :func:`peftc.functional.attention_packed_forward` / ``attention_packed_backward``
(each sequence's rows among themselves, the padded batch's dropout).
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import check_probability
from ..random import Generator
from .module import Module
from .packed_tokens import PackedTokens


def _trainable(module: Module) -> bool:
    """Whether any parameter of module is trainable (stops at the first one found)."""
    return any(p.requires_grad for _, p in module.named_parameters())


class SelfAttention(Module):
    """``SelfAttention(query, key, value, num_heads, dropout=0.0, causal=False)``; ``forward(x, attention_mask)``.

    query, key, value: modules mapping (..., H) to (..., H) (:class:`~peftc.nn.Linear` or an adapter layer
    around one); ``dropout`` acts on the attention probabilities in training mode.
    """

    def __init__(self, query: Module, key: Module, value: Module, num_heads: int, dropout: float = 0.0,
                 causal: bool = False, generator: Generator | None = None) -> None:
        if int(num_heads) != num_heads or num_heads <= 0:
            raise ValueError(f"num_heads must be a positive integer, got {num_heads}")
        self.query = query
        self.key = key
        self.value = value
        self.num_heads = int(num_heads)
        self.dropout = check_probability("dropout", dropout)
        self.causal = bool(causal)
        self.generator = generator or Generator(0)
        self._cache: tuple | None = None

    def forward(self, x: np.ndarray, attention_mask: np.ndarray | PackedTokens | None = None) -> np.ndarray:
        """x (B, T, H) float32; attention_mask (B, T) int64, 1 = keep, 0 = padding. Or x the (N, H) real-token
        rows of a :class:`PackedTokens` given as attention_mask (not causal; in training its rows must each be
        one run, ``contiguous``)."""
        q, k, v = self.query(x), self.key(x), self.value(x)
        p = self.dropout if self.training else 0.0
        if isinstance(attention_mask, PackedTokens):
            return self._forward_packed(q, k, v, attention_mask, p)
        b, t, _ = q.shape
        offset = self.generator.take(b * self.num_heads * t * t) if p > 0.0 else 0
        out, att = F.attention_forward(q, k, v, self.num_heads, attention_mask, self.causal, p,
                                       self.generator.seed, offset)
        self._cache = (q, k, v, att, p, offset, None)
        return out

    def _forward_packed(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, packed: PackedTokens,
                        p: float) -> np.ndarray:
        if self.causal:
            raise ValueError(f"{type(self).__name__}: packed tokens run bidirectional attention, this one is causal")
        if not self.training:  # inference: nothing kept
            self._cache = None
            return F.attention_packed_forward(q, k, v, packed.offsets, self.num_heads)
        if not packed.contiguous:
            raise ValueError(f"{type(self).__name__}: a training forward on packed tokens needs each row's real "
                             f"tokens in one run (right or left padding); the mask of shape {packed.mask.shape} "
                             f"has holes")
        # the padded batch's counters: the generator advances as a padded forward's would
        offset = self.generator.take(packed.positions * self.num_heads * packed.seq_len) if p > 0.0 else 0
        att = np.empty(F.attention_packed_probs_size(packed.offsets, self.num_heads), dtype=np.float32)
        out = F.attention_packed_forward(q, k, v, packed.offsets, self.num_heads, p, self.generator.seed, offset,
                                         starts=packed.starts, seq_len=packed.seq_len, att=att)
        self._cache = (q, k, v, att, p, offset, packed)
        return out

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the projections' parameter gradients; the input gradient, the sum over the three
        projections, goes into a new array, is added into ``dx``, or with ``input_grad=False`` is skipped
        (then only the trainable projections get the gradient of their output) and None returned."""
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward (or after an inference "
                               f"forward on packed tokens)")
        q, k, v, att, p, offset, packed = self._cache
        layers = (self.query, self.key, self.value)
        grads = [F.zeros(a.shape) if input_grad or _trainable(m) else None for a, m in zip((q, k, v), layers)]
        if any(g is not None for g in grads) and packed is None:
            F.attention_backward(dy, q, k, v, att, self.num_heads, p, self.generator.seed, offset, dq=grads[0],
                                 dk=grads[1], dv=grads[2])
        elif any(g is not None for g in grads):
            F.attention_packed_backward(dy, q, k, v, att, packed.offsets, self.num_heads, p, self.generator.seed,
                                        offset, starts=packed.starts, seq_len=packed.seq_len, dq=grads[0],
                                        dk=grads[1], dv=grads[2])
        for layer, g in zip(layers, grads):
            if g is not None:
                dx = layer.backward(g, dx=dx, input_grad=input_grad)
        return dx if input_grad else None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_heads={self.num_heads}, dropout={self.dropout}, causal={self.causal}, "
                f"query={self.query!r}, key={self.key!r}, value={self.value!r})")
