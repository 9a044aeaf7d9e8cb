"""Test-time adaptation on Fashion-MNIST-C: the results table per method over seeds, and a verdict
on each expected result of the TENT, EATA and open-set ("wisdom of crowds") papers.

Three experiments, all with the cached SmallResNet source models (peftc.tta.train_source_model):

1. Per corruption (TENT's protocol): reset before each (corruption, severity), stream ``--limit``
   test images in a seed-drawn order; error % per corruption and severity, backward samples.
2. Continual (EATA's lifelong setting): ``--rounds`` passes over all corruptions at the highest
   listed severity, each pass in a seed-drawn order, ``--per-segment`` images per visit, no reset.
   Clean test error of the adapted model before and after the stream measures forgetting.
3. Open-set long-term: a source model trained on classes 0-7 only; every batch holds
   ``--open-batch`` corrupted known-class images and as many corrupted class 8-9 images (the
   unknowns) of the same corruption; ``--open-rounds`` passes without reset. Error on known
   classes and AUROC of the maximum softmax score (known vs unknown), with and without the filter.

``--parts`` picks experiments; ``--open-methods`` the open-set methods (``tent+filter-nodiv`` is
the filter without UniEnt's diversity term, to separate the two). Seeds change the corruption noise (the Fashion-MNIST-C files of that seed) and the stream orders.

Full run (estimated at about an hour on an idle 2-core machine: the reduced 3-seed run below took 218 s,
37 s of it per-corruption work, which the full run multiplies by 50, the rest continual and open-set work,
multiplied by 7-8; the seed 1 and 2 corruption files, 120 of them, are generated on first use):
  OPENBLAS_NUM_THREADS=2 python benchmarks/tta_report.py --seeds 0,1,2 --severities 1,2,3,4,5 \
      --limit 10000 --rounds 10 --per-segment 1000 --open-rounds 10 --open-known 1000 --label full
Reduced run (the committed one; see the label in the output):
  OPENBLAS_NUM_THREADS=2 python benchmarks/tta_report.py --seeds 0,1,2 --severities 5 --limit 1000 --batch 100 \
      --rounds 5 --per-segment 300 --open-rounds 5 --open-known 250 --open-batch 50 --label reduced
Seeds may run in separate processes (``--seeds 0 --out STEM0`` ...) and be combined with
``--merge STEM0 STEM1 ...`` (same settings required), or run as tasks of peftc.distributed.run_sweep with
``--scheduler local`` (a LocalCluster of one-thread workers) or a Dask scheduler's address, into one file.
Writes benchmarks/results/tta_report.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from common import (add_scheduler_argument, check_seed_parts, merged_command,  # this folder: run as a script
                    sweep_seeds)
from peftc.io.atomic import write_bytes_atomic
from peftc.data.corruptions import CORRUPTIONS, load_fashion_mnist_c
from peftc.data.fashion_mnist import load_fashion_mnist
from peftc.tta import EATA, SAR, TENT, BNAdapt, Source, SourceConfig, train_source_model
from peftc.tta.evaluate import (clean_error, continual_stream, evaluate_corruptions, open_set_stream, rounds_of,
                                run_stream, summarize)
from peftc.tta.source_model import select_classes

OUT = Path(__file__).parent / "results"
KNOWN = tuple(range(8))  # classes 8 (Bag) and 9 (Ankle boot) are the open-set unknowns
HYPER = ("TENT, EATA, SAR: Adam (lr in the command, 1e-3 by default), one step per batch. "
         "EATA: E0 = 0.4 ln C, d_margin 0.4, fisher_alpha 1, "
         "Fisher from 2000 clean training images (of the known classes in the open-set run). SAR: rho 0.05, "
         "E0 = 0.4 ln C, top block frozen, reset below 0.2. Open-set filter: keep p_a(c_o) >= p_o(c_o), "
         "TENT adds the diversity term with alpha 0.5 (UniEnt's loss), EATA multiplies its weights by the mask.")


def make_methods(model, fisher, num_classes: int, names: list[str], lr: float) -> dict:
    """Constructors for the named methods, all on copies of ``model``."""
    table = {
        "source": lambda: Source(model),
        "bn": lambda: BNAdapt(model),
        "tent": lambda: TENT(model, optimizer="adam", lr=lr),
        "tent+filter": lambda: TENT(model, optimizer="adam", lr=lr, open_set=True),
        "tent+filter-nodiv": lambda: TENT(model, optimizer="adam", lr=lr, open_set=True, diversity_weight=0.0),
        "eata": lambda: EATA(model, fisher_images=fisher, optimizer="adam", lr=lr, num_classes=num_classes,
                             d_margin=0.4, fisher_alpha=1.0),
        "eata+filter": lambda: EATA(model, fisher_images=fisher, optimizer="adam", lr=lr, num_classes=num_classes,
                                    d_margin=0.4, fisher_alpha=1.0, open_set=True),
        "sar": lambda: SAR(model, optimizer="adam", lr=lr, num_classes=num_classes),
    }
    return {n: table[n] for n in names}


def fisher_images(train_x: np.ndarray, seed: int, n: int = 2000) -> np.ndarray:
    return np.ascontiguousarray(train_x[np.random.default_rng([seed, 7]).permutation(len(train_x))[:n], None])


def log(msg: str) -> None:
    print(msg, flush=True)


def per_corruption(args, seed, model, fisher) -> dict:
    out = {}
    load = (lambda name, sev: load_fashion_mnist_c(name, sev, seed=seed))
    for mname, make in make_methods(model, fisher, 10, ["source", "bn", "tent", "eata", "sar"], args.lr).items():
        t0 = time.perf_counter()
        rows = evaluate_corruptions(make(), load, args.corruptions, args.severities, args.batch, args.limit,
                                    np.random.default_rng([seed, 1]))
        out[mname] = rows
        log(f"  seed {seed} per-corruption {mname}: mean error {np.mean([r['error'] for r in rows]):.2f} % "
            f"({time.perf_counter() - t0:.0f} s)")
    return out


def continual(args, seed, model, fisher, clean) -> dict:
    sev = max(args.severities)
    pools = {c: load_fashion_mnist_c(c, sev, seed=seed) for c in args.corruptions}
    segs = continual_stream(pools, args.rounds, args.per_segment, np.random.default_rng([seed, 2]))
    cx, cy = clean
    out = {}
    for mname, make in make_methods(model, fisher, 10, ["source", "bn", "tent", "eata", "sar"], args.lr).items():
        m = make()
        before = clean_error(m, cx, cy, args.batch)
        rec = run_stream(m, segs, args.batch)
        after = clean_error(m, cx, cy, args.batch)
        by_round = {r: summarize(rec, ids)["error"] for r, ids in rounds_of(rec).items()}
        out[mname] = {**summarize(rec), "clean_error_before": before, "clean_error_after": after,
                      "forgetting": after - before, "error_by_round": list(by_round.values())}
        log(f"  seed {seed} continual {mname}: error {out[mname]['error']:.2f} %, clean {before:.2f} -> {after:.2f}, "
            f"backward samples {out[mname]['backward_samples']}")
    return out


def open_set(args, seed, model8, fisher8) -> dict:
    sev = max(args.severities)
    pools = {c: load_fashion_mnist_c(c, sev, seed=seed) for c in args.corruptions}
    segs = open_set_stream(pools, KNOWN, args.open_rounds, args.open_known, args.open_batch, args.open_batch,
                           np.random.default_rng([seed, 3]))
    out = {}
    names = args.open_methods
    for mname, make in make_methods(model8, fisher8, len(KNOWN), names, args.lr).items():
        rec = run_stream(make(), segs, 2 * args.open_batch)
        rounds = rounds_of(rec)
        out[mname] = {**summarize(rec), "error_by_round": [summarize(rec, ids)["error"] for ids in rounds.values()],
                      "auroc_by_round": [summarize(rec, ids)["auroc"] for ids in rounds.values()]}
        log(f"  seed {seed} open-set {mname}: known error {out[mname]['error']:.2f} %, "
            f"AUROC {out[mname]['auroc']:.3f}, last round {out[mname]['error_by_round'][-1]:.2f} %")
    return out


def finite_or_none(obj):
    """The result tree with NaN (the AUROC of a stream without unknowns) as None, so the JSON is strict."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def aggregate(results: dict, args) -> dict:
    """Means over seeds of the headline numbers, and the verdicts."""
    seeds = list(results)
    agg: dict = {"per_corruption": {}, "continual": {}, "open_set": {}}
    pc_methods = list(results[seeds[0]].get("per_corruption", {}))
    for m in pc_methods:
        per_seed = [np.mean([r["error"] for r in results[s]["per_corruption"][m]]) for s in seeds]
        back = [np.mean([r["backward_samples"] for r in results[s]["per_corruption"][m]]) for s in seeds]
        cells = {}
        for r_i, row in enumerate(results[seeds[0]]["per_corruption"][m]):
            key = f"{row['corruption']}@{row['severity']}"
            cells[key] = float(np.mean([results[s]["per_corruption"][m][r_i]["error"] for s in seeds]))
        sev = {str(v): float(np.mean([r["error"] for s in seeds for r in results[s]["per_corruption"][m]
                                      if r["severity"] == v])) for v in args.severities}
        agg["per_corruption"][m] = {"mean_error": mean_std(per_seed), "backward_samples_per_run": float(np.mean(back)),
                                    "cells": cells, "by_severity": sev}
    for m in results[seeds[0]].get("continual", {}):
        rs = [results[s]["continual"][m] for s in seeds]
        agg["continual"][m] = {k: mean_std([r[k] for r in rs]) for k in
                               ("error", "clean_error_before", "clean_error_after", "forgetting", "backward_samples",
                                "steps")}
        agg["continual"][m]["error_by_round"] = np.mean([r["error_by_round"] for r in rs], 0).tolist()
    for m in results[seeds[0]].get("open_set", {}):
        rs = [results[s]["open_set"][m] for s in seeds]
        agg["open_set"][m] = {k: mean_std([r[k] for r in rs]) for k in ("error", "auroc", "backward_samples")}
        agg["open_set"][m]["error_by_round"] = np.mean([r["error_by_round"] for r in rs], 0).tolist()
        agg["open_set"][m]["last_round_error"] = mean_std([r["error_by_round"][-1] for r in rs])
    return agg


