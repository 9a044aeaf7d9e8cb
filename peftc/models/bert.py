"""A BERT-family encoder (post-LN Transformer blocks) built from a Hugging Face checkpoint folder.

The folder holds ``config.json`` and ``model.safetensors`` (read with the ``safetensors`` NumPy
API); the arrays are used in place as the module parameters. Module and parameter names are the
checkpoint's (``encoder.layer.0.attention.self.query`` ...), and every linear layer is a
:class:`peftc.nn.Linear`, so adapters replace them with :meth:`Module.set_submodule`.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np

from ..bf16 import bf16_to_float32
from ..nn import (GELU, BertEmbeddings, Dropout, Embedding, LayerNorm, Linear, MeanPooling, Module, ModuleList,
                  SelfAttention)
from ..nn.packed_tokens import PackedTokens
from ..nn.row_adapters import packed_batch_rows
from ..nn.shared_rows import shared_input_rows
from ..random import Generator
from .hf_folder import read_checkpoint_folder


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
    initializer_range: float = 0.02

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
    mask runs each sequence's real tokens by themselves (:class:`~peftc.nn.SelfAttention`)."""

    def __init__(self, query: Linear, key: Linear, value: Linear, num_heads: int, dropout: float,
                 generator: Generator) -> None:
        super().__init__(query, key, value, num_heads, dropout, generator=generator)


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

    def forward(self, x: np.ndarray, residual: np.ndarray, packed: PackedTokens | None = None) -> np.ndarray:
        """x, residual: (B, T, .) or, with ``packed``, the (N, .) rows of its real tokens (dropout then draws the
        padded batch's mask at them)."""
        h = self.dropout(self.dense(x), packed)  # a fresh array either way: safe to add into
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
        packed = attention_mask if isinstance(attention_mask, PackedTokens) else None
        return self.output(getattr(self, "self")(x, attention_mask), x, packed)

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
        packed = attention_mask if isinstance(attention_mask, PackedTokens) else None
        return self.output(self.intermediate(h), h, packed)

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
                block_input_hook: BlockInputHook | None = None, blocks: range | None = None) -> np.ndarray:
        """x (B, T, H) with a (B, T) mask, or the (N, H) rows of :class:`PackedTokens`; ``blocks`` (default
        all) the blocks to run, in order."""
        if block_input_hook is not None and isinstance(attention_mask, PackedTokens):
            raise ValueError("block_input_hook works on padded (B, T, H) states, not on a skip_padding forward")
        self._hook = block_input_hook
        for j in blocks if blocks is not None else range(len(self.layer)):
            block = self.layer[j]
            if block_input_hook is not None:
                x = block_input_hook.forward(j, x)
            x = block(x, attention_mask)
        return x

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """d(encoder input): new, added into ``dx``, or with ``input_grad=False`` None is returned and the backward
        stops at the lowest block holding a trainable parameter (that block skips d(its input), the blocks below
        it are not run, nor a hook's backward for them)."""
        blocks, hook = list(self.layer), self._hook
        lowest = 0
        if not input_grad:
            trainable = [i for i, b in enumerate(blocks) if any(p.requires_grad for _, p in b.named_parameters())]
            if hook is None and not trainable:
                return None
            lowest = trainable[0] if hook is None else 0
        for i in reversed(range(lowest, len(blocks))):
            first = i == lowest
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


