"""FrozenBlockCache: each text's hidden states entering the first block that still trains, computed once.

After base training the FSCIL encoder is frozen; the ``subnet`` trick then tunes only the top
``subnet_layers`` blocks on each session's shots, and every session re-encodes the shots and the evaluated
texts. The embeddings and the blocks below ``start = L - subnet_layers`` never change again, so their output
for a text is one fixed array: this cache computes it once per text (eval mode, padding skipped:
:meth:`peftc.models.BertModel.hidden_states_before`) and keeps its real-token rows, (t, H) float32 per
text (memory: N texts x t tokens x H x 4 bytes). Batches are then rebuilt from it for
:meth:`peftc.models.BertModel.top_blocks`, which runs (and back-propagates through) the top blocks alone.

The cache is valid only while the blocks below ``start`` and the embeddings keep their weights: the learner
builds it after ``fit_base`` froze them, and nothing it does later touches them.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..models.bert import BertModel


class FrozenBlockCache:
    """``FrozenBlockCache(bert, start, tokenize, batch_size=128)``: ``tokenize`` maps texts to {"input_ids",
    "attention_mask"} int64 (B, T) (right-padded); ``batch_size`` bounds the rows of one lower-block pass.

    >>> import numpy as np
    >>> from peftc.fscil.block_cache import FrozenBlockCache
    >>> from peftc.models import BertConfig, BertModel
    >>> bert = BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
    ...                                         num_attention_heads=2, intermediate_size=16))
    >>> def tokenize(texts):    # a toy tokenizer: [CLS]=2, then one id per word, right-padded with 0
    ...     rows = [[2] + [3 + len(w) for w in t.split()] for t in texts]
    ...     ids = np.zeros((len(rows), max(map(len, rows))), np.int64)
    ...     for i, r in enumerate(rows):
    ...         ids[i, :len(r)] = r
    ...     return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)}
    >>> cache = FrozenBlockCache(bert, 1, tokenize)      # block 0 frozen, block 1 trains
    >>> h, mask = cache.inputs(["a gloss", "another longer gloss"])
    >>> h.shape, mask.shape                              # (2, T, H), (2, T)
    ((2, 4, 8), (2, 4))
    >>> from peftc.nn import MeanPooling
    >>> MeanPooling()(bert.top_blocks(1)(h, mask), mask).shape   # the top block alone, then pooled
    (2, 8)
    >>> tok = tokenize(["a gloss", "another longer gloss"])     # the same as the whole encoder:
    >>> full = bert.eval()(tok["input_ids"], tok["attention_mask"])
    >>> bool(np.allclose(bert.top_blocks(1)(h, mask)[mask == 1], full[mask == 1], atol=1e-5))
    True
    """

    def __init__(self, bert: BertModel, start: int, tokenize: Callable[[list[str]], dict[str, np.ndarray]],
                 batch_size: int = 128) -> None:
        self.top = bert.top_blocks(start)  # checks start; the blocks these states feed
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.bert = bert
        self.start = int(start)
        self.tokenize = tokenize
        self.batch_size = int(batch_size)
        self._states: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._states)

    def fill(self, texts: list[str]) -> None:
        """Compute and keep the states of the texts not cached yet (in eval mode, batched by length)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._states))
        if not missing:
            return
        tok = self.tokenize(missing)
        ids, mask = tok["input_ids"], tok["attention_mask"]
        lengths = mask.sum(axis=1)
        if not np.array_equal(mask != 0, np.arange(mask.shape[1]) < lengths[:, None]):
            raise ValueError(f"FrozenBlockCache needs right-padded batches (each mask row ones, then zeros); the "
                             f"tokenizer gave an attention_mask {mask.shape} with a hole or left padding")
        order = np.argsort(lengths, kind="stable")
        was = self.bert.training
        self.bert.eval()
        try:
            for s in range(0, len(order), self.batch_size):
                rows = order[s:s + self.batch_size]
                width = max(int(lengths[rows].max()), 1)
                h = self.bert.hidden_states_before(self.start, np.ascontiguousarray(ids[rows, :width]),
                                                   np.ascontiguousarray(mask[rows, :width]))
                for k, r in enumerate(rows):
                    self._states[missing[r]] = h[k, :max(int(lengths[r]), 1)].copy()
        finally:
            self.bert.train(was)

    def length(self, text: str) -> int:
        """The number of real tokens kept for ``text`` (which must be cached)."""
        return int(self._states[text].shape[0])

    def inputs(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(hidden (B, T, H) float32, attention_mask (B, T) int64) for ``texts`` in the order given, T their
        longest length; padded positions are zero. Texts not cached yet are encoded first."""
        if not len(texts):
            raise ValueError("FrozenBlockCache.inputs: texts is empty")
        texts = list(texts)
        self.fill(texts)
        states = [self._states[t] for t in texts]
        width = max(s.shape[0] for s in states)
        hidden = np.zeros((len(states), width, states[0].shape[1]), np.float32)
        mask = np.zeros((len(states), width), np.int64)
        for k, s in enumerate(states):
            hidden[k, :s.shape[0]] = s
            mask[k, :s.shape[0]] = 1
        return hidden, mask
