"""Stateless calls of peftc's C kernels.

Conventions (the same for every function here and in :mod:`peftc.reference`):

* arrays are float32 and C-contiguous (labels: int64); nothing is converted or copied silently;
  anything else raises ``TypeError``/``ValueError`` naming the argument and its shape. The kernels
  in ``peftc._C`` take any buffer-protocol object of that format in place of an ndarray
  (``memoryview``, ``array.array``, :class:`Buffer`), with the same checks and no copy;
* forward functions return their outputs and take an optional ``out=`` (and cache buffers) to
  write into; the caller's arrays are then returned, not copies;
* backward functions **accumulate** into the gradient buffers passed to them (``None`` means the
  gradient is not wanted) and return nothing.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _C

IGNORE_INDEX = -100

# Zero-filled, 64-byte aligned float32 / int64 storage the C side owns (see its docstring), e.g. a
# workspace kept between kernel calls: ``np.asarray(buf)`` and the kernels use it in place.
Buffer = _C.Buffer


def _empty(shape: tuple[int, ...], out: np.ndarray | None) -> np.ndarray:
    return np.empty(shape, dtype=np.float32) if out is None else out


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, *,
                   out: np.ndarray | None = None) -> np.ndarray:
    """y = x weight^T + bias, with x (N, IC), weight (OC, IC), bias (OC,) or None."""
    y = _empty((x.shape[0], weight.shape[0]), out)
    _C.linear_forward(y, x, weight, bias)
    return y


def linear_backward(dy: np.ndarray, x: np.ndarray | None, weight: np.ndarray, *, dx: np.ndarray | None = None,
                    dweight: np.ndarray | None = None, dbias: np.ndarray | None = None) -> None:
    """Accumulate dx += dy weight, dweight += dy^T x, dbias += sum(dy) into the buffers given."""
    _C.linear_backward(dx, dweight, dbias, dy, x, weight)


def lora_scaling(r: int, lora_alpha: float, use_rslora: bool = False) -> float:
    """PEFT's scale: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    if r <= 0:
        raise ValueError(f"LoRA rank r must be > 0, got {r}")
    return float(lora_alpha) / (float(np.sqrt(r)) if use_rslora else float(r))


