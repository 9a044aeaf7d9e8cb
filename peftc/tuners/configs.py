"""Adapter configs by ``peft_type``: reading adapter_config.json into the right config class."""
from __future__ import annotations

import os

from .bone_config import BoneConfig
from .config_files import load_config
from .hydra_config import HydraConfig
from .lora_config import LoraConfig
from .sora_config import SoraConfig

# BONE (pre-0.19 PEFT) folders are refused by BoneConfig with a pointer to PEFT's converter
CONFIG_CLASSES: dict[str, type] = {"LORA": LoraConfig, "MISS": BoneConfig, "BONE": BoneConfig,
                                   "PEFTC_SORA": SoraConfig, "PEFTC_HYDRA": HydraConfig}


def config_from_pretrained(directory: str | os.PathLike) -> LoraConfig | BoneConfig:
    """Read adapter_config.json from a folder and return the config class its ``peft_type`` names."""
    return load_config(directory, CONFIG_CLASSES)
