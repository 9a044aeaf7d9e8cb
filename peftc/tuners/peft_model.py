"""get_peft_model and PeftModel: LoRA or Bone / MiSS injected into any peftc.nn.Module tree, PEFT's user API.

The config's class picks the layer: LoraConfig -> LoraLinear, SoraConfig -> SoraLinear,
HydraConfig -> HydraLinear (the last two are LoraLinear subclasses, so everything below treats
them alike; their files carry peft_type PEFTC_SORA / PEFTC_HYDRA, which PEFT refuses).

    model = get_peft_model(model, LoraConfig(r=8, target_modules=["query", "value"]))
    model.print_trainable_parameters()
    ... train on model.trainable_parameters() ...
    model.save_pretrained("out")                       # PEFT-compatible folder
    model = PeftModel.from_pretrained(base, "out")     # also reads folders written by PEFT

Several LoRA adapters live side by side as in PEFT (``add_adapter``, ``load_adapter``, ``set_adapter``,
``delete_adapter``, ``add_weighted_adapter``); one of them is active, and each has its own modules_to_save
copies. ``model(batch, adapter_names=[...])`` runs each batch row with its own adapter ("__base__": none)
in one grouped kernel call per layer, forward and backward (:class:`peftc.MultiAdapterTrainer` trains
several adapters that way). SoRA, Hydra and Bone / MiSS models hold named adapters the same way, of one kind
per model (adding a LoRA adapter to a SoRA model raises NotImplementedError naming both); their mixed-adapter
batches run each adapter's own kernels on its rows (:mod:`peftc.nn.adapter_groups`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from ..nn import BoneLinear, Conv1D, Linear, LoraLinear, Module, Parameter, SoraLinear
from ..nn.row_adapters import BASE_ADAPTER, RowAdapters
from ..random import Generator
from .adapter_files import load_adapter_weights, save_adapter_weights
from .bone_config import BoneConfig
from .configs import config_from_pretrained
from .hydra_config import HydraConfig
from .lora_config import LoraConfig
from .matching import find_target_modules, get_pattern_key, layer_class, resolve_target_modules
from .model_card import save_model_card
from .modules_to_save import ModulesToSaveWrapper
from .sora_config import SoraConfig

AdapterConfig = LoraConfig | BoneConfig
# the adapter layers peftc injects (SoraLinear and HydraLinear are LoraLinear subclasses)
ADAPTER_LAYERS = (LoraLinear, BoneLinear)
# PEFT's add_weighted_adapter combination types; peftc runs the first three
COMBINATION_TYPES = ("linear", "cat", "svd")
PEFT_ONLY_COMBINATION_TYPES = ("ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd", "dare_linear_svd",
                               "magnitude_prune", "magnitude_prune_svd")


class LoraModel(Module):
    """The user's model with adapter layers injected (PEFT's ``LoraModel`` / ``MissModel``); ``model`` is the tree
    itself."""

    def __init__(self, model: Module, config: AdapterConfig, adapter_name: str = "default") -> None:
        self.model = model
        self.peft_config = {adapter_name: config}

    def forward(self, *args, adapter_names: Sequence[str] | None = None, **kwargs):
        """The model's forward; ``adapter_names`` (one adapter name per batch row, "__base__" for none) runs a
        mixed-adapter batch: see :meth:`PeftModel.forward`."""
        if adapter_names is None:
            return self.model.forward(*args, **kwargs)
        with self.mixed_batch(adapter_names, _batch_rows(args, kwargs)):
            return self.model.forward(*args, **kwargs)

    @contextlib.contextmanager
    def mixed_batch(self, adapter_names: Sequence[str], batch_rows: int | None = None) -> Iterator[RowAdapters]:
        """Inside the block every adapter layer and modules_to_save wrapper runs row b of its input with
        ``adapter_names[b]`` (a batch row spans input rows b*T .. b*T+T-1 of a layer that sees B*T rows).

        Checks the names (ValueError naming the unknown ones; "__base__" means no adapter), their count against
        ``batch_rows`` when given (ValueError with both numbers) and that nothing is merged. LoRA layers run the
        grouped kernel; SoRA, Hydra and Bone / MiSS layers each adapter's own kernels on its rows.

        Example:
            >>> import numpy as np
            >>> from peftc import LoraConfig, get_peft_model
            >>> from peftc.models import BertConfig, BertModel
            >>> base = BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
            ...                                         num_attention_heads=2, intermediate_size=16))
            >>> model = get_peft_model(base, LoraConfig(target_modules=["query"]), adapter_name="task_a")
            >>> model.add_adapter("task_b", LoraConfig(target_modules=["query"]))
            >>> ids, mask = np.array([[2, 7, 3], [2, 3, 0], [4, 5, 6]]), np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
            >>> with model.base_model.mixed_batch(["task_a", "__base__", "task_b"]):
            ...     hidden = model.get_base_model().eval()(ids, mask)
            >>> hidden.shape
            (3, 3, 8)
        """
        if isinstance(adapter_names, str) or not isinstance(adapter_names, Sequence):
            raise TypeError(f"adapter_names must be a list of adapter names, one per batch row, got "
                            f"{type(adapter_names).__name__} {adapter_names!r}")
        unknown = sorted({n for n in adapter_names if n != BASE_ADAPTER and n not in self.peft_config}, key=str)
        if unknown:
            raise ValueError(f"adapter_names holds unknown adapters {unknown}; this model has {list(self.peft_config)} "
                             f"(and {BASE_ADAPTER!r} for no adapter)")
        if batch_rows is not None and len(adapter_names) != batch_rows:
            raise ValueError(f"adapter_names has {len(adapter_names)} entries but the batch has {batch_rows} rows: "
                             f"give one adapter name per row")
        layers = [m for _, m in self.model.named_modules()
                  if isinstance(m, (LoraLinear, BoneLinear, ModulesToSaveWrapper))]
        if any(getattr(m, "merged", False) for m in layers):
            raise RuntimeError("adapter_names on a merged model: call unmerge_adapter() first")
        rows = RowAdapters.from_names(list(adapter_names))
        for m in layers:
            m.row_adapters = rows
        try:
            yield rows
        finally:
            for m in layers:
                m.row_adapters = None

    def backward(self, dy, *, dx=None, input_grad=True):
        return self.model.backward(dy, dx=dx, input_grad=input_grad)


class PeftModel(Module):
    """A model with named adapters (LoRA, or one Bone / MiSS / SoRA / Hydra adapter): forward / backward run the
    adapted model with the active adapter.

    Parameter names follow PEFT's layout: ``base_model.model.<module path>...`` (``lora_A`` for the
    adapter "default", ``lora_A.<name>`` for the others).
    """

    def __init__(self, model: Module, config: AdapterConfig, adapter_name: str = "default",
                 generator: Generator | None = None) -> None:
        _check_adapter_name(adapter_name)
        if not isinstance(model, Module):
            raise TypeError(f"get_peft_model needs a peftc.nn.Module, got {type(model).__name__}")
        config = dataclasses.replace(config, target_modules=resolve_target_modules(model, config))
        self.base_model = LoraModel(model, config, adapter_name)
        self.active_adapter = adapter_name
        self._generator = generator or Generator(0)
        self._inject(model, config, self._generator, adapter_name)
        self._mark_trainable(model, config, adapter_name)

    # -- construction ------------------------------------------------------------------------------
    @staticmethod
    def _inject(model: Module, config: AdapterConfig, generator: Generator, adapter_name: str = "default",
                active_adapter: str | None = None) -> None:
        targets = find_target_modules(model, config, existing_lora=True)
        for name in targets:
            base = model.get_submodule(name)
            if type(base) is layer_class(config):  # a layer of this kind takes one more adapter
                with _naming_module(name, base.base):
                    base.add_adapter(adapter_name, **_layer_settings(config, name), **_generator_kw(config, generator))
                continue
            assert isinstance(base, Linear)
            _match_fan_in_fan_out(config, base, name)
            layer = _make_layer(config, base, name, generator, adapter_name)
            layer.training = base.training
            if active_adapter is not None:
                layer.set_adapter(active_adapter)
            model.set_submodule(name, layer)
        if isinstance(config, SoraConfig):
            # the L1 penalty lambda1 * sum|g| / P is over all gate entries of the adapter in the model
            gates = [m.lora_adapters[adapter_name] for _, m in model.named_modules()
                     if isinstance(m, SoraLinear) and adapter_name in m.lora_adapters]
            total = sum(g.r for g in gates)
            for g in gates:
                g.l1_weight = config.sparse_lambda / total
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
                if isinstance(module, ModulesToSaveWrapper):  # another adapter's: this adapter gets its own copy
                    module.add_copy(adapter_name)
                else:
                    wrapper = ModulesToSaveWrapper(module, adapter_name)
                    if active_adapter is not None:
                        wrapper.set_adapter(active_adapter)
                    model.set_submodule(name, wrapper)
                wrapped.append(name)

    @staticmethod
    def _mark_trainable(model: Module, config: AdapterConfig, adapter_name: str = "default") -> None:
        """Freeze everything, then unfreeze what ``config`` trains for the adapter ``adapter_name``."""
        layers = [m for _, m in model.named_modules() if isinstance(m, ADAPTER_LAYERS)]
        wrappers = [m for _, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)]
        model.requires_grad_(False)
        if config.inference_mode:
            return
        for layer in layers:
            if adapter_name not in _held(layer):
                continue
            for p in layer.adapter_parameters(adapter_name).values():
                p.requires_grad = True
            if config.bias.endswith("_only") and layer.base.bias is not None:
                layer.base.bias.requires_grad = True
        if config.bias == "all":
            for name, p in model.named_parameters():
                if name == "bias" or name.endswith(".bias"):
                    p.requires_grad = True
        for wrapper in wrappers:
            wrapper.requires_grad_(False)
            if adapter_name in wrapper.copies:
                wrapper.copies[adapter_name].requires_grad_(True)

    # -- running -----------------------------------------------------------------------------------
    @property
    def peft_config(self) -> dict[str, AdapterConfig]:
        return self.base_model.peft_config

    @property
    def active_peft_config(self) -> AdapterConfig:
        return self.peft_config[self.active_adapter]

    @property
    def active_adapters(self) -> list[str]:
        """The names of the active adapters (one in peftc), as PEFT's ``active_adapters``.

        >>> from peftc import LoraConfig, get_peft_model
        >>> from peftc.models import BertConfig, BertModel
        >>> base = BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
        ...                                         num_attention_heads=2, intermediate_size=16))
        >>> get_peft_model(base, LoraConfig(target_modules=["query"])).active_adapters
        ['default']
        """
        return [self.active_adapter]

    def get_base_model(self) -> Module:
        """The user's model (with the adapters in it)."""
        return self.base_model.model

    def forward(self, *args, adapter_names: Sequence[str] | None = None, **kwargs):
        """The adapted model's forward with the active adapter, or, with ``adapter_names``, a mixed-adapter batch:
        row b of the batch runs the adapter ``adapter_names[b]`` ("__base__": none), every adapter layer in one
        grouped kernel call (:func:`peftc.functional.lora_mixed_forward`) and each modules_to_save copy on its
        own rows. The outputs equal running each row with its adapter alone. LoRA adapters only; the inputs
        must be batch-major (no packed tokens). Backward is supported after a mixed forward (unlike PEFT,
        where it is inference only) when no adapter in the batch has dropout in training mode: each
        adapter's gradients come from its own rows (see :class:`peftc.train.MultiAdapterTrainer`).

        >>> import numpy as np
        >>> from peftc import LoraConfig, get_peft_model
        >>> from peftc.models import BertConfig, BertModel
        >>> base = BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
        ...                                         num_attention_heads=2, intermediate_size=16))
        >>> config = LoraConfig(target_modules=["query"], init_lora_weights=False)   # random B: adapters differ
        >>> model = get_peft_model(base, config, adapter_name="task_a").eval()
        >>> model.add_adapter("task_b", config)
        >>> ids, mask = np.array([[2, 7, 3], [2, 3, 0], [4, 5, 6]]), np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
        >>> hidden = model(ids, mask, adapter_names=["task_a", "__base__", "task_b"])
        >>> hidden.shape
        (3, 3, 8)
        >>> model.set_adapter("task_b")
        >>> bool(np.allclose(hidden[2], model(ids[2:], mask[2:])[0], atol=1e-5))  # row 2 as task_b alone
        True
        >>> bool(np.allclose(hidden[0], model(ids[:1], mask[:1])[0], atol=1e-5))  # row 0 ran task_a, not task_b
        False
        """
        return self.base_model.forward(*args, adapter_names=adapter_names, **kwargs)

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
        """(trainable, all) parameter counts; the frozen originals of modules_to_save count too, as in PEFT, and
        so does each frozen bf16 weight of a bf16 base (its out x in elements, as its float32 original would)."""
        params = self.parameters()
        packed = sum(w.shape[0] * w.shape[1] for _, w in self.named_packed_weights())
        return sum(p.size for p in params if p.requires_grad), sum(p.size for p in params) + packed

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
        """The base model with each LoRA layer merged into a plain Linear (modules_to_save copies kept).

        On a bf16 base (``from_pretrained(..., dtype="bfloat16")``) each merge happens in float32 (the bf16
        weight widened exactly, s * B A added) and the sum is rounded to bf16 once.
        """
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

    # -- several adapters ----------------------------------------------------------------------------
    def _check_known(self, adapter_name: object, argument: str = "adapter_name") -> None:
        if not isinstance(adapter_name, str) or adapter_name not in self.peft_config:
            raise ValueError(f"{argument}={adapter_name!r} is not an adapter of this model; it has "
                             f"{list(self.peft_config)}")

    def _check_can_add(self, adapter_name: str, config: AdapterConfig) -> None:
        _check_adapter_name(adapter_name)
        if adapter_name in self.peft_config:
            raise ValueError(f"adapter_name={adapter_name!r} already exists (adapters: {list(self.peft_config)})")
        current = self.active_peft_config
        if layer_class(config) is not layer_class(current):
            raise NotImplementedError(f"add_adapter with a {type(config).__name__} on a model holding "
                                      f"{type(current).__name__} adapters: a peftc model holds adapters of one kind")
        if any(layer.merged for layer in self._lora_layers()):
            raise RuntimeError("add_adapter on a merged model: call unmerge_adapter() first")

    def add_adapter(self, adapter_name: str, peft_config: AdapterConfig, generator: Generator | None = None) -> None:
        """Add a new adapter beside the existing ones (of the same kind: LoRA, SoRA, Hydra or Bone / MiSS), as
        PEFT's ``add_adapter``: it is not made active and stays frozen (use :meth:`set_adapter` to train or run
        it). ``generator`` seeds its initialisation (default: the model's generator).

        >>> from peftc import LoraConfig, get_peft_model
        >>> from peftc.models import BertConfig, BertModel
        >>> base = BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
        ...                                         num_attention_heads=2, intermediate_size=16))
        >>> model = get_peft_model(base, LoraConfig(r=8, target_modules=["query", "value"]))
        >>> model.add_adapter("task_b", LoraConfig(r=4, target_modules=["query"]))
        >>> list(model.peft_config), model.active_adapters
        (['default', 'task_b'], ['default'])
        >>> model.set_adapter("task_b")   # now task_b runs and trains
        """
        if not isinstance(peft_config, (LoraConfig, BoneConfig)):
            raise TypeError(f"peft_config must be a peftc LoraConfig, SoraConfig, HydraConfig or BoneConfig, got "
                            f"{type(peft_config).__name__}")
        self._check_can_add(adapter_name, peft_config)
        model = self.get_base_model()
        config = dataclasses.replace(peft_config, target_modules=resolve_target_modules(model, peft_config))
        self.peft_config[adapter_name] = config
        try:
            self._inject(model, config, generator or self._generator, adapter_name, self.active_adapter)
        except Exception:
            self._remove_from_layers(adapter_name)
            del self.peft_config[adapter_name]
            raise
        for p in self.get_adapter_parameters(adapter_name):
            p.requires_grad = False
            p.grad = None

    def get_adapter_parameters(self, adapter_name: str) -> list[Parameter]:
        """The parameters of one adapter: its LoRA tensors on every layer and its modules_to_save copies.

        >>> from peftc import LoraConfig, get_peft_model
        >>> from peftc.models import BertConfig, BertModel
        >>> base = BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
        ...                                         num_attention_heads=2, intermediate_size=16))
        >>> model = get_peft_model(base, LoraConfig(r=8, target_modules=["query", "value"]))
        >>> model.add_adapter("task_b", LoraConfig(r=4, target_modules=["query"]))
        >>> sum(p.size for p in model.get_adapter_parameters("task_b"))  # A (4, 8) and B (8, 4) on one query
        64
        """
        params = [p for layer in self._lora_layers() if adapter_name in _held(layer)
                  for p in layer.adapter_parameters(adapter_name).values()]
        params += [p for w in self._wrappers() if adapter_name in w.copies for p in w.copies[adapter_name].parameters()]
        return params

    def set_adapter(self, adapter_name: str | Sequence[str], inference_mode: bool = False) -> None:
        """Make ``adapter_name`` the active adapter: the forward runs it, and it alone trains (its parameters,
        plus the biases its config's ``bias`` names, get requires_grad; the other adapters are frozen and
        every gradient is cleared). ``inference_mode=True`` freezes it too. Layers without it run their base.

        >>> from peftc import LoraConfig, get_peft_model
        >>> from peftc.models import BertConfig, BertModel
        >>> base = BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
        ...                                         num_attention_heads=2, intermediate_size=16))
        >>> model = get_peft_model(base, LoraConfig(r=8, target_modules=["query", "value"]))
        >>> model.add_adapter("task_b", LoraConfig(r=4, target_modules=["query"]))
        >>> model.set_adapter("task_b")
        >>> model.active_adapters
        ['task_b']
        >>> sum(p.size for p in model.trainable_parameters())  # task_b's alone
        64
        """
        if isinstance(adapter_name, (list, tuple)):
            if len(adapter_name) != 1:
                raise NotImplementedError(f"set_adapter({list(adapter_name)!r}): peftc runs one active adapter at "
                                          f"a time")
            adapter_name = adapter_name[0]
        self._check_known(adapter_name)
        if any(layer.merged for layer in self._lora_layers()):
            raise RuntimeError(f"set_adapter({adapter_name!r}) on a merged model: call unmerge_adapter() first")
        for layer in self._lora_layers():
            layer.set_adapter(adapter_name)
        for wrapper in self._wrappers():
            wrapper.set_adapter(adapter_name)
        self.active_adapter = adapter_name
        config = dataclasses.replace(self.peft_config[adapter_name], inference_mode=bool(inference_mode))
        self._mark_trainable(self.get_base_model(), config, adapter_name)

    def _remove_from_layers(self, adapter_name: str) -> None:
        """Delete ``adapter_name`` from every layer; a layer left without adapters becomes its base Linear again."""
        model = self.get_base_model()
        for path, layer in list(model.named_modules()):
            if isinstance(layer, ADAPTER_LAYERS) and adapter_name in _held(layer):
                layer.delete_adapter(adapter_name)
                if not _held(layer):
                    model.set_submodule(path, layer.base)
            elif isinstance(layer, ModulesToSaveWrapper) and adapter_name in layer.copies:
                layer.delete_copy(adapter_name)
                if not layer.copies:
                    model.set_submodule(path, layer.original_module)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove the adapter ``adapter_name`` from the model. Deleting the active adapter makes the first of the
        others active (with a warning, as PEFT); the only adapter cannot be deleted (use :meth:`unload`).

        >>> from peftc import LoraConfig, get_peft_model
        >>> from peftc.models import BertConfig, BertModel
        >>> base = BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
        ...                                         num_attention_heads=2, intermediate_size=16))
        >>> model = get_peft_model(base, LoraConfig(target_modules=["query"]))
        >>> model.add_adapter("task_b", LoraConfig(target_modules=["query"]))
        >>> model.delete_adapter("task_b")
        >>> list(model.peft_config)
        ['default']
        """
        self._check_known(adapter_name)
        if len(self.peft_config) == 1:
            raise ValueError(f"cannot delete {adapter_name!r}, the model's only adapter; unload() returns the base "
                             f"model")
        if adapter_name == self.active_adapter and any(layer.merged for layer in self._lora_layers()):
            raise RuntimeError(f"delete_adapter({adapter_name!r}) while it is merged: call unmerge_adapter() first")
        self._remove_from_layers(adapter_name)
        del self.peft_config[adapter_name]
        if adapter_name == self.active_adapter:
            new = next(iter(self.peft_config))
            warnings.warn(f"adapter {adapter_name!r} was active and is now deleted; the active adapter is now "
                          f"{new!r}", UserWarning, stacklevel=2)
            self.set_adapter(new)

    def load_adapter(self, model_id: str | os.PathLike, adapter_name: str, is_trainable: bool = False,
                     config: LoraConfig | None = None, subfolder: str | None = None) -> None:
        """Add the adapter saved in the folder ``model_id`` (by peftc or PEFT; ``subfolder`` inside it) under the
        name ``adapter_name``, as PEFT's ``load_adapter``: it is not made active, and it is frozen unless
        ``is_trainable``.

        >>> import os, tempfile
        >>> from peftc import LoraConfig, PeftModel, get_peft_model
        >>> from peftc.models import BertConfig, BertModel
        >>> def new_base():
        ...     return BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
        ...                                             num_attention_heads=2, intermediate_size=16))
        >>> trained = get_peft_model(new_base(), LoraConfig(target_modules=["query"]), adapter_name="task_a")
        >>> trained.add_adapter("task_b", LoraConfig(r=4, target_modules=["query"]))
        >>> out = tempfile.mkdtemp()
        >>> trained.save_pretrained(out)                               # out/task_a/, out/task_b/
        >>> model = PeftModel.from_pretrained(new_base(), os.path.join(out, "task_a"), adapter_name="task_a")
        >>> model.load_adapter(os.path.join(out, "task_b"), adapter_name="task_b")
        >>> model.set_adapter("task_b")
        >>> list(model.peft_config), model.active_adapters
        (['task_a', 'task_b'], ['task_b'])
        """
        folder = os.path.join(model_id, subfolder) if subfolder else model_id
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"adapter folder not found: {os.fspath(folder)} (peftc never downloads)")
        config = config if config is not None else config_from_pretrained(folder)
        config = dataclasses.replace(config, inference_mode=not is_trainable)
        self.add_adapter(adapter_name, config)
        try:
            load_adapter_weights(self.get_base_model(), config.bias, folder, adapter_name)
        except Exception:
            self._remove_from_layers(adapter_name)
            del self.peft_config[adapter_name]
            raise
        if is_trainable:
            for p in self.get_adapter_parameters(adapter_name):
                p.requires_grad = True

    def add_weighted_adapter(self, adapters: Sequence[str], weights: Sequence[float], adapter_name: str,
                             combination_type: str = "svd", svd_rank: int | None = None,
                             svd_clamp: float | None = None, svd_full_matrices: bool = True,
                             svd_driver: str | None = None, density: float | None = None,
                             majority_sign_method: str = "total") -> None:
        """Add ``adapter_name``, a combination of the LoRA ``adapters`` with ``weights``, as PEFT 0.21.2's
        ``LoraModel.add_weighted_adapter`` does (same factors on the same inputs):

        - "linear": A = sum sign(w s) sqrt|w s| A_i, B = sum sqrt|w s| B_i (s: each adapter's scale); the
          ranks must be equal; an approximation of sum w_i s_i B_i A_i unless there is one adapter.
        - "cat": A stacks w_i s_i A_i, B stacks B_i; rank sum(r_i); exact.
        - "svd": the top ``svd_rank`` (default max r_i) singular triplets of sum w_i s_i B_i A_i
          (numpy.linalg.svd with ``svd_full_matrices``), optionally clamped at the ``svd_clamp`` quantile.

        One adapter always combines "linear", as in PEFT. The new adapter has scale 1 (lora_alpha = r,
        use_rslora False) and is neither active nor trainable. Where peftc differs from PEFT: with
        rsLoRA PEFT keeps use_rslora, which scales its combination by an extra sqrt(r); head biases
        (lora_bias) are combined as sum w_i s_i b_i where PEFT leaves them zero; a layer whose
        ranks differ from r gets its own rank_pattern entry; an existing ``adapter_name`` is an error
        (PEFT returns silently). ``svd_driver``, ``density`` and ``majority_sign_method`` exist for
        PEFT's signature: the first is CUDA-only in PEFT, the others belong to the TIES / DARE types
        peftc lacks.

        >>> from peftc import LoraConfig, get_peft_model
        >>> from peftc.models import BertConfig, BertModel
        >>> base = BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
        ...                                         num_attention_heads=2, intermediate_size=16))
        >>> model = get_peft_model(base, LoraConfig(r=8, target_modules=["query"]), adapter_name="task_a")
        >>> model.add_adapter("task_b", LoraConfig(r=4, target_modules=["query"]))
        >>> model.add_weighted_adapter(["task_a", "task_b"], [0.7, 0.3], "mix", combination_type="cat")
        >>> model.set_adapter("mix")
        >>> model.peft_config["mix"].r          # "cat": the ranks add up
        12
        """
        adapters = list(adapters) if isinstance(adapters, (list, tuple)) else adapters
        if not isinstance(adapters, list) or not adapters:
            raise ValueError(f"add_weighted_adapter: adapters must be a non-empty list of adapter names, "
                             f"got {adapters!r}")
        for name in adapters:
            self._check_known(name, "adapters")
        weights = list(weights) if isinstance(weights, (list, tuple, np.ndarray)) else weights
        if not isinstance(weights, list) or len(weights) != len(adapters):
            got = len(weights) if isinstance(weights, list) else type(weights).__name__
            raise ValueError(f"add_weighted_adapter: weights must be a list with one number per adapter "
                             f"({len(adapters)}), got {got}")
        if not all(isinstance(w, (int, float, np.floating, np.integer)) and not isinstance(w, bool)
                   and math.isfinite(w) for w in weights):
            raise ValueError(f"add_weighted_adapter: weights must be finite numbers, got {weights!r}")
        weights = [float(w) for w in weights]
        if combination_type in PEFT_ONLY_COMBINATION_TYPES:
            raise NotImplementedError(f"combination_type={combination_type!r} is not implemented in peftc; it runs "
                                      f"{COMBINATION_TYPES}")
        if combination_type not in COMBINATION_TYPES:
            raise ValueError(f"combination_type must be one of {COMBINATION_TYPES}, got {combination_type!r}")
        if svd_driver is not None:
            raise ValueError(f"svd_driver={svd_driver!r}: PEFT's svd_driver selects a CUDA solver; peftc uses "
                             f"numpy.linalg.svd, so pass None")
        if density is not None:
            raise ValueError(f"density={density!r} is for the TIES / DARE / magnitude_prune combinations, which "
                             f"peftc does not implement")
        if svd_rank is not None and (isinstance(svd_rank, bool) or not isinstance(svd_rank, int) or svd_rank <= 0):
            raise ValueError(f"svd_rank must be None or a positive integer, got {svd_rank!r}")
        if svd_clamp is not None and not (isinstance(svd_clamp, (int, float)) and 0.0 <= svd_clamp <= 1.0):
            raise ValueError(f"svd_clamp must be None or a quantile in [0, 1], got {svd_clamp!r}")
        configs = [self.peft_config[name] for name in adapters]
        for name, cfg in zip(adapters, configs):
            if type(cfg) is not LoraConfig:
                raise NotImplementedError(f"add_weighted_adapter combines LoRA adapters; {name!r} is a "
                                          f"{type(cfg).__name__}")
        _check_adapter_name(adapter_name)
        if adapter_name in self.peft_config:
            raise ValueError(f"adapter_name={adapter_name!r} already exists (adapters: {list(self.peft_config)})")
        if any(layer.merged for layer in self._lora_layers()):
            raise RuntimeError("add_weighted_adapter on a merged model: call unmerge_adapter() first")
        # one adapter can only be combined linearly (PEFT's rule)
        combination_type = "linear" if len(adapters) == 1 else combination_type
        ranks = [_max_rank(c) for c in configs]
        if combination_type == "linear":
            if len(set(ranks)) != 1:
                raise ValueError(f"add_weighted_adapter: combination_type='linear' needs adapters of equal rank, "
                                 f"got {dict(zip(adapters, ranks))}; use 'cat' or 'svd'")
            new_rank = ranks[0]
        elif combination_type == "cat":
            new_rank = sum(ranks)
        else:
            new_rank = svd_rank or max(ranks)
        targets = _combined_target_modules(configs)
        layers: list[tuple[str, LoraLinear, tuple]] = []
        for path, layer in self.get_base_model().named_modules():
            if not isinstance(layer, LoraLinear):
                continue
            present = [(n, w) for n, w in zip(adapters, weights) if n in layer.lora_adapters]
            if not present:
                continue
            names, ws = [n for n, _ in present], [w for _, w in present]
            layers.append((path, layer, _weighted_factors(layer, names, ws, combination_type, new_rank, svd_clamp,
                                                          svd_full_matrices, f"module {path!r}")))
        with_bias = any(f[2] is not None for _, _, f in layers)
        rank_pattern = {path: f[0].shape[0] for path, _, f in layers if f[0].shape[0] != new_rank}
        config = dataclasses.replace(configs[0], r=new_rank, lora_alpha=new_rank, use_rslora=False,
                                     target_modules=targets, rank_pattern=rank_pattern,
                                     alpha_pattern={k: float(v) for k, v in rank_pattern.items()},
                                     lora_bias=with_bias, modules_to_save=None, inference_mode=True)
        self.peft_config[adapter_name] = config
        try:
            for path, layer, (a, b, bias) in layers:
                rank = a.shape[0]
                layer.add_adapter(adapter_name, r=rank, lora_alpha=rank, lora_dropout=config.lora_dropout,
                                  use_rslora=False, lora_bias=with_bias, init_lora_weights=True)
                new = layer.lora_adapters[adapter_name]
                new.lora_A.data[...] = a
                new.lora_B.data[...] = b
                if new.lora_bias is not None:
                    new.lora_bias.data[...] = 0.0 if bias is None else bias
                for p in new.file_parameters().values():
                    p.requires_grad = False
        except Exception:
            self._remove_from_layers(adapter_name)
            del self.peft_config[adapter_name]
            raise

    # -- files -------------------------------------------------------------------------------------
    def _base_model_name(self) -> str | None:
        """The base model's name for the model card: the config's base_model_name_or_path, else the model's
        name_or_path (or its config's), else None."""
        name = getattr(self.active_peft_config, "base_model_name_or_path", None)
        if name:
            return name
        model = self.get_base_model()
        for owner in (model, getattr(model, "config", None)):
            for attr in ("name_or_path", "_name_or_path"):
                value = owner.get(attr) if isinstance(owner, dict) else getattr(owner, attr, None)
                if isinstance(value, str) and value:
                    return value
        return None

    def save_pretrained(self, save_directory: str | os.PathLike,
                        selected_adapters: Sequence[str] | None = None) -> None:
        """Write each adapter in PEFT's format, each file atomically: adapter_config.json (inference_mode true, as
        PEFT writes it) and adapter_model.safetensors, in ``save_directory`` for "default" and in the
        subfolder ``save_directory/<name>`` for any other adapter (PEFT's rule), plus the model card
        README.md in ``save_directory``. ``selected_adapters`` (default: all) picks the adapters.

        >>> import os, tempfile
        >>> from peftc import LoraConfig, get_peft_model
        >>> from peftc.models import BertConfig, BertModel
        >>> base = BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
        ...                                         num_attention_heads=2, intermediate_size=16))
        >>> model = get_peft_model(base, LoraConfig(target_modules=["query"]))
        >>> model.add_adapter("task_b", LoraConfig(r=4, target_modules=["query"]))
        >>> out = tempfile.mkdtemp()
        >>> model.save_pretrained(out)                               # out/, out/task_b/
        >>> sorted(os.listdir(out))
        ['README.md', 'adapter_config.json', 'adapter_model.safetensors', 'task_b']
        >>> out = tempfile.mkdtemp()
        >>> model.save_pretrained(out, selected_adapters=["task_b"])  # out/task_b/ only (+ out/README.md)
        >>> sorted(os.listdir(out))
        ['README.md', 'task_b']
        """
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory {os.fspath(save_directory)} is a file, not a folder")
        if selected_adapters is None:
            selected = list(self.peft_config)
        elif isinstance(selected_adapters, (list, tuple)):
            selected = list(selected_adapters)
            for name in selected:
                self._check_known(name, "selected_adapters")
        else:
            raise ValueError(f"selected_adapters must be None or a list of adapter names, got {selected_adapters!r}")
        if any(layer.merged for layer in self._lora_layers()):
            raise RuntimeError("save_pretrained on a merged model: call unmerge_adapter() first")
        os.makedirs(save_directory, exist_ok=True)
        saved = {}
        for name in selected:
            config = dataclasses.replace(self.peft_config[name], inference_mode=True)
            folder = save_directory if name == "default" else os.path.join(save_directory, name)
            save_adapter_weights(self.get_base_model(), config.bias, folder, name)
            config.save_pretrained(folder)
            saved[name] = config
        save_model_card(save_directory, saved, self._base_model_name())

    @classmethod
    def from_pretrained(cls, model: Module, model_id: str | os.PathLike, adapter_name: str = "default",
                        is_trainable: bool = False, config: AdapterConfig | None = None) -> PeftModel:
        """Inject the adapter saved in the folder ``model_id`` (by peftc or PEFT) into ``model``, named
        ``adapter_name``. Without ``is_trainable`` the result is frozen and in eval mode, as in PEFT.

        >>> import tempfile
        >>> from peftc import LoraConfig, PeftModel, get_peft_model
        >>> from peftc.models import BertConfig, BertModel
        >>> def new_base():
        ...     return BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
        ...                                             num_attention_heads=2, intermediate_size=16))
        >>> out = tempfile.mkdtemp()
        >>> get_peft_model(new_base(), LoraConfig(target_modules=["query"])).save_pretrained(out)
        >>> model = PeftModel.from_pretrained(new_base(), out)
        >>> model.active_adapters, model.get_nb_trainable_parameters()[0]   # frozen: nothing trains
        (['default'], 0)
        """
        if not os.path.isdir(model_id):
            raise FileNotFoundError(f"adapter folder not found: {os.fspath(model_id)} (peftc never downloads)")
        config = config if config is not None else config_from_pretrained(model_id)
        config = dataclasses.replace(config, inference_mode=not is_trainable)
        peft_model = cls(model, config, adapter_name)
        load_adapter_weights(peft_model.get_base_model(), config.bias, model_id, adapter_name)
        if not is_trainable:
            peft_model.eval()
        return peft_model

    def __repr__(self) -> str:
        cfg = self.active_peft_config
        kind = (f"MiSS {cfg.variant} r={cfg.r}" if isinstance(cfg, BoneConfig)
                else f"{cfg.peft_type} r={cfg.r}, alpha={cfg.lora_alpha}")
        others = [n for n in self.peft_config if n != self.active_adapter]
        extra = f", active={self.active_adapter!r}, other adapters={others}" if others else ""
        return (f"PeftModel({kind}, {len(self._lora_layers())} layers, base={type(self.get_base_model()).__name__}"
                f"{extra})")

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


def _rank_alpha(config: LoraConfig, name: str) -> tuple[int, float]:
    """(r, lora_alpha) of the module ``name`` under ``config`` (rank_pattern / alpha_pattern applied)."""
    r = config.rank_pattern.get(get_pattern_key(config.rank_pattern, name), config.r)
    alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern, name), config.lora_alpha)
    return r, alpha


