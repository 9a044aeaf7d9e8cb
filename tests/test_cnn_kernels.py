"""CNN kernels (conv2d, batch norm, pooling, ReLU): C against the NumPy reference, float64 finite
differences of the reference, torch autograd parity, and argument checks."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad

CONV_GEOMETRIES = [  # (kernel (KH, KW), stride, padding)
    ((3, 3), 1, 1),
    ((3, 2), (2, 1), (1, 0)),
    ((1, 1), 1, 0),  # the pointwise path that skips im2col
    ((2, 3), 3, (0, 1)),
]


def conv_case(rng, kernel, bias=True, n=2, ic=3, oc=4, hw=(7, 6)):
    return f32(rng, n, ic, *hw), f32(rng, oc, ic, *kernel, scale=0.5), f32(rng, oc) if bias else None


@pytest.mark.parametrize("kernel,stride,padding", CONV_GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_forward_matches_reference(rng, kernel, stride, padding, bias):
    x, w, b = conv_case(rng, kernel, bias)
    assert_close(F.conv2d_forward(x, w, b, stride, padding), R.conv2d_forward(x, w, b, stride, padding), 1e-5, 1e-5,
                 "y")


@pytest.mark.parametrize("kernel,stride,padding", CONV_GEOMETRIES)
def test_conv2d_backward_matches_reference(rng, kernel, stride, padding):
    x, w, b = conv_case(rng, kernel)
    dy = f32(rng, *F.conv2d_forward(x, w, b, stride, padding).shape)
    got = {k: np.zeros_like(v) for k, v in (("x", x), ("w", w), ("b", b))}
    ref = {k: np.zeros_like(v) for k, v in (("x", x), ("w", w), ("b", b))}
    F.conv2d_backward(dy, x, w, stride, padding, dx=got["x"], dweight=got["w"], dbias=got["b"])
    R.conv2d_backward(dy, x, w, stride, padding, dx=ref["x"], dweight=ref["w"], dbias=ref["b"])
    for k in got:
        assert_close(got[k], ref[k], 1e-5, 1e-5, f"d{k}")


@pytest.mark.parametrize("kernel,stride,padding", CONV_GEOMETRIES[:2])
def test_conv2d_backward_matches_finite_differences(rng, kernel, stride, padding):
    x, w, b = conv_case(rng, kernel, n=2, ic=2, oc=3, hw=(5, 4))
    x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    dy = f32(rng, *F.conv2d_forward(x, w, b, stride, padding).shape)

    def loss():
        return float(np.sum(R.conv2d_forward(x64, w64, b64, stride, padding) * dy))

    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    F.conv2d_backward(dy, x, w, stride, padding, dx=dx, dweight=dw, dbias=db)
    assert_close(dx, numerical_grad(loss, x64), 1e-4, 1e-4, "dx")
    assert_close(dw, numerical_grad(loss, w64), 1e-4, 1e-4, "dweight")
    assert_close(db, numerical_grad(loss, b64), 1e-4, 1e-4, "dbias")


@pytest.mark.parametrize("kernel,stride,padding", CONV_GEOMETRIES)
def test_conv2d_matches_torch_autograd(rng, torch, kernel, stride, padding):
    x, w, b = conv_case(rng, kernel)
    y = F.conv2d_forward(x, w, b, stride, padding)
    dy = f32(rng, *y.shape)
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    F.conv2d_backward(dy, x, w, stride, padding, dx=dx, dweight=dw, dbias=db)
    t = [torch.tensor(v, requires_grad=True) for v in (x, w, b)]
    yt = torch.nn.functional.conv2d(*t, stride=stride, padding=padding)
    yt.backward(torch.tensor(dy))
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-5, "y")
    for name, got, tt in zip(("dx", "dweight", "dbias"), (dx, dw, db), t):
        assert_close(got, tt.grad.numpy(), 1e-4, 1e-5, name)


# stride 1 with the output as wide as the input: the "flat" im2col/col2im path (one shifted copy
# per patch row, wrapped entries zeroed); tiny and tall/narrow images, kernels taller than the
# image, one-sided heights, a 5-wide kernel
FLAT_GEOMETRIES = [  # (image (IH, IW), kernel (KH, KW), padding (PH, PW))
    ((7, 6), (3, 3), (1, 1)),
    ((1, 1), (3, 3), (1, 1)),
    ((2, 1), (3, 1), (1, 0)),
    ((5, 2), (1, 3), (0, 1)),
    ((2, 4), (5, 5), (2, 2)),
    ((6, 3), (3, 3), (0, 1)),
    ((3, 7), (2, 5), (1, 2)),
]


@pytest.mark.parametrize("hw,kernel,padding", FLAT_GEOMETRIES)
def test_conv2d_same_width_stride_one_path_matches_reference(rng, hw, kernel, padding):
    x, w, b = conv_case(rng, kernel, hw=hw)
    y = F.conv2d_forward(x, w, b, 1, padding)
    assert y.shape[3] == hw[1]
    assert_close(y, R.conv2d_forward(x, w, b, 1, padding), 1e-5, 1e-5, "y")
    dy = f32(rng, *y.shape)
    got = {"x": f32(rng, *x.shape), "w": f32(rng, *w.shape)}
    ref = {k: v.astype(np.float64) for k, v in got.items()}
    F.conv2d_backward(dy, x, w, 1, padding, dx=got["x"], dweight=got["w"])
    R.conv2d_backward(dy, x, w, 1, padding, dx=ref["x"], dweight=ref["w"])
    for k in got:
        assert_close(got[k], ref[k], 1e-5, 1e-5, k)


# strides above 1 read the image through its phase planes: one shifted copy per patch row when the
# read plane is as wide as the output (stride 2 over an even width, padding 1), one per output row
# otherwise; kernels smaller than the stride leave phases unread; planes of unequal extent
STRIDED_GEOMETRIES = [  # (image (IH, IW), kernel (KH, KW), stride (SH, SW), padding (PH, PW))
    ((28, 28), (3, 3), (2, 2), (1, 1)),  # the EATA network's downsampling: flat rows
    ((14, 14), (1, 1), (2, 2), (0, 0)),  # its shortcut: one phase of four
    ((7, 7), (3, 3), (2, 2), (1, 1)),  # odd: phases 4 and 3 wide
    ((9, 8), (2, 3), (3, 2), (0, 2)),  # kernel shorter than the stride, padding wider than the phase offset
    ((5, 11), (5, 1), (2, 4), (2, 0)),  # kernel taller than the image's phases, wide stride
    ((1, 3), (3, 3), (2, 2), (1, 1)),  # one input row
]


@pytest.mark.parametrize("hw,kernel,stride,padding", STRIDED_GEOMETRIES)
def test_conv2d_strided_phase_path_matches_reference(rng, hw, kernel, stride, padding):
    x, w, b = conv_case(rng, kernel, hw=hw)
    y = F.conv2d_forward(x, w, b, stride, padding)
    assert_close(y, R.conv2d_forward(x, w, b, stride, padding), 1e-5, 1e-5, "y")
    dy = f32(rng, *y.shape)
    got = {"x": f32(rng, *x.shape), "w": f32(rng, *w.shape)}
    ref = {k: v.astype(np.float64) for k, v in got.items()}
    F.conv2d_backward(dy, x, w, stride, padding, dx=got["x"], dweight=got["w"])
    R.conv2d_backward(dy, x, w, stride, padding, dx=ref["x"], dweight=ref["w"])
    assert_close(got["x"], ref["x"], 1e-5, 1e-5, "dx")
    assert_close(got["w"], ref["w"], 1e-5, 1e-5, "dweight")


def test_conv2d_backward_accumulates_and_needs_no_x_for_dx(rng):
    x, w, b = conv_case(rng, (3, 3))
    dy = f32(rng, *F.conv2d_forward(x, w, b, 1, 1).shape)
    once = np.zeros_like(x)
    F.conv2d_backward(dy, None, w, 1, 1, dx=once)
    twice = once.copy()
    F.conv2d_backward(dy, x, w, 1, 1, dx=twice)
    assert_close(twice, 2 * once, 1e-6, 1e-6, "accumulated dx")
    with pytest.raises(ValueError, match="x"):
        F.conv2d_backward(dy, None, w, 1, 1, dweight=np.zeros_like(w))


def test_conv2d_reuses_a_caller_workspace_across_calls(rng):
    x, w, b = conv_case(rng, (3, 3))
    work = np.empty(F.conv2d_workspace_size(x.shape, w.shape, 1, 1), dtype=np.float32)
    y1 = F.conv2d_forward(x, w, b, 1, 1, work=work)
    work.fill(np.nan)  # the kernel must overwrite its scratch, not read stale values
    y2 = F.conv2d_forward(x, w, b, 1, 1, work=work)
    np.testing.assert_array_equal(y1, y2)


def test_conv2d_rejects_bad_arguments_with_named_errors(rng):
    x, w, b = conv_case(rng, (3, 3))
    x0, w0 = x.copy(), w.copy()
    with pytest.raises(TypeError, match="'x'.*float32"):
        F.conv2d_forward(x.astype(np.float64), w, b)
    with pytest.raises(ValueError, match="IC"):
        F.conv2d_forward(x, f32(rng, 4, 2, 3, 3), b)
    with pytest.raises(ValueError, match="'work' has 3 floats"):
        F.conv2d_forward(x, w, b, 1, 1, work=np.empty(3, np.float32))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        F.conv2d_forward(x, f32(rng, 4, 3, 9, 9), b)
    with pytest.raises(ValueError, match="OH"):
        F.conv2d_forward(x, w, b, 1, 1, out=np.empty((2, 4, 6, 6), np.float32))
    with pytest.raises(ValueError, match="stride"):
        F.conv2d_forward(x, w, b, 0, 1)
    y = np.empty((2, 4, 7, 6), np.float32)
    y.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        F.conv2d_forward(x, w, b, 1, 1, out=y)
    with pytest.raises(ValueError, match="C-contiguous"):
        F.conv2d_forward(np.asfortranarray(x), w, b, 1, 1)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)


def test_conv2d_threads_give_identical_results(rng):
    x, w, b = conv_case(rng, (3, 3), n=8, ic=4, oc=8, hw=(12, 12))
    expected = F.conv2d_forward(x, w, b, 1, 1)
    results = [None] * 4

    def run(i):
        results[i] = F.conv2d_forward(x, w, b, 1, 1)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, expected)


# ---- batch norm --------------------------------------------------------------------------------

def bn_case(rng, n=4, ch=3, hw=(3, 2)):
    x = f32(rng, n, ch, *hw) * 2.0 + 0.5
    return (x, f32(rng, ch) * 0.3 + 1.0, f32(rng, ch), f32(rng, ch) * 0.1,
            np.abs(f32(rng, ch)) + 0.5)


@pytest.mark.parametrize("mode", ["train", "test_batch", "eval"])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm2d_forward_matches_reference(rng, mode, affine):
    x, g, b, rm, rv = bn_case(rng)
    g, b = (g, b) if affine else (None, None)
    training = mode != "eval"
    run = (rm.copy(), rv.copy()) if mode != "test_batch" else (None, None)
    ref_run = (rm.astype(np.float64), rv.astype(np.float64)) if mode != "test_batch" else (None, None)
    y, mean, rstd = F.batchnorm2d_forward(x, *run, g, b, training, 0.2, 1e-5)
    y_ref, mean_ref, rstd_ref = R.batchnorm2d_forward(x.astype(np.float64), *ref_run, g, b, training, 0.2, 1e-5)
    assert_close(y, y_ref, 1e-5, 1e-5, "y")
    assert_close(mean, mean_ref, 1e-6, 1e-6, "mean")
    assert_close(rstd, rstd_ref, 1e-5, 1e-6, "rstd")
    if run[0] is not None:
        assert_close(run[0], ref_run[0], 1e-6, 1e-6, "running_mean")
        assert_close(run[1], ref_run[1], 1e-6, 1e-6, "running_var")


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("shape", [(6, 3, 7, 7), (5, 2, 3, 3)])  # planes of 49 (3 lanes of 16 + 1) and 9
def test_batchnorm2d_stays_accurate_when_the_mean_dwarfs_the_spread(rng, fused, shape):
    """x = 1000 + N(0, 1): a one-pass E[x^2] - E[x]^2 in float, or y = x * scale + shift, would lose
    the unit-scale part to cancellation; the kernels must match the float64 reference as on centred data."""
    x = (1000.0 + rng.standard_normal(shape)).astype(np.float32)
    ch = shape[1]
    g, b = f32(rng, ch) * 0.3 + 1.0, f32(rng, ch) * 0.5
    forward, backward = ((F.batchnorm2d_relu_forward, F.batchnorm2d_relu_backward) if fused
                         else (F.batchnorm2d_forward, F.batchnorm2d_backward))
    y, mean, rstd = forward(x, None, None, g, b, True, 0.1, 1e-5)
    pre, mean_ref, rstd_ref = R.batchnorm2d_forward(x.astype(np.float64), None, None, g, b, True, 0.1, 1e-5)
    assert_close(mean, mean_ref, 1e-6, 1e-6, "mean")
    assert_close(rstd, rstd_ref, 1e-5, 1e-6, "rstd")
    assert_close(y, np.maximum(pre, 0.0) if fused else pre, 1e-5, 1e-5, "y")
    dy = f32(rng, *shape)
    dx, dg, db = np.zeros_like(x), np.zeros_like(g), np.zeros_like(b)
    ref = [np.zeros(a.shape) for a in (dx, dg, db)]
    if fused:
        backward(dy, y, x, mean, rstd, g, True, dx=dx, dweight=dg, dbias=db)
        R.batchnorm2d_relu_backward(dy, y, x, mean, rstd, g, True, dx=ref[0], dweight=ref[1], dbias=ref[2])
    else:
        backward(dy, x, mean, rstd, g, True, dx=dx, dweight=dg, dbias=db)
        R.batchnorm2d_backward(dy, x, mean, rstd, g, True, dx=ref[0], dweight=ref[1], dbias=ref[2])
    for name, got, want in zip(("dx", "dweight", "dbias"), (dx, dg, db), ref):
        assert_close(got, want, 1e-5, 1e-5, name)


def test_batchnorm2d_running_stats_follow_torch_only_in_train_mode(rng, torch):
    x, g, b, rm, rv = bn_case(rng)
    tm, tv = torch.tensor(rm), torch.tensor(rv)
    pm, pv = rm.copy(), rv.copy()
    for step in range(3):
        xs = x + step
        y, _, _ = F.batchnorm2d_forward(xs, pm, pv, g, b, True, 0.1, 1e-5)
        yt = torch.nn.functional.batch_norm(torch.tensor(xs), tm, tv, torch.tensor(g), torch.tensor(b), True, 0.1, 1e-5)
        assert_close(y, yt.numpy(), 1e-5, 1e-5, f"y step {step}")
        assert_close(pm, tm.numpy(), 1e-6, 1e-6, f"running_mean step {step}")
        assert_close(pv, tv.numpy(), 1e-5, 1e-6, f"running_var step {step}")
    frozen = (pm.copy(), pv.copy())
    F.batchnorm2d_forward(x, pm, pv, g, b, False)  # eval reads
    F.batchnorm2d_forward(x, None, None, g, b, True)  # test-batch statistics touch nothing
    np.testing.assert_array_equal(pm, frozen[0])
    np.testing.assert_array_equal(pv, frozen[1])


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_backward_matches_finite_differences(rng, training):
    x, g, b, rm, rv = bn_case(rng, n=3, ch=2, hw=(2, 3))
    x64, g64, b64 = (v.astype(np.float64) for v in (x, g, b))
    run64 = (None, None) if training else (rm.astype(np.float64), rv.astype(np.float64))
    dy = f32(rng, *x.shape)

    def loss():
        return float(np.sum(R.batchnorm2d_forward(x64, *run64, g64, b64, training)[0] * dy))

    run = (None, None) if training else (rm, rv)
    _, mean, rstd = F.batchnorm2d_forward(x, *run, g, b, training)
    dx, dg, db = np.zeros_like(x), np.zeros_like(g), np.zeros_like(b)
    F.batchnorm2d_backward(dy, x, mean, rstd, g, training, dx=dx, dweight=dg, dbias=db)
    assert_close(dx, numerical_grad(loss, x64), 1e-4, 1e-4, "dx")
    assert_close(dg, numerical_grad(loss, g64), 1e-4, 1e-4, "dweight")
    assert_close(db, numerical_grad(loss, b64), 1e-4, 1e-4, "dbias")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm2d_matches_torch_autograd(rng, torch, training, affine):
    x, g, b, rm, rv = bn_case(rng, n=5, ch=4, hw=(4, 3))
    dy = f32(rng, *x.shape)
    gg, bb = (g, b) if affine else (None, None)
    run = (None, None) if training else (rm, rv)
    y, mean, rstd = F.batchnorm2d_forward(x, *run, gg, bb, training)
    dx = np.zeros_like(x)
    dg, db = (np.zeros_like(g), np.zeros_like(b)) if affine else (None, None)
    F.batchnorm2d_backward(dy, x, mean, rstd, gg, training, dx=dx, dweight=dg, dbias=db)
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(g, requires_grad=True) if affine else None
    bt = torch.tensor(b, requires_grad=True) if affine else None
    yt = torch.nn.functional.batch_norm(xt, None if training else torch.tensor(rm),
                                        None if training else torch.tensor(rv), gt, bt, training)
    yt.backward(torch.tensor(dy))
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-5, "y")
    assert_close(dx, xt.grad.numpy(), 1e-4, 1e-5, "dx")
    if affine:
        assert_close(dg, gt.grad.numpy(), 1e-4, 1e-5, "dweight")
        assert_close(db, bt.grad.numpy(), 1e-4, 1e-5, "dbias")


def test_batchnorm2d_rejects_bad_arguments_with_named_errors(rng):
    x, g, b, rm, rv = bn_case(rng)
    with pytest.raises(TypeError, match="running_mean"):
        F.batchnorm2d_forward(x, None, None, g, b, False)
    with pytest.raises(ValueError, match="both running_mean and running_var"):
        F.batchnorm2d_forward(x, rm, None, g, b, True)
    with pytest.raises(ValueError, match="more than 1 value"):
        F.batchnorm2d_forward(x[:1, :, :1, :1].copy(), rm, rv, g, b, True)
    with pytest.raises(ValueError, match="CH"):
        F.batchnorm2d_forward(x, rm, rv, g[:2].copy(), b, True)
    with pytest.raises(ValueError, match="running_var"):
        F.batchnorm2d_forward(x, rm, -rv, g, b, False)
    with pytest.raises(ValueError, match="eps"):
        F.batchnorm2d_forward(x, rm, rv, g, b, True, eps=0.0)


# ---- pooling and ReLU --------------------------------------------------------------------------

POOL_GEOMETRIES = [(2, None, 0), ((3, 2), (2, 1), (1, 0)), (3, 2, 1)]


def distinct(rng, *shape):
    """float32 values with no ties (a max-pool window then has one argmax)."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0 - 3.0).astype(np.float32)


