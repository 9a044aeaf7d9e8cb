"""multi_adapter_work: the flops of N adapters trained separately and together, checked against hand counts and
against the products a training step of a tiny BERT actually runs (the BLAS accounting in peftc_sgemm)."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import _C
from peftc.models import BertModel, SentenceClassifier
from peftc.models.bert import BertConfig
from peftc.multi_adapter_bound import adapter_placement, multi_adapter_work
from peftc.random import Generator
from peftc.tuners import LoraConfig, get_peft_model

from .test_packed_training import CFG, state_dict

TINY = BertConfig(hidden_size=4, num_hidden_layers=2, intermediate_size=6)
TOP_QUERY = {1: {"query": 2}}


def test_work_of_a_top_block_adapter_matches_the_hand_count():
    # per block and token row: q, k, v, attention output 2*4*4 each, intermediate and output 2*4*6 each: 224;
    # rows of 3 and 1 tokens: T = 4, sum n^2 = 10; attention core forward 4 H sum n^2 = 160 per block
    bound = multi_adapter_work(TINY, [TOP_QUERY] * 2, [[3, 1], [3, 1]], shared_inputs=True)
    one_forward = 2 * 224 * 4 + 2 * 4 * 2 * (4 + 4)          # two blocks + the adapter x A^T, u B^T
    # backward, block 1 only: attention output, intermediate, output input gradients (no q, k, v ones);
    # the adapter: dy B, dB, dA (its input gradient is not needed); attention core: dS and dQ only
    one_backward = (2 * 4 * (16 + 24 + 24)) + 3 * (2 * 4 * 2 * 4)
    assert bound.separate.gemm_forward == 2 * one_forward
    assert bound.separate.gemm_backward == bound.together.gemm_backward == 2 * one_backward
    assert bound.separate.attention_forward == 2 * 2 * 160
    assert bound.separate.attention_backward == bound.together.attention_backward == 2 * (2 * 2 * 4 * 10)
    # together, identical rows: block 0 and block 1's q, k, v products once, the rest of block 1 twice
    assert bound.together.gemm_forward == 224 * 4 + 3 * 32 * 4 + 2 * (32 + 48 + 48) * 4 + 2 * 2 * 4 * 2 * 8
    assert bound.together.attention_forward == 160 + 2 * 160
    assert bound.ratio == pytest.approx((2 * one_forward + 2 * one_backward + 640 + 320)
                                        / (bound.together.gemm_forward + 2 * one_backward + 480 + 320))
    # sharing whole blocks only: block 1 twice
    block = multi_adapter_work(TINY, [TOP_QUERY] * 2, [[3, 1], [3, 1]], shared_inputs=True, sharing="block")
    assert block.together.gemm_forward == 224 * 4 + 2 * 224 * 4 + 2 * 2 * 4 * 2 * 8
    # a head of 3 labels per adapter: 2 B H C forward, input and weight gradients backward
    head = multi_adapter_work(TINY, [TOP_QUERY] * 2, [[3, 1], [3, 1]], shared_inputs=True, num_labels=3)
    assert head.separate.gemm_forward - bound.separate.gemm_forward == 2 * (2 * 2 * 4 * 3)
    assert head.together.gemm_backward - bound.together.gemm_backward == 2 * (4 * 2 * 4 * 3)


def test_different_inputs_share_nothing_and_the_backward_stops_at_the_first_adapted_layer():
    lowest_ffn = {0: {"output": 1}}
    a = multi_adapter_work(TINY, [lowest_ffn] * 2, [[3, 1], [2, 2]], shared_inputs=False)
    assert a.ratio == 1.0 and a.separate == a.together
    # block 0's backward: the output layer's adapter (dy B, dB, dA: 2 * 4 * 1 * (4 + 4 + 6)) and nothing below it;
    # block 1: every input gradient (224 per row) and the attention core (8 H sum n^2)
    assert a.separate.gemm_backward == 2 * 4 * 1 * 14 + 224 * 4 + 2 * 4 * 1 * 14 + 224 * 4
    assert a.separate.attention_backward == 8 * 4 * 10 + 8 * 4 * 8


def test_bad_placements_and_lengths_are_refused():
    with pytest.raises(ValueError, match="block 2"):
        multi_adapter_work(TINY, [{2: {"query": 2}}], [[3]])
    with pytest.raises(ValueError, match="'dense'"):
        multi_adapter_work(TINY, [{1: {"dense": 2}}], [[3]])
    with pytest.raises(ValueError, match="the lengths lists differ"):
        multi_adapter_work(TINY, [TOP_QUERY] * 2, [[3], [2]], shared_inputs=True)
    with pytest.raises(ValueError, match="one entry per adapter"):
        multi_adapter_work(TINY, [TOP_QUERY] * 2, [[3]])


def _classifier(layers, *ranks):
    cfg = BertConfig.from_dict({**CFG, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    base = SentenceClassifier(BertModel.from_state_dict(cfg, state_dict(), seed=5), 3, generator=Generator(2))
    model = None
    for k, r in enumerate(ranks):
        config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["query", "value"], layers_to_transform=layers,
                            modules_to_save=["classifier"])
        if model is None:
            model = get_peft_model(base, config, adapter_name=f"a{k}", generator=Generator(k))
        else:
            model.add_adapter(f"a{k}", config, generator=Generator(k))
    return model.train()


def _batch(lengths, seed):
    mask = np.zeros((len(lengths), max(lengths)), dtype=np.int64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    ids = np.where(mask == 1, np.random.default_rng(seed).integers(1, CFG["vocab_size"], mask.shape), 0)
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask}


def _gemm_flops(step) -> int:
    _C.sgemm_profile(True)
    try:
        step()
        return _C.sgemm_profile_read()[1]
    finally:
        _C.sgemm_profile(False)


@pytest.mark.parametrize("layers,shared", [(None, False), ([1], True)], ids=["all_blocks", "top_block_same_rows"])
def test_the_counted_products_are_those_a_training_step_runs(layers, shared):
    from peftc.multi_adapter_train import stack_batches

    model = _classifier(layers, 2, 3)
    names = ["a0", "a1"]
    batches = [_batch([5, 2, 7], 1), _batch([5, 2, 7] if shared else [3, 6], 1 if shared else 2)]
    lengths = [b["attention_mask"].sum(axis=1).tolist() for b in batches]
    placements = [adapter_placement(model, n) for n in names]
    assert placements[1] == {b: {"query": 3, "value": 3} for b in (layers or [0, 1])}

    def separate():
        for name, b in zip(names, batches):
            model.set_adapter(name)
            out = model.forward(b)
            model.backward(np.ones_like(out))

    def together():
        for name in names:
            for p in model.get_adapter_parameters(name):
                p.requires_grad = True
        joint = stack_batches(batches)
        out = model.forward(joint, adapter_names=[n for n, b in zip(names, batches) for _ in b["input_ids"]])
        model.backward(np.ones_like(out))

    counted = multi_adapter_work(BertConfig.from_dict(CFG), placements, lengths, shared_inputs=shared,
                                 num_labels=3)
    assert _gemm_flops(separate) == counted.separate.gemm
    assert _gemm_flops(together) == counted.together.gemm


def test_layers_given_identical_rows_multiply_the_distinct_rows_once_with_the_same_outputs():
    from peftc.nn import Linear, LoraLinear
    from peftc.nn.row_adapters import RowAdapters
    from peftc.nn.shared_rows import shared_input_rows

    rng = np.random.default_rng(4)
    distinct = rng.standard_normal((3, 8)).astype(np.float32)
    source = np.array([0, 1, 2, 1, 0, 2])
    x = distinct[source]
    plain = Linear(8, 5, generator=Generator(1))
    lora = LoraLinear(Linear(8, 5, generator=Generator(2)), r=2, init_lora_weights=False, generator=Generator(3))
    lora.add_adapter("b", r=3, init_lora_weights=False, generator=Generator(4))
    mixed = RowAdapters.from_names(["default", "b", "__base__", "b", "default", "default"])

    def run(layer, rows):
        layer.row_adapters = rows
        try:
            return layer.forward(x)
        finally:
            layer.row_adapters = None

    for layer, rows in ((plain, None), (lora, None), (lora, mixed)):
        want = run(layer, rows)
        with shared_input_rows(x, distinct, source):
            flops = _gemm_flops(lambda: run(layer, rows))
            got = run(layer, rows)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        adapters = 0 if layer is plain else (2 * 6 * 2 * 13 if rows is None else 2 * 3 * 2 * 13 + 2 * 2 * 3 * 13)
        assert flops == 2 * 3 * 8 * 5 + adapters  # the frozen product on the 3 distinct rows, not the 6
    with shared_input_rows(x, distinct, source):  # another array with the same values runs as usual
        assert _gemm_flops(lambda: plain.forward(x.copy())) == 2 * 6 * 8 * 5


def test_lora_mixed_forward_without_weight_adds_the_adapters_to_the_given_base_output():
    from peftc import functional as F
    from peftc import reference as R

    rng = np.random.default_rng(6)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((5, 4), (3, 4), (3,)))
    a, bm = [rng.standard_normal((2, 4)).astype(np.float32)], [rng.standard_normal((3, 2)).astype(np.float32)]
    idx, scale = np.array([0, -1, 0, 0, -1]), np.float32([1.5])
    want, _ = R.lora_mixed_forward(x, w, b, a, bm, None, scale, idx)
    base = F.linear_forward(x, w, b)
    got, _ = F.lora_mixed_forward(x, None, None, a, bm, None, scale, idx, out=base)
    assert got is base
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(R.lora_mixed_forward(x, None, None, a, bm, None, scale, idx, out=F.linear_forward(
        x, w, b))[0], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="bias must be None"):
        F.lora_mixed_forward(x, None, b, a, bm, None, scale, idx, out=base)
    with pytest.raises(ValueError, match="needs out"):
        F.lora_mixed_forward(x, None, None, a, bm, None, scale, idx)


def test_lora_mixed_gathered_rows_is_the_largest_group_that_is_not_one_run():
    from peftc import functional as F

    rng = np.random.default_rng(8)
    for _ in range(200):
        k = int(rng.integers(1, 5))
        idx = rng.integers(-1, k, int(rng.integers(0, 12))) if rng.random() < 0.5 else \
            np.sort(rng.integers(-1, k, int(rng.integers(0, 12))))
        want = 0
        for a in range(k):
            rows = np.flatnonzero(idx == a)
            if rows.size and rows[-1] - rows[0] + 1 != rows.size:
                want = max(want, rows.size)
        assert F.lora_mixed_gathered_rows(idx, k) == want, idx
