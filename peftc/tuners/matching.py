"""Which modules an adapter targets: PEFT's target_modules rules, rule for rule.

- exclude_modules first: a string is ``re.fullmatch``-ed; a list excludes an exact name or a
  dotted suffix. Anything inside a ``modules_to_save`` module is excluded too.
- target_modules as a string: ``re.fullmatch`` on the full dotted name.
- target_modules as a list: an exact name or a dotted suffix (``key.endswith("." + t)``);
  then layers_to_transform / layers_pattern keep only the listed layer indices.
- "all-linear": every Linear except the model's output head.
- rank_pattern / alpha_pattern keys match a name with ``(.*\\.)?key$``.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from ..nn import BoneLinear, Linear, LoraLinear, Module
from .lora_config import LoraConfig

ALL_LINEAR = "all-linear"
# PEFT's names for a sequence-classification head (constants.SEQ_CLS_HEAD_NAMES)
SEQ_CLS_HEAD_NAMES = ("score", "classifier")
# PEFT's default targets for the model families peftc can load (used when target_modules is None)
DEFAULT_TARGET_MODULES = {"bert": ["query", "value"], "roberta": ["query", "value"],
                          "xlm-roberta": ["query", "value"], "electra": ["query", "value"],
                          "distilbert": ["q_lin", "v_lin"], "gpt2": ["c_attn"]}


def is_excluded(config: LoraConfig, key: str) -> bool:
    """True if exclude_modules or modules_to_save rule the module ``key`` out."""
    exclude = config.exclude_modules
    if exclude:
        if isinstance(exclude, str):
            if re.fullmatch(exclude, key):
                return True
        elif key in exclude or any(key.endswith(f".{e}") for e in exclude):
            return True
    if config.modules_to_save:
        if any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in config.modules_to_save):
            return True
    return False


def _layer_index(key: str, layers_pattern: list[str] | str | None) -> int | None:
    if not layers_pattern:
        # the first numbered segment after at least one named one, not a nested (e.g. expert) index
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        match = None
        for pattern in patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    return int(match.group("idx")) if match else None


def check_target_module_exists(config: LoraConfig, key: str) -> bool:
    """PEFT's rule: does the module named ``key`` get an adapter under ``config``?"""
    if is_excluded(config, key):
        return False
    targets = config.target_modules
    if targets is None:
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    if key in targets:
        return True
    found = any(key.endswith(f".{t}") for t in targets)
    layers = config.layers_to_transform
    using_layers = layers is not None and (len(layers) != 0 if isinstance(layers, list) else True)
    if found and using_layers:
        index = _layer_index(key, config.layers_pattern)
        if index is None:
            return False
        return index == layers if isinstance(layers, int) else index in layers
    return found


def get_pattern_key(pattern_keys: Iterable[str], key: str) -> str:
    """The first rank_pattern / alpha_pattern key that matches ``key`` as ``(.*\\.)?pattern$``, else ``key``."""
    for pattern in pattern_keys:
        if re.match(rf"(.*\.)?({pattern})$", key):
            return pattern
    return key


def _adapter_internal_names(model: Module) -> set[str]:
    """Names of modules inside existing LoRA layers (never targets themselves)."""
    inside = set()
    for name, module in model.named_modules():
        if isinstance(module, (LoraLinear, BoneLinear)):
            inside.update(f"{name}.{sub}" if name else sub for sub, _ in module.named_modules() if sub)
    return inside


def output_head_names(model: Module) -> set[str]:
    """The output head "all-linear" leaves alone: ``get_output_embeddings()`` if the model has it,
    else a top-level ``score`` / ``classifier`` module."""
    heads = set()
    get_output = getattr(model, "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    if head is None:
        head = next((getattr(model, n) for n in SEQ_CLS_HEAD_NAMES if isinstance(getattr(model, n, None), Module)),
                    None)
    if head is not None:
        heads.update(name for name, module in model.named_modules() if module is head)
    return heads


def resolve_target_modules(model: Module, config: LoraConfig) -> list[str] | str:
    """target_modules with "all-linear" expanded to names, and None replaced by the model type's default."""
    targets = config.target_modules
    if targets is None:
        model_config = getattr(model, "config", None)
        model_type = (model_config.get("model_type") if isinstance(model_config, dict)
                      else getattr(model_config, "model_type", None))
        if model_type not in DEFAULT_TARGET_MODULES:
            raise ValueError(f"LoraConfig.target_modules is None and there is no default for model type "
                             f"{model_type!r}; pass target_modules (names, a regex, or 'all-linear')")
        return list(DEFAULT_TARGET_MODULES[model_type])
    if isinstance(targets, str) and targets.lower() == ALL_LINEAR:
        skip = output_head_names(model) | _adapter_internal_names(model)
        return sorted(name for name, module in model.named_modules()
                      if isinstance(module, (Linear, LoraLinear, BoneLinear)) and name not in skip)
    return targets


def find_target_modules(model: Module, config: LoraConfig, existing_lora: bool = False) -> list[str]:
    """Names of the Linear modules the adapter replaces, in model order.

    With ``existing_lora`` a matched LoraLinear is a target too (it takes one more adapter). Raises
    ValueError if nothing matches, or if a matched module is not a Linear.
    """
    inside = _adapter_internal_names(model)
    names = []
    for name, module in model.named_modules():
        if not name or name in inside or not check_target_module_exists(config, name):
            continue
        if isinstance(module, (LoraLinear, BoneLinear)) and not (existing_lora and type(module) is LoraLinear):
            raise ValueError(f"module {name!r} already has an adapter; peftc keeps one adapter per model")
        if not isinstance(module, (Linear, LoraLinear)):
            raise ValueError(f"target module {name!r} is a {type(module).__name__}; LoRA in peftc supports "
                             f"peftc.nn.Linear only")
        names.append(name)
    if not names:
        linears = [n for n, m in model.named_modules() if isinstance(m, Linear)]
        raise ValueError(f"target modules {config.target_modules!r} not found in the base model "
                         f"(its Linear modules include {linears[:6]}); check target_modules, exclude_modules, "
                         f"layers_to_transform and layers_pattern")
    return names