def lora_forward(x: np.ndarray, weight: np.ndarray | None, bias: np.ndarray | None, lora_A: np.ndarray,
                 lora_B: np.ndarray, lora_bias: np.ndarray | None, scaling: float, dropout: float = 0.0,
                 seed: int = 0, offset: int = 0, *, out: np.ndarray | None = None, xd: np.ndarray | None = None,
                 u: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """y = x W^T + b + scaling * (dropout(x) A^T B^T + lora_bias).

    Returns ``(y, xd, u)``: the output, the dropped adapter input (None when ``dropout == 0``) and
    ``u = xd A^T``; the last two are what :func:`lora_backward` needs. The dropout mask is element
    i -> uniform(seed, offset + i) >= dropout. ``weight=None`` leaves out the x W^T term (a bf16 frozen
    base adds it with :func:`peftc.bf16.linear_forward`).
    """
    n, r = x.shape[0], lora_A.shape[0]
    y = _empty((n, lora_B.shape[0]), out)
    if dropout > 0.0 and xd is None:
        xd = np.empty_like(x)
    u = _empty((n, r), u)
    _C.lora_forward(y, xd if dropout > 0.0 else None, u, x, weight, bias, lora_A, lora_B, lora_bias,
                    scaling, dropout, seed, offset)
    return y, (xd if dropout > 0.0 else None), u


def lora_backward_workspace_size(n: int, in_features: int, r: int, dropout: float) -> int:
    """Floats of scratch :func:`lora_backward` needs."""
    return _C.lora_backward_workspace_size(n, in_features, r, dropout)


def lora_backward(dy: np.ndarray, xin: np.ndarray, u: np.ndarray, weight: np.ndarray | None, lora_A: np.ndarray,
                  lora_B: np.ndarray, scaling: float, dropout: float = 0.0, seed: int = 0, offset: int = 0, *,
                  dx: np.ndarray | None = None, dlora_A: np.ndarray | None = None,
                  dlora_B: np.ndarray | None = None, dlora_bias: np.ndarray | None = None,
                  work: np.ndarray | None = None) -> None:
    """Accumulate the LoRA gradients. ``xin`` is ``xd`` from the forward when dropout > 0, else x.
    ``weight=None`` leaves out the base term dy W of dx (a bf16 frozen base adds it)."""
    if work is None:
        work = np.empty(lora_backward_workspace_size(dy.shape[0], xin.shape[1], lora_A.shape[0], dropout),
                        dtype=np.float32)
    _C.lora_backward(dx, dlora_A, dlora_B, dlora_bias, work, dy, xin, u, weight, lora_A, lora_B, scaling,
                     dropout, seed, offset)


def lora_merge(weight: np.ndarray, bias: np.ndarray | None, lora_A: np.ndarray, lora_B: np.ndarray,
               lora_bias: np.ndarray | None, scaling: float, sign: float = 1.0) -> None:
    """In place: weight += sign * scaling * B A (and bias += sign * scaling * lora_bias)."""
    _C.lora_merge(weight, bias, lora_A, lora_B, lora_bias, scaling, sign)


def lora_mixed_gathered_rows(index: np.ndarray, n_adapters: int) -> int:
    """The rows of the largest adapter group of ``index`` that is not one block of consecutive rows: the rows the
    lora_mixed kernels gather into their workspace (0 for a batch built adapter by adapter).

    Example:
        >>> lora_mixed_gathered_rows(np.array([0, 0, 1, 1, -1]), 2), lora_mixed_gathered_rows(np.array([0, 1, 0]), 2)
        (0, 2)
    """
    index = np.asarray(index)
    if index.size == 0:
        return 0
    # a group is one block when its rows form one run of equal indices
    runs = index[np.flatnonzero(np.r_[True, index[1:] != index[:-1]])]
    runs = np.bincount(runs[runs >= 0], minlength=n_adapters)
    counts = np.bincount(index[index >= 0], minlength=n_adapters)
    return int(counts[runs > 1].max(initial=0))


def lora_mixed_workspace_size(n: int, gathered: int, in_features: int, out_features: int, max_rank: int) -> int:
    """Floats of scratch :func:`lora_mixed_forward` and :func:`lora_mixed_backward` need (one buffer serves both);
    ``gathered``: :func:`lora_mixed_gathered_rows` of the batch (``n`` is enough for any batch of n rows)."""
    return _C.lora_mixed_workspace_size(n, gathered, in_features, out_features, max_rank)


def lora_mixed_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, lora_A: Sequence[np.ndarray],
                       lora_B: Sequence[np.ndarray], lora_bias: Sequence[np.ndarray | None] | None,
                       scaling: np.ndarray, index: np.ndarray, *, out: np.ndarray | None = None,
                       u: np.ndarray | None = None, work: np.ndarray | None = None,
                       iwork: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """LoRA with one adapter per row: y[n] = x[n] W^T + b + s_k (x[n] A_k^T B_k^T + lora_bias_k), k = index[n].

    ``lora_A`` / ``lora_B`` / ``lora_bias``: one array per adapter (K of them; ``lora_bias`` entries, or the
    whole argument, may be None); ``scaling`` float32 (K,); ``index`` int64 (N,) in [-1, K), -1 for a row
    that runs the base layer alone. The kernel groups the rows by adapter itself (one call per layer,
    one frozen GEMM for all rows). No dropout. Returns ``(y, u)``; ``u`` (N, max rank) is what
    :func:`lora_mixed_backward` needs. ``work`` (:func:`lora_mixed_workspace_size` floats) and ``iwork``
    (N + K + 1 int64) are scratch a caller may keep between calls. ``weight=None`` (and ``bias=None``): ``out``
    holds the base output x W^T + b on entry (the caller's product, e.g. made once for identical rows) and the
    adapters are added into it.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x, w = rng.standard_normal((3, 4), np.float32), rng.standard_normal((5, 4), np.float32)
        >>> a = [rng.standard_normal((2, 4), np.float32) for _ in range(2)]    # two rank-2 adapters
        >>> b = [rng.standard_normal((5, 2), np.float32) for _ in range(2)]
        >>> scales, index = np.float32([2.0, 0.5]), np.array([1, -1, 0])  # row 0: adapter 1, 1: none, 2: adapter 0
        >>> y, u = lora_mixed_forward(x, w, None, a, b, None, scales, index)
        >>> bool(np.allclose(y[2], x[2] @ w.T + 2.0 * (x[2] @ a[0].T @ b[0].T), atol=1e-5))
        True
    """
    n, k = x.shape[0], len(lora_A)
    rm = max((a.shape[0] for a in lora_A), default=0)
    if weight is None and out is None:
        raise ValueError("lora_mixed_forward: weight=None needs out, holding the base output x W^T + b")
    y = out if out is not None else np.empty((n, weight.shape[0]), dtype=np.float32)
    u = _empty((n, rm), u)
    if work is None:
        work = np.empty(lora_mixed_workspace_size(n, lora_mixed_gathered_rows(index, k), x.shape[1], y.shape[1],
                                                  rm), dtype=np.float32)
    if iwork is None:
        iwork = np.empty(n + k + 1, dtype=np.int64)
    _C.lora_mixed_forward(y, u, work, iwork, x, weight, bias, lora_A, lora_B, lora_bias, scaling, index)
    return y, u


def lora_mixed_backward(dy: np.ndarray, x: np.ndarray, u: np.ndarray, weight: np.ndarray,
                        lora_A: Sequence[np.ndarray], lora_B: Sequence[np.ndarray], scaling: np.ndarray,
                        index: np.ndarray, *, dx: np.ndarray | None = None,
                        dlora_A: Sequence[np.ndarray | None] | None = None,
                        dlora_B: Sequence[np.ndarray | None] | None = None,
                        dlora_bias: Sequence[np.ndarray | None] | None = None, work: np.ndarray | None = None,
                        iwork: np.ndarray | None = None) -> None:
    """Accumulate the gradients of :func:`lora_mixed_forward`: adapter k's from its own rows only, dx from all.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x, w = rng.standard_normal((3, 4), np.float32), rng.standard_normal((5, 4), np.float32)
        >>> a = [rng.standard_normal((2, 4), np.float32) for _ in range(2)]
        >>> b = [rng.standard_normal((5, 2), np.float32) for _ in range(2)]
        >>> scales, index = np.float32([2.0, 0.5]), np.array([1, -1, 0])
        >>> _, u = lora_mixed_forward(x, w, None, a, b, None, scales, index)
        >>> dy, dx = np.ones((3, 5), np.float32), np.zeros((3, 4), np.float32)
        >>> da, db = [np.zeros_like(t) for t in a], [np.zeros_like(t) for t in b]
        >>> lora_mixed_backward(dy, x, u, w, a, b, scales, index, dx=dx, dlora_A=da, dlora_B=db)
        >>> bool(np.allclose(db[0], 2.0 * dy[2:].T @ (x[2:] @ a[0].T), atol=1e-5))  # row 2's alone
        True
    """
    n, k = dy.shape[0], len(lora_A)
    if work is None:
        work = np.empty(lora_mixed_workspace_size(n, lora_mixed_gathered_rows(index, k), x.shape[1], dy.shape[1],
                                                  u.shape[1]), dtype=np.float32)
    if iwork is None:
        iwork = np.empty(n + k + 1, dtype=np.int64)
    _C.lora_mixed_backward(dx, dlora_A, dlora_B, dlora_bias, work, iwork, dy, x, u, weight, lora_A, lora_B, scaling,
                           index)


def sample_tokens(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                  offset: int = 0, *, tokens: np.ndarray | None = None,
                  probs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One token per row of logits (N, V), as Hugging Face's sampling: logits / temperature, top-k, softmax,
    top-p, renormalise, then row n draws by the inverse CDF at uniform(seed, offset + n). ``temperature=0``
    is greedy; ``top_k=0`` and ``top_p=1`` switch those filters off. Returns ``(tokens (N,) int64, probs
    (N, V))``, probs being the distribution each token was drawn from.

    >>> tokens, probs = sample_tokens(np.log(np.array([[0.7, 0.2, 0.1]], np.float32)), top_p=0.8, seed=3)
    >>> [round(p, 3) for p in probs[0].tolist()]
    [0.778, 0.222, 0.0]
    """
    n, v = logits.shape
    tok = np.empty(n, dtype=np.int64) if tokens is None else tokens
    p = np.empty((n, v), dtype=np.float32) if probs is None else probs
    _C.sample_tokens(tok, p, logits, temperature, top_k, top_p, seed, offset)
    return tok, p


def dropout_forward(x: np.ndarray, p: float, seed: int = 0, offset: int = 0, *,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Inverted dropout with the counter-based mask (see :func:`lora_forward`)."""
    y = np.empty_like(x) if out is None else out
    _C.dropout_forward(y, x, p, seed, offset)
    return y


def dropout_backward(dout: np.ndarray, p: float, seed: int = 0, offset: int = 0, *, dx: np.ndarray) -> None:
    """dx += dout * mask / (1 - p), the mask regenerated from (seed, offset)."""
    _C.dropout_backward(dx, dout, p, seed, offset)


def dropout_rows_forward(x: np.ndarray, rows: np.ndarray, p: float, seed: int = 0, offset: int = 0, *,
                         out: np.ndarray | None = None) -> np.ndarray:
    """Dropout of x (N, C) as rows ``rows`` (int64 (N,)) of a larger (R, C) array: the mask
    :func:`dropout_forward` draws for that array, at those rows (a packed batch drops what its padded
    batch drops).

    >>> x = np.ones((2, 3), np.float32)
    >>> whole = dropout_forward(np.ones((4, 3), np.float32), 0.5, seed=1)
    >>> bool((dropout_rows_forward(x, np.array([3, 1]), 0.5, seed=1) == whole[[3, 1]]).all())
    True
    """
    y = np.empty_like(x) if out is None else out
    _C.dropout_rows_forward(y, x, rows, p, seed, offset)
    return y


def dropout_rows_backward(dout: np.ndarray, rows: np.ndarray, p: float, seed: int = 0, offset: int = 0, *,
                          dx: np.ndarray) -> None:
    """dx += dout * mask / (1 - p) with the mask of :func:`dropout_rows_forward`."""
    _C.dropout_rows_backward(dx, dout, rows, p, seed, offset)


def rng_uniform(shape: tuple[int, ...], low: float, high: float, seed: int, offset: int = 0, *,
                out: np.ndarray | None = None) -> np.ndarray:
    """Uniform [low, high) draws; element i depends only on (seed, offset + i)."""
    y = _empty(shape, out)
    _C.rng_uniform(y, low, high, seed, offset)
    return y


def rng_normal(shape: tuple[int, ...], mean: float, std: float, seed: int, offset: int = 0, *,
               out: np.ndarray | None = None) -> np.ndarray:
    """Normal draws (Box-Muller); element i uses counters 2(offset+i) and 2(offset+i)+1."""
    y = _empty(shape, out)
    _C.rng_normal(y, mean, std, seed, offset)
    return y


def cross_entropy_forward(logits: np.ndarray, labels: np.ndarray, ignore_index: int = IGNORE_INDEX, *,
                          probs: np.ndarray | None = None) -> tuple[float, int, np.ndarray]:
    """Mean softmax cross-entropy over rows whose label != ignore_index.

    Returns ``(loss, count, probs)``; with no counted row the loss is 0.0 and count 0.
    """
    p = np.empty_like(logits) if probs is None else probs
    loss, count = _C.cross_entropy_forward(p, logits, labels, ignore_index)
    return loss, count, p


def cross_entropy_backward(dloss: float, probs: np.ndarray, labels: np.ndarray,
                           ignore_index: int = IGNORE_INDEX, *, dlogits: np.ndarray) -> None:
    """dlogits += dloss * (probs - onehot(labels)) / count."""
    _C.cross_entropy_backward(dlogits, dloss, probs, labels, ignore_index)


def adamw_step(param: np.ndarray, m: np.ndarray, v: np.ndarray, grad: np.ndarray, lr: float, beta1: float,
               beta2: float, eps: float, weight_decay: float, step: int) -> None:
    """One AdamW step in place (torch.optim.AdamW's math); ``step`` is 1-based."""
    _C.adamw_step(param, m, v, grad, lr, beta1, beta2, eps, weight_decay, step)


def sgd_step(param: np.ndarray, momentum_buffer: np.ndarray | None, grad: np.ndarray, lr: float,
             momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
             step: int = 1) -> None:
    """One SGD step in place (torch.optim.SGD's math); ``step`` is 1-based."""
    _C.sgd_step(param, momentum_buffer, grad, lr, momentum, dampening, weight_decay, nesterov, step)


def sumsq(x: np.ndarray) -> float:
    """Sum of squares, accumulated in double."""
    return _C.sumsq(x)


def scale_(x: np.ndarray, alpha: float) -> None:
    """x *= alpha in place."""
    _C.scale_inplace(x, alpha)


def zeros(shape: tuple[int, ...]) -> np.ndarray:
    """A new C-contiguous float32 array of zeros, written by the kernel threads: the buffers backward
    kernels accumulate into (what ``np.zeros`` gives, on one thread)."""
    out = np.empty(shape, dtype=np.float32)
    _C.fill(out, 0.0)
    return out


# ---- CNN kernels: conv2d, batch norm, pooling, ReLU (NCHW float32) -------------------------------

def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    """An int or a pair of ints as (height, width)."""
    pair = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(pair) != 2 or not all(isinstance(p, (int, np.integer)) for p in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    return int(pair[0]), int(pair[1])


def conv2d_output_size(in_hw: tuple[int, int], kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1,
                       padding: int | tuple[int, int] = 0) -> tuple[int, int]:
    """(OH, OW) of a window sweep in torch's floor mode: (IH + 2 PH - KH) // SH + 1, likewise W."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size, "kernel_size"), _pair(stride, "stride"), _pair(padding, "padding")
    if kh <= 0 or kw <= 0 or sh <= 0 or sw <= 0 or ph < 0 or pw < 0:
        raise ValueError(f"need kernel > 0, stride > 0, padding >= 0; got kernel {(kh, kw)}, stride {(sh, sw)}, "
                         f"padding {(ph, pw)}")
    ih, iw = in_hw
    if ih + 2 * ph < kh or iw + 2 * pw < kw:
        raise ValueError(f"padded input ({ih}+2*{ph}, {iw}+2*{pw}) is smaller than the kernel {(kh, kw)}")
    return (ih + 2 * ph - kh) // sh + 1, (iw + 2 * pw - kw) // sw + 1


def conv2d_workspace_size(x_shape: tuple[int, ...], weight_shape: tuple[int, ...],
                          stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0) -> int:
    """Floats of scratch :func:`conv2d_forward` and :func:`conv2d_backward` need for input shape
    (N, IC, IH, IW) and weight shape (OC, IC, KH, KW): one block of images' Winograd tiles or patch matrix."""
    if len(weight_shape) != 4:
        raise ValueError(f"conv2d weight must be (OC, IC, KH, KW), got shape {tuple(weight_shape)}")
    if len(x_shape) != 4:
        raise ValueError(f"conv2d input must be (N, IC, IH, IW), got shape {tuple(x_shape)}")
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    n, ic, ih, iw = x_shape
    oc, _, kh, kw = weight_shape
    return _C.conv2d_workspace_size(n, ic, ih, iw, oc, kh, kw, sh, sw, ph, pw)


def _conv_work(x_shape: tuple[int, ...], weight: np.ndarray, stride, padding,
               work: np.ndarray | None) -> tuple[np.ndarray, tuple[int, int]]:
    if weight.ndim != 4:
        raise ValueError(f"conv2d weight must be (OC, IC, KH, KW), got shape {weight.shape}")
    if len(x_shape) != 4:
        raise ValueError(f"conv2d input must be (N, IC, IH, IW), got shape {tuple(x_shape)}")
    out_hw = conv2d_output_size(x_shape[2:], weight.shape[2:], stride, padding)
    if work is None:
        work = np.empty(conv2d_workspace_size(x_shape, weight.shape, stride, padding), dtype=np.float32)
    return work, out_hw


def conv2d_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
                   stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, *,
                   out: np.ndarray | None = None, work: np.ndarray | None = None) -> np.ndarray:
    """y = conv2d(x, weight) + bias like ``torch.nn.functional.conv2d`` (dilation 1, groups 1).

    x (N, IC, IH, IW), weight (OC, IC, KH, KW), bias (OC,) or None; returns y (N, OC, OH, OW).
    ``work`` is scratch of :func:`conv2d_workspace_size` floats (allocated when not given).
    """
    work, (oh, ow) = _conv_work(x.shape, weight, stride, padding, work)
    y = _empty((x.shape[0], weight.shape[0], oh, ow), out)
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    _C.conv2d_forward(y, work, x, weight, bias, sh, sw, ph, pw)
    return y


def conv2d_backward(dy: np.ndarray, x: np.ndarray | None, weight: np.ndarray, stride: int | tuple[int, int] = 1,
                    padding: int | tuple[int, int] = 0, *, dx: np.ndarray | None = None,
                    dweight: np.ndarray | None = None, dbias: np.ndarray | None = None,
                    work: np.ndarray | None = None, overwrite_dx: bool = False) -> None:
    """Accumulate the conv2d gradients into dx, dweight, dbias (None = not wanted).

    ``x`` is needed only for ``dweight``; without it the input size is taken from ``dx``.
    ``overwrite_dx``: dx is overwritten instead (a fresh ``np.empty`` buffer needs no zeroing).
    """
    shape = x.shape if x is not None else (dx.shape if dx is not None else None)
    if shape is None:
        raise ValueError("conv2d_backward: give dx or x so that the input size is known")
    work, _ = _conv_work(shape, weight, stride, padding, work)
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    _C.conv2d_backward(dx, dweight, dbias, work, dy, x, weight, sh, sw, ph, pw, overwrite_dx)


def batchnorm2d_forward(x: np.ndarray, running_mean: np.ndarray | None, running_var: np.ndarray | None,
                        weight: np.ndarray | None = None, bias: np.ndarray | None = None, training: bool = False,
                        momentum: float = 0.1, eps: float = 1e-5, *, out: np.ndarray | None = None,
                        mean: np.ndarray | None = None, rstd: np.ndarray | None = None,
                        scale: np.ndarray | None = None, shift: np.ndarray | None = None,
                        output: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Batch norm over (N, H, W) per channel, argument order and math of ``torch.nn.functional.batch_norm``.

    * ``training=True`` with running buffers: batch statistics; the buffers are updated in place
      (momentum, unbiased variance), as in ``nn.BatchNorm2d.train()``;
    * ``training=True`` with ``running_mean = running_var = None``: batch statistics, nothing
      updated (the test-batch statistics of BN-adapt and TENT);
    * ``training=False``: the running statistics, read only.

    Returns ``(y, mean, rstd)``: the statistics used, which :func:`batchnorm2d_backward` needs.
    ``scale`` and ``shift`` (float32 (C,) arrays, both or neither) receive each channel's float map,
    ``y = (x - mean) * scale + shift``; ``output=False`` computes only the statistics and the map (y is
    None), for a norm that :func:`batchnorm2d_add_relu_forward` applies inside its own pass.
    """
    ch = x.shape[1] if x.ndim == 4 else 0
    y = (np.empty_like(x) if out is None else out) if output else None
    mean = _empty((ch,), mean)
    rstd = _empty((ch,), rstd)
    _C.batchnorm2d_forward(y, mean, rstd, running_mean, running_var, x, weight, bias, bool(training), momentum, eps,
                           scale, shift)
    return y, mean, rstd


def batchnorm2d_add_relu_forward(x: np.ndarray, residual: np.ndarray, running_mean: np.ndarray | None,
                                 running_var: np.ndarray | None, weight: np.ndarray | None = None,
                                 bias: np.ndarray | None = None, training: bool = False, momentum: float = 0.1,
                                 eps: float = 1e-5, *,
                                 residual_map: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                                 out: np.ndarray | None = None, mean: np.ndarray | None = None,
                                 rstd: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A residual block's output ``relu(batchnorm2d(x) + r)`` in the norm's own pass, never writing
    ``batchnorm2d(x)``: r is ``residual``, or, with ``residual_map = (mean, scale, shift)`` of another
    norm (from :func:`batchnorm2d_forward` with ``output=False``), that norm's output
    ``(residual - mean) * scale + shift`` computed on the fly. The same bits as the norms, their sum
    and :func:`relu_forward` in turn; arguments, modes and returned statistics of
    :func:`batchnorm2d_forward`. Both norms' backwards take the output as ``relu_y``."""
    ch = x.shape[1] if x.ndim == 4 else 0
    y = np.empty_like(x) if out is None else out
    mean = _empty((ch,), mean)
    rstd = _empty((ch,), rstd)
    _C.batchnorm2d_add_relu_forward(y, mean, rstd, running_mean, running_var, x, weight, bias, residual,
                                    *(residual_map or (None, None, None)), bool(training), momentum, eps)
    return y, mean, rstd


def batchnorm2d_backward(dy: np.ndarray, x: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
                         weight: np.ndarray | None, training: bool, *, dx: np.ndarray | None = None,
                         dweight: np.ndarray | None = None, dbias: np.ndarray | None = None,
                         overwrite_dx: bool = False) -> None:
    """Accumulate batch-norm gradients. ``training`` must be what the forward used: with batch
    statistics the gradient also flows through the mean and variance; with running statistics it
    is the per-channel affine map's. ``overwrite_dx``: dx is overwritten instead of accumulated."""
    _C.batchnorm2d_backward(dx, dweight, dbias, dy, x, mean, rstd, weight, bool(training), overwrite_dx)


def _pool_geometry(x_shape: tuple[int, ...], kernel_size, stride, padding):
    if len(x_shape) != 4:
        raise ValueError(f"pooling input must be (N, CH, IH, IW), got shape {tuple(x_shape)}")
    k = _pair(kernel_size, "kernel_size")
    s = k if stride is None else _pair(stride, "stride")
    p = _pair(padding, "padding")
    return k, s, p, conv2d_output_size(x_shape[2:], k, s, p)


def maxpool2d_forward(x: np.ndarray, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                      padding: int | tuple[int, int] = 0, *, out: np.ndarray | None = None,
                      argmax: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Max pooling like ``torch.nn.functional.max_pool2d`` (stride defaults to the kernel size).

    Returns ``(y, argmax)``: argmax (int64, y's shape) is each maximum's flat index ih*IW + iw in
    its input plane, what :func:`maxpool2d_backward` needs.
    """
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = _pool_geometry(x.shape, kernel_size, stride, padding)
    y = _empty((x.shape[0], x.shape[1], oh, ow), out)
    argmax = np.empty(y.shape, dtype=np.int64) if argmax is None else argmax
    _C.maxpool2d_forward(y, argmax, x, kh, kw, sh, sw, ph, pw)
    return y, argmax


def maxpool2d_backward(dy: np.ndarray, argmax: np.ndarray, *, dx: np.ndarray) -> None:
    """dx[argmax] += dy, plane by plane."""
    _C.maxpool2d_backward(dx, dy, argmax)


def avgpool2d_forward(x: np.ndarray, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                      padding: int | tuple[int, int] = 0, *, out: np.ndarray | None = None) -> np.ndarray:
    """Average pooling like ``torch.nn.functional.avg_pool2d`` (zero padding counted in the mean)."""
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = _pool_geometry(x.shape, kernel_size, stride, padding)
    y = _empty((x.shape[0], x.shape[1], oh, ow), out)
    _C.avgpool2d_forward(y, x, kh, kw, sh, sw, ph, pw)
    return y


def avgpool2d_backward(dy: np.ndarray, kernel_size: int | tuple[int, int],
                       stride: int | tuple[int, int] | None = None, padding: int | tuple[int, int] = 0, *,
                       dx: np.ndarray) -> None:
    """dx += each output gradient spread evenly over its window."""
    (kh, kw), (sh, sw), (ph, pw), _ = _pool_geometry(dx.shape, kernel_size, stride, padding)
    _C.avgpool2d_backward(dx, dy, kh, kw, sh, sw, ph, pw)


def global_avgpool2d_forward(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """y (N, CH) = mean of x (N, CH, IH, IW) over each plane."""
    y = _empty(tuple(x.shape[:2]), out)
    _C.global_avgpool2d_forward(y, x)
    return y


def global_avgpool2d_backward(dy: np.ndarray, *, dx: np.ndarray) -> None:
    """dx += dy / (IH * IW) broadcast over each plane."""
    _C.global_avgpool2d_backward(dx, dy)


def relu_forward(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """y = max(x, 0) elementwise (NaN passes through); ``out`` must not overlap x."""
    y = np.empty_like(x) if out is None else out
    _C.relu_forward(y, x)
    return y


def relu_backward(dy: np.ndarray, x: np.ndarray, *, dx: np.ndarray) -> None:
    """dx += dy where x > 0; x may be the forward input or its output."""
    _C.relu_backward(dx, dy, x)

# ---- fused batch norm + ReLU ---------------------------------------------------------------------
def batchnorm2d_relu_forward(x: np.ndarray, running_mean: np.ndarray | None, running_var: np.ndarray | None,
                             weight: np.ndarray | None = None, bias: np.ndarray | None = None, training: bool = False,
                             momentum: float = 0.1, eps: float = 1e-5, *, out: np.ndarray | None = None,
                             mean: np.ndarray | None = None, rstd: np.ndarray | None = None,
                             scale: np.ndarray | None = None,
                             shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``relu(batchnorm2d_forward(...))`` in one pass: same arguments, modes and returned statistics;
    ``y`` holds the ReLU output, which :func:`batchnorm2d_relu_backward` needs, unless it is given the
    per-channel map instead: with ``scale`` and ``shift`` (float32 (C,) arrays) the forward also writes
    them, ``y = max((x - mean) * scale + shift, 0)`` in float32."""
    ch = x.shape[1] if x.ndim == 4 else 0
    y = np.empty_like(x) if out is None else out
    mean = _empty((ch,), mean)
    rstd = _empty((ch,), rstd)
    _C.batchnorm2d_relu_forward(y, mean, rstd, running_mean, running_var, x, weight, bias, bool(training), momentum,
                                eps, scale, shift)
    return y, mean, rstd


def batchnorm2d_relu_backward(dy: np.ndarray, y: np.ndarray | None, x: np.ndarray, mean: np.ndarray,
                              rstd: np.ndarray, weight: np.ndarray | None, training: bool, *,
                              dx: np.ndarray | None = None, dweight: np.ndarray | None = None,
                              dbias: np.ndarray | None = None, overwrite_dx: bool = False,
                              scale: np.ndarray | None = None, shift: np.ndarray | None = None) -> None:
    """Accumulate the gradients of ``relu(batchnorm2d(x))``: ``dy`` is the gradient of the ReLU output
    ``y`` (the forward's), masked to ``y > 0``, then as :func:`batchnorm2d_backward`. With ``y=None``
    and the forward's ``scale`` and ``shift``, the mask is rebuilt from x instead, bit for bit the same
    (one array fewer to read)."""
    _C.batchnorm2d_relu_backward(dx, dweight, dbias, dy, y, x, mean, rstd, weight, bool(training), overwrite_dx,
                                 scale, shift)


# ---- transformer encoder ops: embedding sum, LayerNorm, GELU, attention core, pooling ----------
LAYER_NORM_EPS = 1e-12  # BERT's config.layer_norm_eps
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default


def embedding_forward(input_ids: np.ndarray, token_type_ids: np.ndarray | None, word_embeddings: np.ndarray,
                      position_embeddings: np.ndarray, token_type_embeddings: np.ndarray, *,
                      out: np.ndarray | None = None) -> np.ndarray:
    """out[b, t] = word[ids[b, t]] + position[t] + token_type[types[b, t]] with int64 ids (B, T).

    ``token_type_ids=None`` means type 0 everywhere. Ids outside their table raise ValueError.
    """
    y = _empty((*input_ids.shape, word_embeddings.shape[1]), out)
    _C.embedding_forward(y, input_ids, token_type_ids, word_embeddings, position_embeddings, token_type_embeddings)
    return y


def embedding_backward(dout: np.ndarray, input_ids: np.ndarray, token_type_ids: np.ndarray | None,
                       padding_idx: int | None = None, *, dword_embeddings: np.ndarray | None = None, dposition_embeddings: np.ndarray | None = None,
                       dtoken_type_embeddings: np.ndarray | None = None) -> None:
    """Scatter-add dout (B, T, H) into the rows of each table that the forward read.

    Tokens whose id is ``padding_idx`` add nothing to the word table (torch's ``padding_idx``).
    """
    _C.embedding_backward(dword_embeddings, dposition_embeddings, dtoken_type_embeddings, dout, input_ids,
                          token_type_ids, -1 if padding_idx is None else padding_idx)


def layernorm_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = LAYER_NORM_EPS, *,
                      out: np.ndarray | None = None, mean: np.ndarray | None = None,
                      rstd: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LayerNorm over the last axis of x (N, H). Returns ``(out, mean, rstd)``; the last two feed the backward."""
    n = x.shape[0]
    y = _empty(x.shape, out)
    mean = _empty((n,), mean)
    rstd = _empty((n,), rstd)
    _C.layernorm_forward(y, mean, rstd, x, weight, bias, eps)
    return y, mean, rstd


def layernorm_backward(dout: np.ndarray, x: np.ndarray, weight: np.ndarray, mean: np.ndarray, rstd: np.ndarray, *,
                       dx: np.ndarray | None = None, dweight: np.ndarray | None = None,
                       dbias: np.ndarray | None = None) -> None:
    """Accumulate the LayerNorm gradients into the buffers given."""
    _C.layernorm_backward(dx, dweight, dbias, dout, x, weight, mean, rstd)


def gelu_forward(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """Exact GELU, x * (1 + erf(x / sqrt(2))) / 2, elementwise."""
    y = np.empty_like(x) if out is None else out
    _C.gelu_forward(y, x)
    return y


def gelu_backward(dout: np.ndarray, x: np.ndarray, *, dx: np.ndarray) -> None:
    """dx += dout * GELU'(x)."""
    _C.gelu_backward(dx, dout, x)


def gelu_tanh_forward(x: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """GPT-2's GELU (tanh approximation), x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2, elementwise.

    >>> float(gelu_tanh_forward(np.array([1.0], dtype=np.float32))[0])  # doctest: +ELLIPSIS
    0.841...
    """
    y = np.empty_like(x) if out is None else out
    _C.gelu_tanh_forward(y, x)
    return y


def gelu_tanh_backward(dout: np.ndarray, x: np.ndarray, *, dx: np.ndarray) -> None:
    """dx += dout * d/dx of :func:`gelu_tanh_forward` at x."""
    _C.gelu_tanh_backward(dx, dout, x)


def attention_forward_workspace_size(seq_len: int, dropout: float) -> int:
    """Floats of scratch :func:`attention_forward` needs."""
    return _C.attention_forward_workspace_size(seq_len, dropout)


def attention_backward_workspace_size(seq_len: int, dropout: float) -> int:
    """Floats of scratch :func:`attention_backward` needs."""
    return _C.attention_backward_workspace_size(seq_len, dropout)


def attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, num_heads: int,
                      attention_mask: np.ndarray | None = None, causal: bool = False, dropout: float = 0.0,
                      seed: int = 0, offset: int = 0, *, out: np.ndarray | None = None, att: np.ndarray | None = None,
                      work: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Multi-head scaled dot-product self-attention on projected q, k, v (B, T, H).

    Head h uses columns ``h*HS:(h+1)*HS``; ``attention_mask`` (B, T) int64 has 1 for a kept key, 0
    for padding (Hugging Face meaning). Returns ``(out, att)``: the merged-head output (B, T, H) and
    the probabilities before dropout (B, NH, T, T), which the backward needs. Masked keys get
    probability 0; a query with no visible key gets a zero output. Dropout on the probabilities uses
    element (b, h, i, j) -> uniform(seed, offset + ((b*NH + h)*T + i)*T + j) >= dropout.
    """
    b, t, _ = q.shape
    y = _empty(q.shape, out)
    att = _empty((b, num_heads, t, t), att)
    if work is None and dropout > 0.0:
        work = np.empty(attention_forward_workspace_size(t, dropout), dtype=np.float32)
    _C.attention_forward(y, att, work, q, k, v, attention_mask, bool(causal), dropout, seed, offset, num_heads)
    return y, att


def attention_backward(dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, att: np.ndarray,
                       num_heads: int, dropout: float = 0.0, seed: int = 0, offset: int = 0, *,
                       dq: np.ndarray | None = None, dk: np.ndarray | None = None, dv: np.ndarray | None = None,
                       work: np.ndarray | None = None) -> None:
    """Accumulate dq, dk, dv of :func:`attention_forward` (masks are implied by the zeros of ``att``)."""
    if work is None:
        work = np.empty(attention_backward_workspace_size(q.shape[1], dropout), dtype=np.float32)
    _C.attention_backward(dq, dk, dv, work, dout, q, k, v, att, dropout, seed, offset, num_heads)


def mean_pool_forward(x: np.ndarray, attention_mask: np.ndarray | None = None, *,
                      out: np.ndarray | None = None) -> np.ndarray:
    """Mean of x (B, T, H) over the tokens whose mask is nonzero -> (B, H); an all-padding row gives 0."""
    y = _empty((x.shape[0], x.shape[2]), out)
    _C.mean_pool_forward(y, x, attention_mask)
    return y


def mean_pool_backward(dout: np.ndarray, attention_mask: np.ndarray | None = None, *, dx: np.ndarray) -> None:
    """dx[b, t] += dout[b] / count[b] for kept tokens."""
    _C.mean_pool_backward(dx, dout, attention_mask)


def l2_normalize_forward(x: np.ndarray, eps: float = NORMALIZE_EPS, *, out: np.ndarray | None = None,
                         norm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of x (N, H) divided by max(||row||, eps). Returns ``(out, norm)``."""
    y = _empty(x.shape, out)
    norm = _empty((x.shape[0],), norm)
    _C.l2_normalize_forward(y, norm, x, eps)
    return y, norm


def l2_normalize_backward(dout: np.ndarray, out: np.ndarray, norm: np.ndarray, eps: float = NORMALIZE_EPS, *,
                          dx: np.ndarray) -> None:
    """dx += (dout - out (out . dout)) / norm per row (dout / eps where norm <= eps)."""
    _C.l2_normalize_backward(dx, dout, out, norm, eps)


# ---- fused encoder kernels -----------------------------------------------------------------------
def layernorm_residual_forward(x: np.ndarray, residual: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                               eps: float = LAYER_NORM_EPS, *, out: np.ndarray | None = None,
                               mean: np.ndarray | None = None,
                               rstd: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LayerNorm(x + residual) over the last axis of (N, H) arrays, with the sum written into ``x``.

    Returns ``(out, mean, rstd)`` as :func:`layernorm_forward`; the backward is
    :func:`layernorm_backward` with the updated ``x`` (the sum) as its input.
    """
    n = x.shape[0]
    y = _empty(x.shape, out)
    mean = _empty((n,), mean)
    rstd = _empty((n,), rstd)
    _C.layernorm_residual_forward(y, mean, rstd, x, residual, weight, bias, eps)
    return y, mean, rstd


# ---- packed-sequence attention -------------------------------------------------------------------

def attention_cached_forward(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, length: int, num_heads: int, *,
                             out: np.ndarray | None = None, work: np.ndarray | None = None) -> np.ndarray:
    """Causal attention of TQ new queries q (B, TQ, H) against the first ``length`` rows of a key / value cache
    (B, TC, H) whose rows ``length - TQ .. length - 1`` already hold the new tokens' keys and values: query i
    sees keys ``0 .. length - TQ + i``. Inference only (no dropout, no probabilities kept); for the whole
    sequence in q it equals :func:`attention_forward` with ``causal=True``.

    >>> q = np.ones((1, 1, 4), np.float32); kv = np.ones((1, 8, 4), np.float32)
    >>> attention_cached_forward(q, kv, kv, 3, 2).shape
    (1, 1, 4)
    """
    y = _empty(q.shape, out)
    if work is None:
        work = np.empty(_C.attention_cached_forward_workspace_size(q.shape[1], length, num_heads), dtype=np.float32)
    _C.attention_cached_forward(y, work, q, k_cache, v_cache, length, num_heads)
    return y


def attention_packed_forward_workspace_size(longest: int) -> int:
    """Floats of scratch :func:`attention_packed_forward` needs when the longest sequence has ``longest`` rows."""
    return _C.attention_packed_forward_workspace_size(longest)


def attention_packed_backward_workspace_size(longest: int, dropout: float) -> int:
    """Floats of scratch :func:`attention_packed_backward` needs when the longest sequence has ``longest`` rows."""
    return _C.attention_packed_backward_workspace_size(longest, dropout)


def attention_packed_probs_size(offsets: np.ndarray, num_heads: int) -> int:
    """Floats of the probabilities a training :func:`attention_packed_forward` keeps: NH * sum of T_s^2.

    >>> attention_packed_probs_size(np.array([0, 2, 5]), 2)
    26
    """
    lengths = np.diff(offsets)
    return int(num_heads * np.dot(lengths, lengths))


def _longest(offsets: np.ndarray) -> int:
    return int(np.diff(offsets).max()) if offsets.size > 1 else 0


def attention_packed_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, offsets: np.ndarray, num_heads: int,
                             dropout: float = 0.0, seed: int = 0, offset: int = 0, *, starts: np.ndarray | None = None,
                             seq_len: int = 0, att: np.ndarray | None = None, out: np.ndarray | None = None,
                             work: np.ndarray | None = None) -> np.ndarray:
    """Self-attention of sequences stored back to back: q, k, v (N, H) -> (N, H).

    Sequence s is rows ``offsets[s]:offsets[s+1]`` (``offsets`` int64, starting at 0, ending at N) and
    attends among its own rows only, with no mask; each sequence's output equals :func:`attention_forward`
    on it as a (1, T, H) batch, bit for bit. One C call splits the (sequence, head) pairs over the threads.

    Training passes ``att``, a float32 array of :func:`attention_packed_probs_size` floats, which receives
    the probabilities before dropout (pair (s, h) a row-major (T_s, T_s) block, sequence after sequence)
    for :func:`attention_packed_backward`. ``dropout`` (needs ``att``) drops what :func:`attention_forward`
    drops for the padded (S, seq_len, H) batch the rows came from, sequence s in row s at positions
    ``starts[s]`` .. (``starts`` int64 (S,), None: 0), with the same ``seed`` and ``offset``.

    >>> q = np.ones((5, 4), np.float32); offsets = np.array([0, 2, 5])
    >>> att = np.empty(attention_packed_probs_size(offsets, 2), np.float32)
    >>> attention_packed_forward(q, q, q, offsets, 2, att=att).shape, float(att[0])
    ((5, 4), 0.5)
    """
    y = _empty(q.shape, out)
    if work is None:
        work = np.empty(attention_packed_forward_workspace_size(_longest(offsets)), dtype=np.float32)
    _C.attention_packed_forward(y, att, work, q, k, v, offsets, starts, dropout, seed, offset, seq_len, num_heads)
    return y


def attention_packed_backward(dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, att: np.ndarray,
                              offsets: np.ndarray, num_heads: int, dropout: float = 0.0, seed: int = 0,
                              offset: int = 0, *, starts: np.ndarray | None = None, seq_len: int = 0,
                              dq: np.ndarray | None = None, dk: np.ndarray | None = None, dv: np.ndarray | None = None,
                              work: np.ndarray | None = None) -> None:
    """Accumulate dq, dk, dv (N, H) of a training :func:`attention_packed_forward` (its ``att`` and the same
    ``offsets``, dropout, seed, offset, starts and seq_len); each may be None.

    >>> q = np.ones((5, 4), np.float32); offsets = np.array([0, 2, 5])
    >>> att = np.empty(attention_packed_probs_size(offsets, 2), np.float32)
    >>> _ = attention_packed_forward(q, q, q, offsets, 2, att=att)
    >>> dv = np.zeros_like(q); attention_packed_backward(q, q, q, q, att, offsets, 2, dv=dv); float(dv[0, 0])
    1.0
    """
    if work is None:
        work = np.empty(attention_packed_backward_workspace_size(_longest(offsets), dropout), dtype=np.float32)
    _C.attention_packed_backward(dq, dk, dv, work, dout, q, k, v, att, offsets, starts, dropout, seed, offset,
                                 seq_len, num_heads)


# ---- Bone / MiSS and Bat ---------------------------------------------------------------------------

def bone_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, miss_block: np.ndarray,
                 dropout: float = 0.0, seed: int = 0, offset: int = 0, *, out: np.ndarray | None = None,
                 xd: np.ndarray | None = None,
                 s: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Bone / MiSS: y = x W^T + b + s D, s = sum of the r-wide input shards of dropout(x).

    ``miss_block`` is (r, out_features) for "balance" or (r, mini_r) for "mini" (tiled along the
    outputs). A last partial shard is zero-padded. Returns ``(y, xd, s)``; ``xd`` (None without
    dropout) and ``s`` (N, r) are what :func:`bone_backward` needs.
    """
    n, r = x.shape[0], miss_block.shape[0]
    y = _empty((n, weight.shape[0]), out)
    if dropout > 0.0 and xd is None:
        xd = np.empty_like(x)
    s = _empty((n, r), s)
    _C.bone_forward(y, s, xd if dropout > 0.0 else None, x, weight, bias, miss_block, dropout, seed, offset)
    return y, (xd if dropout > 0.0 else None), s


def bone_backward_workspace_size(n: int, in_features: int, r: int, dropout: float) -> int:
    """Floats of scratch :func:`bone_backward` needs."""
    return _C.bone_backward_workspace_size(n, in_features, r, dropout)


def bone_backward(dy: np.ndarray, s: np.ndarray, weight: np.ndarray, miss_block: np.ndarray, dropout: float = 0.0,
                  seed: int = 0, offset: int = 0, *, dx: np.ndarray | None = None,
                  dmiss_block: np.ndarray | None = None, work: np.ndarray | None = None) -> None:
    """Accumulate the Bone / MiSS gradients of x and the block (None = not wanted)."""
    if work is None:
        work = np.empty(bone_backward_workspace_size(dy.shape[0], weight.shape[1], miss_block.shape[0], dropout),
                        dtype=np.float32)
    _C.bone_backward(dx, dmiss_block, work, dy, s, weight, miss_block, dropout, seed, offset)


def bone_merge(weight: np.ndarray, miss_block: np.ndarray, sign: float = 1.0) -> None:
    """In place: weight[o, c] += sign * block[c mod r, o mod block_columns]."""
    _C.bone_merge(weight, miss_block, sign)


def bat_weight(weight: np.ndarray, miss_block: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """Bat's effective weight: every r x r block W_ik of row-block i becomes W_ik + W_ik T_i + T_i."""
    weff = _empty(weight.shape, out)
    _C.bat_weight(weff, weight, miss_block)
    return weff


def bat_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, miss_block: np.ndarray, *,
                out: np.ndarray | None = None, work: np.ndarray | None = None) -> np.ndarray:
    """Bat: y = x W'^T + b with W' = :func:`bat_weight` (built into ``work``, (out, in) scratch)."""
    y = _empty((x.shape[0], weight.shape[0]), out)
    _C.bat_forward(y, _empty(weight.shape, work), x, weight, bias, miss_block)
    return y


def bat_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, miss_block: np.ndarray, *,
                 dx: np.ndarray | None = None, dmiss_block: np.ndarray | None = None,
                 work: np.ndarray | None = None) -> None:
    """Accumulate the Bat gradients of x and the block; ``work`` holds out*in floats (W' is rebuilt)."""
    _C.bat_backward(dx, dmiss_block, _empty((weight.size,), work), dy, x, weight, miss_block)


def bat_merge(weight: np.ndarray, miss_block: np.ndarray) -> None:
    """In place: weight <- :func:`bat_weight` (weight), with one row-block of scratch."""
    r = miss_block.shape[-1]
    _C.bat_merge(weight, np.empty(r * weight.shape[1], dtype=np.float32), miss_block, None)


def bat_unmerge(weight: np.ndarray, miss_block: np.ndarray) -> None:
    """In place: the inverse of :func:`bat_merge`, W_ik <- (W_ik - T_i)(I + T_i)^{-1}.

    The r x r inverses are taken in float32 (as PEFT does); a singular I + T_i is a ValueError.
    """
    r = miss_block.shape[-1]
    try:
        inverse = np.linalg.inv(np.eye(r, dtype=np.float32) + miss_block).astype(np.float32)
    except np.linalg.LinAlgError:
        raise ValueError("bat_unmerge: I + miss_block is singular for some row-block; the merged weight "
                         "cannot be restored") from None
    _C.bat_merge(weight, np.empty(r * weight.shape[1], dtype=np.float32), miss_block,
                 np.ascontiguousarray(inverse))


# ---- SoRA and Hydra adapters -----------------------------------------------------------------------

def sora_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, lora_A: np.ndarray,
                 lora_B: np.ndarray, gate: np.ndarray, scaling: float, dropout: float = 0.0, seed: int = 0,
                 offset: int = 0, *, out: np.ndarray | None = None, xd: np.ndarray | None = None,
                 u: np.ndarray | None = None, work: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """y = x W^T + b + scaling * dropout(x) A^T diag(gate) B^T (SoRA).

    Returns ``(y, xd, u)`` as :func:`lora_forward` does; ``u = xd A^T`` is taken before the gate.
    """
    n, r, oc = x.shape[0], lora_A.shape[0], weight.shape[0]
    y = _empty((n, oc), out)
    if dropout > 0.0 and xd is None:
        xd = np.empty_like(x)
    u = _empty((n, r), u)
    if work is None:
        work = np.empty(_C.sora_forward_workspace_size(oc, r), dtype=np.float32)
    _C.sora_forward(y, xd if dropout > 0.0 else None, u, work, x, weight, bias, lora_A, lora_B, gate, scaling,
                    dropout, seed, offset)
    return y, (xd if dropout > 0.0 else None), u


def sora_backward(dy: np.ndarray, xin: np.ndarray, u: np.ndarray, weight: np.ndarray, lora_A: np.ndarray,
                  lora_B: np.ndarray, gate: np.ndarray, scaling: float, dropout: float = 0.0, seed: int = 0,
                  offset: int = 0, *, dx: np.ndarray | None = None, dlora_A: np.ndarray | None = None,
                  dlora_B: np.ndarray | None = None, dgate: np.ndarray | None = None,
                  work: np.ndarray | None = None) -> None:
    """Accumulate the SoRA gradients (no L1 term). ``xin`` is ``xd`` when dropout > 0, else x."""
    if work is None:
        size = _C.sora_backward_workspace_size(dy.shape[0], xin.shape[1], dy.shape[1], lora_A.shape[0], dropout)
        work = np.empty(size, dtype=np.float32)
    _C.sora_backward(dx, dlora_A, dlora_B, dgate, work, dy, xin, u, weight, lora_A, lora_B, gate, scaling,
                     dropout, seed, offset)


def sora_gate_threshold(gate: np.ndarray, tau: float, compat: bool = False) -> None:
    """In place, the proximal step on SoRA gates with threshold ``tau``.

    ``compat=False``: the paper's soft threshold ``sign(g) max(|g| - tau, 0)``. ``compat=True``: the
    official code's three masked writes, which zero every ``|g| < 2 tau`` (except ``|g| == tau``)
    and shrink the rest by ``tau``.
    """
    _C.sora_gate_threshold(gate, tau, compat)


def hydra_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, par_A: np.ndarray,
                  par_B: np.ndarray, seq_A: np.ndarray, seq_B: np.ndarray, par_scale: float, seq_scale: float, *,
                  out: np.ndarray | None = None, y0: np.ndarray | None = None, p: np.ndarray | None = None,
                  q: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hydra: y0 = x W^T + b, y = y0 + par_scale (x A_p^T) B_p^T + seq_scale (y0 A_s^T) B_s^T.

    Returns ``(y, y0, p, q)`` with ``p = x A_p^T`` and ``q = y0 A_s^T``, all kept for :func:`hydra_backward`.
    """
    n, oc = x.shape[0], weight.shape[0]
    y, y0 = _empty((n, oc), out), _empty((n, oc), y0)
    p, q = _empty((n, par_A.shape[0]), p), _empty((n, seq_A.shape[0]), q)
    _C.hydra_forward(y, y0, p, q, x, weight, bias, par_A, par_B, seq_A, seq_B, par_scale, seq_scale)
    return y, y0, p, q


def hydra_backward(dy: np.ndarray, x: np.ndarray, y0: np.ndarray, p: np.ndarray, q: np.ndarray, weight: np.ndarray,
                   par_A: np.ndarray, par_B: np.ndarray, seq_A: np.ndarray, seq_B: np.ndarray, par_scale: float,
                   seq_scale: float, *, dx: np.ndarray | None = None, dpar_A: np.ndarray | None = None,
                   dpar_B: np.ndarray | None = None, dseq_A: np.ndarray | None = None,
                   dseq_B: np.ndarray | None = None, work: np.ndarray | None = None) -> None:
    """Accumulate the Hydra gradients; the input gradient flows through both branches and the frozen W."""
    if work is None:
        size = _C.hydra_backward_workspace_size(dy.shape[0], dy.shape[1], par_A.shape[0], seq_A.shape[0])
        work = np.empty(size, dtype=np.float32)
    _C.hydra_backward(dx, dpar_A, dpar_B, dseq_A, dseq_B, work, dy, x, y0, p, q, weight, par_A, par_B, seq_A, seq_B,
                      par_scale, seq_scale)


def hydra_merge(weight: np.ndarray, bias: np.ndarray | None, par_A: np.ndarray, par_B: np.ndarray,
                seq_A: np.ndarray, seq_B: np.ndarray, par_scale: float, seq_scale: float, sign: float = 1.0) -> None:
    """In place. sign=1: W <- (I + s_s B_s A_s) W + s_p B_p A_p, b <- (I + s_s B_s A_s) b.
    sign=-1: the exact inverse (Woodbury; ValueError if I + s_s A_s B_s is singular)."""
    work = np.empty(_C.hydra_merge_workspace_size(weight.shape[1], seq_A.shape[0]), dtype=np.float32)
    _C.hydra_merge(weight, bias, work, par_A, par_B, seq_A, seq_B, par_scale, seq_scale, sign)


# -- test-time adaptation ------------------------------------------------------------------------

def softmax_entropy_forward(logits: np.ndarray, *, ent: np.ndarray | None = None,
                            probs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(ent, probs)``: per-row entropy H_n = -sum_k p_nk log p_nk (N,) and p = softmax(logits) (N, C)."""
    ent = np.empty(logits.shape[0], dtype=np.float32) if ent is None else ent
    probs = np.empty_like(logits) if probs is None else probs
    _C.softmax_entropy_forward(ent, probs, logits)
    return ent, probs


def softmax_entropy_backward(dent: np.ndarray, probs: np.ndarray, logits: np.ndarray, *, dlogits: np.ndarray) -> None:
    """dlogits[n] += dent[n] * p_n * (sum_j p_nj z_nj - z_n); a weighted mean entropy passes dent = w / count."""
    _C.softmax_entropy_backward(dlogits, dent, probs, logits)


def eata_select(ent: np.ndarray, probs: np.ndarray, ema: np.ndarray, ema_set: bool, e0: float, d_margin: float,
                momentum: float = 0.9, *, weight: np.ndarray | None = None) -> tuple[np.ndarray, int, int, bool]:
    """EATA's selection: ``(weight, reliable, selected, ema_set)``; ``ema`` (C,) is updated in place.

    weight[n] = exp(e0 - H_n) for rows with H_n < e0 and (once ``ema_set``) |cos(ema, p_n)| < d_margin,
    else 0. The moving average becomes the mean selected prediction on the first batch with a
    selection, then ``momentum * ema + (1 - momentum) * mean``.
    """
    weight = np.empty_like(ent) if weight is None else weight
    reliable, selected, ema_set = _C.eata_select(weight, ema, ema_set, ent, probs, e0, d_margin, momentum)
    return weight, reliable, selected, ema_set


# -- few-shot class-incremental learning --------------------------------------------------------

def supcon_forward(z: np.ndarray, labels: np.ndarray, temperature: float, *,
                   probs: np.ndarray | None = None) -> tuple[float, int, np.ndarray]:
    """Supervised contrastive loss of unit rows z (N, H) with int64 labels (N,): ``(loss, anchors, probs)``.

    s = z z^T / temperature; an anchor is a row with another row of its label; its loss is minus the mean,
    over those positives p, of log softmax_{j != i}(s_i)_p; ``loss`` is the mean over anchors (0 if none).
    ``probs`` (N, N) holds the softmax rows (zero diagonal) for the backward.
    """
    p = np.empty((z.shape[0], z.shape[0]), dtype=np.float32) if probs is None else probs
    loss, anchors = _C.supcon_forward(p, z, labels, temperature)
    return loss, anchors, p


def supcon_backward(dloss: float, probs: np.ndarray, z: np.ndarray, labels: np.ndarray, temperature: float, *,
                    dz: np.ndarray, work: np.ndarray | None = None) -> None:
    """dz += dloss * (G + G^T) z / (temperature * anchors), G_ij = q_ij - [j in P(i)] / |P(i)| on anchor rows."""
    work = np.empty_like(probs) if work is None else work
    _C.supcon_backward(dz, work, dloss, probs, z, labels, temperature)


def etf_align_forward(feat: np.ndarray, targets: np.ndarray, labels: np.ndarray, ignore_index: int = IGNORE_INDEX, *,
                      dots: np.ndarray | None = None) -> tuple[float, int, np.ndarray]:
    """Dot regression of unit rows feat (N, H) onto their class's fixed prototype targets (K, H):
    ``(loss, count, dots)`` with loss = mean over counted rows of (feat_n . targets[label_n] - 1)^2 / 2."""
    d = np.empty(feat.shape[0], dtype=np.float32) if dots is None else dots
    loss, count = _C.etf_align_forward(d, feat, targets, labels, ignore_index)
    return loss, count, d


def etf_align_backward(dloss: float, dots: np.ndarray, targets: np.ndarray, labels: np.ndarray,
                       ignore_index: int = IGNORE_INDEX, *, dfeat: np.ndarray) -> None:
    """dfeat[n] += dloss * (dots[n] - 1) * targets[label_n] / count over the counted rows."""
    _C.etf_align_backward(dfeat, dloss, dots, targets, labels, ignore_index)

# ---- data-free distillation losses: KD divergence, BN-statistics matching, DAFL terms, TV -----------

def kd_kl_forward(student_logits: np.ndarray, teacher_logits: np.ndarray, tau: float = 1.0, *,
                  student_probs: np.ndarray | None = None,
                  teacher_probs: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """Hinton's KD loss ``tau^2 * KL(softmax(zt/tau) || softmax(zs/tau))``, summed over classes and
    averaged over rows (torch's ``reduction="batchmean"``). Returns ``(loss, student_probs, teacher_probs)``.

    >>> z = np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)
    >>> round(kd_kl_forward(z, z, tau=4.0)[0], 6)
    0.0
    """
    ps = np.empty_like(student_logits) if student_probs is None else student_probs
    pt = np.empty_like(teacher_logits) if teacher_probs is None else teacher_probs
    loss = _C.kd_kl_forward(ps, pt, student_logits, teacher_logits, tau)
    return loss, ps, pt


def kd_kl_backward(dloss: float, student_probs: np.ndarray, teacher_probs: np.ndarray, student_logits: np.ndarray,
                   teacher_logits: np.ndarray, tau: float = 1.0, *, dstudent_logits: np.ndarray | None = None,
                   dteacher_logits: np.ndarray | None = None) -> None:
    """dstudent_logits += dloss * tau/N * (ps - pt); dteacher_logits (optional) += the gradient through pt."""
    _C.kd_kl_backward(dstudent_logits, dteacher_logits, dloss, student_probs, teacher_probs, student_logits,
                      teacher_logits, tau)


def adi_js_forward(student_logits: np.ndarray, teacher_logits: np.ndarray, tau: float = 3.0, *,
                   student_probs: np.ndarray | None = None,
                   teacher_probs: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """Adaptive DeepInversion's Jensen-Shannon term: ``ps = softmax(zs/tau)``, ``pt = softmax(zt/tau)``,
    ``m = (ps + pt) / 2``, all three clamped to [0.01, 0.99] (m after it is formed, as the reference code
    does), then ``mean_n (KL(m || ps) + KL(m || pt)) / 2`` ("batchmean"). The competition loss is
    ``1 - clamp(js, 0, 1)``. Returns ``(js, student_probs, teacher_probs)`` (the unclamped softmaxes).

    >>> z = np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)
    >>> round(adi_js_forward(z, z)[0], 6)
    0.0
    """
    ps = np.empty_like(student_logits) if student_probs is None else student_probs
    pt = np.empty_like(teacher_logits) if teacher_probs is None else teacher_probs
    loss = _C.adi_js_forward(ps, pt, student_logits, teacher_logits, tau)
    return loss, ps, pt


def adi_js_backward(dloss: float, student_probs: np.ndarray, teacher_probs: np.ndarray, tau: float = 3.0, *,
                    dstudent_logits: np.ndarray | None = None, dteacher_logits: np.ndarray | None = None) -> None:
    """dstudent_logits, dteacher_logits (either optional) += dloss * d(adi_js)/d(logits); a clamped value
    passes no gradient."""
    _C.adi_js_backward(dstudent_logits, dteacher_logits, dloss, student_probs, teacher_probs, tau)


def bn_stat_match_forward(x: np.ndarray, running_mean: np.ndarray, running_var: np.ndarray, *,
                          mean: np.ndarray | None = None,
                          var: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """DeepInversion's feature term for one BatchNorm layer: ``||mean - running_mean||_2 +
    ||var - running_var||_2``, mean and (biased) var of the layer's input ``x`` (N, CH, H, W) per channel.
    Returns ``(loss, mean, var)``.

    >>> x = np.zeros((2, 3, 2, 2), np.float32)
    >>> bn_stat_match_forward(x, np.zeros(3, np.float32), np.zeros(3, np.float32))[0]
    0.0
    """
    ch = x.shape[1] if x.ndim == 4 else 0
    mean = np.empty(ch, np.float32) if mean is None else mean
    var = np.empty(ch, np.float32) if var is None else var
    loss = _C.bn_stat_match_forward(mean, var, x, running_mean, running_var)
    return loss, mean, var


def bn_stat_match_backward(dloss: float, x: np.ndarray, mean: np.ndarray, var: np.ndarray, running_mean: np.ndarray,
                           running_var: np.ndarray, *, dx: np.ndarray) -> None:
    """dx += dloss * d(bn_stat_match)/dx."""
    _C.bn_stat_match_backward(dx, dloss, x, mean, var, running_mean, running_var)


def dafl_activation_forward(features: np.ndarray) -> float:
    """DAFL's activation loss ``-mean |features|`` (any shape).

    >>> dafl_activation_forward(np.array([1.0, -3.0], np.float32))
    -2.0
    """
    return _C.dafl_activation_forward(features)


def dafl_activation_backward(dloss: float, features: np.ndarray, *, dfeatures: np.ndarray) -> None:
    """dfeatures += -dloss * sign(features) / features.size."""
    _C.dafl_activation_backward(dfeatures, dloss, features)


def dafl_entropy_forward(logits: np.ndarray, *, probs: np.ndarray | None = None,
                         mean_probs: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """DAFL's information-entropy loss ``sum_c pbar_c ln pbar_c`` with ``pbar`` the batch-mean softmax:
    the negative entropy of the mean prediction, lowest (``-ln C``) when the classes are balanced.
    Natural log (DAFL's code takes log10: divide by ln 10 to match it). Returns ``(loss, probs, mean_probs)``.

    >>> round(dafl_entropy_forward(np.eye(4, dtype=np.float32) * 50)[0], 4)
    -1.3863
    """
    c = logits.shape[-1] if logits.ndim == 2 else 0
    probs = np.empty_like(logits) if probs is None else probs
    mean_probs = np.empty(c, np.float32) if mean_probs is None else mean_probs
    loss = _C.dafl_entropy_forward(probs, mean_probs, logits)
    return loss, probs, mean_probs


def dafl_entropy_backward(dloss: float, probs: np.ndarray, mean_probs: np.ndarray, *, dlogits: np.ndarray) -> None:
    """dlogits += dloss * d(sum pbar ln pbar)/dlogits."""
    _C.dafl_entropy_backward(dlogits, dloss, probs, mean_probs)


def tv_forward(x: np.ndarray, *, norms: np.ndarray | None = None) -> tuple[float, float, np.ndarray]:
    """DeepInversion's total-variation priors of images ``x`` (N, CH, H, W), H and W >= 2, over the four
    neighbour differences (horizontal, vertical, two diagonals): ``(l1, l2, norms)``, l1 the sum of the
    mean absolute differences, l2 the sum of their Frobenius norms ``norms`` (4,).

    >>> tv_forward(np.ones((1, 1, 3, 3), np.float32))[:2]
    (0.0, 0.0)
    """
    norms = np.empty(4, np.float32) if norms is None else norms
    l1, l2 = _C.tv_forward(norms, x)
    return l1, l2, norms


def tv_backward(dl1: float, dl2: float, x: np.ndarray, norms: np.ndarray, *, dx: np.ndarray) -> None:
    """dx += dl1 * d(l1)/dx + dl2 * d(l2)/dx."""
    _C.tv_backward(dx, dl1, dl2, x, norms)


# ---- EVA kernels: incremental PCA of a layer's input rows -------------------------------------------

def ipca_workspace_size(n_rows: int, in_features: int, n_components: int) -> int:
    """Floats of scratch :func:`ipca_update` needs for a minibatch of ``n_rows`` rows."""
    return _C.ipca_workspace_size(n_rows, in_features, n_components)


def ipca_update(x: np.ndarray, components: np.ndarray, singular_values: np.ndarray, mean: np.ndarray,
                var: np.ndarray, n_seen: int, *, explained_variance_ratio: np.ndarray | None = None,
                cosine: np.ndarray | None = None, work: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fold the rows x (M, IC) into a running PCA state, like sklearn's ``IncrementalPCA.partial_fit``.

    The state is updated in place: ``components`` (K, IC) (unit right-singular vectors, each row's
    largest-magnitude entry positive), ``singular_values`` (K,), ``mean`` and ``var`` (IC,) (biased).
    ``n_seen`` is the number of rows folded in before (0 on the first call: the state is then only
    written, and M >= K is needed). Returns ``(explained_variance_ratio, cosine)``, both (K,):
    ``S_k^2 / ((n_seen + M) * sum(var))`` and the cosine between each new and old component
    (0 on the first call).
    """
    k = components.shape[0]
    evr = _empty((k,), explained_variance_ratio)
    cos = _empty((k,), cosine)
    if work is None:
        work = np.empty(ipca_workspace_size(x.shape[0], x.shape[1] if x.ndim == 2 else 0, k), dtype=np.float32)
    _C.ipca_update(components, singular_values, mean, var, evr, cos, work, x, n_seen)
    return evr, cos


def ipca_update_many(jobs: list[tuple]) -> list[str | None]:
    """Several independent :func:`ipca_update` calls side by side on the BLAS thread count.

    Each job is the tuple ``(components, singular_values, mean, var, explained_variance_ratio, cosine,
    work, x, n_seen)``, every array given; no job may share memory another writes. Each job gets the
    bits :func:`ipca_update` would give it (every update runs on one thread). Bad arguments raise
    before anything runs; a job that fails in the kernel (NaN or Inf in its x) leaves its state
    untouched while the others are applied. Returns, per job, None or the message of its failure.
    """
    return _C.ipca_update_many(list(jobs))