def _match_fan_in_fan_out(config: AdapterConfig, base: Linear, name: str) -> None:
    """PEFT's rule: ``fan_in_fan_out`` follows the target's layout, True on a Conv1D and False on a Linear; a
    config that says otherwise is changed (it is the model's own copy) with PEFT's warning."""
    conv = isinstance(base, Conv1D)
    if isinstance(config, BoneConfig):
        if conv:
            raise NotImplementedError(f"module {name!r} is a GPT-2 Conv1D; Bone / MiSS in peftc (as in PEFT) adapts "
                                      f"Linear layers only")
        return
    if config.fan_in_fan_out != conv:
        kind = "`Conv1D`" if conv else "`torch.nn.Linear`"
        warnings.warn(f"fan_in_fan_out is set to {config.fan_in_fan_out} but the target module is {kind}. "
                      f"Setting fan_in_fan_out to {conv}.", UserWarning, stacklevel=4)
        config.fan_in_fan_out = conv


def _layer_settings(config: AdapterConfig, name: str) -> dict:
    """The adapter settings of the module ``name`` under ``config``, as the layer's constructor and add_adapter
    take them."""
    if isinstance(config, BoneConfig):
        return dict(r=config.r, init_weights=config.init_weights, miss_dropout=config.miss_dropout,
                    mini_r=config.mini_r)
    r, alpha = _rank_alpha(config, name)
    settings = dict(r=r, lora_alpha=alpha, use_rslora=config.use_rslora, init_lora_weights=config.init_lora_weights)
    if isinstance(config, HydraConfig):
        return {**settings, "seq_r": config.seq_r, "seq_alpha": config.seq_alpha}
    settings["lora_dropout"] = config.lora_dropout
    if not isinstance(config, SoraConfig):
        settings["lora_bias"] = config.lora_bias
    return settings


