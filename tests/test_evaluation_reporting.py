"""Win / tie / loss over tasks, validation-only selection, and the results files' verdicts list."""
from __future__ import annotations

import json

import numpy as np
import pytest

from peftc.evaluation import Claim, select_on_validation, verdicts, verdicts_markdown, win_tie_loss

CONTRACT_KEYS = ["claim", "holds", "p_holm", "diff", "ci95", "n_seeds"]


def discordant(n10: int, n01: int, concordant: int):
    n = n10 + n01 + concordant
    y = np.zeros(n, dtype=np.int64)
    pa, pb = y.copy(), y.copy()
    pb[:n10] = 1
    pa[n10:n10 + n01] = 1
    return y, pa, pb


def constructed_tasks():
    # borderline: n = 800, difference 0.035, paired standard error 0.0158 (z = 2.2): its 95% interval
    # excludes 0 but its 98.75% interval (Bonferroni over 4 tasks) does not
    return {"clear win": discordant(60, 0, 140), "clear loss": discordant(0, 60, 140),
            "identical": discordant(0, 0, 200), "borderline": discordant(94, 66, 640)}


def test_win_tie_loss_on_a_constructed_table():
    table = win_tie_loss(constructed_tasks(), seed=0)
    verdict = {r.task: r.verdict for r in table.rows}
    assert verdict == {"clear win": "win", "clear loss": "loss", "identical": "tie", "borderline": "tie"}
    assert table.confidence == pytest.approx(1 - 0.05 / 4)
    assert table.counts() == {"win": 1, "tie": 2, "loss": 1}
    assert table.percentages() == {"win": 25.0, "tie": 50.0, "loss": 25.0}
    # the papers' ablation without testing: the sign of the point difference
    assert table.counts("sign_only") == {"win": 2, "tie": 1, "loss": 1}
    row = table.rows[3]
    assert row.estimate == pytest.approx(0.035) and row.ci[0] < 0 < row.ci[1] and row.n == 800


def test_win_tie_loss_without_correction_counts_the_borderline_win():
    table = win_tie_loss(constructed_tasks(), seed=0, correction="none")
    assert table.confidence == 0.95
    assert {r.task: r.verdict for r in table.rows}["borderline"] == "win"
    assert table.counts() == {"win": 2, "tie": 1, "loss": 1}


def test_win_tie_loss_on_error_counts_lower_error_as_a_win():
    table = win_tie_loss(constructed_tasks(), seed=0, metric="error")
    assert {r.task: r.verdict for r in table.rows}["clear win"] == "win"
    assert table.counts("sign_only") == {"win": 2, "tie": 1, "loss": 1}


def test_win_tie_loss_markdown_and_task_streams():
    tasks = constructed_tasks()
    table = win_tie_loss(tasks, seed=3)
    text = table.markdown()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(tasks) and all(f"| {name} |" in text for name in tasks)
    assert "98.75% CI" in text and "win 1 (25.0%)" in text and "Bonferroni over 4 tasks" in text
    # each task has its own stream: a task's interval does not depend on the tasks before it
    alone = win_tie_loss({"borderline": tasks["borderline"]}, seed=3, correction="none")
    first = win_tie_loss({"borderline": tasks["borderline"], "identical": tasks["identical"]}, seed=3,
                         correction="none")
    assert alone.rows[0].ci == first.rows[0].ci


def test_win_tie_loss_names_a_bad_task():
    tasks = constructed_tasks()
    tasks["broken"] = (np.zeros(5, np.int64), np.zeros(4, np.int64), np.zeros(5, np.int64))
    with pytest.raises(ValueError, match=r"tasks\['broken'\].*pred_a"):
        win_tie_loss(tasks, seed=0)
    with pytest.raises(ValueError, match="correction"):
        win_tie_loss(constructed_tasks(), seed=0, correction="holm")
    with pytest.raises(ValueError, match="tasks"):
        win_tie_loss({}, seed=0)


