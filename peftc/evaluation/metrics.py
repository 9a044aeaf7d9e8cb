"""Classification metrics, and the per-example "type" table that makes paired resampling cheap.

Accuracy, error and macro-F1 of a model depend on its predictions only through confusion counts. A
pair of models on one example is a triple (label, prediction of A, prediction of B); examples with
the same triple are interchangeable. So a resample (bootstrap) or a relabelling (permutation) is
summarised exactly by how many examples of each distinct triple it holds, and the metrics follow
from those counts by one small matrix product. ``PairedTable`` holds the distinct triples and the
0/1 design matrix mapping triple counts to the confusion counts each metric needs. Accuracy and
error need less: a type is just (A right?, B right?), so there are at most four.

Macro-F1 follows scikit-learn's ``f1_score(average="macro")``: the mean over the classes that occur
among the labels or that model's predictions in the (re)sample, F1_k = 2 TP_k / (T_k + P_k), with
T_k the examples of class k and P_k the predictions of class k. A prediction of -1 (no answer) is
wrong and predicts no class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._inputs import as_classes, check_n_classes, same_length

METRICS = ("accuracy", "error", "macro_f1")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def _macro_f1_from_counts(tp: np.ndarray, pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Macro-F1 per row from (R, K) true-positive, predicted and true counts per class."""
    denom = true + pred
    present = denom > 0
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(denom, dtype=np.float64), where=present)
    return f1.sum(axis=-1) / present.sum(axis=-1)


def metric_value(metric: str, labels, pred, n_classes: int | None = None) -> float:
    """``metric`` ("accuracy", "error" or "macro_f1") of predictions ``pred`` against ``labels``."""
    check_metric(metric)
    labels = as_classes("labels", labels, predictions=False)
    pred = as_classes("pred", pred, predictions=True)
    n = same_length(labels=labels, pred=pred)
    correct = int(np.count_nonzero(labels == pred))
    if metric == "accuracy":
        return correct / n
    if metric == "error":
        return (n - correct) / n
    k = check_n_classes(n_classes, labels, ("pred", pred))
    true = np.bincount(labels, minlength=k).astype(np.float64)
    predicted = np.bincount(pred[pred >= 0], minlength=k).astype(np.float64)
    tp = np.bincount(labels[labels == pred], minlength=k).astype(np.float64)
    return float(_macro_f1_from_counts(tp, predicted, true))


def accuracy(labels, pred) -> float:
    """Fraction of examples with ``pred == labels``."""
    return metric_value("accuracy", labels, pred)


def macro_f1(labels, pred, n_classes: int | None = None) -> float:
    """Unweighted mean of the per-class F1 over the classes present in ``labels`` or ``pred``."""
    return metric_value("macro_f1", labels, pred, n_classes)


@dataclass(frozen=True)
class PairedTable:
    """Two models' predictions on the same examples, reduced to distinct (label, pred A, pred B) types.

    ``codes`` (n,) maps each example to its type; ``counts`` (U,) are the types' sizes; ``design``
    (U, C) maps a vector of type counts to the metric's confusion counts, and ``swapped`` (U, C) is
    the design with the roles of A and B exchanged (what a permutation does to an example).
    """

    metric: str
    n: int
    codes: np.ndarray
    counts: np.ndarray
    design: np.ndarray
    swapped: np.ndarray

    @staticmethod
    def build(labels, pred_a, pred_b, metric: str, n_classes: int | None = None) -> "PairedTable":
        check_metric(metric)
        y = as_classes("labels", labels, predictions=False)
        pa = as_classes("pred_a", pred_a, predictions=True)
        pb = as_classes("pred_b", pred_b, predictions=True)
        n = same_length(labels=y, pred_a=pa, pred_b=pb)
        k = check_n_classes(n_classes, y, ("pred_a", pa), ("pred_b", pb))
        if metric in ("accuracy", "error"):
            # accuracy needs only whether each model is right: at most 4 types (A right?, B right?)
            key = 2 * (y == pa).astype(np.int64) + (y == pb)
            uniq, codes, counts = np.unique(key, return_inverse=True, return_counts=True)
            design = np.stack([uniq // 2, uniq % 2], axis=1).astype(np.float64)
            swapped = design[:, ::-1]
        else:
            # one integer key per triple; predictions are shifted by one so that -1 (no answer) is 0
            k1 = k + 1
            key = (y * k1 + (pa + 1)) * k1 + (pb + 1)
            uniq, codes, counts = np.unique(key, return_inverse=True, return_counts=True)
            ty, rest = np.divmod(uniq, k1 * k1)
            ta, tb = np.divmod(rest, k1)
            ta, tb = ta - 1, tb - 1
            ca, cb = (ty == ta).astype(np.float64), (ty == tb).astype(np.float64)
            classes = np.unique(np.concatenate([ty, ta[ta >= 0], tb[tb >= 0]]))  # the classes that occur
            col = np.searchsorted(classes, ty)
            u = np.arange(uniq.size)
            blocks = np.zeros((5, uniq.size, classes.size))  # TP_A, P_A, TP_B, P_B, T
            blocks[0, u, col] = ca
            blocks[2, u, col] = cb
            blocks[4, u, col] = 1.0
            has_a, has_b = ta >= 0, tb >= 0
            blocks[1, u[has_a], np.searchsorted(classes, ta[has_a])] = 1.0
            blocks[3, u[has_b], np.searchsorted(classes, tb[has_b])] = 1.0
            design = np.concatenate(list(blocks), axis=1)
            swapped = np.concatenate([blocks[2], blocks[3], blocks[0], blocks[1], blocks[4]], axis=1)
        return PairedTable(metric, n, codes.astype(np.intp), counts.astype(np.int64), design, swapped)

    def signed_correct(self) -> np.ndarray:
        """(n,) int8: +1 where only A is right, -1 where only B is right, 0 elsewhere (accuracy, error)."""
        per_type = (self.design[:, 0] - self.design[:, 1]).astype(np.int8)
        return per_type[self.codes]

    @property
    def n_types(self) -> int:
        return self.counts.size

    def metric_pair(self, confusion: np.ndarray, n: int | float) -> tuple[np.ndarray, np.ndarray]:
        """(metric of A, metric of B) per row of ``confusion`` (R, C) = type counts @ design."""
        if self.metric in ("accuracy", "error"):
            acc_a, acc_b = confusion[:, 0] / n, confusion[:, 1] / n
            return (acc_a, acc_b) if self.metric == "accuracy" else (1.0 - acc_a, 1.0 - acc_b)
        tp_a, p_a, tp_b, p_b, true = np.split(confusion, 5, axis=1)
        return _macro_f1_from_counts(tp_a, p_a, true), _macro_f1_from_counts(tp_b, p_b, true)

    def difference(self, confusion: np.ndarray, n: int | float) -> np.ndarray:
        """metric(A) - metric(B) per row of ``confusion`` (R, C).

        For accuracy and error the difference is taken of the integer correct counts before dividing
        by n, so equal counts give bit-equal differences (BCa's bias correction counts ties with the
        estimate).
        """
        if self.metric in ("accuracy", "error"):
            diff = (confusion[:, 0] - confusion[:, 1]) / n
            return diff if self.metric == "accuracy" else -diff
        a, b = self.metric_pair(confusion, n)
        return a - b

    def full_confusion(self) -> np.ndarray:
        """The (1, C) confusion counts of the data itself."""
        return self.counts[None, :].astype(np.float64) @ self.design
