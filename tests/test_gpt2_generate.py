"""Decoding with the GPT-2 decoder: the KV cache against a full recompute, greedy generation against
transformers' generate, seeded batch sampling of many continuations of one prompt, LoRA models decoding."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import LoraConfig, get_peft_model
from peftc.models import GPT2Config, GPT2LMHeadModel
from peftc.models.gpt2 import KVCache

from .conftest import assert_close

V, NPOS, H, L, NH = 29, 24, 16, 2, 4


def tiny(seed: int = 1) -> GPT2LMHeadModel:
    cfg = GPT2Config(vocab_size=V, n_positions=NPOS, n_embd=H, n_layer=L, n_head=NH)
    return GPT2LMHeadModel.from_config(cfg, seed=seed).eval()


@pytest.mark.parametrize("chunks", [[10], [4, 1, 1, 1, 1, 1, 1], [3, 5, 2]])
def test_kv_cache_logits_equal_the_full_recompute(rng, chunks):
    model = tiny()
    ids = rng.integers(0, V, (3, 10)).astype(np.int64)
    full = model(ids)
    cache = model.new_cache(3, 12)
    parts, start = [], 0
    for n in chunks:
        parts.append(model.forward_cached(np.ascontiguousarray(ids[:, start:start + n]), cache))
        start += n
    assert cache.length == 10
    assert_close(np.concatenate(parts, axis=1), full, 1e-5, 1e-6, "cached logits")


def test_repeated_cache_continues_each_prompt_row(rng):
    model = tiny()
    ids = rng.integers(0, V, (2, 5)).astype(np.int64)
    cache = model.new_cache(2, 8)
    model.forward_cached(ids, cache)
    many = cache.repeat(3)
    nxt = rng.integers(0, V, (6, 1)).astype(np.int64)
    got = model.forward_cached(nxt, many)[:, 0]
    want = model(np.concatenate([np.repeat(ids, 3, axis=0), nxt], axis=1))[:, -1]
    assert_close(got, want, 1e-5, 1e-6, "continuations")


def test_greedy_generation_matches_transformers(tmp_path, rng, torch):
    from transformers import GPT2LMHeadModel as HFModel

    model = tiny(seed=4)
    model.save_pretrained(tmp_path)
    ref = HFModel.from_pretrained(tmp_path).eval()
    prompt = rng.integers(0, V, (2, 4)).astype(np.int64)
    with torch.no_grad():
        want = ref.generate(torch.tensor(prompt), max_new_tokens=12, do_sample=False, pad_token_id=0).numpy()
    np.testing.assert_array_equal(model.generate(prompt, 12, do_sample=False), want)


def test_many_continuations_are_seeded_and_follow_the_next_token_distribution():
    model = tiny(seed=2)
    prompt = np.array([[3, 7, 1]], dtype=np.int64)
    out = model.generate(prompt, 4, num_return_sequences=2000, temperature=1.5, seed=9)
    assert out.shape == (2000, 7) and np.all(out[:, :3] == prompt)
    np.testing.assert_array_equal(out[:50], model.generate(prompt, 4, num_return_sequences=2000, temperature=1.5,
                                                           seed=9)[:50])
    assert len({tuple(r) for r in out}) > 600  # the rows are different continuations
    logits = model(prompt)[0, -1].astype(np.float64) / 1.5
    p = np.exp(logits - logits.max())
    p /= p.sum()
    expected = p * len(out)
    counts = np.bincount(out[:, 3], minlength=V)
    keep = expected >= 5
    chi2 = float((((counts - expected) ** 2)[keep] / expected[keep]).sum())
    assert chi2 < 60.0, chi2  # about the 0.999 quantile for 28 degrees of freedom
    second = model(np.array([[3, 7, 1, out[0, 3]]]))[0, -1]  # the second token comes from the cached forward
    rows = out[:, 3] == out[0, 3]
    top = int(np.argmax(second))
    assert np.mean(out[rows, 4] == top) > 0.5 * np.exp(second[top] / 1.5) / np.exp(second / 1.5).sum()


def test_top_k_one_is_greedy_and_eos_pads_finished_rows(rng):
    model = tiny()
    prompt = rng.integers(0, V, (1, 3)).astype(np.int64)
    greedy = model.generate(prompt, 6, do_sample=False)
    np.testing.assert_array_equal(model.generate(prompt, 6, num_return_sequences=5, top_k=1, seed=3),
                                  np.repeat(greedy, 5, axis=0))
    eos = int(greedy[0, 4])  # the second generated token
    out = model.generate(prompt, 6, do_sample=False, eos_token_id=eos)
    first = 3 + int(np.argmax(greedy[0, 3:] == eos))
    assert np.all(out[0, first:] == eos) and np.array_equal(out[0, :first], greedy[0, :first])


def test_a_lora_model_decodes_with_its_adapter(rng):
    model = get_peft_model(tiny(), LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True,
                                              init_lora_weights=False))
    base = model.get_base_model().eval()
    ids = rng.integers(0, V, (2, 6)).astype(np.int64)
    cache = base.new_cache(2, 6)
    assert_close(base.forward_cached(ids, cache), base(ids), 1e-5, 1e-6, "lora cached")
    assert np.abs(base(ids) - tiny()(ids)).max() > 1e-3


def test_decoding_refuses_bad_input(rng):
    model = tiny()
    with pytest.raises(ValueError, match="n_positions"):
        model.new_cache(1, NPOS + 1)
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="do not fit the cache"):
        model.forward_cached(np.zeros((1, 5), np.int64), cache)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(np.zeros((1, 2), np.int64), 0)
    with pytest.raises(ValueError, match="eval"):
        model.train().forward_cached(np.zeros((1, 2), np.int64), KVCache(L, 1, 4, H))
