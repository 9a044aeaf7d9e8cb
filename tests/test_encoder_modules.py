"""Encoder modules (LayerNorm, GELU, Dropout, SelfAttention, Embedding) against torch, and the BERT
backward with dropout on against a directional finite difference with replayed masks."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc.models import BertConfig, BertModel
from peftc.nn import GELU, Dropout, Embedding, LayerNorm, Linear, SelfAttention

from .conftest import assert_close, f32


def test_layernorm_module_matches_torch_and_respects_freezing(rng, torch):
    ln = LayerNorm.from_weights(f32(rng, 6), f32(rng, 6), 1e-5)
    x, dy = f32(rng, 2, 3, 6), f32(rng, 2, 3, 6)
    y = ln(x)
    dx = ln.backward(dy)
    ref = torch.nn.LayerNorm(6, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(ln.weight.data))
        ref.bias.copy_(torch.tensor(ln.bias.data))
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(dy))
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-5, "y")
    assert_close(dx, xt.grad.numpy(), 1e-4, 1e-5, "dx")
    assert_close(ln.weight.grad, ref.weight.grad.numpy(), 1e-4, 1e-5, "dweight")
    ln.requires_grad_(False)
    ln(x)
    ln.backward(dy)
    assert ln.weight.grad is None and ln.bias.grad is None


def test_gelu_module_backward_uses_cached_input(rng):
    act = GELU()
    x, dy = f32(rng, 4, 5), f32(rng, 4, 5)
    act(x)
    want = np.zeros_like(x)
    F.gelu_backward(dy, x, dx=want)
    assert_close(act.backward(dy), want, 0, 0, "dx")


def test_dropout_module_is_identity_in_eval_and_replays_mask_in_train(rng):
    drop = Dropout(0.5)
    x, dy = f32(rng, 8, 9), f32(rng, 8, 9)
    y = drop(x)
    kept = y != 0
    assert 0 < kept.mean() < 1
    assert_close(drop.backward(dy), np.where(kept, 2 * dy, 0), 1e-6, 1e-6, "dx")
    assert not np.array_equal(drop(x) != 0, kept), "a second call must draw a fresh mask"
    drop.eval()
    assert drop(x) is x and drop.backward(dy) is dy


def test_attention_core_matches_torch(rng, torch):
    q, k, v, dy = (f32(rng, 2, 4, 6) for _ in range(4))
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=np.int64)
    out, att = F.attention_forward(q, k, v, 2, mask)
    grads = [np.zeros_like(a) for a in (q, k, v)]
    F.attention_backward(dy, q, k, v, att, 2, dq=grads[0], dk=grads[1], dv=grads[2])
    t = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    heads = lambda a: a.view(2, 4, 2, 3).transpose(1, 2)  # noqa: E731
    ot = torch.nn.functional.scaled_dot_product_attention(*(heads(a) for a in t),
                                                          attn_mask=torch.tensor(mask != 0)[:, None, None, :])
    ot.transpose(1, 2).reshape(2, 4, 6).backward(torch.tensor(dy))
    assert_close(out, ot.transpose(1, 2).reshape(2, 4, 6).detach().numpy(), 1e-5, 1e-5, "out")
    for g, tt, name in zip(grads, t, ("dq", "dk", "dv")):
        assert_close(g, tt.grad.numpy(), 1e-4, 1e-5, name)


def test_self_attention_module_projects_one_input_and_returns_its_one_gradient(rng, torch):
    projections = [Linear.from_weights(f32(rng, 6, 6, scale=0.5), f32(rng, 6)) for _ in range(3)]
    att = SelfAttention(*projections, num_heads=2)
    x, dy = f32(rng, 2, 4, 6), f32(rng, 2, 4, 6)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=np.int64)
    out = att(x, mask)
    dx = att.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    ws = [(torch.tensor(p.weight.data, requires_grad=True), torch.tensor(p.bias.data)) for p in projections]
    heads = lambda a: a.view(2, 4, 2, 3).transpose(1, 2)  # noqa: E731
    qkv = [heads(torch.nn.functional.linear(xt, w, b)) for w, b in ws]
    ot = torch.nn.functional.scaled_dot_product_attention(*qkv, attn_mask=torch.tensor(mask != 0)[:, None, None, :])
    ot = ot.transpose(1, 2).reshape(2, 4, 6)
    ot.backward(torch.tensor(dy))
    assert_close(out, ot.detach().numpy(), 1e-5, 1e-5, "out")
    assert_close(dx, xt.grad.numpy(), 1e-4, 1e-5, "dx, summed over q, k and v")
    for p, (w, _), name in zip(projections, ws, ("query", "key", "value")):
        assert_close(p.weight.grad, w.grad.numpy(), 1e-4, 1e-5, f"{name} weight gradient")


def test_embedding_module_matches_torch(rng, torch):
    emb = Embedding.from_weights(f32(rng, 7, 3))
    ids = np.array([[1, 2, 2], [6, 0, 1]], dtype=np.int64)
    dy = f32(rng, 2, 3, 3)
    y = emb(ids)
    emb.backward(dy)
    ref = torch.nn.Embedding(7, 3)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(emb.weight.data))
    ref(torch.tensor(ids)).backward(torch.tensor(dy))
    assert_close(y, ref(torch.tensor(ids)).detach().numpy(), 0, 0, "lookup")
    assert_close(emb.weight.grad, ref.weight.grad.numpy(), 1e-6, 1e-6, "dweight")
    with pytest.raises(ValueError, match="ids"):
        emb(np.array([[7]], dtype=np.int64))


def random_bert(rng, dropout: float) -> BertModel:
    cfg = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=12,
                     max_position_embeddings=8, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    shapes = {"embeddings.word_embeddings.weight": (20, 8), "embeddings.position_embeddings.weight": (8, 8),
              "embeddings.token_type_embeddings.weight": (2, 8), "embeddings.LayerNorm.weight": (8,),
              "embeddings.LayerNorm.bias": (8,)}
    for i in range(2):
        p = f"encoder.layer.{i}."
        for name, (o, n) in {"attention.self.query": (8, 8), "attention.self.key": (8, 8),
                             "attention.self.value": (8, 8), "attention.output.dense": (8, 8),
                             "intermediate.dense": (12, 8), "output.dense": (8, 12)}.items():
            shapes[p + name + ".weight"] = (o, n)
            shapes[p + name + ".bias"] = (o,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + name + ".weight"] = (8,)
            shapes[p + name + ".bias"] = (8,)
    state = {k: (f32(rng, *s, scale=0.5) + (1.0 if "LayerNorm.weight" in k else 0.0)) for k, s in shapes.items()}
    return BertModel.from_state_dict(cfg, state, seed=3)


def test_bert_backward_with_dropout_matches_directional_difference(rng):
    model = random_bert(rng, dropout=0.2).train()
    gen = model.embeddings.dropout.generator
    ids = rng.integers(0, 20, (2, 6)).astype(np.int64)
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2], dtype=np.int64)
    dy = f32(rng, 2, 6, 8)
    params = dict(model.named_parameters())
    direction = {k: f32(rng, *p.shape) for k, p in params.items()}
    # the padding row takes no gradient (torch's padding_idx), although the forward reads it
    direction["embeddings.word_embeddings.weight"][model.embeddings.padding_idx] = 0.0
    start = gen.offset

    def loss() -> float:
        gen.offset = start  # replay the same dropout masks
        return float(np.sum(model(ids, mask).astype(np.float64) * dy))

    loss()
    model.backward(dy)
    # float32 forward: at eps 1e-2 the embeddings' LayerNorm bias is 5% off by truncation alone, below 2e-3
    # rounding takes over; at 3e-3 every tensor's error is under 0.41 of its bound
    eps = 3e-3
    off = {}
    for k, p in params.items():  # one directional difference per tensor: no gradient can hide in a sum
        analytic = float(np.sum(p.grad.astype(np.float64) * direction[k]))
        p.data += eps * direction[k]
        up = loss()
        p.data -= 2 * eps * direction[k]
        down = loss()
        p.data += eps * direction[k]
        numeric = (up - down) / (2 * eps)
        if not abs(analytic - numeric) <= 2e-2 * abs(numeric) + 1e-3:
            off[k] = (analytic, numeric)
    assert not off, off
