"""A BERT-family encoder (post-LN Transformer blocks) built from a Hugging Face checkpoint folder.

The folder holds ``config.json`` and ``model.safetensors`` (read with the ``safetensors`` NumPy
API); the arrays are used in place as the module parameters. Module and parameter names are the
checkpoint's (``encoder.layer.0.attention.self.query`` ...), and every linear layer is a
:class:`peftc.nn.Linear`, so adapters replace them with :meth:`Module.set_submodule`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np

from .. import functional as F
from ..nn import (GELU, BertEmbeddings, Dropout, Embedding, LayerNorm, Linear, MeanPooling, Module, ModuleList,
                  SelfAttention)
from ..random import Generator
from .hf_folder import read_checkpoint_folder


class PackedTokens:
    """The real token positions of a padded (B, T) batch, for a ``skip_padding`` forward.

    Such a forward holds its hidden states as (N, H) rows, N the number of real tokens in row-major
    order of the mask; every per-token layer (the linear maps, LayerNorm, GELU) runs on those rows
    only, and the attention, the one step that mixes tokens, on each sequence's rows (a contiguous
    block of them) by themselves, which is what the mask leaves of a padded batch's attention.
    """

    def __init__(self, attention_mask: np.ndarray) -> None:
        self.mask = attention_mask
        self.index = np.flatnonzero(attention_mask.reshape(-1))
        self.offsets = np.concatenate([[0], np.cumsum(np.count_nonzero(attention_mask, axis=1))]).astype(np.int64)

    @property
    def count(self) -> int:
        return int(self.index.size)

    def gather(self, x: np.ndarray) -> np.ndarray:
        """(B, T, H) -> the (N, H) rows of the real tokens (a new C-contiguous array)."""
        return np.take(x.reshape(-1, x.shape[-1]), self.index, axis=0)

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, num_heads: int) -> np.ndarray:
        """Self-attention (no dropout) of each sequence's real tokens among themselves: q, k, v (N, H) -> (N, H)."""
        return F.attention_packed_forward(q, k, v, self.offsets, num_heads)

    def scatter(self, rows: np.ndarray) -> np.ndarray:
        """(N, H) rows -> (B, T, H), zero at the padding."""
        out = np.zeros((self.mask.size, rows.shape[-1]), dtype=rows.dtype)
        out[self.index] = rows
        return out.reshape(*self.mask.shape, rows.shape[-1])


