"""benchmarks/common.py, the helpers every benchmark script shares: its docstring examples run, and merging per-seed
files keeps the CPUs the parts ran on."""
from __future__ import annotations

import doctest
import json

from .benchmark_scripts import load_benchmark


def test_docstring_examples_run():
    result = doctest.testmod(load_benchmark("common"), optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


def test_merge_seed_parts_records_every_part_cpu_once_in_order(monkeypatch, tmp_path):
    common = load_benchmark("common")
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    for seed, cpu in enumerate(["Zen 4", "Zen 3", "Zen 4"]):
        part = {"command": f"s{seed}", "settings": {"seeds": [seed], "lr": 1e-3}, "seconds": 1.0, "cpu": cpu,
                "per_seed": {str(seed): {"acc": 0.5}}}
        (tmp_path / f"p{seed}.json").write_text(json.dumps(part))
    merged = common.merge_seed_parts(["p0", "p1", "p2"])
    assert merged["cpu"] == "Zen 4 + Zen 3" and merged["seconds"] == 3.0 and list(merged["per_seed"]) == ["0", "1", "2"]
    (tmp_path / "bare.json").write_text(json.dumps({"command": "b", "settings": {"seeds": [7], "lr": 1e-3},
                                                   "seconds": 1.0, "per_seed": {"7": {"acc": 0.5}}}))
    assert "cpu" not in common.merge_seed_parts(["bare"])  # files that record no CPU get none invented
