"""PEFT-format adapter folders: adapter_config.json + adapter_model.safetensors.

The PEFT key layout lives here, beside the adapter layers and the modules_to_save wrapper it names;
:mod:`peftc.io` below knows only the generic safetensors format and atomic writes.

Tensor keys follow PEFT with the adapter name removed:
``base_model.model.<path>.lora_A.weight`` (r, in), ``<path>.lora_B.weight`` (out, r),
``<path>.lora_B.bias`` (out,) with lora_bias, ``<path>.miss_block`` for Bone / MiSS ((r, out),
(r, mini_r) or Bat's (out/r, r, r); no ``.weight`` suffix: a bare parameter in PEFT),
``<path>.base_layer.bias`` for a trained bias of an adapter layer, ``<name>.bias`` for other trained biases (bias="all"), and
``<module>.<param>`` for the trained copy of a modules_to_save module. A GPT-2 ``Conv1D`` inside such a copy
is written in Hugging Face's (in, out) layout, as PEFT writes it, and transposed back on loading (peftc holds
it (out, in), see :class:`peftc.nn.Conv1D`).
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from ..io.safetensors import load_file, read_header, save_file
from ..nn import BoneLinear, Conv1D, LoraLinear, Module, Parameter
from .modules_to_save import ModulesToSaveWrapper

WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _walk(module: Module, prefix: str = "") -> Iterator[tuple[str, Module]]:
    """Modules in order, not descending into adapter layers or modules_to_save wrappers."""
    yield prefix, module
    if isinstance(module, (LoraLinear, BoneLinear, ModulesToSaveWrapper)):
        return
    for name, child in module.named_children():
        yield from _walk(child, _join(prefix, name))


def _layer_parameters(module: LoraLinear | BoneLinear, adapter_name: str | None) -> dict[str, Parameter] | None:
    """The file-layout parameters of one adapter layer for ``adapter_name`` (None: the active adapter); None if
    the layer does not hold that adapter. A Bone / MiSS layer holds one adapter, whatever its name."""
    if isinstance(module, BoneLinear):
        return module.adapter_parameters()
    name = module.active_adapter if adapter_name is None else adapter_name
    if name not in module.lora_adapters:
        return None
    # SoraLinear / HydraLinear hold only their active adapter and add their own tensors to it
    return module.adapter_parameters() if name == module.active_adapter else module.adapter_parameters(name)


def adapter_parameters(model: Module, bias: str, adapter_name: str | None = None) -> dict[str, Parameter]:
    """{PEFT file key: Parameter} for everything an adapter file holds, for a model with adapters injected.

    ``adapter_name`` picks the adapter of layers that hold several (default: each layer's active one); the
    keys never contain the adapter name, as in PEFT's files.
    """
    out: dict[str, Parameter] = {}
    for path, module in _walk(model):
        key = PREFIX + path
        if isinstance(module, (LoraLinear, BoneLinear)):
            params = _layer_parameters(module, adapter_name)
            if params is None:
                continue
            for name, p in params.items():
                out[f"{key}.{name}"] = p
            if bias != "none" and module.base.bias is not None:
                out[f"{key}.base_layer.bias"] = module.base.bias
        elif isinstance(module, ModulesToSaveWrapper):
            copy = module.copies.get(module.active_adapter if adapter_name is None else adapter_name)
            for name, p in (copy.named_parameters() if copy is not None else ()):
                out[f"{key}.{name}"] = p
        elif bias == "all":
            p = vars(module).get("bias")
            if isinstance(p, Parameter):
                out[PREFIX + _join(path, "bias")] = p
    return out


def _hf_layout_keys(model: Module, adapter_name: str | None = None) -> set[str]:
    """The file keys (as :func:`adapter_parameters` names them) of Conv1D weights in modules_to_save copies:
    files hold them as Hugging Face's (in, out), peftc's parameter as (out, in)."""
    keys = set()
    for path, module in _walk(model):
        if isinstance(module, ModulesToSaveWrapper):
            copy = module.copies.get(module.active_adapter if adapter_name is None else adapter_name)
            for name, sub in (copy.named_modules() if copy is not None else ()):
                if isinstance(sub, Conv1D):
                    keys.add(f"{PREFIX}{path}.{_join(name, 'weight')}")
    return keys


def _peft_extra_keys(model: Module) -> set[str]:
    """Keys PEFT writes with bias="all" for the internals of a modules_to_save wrapper; not needed to load."""
    keys = set()
    for path, module in _walk(model):
        if isinstance(module, ModulesToSaveWrapper):
            for inner in ("original_module", "modules_to_save"):
                keys.update(f"{PREFIX}{path}.{inner}.{n}" for n, _ in module.original_module.named_parameters())
    return keys


def save_adapter_weights(model: Module, bias: str, save_directory: str | os.PathLike,
                         adapter_name: str | None = None) -> str:
    """Write adapter_model.safetensors (atomically) for ``adapter_name`` (default: the active adapters);
    return its path."""
    os.makedirs(save_directory, exist_ok=True)
    path = os.path.join(save_directory, WEIGHTS_NAME)
    transposed = _hf_layout_keys(model, adapter_name)
    save_file({key: np.ascontiguousarray(p.data.T) if key in transposed else p.data
               for key, p in adapter_parameters(model, bias, adapter_name).items()}, path, {"format": "pt"})
    return path


def load_adapter_weights(model: Module, bias: str, directory: str | os.PathLike,
                         adapter_name: str | None = None) -> None:
    """Copy the tensors of directory/adapter_model.safetensors into the parameters of ``adapter_name``
    (default: the active adapters).

    The file must hold every expected key with the expected shape: one error lists all missing and
    unexpected keys, another names a key and both shapes. Nothing is written into the model unless
    the whole file checks out.
    """
    path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(directory, "adapter_model.bin")):
            raise ValueError(f"{os.fspath(directory)} holds only adapter_model.bin (a pickle); peftc reads "
                             f"adapter_model.safetensors (save with safe_serialization=True)")
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {os.fspath(directory)}")
    params = adapter_parameters(model, bias, adapter_name)
    transposed = _hf_layout_keys(model, adapter_name)
    expected = {key: p.shape[::-1] if key in transposed else p.shape for key, p in params.items()}
    header, _ = read_header(path)
    for key in _peft_extra_keys(model) & set(header):
        expected[key] = header[key][1]
    tensors = load_file(path, expected)
    for key, p in params.items():
        p.data[...] = tensors[key].T if key in transposed else tensors[key]
