"""BERT encoder: sentence embeddings against transformers on the bundled MiniLM, and the full-model
backward against torch autograd on a tiny random-weight BERT."""
from __future__ import annotations

import numpy as np
import pytest

from peftc.models import BertModel, Tokenizer, minilm_path
from peftc.nn import Linear, LoraLinear

from .conftest import assert_close

SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog, then naps in the warm afternoon sun.",
    "Hi",
    "Quantum chromodynamics describes the strong interaction between quarks and gluons.",
    "¿Dónde está la biblioteca?",
    "1234 5678 + 42 = ???",
    "The cat sat on the mat.",
    "Stock markets fell sharply on Monday after the central bank raised interest rates again.",
]

TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=16, type_vocab_size=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def minilm():
    return BertModel.from_pretrained(minilm_path())


def test_minilm_sentence_embeddings_match_transformers(minilm, torch):
    transformers = pytest.importorskip("transformers")
    batch = Tokenizer(minilm_path())(SENTENCES)
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    emb = minilm.sentence_embedding(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    hf = transformers.AutoModel.from_pretrained(minilm_path()).eval()
    with torch.no_grad():
        t = {k: torch.tensor(v) for k, v in batch.items()}
        hidden = hf(**t).last_hidden_state
        m = t["attention_mask"][..., None].float()
        ref = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1)
    assert_close(emb, ref.numpy(), 0, 1e-4, "sentence embeddings")
    assert_close(np.linalg.norm(emb, axis=1), np.ones(len(SENTENCES)), 0, 1e-5, "unit norm")


def test_minilm_exposes_hf_linear_names(minilm):
    names = dict(minilm.named_modules())
    for suffix in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                   "intermediate.dense", "output.dense"):
        for i in range(6):
            assert isinstance(names[f"encoder.layer.{i}.{suffix}"], Linear)
    params = dict(minilm.named_parameters())
    assert "encoder.layer.5.output.LayerNorm.weight" in params and "embeddings.word_embeddings.weight" in params


