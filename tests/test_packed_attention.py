"""Packed-sequence attention (the skip_padding forward's attention): C against the NumPy reference,
bit-equality with attention_forward run on each sequence alone, torch, and bad offsets. It has no
backward (inference only), so there is no gradient check; equality across thread counts is in
test_threaded_kernels.py."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32

H, NH = 8, 2


def packed(rng, lengths):
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    return f32(rng, n, H), f32(rng, n, H), f32(rng, n, H), offsets


def test_packed_attention_matches_reference(rng):
    q, k, v, offsets = packed(rng, [3, 1, 0, 5])
    out = F.attention_packed_forward(q, k, v, offsets, NH)
    assert_close(out, R.attention_packed_forward(q.astype(np.float64), k, v, offsets, NH), 1e-5, 1e-6, "out")


def test_packed_attention_equals_attention_forward_per_sequence_bit_for_bit(rng):
    q, k, v, offsets = packed(rng, [4, 7, 2, 1, 6])
    out = F.attention_packed_forward(q, k, v, offsets, NH)
    for a, e in zip(offsets[:-1], offsets[1:]):
        one, _ = F.attention_forward(q[None, a:e], k[None, a:e], v[None, a:e], NH)
        assert np.array_equal(out[a:e], one[0])


def test_packed_attention_sequences_do_not_see_each_other(rng):
    q, k, v, offsets = packed(rng, [3, 4])
    out = F.attention_packed_forward(q, k, v, offsets, NH)
    v2 = v.copy()
    v2[3:] += 1.0  # change only the second sequence's values
    out2 = F.attention_packed_forward(q, k, v2, offsets, NH)
    assert np.array_equal(out[:3], out2[:3]) and not np.array_equal(out[3:], out2[3:])


def test_packed_attention_matches_torch(rng, torch):
    q, k, v, offsets = packed(rng, [5, 2])
    out = F.attention_packed_forward(q, k, v, offsets, NH)
    for a, e in zip(offsets[:-1], offsets[1:]):
        heads = lambda x: torch.from_numpy(x[a:e]).reshape(e - a, NH, H // NH).transpose(0, 1)  # noqa: E731
        ot = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        assert_close(out[a:e], ot.transpose(0, 1).reshape(e - a, H).numpy(), 1e-5, 1e-6, "out")


@pytest.mark.parametrize("offsets,match", [([1, 2, 5], "start at 0"), ([0, 2, 4], "end at N"),
                                           ([0, 4, 2, 5], "not decrease")])
def test_packed_attention_rejects_bad_offsets(rng, offsets, match):
    q, k, v, _ = packed(rng, [5])
    work = np.empty(F.attention_packed_forward_workspace_size(5), dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        F.attention_packed_forward(q, k, v, np.array(offsets, dtype=np.int64), NH, work=work)


def test_packed_attention_rejects_a_workspace_too_small_for_the_longest_sequence(rng):
    q, k, v, offsets = packed(rng, [2, 5])
    work = np.empty(F.attention_packed_forward_workspace_size(4), dtype=np.float32)
    with pytest.raises(ValueError, match="work"):
        F.attention_packed_forward(q, k, v, offsets, NH, work=work)
