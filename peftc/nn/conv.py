"""Conv2d: 2-D convolution over NCHW images (dilation 1, one group), weights used in place."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..random import Generator
from .module import Module, Parameter


class Conv2d(Module):
    """A convolution layer like ``torch.nn.Conv2d`` (dilation 1, groups 1, zero padding).

    ``Conv2d(in_channels, out_channels, kernel_size)`` initialises as torch does (weight and bias
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in_channels * KH * KW);
    ``Conv2d.from_weights(w, b, stride, padding)`` wraps existing arrays without copying them.
    The im2col scratch is kept between calls in a C-owned :class:`peftc.functional.Buffer` and reused
    while it is large enough.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, bias: bool = True,
                 generator: Generator | None = None) -> None:
        g = generator or Generator(0)
        kh, kw = F._pair(kernel_size, "kernel_size")
        bound = 1.0 / np.sqrt(in_channels * kh * kw)
        w = g.uniform((out_channels, in_channels, kh, kw), -bound, bound)
        b = g.uniform((out_channels,), -bound, bound) if bias else None
        self._init(w, b, stride, padding)

    @classmethod
    def from_weights(cls, weight: np.ndarray, bias: np.ndarray | None = None, stride: int | tuple[int, int] = 1,
                     padding: int | tuple[int, int] = 0) -> Conv2d:
        layer = cls.__new__(cls)
        layer._init(weight, bias, stride, padding)
        return layer

    def _init(self, weight: np.ndarray, bias: np.ndarray | None, stride, padding) -> None:
        if weight.ndim != 4:
            raise ValueError(f"Conv2d weight must be 4-D (out_channels, in_channels, KH, KW), got {weight.shape}")
        if bias is not None and bias.shape != (weight.shape[0],):
            raise ValueError(f"Conv2d bias must have shape ({weight.shape[0]},), got {bias.shape}")
        self.weight = Parameter(weight)
        self.bias = Parameter(bias) if bias is not None else None
        self.stride = F._pair(stride, "stride")
        self.padding = F._pair(padding, "padding")
        self._x: np.ndarray | None = None
        self._work = F.Buffer(0)  # the scratch, at least as large as the geometry below needs
        self._work_for: tuple | None = None  # (input shape, weight shape) of the last call

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1]

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.weight.shape[2], self.weight.shape[3]

    def _workspace(self, x_shape: tuple[int, ...]) -> F.Buffer:
        if self._work_for == (x_shape, self.weight.shape):
            return self._work
        if len(x_shape) != 4:
            raise ValueError(f"Conv2d input must be (N, C, H, W), got shape {tuple(x_shape)}")
        need = F.conv2d_workspace_size(x_shape, self.weight.shape, self.stride, self.padding)
        if self._work.shape[0] < need:
            # a new Buffer rather than resize(): a call still running in another thread keeps the old one
            self._work = F.Buffer(need)
        self._work_for = (tuple(x_shape), self.weight.shape)
        return self._work

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = F.conv2d_forward(x, self.weight.data, self.bias.data if self.bias is not None else None, self.stride,
                             self.padding, work=self._workspace(np.shape(x)))
        self._x = x
        return y

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the weight and bias gradients (when trainable) and return dx, or None with
        ``input_grad=False`` (the first layer of a network whose input gradient nobody reads).
        ``dx`` given: the input gradient is added into it (a residual branch summing into the other
        branch's gradient) and it is returned; without it the kernel overwrites a new ``np.empty``
        buffer (no zeroing pass)."""
        if self._x is None:
            raise RuntimeError("Conv2d.backward called before forward")
        dw = self.weight.grad_buffer()
        db = self.bias.grad_buffer() if self.bias is not None else None
        fresh = input_grad and dx is None  # a new buffer, which the kernel overwrites (no zeroing first)
        if not input_grad:
            dx = None
        elif fresh:
            dx = np.empty(self._x.shape, dtype=np.float32)
        else:
            dx = self._check_dx(dx, self._x.shape)
        if dx is None and dw is None and db is None:
            return None
        F.conv2d_backward(dy, self._x if dw is not None else None, self.weight.data, self.stride, self.padding, dx=dx,
                          dweight=dw, dbias=db, work=self._workspace(self._x.shape), overwrite_dx=fresh)
        return dx

    def __repr__(self) -> str:
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None})")
