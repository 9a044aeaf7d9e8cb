"""Plain-NumPy versions of :mod:`peftc.functional`, written for clarity: the first test oracle.

Same names, arguments and conventions as :mod:`peftc.functional`, except that every function
accepts any floating dtype (float64 for finite-difference checks) and nothing is checked.
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def rng_uniform01(seed: int, counters: np.ndarray) -> np.ndarray:
    """The C generator's uniform [0, 1) draw for each counter (float32, 24 random bits)."""
    with np.errstate(over="ignore"):
        base = _mix64(np.asarray([seed], dtype=np.uint64))[0]
        z = _mix64(base + (counters.astype(np.uint64) + np.uint64(1)) * _GOLDEN)
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def dropout_mask(shape: tuple[int, ...], p: float, seed: int, offset: int) -> np.ndarray:
    """Keep-mask (bool) of the counter-based dropout."""
    n = int(np.prod(shape))
    counters = np.arange(offset, offset + n, dtype=np.uint64)
    return (rng_uniform01(seed, counters) >= np.float32(p)).reshape(shape)


def rng_uniform(shape, low, high, seed, offset=0, *, out=None):
    n = int(np.prod(shape))
    u = rng_uniform01(seed, np.arange(offset, offset + n, dtype=np.uint64)).reshape(shape)
    return np.float32(low) + np.float32(high - low) * u


def rng_normal(shape, mean, std, seed, offset=0, *, out=None):
    n = int(np.prod(shape))
    k = 2 * np.arange(offset, offset + n, dtype=np.uint64)
    u1 = 1.0 - rng_uniform01(seed, k).astype(np.float64)
    u2 = rng_uniform01(seed, k + np.uint64(1)).astype(np.float64)
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return (mean + std * z).astype(np.float32).reshape(shape)


def dropout_forward(x, p, seed=0, offset=0, *, out=None):
    if p == 0.0:
        return x.copy()
    return x * dropout_mask(x.shape, p, seed, offset) / (1.0 - p)


def dropout_backward(dout, p, seed=0, offset=0, *, dx):
    dx += dout * dropout_mask(dout.shape, p, seed, offset) / (1.0 - p)


def dropout_rows_forward(x, rows, p, seed=0, offset=0, *, out=None):
    if p == 0.0:
        return x.copy()
    c = x.shape[1]
    counters = (np.asarray(rows, dtype=np.uint64)[:, None] * np.uint64(c) + np.arange(c, dtype=np.uint64)
                + np.uint64(offset))
    return x * (rng_uniform01(seed, counters) >= np.float32(p)) / (1.0 - p)


def dropout_rows_backward(dout, rows, p, seed=0, offset=0, *, dx):
    dx += dropout_rows_forward(dout, rows, p, seed, offset)


def linear_forward(x, weight, bias=None, *, out=None):
    y = x @ weight.T
    return y + bias if bias is not None else y


def linear_backward(dy, x, weight, *, dx=None, dweight=None, dbias=None):
    if dx is not None:
        dx += dy @ weight
    if dweight is not None:
        dweight += dy.T @ x
    if dbias is not None:
        dbias += dy.sum(axis=0)


def lora_scaling(r, lora_alpha, use_rslora=False):
    return lora_alpha / (np.sqrt(r) if use_rslora else r)


def lora_forward(x, weight, bias, lora_A, lora_B, lora_bias, scaling, dropout=0.0, seed=0, offset=0, *,
                 out=None, xd=None, u=None):
    xd = dropout_forward(x, dropout, seed, offset) if dropout > 0.0 else None
    xin = x if xd is None else xd
    u = xin @ lora_A.T
    y = linear_forward(x, weight, bias) + scaling * (u @ lora_B.T)
    if lora_bias is not None:
        y = y + scaling * lora_bias
    return y, xd, u


def lora_backward(dy, xin, u, weight, lora_A, lora_B, scaling, dropout=0.0, seed=0, offset=0, *, dx=None,
                  dlora_A=None, dlora_B=None, dlora_bias=None, work=None):
    gu = dy @ lora_B
    if dlora_B is not None:
        dlora_B += scaling * dy.T @ u
    if dlora_bias is not None:
        dlora_bias += scaling * dy.sum(axis=0)
    if dlora_A is not None:
        dlora_A += scaling * gu.T @ xin
    if dx is not None:
        dx += dy @ weight
        gxd = scaling * gu @ lora_A
        if dropout > 0.0:
            gxd = gxd * dropout_mask(gxd.shape, dropout, seed, offset) / (1.0 - dropout)
        dx += gxd


def _adapter_rows(index, k):
    """The rows of adapter k, and where its group starts in the group order (adapters 0, 1, ... in turn)."""
    return np.flatnonzero(index == k), int(np.count_nonzero((index >= 0) & (index < k)))


def lora_mixed_forward(x, weight, bias, lora_A, lora_B, lora_bias, scaling, index, *, out=None, u=None, work=None,
                       iwork=None):
    y = linear_forward(x, weight, bias)
    u = np.zeros((x.shape[0], max((a.shape[0] for a in lora_A), default=0)), dtype=x.dtype)
    for k, (a, b) in enumerate(zip(lora_A, lora_B)):
        rows, first = _adapter_rows(index, k)
        uk = x[rows] @ a.T
        y[rows] += scaling[k] * (uk @ b.T)
        if lora_bias is not None and lora_bias[k] is not None:
            y[rows] += scaling[k] * lora_bias[k]
        u[first:first + rows.size, :a.shape[0]] = uk
    return y, u


