"""A GPT-2-family causal decoder (pre-LN Transformer blocks) built from a Hugging Face checkpoint folder.

Module and parameter names are those of transformers' ``GPT2LMHeadModel`` (``transformer.h.0.attn.c_attn``,
``transformer.h.0.mlp.c_fc``, ``transformer.ln_f``, ``lm_head`` ...), so PEFT's target_modules and
adapter files name the same layers. The four linear maps of a block are :class:`~peftc.nn.Conv1D`
layers: their checkpoint tensors are (in, out) and are transposed once at load (see that class), so
a LoRA adapter on them is PEFT's LoRA with ``fan_in_fan_out=True``. The LM head is tied to the token
embedding: ``lm_head.weight`` and ``transformer.wte.weight`` are one :class:`~peftc.nn.Parameter`.

    model = GPT2LMHeadModel.from_pretrained("folder")          # config.json + model.safetensors
    logits = model(input_ids)                                  # (B, T, V)
    loss = model.causal_lm_loss(input_ids, labels=input_ids)   # Hugging Face's shifted mean cross-entropy
    model.causal_lm_loss_backward()                            # gradients of every trainable parameter
    samples = model.eval().generate(prompt, max_new_tokens=8, num_return_sequences=256, seed=0)  # KV cache
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np

from .. import functional as F
from ..nn import GELU, Conv1D, Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, Parameter
from ..random import Generator
from .hf_folder import read_checkpoint_folder
from .bert import _ids


@dataclass
class GPT2Config:
    """The fields of a Hugging Face GPT-2 ``config.json`` that the decoder uses (transformers' names and defaults).

    >>> GPT2Config(n_embd=64, n_head=4).head_dim
    16
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    model_type: str = "gpt2"

    def __post_init__(self) -> None:
        if self.activation_function not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
            raise ValueError(f"activation_function must be 'gelu_new', 'gelu_pytorch_tanh' or 'gelu', "
                             f"got {self.activation_function!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if not self.scale_attn_weights or self.scale_attn_by_inverse_layer_idx:
            raise ValueError("only scale_attn_weights=True with scale_attn_by_inverse_layer_idx=False (GPT-2's "
                             "1/sqrt(head_dim) scaling) is supported")
        if self.add_cross_attention:
            raise ValueError("add_cross_attention=True (an encoder-decoder GPT-2) is not supported")
        if not self.tie_word_embeddings:
            raise ValueError("tie_word_embeddings=False is not supported: GPT-2's LM head is the token embedding")

    @property
    def inner_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def gelu_approximate(self) -> str:
        return "none" if self.activation_function == "gelu" else "tanh"

    @classmethod
    def from_dict(cls, d: dict) -> GPT2Config:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> GPT2Config:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["architectures"] = ["GPT2LMHeadModel"]
        return out

    def num_non_embedding_parameters(self) -> int:
        """Parameters outside the token and position tables (the N of scaling laws): blocks and final LN."""
        h, i = self.n_embd, self.inner_dim
        block = 4 * h + (h * 3 * h + 3 * h) + (h * h + h) + (h * i + i) + (i * h + h)
        return self.n_layer * block + 2 * h


class KVCache:
    """The keys and values of every layer for decoding: ``keys[l]``, ``values[l]`` (B, capacity, H) float32, of
    which the first ``length`` positions are filled. :meth:`GPT2LMHeadModel.forward_cached` appends to it.

    >>> cache = KVCache(n_layer=2, batch=4, capacity=16, hidden=8)
    >>> cache.length, cache.keys[0].shape
    (0, (4, 16, 8))
    """

    def __init__(self, n_layer: int, batch: int, capacity: int, hidden: int) -> None:
        self.keys = [np.zeros((batch, capacity, hidden), np.float32) for _ in range(n_layer)]
        self.values = [np.zeros((batch, capacity, hidden), np.float32) for _ in range(n_layer)]
        self.length = 0

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1]

    def repeat(self, times: int) -> KVCache:
        """A new cache whose row b * times + j is row b of this one (one prompt, many continuations)."""
        out = KVCache.__new__(KVCache)
        out.keys = [np.repeat(k, times, axis=0) for k in self.keys]
        out.values = [np.repeat(v, times, axis=0) for v in self.values]
        out.length = self.length
        return out


class GPT2Attention(Module):
    """Causal multi-head self-attention on one fused projection: q, k, v = split(c_attn(x)), then c_proj.

    ``forward(x, attention_mask)``: x (B, T, H); attention_mask (B, T) int64 (1 keep, 0 padding) or None. Keys
    after a query are excluded (the causal mask), padded keys too.
    """

    def __init__(self, c_attn: Conv1D, c_proj: Conv1D, num_heads: int, attn_pdrop: float, resid_pdrop: float,
                 generator: Generator) -> None:
        self.c_attn = c_attn
        self.c_proj = c_proj
        self.num_heads = int(num_heads)
        self.attn_pdrop = float(attn_pdrop)
        self.resid_dropout = Dropout(resid_pdrop, generator)
        self.generator = generator
        self._cache: tuple | None = None

    def forward(self, x: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        b, t, h = x.shape
        qkv = self.c_attn(x)
        q, k, v = (np.ascontiguousarray(qkv[..., i * h:(i + 1) * h]) for i in range(3))
        p = self.attn_pdrop if self.training else 0.0
        offset = self.generator.take(b * self.num_heads * t * t) if p > 0.0 else 0
        ctx, att = F.attention_forward(q, k, v, self.num_heads, attention_mask, True, p, self.generator.seed, offset)
        self._cache = (q, k, v, att, p, offset)
        return self.resid_dropout(self.c_proj(ctx))

    def forward_cached(self, x: np.ndarray, cache: KVCache, layer: int) -> np.ndarray:
        """Inference on the new positions x (B, TQ, H): their keys and values go into the cache at
        ``cache.length``, and they attend to everything cached before them (no backward)."""
        b, t, h = x.shape
        qkv = self.c_attn(x)
        start = cache.length
        cache.keys[layer][:, start:start + t] = qkv[..., h:2 * h]
        cache.values[layer][:, start:start + t] = qkv[..., 2 * h:]
        q = np.ascontiguousarray(qkv[..., :h])
        self._cache = None
        ctx = F.attention_cached_forward(q, cache.keys[layer], cache.values[layer], start + t, self.num_heads)
        return self.c_proj(ctx)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the projections' gradients; d(x) as the module contract says (new, into ``dx``, or None)."""
        if self._cache is None:
            raise RuntimeError("GPT2Attention.backward called before forward")
        q, k, v, att, p, offset = self._cache
        dctx = self.c_proj.backward(self.resid_dropout.backward(dy))
        dqkv = F.zeros((*q.shape[:-1], 3 * q.shape[-1]))
        dq, dk, dv = (F.zeros(q.shape) for _ in range(3))
        F.attention_backward(dctx, q, k, v, att, self.num_heads, p, self.generator.seed, offset, dq=dq, dk=dk, dv=dv)
        h = q.shape[-1]
        for i, g in enumerate((dq, dk, dv)):
            dqkv[..., i * h:(i + 1) * h] = g
        return self.c_attn.backward(dqkv, dx=dx, input_grad=input_grad)


class GPT2MLP(Module):
    """c_fc, GELU (tanh form for ``gelu_new``), c_proj, dropout."""

    def __init__(self, c_fc: Conv1D, c_proj: Conv1D, approximate: str, resid_pdrop: float,
                 generator: Generator) -> None:
        self.c_fc = c_fc
        self.act = GELU(approximate)
        self.c_proj = c_proj
        self.dropout = Dropout(resid_pdrop, generator)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """d(x): new, added into ``dx``, or None with ``input_grad=False``."""
        d = self.c_proj.backward(self.dropout.backward(dy))
        return self.c_fc.backward(self.act.backward(d), dx=dx, input_grad=input_grad)


class GPT2Block(Module):
    """One pre-LN block: h = x + attn(ln_1(x)); out = h + mlp(ln_2(h))."""

    def __init__(self, ln_1: LayerNorm, attn: GPT2Attention, ln_2: LayerNorm, mlp: GPT2MLP) -> None:
        self.ln_1 = ln_1
        self.attn = attn
        self.ln_2 = ln_2
        self.mlp = mlp

    def forward(self, x: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        h = self.attn(self.ln_1(x), attention_mask)
        h += x  # attn's output is a new array (c_proj's, or dropout's): safe to add into
        out = self.mlp(self.ln_2(h))
        out += h
        return out

    def forward_cached(self, x: np.ndarray, cache: KVCache, layer: int) -> np.ndarray:
        h = self.attn.forward_cached(self.ln_1(x), cache, layer)
        h += x
        out = self.mlp(self.ln_2(h))
        out += h
        return out

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """d(x): new, added into ``dx``, or (``input_grad=False``) only the parameter gradients and None."""
        dh = self.ln_2.backward(self.mlp.backward(dy))
        dh += dy  # the residual path around the MLP
        da = self.ln_1.backward(self.attn.backward(dh), input_grad=input_grad)
        if not input_grad:
            return None
        da += dh  # the residual path around the attention
        if dx is None:
            return da
        dx = self._check_dx(dx, da.shape)
        dx += da
        return dx


class GPT2Model(Module):
    """Token + learned position embeddings, dropout, the blocks, the final LayerNorm (HF's ``transformer``)."""

    def __init__(self, config: GPT2Config, wte: Embedding, wpe: Embedding, blocks: list[GPT2Block],
                 ln_f: LayerNorm, generator: Generator) -> None:
        self.config = config
        self.wte = wte
        self.wpe = wpe
        self.drop = Dropout(config.embd_pdrop, generator)
        self.h = ModuleList(blocks)
        self.ln_f = ln_f
        self._ids: np.ndarray | None = None

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """input_ids (B, T) int64 -> last hidden state (B, T, H) after ln_f."""
        t = input_ids.shape[1]
        if t > self.wpe.num_embeddings:
            raise ValueError(f"input_ids has {t} positions, the position table n_positions="
                             f"{self.wpe.num_embeddings}")
        if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= self.wte.num_embeddings):
            raise ValueError(f"input_ids holds ids outside [0, {self.wte.num_embeddings}): min {input_ids.min()}, "
                             f"max {input_ids.max()}")
        x = self.wte.weight.data[input_ids]
        x += self.wpe.weight.data[None, :t]
        self._ids = input_ids
        x = self.drop(x)
        for block in self.h:
            x = block(x, attention_mask)
        return self.ln_f(x)

    def forward_cached(self, input_ids: np.ndarray, cache: KVCache) -> np.ndarray:
        """The new tokens (B, TQ) at positions cache.length .. cache.length + TQ - 1 -> hidden (B, TQ, H); the
        cache grows by TQ. Inference only (eval mode)."""
        b, t = input_ids.shape
        start = cache.length
        if cache.batch != b or start + t > cache.capacity:
            raise ValueError(f"input_ids {input_ids.shape} do not fit the cache (batch {cache.batch}, "
                             f"{start} of {cache.capacity} positions used)")
        if start + t > self.wpe.num_embeddings:
            raise ValueError(f"positions up to {start + t} exceed n_positions={self.wpe.num_embeddings}")
        if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= self.wte.num_embeddings):
            raise ValueError(f"input_ids holds ids outside [0, {self.wte.num_embeddings})")
        x = self.wte.weight.data[input_ids]
        x += self.wpe.weight.data[None, start:start + t]
        for layer, block in enumerate(self.h):
            x = block.forward_cached(x, cache, layer)
        cache.length = start + t
        return self.ln_f(x)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> None:
        """Accumulate into every trainable parameter; the input is token ids (no gradient: None)."""
        self._no_input_grad(dx, "integer token ids")
        if self._ids is None:
            raise RuntimeError("GPT2Model.backward called before forward")
        dwte, dwpe = self.wte.weight.grad_buffer(), self.wpe.weight.grad_buffer()
        need = dwte is not None or dwpe is not None
        blocks = list(self.h)
        d = self.ln_f.backward(dy)
        for i in reversed(range(len(blocks))):
            d = blocks[i].backward(d, input_grad=need or i > 0)
        if need:
            d = self.drop.backward(d)
            F.embedding_backward(np.ascontiguousarray(d), self._ids, None, None, dword_embeddings=dwte,
                                 dposition_embeddings=dwpe)
        return None


class GPT2LMHeadModel(Module):
    """GPT-2 with its language-model head: ``forward(input_ids, attention_mask=None)`` -> logits (B, T, V).

    Build it with :meth:`from_pretrained` (a Hugging Face folder), :meth:`from_state_dict` or
    :meth:`from_config` (random weights, GPT-2's initialisation, for training from scratch). All
    parameters start trainable; ``requires_grad_(False)`` freezes the backbone before adapters go on.

    >>> model = GPT2LMHeadModel.from_config(GPT2Config(vocab_size=20, n_positions=8, n_embd=8, n_layer=1,
    ...                                                n_head=2), seed=0)
    >>> model(np.zeros((2, 5), dtype=np.int64)).shape
    (2, 5, 20)
    """

    IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of old checkpoints

    def __init__(self, config: GPT2Config, transformer: GPT2Model) -> None:
        self.config = config
        self.transformer = transformer
        self.lm_head = Linear.from_weights(transformer.wte.weight.data)
        self.lm_head.weight = transformer.wte.weight  # tied: one Parameter, one gradient buffer
        self._loss_cache: tuple[np.ndarray, np.ndarray, tuple[int, ...]] | None = None

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, config: GPT2Config, state: dict[str, np.ndarray], seed: int = 0) -> GPT2LMHeadModel:
        """Wrap a Hugging Face GPT-2 state dict (keys with or without the ``transformer.`` prefix; Conv1D weights
        (in, out) as transformers stores them). ``lm_head.weight``, if present, must equal the token table."""
        state = dict(state)
        head = state.pop("lm_head.weight", None)
        state = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in state.items()}
        used: set[str] = set()

        def take(name: str) -> np.ndarray:
            if name not in state:
                raise KeyError(f"checkpoint has no tensor {name!r}")
            a = state[name]
            if a.dtype != np.float32 or not a.flags.c_contiguous:
                a = np.ascontiguousarray(a, dtype=np.float32)  # a half-precision file is widened once
            used.add(name)
            return a

        def conv(prefix: str) -> Conv1D:
            return Conv1D.from_hf_weight(take(prefix + ".weight"), take(prefix + ".bias"))

        def norm(prefix: str) -> LayerNorm:
            return LayerNorm.from_weights(take(prefix + ".weight"), take(prefix + ".bias"), config.layer_norm_epsilon)

        g = Generator(seed)
        blocks = []
        for i in range(config.n_layer):
            p = f"h.{i}."
            attn = GPT2Attention(conv(p + "attn.c_attn"), conv(p + "attn.c_proj"), config.n_head, config.attn_pdrop,
                                 config.resid_pdrop, g)
            mlp = GPT2MLP(conv(p + "mlp.c_fc"), conv(p + "mlp.c_proj"), config.gelu_approximate, config.resid_pdrop, g)
            blocks.append(GPT2Block(norm(p + "ln_1"), attn, norm(p + "ln_2"), mlp))
        wte = Embedding.from_weights(take("wte.weight"))
        transformer = GPT2Model(config, wte, Embedding.from_weights(take("wpe.weight")), blocks, norm("ln_f"), g)
        unexpected = sorted(k for k in set(state) - used if not k.endswith(cls.IGNORED_SUFFIXES))
        if unexpected:
            raise KeyError(f"checkpoint has tensors the GPT-2 decoder does not use: {unexpected[:5]}")
        if head is not None and (head.shape != wte.weight.shape or not np.array_equal(head, wte.weight.data)):
            raise ValueError("checkpoint's lm_head.weight differs from transformer.wte.weight; peftc's GPT-2 ties them")
        for name, shape in (("wte.weight", (config.vocab_size, config.n_embd)),
                            ("wpe.weight", (config.n_positions, config.n_embd))):
            if state[name].shape != shape:
                raise ValueError(f"checkpoint's {name} has shape {state[name].shape}, config.json says {shape}")
        return cls(config, transformer)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, seed: int = 0) -> GPT2LMHeadModel:
        """Load ``config.json`` and ``model.safetensors`` from a Hugging Face checkpoint folder (eval mode)."""
        config_path, state = read_checkpoint_folder(folder)
        model = cls.from_state_dict(GPT2Config.from_json(config_path), state, seed)
        model.eval()
        return model

    @classmethod
    def from_config(cls, config: GPT2Config, seed: int = 0) -> GPT2LMHeadModel:
        """Random weights as transformers initialises GPT-2: N(0, 0.02) tables and weights, zero biases, unit
        LayerNorms, and the c_proj weights scaled by 1/sqrt(2 n_layer)."""
        g = Generator(seed)
        h, std = config.n_embd, config.initializer_range
        state: dict[str, np.ndarray] = {"wte.weight": g.normal((config.vocab_size, h), 0.0, std),
                                        "wpe.weight": g.normal((config.n_positions, h), 0.0, std)}
        proj_std = std / np.sqrt(2.0 * config.n_layer)
        shapes = {"attn.c_attn": (h, 3 * h, std), "attn.c_proj": (h, h, proj_std),
                  "mlp.c_fc": (h, config.inner_dim, std), "mlp.c_proj": (config.inner_dim, h, proj_std)}
        for i in range(config.n_layer):
            for name, (nx, nf, s) in shapes.items():
                state[f"h.{i}.{name}.weight"] = g.normal((nx, nf), 0.0, float(s))
                state[f"h.{i}.{name}.bias"] = np.zeros(nf, np.float32)
            for ln in ("ln_1", "ln_2"):
                state[f"h.{i}.{ln}.weight"] = np.ones(h, np.float32)
                state[f"h.{i}.{ln}.bias"] = np.zeros(h, np.float32)
        state["ln_f.weight"], state["ln_f.bias"] = np.ones(h, np.float32), np.zeros(h, np.float32)
        return cls.from_state_dict(config, state, seed)

    def state_dict(self) -> dict[str, np.ndarray]:
        """{Hugging Face key: array} with Conv1D weights back in (in, out) layout (transposed views), no lm_head
        (tied), as transformers' ``save_pretrained`` writes it. Adapter layers must be merged and unloaded first."""
        out = {}
        for name, module in self.transformer.named_modules():
            if isinstance(module, (Conv1D, LayerNorm, Embedding)):
                out[f"transformer.{name}.weight"] = (module.hf_weight() if isinstance(module, Conv1D)
                                                     else module.weight.data)
                if isinstance(module, (Conv1D, LayerNorm)):
                    out[f"transformer.{name}.bias"] = module.bias.data
            elif isinstance(module, Linear):
                raise TypeError(f"module transformer.{name} is a {type(module).__name__}, not a GPT-2 Conv1D: "
                                f"merge_and_unload() the adapters before state_dict()")
        missing = [n for n, m in self.transformer.named_modules() if n.endswith(("c_attn", "c_proj", "c_fc"))
                   and not isinstance(m, Conv1D)]
        if missing:
            raise TypeError(f"modules {missing[:3]} hold adapters: merge_and_unload() before state_dict()")
        return out

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write config.json and model.safetensors (each atomically) that transformers' ``from_pretrained`` reads."""
        from ..io.atomic import write_bytes_atomic
        from ..io.safetensors import save_file

        os.makedirs(folder, exist_ok=True)
        tensors = {k: np.ascontiguousarray(v) for k, v in self.state_dict().items()}
        save_file(tensors, os.path.join(folder, "model.safetensors"), {"format": "pt"})
        text = json.dumps(self.config.to_dict(), indent=2) + "\n"
        write_bytes_atomic(os.path.join(folder, "config.json"), text.encode("utf-8"))

    # -- parameters --------------------------------------------------------------------------------
    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Each Parameter once: the tied ``lm_head.weight`` is listed as ``transformer.wte.weight`` only (torch's
        rule), so an optimizer steps it once."""
        seen: set[int] = set()
        for name, p in super().named_parameters(prefix):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def get_output_embeddings(self) -> Linear:
        """The LM head (which "all-linear" LoRA leaves alone, as PEFT does)."""
        return self.lm_head

    # -- forward / backward ------------------------------------------------------------------------
    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """input_ids (B, T) int64, attention_mask (B, T) int64 or None -> logits (B, T, V) float32."""
        input_ids = _ids(input_ids, "input_ids")
        attention_mask = _ids(attention_mask, "attention_mask", input_ids.shape)
        return self.lm_head(self.transformer(input_ids, attention_mask))

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        """An empty :class:`KVCache` for ``batch`` sequences of up to ``capacity`` positions."""
        if capacity > self.config.n_positions:
            raise ValueError(f"capacity {capacity} exceeds n_positions={self.config.n_positions}")
        return KVCache(self.config.n_layer, batch, capacity, self.config.n_embd)

    def forward_cached(self, input_ids: np.ndarray, cache: KVCache) -> np.ndarray:
        """Logits (B, TQ, V) of the new tokens input_ids (B, TQ), which attend to the cached positions before them;
        equal to the last TQ rows of :meth:`forward` on the whole sequence. Inference only (call ``eval()``).

        >>> model = GPT2LMHeadModel.from_config(GPT2Config(vocab_size=20, n_positions=8, n_embd=8, n_layer=1, n_head=2)).eval()
        >>> cache = model.new_cache(batch=1, capacity=8)
        >>> model.forward_cached(np.array([[1, 2, 3]]), cache).shape, cache.length
        ((1, 3, 20), 3)
        """
        if self.training:
            raise ValueError("forward_cached is for inference: call eval() first (it keeps nothing for a backward)")
        input_ids = _ids(input_ids, "input_ids")
        return self.lm_head(self.transformer.forward_cached(input_ids, cache))

    def generate(self, input_ids: np.ndarray, max_new_tokens: int, num_return_sequences: int = 1,
                 do_sample: bool = True, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 eos_token_id: int | None = None) -> np.ndarray:
        """Continue each prompt row (B, T) by ``max_new_tokens`` tokens, ``num_return_sequences`` times: returns
        (B * num_return_sequences, T + max_new_tokens) int64, rows b * num_return_sequences + j continuing
        prompt b, as transformers' ``generate`` orders them. The prompt runs once; its KV cache is then
        repeated for the continuations. Sampling is :func:`peftc.functional.sample_tokens` (temperature, then
        top_k, then top_p; ``do_sample=False`` is greedy), seeded by ``seed`` alone. Unlike transformers, top_k
        defaults to 0 (off). A row that produced ``eos_token_id`` continues with it (transformers pads with it).

        >>> model = GPT2LMHeadModel.from_config(GPT2Config(vocab_size=20, n_positions=8, n_embd=8, n_layer=1, n_head=2))
        >>> model.eval().generate(np.array([[1, 2]]), max_new_tokens=3, num_return_sequences=4, seed=1).shape
        (4, 5)
        """
        input_ids = _ids(input_ids, "input_ids")
        b, t = input_ids.shape
        for name, value in (("max_new_tokens", max_new_tokens), ("num_return_sequences", num_return_sequences)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if t < 1:
            raise ValueError("input_ids must hold at least one prompt token")
        was_training = self.training
        self.eval()
        try:
            cache = self.new_cache(b, t + max_new_tokens)
            logits = self.forward_cached(input_ids, cache)[:, -1]
            if num_return_sequences > 1:
                cache = cache.repeat(num_return_sequences)
                logits = np.repeat(logits, num_return_sequences, axis=0)
            rows = b * num_return_sequences
            out = np.empty((rows, t + max_new_tokens), dtype=np.int64)
            out[:, :t] = np.repeat(input_ids, num_return_sequences, axis=0)
            done = np.zeros(rows, dtype=bool)
            draws = Generator(seed)
            probs = np.empty((rows, self.config.vocab_size), np.float32)  # one buffer for every step
            for step in range(max_new_tokens):
                tokens, _ = F.sample_tokens(np.ascontiguousarray(logits), temperature if do_sample else 0.0,
                                            top_k, top_p, draws.seed, draws.take(rows), probs=probs)
                if eos_token_id is not None:
                    tokens[done] = eos_token_id
                    done |= tokens == eos_token_id
                out[:, t + step] = tokens
                if step + 1 == max_new_tokens or (eos_token_id is not None and done.all()):
                    out[:, t + step + 1:] = eos_token_id if eos_token_id is not None else 0
                    break
                logits = self.forward_cached(tokens[:, None], cache)[:, 0]
            return out
        finally:
            self.train(was_training)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> None:
        """Accumulate the gradients of all trainable parameters given d(logits) (B, T, V). The input is token ids:
        None is returned, and a ``dx`` is an error."""
        self._no_input_grad(dx, "integer token ids")
        self.transformer.backward(self.lm_head.backward(dy))

    def causal_lm_loss(self, input_ids: np.ndarray, labels: np.ndarray | None = None,
                       attention_mask: np.ndarray | None = None) -> float:
        """Hugging Face's ``GPT2LMHeadModel(input_ids, labels=labels).loss``: the mean cross-entropy of token t+1
        given tokens <= t over the positions whose next label is not -100 (``labels=None``: the input ids).
        :meth:`causal_lm_loss_backward` then runs the backward.

        >>> model = GPT2LMHeadModel.from_config(GPT2Config(vocab_size=20, n_positions=8, n_embd=8, n_layer=1, n_head=2))
        >>> ids = np.array([[1, 2, 3]], dtype=np.int64)
        >>> round(model.causal_lm_loss(ids), 1) > 0
        True
        """
        input_ids = _ids(input_ids, "input_ids")
        labels = _ids(input_ids if labels is None else labels, "labels", input_ids.shape)
        logits = self.forward(input_ids, attention_mask)
        shifted = np.full_like(labels, F.IGNORE_INDEX)
        shifted[:, :-1] = labels[:, 1:]  # row t predicts label t+1: no copy of the logits
        rows = logits.reshape(-1, logits.shape[-1])
        loss, _, probs = F.cross_entropy_forward(rows, shifted.reshape(-1))
        self._loss_cache = (probs, shifted.reshape(-1), logits.shape)
        return float(loss)

    def causal_lm_loss_backward(self, dloss: float = 1.0) -> None:
        """Backward of the last :meth:`causal_lm_loss` into every trainable parameter."""
        if self._loss_cache is None:
            raise RuntimeError("causal_lm_loss_backward called before causal_lm_loss")
        probs, labels, shape = self._loss_cache
        self._loss_cache = None
        dlogits = F.zeros(probs.shape)
        F.cross_entropy_backward(dloss, probs, labels, dlogits=dlogits)
        self.backward(dlogits.reshape(shape))
