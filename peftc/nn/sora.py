"""SoraLinear: SoRA's gated low-rank update on a frozen Linear (Ding et al., EMNLP 2023).

    y = x W^T + b + s * dropout(x) A^T diag(g) B^T,   s = alpha / r_max  (alpha / sqrt(r_max) with rsLoRA)

A LoRA layer whose rank-one terms are switched by the gate vector g. Training drives gates to
exactly zero with a proximal step (see :mod:`peftc.tuners.sora`); the zero ranks are then cut
away by pruning, which leaves a plain LoRA of smaller rank.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import as_rows
from ..random import Generator
from .linear import Linear
from .lora import LoraLinear
from .module import Parameter


class SoraLinear(LoraLinear):
    """SoRA around an existing :class:`Linear`: A (r, in), B (out, r) as in LoRA, plus the gate g (r,).

    Init as the official code: A Kaiming-uniform (or "gaussian"), B = 0, g ~ N(0, 1), so the layer
    starts as a no-op. ``l1_weight`` is lambda1 / P (P: all gate entries of the model); the backward
    then adds the subgradient ``l1_weight * sign(g)`` (0 at g = 0) of the penalty
    ``lambda1 * sum |g| / P`` to the gate gradient, as the official loss does.
    """

    def __init__(self, base: Linear, r: int = 8, lora_alpha: float = 16.0, lora_dropout: float = 0.0,
                 use_rslora: bool = False, init_lora_weights: bool | str = True, generator: Generator | None = None,
                 l1_weight: float = 0.0) -> None:
        super().__init__(base, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, use_rslora=use_rslora,
                         lora_bias=False, init_lora_weights=init_lora_weights, generator=generator)
        self.lora_gate = Parameter(self.generator.normal((self.r,), 0.0, 1.0))
        if not (np.isfinite(l1_weight) and l1_weight >= 0.0):
            raise ValueError(f"l1_weight must be finite and >= 0, got {l1_weight}")
        self.l1_weight = float(l1_weight)

    def adapter_parameters(self) -> dict[str, Parameter]:
        return {**super().adapter_parameters(), "lora_gate": self.lora_gate}

    def active_ranks(self) -> int:
        """How many gates are not exactly zero (the rank left after pruning)."""
        return int(np.count_nonzero(self.lora_gate.data))

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.merged or self.disabled:
            self._cache = None
            return self.base.forward(x)
        rows = as_rows(x, "x", self.in_features)
        p = self.lora_dropout if self.training else 0.0
        offset = self.generator.take(rows.size) if p > 0.0 else 0
        y, xd, u = F.sora_forward(rows, self.base.weight.data, self._bias(), self.lora_A.data, self.lora_B.data,
                                  self.lora_gate.data, self.scaling, p, self.generator.seed, offset)
        self._cache = (rows, xd, u, p, offset)
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the adapter, gate (with the L1 subgradient) and any trainable base gradients; the input
        gradient as :meth:`LoraLinear.backward` (a new array, added into ``dx``, or None)."""
        if self._cache is None:
            return self.base.backward(dy, dx=dx, input_grad=input_grad)
        rows, xd, u, p, offset = self._cache
        drows = as_rows(dy, "dy", self.out_features)
        out = self._input_rows(dx, dy) if input_grad else None
        dgate = self.lora_gate.grad_buffer()
        F.sora_backward(drows, xd if p > 0.0 else rows, u, self.base.weight.data, self.lora_A.data,
                        self.lora_B.data, self.lora_gate.data, self.scaling, p, self.generator.seed, offset, dx=out,
                        dlora_A=self.lora_A.grad_buffer(), dlora_B=self.lora_B.grad_buffer(), dgate=dgate)
        if dgate is not None and self.l1_weight > 0.0:
            dgate += np.float32(self.l1_weight) * np.sign(self.lora_gate.data)
        return self._base_backward(drows, rows, out, dx, dy)

    def gated_B(self) -> np.ndarray:
        """B diag(g) as a new array: the gate folded into B."""
        return (self.lora_B.data * self.lora_gate.data).astype(np.float32)

    def _merge(self, sign: float) -> None:
        F.lora_merge(self.base.weight.data, None, self.lora_A.data, self.gated_B(), None, self.scaling, sign)

    def delta_weight(self) -> np.ndarray:
        """s * B diag(g) A as a new (out_features, in_features) array."""
        return (self.scaling * (self.gated_B() @ self.lora_A.data)).astype(np.float32)

    def __repr__(self) -> str:
        return (f"SoraLinear(in_features={self.in_features}, out_features={self.out_features}, r_max={self.r}, "
                f"active={self.active_ranks()}, lora_alpha={self.lora_alpha}, dropout={self.lora_dropout}, "
                f"merged={self.merged})")
