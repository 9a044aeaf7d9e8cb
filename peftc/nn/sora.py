"""SoraLinear: SoRA's gated low-rank update on a frozen Linear (Ding et al., EMNLP 2023).

    y = x W^T + b + s * dropout(x) A^T diag(g) B^T,   s = alpha / r_max  (alpha / sqrt(r_max) with rsLoRA)

A LoRA layer whose rank-one terms are switched by the gate vector g. Training drives gates to
exactly zero with a proximal step (see :mod:`peftc.tuners.sora`); the zero ranks are then cut
away by pruning, which leaves a plain LoRA of smaller rank. A layer holds named adapters as
:class:`~peftc.nn.LoraLinear` does, each with its own gate and L1 weight.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .. import functional as F
from .._checks import as_rows
from ..random import Generator
from .adapter_groups import AdapterGroups
from .linear import Linear
from .lora import DEFAULT_ADAPTER, LoraAdapter, LoraLinear, _active_field
from .module import Parameter


def _check_l1(l1_weight: float) -> float:
    if not (np.isfinite(l1_weight) and l1_weight >= 0.0):
        raise ValueError(f"l1_weight must be finite and >= 0, got {l1_weight}")
    return float(l1_weight)


class SoraAdapter(LoraAdapter):
    """One named SoRA adapter: LoRA's A, B and settings, plus the gate g (r,) and its L1 weight."""

    __slots__ = ("lora_gate", "l1_weight")

    def __init__(self, in_features: int, out_features: int, r: int, lora_alpha: float, lora_dropout: float,
                 use_rslora: bool, l1_weight: float = 0.0) -> None:
        super().__init__(in_features, out_features, r, lora_alpha, lora_dropout, use_rslora, False)
        self.lora_gate = Parameter(np.zeros(self.r, dtype=np.float32))
        self.l1_weight = _check_l1(l1_weight)

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        yield from super().named_parameters()
        yield "lora_gate", self.lora_gate

    def file_parameters(self) -> dict[str, Parameter]:
        return {**super().file_parameters(), "lora_gate": self.lora_gate}