@pytest.mark.parametrize("kernel,stride,padding", POOL_GEOMETRIES)
def test_maxpool2d_matches_reference(rng, kernel, stride, padding):
    x = distinct(rng, 2, 3, 7, 6)
    y, am = F.maxpool2d_forward(x, kernel, stride, padding)
    y_ref, am_ref = R.maxpool2d_forward(x, kernel, stride, padding)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(am, am_ref)
    dy = f32(rng, *y.shape)
    start = f32(rng, *x.shape)  # the backward adds into dx
    dx = start.copy()
    F.maxpool2d_backward(dy, am, dx=dx)
    dx_ref = start.astype(np.float64)
    R.maxpool2d_backward(dy, am_ref, dx=dx_ref)
    assert_close(dx, dx_ref, 1e-6, 1e-6, "dx vs reference")


@pytest.mark.parametrize("kernel,stride,padding", POOL_GEOMETRIES)
def test_maxpool2d_matches_torch_autograd(rng, torch, kernel, stride, padding):
    x = distinct(rng, 2, 3, 7, 6)
    y, am = F.maxpool2d_forward(x, kernel, stride, padding)
    dy = f32(rng, *y.shape)
    dx = np.zeros_like(x)
    F.maxpool2d_backward(dy, am, dx=dx)
    xt = torch.tensor(x, requires_grad=True)
    yt, it = torch.nn.functional.max_pool2d(xt, kernel, stride, padding, return_indices=True)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(am, it.numpy())
    assert_close(dx, xt.grad.numpy(), 1e-6, 1e-6, "dx vs torch")