def lora_mixed_backward(dy, x, u, weight, lora_A, lora_B, scaling, index, *, dx=None, dlora_A=None, dlora_B=None,
                        dlora_bias=None, work=None, iwork=None):
    if dx is not None:
        dx += dy @ weight
    for k, (a, b) in enumerate(zip(lora_A, lora_B)):
        rows, first = _adapter_rows(index, k)
        uk = u[first:first + rows.size, :a.shape[0]]
        gu = dy[rows] @ b
        if dlora_B is not None and dlora_B[k] is not None:
            dlora_B[k] += scaling[k] * dy[rows].T @ uk
        if dlora_bias is not None and dlora_bias[k] is not None:
            dlora_bias[k] += scaling[k] * dy[rows].sum(axis=0)
        if dlora_A is not None and dlora_A[k] is not None:
            dlora_A[k] += scaling[k] * gu.T @ x[rows]
        if dx is not None:
            dx[rows] += scaling[k] * gu @ a


def lora_merge(weight, bias, lora_A, lora_B, lora_bias, scaling, sign=1.0):
    weight += sign * scaling * lora_B @ lora_A
    if lora_bias is not None:
        bias += sign * scaling * lora_bias


def cross_entropy_forward(logits, labels, ignore_index=IGNORE_INDEX, *, probs=None):
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(shifted - lse)
    keep = labels != ignore_index
    count = int(keep.sum())
    if count == 0:
        return 0.0, 0, probs
    nll = -(shifted - lse)[np.nonzero(keep)[0], labels[keep]]
    return float(nll.mean()), count, probs


def cross_entropy_backward(dloss, probs, labels, ignore_index=IGNORE_INDEX, *, dlogits):
    keep = labels != ignore_index
    count = int(keep.sum())
    if count == 0:
        return
    g = probs.copy()
    g[np.nonzero(keep)[0], labels[keep]] -= 1.0
    dlogits += (dloss / count) * g * keep[:, None]


def adamw_step(param, m, v, grad, lr, beta1, beta2, eps, weight_decay, step):
    param *= 1.0 - lr * weight_decay
    m += (grad - m) * (1.0 - beta1)
    v *= beta2
    v += (1.0 - beta2) * grad * grad
    denom = np.sqrt(v) / np.sqrt(1.0 - beta2**step) + eps
    param -= (lr / (1.0 - beta1**step)) * (m / denom)


def sgd_step(param, momentum_buffer, grad, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
             step=1):
    d = grad + weight_decay * param
    if momentum != 0.0:
        if step == 1:
            momentum_buffer[...] = d
        else:
            momentum_buffer *= momentum
            momentum_buffer += (1.0 - dampening) * d
        d = d + momentum * momentum_buffer if nesterov else momentum_buffer.copy()
    param -= lr * d


def sumsq(x):
    return float(np.sum(x.astype(np.float64) ** 2))


def scale_(x, alpha):
    x *= alpha


def zeros(shape):
    return np.zeros(shape, np.float32)


# ---- CNN kernels: conv2d, batch norm, pooling, ReLU (NCHW) ----------------------------------------

def _pair(v):
    return (v, v) if np.isscalar(v) else tuple(v)


def _windows(x, kernel_size, stride, padding, fill):
    """Padded x (N, C, IH, IW) viewed as windows (N, C, OH, OW, KH, KW)."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    return win[:, :, ::sh, ::sw]


def _scatter_windows(dx, g, kernel_size, stride, padding):
    """dx += the adjoint of _windows for g (N, C, OH, OW, KH, KW)."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    n, c, ih, iw = dx.shape
    oh, ow = g.shape[2:4]
    dxp = np.zeros((n, c, ih + 2 * ph, iw + 2 * pw), dtype=dx.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += g[:, :, :, :, i, j]
    dx += dxp[:, :, ph:ph + ih, pw:pw + iw]


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, *, out=None, work=None):
    win = _windows(x, weight.shape[2:], stride, padding, 0.0)
    y = np.einsum("ncyxij,ocij->noyx", win, weight)
    return y + bias[None, :, None, None] if bias is not None else y


def conv2d_backward(dy, x, weight, stride=1, padding=0, *, dx=None, dweight=None, dbias=None, work=None,
                    overwrite_dx=False):
    if dx is not None and overwrite_dx:
        dx[...] = 0
    if dweight is not None:
        dweight += np.einsum("noyx,ncyxij->ocij", dy, _windows(x, weight.shape[2:], stride, padding, 0.0))
    if dbias is not None:
        dbias += dy.sum(axis=(0, 2, 3))
    if dx is not None:
        _scatter_windows(dx, np.einsum("noyx,ocij->ncyxij", dy, weight), weight.shape[2:], stride, padding)


def batchnorm2d_forward(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                        eps=1e-5, *, out=None, mean=None, rstd=None, scale=None, shift=None, output=True):
    if training:
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))
        if running_mean is not None:
            m = x.size // x.shape[1]
            running_mean *= 1.0 - momentum
            running_mean += momentum * mean
            running_var *= 1.0 - momentum
            running_var += momentum * var * m / (m - 1)
    else:
        mean, var = running_mean.copy(), running_var.copy()
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean[None, :, None, None]) * rstd[None, :, None, None]
    if weight is not None:
        y = y * weight[None, :, None, None]
    if bias is not None:
        y = y + bias[None, :, None, None]
    if scale is not None:  # y = (x - mean) * scale + shift
        scale[...] = rstd * (weight if weight is not None else 1.0)
        shift[...] = bias if bias is not None else 0.0
    return (y if output else None), mean, rstd


def batchnorm2d_add_relu_forward(x, residual, running_mean, running_var, weight=None, bias=None, training=False,
                                 momentum=0.1, eps=1e-5, *, residual_map=None, out=None, mean=None, rstd=None):
    y, mean, rstd = batchnorm2d_forward(x, running_mean, running_var, weight, bias, training, momentum, eps)
    r = residual
    if residual_map is not None:
        r_mean, r_scale, r_shift = (v[None, :, None, None] for v in residual_map)
        r = (residual - r_mean) * r_scale + r_shift
    return relu_forward(y + r), mean, rstd


