"""The TTA report combines seeds run in separate processes, and refuses files of other settings."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tests.benchmark_scripts import load_benchmark

METHODS = ("source", "bn", "tent", "eata", "sar")


@pytest.fixture(scope="module")
def report():
    return load_benchmark("tta_report")


def _seed_results(error: float) -> dict:
    """One seed's results: method i's errors are ``error + i`` (so EATA, i = 3, is above TENT, i = 2)."""
    pc = {m: [{"corruption": c, "severity": 5, "error": error + i, "backward_samples": 100 - i}
              for c in ("gaussian_noise", "contrast")] for i, m in enumerate(METHODS)}
    cont = {m: {"error": error + i, "clean_error_before": 10.0, "clean_error_after": 10.0 + i, "forgetting": float(i),
                "backward_samples": 100 - i, "steps": 5, "error_by_round": [error + i, error + i]}
            for i, m in enumerate(METHODS)}
    op = {m: {"error": error + i, "auroc": 0.7, "backward_samples": 50, "error_by_round": [error + i]}
          for i, m in enumerate(("tent", "tent+filter", "eata", "eata+filter"))}
    return {"per_corruption": pc, "continual": cont, "open_set": op}


def _part(report, tmp_path: Path, seed: int, error: float, rounds: int = 5) -> Path:
    stem = tmp_path / f"s{seed}"
    args = argparse.Namespace(seeds=[seed], severities=[5], corruptions=["gaussian_noise", "contrast"], limit=200,
                              batch=100, lr=1e-3, rounds=rounds, per_segment=100, open_rounds=1, open_known=100,
                              open_batch=50, clean=100, parts=["per_corruption", "continual", "open_set"],
                              open_methods=["tent", "tent+filter", "eata", "eata+filter"], label="tiny", out=str(stem))
    report.finish({seed: _seed_results(error)}, args, f"seed {seed}", {"test_accuracy": 0.9},
                  {"test_accuracy": 0.88}, 1.0)
    return stem


def test_merge_averages_the_seeds(report, tmp_path):
    stems = [_part(report, tmp_path, 0, 20.0), _part(report, tmp_path, 1, 30.0)]
    report.merge(stems, str(tmp_path / "all"))
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["config"]["seeds"] == [0, 1] and sorted(merged["per_seed"]) == ["0", "1"]
    assert merged["aggregate"]["per_corruption"]["tent"]["mean_error"] == pytest.approx([27.0, 5.0])
    assert merged["aggregate"]["continual"]["eata"]["forgetting"] == pytest.approx([3.0, 0.0])
    assert merged["seconds"] == pytest.approx(2.0)
    assert "seed 0 + seed 1; merged with --merge" in merged["config"]["command"]
    verdict = {v["claim"]: v["holds"] for v in merged["verdicts"]}
    assert verdict["TENT error < source error (per-corruption protocol)"] is False
    assert verdict["EATA uses fewer backward samples than TENT (continual stream)"] is True
    assert "| tent |" in (tmp_path / "all.md").read_text()


def test_merge_refuses_other_settings_and_repeated_seeds(report, tmp_path):
    with pytest.raises(ValueError, match="rounds"):
        report.merge([_part(report, tmp_path, 0, 20.0), _part(report, tmp_path, 1, 30.0, rounds=3)],
                     str(tmp_path / "all"))
    with pytest.raises(ValueError, match="repeat a seed"):
        report.merge([_part(report, tmp_path, 0, 20.0), _part(report, tmp_path, 0, 20.0)], str(tmp_path / "all"))
