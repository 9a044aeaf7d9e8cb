"""ModulesToSaveWrapper: fully trained copies of a module (e.g. a classifier head), one per adapter, kept beside the
frozen original."""
from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np

from ..nn import Module
from ..nn.row_adapters import RowAdapters

DEFAULT_ADAPTER = "default"


class ModulesToSaveWrapper(Module):
    """Runs the active adapter's trainable copy unless disabled (or the adapter has no copy here), else the
    frozen ``original_module``.

    Each adapter has its own copy, as in PEFT: :meth:`add_copy` makes one (from the original module),
    :meth:`set_adapter` picks the one that runs. Parameter names: ``modules_to_save.<param>`` for the
    adapter "default", ``modules_to_save.<adapter>.<param>`` for the others. In adapter files the copy's
    parameters are saved under the original module's name.

    With ``row_adapters`` set (a mixed-adapter batch) each adapter's copy runs on its own rows (a copy
    per adapter, so the loop is over the adapters of the batch, not over rows); the backward then
    sends each group's gradient to its copy.

    Example:
        >>> head = ModulesToSaveWrapper(Linear(8, 3))          # the copy of adapter "default"
        >>> head.add_copy("task_b"); head.set_adapter("task_b")
        >>> head.modules_to_save is head.copies["task_b"]
        True
    """

    def __init__(self, module: Module, adapter_name: str = DEFAULT_ADAPTER) -> None:
        self.original_module = module
        self.copies: dict[str, Module] = {}
        self.active_adapter = adapter_name
        self.original_module.requires_grad_(False)
        self.disabled = False
        self.row_adapters: RowAdapters | None = None
        # what the last forward ran: [(module, rows or None)] (a list: a Module attribute would count as a child)
        self._ran: list[tuple[Module, np.ndarray | None]] | None = None
        self.add_copy(adapter_name)

    # -- adapters ------------------------------------------------------------------------------------
    def add_copy(self, adapter_name: str) -> None:
        """Give ``adapter_name`` its own trainable copy of the original module (replacing one it had)."""
        clone = _copy_module(self.original_module)
        clone.requires_grad_(True)
        self.copies[adapter_name] = clone

    def set_adapter(self, adapter_name: str) -> None:
        """Run ``adapter_name``'s copy (the original module if it has none here)."""
        self.active_adapter = adapter_name

    def delete_copy(self, adapter_name: str) -> None:
        self.copies.pop(adapter_name, None)

    @property
    def modules_to_save(self) -> Module:
        """The active adapter's copy (the original module if it has none)."""
        return self.copies.get(self.active_adapter, self.original_module)

    @property
    def active_module(self) -> Module:
        return self.original_module if self.disabled else self.modules_to_save

    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield "original_module", self.original_module
        for name, clone in self.copies.items():
            yield ("modules_to_save" if name == DEFAULT_ADAPTER else f"modules_to_save.{name}"), clone

    def __getattr__(self, name: str):
        # model code that reaches into the wrapped module (self.attention.self.query) gets the active module's
        # attribute; only called for names the wrapper itself lacks
        if name.startswith("__") or "copies" not in vars(self):
            raise AttributeError(name)
        return getattr(self.active_module, name)

    # -- running -------------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        if self.row_adapters is not None and not self.disabled:
            return self._forward_mixed(*args, **kwargs)
        module = self.active_module
        self._ran = [(module, None)]
        return module.forward(*args, **kwargs)

    def _forward_mixed(self, x: np.ndarray):
        """Each adapter's copy on its rows of x (axis 0: batch rows, or a multiple of them), the original module on
        the rest."""
        if not isinstance(x, np.ndarray) or x.ndim < 1:
            raise TypeError(f"ModulesToSaveWrapper with adapter_names takes one array whose axis 0 are the batch's "
                            f"rows, got {type(x).__name__}")
        names, idx = self.row_adapters.row_index(x.shape[0], self.copies, "ModulesToSaveWrapper")
        groups = [(self.copies[n], np.flatnonzero(idx == k)) for k, n in enumerate(names)]
        groups.append((self.original_module, np.flatnonzero(idx < 0)))
        groups = [(m, rows) for m, rows in groups if rows.size]
        out = None
        for module, rows in groups:
            y = module.forward(np.ascontiguousarray(x[rows]))
            if out is None:
                out = np.empty((x.shape[0], *y.shape[1:]), dtype=y.dtype)
            out[rows] = y
        self._ran = groups
        return out if out is not None else self.original_module.forward(x)

    def backward(self, dy, *, dx=None, input_grad=True):
        if self._ran is None:
            raise RuntimeError("ModulesToSaveWrapper.backward called before forward")
        if len(self._ran) == 1 and self._ran[0][1] is None:
            return self._ran[0][0].backward(dy, dx=dx, input_grad=input_grad)
        grads = [(rows, module.backward(np.ascontiguousarray(dy[rows]), input_grad=input_grad))
                 for module, rows in self._ran]
        if not input_grad:
            return None
        full = None
        for rows, g in grads:
            if full is None:
                full = np.zeros((dy.shape[0], *g.shape[1:]), dtype=g.dtype)
            full[rows] = g
        if dx is None:
            return full
        self._check_dx(dx, full.shape)[...] += full
        return dx

    def __repr__(self) -> str:
        others = [n for n in self.copies if n != DEFAULT_ADAPTER]
        extra = f", copies for {others}" if others else ""
        return f"ModulesToSaveWrapper({self.original_module!r}{extra})"


def _copy_module(module: Module) -> Module:
    """A deep copy with fresh parameter arrays and no gradients."""
    clone = copy.deepcopy(module)
    for _, p in clone.named_parameters():
        p.grad = None
    return clone
