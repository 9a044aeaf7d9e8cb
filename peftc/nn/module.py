"""Parameter and Module: the containers every peftc layer is built from.

A Module holds Parameters and child Modules as attributes, runs ``forward`` and, given the
gradient of its output, ``backward``: it accumulates into its parameters' ``.grad`` and returns
the gradient of its input. The forward keeps what the backward needs (the "cache").

Every module's backward has one signature, ``backward(dy, *, dx=None, input_grad=True)``:

* ``dx=None``: the input gradient goes into a new array, which is returned and belongs to the
  caller (it may write into it). The one exception is an identity (Dropout in eval mode or at
  p = 0), which returns ``dy`` itself: the caller already owns it.
* ``dx`` given (float32, C-contiguous, the input's shape): the input gradient is added into it,
  and ``dx`` is returned. A caller summing the gradients of several branches passes one buffer.
* ``input_grad=False``: the input gradient is not computed (the input is a leaf nobody reads)
  and None is returned; the parameter gradients are accumulated all the same.

What a fused module needs beyond ``dy`` (the ReLU output a batch norm masks by, say) comes through
its constructor or a documented attribute. A module whose input has no gradient (token ids)
always returns None and takes no ``dx``; a module with a second input (a residual) returns the
first input's gradient and documents where the second one goes.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .. import functional as F
from ..bf16 import PackedWeight


class Parameter:
    """An array plus its gradient. ``grad`` is allocated on first use, and only if ``requires_grad``."""

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data: np.ndarray, requires_grad: bool = True) -> None:
        if not isinstance(data, np.ndarray) or data.dtype != np.float32 or not data.flags.c_contiguous:
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise TypeError(f"Parameter data must be a C-contiguous float32 numpy.ndarray, got {got}")
        self.data = data
        self.grad: np.ndarray | None = None
        self.requires_grad = bool(requires_grad)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def size(self) -> int:
        return self.data.size

    def grad_buffer(self) -> np.ndarray | None:
        """The gradient buffer to accumulate into, allocated (zeroed) on first use; None if frozen."""
        if not self.requires_grad:
            return None
        if self.grad is None:
            self.grad = np.zeros_like(self.data)
        return self.grad

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, requires_grad={self.requires_grad})"


class Module:
    """Base class: attributes that are Parameters or Modules are registered by assignment order."""

    training: bool = True

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the parameter gradients given d(output) ``dy``; return d(input) (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} has no backward")

    def _input_grad_buffer(self, dx: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
        """The array the input gradient is accumulated into: ``dx`` (checked against the input's shape) or a
        new zeroed one (zeroed by the kernel threads, as ``F.zeros`` does: ``np.zeros`` leaves the page
        faults of a large buffer to the one thread that first writes it)."""
        if dx is None:
            return F.zeros(shape)
        return self._check_dx(dx, shape)

    def _check_dx(self, dx: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """``dx`` itself if it can take the input gradient in place, else a ValueError naming the shapes."""
        if (not isinstance(dx, np.ndarray) or dx.dtype != np.float32 or dx.shape != tuple(shape)
                or not dx.flags.c_contiguous or not dx.flags.writeable):
            got = f"{dx.dtype} {dx.shape}" if isinstance(dx, np.ndarray) else type(dx).__name__
            if isinstance(dx, np.ndarray) and not (dx.flags.c_contiguous and dx.flags.writeable):
                got += " (not C-contiguous and writeable)"
            raise ValueError(f"{type(self).__name__}.backward: dx must be a writeable C-contiguous float32 array "
                             f"of the input's shape {tuple(shape)}, got {got}")
        return dx

    def _no_input_grad(self, dx: np.ndarray | None, what: str) -> None:
        """For a module whose input has no gradient (``what``): a given ``dx`` is an error, not a silent no-op."""
        if dx is not None:
            raise ValueError(f"{type(self).__name__}.backward: its input is {what}, which has no gradient; "
                             f"dx must be None, got an array of shape {getattr(dx, 'shape', None)}")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- traversal ---------------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield (f"{prefix}.{name}" if prefix else name), value
        for name, child in self.named_children():
            yield from child.named_parameters(f"{prefix}.{name}" if prefix else name)

    def named_packed_weights(self, prefix: str = "") -> Iterator[tuple[str, PackedWeight]]:
        """Frozen weights kept in bf16 (:class:`peftc.bf16.PackedWeight`, e.g. after ``Linear.to_bfloat16``) by
        dotted name: not Parameters (they never train), so not in :meth:`named_parameters`.

        >>> from peftc.nn import Linear
        >>> layer = Linear(4, 3)
        >>> layer.weight.requires_grad = False
        >>> [(n, w.shape) for n, w in layer.to_bfloat16().named_packed_weights()]
        [('weight', (3, 4))]
        """
        for name, value in vars(self).items():
            if isinstance(value, PackedWeight):
                yield (f"{prefix}.{name}" if prefix else name), value
        for name, child in self.named_children():
            yield from child.named_packed_weights(f"{prefix}.{name}" if prefix else name)

    def _own_buffers(self) -> list[tuple[str, np.ndarray]]:
        """Non-trainable state arrays of this module itself (running statistics); none by default."""
        return []

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for name, value in self._own_buffers():
            yield (f"{prefix}.{name}" if prefix else name), value
        for name, child in self.named_children():
            yield from child.named_buffers(f"{prefix}.{name}" if prefix else name)

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def get_submodule(self, name: str) -> Module:
        module: Module = self
        for part in name.split(".") if name else []:
            child = getattr(module, part, None) if not isinstance(module, ModuleList) else module[int(part)]
            if not isinstance(child, Module):
                raise AttributeError(f"{type(self).__name__} has no submodule {name!r}")
            module = child
        return module

    def set_submodule(self, name: str, new: Module) -> None:
        parent_name, _, leaf = name.rpartition(".")
        parent = self.get_submodule(parent_name)
        if isinstance(parent, ModuleList):
            parent[int(leaf)] = new
        else:
            setattr(parent, leaf, new)

    # -- modes and gradients -----------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for _, m in self.named_modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, flag: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad = flag
            if not flag:
                p.grad = None
        return self

    def zero_grad(self) -> None:
        for p in self.parameters():
            if p.grad is not None:
                p.grad.fill(0.0)

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters, buffers and frozen bf16 weights by dotted name (the arrays themselves, not copies).

        A bf16 weight (:meth:`named_packed_weights`) appears as its uint16 bit patterns
        (:attr:`peftc.bf16.PackedWeight.bits`, a view), since NumPy has no bfloat16 type.

        >>> from peftc.nn import Linear
        >>> layer = Linear(4, 3); layer.weight.requires_grad = False
        >>> {k: str(v.dtype) for k, v in layer.to_bfloat16().state_dict().items()}
        {'bias': 'float32', 'weight': 'uint16'}
        """
        state = {name: p.data for name, p in self.named_parameters()}
        state.update(self.named_buffers())
        state.update((name, w.bits) for name, w in self.named_packed_weights())
        return state

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into the existing parameters and buffers (shapes must match). A frozen bf16 weight takes
        uint16 bit patterns (as :meth:`state_dict` gives them) or float32 values, rounded to nearest even."""
        params = {name: p.data for name, p in self.named_parameters()}
        params.update(self.named_buffers())
        packed = dict(self.named_packed_weights())
        known = set(params) | set(packed)
        missing = sorted(known - set(state))
        unexpected = sorted(set(state) - known)
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        for name, value in state.items():
            if name in packed:
                packed[name].copy_(value, f"load_state_dict: {name}")
                continue
            if name not in params:
                continue
            target = params[name]
            if value.shape != target.shape:
                raise ValueError(f"load_state_dict: {name} has shape {value.shape}, expected {target.shape}")
            target[...] = value


class ModuleList(Module):
    """A list of modules, named "0", "1", ... in parameter names."""

    def __init__(self, modules: list[Module] | None = None) -> None:
        self._items: list[Module] = list(modules or [])

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for i, m in enumerate(self._items):
            yield str(i), m

    def __getitem__(self, i: int) -> Module:
        return self._items[i]

    def __setitem__(self, i: int, m: Module) -> None:
        self._items[i] = m

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._items)

    def append(self, m: Module) -> None:
        self._items.append(m)
