"""Export a LoRA adapter to llama.cpp's GGUF LoRA format (what llama.cpp's ``convert_lora_to_gguf.py`` writes).

The file holds, per adapted weight, two float32 tensors named ``<gguf weight name>.lora_a`` and
``.lora_b`` (``blk.0.attn_q.weight.lora_a``), and the keys ``general.type = "adapter"``,
``general.architecture`` (``"bert"`` or ``"gpt2"``), ``adapter.type = "lora"`` and ``adapter.lora.alpha``.
``lora_a`` is A as a NumPy (R, IC) array and ``lora_b`` is B as an (OC, R) array, the layout of
PEFT's files; GGUF lists dimensions fastest first, so llama.cpp sees A as ne = [IC, R] and B as
ne = [R, OC], which is what its loader checks against the base weight (ne = [IC, OC]).

Scale
-----
llama.cpp applies ``y += s * B (A x)`` with one ``s = alpha / R`` for the whole file (``alpha`` from
``adapter.lora.alpha``, R from each B's shape; ``s = 1`` when alpha is 0), times the user's
``--lora-scaled`` factor. It knows neither rsLoRA (``alpha / sqrt(R)``) nor PEFT's per-module
``alpha_pattern``. So the exported B is ``B * s_peftc * R / alpha_file``, where ``s_peftc`` is the
module's own scale in peftc and ``alpha_file`` is the config's ``lora_alpha``: llama.cpp's product
then equals peftc's for every module. For plain LoRA without patterns the factor is 1 and B is
written unchanged, as the official converter writes it. (With ``lora_alpha = 0`` the file says 0
and B carries ``s_peftc`` alone.)

Tensor names
------------
Module paths are taken relative to the model's encoder (the :class:`peftc.models.BertModel` in the
tree, wherever it sits: ``bert.`` under :class:`peftc.models.SentenceClassifier`, which is also the
prefix llama.cpp's converter strips) and mapped as gguf-py's ``TensorNameMap`` maps Hugging Face
BERT names:

=====================================  =====================
``encoder.layer.N.attention.self.query``   ``blk.N.attn_q``
``encoder.layer.N.attention.self.key``     ``blk.N.attn_k``
``encoder.layer.N.attention.self.value``   ``blk.N.attn_v``
``encoder.layer.N.attention.output.dense`` ``blk.N.attn_output``
``encoder.layer.N.intermediate.dense``     ``blk.N.ffn_up``
``encoder.layer.N.output.dense``           ``blk.N.ffn_down``
=====================================  =====================

GPT-2 (:class:`peftc.models.GPT2LMHeadModel`, paths from the model root, as in PEFT's keys after the
``base_model.model.`` prefix llama.cpp's converter strips) maps as gguf-py's ``TensorNameMap`` maps
``GPT2LMHeadModel`` names:

=====================================  =====================
``transformer.h.N.attn.c_attn``            ``blk.N.attn_qkv``
``transformer.h.N.attn.c_proj``            ``blk.N.attn_output``
``transformer.h.N.mlp.c_fc``               ``blk.N.ffn_up``
``transformer.h.N.mlp.c_proj``             ``blk.N.ffn_down``
=====================================  =====================

GPT-2's ``Conv1D`` layout. Hugging Face stores these weights as (IC, OC); llama.cpp's ``convert_hf_to_gguf``
transposes them, so the base GGUF tensor is the (OC, IC) matrix of a plain linear map (ne = [IC, OC]), the
same orientation as every other architecture's. A LoRA on a Conv1D (PEFT's ``fan_in_fan_out=True``) keeps
A (R, IC) and B (OC, R) in PEFT's file and in peftc (peftc's Conv1D holds the transposed (OC, IC) weight,
see :class:`peftc.nn.Conv1D`): its update is ``B A`` in that orientation already, so A and B are written
unchanged, and llama.cpp's loader checks (A ne = [IC, R], B ne = [R, OC]) pass. (llama.cpp's own
``convert_lora_to_gguf.py``, read but not run here, sends the PEFT pair through the GPT-2 class's base-weight
transpose, which swaps and transposes A and B: for ``c_attn``, ``c_fc`` and ``mlp.c_proj`` its loader then
refuses the shapes, and for the square ``attn.c_proj`` it would add the transposed update. peftc does not
copy that.) The LM head is GPT-2's token table (tied) and has no LoRA tensor name: llama.cpp's converter
refuses a LoRA on ``lm_head`` too.

What cannot be exported raises: other adapters (Bone / MiSS, SoRA before pruning, Hydra), LoRA
biases or trained base biases, modules outside the table, a merged model, and (unless
``skip_modules_to_save``) fully trained ``modules_to_save`` copies, which a LoRA file cannot hold.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from ..io.atomic import write_atomic
from ..models import BertModel, GPT2LMHeadModel
from ..nn import LoraLinear
from .lora_config import LoraConfig
from .modules_to_save import ModulesToSaveWrapper
from .peft_model import ADAPTER_LAYERS, PeftModel


@dataclass(frozen=True)
class TensorMap:
    """How one architecture's module paths become llama.cpp tensor names.

    ``model_class`` is the peftc model whose GGUF conversion llama.cpp knows; module paths are taken
    relative to it. ``blocks`` lists (module path, GGUF tensor base name) with ``{bid}`` for the
    block number.
    """

    arch: str
    model_class: type
    blocks: tuple[tuple[str, str], ...]

    def gguf_name(self, module_path: str) -> str | None:
        """``blk.N.attn_q.weight`` for ``encoder.layer.N.attention.self.query``; None for an unmapped path.

        Example:
            >>> TENSOR_MAPS["bert"].gguf_name("encoder.layer.3.intermediate.dense")
            'blk.3.ffn_up.weight'
        """
        for pattern, target in self.blocks:
            regex = "^" + re.escape(pattern).replace(re.escape("{bid}"), r"(\d+)") + "$"
            match = re.match(regex, module_path)
            if match:
                return target.format(bid=int(match.group(1))) + ".weight"
        return None


TENSOR_MAPS: dict[str, TensorMap] = {
    "bert": TensorMap("bert", BertModel, (
        ("encoder.layer.{bid}.attention.self.query", "blk.{bid}.attn_q"),
        ("encoder.layer.{bid}.attention.self.key", "blk.{bid}.attn_k"),
        ("encoder.layer.{bid}.attention.self.value", "blk.{bid}.attn_v"),
        ("encoder.layer.{bid}.attention.output.dense", "blk.{bid}.attn_output"),
        ("encoder.layer.{bid}.intermediate.dense", "blk.{bid}.ffn_up"),
        ("encoder.layer.{bid}.output.dense", "blk.{bid}.ffn_down"),
    )),
    "gpt2": TensorMap("gpt2", GPT2LMHeadModel, (
        ("transformer.h.{bid}.attn.c_attn", "blk.{bid}.attn_qkv"),
        ("transformer.h.{bid}.attn.c_proj", "blk.{bid}.attn_output"),
        ("transformer.h.{bid}.mlp.c_fc", "blk.{bid}.ffn_up"),
        ("transformer.h.{bid}.mlp.c_proj", "blk.{bid}.ffn_down"),
    )),
}


def _find_encoder(model) -> tuple[TensorMap, str]:
    """The architecture map and the module path prefix ("" or "bert.") of the one known encoder in ``model``."""
    found = [(tmap, name) for name, module in model.named_modules() for tmap in TENSOR_MAPS.values()
             if isinstance(module, tmap.model_class)]
    if not found:
        known = ", ".join(f"{t.model_class.__name__} ({t.arch})" for t in TENSOR_MAPS.values())
        raise ValueError(f"save_gguf: the model holds no network llama.cpp's GGUF LoRA format knows; "
                         f"supported: {known}")
    if len(found) > 1:
        raise ValueError(f"save_gguf: the model holds {len(found)} encoders at {[n or '<root>' for _, n in found]}; "
                         f"a GGUF LoRA file adapts one model")
    tmap, name = found[0]
    return tmap, f"{name}." if name else ""


def _check_exportable(model: PeftModel, skip_modules_to_save: bool) -> LoraConfig:
    if not isinstance(model, PeftModel):
        raise TypeError(f"save_gguf needs a peftc PeftModel, got {type(model).__name__}")
    config = model.active_peft_config
    if type(config) is not LoraConfig:
        raise TypeError(f"save_gguf exports plain LoRA; this model's adapter is {type(config).__name__} "
                        f"(peft_type {getattr(config, 'peft_type', '?')}); prune SoRA to LoRA first")
    layers = [(n, m) for n, m in model.get_base_model().named_modules() if isinstance(m, ADAPTER_LAYERS)]
    if not layers:
        raise ValueError("save_gguf: the model has no LoRA layer")
    for name, layer in layers:
        if type(layer) is not LoraLinear:
            raise TypeError(f"save_gguf exports plain LoRA; module {name!r} is a {type(layer).__name__}")
        if layer.merged:
            raise RuntimeError(f"save_gguf on a merged model (module {name!r}): call unmerge_adapter() first")
        if layer.lora_bias is not None:
            raise ValueError(f"save_gguf: module {name!r} has a LoRA bias (lora_bias=True), which llama.cpp's "
                             f"LoRA format cannot hold")
    if config.bias != "none":
        raise ValueError(f"save_gguf: bias={config.bias!r} trains base biases, which llama.cpp's LoRA format "
                         f"cannot hold; export needs bias='none'")
    wrapped = [n for n, m in model.get_base_model().named_modules() if isinstance(m, ModulesToSaveWrapper)]
    if wrapped and not skip_modules_to_save:
        raise ValueError(f"save_gguf: modules_to_save {wrapped} are trained full copies, which a LoRA file cannot "
                         f"hold; pass skip_modules_to_save=True to export the LoRA layers without them")
    return config


@dataclass(frozen=True)
class GgufLora:
    """What a GGUF LoRA file holds: ``arch``, ``alpha`` (float32-exact), ``tensors`` {GGUF weight name:
    (A (R, IC), B_eff (OC, R))} and ``modules`` {peftc module path: GGUF weight name}."""

    arch: str
    alpha: float
    tensors: dict[str, tuple[np.ndarray, np.ndarray]]
    modules: dict[str, str]


def gguf_lora_tensors(model: PeftModel, skip_modules_to_save: bool = False) -> GgufLora:
    """The tensors and keys :func:`save_gguf` writes for a LoRA PeftModel, without needing ``gguf``.

    ``B_eff = B * s * R / alpha`` (``B * s`` when alpha is 0) with ``s`` the module's peftc scale,
    so that llama.cpp's ``alpha / R * B_eff A`` equals peftc's ``s * B A`` (see the module docstring).
    Raises ``TypeError`` / ``ValueError`` / ``RuntimeError`` for anything the format cannot hold.

    Example:
        >>> # lora = gguf_lora_tensors(peft_model)
        >>> # a, b = lora.tensors["blk.0.attn_q.weight"]; delta = lora.alpha / a.shape[0] * b @ a
    """
    config = _check_exportable(model, skip_modules_to_save)
    tmap, prefix = _find_encoder(model.get_base_model())
    alpha = float(np.float32(config.lora_alpha))  # the file stores float32; llama.cpp divides that
    tensors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    modules: dict[str, str] = {}
    unknown: list[str] = []
    for name, layer in model.get_base_model().named_modules():
        if not isinstance(layer, LoraLinear):
            continue
        gguf_name = tmap.gguf_name(name[len(prefix):]) if name.startswith(prefix) else None
        if gguf_name is None:
            unknown.append(name)
            continue
        factor = layer.scaling * layer.r / alpha if alpha != 0 else layer.scaling
        a = np.ascontiguousarray(layer.lora_A.data, dtype=np.float32)
        b = np.ascontiguousarray(layer.lora_B.data.astype(np.float64) * factor, dtype=np.float32)
        tensors[gguf_name] = (a, b)
        modules[name] = gguf_name
    if unknown:
        raise ValueError(f"save_gguf: LoRA modules {unknown} have no llama.cpp {tmap.arch!r} tensor name; mapped "
                         f"are (under {prefix or '<root>'!r}): {[p for p, _ in tmap.blocks]}")
    return GgufLora(tmap.arch, alpha, tensors, modules)


def save_gguf(model: PeftModel, path: str | os.PathLike, *, skip_modules_to_save: bool = False) -> dict[str, str]:
    """Write ``model``'s LoRA adapter to ``path`` as a llama.cpp GGUF LoRA file, atomically.

    Needs the ``gguf`` package (``pip install peftc[gguf]``). The effective scale of each module
    (rsLoRA, ``alpha_pattern``, ``rank_pattern``) is folded into its B (module docstring), so
    ``llama-embedding -m minilm.gguf --lora adapter.gguf`` (or ``llama-export-lora``) applies what peftc's
    merge applies. Returns {peftc module path: GGUF weight name}. Raises ``TypeError`` /
    ``ValueError`` for a model the format cannot hold, and ``ImportError`` without ``gguf``.

    Example:
        >>> # model = get_peft_model(SentenceClassifier(bert, 41), LoraConfig(r=8, target_modules=["query", "value"]))
        >>> # ... train ...
        >>> # save_gguf(model, "minilm-lora.gguf")
        >>> # -> {'bert.encoder.layer.0.attention.self.query': 'blk.0.attn_q.weight', ...}
    """
    lora = gguf_lora_tensors(model, skip_modules_to_save)
    try:
        import gguf
    except ImportError as exc:
        raise ImportError("save_gguf needs the gguf package: pip install 'peftc[gguf]' (or pip install gguf)") from exc

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, lora.arch)
        try:
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, lora.alpha)
            for name, (a, b) in lora.tensors.items():
                writer.add_tensor(f"{name}.lora_a", a)
                writer.add_tensor(f"{name}.lora_b", b)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    write_atomic(path, write)
    return dict(lora.modules)
