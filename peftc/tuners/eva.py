"""EVA: data-driven LoRA initialisation from the principal directions of each layer's inputs.

    config = LoraConfig(r=8, target_modules=[...], init_lora_weights="eva", eva_config=EvaConfig(rho=2.0))
    model = get_peft_model(base, config)
    initialize_lora_eva_weights(model, batches)        # A <- top right-singular vectors; ranks redistributed

The steps follow PEFT's ``peft/tuners/lora/eva.py`` (same API, same rank bookkeeping):

1. One forward pass hashes every target layer's input rows; layers whose inputs are identical
   (query/key/value of one block) share one incremental PCA, which keeps the largest component
   count of the group. The rows are kept until the pass ends, and this pass is also step 2 on the
   first batch (PEFT runs a second forward on that batch for it, so it needs one pass more).
2. Batches are cycled. Each batch's rows (padding, and with ``use_label_mask`` label-masked
   positions, removed) are folded into each unconverged layer's PCA (a batch with fewer rows than
   components is skipped for that layer). A component has converged when its cosine similarity to
   the previous step's is >= tau; a layer stops updating once all components it is currently
   assigned have converged, and resumes if its assignment grows.
3. After every batch the budget sum(r_l) is redistributed: all (layer, explained-variance-ratio)
   pairs, at most round(rho * r_l) per layer, are sorted (descending, ties in layer order) and the
   top sum(r_l) are kept. The owner of a shared PCA takes the largest count of its group.
4. Stop when every layer has converged. A_l = the first r'_l components (divided by sqrt of their
   singular values with ``whiten``); layers with r'_l = 0 lose their adapter.

Each forward pass is cut short (``stop_forward_early``) once every layer still updating has received
its input: the model's output is never used, so the rest of the pass only costs time. The states
see exactly the rows they would see otherwise; this is skipped when a target layer runs more than
once per pass. A model may also run on the kept tokens only (``BertModel(..., skip_padding=True)``
in ``forward_fn``): its layers then receive (M, IC) rows, which are used as they are.

Differences from PEFT, on purpose: each step's top components are exact, from the eigen-decomposition
of the stacked matrix's smaller Gram matrix (PEFT uses a seeded randomised ``svd_lowrank``, an
approximation of them, whose error can push a component's cosine across tau a batch earlier or later,
so on real data a layer with nearly equal trailing singular values may stop at a different batch); with ``whiten`` each layer's rows are divided once
(PEFT divides a view shared by the layers of a group in place, so q/k/v end up divided 1, 2, 3
times); a (B,) label array (sequence classification) is not used as a token mask.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import cycle, islice
from typing import Any

import numpy as np

from ..nn import Linear, LoraLinear, Module
from .lora_config import LoraConfig
from .incremental_pca import IncrementalPCA, partial_fit_many
from .matching import find_target_modules, get_pattern_key, resolve_target_modules

# PEFT caps unusually large rho at (largest parameter dimension) // r
RHO_CEILING = 1000
# PEFT condenses target_modules to suffixes from this many modules on
MIN_TARGET_MODULES_FOR_OPTIMIZATION = 20


# -- the default callables (PEFT's language-modelling defaults) ------------------------------------------

def forward_fn_dict(model: Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a dict batch, ``model(inputs)`` otherwise."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def prepare_model_inputs_fn_language_modeling(model_input: Any, peft_config: LoraConfig) -> np.ndarray | None:
    """The boolean token mask of a batch: ``attention_mask`` (all True if absent), and with
    ``use_label_mask`` also ``labels != label_mask_value`` when labels are per token. None for a
    batch that is not a dict (every row is used)."""
    if not isinstance(model_input, Mapping):
        return None
    mask = model_input.get("attention_mask")
    if mask is None:
        ref = model_input.get("input_ids")
        if ref is None:
            return None
        mask = np.ones(np.shape(ref), dtype=bool)
    mask = np.asarray(mask).astype(bool)
    eva = peft_config.eva_config
    labels = model_input.get("labels")
    if eva is not None and eva.use_label_mask and labels is not None and np.shape(labels) == mask.shape:
        mask = mask & (np.asarray(labels) != eva.label_mask_value)
    return mask


def prepare_layer_inputs_fn_language_modeling(layer_input: Any, model_input: Any, layer_name: str) -> np.ndarray:
    """The rows (M, IC) of a layer's input kept by the token mask ``model_input`` (or all rows).

    The input is (..., IC) shaped like the mask plus features, (mask.size, IC) flattened, or (M, IC)
    with M the mask's count: the rows of a model that ran on the kept tokens only (in row-major order
    of the mask), which are taken as they are.
    """
    if isinstance(layer_input, (tuple, list)):
        layer_input = layer_input[0]
    if not isinstance(layer_input, np.ndarray):
        raise TypeError(f"EVA: layer {layer_name!r} received a {type(layer_input).__name__}; pass a "
                        f"prepare_layer_inputs_fn that returns its (rows, features) array")
    if layer_input.dtype != np.float32:
        raise TypeError(f"EVA: layer {layer_name!r} input must be float32, got {layer_input.dtype}")
    mask = model_input
    if mask is None:
        rows = layer_input.reshape(-1, layer_input.shape[-1])
    elif layer_input.shape[:-1] == mask.shape:
        rows = layer_input[mask]
    elif layer_input.ndim == 2 and layer_input.shape[0] == mask.size:
        rows = layer_input[mask.reshape(-1)]
    elif layer_input.ndim == 2 and layer_input.shape[0] == np.count_nonzero(mask):
        # a model that skips padding (BertModel's skip_padding) passes the kept rows already
        rows = layer_input
    else:
        raise ValueError(f"EVA: layer {layer_name!r} input has shape {layer_input.shape}, which does not match "
                         f"the token mask {mask.shape}")
    return np.ascontiguousarray(rows)


# -- per-layer state ----------------------------------------------------------------------------------------

class _SvdState:
    """The incremental PCA of one layer (or one group of layers with identical inputs)."""

    def __init__(self, name: str, n_components: int, n_features: int, tau: float) -> None:
        self.name = name
        self.pca = IncrementalPCA(n_components, n_features)
        self.tau = tau
        self.converged = np.zeros(n_components, dtype=bool)
        self.skipped = 0


def _update_states(updates: list[tuple[_SvdState, np.ndarray]]) -> None:
    """Fold each (state, rows) into its PCA: distinct states side by side (each on one thread), the
    updates of a state listed more than once in their order. A batch with fewer rows than the
    state's components is skipped for it."""
    rounds: list[list[tuple[_SvdState, np.ndarray]]] = []
    count: Counter = Counter()
    for state, rows in updates:
        if rows.shape[0] < state.pca.n_components:
            state.skipped += 1
            continue
        if count[state.name] == len(rounds):
            rounds.append([])
        rounds[count[state.name]].append((state, rows))
        count[state.name] += 1
    for group in rounds:
        had_state = [state.pca.fitted for state, _ in group]
        partial_fit_many([state.pca for state, _ in group], [rows for _, rows in group],
                         labels=[f"EVA: layer {state.name!r}" for state, _ in group])
        for (state, _), had in zip(group, had_state):
            if had:
                state.converged = state.pca.cosine_ >= state.tau


