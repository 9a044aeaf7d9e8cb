"""Experiment: EVA-initialised LoRA against randomly initialised LoRA on the main job's WordNet task.

Both arms are the main job's LoRA run (``peftc.demo``: all-MiniLM-L6-v2, mean pooling, r=8 on query and
value, alpha 16, dropout 0.1, plus the classification head; AdamW, warm-up and linear decay, clipping),
with the same head initialisation, the same data order and the same rank budget (12 layers x r). They
differ only in LoRA's A:
  random: PEFT's default (Kaiming-uniform A, B = 0);
  eva:    init_lora_weights="eva", EvaConfig(rho=2, tau=0.99): A from the incremental PCA of each
          layer's inputs over ``--eva-batches`` batches of training glosses (padding masked), ranks
          redistributed within the budget, alpha adjusted so alpha_l / r_l stays alpha / r.
Per seed it records every step's training loss, the validation loss and accuracy every
``--eval-every`` steps, and the final test accuracy. The summary gives, per arm, the mean training
loss over the 10 steps ending at K for each K in ``--ks`` (the single-step loss is too noisy), the
validation loss at the evaluation nearest K, and the test accuracy, each as mean and spread over seeds.

Full configuration (3 seeds, the main job's data and 3 epochs; hours on 2 cores):
    python benchmarks/eva_wordnet.py --seeds 0 1 2 --epochs 3 --train-per-class 250 --val-per-class 20
Reduced configurations that were run (labelled "reduced" in the results; about 6 and 13 minutes):
    python benchmarks/eva_wordnet.py --seeds 0 --max-steps 100 --train-per-class 40 --val-per-class 5 \
        --test-per-class 10 --reduced                                   # -> results/eva_wordnet.*
    python benchmarks/eva_wordnet.py --seeds 0 1 2 --max-steps 100 --train-per-class 40 --val-per-class 5 \
        --test-per-class 10 --reduced --out eva_wordnet_3seeds          # -> results/eva_wordnet_3seeds.*
Results go to benchmarks/results/<out>.json and .md; ``--render NAME`` recomputes a file's summary;
seeds run in separate processes (``--seeds 0 --out NAME_s0`` ...) combine with ``--merge NAME_s0 NAME_s1 ...``;
with ``--scheduler local`` (or a Dask scheduler's address) each seed is a task of peftc.distributed.run_sweep
and all seeds land in one results file.
The verdict compares the arms per seed (paired: same data, order and head).
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

NAME = "eva_wordnet"
ARMS = ("random", "eva")
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
    ap.add_argument("--reduced", action="store_true", help="label the results as a reduced configuration")
    ap.add_argument("--out", default=None, help="results name (default eva_wordnet)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="NAME",
                    help="combine results/NAME.json files (same settings, other seeds) into --out, then stop")
    ap.add_argument("--render", default=None, metavar="NAME",
                    help="recompute the summary, verdict and Markdown of results/NAME.json without training")
    common.add_scheduler_argument(ap)
    return ap.parse_args(argv)


def seed_task(args: argparse.Namespace, config: dict) -> list[dict]:
    """Both arms of one seed as a Dask task (``--scheduler``)."""
    return [run_arm(arm, config["seed"], args) for arm in ARMS]


def run_arm(arm: str, seed: int, args: argparse.Namespace, log=print) -> dict:
    """Train one arm for one seed; returns its history, EVA facts and accuracies."""
    import numpy as np

    from peftc.data.wordnet_job import JobSettings, load_splits, tokenize
    from peftc.models import BertModel, Tokenizer, minilm_path
    from peftc.models.classifier import SentenceClassifier
    from peftc.random import Generator
    from peftc.train import Trainer, TrainingConfig
    from peftc.tuners import EvaConfig, LoraConfig, get_peft_model, initialize_lora_eva_weights
    from wordnet_batches import gloss_batches

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
    eva_kwargs = {"init_lora_weights": "eva", "eva_config": EvaConfig(rho=args.rho)} if arm == "eva" else {}
    config = LoraConfig(r=s.r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout, target_modules=["query", "value"],
                        modules_to_save=["classifier"], **eva_kwargs)
    model = get_peft_model(base, config, generator=Generator(seed + 2))
    result: dict = {"arm": arm, "seed": seed, "sizes": {"train": len(train), "val": len(val), "test": len(test)}}
    if arm == "eva":
        t0 = time.perf_counter()
        batches = gloss_batches(args.eva_batches, args.eva_batch_size, seed=seed, settings=s)
        initialize_lora_eva_weights(model, batches, forward_fn=lambda m, b: m(b), show_progress_bar=False)
        cfg = model.peft_config["default"]
        result["eva_seconds"] = time.perf_counter() - t0
        result["rank_pattern"] = dict(cfg.rank_pattern)
    tc = TrainingConfig(learning_rate=s.learning_rate, batch_size=s.batch_size, num_epochs=s.epochs,
                        max_steps=args.max_steps, warmup_ratio=0.06, weight_decay=0.01, max_grad_norm=1.0, seed=seed,
                        eval_every=args.eval_every, progress=False, eval_batch_size=128, log_every=1)
    trainer = Trainer(model, tc, data["train"], data["val"])
    t0 = time.perf_counter()
    history = trainer.train()
    result["train_seconds"] = time.perf_counter() - t0
    result["steps"] = trainer.global_step
    result["train_loss"] = [h["loss"] for h in history if "loss" in h]
    result["eval"] = [{"step": h["step"], "loss": h["eval_loss"], "accuracy": h["eval_accuracy"]}
                      for h in history if "eval_loss" in h]
    result["test"] = trainer.evaluate(data["test"])
    result["trainable_params"] = int(model.get_nb_trainable_parameters()[0])
    log(f"{arm:6s} seed {seed}: {trainer.global_step} steps, loss at end {np.mean(result['train_loss'][-WINDOW:]):.4f}, "
        f"test accuracy {result['test']['accuracy']:.4f} ({result['train_seconds']:.0f} s)")
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
            pair = {r["arm"]: r for r in runs if r["seed"] == seed}
            if len(pair) == 2 and all(len(r["train_loss"]) >= k for r in pair.values()):
                diffs.append(float(np.mean(pair["eva"]["train_loss"][max(0, k - WINDOW):k])
                                   - np.mean(pair["random"]["train_loss"][max(0, k - WINDOW):k])))
        if diffs:
            out[k] = diffs
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
        if len(pair) == 2:
            acc.append(pair["eva"]["test"]["accuracy"] - pair["random"]["test"]["accuracy"])
    if acc:
        limits += (" Final test accuracy, EVA minus random per seed: " + ", ".join(f"{100 * a:+.1f}" for a in acc)
                   + " points" + ("" if all(a > 0 for a in acc) else " (not higher in every seed)") + ".")
    return claim + "." + limits


def markdown(payload: dict) -> str:
    s, ks = payload["summary"], payload["settings"]["ks"]
    label = "REDUCED configuration" if payload["settings"]["reduced"] else "full configuration"
    lines = [f"EVA vs random LoRA init on WordNet supersenses (all-MiniLM-L6-v2, r=8 query/value + head), {label}: "
             f"seeds {payload['settings']['seeds']}, sizes {payload['runs'][0]['sizes']}, "
             f"{payload['runs'][0]['steps']} steps.", "",
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
    lines.append("Verdict: " + payload["verdict"] + "\n")
    lines.append(f"Load average at start {tuple(round(x, 1) for x in payload['environment']['load_average_at_start'])}"
                 f" on {os.cpu_count()} logical CPUs. Command: `{payload['command']}`\n")
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
    text = markdown(payload)
    common.write_results(name, payload, text)
    print(text)


def merge(names: list[str], out: str) -> None:
    """Combine results files of the same settings whose seeds ran in separate processes into results/<out>."""
    import json
    parts = [json.loads((common.RESULTS_DIR / f"{n}.json").read_text()) for n in names]
    first = parts[0]["settings"]
    common.check_seed_parts([part["settings"] for part in parts], names,
                            {"seeds", "out", "merge", "render", "scheduler"})
    runs = [r for part in parts for r in part["runs"]]
    seeds = [r["seed"] for r in runs if r["arm"] == ARMS[0]]
    if len(seeds) != len(set(seeds)):
        raise ValueError(f"the files {names} repeat a seed")
    payload = {"command": common.merged_command([part["command"] for part in parts], names),
               "settings": {**first, "seeds": sorted(seeds), "out": out}, "runs": runs,
               "environment": parts[0]["environment"]}
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
    if args.scheduler:
        done = common.sweep_seeds(partial(seed_task, args), args.seeds, args.scheduler, modules=(NAME,))
        runs = [r for seed in args.seeds for r in done[seed]]
    else:
        runs = [run_arm(arm, seed, args) for seed in args.seeds for arm in ARMS]
    summary = summarise(runs, args.ks)
    payload = {"command": "python benchmarks/eva_wordnet.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "settings": {k: v for k, v in vars(args).items()}, "summary": summary,
               "verdict": verdict(runs, args.ks, args.reduced),
               "paired_train_loss_differences": paired_differences(runs, args.ks), "runs": runs,
               "environment": common.environment()}
    text = markdown(payload)
    common.write_results(args.out or NAME, payload, text)
    print(text)


if __name__ == "__main__":
    main()
