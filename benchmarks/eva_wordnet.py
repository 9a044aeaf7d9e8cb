"""Experiment: EVA-initialised LoRA against randomly initialised LoRA on the main job's WordNet task.

All arms are the main job's LoRA run (``peftc.demo``: all-MiniLM-L6-v2, mean pooling, r=8 on query and
value, alpha 16, dropout 0.1, plus the classification head; AdamW, warm-up and linear decay, clipping),
with the same head initialisation, the same data order and the same rank budget (12 layers x r). They
differ only in LoRA's A:
  random:      PEFT's default (Kaiming-uniform A, B = 0; rows of norm about sqrt(1/3));
  eva:         init_lora_weights="eva", EvaConfig(rho=2, tau=0.99): A from the incremental PCA of each
               layer's inputs over ``--eva-batches`` batches of training glosses (padding masked), ranks
               redistributed within the budget, alpha adjusted so alpha_l / r_l stays alpha / r; the
               rows are orthonormal right-singular vectors (norm 1);
  orthonormal: the control: EVA's ranks and scales, but A replaced by random orthonormal rows (norm 1,
               seeded QR of a Gaussian matrix), so a gain of EVA over it is the directions', not the
               larger row norm's (a scale effect).
Each arm's learning rate is chosen on the VALIDATION split (``peftc.evaluation.select_on_validation``)
from ``--lr-grid`` with a short schedule (``--select-steps``, seed ``--select-seed``); every candidate's
validation accuracy is recorded, and only the chosen rate runs on every seed. Per seed it records every
step's training loss, the validation loss and accuracy every ``--eval-every`` steps, and the final
test accuracy (the test split is evaluated once per seed and arm). The claims ("EVA's training loss at
K is below random's / the control's", "EVA's test accuracy is higher") are tested per seed, paired
(paired t over seeds, Holm over the file): the ``verdicts`` list. The summary gives, per arm, the mean
training loss over the 10 steps ending at K for each K in ``--ks`` (the single-step loss is too noisy),
the validation loss at the evaluation nearest K, and the test accuracy.

Full configuration (5 seeds, the main job's data and 3 epochs; many hours on 2 cores):
    python benchmarks/eva_wordnet.py --seeds 0 1 2 3 4 --epochs 3 --train-per-class 250 --val-per-class 20 \
        --select-steps 100
Reduced configuration (labelled REDUCED; about 2 s per step at 1 thread, so about 85 CPU-minutes for 5 seeds:
the selection about 20 min, each seed about 13 min):
    python benchmarks/eva_wordnet.py --max-steps 100 --select-steps 40 --train-per-class 100 --val-per-class 10 \
        --test-per-class 25 --eval-every 25 --reduced --threads 1 ...
Results go to benchmarks/results/<out>.json and .md; ``--render NAME`` recomputes a file's summary.
Seeds run in separate processes: ``--select-only --out NAME_select`` once, then ``--selection NAME_select
--seeds N --out NAME_sN`` per seed (the same settings: a selection file made with others, e.g. another
``--lr-grid``, is refused), combined with ``--merge NAME_s0 NAME_s1 ... --out NAME``. With ``--scheduler
local`` (or a Dask scheduler's address) the selection runs here first (or comes from ``--selection``), then
each seed of the chosen learning rates is a task of peftc.distributed.run_sweep and all seeds land in one
results file.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from seed_verdicts import seed_verdicts  # noqa: E402

NAME = "eva_wordnet"
FULL_COMMAND = ("python benchmarks/eva_wordnet.py --seeds 0 1 2 3 4 --epochs 3 --train-per-class 250 "
                "--val-per-class 20 --select-steps 100")
ARMS = ("random", "eva", "orthonormal")
WINDOW = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-per-class", type=int, default=250)
    ap.add_argument("--val-per-class", type=int, default=20)
    ap.add_argument("--test-per-class", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=None, help="overrides --epochs")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--ks", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--eva-batches", type=int, default=16)
    ap.add_argument("--eva-batch-size", type=int, default=16)
    ap.add_argument("--rho", type=float, default=2.0)
    ap.add_argument("--lr-grid", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2],
                    help="candidate learning rates, chosen per arm on the validation split")
    ap.add_argument("--select-steps", type=int, default=50, help="steps of a selection run")
    ap.add_argument("--select-seed", type=int, default=0)
    ap.add_argument("--select-only", action="store_true", help="run the validation selection, write it, stop")
    ap.add_argument("--selection", default=None, metavar="NAME", help="reuse the selection of results/NAME.json")
    ap.add_argument("--reduced", action="store_true", help="label the results as a reduced configuration")
    ap.add_argument("--out", default=None, help="results name (default eva_wordnet)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="NAME",
                    help="combine results/NAME.json files (same settings, other seeds) into --out, then stop")
    ap.add_argument("--render", default=None, metavar="NAME",
                    help="recompute the summary, verdict and Markdown of results/NAME.json without training")
    common.add_scheduler_argument(ap)
    return ap.parse_args(argv)


# settings that a seed run, a merge or a render may change against its selection file or the other seed files
RUN_ONLY = {"seeds", "out", "merge", "render", "selection", "select_only", "scheduler"}


def seed_task(args: argparse.Namespace, selection: dict, config: dict) -> list[dict]:
    """Every arm of one seed at its chosen learning rate, as a Dask task (``--scheduler``)."""
    return [run_arm(arm, config["seed"], args, selection[arm]["chosen"]) for arm in ARMS]


def load_selection(name: str, args: argparse.Namespace) -> dict:
    """The "selection" of results/<name>.json; raises ValueError unless that file was made with this run's
    settings (outside ``RUN_ONLY`` and the thread count), so a selection from another grid is never reused."""
    payload = common.read_results(name)
    common.check_selection_settings(vars(args), payload["settings"], name, RUN_ONLY | {"threads"})
    return payload["selection"]


def orthonormal_a(model, seed: int) -> dict[str, float]:
    """Replace every LoRA A of ``model`` by random orthonormal rows (QR of a seeded Gaussian matrix), in place.

    Ranks and scales are left as they are (after EVA: EVA's). Returns {layer: max |A A^T - I|}.
    """
    import numpy as np

    from peftc.nn import LoraLinear

    rng = np.random.default_rng(seed)
    out = {}
    for name, layer in model.get_base_model().named_modules():
        if not isinstance(layer, LoraLinear):
            continue
        for adapter in layer.lora_adapters.values():
            r, d = adapter.lora_A.data.shape
            q, _ = np.linalg.qr(rng.standard_normal((d, r)))
            adapter.lora_A.data[...] = q.T.astype(np.float32)
            a = adapter.lora_A.data.astype(np.float64)
            out[name] = float(np.abs(a @ a.T - np.eye(r)).max())
    return out


def initialise_a(arm: str, model, batches: list, seed: int) -> dict:
    """EVA's A (and ranks, scales) from ``batches`` for arm "eva"; for "orthonormal" the same ranks and
    scales with A then replaced by random orthonormal rows. Returns the arm's facts."""
    from peftc.tuners import initialize_lora_eva_weights

    t0 = time.perf_counter()
    initialize_lora_eva_weights(model, batches, forward_fn=lambda m, b: m(b), show_progress_bar=False)
    facts = {"eva_seconds": time.perf_counter() - t0, "rank_pattern": dict(model.peft_config["default"].rank_pattern)}
    if arm == "orthonormal":
        facts["orthonormality_error"] = max(orthonormal_a(model, seed + 3).values())
    return facts


def build_arm(arm: str, seed: int, args: argparse.Namespace, lr: float, max_steps: int | None, with_eval: bool):
    """The model of ``arm`` for ``seed``, its Trainer (at ``lr``), the tokenized data and the arm's facts."""
    from peftc.data.wordnet_job import JobSettings, load_splits, tokenize
    from peftc.models import BertModel, Tokenizer, minilm_path
    from peftc.models.classifier import SentenceClassifier
    from peftc.random import Generator
    from peftc.train import Trainer, TrainingConfig
    from peftc.tuners import EvaConfig, LoraConfig, get_peft_model
    from wordnet_batches import gloss_batches

    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")
    s = JobSettings(seed=seed, train_per_class=args.train_per_class, epochs=args.epochs, progress=False)
    train, val, test = load_splits(s)
    val = val.subsample_per_class(args.val_per_class, seed=seed)
    if args.test_per_class is not None:
        test = test.subsample_per_class(args.test_per_class, seed=seed)
    folder = minilm_path()
    tokenizer = Tokenizer(folder, max_length=s.max_length)
    data = {"train": tokenize(tokenizer, train), "val": tokenize(tokenizer, val, by_length=True),
            "test": tokenize(tokenizer, test, by_length=True)}
    base = SentenceClassifier(BertModel.from_pretrained(folder, seed=seed), train.num_classes,
                              generator=Generator(seed + 1))
    eva_kwargs = {"init_lora_weights": "eva", "eva_config": EvaConfig(rho=args.rho)} if arm != "random" else {}
    config = LoraConfig(r=s.r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout, target_modules=["query", "value"],
                        modules_to_save=["classifier"], **eva_kwargs)
    model = get_peft_model(base, config, generator=Generator(seed + 2))
    facts: dict = {"arm": arm, "seed": seed, "lr": lr, "sizes": {"train": len(train), "val": len(val), "test": len(test)}}
    if arm != "random":
        facts.update(initialise_a(arm, model, gloss_batches(args.eva_batches, args.eva_batch_size, seed=seed,
                                                            settings=s), seed))
    tc = TrainingConfig(learning_rate=lr, batch_size=s.batch_size, num_epochs=s.epochs,
                        max_steps=max_steps, warmup_ratio=0.06, weight_decay=0.01, max_grad_norm=1.0, seed=seed,
                        eval_every=args.eval_every, progress=False, eval_batch_size=128, log_every=1)
    trainer = Trainer(model, tc, data["train"], data["val"] if with_eval else None)
    return model, trainer, data, facts


def select(args: argparse.Namespace, log=print, build=build_arm) -> dict:
    """Per arm, the learning rate chosen on the validation split of seed ``args.select_seed`` after
    ``args.select_steps`` steps, with every candidate's validation accuracy; the test split is not touched."""
    from peftc.evaluation import select_on_validation

    out = {}
    for arm in ARMS:
        def train_fn(lr, arm=arm):
            _, trainer, data, _ = build(arm, args.select_seed, args, lr, args.select_steps, False)
            trainer.train()
            return trainer, data

        def eval_fn(fitted, split):
            trainer, data = fitted
            return trainer.evaluate(data["val"])["accuracy"] if split == "validation" else None

        sel = select_on_validation(list(args.lr_grid), train_fn, eval_fn)
        out[arm] = {"candidates": [float(c) for c in sel.candidates], "val_accuracy": [float(v) for v in sel.scores],
                    "chosen": float(sel.best_candidate), "steps": args.select_steps}
        log(f"select {arm}: " + ", ".join(f"lr {c:g} -> {v:.4f}" for c, v in zip(sel.candidates, sel.scores))
            + f"; chose {sel.best_candidate:g}")
    return out


def run_arm(arm: str, seed: int, args: argparse.Namespace, lr: float, log=print) -> dict:
    """Train one arm for one seed at its chosen ``lr``; returns its history, EVA facts and accuracies."""
    import numpy as np

    model, trainer, data, result = build_arm(arm, seed, args, lr, args.max_steps, True)
    t0 = time.perf_counter()
    history = trainer.train()
    result["train_seconds"] = time.perf_counter() - t0
    result["steps"] = trainer.global_step
    result["train_loss"] = [h["loss"] for h in history if "loss" in h]
    result["eval"] = [{"step": h["step"], "loss": h["eval_loss"], "accuracy": h["eval_accuracy"]}
                      for h in history if "eval_loss" in h]
    result["test"] = trainer.evaluate(data["test"])
    result["trainable_params"] = int(model.get_nb_trainable_parameters()[0])
    log(f"{arm:11s} seed {seed}: lr {lr:g}, {trainer.global_step} steps, loss at end "
        f"{np.mean(result['train_loss'][-WINDOW:]):.4f}, test accuracy {result['test']['accuracy']:.4f} "
        f"({result['train_seconds']:.0f} s)")
    return result


def summarise(runs: list[dict], ks: list[int]) -> dict:
    """Per arm and K: mean / min / max over seeds of the windowed training loss and the validation loss."""
    import numpy as np
    out: dict = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        if not mine:
            continue
        entry: dict = {"seeds": [r["seed"] for r in mine]}
        for k in ks:
            losses = [float(np.mean(r["train_loss"][max(0, k - WINDOW):k])) for r in mine if len(r["train_loss"]) >= k]
            evals = [min(r["eval"], key=lambda e: abs(e["step"] - k)) for r in mine if r["eval"]]
            evals = [e for e in evals if abs(e["step"] - k) <= 5]
            entry[f"train_loss@{k}"] = _spread(losses)
            entry[f"val_loss@{k}"] = _spread([e["loss"] for e in evals])
        entry["test_accuracy"] = _spread([r["test"]["accuracy"] for r in mine])
        out[arm] = entry
    return out


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "n": len(values)}


