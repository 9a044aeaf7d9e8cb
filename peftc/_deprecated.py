"""Old import paths of moved names, kept for one release: a module-level ``__getattr__`` that warns and forwards.

An old module assigns ``__getattr__ = moved(__name__, "peftc.new.module", ["name", ...])`` and binds none
of those names itself, so every use of the old path reaches the hook. The new module is imported on
first use only: an alias adds no import edge between layers while nobody uses it.
"""
from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Iterable


def moved(old_module: str, new_module: str, names: Iterable[str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``old_module``: each of ``names`` resolves to the same name in
    ``new_module`` after a DeprecationWarning naming the new path; any other name raises AttributeError."""
    names = frozenset(names)

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        # `from package import name` probes the name with hasattr() inside importlib before it fetches it:
        # warn on the fetch only, so one import statement gives one warning, at the importer's line
        if sys._getframe(1).f_globals.get("__name__") != "importlib._bootstrap":
            warnings.warn(f"{old_module}.{name} has moved to {new_module}.{name}; the old path will be removed in "
                          f"the next release", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new_module), name)

    return __getattr__
