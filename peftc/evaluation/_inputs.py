"""Argument checks shared by peftc.evaluation: each failure names the argument and its shape."""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

ABSTAIN = -1
"""A prediction of -1 means the model gave no answer (e.g. an unparsable generation): it is wrong,
and for macro-F1 it is a false negative of the true class but a false positive of no class."""


def as_classes(name: str, x: Any, *, predictions: bool) -> np.ndarray:
    """``x`` as a 1-D int64 array of class indices >= 0 (>= -1 for predictions, see ``ABSTAIN``)."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one entry per example), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    low = ABSTAIN if predictions else 0
    if arr.min() < low:
        what = "class indices >= 0 or -1 (no answer)" if predictions else "class indices >= 0"
        raise ValueError(f"{name} must hold {what}, got {arr.min()} (shape {arr.shape})")
    return arr


def check_n_classes(n_classes: int | None, labels: np.ndarray, *preds: tuple[str, np.ndarray]) -> int:
    """The class count: ``n_classes`` if given (every label and prediction must be below it), else the
    largest index seen plus one."""
    top = max(int(labels.max()), *(int(p.max()) for _, p in preds))
    if n_classes is None:
        return top + 1
    if not isinstance(n_classes, numbers.Integral) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    if labels.max() >= n_classes:
        raise ValueError(f"labels must be < n_classes={n_classes}, got {labels.max()} (shape {labels.shape})")
    for name, p in preds:
        if p.max() >= n_classes:
            raise ValueError(f"{name} must be < n_classes={n_classes}, got {p.max()} (shape {p.shape})")
    return int(n_classes)


def same_length(**arrays: np.ndarray) -> int:
    """The common length of the named 1-D arrays; a mismatch names them all with their shapes."""
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        shapes = ", ".join(f"{name} {a.shape}" for name, a in arrays.items())
        raise ValueError(f"{', '.join(arrays)} must have the same length (paired examples), got {shapes}")
    return next(iter(lengths.values()))


def as_scores(name: str, x: Any, *, min_size: int = 1, what: str = "scores") -> np.ndarray:
    """``x`` as a 1-D float64 array of finite numbers with at least ``min_size`` entries."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size < min_size:
        raise ValueError(f"{name} must have at least {min_size} {what}, got {arr.size} (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr))
        raise ValueError(f"{name} must be finite, got {arr[bad[0]]} at index {bad[0]} (shape {arr.shape})")
    return arr


def check_confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return confidence


def check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def generator(seed: Any) -> np.random.Generator:
    """A NumPy Generator from an explicit integer seed, or the Generator itself (drawn from, not copied)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or a numpy.random.Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


def check_probabilities(name: str, p: Any) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if np.any(np.isnan(arr)):
        raise ValueError(f"{name} must not contain NaN (index {int(np.flatnonzero(np.isnan(arr))[0])}, "
                         f"shape {arr.shape})")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"{name} must be in [0, 1], got range [{arr.min()}, {arr.max()}] (shape {arr.shape})")
    return arr