def paired_differences(runs: list[dict], ks: list[int]) -> dict:
    """Per K: EVA's windowed training loss minus random's for each seed (both arms share the seed's
    data, order and head, so the pair isolates the initialisation)."""
    import numpy as np
    out = {}
    for k in ks:
        diffs = []
        for seed in sorted({r["seed"] for r in runs}):
            pair = {r["arm"]: r for r in runs if r["seed"] == seed and r["arm"] in ("eva", "random")}
            if len(pair) == 2 and all(len(r["train_loss"]) >= k for r in pair.values()):
                diffs.append(float(np.mean(pair["eva"]["train_loss"][max(0, k - WINDOW):k])
                                   - np.mean(pair["random"]["train_loss"][max(0, k - WINDOW):k])))
        if diffs:
            out[k] = diffs
    return out


def windowed_loss(run: dict, k: int) -> float:
    """Mean training loss over the WINDOW steps ending at step k."""
    return float(sum(run["train_loss"][max(0, k - WINDOW):k]) / len(run["train_loss"][max(0, k - WINDOW):k]))


CONTROLS = {"random": "random init's (Kaiming-uniform A)",
            "orthonormal": "the control's (EVA's ranks and scales, random orthonormal unit-norm A rows)"}


def paired_claims(runs: list[dict], ks: list[int]) -> list:
    """EVA against each other arm, paired by seed: training loss at each K (lower) and test accuracy (higher)."""
    from peftc.evaluation import Claim

    by = {(r["arm"], r["seed"]): r for r in runs}
    out = []
    for other, words in CONTROLS.items():
        seeds = sorted(seed for (arm, seed) in by if arm == "eva" and (other, seed) in by)
        if not seeds:
            continue
        pairs = [(by["eva", k], by[other, k]) for k in seeds]
        for k in ks:
            if all(len(a["train_loss"]) >= k and len(b["train_loss"]) >= k for a, b in pairs):
                out.append(Claim(f"EVA's training loss at step {k} < {words}", [windowed_loss(a, k) for a, _ in pairs],
                                 [windowed_loss(b, k) for _, b in pairs], "less"))
        out.append(Claim(f"EVA's test accuracy > {words}", [a["test"]["accuracy"] for a, _ in pairs],
                         [b["test"]["accuracy"] for _, b in pairs], "greater"))
    return out


