"""Names that moved between modules still resolve at their old path for one release, with a
DeprecationWarning that names the new path; nothing else is reachable through the old path."""
from __future__ import annotations

import importlib
import warnings

import pytest

MOVED = {
    "peftc.io.adapter_files": ("peftc.tuners.adapter_files", ["PREFIX", "WEIGHTS_NAME", "adapter_parameters",
                                                              "load_adapter_weights", "save_adapter_weights"]),
    "peftc.models": ("peftc.tta.source_model", ["SourceConfig", "train_source_model"]),
    "peftc.models.cnn": ("peftc.tta.source_model", ["SourceConfig", "evaluate_accuracy", "select_classes",
                                                    "train_source_model"]),
    "peftc.demo": ("peftc.data.wordnet_job", ["JobSettings", "load_splits", "tokenize"]),
}
CASES = [(old, new, name) for old, (new, names) in MOVED.items() for name in names]


@pytest.mark.parametrize("old, new, name", CASES)
def test_old_path_warns_and_gives_the_moved_object(old, new, name):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} has moved to {new}\.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)


@pytest.mark.parametrize("old, new, name", CASES)
def test_from_import_of_an_old_name_warns_once_at_the_import_line(old, new, name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        namespace: dict = {}
        exec(compile(f"from {old} import {name}", "<user code>", "exec"), namespace)
    assert namespace[name] is getattr(importlib.import_module(new), name)
    moved = [w for w in caught if issubclass(w.category, DeprecationWarning) and "has moved to" in str(w.message)]
    assert len(moved) == 1 and moved[0].filename == "<user code>", [(str(w.message), w.filename) for w in moved]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_offers_nothing_else(old):
    module = importlib.import_module(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unknown name raises and does not warn
        with pytest.raises(AttributeError, match="no_such_name"):
            module.no_such_name  # noqa: B018


def test_new_homes_are_the_public_paths():
    import peftc.data.wordnet_job as job
    import peftc.tta as tta
    import peftc.tuners.adapter_files as files

    assert tta.train_source_model.__module__ == "peftc.tta.source_model"
    assert tta.SourceConfig.__module__ == "peftc.tta.source_model"
    assert files.save_adapter_weights.__module__ == "peftc.tuners.adapter_files"
    assert job.tokenize.__module__ == job.JobSettings.__module__ == "peftc.data.wordnet_job"