@dataclass
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` that the encoder uses."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"

    @classmethod
    def from_dict(cls, d: dict) -> BertConfig:
        cfg = cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
        if cfg.hidden_act != "gelu":
            raise ValueError(f"only hidden_act='gelu' (exact erf form) is supported, got {cfg.hidden_act!r}")
        if cfg.position_embedding_type != "absolute":
            raise ValueError(f"only absolute position embeddings are supported, got {cfg.position_embedding_type!r}")
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not a multiple of {cfg.num_attention_heads} heads")
        return cfg

    @classmethod
    def from_json(cls, path: str) -> BertConfig:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


class BertSelfAttention(SelfAttention):
    """query, key, value projections and the attention core (HF ``attention.self``); a :class:`PackedTokens`
    mask runs each sequence's real tokens by themselves (inference only)."""

    def __init__(self, query: Linear, key: Linear, value: Linear, num_heads: int, dropout: float,
                 generator: Generator) -> None:
        super().__init__(query, key, value, num_heads, dropout, generator=generator)

    def forward(self, x: np.ndarray, attention_mask: np.ndarray | PackedTokens | None) -> np.ndarray:
        if isinstance(attention_mask, PackedTokens):
            self._cache = None  # a packed forward has no backward
            return attention_mask.attention(self.query(x), self.key(x), self.value(x), self.num_heads)
        return super().forward(x, attention_mask)


class BertResidualOutput(Module):
    """dense, dropout, residual add, LayerNorm: HF's ``attention.output`` and ``output`` blocks.

    Two inputs, ``forward(x, residual)``: the backward returns d(x) as the module contract says, and
    leaves d(residual), the gradient of the sum, for :meth:`take_residual_grad` (the blocks that
    feed the residual read it there).
    """

    def __init__(self, dense: Linear, layer_norm: LayerNorm, dropout: float, generator: Generator) -> None:
        self.dense = dense
        self.LayerNorm = layer_norm
        self.dropout = Dropout(dropout, generator)
        self._residual_grad: np.ndarray | None = None

    def forward(self, x: np.ndarray, residual: np.ndarray) -> np.ndarray:
        h = self.dropout(self.dense(x))  # a fresh array either way: safe to add into
        return self.LayerNorm.forward_residual(h, residual)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """d(x) (new, added into ``dx``, or None with ``input_grad=False``); d(residual) is kept for
        :meth:`take_residual_grad`."""
        dh = self.LayerNorm.backward(dy)
        self._residual_grad = dh
        return self.dense.backward(self.dropout.backward(dh), dx=dx, input_grad=input_grad)

    def take_residual_grad(self) -> np.ndarray:
        """d(residual) of the last backward: a new array the caller owns (handed out once, not kept here)."""
        if self._residual_grad is None:
            raise RuntimeError("BertResidualOutput.take_residual_grad called before backward (or twice)")
        d, self._residual_grad = self._residual_grad, None
        return d


class BertAttention(Module):
    def __init__(self, self_attention: BertSelfAttention, output: BertResidualOutput) -> None:
        setattr(self, "self", self_attention)
        self.output = output

    def forward(self, x: np.ndarray, attention_mask: np.ndarray | PackedTokens | None) -> np.ndarray:
        return self.output(getattr(self, "self")(x, attention_mask), x)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """d(input) = d(residual) + the attention's input gradient (new, added into ``dx``, or None)."""
        dctx = self.output.backward(dy)
        dres = self.output.take_residual_grad()
        if input_grad and dx is not None:
            dx = self._check_dx(dx, dres.shape)
            dx += dres
        elif input_grad:
            dx = dres  # the LayerNorm's new array: the other branch adds into it
        return getattr(self, "self").backward(dctx, dx=dx, input_grad=input_grad)


class BertIntermediate(Module):
    def __init__(self, dense: Linear) -> None:
        self.dense = dense
        self.intermediate_act_fn = GELU()

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.intermediate_act_fn(self.dense(x))

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """The input gradient: new, accumulated into ``dx`` when given, or None with ``input_grad=False``."""
        return self.dense.backward(self.intermediate_act_fn.backward(dy), dx=dx, input_grad=input_grad)


class BertLayer(Module):
    """One post-LN block: h = LN(x + attn(x)); out = LN(h + W2 gelu(W1 h))."""

    def __init__(self, attention: BertAttention, intermediate: BertIntermediate, output: BertResidualOutput) -> None:
        self.attention = attention
        self.intermediate = intermediate
        self.output = output

    def forward(self, x: np.ndarray, attention_mask: np.ndarray | PackedTokens | None) -> np.ndarray:
        h = self.attention(x, attention_mask)
        return self.output(self.intermediate(h), h)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """d(block input): new, added into ``dx``, or with ``input_grad=False`` only the parameter
        gradients (None returned)."""
        dmid = self.output.backward(dy)
        dh = self.output.take_residual_grad()
        self.intermediate.backward(dmid, dx=dh)
        return self.attention.backward(dh, dx=dx, input_grad=input_grad)


class BlockInputHook(Protocol):
    """What ``BertModel.forward(..., block_input_hook=)`` takes: see :meth:`BertModel.forward`."""

    def forward(self, index: int, x: np.ndarray) -> np.ndarray: ...

    def backward(self, index: int, dx: np.ndarray) -> np.ndarray: ...


class BertEncoder(Module):
    """The blocks in order. ``forward(x, attention_mask, block_input_hook=None)``: a hook (see
    :meth:`BertModel.forward`) may replace each block's input; its backward is run in :meth:`backward`."""

    def __init__(self, layers: list[BertLayer]) -> None:
        self.layer = ModuleList(layers)
        self._hook: BlockInputHook | None = None

    def forward(self, x: np.ndarray, attention_mask: np.ndarray | PackedTokens | None,
                block_input_hook: BlockInputHook | None = None) -> np.ndarray:
        """x (B, T, H) with a (B, T) mask, or the (N, H) rows of :class:`PackedTokens`."""
        if block_input_hook is not None and isinstance(attention_mask, PackedTokens):
            raise ValueError("block_input_hook works on padded (B, T, H) states, not on a skip_padding forward")
        self._hook = block_input_hook
        for j, block in enumerate(self.layer):
            if block_input_hook is not None:
                x = block_input_hook.forward(j, x)
            x = block(x, attention_mask)
        return x

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """d(encoder input): new, added into ``dx``, or with ``input_grad=False`` the first block skips it and
        None is returned (a hook's backward for block 0 then does not run)."""
        blocks, hook = list(self.layer), self._hook
        for i in reversed(range(len(blocks))):
            first = i == 0
            dy = blocks[i].backward(dy, dx=dx if first and hook is None else None, input_grad=input_grad or not first)
            if hook is not None and dy is not None:
                dy = hook.backward(i, dy)
        if hook is not None and dx is not None and dy is not None:
            dx = self._check_dx(dx, dy.shape)
            dx += dy
            return dx
        return dy


def _ids(a: np.ndarray | None, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    if a is None:
        return None
    if not isinstance(a, np.ndarray) or a.dtype != np.int64 or a.ndim != 2 or not a.flags.c_contiguous:
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise TypeError(f"{name} must be a C-contiguous int64 (B, T) numpy.ndarray, got {got}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, input_ids has {shape}")
    return a


class BertModel(Module):
    """The BERT encoder: ``forward(input_ids, attention_mask, token_type_ids)`` -> last hidden state (B, T, H).

    Build it with :meth:`from_pretrained` (a checkpoint folder) or :meth:`from_state_dict`. All
    parameters start trainable; call ``requires_grad_(False)`` to freeze the backbone before
    adding adapters. ``backward(dy)`` accumulates into every trainable parameter and skips the
    embedding block when nothing in it is trainable. No pooler: use :meth:`sentence_embedding`
    (the :class:`~peftc.nn.MeanPooling` child ``pooling``, normalising).

    Prompt tuning enters through two documented inputs of :meth:`forward`, not through the layers'
    arrays: ``inputs_embeds`` (vectors in place of the word lookup, whose gradient the backward
    returns) and ``block_input_hook`` (replaces positions of each block's input; see :meth:`forward`).
    """

    IGNORED_KEYS = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")

    def __init__(self, config: BertConfig, embeddings: BertEmbeddings, encoder: BertEncoder) -> None:
        self.config = config
        self.embeddings = embeddings
        self.encoder = encoder
        self.pooling = MeanPooling(normalize=True)
        self._mask: np.ndarray | None = None
        self._packed = False
        self._embeds = False

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, config: BertConfig, state: dict[str, np.ndarray], seed: int = 0) -> BertModel:
        """Wrap the arrays of a Hugging Face BERT state dict in place (keys may carry a ``bert.`` prefix)."""
        state = {k[5:] if k.startswith("bert.") else k: v for k, v in state.items()}
        used: set[str] = set()

        def take(name: str) -> np.ndarray:
            if name not in state:
                raise KeyError(f"checkpoint has no tensor {name!r}")
            a = state[name]
            if a.dtype != np.float32 or not a.flags.c_contiguous:
                a = np.ascontiguousarray(a, dtype=np.float32)  # a half-precision file must be widened once
            used.add(name)
            return a

        def linear(prefix: str) -> Linear:
            return Linear.from_weights(take(prefix + ".weight"), take(prefix + ".bias"))

        def norm(prefix: str) -> LayerNorm:
            return LayerNorm.from_weights(take(prefix + ".weight"), take(prefix + ".bias"), config.layer_norm_eps)

        g = Generator(seed)
        emb = BertEmbeddings(Embedding.from_weights(take("embeddings.word_embeddings.weight")),
                             Embedding.from_weights(take("embeddings.position_embeddings.weight")),
                             Embedding.from_weights(take("embeddings.token_type_embeddings.weight")),
                             norm("embeddings.LayerNorm"), config.hidden_dropout_prob, g, config.pad_token_id)
        layers = []
        for i in range(config.num_hidden_layers):
            p = f"encoder.layer.{i}."
            self_att = BertSelfAttention(linear(p + "attention.self.query"), linear(p + "attention.self.key"),
                                         linear(p + "attention.self.value"), config.num_attention_heads,
                                         config.attention_probs_dropout_prob, g)
            att_out = BertResidualOutput(linear(p + "attention.output.dense"), norm(p + "attention.output.LayerNorm"),
                                         config.hidden_dropout_prob, g)
            out = BertResidualOutput(linear(p + "output.dense"), norm(p + "output.LayerNorm"),
                                     config.hidden_dropout_prob, g)
            layers.append(BertLayer(BertAttention(self_att, att_out), BertIntermediate(linear(p + "intermediate.dense")),
                                    out))
        unexpected = sorted(set(state) - used - set(cls.IGNORED_KEYS))
        if unexpected:
            raise KeyError(f"checkpoint has tensors the BERT encoder does not use: {unexpected[:5]}")
        return cls(config, emb, BertEncoder(layers))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, seed: int = 0) -> BertModel:
        """Load ``config.json`` and ``model.safetensors`` from a Hugging Face checkpoint folder."""
        config_path, state = read_checkpoint_folder(folder)
        model = cls.from_state_dict(BertConfig.from_json(config_path), state, seed)
        model.eval()
        return model

    # -- forward / backward ------------------------------------------------------------------------
    def forward(self, input_ids: np.ndarray | None, attention_mask: np.ndarray | None = None,
                token_type_ids: np.ndarray | None = None, skip_padding: bool = False,
                inputs_embeds: np.ndarray | None = None, block_input_hook: BlockInputHook | None = None
                ) -> np.ndarray:
        """input_ids, attention_mask (1 keep, 0 pad), token_type_ids: int64 (B, T) -> (B, T, H) float32.

        ``skip_padding=True`` (inference only: eval mode, no backward afterwards) runs the encoder on
        the real tokens alone (:class:`PackedTokens`): the linear layers' inputs are then (N, H) rows,
        the real tokens' outputs are those of the padded forward (up to float rounding) and the
        padding positions' outputs are zero instead of the values a padded forward computes for them.

        ``inputs_embeds`` (B, T, H) float32, as in Hugging Face: used instead of the word embeddings of
        ``input_ids`` (which may then be None); :meth:`backward` returns their gradient.

        ``block_input_hook``: an object with ``forward(j, x) -> x'`` and ``backward(j, dx') -> dx``. Before
        block j runs (j = 0 .. L-1) its input x (B, T, H) is replaced by ``forward(j, x)``, which must
        return a new array, or x itself unchanged: x is the previous block's output, which a layer may
        have cached, so it is never written into. The backward hands ``backward(j, .)`` the gradient of
        what block j took in (an array the hook may modify) and continues with what it returns, the
        gradient of x; the hook accumulates its own parameters' gradients there.
        """
        if inputs_embeds is None or input_ids is not None:
            input_ids = _ids(input_ids, "input_ids")
            shape = input_ids.shape
        else:
            shape = inputs_embeds.shape[:2] if isinstance(inputs_embeds, np.ndarray) else None
        if inputs_embeds is not None and (not isinstance(inputs_embeds, np.ndarray)
                                          or inputs_embeds.shape[:2] != shape):
            got = inputs_embeds.shape if isinstance(inputs_embeds, np.ndarray) else type(inputs_embeds).__name__
            raise ValueError(f"inputs_embeds must be (B, T, H) with (B, T) = input_ids' {shape}, got {got}")
        attention_mask = _ids(attention_mask, "attention_mask", shape)
        token_type_ids = _ids(token_type_ids, "token_type_ids", shape)
        self._mask = attention_mask
        self._packed = False
        self._embeds = inputs_embeds is not None
        if skip_padding and self.training:
            raise ValueError("skip_padding=True is for inference: call eval() first (a packed forward has no backward)")
        x = self.embeddings(input_ids, token_type_ids, inputs_embeds)
        if skip_padding and attention_mask is not None and not attention_mask.all():
            if block_input_hook is not None:
                raise ValueError("block_input_hook works on padded (B, T, H) states: call without skip_padding")
            packed = PackedTokens(attention_mask)
            self._packed = True
            return packed.scatter(self.encoder(packed.gather(x), packed))
        return self.encoder(x, attention_mask, block_input_hook)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the gradients of all trainable parameters given d(last hidden state).

        The input is token ids, which have no gradient (None, and a ``dx`` is an error), unless the
        forward took ``inputs_embeds``: then their gradient is returned (new, added into ``dx``, or
        skipped with ``input_grad=False``).
        """
        if self._packed:
            raise RuntimeError("BertModel.backward after a skip_padding=True forward; run the forward without it")
        if not self._embeds:
            self._no_input_grad(dx, "integer token ids (the forward took no inputs_embeds)")
        want = input_grad and self._embeds
        # frozen embeddings and no inputs_embeds gradient: the first block need not compute d(its input) at all
        need = want or self.embeddings.trainable()
        d = self.encoder.backward(dy, input_grad=need)
        if not need:
            return None
        return self.embeddings.backward(d, dx=dx, input_grad=want)

    def sentence_embedding(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                           token_type_ids: np.ndarray | None = None, skip_padding: bool = False) -> np.ndarray:
        """Mean of the last hidden state over unmasked tokens, L2-normalised: (B, H) (sentence-transformers).
        ``skip_padding`` as in :meth:`forward` (the padding is excluded from the mean either way)."""
        hidden = self.forward(input_ids, attention_mask, token_type_ids, skip_padding)
        return self.pooling(hidden, self._mask)

    def sentence_embedding_backward(self, demb: np.ndarray) -> None:
        """Backward of :meth:`sentence_embedding` through pooling, normalisation and the encoder."""
        self.backward(self.pooling.backward(demb))