def verdicts(agg: dict) -> list[dict]:
    """One verdict per expected result whose experiment was run."""
    pc, cont, op = agg["per_corruption"], agg["continual"], agg["open_set"]
    v = []

    def add(claim: str, holds: bool, evidence: str) -> None:
        v.append({"claim": claim, "holds": bool(holds), "evidence": evidence})

    if pc:
        add("TENT error < source error (per-corruption protocol)",
            pc["tent"]["mean_error"][0] < pc["source"]["mean_error"][0],
            f"TENT {pc['tent']['mean_error'][0]:.2f} % vs source {pc['source']['mean_error'][0]:.2f} %")
        add("EATA error <= TENT error (per-corruption protocol)",
            pc["eata"]["mean_error"][0] <= pc["tent"]["mean_error"][0],
            f"EATA {pc['eata']['mean_error'][0]:.2f} % vs TENT {pc['tent']['mean_error'][0]:.2f} % "
            f"(BN-adapt alone {pc['bn']['mean_error'][0]:.2f} %)")
        add("EATA uses fewer backward samples than TENT (per-corruption protocol)",
            pc["eata"]["backward_samples_per_run"] < pc["tent"]["backward_samples_per_run"],
            f"per corruption run: EATA {pc['eata']['backward_samples_per_run']:.0f} vs TENT "
            f"{pc['tent']['backward_samples_per_run']:.0f}")
    if cont:
        add("EATA error <= TENT error (continual stream)",
            cont["eata"]["error"][0] <= cont["tent"]["error"][0],
            f"EATA {cont['eata']['error'][0]:.2f} % vs TENT {cont['tent']['error'][0]:.2f} %")
        add("EATA uses fewer backward samples than TENT (continual stream)",
            cont["eata"]["backward_samples"][0] < cont["tent"]["backward_samples"][0],
            f"EATA {cont['eata']['backward_samples'][0]:.0f} vs TENT {cont['tent']['backward_samples'][0]:.0f}")
        add("EATA forgets less than TENT (clean error after the continual stream)",
            cont["eata"]["clean_error_after"][0] < cont["tent"]["clean_error_after"][0],
            f"clean error after: EATA {cont['eata']['clean_error_after'][0]:.2f} % vs TENT "
            f"{cont['tent']['clean_error_after'][0]:.2f} % (both {cont['tent']['clean_error_before'][0]:.2f} % "
            f"before; source {cont['source']['clean_error_before'][0]:.2f} %)")
    # tent+filter is UniEnt's loss (the filter plus a diversity term); tent+filter-nodiv is the filter alone
    variants = (("tent", "tent+filter", "the open-set filter with UniEnt's diversity term"),
                ("tent", "tent+filter-nodiv", "the open-set filter alone (no diversity term)"),
                ("eata", "eata+filter", "the open-set filter"))
    for base, name, what in variants:
        if base in op and name in op:
            f = op[name]
            add(f"{what} lowers {base.upper()}'s known-class error on the open-set long-term stream",
                f["error"][0] < op[base]["error"][0],
                f"{name} {f['error'][0]:.2f} % vs {base} {op[base]['error'][0]:.2f} % "
                f"(last round {f['last_round_error'][0]:.2f} vs {op[base]['last_round_error'][0]:.2f})")
    return v