def tiny_pair(torch, tmp_path):
    """A random tiny BERT saved by transformers, loaded by both sides from the same files."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(**TINY), add_pooling_layer=False)
    with torch.no_grad():  # non-trivial LayerNorm parameters, so their gradients are tested
        for name, p in hf.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    hf = transformers.BertModel.from_pretrained(tmp_path, add_pooling_layer=False, attn_implementation="eager")
    return hf.eval(), BertModel.from_pretrained(tmp_path)


def tiny_batch(rng):
    ids = rng.integers(1, TINY["vocab_size"], (3, 9)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[0, 6:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    types = (np.arange(9)[None, :] >= 4).astype(np.int64).repeat(3, axis=0)
    return ids, mask, types


def test_tiny_bert_full_backward_matches_torch_autograd(rng, torch, tmp_path):
    hf, model = tiny_pair(torch, tmp_path)
    ids, mask, types = tiny_batch(rng)
    out = model(ids, mask, types)
    dy = rng.standard_normal(out.shape).astype(np.float32)
    model.backward(dy)
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             token_type_ids=torch.tensor(types)).last_hidden_state
    ref.backward(torch.tensor(dy))
    assert_close(out, ref.detach().numpy(), 1e-4, 1e-4, "last hidden state")
    ours = dict(model.named_parameters())
    for name, p in hf.named_parameters():
        assert_close(ours[name].grad, p.grad.numpy(), 1e-3, 1e-4, f"d{name}")


def test_tiny_bert_backward_reaches_only_trainable_parameters(rng, torch, tmp_path):
    hf, model = tiny_pair(torch, tmp_path)
    model.requires_grad_(False)
    name = "encoder.layer.0.attention.self.query"
    lora = LoraLinear(model.get_submodule(name), r=2, lora_alpha=4, init_lora_weights=False)
    model.set_submodule(name, lora)
    model.encoder.layer[1].output.LayerNorm.weight.requires_grad = True
    ids, mask, types = tiny_batch(rng)
    out = model(ids, mask, types)
    dy = rng.standard_normal(out.shape).astype(np.float32)
    model.backward(dy)
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained == {f"{name}.lora_A", f"{name}.lora_B", "encoder.layer.1.output.LayerNorm.weight"}

    for p in hf.parameters():
        p.requires_grad_(False)
    q = hf.encoder.layer[0].attention.self.query
    a = torch.tensor(lora.lora_A.data, requires_grad=True)
    b = torch.tensor(lora.lora_B.data, requires_grad=True)
    q.register_forward_hook(lambda mod, inp, o: o + lora.scaling * (inp[0] @ a.T @ b.T))
    lnw = hf.encoder.layer[1].output.LayerNorm.weight
    lnw.requires_grad_(True)
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             token_type_ids=torch.tensor(types)).last_hidden_state
    ref.backward(torch.tensor(dy))
    assert_close(out, ref.detach().numpy(), 1e-4, 1e-4, "last hidden state with LoRA")
    assert_close(lora.lora_A.grad, a.grad.numpy(), 1e-3, 1e-4, "dlora_A")
    assert_close(lora.lora_B.grad, b.grad.numpy(), 1e-3, 1e-4, "dlora_B")
    assert_close(model.encoder.layer[1].output.LayerNorm.weight.grad, lnw.grad.numpy(), 1e-3, 1e-4, "dLN")


def test_sentence_embedding_backward_matches_torch(rng, torch, tmp_path):
    hf, model = tiny_pair(torch, tmp_path)
    ids, mask, types = tiny_batch(rng)
    emb = model.sentence_embedding(ids, mask, types)
    demb = rng.standard_normal(emb.shape).astype(np.float32)
    model.sentence_embedding_backward(demb)
    hidden = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(types)).last_hidden_state
    m = torch.tensor(mask)[..., None].float()
    ref = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=1)
    ref.backward(torch.tensor(demb))
    assert_close(emb, ref.detach().numpy(), 1e-4, 1e-5, "embedding")
    ours = dict(model.named_parameters())
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.key.weight"):
        assert_close(ours[name].grad, dict(hf.named_parameters())[name].grad.numpy(), 1e-3, 1e-4, f"d{name}")


def test_bert_rejects_bad_ids(minilm):
    with pytest.raises(TypeError, match="input_ids"):
        minilm(np.zeros((1, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="attention_mask"):
        minilm(np.zeros((1, 4), dtype=np.int64), np.ones((1, 5), dtype=np.int64))
    with pytest.raises(ValueError, match="input_ids"):
        minilm(np.full((1, 4), 30522, dtype=np.int64))


def test_from_pretrained_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        BertModel.from_pretrained(tmp_path)


def test_frozen_embeddings_skip_the_first_block_input_gradient_and_keep_lora_gradients(rng, torch, tmp_path):
    _, model = tiny_pair(torch, tmp_path)
    model.requires_grad_(False)
    for i in range(TINY["num_hidden_layers"]):
        for target in ("query", "value"):
            name = f"encoder.layer.{i}.attention.self.{target}"
            model.set_submodule(name, LoraLinear(model.get_submodule(name), r=2, lora_alpha=4,
                                                 init_lora_weights=False))
    key = model.encoder.layer[0].attention.self.key
    calls = []
    key.backward = lambda *a, **k: calls.append(1) or Linear.backward(key, *a, **k)
    ids, mask, types = tiny_batch(rng)
    dy = rng.standard_normal((3, 9, TINY["hidden_size"])).astype(np.float32)

    def lora_grads() -> dict[str, np.ndarray]:
        model.zero_grad()
        model(ids, mask, types)
        model.backward(dy)
        return {n: p.grad.copy() for n, p in model.named_parameters() if ".lora_" in n}

    skipped = lora_grads()
    assert calls == [], "a frozen key projection of the first block needs no backward"
    model.embeddings.position_embeddings.weight.requires_grad = True  # now d(first block input) is needed
    full = lora_grads()
    assert calls == [1]
    assert len(skipped) == 2 * 2 * TINY["num_hidden_layers"]
    for name, g in full.items():
        assert_close(skipped[name], g, 1e-6, 1e-6, name)


# -- skip_padding: the forward on the real tokens only (training: tests/test_packed_training.py) ---------------------------------------------

def test_skip_padding_matches_transformers_on_real_tokens_and_zeroes_padding(rng, torch, tmp_path):
    hf, model = tiny_pair(torch, tmp_path)
    ids, mask, types = tiny_batch(rng)
    out = model(ids, mask, types, skip_padding=True)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
    keep = mask.astype(bool)
    assert out.shape == ref.shape
    assert_close(out[keep], ref[keep], 1e-4, 1e-4, "real tokens")
    assert np.all(out[~keep] == 0.0)
    assert_close(out[keep], model(ids, mask, types)[keep], 1e-5, 1e-5, "padded forward")


def test_skip_padding_runs_the_linear_layers_on_the_real_tokens_only(rng, torch, tmp_path):
    _, model = tiny_pair(torch, tmp_path)
    ids, mask, types = tiny_batch(rng)
    seen = []
    layer = model.get_submodule("encoder.layer.1.intermediate.dense")
    original = layer.forward
    layer.forward = lambda x: (seen.append(x.shape), original(x))[1]
    model(ids, mask, types, skip_padding=True)
    model(ids, mask, types)
    assert seen == [(int(mask.sum()), TINY["hidden_size"]), (*ids.shape, TINY["hidden_size"])]


def test_skip_padding_sentence_embedding_equals_the_padded_one(minilm):
    batch = Tokenizer(minilm_path())(SENTENCES)
    a = minilm.sentence_embedding(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    b = minilm.sentence_embedding(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                  skip_padding=True)
    assert_close(b, a, 1e-5, 1e-5, "sentence embeddings")
