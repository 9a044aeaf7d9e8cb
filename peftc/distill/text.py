"""Data-free distillation of a text classifier in embedding space (AF-STip's recipe for text).

The pseudo-samples live where AF-STip puts its noise for text: in the space of the input (word) embeddings,
the vectors a BERT encoder sums with its position embeddings before its first LayerNorm. Both models here
take them through :meth:`peftc.models.BertModel.forward`'s ``inputs_embeds``, so the teacher's gradient
reaches them and the same array feeds teacher and student.

* :class:`EmbeddingClassifier`: a trained :class:`~peftc.models.classifier.SentenceClassifier` (the teacher,
  e.g. MiniLM + a merged LoRA adapter) run on such vectors;
* :class:`TextStudent`: a small encoder (the first blocks of a BERT, :func:`truncated_bert`) with mean
  pooling or the adaptive fusion module (:class:`~peftc.distill.fusion.AdaptiveFusion`, our stand-in) and a
  linear head;
* :func:`token_anchors`: the class anchors of the data-free recipe, from the teacher alone: sequences of
  random vocabulary tokens (rows of the teacher's own word table, a parameter, not data) moved by
  normalised gradient steps until the teacher gives them the class (:func:`peftc.distill.pseudo.class_anchors`).

The rest is shared with the image side: :func:`peftc.distill.pseudo.afstip_distill` (``pixel_range=None``,
``centres`` = the anchors) perturbs the anchors with Gaussian noise and trains the student with
``lambda_cls CE + lambda_kd tau^2 KL`` on the teacher's confident pseudo-labels, and
:func:`peftc.distill.migrate.migrate_to_new_class` takes the new class's examples as embedded batches
(:func:`embed_tokens`).

Inputs every model here takes: a float32 (N, T, H) array of input embeddings (every position a token), or a
dict with ``attention_mask`` (N, T) and either ``inputs_embeds`` (N, T, H) or ``input_ids`` (N, T) int64.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..models.bert import BertEncoder, BertModel
from ..models.classifier import SentenceClassifier
from ..nn import Linear, MeanPooling
from ..nn.module import Module
from ..random import Generator
from .fusion import AdaptiveFusion
from .pseudo import class_anchors

TextInput = np.ndarray | dict


def text_inputs(x: TextInput) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """``(input_ids, inputs_embeds, attention_mask)`` of a model input (see the module docstring).

    >>> ids, emb, mask = text_inputs(np.zeros((2, 3, 4), np.float32))
    >>> ids is None, emb.shape, mask.tolist()
    (True, (2, 3, 4), [[1, 1, 1], [1, 1, 1]])
    """
    if isinstance(x, np.ndarray):
        if x.ndim != 3:
            raise ValueError(f"text input: an array must be (N, T, H) input embeddings, got {x.shape}")
        return None, np.ascontiguousarray(x, dtype=np.float32), np.ones(x.shape[:2], np.int64)
    if not isinstance(x, dict) or "attention_mask" not in x or ("input_ids" in x) == ("inputs_embeds" in x):
        raise ValueError("text input: a dict needs 'attention_mask' and one of 'input_ids', 'inputs_embeds', got "
                         f"{sorted(x) if isinstance(x, dict) else type(x).__name__}")
    mask = np.ascontiguousarray(x["attention_mask"], dtype=np.int64)
    if "input_ids" in x:
        return np.ascontiguousarray(x["input_ids"], dtype=np.int64), None, mask
    return None, np.ascontiguousarray(x["inputs_embeds"], dtype=np.float32), mask


def embed_tokens(word_embeddings: np.ndarray, batch: dict) -> dict:
    """``{"inputs_embeds", "attention_mask"}`` of a tokenised batch: the word-table rows of its ids.

    >>> table = np.arange(12, dtype=np.float32).reshape(6, 2)
    >>> out = embed_tokens(table, {"input_ids": np.array([[1, 5]]), "attention_mask": np.array([[1, 0]])})
    >>> out["inputs_embeds"].tolist(), out["attention_mask"].tolist()
    ([[[2.0, 3.0], [10.0, 11.0]]], [[1, 0]])
    """
    ids = np.asarray(batch["input_ids"], dtype=np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= len(word_embeddings):
        raise ValueError(f"embed_tokens: ids outside the table's {len(word_embeddings)} rows")
    return {"inputs_embeds": np.ascontiguousarray(word_embeddings[ids], dtype=np.float32),
            "attention_mask": np.ascontiguousarray(batch["attention_mask"], dtype=np.int64)}


def truncated_bert(bert: BertModel, blocks: int) -> BertModel:
    """A BertModel of ``bert``'s embeddings and its first ``blocks`` blocks (the same modules: copy ``bert``
    first, or load a fresh one, when the original must stay apart).

    >>> from peftc.models.bert import BertConfig
    >>> cfg = BertConfig(vocab_size=10, hidden_size=4, num_hidden_layers=3, num_attention_heads=1,
    ...                  intermediate_size=8, max_position_embeddings=6)
    >>> small = truncated_bert(BertModel.from_state_dict(cfg, _random_state(cfg)), 2)
    >>> len(small.encoder.layer), small.config.num_hidden_layers
    (2, 2)
    """
    layers = list(bert.encoder.layer)
    if not 1 <= blocks <= len(layers):
        raise ValueError(f"truncated_bert: blocks must be in 1..{len(layers)}, got {blocks}")
    config = dataclasses.replace(bert.config, num_hidden_layers=int(blocks))
    model = BertModel(config, bert.embeddings, BertEncoder(layers[:blocks]))
    model.train(bert.training)
    return model


def _random_state(cfg) -> dict:
    """A random BERT state dict of ``cfg``'s shapes (for the examples)."""
    rng = np.random.default_rng(0)
    h, i = cfg.hidden_size, cfg.intermediate_size
    shapes = {"embeddings.word_embeddings.weight": (cfg.vocab_size, h),
              "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, h),
              "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, h),
              "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,)}
    per = {"attention.self.query": (h, h), "attention.self.key": (h, h), "attention.self.value": (h, h),
           "attention.output.dense": (h, h), "intermediate.dense": (i, h), "output.dense": (h, i)}
    for k in range(cfg.num_hidden_layers):
        for name, shape in per.items():
            shapes[f"encoder.layer.{k}.{name}.weight"] = shape
            shapes[f"encoder.layer.{k}.{name}.bias"] = shape[:1]
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[f"encoder.layer.{k}.{ln}.weight"] = (h,)
            shapes[f"encoder.layer.{k}.{ln}.bias"] = (h,)
    return {k: (rng.standard_normal(s) * 0.2 + (1.0 if k.endswith("LayerNorm.weight") else 0.0)).astype(np.float32)
            for k, s in shapes.items()}


class EmbeddingClassifier(Module):
    """A :class:`SentenceClassifier` (the same modules, not a copy) run on input embeddings: logits (N, C), and
    ``backward(dlogits)`` gives d(input embeddings) (None for an input of token ids).

    >>> from peftc.models.bert import BertConfig
    >>> cfg = BertConfig(vocab_size=10, hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
    ...                  intermediate_size=8, max_position_embeddings=6)
    >>> t = EmbeddingClassifier(SentenceClassifier(BertModel.from_state_dict(cfg, _random_state(cfg)), 3))
    >>> t.forward(np.zeros((2, 5, 4), np.float32)).shape, t.backward(np.ones((2, 3), np.float32)).shape
    ((2, 3), (2, 5, 4))
    """

    def __init__(self, classifier: SentenceClassifier) -> None:
        self.classifier = classifier
        self._embeds = False

    @property
    def word_embeddings(self) -> np.ndarray:
        """The encoder's word table (V, H): the space the pseudo-samples live in."""
        return self.classifier.bert.embeddings.word_embeddings.weight.data

    def forward(self, x: TextInput) -> np.ndarray:
        ids, emb, mask = text_inputs(x)
        self._embeds = emb is not None
        c = self.classifier
        return c.classifier(c.dropout(c.pooling(c.bert(ids, mask, inputs_embeds=emb), mask)))

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        c = self.classifier
        dh = c.pooling.backward(c.dropout.backward(c.classifier.backward(dy)))
        return c.bert.backward(dh, dx=dx, input_grad=input_grad and self._embeds)


class TextStudent(Module):
    """A small text encoder student: ``bert`` (e.g. :func:`truncated_bert` of MiniLM, 2 blocks), then mean
    pooling over the real tokens (``fusion=False``) or :class:`AdaptiveFusion` over its hidden states
    (``fusion=True``), then a linear ``head`` (N, C). The word table is frozen: the data-free students see
    only input embeddings, so it would not learn there, and the students with real data keep it the same so
    that the arms differ by their data alone.

    >>> from peftc.models.bert import BertConfig
    >>> cfg = BertConfig(vocab_size=10, hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
    ...                  intermediate_size=8, max_position_embeddings=6)
    >>> s = TextStudent(BertModel.from_state_dict(cfg, _random_state(cfg)), 3, fusion=True, memory_slots=2)
    >>> batch = {"input_ids": np.array([[1, 2, 0]]), "attention_mask": np.array([[1, 1, 0]])}
    >>> s.forward(batch).shape, s.forward(np.zeros((2, 5, 4), np.float32)).shape
    ((1, 3), (2, 3))
    """

    def __init__(self, bert: BertModel, num_classes: int, fusion: bool = False, memory_slots: int = 16,
                 seed: int = 0) -> None:
        h = bert.config.hidden_size
        self.bert = bert
        self.bert.embeddings.word_embeddings.requires_grad_(False)
        self.pooling = MeanPooling()
        self.fusion = AdaptiveFusion(h, memory_slots, seed + 1) if fusion else None
        self.head = Linear(h, num_classes, generator=Generator(seed))
        self._embeds = False

    def forward(self, x: TextInput) -> np.ndarray:
        ids, emb, mask = text_inputs(x)
        self._embeds = emb is not None
        hidden = self.bert(ids, mask, inputs_embeds=emb)
        if self.fusion is None:
            return self.head(self.pooling(hidden, mask))
        return self.head(self.fusion(np.ascontiguousarray(hidden.transpose(0, 2, 1)), mask))

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        dfeat = self.head.backward(dy)
        if self.fusion is None:
            dh = self.pooling.backward(dfeat)
        else:
            dh = np.ascontiguousarray(self.fusion.backward(dfeat).transpose(0, 2, 1))
        return self.bert.backward(dh, dx=dx, input_grad=input_grad and self._embeds)


def token_anchors(teacher: EmbeddingClassifier, num_classes: int, length: int, per_class: int = 8,
                  steps: int = 20, lr: float = 0.01, seed: int = 0, vocab_ids: np.ndarray | None = None,
                  cls_id: int | None = None, sep_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(anchors (num_classes * per_class, length, H), labels)``: sequences of random tokens drawn from
    ``vocab_ids`` (default: every row of the teacher's word table), framed by ``cls_id`` / ``sep_id`` when
    given, embedded by the teacher's word table and moved by ``steps`` normalised gradient steps of size
    ``lr`` down the teacher's cross-entropy to their class (:func:`~peftc.distill.pseudo.class_anchors`).
    Only the teacher is read. ``lr`` is in the table's units (a fraction of its typical entry is sensible).

    >>> from peftc.models.bert import BertConfig
    >>> cfg = BertConfig(vocab_size=10, hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
    ...                  intermediate_size=8, max_position_embeddings=6)
    >>> t = EmbeddingClassifier(SentenceClassifier(BertModel.from_state_dict(cfg, _random_state(cfg)), 3))
    >>> a, y = token_anchors(t, 3, length=5, per_class=2, steps=2, cls_id=1, sep_id=2)
    >>> a.shape, y.tolist()
    ((6, 5, 4), [0, 0, 1, 1, 2, 2])
    """
    table = teacher.word_embeddings
    if length < 1 or per_class < 1:
        raise ValueError(f"token_anchors: needs length, per_class >= 1; got {length}, {per_class}")
    pool = np.arange(len(table)) if vocab_ids is None else np.asarray(vocab_ids, dtype=np.int64)
    if pool.size == 0 or pool.min() < 0 or pool.max() >= len(table):
        raise ValueError(f"token_anchors: vocab_ids must be non-empty rows of the {len(table)}-row word table")
    rng = np.random.default_rng(seed)
    ids = pool[rng.integers(0, pool.size, (num_classes * per_class, length))]
    if cls_id is not None:
        ids[:, 0] = cls_id
    if sep_id is not None:
        ids[:, -1] = sep_id
    start = np.ascontiguousarray(table[ids], dtype=np.float32)
    return class_anchors(teacher, num_classes, start.shape[1:], per_class, steps, lr, seed, pixel_range=None,
                         start=start)
