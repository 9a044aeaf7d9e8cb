"""Holm and Benjamini-Hochberg adjusted p-values on vectors worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from peftc.evaluation import benjamini_hochberg, holm


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; running max -> 0.06 for the last
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02], rtol=1e-14)


def test_holm_step_down_is_monotone():
    # scaled values 0.03, 0.022, 0.02 decrease: without the running maximum a larger p would get a smaller
    # adjusted p than a smaller one
    np.testing.assert_allclose(holm([0.011, 0.01, 0.02]), [0.03, 0.03, 0.03], rtol=1e-14)


def test_holm_caps_at_one_and_keeps_a_single_p():
    np.testing.assert_allclose(holm([0.5, 0.6, 0.01]), [1.0, 1.0, 0.03], rtol=1e-14)
    assert holm([0.2]).tolist() == [0.2]


def test_benjamini_hochberg_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 times 4/1, 4/2, 4/3, 4/4 = 0.02, 0.02, 0.04, 0.04
    np.testing.assert_allclose(benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02], rtol=1e-14)


def test_benjamini_hochberg_step_up_takes_the_minimum_from_above():
    # m p / j: 0.04 * 3 / 1 = 0.12, 0.05 * 3 / 2 = 0.075, 0.06 * 3 / 3 = 0.06 -> all 0.06
    np.testing.assert_allclose(benjamini_hochberg([0.05, 0.06, 0.04]), [0.06, 0.06, 0.06], rtol=1e-14)
    # Benjamini and Hochberg (1995)'s 15 p-values: 4 discoveries at q = 0.05
    p = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240, 0.4262, 0.5719, 0.6528,
         0.7590, 1.0]
    assert int(np.sum(benjamini_hochberg(p) <= 0.05)) == 4
    assert int(np.sum(holm(p) <= 0.05)) == 3


def test_adjustments_follow_the_input_order():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=9) ** 3
    perm = rng.permutation(9)
    for adjust in (holm, benjamini_hochberg):
        np.testing.assert_array_equal(adjust(p)[perm], adjust(p[perm]))
        assert np.all(adjust(p) >= p) and np.all(adjust(p) <= 1.0)
    assert np.all(benjamini_hochberg(p) <= holm(p))


@pytest.mark.parametrize("bad,match", [([0.1, np.nan], "NaN"), ([0.1, 1.2], r"\[0, 1\]"), ([], "non-empty"),
                                       ([[0.1, 0.2]], "1-D")])
def test_bad_pvalues_raise_naming_the_argument(bad, match):
    for adjust in (holm, benjamini_hochberg):
        with pytest.raises(ValueError, match="pvalues") as err:
            adjust(bad)
        assert err.match(match)
