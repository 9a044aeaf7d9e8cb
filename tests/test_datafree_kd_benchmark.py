"""benchmarks/datafree_kd.py without running a model: the aggregate, its verdicts and the seed merge."""
from __future__ import annotations

import pytest

from .benchmark_scripts import load_benchmark


JITTER = (0.001, -0.001, 0.002, -0.002, 0.0)  # per arm and seed, mean 0 over the five seeds


def _jitter(i: int, seed: int) -> float:
    """Arm i's own wobble with ``seed``, so that no difference between arms is the same with every seed."""
    return JITTER[(seed + i) % len(JITTER)]


def _seed_payload(bench, seed: int, shift: float) -> dict:
    methods = {}
    for i, arm in enumerate(bench.ARMS):
        for fusion in (False, True):
            acc = {"scratch": 0.1, "real_ce": 0.85, "real_kd": 0.86, "afstip": 0.80, "dafl": 0.70,
                   "deepinversion": 0.78, "adi": 0.79}[arm] + (0.01 if fusion else 0.0) + shift + _jitter(i, seed)
            methods[arm + ("+fusion" if fusion else "")] = {"acc": acc, "macro_f1": acc - 0.01, "student_params": 15,
                                                            "teacher_params": 73, "seconds": 1.0, "selected": None}
    migration = [{"shots": k, "old_acc": 0.8, "old_macro_f1": 0.7, "new_acc": 0.1 * k, "new_f1": 0.2,
                  "all_acc": 0.75, "all_macro_f1": 0.7} for k in (5, 20)]
    return {"settings": {"seeds": [seed], "student_widths": [8, 16, 28]}, "command": f"run {seed}", "seconds": 2.0,
            "cpu": "test cpu", "per_seed": {str(seed): {"methods": methods, "migration": migration}}}


def test_aggregate_states_the_claims_and_tests_them_over_seeds():
    bench = load_benchmark("datafree_kd")
    per_seed = {str(k): _seed_payload(bench, k, 0.002 * k * (-1) ** k)["per_seed"][str(k)] for k in range(5)}
    agg = bench.aggregate(per_seed)
    v = {row["claim"]: row for row in agg["verdicts"]}
    assert len(v) == 3 * len(bench.DATA_FREE) and all(row["n_seeds"] == 5 for row in v.values())
    assert v["afstip acc > untrained student acc"]["holds"]
    assert not v["dafl acc > 0.9 x real-data KD acc"]["holds"]  # 0.70 < 0.9 * 0.86
    assert v["afstip+fusion acc > afstip acc"]["diff"] == pytest.approx(0.01)
    assert agg["methods"]["real_kd"]["acc"] == pytest.approx(0.86, abs=0.01)
    assert [row["shots"] for row in agg["migration"]] == [5, 20]


def test_one_seed_gives_no_verdicts():
    bench = load_benchmark("datafree_kd")
    assert bench.aggregate(_seed_payload(bench, 0, 0.0)["per_seed"])["verdicts"] == []


def test_merge_combines_seeds_and_refuses_other_settings(tmp_path, monkeypatch):
    bench = load_benchmark("datafree_kd")
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)
    for k in range(5):
        bench.common.write_results(f"part{k}", _seed_payload(bench, k, 0.001 * k), "")
    out = bench.merge([f"part{k}" for k in range(5)], "merged")
    assert out["settings"]["seeds"] == [0, 1, 2, 3, 4] and len(out["verdicts"]) == 3 * len(bench.DATA_FREE)
    assert (tmp_path / "merged.md").read_text().count("| yes |") + (tmp_path / "merged.md").read_text().count(
        "| **no** |") == 3 * len(bench.DATA_FREE)
    other = _seed_payload(bench, 9, 0.0)
    other["settings"]["student_widths"] = [4, 8, 8]
    bench.common.write_results("other", other, "")
    with pytest.raises(ValueError, match="student_widths"):
        bench.merge(["part0", "other"], "bad")


def test_aggregate_adds_the_text_tables_and_claims_when_the_seeds_carry_them():
    bench = load_benchmark("datafree_kd")
    per_seed = {}
    for k in range(5):
        part = _seed_payload(bench, k, 0.002 * k * (-1) ** k)["per_seed"][str(k)]
        text = {}
        for i, arm in enumerate(bench.TEXT_ARMS):
            for fusion in (False, True):
                acc = {"scratch": 0.02, "real_ce": 0.6, "real_kd": 0.62, "afstip": 0.3}[arm] - (0.02 if fusion else 0)
                acc += _jitter(i, k)
                text[arm + ("+fusion" if fusion else "")] = {"acc": acc + 0.003 * k, "macro_f1": acc, "seconds": 1.0,
                                                             "student_params": 9, "teacher_params": 20}
        part["text_methods"] = text
        part["text_migration"] = [{"shots": 5, "old_acc": 0.3, "old_macro_f1": 0.2, "new_acc": 0.1 * k, "new_f1": 0.1,
                                   "all_acc": 0.3, "all_macro_f1": 0.2}]
        per_seed[str(k)] = part
    agg = bench.aggregate(per_seed)
    v = {row["claim"]: row for row in agg["verdicts"]}
    assert len(v) == 3 * (len(bench.DATA_FREE) + len(bench.TEXT_DATA_FREE))
    assert v["text afstip acc > untrained student acc"]["holds"]
    assert not v["text afstip acc > 0.9 x real-data KD acc"]["holds"]
    assert v["text afstip+fusion acc > afstip acc"]["diff"] == pytest.approx(-0.02)
    assert agg["text_migration"][0]["new_acc"] == pytest.approx(0.2)
    assert v["afstip+fusion acc > afstip acc"]["diff"] == pytest.approx(0.01)  # the image claims unchanged
    md = bench.markdown({"aggregate": agg, "per_seed": per_seed, "cpu": "c", "command": "x",
                         "settings": {"text_held_out": "noun.food"}})
    assert "WordNet migration to noun.food" in md and "text afstip acc" in md


def test_the_adi_arm_is_deepinversion_with_the_competition_weight_and_its_selected_alpha_f(monkeypatch):
    import peftc.distill as distill

    bench = load_benchmark("datafree_kd")
    seen = []
    monkeypatch.setattr(distill, "deepinversion_distill", lambda t, student, n, shape, cfg, images=None:
                        seen.append((cfg, images)) or {"images": "synthesised"})
    s = bench.Settings(**bench.QUICK)
    bench.train_arm("adi", 0.1, None, None, s, False, 3, pools={"adi_alpha_f": 10.0, 0.1: "images of another arm"})
    bench.train_arm("adi", 0.01, None, None, s, True, 3, pools={"adi_alpha_f": 1.0})
    (first, images), (second, _) = seen
    assert (first.alpha_adi, first.alpha_f, first.seed, images) == (0.1, 10.0, 3, None)  # no shared images
    assert (second.alpha_adi, second.alpha_f) == (0.01, 1.0)
    for pools in (None, {}, {0.1: "images"}):  # no default alpha_f is picked silently
        with pytest.raises(ValueError, match="adi_alpha_f.*run the deepinversion arm first"):
            bench.train_arm("adi", 0.1, None, None, s, False, 3, pools=pools)
    assert len(seen) == 2
    assert bench.candidates("adi", bench.Settings()) == [0.01, 0.1] and "adi" in bench.DATA_FREE