def test_maxpool2d_backward_matches_finite_differences(rng):
    x = distinct(rng, 2, 2, 5, 4)
    x64 = x.astype(np.float64)
    y, am = F.maxpool2d_forward(x, 2, 1, 1)
    dy = f32(rng, *y.shape)
    dx = np.zeros_like(x)
    F.maxpool2d_backward(dy, am, dx=dx)
    num = numerical_grad(lambda: float(np.sum(R.maxpool2d_forward(x64, 2, 1, 1)[0] * dy)), x64)
    assert_close(dx, num, 1e-5, 1e-5, "dx")


def test_maxpool2d_rejects_bad_indices_and_padding(rng):
    x = distinct(rng, 1, 2, 4, 4)
    y, am = F.maxpool2d_forward(x, 2)
    am[0, 0, 0, 0] = 16
    dx = np.zeros_like(x)
    with pytest.raises(ValueError, match="argmax"):
        F.maxpool2d_backward(np.ones_like(y), am, dx=dx)
    assert not dx.any()
    with pytest.raises(ValueError, match="padding <= kernel / 2"):
        F.maxpool2d_forward(x, 2, 1, 2)
    with pytest.raises(TypeError, match="argmax.*int64"):
        F.maxpool2d_forward(x, 2, argmax=np.empty((1, 2, 2, 2), np.int32))