def write_markdown(path: Path, result: dict) -> None:
    agg, cfg = result["aggregate"], result["config"]
    f2 = (lambda ms: f"{ms[0]:.2f} ± {ms[1]:.2f}" if len(cfg["seeds"]) > 1 else f"{ms[0]:.2f}")
    lines = [f"# Test-time adaptation on Fashion-MNIST-C: {cfg['label'].upper()} configuration", ""]
    if cfg["label"] != "full":
        lines += [f"**This is a {cfg['label']} run**, not the full protocol: seeds {cfg['seeds']}, severities "
                  f"{cfg['severities']}, {cfg['limit']} images per corruption run, continual {cfg['rounds']} rounds × "
                  f"{cfg['per_segment']} images per visit, open-set {cfg['open_rounds']} rounds × {cfg['open_known']} "
                  f"known + as many unknown images per visit. Full-run command:", "",
                  "```", result["full_command"], "```", ""]
    lines += [f"Command: `{cfg['command']}`", "",
              f"Source models: 10-class clean test accuracy {100 * result['source_accuracy']:.2f} %, "
              f"8-class (classes 0-7) {100 * result['source8_accuracy']:.2f} %. {HYPER}", "",
              f"Wall time {result['seconds']:.0f} s.", "", "## Expected results", "",
              "| claim | holds? | evidence |", "|---|---|---|"]
    lines += [f"| {v['claim']} | {'yes' if v['holds'] else '**no**'} | {v['evidence']} |" for v in result["verdicts"]]
    pc = agg["per_corruption"]
    if pc:
        methods = list(pc)
        lines += ["", "## 1. Per corruption (reset per corruption), error %", "",
                  "| corruption@severity | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for key in pc[methods[0]]["cells"]:
            lines.append(f"| {key} | " + " | ".join(f"{pc[m]['cells'][key]:.1f}" for m in methods) + " |")
        lines.append("| **mean** | " + " | ".join(f"**{f2(pc[m]['mean_error'])}**" for m in methods) + " |")
        lines.append("| backward samples / run | " + " | ".join(f"{pc[m]['backward_samples_per_run']:.0f}"
                                                              for m in methods) + " |")
        if len(cfg["severities"]) > 1:
            lines += ["", "Mean error % per severity:", "", "| severity | " + " | ".join(methods) + " |",
                      "|---" * (len(methods) + 1) + "|"]
            for s in cfg["severities"]:
                lines.append(f"| {s} | " + " | ".join(f"{pc[m]['by_severity'][str(s)]:.2f}" for m in methods) + " |")
    co = agg["continual"]
    if co:
        lines += ["", f"## 2. Continual, severity {max(cfg['severities'])}, {cfg['rounds']} rounds without reset", "",
                  "| method | error % | error % by round | clean error before → after | forgetting (pp) | "
                  "backward samples | steps |", "|---|---|---|---|---|---|---|"]
        for m, r in co.items():
            lines.append(f"| {m} | {f2(r['error'])} | {' / '.join(f'{e:.1f}' for e in r['error_by_round'])} | "
                         f"{r['clean_error_before'][0]:.2f} → {r['clean_error_after'][0]:.2f} | {f2(r['forgetting'])} | "
                         f"{r['backward_samples'][0]:.0f} | {r['steps'][0]:.0f} |")
    op = agg["open_set"]
    if op:
        lines += ["", f"## 3. Open-set long-term, severity {max(cfg['severities'])}, {cfg['open_rounds']} rounds, "
                  "classes 8-9 unknown", "",
                  "| method | known-class error % | last-round error % | error % by round | AUROC (max softmax) | "
                  "backward samples |", "|---|---|---|---|---|---|"]
        for m, r in op.items():
            lines.append(f"| {m} | {f2(r['error'])} | {f2(r['last_round_error'])} | "
                         f"{' / '.join(f'{e:.1f}' for e in r['error_by_round'])} | {r['auroc'][0]:.3f} | "
                         f"{r['backward_samples'][0]:.0f} |")
        lines += ["", "tent+filter is UniEnt's loss (filtered mean entropy minus 0.5 x the entropy of the batch-mean "
                  "prediction); tent+filter-nodiv is the filter alone. tent+filter's backward samples count "
                  "the whole batch because the diversity term reaches every sample."]
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())