@contextlib.contextmanager
def _capture_inputs(model: Module, names: list[str], callback: Callable[[str, Any], None]) -> Iterator[None]:
    """Call ``callback(name, input)`` before each forward of the named modules (an instance-level
    forward override, removed on exit)."""
    patched = []
    try:
        for name in names:
            module = model.get_submodule(name)
            original = module.forward
            own = module.__dict__.get("forward")  # an instance-level forward set by someone else

            def forward(*args, _name=name, _original=original, **kwargs):
                callback(_name, args[0] if len(args) == 1 else args)
                return _original(*args, **kwargs)

            module.forward = forward
            patched.append((module, own))
        yield
    finally:
        for module, own in patched:
            if own is None:
                del module.forward
            else:
                module.forward = own


class _ForwardDone(BaseException):
    """Raised by a hook to end a forward pass whose remaining layers are not needed. A BaseException
    so that a forward_fn catching Exception does not swallow it."""


def _run_forward(forward_fn: Callable[[Module, Any], Any], model: Module, batch: Any) -> None:
    try:
        forward_fn(model, batch)
    except _ForwardDone:
        pass


def _hash_rows(rows: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(rows.shape).encode())
    h.update(rows.tobytes())
    return h.hexdigest()


def _rank_distribution(states: dict[str, _SvdState], layer_owner: dict[str, str], shared: dict[str, str],
                       budget: int, max_components: dict[str, int]) -> dict[str, int]:
    """Ranks per layer: the top ``budget`` explained-variance ratios over all layers."""
    keys, values = [], []
    for layer, owner in layer_owner.items():
        evr = states[owner].pca.explained_variance_ratio_[:max_components[layer]]
        keys.extend([layer] * len(evr))
        values.append(evr)
    order = np.argsort(-np.concatenate(values), kind="stable")
    counts = Counter(keys[i] for i in order[:budget])
    ranks = {layer: counts.get(layer, 0) for layer in layer_owner}
    for layer, owner in shared.items():
        # the owner's converged prefix must cover every layer reading its components
        if ranks[owner] < ranks[layer]:
            ranks[owner], ranks[layer] = ranks[layer], ranks[owner]
    return ranks


