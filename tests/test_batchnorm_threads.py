"""Batch norm and the fused batch norm + ReLU split their channels over threads: every mode of the forward
(train with running buffers updated, test-batch statistics, eval) and the backward (with and without
the batch-statistics terms, with and without dx) give the same bits on one thread and on two, and
those bits are the NumPy reference's to float tolerance."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import reference as R

from .conftest import assert_close
from .test_threaded_kernels import run_with_threads

# 40 x 32 x 32 = 40,960 values per channel is above the kernels' per-thread minimum, so two threads each
# take a range of channels, 5 split unevenly (2 + 3). Planes of 1,024 fill the kernels' 16 float lanes.
SHAPE = (40, 5, 32, 32)

SCRIPT = r"""
import sys
import numpy as np
from peftc import functional as F
rng = np.random.default_rng(0)
n, ch, ih, iw = SHAPE
x = rng.standard_normal((n, ch, ih, iw), dtype=np.float32) * 2.0 + 0.5
dy = rng.standard_normal(x.shape, dtype=np.float32)
g, b = rng.standard_normal(ch, dtype=np.float32) * 0.3 + 1.0, rng.standard_normal(ch, dtype=np.float32) * 0.5
res = {"x": x, "dy": dy, "g": g, "b": b}
for fused, forward, backward in ((0, F.batchnorm2d_forward, F.batchnorm2d_backward),
                                 (1, F.batchnorm2d_relu_forward, F.batchnorm2d_relu_backward)):
    for mode in ("train", "test_batch", "eval"):
        rm, rv = np.full(ch, 0.2, np.float32), np.full(ch, 1.5, np.float32)
        run = (None, None) if mode == "test_batch" else (rm, rv)
        training = mode != "eval"
        y, mean, rstd = forward(x, *run, g, b, training, 0.1, 1e-5)
        dx, dg, db = np.ones_like(x), np.ones_like(g), np.ones_like(b)  # the backward accumulates
        grads = dict(dx=dx, dweight=dg, dbias=db)
        if fused:
            backward(dy, y, x, mean, rstd, g, training, **grads)
        else:
            backward(dy, x, mean, rstd, g, training, **grads)
        dg_only = np.zeros_like(g)
        if fused:
            backward(dy, y, x, mean, rstd, g, training, dweight=dg_only)
        else:
            backward(dy, x, mean, rstd, g, training, dweight=dg_only)
        key = f"{fused}{mode}"
        res.update({"y" + key: y, "mean" + key: mean, "rstd" + key: rstd, "rm" + key: rm, "rv" + key: rv,
                    "dx" + key: dx, "dg" + key: dg, "db" + key: db, "dg_only" + key: dg_only})
np.savez(sys.argv[1], **res)
""".replace("SHAPE", repr(SHAPE))


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bn_threads")
    return run_with_threads(1, tmp / "one.npz", SCRIPT), run_with_threads(2, tmp / "two.npz", SCRIPT)


def test_batchnorm_kernels_give_identical_bits_on_one_and_two_threads(one_and_two):
    one, two = one_and_two
    assert one.keys() == two.keys()
    for name in one:
        assert np.array_equal(one[name], two[name]), f"{name} differs between 1 and 2 threads"


@pytest.mark.parametrize("fused", [0, 1])
@pytest.mark.parametrize("mode", ["train", "test_batch", "eval"])
def test_batchnorm_kernels_on_two_threads_match_the_reference(one_and_two, fused, mode):
    res = one_and_two[1]
    x, dy, g, b = (res[k].astype(np.float64) for k in ("x", "dy", "g", "b"))
    key = f"{fused}{mode}"
    training = mode != "eval"
    run = (None, None) if mode == "test_batch" else (np.full(5, 0.2), np.full(5, 1.5))
    forward = R.batchnorm2d_relu_forward if fused else R.batchnorm2d_forward
    y, mean, rstd = forward(x, *run, g, b, training, 0.1, 1e-5)
    assert_close(res["y" + key], y, 1e-5, 1e-5, "y")
    assert_close(res["mean" + key], mean, 1e-6, 1e-6, "mean")
    assert_close(res["rstd" + key], rstd, 1e-5, 1e-6, "rstd")
    if run[0] is not None:
        assert_close(res["rm" + key], run[0], 1e-6, 1e-6, "running_mean")
        assert_close(res["rv" + key], run[1], 1e-6, 1e-6, "running_var")
    dx, dg, db = np.ones_like(x), np.ones_like(g), np.ones_like(b)
    if fused:
        R.batchnorm2d_relu_backward(dy, y, x, mean, rstd, g, training, dx=dx, dweight=dg, dbias=db)
    else:
        R.batchnorm2d_backward(dy, x, mean, rstd, g, training, dx=dx, dweight=dg, dbias=db)
    assert_close(res["dx" + key], dx, 1e-5, 1e-5, "dx")
    assert_close(res["dg" + key], dg, 1e-4, 1e-5, "dweight")
    assert_close(res["db" + key], db, 1e-4, 1e-5, "dbias")
    np.testing.assert_array_equal(res["dg_only" + key] + 1.0, res["dg" + key])
