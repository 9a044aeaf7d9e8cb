"""The fused batch norm + ReLU's per-channel map: the forward can hand out each channel's float
(scale, shift), y = max((x - mean) * scale + shift, 0), and the backward, given that map instead of y,
rebuilds the ReLU mask from x. Checked bit for bit against the backward that reads y (values exactly
at the ReLU threshold and on its float neighbours included) and against the NumPy reference (finite
differences and torch autograd for both masks: test_bn_relu_kernels.py)."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R
from peftc.nn import BatchNormReLU2d

from .conftest import assert_close, f32

SHAPES = [(4, 3, 3, 2), (3, 2, 5, 7), (2, 3, 8, 8), (2, 64, 1, 1), (3, 40, 5, 7)]  # planes of 6, 35, 64, 1, 35
MODES = ["train", "test_batch", "eval"]
C = (slice(None), None, None)  # a (CH,) array against (N, CH, IH, IW)


def norm_case(rng, shape):
    n, ch, ih, iw = shape
    x = f32(rng, n, ch, ih, iw) * 2.0 + 0.5
    return x, f32(rng, ch) * 0.3 + 1.0, f32(rng, ch) * 0.5, f32(rng, ch) * 0.1, np.abs(f32(rng, ch)) + 0.5


def running(mode, rm, rv):
    """The running buffers a forward takes in this mode (copies: train updates them)."""
    return (None, None) if mode == "test_batch" else (rm.copy(), rv.copy())


def forward_with_map(x, mode, rm, rv, g, b):
    ch = x.shape[1]
    scale, shift = np.empty(ch, np.float32), np.empty(ch, np.float32)
    y, mean, rstd = F.batchnorm2d_relu_forward(x, *running(mode, rm, rv), g, b, mode != "eval", scale=scale,
                                               shift=shift)
    return y, mean, rstd, scale, shift


def at_the_threshold(x, rm, rv, g, b):
    """x (for eval mode) with some inputs of each channel where the pre-activation (x - rm) scale + shift
    is about 0 and on its float neighbours, whose sign a fused multiply-add could change; channel 0 gets
    bias 0 and one input equal to its running mean (an exact zero)."""
    x, b = x.copy(), b.copy()
    n, ch = x.shape[:2]
    flat = x.reshape(n, ch, -1)  # a view: (N, CH, S)
    b[0] = 0.0
    flat[0, 0, 0] = rm[0]
    scale = (1.0 / np.sqrt(rv.astype(np.float64) + 1e-5) * g).astype(np.float32)
    t = rm - b / scale
    for k, step in enumerate((-2, -1, 0, 1, 2)[:n * flat.shape[2] - 1]):
        v = t.copy()
        for _ in range(abs(step)):
            v = np.nextafter(v, np.float32(np.inf if step > 0 else -np.inf))
        i, j = divmod(1 + k, flat.shape[2])
        flat[i, :, j] = v
    return x, b


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("affine", [True, False])
def test_forward_map_reproduces_its_output_and_leaves_the_rest_unchanged(rng, shape, mode, affine):
    x, g, b, rm, rv = norm_case(rng, shape)
    g, b = (g, b) if affine else (None, None)
    run = running(mode, rm, rv)
    y, mean, rstd, scale, shift = forward_with_map(x, mode, rm, rv, g, b)
    plain = F.batchnorm2d_relu_forward(x, *run, g, b, mode != "eval")
    for got, want in zip((y, mean, rstd), plain):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(y, np.maximum((x - mean[C]) * scale[C] + shift[C], np.float32(0)))
    ref_scale, ref_shift = np.empty(x.shape[1]), np.empty(x.shape[1])
    R.batchnorm2d_relu_forward(x.astype(np.float64), *running(mode, rm, rv), g, b, mode != "eval", scale=ref_scale,
                               shift=ref_shift)
    assert_close(scale, ref_scale, 1e-5, 1e-6, "scale")
    assert_close(shift, ref_shift, 1e-5, 1e-5, "shift")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("overwrite", [False, True])
def test_backward_from_the_map_equals_the_backward_from_y_bit_for_bit(rng, shape, mode, affine, overwrite):
    x, g, b, rm, rv = norm_case(rng, shape)
    if mode == "eval":
        x, b = at_the_threshold(x, rm, rv, g, b)
    g, b = (g, b) if affine else (None, None)
    training = mode != "eval"
    y, mean, rstd, scale, shift = forward_with_map(x, mode, rm, rv, g, b)
    if mode == "eval":
        assert ((x - mean[C]) * scale[C] + shift[C] == 0).any()  # exactly at the threshold
    dy = f32(rng, *x.shape)
    start = [f32(rng, *x.shape), f32(rng, x.shape[1]), f32(rng, x.shape[1])]
    from_map, from_y = [a.copy() for a in start], [a.copy() for a in start]
    ref = [a.astype(np.float64) for a in start]
    F.batchnorm2d_relu_backward(dy, None, x, mean, rstd, g, training, dx=from_map[0], dweight=from_map[1],
                                dbias=from_map[2], overwrite_dx=overwrite, scale=scale, shift=shift)
    F.batchnorm2d_relu_backward(dy, y, x, mean, rstd, g, training, dx=from_y[0], dweight=from_y[1], dbias=from_y[2],
                                overwrite_dx=overwrite)
    R.batchnorm2d_relu_backward(dy, None, x, mean, rstd, g, training, dx=ref[0], dweight=ref[1], dbias=ref[2],
                                overwrite_dx=overwrite, scale=scale, shift=shift)
    for name, got, same, want in zip(("dx", "dweight", "dbias"), from_map, from_y, ref):
        np.testing.assert_array_equal(got, same, err_msg=name)
        assert_close(got, want, 1e-5, 1e-5, name)


@pytest.mark.parametrize("mode", MODES)
def test_the_mask_is_rebuilt_exactly_over_many_channels(rng, mode):
    """Many channels over wide ranges of scale and shift, inputs next to each channel's threshold (eval)
    or spread over it: the forward's output is max(v, 0) with v rounded after each operation (NumPy's,
    no fused multiply-add; a build that contracted v would fail here), and the backward that rebuilds v
    keeps exactly what the output's mask keeps."""
    n, ch = 3, 1000
    x, g, b, rm, rv = norm_case(rng, (n, ch, 5, 7))
    g = (g * np.exp(f32(rng, ch) * 2)).astype(np.float32)
    b = (b * np.exp(f32(rng, ch) * 2)).astype(np.float32)
    rv = (rv * np.exp(f32(rng, ch) * 2)).astype(np.float32)
    if mode == "eval":
        x, b = at_the_threshold(x, rm, rv, g, b)
    else:
        x *= np.exp(f32(rng, 1, ch, 1, 1))
    y, mean, rstd, scale, shift = forward_with_map(x, mode, rm, rv, g, b)
    np.testing.assert_array_equal(y, np.maximum((x - mean[C]) * scale[C] + shift[C], np.float32(0)))
    dy = f32(rng, *x.shape)
    from_map = [np.zeros_like(x), np.zeros_like(g), np.zeros_like(g)]
    from_y = [np.zeros_like(x), np.zeros_like(g), np.zeros_like(g)]
    F.batchnorm2d_relu_backward(dy, None, x, mean, rstd, g, mode != "eval", dx=from_map[0], dweight=from_map[1],
                                dbias=from_map[2], scale=scale, shift=shift)
    F.batchnorm2d_relu_backward(dy, y, x, mean, rstd, g, mode != "eval", dx=from_y[0], dweight=from_y[1],
                                dbias=from_y[2])
    for name, got, want in zip(("dx", "dweight", "dbias"), from_map, from_y):
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_map_arguments_are_checked_by_name(rng):
    x, g, b, rm, rv = norm_case(rng, (2, 3, 3, 2))
    with pytest.raises(ValueError, match="batchnorm2d_relu_forward.*scale"):
        F.batchnorm2d_relu_forward(x, None, None, g, b, True, scale=np.zeros(2, np.float32),
                                   shift=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="both scale and shift"):
        F.batchnorm2d_relu_forward(x, None, None, g, b, True, scale=np.zeros(3, np.float32))
    y, mean, rstd, scale, shift = forward_with_map(x, "train", rm, rv, g, b)
    with pytest.raises(ValueError, match="batchnorm2d_relu_backward.*shift"):
        F.batchnorm2d_relu_backward(x, None, x, mean, rstd, g, True, dx=np.zeros_like(x), scale=scale,
                                    shift=shift[:2].copy())
    with pytest.raises(TypeError, match="scale"):
        F.batchnorm2d_relu_backward(x, None, x, mean, rstd, g, True, scale=scale.astype(np.float64), shift=shift)
    with pytest.raises(ValueError, match="not both"):
        F.batchnorm2d_relu_backward(x, y, x, mean, rstd, g, True, scale=scale, shift=shift)
    with pytest.raises(TypeError, match="'y'"):  # neither y nor the map
        F.batchnorm2d_relu_backward(x, None, x, mean, rstd, g, True, dx=np.zeros_like(x))


def test_batchnorm_relu_module_keeps_the_map_not_the_output(rng):
    layer = BatchNormReLU2d(3)
    layer.weight.data[:] = f32(rng, 3)
    x = f32(rng, 4, 3, 5, 5)
    y = layer(x)
    assert not any(v is y for v in vars(layer).values())
    dy = f32(rng, *x.shape)
    dx = layer.backward(dy)
    ref_dx, ref_dg, ref_db = np.zeros(x.shape), np.zeros(3), np.zeros(3)
    mean, rstd = layer._cache[1], layer._cache[2]
    R.batchnorm2d_relu_backward(dy, y, x, mean, rstd, layer.weight.data, True, dx=ref_dx, dweight=ref_dg, dbias=ref_db)
    assert_close(dx, ref_dx, 1e-5, 1e-5, "dx")
    assert_close(layer.weight.grad, ref_dg, 1e-5, 1e-5, "dweight")
    assert_close(layer.bias.grad, ref_db, 1e-5, 1e-5, "dbias")
