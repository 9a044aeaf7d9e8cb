"""Deep prompts on a frozen BERT encoder: learnable tokens written into the first J layers.

A prompted sequence is ``[CLS] p_1..p_n text [SEP]``: :func:`insert_prompt_slots` opens n slots
right after ``[CLS]`` (they take positions 1..n, the text shifts right by n, the attention mask
covers them, so prompts attend to everything and everything attends to them). Then
(PromptSRC / MaPLe "deep prompting", methods spec §1.2 and §1.8):

* layer 0: the slots' word embeddings are the learnable ``prompts[0]`` (n, H); position and
  token-type embeddings are added and the embedding LayerNorm applied as for any token (CLIP adds
  its positional embedding to the context vectors too);
* block j for 1 <= j < J: before the block runs, the slots' hidden states are overwritten with
  ``prompts[j]``; what block j-1 computed there is thrown away (and gets zero gradient);
* blocks J..L-1 run unchanged, the slots carrying whatever the blocks made of them;
* the sentence feature is the mean over the text tokens only (slots excluded), L2-normalised, so
  the prompted and the frozen model pool over the same token set.

The encoder runs through its public forward / backward: layer 0's prompts enter as
``inputs_embeds`` (the word vectors of the slots), the deeper ones through ``block_input_hook``, which
hands each prompted block a new input (never writing into the previous block's output, which a layer
may have cached). The backward pass runs through the frozen blocks (their parameters must have
requires_grad False, so nothing frozen accumulates) and collects, per layer j, the gradient at the
slots of block j's input (layer 0: of ``inputs_embeds``).

The encoder holds forward caches, so one :class:`PromptedEncoder` serves one branch; two
branches over the same weights use :func:`twin_encoder`, which shares the arrays, not the caches.
"""
from __future__ import annotations

import numpy as np

from ..models.bert import BertModel
from ..nn import Linear, MeanPooling
from ..nn.module import Module, Parameter
from ..random import Generator


def twin_encoder(model: BertModel) -> BertModel:
    """A second BertModel on the same weight arrays (no copy) with its own forward caches, frozen, eval mode."""
    twin = BertModel.from_state_dict(model.config, model.state_dict())
    ours = dict(twin.named_modules())
    for name, layer in model.named_modules():  # bf16 weights: the same packed arrays, not widened copies
        if isinstance(layer, Linear) and layer.is_bfloat16:
            ours[name].weight = layer.weight
    twin.requires_grad_(False)
    twin.eval()
    return twin


