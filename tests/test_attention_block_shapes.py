"""The attention core's register-blocked products (csrc/small_gemm.c) on shapes around their blocks:
sequence lengths that leave partial row and column blocks (T = 1, odd, past one 32-column panel), head
sizes that are a multiple of the vector width (32, 64), that leave a scalar column tail (24, 40) and one
longer than a packed k-panel (136); with key and causal masks and dropout, against the NumPy reference
and float64 finite differences, accumulating into non-zero gradients, and the same bits on 1 and 2
threads."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad
from .test_threaded_kernels import run_with_threads

B = 2
SHAPES = [(1, 32, 2), (13, 32, 3), (37, 64, 2), (130, 32, 1), (9, 24, 2), (20, 40, 1), (7, 136, 1)]  # T, HS, NH
VARIANTS = [(False, False, 0.0), (True, False, 0.0), (True, True, 0.0), (True, False, 0.3)]  # masked, causal, p


def case(rng, t, hs, nh):
    h = hs * nh
    mask = np.ones((B, t), dtype=np.int64)
    mask[0, (t + 1) // 2:] = 0  # the first sequence padded after its first half
    return f32(rng, B, t, h), f32(rng, B, t, h), f32(rng, B, t, h), f32(rng, B, t, h), mask


@pytest.mark.parametrize("masked,causal,p", VARIANTS)
@pytest.mark.parametrize("t,hs,nh", SHAPES)
def test_attention_forward_matches_reference_around_block_edges(rng, t, hs, nh, masked, causal, p):
    q, k, v, _, mask = case(rng, t, hs, nh)
    mask = mask if masked else None
    out, att = F.attention_forward(q, k, v, nh, mask, causal, p, 3, 11)
    out_ref, att_ref = R.attention_forward(q.astype(np.float64), k, v, nh, mask, causal, p, 3, 11)
    assert_close(att, att_ref, 1e-5, 1e-6, "att")
    assert_close(out, out_ref, 1e-5, 1e-5, "out")


@pytest.mark.parametrize("masked,causal,p", VARIANTS)
@pytest.mark.parametrize("t,hs,nh", SHAPES)
def test_attention_backward_accumulates_the_reference_gradients_around_block_edges(rng, t, hs, nh, masked, causal,
                                                                                    p):
    q, k, v, dout, mask = case(rng, t, hs, nh)
    mask = mask if masked else None
    _, att = F.attention_forward(q, k, v, nh, mask, causal, p, 5, 7)
    start = [f32(rng, *q.shape) for _ in range(3)]  # backward adds to what is there
    grads = [s.copy() for s in start]
    F.attention_backward(dout, q, k, v, att, nh, p, 5, 7, dq=grads[0], dk=grads[1], dv=grads[2])
    want = [s.astype(np.float64) for s in start]
    c64 = [a.astype(np.float64) for a in (dout, q, k, v)]
    R.attention_backward(*c64, att.astype(np.float64), nh, p, 5, 7, dq=want[0], dk=want[1], dv=want[2])
    for g, w, name in zip(grads, want, ("dq", "dk", "dv")):
        assert_close(g, w, 1e-4, 1e-5, name)


@pytest.mark.parametrize("dq_only", [True, False])
def test_attention_backward_fills_only_the_requested_gradients(rng, dq_only):
    q, k, v, dout, mask = case(rng, 13, 32, 2)
    _, att = F.attention_forward(q, k, v, 2, mask)
    g = np.zeros_like(q)
    want = np.zeros(q.shape)
    c64 = [a.astype(np.float64) for a in (dout, q, k, v, att)]
    if dq_only:
        F.attention_backward(dout, q, k, v, att, 2, dq=g)
        R.attention_backward(*c64, 2, dq=want)
    else:
        F.attention_backward(dout, q, k, v, att, 2, dk=g)
        R.attention_backward(*c64, 2, dk=want)
    assert_close(g, want, 1e-4, 1e-5, "dq" if dq_only else "dk")


@pytest.mark.parametrize("t,hs,causal,p", [(9, 24, False, 0.0), (5, 40, True, 0.25)])
def test_attention_backward_matches_finite_differences_with_a_column_tail(rng, t, hs, causal, p):
    q, k, v, dout, mask = case(rng, t, hs, 1)
    c64 = [a.astype(np.float64) for a in (q, k, v)]
    loss = lambda: float(np.sum(R.attention_forward(*c64, 1, mask, causal, p, 7, 2)[0] * dout))  # noqa: E731
    _, att = F.attention_forward(q, k, v, 1, mask, causal, p, 7, 2)
    grads = [np.zeros_like(a) for a in (q, k, v)]
    F.attention_backward(dout, q, k, v, att, 1, p, 7, 2, dq=grads[0], dk=grads[1], dv=grads[2])
    for g, a, name in zip(grads, c64, ("dq", "dk", "dv")):
        assert_close(g, numerical_grad(loss, a), 1e-4, 1e-4, name)


def test_packed_attention_matches_reference_with_long_and_odd_sequences(rng):
    lengths = [37, 1, 0, 130, 12]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    q, k, v = (f32(rng, int(offsets[-1]), 80) for _ in range(3))
    out = F.attention_packed_forward(q, k, v, offsets, 2)
    assert_close(out, R.attention_packed_forward(q.astype(np.float64), k, v, offsets, 2), 1e-5, 1e-5, "out")


SCRIPT = r"""
import sys
import numpy as np
from peftc import functional as F
rng = np.random.default_rng(0)
res = {}
for B, T, H, NH in ((3, 37, 120, 3), (2, 130, 64, 1)):
    q, k, v, dout = (rng.standard_normal((B, T, H), dtype=np.float32) for _ in range(4))
    mask = np.ones((B, T), dtype=np.int64)
    mask[1, T // 2:] = 0
    out, att = F.attention_forward(q, k, v, NH, mask, True, 0.2, 3, 5)
    g = [np.zeros_like(q) for _ in range(3)]
    F.attention_backward(dout, q, k, v, att, NH, 0.2, 3, 5, dq=g[0], dk=g[1], dv=g[2])
    res.update({f"{T}{n}": a for n, a in zip(("out", "att", "dq", "dk", "dv"), (out, att, *g))})
np.savez(sys.argv[1], **res)
"""


def test_attention_block_edges_give_the_same_bits_on_one_and_two_threads(tmp_path):
    one = run_with_threads(1, tmp_path / "one.npz", SCRIPT)
    two = run_with_threads(2, tmp_path / "two.npz", SCRIPT)
    for name in one:
        assert np.array_equal(one[name], two[name]), name