def _scope(runs: list[dict], reduced: bool) -> str:
    """What was run, from the runs themselves: steps and training-set size."""
    steps, train = runs[0]["steps"], runs[0]["sizes"]["train"]
    what = f"{steps} steps on {train} training glosses"
    return f"a reduced configuration ({what})" if reduced else f"the full configuration ({what})"


def verdict(runs: list[dict], ks: list[int], reduced: bool) -> str:
    """Whether EVA's training loss is below random's at every K in every seed, with the evidence's limits."""
    diffs = paired_differences(runs, ks)
    if not diffs:
        return "No K was reached by both arms; nothing to compare."
    n = len(next(iter(diffs.values())))
    lower = [k for k, d in diffs.items() if all(x < 0 for x in d)]
    detail = "; ".join(f"K={k}: {', '.join(f'{x:+.3f}' for x in d)}" for k, d in diffs.items())
    if len(lower) == len(diffs):
        claim = f"EVA's training loss is lower than random init's at every K compared, in each of the {n} seed(s)"
    elif lower:
        claim = f"EVA's training loss is lower in every seed at K = {lower} only"
    else:
        claim = "EVA's training loss is NOT lower than random init's in every seed at any K compared"
    claim += f" (EVA minus random, per seed: {detail})"
    scope = _scope(runs, reduced)
    if n == 1:
        limits = (f" This is {scope} with one seed, which cannot separate an effect from seed noise: \"EVA "
                  "converges faster\" is neither confirmed nor refuted here.")
    else:
        limits = (f" This is {scope} with {n} seeds; with so few seeds it is consistent with \"EVA converges "
                  "faster\" early in training on this task, not a proof of it, and the full configuration has not "
                  "been run." if reduced else f" {n} seeds.")
    acc = []
    for seed in sorted({r["seed"] for r in runs}):
        pair = {r["arm"]: r for r in runs if r["seed"] == seed}
        if "eva" in pair and "random" in pair:
            acc.append(pair["eva"]["test"]["accuracy"] - pair["random"]["test"]["accuracy"])
    if acc:
        limits += (" Final test accuracy, EVA minus random per seed: " + ", ".join(f"{100 * a:+.1f}" for a in acc)
                   + " points" + ("" if all(a > 0 for a in acc) else " (not higher in every seed)") + ".")
    return claim + "." + limits


