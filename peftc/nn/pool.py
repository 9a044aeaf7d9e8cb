"""Pooling layers over NCHW images: MaxPool2d, AvgPool2d and GlobalAvgPool2d (-> (N, C))."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .module import Module


class MaxPool2d(Module):
    """Max pooling like ``torch.nn.MaxPool2d`` (stride defaults to the kernel; floor mode)."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0) -> None:
        self.kernel_size = F._pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else F._pair(stride, "stride")
        self.padding = F._pair(padding, "padding")
        self._cache: tuple | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        y, argmax = F.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        self._cache = (x.shape, argmax)
        return y

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """dx[argmax] (+)= dy (the module contract: new array, given ``dx``, or None)."""
        if self._cache is None:
            raise RuntimeError("MaxPool2d.backward called before forward")
        if not input_grad:
            return None
        shape, argmax = self._cache
        dx = self._input_grad_buffer(dx, shape)
        F.maxpool2d_backward(dy, argmax, dx=dx)
        return dx

    def __repr__(self) -> str:
        return f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"


class AvgPool2d(Module):
    """Average pooling like ``torch.nn.AvgPool2d`` (zero padding counted in the mean)."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0) -> None:
        self.kernel_size = F._pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else F._pair(stride, "stride")
        self.padding = F._pair(padding, "padding")
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = F.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        self._shape = x.shape
        return y

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Each output gradient spread evenly over its window (module contract: new array, given ``dx``, or None)."""
        if self._shape is None:
            raise RuntimeError("AvgPool2d.backward called before forward")
        if not input_grad:
            return None
        dx = self._input_grad_buffer(dx, self._shape)
        F.avgpool2d_backward(dy, self.kernel_size, self.stride, self.padding, dx=dx)
        return dx

    def __repr__(self) -> str:
        return f"AvgPool2d(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"


class GlobalAvgPool2d(Module):
    """Mean over each (H, W) plane: (N, C, H, W) -> (N, C), i.e. AdaptiveAvgPool2d(1) plus flatten."""

    def __init__(self) -> None:
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = F.global_avgpool2d_forward(x)
        self._shape = x.shape
        return y

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """dx (+)= dy / (IH * IW) over each plane (the module contract: new array, given ``dx``, or None)."""
        if self._shape is None:
            raise RuntimeError("GlobalAvgPool2d.backward called before forward")
        if not input_grad:
            return None
        dx = self._input_grad_buffer(dx, self._shape)
        F.global_avgpool2d_backward(dy, dx=dx)
        return dx

    def __repr__(self) -> str:
        return "GlobalAvgPool2d()"
