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

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> None:
        """Scatter-add into the table's gradient. The input is integer ids, which have no gradient: None is
        returned whatever ``input_grad`` says, and a ``dx`` is an error (there is nothing to add into it)."""
        self._no_input_grad(dx, "integer ids")
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
    (config.pad_token_id) gets no gradient, and ``inputs_embeds`` (B, T, H) may stand for the word
    lookup (prompt tuning writes its own vectors there); the backward then returns their gradient.
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
        self._ids: tuple[np.ndarray | None, np.ndarray | None, bool] | None = None

    def forward(self, input_ids: np.ndarray | None, token_type_ids: np.ndarray | None = None,
                inputs_embeds: np.ndarray | None = None) -> np.ndarray:
        """input_ids, token_type_ids (B, T) int64 -> (B, T, H). With ``inputs_embeds`` (B, T, H) float32 those
        vectors replace the word lookup (``input_ids`` is then not read and may be None)."""
        if inputs_embeds is None:
            s = F.embedding_forward(input_ids, token_type_ids, self.word_embeddings.weight.data,
                                    self.position_embeddings.weight.data, self.token_type_embeddings.weight.data)
        else:
            h = self.position_embeddings.weight.shape[1]
            if (not isinstance(inputs_embeds, np.ndarray) or inputs_embeds.dtype != np.float32
                    or inputs_embeds.ndim != 3 or inputs_embeds.shape[2] != h):
                got = (f"{inputs_embeds.dtype} {inputs_embeds.shape}" if isinstance(inputs_embeds, np.ndarray)
                       else type(inputs_embeds).__name__)
                raise ValueError(f"inputs_embeds must be a float32 (B, T, {h}) array, got {got}")
            t = inputs_embeds.shape[1]
            if t > self.position_embeddings.num_embeddings:
                raise ValueError(f"inputs_embeds has {t} positions, the position table "
                                 f"{self.position_embeddings.num_embeddings}")
            if token_type_ids is not None:
                _check_ids(token_type_ids, "token_type_ids", self.token_type_embeddings.num_embeddings)
                if token_type_ids.shape != inputs_embeds.shape[:2]:
                    raise ValueError(f"token_type_ids has shape {token_type_ids.shape}, inputs_embeds "
                                     f"{inputs_embeds.shape}")
            types = self.token_type_embeddings.weight.data[token_type_ids if token_type_ids is not None else 0]
            # the kernel's order, (word + position) + token type, so that the same vectors give the same bits
            s = inputs_embeds + self.position_embeddings.weight.data[None, :t]
            s += types if token_type_ids is not None else types[None, None]
        self._ids = (input_ids, token_type_ids, inputs_embeds is not None)
        return self.dropout(self.LayerNorm(s))

    def trainable(self) -> bool:
        return any(p.requires_grad for _, p in self.named_parameters())

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True
                 ) -> np.ndarray | None:
        """Accumulate into whichever tables and LayerNorm parameters are trainable (the word table only after
        a forward on ids). The input gradient is that of ``inputs_embeds`` when the forward took them
        (new, added into ``dx``, or None with ``input_grad=False``); token ids have none: None, and a
        ``dx`` is an error."""
        if self._ids is None:
            raise RuntimeError("BertEmbeddings.backward called before forward")
        ids, types, embeds = self._ids
        if not embeds:
            self._no_input_grad(dx, "integer token ids (the forward took no inputs_embeds)")
        want = input_grad and embeds
        if not want and not self.trainable():
            return None
        ds = self.LayerNorm.backward(self.dropout.backward(dy))
        dw = self.word_embeddings.weight.grad_buffer() if not embeds else None
        dp = self.position_embeddings.weight.grad_buffer()
        dt = self.token_type_embeddings.weight.grad_buffer()
        if dw is not None or dp is not None or dt is not None:
            F.embedding_backward(ds, ids if ids is not None else np.zeros(ds.shape[:2], dtype=np.int64), types,
                                 self.padding_idx, dword_embeddings=dw, dposition_embeddings=dp,
                                 dtoken_type_embeddings=dt)
        if not want:
            return None
        if dx is None:
            return ds  # the LayerNorm's new array: the caller's now
        dx = self._check_dx(dx, ds.shape)
        dx += ds
        return dx