FULL = ("OPENBLAS_NUM_THREADS=2 python benchmarks/tta_report.py --seeds 0,1,2 --severities 1,2,3,4,5 --limit 10000 "
        "--rounds 10 --per-segment 1000 --open-rounds 10 --open-known 1000 --label full")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--severities", default="1,2,3,4,5")
    ap.add_argument("--corruptions", default=",".join(CORRUPTIONS))
    ap.add_argument("--limit", type=int, default=10000, help="images per (corruption, severity) run")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of TENT, EATA and SAR")
    ap.add_argument("--rounds", type=int, default=10, help="continual: passes over the corruptions")
    ap.add_argument("--per-segment", type=int, default=1000, help="continual: images per corruption visit")
    ap.add_argument("--open-rounds", type=int, default=10)
    ap.add_argument("--open-known", type=int, default=1000, help="open-set: known images per corruption visit")
    ap.add_argument("--open-batch", type=int, default=100, help="open-set: known (and unknown) images per batch")
    ap.add_argument("--clean", type=int, default=2000, help="clean test images for the forgetting measure")
    ap.add_argument("--parts", default="per_corruption,continual,open_set", help="experiments to run")
    ap.add_argument("--open-methods", default="source,bn,tent,tent+filter,tent+filter-nodiv,eata,eata+filter")
    ap.add_argument("--label", default="full", help="'full', or e.g. 'reduced' (printed on the report)")
    ap.add_argument("--out", default=str(OUT / "tta_report"))
    ap.add_argument("--merge", nargs="+", default=None, metavar="STEM",
                    help="combine these results files (same settings, other seeds) into --out, then stop")
    add_scheduler_argument(ap)
    args = ap.parse_args()
    if args.merge:
        merge([Path(m) for m in args.merge], args.out)
        return
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.severities = [int(s) for s in args.severities.split(",")]
    args.corruptions = args.corruptions.split(",")
    args.parts = args.parts.split(",")
    args.open_methods = args.open_methods.split(",")
    t0 = time.perf_counter()
    model, info = train_source_model()  # trained once and cached: a --scheduler worker loads it from the cache
    model8, info8 = train_source_model(SourceConfig(classes=KNOWN))
    log(f"source models: 10 classes {info['test_accuracy']:.4f}, 8 classes {info8['test_accuracy']:.4f}")
    if args.scheduler:
        results = sweep_seeds(partial(seed_task, args), args.seeds, args.scheduler, modules=("tta_report",))
    else:
        data = seed_data()
        results = {seed: run_seed(args, seed, model, model8, data) for seed in args.seeds}
    threads = os.environ.get("OPENBLAS_NUM_THREADS")
    command = (f"OPENBLAS_NUM_THREADS={threads} " if threads else "") + " ".join(
        ["python", "benchmarks/tta_report.py"] + sys.argv[1:])
    finish(results, args, command, info, info8, time.perf_counter() - t0)


