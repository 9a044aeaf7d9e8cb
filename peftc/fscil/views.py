"""Text views for the contrastive and pretext tricks, on token ids, and pseudo-class texts.

Token rows are right-padded ``(B, T)`` int64 ids with an attention mask; the first and last real tokens
(BERT's [CLS] and [SEP]) stay in place, and everything below acts on the *interior* between them.

- :func:`span_deletion`: the second view of SupCon / SimCSE pairs (the first is the row itself; both also
  pass through the encoder's own dropout): a contiguous span of ``ceil(fraction * interior)`` tokens is
  deleted, the rest shifted left and padded.
- :func:`chunk_rotation`: the pretext task, the text counterpart of rotation prediction: the interior is cut
  into 4 near-equal chunks whose order is rotated by k in {0, 1, 2, 3} (k chunks from the front moved to the
  back); the label is k. Rows with fewer than 4 interior tokens get the ignore label.
- :func:`mixed_class_texts`: pseudo-classes for base training: the first half (in words) of a gloss of class
  a joined to the second half of a gloss of class b, one synthetic class per chosen pair (a, b).
"""
from __future__ import annotations

import math

import numpy as np

from .. import functional as F

PRETEXT_CLASSES = 4


def _interior(mask_row: np.ndarray) -> int:
    return max(int(mask_row.sum()) - 2, 0)


def span_deletion(ids: np.ndarray, mask: np.ndarray, u: np.ndarray, fraction: float = 0.15,
                  pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """New (ids, mask) with one span deleted per row; ``u`` (B,) uniform [0, 1) draws place the spans.

    >>> ids = np.array([[101, 5, 6, 7, 8, 102]]); m = np.ones_like(ids)
    >>> span_deletion(ids, m, np.array([0.0]), fraction=0.5)[0].tolist()
    [[101, 7, 8, 102, 0, 0]]
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    out, out_mask = np.full_like(ids, pad_id), np.zeros_like(mask)
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        inner = _interior(mask[b])
        row = ids[b, :n]
        if inner >= 2:
            span = min(max(1, math.ceil(fraction * inner)), inner - 1)
            start = 1 + min(int(u[b] * (inner - span + 1)), inner - span)
            row = np.concatenate([row[:start], row[start + span:]])
        out[b, :len(row)] = row
        out_mask[b, :len(row)] = 1
    return out, out_mask


def chunk_rotation(ids: np.ndarray, mask: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rotated ids, labels): row b's interior in 4 chunks, rotated by ``k[b]``; label k[b], or
    ``IGNORE_INDEX`` when the interior has fewer than 4 tokens (then the row is unchanged).

    >>> ids = np.array([[101, 1, 2, 3, 4, 5, 102]]); m = np.ones_like(ids)
    >>> r, y = chunk_rotation(ids, m, np.array([1])); r.tolist(), y.tolist()
    ([[101, 3, 4, 5, 1, 2, 102]], [1])
    """
    out = ids.copy()
    labels = np.full(ids.shape[0], F.IGNORE_INDEX, np.int64)
    for b in range(ids.shape[0]):
        inner = _interior(mask[b])
        if inner < PRETEXT_CLASSES:
            continue
        chunks = np.array_split(ids[b, 1:1 + inner], PRETEXT_CLASSES)
        shift = int(k[b]) % PRETEXT_CLASSES
        out[b, 1:1 + inner] = np.concatenate(chunks[shift:] + chunks[:shift])
        labels[b] = shift
    return out, labels


def mixed_class_texts(texts: list[str], labels: np.ndarray, num_pseudo: int, per_class: int, first_label: int,
                      seed: int) -> tuple[list[str], np.ndarray]:
    """``num_pseudo`` synthetic classes labelled ``first_label, first_label+1, ...``, ``per_class`` texts each.

    Pairs of distinct real classes and the glosses mixed are drawn with ``numpy.random.default_rng(seed)``.

    >>> t, y = mixed_class_texts(["a b c d", "e f g h"], np.array([0, 1]), 1, 2, first_label=2, seed=0)
    >>> len(t), y.tolist()
    (2, [2, 2])
    """
    classes = np.unique(labels)
    if num_pseudo < 1 or per_class < 1 or len(classes) < 2:
        raise ValueError(f"need num_pseudo, per_class >= 1 and two real classes, got {num_pseudo}, {per_class}, "
                         f"{len(classes)} classes")
    rng = np.random.default_rng(seed)
    rows_of = {int(c): np.flatnonzero(labels == c) for c in classes}
    out_texts, out_labels = [], []
    for k in range(num_pseudo):
        a, b = rng.choice(classes, size=2, replace=False)
        for _ in range(per_class):
            wa = texts[int(rng.choice(rows_of[int(a)]))].split()
            wb = texts[int(rng.choice(rows_of[int(b)]))].split()
            out_texts.append(" ".join(wa[:max(1, len(wa) // 2)] + wb[len(wb) // 2:]))
            out_labels.append(first_label + k)
    return out_texts, np.array(out_labels, np.int64)