def _generator_kw(config: AdapterConfig, generator: Generator) -> dict:
    """Bone / MiSS blocks start at zero: their add_adapter draws nothing."""
    return {} if isinstance(config, BoneConfig) else {"generator": generator}


@contextlib.contextmanager
def _naming_module(name: str, base: Linear) -> Iterator[None]:
    """A ValueError from a layer's settings names the module and its sizes."""
    try:
        yield
    except ValueError as exc:
        raise ValueError(f"module {name!r} (in_features={base.in_features}, "
                         f"out_features={base.out_features}): {exc}") from None


def _held(layer: Module) -> dict:
    """{adapter name: record} of an adapter layer."""
    return layer.miss_adapters if isinstance(layer, BoneLinear) else layer.lora_adapters


def _make_layer(config: AdapterConfig, base: Linear, name: str, generator: Generator,
                adapter_name: str = "default") -> Module:
    """The adapter layer ``config`` asks for on the module ``name`` (LoRA, SoRA, Hydra or Bone / MiSS)."""
    with _naming_module(name, base):
        return layer_class(config)(base, **_layer_settings(config, name), generator=generator,
                                   adapter_name=adapter_name)


def _batch_rows(args: tuple, kwargs: dict) -> int | None:
    """The batch size of a forward's inputs: axis 0 of the first array argument (or of the first array in a dict
    batch); None when there is none."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, dict):
            value = next((v for v in value.values() if isinstance(v, np.ndarray)), None)
        if isinstance(value, np.ndarray) and value.ndim >= 1:
            return int(value.shape[0])
    return None


def _check_adapter_name(adapter_name: object) -> None:
    if adapter_name == BASE_ADAPTER:
        raise ValueError(f"adapter_name {BASE_ADAPTER!r} is reserved: it means 'no adapter' in adapter_names")
    if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name or os.sep in adapter_name:
        raise ValueError(f"adapter_name must be a non-empty string without '.' or '{os.sep}' (it names parameters "
                         f"and a subfolder), got {adapter_name!r}")


def _combined_target_modules(configs: list[LoraConfig]) -> list[str] | str:
    """PEFT's target_modules for a weighted adapter: regexes joined with '|', name lists united."""
    kinds = {isinstance(c.target_modules, str) for c in configs}
    if len(kinds) > 1:
        raise ValueError("add_weighted_adapter: the adapters' target_modules mix regex strings and name lists, "
                         "which PEFT does not combine either")
    if kinds == {True}:
        return "|".join(f"({c.target_modules})" for c in configs)
    return list(dict.fromkeys(name for c in configs for name in c.target_modules))