def markdown(payload: dict) -> str:
    s, ks = payload["summary"], payload["settings"]["ks"]
    label = "REDUCED configuration" if payload["settings"]["reduced"] else "full configuration"
    from seed_verdicts import seed_verdicts_markdown

    head = (f"**REDUCED** (the full configuration: `{FULL_COMMAND}`)\n\n" if payload["settings"]["reduced"] else "")
    lines = [head + f"EVA vs random LoRA init on WordNet supersenses (all-MiniLM-L6-v2, r=8 query/value + head), "
             f"{label}: seeds {payload['settings']['seeds']}, sizes {payload['runs'][0]['sizes']}, "
             f"{payload['runs'][0]['steps']} steps, each arm at its own learning rate chosen on validation.", "",
             "## Verdicts", "", seed_verdicts_markdown(payload["verdicts"])]
    sel = payload.get("selection") or {}
    if sel:
        lines += [f"Learning rate per arm, chosen on the validation split (seed {payload['settings']['select_seed']}, "
                  f"{next(iter(sel.values()))['steps']} steps; validation accuracy of every candidate):", "",
                  common.markdown_table(["arm", "candidates -> validation accuracy", "chosen"],
                                        [[arm, ", ".join(f"lr {c:g}: {100 * v:.1f}%" for c, v in
                                                         zip(x["candidates"], x["val_accuracy"])),
                                          f"{x['chosen']:g}" + (" (at the edge of the grid)" if len(x["candidates"]) > 1
                                                                and x["chosen"] in (min(x["candidates"]),
                                                                                    max(x["candidates"])) else "")]
                                         for arm, x in sel.items()])]
    lines += ["## Losses and accuracies", "",
             f"Training loss = mean minibatch loss over the {WINDOW} steps ending at K; validation loss at the "
             f"evaluation nearest K; mean [min, max] over seeds.", ""]
    header = ["arm"] + [f"train loss @{k}" for k in ks] + [f"val loss @{k}" for k in ks] + ["test accuracy"]

    def cell(v: dict | None, digits: int = 4) -> str:
        if v is None:
            return "-"
        return f"{v['mean']:.{digits}f}" + (f" [{v['min']:.{digits}f}, {v['max']:.{digits}f}]" if v["n"] > 1 else "")
    rows = [[arm] + [cell(s[arm][f"train_loss@{k}"]) for k in ks] + [cell(s[arm][f"val_loss@{k}"]) for k in ks]
            + [cell(s[arm]["test_accuracy"])] for arm in ARMS if arm in s]
    lines.append(common.markdown_table(header, rows))
    eva_runs = [r for r in payload["runs"] if r["arm"] == "eva"]
    if eva_runs:
        took = ", ".join(f"{r['eva_seconds']:.0f}" for r in eva_runs)
        lines.append(f"EVA init took {took} s; "
                     f"rank pattern (seed {eva_runs[0]['seed']}): {eva_runs[0]['rank_pattern']}.\n")
    orth = [r for r in payload["runs"] if r["arm"] == "orthonormal"]
    if orth:
        lines.append(f"The control's A rows are orthonormal to within {max(r['orthonormality_error'] for r in orth):.1e}"
                     f" (max |A A^T - I| over layers and seeds), with EVA's rank pattern of the same seed.\n")
    lines.append("Per seed (EVA minus random): " + payload["verdict"] + "\n")
    grid = payload["settings"].get("lr_grid")
    grid = "the grid {" + ", ".join(f"{lr:g}" for lr in grid) + "}" if grid else "a grid"
    lines += ["Deviations from the paper's protocol: all-MiniLM-L6-v2 on WordNet supersenses with r = 8 on query and "
              f"value (the paper: LLaMA / Gemma with r = 16 on every attention projection); lr from {grid} on "
              "validation with a short schedule (the paper: 5e-4, cosine, 1 epoch); PEFT's alpha adjustment "
              "(alpha_l / r_l = alpha / r) rather than the official repo's alpha = 1; LoRA dropout 0.1 (the main job's "
              "value; EVA's runs used 0).\n"]
    lines.append(f"CPU: {payload['environment'].get('cpu', 'not recorded')}. Load average at start "
                 f"{tuple(round(x, 1) for x in payload['environment']['load_average_at_start'])} on "
                 f"{os.cpu_count()} logical CPUs. Command: `{payload['command']}`\n")
    return "\n".join(lines)


