"""Reading and writing adapter_config.json, shared by every adapter config class.

A config class provides ``to_dict`` and ``from_dict``; the mixin adds the JSON and folder forms.
``load_config`` picks the class from the file's ``peft_type``.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any

from ..io.atomic import write_bytes_atomic

CONFIG_NAME = "adapter_config.json"
UNKNOWN_OPTIONS = ("error", "warn")


def check_unknown_fields(cls_name: str, keys: list[str], unknown: str) -> None:
    """Refuse (``unknown="error"``) or warn about and drop (``"warn"``, PEFT's rule for files written by a newer
    version) the config keys ``keys`` that the class ``cls_name`` does not know.

    >>> check_unknown_fields("LoraConfig", ["use_future"], "warn")   # UserWarning naming 'use_future'
    """
    if unknown not in UNKNOWN_OPTIONS:
        raise ValueError(f"unknown must be one of {UNKNOWN_OPTIONS}, got {unknown!r}")
    if not keys:
        return
    if unknown == "error":
        named = f"field {keys[0]!r}" if len(keys) == 1 else f"fields {sorted(keys)}"
        raise ValueError(f"unknown {cls_name} {named}")
    warnings.warn(f"adapter config has {len(keys)} field(s) {cls_name} does not know, ignored (a file from a newer "
                  f"PEFT?): {sorted(keys)}", UserWarning, stacklevel=4)


def _read_json(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{os.fspath(path)} is not valid JSON: {exc}") from None


def _config_path(directory: str | os.PathLike) -> str:
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {CONFIG_NAME} in {os.fspath(directory)}")
    return path


class ConfigFiles:
    """JSON and folder forms of a config class that has ``to_dict`` / ``from_dict``."""

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json_file(cls, path: str | os.PathLike):
        """Read a config file; fields this class does not know are dropped with a warning naming them."""
        return cls.from_dict(_read_json(path), unknown="warn")

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write adapter_config.json into save_directory (atomically)."""
        os.makedirs(save_directory, exist_ok=True)
        write_bytes_atomic(os.path.join(save_directory, CONFIG_NAME), self.to_json_string().encode("utf-8"))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike):
        """Read adapter_config.json from a folder written by peftc or PEFT."""
        return cls.from_json_file(_config_path(directory))


def load_config(directory: str | os.PathLike, config_classes: dict[str, type]) -> Any:
    """The config in directory/adapter_config.json, as the class its ``peft_type`` names; fields the class does
    not know are dropped with a warning naming them."""
    path = _config_path(directory)
    data = _read_json(path)
    peft_type = data.get("peft_type", "LORA") if isinstance(data, dict) else None
    if peft_type not in config_classes:
        raise ValueError(f"{os.fspath(path)} has peft_type {peft_type!r}; peftc reads "
                         f"{sorted(config_classes)}")
    return config_classes[peft_type].from_dict(data, unknown="warn")
