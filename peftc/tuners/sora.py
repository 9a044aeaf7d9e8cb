"""Training and pruning SoRA adapters: the gate optimizer, the sparsifying schedule, reports, prune.

How SoRA trains in peftc
------------------------
The objective is ``L_task + lambda1 * sum|g| / P`` (P: all gate entries). The penalty's
subgradient ``lambda1 * sign(g) / P`` (0 at g = 0) is added by each :class:`~peftc.nn.SoraLinear`
backward, so one global gradient clip sees it, as in the official code. :class:`SoraTrainer` is
:class:`peftc.train.Trainer` with one change: its optimizer is :class:`SparseAdamW`, AdamW over two
parameter groups (the rest at the main rate and weight decay; the gates at ``sparse_lr`` with no
weight decay), whose gate group takes a proximal step after each Adam update:

* paper (default): ``g <- S_tau(g)``, the soft threshold ``sign(g) max(|g| - tau, 0)`` with
  ``tau = lr_t * xi``, lr_t the gate rate of that step (after warm-up / decay);
* ``sora_code_compat=True`` (the official ``SparseAdamW``): ``tau = xi``, not multiplied by the
  rate, and three successive masked writes that zero every ``|g| < 2 tau`` (except ``|g| == tau``)
  and shrink the rest by tau.

Remaining differences from the official code, kept on purpose: the gate Adam is torch's AdamW
(eps added after the bias correction; transformers' AdamW adds it before, with eps 1e-6), and
both groups share one schedule object (official: two identical linear schedules).

The sparsifying schedule (paper Algorithm 1) is :func:`train_sora_schedule`: stage 0 at xi_0,
then one stage per further xi of :func:`xi_schedule`, each evaluated and its adapter kept. The
official script hands the same, already decayed optimizer and scheduler to every stage, so all
later stages run at lr = 0 and only the threshold acts; ``reuse_optimizer=True`` copies that.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from .. import functional as F
from ..io.safetensors import save_file
from ..nn import Module, SoraLinear
from ..optim import AdamW
from ..schedule import LinearWarmupSchedule
from ..train import Trainer, TrainingConfig
from .adapter_files import WEIGHTS_NAME, adapter_parameters
from .lora_config import LoraConfig
from .peft_model import PeftModel
from .sora_config import SoraConfig


# -- the gate optimizer ----------------------------------------------------------------------------
class SparseAdamW(AdamW):
    """AdamW whose param groups with a ``"sparse_xi"`` entry take SoRA's proximal step after the update.

    Group keys: ``sparse_xi`` (the threshold xi >= 0) and ``sora_code_compat`` (False: tau = lr * xi
    and the soft threshold; True: tau = xi and the official double threshold).
    """

    def step(self) -> None:
        super().step()
        for g in self.param_groups:
            if "sparse_xi" not in g:
                continue
            compat = bool(g.get("sora_code_compat", False))
            tau = float(g["sparse_xi"]) if compat else float(g["lr"]) * float(g["sparse_xi"])
            if compat and tau <= 0.0:
                continue  # the official step skips the threshold when xi is 0
            for p in g["params"]:
                if p.grad is not None:
                    F.sora_gate_threshold(p.data, tau, compat)


def sora_layers(model: Module) -> dict[str, SoraLinear]:
    """{module name: SoraLinear} of a model (a PeftModel or its base model), named by module path: the layers
    holding their active adapter (with several SoRA adapters, those of the active one)."""
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    return {n: m for n, m in model.named_modules() if isinstance(m, SoraLinear) and m.active_adapter in m.lora_adapters}


def _sora_config(model: Module) -> SoraConfig:
    config = getattr(model, "active_peft_config", None)
    if not isinstance(config, SoraConfig):
        raise TypeError(f"expected a PeftModel made from a SoraConfig, got {type(model).__name__} with config "
                        f"{type(config).__name__}")
    return config


class SoraTrainer(Trainer):
    """:class:`peftc.train.Trainer` for a SoRA PeftModel: gates in their own :class:`SparseAdamW` group.

    Everything else (data order, clipping, schedule, checkpoints and exact resume) is the Trainer's;
    the threshold xi sits in the gate group, so checkpoints keep it. ``xi`` overrides the config's
    ``sparse_lambda_2``.
    """

    def __init__(self, model: PeftModel, config: TrainingConfig, train_data: dict[str, np.ndarray],
                 eval_data: dict[str, np.ndarray] | None = None, loss_fn=None, xi: float | None = None) -> None:
        sora = _sora_config(model)
        super().__init__(model, config, train_data, eval_data, loss_fn)
        use_sparse_adamw(self, [layer.lora_gate for layer in sora_layers(model).values()], sora, xi)

    @property
    def gate_group(self) -> dict:
        return self.optimizer.param_groups[-1]

    def set_threshold(self, xi: float) -> None:
        """Set the proximal threshold xi for the following steps."""
        if not (np.isfinite(xi) and xi >= 0):
            raise ValueError(f"xi must be finite and >= 0, got {xi}")
        self.gate_group["sparse_xi"] = float(xi)


def use_sparse_adamw(trainer: Trainer, gates: list, sora: SoraConfig, xi: float | None = None) -> None:
    """Give ``trainer`` SoRA's optimizer: its trainable ``gates`` in a :class:`SparseAdamW` group of their own
    (``sora.sparse_lr``, no weight decay, threshold ``xi`` or ``sora.sparse_lambda_2``), the rest as before, and
    a new schedule of the same shape. :class:`SoraTrainer` does this for the model's active adapter;
    :class:`peftc.MultiAdapterTrainer` for each SoRA adapter it trains.

    Example:
        >>> import numpy as np
        >>> from peftc import SoraConfig, Trainer, TrainingConfig, get_peft_model
        >>> from peftc.models import BertConfig, BertModel, SentenceClassifier
        >>> from peftc.tuners.sora import sora_layers, use_sparse_adamw
        >>> bert = BertModel.from_config(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
        ...                                         num_attention_heads=2, intermediate_size=16))
        >>> sora_config = SoraConfig(r=4, target_modules=["query", "value"], sparse_lr=0.1)
        >>> model = get_peft_model(SentenceClassifier(bert, num_labels=2), sora_config)
        >>> data = {"input_ids": np.array([[2, 7, 3], [2, 3, 4]]), "attention_mask": np.ones((2, 3), np.int64),
        ...         "labels": np.array([0, 1])}
        >>> trainer = Trainer(model, TrainingConfig(max_steps=2, progress=False), data)
        >>> use_sparse_adamw(trainer, [m.lora_gate for m in sora_layers(model).values()], sora_config)
        >>> [(len(g["params"]), g["lr"]) for g in trainer.optimizer.param_groups]   # the rest, then the 2 gates
        [(4, 0.001), (2, 0.1)]
    """
    config = trainer.config
    gate_ids = {id(g) for g in gates}
    params = [p for p in trainer.params if id(p) in gate_ids]
    rest = [p for p in trainer.params if id(p) not in gate_ids]
    if not params:
        raise ValueError("SoraTrainer: the model has no trainable SoRA gate")
    gate_group = {"params": params, "lr": sora.sparse_lr if sora.sparse_lr is not None else config.learning_rate,
                  "weight_decay": 0.0, "sparse_xi": float(sora.sparse_lambda_2 if xi is None else xi),
                  "sora_code_compat": sora.sora_code_compat}
    groups = ([{"params": rest}] if rest else []) + [gate_group]
    # the groups must list parameters in trainer.params order for checkpoints: rest first, then gates
    trainer.named_params = [(n, p) for n, p in trainer.named_params if id(p) not in gate_ids] + \
                           [(n, p) for n, p in trainer.named_params if id(p) in gate_ids]
    trainer.optimizer = SparseAdamW(groups, lr=config.learning_rate, betas=config.betas, eps=config.eps,
                                    weight_decay=config.weight_decay)
    trainer.scheduler = LinearWarmupSchedule(trainer.optimizer, trainer.scheduler.num_warmup_steps,
                                             trainer.scheduler.num_training_steps)


# -- the sparsifying schedule ----------------------------------------------------------------------
def xi_schedule(kind: str, xi0: float, xi_max: float, n: int) -> list[float]:
    """The thresholds of the sparsifying scheduler (official ``_build_lambda_list``).

    linear: linspace(xi0, xi_max, n); log_linear: log(linspace(e^xi0, e^xi_max, n));
    exp_linear: exp(linspace(log xi0, log xi_max, n)) (needs xi0, xi_max > 0).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if kind == "linear":
        values = np.linspace(xi0, xi_max, n)
    elif kind == "log_linear":
        values = np.log(np.linspace(np.exp(xi0), np.exp(xi_max), n))
    elif kind == "exp_linear":
        if xi0 <= 0 or xi_max <= 0:
            raise ValueError(f"exp_linear needs xi0 > 0 and xi_max > 0, got {xi0}, {xi_max}")
        values = np.exp(np.linspace(np.log(xi0), np.log(xi_max), n))
    else:
        raise ValueError(f"schedule kind must be 'linear', 'log_linear' or 'exp_linear', got {kind!r}")
    return [float(v) for v in values]


