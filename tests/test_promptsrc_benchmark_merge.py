"""The PromptSRC comparison script combines seeds run in separate processes, and refuses other settings."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmark_scripts import load_benchmark



@pytest.fixture(scope="module")
def pw():
    return load_benchmark("promptsrc_wordnet")


def _part(tmp_path: Path, seed: int, hm: float, epochs: int = 8) -> str:
    args = {"seeds": [seed], "shots": 16, "epochs": epochs, "batch_size": 32, "lr": 0.5, "eval_per_class": 25,
            "split_seed": 0, "out": f"s{seed}", "merge": None}
    run = {"base": hm, "novel": hm, "hm": hm, "seconds": 1.0}
    payload = {"args": args, "command": f"seed {seed}", "base_classes": [0, 1], "novel_classes": [2],
               "test_size": 100, "results": {"coop": {str(seed): run}}, "summary": {}}
    stem = str(tmp_path / f"s{seed}")
    Path(stem + ".json").write_text(json.dumps(payload))
    return stem


def test_merge_pools_seeds_with_the_sample_std(pw, tmp_path):
    stems = [_part(tmp_path, 1, 0.4), _part(tmp_path, 2, 0.5), _part(tmp_path, 3, 0.6)]
    merged = pw.merge(stems, str(tmp_path / "all"))
    assert merged["args"]["seeds"] == [1, 2, 3]
    hm = merged["summary"]["coop"]["hm"]
    assert hm["n"] == 3 and hm["mean"] == pytest.approx(0.5) and hm["std"] == pytest.approx(0.1)
    assert "| coop |" in (tmp_path / "all.md").read_text()


def test_merge_refuses_files_with_other_settings(pw, tmp_path):
    stems = [_part(tmp_path, 1, 0.4), _part(tmp_path, 2, 0.5, epochs=3)]
    with pytest.raises(ValueError, match="epochs"):
        pw.merge(stems, str(tmp_path / "all"))