@pytest.mark.parametrize("kernel,stride,padding", POOL_GEOMETRIES)
def test_avgpool2d_matches_reference(rng, kernel, stride, padding):
    x = f32(rng, 2, 3, 7, 6)
    y = F.avgpool2d_forward(x, kernel, stride, padding)
    assert_close(y, R.avgpool2d_forward(x, kernel, stride, padding), 1e-6, 1e-6, "y vs reference")
    dy = f32(rng, *y.shape)
    start = f32(rng, *x.shape)  # the backward adds into dx
    dx, dx_ref = start.copy(), start.astype(np.float64)
    F.avgpool2d_backward(dy, kernel, stride, padding, dx=dx)
    R.avgpool2d_backward(dy, kernel, stride, padding, dx=dx_ref)
    assert_close(dx, dx_ref, 1e-6, 1e-6, "dx vs reference")


@pytest.mark.parametrize("kernel,stride,padding", POOL_GEOMETRIES)
def test_avgpool2d_matches_torch_autograd(rng, torch, kernel, stride, padding):
    x = f32(rng, 2, 3, 7, 6)
    y = F.avgpool2d_forward(x, kernel, stride, padding)
    dy = f32(rng, *y.shape)
    dx = np.zeros_like(x)
    F.avgpool2d_backward(dy, kernel, stride, padding, dx=dx)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.avg_pool2d(xt, kernel, stride, padding)
    yt.backward(torch.tensor(dy))
    assert_close(y, yt.detach().numpy(), 1e-6, 1e-6, "y vs torch")
    assert_close(dx, xt.grad.numpy(), 1e-6, 1e-6, "dx vs torch")


