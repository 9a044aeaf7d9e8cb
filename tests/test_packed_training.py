"""Training on the real tokens only: a BertModel training step on a padded batch runs packed (no padding rows)
and gives the padded step's loss and parameter gradients, dropout on (the same masks, drawn per padded
position), for full fine-tuning, LoRA / SoRA / Hydra / Bone adapters, mixed-adapter batches, mean pooling
and the [CLS] read-out, right and left padding."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import BoneConfig, HydraConfig, LoraConfig, SoraConfig
from peftc.models import BertModel
from peftc.models.bert import BertConfig
from peftc.nn import MeanPooling
from peftc.nn.packed_tokens import PackedTokens
from peftc.tuners import get_peft_model

from .conftest import assert_close

CFG = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
           max_position_embeddings=16, type_vocab_size=2, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
RTOL, ATOL = 2e-4, 2e-6  # float32: the packed and padded sums run in different orders


def state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights of a tiny BERT (LayerNorms off their defaults, so their gradients are tested)."""
    rng = np.random.default_rng(seed)
    cfg = BertConfig.from_dict(CFG)
    h, inter = cfg.hidden_size, cfg.intermediate_size
    w = lambda *s: (0.3 * rng.standard_normal(s)).astype(np.float32)  # noqa: E731
    sd = {"embeddings.word_embeddings.weight": w(cfg.vocab_size, h),
          "embeddings.position_embeddings.weight": w(cfg.max_position_embeddings, h),
          "embeddings.token_type_embeddings.weight": w(cfg.type_vocab_size, h),
          "embeddings.LayerNorm.weight": 1 + w(h), "embeddings.LayerNorm.bias": w(h)}
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for name, (o, n) in {"attention.self.query": (h, h), "attention.self.key": (h, h),
                             "attention.self.value": (h, h), "attention.output.dense": (h, h),
                             "intermediate.dense": (inter, h), "output.dense": (h, inter)}.items():
            sd[p + name + ".weight"], sd[p + name + ".bias"] = w(o, n), w(o)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = 1 + w(h), w(h)
    return sd


def model(config=None, bert_config=CFG, **adapters):
    """A tiny BERT in training mode, fully trainable, or frozen with an adapter (its parameters randomised)."""
    m = BertModel.from_state_dict(BertConfig.from_dict(bert_config), state_dict(), seed=5)
    if config is not None:
        m.requires_grad_(False)
        m = get_peft_model(m, config)
        for name, extra in adapters.items():
            m.add_adapter(name, extra)
        rng = np.random.default_rng(1)
        for _, p in m.named_parameters():
            if p.requires_grad:
                p.data[...] = (0.2 * rng.standard_normal(p.data.shape)).astype(np.float32)
        for name in adapters:  # add_adapter leaves the new adapter's parameters frozen: train them too
            for p in m.get_adapter_parameters(name):
                p.requires_grad = True
                p.data[...] = (0.2 * rng.standard_normal(p.data.shape)).astype(np.float32)
    m.train()
    return m


def batch(left: bool = False):
    rng = np.random.default_rng(3)
    lengths = [7, 3, 1, 5, 7]
    mask = np.zeros((len(lengths), 7), dtype=np.int64)
    for b, n in enumerate(lengths):
        if left:
            mask[b, 7 - n:] = 1
        else:
            mask[b, :n] = 1
    ids = np.where(mask == 1, rng.integers(1, CFG["vocab_size"], mask.shape), 0).astype(np.int64)
    types = (np.arange(7)[None, :] >= 3).astype(np.int64).repeat(len(lengths), axis=0)
    return ids, mask, types


def step(m, ids, mask, types, skip_padding, readout="mean", **kw):
    """One forward and backward; returns (loss, {parameter name: gradient})."""
    for _, p in m.named_parameters():
        if p.grad is not None:
            p.grad.fill(0.0)
    out = m(ids, mask, types, skip_padding=skip_padding, **kw)
    w = np.random.default_rng(9).standard_normal(out.shape[::2]).astype(np.float32)  # (B, H)
    if readout == "mean":
        pool = MeanPooling()
        pooled = pool(out, mask)
        loss = float((w * pooled).sum())
        m.backward(pool.backward(w))
    else:  # [CLS]: the first position (a real token with right padding)
        loss = float((w * out[:, 0]).sum())
        dout = np.zeros_like(out)
        dout[:, 0] = w
        m.backward(dout)
    return loss, {n: p.grad.copy() for n, p in m.named_parameters() if p.requires_grad}