class CountingEval:
    """eval_fn that records every call; a model is its candidate's learning rate, its score a bump at 0.1."""

    def __init__(self):
        self.calls: list[tuple[float, str]] = []

    def __call__(self, model, split):
        self.calls.append((model, split))
        return -abs(model - 0.1) if split == "validation" else {"accuracy": 0.5, "model": model}


def test_select_on_validation_touches_test_once_with_the_best_model():
    grid = [0.3, 0.01, 0.1, 0.2, 0.05]
    trained = []
    eval_fn = CountingEval()
    sel = select_on_validation(grid, lambda lr: trained.append(lr) or lr, eval_fn)
    assert trained == grid
    assert [s for _, s in eval_fn.calls].count("test") == 1
    assert eval_fn.calls[-1] == (0.1, "test")  # last, after every validation score, on the chosen model
    assert [s for _, s in eval_fn.calls[:-1]] == ["validation"] * len(grid)
    assert sel.best == 2 and sel.best_candidate == 0.1 and sel.model == 0.1
    assert sel.scores == pytest.approx((-0.2, -0.09, 0.0, -0.1, -0.05))
    assert sel.test_score == {"accuracy": 0.5, "model": 0.1}


def test_select_on_validation_first_best_wins_and_can_minimize():
    sel = select_on_validation(["a", "b", "c"], lambda c: c, lambda m, s: {"a": 1.0, "b": 2.0, "c": 2.0}[m]
                               if s == "validation" else None)
    assert sel.best_candidate == "b"
    sel = select_on_validation([3, 1, 2, 1], lambda c: c, lambda m, s: float(m), maximize=False)
    assert sel.best == 1 and sel.best_score == 1.0


def test_select_on_validation_rejects_bad_scores_and_empty_grids():
    with pytest.raises(ValueError, match="candidates"):
        select_on_validation([], lambda c: c, lambda m, s: 0.0)
    with pytest.raises(ValueError, match=r"eval_fn .*non-finite.*candidate 1"):
        select_on_validation([1, 2], lambda c: c, lambda m, s: float("nan") if m == 2 else 0.5)
    with pytest.raises(TypeError, match="eval_fn must return a number"):
        select_on_validation([1], lambda c: c, lambda m, s: "high")
    with pytest.raises(TypeError, match="train_fn"):
        select_on_validation([1], None, lambda m, s: 0.0)


A = [0.80, 0.82, 0.79, 0.81, 0.84]


def family():
    return [
        Claim("clear gain", [a + d for a, d in zip(A, [0.03, 0.04, 0.035, 0.03, 0.045])], A, "greater"),
        Claim("small gain", [a + d for a, d in zip(A, [0.01, 0.02, -0.005, 0.015, 0.01])], A, "greater"),
        Claim("claimed lower, is higher", [a + 0.05 + 0.001 * i for i, a in enumerate(A)], A, "less"),
    ]


def test_verdicts_apply_holm_and_the_sign_rule():
    scipy_stats = pytest.importorskip("scipy.stats")
    out = verdicts(family())
    p = [scipy_stats.ttest_rel(c.a, c.b).pvalue for c in family()]
    order = np.argsort(p)
    expected = np.empty(3)
    expected[order] = np.minimum(1, np.maximum.accumulate((3 - np.arange(3)) * np.asarray(p)[order]))
    for v, e, raw in zip(out, expected, p):
        assert list(v)[:6] == CONTRACT_KEYS
        assert v["p_holm"] == pytest.approx(e, rel=1e-10) and v["p"] == pytest.approx(raw, rel=1e-10)
        assert v["n_seeds"] == 5 and v["test"] == "paired t"
    gain, small, wrong = out
    assert gain["holds"] is True and gain["diff"] == pytest.approx(0.036, abs=1e-12)
    assert gain["ci95"][0] > 0
    # small gain: p about 0.075 before correction, not a holding claim
    assert small["holds"] is False and small["p_holm"] >= 0.05 and "Holm-adjusted p" in small["why"]
    # a large, significant difference in the opposite direction of the claim never holds
    assert wrong["p_holm"] < 0.05 and wrong["holds"] is False and "wrong sign" in wrong["why"]
    # Wilcoxon beside it: 5 positive differences give exactly 2/32
    assert gain["p_wilcoxon"] == pytest.approx(0.0625)
    json.loads(json.dumps(out))  # plain JSON types