def seed_data() -> dict:
    """Fashion-MNIST train (all classes and the known 8) and test images, as every seed uses them."""
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    return {"train_x": train_x, "train8_x": select_classes(train_x, train_y, KNOWN)[0], "test_x": test_x,
            "test_y": test_y}


def run_seed(args, seed: int, model, model8, data: dict) -> dict:
    """The experiments of ``args.parts`` for one seed."""
    fisher, fisher8 = fisher_images(data["train_x"], seed), fisher_images(data["train8_x"], seed)
    pick = np.random.default_rng([seed, 4]).permutation(len(data["test_x"]))[:args.clean]
    clean = (data["test_x"][pick], data["test_y"][pick])
    runs = {"per_corruption": lambda: per_corruption(args, seed, model, fisher),
            "continual": lambda: continual(args, seed, model, fisher, clean),
            "open_set": lambda: open_set(args, seed, model8, fisher8)}
    return {part: runs[part]() for part in args.parts}


def seed_task(args, config: dict) -> dict:
    """One seed as a Dask task (``--scheduler``): the worker loads the cached source models and the data."""
    model, _ = train_source_model()
    model8, _ = train_source_model(SourceConfig(classes=KNOWN))
    return run_seed(args, config["seed"], model, model8, seed_data())


def finish(results: dict, args, command: str, info: dict, info8: dict, seconds: float) -> None:
    """Aggregate the per-seed results, write the JSON and markdown, print the verdicts."""
    agg = aggregate(results, args)
    result = {"config": {**{k: v for k, v in vars(args).items() if k not in ("out", "merge", "scheduler")},
                         "command": command},
              "full_command": FULL, "hyperparameters": HYPER, "source_accuracy": info["test_accuracy"],
              "source8_accuracy": info8["test_accuracy"], "seconds": seconds,
              "aggregate": agg, "verdicts": verdicts(agg), "per_seed": {str(s): r for s, r in results.items()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out.with_suffix(".json"), json.dumps(finite_or_none(result), indent=1, allow_nan=False).encode())
    write_markdown(out.with_suffix(".md"), result)
    for v in result["verdicts"]:
        log(f"{'HOLDS' if v['holds'] else 'FAILS'}: {v['claim']} ({v['evidence']})")


def merge(stems: list[Path], out: str) -> None:
    """Combine results files of the same settings whose seeds ran in separate processes into ``out``."""
    parts = [json.loads(stem.with_suffix(".json").read_text()) for stem in stems]
    first = parts[0]["config"]
    check_seed_parts([part["config"] for part in parts], stems, {"seeds", "command"})
    results = {int(s): r for part in parts for s, r in part["per_seed"].items()}
    if len(results) != sum(len(part["per_seed"]) for part in parts):
        raise ValueError(f"the files {[str(s) for s in stems]} repeat a seed")
    results = dict(sorted(results.items()))
    args = argparse.Namespace(**{**first, "seeds": list(results), "out": out})
    del args.command
    command = merged_command([part["config"]["command"] for part in parts], stems)
    finish(results, args, command, {"test_accuracy": parts[0]["source_accuracy"]},
           {"test_accuracy": parts[0]["source8_accuracy"]}, sum(part["seconds"] for part in parts))

if __name__ == "__main__":
    main()
