"""Kernels the GPT-2 decoder adds: the tanh GELU ("gelu_new"). C against the NumPy reference, float64
finite differences and torch autograd."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad


def test_gelu_tanh_matches_reference_and_finite_differences(rng):
    x, dout = f32(rng, 3, 7, scale=3.0), f32(rng, 3, 7)
    assert_close(F.gelu_tanh_forward(x), R.gelu_tanh_forward(x.astype(np.float64)), 1e-6, 1e-6, "gelu_tanh")
    x64 = x.astype(np.float64)
    loss = lambda: float(np.sum(R.gelu_tanh_forward(x64) * dout))  # noqa: E731
    start = f32(rng, *x.shape)  # the backward adds into dx
    dx = start.copy()
    F.gelu_tanh_backward(dout, x, dx=dx)
    assert_close(dx, start + numerical_grad(loss, x64), 1e-4, 1e-5, "dx")


def test_gelu_tanh_matches_torch_tanh_gelu_over_the_whole_range(rng, torch):
    x = np.concatenate([np.linspace(-12, 12, 2001), [-90.0, -30.0, 0.0, 30.0, 90.0]]).astype(np.float32)
    dout = f32(rng, x.size)
    start = f32(rng, x.size)
    dx = start.copy()
    F.gelu_tanh_backward(dout, x, dx=dx)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.gelu(xt, approximate="tanh")
    yt.backward(torch.tensor(dout))
    y = F.gelu_tanh_forward(x)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    assert_close(y, yt.detach().numpy(), 1e-6, 1e-6, "gelu_tanh")
    # torch's float32 backward computes 1 - tanh^2 by subtraction and is ~1e-6 off float64 near x = 5, where
    # the kernel (1 - g taken as e g) stays within 2e-7: torch within 3e-6, float64 within 3e-7
    assert_close(dx, start + xt.grad.numpy().astype(np.float64), 1e-5, 3e-6, "dx vs torch")
    ref = start.astype(np.float64)
    R.gelu_tanh_backward(dout.astype(np.float64), x.astype(np.float64), dx=ref)
    assert_close(dx, ref, 1e-6, 3e-7, "dx vs float64")


def test_gelu_tanh_differs_from_the_exact_gelu(rng):
    # the two forms differ by up to ~5e-4 near |x| = 2: a model on the wrong one fails the logits parity
    x = np.linspace(-3, 3, 61).astype(np.float32)
    gap = np.abs(F.gelu_tanh_forward(x) - F.gelu_forward(x)).max()
    assert 1e-4 < gap < 1e-3, gap


# ---- attention against a KV cache --------------------------------------------------------------------
@pytest.mark.parametrize("past, tq", [(0, 6), (5, 1), (3, 3)])
def test_cached_attention_equals_the_causal_block_rows(rng, past, tq):
    b, h, nh, tc = 2, 8, 2, 11
    q, k, v = (f32(rng, b, past + tq, h) for _ in range(3))
    full, _ = F.attention_forward(q, k, v, nh, None, True)
    kc, vc = f32(rng, b, tc, h), f32(rng, b, tc, h)  # rows past the length hold garbage the kernel must not read
    kc[:, :past + tq], vc[:, :past + tq] = k, v
    kc[:, past + tq:] = np.nan
    got = F.attention_cached_forward(np.ascontiguousarray(q[:, past:]), kc, vc, past + tq, nh)
    assert_close(got, full[:, past:], 1e-5, 1e-6, "cached vs full")
    ref = R.attention_cached_forward(q[:, past:].astype(np.float64), kc.astype(np.float64), vc.astype(np.float64),
                                     past + tq, nh)
    assert_close(got, ref, 1e-5, 1e-6, "cached vs reference")


@pytest.mark.parametrize("hs", [36, 72])
@pytest.mark.parametrize("tq", [1, 4, 5])
def test_cached_attention_of_wide_heads_equals_the_reference(rng, tq, hs):
    # head sizes past 4 vectors with a tail (AVX2: 32 + 4 and 2 x 32 + 8; AVX-512: 2 x 16 + 4 and 64 + 8):
    # decoding's row-by-row path (tq <= 4) and the blocked one (tq = 5) against float64
    b, nh, past, tc = 3, 2, 7, 14
    h = hs * nh
    q = f32(rng, b, tq, h)
    kc, vc = f32(rng, b, tc, h), f32(rng, b, tc, h)
    kc[:, past + tq:] = np.nan
    vc[:, past + tq:] = np.nan
    got = F.attention_cached_forward(q, kc, vc, past + tq, nh)
    ref = R.attention_cached_forward(q.astype(np.float64), kc.astype(np.float64), vc.astype(np.float64), past + tq, nh)
    assert_close(got, ref, 1e-5, 1e-6, "cached vs reference")


def test_cached_attention_refuses_a_length_outside_the_cache(rng):
    q, kc = f32(rng, 1, 2, 4), f32(rng, 1, 5, 4)
    with pytest.raises(ValueError, match="length = 1 must be at least TQ = 2"):
        F.attention_cached_forward(q, kc, kc.copy(), 1, 2)
    with pytest.raises(ValueError, match="at most TC = 5"):
        F.attention_cached_forward(q, kc, kc.copy(), 6, 2)


# ---- token sampling ----------------------------------------------------------------------------------
def test_sampling_filters_match_the_sorting_reference(rng):
    logits = f32(rng, 64, 23, scale=2.0)
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (1.0, 7, 0.6), (0.5, 1, 0.9),
                                      (2.0, 30, 0.3)]:
        tok, probs = F.sample_tokens(logits, temperature, top_k, top_p, seed=11, offset=4)
        want_tok, want = R.sample_tokens(logits, temperature, top_k, top_p, seed=11, offset=4)
        np.testing.assert_array_equal(probs > 0, want > 0, err_msg=f"kept sets at {temperature, top_k, top_p}")
        assert_close(probs, want, 1e-5, 1e-7, f"probs at {temperature, top_k, top_p}")
        np.testing.assert_array_equal(tok, want_tok)
        assert np.all(probs[np.arange(64), tok] > 0)


def test_sampling_filters_match_transformers_warpers(rng, torch):
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    logits = f32(rng, 32, 41, scale=3.0)
    for temperature, top_k, top_p in [(0.8, 6, 1.0), (1.0, 0, 0.7), (1.5, 10, 0.5)]:
        scores = TemperatureLogitsWarper(temperature)(None, torch.tensor(logits))
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1.0:
            scores = TopPLogitsWarper(top_p)(None, scores)
        want = torch.softmax(scores, dim=-1).numpy()
        _, probs = F.sample_tokens(logits, temperature, top_k, top_p)
        np.testing.assert_array_equal(probs > 0, want > 0)
        assert_close(probs, want, 1e-5, 1e-7, "probs vs transformers")


def test_sampled_frequencies_follow_the_filtered_distribution():
    p = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    logits = np.tile(np.log(p).astype(np.float32), (40000, 1))
    for top_k, top_p in [(0, 1.0), (3, 1.0), (0, 0.75)]:
        tok, probs = F.sample_tokens(logits, 1.0, top_k, top_p, seed=5)
        expected = probs[0] * len(tok)
        counts = np.bincount(tok, minlength=p.size)
        kept = expected > 0
        assert np.all(counts[~kept] == 0)
        chi2 = float((((counts - expected) ** 2)[kept] / expected[kept]).sum())
        assert chi2 < 25.0, (top_k, top_p, chi2, counts)  # the 0.999 quantile for <= 5 degrees of freedom is 20.5
    assert kept.sum() == 3  # top_p = 0.75 keeps 0.4 + 0.25 + 0.15 (0.65 alone is short of 0.75)


def test_sampling_is_seeded_and_greedy_at_zero_temperature(rng):
    logits = f32(rng, 50, 9)
    a, _ = F.sample_tokens(logits, 1.0, seed=3)
    np.testing.assert_array_equal(a, F.sample_tokens(logits, 1.0, seed=3)[0])
    assert (a != F.sample_tokens(logits, 1.0, seed=4)[0]).any()
    np.testing.assert_array_equal(F.sample_tokens(logits[10:], 1.0, seed=3, offset=10)[0], a[10:])
    greedy, probs = F.sample_tokens(logits, 0.0)
    np.testing.assert_array_equal(greedy, logits.argmax(axis=1))
    assert np.all(probs.sum(axis=1) == 1.0)


def test_sampling_refuses_nan_logits_and_bad_settings(rng):
    logits = f32(rng, 3, 5)
    bad = logits.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="sample_tokens"):
        F.sample_tokens(bad)
    with pytest.raises(ValueError, match="top_p"):
        F.sample_tokens(logits, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        F.sample_tokens(logits, temperature=-1.0)
    masked = logits.copy()
    masked[:, :4] = -np.inf  # -inf logits are masked tokens: the last one is certain
    np.testing.assert_array_equal(F.sample_tokens(masked, 1.0, seed=1)[0], [4, 4, 4])
    wide = f32(rng, 2, 37)  # 37 = two blocks of 16 lanes and a tail of 5: a bad value anywhere is seen
    for where, value in [(0, np.nan), (20, np.inf), (36, np.nan), (35, np.inf)]:
        row = wide.copy()
        row[1, where] = value
        with pytest.raises(ValueError, match="sample_tokens"):
            F.sample_tokens(row, 1.0)
    every = np.full((1, 37), -np.inf, np.float32)
    with pytest.raises(ValueError, match="sample_tokens"):
        F.sample_tokens(every, 1.0)


def test_sampling_a_wide_vocabulary_matches_the_reference_and_never_draws_what_is_87_nats_down(rng):
    logits = f32(rng, 48, 300, scale=3.0)
    greedy_row = np.full(300, -5.0, np.float32)
    greedy_row[[12, 250]] = 4.0  # a tie for the largest logit: greedy takes the first
    logits[0] = greedy_row
    far = np.r_[0:10, 290:300]  # in the first block of lanes and in the tail
    logits[:, far] -= 120.0  # e^-120 relative to the top: probability 0, never drawn
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.8, 40, 1.0), (1.2, 0, 0.9)]:
        tok, probs = F.sample_tokens(logits, temperature, top_k, top_p, seed=5, offset=2)
        want_tok, want = R.sample_tokens(logits, temperature, top_k, top_p, seed=5, offset=2)
        assert_close(probs, want, 1e-5, 1e-7, f"probs at {temperature, top_k, top_p}")
        np.testing.assert_array_equal(tok, want_tok)
        assert np.all(probs[:, far] == 0.0) and not np.isin(tok, far).any()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    greedy, probs = F.sample_tokens(logits, 0.0)
    assert greedy[0] == 12 and probs[0, 12] == 1.0 and probs.sum() == 48
    np.testing.assert_array_equal(greedy[1:], logits[1:].argmax(axis=1))
