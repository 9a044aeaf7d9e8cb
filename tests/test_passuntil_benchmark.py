"""The tasks of benchmarks/passuntil_scaling.py: generated examples pass their own checks, the checker of the
many-answer task refuses what it must, and the unique-answer task's pass is the exact answer string."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from .benchmark_scripts import load_benchmark


def test_generated_examples_pass_their_checks_and_fit_the_sequence_length():
    bench = load_benchmark("passuntil_scaling")
    rng = np.random.default_rng(0)
    for _ in range(300):
        prompt, answer = bench.expr_example(rng)
        assert bench.expr_ok(prompt, answer), (prompt, answer)
        assert len(prompt + answer) <= bench.FULL.seq_len and len(answer) <= bench.MAX_ANSWER["expr"]
        prompt, answer = bench.add_example(rng)
        a, b = prompt[1:-1].split("+")
        assert answer == f"{int(a) + int(b)};" and len(answer) <= bench.MAX_ANSWER["add"]


def test_expression_checker_refuses_wrong_value_reused_or_foreign_digits_and_bad_syntax():
    bench = load_benchmark("passuntil_scaling")
    prompt = "E3719:11="
    assert bench.expr_ok(prompt, "3+9-1;") and bench.expr_ok(prompt, "7+1+3;")
    for bad in ("3+9;", "9+1+1;", "5+6;", "3+9-1", "39-28;", "+3+9-1;", "3+9-1-;", "3*9;"):
        assert not bench.expr_ok(prompt, bad), bad


def test_pass_check_reads_each_row_up_to_its_first_end_token():
    bench = load_benchmark("passuntil_scaling")
    rows = np.stack([bench.encode(t) for t in ("82;3", "82;;", "8;2;", "8222")])
    np.testing.assert_array_equal(bench.passes("add", "A37+45=", "82;", rows), [True, True, False, False])
    ids, labels = bench.batch_of(np.random.default_rng(1), bench.QUICK)
    counted = labels != -100
    assert counted.any(axis=1).all() and np.all(ids[counted] == labels[counted])
    assert np.all(labels[:, 0] == -100)  # the task marker is prompt, never a target


# -- claims across seeds: each seed's prediction errors, and the merge of the per-seed files ---------------------
PARAMS = [888, 1908, 6592, 14496, 38176, 113184]


def _task(rng, log_c: float, alpha: float, greedy: list[float]) -> dict:
    """A task's results on the six sizes, PU on the law with noise; the prediction is the law's exact value."""
    import math

    pu = [math.exp(-math.exp(log_c - alpha * math.log(n) + rng.normal(0, 0.03))) for n in PARAMS]
    sizes = [{"params": n, "greedy_acc": g, "pu": p, "pu_ci95": [0.8 * p, min(1.0, 1.2 * p)], "pu_se": 0.1 * p,
              "samples": 100, "censored": 0} for n, g, p in zip(PARAMS, greedy, pu)]
    predicted = math.exp(-math.exp(log_c - alpha * math.log(PARAMS[-1])))
    return {"sizes": sizes, "prediction": {"params": PARAMS[-1], "predicted_pu": predicted, "alpha": alpha,
                                           "ci95": [0.85 * predicted, min(1.0, 1.15 * predicted)], "log_c": log_c,
                                           "measured_pu": pu[-1]}}


def _part(tmp_path, seed: int, cpu: str = "Zen 3", lr: float = 3e-3) -> str:
    rng = np.random.default_rng(seed)
    tasks = {"add": _task(rng, 4.8, 0.485, [0.0, 0.0, 0.0, 0.8, 0.7, 0.83]),
             "expr": _task(rng, 2.95, 0.215, [0.07, 0.1, 0.07, 0.33, 0.27, 0.43])}
    payload = {"command": f"seed {seed}", "settings": {"lr": lr, "steps": 2000, "seed": seed}, "cpu": cpu,
               "environment": {"cpu": cpu}, "tasks": tasks, "coverage95": 0.95 + 0.01 * rng.standard_normal(),
               "coverage_instances": 180 if seed else 90, "wall_seconds": 100.0, "verdicts": [],
               "sizes": tasks["add"]["sizes"], "prediction": tasks["add"]["prediction"]}
    (tmp_path / f"pu_s{seed}.json").write_text(json.dumps(payload))
    return f"pu_s{seed}"


def test_prediction_errors_compare_the_law_with_persistence_and_a_clipped_greedy_trend():
    import math

    bench = load_benchmark("passuntil_scaling")
    sizes = [{"params": n, "pu": p, "greedy_acc": g} for n, p, g in
             zip([10, 100, 1000], [0.01, 0.2, 0.5], [0.0, 0.5, 0.9])]
    task = {"sizes": sizes, "prediction": {"predicted_pu": 0.4, "ci95": [0.3, 0.45]}}
    e = bench.prediction_errors(task, "t")
    g = bench.law_scale
    assert math.isclose(e["law_scale_error"], abs(g(0.4) - g(0.5)))
    assert math.isclose(e["persistence_scale_error"], abs(g(0.2) - g(0.5)))  # the second-largest size, not the first
    assert math.isclose(e["law_pu_error"], 0.1) and e["inside"] is False  # 0.5 is above the interval's 0.45
    # greedy 0 -> 0.5 per decade of N reaches 1.0 at N = 1000, clipped to 1 (the straight line gives exactly 1.0)
    assert math.isclose(e["greedy_trend"], 1.0) and math.isclose(e["greedy_trend_error"], 0.1)
    sizes[1]["greedy_acc"] = 0.9  # a steeper trend (1.8 at N = 1000) is clipped to 1, not left above it
    assert bench.prediction_errors(task, "t")["greedy_trend"] == 1.0
    assert math.isclose(g(math.exp(-math.exp(2.0))), 2.0) and np.isfinite(g(0.0)) and np.isfinite(g(1.0))
    with pytest.raises(ValueError, match="seed 3 add: no law was fitted \\(too few sizes\\)"):
        bench.prediction_errors({"sizes": sizes, "prediction": {"error": "too few sizes"}}, "seed 3 add")


def test_merge_tests_the_claims_across_seeds_and_pools_the_coverage(monkeypatch, tmp_path):
    bench = load_benchmark("passuntil_scaling")
    monkeypatch.setattr(sys.modules["common"], "RESULTS_DIR", tmp_path)
    names = [_part(tmp_path, s, cpu="Zen 4" if s == 3 else "Zen 3") for s in range(5)]
    merged = bench.merge(names, "pu")
    assert merged["settings"]["seeds"] == [0, 1, 2, 3, 4] and merged["shown_seed"] == 0
    assert merged["tasks"] == json.loads((tmp_path / "pu_s0.json").read_text())["tasks"]
    assert merged["cpu"] == "Zen 3 + Zen 4" and merged["coverage_instances"] == 90 + 4 * 180
    parts = [json.loads((tmp_path / f"{n}.json").read_text()) for n in names]
    pooled = sum(p["coverage95"] * p["coverage_instances"] for p in parts) / (90 + 4 * 180)
    assert merged["coverage95"] == pytest.approx(pooled)  # weighted by each seed's pairs, not a plain mean
    v = {x["claim"].split(":")[0] + str(i): x for i, x in enumerate(merged["verdicts"])}
    assert len(merged["verdicts"]) == 6 and all(x["n_seeds"] == 5 for x in merged["verdicts"])
    assert v["add0"]["holds"] and v["expr2"]["holds"]  # the law is exact up to noise; persistence is far off
    assert v["add4"]["holds"] and v["add5"]["holds"]  # coverage 0.95 +- 0.01 lies in (0.90, 0.99)
    md = (tmp_path / "pu.md").read_text()
    assert "(5 seeds; the tables show seed 0)" in md and "| Zen" not in md and "## Verdicts" in md
    assert md.count("| add |") == 5 and "CPU Zen 3 + Zen 4" in md


def test_merge_refuses_other_settings_and_repeated_seeds(monkeypatch, tmp_path):
    bench = load_benchmark("passuntil_scaling")
    monkeypatch.setattr(sys.modules["common"], "RESULTS_DIR", tmp_path)
    a, b = _part(tmp_path, 0), _part(tmp_path, 1, lr=1e-3)
    with pytest.raises(ValueError, match="lr"):
        bench.merge([a, b], "pu")
    with pytest.raises(ValueError, match="repeat a seed"):
        bench.merge([a, a], "pu")
