"""LoraLinear: a frozen Linear plus named low-rank updates, PEFT's LoRA layer.

    y = x W^T + b + s * (dropout(x) A^T B^T + lora_bias),   s = alpha / r  (alpha / sqrt(r) with rsLoRA)

A layer holds one or more named adapters (PEFT's ``lora_A[name]``); the forward and backward run the
active one, with the same kernels and arrays as a layer with a single adapter. With ``row_adapters`` set
(the model's ``forward(..., adapter_names=[...])`` does it) each row runs its own adapter instead, all of
them in one kernel call (:func:`peftc.functional.lora_mixed_forward`).
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .. import functional as F
from .._checks import as_rows, check_probability
from ..bf16 import PackedWeight
from ..bf16 import linear_backward as bf16_linear_backward
from ..bf16 import linear_forward as bf16_linear_forward
from ..random import Generator
from .linear import Linear, kaiming_uniform
from .module import Module, Parameter
from .row_adapters import RowAdapters
from .shared_rows import distinct_rows

DEFAULT_ADAPTER = "default"


class LoraAdapter:
    """One named adapter of a :class:`LoraLinear`: A (r, in), B (out, r), the optional head bias (out,) and
    its settings. Its parameters are named ``lora_A``, ``lora_B``, ``lora_bias`` in the layer, with
    ``.<adapter name>`` appended for every adapter but "default"."""

    __slots__ = ("r", "lora_alpha", "use_rslora", "lora_dropout", "scaling", "lora_A", "lora_B", "lora_bias")

    def __init__(self, in_features: int, out_features: int, r: int, lora_alpha: float, lora_dropout: float,
                 use_rslora: bool, lora_bias: bool) -> None:
        if int(r) != r or r <= 0:
            raise ValueError(f"r must be a positive integer, got {r}")
        self.r = int(r)
        self.lora_alpha = float(lora_alpha)
        self.use_rslora = bool(use_rslora)
        self.lora_dropout = check_probability("lora_dropout", lora_dropout)
        self.scaling = F.lora_scaling(self.r, self.lora_alpha, self.use_rslora)
        self.lora_A = Parameter(np.zeros((self.r, in_features), dtype=np.float32))
        self.lora_B = Parameter(np.zeros((out_features, self.r), dtype=np.float32))
        self.lora_bias = Parameter(np.zeros(out_features, dtype=np.float32)) if lora_bias else None

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        yield "lora_A", self.lora_A
        yield "lora_B", self.lora_B
        if self.lora_bias is not None:
            yield "lora_bias", self.lora_bias

    def file_parameters(self) -> dict[str, Parameter]:
        """{name in PEFT's file layout (without the module path): Parameter}."""
        out = {"lora_A.weight": self.lora_A, "lora_B.weight": self.lora_B}
        if self.lora_bias is not None:
            out["lora_B.bias"] = self.lora_bias
        return out


def _active_field(name: str, settable: bool = False) -> property:
    def get(self: LoraLinear):
        return getattr(self._active_record(), name)

    def set_(self: LoraLinear, value) -> None:
        setattr(self._active_record(), name, value)
    return property(get, set_ if settable else None, doc=f"The active adapter's ``{name}``.")


class LoraLinear(Module):
    """LoRA around an existing :class:`Linear` (the base layer's arrays are used in place).

    ``init_lora_weights``: True (PEFT's default: Kaiming-uniform A, zero B), "gaussian"
    (A ~ N(0, 1/r^2), zero B), False (both random; the layer is then not a no-op) or "eva" (as True
    until :func:`peftc.tuners.initialize_lora_eva_weights` sets A).

    On a bf16 base (:meth:`Linear.to_bfloat16`) the frozen product runs in the bf16 kernels and the adapter
    in float32, forward and backward; :meth:`merge` then merges in float32 and rounds the sum to bf16 once.

    The constructor makes the adapter ``adapter_name``; :meth:`add_adapter` adds more, :meth:`set_adapter`
    picks the one that runs. ``lora_A``, ``lora_B``, ``lora_bias``, ``r``, ``lora_alpha``, ``scaling``,
    ``lora_dropout`` and ``use_rslora`` read the active adapter's. SoraLinear and HydraLinear hold named adapters
the same way (their records carry the gate, or the sequential branch, too).
    """

    lora_A = _active_field("lora_A")
    lora_B = _active_field("lora_B")
    lora_bias = _active_field("lora_bias")
    r = _active_field("r")
    lora_alpha = _active_field("lora_alpha")
    use_rslora = _active_field("use_rslora")
    lora_dropout = _active_field("lora_dropout")
    scaling = _active_field("scaling")

    def __init__(self, base: Linear, r: int = 8, lora_alpha: float = 8.0, lora_dropout: float = 0.0,
                 use_rslora: bool = False, lora_bias: bool = False, init_lora_weights: bool | str = True,
                 generator: Generator | None = None, adapter_name: str = DEFAULT_ADAPTER) -> None:
        if not isinstance(base, Linear):
            raise TypeError(f"LoraLinear wraps a peftc.nn.Linear, got {type(base).__name__}")
        if base.is_bfloat16 and type(self) is not LoraLinear:
            raise NotImplementedError(f"{type(self).__name__} on a bf16 base layer: only LoRA runs on bf16 frozen "
                                      f"weights; load the model in float32")
        self.base = base
        self.generator = generator or Generator(0)
        self.lora_adapters: dict[str, LoraAdapter] = {}
        self.active_adapter = adapter_name
        self._active: LoraAdapter | None = None
        self.merged = False
        self.disabled = False
        self._cache: tuple | None = None
        # mixed-adapter batches: which adapter each row runs (set by the model around a forward), the cache of
        # such a forward, and the scratch its kernels reuse from call to call
        self.row_adapters: RowAdapters | None = None
        self._mixed_cache: tuple | None = None
        self._mixed_work = np.empty(0, dtype=np.float32)
        self._mixed_iwork = np.empty(0, dtype=np.int64)
        self._new_adapter(adapter_name, self._record(r, lora_alpha, lora_dropout, use_rslora, lora_bias))
        self.reset_lora_parameters(init_lora_weights)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    # -- named adapters ------------------------------------------------------------------------------
    def _active_record(self) -> LoraAdapter:
        if self._active is None:
            raise AttributeError(f"this {type(self).__name__} does not hold the active adapter "
                                 f"{self.active_adapter!r} (it holds {list(self.lora_adapters)})")
        return self._active

    def _adapter(self, adapter_name: str | None) -> LoraAdapter:
        if adapter_name is None:
            return self._active_record()
        if adapter_name not in self.lora_adapters:
            raise KeyError(f"no adapter {adapter_name!r} on this layer (it holds {list(self.lora_adapters)})")
        return self.lora_adapters[adapter_name]

    def _record(self, r: int, lora_alpha: float, lora_dropout: float, use_rslora: bool,
                lora_bias: bool) -> LoraAdapter:
        return LoraAdapter(self.in_features, self.out_features, r, lora_alpha, lora_dropout, use_rslora, lora_bias)

    def _new_adapter(self, adapter_name: str, adapter: LoraAdapter) -> LoraAdapter:
        """Hold ``adapter`` (a record the subclass made) under ``adapter_name``."""
        if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
            raise ValueError(f"adapter_name must be a non-empty string without '.', got {adapter_name!r}")
        if adapter_name in self.lora_adapters:
            raise ValueError(f"this layer already holds an adapter named {adapter_name!r}")
        self.lora_adapters[adapter_name] = adapter
        if adapter_name == self.active_adapter:
            self._active = adapter
        return adapter

    def add_adapter(self, adapter_name: str, r: int = 8, lora_alpha: float = 8.0, lora_dropout: float = 0.0,
                    use_rslora: bool = False, lora_bias: bool = False, init_lora_weights: bool | str = True,
                    generator: Generator | None = None) -> None:
        """Add the adapter ``adapter_name`` beside the existing ones (the active adapter stays active); its
        initialisation draws from ``generator`` (default: the layer's).

        >>> layer = LoraLinear(Linear(4, 3), r=2)
        >>> layer.add_adapter("other", r=3)
        >>> layer.set_adapter("other"); layer.lora_A.shape
        (3, 4)
        """
        if type(self) is not LoraLinear:
            raise TypeError(f"{type(self).__name__}.add_adapter takes its own settings; LoraLinear.add_adapter was "
                            f"called")
        adapter = self._new_adapter(adapter_name, self._record(r, lora_alpha, lora_dropout, use_rslora, lora_bias))
        self._init_new(adapter_name, adapter, init_lora_weights, generator)

    def _init_new(self, adapter_name: str, adapter: LoraAdapter, init_lora_weights: bool | str,
                  generator: Generator | None) -> None:
        """Initialise a just-added adapter (the subclasses' extra tensors too); on a bad setting remove it again."""
        try:
            self._init_adapter(adapter, init_lora_weights, generator)
        except ValueError:
            del self.lora_adapters[adapter_name]
            if self._active is adapter:
                self._active = None
            raise

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the adapter the forward runs; a layer without it runs its base layer.

        >>> import numpy as np
        >>> from peftc.nn import Linear, LoraLinear
        >>> layer = LoraLinear(Linear(4, 3), r=2)
        >>> layer.add_adapter("other", r=3, init_lora_weights=False)   # random B: it changes the output
        >>> layer.set_adapter("other")
        >>> layer.active_adapter, layer.lora_A.shape
        ('other', (3, 4))
        >>> x = np.ones((2, 4), np.float32)
        >>> bool(np.allclose(layer(x), layer.base(x)))
        False
        >>> layer.set_adapter("absent")            # no such adapter here: the base layer runs
        >>> bool(np.allclose(layer(x), layer.base(x)))
        True
        """
        if self.merged:
            raise RuntimeError(f"set_adapter({adapter_name!r}) on a merged layer: unmerge it first")
        self.active_adapter = adapter_name
        self._active = self.lora_adapters.get(adapter_name)
        self._cache = None

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove the adapter ``adapter_name`` from this layer (KeyError naming the adapters it holds if absent).

        >>> from peftc.nn import Linear, LoraLinear
        >>> layer = LoraLinear(Linear(4, 3), r=2)
        >>> layer.add_adapter("other", r=3)
        >>> layer.delete_adapter("other")
        >>> list(layer.lora_adapters)
        ['default']
        """
        adapter = self._adapter(adapter_name)
        if self.merged and adapter is self._active:
            raise RuntimeError(f"delete_adapter({adapter_name!r}) on a layer with it merged: unmerge it first")
        del self.lora_adapters[adapter_name]
        if adapter is self._active:
            self._active = None
            self._cache = None

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Every adapter's parameters (``lora_A`` for "default", ``lora_A.<name>`` for the others), then the
        subclass's own and the base layer's."""
        for adapter_name, adapter in self.lora_adapters.items():
            suffix = "" if adapter_name == DEFAULT_ADAPTER else f".{adapter_name}"
            for name, p in adapter.named_parameters():
                yield (f"{prefix}.{name}{suffix}" if prefix else f"{name}{suffix}"), p
        yield from super().named_parameters(prefix)

    # -- initialisation ------------------------------------------------------------------------------
    def reset_lora_parameters(self, init_lora_weights: bool | str = True, adapter_name: str | None = None) -> None:
        """Re-initialise the adapter ``adapter_name`` (default: the active one) as ``init_lora_weights`` says."""
        self._init_adapter(self._adapter(adapter_name), init_lora_weights)

    def _init_adapter(self, adapter: LoraAdapter, init_lora_weights: bool | str,
                      generator: Generator | None = None) -> None:
        g = generator or self.generator
        if init_lora_weights is True or init_lora_weights == "eva":
            # "eva": as PEFT, B is zero and A keeps the default init until EVA overwrites it
            adapter.lora_A.data[...] = kaiming_uniform(g, adapter.lora_A.shape)
            adapter.lora_B.data.fill(0.0)
        elif init_lora_weights == "gaussian":
            adapter.lora_A.data[...] = g.normal(adapter.lora_A.shape, 0.0, 1.0 / adapter.r)
            adapter.lora_B.data.fill(0.0)
        elif init_lora_weights is False:
            adapter.lora_A.data[...] = kaiming_uniform(g, adapter.lora_A.shape)
            adapter.lora_B.data[...] = kaiming_uniform(g, adapter.lora_B.shape)
        else:
            raise ValueError(f"init_lora_weights must be True, False, 'gaussian' or 'eva', "
                             f"got {init_lora_weights!r}")
        if adapter.lora_bias is not None:
            adapter.lora_bias.data.fill(0.0)

    def adapter_parameters(self, adapter_name: str | None = None) -> dict[str, Parameter]:
        """{name in PEFT's file layout (without the module path): Parameter} of an adapter's own tensors
        (default: the active adapter's)."""
        return self._adapter(adapter_name).file_parameters()

    def _bias(self) -> np.ndarray | None:
        return self.base.bias.data if self.base.bias is not None else None

    def _packed(self) -> PackedWeight | None:
        """The base layer's bf16 weight, or None for a float32 one."""
        return self.base.weight if self.base.is_bfloat16 else None

    # -- running -------------------------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        ad = self._active
        self._mixed_cache = None
        if self.row_adapters is not None and not self.disabled:
            return self._forward_mixed(x)
        if self.merged or self.disabled or ad is None:
            self._cache = None
            return self.base.forward(x)
        rows = as_rows(x, "x", self.in_features)
        p = ad.lora_dropout if self.training else 0.0
        offset = self.generator.take(rows.size) if p > 0.0 else 0
        packed = self._packed()
        shared = distinct_rows(x)
        y, xd, u = F.lora_forward(rows, None if packed or shared else self.base.weight.data, self._bias(),
                                  ad.lora_A.data, ad.lora_B.data,
                                  ad.lora_bias.data if ad.lora_bias is not None else None, ad.scaling, p,
                                  self.generator.seed, offset)
        if shared:  # identical rows: the frozen product once per distinct row, added to every copy
            y += self.base.product(rows, shared, bias=False)
        elif packed:  # the frozen product, added into the adapter's output by the bf16 kernel
            bf16_linear_forward(rows, packed, out=y, accumulate=True)
        self._cache = (rows, xd, u, p, offset, ad)
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the adapter (and any trainable base) gradients; return dx as :meth:`Linear.backward`
        does (accumulated into ``dx`` when given, skipped and None with ``input_grad=False``)."""
        if self._mixed_cache is not None:
            return self._backward_mixed(dy, dx, input_grad)
        if self._cache is None:
            return self.base.backward(dy, dx=dx, input_grad=input_grad)
        rows, xd, u, p, offset, ad = self._cache
        drows = as_rows(dy, "dy", self.out_features)
        out = self._input_rows(dx, dy) if input_grad else None
        packed = self._packed()
        F.lora_backward(drows, xd if p > 0.0 else rows, u, None if packed else self.base.weight.data,
                        ad.lora_A.data, ad.lora_B.data, ad.scaling, p, self.generator.seed, offset, dx=out,
                        dlora_A=ad.lora_A.grad_buffer(), dlora_B=ad.lora_B.grad_buffer(),
                        dlora_bias=ad.lora_bias.grad_buffer() if ad.lora_bias is not None else None)
        if packed and out is not None:
            bf16_linear_backward(drows, packed, dx=out)
        return self._base_backward(drows, rows, out, dx, dy)

    # -- mixed-adapter batches ------------------------------------------------------------------------
    def _scratch(self, idx: np.ndarray, adapters: int, max_rank: int, gathered: int) -> tuple[np.ndarray, np.ndarray]:
        """The lora_mixed kernels' float and int64 scratch for the row indices ``idx`` (``gathered``:
        :func:`~peftc.functional.lora_mixed_gathered_rows` of them), grown when too small and reused otherwise."""
        rows = idx.size
        size = F.lora_mixed_workspace_size(rows, gathered, self.in_features, self.out_features, max_rank)
        if self._mixed_work.size < size:
            self._mixed_work = np.empty(size, dtype=np.float32)
        if self._mixed_iwork.size < rows + adapters + 1:
            self._mixed_iwork = np.empty(rows + adapters + 1, dtype=np.int64)
        return self._mixed_work, self._mixed_iwork

    def _forward_mixed(self, x: np.ndarray) -> np.ndarray:
        """Each row with the adapter ``row_adapters`` gives it (the base layer alone for "__base__" and for
        adapters this layer does not hold), in one lora_mixed kernel call. Training is supported without
        dropout (each adapter's gradients come from its own rows)."""
        if self.merged:
            raise RuntimeError("adapter_names (a mixed-adapter batch) on a merged layer: call unmerge first")
        if self.base.is_bfloat16:
            raise NotImplementedError("adapter_names (a mixed-adapter batch) on a bf16 base layer: mixed batches "
                                      "run on float32 base weights")
        rows = as_rows(x, "x", self.in_features)
        self._cache = None
        names, idx = self.row_adapters.row_index(rows.shape[0], self.lora_adapters, type(self).__name__)
        ads = [self.lora_adapters[n] for n in names]
        dropping = [n for n, ad in zip(names, ads) if ad.lora_dropout > 0.0]
        if self.training and dropping:
            raise NotImplementedError(f"adapter_names in training mode with lora_dropout > 0 (adapters {dropping}): "
                                      f"mixed-adapter batches run without dropout; call eval() or set "
                                      f"lora_dropout=0")
        scales = np.array([ad.scaling for ad in ads], dtype=np.float32)
        max_rank = max((ad.r for ad in ads), default=0)
        gathered = F.lora_mixed_gathered_rows(idx, len(ads))
        work, iwork = self._scratch(idx, len(ads), max_rank, gathered)
        shared = distinct_rows(x)
        # identical rows (N adapters on one batch): the frozen product once per distinct row, gathered into y,
        # to which the kernel adds the adapters
        base = self.base.product(rows, shared) if shared else None
        y, u = F.lora_mixed_forward(rows, None if shared else self.base.weight.data, None if shared else self._bias(),
                                    [ad.lora_A.data for ad in ads], [ad.lora_B.data for ad in ads],
                                    [ad.lora_bias.data if ad.lora_bias is not None else None for ad in ads],
                                    scales, idx, out=base, work=work, iwork=iwork)
        self._mixed_cache = (rows, u, idx, ads, scales, gathered)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _backward_mixed(self, dy: np.ndarray, dx: np.ndarray | None, input_grad: bool) -> np.ndarray | None:
        rows, u, idx, ads, scales, gathered = self._mixed_cache
        drows = as_rows(dy, "dy", self.out_features)
        out = self._input_rows(dx, dy) if input_grad else None
        work, iwork = self._scratch(idx, len(ads), u.shape[1], gathered)
        F.lora_mixed_backward(drows, rows, u, self.base.weight.data, [ad.lora_A.data for ad in ads],
                              [ad.lora_B.data for ad in ads], scales, idx, dx=out,
                              dlora_A=[ad.lora_A.grad_buffer() for ad in ads],
                              dlora_B=[ad.lora_B.grad_buffer() for ad in ads],
                              dlora_bias=[ad.lora_bias.grad_buffer() if ad.lora_bias is not None else None
                                          for ad in ads], work=work, iwork=iwork)
        return self._base_backward(drows, rows, out, dx, dy)

    def _base_backward(self, drows: np.ndarray, rows: np.ndarray, out: np.ndarray | None, dx: np.ndarray | None,
                       dy: np.ndarray) -> np.ndarray | None:
        """The end of every adapter backward: the trainable base weight / bias gradients (drows, rows: the
        (N, out) and (N, in) rows), then the input gradient as the module contract returns it (``out`` holds
        its rows, None when not wanted). The subclasses' backward use it too."""
        dw = self.base.weight.grad_buffer()
        db = self.base.bias.grad_buffer() if self.base.bias is not None else None
        if self.base.is_bfloat16:  # a bf16 weight never trains: at most the bias has a gradient
            if db is not None:
                db += drows.sum(axis=0, dtype=np.float32)
        elif dw is not None or db is not None:
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

    # -- merging -------------------------------------------------------------------------------------
    def _merge(self, sign: float) -> None:
        ad = self._active_record()
        if ad.lora_bias is not None and self.base.bias is None:
            raise ValueError("cannot merge lora_bias into a base layer without bias")
        packed = self._packed()
        weight = packed.to_float32() if packed else self.base.weight.data
        F.lora_merge(weight, self._bias() if ad.lora_bias is not None else None, ad.lora_A.data,
                     ad.lora_B.data, ad.lora_bias.data if ad.lora_bias is not None else None, ad.scaling, sign)
        if packed:  # the float32 sum, rounded to bf16 once
            self.base.weight = PackedWeight(weight)

    def merge(self) -> None:
        """Fold the active adapter's s * B A into the base weight: the forward then costs what the base layer
        costs. A layer that does not hold the active adapter is left as it is. On a bf16 base the weight is
        widened to float32, the update added there, and the sum rounded to bf16 once."""
        if not self.merged and self._active is not None:
            self._merge(1.0)
            self.merged = True

    def unmerge(self) -> None:
        """Subtract the folded update again (exact up to float32 rounding; on a bf16 base up to one more bf16
        rounding of the weight)."""
        if self.merged:
            self._merge(-1.0)
            self.merged = False

    def delta_weight(self, adapter_name: str | None = None) -> np.ndarray:
        """s * B A of an adapter (default: the active one) as a new (out_features, in_features) array."""
        ad = self._adapter(adapter_name)
        return (ad.scaling * (ad.lora_B.data @ ad.lora_A.data)).astype(np.float32)

    def __repr__(self) -> str:
        others = [n for n in self.lora_adapters if n != self.active_adapter]
        extra = f", other adapters={others}" if others else ""
        if self._active is None:
            return (f"LoraLinear(in_features={self.in_features}, out_features={self.out_features}, "
                    f"active={self.active_adapter!r} (not on this layer){extra})")
        return (f"LoraLinear(in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"lora_alpha={self.lora_alpha}, dropout={self.lora_dropout}, rslora={self.use_rslora}, "
                f"merged={self.merged}{extra})")
