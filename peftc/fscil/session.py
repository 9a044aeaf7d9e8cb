"""Session: the labelled texts one FSCIL session brings (the base session's data, or one session's shots)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Session:
    """Parallel ``texts`` and int64 ``labels``; ``classes`` lists the distinct labels, ascending.

    >>> s = Session(["a cat", "a dog"], np.array([3, 4]))
    >>> s.classes.tolist(), len(s)
    ([3, 4], 2)
    """

    texts: list[str]
    labels: np.ndarray  # (N,) int64

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        self.labels = np.asarray(self.labels)
        if self.labels.ndim != 1 or len(self.texts) != len(self.labels):
            raise ValueError(f"Session: texts ({len(self.texts)}) and labels {self.labels.shape} must be parallel")
        if self.labels.size and (self.labels.dtype.kind not in "iu" or self.labels.min() < 0):
            raise ValueError(f"Session: labels must be non-negative integers, got {self.labels.dtype} "
                             f"{self.labels[:5].tolist()}...")
        self.labels = self.labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def classes(self) -> np.ndarray:
        return np.unique(self.labels)

    @classmethod
    def from_split(cls, split) -> Session:
        """From any object with ``texts`` and ``labels`` (a :class:`peftc.data.text_tasks.TaskSplit`)."""
        return cls(list(split.texts), np.asarray(split.labels))
