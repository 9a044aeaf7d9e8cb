"""BoneLinear: a frozen Linear plus a Bone / MiSS or Bat block, PEFT's MiSS layer.

    balance (Bone, MiSS default):  y = x W^T + b + s D,  s = sum of the r-wide shards of dropout(x)
    mini:                          the same with D (r, out) tiled from a (r, mini_r) block
    bat:                           y = x W'^T + b,  W'_ik = W_ik + W_ik T_i + T_i on r x r blocks

A layer holds named adapters (PEFT's ``miss_block[name]``); the forward and backward run the active one, or,
in a mixed-adapter batch, each row its own (:mod:`peftc.nn.adapter_groups`).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .. import functional as F
from .._checks import as_rows, check_probability
from ..random import Generator
from .adapter_groups import AdapterGroups
from .linear import Linear
from .lora import DEFAULT_ADAPTER
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


class BoneAdapter:
    """One named Bone / MiSS or Bat adapter of a :class:`BoneLinear`: its variant, r, mini_r, dropout and block."""

    __slots__ = ("variant", "r", "mini_r", "miss_dropout", "miss_block")

    def __init__(self, in_features: int, out_features: int, r: int, init_weights: bool | str, miss_dropout: float,
                 mini_r: int) -> None:
        self.variant = miss_variant(init_weights)
        shape = miss_block_shape(self.variant, in_features, out_features, r, mini_r)
        self.r = int(r)
        self.mini_r = int(mini_r)
        self.miss_dropout = check_probability("miss_dropout", miss_dropout)
        self.miss_block = Parameter(np.zeros(shape, dtype=np.float32))


def _active_field(name: str) -> property:
    def get(self: BoneLinear):
        return getattr(self._active_record(), name)
    return property(get, doc=f"The active adapter's ``{name}``.")


class BoneLinear(AdapterGroups, Module):
    """Bone / MiSS or Bat around an existing :class:`Linear` (its arrays are used in place).

    The block starts at zero, so the layer starts as the base layer. ``miss_dropout`` acts on the
    balance / mini adapter input only (PEFT applies none to Bat). The constructor makes the adapter
    ``adapter_name``; :meth:`add_adapter` adds more, :meth:`set_adapter` picks the one that runs (PEFT's
    ``add_adapter`` / ``set_adapter`` on a MiSS layer). ``variant``, ``r``, ``mini_r``, ``miss_dropout`` and
    ``miss_block`` read the active adapter's; the block parameter is named ``miss_block`` for "default" and
    ``miss_block.<name>`` for the others.
    """

    variant = _active_field("variant")
    r = _active_field("r")
    mini_r = _active_field("mini_r")
    miss_dropout = _active_field("miss_dropout")
    miss_block = _active_field("miss_block")

    def __init__(self, base: Linear, r: int = 64, init_weights: bool | str = True, miss_dropout: float = 0.0,
                 mini_r: int = 1, generator: Generator | None = None, adapter_name: str = DEFAULT_ADAPTER) -> None:
        if not isinstance(base, Linear):
            raise TypeError(f"BoneLinear wraps a peftc.nn.Linear, got {type(base).__name__}")
        self.base = base
        self.miss_adapters: dict[str, BoneAdapter] = {}
        self.active_adapter = adapter_name
        self._active: BoneAdapter | None = None
        self.generator = generator or Generator(0)
        self.merged = False
        self.disabled = False
        self._cache: tuple | None = None
        self.row_adapters = None  # a mixed-adapter batch's RowAdapters, set by the model around a forward
        self._mixed_cache = None
        self.add_adapter(adapter_name, r, init_weights, miss_dropout, mini_r)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def _bias(self) -> np.ndarray | None:
        return self.base.bias.data if self.base.bias is not None else None

    # -- named adapters ------------------------------------------------------------------------------
    def _active_record(self) -> BoneAdapter:
        if self._active is None:
            raise AttributeError(f"this BoneLinear does not hold the active adapter {self.active_adapter!r} (it "
                                 f"holds {list(self.miss_adapters)})")
        return self._active

    def _adapter(self, adapter_name: str | None) -> BoneAdapter:
        if adapter_name is None:
            return self._active_record()
        if adapter_name not in self.miss_adapters:
            raise KeyError(f"no adapter {adapter_name!r} on this layer (it holds {list(self.miss_adapters)})")
        return self.miss_adapters[adapter_name]

    def add_adapter(self, adapter_name: str, r: int = 64, init_weights: bool | str = True, miss_dropout: float = 0.0,
                    mini_r: int = 1) -> None:
        """Add the adapter ``adapter_name`` (its block at zero) beside the existing ones; the active one stays
        active (PEFT's ``update_layer``).

        >>> layer = BoneLinear(Linear(8, 4), r=2)
        >>> layer.add_adapter("bat", r=2, init_weights="bat")
        >>> layer.set_adapter("bat"); layer.miss_block.shape
        (2, 2, 2)
        """
        if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
            raise ValueError(f"adapter_name must be a non-empty string without '.', got {adapter_name!r}")
        if adapter_name in self.miss_adapters:
            raise ValueError(f"this layer already holds an adapter named {adapter_name!r}")
        adapter = BoneAdapter(self.in_features, self.out_features, r, init_weights, miss_dropout, mini_r)
        self.miss_adapters[adapter_name] = adapter
        if adapter_name == self.active_adapter:
            self._active = adapter

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the adapter the forward runs; a layer without it runs its base layer."""
        if self.merged:
            raise RuntimeError(f"set_adapter({adapter_name!r}) on a merged layer: unmerge it first")
        self.active_adapter = adapter_name
        self._active = self.miss_adapters.get(adapter_name)
        self._cache = None

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove the adapter ``adapter_name`` from this layer (KeyError naming the adapters it holds if absent)."""
        adapter = self._adapter(adapter_name)
        if self.merged and adapter is self._active:
            raise RuntimeError(f"delete_adapter({adapter_name!r}) on a layer with it merged: unmerge it first")
        del self.miss_adapters[adapter_name]
        if adapter is self._active:
            self._active = None
            self._cache = None

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Every adapter's block (``miss_block`` for "default", ``miss_block.<name>`` for the others), then the base
        layer's parameters."""
        for adapter_name, adapter in self.miss_adapters.items():
            name = "miss_block" if adapter_name == DEFAULT_ADAPTER else f"miss_block.{adapter_name}"
            yield (f"{prefix}.{name}" if prefix else name), adapter.miss_block
        yield from super().named_parameters(prefix)

    def adapter_parameters(self, adapter_name: str | None = None) -> dict[str, Parameter]:
        """{name in PEFT's file layout (without the module path): Parameter} of an adapter (default: the active
        one): the MiSS block (no ``.weight``)."""
        return {"miss_block": self._adapter(adapter_name).miss_block}

    def adapters_by_name(self) -> dict[str, BoneAdapter]:
        return self.miss_adapters

    def _record_dropout(self, record: BoneAdapter) -> float:
        return record.miss_dropout if record.variant != "bat" else 0.0

    # -- running -------------------------------------------------------------------------------------
    def _run(self, ad: BoneAdapter, rows: np.ndarray, p: float = 0.0) -> tuple[np.ndarray, tuple]:
        if ad.variant == "bat":
            return F.bat_forward(rows, self.base.weight.data, self._bias(), ad.miss_block.data), (rows, None, 0.0, 0)
        offset = self.generator.take(rows.size) if p > 0.0 else 0
        y, _, s = F.bone_forward(rows, self.base.weight.data, self._bias(), ad.miss_block.data, p,
                                 self.generator.seed, offset)
        return y, (rows, s, p, offset)

    def _grad(self, ad: BoneAdapter, cache: tuple, drows: np.ndarray, out: np.ndarray | None) -> None:
        rows, s, p, offset = cache
        dblock = ad.miss_block.grad_buffer()
        if out is None and dblock is None:
            return
        if ad.variant == "bat":
            F.bat_backward(drows, rows, self.base.weight.data, ad.miss_block.data, dx=out, dmiss_block=dblock)
        else:
            F.bone_backward(drows, s, self.base.weight.data, ad.miss_block.data, p, self.generator.seed, offset,
                            dx=out, dmiss_block=dblock)

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
        p = ad.miss_dropout if self.training and ad.variant != "bat" else 0.0
        y, cache = self._run(ad, rows, p)
        self._cache = (ad, cache)
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the block and any trainable base gradients; the input gradient as the module contract says
        (a new array, added into ``dx``, or None with ``input_grad=False``)."""
        if self._mixed_cache is not None:
            return self._backward_groups(dy, dx, input_grad)
        if self._cache is None:
            return self.base.backward(dy, dx=dx, input_grad=input_grad)
        ad, cache = self._cache
        rows = cache[0]
        if ad.variant == "bat" and self.base.weight.requires_grad:
            raise RuntimeError("Bat needs a frozen base weight (its gradient through W' is not implemented); "
                               "set base.weight.requires_grad = False")
        drows = as_rows(dy, "dy", self.out_features)
        out = None
        if input_grad:
            out = (F.zeros(rows.shape) if dx is None
                   else self._check_dx(dx, (*dy.shape[:-1], self.in_features)).reshape(rows.shape))
        self._grad(ad, cache, drows, out)
        db = self.base.bias.grad_buffer() if self.base.bias is not None else None
        dw = self.base.weight.grad_buffer() if ad.variant != "bat" else None
        if dw is not None or db is not None:
            F.linear_backward(drows, rows, self.base.weight.data, dweight=dw, dbias=db)
        if out is None:
            return None
        return dx if dx is not None else out.reshape(*dy.shape[:-1], self.in_features)

    def merge(self) -> None:
        """Fold the active block into the base weight (Bat: W <- W'; balance / mini: add the tiled block). A layer
        that does not hold the active adapter is left as it is."""
        if self.merged or self._active is None:
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

    def delta_weight(self, adapter_name: str | None = None) -> np.ndarray:
        """W' - W of an adapter (default: the active one) as a new (out_features, in_features) array (from the
        unmerged weight)."""
        if self.merged:
            raise RuntimeError("delta_weight on a merged layer: unmerge first")
        ad = self._adapter(adapter_name)
        w = self.base.weight.data
        if ad.variant == "bat":
            return F.bat_weight(w, ad.miss_block.data) - w
        out = F.zeros(w.shape)
        F.bone_merge(out, ad.miss_block.data, 1.0)
        return out

    def __repr__(self) -> str:
        others = [n for n in self.miss_adapters if n != self.active_adapter]
        extra = f", other adapters={others}" if others else ""
        if self._active is None:
            return (f"BoneLinear(in_features={self.in_features}, out_features={self.out_features}, "
                    f"active={self.active_adapter!r} (not on this layer){extra})")
        return (f"BoneLinear(in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"variant={self.variant!r}, dropout={self.miss_dropout}, merged={self.merged}{extra})")
