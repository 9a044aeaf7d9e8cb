"""benchmarks/bench_decode.py without timing: its workload's size, and the checks it runs before timing pass on
a tiny model and refuse a model whose weights differ from transformers'."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from peftc.models import GPT2Config, GPT2LMHeadModel
from tests.benchmark_scripts import load_benchmark

bench = load_benchmark("bench_decode")
TINY = dataclasses.replace(bench.Workload(), n_embd=16, n_layer=1, n_head=2, vocab_size=40, n_positions=16,
                           prompt_tokens=4, continuations=3, new_tokens=3, train_batch=2, train_seq=6, r=2)


def test_the_workload_is_a_gpt2_of_about_ten_million_parameters():
    w = bench.Workload()
    config = GPT2Config(vocab_size=w.vocab_size, n_positions=w.n_positions, n_embd=w.n_embd, n_layer=w.n_layer,
                        n_head=w.n_head)
    total = config.num_non_embedding_parameters() + (w.vocab_size + w.n_positions) * w.n_embd
    assert 9.5e6 < total < 10.5e6, total
    assert (w.continuations, w.new_tokens) == (256, 32)


def test_the_checks_before_timing_pass_on_equal_weights_and_fail_on_a_changed_one(tmp_path, torch):
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, TINY.vocab_size, (1, TINY.prompt_tokens)).astype(np.int64)
    ids = rng.integers(0, TINY.vocab_size, (TINY.train_batch, TINY.train_seq)).astype(np.int64)
    theirs = bench.write_hf_model(torch, TINY, tmp_path)
    ours = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert bench.check_decode(np, torch, ours, theirs, prompt, TINY.new_tokens)["greedy_tokens_equal"]
    lora, twin = bench.lora_pair(torch, TINY, tmp_path)
    assert bench.check_train(np, torch, lora, twin, ids)["worst_gradient_rel_err"] < 1e-3
    ours.transformer.h[0].mlp.c_fc.weight.data[0, 0] += 0.5
    with pytest.raises(RuntimeError, match="disagree before timing"):
        bench.check_decode(np, torch, ours, theirs, prompt, TINY.new_tokens)
    next(p for n, p in lora.named_parameters() if n.endswith("c_attn.lora_B")).data[0, 0] += 0.5
    with pytest.raises(RuntimeError, match="disagree before timing"):
        bench.check_train(np, torch, lora, twin, ids)
