"""Paired statistics for comparing two models, in NumPy (SciPy is only a test oracle).

- ``paired_bootstrap``: percentile or BCa interval of metric(A) - metric(B) (accuracy, error,
  macro-F1) over resampled test examples (bootstrap.py);
- ``mcnemar`` (exact, optional mid-p) and ``paired_permutation_test`` per example;
  ``paired_t_test``, ``wilcoxon_signed_rank`` and both side by side (``compare_paired_scores``)
  across seeds or tasks (hypothesis.py);
- ``holm`` and ``benjamini_hochberg`` adjusted p-values over a family (multiple.py);
- ``win_tie_loss`` over tasks (wintieloss.py);
- ``select_on_validation``: choose hyperparameters or prompts on validation data, test once
  (selection.py);
- ``verdicts`` / ``verdicts_markdown``: the verdicts list of a benchmark's results file (verdicts.py);
- the distributions behind the tests (distributions.py);
- PassUntil: ``pass_until`` sampling, per-instance ``estimate_pass_probability`` with exact intervals,
  the task score ``passuntil_score`` and the task scaling law ``fit_task_scaling_law`` (passuntil.py).

Example-level functions take (labels, pred_a, pred_b): integer class indices of the same examples
in the same order; a prediction of -1 means "no answer". A correctness-only setting (exact-match
QA) passes labels of ones and predictions of correct.astype(int). Every random function takes an
explicit ``seed`` (an integer, or a ``numpy.random.Generator`` to draw from).
"""
from ._inputs import ABSTAIN
from .bootstrap import BootstrapResult, paired_bootstrap, verdict_of
from .hypothesis import (McNemarResult, PairedScoresComparison, SignificanceResult, compare_paired_scores, mcnemar,
                         paired_permutation_test, paired_t_test, wilcoxon_signed_rank)
from .metrics import METRICS, accuracy, macro_f1, metric_value
from .multiple import benjamini_hochberg, holm
from .passuntil import (PassEstimate, TaskScalingLaw, TaskScore, beta_ppf, estimate_pass_probability,
                        fit_task_scaling_law, pass_until, passuntil_score)
from .selection import Selection, select_on_validation
from .verdicts import Claim, verdicts, verdicts_markdown
from .wintieloss import TaskVerdict, WinTieLoss, win_tie_loss

__all__ = ["ABSTAIN", "BootstrapResult", "Claim", "METRICS", "McNemarResult", "PairedScoresComparison", "PassEstimate",
           "Selection", "TaskScalingLaw", "TaskScore", "beta_ppf", "estimate_pass_probability", "fit_task_scaling_law",
           "pass_until", "passuntil_score",
           "SignificanceResult", "TaskVerdict", "WinTieLoss", "accuracy", "benjamini_hochberg",
           "compare_paired_scores", "holm", "macro_f1", "mcnemar", "metric_value", "paired_bootstrap",
           "paired_permutation_test", "paired_t_test", "select_on_validation", "verdict_of", "verdicts",
           "verdicts_markdown", "wilcoxon_signed_rank", "win_tie_loss"]
