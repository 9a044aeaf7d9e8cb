"""LoraConfig: the settings of one LoRA adapter, field for field like PEFT's ``LoraConfig``.

The JSON form is PEFT's ``adapter_config.json``: peftc writes only keys PEFT knows, and reads
files written by PEFT (keys for PEFT features peftc lacks must hold their neutral value).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from .config_files import ConfigFiles, check_unknown_fields
from .eva_config import EvaConfig

TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")
BIAS_OPTIONS = ("none", "all", "lora_only")
INIT_OPTIONS = (True, False, "gaussian", "eva")

# PEFT keys that describe the file, not the adapter: accepted with any value, not kept.
_PEFT_METADATA_KEYS = frozenset({"peft_version", "auto_mapping", "revision", "runtime_config", "megatron_core",
                                 "qalora_group_size"})
# PEFT features peftc does not implement: accepted only with their neutral (off) value.
_PEFT_UNSUPPORTED_KEYS = frozenset({
    "use_dora", "use_qalora", "target_parameters", "layer_replication",
    "trainable_token_indices", "alora_invocation_tokens", "megatron_config", "loftq_config",
    "corda_config", "lora_ga_config", "velora_config", "arrow_config", "kasa_config", "monteclora_config",
    "use_bdlora", "ensure_weight_tying"})
# Keys peftc writes besides its own fields, with the neutral values PEFT expects.
_PEFT_NEUTRAL_OUT = {"use_dora": False, "revision": None}


def _is_str_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, set)) and all(isinstance(v, str) for v in value)


@dataclass
class LoraConfig(ConfigFiles):
    """Configuration of a LoRA adapter (see PEFT's ``LoraConfig``; the same names and defaults).

    ``target_modules``: a regex matched against the whole dotted module name, a list of names
    (exact or dotted suffix), or ``"all-linear"``; ``None`` uses the default for the model's
    ``config.model_type`` where one is known. Scaling is ``lora_alpha / r`` (``/ sqrt(r)`` with
    ``use_rslora``); ``rank_pattern`` / ``alpha_pattern`` override r and alpha per module.
    ``fan_in_fan_out``: True when the targets store their weight (in, out), as GPT-2's Conv1D layers
    do; as in PEFT, injecting sets it to match the targets (with a warning when it had to change).
    """

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    bias: str = "none"
    lora_bias: bool = False
    modules_to_save: list[str] | None = None
    init_lora_weights: bool | str = True
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    inference_mode: bool = False
    eva_config: EvaConfig | None = None
    peft_type: str = field(default="LORA", init=False)

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoraConfig.r must be a positive integer, got {self.r!r}")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) \
                or not math.isfinite(self.lora_alpha):
            raise ValueError(f"LoraConfig.lora_alpha must be a finite number, got {self.lora_alpha!r}")
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float)) \
                or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"LoraConfig.lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if _is_str_list(value):
                setattr(self, name, list(dict.fromkeys(sorted(value) if isinstance(value, set) else value)))
            elif value is not None and not isinstance(value, str):
                raise ValueError(f"LoraConfig.{name} must be None, a regex string or a list of names, got {value!r}")
        for name in ("use_rslora", "fan_in_fan_out", "lora_bias", "inference_mode"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LoraConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.bias not in BIAS_OPTIONS:
            raise ValueError(f"LoraConfig.bias must be one of {BIAS_OPTIONS}, got {self.bias!r}")
        if self.modules_to_save is not None:
            if not _is_str_list(self.modules_to_save):
                raise ValueError(f"LoraConfig.modules_to_save must be None or a list of names, "
                                 f"got {self.modules_to_save!r}")
            self.modules_to_save = list(self.modules_to_save)
        init = self.init_lora_weights
        if not (init is True or init is False or (isinstance(init, str) and init in INIT_OPTIONS)):
            raise ValueError(f"LoraConfig.init_lora_weights must be one of {INIT_OPTIONS} in peftc, "
                             f"got {self.init_lora_weights!r}")
        self._check_eva()
        self._check_patterns()
        self._check_layers()
        if self.task_type is not None and self.task_type not in TASK_TYPES:
            raise ValueError(f"LoraConfig.task_type must be None or one of {TASK_TYPES}, got {self.task_type!r}")
        if self.base_model_name_or_path is not None and not isinstance(self.base_model_name_or_path, str):
            raise ValueError(f"LoraConfig.base_model_name_or_path must be a string or None, "
                             f"got {self.base_model_name_or_path!r}")

    def _check_eva(self) -> None:
        if isinstance(self.eva_config, dict):
            self.eva_config = EvaConfig.from_dict(self.eva_config)
        elif self.eva_config is not None and not isinstance(self.eva_config, EvaConfig):
            raise ValueError(f"LoraConfig.eva_config must be None, an EvaConfig or a dict, got {self.eva_config!r}")
        if self.eva_config is not None:
            self.eva_config.validate()
        if self.init_lora_weights == "eva" and self.eva_config is None:
            warnings.warn("init_lora_weights is 'eva' but eva_config is not given: using EvaConfig()", stacklevel=3)
            self.eva_config = EvaConfig()
        elif self.init_lora_weights != "eva" and self.eva_config is not None:
            warnings.warn("eva_config is ignored because init_lora_weights is not 'eva'", stacklevel=3)

    def _check_patterns(self) -> None:
        if not isinstance(self.rank_pattern, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0
                for k, v in self.rank_pattern.items()):
            raise ValueError(f"LoraConfig.rank_pattern must map module names to positive integers, "
                             f"got {self.rank_pattern!r}")
        if not isinstance(self.alpha_pattern, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for k, v in self.alpha_pattern.items()):
            raise ValueError(f"LoraConfig.alpha_pattern must map module names to finite numbers, "
                             f"got {self.alpha_pattern!r}")

    def _check_layers(self) -> None:
        layers = self.layers_to_transform
        if layers is not None:
            if isinstance(layers, int) and not isinstance(layers, bool):
                ok = layers >= 0
            else:
                ok = isinstance(layers, (list, tuple)) and all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)
                if ok:
                    self.layers_to_transform = list(layers)
            if not ok:
                raise ValueError(f"LoraConfig.layers_to_transform must be None, a layer index or a list of "
                                 f"indices, got {layers!r}")
        if self.layers_pattern is not None and not (isinstance(self.layers_pattern, str)
                                                    or _is_str_list(self.layers_pattern)):
            raise ValueError(f"LoraConfig.layers_pattern must be None, a string or a list of strings, "
                             f"got {self.layers_pattern!r}")
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("LoraConfig.layers_to_transform cannot be used when target_modules is a regex string")
        if isinstance(self.target_modules, str) and self.layers_pattern is not None:
            raise ValueError("LoraConfig.layers_pattern cannot be used when target_modules is a regex string")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("LoraConfig.layers_pattern needs layers_to_transform as well")

    def scaling_for(self, r: int, alpha: float) -> float:
        """The LoRA scale for a module with rank r and alpha (alpha / r, or alpha / sqrt(r) with rsLoRA)."""
        return float(alpha) / (math.sqrt(r) if self.use_rslora else float(r))

    # -- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, with the neutral values of the PEFT keys peftc lacks."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["rank_pattern"] = dict(self.rank_pattern)
        out["alpha_pattern"] = dict(self.alpha_pattern)
        out["eva_config"] = self.eva_config.to_dict() if self.eva_config is not None else None
        out.update(_PEFT_NEUTRAL_OUT)
        return dict(sorted(out.items()))

    @classmethod
    def from_dict(cls, data: dict[str, Any], unknown: str = "error") -> LoraConfig:
        """Build a config from a dict such as PEFT's adapter_config.json.

        Keys for PEFT features peftc lacks (``use_dora``, ``use_qalora``, ...) must hold their off value,
        else a ValueError names the field. Keys nobody here knows are an error, or with ``unknown="warn"``
        (what reading a file does) dropped with a warning naming them.

        >>> LoraConfig.from_dict({"peft_type": "LORA", "r": 4, "a_future_field": 1}, unknown="warn").r
        4
        """
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}.from_dict needs a dict, got {type(data).__name__}")
        expected = next(f.default for f in dataclasses.fields(cls) if f.name == "peft_type")
        peft_type = data.get("peft_type", expected)
        if peft_type != expected:
            raise ValueError(f"adapter config has peft_type {peft_type!r}; {cls.__name__} reads only {expected!r}")
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        kwargs, unknown_keys = {}, []
        for key, value in data.items():
            if key in names:
                kwargs[key] = value
            elif key in _PEFT_UNSUPPORTED_KEYS:
                if value not in (None, False, {}, []):
                    raise ValueError(f"adapter config sets {key}={value!r}: this PEFT feature is not supported "
                                     f"by peftc")
            elif key not in _PEFT_METADATA_KEYS and key != "peft_type":
                unknown_keys.append(key)
        check_unknown_fields(cls.__name__, unknown_keys, unknown)
        return cls(**kwargs)
