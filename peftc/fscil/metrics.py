"""FSCIL scores: accuracy on all classes seen after each session, its mean, the drop, base / novel in the last.

After session t (0 = the base session) the model is scored on the test examples of the classes seen so far,
``labels < num_seen(t)``: that accuracy is A_t. Then (Tao et al. 2020; the bag-of-tricks paper reports the
same): average accuracy ``mean_t A_t``, performance drop ``PD = A_0 - A_T`` (the first minus the last), and in
the last session the accuracy on the base classes' test examples, on the novel classes' test examples, and
their harmonic mean. Accuracies are fractions in [0, 1].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class FSCILScores:
    """``per_session[t]`` is A_t; ``last_base`` / ``last_novel`` / ``last_hm`` are read in the last session."""

    per_session: tuple[float, ...]
    avg_acc: float
    pd: float
    last_base: float
    last_novel: float
    last_hm: float

    def as_dict(self) -> dict:
        d = asdict(self)
        d["per_session"] = list(self.per_session)
        return d


def _accuracy(pred: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> float:
    return float(np.mean(pred[rows] == labels[rows])) if rows.any() else float("nan")


def fscil_scores(predictions: list[np.ndarray], labels: np.ndarray, base_classes: int, ways: int) -> FSCILScores:
    """Scores of a run: ``predictions[t]`` are session t's predicted labels of *every* test example (rows of
    classes not yet seen are ignored), ``labels`` the true ones; session t has seen ``base_classes + t*ways``.

    >>> y = np.array([0, 0, 1, 2])
    >>> s = fscil_scores([np.array([0, 1, 1, -1]), np.array([0, 0, 2, 2])], y, base_classes=2, ways=1)
    >>> s.per_session, round(s.pd, 2), s.last_base, s.last_novel
    ((0.6666666666666666, 0.75), -0.08, 0.6666666666666666, 1.0)
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not predictions:
        raise ValueError(f"labels must be 1-D and predictions non-empty, got labels {labels.shape} and "
                         f"{len(predictions)} prediction arrays")
    if base_classes < 1 or ways < 1:
        raise ValueError(f"base_classes and ways must be >= 1, got {base_classes}, {ways}")
    accs = []
    for t, pred in enumerate(predictions):
        pred = np.asarray(pred)
        if pred.shape != labels.shape:
            raise ValueError(f"predictions[{t}] has shape {pred.shape}, labels have {labels.shape}")
        seen = labels < base_classes + t * ways
        if not seen.any():
            raise ValueError(f"session {t}: no test example of a seen class")
        accs.append(_accuracy(pred, labels, seen))
    last = np.asarray(predictions[-1])
    t_last = len(predictions) - 1
    base = _accuracy(last, labels, labels < base_classes)
    novel = _accuracy(last, labels, (labels >= base_classes) & (labels < base_classes + t_last * ways))
    hm = 2 * base * novel / (base + novel) if base + novel > 0 else 0.0
    return FSCILScores(tuple(accs), float(np.mean(accs)), accs[0] - accs[-1], base, novel, float(hm))