def batchnorm2d_backward(dy, x, mean, rstd, weight, training, *, dx=None, dweight=None, dbias=None,
                         overwrite_dx=False):
    if dx is not None and overwrite_dx:
        dx[...] = 0
    xhat = (x - mean[None, :, None, None]) * rstd[None, :, None, None]
    if dweight is not None:
        dweight += (dy * xhat).sum(axis=(0, 2, 3))
    if dbias is not None:
        dbias += dy.sum(axis=(0, 2, 3))
    if dx is not None:
        g = (weight if weight is not None else np.ones_like(mean)) * rstd
        if training:
            dy = dy - dy.mean(axis=(0, 2, 3), keepdims=True) - xhat * (dy * xhat).mean(axis=(0, 2, 3), keepdims=True)
        dx += g[None, :, None, None] * dy


def maxpool2d_forward(x, kernel_size, stride=None, padding=0, *, out=None, argmax=None):
    stride = kernel_size if stride is None else stride
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    win = _windows(x, (kh, kw), (sh, sw), (ph, pw), -np.inf)
    n, c, oh, ow = win.shape[:4]
    flat = win.reshape(n, c, oh, ow, kh * kw)
    k = flat.argmax(axis=-1)
    y = np.take_along_axis(flat, k[..., None], axis=-1)[..., 0]
    ih = np.arange(oh)[:, None] * sh - ph + k // kw
    iw = np.arange(ow)[None, :] * sw - pw + k % kw
    return y, (ih * x.shape[3] + iw).astype(np.int64)


def maxpool2d_backward(dy, argmax, *, dx):
    n, c, ih, iw = dx.shape
    planes = dx.reshape(n * c, ih * iw)
    rows = np.repeat(np.arange(n * c), argmax[0, 0].size)
    np.add.at(planes, (rows, argmax.reshape(-1)), dy.reshape(-1))
    dx[...] = planes.reshape(dx.shape)


def avgpool2d_forward(x, kernel_size, stride=None, padding=0, *, out=None):
    stride = kernel_size if stride is None else stride
    return _windows(x, kernel_size, stride, padding, 0.0).mean(axis=(4, 5))


def avgpool2d_backward(dy, kernel_size, stride=None, padding=0, *, dx):
    stride = kernel_size if stride is None else stride
    kh, kw = _pair(kernel_size)
    g = np.broadcast_to((dy / (kh * kw))[..., None, None], dy.shape + (kh, kw))
    _scatter_windows(dx, g, kernel_size, stride, padding)


def global_avgpool2d_forward(x, *, out=None):
    return x.mean(axis=(2, 3))


def global_avgpool2d_backward(dy, *, dx):
    dx += (dy / (dx.shape[2] * dx.shape[3]))[:, :, None, None]


def relu_forward(x, *, out=None):
    return np.where(x < 0, 0.0, x).astype(x.dtype)


def relu_backward(dy, x, *, dx):
    dx += np.where(x > 0, dy, 0.0)

# ---- fused batch norm + ReLU ---------------------------------------------------------------------
def batchnorm2d_relu_forward(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                             eps=1e-5, *, out=None, mean=None, rstd=None, scale=None, shift=None):
    y, mean, rstd = batchnorm2d_forward(x, running_mean, running_var, weight, bias, training, momentum, eps,
                                        scale=scale, shift=shift)
    return np.maximum(y, 0.0), mean, rstd


def batchnorm2d_relu_backward(dy, y, x, mean, rstd, weight, training, *, dx=None, dweight=None, dbias=None,
                              overwrite_dx=False, scale=None, shift=None):
    if y is None:
        c = (slice(None), None, None)
        y = (x - mean[c]) * scale[c] + shift[c]
    batchnorm2d_backward(np.where(y > 0, dy, 0.0), x, mean, rstd, weight, training, dx=dx, dweight=dweight,
                         dbias=dbias, overwrite_dx=overwrite_dx)


# ---- transformer encoder ops: embedding sum, LayerNorm, GELU, attention core, pooling ----------
LAYER_NORM_EPS = 1e-12
NORMALIZE_EPS = 1e-12


def embedding_forward(input_ids, token_type_ids, word_embeddings, position_embeddings, token_type_embeddings, *,
                      out=None):
    t = input_ids.shape[1]
    types = np.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    return word_embeddings[input_ids] + position_embeddings[:t][None] + token_type_embeddings[types]


def embedding_backward(dout, input_ids, token_type_ids, padding_idx=None, *, dword_embeddings=None, dposition_embeddings=None,
                       dtoken_type_embeddings=None):
    h = dout.shape[-1]
    types = np.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    if dword_embeddings is not None:
        keep = input_ids.reshape(-1) != (-1 if padding_idx is None else padding_idx)
        np.add.at(dword_embeddings, input_ids.reshape(-1)[keep], dout.reshape(-1, h)[keep])
    if dposition_embeddings is not None:
        dposition_embeddings[:dout.shape[1]] += dout.sum(axis=0)
    if dtoken_type_embeddings is not None:
        np.add.at(dtoken_type_embeddings, types.reshape(-1), dout.reshape(-1, h))


def layernorm_forward(x, weight, bias, eps=LAYER_NORM_EPS, *, out=None, mean=None, rstd=None):
    mean = x.mean(axis=-1)
    rstd = 1.0 / np.sqrt(((x - mean[:, None]) ** 2).mean(axis=-1) + eps)
    return (x - mean[:, None]) * rstd[:, None] * weight + bias, mean, rstd


def layernorm_backward(dout, x, weight, mean, rstd, *, dx=None, dweight=None, dbias=None):
    xhat = (x - mean[:, None]) * rstd[:, None]
    if dweight is not None:
        dweight += (dout * xhat).sum(axis=0)
    if dbias is not None:
        dbias += dout.sum(axis=0)
    if dx is not None:
        g = dout * weight
        dx += rstd[:, None] * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))


def _erf(x):
    from math import erf
    return np.vectorize(erf, otypes=[np.float64])(x)