def _eva_targets(model: Module, peft_config: LoraConfig, is_peft: bool) -> tuple[Module, list[str]]:
    if is_peft:
        base = model.get_base_model()
        return base, [n for n, m in base.named_modules() if isinstance(m, LoraLinear)]
    config = peft_config
    if config.target_modules is None or isinstance(config.target_modules, str):
        config = dataclasses.replace(config, target_modules=resolve_target_modules(model, config))
    return model, find_target_modules(model, config)


def _in_features(module: Module) -> int:
    if isinstance(module, (Linear, LoraLinear)):
        return module.in_features
    raise TypeError(f"EVA supports peftc.nn.Linear layers, got {type(module).__name__}")


def _check_batches(dataloader: Iterable) -> int:
    if isinstance(dataloader, Iterator):
        raise TypeError("EVA cycles over the batches several times: pass a list or another re-iterable "
                        "collection of batches, not an iterator or generator")
    try:
        count = len(dataloader)  # type: ignore[arg-type]
    except TypeError:
        count = sum(1 for _ in dataloader)
    if count == 0:
        raise ValueError("EVA: the dataloader holds no batches")
    return count


def get_eva_state_dict(model: Module, dataloader: Iterable, peft_config: LoraConfig | None = None,
                       forward_fn: Callable[[Module, Any], Any] | None = forward_fn_dict,
                       prepare_model_inputs_fn: Callable | None = prepare_model_inputs_fn_language_modeling,
                       prepare_layer_inputs_fn: Callable | None = prepare_layer_inputs_fn_language_modeling,
                       adapter_name: str = "default", show_progress_bar: bool = True,
                       stop_forward_early: bool = True) -> dict[str, np.ndarray]:
    """EVA's components per target layer: ``{module name: A (r'_l, IC)}``, r'_l possibly 0.

    ``model`` is a :class:`~peftc.tuners.PeftModel` (its LoRA layers are the targets and the adapter
    is disabled meanwhile) or a plain model with ``peft_config`` naming the targets.
    ``dataloader`` is a re-iterable collection of batches (a list of dicts, say); each is run as
    ``forward_fn(model, batch)``. ``prepare_model_inputs_fn(batch, peft_config)`` gives what
    ``prepare_layer_inputs_fn(layer_input, that, layer_name)`` needs to return the (M, IC) rows
    of one layer; the defaults drop padding (``attention_mask``) and label-masked tokens.
    ``stop_forward_early`` ends each pass once the last layer still updating has received its input
    (set it to False if ``forward_fn`` must run to completion); the result is the same either way.
    On padded batches a :class:`~peftc.models.BertModel` is several times cheaper per pass with
    ``forward_fn=lambda m, b: m(b["input_ids"], b["attention_mask"], skip_padding=True)``: its layers
    then compute the real tokens only, and the components are those of the padded forward.
    """
    is_peft = hasattr(model, "peft_config") and hasattr(model, "get_base_model")
    if peft_config is None:
        if not is_peft:
            raise ValueError("peft_config is required if model is not a PeftModel")
        peft_config = model.peft_config[adapter_name]
    if peft_config.eva_config is None:
        raise ValueError("EVA needs peft_config.eva_config (set init_lora_weights='eva' or pass an EvaConfig)")
    eva = peft_config.eva_config
    eva.validate()
    forward_fn = forward_fn or forward_fn_dict
    layer_fn = prepare_layer_inputs_fn or prepare_layer_inputs_fn_language_modeling
    n_batches = _check_batches(dataloader)

    root, targets = _eva_targets(model, peft_config, is_peft)
    rho = eva.rho
    if rho > RHO_CEILING:
        max_dim = max(max(p.shape) for p in model.parameters())
        rho = min(rho, max_dim // peft_config.r)
    max_components: dict[str, int] = {}
    n_features: dict[str, int] = {}
    budget = 0
    for name in targets:
        r = peft_config.rank_pattern.get(get_pattern_key(peft_config.rank_pattern, name), peft_config.r)
        max_components[name] = round(r * rho)
        n_features[name] = _in_features(root.get_submodule(name))
        budget += r

    def model_inputs(batch: Any) -> Any:
        return prepare_model_inputs_fn(batch, peft_config) if prepare_model_inputs_fn is not None else batch

    ctx = model.disable_adapter() if is_peft else contextlib.nullcontext()
    training = model.training
    model.eval()
    try:
        with ctx:
            # 1. which layers see identical inputs
            first = next(iter(dataloader))
            current = {"mask": model_inputs(first)}
            hashes: dict[str, list[str]] = {name: [] for name in targets}
            call_order: list[str] = []

            # each distinct input's rows (a copy: the model may reuse its buffers later in the pass),
            # so that this pass is also the first batch's step of 2. for the layers that own a PCA
            rows_by_hash: dict[str, np.ndarray] = {}

            def hash_hook(name: str, layer_input: Any) -> None:
                call_order.append(name)
                rows = layer_fn(layer_input, current["mask"], name)
                key = _hash_rows(rows)
                hashes[name].append(key)
                if key not in rows_by_hash:
                    rows_by_hash[key] = np.array(rows, copy=True)

            with _capture_inputs(root, targets, hash_hook):
                forward_fn(model, first)
            missing = [n for n in targets if not hashes[n]]
            if missing:
                raise ValueError(f"EVA: target layers {missing} did not run in the forward pass")
            groups: dict[str, list[str]] = {}
            for name in targets:
                groups.setdefault(hashes[name][0], []).append(name)
            shared = {member: g[0] for g in groups.values() if len(g) > 1 for member in g[1:]}
            for g in groups.values():
                top = max(max_components[n] for n in g)
                for n in g:
                    max_components[n] = top
            owners = [n for n in targets if n not in shared]
            for name in owners:
                if max_components[name] > n_features[name]:
                    raise ValueError(
                        f"EVA: layer {name!r} would keep round(r * rho) = {max_components[name]} components but has "
                        f"only {n_features[name]} input features; lower r or rho (rho={eva.rho})")
            states = {name: _SvdState(name, max_components[name], n_features[name], eva.tau)
                      for name in owners if max_components[name] > 0}
            layer_owner = {**{n: n for n in owners}, **shared}

            # 2.-3. incremental PCA until every layer has converged
            active = set(states)
            # position of each owner in the forward pass; early stops need each target to run once
            position = {name: i for i, name in enumerate(n for n in call_order if n in states)}
            stop_early = stop_forward_early and len(call_order) == len(targets)
            current["last"] = None

            # each pass's rows, folded in once the pass ends: the layers' updates then run side by side
            pending: list[tuple[_SvdState, np.ndarray]] = []

            def svd_hook(name: str, layer_input: Any) -> None:
                if name in active:
                    # a copy: the model may reuse its buffers later in the pass
                    pending.append((states[name], np.array(layer_fn(layer_input, current["mask"], name), copy=True)))
                    if stop_early and name == current["last"]:
                        raise _ForwardDone

            converged = {name: False for name in states}
            ranks = dict(max_components)

            def after_step() -> bool:
                """Redistribute the ranks once every PCA has data; False while some have none."""
                nonlocal ranks
                unfitted = [n for n, s in states.items() if not s.pca.fitted]
                if unfitted:
                    if steps >= n_batches:
                        name = unfitted[0]
                        raise ValueError(
                            f"EVA: layer {name!r} got fewer tokens than its {max_components[name]} components "
                            f"(round(r * rho)) in every batch; use larger batches or lower r or rho")
                    return False
                ranks = _rank_distribution(states, layer_owner, shared, budget, max_components)
                return True

            # the first batch's step: every input the owner received in the hashing pass, in order
            _update_states([(state, rows_by_hash[key]) for name, state in states.items() for key in hashes[name]])
            rows_by_hash.clear()
            steps = 1
            after_step()
            batches: Iterable = islice(cycle(dataloader), 1, None)
            bar = None
            if show_progress_bar:
                from tqdm.auto import tqdm
                bar = tqdm(batches, leave=False, desc="EVA")
                batches = bar
            with _capture_inputs(root, owners, svd_hook):
                for batch in batches:
                    for name, state in states.items():
                        done = bool(np.all(state.converged[:ranks[name]]))
                        if not converged[name] and done:
                            active.discard(name)
                            converged[name] = True
                        elif converged[name] and not done:
                            active.add(name)
                            converged[name] = False
                    if bar is not None:
                        n_done = sum(converged.values()) + sum(converged.get(o, True) for o in shared.values())
                        bar.set_description(f"EVA: {n_done}/{len(targets)} layers have converged")
                    if all(converged.values()):
                        break
                    current["mask"] = model_inputs(batch)
                    current["last"] = max(active, key=position.__getitem__) if active else None
                    _run_forward(forward_fn, model, batch)
                    _update_states(pending)
                    pending.clear()
                    steps += 1
                    after_step()
            if bar is not None:
                bar.close()
    finally:
        model.train(training)

    out: dict[str, np.ndarray] = {}
    for name in layer_owner:
        rank = ranks.get(name, 0)
        owner = layer_owner[name]
        if rank == 0 or owner not in states:
            out[name] = np.zeros((0, n_features[name]), dtype=np.float32)
            continue
        state = states[owner]
        if not np.all(state.converged[:rank]):
            raise RuntimeError(f"EVA: layer {name!r} was assigned rank {rank} before converging")
        a = state.pca.components_[:rank].copy()
        if eva.whiten:
            a /= np.sqrt(state.pca.singular_values_[:rank])[:, None]
        out[name] = a
    return out


def _minimal_suffixes(targets: list[str], others: list[str]) -> list[str]:
    """The fewest dotted suffixes that match every target and no other module (PEFT's condensation)."""
    def suffixes(name: str) -> list[str]:
        parts = name.split(".")
        return [".".join(parts[i:]) for i in range(len(parts) - 1, -1, -1)]

    taken_by_others = {s for name in others for s in suffixes(name)}
    chosen: set[str] = set()
    for name, options in sorted(((t, suffixes(t)) for t in set(targets)), key=lambda item: item[1]):
        for suffix in options:
            if suffix in chosen or suffix in taken_by_others:
                continue
            if not any(name.endswith("." + c) for c in chosen):
                chosen.add(suffix)
            break
    return sorted(chosen)


def _load_eva_state_dict(model: Module, eva_state_dict: dict[str, np.ndarray], adapter_name: str) -> None:
    config = model.peft_config[adapter_name]
    eva = config.eva_config
    base = model.get_base_model()
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    kept, missing, others = [], [], []
    for name, module in list(base.named_modules()):
        if not isinstance(module, LoraLinear):
            others.append(name)
            continue
        if len(module.lora_adapters) > 1:
            raise NotImplementedError(f"EVA initialisation of a layer with several adapters ({name!r} holds "
                                      f"{list(module.lora_adapters)}): run EVA before add_adapter / load_adapter")
        r = config.rank_pattern.get(get_pattern_key(config.rank_pattern, name), config.r)
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern, name), config.lora_alpha)
        if name in eva_state_dict:
            a = np.asarray(eva_state_dict[name])
            if a.ndim != 2 or a.shape[1] != module.in_features:
                raise ValueError(f"eva_state_dict[{name!r}] has shape {a.shape}, expected (rank, {module.in_features})")
            new_rank = a.shape[0]
            if new_rank == 0:
                base.set_submodule(name, module.base)
                # unlike PEFT, a removed layer also blocks the suffixes that would match it again
                others.append(name)
                continue
            if new_rank != r and eva.adjust_scaling_factors:
                alpha *= new_rank / r
            if new_rank != module.r or alpha != module.lora_alpha:
                layer = LoraLinear(module.base, r=new_rank, lora_alpha=alpha, lora_dropout=module.lora_dropout,
                                   use_rslora=module.use_rslora, lora_bias=module.lora_bias is not None,
                                   init_lora_weights="eva", generator=module.generator,
                                   adapter_name=module.active_adapter)
                layer.training = module.training
                for p in (layer.lora_A, layer.lora_B, layer.lora_bias):
                    if p is not None:
                        p.requires_grad = module.lora_A.requires_grad
                base.set_submodule(name, layer)
                module = layer
            module.lora_A.data[...] = a
            module.lora_B.data.fill(0.0)
            kept.append(name)
        else:
            module.reset_lora_parameters(True)
            missing.append(name)
            new_rank = r
        if new_rank != config.r:
            rank_pattern[name] = new_rank
        if alpha != config.lora_alpha:
            alpha_pattern[name] = alpha
    targets = kept + missing
    if len(targets) >= MIN_TARGET_MODULES_FOR_OPTIMIZATION:
        targets = _minimal_suffixes(targets, others)
    config.target_modules = targets
    config.rank_pattern = rank_pattern
    config.alpha_pattern = alpha_pattern
    if missing:
        warnings.warn(f"EVA: these layers were initialised with init_lora_weights=True because the eva state "
                      f"dict has no entry for them: {missing}", stacklevel=3)


