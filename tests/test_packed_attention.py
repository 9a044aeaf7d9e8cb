"""Packed-sequence attention (the attention of a forward on the real tokens only): C against the NumPy
reference, bit-equality with attention_forward run on each sequence alone, torch, and bad offsets; the
training forward (probabilities kept, the padded batch's dropout) and its backward: C against the
reference, the reference against float64 finite differences, against the padded kernels and against
torch autograd on the padded batch. Equality across thread counts is in test_threaded_kernels.py."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad

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


# -- training: probabilities kept, dropout as the padded batch draws it, backward ------------------------------

SEED, OFFSET, P = 11, 1000, 0.3


def as_padded(x, offsets, starts, t):
    """packed rows (N, H) -> (S, T, H) zeros at the padding, sequence s at positions starts[s] .."""
    out = np.zeros((len(offsets) - 1, t, x.shape[1]), dtype=x.dtype)
    for s, (a, e) in enumerate(zip(offsets[:-1], offsets[1:])):
        out[s, starts[s]:starts[s] + e - a] = x[a:e]
    return out


def at_tokens(padded, offsets, starts):
    return np.concatenate([padded[s, starts[s]:starts[s] + e - a]
                           for s, (a, e) in enumerate(zip(offsets[:-1], offsets[1:]))])


def training_case(rng, lengths=(3, 1, 0, 5, 2), starts=(0, 2, 0, 1, 4), t=7):
    q, k, v, offsets = packed(rng, list(lengths))
    starts = np.array(starts, dtype=np.int64)
    mask = np.zeros((len(lengths), t), dtype=np.int64)
    for s, n in enumerate(lengths):
        mask[s, starts[s]:starts[s] + n] = 1
    return q, k, v, offsets, starts, t, mask


def packed_train(q, k, v, offsets, starts, t, p=P):
    att = np.empty(F.attention_packed_probs_size(offsets, NH), dtype=np.float32)
    out = F.attention_packed_forward(q, k, v, offsets, NH, p, SEED, OFFSET, starts=starts, seq_len=t, att=att)
    return out, att


def test_packed_training_forward_matches_reference_with_dropout(rng):
    q, k, v, offsets, starts, t, _ = training_case(rng)
    out, att = packed_train(q, k, v, offsets, starts, t)
    att_ref = np.empty(att.size)
    ref = R.attention_packed_forward(q.astype(np.float64), k, v, offsets, NH, P, SEED, OFFSET, starts=starts,
                                     seq_len=t, att=att_ref)
    assert_close(out, ref, 1e-5, 1e-6, "out")
    assert_close(att, att_ref, 1e-5, 1e-6, "att")


def test_packed_training_forward_equals_the_padded_forward_at_the_real_tokens(rng):
    q, k, v, offsets, starts, t, mask = training_case(rng)
    out, _ = packed_train(q, k, v, offsets, starts, t)
    pad, _ = F.attention_forward(*(as_padded(a, offsets, starts, t) for a in (q, k, v)), NH, mask, False, P, SEED,
                                 OFFSET)
    assert_close(out, at_tokens(pad, offsets, starts), 1e-6, 1e-6, "out")


def test_packed_training_forward_without_dropout_keeps_what_inference_computes(rng):
    q, k, v, offsets, starts, t, _ = training_case(rng)
    out, att = packed_train(q, k, v, offsets, starts, t, p=0.0)
    assert np.array_equal(out, F.attention_packed_forward(q, k, v, offsets, NH))
    first = att[:NH * 9].reshape(NH, 3, 3)  # sequence 0: 3 rows
    assert_close(first.sum(axis=-1), np.ones((NH, 3)), 1e-6, 1e-6, "rows of sequence 0 sum to 1")


def grads(fn, dout, q, k, v, *args, **kw):
    dq, dk, dv = (np.zeros_like(q) for _ in range(3))
    fn(dout, q, k, v, *args, dq=dq, dk=dk, dv=dv, **kw)
    return dq, dk, dv


def test_packed_backward_matches_reference_with_dropout(rng):
    q, k, v, offsets, starts, t, _ = training_case(rng)
    _, att = packed_train(q, k, v, offsets, starts, t)
    dout = f32(rng, *q.shape)
    got = grads(F.attention_packed_backward, dout, q, k, v, att, offsets, NH, P, SEED, OFFSET, starts=starts,
                seq_len=t)
    d64 = [a.astype(np.float64) for a in (dout, q, k, v)]
    want = grads(R.attention_packed_backward, *d64, None, offsets, NH, P, SEED, OFFSET, starts=starts, seq_len=t)
    for name, g, w in zip("qkv", got, want):
        assert_close(g, w, 1e-4, 1e-5, f"d{name}")


def test_packed_backward_reference_matches_float64_finite_differences(rng):
    q, k, v, offsets, starts, t, _ = training_case(rng, lengths=(3, 0, 4), starts=(1, 0, 0), t=5)
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    w = rng.standard_normal(q.shape)
    def loss():
        return float((w * R.attention_packed_forward(q, k, v, offsets, NH, P, SEED, OFFSET, starts=starts,
                                                     seq_len=t)).sum())

    want = grads(R.attention_packed_backward, w, q, k, v, None, offsets, NH, P, SEED, OFFSET, starts=starts, seq_len=t)
    for name, x, g in zip("qkv", (q, k, v), want):
        assert_close(g, numerical_grad(loss, x), 1e-6, 1e-8, f"d{name}")


def test_packed_backward_equals_the_padded_backward_at_the_real_tokens(rng):
    q, k, v, offsets, starts, t, mask = training_case(rng)
    _, att = packed_train(q, k, v, offsets, starts, t)
    dout = f32(rng, *q.shape)
    got = grads(F.attention_packed_backward, dout, q, k, v, att, offsets, NH, P, SEED, OFFSET, starts=starts,
                seq_len=t)
    pq, pk, pv, pd = (as_padded(a, offsets, starts, t) for a in (q, k, v, dout))
    _, patt = F.attention_forward(pq, pk, pv, NH, mask, False, P, SEED, OFFSET)
    want = grads(F.attention_backward, pd, pq, pk, pv, patt, NH, P, SEED, OFFSET)
    for name, g, w in zip("qkv", got, want):
        assert_close(g, at_tokens(w, offsets, starts), 1e-5, 1e-6, f"d{name}")


def test_packed_backward_matches_torch_autograd_on_the_padded_batch(rng, torch):
    q, k, v, offsets, starts, t, mask = training_case(rng)
    _, att = packed_train(q, k, v, offsets, starts, t, p=0.0)
    dout = f32(rng, *q.shape)
    got = grads(F.attention_packed_backward, dout, q, k, v, att, offsets, NH)
    tq, tk, tv = (torch.from_numpy(as_padded(a, offsets, starts, t)).requires_grad_(True) for a in (q, k, v))
    heads = lambda x: x.reshape(len(offsets) - 1, t, NH, H // NH).transpose(1, 2)  # noqa: E731
    keep = torch.from_numpy(mask != 0)[:, None, None, :]
    o = torch.nn.functional.scaled_dot_product_attention(heads(tq), heads(tk), heads(tv), attn_mask=keep)
    o = o.transpose(1, 2).reshape(len(offsets) - 1, t, H)
    o.backward(torch.from_numpy(as_padded(dout, offsets, starts, t)))
    for name, g, x in zip("qkv", got, (tq, tk, tv)):
        assert_close(g, at_tokens(x.grad.numpy(), offsets, starts), 1e-5, 1e-6, f"d{name}")


def test_packed_backward_skips_the_gradients_it_is_not_given(rng):
    q, k, v, offsets, starts, t, _ = training_case(rng)
    _, att = packed_train(q, k, v, offsets, starts, t)
    dout = f32(rng, *q.shape)
    dq, dk, dv = grads(F.attention_packed_backward, dout, q, k, v, att, offsets, NH, P, SEED, OFFSET, starts=starts,
                       seq_len=t)
    only_dv = np.zeros_like(q)
    F.attention_packed_backward(dout, q, k, v, att, offsets, NH, P, SEED, OFFSET, starts=starts, seq_len=t, dv=only_dv)
    assert np.array_equal(only_dv, dv)


@pytest.mark.parametrize("what,match", [("att", "att has"), ("starts", "starts has"), ("fit", "does not fit"),
                                        ("no_att", "needs 'att'")])
def test_packed_training_rejects_bad_probabilities_starts_and_lengths(rng, what, match):
    q, k, v, offsets, starts, t, _ = training_case(rng)
    att = np.empty(F.attention_packed_probs_size(offsets, NH) + (1 if what == "att" else 0), dtype=np.float32)
    kw = dict(starts=starts[:-1] if what == "starts" else starts, seq_len=5 if what == "fit" else t,
              att=None if what == "no_att" else att)
    with pytest.raises(ValueError, match=match):
        F.attention_packed_forward(q, k, v, offsets, NH, P, SEED, OFFSET, **kw)
    if what in ("att", "starts", "fit"):
        with pytest.raises(ValueError, match=match):
            F.attention_packed_backward(q, q, k, v, att, offsets, NH, P, SEED, OFFSET, starts=kw["starts"],
                                        seq_len=kw["seq_len"], dq=np.zeros_like(q))


# -- dropout on rows of a larger array (a packed batch's hidden states) ------------------------------------------

def test_dropout_rows_draws_the_whole_arrays_mask_at_those_rows(rng):
    whole = f32(rng, 9, 6)
    rows = np.array([4, 0, 7, 8, 2], dtype=np.int64)
    want = F.dropout_forward(whole, P, SEED, OFFSET)[rows]
    got = F.dropout_rows_forward(np.ascontiguousarray(whole[rows]), rows, P, SEED, OFFSET)
    assert np.array_equal(got, want)
    assert_close(got, R.dropout_rows_forward(whole[rows].astype(np.float64), rows, P, SEED, OFFSET), 1e-6, 0, "ref")
    dout = f32(rng, 9, 6)
    dwhole = np.zeros_like(whole)
    F.dropout_backward(dout, P, SEED, OFFSET, dx=dwhole)
    drows = np.ones((5, 6), dtype=np.float32)  # accumulates
    F.dropout_rows_backward(np.ascontiguousarray(dout[rows]), rows, P, SEED, OFFSET, dx=drows)
    assert np.array_equal(drows, dwhole[rows] + 1.0)


def test_dropout_rows_rejects_negative_rows_and_a_row_count_mismatch(rng):
    x = f32(rng, 3, 4)
    with pytest.raises(ValueError, match="negative"):
        F.dropout_rows_forward(x, np.array([0, -1, 2], dtype=np.int64), P)
    with pytest.raises(ValueError, match="rows"):
        F.dropout_rows_forward(x, np.array([0, 1], dtype=np.int64), P)
