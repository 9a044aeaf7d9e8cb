"""Losses as objects with forward (returns a float) and backward (returns the gradient of the input)."""
from __future__ import annotations

import numpy as np

from .. import functional as F


class CrossEntropyLoss:
    """Mean softmax cross-entropy of logits (N, C) against int64 labels (N,), like ``torch.nn.CrossEntropyLoss``.

    Rows labelled ``ignore_index`` count neither in the loss nor in the mean. ``backward()`` returns
    a new (N, C) float32 array d(loss)/d(logits) for the last forward.
    """

    def __init__(self, ignore_index: int = F.IGNORE_INDEX) -> None:
        self.ignore_index = int(ignore_index)
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    def forward(self, logits: np.ndarray, labels: np.ndarray) -> float:
        loss, _, probs = F.cross_entropy_forward(logits, labels, self.ignore_index)
        self._cache = (probs, labels)
        return float(loss)

    __call__ = forward

    def backward(self, dloss: float = 1.0) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward called before forward")
        probs, labels = self._cache
        dlogits = F.zeros(probs.shape)
        F.cross_entropy_backward(dloss, probs, labels, self.ignore_index, dlogits=dlogits)
        return dlogits
