"""Deep prompts on a frozen BERT: slot layout, pooling over text tokens only, the prompt gradient
against torch autograd and float32 finite differences, and no gradient into frozen weights."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc.models import BertModel
from peftc.nn import Module
from peftc.prompt import PromptedEncoder, insert_prompt_slots, phrase_prompts, twin_encoder
from peftc.testing.prompt_torch import torch_prompted_features

from .conftest import assert_close
from .test_bert import TINY as TINY_BERT

TINY = {**TINY_BERT, "num_hidden_layers": 3}  # depth 1 and 2 leave blocks unprompted

N_PROMPTS = 3


def tiny_text_batch(rng) -> dict[str, np.ndarray]:
    """Three sequences [CLS] w.. [SEP] pad.. with ids 1 = CLS, 2 = SEP, 0 = pad."""
    ids = rng.integers(3, TINY["vocab_size"], (3, 8)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    ids[:, 0] = 1
    for b in range(3):
        last = int(mask[b].sum()) - 1
        ids[b, last] = 2
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def tiny_pair(torch, tmp_path):
    """A random 3-block BERT saved by transformers and loaded by both sides from the same files."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(**TINY), add_pooling_layer=False)
    hf.save_pretrained(tmp_path)
    hf = transformers.BertModel.from_pretrained(tmp_path, add_pooling_layer=False, attn_implementation="eager")
    return hf.eval(), BertModel.from_pretrained(tmp_path)


def frozen_tiny(torch, tmp_path):
    hf, model = tiny_pair(torch, tmp_path)
    model.requires_grad_(False)
    return hf, model


def test_insert_prompt_slots_opens_slots_after_cls(rng):
    batch = tiny_text_batch(rng)
    out = insert_prompt_slots(batch, N_PROMPTS, np.array([7, 8, 9]))
    assert out["input_ids"].shape == (3, 8 + N_PROMPTS)
    assert (out["input_ids"][:, 1:1 + N_PROMPTS] == [7, 8, 9]).all()
    assert (out["input_ids"][:, 0] == 1).all()
    assert (out["input_ids"][:, 1 + N_PROMPTS:] == batch["input_ids"][:, 1:]).all()
    assert (out["attention_mask"][:, 1:1 + N_PROMPTS] == 1).all(), "the attention mask must cover the prompts"
    assert (out["pool_mask"][:, 1:1 + N_PROMPTS] == 0).all(), "pooling must skip the prompts"
    assert (out["pool_mask"].sum(1) == batch["attention_mask"].sum(1)).all()
    assert all(a.flags.c_contiguous and a.dtype == np.int64 for a in out.values())


def test_layer0_prompts_equal_frozen_model_on_phrase_pooled_over_text(rng, torch, tmp_path):
    # Depth-1 prompts set to a phrase's word embeddings reproduce the frozen model on
    # [CLS] phrase text [SEP], mean-pooled over the text tokens only.
    _, model = frozen_tiny(torch, tmp_path)
    batch = tiny_text_batch(rng)
    phrase = np.array([1, 11, 12, 13, 2], dtype=np.int64)
    enc = PromptedEncoder(twin_encoder(model), phrase_prompts(model, phrase, 1))
    wide = insert_prompt_slots(batch, N_PROMPTS, phrase[1:-1])
    feat = enc(wide)
    hidden = model(wide["input_ids"], wide["attention_mask"], wide["token_type_ids"])
    ref = F.l2_normalize_forward(F.mean_pool_forward(hidden, wide["pool_mask"]))[0]
    assert_close(feat, ref, 1e-5, 1e-6, "prompted features vs frozen model on the phrase")