def _max_rank(config: LoraConfig) -> int:
    return max(config.r, *config.rank_pattern.values()) if config.rank_pattern else config.r


def _weighted_factors(layer: LoraLinear, names: list[str], weights: list[float], combination_type: str,
                      new_rank: int, svd_clamp: float | None, svd_full_matrices: bool, where: str
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(A, B, head bias or None) of the weighted adapter on one layer, for a new scale of 1, in float64.

    As PEFT 0.21.2's LoraModel.add_weighted_adapter: "linear" sums sign(w s) sqrt|w s| A_i and
    sqrt|w s| B_i; "cat" stacks w s A_i over B_i, zero-padded to new_rank; "svd" keeps the top new_rank
    singular triplets of sum_i w_i s_i B_i A_i (U S on B, Vh on A), each clamped to the svd_clamp
    quantile of their entries. Head biases (lora_bias) add up exactly as sum_i w_i s_i b_i.
    """
    ads = [layer.lora_adapters[n] for n in names]
    scaled = [w * ad.scaling for w, ad in zip(weights, ads)]
    biases = [ws * ad.lora_bias.data.astype(np.float64) for ws, ad in zip(scaled, ads) if ad.lora_bias is not None]
    bias = np.sum(biases, axis=0) if biases else None
    if combination_type == "linear":
        ranks = {ad.r for ad in ads}
        if len(ranks) != 1:
            raise ValueError(f"add_weighted_adapter: combination_type='linear' needs equal ranks, but on {where} the "
                             f"adapters {names} have ranks {[ad.r for ad in ads]}; use 'cat' or 'svd'")
        a = sum(math.copysign(math.sqrt(abs(ws)), ws) * ad.lora_A.data.astype(np.float64)
                for ws, ad in zip(scaled, ads))
        b = sum(math.sqrt(abs(ws)) * ad.lora_B.data.astype(np.float64) for ws, ad in zip(scaled, ads))
        return a, b, bias
    if combination_type == "cat":
        a = np.zeros((new_rank, layer.in_features))
        b = np.zeros((layer.out_features, new_rank))
        stacked_a = np.vstack([ws * ad.lora_A.data.astype(np.float64) for ws, ad in zip(scaled, ads)])
        stacked_b = np.hstack([ad.lora_B.data.astype(np.float64) for ad in ads])
        a[:stacked_a.shape[0]] = stacked_a
        b[:, :stacked_b.shape[1]] = stacked_b
        return a, b, bias
    if new_rank > min(layer.in_features, layer.out_features):
        raise ValueError(f"add_weighted_adapter: svd rank {new_rank} exceeds min(out_features, in_features) of "
                         f"{where} ({layer.out_features}, {layer.in_features}); pass a smaller svd_rank")
    delta = sum(ws * (ad.lora_B.data.astype(np.float64) @ ad.lora_A.data.astype(np.float64))
                for ws, ad in zip(scaled, ads))
    u, s, vh = np.linalg.svd(delta, full_matrices=svd_full_matrices)
    u = u[:, :new_rank] * s[:new_rank]
    vh = vh[:new_rank, :]
    if svd_clamp is not None:
        hi = np.quantile(np.concatenate([u.ravel(), vh.ravel()]), svd_clamp)
        u = np.clip(u, -hi, hi)
        vh = np.clip(vh, -hi, hi)
    return vh, u, bias