def test_avgpool2d_backward_matches_finite_differences(rng):
    x = f32(rng, 2, 2, 5, 4)
    x64 = x.astype(np.float64)
    dy = f32(rng, *F.avgpool2d_forward(x, 3, 2, 1).shape)
    dx = np.zeros_like(x)
    F.avgpool2d_backward(dy, 3, 2, 1, dx=dx)
    num = numerical_grad(lambda: float(np.sum(R.avgpool2d_forward(x64, 3, 2, 1) * dy)), x64)
    assert_close(dx, num, 1e-5, 1e-5, "dx")


def test_global_avgpool2d_matches_reference_and_finite_differences(rng):
    x = f32(rng, 3, 4, 5, 2)
    x64 = x.astype(np.float64)
    y = F.global_avgpool2d_forward(x)
    assert_close(y, R.global_avgpool2d_forward(x64), 1e-6, 1e-6, "y")
    dy = f32(rng, 3, 4)
    start = f32(rng, *x.shape)  # the backward adds into dx
    dx = start.copy()
    F.global_avgpool2d_backward(dy, dx=dx)
    num = numerical_grad(lambda: float(np.sum(R.global_avgpool2d_forward(x64) * dy)), x64)
    assert_close(dx, start + num, 1e-5, 1e-5, "dx vs finite differences")


