"""Encoder kernels (embedding sum, LayerNorm, GELU, attention core, mean pooling, L2 normalise):
C against the NumPy reference, float64 finite differences, torch autograd, bad input."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R

from .conftest import assert_close, f32, numerical_grad

B, T, H, NH = 2, 5, 8, 2
V, NP, NT = 11, 7, 2


def keymask(b=B, t=T):
    m = np.ones((b, t), dtype=np.int64)
    m[0, 3:] = 0  # padding at the end of the first sequence
    return m


def embed_case(rng):
    return dict(ids=rng.integers(0, V, (B, T)).astype(np.int64), types=rng.integers(0, NT, (B, T)).astype(np.int64),
                wte=f32(rng, V, H), wpe=f32(rng, NP, H), wtt=f32(rng, NT, H))


# ---- embedding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("with_types", [True, False])
def test_embedding_forward_matches_reference(rng, with_types):
    c = embed_case(rng)
    types = c["types"] if with_types else None
    y = F.embedding_forward(c["ids"], types, c["wte"], c["wpe"], c["wtt"])
    assert_close(y, R.embedding_forward(c["ids"], types, c["wte"], c["wpe"], c["wtt"]), 1e-6, 1e-6, "embeddings")


def test_embedding_backward_scatter_adds_repeated_ids(rng):
    c = embed_case(rng)
    c["ids"][1, :] = 4  # the same row read T times
    dout = f32(rng, B, T, H)
    start = {k: f32(rng, *c[k].shape) for k in ("wte", "wpe", "wtt")}  # the backward adds into the buffers
    got = {k: v.copy() for k, v in start.items()}
    want = {k: v.astype(np.float64) for k, v in start.items()}
    for grads, mod in ((got, F), (want, R)):
        mod.embedding_backward(dout, c["ids"], c["types"], dword_embeddings=grads["wte"],
                               dposition_embeddings=grads["wpe"], dtoken_type_embeddings=grads["wtt"])
    for k in got:
        assert_close(got[k], want[k], 1e-5, 1e-5, f"d{k}")
    assert_close(got["wpe"][T:], start["wpe"][T:], 0, 0, "unused positions")


def test_embedding_backward_skips_padding_idx_like_torch(rng, torch):
    c = embed_case(rng)
    c["ids"][0, 3:] = 0
    dout = f32(rng, B, T, H)
    start = f32(rng, V, H)  # the backward adds into the buffer
    dwte = start.copy()
    F.embedding_backward(dout, c["ids"], c["types"], 0, dword_embeddings=dwte)
    want = start.astype(np.float64)
    R.embedding_backward(dout, c["ids"], c["types"], 0, dword_embeddings=want)
    emb = torch.nn.Embedding(V, H, padding_idx=0)
    emb(torch.tensor(c["ids"])).backward(torch.tensor(dout))
    assert_close(dwte, want, 1e-5, 1e-5, "dwte vs reference")
    assert_close(dwte, start + emb.weight.grad.numpy().astype(np.float64), 1e-5, 1e-5, "dwte vs torch")
    assert np.array_equal(dwte[0], start[0])  # the padding row gets nothing added


def test_embedding_rejects_ids_out_of_range(rng):
    c = embed_case(rng)
    bad = c["ids"].copy()
    bad[1, 2] = V
    with pytest.raises(ValueError, match="input_ids"):
        F.embedding_forward(bad, c["types"], c["wte"], c["wpe"], c["wtt"])
    bad = c["types"].copy()
    bad[0, 0] = -1
    with pytest.raises(ValueError, match="token_type_ids"):
        F.embedding_forward(c["ids"], bad, c["wte"], c["wpe"], c["wtt"])
    with pytest.raises(TypeError, match="input_ids"):
        F.embedding_forward(c["ids"].astype(np.int32), c["types"], c["wte"], c["wpe"], c["wtt"])
    long_ids = rng.integers(0, V, (1, NP + 1)).astype(np.int64)
    with pytest.raises(ValueError, match="position"):
        F.embedding_forward(long_ids, None, c["wte"], c["wpe"], c["wtt"])


# ---- LayerNorm ---------------------------------------------------------------------------------
def test_layernorm_forward_matches_reference(rng):
    x, w, b = f32(rng, 6, H, scale=3.0) + 5.0, f32(rng, H), f32(rng, H)
    y, mean, rstd = F.layernorm_forward(x, w, b)
    y_ref, mean_ref, rstd_ref = R.layernorm_forward(x.astype(np.float64), w, b)
    assert_close(y, y_ref, 1e-5, 1e-5, "y")
    assert_close(mean, mean_ref, 1e-6, 1e-6, "mean")
    assert_close(rstd, rstd_ref, 1e-5, 1e-6, "rstd")


def test_layernorm_forward_keeps_precision_on_wide_rows_with_a_large_mean(rng):
    # float statistics over many lanes: a BERT-wide row far from zero (eps 1e-12) must still match the
    # float64 reference to about the rounding of x - mean itself (ulp(1000) / std ~ 6e-5)
    x, w, b = f32(rng, 8, 384) + 1000.0, f32(rng, 384), f32(rng, 384)
    y, mean, rstd = F.layernorm_forward(x, w, b, 1e-12)
    y_ref, mean_ref, rstd_ref = R.layernorm_forward(x.astype(np.float64), w, b, 1e-12)
    assert_close(mean, mean_ref, 1e-7, 0.0, "mean")
    assert_close(rstd, rstd_ref, 1e-5, 0.0, "rstd")
    assert_close(y, y_ref, 0.0, 5e-4, "y")


def test_layernorm_backward_matches_finite_differences(rng):
    x, w, b, dout = f32(rng, 4, H), f32(rng, H), f32(rng, H), f32(rng, 4, H)
    x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
    loss = lambda: float(np.sum(R.layernorm_forward(x64, w64, b64, 1e-5)[0] * dout))  # noqa: E731
    _, mean, rstd = F.layernorm_forward(x, w, b, 1e-5)
    start = [f32(rng, *a.shape) for a in (x, w, b)]  # the backward adds into all three buffers
    dx, dw, db = (a.copy() for a in start)
    F.layernorm_backward(dout, x, w, mean, rstd, dx=dx, dweight=dw, dbias=db)
    assert_close(dx, start[0] + numerical_grad(loss, x64), 1e-4, 1e-4, "dx")
    assert_close(dw, start[1] + numerical_grad(loss, w64), 1e-4, 1e-4, "dw")
    assert_close(db, start[2] + numerical_grad(loss, b64), 1e-4, 1e-4, "db")


def test_layernorm_matches_torch_autograd(rng, torch):
    x, w, b, dout = f32(rng, 4, H), f32(rng, H), f32(rng, H), f32(rng, 4, H)
    y, mean, rstd = F.layernorm_forward(x, w, b)
    start = [f32(rng, *a.shape) for a in (x, w, b)]  # the backward adds into all three buffers
    dx, dw, db = (a.copy() for a in start)
    F.layernorm_backward(dout, x, w, mean, rstd, dx=dx, dweight=dw, dbias=db)
    t = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    yt = torch.nn.functional.layer_norm(t[0], (H,), t[1], t[2], eps=1e-12)
    yt.backward(torch.tensor(dout))
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-5, "y")
    for got, s0, tt, name in zip((dx, dw, db), start, t, ("dx", "dw", "db")):
        assert_close(got, s0 + tt.grad.numpy().astype(np.float64), 1e-4, 1e-5, name)


# ---- GELU --------------------------------------------------------------------------------------
def test_gelu_matches_reference_and_finite_differences(rng):
    x, dout = f32(rng, 3, 7, scale=3.0), f32(rng, 3, 7)
    assert_close(F.gelu_forward(x), R.gelu_forward(x.astype(np.float64)), 1e-6, 1e-6, "gelu")
    x64 = x.astype(np.float64)
    loss = lambda: float(np.sum(R.gelu_forward(x64) * dout))  # noqa: E731
    start = f32(rng, *x.shape)  # the backward adds into dx
    dx = start.copy()
    F.gelu_backward(dout, x, dx=dx)
    assert_close(dx, start + numerical_grad(loss, x64), 1e-4, 1e-5, "dx")


def test_gelu_matches_torch_exact_gelu(rng, torch):
    # the whole range, tails included: the C side uses its own vectorisable erf and exp
    x = np.concatenate([np.linspace(-12, 12, 2001), [-90.0, -30.0, 0.0, 30.0, 90.0]]).astype(np.float32)
    dout = f32(rng, x.size)
    start = f32(rng, x.size)  # the backward adds into dx
    dx = start.copy()
    F.gelu_backward(dout, x, dx=dx)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.gelu(xt)  # approximate="none": the erf form
    yt.backward(torch.tensor(dout))
    assert_close(F.gelu_forward(x), yt.detach().numpy(), 1e-6, 1e-6, "gelu")
    assert_close(dx, start + xt.grad.numpy().astype(np.float64), 1e-5, 1e-6, "dx")


# ---- attention ---------------------------------------------------------------------------------
def qkv(rng, t=T):
    return f32(rng, B, t, H), f32(rng, B, t, H), f32(rng, B, t, H)


@pytest.mark.parametrize("masked,causal,p", [(False, False, 0.0), (True, False, 0.0), (True, True, 0.0),
                                             (True, False, 0.3)])
def test_attention_forward_matches_reference(rng, masked, causal, p):
    q, k, v = qkv(rng)
    mask = keymask() if masked else None
    out, att = F.attention_forward(q, k, v, NH, mask, causal, p, 3, 11)
    out_ref, att_ref = R.attention_forward(q.astype(np.float64), k, v, NH, mask, causal, p, 3, 11)
    assert_close(out, out_ref, 1e-5, 1e-5, "out")
    assert_close(att, att_ref, 1e-5, 1e-6, "att")
    if masked:
        assert np.all(att[0, :, :, 3:] == 0.0)


@pytest.mark.parametrize("masked,causal,p", [(True, False, 0.0), (False, True, 0.0), (True, False, 0.4)])
def test_attention_backward_matches_finite_differences(rng, masked, causal, p):
    q, k, v = qkv(rng)
    dout = f32(rng, B, T, H)
    mask = keymask() if masked else None
    c64 = [a.astype(np.float64) for a in (q, k, v)]
    loss = lambda: float(np.sum(R.attention_forward(*c64, NH, mask, causal, p, 7, 2)[0] * dout))  # noqa: E731
    _, att = F.attention_forward(q, k, v, NH, mask, causal, p, 7, 2)
    grads = [np.zeros_like(a) for a in (q, k, v)]
    F.attention_backward(dout, q, k, v, att, NH, p, 7, 2, dq=grads[0], dk=grads[1], dv=grads[2])
    for g, a, name in zip(grads, c64, ("dq", "dk", "dv")):
        assert_close(g, numerical_grad(loss, a), 1e-4, 1e-4, name)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_torch_autograd(rng, torch, causal):
    q, k, v = qkv(rng)
    dout = f32(rng, B, T, H)
    mask = keymask()
    out, att = F.attention_forward(q, k, v, NH, mask, causal)
    grads = [np.zeros_like(a) for a in (q, k, v)]
    F.attention_backward(dout, q, k, v, att, NH, dq=grads[0], dk=grads[1], dv=grads[2])
    t = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    heads = lambda a: a.view(B, T, NH, H // NH).transpose(1, 2)  # noqa: E731
    allowed = torch.tensor(mask != 0)[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool).tril()
    ot = torch.nn.functional.scaled_dot_product_attention(heads(t[0]), heads(t[1]), heads(t[2]), attn_mask=allowed)
    ot = ot.transpose(1, 2).reshape(B, T, H)
    ot.backward(torch.tensor(dout))
    assert_close(out, ot.detach().numpy(), 1e-5, 1e-5, "out")
    for g, tt, name in zip(grads, t, ("dq", "dk", "dv")):
        assert_close(g, tt.grad.numpy(), 1e-4, 1e-5, name)


def test_attention_fully_padded_sequence_gives_zeros_not_nan(rng):
    q, k, v = qkv(rng)
    mask = keymask()
    mask[1] = 0
    out, att = F.attention_forward(q, k, v, NH, mask)
    assert np.all(np.isfinite(out)) and np.all(out[1] == 0.0) and np.all(att[1] == 0.0)
    grads = [np.zeros_like(a) for a in (q, k, v)]
    F.attention_backward(f32(rng, B, T, H), q, k, v, att, NH, dq=grads[0], dk=grads[1], dv=grads[2])
    for g in grads:
        assert np.all(np.isfinite(g)) and np.all(g[1] == 0.0)


def test_attention_rejects_bad_heads_and_shapes(rng):
    q, k, v = qkv(rng)
    with pytest.raises(ValueError, match="num_heads"):
        F.attention_forward(q, k, v, 3)
    with pytest.raises(ValueError, match="'k'"):
        F.attention_forward(q, k[:, :4], v, NH)
    with pytest.raises(TypeError, match="attention_mask"):
        F.attention_forward(q, k, v, NH, keymask().astype(np.float32))
    with pytest.raises(ValueError, match="dropout"):
        F.attention_forward(q, k, v, NH, dropout=1.0)


# ---- pooling and normalisation -----------------------------------------------------------------
def test_mean_pool_matches_reference_and_finite_differences(rng):
    x, dout, mask = f32(rng, B, T, H), f32(rng, B, H), keymask()
    assert_close(F.mean_pool_forward(x, mask), R.mean_pool_forward(x.astype(np.float64), mask), 1e-6, 1e-6, "pool")
    x64 = x.astype(np.float64)
    loss = lambda: float(np.sum(R.mean_pool_forward(x64, mask) * dout))  # noqa: E731
    start = f32(rng, *x.shape)  # the backward adds into dx
    dx = start.copy()
    F.mean_pool_backward(dout, mask, dx=dx)
    assert_close(dx, start + numerical_grad(loss, x64), 1e-5, 1e-6, "dx")
    assert np.array_equal(dx[0, 3:], start[0, 3:])  # padded positions get nothing added


def test_l2_normalize_matches_reference_finite_differences_and_torch(rng, torch):
    x, dout = f32(rng, 4, H), f32(rng, 4, H)
    y, norm = F.l2_normalize_forward(x)
    assert_close(y, R.l2_normalize_forward(x.astype(np.float64))[0], 1e-6, 1e-6, "y")
    x64 = x.astype(np.float64)
    loss = lambda: float(np.sum(R.l2_normalize_forward(x64)[0] * dout))  # noqa: E731
    start = f32(rng, *x.shape)  # the backward adds into dx
    dx = start.copy()
    F.l2_normalize_backward(dout, y, norm, dx=dx)
    assert_close(dx, start + numerical_grad(loss, x64), 1e-4, 1e-5, "dx")
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.normalize(xt, dim=1).backward(torch.tensor(dout))
    assert_close(dx, start + xt.grad.numpy().astype(np.float64), 1e-5, 1e-6, "dx vs torch")


def test_mean_pool_and_normalize_match_torch_sentence_head(rng, torch):
    x, mask, dout = f32(rng, B, T, H), keymask(), f32(rng, B, H)
    pooled = F.mean_pool_forward(x, mask)
    y, norm = F.l2_normalize_forward(pooled)
    dpooled, dx = np.zeros_like(pooled), np.zeros_like(x)
    F.l2_normalize_backward(dout, y, norm, dx=dpooled)
    F.mean_pool_backward(dpooled, mask, dx=dx)
    xt = torch.tensor(x, requires_grad=True)
    m = torch.tensor(mask, dtype=torch.float32)[..., None]
    yt = torch.nn.functional.normalize((xt * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1)
    yt.backward(torch.tensor(dout))
    assert_close(y, yt.detach().numpy(), 1e-6, 1e-6, "embedding")
    assert_close(dx, xt.grad.numpy(), 1e-5, 1e-6, "dx")


def test_encoder_kernels_leave_inputs_unchanged(rng):
    q, k, v = qkv(rng)
    before = [a.copy() for a in (q, k, v)]
    _, att = F.attention_forward(q, k, v, NH, keymask(), dropout=0.2, seed=1)
    F.attention_backward(f32(rng, B, T, H), q, k, v, att, NH, 0.2, 1, dq=np.zeros_like(q))
    for a, b0 in zip((q, k, v), before):
        assert np.array_equal(a, b0)


def test_encoder_wrappers_reject_layout_problems_without_copying(rng):
    x, w, b = f32(rng, 4, H), f32(rng, H), f32(rng, H)
    out = np.empty_like(x)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="'out' is read-only"):
        F.layernorm_forward(x, w, b, out=out)
    with pytest.raises(ValueError, match="C-contiguous"):
        F.gelu_forward(f32(rng, 4, 2 * H)[:, ::2])
    with pytest.raises(ValueError, match="overlaps"):
        F.gelu_forward(x, out=x)
    q, k, v = qkv(rng)
    with pytest.raises(TypeError, match="'q'"):
        F.attention_forward(q.astype(np.float64), k, v, NH)


def test_attention_is_deterministic_across_threads_and_keeps_refcounts(rng):
    import sys
    from concurrent.futures import ThreadPoolExecutor

    q, k, v = qkv(rng, t=16)
    mask = np.ones((B, 16), dtype=np.int64)
    first, _ = F.attention_forward(q, k, v, NH, mask, dropout=0.2, seed=5)
    counts = [sys.getrefcount(a) for a in (q, k, v, mask)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: F.attention_forward(q, k, v, NH, mask, dropout=0.2, seed=5)[0], range(16)))
    for o in outs:
        assert np.array_equal(o, first)
    for _ in range(200):
        F.attention_forward(q, k, v, NH, mask)
    assert [sys.getrefcount(a) for a in (q, k, v, mask)] == counts
