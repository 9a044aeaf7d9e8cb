"""get_peft_model and PeftModel: LoRA or Bone / MiSS injected into any peftc.nn.Module tree, PEFT's user API.

The config's class picks the layer: LoraConfig -> LoraLinear, SoraConfig -> SoraLinear,
HydraConfig -> HydraLinear (the last two are LoraLinear subclasses, so everything below treats
them alike; their files carry peft_type PEFTC_SORA / PEFTC_HYDRA, which PEFT refuses).

    model = get_peft_model(model, LoraConfig(r=8, target_modules=["query", "value"]))
    model.print_trainable_parameters()
    ... train on model.trainable_parameters() ...
    model.save_pretrained("out")                       # PEFT-compatible folder
    model = PeftModel.from_pretrained(base, "out")     # also reads folders written by PEFT
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

from ..nn import BoneLinear, HydraLinear, Linear, LoraLinear, Module, Parameter, SoraLinear
from ..random import Generator
from .adapter_files import load_adapter_weights, save_adapter_weights
from .bone_config import BoneConfig
from .configs import config_from_pretrained
from .hydra_config import HydraConfig
from .lora_config import LoraConfig
from .matching import find_target_modules, get_pattern_key, resolve_target_modules
from .modules_to_save import ModulesToSaveWrapper
from .sora_config import SoraConfig

AdapterConfig = LoraConfig | BoneConfig
# the adapter layers peftc injects (SoraLinear and HydraLinear are LoraLinear subclasses)
ADAPTER_LAYERS = (LoraLinear, BoneLinear)


class LoraModel(Module):
    """The user's model with adapter layers injected (PEFT's ``LoraModel`` / ``MissModel``); ``model`` is the tree
    itself."""

    def __init__(self, model: Module, config: AdapterConfig) -> None:
        self.model = model
        self.peft_config = {"default": config}

    def forward(self, *args, **kwargs):
        return self.model.forward(*args, **kwargs)

    def backward(self, dy, *, dx=None, input_grad=True):
        return self.model.backward(dy, dx=dx, input_grad=input_grad)


class PeftModel(Module):
    """A model with one adapter ("default"), LoRA or Bone / MiSS: forward / backward run the adapted model.

    Parameter names follow PEFT's layout: ``base_model.model.<module path>...``.
    """

    def __init__(self, model: Module, config: AdapterConfig, adapter_name: str = "default",
                 generator: Generator | None = None) -> None:
        if adapter_name != "default":
            raise ValueError(f"peftc keeps one adapter per model, named 'default'; got adapter_name={adapter_name!r}")
        if not isinstance(model, Module):
            raise TypeError(f"get_peft_model needs a peftc.nn.Module, got {type(model).__name__}")
        config = dataclasses.replace(config, target_modules=resolve_target_modules(model, config))
        self.base_model = LoraModel(model, config)
        self.active_adapter = adapter_name
        self._inject(model, config, generator or Generator(0))
        self._mark_trainable(model, config)

    # -- construction ------------------------------------------------------------------------------
    @staticmethod
    def _inject(model: Module, config: AdapterConfig, generator: Generator) -> None:
        targets = find_target_modules(model, config)
        for name in targets:
            base = model.get_submodule(name)
            assert isinstance(base, Linear)
            layer = _make_layer(config, base, name, generator)
            layer.training = base.training
            model.set_submodule(name, layer)
        if isinstance(config, SoraConfig):
            # the L1 penalty lambda1 * sum|g| / P is over all gate entries of the model
            gates = [m for _, m in model.named_modules() if isinstance(m, SoraLinear)]
            total = sum(m.r for m in gates)
            for m in gates:
                m.l1_weight = config.sparse_lambda / total
        if config.modules_to_save:
            # PEFT's rule for modules_to_save is a plain (not dotted) suffix match
            names = [n for n, _ in model.named_modules()
                     if n and any(n.endswith(m) for m in config.modules_to_save)]
            wrapped: list[str] = []
            for name in names:
                # a match inside a module already copied is part of that copy
                if any(name.startswith(w + ".") for w in wrapped):
                    continue
                module = model.get_submodule(name)
                if not isinstance(module, ModulesToSaveWrapper):
                    model.set_submodule(name, ModulesToSaveWrapper(module))
                wrapped.append(name)

    @staticmethod
    def _mark_trainable(model: Module, config: AdapterConfig) -> None:
        layers = [m for _, m in model.named_modules() if isinstance(m, ADAPTER_LAYERS)]
        wrappers = [m for _, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)]
        model.requires_grad_(False)
        if config.inference_mode:
            return
        for layer in layers:
            for p in layer.adapter_parameters().values():
                p.requires_grad = True
            if config.bias.endswith("_only") and layer.base.bias is not None:
                layer.base.bias.requires_grad = True
        if config.bias == "all":
            for name, p in model.named_parameters():
                if name == "bias" or name.endswith(".bias"):
                    p.requires_grad = True
        for wrapper in wrappers:
            wrapper.original_module.requires_grad_(False)
            wrapper.modules_to_save.requires_grad_(True)

    # -- running -----------------------------------------------------------------------------------
    @property
    def peft_config(self) -> dict[str, AdapterConfig]:
        return self.base_model.peft_config

    @property
    def active_peft_config(self) -> AdapterConfig:
        return self.peft_config[self.active_adapter]

    def get_base_model(self) -> Module:
        """The user's model (with the adapters in it)."""
        return self.base_model.model

    def forward(self, *args, **kwargs):
        return self.base_model.model.forward(*args, **kwargs)

    def backward(self, dy, *, dx=None, input_grad=True):
        return self.base_model.model.backward(dy, dx=dx, input_grad=input_grad)

    def _lora_layers(self) -> list[Module]:
        """The adapter layers (LoraLinear or BoneLinear) in the model."""
        return [m for _, m in self.get_base_model().named_modules() if isinstance(m, ADAPTER_LAYERS)]

    def _wrappers(self) -> list[ModulesToSaveWrapper]:
        return [m for _, m in self.get_base_model().named_modules() if isinstance(m, ModulesToSaveWrapper)]

    # -- parameters --------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[Parameter]:
        """The parameters to hand to an optimizer (requires_grad True)."""
        return [p for _, p in self.named_parameters() if p.requires_grad]

    def named_trainable_parameters(self) -> Iterator[tuple[str, Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameter counts; the frozen originals of modules_to_save count too, as in PEFT."""
        params = self.parameters()
        return sum(p.size for p in params if p.requires_grad), sum(p.size for p in params)

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")

    # -- merging -----------------------------------------------------------------------------------
    def merge_adapter(self) -> None:
        """Fold every adapter update into its base weight (forward then costs what the base model costs)."""
        for layer in self._lora_layers():
            layer.merge()

    def unmerge_adapter(self) -> None:
        """Undo merge_adapter (exact up to float32 rounding; Bat goes through (I + T)^-1)."""
        for layer in self._lora_layers():
            layer.unmerge()

    def _unload(self, merge: bool) -> Module:
        model = self.get_base_model()
        for name, module in list(model.named_modules()):
            if isinstance(module, ADAPTER_LAYERS):
                if merge:
                    module.merge()
                elif module.merged:
                    module.unmerge()
                model.set_submodule(name, module.base)
            elif isinstance(module, ModulesToSaveWrapper):
                model.set_submodule(name, module.modules_to_save)
        return model

    def merge_and_unload(self) -> Module:
        """The base model with each LoRA layer merged into a plain Linear (modules_to_save copies kept)."""
        return self._unload(merge=True)

    def unload(self) -> Module:
        """The base model with LoRA layers removed unmerged (the original weights)."""
        return self._unload(merge=False)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside the block the model runs as the base model (LoRA off, original modules_to_save)."""
        layers, wrappers = self._lora_layers(), self._wrappers()
        if any(layer.merged for layer in layers):
            raise RuntimeError("disable_adapter on a merged model: call unmerge_adapter() first")
        old = [(m, m.disabled) for m in [*layers, *wrappers]]
        for m, _ in old:
            m.disabled = True
        try:
            yield
        finally:
            for m, flag in old:
                m.disabled = flag

    # -- files -------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write adapter_config.json (inference_mode true, as PEFT writes it) and adapter_model.safetensors
        in PEFT's format, each atomically."""
        if any(layer.merged for layer in self._lora_layers()):
            raise RuntimeError("save_pretrained on a merged model: call unmerge_adapter() first")
        config = self.active_peft_config
        save_adapter_weights(self.get_base_model(), config.bias, save_directory)
        dataclasses.replace(config, inference_mode=True).save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, model: Module, model_id: str | os.PathLike, adapter_name: str = "default",
                        is_trainable: bool = False, config: AdapterConfig | None = None) -> PeftModel:
        """Inject the adapter saved in the folder ``model_id`` (by peftc or PEFT) into ``model``.

        Without ``is_trainable`` the result is frozen and in eval mode, as in PEFT.
        """
        if not os.path.isdir(model_id):
            raise FileNotFoundError(f"adapter folder not found: {os.fspath(model_id)} (peftc never downloads)")
        config = config if config is not None else config_from_pretrained(model_id)
        config = dataclasses.replace(config, inference_mode=not is_trainable)
        peft_model = cls(model, config, adapter_name)
        load_adapter_weights(peft_model.get_base_model(), config.bias, model_id)
        if not is_trainable:
            peft_model.eval()
        return peft_model

    def __repr__(self) -> str:
        cfg = self.active_peft_config
        kind = (f"MiSS {cfg.variant} r={cfg.r}" if isinstance(cfg, BoneConfig)
                else f"{cfg.peft_type} r={cfg.r}, alpha={cfg.lora_alpha}")
        return f"PeftModel({kind}, {len(self._lora_layers())} layers, base={type(self.get_base_model()).__name__})"

    def save_gguf(self, path: str | os.PathLike, *, skip_modules_to_save: bool = False) -> dict[str, str]:
        """Write the LoRA adapter as a llama.cpp GGUF LoRA file: :func:`peftc.tuners.gguf_export.save_gguf`.

        Example:
            >>> # model.save_gguf("minilm-lora.gguf")   # then: llama-embedding -m minilm.gguf --lora minilm-lora.gguf
        """
        from .gguf_export import save_gguf  # gguf_export imports this module
        return save_gguf(self, path, skip_modules_to_save=skip_modules_to_save)


def get_peft_model(model: Module, peft_config: AdapterConfig, adapter_name: str = "default",
                   generator: Generator | None = None) -> PeftModel:
    """Wrap ``model`` (changed in place) with the adapter described by ``peft_config``.

    ``generator`` seeds the adapter initialisation and dropout (default ``Generator(0)``). The
    config's type picks the adapter: LoraConfig -> LoRA, BoneConfig / MissConfig -> Bone / MiSS / Bat.
    """
    if not isinstance(peft_config, (LoraConfig, BoneConfig)):
        raise TypeError(f"peft_config must be a peftc LoraConfig, SoraConfig, HydraConfig or BoneConfig (MissConfig), "
                        f"got {type(peft_config).__name__}")
    return PeftModel(model, peft_config, adapter_name, generator)


def _make_layer(config: AdapterConfig, base: Linear, name: str, generator: Generator) -> Module:
    """The adapter layer ``config`` asks for on the module ``name`` (LoRA, SoRA, Hydra or Bone / MiSS)."""
    if isinstance(config, BoneConfig):
        try:
            return BoneLinear(base, r=config.r, init_weights=config.init_weights, miss_dropout=config.miss_dropout,
                              mini_r=config.mini_r, generator=generator)
        except ValueError as exc:
            raise ValueError(f"module {name!r} (in_features={base.in_features}, "
                             f"out_features={base.out_features}): {exc}") from None
    r = config.rank_pattern.get(get_pattern_key(config.rank_pattern, name), config.r)
    alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern, name), config.lora_alpha)
    if isinstance(config, SoraConfig):
        return SoraLinear(base, r=r, lora_alpha=alpha, lora_dropout=config.lora_dropout, use_rslora=config.use_rslora,
                          init_lora_weights=config.init_lora_weights, generator=generator)
    if isinstance(config, HydraConfig):
        return HydraLinear(base, r=r, lora_alpha=alpha, seq_r=config.seq_r, seq_alpha=config.seq_alpha,
                           use_rslora=config.use_rslora, init_lora_weights=config.init_lora_weights,
                           generator=generator)
    return LoraLinear(base, r=r, lora_alpha=alpha, lora_dropout=config.lora_dropout, use_rslora=config.use_rslora,
                      lora_bias=config.lora_bias, init_lora_weights=config.init_lora_weights, generator=generator)
