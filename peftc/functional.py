"""Stateless calls of peftc's C kernels.

Conventions (the same for every function here and in :mod:`peftc.reference`):

* arrays are float32 and C-contiguous (labels: int64); nothing is converted or copied silently;
  anything else raises ``TypeError``/``ValueError`` naming the argument and its shape;
* forward functions return their outputs and take an optional ``out=`` (and cache buffers) to
  write into; the caller's arrays are then returned, not copies;
* backward functions **accumulate** into the gradient buffers passed to them (``None`` means the
  gradient is not wanted) and return nothing.
"""
from __future__ import annotations

import numpy as np

from . import _C

IGNORE_INDEX = -100


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


def lora_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, lora_A: np.ndarray,
                 lora_B: np.ndarray, lora_bias: np.ndarray | None, scaling: float, dropout: float = 0.0,
                 seed: int = 0, offset: int = 0, *, out: np.ndarray | None = None, xd: np.ndarray | None = None,
                 u: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """y = x W^T + b + scaling * (dropout(x) A^T B^T + lora_bias).

    Returns ``(y, xd, u)``: the output, the dropped adapter input (None when ``dropout == 0``) and
    ``u = xd A^T``; the last two are what :func:`lora_backward` needs. The dropout mask is element
    i -> uniform(seed, offset + i) >= dropout.
    """
    n, r = x.shape[0], lora_A.shape[0]
    y = _empty((n, weight.shape[0]), out)
    if dropout > 0.0 and xd is None:
        xd = np.empty_like(x)
    u = _empty((n, r), u)
    _C.lora_forward(y, xd if dropout > 0.0 else None, u, x, weight, bias, lora_A, lora_B, lora_bias,
                    scaling, dropout, seed, offset)
    return y, (xd if dropout > 0.0 else None), u


def lora_backward_workspace_size(n: int, in_features: int, r: int, dropout: float) -> int:
    """Floats of scratch :func:`lora_backward` needs."""
    return _C.lora_backward_workspace_size(n, in_features, r, dropout)


def lora_backward(dy: np.ndarray, xin: np.ndarray, u: np.ndarray, weight: np.ndarray, lora_A: np.ndarray,
                  lora_B: np.ndarray, scaling: float, dropout: float = 0.0, seed: int = 0, offset: int = 0, *,
                  dx: np.ndarray | None = None, dlora_A: np.ndarray | None = None,
                  dlora_B: np.ndarray | None = None, dlora_bias: np.ndarray | None = None,
                  work: np.ndarray | None = None) -> None:
    """Accumulate the LoRA gradients. ``xin`` is ``xd`` from the forward when dropout > 0, else x."""
    if work is None:
        work = np.empty(lora_backward_workspace_size(dy.shape[0], xin.shape[1], lora_A.shape[0], dropout),
                        dtype=np.float32)
    _C.lora_backward(dx, dlora_A, dlora_B, dlora_bias, work, dy, xin, u, weight, lora_A, lora_B, scaling,
                     dropout, seed, offset)


def lora_merge(weight: np.ndarray, bias: np.ndarray | None, lora_A: np.ndarray, lora_B: np.ndarray,
               lora_bias: np.ndarray | None, scaling: float, sign: float = 1.0) -> None:
    """In place: weight += sign * scaling * B A (and bias += sign * scaling * lora_bias)."""
    _C.lora_merge(weight, bias, lora_A, lora_B, lora_bias, scaling, sign)


def dropout_forward(x: np.ndarray, p: float, seed: int = 0, offset: int = 0, *,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Inverted dropout with the counter-based mask (see :func:`lora_forward`)."""
    y = np.empty_like(x) if out is None else out
    _C.dropout_forward(y, x, p, seed, offset)
    return y


def dropout_backward(dout: np.ndarray, p: float, seed: int = 0, offset: int = 0, *, dx: np.ndarray) -> None:
    """dx += dout * mask / (1 - p), the mask regenerated from (seed, offset)."""
    _C.dropout_backward(dx, dout, p, seed, offset)


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


def conv2d_workspace_size(in_channels: int, kernel_size: int | tuple[int, int], out_hw: tuple[int, int]) -> int:
    """Floats of scratch :func:`conv2d_forward` and :func:`conv2d_backward` need: one image's patch matrix."""
    kh, kw = _pair(kernel_size, "kernel_size")
    return _C.conv2d_workspace_size(in_channels, kh, kw, out_hw[0], out_hw[1])


def _conv_work(x_shape: tuple[int, ...], weight: np.ndarray, stride, padding,
               work: np.ndarray | None) -> tuple[np.ndarray, tuple[int, int]]:
    if weight.ndim != 4:
        raise ValueError(f"conv2d weight must be (OC, IC, KH, KW), got shape {weight.shape}")
    if len(x_shape) != 4:
        raise ValueError(f"conv2d input must be (N, IC, IH, IW), got shape {tuple(x_shape)}")
    out_hw = conv2d_output_size(x_shape[2:], weight.shape[2:], stride, padding)
    if work is None:
        work = np.empty(conv2d_workspace_size(weight.shape[1], weight.shape[2:], out_hw), dtype=np.float32)
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
                    work: np.ndarray | None = None) -> None:
    """Accumulate the conv2d gradients into dx, dweight, dbias (None = not wanted).

    ``x`` is needed only for ``dweight``; without it the input size is taken from ``dx``.
    """
    shape = x.shape if x is not None else (dx.shape if dx is not None else None)
    if shape is None:
        raise ValueError("conv2d_backward: give dx or x so that the input size is known")
    work, _ = _conv_work(shape, weight, stride, padding, work)
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    _C.conv2d_backward(dx, dweight, dbias, work, dy, x, weight, sh, sw, ph, pw)


def batchnorm2d_forward(x: np.ndarray, running_mean: np.ndarray | None, running_var: np.ndarray | None,
                        weight: np.ndarray | None = None, bias: np.ndarray | None = None, training: bool = False,
                        momentum: float = 0.1, eps: float = 1e-5, *, out: np.ndarray | None = None,
                        mean: np.ndarray | None = None,
                        rstd: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch norm over (N, H, W) per channel, argument order and math of ``torch.nn.functional.batch_norm``.

    * ``training=True`` with running buffers: batch statistics; the buffers are updated in place
      (momentum, unbiased variance), as in ``nn.BatchNorm2d.train()``;
    * ``training=True`` with ``running_mean = running_var = None``: batch statistics, nothing
      updated (the test-batch statistics of BN-adapt and TENT);
    * ``training=False``: the running statistics, read only.

    Returns ``(y, mean, rstd)``: the statistics used, which :func:`batchnorm2d_backward` needs.
    """
    ch = x.shape[1] if x.ndim == 4 else 0
    y = np.empty_like(x) if out is None else out
    mean = _empty((ch,), mean)
    rstd = _empty((ch,), rstd)
    _C.batchnorm2d_forward(y, mean, rstd, running_mean, running_var, x, weight, bias, bool(training), momentum, eps)
    return y, mean, rstd


def batchnorm2d_backward(dy: np.ndarray, x: np.ndarray, mean: np.ndarray, rstd: np.ndarray,
                         weight: np.ndarray | None, training: bool, *, dx: np.ndarray | None = None,
                         dweight: np.ndarray | None = None, dbias: np.ndarray | None = None) -> None:
    """Accumulate batch-norm gradients. ``training`` must be what the forward used: with batch
    statistics the gradient also flows through the mean and variance; with running statistics it
    is the per-channel affine map's."""
    _C.batchnorm2d_backward(dx, dweight, dbias, dy, x, mean, rstd, weight, bool(training))


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
