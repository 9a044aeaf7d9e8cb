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
        # which module the last forward ran (a flag: a Module attribute would count as a child)
        self._ran_original: bool | None = None

    @property
    def active_module(self) -> Module:
        return self.original_module if self.disabled else self.modules_to_save

    def __getattr__(self, name: str):
        # model code that reaches into the wrapped module (self.attention.self.query) gets the active module's
        # attribute; only called for names the wrapper itself lacks
        if name.startswith("__") or "modules_to_save" not in vars(self):
            raise AttributeError(name)
        return getattr(self.active_module, name)

    def forward(self, *args, **kwargs):
        self._ran_original = self.disabled
        return self.active_module.forward(*args, **kwargs)

    def backward(self, dy, *, dx=None, input_grad=True):
        if self._ran_original is None:
            raise RuntimeError("ModulesToSaveWrapper.backward called before forward")
        module = self.original_module if self._ran_original else self.modules_to_save
        return module.backward(dy, dx=dx, input_grad=input_grad)

    def __repr__(self) -> str:
        return f"ModulesToSaveWrapper({self.original_module!r})"


def _copy_module(module: Module) -> Module:
    """A deep copy with fresh parameter arrays and no gradients."""
    clone = copy.deepcopy(module)
    for _, p in clone.named_parameters():
        p.grad = None
    return clone
