"""The base-to-novel and few-shot protocols of PromptSRC on the 41 WordNet supersense classes.

* Classes are split into a base half (ceil(41/2) = 21 classes) and a novel half (20) by a seeded
  permutation that depends only on ``split_seed`` (fixed across training seeds, like the index
  split of the paper's datasets).
* Training data: K examples per class (K = 16) from the train split of
  :meth:`WordNetGlosses.split`, drawn by the training seed; evaluation: the test split, at most
  ``eval_per_class`` examples per class (a seeded subsample, to keep CPU runs short); with
  ``val_per_class`` also a validation subsample of the validation split, for choosing knobs (base
  and novel validation accuracy are measured like the test's, on the validation glosses).
* Base accuracy: base test examples classified among the base classes; novel accuracy: novel
  test examples among the novel classes (the model never saw them); harmonic mean
  ``HM = 2 B N / (B + N)``. Few-shot: train on K shots of all classes, accuracy over all classes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..data.wordnet import WordNetGlosses


def base_novel_split(num_classes: int, split_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(base, novel) sorted class ids: ceil(n/2) base classes drawn by a seeded permutation."""
    perm = np.random.default_rng(split_seed).permutation(num_classes)
    m = math.ceil(num_classes / 2)
    return np.sort(perm[:m]).astype(np.int64), np.sort(perm[m:]).astype(np.int64)


def harmonic_mean(base: float, novel: float) -> float:
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def restrict(data: WordNetGlosses, classes: np.ndarray) -> WordNetGlosses:
    """The rows of ``data`` whose label is in ``classes``."""
    return data.subset(np.flatnonzero(np.isin(data.labels, classes)))


@dataclass
class ProtocolData:
    """K-shot training sets and subsampled test sets for one (split_seed, seed)."""

    base: np.ndarray
    novel: np.ndarray
    train_base: WordNetGlosses
    train_all: WordNetGlosses
    test: WordNetGlosses
    validation: WordNetGlosses | None = None


def make_protocol(data: WordNetGlosses, shots: int = 16, seed: int = 0, split_seed: int = 0,
                  eval_per_class: int = 25, data_seed: int = 0, val_per_class: int = 0) -> ProtocolData:
    """Build the protocol's data. ``data_seed`` fixes the train/validation/test split of the glosses,
    ``seed`` the K-shot draw, ``split_seed`` the base/novel classes; the test subsample (and the
    validation subsample of ``val_per_class`` glosses per class, when > 0) use ``data_seed`` so every
    training seed is scored on the same examples."""
    parts = data.split(seed=data_seed)
    base, novel = base_novel_split(data.num_classes, split_seed)
    train_all = parts["train"].subsample_per_class(shots, seed=seed)
    val = parts["validation"].subsample_per_class(val_per_class, seed=data_seed) if val_per_class > 0 else None
    return ProtocolData(base, novel, restrict(train_all, base), train_all,
                        parts["test"].subsample_per_class(eval_per_class, seed=data_seed), val)


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((pred == labels).mean()) if len(labels) else 0.0


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes,) accuracy per true class (NaN for a class with no example)."""
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        rows = labels == c
        if rows.any():
            out[c] = float((pred[rows] == c).mean())
    return out