def test_phrase_deep_init_equals_frozen_states_of_the_phrase(torch, tmp_path):
    # With deep_init="phrase" and the phrase alone as the text, every overwrite is a no-op.
    _, model = frozen_tiny(torch, tmp_path)
    phrase = np.array([[1, 11, 12, 13, 2]], dtype=np.int64)
    enc = PromptedEncoder(twin_encoder(model), phrase_prompts(model, phrase[0], 2, "phrase"))
    batch = {"input_ids": phrase.copy(), "attention_mask": np.ones_like(phrase),
             "token_type_ids": np.zeros_like(phrase)}
    pool = np.ones_like(phrase)
    pool[:, 1:4] = 0
    feat = enc({**batch, "pool_mask": pool})
    hidden = model(phrase, np.ones_like(phrase), np.zeros_like(phrase))
    ref = F.l2_normalize_forward(F.mean_pool_forward(hidden, pool))[0]
    assert_close(feat, ref, 1e-5, 1e-6, "phrase-initialised deep prompts")


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_deep_prompt_gradient_matches_torch_autograd(rng, torch, tmp_path, depth):
    hf, model = frozen_tiny(torch, tmp_path)
    prompts = rng.standard_normal((depth, N_PROMPTS, TINY["hidden_size"])).astype(np.float32)
    enc = PromptedEncoder(twin_encoder(model), prompts.copy())
    wide = insert_prompt_slots(tiny_text_batch(rng), N_PROMPTS)
    feat = enc(wide)
    dfeat = rng.standard_normal(feat.shape).astype(np.float32)
    enc.backward(dfeat)
    for p in hf.parameters():
        p.requires_grad_(False)
    tp = torch.tensor(prompts, requires_grad=True)
    t = {k: torch.tensor(v) for k, v in wide.items()}
    ref = torch_prompted_features(torch, hf, t["input_ids"], t["attention_mask"], t["token_type_ids"],
                                  t["pool_mask"], tp)
    ref.backward(torch.tensor(dfeat))
    assert_close(feat, ref.detach().numpy(), 1e-4, 1e-5, "prompted features")
    assert_close(enc.prompts.grad, tp.grad.numpy(), 1e-3, 1e-5, "dprompts")
    assert np.abs(enc.prompts.grad[depth - 1]).max() > 0, "the deepest prompts must get a gradient"
    assert all(p.grad is None for p in enc.encoder.parameters()), "a frozen weight accumulated a gradient"


def test_deep_prompt_gradient_matches_finite_differences(rng, torch, tmp_path):
    # float32 forward: a directional central difference per layer, eps large enough for float32.
    _, model = frozen_tiny(torch, tmp_path)
    prompts = rng.standard_normal((3, N_PROMPTS, TINY["hidden_size"])).astype(np.float32)
    enc = PromptedEncoder(twin_encoder(model), prompts)
    wide = insert_prompt_slots(tiny_text_batch(rng), N_PROMPTS)
    r = rng.standard_normal((3, TINY["hidden_size"])).astype(np.float32)
    enc(wide)
    enc.backward(r)
    grad = enc.prompts.grad.astype(np.float64)
    base = enc.prompts.data.copy()
    eps = 1e-2
    for j in range(3):
        d = np.zeros_like(base)
        d[j] = rng.standard_normal(base[j].shape)
        d /= np.linalg.norm(d)
        enc.prompts.data[...] = base + eps * d
        fp = float((enc(wide).astype(np.float64) * r).sum())
        enc.prompts.data[...] = base - eps * d
        fm = float((enc(wide).astype(np.float64) * r).sum())
        enc.prompts.data[...] = base
        assert_close((fp - fm) / (2 * eps), float((grad * d).sum()), 2e-2, 2e-4, f"directional derivative, layer {j}")


def test_layer0_prompts_reach_the_output_through_layer0_attention_only(rng, torch, tmp_path):
    # Prompts at layer 1 replace what layer 0 computed at the slots, so with depth 2 the layer-0
    # prompts reach the output only through layer 0's attention to the text tokens: their
    # gradient is the one of that path alone (the torch and finite-difference tests check its value).
    _, model = frozen_tiny(torch, tmp_path)
    prompts = rng.standard_normal((2, N_PROMPTS, TINY["hidden_size"])).astype(np.float32)
    enc = PromptedEncoder(twin_encoder(model), prompts)
    wide = insert_prompt_slots(tiny_text_batch(rng), N_PROMPTS)
    feat = enc(wide)
    enc.backward(np.ones_like(feat))
    assert np.abs(enc.prompts.grad[0]).max() > 0
    enc.prompts.data[0] += rng.standard_normal(enc.prompts.shape[1:]).astype(np.float32)
    moved = enc(wide)
    assert np.abs(moved - feat).max() > 1e-4
    # Without the text tokens attending to the slots, layer-0 prompts would have no effect at all.
    no_att = {**wide, "attention_mask": wide["pool_mask"]}
    enc.prompts.data[0] -= 1.0
    a = enc(no_att)
    enc.prompts.data[0] += rng.standard_normal(enc.prompts.shape[1:]).astype(np.float32)
    assert_close(enc(no_att), a, 1e-5, 1e-6, "features with the slots masked out of attention")


