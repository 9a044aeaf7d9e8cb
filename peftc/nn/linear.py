"""Linear: y = x W^T + b over the last axis, weights used in place (float32, or a frozen weight in bf16)."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import as_rows
from ..bf16 import PackedWeight
from ..bf16 import linear_backward as bf16_linear_backward
from ..bf16 import linear_forward as bf16_linear_forward
from ..random import Generator
from .module import Module, Parameter


def kaiming_uniform(generator: Generator, shape: tuple[int, int]) -> np.ndarray:
    """torch's kaiming_uniform_(a=sqrt(5)) on an (out, in) matrix: U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / np.sqrt(shape[1])
    return generator.uniform(shape, -bound, bound)


class Linear(Module):
    """A linear layer on the last axis, like ``torch.nn.Linear``.

    ``Linear(in_features, out_features)`` initialises as torch does; ``Linear.from_weights(w, b)``
    wraps existing arrays without copying them. :meth:`to_bfloat16` keeps a frozen weight in bf16.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 generator: Generator | None = None) -> None:
        g = generator or Generator(0)
        w = kaiming_uniform(g, (out_features, in_features))
        b = g.uniform((out_features,), -1.0 / np.sqrt(in_features), 1.0 / np.sqrt(in_features)) if bias else None
        self._init(w, b)

    @classmethod
    def from_weights(cls, weight: np.ndarray, bias: np.ndarray | None = None) -> Linear:
        layer = cls.__new__(cls)
        layer._init(weight, bias)
        return layer

    def _init(self, weight: np.ndarray, bias: np.ndarray | None) -> None:
        if weight.ndim != 2:
            raise ValueError(f"Linear weight must be 2-D (out_features, in_features), got {weight.shape}")
        if bias is not None and bias.shape != (weight.shape[0],):
            raise ValueError(f"Linear bias must have shape ({weight.shape[0]},), got {bias.shape}")
        self.weight = Parameter(weight)
        self.bias = Parameter(bias) if bias is not None else None
        self._x: np.ndarray | None = None
        self._rows_shape: tuple[int, int] | None = None

    def to_bfloat16(self) -> Linear:
        """Keep the (frozen) weight in bfloat16, packed for the bf16 kernels, and drop its float32 array.

        The weight is rounded to nearest even once; the layer then holds ``out x in`` bf16 values (half the
        bytes) as a :class:`peftc.bf16.PackedWeight`, which never trains and is not among the parameters.
        The bias (and anything trainable) stays float32. Raises ValueError if the weight is trainable.
        Returns the layer.

        >>> layer = Linear(4, 3); layer.weight.requires_grad = False
        >>> layer.to_bfloat16().is_bfloat16
        True
        """
        if isinstance(self.weight, PackedWeight):
            return self
        if self.weight.requires_grad:
            raise ValueError(f"Linear.to_bfloat16: the weight {self.weight.shape} is trainable; bf16 storage is "
                             f"for frozen weights (set weight.requires_grad = False, or requires_grad_(False), "
                             f"first)")
        self.weight = PackedWeight(self.weight.data)
        return self

    @property
    def is_bfloat16(self) -> bool:
        """True when the weight is a frozen bf16 :class:`peftc.bf16.PackedWeight`."""
        return isinstance(self.weight, PackedWeight)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: np.ndarray) -> np.ndarray:
        rows = as_rows(x, "x", self.in_features)
        bias = self.bias.data if self.bias is not None else None
        y = (bf16_linear_forward(rows, self.weight, bias) if self.is_bfloat16
             else F.linear_forward(rows, self.weight.data, bias))
        # The input is kept only for the weight gradient: a frozen layer drops its reference, so a
        # large activation (the GELU output before output.dense) is freed once the forward is done.
        self._x = rows if self.weight.requires_grad else None
        self._rows_shape = rows.shape
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the parameter gradients and return dx = dy W.

        ``dx``: an array shaped like the input to accumulate into (and return) instead of a new one, so
        that a caller summing several input gradients allocates and zeroes one buffer. With
        ``input_grad=False`` the product dy W is skipped and None returned (the input is a leaf).
        """
        if self._rows_shape is None:
            raise RuntimeError("Linear.backward called before forward")
        drows = as_rows(dy, "dy", self.out_features)
        out = None
        if input_grad:
            out = (np.zeros(self._rows_shape, dtype=np.float32) if dx is None
                   else self._check_dx(dx, (*dy.shape[:-1], self.in_features)).reshape(self._rows_shape))
        dw = self.weight.grad_buffer()
        if dw is not None and self._x is None:
            raise RuntimeError("Linear.backward: the weight was frozen in the forward (its input was not kept) "
                               "and is trainable now; run the forward again")
        db = self.bias.grad_buffer() if self.bias is not None else None
        if self.is_bfloat16:
            if out is not None:
                bf16_linear_backward(drows, self.weight, dx=out)
            if db is not None:
                db += drows.sum(axis=0, dtype=np.float32)
        elif out is not None or dw is not None or db is not None:
            F.linear_backward(drows, self._x if dw is not None else None, self.weight.data, dx=out, dweight=dw,
                              dbias=db)
        if out is None:
            return None
        return dx if dx is not None else out.reshape(*dy.shape[:-1], self.in_features)

    def __repr__(self) -> str:
        dtype = ", dtype=bfloat16" if self.is_bfloat16 else ""
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}{dtype})")
