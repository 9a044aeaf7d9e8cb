"""PromptSRC on the MiniLM dual encoder, WordNet supersenses: base-to-novel and few-shot comparison.

Methods (peftc.prompt.METHODS): the frozen dual encoder zero-shot; CoOp-style label prompts at the
input layer trained with CE only; IVLP (PromptSRC's deep prompts on both branches, CE only);
PromptSRC; and PromptSRC without each of its components (text L1, input L1, KL, GPA, textual
diversity). For each seed: K-shot training on the 21 base classes, accuracy on base and novel test
glosses (each among its own half of the classes) and their harmonic mean; then, for the methods
in --fewshot-methods, K-shot training on all 41 classes and 41-way accuracy.

Run from the repository root, e.g. the full comparison (8 epochs: 88 SGD steps of batch 32 on the 336
base shots; about 30 minutes per seed on one core of a loaded machine, the sum of the per-method
seconds in the committed results):
    PYTHONPATH=. OPENBLAS_NUM_THREADS=2 python benchmarks/promptsrc_wordnet.py --seeds 1 2 3
or one process per seed (``--seeds 1 --out results/promptsrc_wordnet_8ep_s1`` ...), then
``--merge results/promptsrc_wordnet_8ep_s1 results/promptsrc_wordnet_8ep_s2 results/promptsrc_wordnet_8ep_s3``
into the default output; or ``--scheduler local`` (a LocalCluster of one-thread workers) or a Dask scheduler's
address: each seed a task of peftc.distributed.run_sweep, all seeds in one file. The committed ``promptsrc_wordnet_3epochs`` is the same at ``--epochs 3``.
Results go to benchmarks/results/promptsrc_wordnet.{json,md}, rewritten after every method.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np

# this folder: run as a script, or from the tests
from common import add_scheduler_argument, check_seed_parts, merged_command, sweep_seeds
from peftc.data.wordnet import CLASS_DESCRIPTIONS, CLASS_NAMES, load_wordnet_glosses
from peftc.io.atomic import write_bytes_atomic
from peftc.models import BertModel, Tokenizer, minilm_path
from peftc.prompt import METHODS, TEXT_TEMPLATES, PromptSRCConfig, PromptSRCDualEncoder, label_text
from peftc.prompt.protocol import accuracy, harmonic_mean, make_protocol, per_class_accuracy, restrict

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--fewshot-methods", nargs="*", default=["zero_shot", "coop", "promptsrc"])
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--eval-per-class", type=int, default=25)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(RESULTS, "promptsrc_wordnet"))
    p.add_argument("--merge", nargs="+", default=None, metavar="STEM",
                   help="combine these results files (same settings, other seeds) into --out, then stop")
    add_scheduler_argument(p)
    return p.parse_args()


def config_for(method: str, args: argparse.Namespace, seed: int) -> PromptSRCConfig:
    """Method overrides on top of the run's training settings; GPA centred at 3/4 of training, sigma 1
    (the base-to-novel setting's (15, 1) over 20 epochs, scaled to the epoch count)."""
    base = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                gpa=(0.75 * args.epochs, 1.0))
    return PromptSRCConfig(**{**base, **(METHODS[method] or {})})


def run_method(method, args, seed, pd, model, tok, label_texts, variants) -> dict:
    cfg = config_for(method, args, seed)
    out: dict = {}
    tb, tn = restrict(pd.test, pd.base), restrict(pd.test, pd.novel)
    zero = METHODS[method] is None
    t0 = time.perf_counter()
    enc = PromptSRCDualEncoder(model, tok, label_texts, variants, cfg)
    if not zero:
        out["history"] = enc.fit(pd.train_base.texts, pd.train_base.labels, pd.base)
    out["train_seconds"] = time.perf_counter() - t0
    pb = enc.predict(tb.texts, pd.base, zero_shot=zero)
    pn = enc.predict(tn.texts, pd.novel, zero_shot=zero)
    out["base"], out["novel"] = accuracy(pb, tb.labels), accuracy(pn, tn.labels)
    out["hm"] = harmonic_mean(out["base"], out["novel"])
    pc = np.full(len(CLASS_NAMES), np.nan)
    pc[pd.base] = per_class_accuracy(pb, tb.labels, len(CLASS_NAMES))[pd.base]
    pc[pd.novel] = per_class_accuracy(pn, tn.labels, len(CLASS_NAMES))[pd.novel]
    out["per_class"] = [None if np.isnan(a) else float(a) for a in pc]
    if method in args.fewshot_methods:
        enc = PromptSRCDualEncoder(model, tok, label_texts, variants, cfg)
        allc = np.arange(len(CLASS_NAMES))
        if not zero:
            enc.fit(pd.train_all.texts, pd.train_all.labels, allc)
        out["fewshot_all"] = accuracy(enc.predict(pd.test.texts, allc, zero_shot=zero), pd.test.labels)
    out["seconds"] = time.perf_counter() - t0
    return out


def summarise(results: dict) -> dict:
    summary = {}
    for method, by_seed in results.items():
        if not by_seed:
            continue
        s = {}
        for key in ("base", "novel", "hm", "fewshot_all", "seconds"):
            vals = [r[key] for r in by_seed.values() if key in r]
            if vals:
                std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
                s[key] = {"mean": float(np.mean(vals)), "std": std, "n": len(vals)}
        summary[method] = s
    return summary