def test_verdicts_holm_turns_a_raw_significance_into_a_non_holding_claim():
    # Holm multiplies the largest p by 1, so two borderline claims (p ~ 0.045 each) are needed:
    # the smaller is multiplied by 2 and the running maximum carries that to the other
    rng = np.random.default_rng(0)
    strong = [Claim(f"strong {i}", list(np.array(A) + 0.05 + 0.002 * rng.normal(size=5)), A) for i in range(2)]
    gains = [0.02, 0.03, -0.004, 0.015, 0.02]
    borderline = [Claim(f"borderline {i}", [a + d + 1e-4 * i for a, d in zip(A, gains)], A) for i in range(2)]
    out = verdicts(strong + borderline)
    for v in out[2:]:
        assert 0.0 < v["p"] < 0.05, "precondition: significant before correction"
        assert v["p_holm"] >= 0.05 and v["holds"] is False
    assert all(v["holds"] for v in out[:2])


def test_verdicts_need_enough_seeds():
    few = Claim("three seeds", [0.9, 0.91, 0.92], [0.5, 0.52, 0.5])
    (v,) = verdicts([few])
    assert v["holds"] is False and v["n_seeds"] == 3 and "only 3 seeds" in v["why"] and v["p_holm"] < 0.05
    (v,) = verdicts([few], min_seeds=3)
    assert v["holds"] is True


def test_verdicts_with_wilcoxon_cannot_hold_on_five_seeds():
    out = verdicts(family(), test="wilcoxon")
    assert all(v["p"] >= 0.0625 for v in out) and not any(v["holds"] for v in out)
    assert out[0]["test"] == "Wilcoxon signed-rank"


def test_verdicts_accept_mappings_and_render_markdown():
    out = verdicts([{"claim": "EATA error < TENT error", "a": [10.1, 10.3, 9.9, 10.0, 10.2],
                     "b": [12.0, 12.4, 11.8, 12.1, 12.2], "expected": "less"}])
    assert out[0]["holds"] is True and out[0]["diff"] < 0
    text = verdicts_markdown(out + verdicts(family()))
    lines = text.splitlines()
    assert lines[0].startswith("| claim | holds |") and len([s for s in lines if s.startswith("| ")]) == 5
    assert "| EATA error < TENT error | yes |" in text and "| small gain | **no** |" in text


def test_verdicts_reject_bad_claims():
    with pytest.raises(ValueError, match=r"claims\[0\].*a must have at least 2"):
        verdicts([Claim("one seed", [0.5], [0.4])])
    with pytest.raises(ValueError, match=r"claims\[0\].*a, b must have the same length"):
        verdicts([Claim("mismatch", [0.5, 0.6, 0.7], [0.4, 0.5])])
    with pytest.raises(ValueError, match=r"claims\[0\].*b must be finite"):
        verdicts([Claim("nan", [0.5, 0.6], [0.4, float("nan")])])
    with pytest.raises(ValueError, match=r"claims\[0\]\.expected"):
        verdicts([Claim("direction", [0.5, 0.6], [0.4, 0.5], "higher")])
    with pytest.raises(ValueError, match="unknown keys"):
        verdicts([{"claim": "x", "a": [1, 2], "b": [1, 2], "direction": "less"}])
    with pytest.raises(ValueError, match="claims must not be empty"):
        verdicts([])


def test_verdicts_give_no_evidence_to_a_difference_without_spread_across_seeds():
    # a method that ignores the seed: the same gain with every seed (up to rounding), where SciPy's t gives p = 0
    same = Claim("same gain every seed", [a + 0.03 for a in A], A, "greater")
    (v, gain, _, _) = verdicts([same] + family())
    assert v["p"] == 1.0 and v["p_holm"] == 1.0 and v["holds"] is False and "every seed" in v["why"]
    assert v["diff"] == pytest.approx(0.03) and gain["holds"] is True
    assert verdicts([same], test="wilcoxon")[0]["p"] == pytest.approx(0.0625)  # ranks are still a valid test