def initialize_lora_eva_weights(model: Module, dataloader: Iterable | None = None,
                                eva_state_dict: dict[str, np.ndarray] | None = None,
                                forward_fn: Callable[[Module, Any], Any] | None = forward_fn_dict,
                                prepare_model_inputs_fn: Callable | None = prepare_model_inputs_fn_language_modeling,
                                prepare_layer_inputs_fn: Callable | None = prepare_layer_inputs_fn_language_modeling,
                                adapter_name: str = "default", show_progress_bar: bool = True,
                                stop_forward_early: bool = True) -> Module:
    """Set every LoRA A of ``model`` (a PeftModel built with ``init_lora_weights="eva"``) from EVA.

    Computes :func:`get_eva_state_dict` from ``dataloader`` unless ``eva_state_dict`` is given, then
    resizes each layer to its new rank (layers at rank 0 go back to their base Linear), copies A in,
    zeroes B, and writes ``rank_pattern``, ``alpha_pattern`` and ``target_modules`` into the config
    as PEFT does. Returns the model (changed in place).
    """
    if not (hasattr(model, "peft_config") and hasattr(model, "get_base_model")):
        raise ValueError("initialize_lora_eva_weights needs a PeftModel (see get_peft_model)")
    if model.peft_config[adapter_name].init_lora_weights != "eva":
        raise ValueError("initialize_lora_eva_weights can only be used with init_lora_weights='eva'")
    if eva_state_dict is None:
        if dataloader is None:
            raise ValueError("initialize_lora_eva_weights needs a dataloader if eva_state_dict is not given")
        eva_state_dict = get_eva_state_dict(model, dataloader, forward_fn=forward_fn,
                                            prepare_model_inputs_fn=prepare_model_inputs_fn,
                                            prepare_layer_inputs_fn=prepare_layer_inputs_fn,
                                            adapter_name=adapter_name, show_progress_bar=show_progress_bar,
                                            stop_forward_early=stop_forward_early)
    _load_eva_state_dict(model, dict(eva_state_dict), adapter_name)
    return model
