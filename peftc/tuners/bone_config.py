"""BoneConfig (alias MissConfig): the settings of one Bone / MiSS / Bat adapter, like PEFT's ``MissConfig``.

The JSON form is PEFT's ``adapter_config.json`` with ``"peft_type": "MISS"``. Old PEFT "BONE"
folders are refused with a pointer to PEFT's converter (peft_type BONE -> MISS, ``.bone_`` -> ``.miss_``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..nn.bone import miss_variant
from .config_files import ConfigFiles, check_unknown_fields
from .lora_config import TASK_TYPES, _is_str_list

BIAS_OPTIONS = ("none", "all", "MiSS_only")
_PEFT_METADATA_KEYS = frozenset({"peft_version", "auto_mapping", "revision", "runtime_config"})


@dataclass
class BoneConfig(ConfigFiles):
    """Configuration of a Bone / MiSS adapter (PEFT's ``MissConfig``: the same names and defaults).

    ``init_weights``: True ("balance": block (r, out), added to every r-wide input shard), "bat"
    (block (out/r, r, r) acting on the weight's r x r blocks; needs r to divide in and out
    features) or "mini" (block (r, mini_r), tiled along the outputs; mini_r must divide out
    features). Blocks start at zero. ``target_modules`` etc. follow :class:`LoraConfig`.
    """

    r: int = 64
    miss_dropout: float = 0.0
    mini_r: int = 1
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    init_weights: bool | str = True
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    bias: str = "none"
    modules_to_save: list[str] | None = None
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    inference_mode: bool = False
    peft_type: str = field(default="MISS", init=False)

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("r", "mini_r"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}.{key} must be a positive integer, got {value!r}")
        if isinstance(self.miss_dropout, bool) or not isinstance(self.miss_dropout, (int, float)) \
                or not math.isfinite(self.miss_dropout) or not 0.0 <= self.miss_dropout < 1.0:
            raise ValueError(f"{name}.miss_dropout must be in [0, 1), got {self.miss_dropout!r}")
        try:
            miss_variant(self.init_weights)
        except ValueError:
            raise ValueError(f"{name}.init_weights must be True, 'bat' or 'mini' in peftc (False, PEFT's "
                             f"random debug init, is not supported), got {self.init_weights!r}") from None
        for key in ("target_modules", "exclude_modules"):
            value = getattr(self, key)
            if _is_str_list(value):
                setattr(self, key, list(dict.fromkeys(sorted(value) if isinstance(value, set) else value)))
            elif value is not None and not isinstance(value, str):
                raise ValueError(f"{name}.{key} must be None, a regex string or a list of names, got {value!r}")
        if self.bias not in BIAS_OPTIONS:
            raise ValueError(f"{name}.bias must be one of {BIAS_OPTIONS}, got {self.bias!r}")
        if self.modules_to_save is not None:
            if not _is_str_list(self.modules_to_save):
                raise ValueError(f"{name}.modules_to_save must be None or a list of names, "
                                 f"got {self.modules_to_save!r}")
            self.modules_to_save = list(self.modules_to_save)
        layers = self.layers_to_transform
        if layers is not None:
            ok = (isinstance(layers, int) and not isinstance(layers, bool) and layers >= 0) or (
                isinstance(layers, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                          for i in layers))
            if not ok:
                raise ValueError(f"{name}.layers_to_transform must be None, a layer index or a list of indices, "
                                 f"got {layers!r}")
            if isinstance(layers, tuple):
                self.layers_to_transform = list(layers)
        if self.layers_pattern is not None and not (isinstance(self.layers_pattern, str)
                                                    or _is_str_list(self.layers_pattern)):
            raise ValueError(f"{name}.layers_pattern must be None, a string or a list of strings, "
                             f"got {self.layers_pattern!r}")
        if isinstance(self.target_modules, str) and (self.layers_to_transform is not None
                                                     or self.layers_pattern is not None):
            raise ValueError(f"{name}.layers_to_transform / layers_pattern cannot be used when target_modules "
                             f"is a regex string")
        if not isinstance(self.inference_mode, bool):
            raise ValueError(f"{name}.inference_mode must be True or False, got {self.inference_mode!r}")
        if self.task_type is not None and self.task_type not in TASK_TYPES:
            raise ValueError(f"{name}.task_type must be None or one of {TASK_TYPES}, got {self.task_type!r}")

    @property
    def variant(self) -> str:
        """"balance", "bat" or "mini"."""
        return miss_variant(self.init_weights)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (PEFT's MissConfig keys)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["revision"] = None
        return dict(sorted(out.items()))

    @classmethod
    def from_dict(cls, data: dict[str, Any], unknown: str = "error") -> BoneConfig:
        """Build a config from a dict such as PEFT's adapter_config.json; unknown keys are an error, or with
        ``unknown="warn"`` (what reading a file does) dropped with a warning naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}.from_dict needs a dict, got {type(data).__name__}")
        peft_type = data.get("peft_type", "MISS")
        if peft_type == "BONE":
            raise ValueError("adapter config has peft_type 'BONE' (PEFT < 0.19); convert it to MISS with PEFT's "
                             "scripts/convert-bone-to-miss.py, then load it")
        if peft_type != "MISS":
            raise ValueError(f"adapter config has peft_type {peft_type!r}; {cls.__name__} reads only 'MISS'")
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        kwargs = {key: value for key, value in data.items() if key in names}
        check_unknown_fields(cls.__name__, [k for k in data if k not in names and k not in _PEFT_METADATA_KEYS
                                            and k != "peft_type"], unknown)
        return cls(**kwargs)


MissConfig = BoneConfig
