"""A residual block's output relu(bn(x) + r) in the norm's own pass: ``batchnorm2d_add_relu_forward``
with a plain residual, or with another norm applied on the fly through the per-channel map that
``batchnorm2d_forward(..., output=False)`` computes without writing its output. Checked bit for bit
against the unfused norms, their sum and ``relu_forward`` in every mode (running buffers included), against
the NumPy reference and torch, and through ``BasicBlock``."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R
from peftc.models.cnn import BasicBlock
from peftc.random import Generator

from .conftest import assert_close, f32

MODES = ["train", "test_batch", "eval"]
SHAPES = [(4, 3, 5, 6), (3, 20, 7, 7), (2, 5, 1, 1)]


def norm_args(rng, ch, affine=True):
    g, b = (f32(rng, ch) * 0.3 + 1.0, f32(rng, ch) * 0.5) if affine else (None, None)
    return g, b, f32(rng, ch) * 0.1, np.abs(f32(rng, ch)) + 0.5


def running(mode, rm, rv):
    return (None, None) if mode == "test_batch" else (rm.copy(), rv.copy())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("affine", [True, False])
def test_fused_output_equals_the_norms_then_add_relu_bit_for_bit(rng, shape, mode, affine):
    training = mode != "eval"
    x, s = f32(rng, *shape), f32(rng, *shape) * 3.0 + 1.0
    ga, ba, rma, rva = norm_args(rng, shape[1], affine)
    gb, bb, rmb, rvb = norm_args(rng, shape[1], affine)
    run_a, run_b, ref_run_a, ref_run_b = (running(mode, rma, rva), running(mode, rmb, rvb),
                                          running(mode, rma, rva), running(mode, rmb, rvb))
    scale, shift = np.empty(shape[1], np.float32), np.empty(shape[1], np.float32)
    none, mean_b, rstd_b = F.batchnorm2d_forward(s, *run_b, gb, bb, training, scale=scale, shift=shift, output=False)
    assert none is None
    y, mean_a, rstd_a = F.batchnorm2d_add_relu_forward(x, s, *run_a, ga, ba, training,
                                                       residual_map=(mean_b, scale, shift))
    ya, ref_mean_a, ref_rstd_a = F.batchnorm2d_forward(x, *ref_run_a, ga, ba, training)
    yb, ref_mean_b, ref_rstd_b = F.batchnorm2d_forward(s, *ref_run_b, gb, bb, training)
    np.testing.assert_array_equal(y, F.relu_forward(ya + yb))
    np.testing.assert_array_equal(yb, (s - mean_b[:, None, None]) * scale[:, None, None] + shift[:, None, None])
    for got, want in zip((mean_a, rstd_a, mean_b, rstd_b) + run_a + run_b,
                         (ref_mean_a, ref_rstd_a, ref_mean_b, ref_rstd_b) + ref_run_a + ref_run_b):
        if want is not None:
            np.testing.assert_array_equal(got, want)
    plain, _, _ = F.batchnorm2d_add_relu_forward(x, s, *running(mode, rma, rva), ga, ba, training)
    np.testing.assert_array_equal(plain, F.relu_forward(ya + s))


@pytest.mark.parametrize("mode", MODES)
def test_fused_output_matches_reference_and_torch(rng, torch, mode):
    training = mode != "eval"
    x, s = f32(rng, 3, 4, 5, 5), f32(rng, 3, 4, 5, 5)
    ga, ba, rma, rva = norm_args(rng, 4)
    gb, bb, rmb, rvb = norm_args(rng, 4)
    scale, shift = np.empty(4, np.float32), np.empty(4, np.float32)
    _, mean_b, _ = F.batchnorm2d_forward(s, *running(mode, rmb, rvb), gb, bb, training, scale=scale, shift=shift,
                                         output=False)
    y, _, _ = F.batchnorm2d_add_relu_forward(x, s, *running(mode, rma, rva), ga, ba, training,
                                             residual_map=(mean_b, scale, shift))
    r_scale, r_shift = np.empty(4), np.empty(4)
    _, r_mean, _ = R.batchnorm2d_forward(s.astype(np.float64), *running(mode, rmb, rvb), gb, bb, training,
                                         scale=r_scale, shift=r_shift, output=False)
    ref, _, _ = R.batchnorm2d_add_relu_forward(x.astype(np.float64), s.astype(np.float64), *running(mode, rma, rva),
                                               ga, ba, training, residual_map=(r_mean, r_scale, r_shift))
    assert_close(y, ref, 1e-5, 1e-5, "y against the reference")
    t = torch.nn.functional
    ra, rb = running(mode, rma, rva), running(mode, rmb, rvb)
    ra, rb = ([None if v is None else torch.tensor(v) for v in r] for r in (ra, rb))
    yt = torch.relu(t.batch_norm(torch.tensor(x), *ra, torch.tensor(ga), torch.tensor(ba), training=training)
                    + t.batch_norm(torch.tensor(s), *rb, torch.tensor(gb), torch.tensor(bb), training=training))
    assert_close(y, yt.numpy(), 1e-5, 1e-5, "y against torch")


def test_fused_forward_checks_its_arguments_by_name(rng):
    x, s = f32(rng, 2, 3, 4, 4), f32(rng, 2, 3, 4, 4)
    g, b, _, _ = norm_args(rng, 3)
    with pytest.raises(ValueError, match="batchnorm2d_add_relu_forward.*residual"):
        F.batchnorm2d_add_relu_forward(x, s[:, :2].copy(), None, None, g, b, True)
    with pytest.raises(ValueError, match="res_mean, res_scale and res_shift"):
        F.batchnorm2d_add_relu_forward(x, s, None, None, g, b, True,
                                       residual_map=(np.zeros(3, np.float32), None, np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match="both scale and shift"):
        F.batchnorm2d_forward(x, None, None, g, b, True, scale=np.zeros(3, np.float32), output=False)


@pytest.mark.parametrize("mode", ["train", "test_batch"])
@pytest.mark.parametrize("cin,cout,stride", [(4, 6, 2), (6, 6, 1)])  # conv-BN shortcut, identity shortcut
def test_basic_block_output_and_buffers_are_those_of_the_unfused_modules(rng, mode, cin, cout, stride):
    block = BasicBlock(cin, cout, stride, Generator(3))
    for bn in (block.bn1, block.bn2, block.short_bn):
        if bn is not None:
            bn.weight.data[:] = f32(rng, cout) * 0.3 + 1.0
            bn.bias.data[:] = f32(rng, cout) * 0.3
            bn.mode = mode
    twin = copy.deepcopy(block)
    x = f32(rng, 5, cin, 9, 9)
    y = block(x)
    h = twin.bn2(twin.conv2(twin.bn1(twin.conv1(x))))
    shortcut = x if twin.short_conv is None else twin.short_bn(twin.short_conv(x))
    np.testing.assert_array_equal(y, F.relu_forward(h + shortcut))
    for a, b in zip(block.state_dict().values(), twin.state_dict().values()):
        np.testing.assert_array_equal(a, b)
