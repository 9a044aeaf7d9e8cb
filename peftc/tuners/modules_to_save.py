"""ModulesToSaveWrapper: a fully trained copy of a module (e.g. a classifier head), kept beside the frozen original."""
from __future__ import annotations

import copy

from ..nn import Module


class ModulesToSaveWrapper(Module):
    """Runs the trainable copy ``modules_to_save`` unless disabled, then the frozen ``original_module``.

    As in PEFT, the copy's parameters are saved in adapter files under the original module's name.
    """

    def __init__(self, module: Module) -> None:
        self.original_module = module
        self.modules_to_save = _copy_module(module)
        self.original_module.requires_grad_(False)
        self.modules_to_save.requires_grad_(True)
        self.disabled = False
        self._ran: Module | None = None

    @property
    def active_module(self) -> Module:
        return self.original_module if self.disabled else self.modules_to_save

    def forward(self, *args, **kwargs):
        self._ran = self.active_module
        return self._ran.forward(*args, **kwargs)

    def backward(self, dy):
        if self._ran is None:
            raise RuntimeError("ModulesToSaveWrapper.backward called before forward")
        return self._ran.backward(dy)

    def __repr__(self) -> str:
        return f"ModulesToSaveWrapper({self.original_module!r})"


def _copy_module(module: Module) -> Module:
    """A deep copy with fresh parameter arrays and no gradients."""
    clone = copy.deepcopy(module)
    for _, p in clone.named_parameters():
        p.grad = None
    return clone
