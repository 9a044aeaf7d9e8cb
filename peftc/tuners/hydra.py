"""Exporting a trained Hydra adapter as an exactly equivalent plain LoRA (PEFT loads it).

Per layer (derived in the shared spec, adapters.md section 3.4): the sequential branch reads the
base output, so s_s B_s A_s (W x + b) = s_s B_s (A_s W) x + s_s B_s A_s b. Stacking the branches,

    A = [A_p ; A_s W]   ((r_p + r_s), in),   B = [s_p B_p , s_s B_s]   (out, (r_p + r_s)),
    lora_alpha = r = r_p + r_s (scale 1),     lora_B.bias = s_s B_s A_s b   (lora_bias=True),

gives y = x W^T + b + x A^T B^T + lora_B.bias, Hydra's output. The file is for inference: trained
further as a LoRA, A_s W would move freely and the sequential structure would be lost.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from ..io.safetensors import save_file
from ..nn import HydraLinear, Module
from .adapter_files import WEIGHTS_NAME, adapter_parameters
from .hydra_config import HydraConfig
from .lora_config import LoraConfig
from .peft_model import PeftModel


def hydra_layers(model: Module) -> dict[str, HydraLinear]:
    """{module name: HydraLinear} of a model (a PeftModel or its base model), named by module path."""
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    return {n: m for n, m in model.named_modules() if isinstance(m, HydraLinear)}


def export_lora(model: PeftModel) -> tuple[LoraConfig, dict[str, np.ndarray]]:
    """The Hydra adapter as a plain LoRA with the same outputs: (LoraConfig, tensors by file key).

    The stacked factors are formed in float64 and rounded once to float32. ``lora_bias`` is set when
    any adapted layer has a base bias (layers without one get a zero ``lora_B.bias``).
    """
    config = getattr(model, "active_peft_config", None)
    if not isinstance(config, HydraConfig):
        raise TypeError(f"export_lora needs a PeftModel made from a HydraConfig, got config {type(config).__name__}")
    base = model.get_base_model()
    layers = hydra_layers(base)
    if any(m.merged for m in layers.values()):
        raise RuntimeError("export_lora on a merged model: call unmerge_adapter() first")
    with_bias = any(m.base.bias is not None for m in layers.values())
    tensors = {k: p.data.copy() for k, p in adapter_parameters(base, config.bias).items()}
    for name, m in layers.items():
        key = f"base_model.model.{name}"
        for suffix in m.adapter_parameters():
            del tensors[f"{key}.{suffix}"]
        a_p, b_p, a_s, b_s = (t.astype(np.float64) for t in m._branches())
        w = m.base.weight.data.astype(np.float64)
        tensors[f"{key}.lora_A.weight"] = np.vstack([a_p, a_s @ w]).astype(np.float32)
        tensors[f"{key}.lora_B.weight"] = np.hstack([m.scaling * b_p, m.seq_scaling * b_s]).astype(np.float32)
        if with_bias:
            b0 = m.base.bias.data.astype(np.float64) if m.base.bias is not None else None
            bias = m.seq_scaling * (b_s @ (a_s @ b0)) if b0 is not None else np.zeros(m.out_features)
            tensors[f"{key}.lora_B.bias"] = bias.astype(np.float32)
    rank = config.r + config.seq_r
    lora_fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(LoraConfig) if f.init}
    lora_fields.update(target_modules=sorted(layers), exclude_modules=None, layers_to_transform=None,
                       layers_pattern=None, r=rank, lora_alpha=float(rank), use_rslora=False, lora_bias=with_bias,
                       rank_pattern={}, alpha_pattern={}, init_lora_weights=True)
    return LoraConfig(**lora_fields), tensors


def save_as_lora(model: PeftModel, save_directory: str | os.PathLike) -> LoraConfig:
    """Write the Hydra adapter as a plain PEFT LoRA folder (see :func:`export_lora`); return its config."""
    config, tensors = export_lora(model)
    os.makedirs(save_directory, exist_ok=True)
    save_file(tensors, os.path.join(save_directory, WEIGHTS_NAME), {"format": "pt"})
    dataclasses.replace(config, inference_mode=True).save_pretrained(save_directory)
    return config


__all__ = ["export_lora", "hydra_layers", "save_as_lora"]