def train_sora_schedule(model: PeftModel, config: TrainingConfig, train_data: dict[str, np.ndarray],
                        eval_data: dict[str, np.ndarray] | None = None, stage_epochs: int = 15, loss_fn=None,
                        reuse_optimizer: bool = False) -> list[dict]:
    """Paper Algorithm 1: train at xi_0 (``config`` as given), then ``stage_epochs`` epochs per further xi.

    The xi values come from the model's SoraConfig (``lambda_schedule``, ``sparse_lambda_2``,
    ``max_lambda``, ``lambda_num``; no schedule means one stage). Each stage gets a fresh
    SoraTrainer (fresh AdamW state and warm-up / decay) unless ``reuse_optimizer`` (the official
    behaviour, see the module docstring). Returns one dict per stage: ``xi``, ``history``,
    ``eval`` (or None), ``active_ranks`` and ``adapter`` (a copy of the adapter tensors by file key).
    """
    sora = _sora_config(model)
    xis = ([float(sora.sparse_lambda_2)] if sora.lambda_schedule is None
           else xi_schedule(sora.lambda_schedule, sora.sparse_lambda_2, sora.max_lambda, sora.lambda_num))
    stages, first = [], None
    for k, xi in enumerate(xis):
        cfg = config if k == 0 else dataclasses.replace(config, num_epochs=stage_epochs, max_steps=None,
                                                        output_dir=None)
        trainer = SoraTrainer(model, cfg, train_data, eval_data, loss_fn, xi=xi)
        if reuse_optimizer and first is not None:
            trainer.optimizer, trainer.scheduler = first.optimizer, first.scheduler
            trainer.set_threshold(xi)
        first = first or trainer
        history = trainer.train()
        stages.append({"xi": xi, "history": history,
                       "eval": trainer.evaluate() if eval_data is not None else None,
                       "active_ranks": {n: m.active_ranks() for n, m in sora_layers(model).items()},
                       "adapter": {k2: p.data.copy() for k2, p in
                                   adapter_parameters(model.get_base_model(), sora.bias).items()}})
    return stages


