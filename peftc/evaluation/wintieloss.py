"""Win / tie / loss of model A against model B over tasks, as the medical-adaptation papers tabulate it.

Each task (a dataset, a regime, a decoding mode: one "case") gets a paired bootstrap interval of
metric(A) - metric(B). It is a win for A when the interval excludes 0 on A's better side, a loss
when it excludes 0 on the other side, and a tie when it contains 0. With ``correction="bonferroni"``
(the default) each interval is at level 1 - (1 - confidence) / m for m tasks, so that all m hold
jointly with probability >= confidence and the table does not count chance wins; ``"none"`` gives
the plain per-task intervals. The "sign only" column is the papers' ablation without statistical
testing (the sign of the point difference), which inflates both wins and losses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ._inputs import check_confidence, generator
from .bootstrap import paired_bootstrap

CORRECTIONS = ("bonferroni", "none")
OUTCOMES = ("win", "tie", "loss")


@dataclass(frozen=True)
class TaskVerdict:
    task: str
    estimate: float
    ci: tuple[float, float]
    verdict: str
    sign_only: str
    n: int


@dataclass(frozen=True)
class WinTieLoss:
    """Per-task verdicts and their tally; ``confidence`` is the per-task level after correction."""

    metric: str
    correction: str
    family_confidence: float
    confidence: float
    rows: tuple[TaskVerdict, ...]

    def counts(self, column: str = "verdict") -> dict[str, int]:
        """{"win": .., "tie": .., "loss": ..} of the ``verdict`` column or the ``sign_only`` one."""
        values = [getattr(r, column) for r in self.rows]
        return {o: values.count(o) for o in OUTCOMES}

    def percentages(self, column: str = "verdict") -> dict[str, float]:
        return {o: 100.0 * c / len(self.rows) for o, c in self.counts(column).items()}

    def markdown(self) -> str:
        level = f"{100 * self.confidence:.4g}%"
        lines = [f"| task | {self.metric} A - B | {level} CI | verdict | sign only |", "|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.task} | {r.estimate:+.4g} | [{r.ci[0]:+.4g}, {r.ci[1]:+.4g}] | {r.verdict} | "
                         f"{r.sign_only} |")
        tally = ", ".join(f"{o} {c} ({p:.1f}%)" for (o, c), p in
                          zip(self.counts().items(), self.percentages().values()))
        signs = ", ".join(f"{o} {c}" for o, c in self.counts("sign_only").items())
        what = (f"Bonferroni over {len(self.rows)} tasks (family level {100 * self.family_confidence:.4g}%)"
                if self.correction == "bonferroni" else "no multiplicity correction")
        return "\n".join(lines) + f"\n\nA against B: {tally}; sign only: {signs}. Intervals: paired bootstrap, " \
                                  f"{what}.\n"


def win_tie_loss(tasks: Mapping[str, tuple], *, seed: int | np.random.Generator, metric: str = "accuracy",
                 n_resamples: int = 10_000, confidence: float = 0.95, correction: str = "bonferroni",
                 method: str = "percentile", n_classes: int | None = None) -> WinTieLoss:
    """Win / tie / loss of A against B over ``tasks``: {name: (labels, pred_a, pred_b)}.

    Each task is bootstrapped with its own stream spawned from ``seed`` (so adding a task does not
    change the others' draws in order); ``method`` is "percentile" or "bca".
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    confidence = check_confidence(confidence)
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError("tasks must be a non-empty mapping {name: (labels, pred_a, pred_b)}")
    m = len(tasks)
    level = 1.0 - (1.0 - confidence) / m if correction == "bonferroni" else confidence
    streams = generator(seed).spawn(m)
    rows = []
    higher_is_better = metric != "error"
    for (name, triple), rng in zip(tasks.items(), streams):
        if not isinstance(triple, (tuple, list)) or len(triple) != 3:
            raise ValueError(f"tasks[{name!r}] must be (labels, pred_a, pred_b)")
        try:
            res = paired_bootstrap(*triple, seed=rng, metric=metric, n_resamples=n_resamples, confidence=level,
                                   method=method, n_classes=n_classes)
        except (TypeError, ValueError) as e:
            raise type(e)(f"tasks[{name!r}]: {e}") from None
        est = res.estimate if higher_is_better else -res.estimate
        sign = "win" if est > 0 else "loss" if est < 0 else "tie"
        rows.append(TaskVerdict(str(name), res.estimate, res.ci, res.verdict, sign, res.n))
    return WinTieLoss(metric, correction, confidence, level, tuple(rows))