def test_global_avgpool2d_sums_each_plane_in_order_in_double(rng):
    # 21 planes: the kernel sums 8 planes side by side and the last 5 one by one; each plane's
    # double sum in index order (a float64 cumsum is sequential) gives the same bits either way
    x = f32(rng, 3, 7, 5, 5) * 3.0 + 1.0
    want = (np.cumsum(x.reshape(21, 25).astype(np.float64), axis=1)[:, -1] / 25.0).astype(np.float32)
    np.testing.assert_array_equal(F.global_avgpool2d_forward(x), want.reshape(3, 7))


def test_global_avgpool2d_matches_torch_autograd(rng, torch):
    x = f32(rng, 3, 4, 5, 2)
    dy = f32(rng, 3, 4)
    dx = np.zeros_like(x)
    F.global_avgpool2d_backward(dy, dx=dx)
    xt = torch.tensor(x, requires_grad=True)
    yt = xt.mean(dim=(2, 3))
    assert_close(F.global_avgpool2d_forward(x), yt.detach().numpy(), 1e-6, 1e-6, "y vs torch")
    yt.backward(torch.tensor(dy))
    assert_close(dx, xt.grad.numpy(), 1e-6, 1e-6, "dx vs torch")


def test_relu_matches_reference_and_finite_differences(rng):
    x = f32(rng, 3, 4, 5)
    x[np.abs(x) < 1e-3] = 0.5  # keep finite differences away from the kink
    x64 = x.astype(np.float64)
    y = F.relu_forward(x)
    np.testing.assert_array_equal(y, R.relu_forward(x))
    dy = f32(rng, *x.shape)
    dx, dx_from_y = np.zeros_like(x), np.zeros_like(x)
    F.relu_backward(dy, x, dx=dx)
    F.relu_backward(dy, y, dx=dx_from_y)
    np.testing.assert_array_equal(dx, dx_from_y)
    num = numerical_grad(lambda: float(np.sum(R.relu_forward(x64) * dy)), x64)
    assert_close(dx, num, 1e-6, 1e-6, "dx vs finite differences")
    assert np.isnan(F.relu_forward(np.array([np.nan, -1.0], np.float32))[0])
    with pytest.raises(ValueError, match="overlaps"):
        F.relu_forward(x, out=x)


def test_relu_matches_torch_autograd(rng, torch):
    x = f32(rng, 3, 4, 5)
    dy = f32(rng, *x.shape)
    dx = np.zeros_like(x)
    F.relu_backward(dy, x, dx=dx)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.relu(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(F.relu_forward(x), yt.detach().numpy())
    assert_close(dx, xt.grad.numpy(), 0, 0, "dx vs torch")
