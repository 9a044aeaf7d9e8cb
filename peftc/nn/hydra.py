"""HydraLinear: Hydra's parallel plus sequential low-rank branches on a frozen Linear (Kim et al., 2023).

    y0 = x W^T + b,   y = y0 + s_p (x A_p^T) B_p^T + s_s (y0 A_s^T) B_s^T

The parallel branch is a LoRA (``lora_A``, ``lora_B``); the sequential branch adapts the base
output, bias included, as the reference code does. No nonlinearity, so the layer merges exactly:
W' = (I + s_s B_s A_s) W + s_p B_p A_p and b' = (I + s_s B_s A_s) b. No dropout, no head biases.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .._checks import as_rows
from ..random import Generator
from .linear import Linear, kaiming_uniform
from .lora import LoraLinear
from .module import Parameter


class HydraLinear(LoraLinear):
    """Hydra around an existing :class:`Linear`.

    Parallel branch: ``lora_A`` (r, in), ``lora_B`` (out, r), scale ``lora_alpha / r``. Sequential
    branch: ``hydra_seq_A`` (seq_r, out), ``hydra_seq_B`` (out, seq_r), scale ``seq_alpha / seq_r``
    (square roots with rsLoRA). Init as the NLU reference: both A Kaiming-uniform, both B zero
    ("gaussian": A ~ N(0, 1/rank^2)). The defaults r=4, seq_r=8 with alpha = rank (scale 1) are the
    NLU settings.
    """

    def __init__(self, base: Linear, r: int = 4, lora_alpha: float = 4.0, seq_r: int = 8, seq_alpha: float = 8.0,
                 use_rslora: bool = False, init_lora_weights: bool | str = True,
                 generator: Generator | None = None) -> None:
        if int(seq_r) != seq_r or seq_r <= 0:
            raise ValueError(f"seq_r must be a positive integer, got {seq_r}")
        self.seq_r = int(seq_r)
        self.seq_alpha = float(seq_alpha)
        self.seq_scaling = F.lora_scaling(self.seq_r, self.seq_alpha, use_rslora)
        super().__init__(base, r=r, lora_alpha=lora_alpha, lora_dropout=0.0, use_rslora=use_rslora, lora_bias=False,
                         init_lora_weights=init_lora_weights, generator=generator)
        self.hydra_seq_A = Parameter(np.zeros((self.seq_r, base.out_features), dtype=np.float32))
        self.hydra_seq_B = Parameter(np.zeros((base.out_features, self.seq_r), dtype=np.float32))
        self._reset_sequential(init_lora_weights)

    def _reset_sequential(self, init_lora_weights: bool | str) -> None:
        g = self.generator
        if init_lora_weights is True:
            self.hydra_seq_A.data[...] = kaiming_uniform(g, self.hydra_seq_A.shape)
            self.hydra_seq_B.data.fill(0.0)
        elif init_lora_weights == "gaussian":
            self.hydra_seq_A.data[...] = g.normal(self.hydra_seq_A.shape, 0.0, 1.0 / self.seq_r)
            self.hydra_seq_B.data.fill(0.0)
        else:
            self.hydra_seq_A.data[...] = kaiming_uniform(g, self.hydra_seq_A.shape)
            self.hydra_seq_B.data[...] = kaiming_uniform(g, self.hydra_seq_B.shape)

    def reset_lora_parameters(self, init_lora_weights: bool | str = True) -> None:
        super().reset_lora_parameters(init_lora_weights)
        if "hydra_seq_A" in vars(self):
            self._reset_sequential(init_lora_weights)

    def adapter_parameters(self) -> dict[str, Parameter]:
        return {**super().adapter_parameters(), "hydra_seq_A.weight": self.hydra_seq_A,
                "hydra_seq_B.weight": self.hydra_seq_B}

    def _branches(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.lora_A.data, self.lora_B.data, self.hydra_seq_A.data, self.hydra_seq_B.data

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.merged or self.disabled:
            self._cache = None
            return self.base.forward(x)
        rows = as_rows(x, "x", self.in_features)
        y, y0, p, q = F.hydra_forward(rows, self.base.weight.data, self._bias(), *self._branches(), self.scaling,
                                      self.seq_scaling)
        self._cache = (rows, y0, p, q)
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the branch and any trainable base gradients; the input gradient as
        :meth:`LoraLinear.backward` (a new array, added into ``dx``, or None)."""
        if self._cache is None:
            return self.base.backward(dy, dx=dx, input_grad=input_grad)
        rows, y0, p, q = self._cache
        drows = as_rows(dy, "dy", self.out_features)
        out = self._input_rows(dx, dy) if input_grad else None
        F.hydra_backward(drows, rows, y0, p, q, self.base.weight.data, *self._branches(), self.scaling,
                         self.seq_scaling, dx=out, dpar_A=self.lora_A.grad_buffer(), dpar_B=self.lora_B.grad_buffer(),
                         dseq_A=self.hydra_seq_A.grad_buffer(), dseq_B=self.hydra_seq_B.grad_buffer())
        dw = self.base.weight.grad_buffer()
        db = self.base.bias.grad_buffer() if self.base.bias is not None else None
        if dw is not None or db is not None:
            # the base output feeds the sequential branch too, so its gradient is dy + s_s (dy B_s) A_s
            dy0 = drows + np.float32(self.seq_scaling) * ((drows @ self.hydra_seq_B.data) @ self.hydra_seq_A.data)
            F.linear_backward(np.ascontiguousarray(dy0, dtype=np.float32), rows, self.base.weight.data, dweight=dw,
                              dbias=db)
        if out is None:
            return None
        return dx if dx is not None else out.reshape(*dy.shape[:-1], self.in_features)

    def _merge(self, sign: float) -> None:
        F.hydra_merge(self.base.weight.data, self._bias(), *self._branches(), self.scaling, self.seq_scaling, sign)

    def delta_weight(self) -> np.ndarray:
        """W' - W = s_p B_p A_p + s_s B_s A_s W (needs the unmerged W)."""
        if self.merged:
            raise RuntimeError("delta_weight of a merged HydraLinear: call unmerge() first")
        a_p, b_p, a_s, b_s = self._branches()
        return (self.scaling * (b_p @ a_p) + self.seq_scaling * (b_s @ (a_s @ self.base.weight.data))).astype(
            np.float32)

    def __repr__(self) -> str:
        return (f"HydraLinear(in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"seq_r={self.seq_r}, scaling={self.scaling}, seq_scaling={self.seq_scaling}, merged={self.merged})")
