"""The EVA-vs-random experiment combines seeds run in separate processes, and refuses other settings."""
from __future__ import annotations

import json

import pytest

from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def ew():
    return load_benchmark("eva_wordnet")


def _run(arm: str, seed: int, loss: float) -> dict:
    run = {"arm": arm, "seed": seed, "sizes": {"train": 10, "val": 2, "test": 4}, "steps": 30,
           "train_loss": [loss] * 30, "eval": [{"step": 25, "loss": loss, "accuracy": 0.5}],
           "test": {"loss": loss, "accuracy": 0.5 + (0.1 if arm == "eva" else 0.0)}}
    if arm == "eva":
        run.update(eva_seconds=1.0, rank_pattern={"q": 8})
    return run


def _part(ew, monkeypatch, tmp_path, seed: int, epochs: int = 3) -> str:
    monkeypatch.setattr(ew.common, "RESULTS_DIR", tmp_path)
    settings = {"seeds": [seed], "threads": 1, "epochs": epochs, "ks": [25], "reduced": False,
                "out": f"part{seed}", "merge": None, "render": None}
    payload = {"command": f"seed {seed}", "settings": settings, "runs": [_run("random", seed, 2.0),
                                                                          _run("eva", seed, 1.5 + seed)],
               "environment": {"load_average_at_start": [0.0, 0.0, 0.0]}}
    (tmp_path / f"part{seed}.json").write_text(json.dumps(payload))
    return f"part{seed}"


def test_merge_pools_the_runs_and_recomputes_the_verdict(ew, monkeypatch, tmp_path):
    names = [_part(ew, monkeypatch, tmp_path, 0), _part(ew, monkeypatch, tmp_path, 1)]
    ew.merge(names, "all")
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["settings"]["seeds"] == [0, 1] and len(merged["runs"]) == 4
    assert merged["paired_train_loss_differences"] == {"25": [-0.5, 0.5]}
    assert "NOT lower" in merged["verdict"]  # seed 1's EVA loss (2.5) is above random's (2.0)
    assert merged["command"] == "seed 0 + seed 1; merged with --merge part0 part1"
    assert "| eva |" in (tmp_path / "all.md").read_text()


def test_merge_refuses_other_settings_and_repeated_seeds(ew, monkeypatch, tmp_path):
    names = [_part(ew, monkeypatch, tmp_path, 0), _part(ew, monkeypatch, tmp_path, 1, epochs=1)]
    with pytest.raises(ValueError, match="epochs"):
        ew.merge(names, "all")
    with pytest.raises(ValueError, match="repeat a seed"):
        ew.merge([_part(ew, monkeypatch, tmp_path, 0), "part0"], "all")