def insert_prompt_slots(batch: dict[str, np.ndarray], n_prompts: int,
                        slot_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Open ``n_prompts`` slots after position 0 ([CLS]) of a tokenizer batch (int64 (B, T) arrays).

    Returns ``input_ids``, ``attention_mask`` (1 on the slots), ``token_type_ids`` (0 on the slots),
    each (B, T + n), and ``pool_mask``: the attention mask with the slots zeroed. ``slot_ids``
    (n,) fills the slot ids (only a record: layer 0 replaces their embeddings); default 0.
    """
    ids = batch["input_ids"]
    b = ids.shape[0]
    slots = np.zeros((b, n_prompts), dtype=np.int64)
    if slot_ids is not None:
        slots[:] = np.asarray(slot_ids, dtype=np.int64)[None, :]

    def widen(a: np.ndarray, fill: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate([a[:, :1], fill, a[:, 1:]], axis=1))

    mask = batch["attention_mask"]
    types = batch.get("token_type_ids")
    out = {"input_ids": widen(ids, slots), "attention_mask": widen(mask, np.ones_like(slots))}
    out["token_type_ids"] = widen(types if types is not None else np.zeros_like(ids), np.zeros_like(slots))
    pool = out["attention_mask"].copy()
    pool[:, 1:1 + n_prompts] = 0
    out["pool_mask"] = pool
    return out


class _SlotOverwrite:
    """The ``block_input_hook`` of a deep-prompted forward: block j (1 <= j < J) takes ``prompts[j]`` at the
    slots 1..n instead of what block j - 1 computed there, which then gets no gradient."""

    def __init__(self, prompts: Parameter) -> None:
        self.prompts = prompts

    def forward(self, j: int, x: np.ndarray) -> np.ndarray:
        if not 1 <= j < self.prompts.shape[0]:
            return x
        n = self.prompts.shape[1]
        x = x.copy()  # the previous block's output stays as it computed it
        x[:, 1:1 + n] = self.prompts.data[j]
        return x

    def backward(self, j: int, dx: np.ndarray) -> np.ndarray:
        if 1 <= j < self.prompts.shape[0]:
            n = self.prompts.shape[1]
            dprompts = self.prompts.grad_buffer()
            if dprompts is not None:
                dprompts[j] += dx[:, 1:1 + n].sum(axis=0)
            dx[:, 1:1 + n] = 0.0  # block j's input at the slots was replaced: nothing flows further back
        return dx


class PromptedEncoder(Module):
    """Deep prompts ``prompts`` (J, n, H) on a frozen :class:`BertModel`; the only trainable parameter.

    ``forward(batch)`` takes the output of :func:`insert_prompt_slots` and returns unit-norm
    sentence features (B, H); ``backward(dfeat)`` accumulates into ``prompts.grad``. With
    ``prompts=None`` (J = 0) it is the frozen sentence model on the widened batch, pooled over
    the text tokens.
    """

    def __init__(self, encoder: BertModel, prompts: np.ndarray | None) -> None:
        if any(p.requires_grad for p in encoder.parameters()):
            raise ValueError("PromptedEncoder needs a frozen encoder: call encoder.requires_grad_(False) first")
        n_layers = encoder.config.num_hidden_layers
        if prompts is not None:
            h = encoder.config.hidden_size
            if prompts.ndim != 3 or prompts.shape[2] != h or not 1 <= prompts.shape[0] <= n_layers:
                raise ValueError(f"prompts must be (J, n, {h}) with 1 <= J <= {n_layers}, got {prompts.shape}")
        self.encoder = encoder
        self.prompts = Parameter(prompts) if prompts is not None else None
        self.pooling = MeanPooling(normalize=True)
        self._ran = False

    @property
    def depth(self) -> int:
        return 0 if self.prompts is None else self.prompts.shape[0]

    @property
    def n_prompts(self) -> int:
        return 0 if self.prompts is None else self.prompts.shape[1]

    def forward(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        n, depth = self.n_prompts, self.depth
        embeds = hook = None
        if depth:
            # the slot tokens' word vectors are the layer-0 prompts; position and token type are added as for any token
            words = self.encoder.embeddings.word_embeddings(ids)
            slots = np.broadcast_to(self.prompts.data[0], (ids.shape[0], *self.prompts.shape[1:]))
            embeds = np.concatenate([words[:, :1], slots, words[:, 1 + n:]], axis=1)
            hook = _SlotOverwrite(self.prompts) if depth > 1 else None
        hidden = self.encoder(ids, mask, types, inputs_embeds=embeds, block_input_hook=hook)
        self._ran = True
        return self.pooling(hidden, batch["pool_mask"])

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> None:
        """Accumulate d(loss)/d(prompts) given d(loss)/d(features) ``dy`` (B, H). The input is a batch of token
        ids, which has no gradient: None is returned, and a ``dx`` is an error."""
        self._no_input_grad(dx, "a batch of token ids")
        if not self._ran:
            raise RuntimeError("PromptedEncoder.backward called before forward")
        if self.prompts is None or not self.prompts.requires_grad:
            return None
        n = self.n_prompts
        dhidden = self.pooling.backward(np.ascontiguousarray(dy, dtype=np.float32))
        dembeds = self.encoder.backward(dhidden)  # the hook adds the deep prompts' gradients on the way
        self.prompts.grad_buffer()[0] += dembeds[:, 1:1 + n].sum(axis=0)
        return None


def phrase_prompts(encoder: BertModel, phrase_ids: np.ndarray, depth: int, deep_init: str = "phrase",
                   std: float = 0.02, seed: int = 0) -> np.ndarray:
    """Initial prompts (depth, n, H) from a tokenized phrase ``[CLS] w_1..w_n [SEP]`` (int64 ids, (n + 2,)).

    Layer 0 is always the words' embeddings (CLIP's "a photo of a" initialisation).
    ``deep_init="normal"`` draws layers 1..J-1 from N(0, std^2) as PromptSRC does;
    ``deep_init="phrase"`` uses the frozen model's hidden states at the word positions of the
    phrase, so the deep prompts start where the phrase itself would put them.
    """
    ids = np.asarray(phrase_ids, dtype=np.int64).reshape(1, -1)
    n = ids.shape[1] - 2
    if n < 1:
        raise ValueError(f"phrase_ids must hold [CLS], at least one word and [SEP], got {ids.shape[1]} ids")
    h = encoder.config.hidden_size
    prompts = np.empty((depth, n, h), dtype=np.float32)
    prompts[0] = encoder.embeddings.word_embeddings(ids[:, 1:-1])[0]
    if depth == 1:
        return prompts
    if deep_init == "normal":
        prompts[1:] = Generator(seed).normal((depth - 1, n, h), 0.0, std)
    elif deep_init == "phrase":
        x = encoder.embeddings(ids, np.zeros_like(ids))
        for j, block in enumerate(list(encoder.encoder.layer)[:depth - 1]):
            x = block(x, None)
            prompts[j + 1] = x[0, 1:1 + n]
    else:
        raise ValueError(f"deep_init must be 'normal' or 'phrase', got {deep_init!r}")
    return prompts
