"""SentenceClassifier: a BERT encoder, mean pooling over real tokens, and a linear head.

MiniLM (all-MiniLM-L6-v2) was trained with mean pooling, so the head reads the mean of the last
hidden state over unmasked tokens, as its sentence embedding does (without the L2 norm). Module
names follow Hugging Face's ``BertForSequenceClassification`` (``bert.encoder.layer.0...``,
``classifier``), so adapter files carry the names PEFT would give them.
"""
from __future__ import annotations

import numpy as np

from ..nn import Dropout, Linear, MeanPooling, Module
from ..random import Generator
from .bert import BertModel


def trim_padding(input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the trailing columns that are padding in every row (right-padded batches)."""
    if attention_mask.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {attention_mask.shape}, input_ids has {input_ids.shape}")
    used = np.flatnonzero(attention_mask.any(axis=0))
    t = int(used[-1]) + 1 if used.size else 1
    if t == input_ids.shape[1]:
        return input_ids, attention_mask
    return np.ascontiguousarray(input_ids[:, :t]), np.ascontiguousarray(attention_mask[:, :t])


class SentenceClassifier(Module):
    """``forward(batch)`` with ``batch = {"input_ids", "attention_mask"}`` (int64 (B, T)) -> logits (B, C)."""

    def __init__(self, bert: BertModel, num_labels: int, dropout: float = 0.0, generator: Generator | None = None):
        if num_labels < 2:
            raise ValueError(f"num_labels must be >= 2, got {num_labels}")
        g = generator or Generator(0)
        self.bert = bert
        self.pooling = MeanPooling()
        self.dropout = Dropout(dropout, g)
        self.classifier = Linear(bert.config.hidden_size, num_labels, generator=g)

    def pooled(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Mean of the last hidden state over real tokens: (B, H)."""
        ids, mask = trim_padding(input_ids, attention_mask)
        return self.pooling(self.bert(ids, mask), mask)

    def forward(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.classifier(self.dropout(self.pooled(batch["input_ids"], batch["attention_mask"])))

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> None:
        """Accumulate the parameter gradients given d(logits). The input is a batch of token ids, which has no
        gradient: None is returned, and a ``dx`` is an error."""
        self._no_input_grad(dx, "a batch of token ids")
        dpooled = self.dropout.backward(self.classifier.backward(dy))
        if not any(p.requires_grad for _, p in self.bert.named_parameters()):  # stops at the first
            return None  # a frozen encoder (linear probe): nothing below the head to update
        self.bert.backward(self.pooling.backward(dpooled))
        return None
