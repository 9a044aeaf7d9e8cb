"""The adapter head-to-head benchmark end to end on a tiny configuration, and its verdict helpers."""
from __future__ import annotations

import json

import pytest

from tests.benchmark_scripts import load_benchmark

@pytest.fixture(scope="module")
def aw():
    return load_benchmark("adapters_wordnet")


def test_adapters_wordnet_runs_end_to_end_on_a_tiny_config(aw, tmp_path):
    s = aw.Settings(seeds=[0], train_per_class=1, val_per_class=1, test_per_class=1, max_length=16, max_steps=2,
                    batch_size=8, eval_every=1, log_every=1)
    result = aw.run(s, tmp_path / "h2h", command="tiny", log=lambda *_: None)
    saved = json.loads((tmp_path / "h2h.json").read_text())
    assert list(saved["summary"]) == list(aw.ADAPTERS)
    assert "| sora |" in (tmp_path / "h2h.md").read_text()
    summary = result["summary"]
    # the shared budget: 12 adapted 384 x 384 layers at 6,144 parameters each (SoRA adds 8 gates per layer)
    for name in ("lora", "hydra", "bone", "bat"):
        assert summary[name]["adapter_params"] == 12 * 6144
    assert summary["sora"]["adapter_params"] == 12 * (6144 + 8)
    assert summary["sora"]["retained_adapter_params_mean"] <= 12 * 6144
    for run in result["runs"]:
        assert run["steps"] == 2
        assert [step for step, _ in run["val_curve"]] == [1, 2]
    (sora_run,) = [r for r in result["runs"] if r["adapter"] == "sora"]
    assert sora_run["pruned_test_accuracy"] == sora_run["test_accuracy"]
    assert len(result["claims"]) == 3


def test_merge_combines_seeds_run_in_separate_processes_and_refuses_other_settings(aw, tmp_path):
    tiny = dict(train_per_class=1, val_per_class=1, test_per_class=1, max_length=16, max_steps=1, batch_size=8,
                eval_every=1, log_every=1, adapters=["lora", "bone"])
    for seed in (0, 1):
        aw.run(aw.Settings(seeds=[seed], **tiny), tmp_path / f"seed{seed}", command=f"s{seed}", log=lambda *_: None)
    merged = aw.merge([tmp_path / "seed0", tmp_path / "seed1"], tmp_path / "all")
    assert merged["settings"]["seeds"] == [0, 1]
    assert merged["summary"]["lora"]["seeds"] == [0, 1]
    assert merged["summary"]["bone"]["test_accuracy_std"] is not None
    assert json.loads((tmp_path / "all.json").read_text())["runs"] == merged["runs"]
    aw.run(aw.Settings(seeds=[2], **dict(tiny, max_steps=2)), tmp_path / "other", command="x", log=lambda *_: None)
    with pytest.raises(ValueError, match="max_steps"):
        aw.merge([tmp_path / "seed0", tmp_path / "other"], tmp_path / "bad")


def test_steps_to_reach_returns_first_step_at_or_above_target(aw):
    curve = [[10, 0.2], [20, 0.5], [30, 0.45], [40, 0.6]]
    assert aw.steps_to_reach(curve, 0.5) == 20
    assert aw.steps_to_reach(curve, 0.7) is None


def test_compare_calls_small_differences_seed_noise(aw):
    lora = {"test_accuracy_mean": 0.50, "test_accuracy_std": 0.02}
    close = {"test_accuracy_mean": 0.49, "test_accuracy_std": 0.01}
    far = {"test_accuracy_mean": 0.40, "test_accuracy_std": 0.01}
    assert aw._compare(close, lora)[1] == "within seed noise"
    assert aw._compare(far, lora)[1] == "lower, beyond seed noise"
    one_seed = {"test_accuracy_mean": 0.55, "test_accuracy_std": None}
    assert "single seed" in aw._compare(one_seed, lora)[1]


def test_adapter_configs_reject_unknown_names(aw):
    with pytest.raises(ValueError, match="unknown adapter"):
        aw.adapter_config("adalora")


def test_adapter_step_layer_timing_covers_every_adapter():
    bench = load_benchmark("bench_adapter_step")
    ms = bench.time_layers(rows=8, features=32, repeats=1)
    assert list(ms) == ["base", "lora", "sora", "hydra", "bone", "bat"]
    assert all(0 < v["min_ms"] <= v["median_ms"] for v in ms.values())