def gelu_forward(x, *, out=None):
    return (0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))).astype(x.dtype)


def gelu_backward(dout, x, *, dx):
    cdf = 0.5 * (1.0 + _erf(x / np.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)
    dx += (dout * (cdf + x * pdf)).astype(dx.dtype)


def gelu_tanh_forward(x, *, out=None):
    u = np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)
    return (0.5 * x * (1.0 + np.tanh(u))).astype(x.dtype)


def gelu_tanh_backward(dout, x, *, dx):
    u = np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)
    th = np.tanh(u)
    du = np.sqrt(2.0 / np.pi) * (1.0 + 3.0 * 0.044715 * x * x)
    dx += (dout * (0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du)).astype(dx.dtype)


def attention_dropout_mask(b, nh, t, p, seed, offset):
    """Keep-mask (B, NH, T, T) of the attention-probability dropout."""
    return dropout_mask((b, nh, t, t), p, seed, offset)


def _visible(attention_mask, b, t, causal):
    keys = np.ones((b, t), dtype=bool) if attention_mask is None else attention_mask != 0
    vis = np.broadcast_to(keys[:, None, None, :], (b, 1, t, t))
    if causal:
        vis = vis & np.tril(np.ones((t, t), dtype=bool))
    return vis


def attention_forward(q, k, v, num_heads, attention_mask=None, causal=False, dropout=0.0, seed=0, offset=0, *,
                      out=None, att=None, work=None):
    b, t, h = q.shape
    hs = h // num_heads
    heads = lambda a: a.reshape(b, t, num_heads, hs).transpose(0, 2, 1, 3)  # noqa: E731
    s = heads(q) @ heads(k).transpose(0, 1, 3, 2) / np.sqrt(hs)
    vis = _visible(attention_mask, b, t, causal)
    s = np.where(vis, s, -np.inf)
    mx = s.max(axis=-1, keepdims=True)
    e = np.where(vis, np.exp(s - np.where(np.isfinite(mx), mx, 0.0)), 0.0)
    den = e.sum(axis=-1, keepdims=True)
    probs = np.where(den > 0, e / np.where(den > 0, den, 1.0), 0.0)
    pd = probs
    if dropout > 0.0:
        pd = probs * attention_dropout_mask(b, num_heads, t, dropout, seed, offset) / (1.0 - dropout)
    o = (pd @ heads(v)).transpose(0, 2, 1, 3).reshape(b, t, h)
    return o.astype(q.dtype), probs.astype(q.dtype)


def attention_backward(dout, q, k, v, att, num_heads, dropout=0.0, seed=0, offset=0, *, dq=None, dk=None, dv=None,
                       work=None):
    b, t, h = q.shape
    hs = h // num_heads
    heads = lambda a: a.reshape(b, t, num_heads, hs).transpose(0, 2, 1, 3)  # noqa: E731
    merge = lambda a: a.transpose(0, 2, 1, 3).reshape(b, t, h)  # noqa: E731
    keep = attention_dropout_mask(b, num_heads, t, dropout, seed, offset) / (1.0 - dropout) if dropout > 0 else 1.0
    g = heads(dout)
    if dv is not None:
        dv += merge((att * keep).transpose(0, 1, 3, 2) @ g)
    dp = (g @ heads(v).transpose(0, 1, 3, 2)) * keep
    ds = att * (dp - (att * dp).sum(axis=-1, keepdims=True)) / np.sqrt(hs)
    if dq is not None:
        dq += merge(ds @ heads(k))
    if dk is not None:
        dk += merge(ds.transpose(0, 1, 3, 2) @ heads(q))


def mean_pool_forward(x, attention_mask=None, *, out=None):
    m = np.ones(x.shape[:2]) if attention_mask is None else (attention_mask != 0).astype(np.float64)
    count = m.sum(axis=1, keepdims=True)
    return ((x * m[..., None]).sum(axis=1) / np.maximum(count, 1.0)).astype(x.dtype)


def mean_pool_backward(dout, attention_mask=None, *, dx):
    m = np.ones(dx.shape[:2]) if attention_mask is None else (attention_mask != 0).astype(np.float64)
    count = np.maximum(m.sum(axis=1, keepdims=True), 1.0)
    dx += (dout[:, None, :] * (m / count)[..., None]).astype(dx.dtype)


def l2_normalize_forward(x, eps=NORMALIZE_EPS, *, out=None, norm=None):
    norm = np.sqrt((x * x).sum(axis=1))
    return x / np.maximum(norm, eps)[:, None], norm


def l2_normalize_backward(dout, out, norm, eps=NORMALIZE_EPS, *, dx):
    big = (norm > eps)[:, None]
    dot = (out * dout).sum(axis=1, keepdims=True)
    dx += np.where(big, (dout - out * dot) / np.maximum(norm, eps)[:, None], dout / eps)


# ---- fused encoder kernels -----------------------------------------------------------------------
def layernorm_residual_forward(x, residual, weight, bias, eps=LAYER_NORM_EPS, *, out=None, mean=None, rstd=None):
    x += residual
    return layernorm_forward(x, weight, bias, eps)


# ---- packed-sequence attention -------------------------------------------------------------------

def _packed_as_padded(arrays, offsets, starts, seq_len):
    """The packed (N, H) arrays as a padded (S, T, H) batch (zeros at the padding) and its (S, T) mask."""
    lengths = np.diff(offsets)
    first = np.zeros(lengths.size, dtype=np.int64) if starts is None else np.asarray(starts)
    t = max(int(seq_len), int((first + lengths).max(initial=0)))
    mask = np.zeros((lengths.size, t), dtype=np.int64)
    padded = [np.zeros((lengths.size, t, a.shape[1]), dtype=a.dtype) for a in arrays]
    for s, (a, e) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist())):
        mask[s, first[s]:first[s] + e - a] = 1
        for x, p in zip(arrays, padded):
            p[s, first[s]:first[s] + e - a] = x[a:e]
    return padded, mask, first


