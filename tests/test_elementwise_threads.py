"""The elementwise kernels split over threads, on arrays large enough for two parts with an uneven
split: the fill that zeroes gradient buffers (functional.zeros) and ReLU, against NumPy."""
from __future__ import annotations

import numpy as np

from peftc import _C
from peftc import functional as F
from peftc import reference as R

P = 300_001  # odd: the two parts differ by one value


def test_zeros_gives_positive_zeros_of_any_shape():
    z = F.zeros((3, 7, 14_321))
    assert z.dtype == np.float32 and z.flags.c_contiguous and z.shape == (3, 7, 14_321)
    np.testing.assert_array_equal(z, R.zeros(z.shape))
    assert not np.signbit(z).any()
    assert F.zeros((0, 5)).shape == (0, 5)


def test_fill_overwrites_every_value_including_nan_and_inf():
    x = np.random.default_rng(0).standard_normal(P).astype(np.float32)
    x[::1000] = np.nan
    x[1::1000] = np.inf
    _C.fill(x, -2.5)
    assert (x == -2.5).all()
    _C.fill(x, -0.0)
    assert (x == 0.0).all() and np.signbit(x).all()
    _C.fill(x, 0.0)
    assert not np.signbit(x).any()


def test_relu_on_a_split_array_matches_reference_and_accumulates(rng):
    x = rng.standard_normal(P).astype(np.float32)
    x[::997] = np.nan
    dy = rng.standard_normal(P).astype(np.float32)
    y = F.relu_forward(x)
    np.testing.assert_array_equal(y, R.relu_forward(x))
    dx = np.ones(P, np.float32)
    F.relu_backward(dy, x, dx=dx)
    ref = np.ones(P, np.float32)
    R.relu_backward(dy, x, dx=ref)
    np.testing.assert_array_equal(dx, ref)