def markdown(payload: dict) -> str:
    a = payload["args"]
    lines = [
        "# PromptSRC on the MiniLM dual encoder: WordNet supersenses, base-to-novel and few-shot",
        "",
        f"Seeds {a['seeds']}; K = {a['shots']} shots; {a['epochs']} epochs, batch {a['batch_size']}, SGD lr {a['lr']}; "
        f"test subsample of at most {a['eval_per_class']} glosses per class; base/novel split seed {a['split_seed']} "
        f"(base = {payload['base_classes']}).",
        "Accuracy in %, mean ± sample std (ddof 1) over seeds. Base: base test glosses among the 21 base classes; novel: novel "
        "test glosses among the 20 novel classes (never trained on); HM: harmonic mean; few-shot: K shots of all 41 "
        "classes, 41-way accuracy.",
        "",
        "| method | base | novel | HM | few-shot (41-way) | seconds per seed |",
        "|---|---|---|---|---|---|",
    ]

    def cell(s, key, scale=100.0, digits=1):
        if key not in s:
            return "-"
        return f"{scale * s[key]['mean']:.{digits}f} ± {scale * s[key]['std']:.{digits}f}"

    for method, s in payload["summary"].items():
        lines.append(f"| {method} | {cell(s, 'base')} | {cell(s, 'novel')} | {cell(s, 'hm')} | "
                     f"{cell(s, 'fewshot_all')} | {cell(s, 'seconds', 1.0, 0)} |")
    se = 100.0 * float(np.sqrt(0.4 * 0.6 / max(payload["test_size"] / 2, 1)))
    lines += ["", f"{payload['test_size']} test glosses in all, about half on each side: one base or novel accuracy "
              f"near 40% has a binomial standard error of about {se:.1f} points, so differences of that size between "
              "methods are within the evaluation noise.", "", f"Command: `{payload['command']}`", ""]
    return "\n".join(lines)


def merge(stems: list[str], out: str) -> dict:
    """Combine results files of the same settings (seeds run in separate processes) into ``out``."""
    parts = [json.loads(Path(stem + ".json").read_text()) for stem in stems]
    first = parts[0]
    check_seed_parts([{**part["args"], "base_classes": part["base_classes"]} for part in parts], stems,
                     {"seeds", "out", "merge", "scheduler"})
    results: dict = {}
    for part in parts:
        for method, by_seed in part["results"].items():
            results.setdefault(method, {}).update(by_seed)
    seeds = sorted({int(seed) for by_seed in results.values() for seed in by_seed})
    payload = dict(first, args={**first["args"], "seeds": seeds, "out": os.path.relpath(out)},
                   command=merged_command([part["command"] for part in parts], stems),
                   summary=summarise(results), results=results)
    write_bytes_atomic(out + ".json", json.dumps(payload, indent=1).encode())
    write_bytes_atomic(out + ".md", markdown(payload).encode())
    return payload


def main() -> None:
    args = parse_args()
    if args.merge:
        print(markdown(merge(args.merge, args.out)))
        return
    data = load_wordnet_glosses()
    results: dict = {m: {} for m in args.methods}
    if args.scheduler:
        done = sweep_seeds(partial(seed_task, args), args.seeds, args.scheduler, modules=("promptsrc_wordnet",))
        for seed in args.seeds:
            for method in args.methods:
                results[method][str(seed)] = done[seed][method]
        write_payload(args, make_protocol(data, args.shots, args.seeds[-1], args.split_seed, args.eval_per_class),
                      results)
        return
    model = BertModel.from_pretrained(minilm_path())
    tok = Tokenizer(minilm_path(), 64)
    label_texts = [label_text(n, d) for n, d in zip(CLASS_NAMES, CLASS_DESCRIPTIONS)]
    variants = [[label_text(n, d, t) for t in TEXT_TEMPLATES] for n, d in zip(CLASS_NAMES, CLASS_DESCRIPTIONS)]
    for seed in args.seeds:
        pd = make_protocol(data, args.shots, seed, args.split_seed, args.eval_per_class)
        for method in args.methods:
            r = run_method(method, args, seed, pd, model, tok, label_texts, variants)
            results[method][str(seed)] = r
            print(f"seed {seed} {method:18s} base {r['base']:.3f} novel {r['novel']:.3f} hm {r['hm']:.3f} "
                  f"fewshot {r.get('fewshot_all', float('nan')):.3f} ({r['seconds']:.0f} s)", flush=True)
            write_payload(args, pd, results)


def seed_task(args: argparse.Namespace, config: dict) -> dict:
    """Every method of one seed as a Dask task (``--scheduler``): the worker loads the model and data itself."""
    model = BertModel.from_pretrained(minilm_path())
    tok = Tokenizer(minilm_path(), 64)
    label_texts = [label_text(n, d) for n, d in zip(CLASS_NAMES, CLASS_DESCRIPTIONS)]
    variants = [[label_text(n, d, t) for t in TEXT_TEMPLATES] for n, d in zip(CLASS_NAMES, CLASS_DESCRIPTIONS)]
    pd = make_protocol(load_wordnet_glosses(), args.shots, config["seed"], args.split_seed, args.eval_per_class)
    return {method: run_method(method, args, config["seed"], pd, model, tok, label_texts, variants)
            for method in args.methods}


def write_payload(args: argparse.Namespace, pd, results: dict) -> None:
    """The results so far, written atomically to args.out (.json, .md)."""
    payload = {
        "args": {**vars(args), "out": os.path.relpath(args.out)},
        "command": "PYTHONPATH=. python benchmarks/promptsrc_wordnet.py " + " ".join(sys.argv[1:]),
        "config": asdict(config_for("promptsrc", args, 0)), "threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "class_names": list(CLASS_NAMES), "base_classes": pd.base.tolist(), "novel_classes": pd.novel.tolist(),
        "test_size": len(pd.test), "summary": summarise(results), "results": results,
    }
    write_bytes_atomic(args.out + ".json", json.dumps(payload, indent=1).encode())
    write_bytes_atomic(args.out + ".md", markdown(payload).encode())


if __name__ == "__main__":
    main()
