"""Running the top blocks on cached inputs: BertModel.hidden_states_before + top_blocks give the full forward's
outputs and gradients, and the FSCIL learner's cached sub-network tuning equals the uncached one."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from peftc.fscil import FSCILLearner, Session, Tricks
from peftc.fscil.block_cache import FrozenBlockCache
from peftc.fscil.learner import subnet_step
from peftc.nn.loss import CrossEntropyLoss
from peftc.random import Generator
from peftc.tuners import LoraConfig, get_peft_model
from tests.conftest import assert_close
from tests.fscil_toys import ToySplit, tiny_bert, tokenize
from tests.test_fscil_protocol import CONFIG

TEXTS = ["key1 filler3 filler4 mark1 filler5", "key2 mark2 filler1 filler2 filler7 filler8 filler9",
         "key1 mark1", "key3 filler2 mark3 filler6 filler0"]


def _lora_bert():
    """The tiny 2-block BERT with LoRA on every block (random B, so the adapters act) and no dropout."""
    model = get_peft_model(tiny_bert(3), LoraConfig(r=2, lora_alpha=4.0, target_modules=["query", "value", "dense"]),
                           generator=Generator(1))
    rng = np.random.default_rng(2)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data[...] = rng.standard_normal(p.shape).astype(np.float32) * 0.3
    return model, model.get_base_model()


def _grads(model) -> dict[str, np.ndarray]:
    return {n: p.grad.copy() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("start", [0, 1, 2])
def test_top_blocks_on_cached_states_give_the_full_forward_outputs_and_gradients(start):
    model, bert = _lora_bert()
    tok = tokenize(TEXTS)
    ids, mask = tok["input_ids"], tok["attention_mask"]
    real = mask.astype(bool)
    bert.eval()
    full = bert(ids, mask)
    hidden = bert.hidden_states_before(start, ids, mask)
    assert hidden.shape == full.shape and not hidden[~real].any()  # padding skipped: zero there
    top = bert.top_blocks(start)
    own = {id(p) for p in top.parameters()}  # the encoder's own top blocks, adapters included, not copies
    assert own == {id(p) for n, p in bert.named_parameters() if any(f"layer.{i}." in n for i in range(start, 2))}
    assert_close(top(hidden, mask)[real], full[real], 1e-5, 1e-5, f"outputs from block {start}")

    dy = np.random.default_rng(4).standard_normal(full.shape).astype(np.float32) * real[..., None]
    bert.train()  # no dropout in this model: the training forward is the eval one, with caches
    model.zero_grad()
    bert(ids, mask)
    bert.backward(dy)
    full_grads = _grads(model)
    upper = {n for n in full_grads if any(f"encoder.layer.{i}." in n for i in range(start, 2))}
    model.zero_grad()
    kept = hidden.copy()
    top(hidden, mask)
    assert top.backward(dy, input_grad=False) is None
    np.testing.assert_array_equal(hidden, kept)  # cached states are read, never written: reused every step
    got = _grads(model)
    for name, g in got.items():
        if name in upper:
            assert_close(g, full_grads[name], 2e-4, 1e-5, name)
        else:  # below block `start`, and the embeddings: frozen in the cached path
            assert not g.any(), name
    assert len(upper) == 10 * (2 - start) and all(np.abs(full_grads[n]).max() > 0 for n in upper)


def test_the_gradient_of_the_cached_states_matches_a_directional_difference():
    _, bert = _lora_bert()
    tok = tokenize(TEXTS)
    mask = tok["attention_mask"]
    bert.eval()
    hidden = bert.hidden_states_before(1, tok["input_ids"], mask).astype(np.float64)
    rng = np.random.default_rng(5)
    dy = (rng.standard_normal((*mask.shape, hidden.shape[-1])) * mask[..., None]).astype(np.float32)
    direction = rng.standard_normal(hidden.shape) * mask[..., None]
    top = bert.top_blocks(1)
    bert.train()
    top(hidden.astype(np.float32), mask)
    dx = np.ones(hidden.shape, np.float32)
    assert top.backward(dy, dx=dx) is dx  # accumulated into dx
    analytic = float(((dx - 1.0) * direction).sum())

    def value(sign):
        return float((top(np.float32(hidden + sign * 1e-2 * direction), mask) * dy).sum(dtype=np.float64))

    numeric = (value(1) - value(-1)) / 2e-2
    assert abs(analytic - numeric) <= 1e-2 * abs(numeric) + 1e-3, (analytic, numeric)


def test_bad_block_index_and_training_mode_are_refused():
    _, bert = _lora_bert()
    tok = tokenize(TEXTS)
    for bad in (-1, 3, 1.0, True):
        with pytest.raises(ValueError, match=r"block must be an integer in \[0, 2\]"):
            bert.top_blocks(bad)
    bert.train()
    with pytest.raises(ValueError, match="call eval"):
        bert.hidden_states_before(1, tok["input_ids"], tok["attention_mask"])
    with pytest.raises(TypeError, match="hidden_states must be a float32"):
        bert.top_blocks(1)(np.zeros((2, 3, 16)), None)


def test_the_cache_rebuilds_each_text_in_any_order_and_computes_it_once():
    _, bert = _lora_bert()
    bert.eval()
    cache = FrozenBlockCache(bert, 1, tokenize, batch_size=3)
    hidden, mask = cache.inputs([TEXTS[2], TEXTS[0], TEXTS[2]])
    assert len(cache) == 2
    tok = tokenize([TEXTS[2], TEXTS[0]])
    want = bert.hidden_states_before(1, tok["input_ids"], tok["attention_mask"])
    np.testing.assert_array_equal(mask[:2], tok["attention_mask"])
    assert_close(hidden[:2], want, 1e-6, 1e-6, "cached states")
    np.testing.assert_array_equal(hidden[2], hidden[0])
    cache.bert = None  # nothing is recomputed for texts already cached
    cache.inputs([TEXTS[0], TEXTS[2]])


def test_cached_subnet_tuning_equals_the_full_forward_tuning():
    """The learner's subnet step on cached states: same loss and gradients as through the whole encoder (no
    dropout anywhere, so the two paths compute the same function), and features equal the uncached ones."""
    split = ToySplit(seed=6)
    config = dataclasses.replace(CONFIG, base_epochs=1, subnet_steps=2, subnet_lr=5e-3)
    learner = FSCILLearner(tiny_bert(0), tokenize, Tricks.only("subnet"), config)
    learner.fit_base(Session.from_split(split.base_train))
    learner.add_session(Session.from_split(split.sessions[0]))
    cache = learner._frozen_cache()
    assert cache is not None and cache.start == 1 and len(cache) == len(set(split.sessions[0].texts))
    texts = split.test.texts
    assert_close(learner.features(texts), learner.features(texts, cache=False), 1e-5, 1e-5, "features")

    net = learner.network
    params = [p for n, p in learner.model.named_parameters() if ".lora_" in n and "encoder.layer.1." in n]
    targets = (learner.classifier.unit_prototypes() * 8.0).astype(np.float32)
    shots = split.sessions[1]
    y = np.arange(len(shots.texts)) % targets.shape[0]
    tok = tokenize(shots.texts)
    for p in params:
        p.requires_grad = True
    net.train()
    results = []
    for states in (None, cache.inputs(shots.texts)):
        for p in params:
            p.grad_buffer().fill(0.0)
        loss = subnet_step(net, tok, targets, y, CrossEntropyLoss(), states, cache if states else None)
        results.append((loss, [p.grad.copy() for p in params]))
    (full_loss, full_grads), (cached_loss, cached_grads) = results
    assert cached_loss == pytest.approx(full_loss, rel=1e-5)
    for g, want in zip(cached_grads, full_grads):
        assert_close(g, want, 2e-4, 1e-6, "subnet gradient")
    assert max(np.abs(g).max() for g in full_grads) > 1e-4
