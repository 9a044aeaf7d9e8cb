"""Per-model selection of hyperparameters (or prompt templates) on a validation split.

``select_on_validation`` trains one model per candidate, scores each on the validation split,
keeps the best (the first in candidate order on ties, so the grid order decides reproducibly)
and evaluates only that one on the test split, exactly once. Every candidate's validation score is
recorded, so a report can show what the choice was made from. Each model in a comparison is
selected by its own call: tuning only one side (or reusing one side's choice for the other)
inflates that side's wins.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

VALIDATION, TEST = "validation", "test"


@dataclass(frozen=True)
class Selection:
    """The outcome of a selection: ``scores[i]`` is candidate i's validation score; ``best`` is the
    index of the chosen candidate; ``test_score`` is its (single) test evaluation."""

    candidates: tuple[Any, ...]
    scores: tuple[float, ...]
    best: int
    test_score: Any
    model: Any

    @property
    def best_candidate(self) -> Any:
        return self.candidates[self.best]

    @property
    def best_score(self) -> float:
        return self.scores[self.best]


def select_on_validation(candidates: Sequence[Any], train_fn: Callable[[Any], Any],
                         eval_fn: Callable[[Any, str], Any], *, maximize: bool = True) -> Selection:
    """Choose among ``candidates`` by validation score, then touch the test split once.

    train_fn(candidate) -> model; eval_fn(model, split) -> score, with split "validation" or "test".
    The validation score must be a finite number (a NaN would make the choice meaningless); the
    test score is returned as eval_fn gives it (a number, or a dict of metrics and predictions).
    Only the best model so far is kept alive. ``maximize=False`` selects the smallest score (a loss).
    """
    candidates = tuple(candidates)
    if not candidates:
        raise ValueError("candidates must not be empty")
    if not callable(train_fn):
        raise TypeError(f"train_fn must be callable, got {type(train_fn).__name__}")
    if not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable, got {type(eval_fn).__name__}")
    scores: list[float] = []
    best, best_model = -1, None
    for i, candidate in enumerate(candidates):
        model = train_fn(candidate)
        raw = eval_fn(model, VALIDATION)
        try:
            score = float(raw)
        except (TypeError, ValueError):
            raise TypeError(f"eval_fn must return a number for the validation split, got {type(raw).__name__} "
                            f"for candidate {i} ({candidate!r})") from None
        if not math.isfinite(score):
            raise ValueError(f"eval_fn returned a non-finite validation score {score} for candidate {i} "
                             f"({candidate!r})")
        scores.append(score)
        if best < 0 or (score > scores[best] if maximize else score < scores[best]):
            best, best_model = i, model
        del model
    test_score = eval_fn(best_model, TEST)
    return Selection(candidates, tuple(scores), best, test_score, best_model)
