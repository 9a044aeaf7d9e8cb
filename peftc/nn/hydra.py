"""HydraLinear: Hydra's parallel plus sequential low-rank branches on a frozen Linear (Kim et al., 2023).

    y0 = x W^T + b,   y = y0 + s_p (x A_p^T) B_p^T + s_s (y0 A_s^T) B_s^T

The parallel branch is a LoRA (``lora_A``, ``lora_B``); the sequential branch adapts the base
output, bias included, as the reference code does. No nonlinearity, so the layer merges exactly:
W' = (I + s_s B_s A_s) W + s_p B_p A_p and b' = (I + s_s B_s A_s) b. No dropout, no head biases.
A layer holds named adapters as :class:`~peftc.nn.LoraLinear` does, each with both branches.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .. import functional as F
from .._checks import as_rows
from ..random import Generator
from .adapter_groups import AdapterGroups
from .linear import Linear, kaiming_uniform
from .lora import DEFAULT_ADAPTER, LoraAdapter, LoraLinear, _active_field
from .module import Parameter


class HydraAdapter(LoraAdapter):
    """One named Hydra adapter: the parallel branch as a LoRA record, plus the sequential branch's
    ``hydra_seq_A`` (seq_r, out), ``hydra_seq_B`` (out, seq_r) and its rank and scale."""

    __slots__ = ("seq_r", "seq_alpha", "seq_scaling", "hydra_seq_A", "hydra_seq_B")

    def __init__(self, in_features: int, out_features: int, r: int, lora_alpha: float, seq_r: int, seq_alpha: float,
                 use_rslora: bool) -> None:
        if isinstance(seq_r, bool) or int(seq_r) != seq_r or seq_r <= 0:
            raise ValueError(f"seq_r must be a positive integer, got {seq_r}")
        super().__init__(in_features, out_features, r, lora_alpha, 0.0, use_rslora, False)
        self.seq_r = int(seq_r)
        self.seq_alpha = float(seq_alpha)
        self.seq_scaling = F.lora_scaling(self.seq_r, self.seq_alpha, use_rslora)
        self.hydra_seq_A = Parameter(np.zeros((self.seq_r, out_features), dtype=np.float32))
        self.hydra_seq_B = Parameter(np.zeros((out_features, self.seq_r), dtype=np.float32))

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        yield from super().named_parameters()
        yield "hydra_seq_A", self.hydra_seq_A
        yield "hydra_seq_B", self.hydra_seq_B

    def file_parameters(self) -> dict[str, Parameter]:
        return {**super().file_parameters(), "hydra_seq_A.weight": self.hydra_seq_A,
                "hydra_seq_B.weight": self.hydra_seq_B}

    def branches(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.lora_A.data, self.lora_B.data, self.hydra_seq_A.data, self.hydra_seq_B.data


class HydraLinear(AdapterGroups, LoraLinear):
    """Hydra around an existing :class:`Linear`.

    Parallel branch: ``lora_A`` (r, in), ``lora_B`` (out, r), scale ``lora_alpha / r``. Sequential
    branch: ``hydra_seq_A`` (seq_r, out), ``hydra_seq_B`` (out, seq_r), scale ``seq_alpha / seq_r``
    (square roots with rsLoRA). Init as the NLU reference: both A Kaiming-uniform, both B zero
    ("gaussian": A ~ N(0, 1/rank^2)). The defaults r=4, seq_r=8 with alpha = rank (scale 1) are the
    NLU settings. The branch tensors and settings read the active adapter's; :meth:`add_adapter` adds more.
    """

    hydra_seq_A = _active_field("hydra_seq_A")
    hydra_seq_B = _active_field("hydra_seq_B")
    seq_r = _active_field("seq_r")
    seq_alpha = _active_field("seq_alpha")
    seq_scaling = _active_field("seq_scaling")

    def __init__(self, base: Linear, r: int = 4, lora_alpha: float = 4.0, seq_r: int = 8, seq_alpha: float = 8.0,
                 use_rslora: bool = False, init_lora_weights: bool | str = True,
                 generator: Generator | None = None, adapter_name: str = DEFAULT_ADAPTER) -> None:
        if isinstance(seq_r, bool) or int(seq_r) != seq_r or seq_r <= 0:
            raise ValueError(f"seq_r must be a positive integer, got {seq_r}")
        self._seq = (int(seq_r), float(seq_alpha))  # read by _record while the base constructor makes the adapter
        super().__init__(base, r=r, lora_alpha=lora_alpha, lora_dropout=0.0, use_rslora=use_rslora, lora_bias=False,
                         init_lora_weights=init_lora_weights, generator=generator, adapter_name=adapter_name)
        del self._seq
        self._reset_sequential(self.lora_adapters[adapter_name], init_lora_weights)

    def _record(self, r: int, lora_alpha: float, lora_dropout: float, use_rslora: bool,
                lora_bias: bool) -> HydraAdapter:
        return HydraAdapter(self.in_features, self.out_features, r, lora_alpha, *self._seq, use_rslora)

    def add_adapter(self, adapter_name: str, r: int = 4, lora_alpha: float = 4.0, seq_r: int = 8,
                    seq_alpha: float = 8.0, use_rslora: bool = False, init_lora_weights: bool | str = True,
                    generator: Generator | None = None) -> None:
        """Add the Hydra adapter ``adapter_name`` beside the existing ones (the active one stays active); both
        branches draw from ``generator`` (default: the layer's), in the order the constructor draws them.

        >>> layer = HydraLinear(Linear(4, 3), r=2, seq_r=2)
        >>> layer.add_adapter("other", r=1, seq_r=3)
        >>> layer.set_adapter("other"); layer.hydra_seq_A.shape
        (3, 3)
        """
        adapter = self._new_adapter(adapter_name, HydraAdapter(self.in_features, self.out_features, r, lora_alpha,
                                                               seq_r, seq_alpha, use_rslora))
        self._init_new(adapter_name, adapter, init_lora_weights, generator)
        self._reset_sequential(adapter, init_lora_weights, generator)

    def _reset_sequential(self, ad: HydraAdapter, init_lora_weights: bool | str,
                          generator: Generator | None = None) -> None:
        g = generator or self.generator
        if init_lora_weights is True:
            ad.hydra_seq_A.data[...] = kaiming_uniform(g, ad.hydra_seq_A.shape)
            ad.hydra_seq_B.data.fill(0.0)
        elif init_lora_weights == "gaussian":
            ad.hydra_seq_A.data[...] = g.normal(ad.hydra_seq_A.shape, 0.0, 1.0 / ad.seq_r)
            ad.hydra_seq_B.data.fill(0.0)
        else:
            ad.hydra_seq_A.data[...] = kaiming_uniform(g, ad.hydra_seq_A.shape)
            ad.hydra_seq_B.data[...] = kaiming_uniform(g, ad.hydra_seq_B.shape)

    def reset_lora_parameters(self, init_lora_weights: bool | str = True, adapter_name: str | None = None) -> None:
        super().reset_lora_parameters(init_lora_weights, adapter_name)
        if "_seq" not in vars(self):  # the constructor resets the sequential branch itself
            self._reset_sequential(self._adapter(adapter_name), init_lora_weights)

    def adapter_parameters(self, adapter_name: str | None = None) -> dict[str, Parameter]:
        return self._adapter(adapter_name).file_parameters()

    def _branches(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self._active_record().branches()

    def adapters_by_name(self) -> dict[str, HydraAdapter]:
        return self.lora_adapters

    def _run(self, ad: HydraAdapter, rows: np.ndarray) -> tuple[np.ndarray, tuple]:
        y, y0, p, q = F.hydra_forward(rows, self.base.weight.data, self._bias(), *ad.branches(), ad.scaling,
                                      ad.seq_scaling)
        return y, (rows, y0, p, q)

    def _grad(self, ad: HydraAdapter, cache: tuple, drows: np.ndarray, out: np.ndarray | None) -> None:
        rows, y0, p, q = cache
        F.hydra_backward(drows, rows, y0, p, q, self.base.weight.data, *ad.branches(), ad.scaling, ad.seq_scaling,
                         dx=out, dpar_A=ad.lora_A.grad_buffer(), dpar_B=ad.lora_B.grad_buffer(),
                         dseq_A=ad.hydra_seq_A.grad_buffer(), dseq_B=ad.hydra_seq_B.grad_buffer())

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._mixed_cache = None
        if self.row_adapters is not None and not self.disabled:
            self._cache = None
            return self._forward_groups(x)
        ad = self._active
        if self.merged or self.disabled or ad is None:
            self._cache = None
            return self.base.forward(x)
        y, cache = self._run(ad, as_rows(x, "x", self.in_features))
        self._cache = (ad, cache)
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the branch and any trainable base gradients; the input gradient as
        :meth:`LoraLinear.backward` (a new array, added into ``dx``, or None)."""
        if self._mixed_cache is not None:
            return self._backward_groups(dy, dx, input_grad)
        if self._cache is None:
            return self.base.backward(dy, dx=dx, input_grad=input_grad)
        ad, (rows, y0, p, q) = self._cache
        drows = as_rows(dy, "dy", self.out_features)
        out = self._input_rows(dx, dy) if input_grad else None
        self._grad(ad, (rows, y0, p, q), drows, out)
        dw = self.base.weight.grad_buffer()
        db = self.base.bias.grad_buffer() if self.base.bias is not None else None
        if dw is not None or db is not None:
            # the base output feeds the sequential branch too, so its gradient is dy + s_s (dy B_s) A_s
            dy0 = drows + np.float32(ad.seq_scaling) * ((drows @ ad.hydra_seq_B.data) @ ad.hydra_seq_A.data)
            F.linear_backward(np.ascontiguousarray(dy0, dtype=np.float32), rows, self.base.weight.data, dweight=dw,
                              dbias=db)
        if out is None:
            return None
        return dx if dx is not None else out.reshape(*dy.shape[:-1], self.in_features)

    def _merge(self, sign: float) -> None:
        F.hydra_merge(self.base.weight.data, self._bias(), *self._branches(), self.scaling, self.seq_scaling, sign)

    def delta_weight(self, adapter_name: str | None = None) -> np.ndarray:
        """W' - W = s_p B_p A_p + s_s B_s A_s W of an adapter (default: the active one; needs the unmerged W)."""
        if self.merged:
            raise RuntimeError("delta_weight of a merged HydraLinear: call unmerge() first")
        ad = self._adapter(adapter_name)
        a_p, b_p, a_s, b_s = ad.branches()
        return (ad.scaling * (b_p @ a_p) + ad.seq_scaling * (b_s @ (a_s @ self.base.weight.data))).astype(
            np.float32)

    def __repr__(self) -> str:
        others = [n for n in self.lora_adapters if n != self.active_adapter]
        extra = f", other adapters={others}" if others else ""
        if self._active is None:
            return (f"HydraLinear(in_features={self.in_features}, out_features={self.out_features}, "
                    f"active={self.active_adapter!r} (not on this layer){extra})")
        return (f"HydraLinear(in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"seq_r={self.seq_r}, scaling={self.scaling}, seq_scaling={self.seq_scaling}, merged={self.merged}"
                f"{extra})")
