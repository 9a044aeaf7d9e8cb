"""Bad input to peftc.evaluation raises an exception naming the argument (and the shapes); good input is
left unchanged."""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest

from peftc.evaluation import (compare_paired_scores, macro_f1, mcnemar, paired_bootstrap, paired_permutation_test,
                              paired_t_test, wilcoxon_signed_rank)

EXAMPLE_LEVEL = {
    "paired_bootstrap": partial(paired_bootstrap, seed=0, n_resamples=50),
    "paired_bootstrap_macro_f1": partial(paired_bootstrap, seed=0, n_resamples=50, metric="macro_f1"),
    "paired_permutation_test": partial(paired_permutation_test, seed=0, n_resamples=50),
    "mcnemar": mcnemar,
}
SEED_LEVEL = {"paired_t_test": paired_t_test, "wilcoxon_signed_rank": wilcoxon_signed_rank,
              "compare_paired_scores": compare_paired_scores}


def good():
    rng = np.random.default_rng(0)
    return rng.integers(0, 3, 20), rng.integers(0, 3, 20), rng.integers(0, 3, 20)


@pytest.mark.parametrize("name", EXAMPLE_LEVEL)
def test_length_mismatch_names_all_three_arrays_and_shapes(name):
    y, pa, pb = good()
    with pytest.raises(ValueError, match=r"labels, pred_a, pred_b must have the same length.*pred_b \(19,\)"):
        EXAMPLE_LEVEL[name](y, pa, pb[:19])


@pytest.mark.parametrize("name", EXAMPLE_LEVEL)
def test_classes_out_of_range_name_the_argument(name):
    fn = EXAMPLE_LEVEL[name]
    y, pa, pb = good()
    with pytest.raises(ValueError, match=r"labels must be < n_classes=3, got 3"):
        fn(np.where(y == 0, 3, y), pa, pb, n_classes=3)
    with pytest.raises(ValueError, match=r"pred_b must be < n_classes=3, got 5"):
        fn(y, pa, np.where(pb == 0, 5, pb), n_classes=3)
    with pytest.raises(ValueError, match=r"labels must hold class indices >= 0, got -1"):
        fn(np.where(y == 0, -1, y), pa, pb)
    with pytest.raises(ValueError, match=r"pred_a must hold class indices >= 0 or -1 \(no answer\), got -2"):
        fn(y, np.where(pa == 0, -2, pa), pb)
    with pytest.raises(ValueError, match="n_classes must be a positive integer"):
        fn(y, pa, pb, n_classes=0)


@pytest.mark.parametrize("name", EXAMPLE_LEVEL)
def test_wrong_kinds_of_arrays_name_the_argument(name):
    fn = EXAMPLE_LEVEL[name]
    y, pa, pb = good()
    with pytest.raises(TypeError, match="pred_a must hold integer class indices, got dtype float64"):
        fn(y, pa.astype(np.float64), pb)
    with pytest.raises(ValueError, match=r"labels must be 1-D .* got shape \(4, 5\)"):
        fn(y.reshape(4, 5), pa, pb)
    with pytest.raises(ValueError, match="labels must not be empty"):
        fn(y[:0], pa[:0], pb[:0])


@pytest.mark.parametrize("name", ["paired_bootstrap", "paired_permutation_test"])
def test_random_functions_need_an_explicit_valid_seed(name):
    fn = {"paired_bootstrap": paired_bootstrap, "paired_permutation_test": paired_permutation_test}[name]
    y, pa, pb = good()
    for seed in (None, -1, 1.5, True):
        with pytest.raises(ValueError, match="seed must be a non-negative integer or a numpy.random.Generator"):
            fn(y, pa, pb, seed=seed)
    with pytest.raises(TypeError, match="seed"):
        fn(y, pa, pb)
    with pytest.raises(ValueError, match="n_resamples must be an integer >= 1, got 0"):
        fn(y, pa, pb, seed=0, n_resamples=0)
    with pytest.raises(ValueError, match="metric must be one of"):
        fn(y, pa, pb, seed=0, metric="f1")


def test_bootstrap_options_are_checked():
    y, pa, pb = good()
    with pytest.raises(ValueError, match="confidence must be in"):
        paired_bootstrap(y, pa, pb, seed=0, confidence=1.0)
    with pytest.raises(ValueError, match="method must be one of"):
        paired_bootstrap(y, pa, pb, seed=0, method="basic")


@pytest.mark.parametrize("name", SEED_LEVEL)
def test_seed_level_tests_reject_nan_short_and_mismatched_scores(name):
    fn = SEED_LEVEL[name]
    with pytest.raises(ValueError, match=r"b must be finite, got nan at index 1 \(shape \(3,\)\)"):
        fn([0.5, 0.6, 0.7], [0.4, math.nan, 0.6])
    with pytest.raises(ValueError, match=r"a must have at least 2 paired scores \(seeds or tasks\), got 1"):
        fn([0.5], [0.4])
    with pytest.raises(ValueError, match=r"a, b must have the same length .*a \(3,\), b \(2,\)"):
        fn([0.5, 0.6, 0.7], [0.4, 0.5])
    with pytest.raises(TypeError, match="a must hold real numbers"):
        fn(["x", "y"], [0.4, 0.5])


def test_wilcoxon_method_is_checked():
    with pytest.raises(ValueError, match="method must be one of"):
        wilcoxon_signed_rank([1.0, 2.0], [0.0, 0.0], method="permutation")


def test_inputs_are_left_unchanged():
    y, pa, pb = good()
    pb[0] = -1
    copies = [y.copy(), pa.copy(), pb.copy()]
    for fn in EXAMPLE_LEVEL.values():
        fn(y, pa, pb)
    macro_f1(y, pa)
    for before, after in zip(copies, (y, pa, pb)):
        np.testing.assert_array_equal(before, after)
    a, b = np.array([0.5, 0.7, 0.6]), np.array([0.4, 0.6, 0.65])
    a0, b0 = a.copy(), b.copy()
    for fn in SEED_LEVEL.values():
        fn(a, b)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


def test_boolean_predictions_are_read_as_classes_zero_and_one():
    # the correctness-only setting: labels all 1, predictions = correct
    labels = np.ones(6, dtype=np.int64)
    correct_a = np.array([True, True, True, False, True, True])
    correct_b = np.array([True, False, False, False, True, False])
    res = mcnemar(labels, correct_a, correct_b)
    assert (res.n10, res.n01) == (3, 0)