def render(name: str, payload: dict | None = None) -> None:
    """Rewrite results/<name>.json's summary, verdict and .md from its stored runs (or from ``payload``'s)."""
    import json
    if payload is None:
        payload = json.loads((common.RESULTS_DIR / f"{name}.json").read_text())
    ks = payload["settings"]["ks"]
    payload["summary"] = summarise(payload["runs"], ks)
    payload["paired_train_loss_differences"] = paired_differences(payload["runs"], ks)
    payload["verdict"] = verdict(payload["runs"], ks, payload["settings"]["reduced"])
    payload["verdicts"] = seed_verdicts(paired_claims(payload["runs"], ks))
    payload = {"verdicts": payload.pop("verdicts"), **payload, "cpu": payload["environment"].get("cpu")}
    if payload["settings"]["reduced"]:
        payload["reduced"] = {"label": "REDUCED", "full_command": FULL_COMMAND}
    text = markdown(payload)
    common.write_results(name, payload, text)
    print(text)


def merge(names: list[str], out: str) -> None:
    """Combine results files of the same settings whose seeds ran in separate processes into results/<out>."""
    import json
    parts = [json.loads((common.RESULTS_DIR / f"{n}.json").read_text()) for n in names]
    first = parts[0]["settings"]
    common.check_seed_parts([part["settings"] for part in parts], names,
                            RUN_ONLY)
    for part, name in zip(parts[1:], names[1:]):
        if part.get("selection") != parts[0].get("selection"):
            raise ValueError(f"{name}: its selection differs from {names[0]}'s; seeds must share one selection")
    runs = [r for part in parts for r in part["runs"]]
    seeds = [r["seed"] for r in runs if r["arm"] == ARMS[0]]
    if len(seeds) != len(set(seeds)):
        raise ValueError(f"the files {names} repeat a seed")
    payload = {"command": common.merged_command([part["command"] for part in parts], names),
               "settings": {**first, "seeds": sorted(seeds), "out": out}, "runs": runs,
               "selection": parts[0].get("selection"),
               "environment": {**parts[0]["environment"], "cpu": common.merged_cpu(
                   [part["environment"].get("cpu") for part in parts])}}
    render(out, payload)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render:
        render(args.render)
        return
    if args.merge:
        merge(args.merge, args.out or NAME)
        return
    common.configure_threads(args.threads)
    run(args, "python benchmarks/eva_wordnet.py " + " ".join(sys.argv[1:] if argv is None else argv))