def attention_packed_forward(q, k, v, offsets, num_heads, dropout=0.0, seed=0, offset=0, *, starts=None, seq_len=0,
                             att=None, out=None, work=None):
    """The padded batch's attention (attention_forward with its key mask) at the real tokens; ``att`` (if given)
    receives the real tokens' probability blocks."""
    (pq, pk, pv), mask, first = _packed_as_padded((q, k, v), offsets, starts, seq_len)
    o, probs = attention_forward(pq, pk, pv, num_heads, mask, False, dropout, seed, offset)
    y = np.zeros_like(q)
    blocks = []
    for s, (a, e) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist())):
        y[a:e] = o[s, first[s]:first[s] + e - a]
        blocks.append(probs[s, :, first[s]:first[s] + e - a, first[s]:first[s] + e - a].reshape(-1))
    if att is not None:
        att[:] = np.concatenate(blocks) if blocks else att[:0]
    return y


def attention_packed_backward(dout, q, k, v, att, offsets, num_heads, dropout=0.0, seed=0, offset=0, *, starts=None,
                              seq_len=0, dq=None, dk=None, dv=None, work=None):
    """The padded batch's attention_backward (dout zero at the padding) at the real tokens; ``att`` is recomputed
    from q, k (the padded probabilities are what it holds at the real tokens)."""
    (pd, pq, pk, pv), mask, first = _packed_as_padded((dout, q, k, v), offsets, starts, seq_len)
    _, probs = attention_forward(pq, pk, pv, num_heads, mask, False)
    grads = [None if g is None else np.zeros_like(pq) for g in (dq, dk, dv)]
    attention_backward(pd, pq, pk, pv, probs, num_heads, dropout, seed, offset, dq=grads[0], dk=grads[1], dv=grads[2])
    for g, pg in zip((dq, dk, dv), grads):
        if g is not None:
            for s, (a, e) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist())):
                g[a:e] += pg[s, first[s]:first[s] + e - a]


# ---- Bone / MiSS and Bat ---------------------------------------------------------------------------

