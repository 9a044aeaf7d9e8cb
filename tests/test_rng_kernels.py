"""Counter-based generator: C equals the NumPy reference, draws are reproducible, moments are right."""
from __future__ import annotations

import numpy as np
import pytest

import peftc
from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close


@pytest.mark.parametrize("seed,offset", [(0, 0), (12345, 7), (2**64 - 1, 2**40)])
def test_uniform_equals_reference_bit_for_bit(seed, offset):
    got = F.rng_uniform((37, 3), -2.0, 5.0, seed, offset)
    assert np.array_equal(got, R.rng_uniform((37, 3), -2.0, 5.0, seed, offset))


@pytest.mark.parametrize("seed,offset", [(0, 0), (99, 1001)])
def test_normal_matches_reference(seed, offset):
    got = F.rng_normal((500,), 1.5, 0.5, seed, offset)
    assert_close(got, R.rng_normal((500,), 1.5, 0.5, seed, offset), 1e-6, 1e-6, "normal")


def test_uniform_draw_is_a_pure_function_of_seed_and_counter():
    whole = F.rng_uniform((100,), 0.0, 1.0, 4, 0)
    assert np.array_equal(F.rng_uniform((30,), 0.0, 1.0, 4, 70), whole[70:])
    assert np.array_equal(F.rng_uniform((10, 10), 0.0, 1.0, 4, 0).ravel(), whole)
    assert not np.array_equal(F.rng_uniform((100,), 0.0, 1.0, 5, 0), whole)


def test_normal_uses_two_counters_per_element():
    # element i of a normal draw at offset k uses uniforms 2(k+i) and 2(k+i)+1
    whole = F.rng_normal((20,), 0.0, 1.0, 8, 0)
    assert np.array_equal(F.rng_normal((5,), 0.0, 1.0, 8, 15), whole[15:])


def test_uniform_stays_in_half_open_interval_and_has_uniform_moments():
    n, lo, hi = 200_000, -1.0, 3.0
    u = F.rng_uniform((n,), lo, hi, 17)
    assert u.min() >= lo and u.max() < hi
    sd = (hi - lo) / np.sqrt(12)
    assert abs(u.mean() - (lo + hi) / 2) < 5 * sd / np.sqrt(n)
    assert abs(u.std() - sd) < 0.01 * sd
    counts = np.histogram(u, bins=20, range=(lo, hi))[0]
    assert np.all(np.abs(counts - n / 20) < 5 * np.sqrt(n / 20))


def test_normal_has_gaussian_moments():
    n, mean, std = 200_000, 2.0, 3.0
    z = (F.rng_normal((n,), mean, std, 23) - mean) / std
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.std() - 1.0) < 0.01
    assert abs(np.mean(z**3)) < 0.03  # skewness
    assert abs(np.mean(z**4) - 3.0) < 0.08  # kurtosis
    assert abs(np.mean(np.abs(z) < 1.0) - 0.6827) < 0.005
    assert np.all(np.isfinite(z))


def test_normal_with_zero_std_is_constant():
    assert np.all(F.rng_normal((50,), 1.25, 0.0, 3) == np.float32(1.25))


def test_generator_is_reproducible_from_its_seed():
    a, b = peftc.Generator(42), peftc.Generator(42)
    for g in (a, b):
        g.uniform((3, 4))
    assert np.array_equal(a.normal((5, 3), 1.0, 2.0), b.normal((5, 3), 1.0, 2.0))
    assert np.array_equal(a.uniform((7,)), b.uniform((7,)))
    assert not np.array_equal(peftc.Generator(43).uniform((7,)), peftc.Generator(42).uniform((7,)))


def test_generator_successive_draws_do_not_repeat():
    g = peftc.Generator(1)
    first, second = g.uniform((64,)), g.uniform((64,))
    assert not np.any(first == second)
    n1, n2 = g.normal((64,)), g.normal((64,))
    assert not np.any(n1 == n2)


def test_generator_draws_equal_reference_draws_at_its_offsets():
    g = peftc.Generator(77)
    u = g.uniform((3, 5), -1.0, 1.0)
    assert np.array_equal(u, R.rng_uniform((3, 5), -1.0, 1.0, 77, 0))
    # the next normal draw starts at the next even counter: normal index (15 + 1) // 2 = 8
    z = g.normal((4,), 0.0, 1.0)
    assert_close(z, R.rng_normal((4,), 0.0, 1.0, 77, 8), 1e-6, 1e-6, "normal after uniform")
    assert g.offset == 2 * (8 + 4)


def test_generator_uniform_after_normal_starts_past_the_normal_counters():
    g = peftc.Generator(5)
    g.normal((3,))  # normals 0..2 use uniform counters 0..5
    assert g.offset == 6
    assert np.array_equal(g.uniform((4,)), R.rng_uniform((4,), 0.0, 1.0, 5, 6))


def test_generator_state_dict_replays_the_same_draws():
    g = peftc.Generator(9)
    g.uniform((11,))
    state = g.state_dict()
    want = g.normal((6,))
    g.load_state_dict(state)
    assert np.array_equal(g.normal((6,)), want)


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_generator_rejects_seed_outside_uint64(seed):
    with pytest.raises(ValueError, match="seed"):
        peftc.Generator(seed)