def write_selection(out: str, payload: dict) -> None:
    """Write a ``--select-only`` results file: the selection, with the results contract's ``cpu`` and an empty
    ``verdicts`` list (no test split was touched; the claims are tested in the merged seed files)."""
    payload = {"verdicts": [], **payload, "cpu": payload["environment"].get("cpu"),
               "note": "selection only: no seed was run on the test split; the claims are tested where the seeds "
                       "that use this selection are merged"}
    common.write_results(out, payload, f"Selection only (CPU: {payload['cpu']}; no claims tested here): "
                                       f"{payload['selection']}\n")


def run(args: argparse.Namespace, command: str) -> None:
    """The selection on validation (or ``--selection``'s), then every seed and arm at the chosen learning rates,
    one after the other here or, with ``--scheduler``, each seed a task of peftc.distributed.run_sweep; writes
    results/<out>.json and .md (with ``--select-only`` the selection alone)."""
    selection = load_selection(args.selection, args) if args.selection else select(args)
    if args.select_only:
        runs = []
    elif args.scheduler:
        done = common.sweep_seeds(partial(seed_task, args, selection), args.seeds, args.scheduler,
                                  modules=("seed_verdicts", "wordnet_batches", NAME))
        runs = [r for seed in args.seeds for r in done[seed]]
    else:
        runs = [run_arm(arm, seed, args, selection[arm]["chosen"]) for seed in args.seeds for arm in ARMS]
    payload = {"command": command, "settings": {k: v for k, v in vars(args).items()}, "selection": selection,
               "runs": runs, "environment": common.environment()}
    if args.select_only:
        write_selection(args.out or NAME, payload)
        return
    render(args.out or NAME, payload)


if __name__ == "__main__":
    main()