def _bone_full_block(miss_block, out_features):
    """The (r, out) block D: a mini block (r, mini_r) is tiled along the outputs."""
    return np.tile(miss_block, (1, out_features // miss_block.shape[1]))


def _shard_sum(x, r):
    pad = (-x.shape[1]) % r
    xp = np.concatenate([x, np.zeros((x.shape[0], pad), dtype=x.dtype)], axis=1)
    return xp.reshape(x.shape[0], -1, r).sum(axis=1)


def bone_forward(x, weight, bias, miss_block, dropout=0.0, seed=0, offset=0, *, out=None, xd=None, s=None):
    xd = dropout_forward(x, dropout, seed, offset) if dropout > 0.0 else None
    s = _shard_sum(x if xd is None else xd, miss_block.shape[0])
    y = linear_forward(x, weight, bias) + s @ _bone_full_block(miss_block, weight.shape[0])
    return y, xd, s


def bone_backward(dy, s, weight, miss_block, dropout=0.0, seed=0, offset=0, *, dx=None, dmiss_block=None,
                  work=None):
    r, mr = miss_block.shape
    if dmiss_block is not None:
        dmiss_block += (s.T @ dy).reshape(r, -1, mr).sum(axis=1)
    if dx is not None:
        dx += dy @ weight
        gs = dy @ _bone_full_block(miss_block, weight.shape[0]).T
        gx = np.tile(gs, (1, -(-weight.shape[1] // r)))[:, :weight.shape[1]]
        if dropout > 0.0:
            gx = gx * dropout_mask(gx.shape, dropout, seed, offset) / (1.0 - dropout)
        dx += gx


def bone_merge(weight, miss_block, sign=1.0):
    r = miss_block.shape[0]
    delta = _bone_full_block(miss_block, weight.shape[0]).T
    weight += sign * np.tile(delta, (1, -(-weight.shape[1] // r)))[:, :weight.shape[1]]


def bat_weight(weight, miss_block, *, out=None):
    r = miss_block.shape[-1]
    oc, ic = weight.shape
    blocks = weight.reshape(oc // r, r, ic // r, r).transpose(0, 2, 1, 3)   # (i, k, a, c)
    delta = blocks @ miss_block[:, None] + miss_block[:, None]
    return weight + delta.transpose(0, 2, 1, 3).reshape(oc, ic)


def bat_forward(x, weight, bias, miss_block, *, out=None, work=None):
    return linear_forward(x, bat_weight(weight, miss_block), bias)


def bat_backward(dy, x, weight, miss_block, *, dx=None, dmiss_block=None, work=None):
    r = miss_block.shape[-1]
    oc, ic = weight.shape
    if dmiss_block is not None:
        dw = (dy.T @ x).reshape(oc // r, r, ic // r, r).transpose(0, 2, 1, 3)
        blocks = weight.reshape(oc // r, r, ic // r, r).transpose(0, 2, 1, 3)
        dmiss_block += (blocks.transpose(0, 1, 3, 2) @ dw + dw).sum(axis=1)
    if dx is not None:
        dx += dy @ bat_weight(weight, miss_block)


def bat_merge(weight, miss_block):
    weight[...] = bat_weight(weight, miss_block)


def bat_unmerge(weight, miss_block):
    r = miss_block.shape[-1]
    oc, ic = weight.shape
    inverse = np.linalg.inv(np.eye(r, dtype=miss_block.dtype) + miss_block)
    blocks = weight.reshape(oc // r, r, ic // r, r).transpose(0, 2, 1, 3)
    restored = (blocks - miss_block[:, None]) @ inverse[:, None]
    weight[...] = restored.transpose(0, 2, 1, 3).reshape(oc, ic)


# ---- SoRA and Hydra adapters -----------------------------------------------------------------------

def sora_forward(x, weight, bias, lora_A, lora_B, gate, scaling, dropout=0.0, seed=0, offset=0, *, out=None,
                 xd=None, u=None, work=None):
    xd = dropout_forward(x, dropout, seed, offset) if dropout > 0.0 else None
    xin = x if xd is None else xd
    u = xin @ lora_A.T
    y = linear_forward(x, weight, bias) + scaling * ((u * gate) @ lora_B.T)
    return y, xd, u


def sora_backward(dy, xin, u, weight, lora_A, lora_B, gate, scaling, dropout=0.0, seed=0, offset=0, *, dx=None,
                  dlora_A=None, dlora_B=None, dgate=None, work=None):
    h = scaling * (dy @ lora_B)          # dL/dV, V = U diag(g)
    if dlora_B is not None:
        dlora_B += scaling * dy.T @ (u * gate)
    if dgate is not None:
        dgate += (h * u).sum(axis=0)
    du = h * gate
    if dlora_A is not None:
        dlora_A += du.T @ xin
    if dx is not None:
        dx += dy @ weight
        gxd = du @ lora_A
        if dropout > 0.0:
            gxd = gxd * dropout_mask(gxd.shape, dropout, seed, offset) / (1.0 - dropout)
        dx += gxd


def sora_gate_threshold(gate, tau, compat=False):
    g = gate.copy()
    if compat:
        g[g > tau] -= tau
        g[g < -tau] += tau
        g[np.abs(g) < tau] = 0.0
    else:
        g = np.sign(g) * np.maximum(np.abs(g) - tau, 0.0)
    gate[...] = g


def hydra_forward(x, weight, bias, par_A, par_B, seq_A, seq_B, par_scale, seq_scale, *, out=None, y0=None, p=None,
                  q=None):
    y0 = linear_forward(x, weight, bias)
    p = x @ par_A.T
    q = y0 @ seq_A.T
    return y0 + par_scale * p @ par_B.T + seq_scale * q @ seq_B.T, y0, p, q


def hydra_backward(dy, x, y0, p, q, weight, par_A, par_B, seq_A, seq_B, par_scale, seq_scale, *, dx=None,
                   dpar_A=None, dpar_B=None, dseq_A=None, dseq_B=None, work=None):
    gp, gs = dy @ par_B, dy @ seq_B
    if dpar_B is not None:
        dpar_B += par_scale * dy.T @ p
    if dseq_B is not None:
        dseq_B += seq_scale * dy.T @ q
    if dpar_A is not None:
        dpar_A += par_scale * gp.T @ x
    if dseq_A is not None:
        dseq_A += seq_scale * gs.T @ y0
    if dx is not None:
        dy0 = dy + seq_scale * gs @ seq_A
        dx += dy0 @ weight + par_scale * gp @ par_A


def hydra_merge(weight, bias, par_A, par_B, seq_A, seq_B, par_scale, seq_scale, sign=1.0):
    m = np.eye(weight.shape[0], dtype=weight.dtype) + seq_scale * seq_B @ seq_A
    if sign > 0:
        weight[...] = m @ weight + par_scale * par_B @ par_A
        if bias is not None:
            bias[...] = m @ bias
    else:
        weight[...] = np.linalg.solve(m, weight - par_scale * par_B @ par_A)
        if bias is not None:
            bias[...] = np.linalg.solve(m, bias)


# -- test-time adaptation ------------------------------------------------------------------------

def softmax_entropy_forward(logits, *, ent=None, probs=None):
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    h = np.log(np.exp(z).sum(axis=1)) - (p * z).sum(axis=1)
    return h.astype(logits.dtype), p.astype(logits.dtype)


def softmax_entropy_backward(dent, probs, logits, *, dlogits):
    p, z = probs.astype(np.float64), logits.astype(np.float64)
    dlogits += (dent[:, None] * p * ((p * z).sum(axis=1, keepdims=True) - z)).astype(dlogits.dtype)


def eata_select(ent, probs, ema, ema_set, e0, d_margin, momentum=0.9, *, weight=None):
    keep = ent < e0
    reliable = int(keep.sum())
    if ema_set:
        cos = probs @ ema / (np.linalg.norm(probs, axis=1) * np.linalg.norm(ema))
        keep &= np.abs(cos) < d_margin
    w = np.where(keep, 1.0 / np.exp(ent.astype(np.float64) - e0), 0.0).astype(ent.dtype)
    if weight is not None:
        weight[...] = w
    if keep.any():
        mean = probs[keep].astype(np.float64).mean(axis=0)
        ema[...] = momentum * ema + (1 - momentum) * mean if ema_set else mean
        ema_set = True
    return w, reliable, int(keep.sum()), ema_set


# -- few-shot class-incremental learning --------------------------------------------------------

def supcon_forward(z, labels, temperature, *, probs=None):
    n = z.shape[0]
    s = z @ z.T / temperature
    off = ~np.eye(n, dtype=bool)
    s_off = np.where(off, s, -np.inf)
    log_q = s_off - np.log(np.exp(s_off - s_off.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True)) \
        - s_off.max(axis=1, keepdims=True)
    pos = (labels[:, None] == labels[None, :]) & off
    n_pos = pos.sum(axis=1)
    anchors = n_pos > 0
    if not anchors.any():
        return 0.0, 0, np.where(off, np.exp(log_q), 0.0).astype(z.dtype)
    per_anchor = -np.where(pos, log_q, 0.0).sum(axis=1)[anchors] / n_pos[anchors]
    return float(per_anchor.mean()), int(anchors.sum()), np.where(off, np.exp(log_q), 0.0).astype(z.dtype)


def supcon_backward(dloss, probs, z, labels, temperature, *, dz, work=None):
    n = z.shape[0]
    off = ~np.eye(n, dtype=bool)
    pos = (labels[:, None] == labels[None, :]) & off
    n_pos = pos.sum(axis=1)
    anchors = n_pos > 0
    if not anchors.any():
        return
    g = (probs - pos / np.maximum(n_pos, 1)[:, None]) * anchors[:, None] * off
    dz += (dloss / (temperature * anchors.sum())) * ((g + g.T) @ z)


def etf_align_forward(feat, targets, labels, ignore_index=IGNORE_INDEX, *, dots=None):
    keep = labels != ignore_index
    d = np.zeros(feat.shape[0], dtype=feat.dtype)
    d[keep] = (feat[keep] * targets[labels[keep]]).sum(axis=1)
    if not keep.any():
        return 0.0, 0, d
    return float((0.5 * (d[keep] - 1.0) ** 2).mean()), int(keep.sum()), d


def etf_align_backward(dloss, dots, targets, labels, ignore_index=IGNORE_INDEX, *, dfeat):
    keep = labels != ignore_index
    if not keep.any():
        return
    dfeat[keep] += (dloss / keep.sum()) * (dots[keep] - 1.0)[:, None] * targets[labels[keep]]

# ---- data-free distillation losses -----------------------------------------------------------------

def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def kd_kl_forward(student_logits, teacher_logits, tau=1.0, *, student_probs=None, teacher_probs=None):
    ls = _log_softmax(student_logits.astype(np.float64) / tau)
    lt = _log_softmax(teacher_logits.astype(np.float64) / tau)
    rows = (np.exp(lt) * (lt - ls)).sum(axis=1)
    loss = tau * tau * np.maximum(rows, 0.0).sum() / student_logits.shape[0]
    return float(loss), np.exp(ls).astype(student_logits.dtype), np.exp(lt).astype(teacher_logits.dtype)


def kd_kl_backward(dloss, student_probs, teacher_probs, student_logits, teacher_logits, tau=1.0, *,
                   dstudent_logits=None, dteacher_logits=None):
    n = student_logits.shape[0]
    ps, pt = student_probs.astype(np.float64), teacher_probs.astype(np.float64)
    if dstudent_logits is not None:
        dstudent_logits += (dloss * tau / n * (ps - pt)).astype(dstudent_logits.dtype)
    if dteacher_logits is not None:
        lt = _log_softmax(teacher_logits.astype(np.float64) / tau)
        r = lt - _log_softmax(student_logits.astype(np.float64) / tau)
        g = pt * (r - (pt * r).sum(axis=1, keepdims=True))
        dteacher_logits += (dloss * tau / n * g).astype(dteacher_logits.dtype)


def adi_js_forward(student_logits, teacher_logits, tau=3.0, *, student_probs=None, teacher_probs=None):
    ps = np.exp(_log_softmax(student_logits.astype(np.float64) / tau))
    pt = np.exp(_log_softmax(teacher_logits.astype(np.float64) / tau))
    m = np.clip(0.5 * (ps + pt), 0.01, 0.99)
    p, q = np.clip(ps, 0.01, 0.99), np.clip(pt, 0.01, 0.99)
    js = 0.5 * (m * (np.log(m) - np.log(p))).sum() + 0.5 * (m * (np.log(m) - np.log(q))).sum()
    return float(js / ps.shape[0]), ps.astype(student_logits.dtype), pt.astype(teacher_logits.dtype)


def adi_js_backward(dloss, student_probs, teacher_probs, tau=3.0, *, dstudent_logits=None, dteacher_logits=None):
    ps, pt = student_probs.astype(np.float64), teacher_probs.astype(np.float64)
    inside = lambda v: ((v >= 0.01) & (v <= 0.99)).astype(np.float64)  # noqa: E731 (torch.clamp's pass-through)
    mu = 0.5 * (ps + pt)
    m, p, q = np.clip(mu, 0.01, 0.99), np.clip(ps, 0.01, 0.99), np.clip(pt, 0.01, 0.99)
    dm = inside(mu) * (np.log(m) + 1.0 - 0.5 * (np.log(p) + np.log(q)))
    scale = dloss / (ps.shape[0] * tau)
    for probs, clamped, out in ((ps, p, dstudent_logits), (pt, q, dteacher_logits)):
        if out is None:
            continue
        dprob = 0.5 * dm - 0.5 * inside(probs) * m / clamped
        out += (scale * probs * (dprob - (probs * dprob).sum(axis=1, keepdims=True))).astype(out.dtype)


def bn_stat_match_forward(x, running_mean, running_var, *, mean=None, var=None):
    m = x.astype(np.float64).mean(axis=(0, 2, 3))
    v = x.astype(np.float64).var(axis=(0, 2, 3))
    loss = np.linalg.norm(m - running_mean) + np.linalg.norm(v - running_var)
    return float(loss), m.astype(x.dtype), v.astype(x.dtype)


def bn_stat_match_backward(dloss, x, mean, var, running_mean, running_var, *, dx):
    count = x.shape[0] * x.shape[2] * x.shape[3]
    dm, dv = mean - running_mean, var - running_var
    a = dm / np.linalg.norm(dm) if np.linalg.norm(dm) > 0 else np.zeros_like(dm)
    b = dv / np.linalg.norm(dv) if np.linalg.norm(dv) > 0 else np.zeros_like(dv)
    g = a[None, :, None, None] / count + 2.0 * b[None, :, None, None] * (x - mean[None, :, None, None]) / count
    dx += (dloss * g).astype(dx.dtype)


def dafl_activation_forward(features):
    return float(-np.abs(features.astype(np.float64)).mean())


def dafl_activation_backward(dloss, features, *, dfeatures):
    dfeatures += (-dloss * np.sign(features) / features.size).astype(dfeatures.dtype)


def dafl_entropy_forward(logits, *, probs=None, mean_probs=None):
    p = np.exp(_log_softmax(logits.astype(np.float64)))
    pbar = p.mean(axis=0)
    loss = float((pbar * np.log(pbar)).sum())
    return loss, p.astype(logits.dtype), pbar.astype(logits.dtype)


def dafl_entropy_backward(dloss, probs, mean_probs, *, dlogits):
    l = np.log(mean_probs.astype(np.float64))
    p = probs.astype(np.float64)
    g = p * (l[None, :] - (p * l[None, :]).sum(axis=1, keepdims=True)) / p.shape[0]
    dlogits += (dloss * g).astype(dlogits.dtype)


def _tv_differences(x):
    """DeepInversion's four neighbour differences, in its code's order."""
    return [x[:, :, :, :-1] - x[:, :, :, 1:], x[:, :, :-1, :] - x[:, :, 1:, :],
            x[:, :, 1:, :-1] - x[:, :, :-1, 1:], x[:, :, :-1, :-1] - x[:, :, 1:, 1:]]


def tv_forward(x, *, norms=None):
    d = _tv_differences(x.astype(np.float64))
    n = np.array([np.linalg.norm(v) for v in d])
    return float(sum(np.abs(v).mean() for v in d)), float(n.sum()), n.astype(x.dtype)


def tv_backward(dl1, dl2, x, norms, *, dx):
    g = np.zeros(x.shape)
    d = _tv_differences(x.astype(np.float64))
    # the (row, column) slices of each difference's first and second operand
    whole, head, tail = slice(None), slice(None, -1), slice(1, None)
    ops = [((whole, head), (whole, tail)), ((head, whole), (tail, whole)),
           ((tail, head), (head, tail)), ((head, head), (tail, tail))]
    for v, n, (a, b) in zip(d, norms, ops):
        gv = dl1 * np.sign(v) / v.size + (dl2 * v / n if n > 0 else 0.0)
        g[(Ellipsis, *a)] += gv
        g[(Ellipsis, *b)] -= gv
    dx += g.astype(dx.dtype)


# ---- EVA kernels: incremental PCA of a layer's input rows -------------------------------------------

def ipca_workspace_size(n_rows, in_features, n_components):
    return 0


def ipca_update(x, components, singular_values, mean, var, n_seen, *, explained_variance_ratio=None, cosine=None,
                work=None):
    """sklearn's IncrementalPCA.partial_fit step in float64 with an exact SVD (see peftc.functional)."""
    x = np.asarray(x, dtype=np.float64)
    m = x.shape[0]
    k = components.shape[0]
    n = float(n_seen)
    total = n + m
    batch_sum = x.sum(axis=0)
    batch_mean = batch_sum / m
    new_unnorm = ((x - batch_mean) ** 2).sum(axis=0)
    if n_seen == 0:
        new_mean = batch_mean
        new_var = new_unnorm / total
        z = x - new_mean
    else:
        old_mean = mean.astype(np.float64)
        last_sum = old_mean * n
        new_mean = (last_sum + batch_sum) / total
        ratio = n / m
        new_var = (var.astype(np.float64) * n + new_unnorm + ratio / total * (last_sum / ratio - batch_sum) ** 2) / total
        corr = np.sqrt(n / total * m) * (old_mean - batch_mean)
        z = np.vstack([singular_values.astype(np.float64)[:, None] * components.astype(np.float64),
                       x - batch_mean, corr[None, :]])
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    vt = vt[:k]
    s = s[:k]
    pick = np.argmax(np.abs(vt), axis=1)
    vt = vt * np.sign(vt[np.arange(k), pick])[:, None]
    if n_seen == 0:
        cos = np.zeros(k)
    else:
        old = components.astype(np.float64)
        cos = (vt * old).sum(axis=1) / (np.linalg.norm(vt, axis=1) * np.linalg.norm(old, axis=1))
    evr = s ** 2 / (total * new_var.sum())
    components[...] = vt
    singular_values[...] = s
    mean[...] = new_mean
    var[...] = new_var
    if explained_variance_ratio is not None:
        explained_variance_ratio[...] = evr
    if cosine is not None:
        cosine[...] = cos
    return (evr.astype(np.float32) if explained_variance_ratio is None else explained_variance_ratio,
            cos.astype(np.float32) if cosine is None else cosine)


def attention_cached_forward(q, k_cache, v_cache, length, num_heads, *, out=None, work=None):
    """Causal attention of the new queries against the cache's first ``length`` rows."""
    b, tq, h = q.shape
    hs = h // num_heads
    out = np.zeros_like(q)
    past = length - tq
    for hd in range(num_heads):
        cols = slice(hd * hs, (hd + 1) * hs)
        s = q[:, :, cols] @ np.swapaxes(k_cache[:, :length, cols], 1, 2) / np.sqrt(hs)
        visible = np.arange(length)[None, :] <= past + np.arange(tq)[:, None]
        s = np.where(visible, s, -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        out[:, :, cols] = (s / s.sum(-1, keepdims=True)) @ v_cache[:, :length, cols]
    return out


def sample_tokens(logits, temperature=1.0, top_k=0, top_p=1.0, seed=0, offset=0, *, tokens=None, probs=None):
    """Hugging Face's warpers as written (sorting), then the inverse-CDF draw at uniform(seed, offset + n)."""
    logits = np.asarray(logits, dtype=np.float64)
    n, v = logits.shape
    if temperature == 0.0:
        arg = logits.argmax(axis=1)
        return arg.astype(np.int64), np.eye(v)[arg]
    z = logits / temperature
    if 0 < top_k < v:
        kth = np.sort(z, axis=1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(p, axis=1, kind="stable")  # ascending, as TopPLogitsWarper sorts
        cum = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
        remove_sorted = cum <= 1.0 - top_p
        remove_sorted[:, -1] = False  # min_tokens_to_keep = 1
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=1)
        p = np.where(remove, 0.0, p)
        p /= p.sum(axis=1, keepdims=True)
    u = rng_uniform01(seed, offset + np.arange(n, dtype=np.uint64)).astype(np.float64)
    cdf = np.cumsum(p, axis=1)
    tok = np.array([min(int(np.searchsorted(cdf[i], u[i], side="right")), v - 1) for i in range(n)])
    return tok.astype(np.int64), p
