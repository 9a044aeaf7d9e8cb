"""BoneLinear: a frozen Linear plus a Bone / MiSS or Bat block, PEFT's MiSS layer.

    balance (Bone, MiSS default):  y = x W^T + b + s D,  s = sum of the r-wide shards of dropout(x)
    mini:                          the same with D (r, out) tiled from a (r, mini_r) block
    bat:                           y = x W'^T + b,  W'_ik = W_ik + W_ik T_i + T_i on r x r blocks
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import as_rows, check_probability
from ..random import Generator
from .linear import Linear
from .module import Module, Parameter

VARIANTS = ("balance", "bat", "mini")


def miss_variant(init_weights: bool | str) -> str:
    """The MiSS variant PEFT's ``init_weights`` names: True -> "balance", "bat", "mini"."""
    if init_weights is True:
        return "balance"
    if init_weights in ("bat", "mini"):
        return str(init_weights)
    raise ValueError(f"init_weights must be True (balance), 'bat' or 'mini' in peftc, got {init_weights!r}")


def miss_block_shape(variant: str, in_features: int, out_features: int, r: int, mini_r: int = 1) -> tuple[int, ...]:
    """The block's shape for a layer, or a ValueError naming r and the sizes that do not fit."""
    if isinstance(r, bool) or int(r) != r or r <= 0:
        raise ValueError(f"r must be a positive integer, got {r!r}")
    if r > in_features:
        raise ValueError(f"MiSS r={r} must be at most in_features={in_features}")
    if variant == "bat":
        if in_features % r or out_features % r:
            raise ValueError(f"MiSS 'bat' needs in_features={in_features} and out_features={out_features} to be "
                             f"multiples of r={r} (the weight is cut into r x r blocks)")
        return (out_features // r, r, r)
    if variant == "mini":
        if isinstance(mini_r, bool) or int(mini_r) != mini_r or mini_r <= 0 or out_features % mini_r:
            raise ValueError(f"MiSS 'mini' needs out_features={out_features} to be a multiple of "
                             f"mini_r={mini_r!r}")
        return (r, mini_r)
    if variant == "balance":
        return (r, out_features)
    raise ValueError(f"unknown MiSS variant {variant!r}; expected one of {VARIANTS}")


class BoneLinear(Module):
    """Bone / MiSS or Bat around an existing :class:`Linear` (its arrays are used in place).

    The block starts at zero, so the layer starts as the base layer. ``miss_dropout`` acts on the
    balance / mini adapter input only (PEFT applies none to Bat).
    """

    def __init__(self, base: Linear, r: int = 64, init_weights: bool | str = True, miss_dropout: float = 0.0,
                 mini_r: int = 1, generator: Generator | None = None) -> None:
        if not isinstance(base, Linear):
            raise TypeError(f"BoneLinear wraps a peftc.nn.Linear, got {type(base).__name__}")
        self.base = base
        self.variant = miss_variant(init_weights)
        shape = miss_block_shape(self.variant, base.in_features, base.out_features, r, mini_r)
        self.r = int(r)
        self.mini_r = int(mini_r)
        self.miss_dropout = check_probability("miss_dropout", miss_dropout)
        self.generator = generator or Generator(0)
        self.miss_block = Parameter(np.zeros(shape, dtype=np.float32))
        self.merged = False
        self.disabled = False
        self._cache: tuple | None = None

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def _bias(self) -> np.ndarray | None:
        return self.base.bias.data if self.base.bias is not None else None

    def adapter_parameters(self) -> dict[str, Parameter]:
        """{name in PEFT's file layout (without the module path): Parameter}: the MiSS block (no ``.weight``)."""
        return {"miss_block": self.miss_block}

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.merged or self.disabled:
            self._cache = None
            return self.base.forward(x)
        rows = as_rows(x, "x", self.in_features)
        if self.variant == "bat":
            y = F.bat_forward(rows, self.base.weight.data, self._bias(), self.miss_block.data)
            self._cache = (rows, None, 0.0, 0)
        else:
            p = self.miss_dropout if self.training else 0.0
            offset = self.generator.take(rows.size) if p > 0.0 else 0
            y, _, s = F.bone_forward(rows, self.base.weight.data, self._bias(), self.miss_block.data, p,
                                     self.generator.seed, offset)
            self._cache = (rows, s, p, offset)
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the block and any trainable base gradients; the input gradient as the module contract says
        (a new array, added into ``dx``, or None with ``input_grad=False``)."""
        if self._cache is None:
            return self.base.backward(dy, dx=dx, input_grad=input_grad)
        rows, s, p, offset = self._cache
        if self.variant == "bat" and self.base.weight.requires_grad:
            raise RuntimeError("Bat needs a frozen base weight (its gradient through W' is not implemented); "
                               "set base.weight.requires_grad = False")
        drows = as_rows(dy, "dy", self.out_features)
        out = None
        if input_grad:
            out = (F.zeros(rows.shape) if dx is None
                   else self._check_dx(dx, (*dy.shape[:-1], self.in_features)).reshape(rows.shape))
        dblock = self.miss_block.grad_buffer()
        if self.variant == "bat" and (out is not None or dblock is not None):
            F.bat_backward(drows, rows, self.base.weight.data, self.miss_block.data, dx=out, dmiss_block=dblock)
        elif self.variant != "bat" and (out is not None or dblock is not None):
            F.bone_backward(drows, s, self.base.weight.data, self.miss_block.data, p, self.generator.seed, offset,
                            dx=out, dmiss_block=dblock)
        db = self.base.bias.grad_buffer() if self.base.bias is not None else None
        dw = self.base.weight.grad_buffer() if self.variant != "bat" else None
        if dw is not None or db is not None:
            F.linear_backward(drows, rows, self.base.weight.data, dweight=dw, dbias=db)
        if out is None:
            return None
        return dx if dx is not None else out.reshape(*dy.shape[:-1], self.in_features)

    def merge(self) -> None:
        """Fold the block into the base weight (Bat: W <- W'; balance / mini: add the tiled block)."""
        if self.merged:
            return
        if self.variant == "bat":
            F.bat_merge(self.base.weight.data, self.miss_block.data)
        else:
            F.bone_merge(self.base.weight.data, self.miss_block.data, 1.0)
        self.merged = True

    def unmerge(self) -> None:
        """Undo merge (Bat through (I + T_i)^{-1}, exact up to float32 rounding; else subtract)."""
        if not self.merged:
            return
        if self.variant == "bat":
            F.bat_unmerge(self.base.weight.data, self.miss_block.data)
        else:
            F.bone_merge(self.base.weight.data, self.miss_block.data, -1.0)
        self.merged = False

    def delta_weight(self) -> np.ndarray:
        """W' - W as a new (out_features, in_features) array (from the unmerged weight)."""
        if self.merged:
            raise RuntimeError("delta_weight on a merged layer: unmerge first")
        w = self.base.weight.data
        if self.variant == "bat":
            return F.bat_weight(w, self.miss_block.data) - w
        out = F.zeros(w.shape)
        F.bone_merge(out, self.miss_block.data, 1.0)
        return out

    def __repr__(self) -> str:
        return (f"BoneLinear(in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"variant={self.variant!r}, dropout={self.miss_dropout}, merged={self.merged})")
