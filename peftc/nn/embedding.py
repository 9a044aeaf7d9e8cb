"""Embedding tables and the BERT embedding block (word + position + token type, LayerNorm, dropout)."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..random import Generator
from .dropout import Dropout
from .layernorm import LayerNorm
from .module import Module, Parameter


def _check_ids(ids: np.ndarray, name: str, limit: int) -> None:
    if not isinstance(ids, np.ndarray) or ids.dtype != np.int64:
        got = f"{ids.dtype} {ids.shape}" if isinstance(ids, np.ndarray) else type(ids).__name__
        raise TypeError(f"{name} must be an int64 numpy.ndarray, got {got}")
    if ids.size and (ids.min() < 0 or ids.max() >= limit):
        raise ValueError(f"{name} holds ids outside [0, {limit}): min {ids.min()}, max {ids.max()}")


class Embedding(Module):
    """A lookup table (num_embeddings, H), like ``torch.nn.Embedding``; ``from_weights`` wraps in place."""

    def __init__(self, num_embeddings: int, embedding_dim: int, generator: Generator | None = None) -> None:
        self.weight = Parameter((generator or Generator(0)).normal((num_embeddings, embedding_dim)))
        self._ids: np.ndarray | None = None

    @classmethod
    def from_weights(cls, weight: np.ndarray) -> Embedding:
        if weight.ndim != 2:
            raise ValueError(f"Embedding weight must be 2-D (num_embeddings, H), got {weight.shape}")
        layer = cls.__new__(cls)
        layer.weight = Parameter(weight)
        layer._ids = None
        return layer

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    def forward(self, ids: np.ndarray) -> np.ndarray:
        _check_ids(ids, "ids", self.num_embeddings)
        self._ids = ids
        return self.weight.data[ids]

    def backward(self, dy: np.ndarray) -> None:
        """Scatter-add into the table's gradient; ids have no gradient, so nothing is returned."""
        g = self.weight.grad_buffer()
        if g is not None and self._ids is not None:
            np.add.at(g, self._ids.reshape(-1), dy.reshape(-1, g.shape[1]))

    def __repr__(self) -> str:
        return f"Embedding({self.weight.shape[0]}, {self.weight.shape[1]})"


class BertEmbeddings(Module):
    """Hugging Face's BertEmbeddings: LayerNorm(word[ids] + position[t] + token_type[types]), then dropout.

    Absolute positions 0..T-1. The three tables are :class:`Embedding` children named as in the
    checkpoint (``word_embeddings``, ``position_embeddings``, ``token_type_embeddings``, ``LayerNorm``)
    but the forward sums them in one fused kernel. As in Hugging Face, the word row ``padding_idx``
    (config.pad_token_id) gets no gradient.
    """

    def __init__(self, word_embeddings: Embedding, position_embeddings: Embedding,
                 token_type_embeddings: Embedding, layer_norm: LayerNorm, dropout: float = 0.0,
                 generator: Generator | None = None, padding_idx: int | None = None) -> None:
        self.word_embeddings = word_embeddings
        self.position_embeddings = position_embeddings
        self.token_type_embeddings = token_type_embeddings
        self.LayerNorm = layer_norm
        self.dropout = Dropout(dropout, generator)
        self.padding_idx = padding_idx
        self._ids: tuple[np.ndarray, np.ndarray | None] | None = None

    def forward(self, input_ids: np.ndarray, token_type_ids: np.ndarray | None = None) -> np.ndarray:
        """input_ids, token_type_ids (B, T) int64 -> (B, T, H)."""
        s = F.embedding_forward(input_ids, token_type_ids, self.word_embeddings.weight.data,
                                self.position_embeddings.weight.data, self.token_type_embeddings.weight.data)
        self._ids = (input_ids, token_type_ids)
        return self.dropout(self.LayerNorm(s))

    def trainable(self) -> bool:
        return any(p.requires_grad for _, p in self.named_parameters())

    def backward(self, dy: np.ndarray) -> None:
        """Accumulate into whichever tables and LayerNorm parameters are trainable."""
        if self._ids is None:
            raise RuntimeError("BertEmbeddings.backward called before forward")
        if not self.trainable():
            return
        ds = self.LayerNorm.backward(self.dropout.backward(dy))
        dw = self.word_embeddings.weight.grad_buffer()
        dp = self.position_embeddings.weight.grad_buffer()
        dt = self.token_type_embeddings.weight.grad_buffer()
        if dw is not None or dp is not None or dt is not None:
            F.embedding_backward(ds, self._ids[0], self._ids[1], self.padding_idx, dword_embeddings=dw, dposition_embeddings=dp,
                                 dtoken_type_embeddings=dt)