def assert_same_step(m_packed, m_padded, *args, **kw):
    lp, gp = step(m_packed, *args, None, **kw)
    lq, gq = step(m_padded, *args, False, **kw)
    assert_close(lp, lq, RTOL, ATOL, "loss")
    assert gp.keys() == gq.keys() and gp
    for name in gp:
        assert np.abs(gq[name]).max() > 0, f"{name}: the padded step gives no gradient, the test would be vacuous"
        assert_close(gp[name], gq[name], RTOL, ATOL, name)


@pytest.mark.parametrize("left", [False, True])
def test_packed_training_step_equals_the_padded_step_with_dropout(left):
    assert_same_step(model(), model(), *batch(left))


def test_packed_training_step_equals_the_padded_step_through_the_cls_readout():
    assert_same_step(model(), model(), *batch(), readout="cls")


def test_packed_training_is_the_default_and_runs_the_layers_on_the_real_tokens():
    m = model()
    ids, mask, types = batch()
    seen = []
    layer = m.get_submodule("encoder.layer.1.intermediate.dense")
    original = layer.forward
    layer.forward = lambda x: (seen.append(x.shape), original(x))[1]
    out = m(ids, mask, types)
    assert seen == [(int(mask.sum()), CFG["hidden_size"])]
    assert np.all(out[mask == 0] == 0.0)
    m.eval()
    m(ids, mask, types)  # eval mode: padded by default (outputs at the padding as Hugging Face's)
    assert seen[-1] == (*ids.shape, CFG["hidden_size"])


@pytest.mark.parametrize("config", [LoraConfig(r=4, target_modules=["query", "value", "output.dense"]),
                                    SoraConfig(r=4, target_modules=["query", "value"]),
                                    HydraConfig(r=2, target_modules=["output.dense"]),
                                    BoneConfig(r=4, target_modules=["query", "intermediate.dense"])],
                         ids=["lora", "sora", "hydra", "bone"])
def test_packed_adapter_training_step_equals_the_padded_step(config):
    assert_same_step(model(config), model(config), *batch())


def test_packed_mixed_adapter_step_equals_the_padded_step_and_each_token_runs_its_rows_adapter():
    cfg = LoraConfig(r=4, target_modules=["query", "value"])
    other = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"])
    names = ["default", "b", "__base__", "b", "default"]
    assert_same_step(model(cfg, b=other), model(cfg, b=other), *batch(), adapter_names=names)
    m = model(cfg, b=other)
    m.eval()
    ids, mask, types = batch()
    one = [m(ids[i:i + 1], mask[i:i + 1], types[i:i + 1], skip_padding=True, adapter_names=[names[i]])
           for i in range(len(names))]
    mixed = m(ids, mask, types, skip_padding=True, adapter_names=names)
    for i in range(len(names)):
        assert_close(mixed[i], one[i][0], 1e-5, 1e-6, f"row {i}")


def test_packed_mixed_adapter_batch_rejects_adapter_names_of_the_wrong_length():
    m = model(LoraConfig(r=4, target_modules=["query"]))
    ids, mask, types = batch()
    with pytest.raises(ValueError, match="adapter_names"):
        m(ids, mask, types, adapter_names=["default"] * 4)


def test_a_gradient_at_the_padding_changes_nothing_as_the_outputs_there_are_constant_zeros():
    m = model()
    ids, mask, types = batch()
    generator = m.encoder.layer[0].attention.self.generator
    state = generator.state_dict()

    def grads(dout):
        generator.load_state_dict(state)  # the same dropout masks
        m.zero_grad()
        m(ids, mask, types)
        m.backward(dout)
        return {n: p.grad.copy() for n, p in m.named_parameters()}

    dout = np.zeros((*ids.shape, CFG["hidden_size"]), dtype=np.float32)
    dout[:, 0] = np.random.default_rng(9).standard_normal(dout.shape[::2])
    want, got = grads(dout), grads((dout + 5.0 * (mask == 0)[..., None]).astype(np.float32))
    for name in want:
        assert np.array_equal(got[name], want[name]), name