def test_prompted_encoder_rejects_trainable_backbone_and_bad_shapes(torch, tmp_path):
    _, model = tiny_pair(torch, tmp_path)
    with pytest.raises(ValueError, match="frozen encoder"):
        PromptedEncoder(model, np.zeros((1, 2, TINY["hidden_size"]), dtype=np.float32))
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="prompts must be"):
        PromptedEncoder(model, np.zeros((1, 2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="prompts must be"):
        PromptedEncoder(model, np.zeros((TINY["num_hidden_layers"] + 1, 2, TINY["hidden_size"]), dtype=np.float32))


def test_twin_encoder_shares_weights_not_caches(torch, tmp_path):
    _, model = frozen_tiny(torch, tmp_path)
    twin = twin_encoder(model)
    assert isinstance(twin, BertModel)
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        assert a.data is b.data, name
    assert twin.encoder.layer[0] is not model.encoder.layer[0]


class _ThenTokenSoftmax(Module):
    """A block followed by a softmax over the token axis: it caches its output and its backward reads that
    output at every position, the slots included (a layer the deep prompts must not write into)."""

    def __init__(self, block: Module) -> None:
        self.block = block
        self._y: np.ndarray | None = None

    def forward(self, x: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        h = self.block(x, attention_mask).astype(np.float64)
        e = np.exp(h - h.max(axis=1, keepdims=True))
        self._y = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return self._y

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        y = self._y.astype(np.float64)
        dh = y * (dy - (dy * y).sum(axis=1, keepdims=True))
        return self.block.backward(dh.astype(np.float32), dx=dx, input_grad=input_grad)


def test_deep_prompt_gradient_stays_right_when_the_block_before_a_prompted_layer_caches_its_output(
        rng, torch, tmp_path):
    # Layer 1's prompts replace layer 0's output at the slots; layer 0 here caches that output and its
    # backward reads it at the slots (their gradient there is not zero). Written into in place, the cache
    # would hold the prompts instead and layer 0's input gradient, hence the layer-0 prompts', would be off.
    hf, model = frozen_tiny(torch, tmp_path)
    enc = PromptedEncoder(twin_encoder(model), rng.standard_normal((2, N_PROMPTS, TINY["hidden_size"])).astype(
        np.float32))
    enc.encoder.encoder.layer[0] = _ThenTokenSoftmax(enc.encoder.encoder.layer[0])

    class TorchThenTokenSoftmax(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x, attention_mask=None):
            out = self.layer(x, attention_mask=attention_mask)
            return (torch.softmax(out[0] if isinstance(out, tuple) else out, dim=1),)

    hf.encoder.layer[0] = TorchThenTokenSoftmax(hf.encoder.layer[0])
    for p in hf.parameters():
        p.requires_grad_(False)
    wide = insert_prompt_slots(tiny_text_batch(rng), N_PROMPTS)
    feat = enc(wide)
    dfeat = rng.standard_normal(feat.shape).astype(np.float32)
    enc.backward(dfeat)
    tp = torch.tensor(enc.prompts.data.copy(), requires_grad=True)
    t = {k: torch.tensor(v) for k, v in wide.items()}
    ref = torch_prompted_features(torch, hf, t["input_ids"], t["attention_mask"], t["token_type_ids"],
                                  t["pool_mask"], tp)
    ref.backward(torch.tensor(dfeat))
    assert_close(feat, ref.detach().numpy(), 1e-4, 1e-5, "prompted features")
    assert_close(enc.prompts.grad, tp.grad.numpy(), 1e-3, 1e-5, "dprompts")


def test_bert_inputs_embeds_of_the_word_vectors_give_the_ids_forward_and_their_gradient(rng, torch, tmp_path):
    _, model = tiny_pair(torch, tmp_path)
    batch = tiny_text_batch(rng)
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    out = model(ids, mask, types)
    words = model.embeddings.word_embeddings.weight.data[ids]
    assert np.array_equal(model(None, mask, types, inputs_embeds=words), out)  # the kernel's summation order
    model.requires_grad_(False)
    dy = rng.standard_normal(out.shape).astype(np.float32)
    d = model.backward(dy)
    h = 1e-3  # the word vectors are N(0, 0.02^2): a larger step leaves the LayerNorm's linear range
    direction = rng.standard_normal(words.shape).astype(np.float32)
    up = float((model(ids, mask, types, inputs_embeds=words + h * direction).astype(np.float64) * dy).sum())
    down = float((model(ids, mask, types, inputs_embeds=words - h * direction).astype(np.float64) * dy).sum())
    assert_close((up - down) / (2 * h), float((d.astype(np.float64) * direction).sum()), 2e-2, 2e-4,
                 "directional derivative in inputs_embeds")
    model(ids, mask, types)
    with pytest.raises(ValueError, match="dx must be None"):
        model.backward(dy, dx=np.zeros_like(words))
