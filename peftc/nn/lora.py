"""LoraLinear: a frozen Linear plus a low-rank update, PEFT's LoRA layer.

    y = x W^T + b + s * (dropout(x) A^T B^T + lora_bias),   s = alpha / r  (alpha / sqrt(r) with rsLoRA)
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import as_rows, check_probability
from ..random import Generator
from .linear import Linear, kaiming_uniform
from .module import Module, Parameter


class LoraLinear(Module):
    """LoRA around an existing :class:`Linear` (the base layer's arrays are used in place).

    ``init_lora_weights``: True (PEFT's default: Kaiming-uniform A, zero B), "gaussian"
    (A ~ N(0, 1/r^2), zero B), False (both random; the layer is then not a no-op) or "eva" (as True
    until :func:`peftc.tuners.initialize_lora_eva_weights` sets A).
    """

    def __init__(self, base: Linear, r: int = 8, lora_alpha: float = 8.0, lora_dropout: float = 0.0,
                 use_rslora: bool = False, lora_bias: bool = False, init_lora_weights: bool | str = True,
                 generator: Generator | None = None) -> None:
        if not isinstance(base, Linear):
            raise TypeError(f"LoraLinear wraps a peftc.nn.Linear, got {type(base).__name__}")
        if int(r) != r or r <= 0:
            raise ValueError(f"r must be a positive integer, got {r}")
        self.base = base
        self.r = int(r)
        self.lora_alpha = float(lora_alpha)
        self.use_rslora = bool(use_rslora)
        self.lora_dropout = check_probability("lora_dropout", lora_dropout)
        self.scaling = F.lora_scaling(self.r, self.lora_alpha, self.use_rslora)
        self.generator = generator or Generator(0)
        self.lora_A = Parameter(np.zeros((self.r, base.in_features), dtype=np.float32))
        self.lora_B = Parameter(np.zeros((base.out_features, self.r), dtype=np.float32))
        self.lora_bias = Parameter(np.zeros(base.out_features, dtype=np.float32)) if lora_bias else None
        self.merged = False
        self.disabled = False
        self.reset_lora_parameters(init_lora_weights)
        self._cache: tuple | None = None

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def reset_lora_parameters(self, init_lora_weights: bool | str = True) -> None:
        g = self.generator
        if init_lora_weights is True or init_lora_weights == "eva":
            # "eva": as PEFT, B is zero and A keeps the default init until EVA overwrites it
            self.lora_A.data[...] = kaiming_uniform(g, self.lora_A.shape)
            self.lora_B.data.fill(0.0)
        elif init_lora_weights == "gaussian":
            self.lora_A.data[...] = g.normal(self.lora_A.shape, 0.0, 1.0 / self.r)
            self.lora_B.data.fill(0.0)
        elif init_lora_weights is False:
            self.lora_A.data[...] = kaiming_uniform(g, self.lora_A.shape)
            self.lora_B.data[...] = kaiming_uniform(g, self.lora_B.shape)
        else:
            raise ValueError(f"init_lora_weights must be True, False, 'gaussian' or 'eva', "
                             f"got {init_lora_weights!r}")
        if self.lora_bias is not None:
            self.lora_bias.data.fill(0.0)

    def adapter_parameters(self) -> dict[str, Parameter]:
        """{name in PEFT's file layout (without the module path): Parameter} of the adapter's own tensors."""
        out = {"lora_A.weight": self.lora_A, "lora_B.weight": self.lora_B}
        if self.lora_bias is not None:
            out["lora_B.bias"] = self.lora_bias
        return out

    def _bias(self) -> np.ndarray | None:
        return self.base.bias.data if self.base.bias is not None else None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.merged or self.disabled:
            self._cache = None
            return self.base.forward(x)
        rows = as_rows(x, "x", self.in_features)
        p = self.lora_dropout if self.training else 0.0
        offset = self.generator.take(rows.size) if p > 0.0 else 0
        y, xd, u = F.lora_forward(rows, self.base.weight.data, self._bias(), self.lora_A.data, self.lora_B.data,
                                  self.lora_bias.data if self.lora_bias is not None else None, self.scaling, p,
                                  self.generator.seed, offset)
        self._cache = (rows, xd, u, p, offset)
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the adapter (and any trainable base) gradients; return dx as :meth:`Linear.backward`
        does (accumulated into ``dx`` when given, skipped and None with ``input_grad=False``)."""
        if self._cache is None:
            return self.base.backward(dy, dx=dx, input_grad=input_grad)
        rows, xd, u, p, offset = self._cache
        drows = as_rows(dy, "dy", self.out_features)
        out = self._input_rows(dx, dy) if input_grad else None
        F.lora_backward(drows, xd if p > 0.0 else rows, u, self.base.weight.data, self.lora_A.data,
                        self.lora_B.data, self.scaling, p, self.generator.seed, offset, dx=out,
                        dlora_A=self.lora_A.grad_buffer(), dlora_B=self.lora_B.grad_buffer(),
                        dlora_bias=self.lora_bias.grad_buffer() if self.lora_bias is not None else None)
        dw = self.base.weight.grad_buffer()
        db = self.base.bias.grad_buffer() if self.base.bias is not None else None
        if dw is not None or db is not None:
            F.linear_backward(drows, rows, self.base.weight.data, dweight=dw, dbias=db)
        if out is None:
            return None
        return dx if dx is not None else out.reshape(*dy.shape[:-1], self.in_features)

    def _input_rows(self, dx: np.ndarray | None, dy: np.ndarray) -> np.ndarray:
        """The (N, in_features) rows the input gradient is accumulated into: a view of ``dx`` (checked against
        the input's shape) or a new zeroed array. The subclasses' backward use it too."""
        if dx is None:
            return F.zeros((dy.size // self.out_features, self.in_features))
        return self._check_dx(dx, (*dy.shape[:-1], self.in_features)).reshape(-1, self.in_features)

    def _merge(self, sign: float) -> None:
        if self.lora_bias is not None and self.base.bias is None:
            raise ValueError("cannot merge lora_bias into a base layer without bias")
        F.lora_merge(self.base.weight.data, self._bias() if self.lora_bias is not None else None, self.lora_A.data,
                     self.lora_B.data, self.lora_bias.data if self.lora_bias is not None else None, self.scaling,
                     sign)

    def merge(self) -> None:
        """Fold s * B A into the base weight: the forward then costs what the base layer costs."""
        if not self.merged:
            self._merge(1.0)
            self.merged = True

    def unmerge(self) -> None:
        """Subtract the folded update again (exact up to float32 rounding)."""
        if self.merged:
            self._merge(-1.0)
            self.merged = False

    def delta_weight(self) -> np.ndarray:
        """s * B A as a new (out_features, in_features) array."""
        return (self.scaling * (self.lora_B.data @ self.lora_A.data)).astype(np.float32)

    def __repr__(self) -> str:
        return (f"LoraLinear(in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"lora_alpha={self.lora_alpha}, dropout={self.lora_dropout}, rslora={self.use_rslora}, "
                f"merged={self.merged})")
