"""Adapter configs by ``peft_type``: reading adapter_config.json into the right config class."""
from __future__ import annotations

import json
import os

from .hydra_config import HydraConfig
from .lora_config import CONFIG_NAME, LoraConfig
from .sora_config import SoraConfig

CONFIG_CLASSES: dict[str, type[LoraConfig]] = {"LORA": LoraConfig, "PEFTC_SORA": SoraConfig,
                                               "PEFTC_HYDRA": HydraConfig}


def config_from_dict(data: dict) -> LoraConfig:
    """The config class named by ``data["peft_type"]`` (default "LORA"), built from ``data``."""
    if not isinstance(data, dict):
        raise ValueError(f"adapter config must be a JSON object, got {type(data).__name__}")
    peft_type = data.get("peft_type", "LORA")
    if peft_type not in CONFIG_CLASSES:
        raise ValueError(f"adapter config has peft_type {peft_type!r}; peftc reads {sorted(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[peft_type].from_dict(data)


def config_from_pretrained(directory: str | os.PathLike) -> LoraConfig:
    """Read adapter_config.json from a folder and return the matching config object."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {CONFIG_NAME} in {os.fspath(directory)}")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    return config_from_dict(data)
