"""benchmarks/common.results_json: the results files keep long lists of plain values on one line and
read back to the same payload."""
from __future__ import annotations

import json

from tests.benchmark_scripts import load_benchmark

common = load_benchmark("common")

PAYLOAD = {
    "cpu": "AMD EPYC",
    "per_example": {"seed_0": [1, 0, 1, 1], "seed_1": [0.5, 0.25]},
    "rows": [{"task": "a", "acc": [0.1, 0.2]}, {"task": "b", "acc": []}],
    "nested": [[1, 2], [3]],
    "empty": {},
    "text": "quote \" and unicode é",
}


def test_round_trip_gives_the_same_payload():
    assert json.loads(common.results_json(PAYLOAD)) == PAYLOAD


def test_lists_of_plain_values_sit_on_one_line_and_objects_one_key_a_line():
    lines = common.results_json(PAYLOAD).splitlines()
    assert '    "seed_0": [1, 0, 1, 1],' in lines
    assert '      "acc": [0.1, 0.2]' in lines
    assert '  "cpu": "AMD EPYC",' in lines
    assert '    [1, 2],' in lines  # a list of lists: one inner list a line


def test_write_results_uses_it(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    json_path, _ = common.write_results("x", PAYLOAD, "| a |\n")
    assert json_path.read_text() == common.results_json(PAYLOAD) + "\n"