# the layer types of a block (and the embeddings) with no adapter in them: see BertModel._shared_blocks
_PLAIN_LAYERS = frozenset({BertEmbeddings, Embedding, BertLayer, BertAttention, BertSelfAttention, BertResidualOutput,
                           BertIntermediate, Linear, LayerNorm, Dropout, GELU})


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
        self._packed: PackedTokens | None = None
        self._packed_training = False
        self._embeds = False

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, config: BertConfig, state: dict[str, np.ndarray], seed: int = 0) -> BertModel:
        """Wrap the arrays of a Hugging Face BERT state dict in place (keys may carry a ``bert.`` prefix).

        Arrays that are not C-contiguous float32 are converted once; uint16 arrays are bf16 bit patterns (what
        :meth:`state_dict` gives for a bf16 weight) and are widened exactly to float32."""
        state = {k[5:] if k.startswith("bert.") else k: v for k, v in state.items()}
        used: set[str] = set()

        def take(name: str) -> np.ndarray:
            if name not in state:
                raise KeyError(f"checkpoint has no tensor {name!r}")
            a = state[name]
            if a.dtype == np.uint16:
                a = bf16_to_float32(a)
            elif a.dtype != np.float32 or not a.flags.c_contiguous:
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
    def from_config(cls, config: BertConfig, seed: int = 0) -> BertModel:
        """Random weights as transformers initialises BERT: N(0, initializer_range) tables and weights, zero
        biases, unit LayerNorms (the padding row of the word table is not zeroed: peftc masks padding instead).

        >>> model = BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
        ...                                          num_attention_heads=2, intermediate_size=16))
        >>> model.eval()(np.array([[2, 7, 3]]), np.ones((1, 3), np.int64)).shape
        (1, 3, 8)
        """
        g = Generator(seed)
        h, inter, std = config.hidden_size, config.intermediate_size, config.initializer_range
        state: dict[str, np.ndarray] = {
            "embeddings.word_embeddings.weight": g.normal((config.vocab_size, h), 0.0, std),
            "embeddings.position_embeddings.weight": g.normal((config.max_position_embeddings, h), 0.0, std),
            "embeddings.token_type_embeddings.weight": g.normal((config.type_vocab_size, h), 0.0, std),
            "embeddings.LayerNorm.weight": np.ones(h, np.float32), "embeddings.LayerNorm.bias": np.zeros(h, np.float32)}
        shapes = {"attention.self.query": (h, h), "attention.self.key": (h, h), "attention.self.value": (h, h),
                  "attention.output.dense": (h, h), "intermediate.dense": (inter, h), "output.dense": (h, inter)}
        for i in range(config.num_hidden_layers):
            p = f"encoder.layer.{i}."
            for name, shape in shapes.items():
                state[p + name + ".weight"] = g.normal(shape, 0.0, std)
                state[p + name + ".bias"] = np.zeros(shape[0], np.float32)
            for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
                state[p + ln + ".weight"], state[p + ln + ".bias"] = np.ones(h, np.float32), np.zeros(h, np.float32)
        return cls.from_state_dict(config, state, seed)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, seed: int = 0, dtype: str = "float32") -> BertModel:
        """Load ``config.json`` and ``model.safetensors`` from a Hugging Face checkpoint folder.

        ``dtype="bfloat16"`` freezes every encoder linear layer's weight and keeps it in bf16 only (rounded
        to nearest even, packed once for the bf16 kernels: half the bytes, no float32 copy; see
        :meth:`peftc.nn.Linear.to_bfloat16` and :mod:`peftc.bf16`). Embeddings, LayerNorms, biases and any
        adapter added later stay float32.

        >>> model = BertModel.from_pretrained(folder, dtype="bfloat16")  # doctest: +SKIP
        """
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
        config_path, state = read_checkpoint_folder(folder)
        model = cls.from_state_dict(BertConfig.from_json(config_path), state, seed)
        del state  # the layers hold the only references: packing a weight then frees its float32 array
        if dtype == "bfloat16":
            for _, module in model.named_modules():
                if isinstance(module, Linear):
                    module.weight.requires_grad = False
                    module.to_bfloat16()
        model.eval()
        return model

    # -- forward / backward ------------------------------------------------------------------------
    def forward(self, input_ids: np.ndarray | None, attention_mask: np.ndarray | None = None,
                token_type_ids: np.ndarray | None = None, skip_padding: bool | None = None,
                inputs_embeds: np.ndarray | None = None, block_input_hook: BlockInputHook | None = None
                ) -> np.ndarray:
        """input_ids, attention_mask (1 keep, 0 pad), token_type_ids: int64 (B, T) -> (B, T, H) float32.

        ``skip_padding`` runs the encoder on the real tokens alone (:class:`PackedTokens`) when the mask has
        padding: the layers' inputs are then the (N, H) rows of the N real tokens, so the products cost the
        real tokens only. The real tokens' outputs and, in training, every parameter gradient are those of the
        padded forward (up to float rounding; the hidden and attention dropouts draw the same masks, per padded
        position; an adapter's own input dropout, ``lora_dropout``, draws over the rows its layer sees, so with
        it a packed step is an equally distributed but different draw from the padded one); the padding
        positions' outputs are zero instead of the values a padded forward computes for them (constants: the
        backward ignores ``dy`` there, which is what mean pooling, a [CLS] read-out or a loss that ignores the
        padding give anyway).
        ``None`` (default): on in training mode, off in eval mode (outputs at the padding as Hugging Face
        computes them). In training, rows whose real tokens are not one run (holes in the mask) and a
        ``block_input_hook`` run padded; an explicit ``skip_padding=True`` with a hook is an error.

        ``inputs_embeds`` (B, T, H) float32, as in Hugging Face: used instead of the word embeddings of
        ``input_ids`` (which may then be None); :meth:`backward` returns their gradient.

        ``block_input_hook``: an object with ``forward(j, x) -> x'`` and ``backward(j, dx') -> dx``. Before
        block j runs (j = 0 .. L-1) its input x (B, T, H) is replaced by ``forward(j, x)``, which must
        return a new array, or x itself unchanged: x is the previous block's output, which a layer may
        have cached, so it is never written into. The backward hands ``backward(j, .)`` the gradient of
        what block j took in (an array the hook may modify) and continues with what it returns, the
        gradient of x; the hook accumulates its own parameters' gradients there.

        Example:
            >>> model = BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
            ...                                          num_attention_heads=2, intermediate_size=16)).train()
            >>> ids, mask = np.array([[2, 7, 3], [2, 3, 0]]), np.array([[1, 1, 1], [1, 1, 0]])
            >>> out = model(ids, mask)          # real tokens only; zeros at the padding
            >>> float(np.abs(out[1, 2]).max())
            0.0
            >>> _ = model.backward(np.ones_like(out))   # dout at the padding is ignored
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
        self._packed = None
        self._embeds = inputs_embeds is not None
        if skip_padding and block_input_hook is not None:
            raise ValueError("block_input_hook works on padded (B, T, H) states: call with skip_padding=False")
        packed = None
        if attention_mask is not None and (self.training if skip_padding is None else skip_padding) \
                and block_input_hook is None and not attention_mask.all():
            packed = PackedTokens(attention_mask)
            if self.training and not packed.contiguous:
                if skip_padding:
                    raise ValueError(f"skip_padding=True in training needs each row's real tokens in one run (right "
                                     f"or left padding); the attention_mask of shape {attention_mask.shape} has holes")
                packed = None
        if packed is None:
            return self.encoder(self.embeddings(input_ids, token_type_ids, inputs_embeds), attention_mask,
                                block_input_hook)
        self._packed, self._packed_training = packed, self.training
        shared = self._shared_blocks() if inputs_embeds is None else 0
        h, start, rows = None, 0, None
        if shared:
            rows = self._shared_forward(input_ids, attention_mask, token_type_ids, packed, shared)
            start = shared if rows is not None else 0
        if rows is None:
            h = packed.gather(self.embeddings(input_ids, token_type_ids, inputs_embeds))
            share = contextlib.nullcontext()
        else:  # block `start` reads identical rows: its frozen products of them run once per distinct row
            h, distinct, source = rows
            share = shared_input_rows(h, distinct, source)
        with packed_batch_rows(packed.batch_row, packed.mask.shape[0]), share:
            return packed.scatter(self.encoder(h, packed, blocks=range(start, len(self.encoder.layer))))

    def _shared_blocks(self) -> int:
        """How many of the lowest blocks compute every row the same way from its tokens alone: plain frozen
        layers (no adapter layer, nothing trainable, no active dropout; the embeddings likewise). Identical
        rows of a batch (N adapters trained on the same inputs) give identical outputs there."""
        def plain(m: Module) -> bool:
            if any(p.requires_grad for _, p in m.named_parameters()):
                return False
            for _, c in m.named_modules():
                if type(c) not in _PLAIN_LAYERS:
                    return False
                drop = c.p if isinstance(c, Dropout) else c.dropout if isinstance(c, SelfAttention) else 0.0
                if self.training and drop > 0.0:
                    return False
            return True

        if not plain(self.embeddings):
            return 0
        count = 0
        for block in self.encoder.layer:
            if not plain(block):
                break
            count += 1
        return count

    def _shared_forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None,
                        packed: PackedTokens, shared: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(the real-token rows entering block ``shared``, the distinct ones, the distinct row of each): the
        embeddings and blocks below it run once per distinct batch row (None when every row is distinct). Nothing
        there trains, so the backward stops above them."""
        key = np.concatenate([a for a in (input_ids, attention_mask, token_type_ids) if a is not None], axis=1)
        _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
        if first.size == key.shape[0]:
            return None
        inverse = inverse.reshape(-1)
        types = token_type_ids[first] if token_type_ids is not None else None
        distinct = PackedTokens(np.ascontiguousarray(attention_mask[first]))
        x = self.embeddings(np.ascontiguousarray(input_ids[first]), types)
        h = self.encoder(distinct.gather(x), distinct, blocks=range(shared))
        # row b's tokens are those of its distinct row inverse[b]
        lengths = np.diff(packed.offsets)
        source = np.repeat(distinct.offsets[:-1][inverse] - packed.offsets[:-1], lengths) + np.arange(packed.count)
        return np.ascontiguousarray(h[source]), h, source


    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the gradients of all trainable parameters given d(last hidden state).

        The input is token ids, which have no gradient (None, and a ``dx`` is an error), unless the
        forward took ``inputs_embeds``: then their gradient is returned (new, added into ``dx``, or
        skipped with ``input_grad=False``). After a forward on the real tokens only (see :meth:`forward`)
        ``dy`` at the padding positions is ignored (the outputs there were constant zeros).
        """
        packed = self._packed
        if packed is not None:
            if not self._packed_training:
                raise RuntimeError("BertModel.backward after an eval-mode skip_padding forward (inference keeps "
                                   "nothing for a backward); run the forward in training mode or without it")
            if dy.shape != packed.mask.shape + (self.config.hidden_size,):
                raise ValueError(f"dy has shape {dy.shape}, the forward's output was "
                                 f"{packed.mask.shape + (self.config.hidden_size,)}")
        if not self._embeds:
            self._no_input_grad(dx, "integer token ids (the forward took no inputs_embeds)")
        want = input_grad and self._embeds
        # frozen embeddings and no inputs_embeds gradient: the first block need not compute d(its input) at all
        need = want or self.embeddings.trainable()
        d = self.encoder.backward(dy if packed is None else packed.gather(dy), input_grad=need)
        if not need:
            return None
        if packed is not None:
            d = packed.scatter(d)
        return self.embeddings.backward(d, dx=dx, input_grad=want)

    def sentence_embedding(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                           token_type_ids: np.ndarray | None = None, skip_padding: bool | None = None) -> np.ndarray:
        """Mean of the last hidden state over unmasked tokens, L2-normalised: (B, H) (sentence-transformers).
        ``skip_padding`` as in :meth:`forward` (the padding is excluded from the mean either way)."""
        hidden = self.forward(input_ids, attention_mask, token_type_ids, skip_padding)
        return self.pooling(hidden, self._mask)

    def sentence_embedding_backward(self, demb: np.ndarray) -> None:
        """Backward of :meth:`sentence_embedding` through pooling, normalisation and the encoder."""
        self.backward(self.pooling.backward(demb))

    # -- running the top blocks on cached inputs ------------------------------------------------------
    def hidden_states_before(self, block: int, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                             token_type_ids: np.ndarray | None = None) -> np.ndarray:
        """(B, T, H): the hidden states entering block ``block`` (0: the embeddings' output; L: the last hidden
        state), for :meth:`top_blocks` to start from. Inference only (eval mode: no dropout, no backward), with
        the padding skipped as in ``forward(..., skip_padding=True)``: zero at the padded positions.

        When blocks 0 .. block-1 are frozen, these states are fixed per example: compute them once, keep them,
        and run only the top blocks on them (training included).

        >>> bert = BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
        ...                                         num_attention_heads=2, intermediate_size=16)).eval()
        >>> ids, mask = np.array([[2, 7, 3], [2, 3, 0]]), np.array([[1, 1, 1], [1, 1, 0]])
        >>> h = bert.hidden_states_before(1, ids, mask)
        >>> real = mask == 1                # padded positions: zero here, as Hugging Face's in bert(ids, mask)
        >>> bool(np.allclose(bert.top_blocks(1)(h, mask)[real], bert(ids, mask)[real], atol=1e-5))
        True
        """
        self._check_block(block)
        if self.training:
            raise ValueError("hidden_states_before is for inference: call eval() first (it keeps nothing for a "
                             "backward, and the cached states must not depend on dropout)")
        input_ids = _ids(input_ids, "input_ids")
        attention_mask = _ids(attention_mask, "attention_mask", input_ids.shape)
        token_type_ids = _ids(token_type_ids, "token_type_ids", input_ids.shape)
        x = self.embeddings(input_ids, token_type_ids, None)
        lower = list(self.encoder.layer)[:block]
        if attention_mask is None or attention_mask.all():
            for layer in lower:
                x = layer(x, attention_mask)
            return x
        packed = PackedTokens(attention_mask)
        rows = packed.gather(x)
        for layer in lower:
            rows = layer(rows, packed)
        return packed.scatter(rows)

    def top_blocks(self, start: int) -> BertTopBlocks:
        """A module running blocks ``start`` .. L-1 of this encoder (the same layers and parameters, adapters
        included) on the states entering block ``start`` (:meth:`hidden_states_before`), with their mask.

        >>> bert = BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
        ...                                         num_attention_heads=2, intermediate_size=16))
        >>> ids, mask = np.array([[2, 7, 3]]), np.ones((1, 3), np.int64)
        >>> h = bert.eval().hidden_states_before(1, ids, mask)   # frozen lower blocks: computed once, in eval
        >>> top = bert.top_blocks(1).train()
        >>> out = top(h, mask); top.backward(np.ones_like(out), input_grad=False)  # the top block's gradients only
        """
        self._check_block(start)
        return BertTopBlocks(list(self.encoder.layer)[start:], start)

    def _check_block(self, block: int) -> None:
        layers = self.config.num_hidden_layers
        if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or not 0 <= block <= layers:
            raise ValueError(f"block must be an integer in [0, {layers}] (num_hidden_layers={layers}), got {block!r}")


class BertTopBlocks(Module):
    """Blocks ``start`` .. L-1 of a :class:`BertModel` (made by :meth:`BertModel.top_blocks`):
    ``forward(hidden_states, attention_mask, skip_padding=False)`` with hidden_states (B, T, H) float32 entering
    block ``start`` and the (B, T) int64 mask (or None) -> the last hidden state (B, T, H), as
    ``BertModel.forward`` computes it from the tokens. ``skip_padding=True`` runs the blocks on the real tokens
    only, in training too, as ``BertModel.forward(..., skip_padding=True)`` does (zeros at the padding, which
    the backward ignores in ``dy``; each row's real tokens must be one run). ``backward(dy, *, dx=None,
    input_grad=True)`` accumulates the gradients of those blocks' trainable parameters and returns
    d(hidden_states) (new, added into ``dx``, or None with ``input_grad=False``, which also spares block
    ``start`` that product); after a packed forward it is zero at the padding.

    Its children are the encoder's own layers, shared, not copied (``named_parameters()`` lists the top blocks'
    parameters, adapters included, under ``layer.0...``): keep it out of another module's attributes, where
    they would be listed twice. It follows the layers' train / eval mode.
    """

    def __init__(self, layers: list[BertLayer], start: int) -> None:
        self.layer = ModuleList(list(layers))
        self.start = int(start)
        self._packed: PackedTokens | None = None

    def forward(self, hidden_states: np.ndarray, attention_mask: np.ndarray | None = None,
                skip_padding: bool = False) -> np.ndarray:
        if (not isinstance(hidden_states, np.ndarray) or hidden_states.dtype != np.float32
                or hidden_states.ndim != 3):
            got = (f"{hidden_states.dtype} {hidden_states.shape}" if isinstance(hidden_states, np.ndarray)
                   else type(hidden_states).__name__)
            raise TypeError(f"hidden_states must be a float32 (B, T, H) numpy.ndarray, got {got}")
        attention_mask = _ids(attention_mask, "attention_mask", hidden_states.shape[:2])
        self._packed = None
        if skip_padding and attention_mask is not None and not attention_mask.all() and len(self.layer):
            packed = PackedTokens(attention_mask)
            if self.layer[0].training and not packed.contiguous:  # the layers' mode (this wrapper follows it)
                raise ValueError(f"skip_padding=True in training needs each row's real tokens in one run; the "
                                 f"attention_mask of shape {attention_mask.shape} has holes")
            self._packed = packed
            rows = packed.gather(hidden_states)
            with packed_batch_rows(packed.batch_row, packed.mask.shape[0]):
                for layer in self.layer:
                    rows = layer(rows, packed)
            return packed.scatter(rows)
        x = hidden_states
        for layer in self.layer:
            x = layer(x, attention_mask)
        return x

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        layers = list(self.layer)
        packed = self._packed
        if packed is not None:
            if dy.shape != packed.mask.shape + (dy.shape[-1],):
                raise ValueError(f"dy has shape {dy.shape}, the forward's output was {packed.mask.shape} x H")
            rows = packed.gather(dy)
            for i in reversed(range(len(layers))):
                rows = layers[i].backward(rows, input_grad=input_grad or i > 0)
            if not input_grad:
                return None
            if dx is None:
                return packed.scatter(rows)
            dx = self._check_dx(dx, dy.shape)
            dx += packed.scatter(rows)
            return dx
        for i in reversed(range(len(layers))):
            first = i == 0
            dy = layers[i].backward(dy, dx=dx if first else None, input_grad=input_grad or not first)
        if not layers:  # start = L: the states are the output
            if not input_grad:
                return None
            if dx is None:
                return dy.copy()
            dx = self._check_dx(dx, dy.shape)
            dx += dy
            return dx
        return dy