class SoraLinear(AdapterGroups, LoraLinear):
    """SoRA around an existing :class:`Linear`: A (r, in), B (out, r) as in LoRA, plus the gate g (r,).

    Init as the official code: A Kaiming-uniform (or "gaussian"), B = 0, g ~ N(0, 1), so the layer
    starts as a no-op. ``l1_weight`` is lambda1 / P (P: all gate entries of the adapter in the model); the
    backward then adds the subgradient ``l1_weight * sign(g)`` (0 at g = 0) of the penalty
    ``lambda1 * sum |g| / P`` to the gate gradient, as the official loss does. ``lora_gate`` and
    ``l1_weight`` read the active adapter's; :meth:`add_adapter` adds more adapters.
    """

    lora_gate = _active_field("lora_gate")
    l1_weight = _active_field("l1_weight", settable=True)

    def __init__(self, base: Linear, r: int = 8, lora_alpha: float = 16.0, lora_dropout: float = 0.0,
                 use_rslora: bool = False, init_lora_weights: bool | str = True, generator: Generator | None = None,
                 l1_weight: float = 0.0, adapter_name: str = DEFAULT_ADAPTER) -> None:
        self._l1_weight = _check_l1(l1_weight)  # read by _record while the base constructor makes the first adapter
        super().__init__(base, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, use_rslora=use_rslora,
                         lora_bias=False, init_lora_weights=init_lora_weights, generator=generator,
                         adapter_name=adapter_name)
        del self._l1_weight
        self._init_gate(self.lora_adapters[adapter_name], None)

    def _record(self, r: int, lora_alpha: float, lora_dropout: float, use_rslora: bool,
                lora_bias: bool) -> SoraAdapter:
        return SoraAdapter(self.in_features, self.out_features, r, lora_alpha, lora_dropout, use_rslora,
                           getattr(self, "_l1_weight", 0.0))

    def _init_gate(self, adapter: SoraAdapter, generator: Generator | None) -> None:
        adapter.lora_gate.data[...] = (generator or self.generator).normal((adapter.r,), 0.0, 1.0)

    def add_adapter(self, adapter_name: str, r: int = 8, lora_alpha: float = 16.0, lora_dropout: float = 0.0,
                    use_rslora: bool = False, init_lora_weights: bool | str = True,
                    generator: Generator | None = None, l1_weight: float = 0.0) -> None:
        """Add the SoRA adapter ``adapter_name`` beside the existing ones (the active one stays active); A, B and
        the gate draw from ``generator`` (default: the layer's), in the order the constructor draws them.

        >>> layer = SoraLinear(Linear(4, 3), r=2)
        >>> layer.add_adapter("other", r=3, l1_weight=0.1)
        >>> layer.set_adapter("other"); layer.lora_gate.shape
        (3,)
        """
        adapter = self._new_adapter(adapter_name, SoraAdapter(self.in_features, self.out_features, r, lora_alpha,
                                                              lora_dropout, use_rslora, l1_weight))
        self._init_new(adapter_name, adapter, init_lora_weights, generator)
        self._init_gate(adapter, generator)

    def adapter_parameters(self, adapter_name: str | None = None) -> dict[str, Parameter]:
        return self._adapter(adapter_name).file_parameters()

    def active_ranks(self) -> int:
        """How many gates of the active adapter are not exactly zero (the rank left after pruning)."""
        return int(np.count_nonzero(self.lora_gate.data))

    def adapters_by_name(self) -> dict[str, SoraAdapter]:
        return self.lora_adapters

    def _record_dropout(self, record: SoraAdapter) -> float:
        return record.lora_dropout

    def _run(self, ad: SoraAdapter, rows: np.ndarray, p: float = 0.0) -> tuple[np.ndarray, tuple]:
        offset = self.generator.take(rows.size) if p > 0.0 else 0
        y, xd, u = F.sora_forward(rows, self.base.weight.data, self._bias(), ad.lora_A.data, ad.lora_B.data,
                                  ad.lora_gate.data, ad.scaling, p, self.generator.seed, offset)
        return y, (rows, xd, u, p, offset)

    def _grad(self, ad: SoraAdapter, cache: tuple, drows: np.ndarray, out: np.ndarray | None) -> None:
        rows, xd, u, p, offset = cache
        dgate = ad.lora_gate.grad_buffer()
        F.sora_backward(drows, xd if p > 0.0 else rows, u, self.base.weight.data, ad.lora_A.data, ad.lora_B.data,
                        ad.lora_gate.data, ad.scaling, p, self.generator.seed, offset, dx=out,
                        dlora_A=ad.lora_A.grad_buffer(), dlora_B=ad.lora_B.grad_buffer(), dgate=dgate)
        if dgate is not None and ad.l1_weight > 0.0:
            dgate += np.float32(ad.l1_weight) * np.sign(ad.lora_gate.data)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._mixed_cache = None
        if self.row_adapters is not None and not self.disabled:
            self._cache = None
            return self._forward_groups(x)
        ad = self._active
        if self.merged or self.disabled or ad is None:
            self._cache = None
            return self.base.forward(x)
        rows = as_rows(x, "x", self.in_features)
        y, cache = self._run(ad, rows, ad.lora_dropout if self.training else 0.0)
        self._cache = (ad, cache)
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the adapter, gate (with the L1 subgradient) and any trainable base gradients; the input
        gradient as :meth:`LoraLinear.backward` (a new array, added into ``dx``, or None)."""
        if self._mixed_cache is not None:
            return self._backward_groups(dy, dx, input_grad)
        if self._cache is None:
            return self.base.backward(dy, dx=dx, input_grad=input_grad)
        ad, cache = self._cache
        drows = as_rows(dy, "dy", self.out_features)
        out = self._input_rows(dx, dy) if input_grad else None
        self._grad(ad, cache, drows, out)
        return self._base_backward(drows, cache[0], out, dx, dy)

    def gated_B(self, adapter_name: str | None = None) -> np.ndarray:
        """B diag(g) of an adapter (default: the active one) as a new array: the gate folded into B."""
        ad = self._adapter(adapter_name)
        return (ad.lora_B.data * ad.lora_gate.data).astype(np.float32)

    def _merge(self, sign: float) -> None:
        F.lora_merge(self.base.weight.data, None, self.lora_A.data, self.gated_B(), None, self.scaling, sign)

    def delta_weight(self, adapter_name: str | None = None) -> np.ndarray:
        """s * B diag(g) A of an adapter (default: the active one) as a new (out_features, in_features) array."""
        ad = self._adapter(adapter_name)
        return (ad.scaling * (self.gated_B(adapter_name) @ ad.lora_A.data)).astype(np.float32)

    def __repr__(self) -> str:
        others = [n for n in self.lora_adapters if n != self.active_adapter]
        extra = f", other adapters={others}" if others else ""
        if self._active is None:
            return (f"SoraLinear(in_features={self.in_features}, out_features={self.out_features}, "
                    f"active={self.active_adapter!r} (not on this layer){extra})")
        return (f"SoraLinear(in_features={self.in_features}, out_features={self.out_features}, r_max={self.r}, "
                f"active={self.active_ranks()}, lora_alpha={self.lora_alpha}, dropout={self.lora_dropout}, "
                f"merged={self.merged}{extra})")
