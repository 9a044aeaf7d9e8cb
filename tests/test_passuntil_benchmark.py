"""The tasks of benchmarks/passuntil_scaling.py: generated examples pass their own checks, the checker of the
many-answer task refuses what it must, and the unique-answer task's pass is the exact answer string."""
from __future__ import annotations

import numpy as np

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
