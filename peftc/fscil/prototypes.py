"""The cosine prototype classifier of incremental-frozen FSCIL: one unit mean vector per class, argmax cosine.

``proto_c = mean_{x in D_c} normalize(f(x))`` (kept unnormalised: the cosine divides it out), and
``logit_c(x) = s * cos(f(x), proto_c)``; prediction is the argmax over the classes stored so far.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F


def class_means(features: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(K, H) float32: the mean of the L2-normalised rows of ``features`` (N, H) of each class in ``classes``.

    >>> class_means(np.array([[3, 4], [0, 2]], np.float32), np.array([1, 1]), np.array([1]))
    array([[0.3, 0.9]], dtype=float32)
    """
    features = np.ascontiguousarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"features must be (N, H) and labels (N,), got {features.shape} and {labels.shape}")
    unit, _ = F.l2_normalize_forward(features)
    out = np.empty((len(classes), features.shape[1]), np.float32)
    for k, c in enumerate(classes):
        rows = labels == c
        if not rows.any():
            raise ValueError(f"class {c} has no example among the {len(labels)} rows given")
        out[k] = unit[rows].mean(axis=0)
    return out


class PrototypeClassifier:
    """Stored prototypes (K, H) and their class labels (K,); ``add`` appends, ``predict`` takes the argmax cosine.

    >>> clf = PrototypeClassifier(2)
    >>> clf.add(np.array([[1, 0], [0, 1]], np.float32), np.array([5, 7]))
    >>> clf.predict(np.array([[0.2, 0.9]], np.float32))
    array([7])
    """

    def __init__(self, width: int) -> None:
        self.prototypes = np.zeros((0, int(width)), np.float32)
        self.classes = np.zeros(0, np.int64)

    def add(self, prototypes: np.ndarray, classes: np.ndarray) -> None:
        prototypes = np.asarray(prototypes, np.float32)
        classes = np.asarray(classes, np.int64)
        width = self.prototypes.shape[1]
        if prototypes.ndim != 2 or prototypes.shape[1] != width or classes.shape != (len(prototypes),):
            raise ValueError(f"prototypes must be (K, {self.prototypes.shape[1]}) with classes (K,), got "
                             f"{prototypes.shape} and {classes.shape}")
        again = np.intersect1d(classes, self.classes)
        if again.size:
            raise ValueError(f"classes {again.tolist()} already have prototypes")
        self.prototypes = np.ascontiguousarray(np.concatenate([self.prototypes, prototypes]))
        self.classes = np.concatenate([self.classes, classes])

    def unit_prototypes(self) -> np.ndarray:
        """(K, H): the prototypes scaled to unit length."""
        return F.l2_normalize_forward(np.ascontiguousarray(self.prototypes))[0]

    def cosine(self, features: np.ndarray) -> np.ndarray:
        """(N, K): cos(features[n], prototype k)."""
        unit, _ = F.l2_normalize_forward(np.ascontiguousarray(features, dtype=np.float32))
        return unit @ self.unit_prototypes().T

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N,) int64: the class label of the nearest prototype by cosine."""
        if len(self.classes) == 0:
            raise RuntimeError("PrototypeClassifier.predict before any prototype was added")
        return self.classes[np.argmax(self.cosine(features), axis=1)]