# -- reports ---------------------------------------------------------------------------------------
def sparsity_report(model: Module) -> dict:
    """Active ranks per layer and parameter counts.

    ``layers``: {name: {"active", "r_max", "in_features", "out_features"}}; ``retained_params``:
    sum of active * (in + out) (what the pruned LoRA holds); ``full_params``: the same at r_max;
    ``active_fraction``: active gates over all gates.
    """
    layers = sora_layers(model)
    if not layers:
        raise ValueError("sparsity_report: the model has no SoRA layer")
    rows = {n: {"active": m.active_ranks(), "r_max": m.r, "in_features": m.in_features,
                "out_features": m.out_features} for n, m in layers.items()}
    retained = sum(v["active"] * (v["in_features"] + v["out_features"]) for v in rows.values())
    full = sum(v["r_max"] * (v["in_features"] + v["out_features"]) for v in rows.values())
    gates = sum(v["r_max"] for v in rows.values())
    return {"layers": rows, "retained_params": retained, "full_params": full,
            "active_fraction": sum(v["active"] for v in rows.values()) / gates}


def sparsity_penalty(model: Module) -> float:
    """The L1 term lambda1 * sum|g| / P of the training objective (not in the Trainer's logged loss)."""
    return float(sum(m.l1_weight * np.abs(m.lora_gate.data.astype(np.float64)).sum()
                     for m in sora_layers(model).values()))