def test_a_mask_with_holes_trains_padded_and_refuses_an_explicit_skip_padding():
    m = model()
    ids, mask, types = batch()
    mask[0, 3] = 0  # a hole inside row 0
    assert not PackedTokens(mask).contiguous
    out = m(ids, mask, types)
    assert out.shape == (*ids.shape, CFG["hidden_size"]) and np.any(out[0, 3] != 0)  # the padded forward ran
    with pytest.raises(ValueError, match="holes"):
        m(ids, mask, types, skip_padding=True)


def test_an_eval_skip_padding_forward_refuses_a_later_backward():
    m = model()
    m.eval()
    ids, mask, types = batch()
    out = m(ids, mask, types, skip_padding=True)
    with pytest.raises(RuntimeError, match="skip_padding"):
        m.backward(np.zeros_like(out))
    m(ids, mask, types)  # a padded forward allows backward again
    m.backward(np.zeros_like(out))


def test_the_backward_stops_at_the_lowest_block_with_a_trainable_parameter():
    m = model(LoraConfig(r=4, target_modules=["query", "value"], layers_to_transform=[1]))
    bert = m.get_base_model()
    calls = []
    block0 = bert.encoder.layer[0]
    original = block0.backward
    block0.backward = lambda *a, **kw: (calls.append(1), original(*a, **kw))[1]
    generator = block0.attention.self.generator  # the model's one generator: both steps draw the same dropout
    state = generator.state_dict()
    _, grads = step(m, *batch(), None)
    assert calls == [], "block 0 holds nothing trainable and the embeddings are frozen: its backward must not run"
    block0.attention.output.LayerNorm.weight.requires_grad = True  # now block 0 must run
    generator.load_state_dict(state)
    _, with_block0 = step(m, *batch(), None)
    assert calls == [1]
    for name, g in grads.items():
        assert_close(with_block0[name], g, 1e-6, 1e-7, name)


@pytest.mark.parametrize("train_b,b_layers,dropout,shared", [(True, [1], 0.0, True), (False, [0, 1], 0.0, False),
                                                             (True, [1], 0.1, False)],
                         ids=["adapters_on_block_1", "a_frozen_adapter_on_block_0", "dropout_on"])
def test_identical_rows_run_the_frozen_blocks_below_the_adapters_once_with_the_same_step(train_b, b_layers, dropout,
                                                                                          shared):
    no_dropout = dict(CFG, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    cfg = LoraConfig(r=4, target_modules=["query", "value"], layers_to_transform=[1])
    other = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], layers_to_transform=b_layers)
    ids, mask, types = (np.concatenate([a, a]) for a in batch())  # two adapters, the same five glosses
    names = ["default"] * 5 + ["b"] * 5
    results = []
    for share in (True, False):
        m = model(cfg, no_dropout, b=other)
        for p in m.get_adapter_parameters("b"):  # a frozen adapter still gives its rows other outputs
            p.requires_grad = train_b
        bert = m.get_base_model()
        if not share:  # the reference: every row through every block
            bert._shared_blocks = lambda: 0
        seen = []
        for j in (0, 1):
            layer = bert.encoder.layer[j].intermediate.dense
            layer.forward = (lambda f, j: lambda x: (seen.append((j, x.shape[0])), f(x))[1])(layer.forward, j)
        results.append((step(m, ids, mask, types, None, adapter_names=names), seen))
    (loss, grads), seen = results[0]
    (want_loss, want), seen_all = results[1]
    real = int(mask.sum())
    assert seen == [(0, real // 2 if shared else real), (1, real)] and seen_all == [(0, real), (1, real)]
    assert_close(loss, want_loss, RTOL, ATOL, "loss")
    for name in want:
        assert np.abs(want[name]).max() > 0, name
        assert_close(grads[name], want[name], RTOL, ATOL, name)
