"""run_fscil: the FSCIL protocol on one :class:`peftc.data.fscil_wordnet.FSCILSplit` (or any split alike).

Base session, then each incremental session in order; after each (the base one included) the learner predicts
every test example, and :func:`peftc.fscil.metrics.fscil_scores` scores the seen classes' rows. When no trick
changes the encoder during the sessions (no ``subnet``), the test features are computed once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .metrics import FSCILScores, fscil_scores
from .session import Session


@dataclass
class FSCILRun:
    """``predictions[t]``: session t's predicted labels of every test row (for paired statistics)."""

    scores: FSCILScores
    predictions: list[np.ndarray]
    labels: np.ndarray


def run_fscil(learner, split, test=None, sessions: int | None = None, fit: bool = True) -> FSCILRun:
    """Fit the base session of ``split`` (unless ``fit=False``: the learner is already fitted), add its sessions
    (the first ``sessions`` of them), score on ``test`` (default ``split.test``; pass validation rows to choose
    hyperparameters without touching test).

    >>> run = run_fscil(FSCILLearner(bert, tokenizer), bench.split(seed=0))  # doctest: +SKIP
    >>> run.scores.avg_acc  # doctest: +SKIP
    """
    test = split.test if test is None else test
    if fit:
        learner.fit_base(Session.from_split(split.base_train))
    frozen = not learner.tricks.subnet
    features = learner.features(test.texts) if frozen else None

    def predict() -> np.ndarray:
        return learner.classifier.predict(features) if frozen else learner.predict(test.texts)

    preds = [predict()]
    for shots in split.sessions[:sessions]:
        learner.add_session(Session.from_split(shots))
        preds.append(predict())
    labels = np.asarray(test.labels)
    return FSCILRun(fscil_scores(preds, labels, split.base_classes, split.ways), preds, labels)
