"""``overwrite_dx``: the conv2d and batch-norm backwards write dx instead of adding to it, so the layers
hand them fresh ``np.empty`` buffers instead of zeroed ones. Every convolution path (Winograd,
pointwise, phase products with every phase read or with some phase unread, patch matrix) and both
batch-norm backwards must leave no element of a NaN-filled dx unwritten, and give what accumulating
into zeros gives; the parameter gradients still accumulate."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32
from .test_conv_fast_paths import is_winograd, winograd_dx_atol

CONV_CASES = [  # (N, IC, OC, (IH, IW), kernel, stride, padding): which path takes the input gradient
    (3, 8, 9, (7, 7), 3, 1, 1),  # Winograd
    (2, 5, 4, (6, 5), 1, 1, 0),  # pointwise
    (3, 4, 6, (9, 10), 3, 2, 1),  # phase products, every phase read by some tap
    (3, 5, 6, (9, 10), (3, 2), (2, 3), (1, 0)),  # phase products, some phase read by no tap
    (2, 4, 3, (8, 8), 1, 2, 0),  # 1x1 stride 2: patch matrix (three phases unread)
    (2, 3, 4, (9, 9), 3, 1, 1),  # few channels at stride 1: patch matrix
]


@pytest.mark.parametrize("n,ic,oc,hw,kernel,stride,padding", CONV_CASES)
def test_conv2d_backward_overwrites_every_element_of_dx(rng, n, ic, oc, hw, kernel, stride, padding):
    kh, kw = F._pair(kernel, "kernel")
    x, w = f32(rng, n, ic, *hw), f32(rng, oc, ic, kh, kw, scale=0.3)
    dy = f32(rng, *F.conv2d_forward(x, w, None, stride, padding).shape)
    dx = np.full(x.shape, np.nan, dtype=np.float32)
    dw = f32(rng, *w.shape)
    ref_dx, ref_dw = np.zeros(x.shape), dw.astype(np.float64)
    F.conv2d_backward(dy, x, w, stride, padding, dx=dx, dweight=dw, overwrite_dx=True)
    R.conv2d_backward(dy, x, w, stride, padding, dx=ref_dx, dweight=ref_dw)
    assert not np.isnan(dx).any()
    winograd = is_winograd(ic, oc, kernel, stride, padding)
    assert_close(dx, ref_dx, 1e-5, winograd_dx_atol(dy, w, padding, x.shape) if winograd else 1e-5, "dx")
    assert_close(dw, ref_dw, 1e-5, 1e-5, "dweight accumulated")
    accumulated = np.zeros_like(x)
    F.conv2d_backward(dy, None, w, stride, padding, dx=accumulated)
    np.testing.assert_array_equal(dx, accumulated)  # the same sums, only the start differs


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_backward_overwrites_every_element_of_dx(rng, relu, training):
    x, g, b = f32(rng, 4, 3, 5, 6), f32(rng, 3), f32(rng, 3)
    rm, rv = f32(rng, 3), np.abs(f32(rng, 3)) + 0.5
    forward = F.batchnorm2d_relu_forward if relu else F.batchnorm2d_forward
    y, mean, rstd = forward(x, None if training else rm, None if training else rv, g, b, training)
    dy = f32(rng, *x.shape)
    dx = np.full(x.shape, np.nan, dtype=np.float32)
    dg = f32(rng, 3)
    ref_dx, ref_dg = np.zeros(x.shape), dg.astype(np.float64)
    if relu:
        F.batchnorm2d_relu_backward(dy, y, x, mean, rstd, g, training, dx=dx, dweight=dg, overwrite_dx=True)
        R.batchnorm2d_relu_backward(dy, y, x, mean, rstd, g, training, dx=ref_dx, dweight=ref_dg)
    else:
        F.batchnorm2d_backward(dy, x, mean, rstd, g, training, dx=dx, dweight=dg, overwrite_dx=True)
        R.batchnorm2d_backward(dy, x, mean, rstd, g, training, dx=ref_dx, dweight=ref_dg)
    assert not np.isnan(dx).any()
    assert_close(dx, ref_dx, 1e-4, 1e-5, "dx")
    assert_close(dg, ref_dg, 1e-5, 1e-5, "dweight accumulated")


def test_reference_overwrite_matches_accumulating_into_zeros(rng):
    x, w = f32(rng, 2, 3, 6, 6), f32(rng, 4, 3, 3, 3)
    dy = f32(rng, 2, 4, 3, 3)
    dx = np.full(x.shape, np.nan)
    R.conv2d_backward(dy, None, w, 2, 1, dx=dx, overwrite_dx=True)
    zeros = np.zeros(x.shape)
    R.conv2d_backward(dy, None, w, 2, 1, dx=zeros)
    np.testing.assert_array_equal(dx, zeros)