# -- pruning to a plain LoRA -----------------------------------------------------------------------
def pruned_lora(model: PeftModel) -> tuple[LoraConfig, dict[str, np.ndarray]]:
    """The trained SoRA adapter as a plain LoRA with identical outputs: (LoraConfig, tensors by file key).

    Per layer, K = the nonzero gates: A' = A[K], B' = B[:, K] diag(g_K), rank_pattern r' = |K| and
    alpha_pattern chosen so alpha'/r' (alpha'/sqrt(r') with rsLoRA) equals the SoRA scale alpha/r_max.
    Layers with no active gate are left out of target_modules (PEFT rejects r = 0). Other tensors of
    the adapter file (modules_to_save, trained biases) are carried over.
    """
    sora = _sora_config(model)
    if any(m.merged for m in sora_layers(model).values()):
        raise RuntimeError("pruned_lora on a merged model: call unmerge_adapter() first")
    base = model.get_base_model()
    tensors = {k: p.data.copy() for k, p in adapter_parameters(base, sora.bias).items()}
    targets, ranks, alphas = [], {}, {}
    for name, layer in sora_layers(base).items():
        key = f"base_model.model.{name}"
        for suffix in layer.adapter_parameters():
            del tensors[f"{key}.{suffix}"]
        keep = np.flatnonzero(layer.lora_gate.data)
        if keep.size == 0:
            continue
        targets.append(name)
        ranks[name] = int(keep.size)
        alphas[name] = layer.scaling * (np.sqrt(keep.size) if layer.use_rslora else keep.size)
        tensors[f"{key}.lora_A.weight"] = np.ascontiguousarray(layer.lora_A.data[keep])
        tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(layer.gated_B()[:, keep])
    if not targets:
        raise ValueError("every SoRA gate is zero: the pruned adapter is empty and PEFT rejects rank 0")
    lora_fields = {f.name: getattr(sora, f.name) for f in dataclasses.fields(LoraConfig) if f.init}
    top = max(ranks.values())
    lora_fields.update(target_modules=targets, exclude_modules=None, layers_to_transform=None, layers_pattern=None,
                       r=top, lora_alpha=float(alphas[max(ranks, key=ranks.get)]), rank_pattern=ranks,
                       alpha_pattern=alphas, lora_bias=False, init_lora_weights=True)
    return LoraConfig(**lora_fields), tensors


def save_pruned(model: PeftModel, save_directory: str | os.PathLike) -> LoraConfig:
    """Write the pruned adapter as a plain PEFT LoRA folder (PEFT and peftc load it); return its config."""
    config, tensors = pruned_lora(model)
    os.makedirs(save_directory, exist_ok=True)
    save_file(tensors, os.path.join(save_directory, WEIGHTS_NAME), {"format": "pt"})
    dataclasses.replace(config, inference_mode=True).save_pretrained(save_directory)
    return config


def prune(model: PeftModel) -> PeftModel:
    """Replace the SoRA layers by their pruned LoRA (in place on the base model); return the LoRA PeftModel."""
    config, tensors = pruned_lora(model)
    lora = PeftModel(model.unload(), config)
    for key, p in adapter_parameters(lora.get_base_model(), config.bias).items():
        p.data[...] = tensors[key]
    lora.train(model.training)
    return lora


__all__ = ["SoraTrainer", "SparseAdamW", "prune", "pruned_lora", "save_pruned",
           "sora_layers", "sparsity_penalty", "sparsity_report", "train_sora_schedule", "xi_schedule"]
