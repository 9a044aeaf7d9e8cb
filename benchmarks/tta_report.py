"""Test-time adaptation on Fashion-MNIST-C: TENT, EATA, SAR and the open-set ("wisdom of crowds") filter,
each with its own learning rate chosen on a validation stream, and a paired verdict (over seeds) on each
expected result of the TENT, EATA and open-set papers.

Three experiments with the cached SmallResNet source models (peftc.tta.train_source_model):

1. Per corruption (TENT's protocol): reset before each (corruption, severity), stream ``--limit`` images
   in a seed-drawn order; error % per corruption run, backward samples.
2. Continual (EATA's lifelong setting): ``--rounds`` passes over all corruptions at the highest listed
   severity, each pass in a seed-drawn order, ``--per-segment`` images per visit, no reset. The clean test
   error of the adapted model after the stream measures forgetting.
3. Open-set long-term, with a source model trained on classes 0-7: every batch holds ``--open-batch``
   corrupted known-class images and as many corrupted unknowns of the same corruption; ``--open-rounds``
   passes without reset. Two kinds of unknowns (``--unknowns``): ``near``, the held-out Fashion-MNIST
   classes 8 (Bag) and 9 (Ankle boot); ``far``, scikit-learn's bundled 8x8 handwritten digits (1,797 images,
   ``sklearn.datasets.load_digits``, read from the installed package, no download) upsampled to 28x28
   (corner-aligned bilinear) and corrupted like the known images. Known-class error and the AUROC of the
   maximum softmax score (known vs unknown).

Open-set arms: ``tent`` and ``eata`` (the papers' losses); ``+div`` adds the reference re-implementation's
diversity term (0.5 * H(batch-mean prediction) subtracted from the loss; that code's TENT and EATA baselines
carry it); ``+filter`` masks the entropy term with the open-set filter (keep p_a(c_o) >= p_o(c_o)). So
``tent+filter+div`` is UniEnt's loss and ``tent+filter`` the filter alone; the filter's own effect is
``+filter+div`` against ``+div`` and ``+filter`` against the plain method.

Protocol (peftc.evaluation). A fixed ``--val-size`` of the 10,000 test images (and 400 of the 1,797 digits)
is held out (the same rows for every seed): the validation streams are built from those rows only (corruption
seed ``--select-seed``, the highest listed severity, the lengths of the ``--val-*`` options), the test streams
from the other rows only. Every adapting method (per experiment and kind of unknowns) takes the learning rate
of ``--lr-grid`` with the lowest validation error (``select_on_validation``, every candidate's validation
error recorded); Source and BN-adapt have none. Only the chosen rates run on the seeds; a seed's test streams
are evaluated once per (experiment, method). Each claim is a paired comparison across seeds (paired t,
Wilcoxon beside it, Holm over the file's claims): the ``verdicts`` list. Seeds change the corruption noise
(the Fashion-MNIST-C files and digits of that seed) and the stream orders.

Cost, counted not timed: ``work_units`` counts sample passes (forward samples + 2 x backward samples, the
frozen copy's forward and EATA's Fisher included; the counts of a tiny run match these formulas), and the
committed full run of the previous protocol gives 0.206 ms per unit at one thread (RATE_S_PER_UNIT). The
results file's "cost" section repeats the count for the run it holds.

Full configuration (all severities, the 8,000 test rows per corruption run, 10-round streams of 1,000 images
per visit; 22.9 M units, about 80 CPU-minutes per seed; the selection 5.3 M units, about 18 minutes; 5 seeds
about 6.8 CPU-hours):
  OPENBLAS_NUM_THREADS=1 python benchmarks/tta_report.py --seeds 0,1,2,3,4 --severities 1,2,3,4,5 --limit 8000 \
      --rounds 10 --per-segment 1000 --open-rounds 10 --open-known 1000 --open-batch 100 --label full
REDUCED configuration (the claims' shape: severity 5, all 12 corruptions, 10-round continual and open-set
streams with shorter visits, 2,000 images per corruption run; 3.80 M units, about 13 CPU-minutes per seed; the
selection 2.74 M units, about 9 minutes; 5 seeds and the selection about 1.25 CPU-hours), split by seed:
  R="--severities 5 --limit 2000 --batch 100 --rounds 10 --per-segment 300 --open-rounds 10 --open-known 200 \
     --open-batch 50 --val-limit 500 --val-rounds 5 --val-per-segment 150 --val-open-rounds 5 --val-open-known 100 \
     --label REDUCED"
  OPENBLAS_NUM_THREADS=1 python benchmarks/tta_report.py $R --select-only --out benchmarks/results/tta_report_select
  OPENBLAS_NUM_THREADS=1 python benchmarks/tta_report.py $R --selection benchmarks/results/tta_report_select.json \
      --seeds N --out benchmarks/results/tta_report_sN          # N = 0 .. 4, one process each
  python benchmarks/tta_report.py --merge benchmarks/results/tta_report_s0 ... benchmarks/results/tta_report_s4 \
      --out benchmarks/results/tta_report
The first run of a seed also writes that seed's Fashion-MNIST-C files (12 at severity 5) to the cache.
A selection file made with other settings (another grid, other streams) is refused. With ``--scheduler local``
or a Dask scheduler's address the selection runs here first (or comes from ``--selection``) and each seed is a
task of peftc.distributed.run_sweep, into one file. Writes benchmarks/results/tta_report.{json,md}.
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

from common import (add_scheduler_argument, check_seed_parts, check_selection_settings,  # this folder: a script
                    merged_command, merged_cpu, results_json, sweep_seeds)
from seed_verdicts import seed_verdicts, seed_verdicts_markdown
from peftc.data.corruptions import CORRUPTIONS, _linear_matrix, corrupt, load_fashion_mnist_c
from peftc.data.fashion_mnist import load_fashion_mnist
from peftc.evaluation import Claim, select_on_validation
from peftc.io.atomic import write_bytes_atomic
from peftc.machine import cpu_model
from peftc.tta import EATA, SAR, TENT, BNAdapt, Source, SourceConfig, train_source_model
from peftc.tta.evaluate import (clean_error, continual_stream, evaluate_corruptions, open_set_stream, rounds_of,
                                run_stream, summarize)
from peftc.tta.source_model import select_classes

OUT = Path(__file__).parent / "results"
KNOWN = tuple(range(8))  # classes 8 (Bag) and 9 (Ankle boot) are the near unknowns
DIGITS_VAL = 400  # digits held out for the validation streams (of 1,797)
SPLIT_SEED = 20261207  # the fixed validation / test split of the rows (the same for every run seed)
DIVERSITY = 0.5  # the reference's alpha
CLOSED_METHODS = ("source", "bn", "tent", "eata", "sar")
OPEN_METHODS = ("source", "bn", "tent", "tent+div", "tent+filter", "tent+filter+div", "eata", "eata+div",
                "eata+filter", "eata+filter+div")
FIXED = ("source", "bn")  # no learning rate to choose
HYPER = ("TENT, EATA, SAR: Adam, one step per batch, lr per method from the grid on validation. EATA: E0 = 0.4 ln C, "
         "d_margin 0.4, fisher_alpha 1, Fisher from 2000 clean training images (of the known classes in the "
         "open-set run). SAR: rho 0.05, E0 = 0.4 ln C, top block frozen, reset below 0.2. +div: minus 0.5 x the "
         "entropy of the batch-mean prediction (the whole batch). +filter: the entropy term keeps sample i iff "
         "p_a(c_o) >= p_o(c_o) (frozen copy taken after configuration, so it also normalises with batch "
         "statistics); EATA multiplies its weights by the mask.")


def make_method(name: str, model, fisher: np.ndarray, num_classes: int, lr: float | None):
    """The method ``name`` (one of OPEN_METHODS or "sar") on a copy of ``model`` at Adam learning rate ``lr``.

    >>> from peftc.models import SmallResNet
    >>> m = make_method("eata+filter+div", SmallResNet((4, 8), num_classes=8, seed=0), None, 8, 1e-3)
    >>> (type(m).__name__, m.frozen is not None, m.diversity_weight)
    ('EATA', True, 0.5)
    """
    if name == "source":
        return Source(model)
    if name == "bn":
        return BNAdapt(model)
    base, *mods = name.split("+")
    unknown = set(mods) - {"filter", "div"}
    if unknown or base not in ("tent", "eata", "sar") or (base == "sar" and mods):
        raise ValueError(f"unknown method {name!r}; expected one of {OPEN_METHODS + ('sar',)}")
    div = DIVERSITY if "div" in mods else 0.0
    if base == "tent":
        return TENT(model, optimizer="adam", lr=lr, open_set="filter" in mods, diversity_weight=div)
    if base == "eata":
        return EATA(model, fisher_images=fisher, optimizer="adam", lr=lr, num_classes=num_classes, d_margin=0.4,
                    fisher_alpha=1.0, open_set="filter" in mods, diversity_weight=div)
    return SAR(model, optimizer="adam", lr=lr, num_classes=num_classes)


def work_units(name: str, stats: dict, batch: int, fisher_n: int = 0) -> dict:
    """Sample passes a method spent: ``forward`` (adapted model, + the frozen copy with the filter, + SAR's second
    forward), ``backward`` (the batch of every step: the backward runs over the whole batch; SAR two per step) and
    ``units`` = forward + 2 backward (a backward costs about two forwards). EATA's Fisher (``fisher_n`` clean
    images, forward and backward) is included. The cost estimate multiplies units by a per-unit rate."""
    forward = stats["samples"] * (2 if "filter" in name else 1)
    backward = stats["steps"] * batch
    if name == "sar":
        forward += stats["steps"] * batch
        backward *= 2
    if name.startswith("eata"):
        forward, backward = forward + fisher_n, backward + fisher_n
    return {"forward": int(forward), "backward": int(backward), "units": int(forward + 2 * backward)}


def fisher_images(train_x: np.ndarray, seed: int, n: int = 2000) -> np.ndarray:
    return np.ascontiguousarray(train_x[np.random.default_rng([seed, 7]).permutation(len(train_x))[:n], None])


def log(msg: str) -> None:
    print(msg, flush=True)


def split_rows(n: int, n_val: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation rows, test rows) of ``n`` rows: a fixed permutation (the same for every run seed), sorted.

    >>> val, test = split_rows(10, 3)
    >>> len(val), len(test), sorted(set(val) | set(test)) == list(range(10))
    (3, 7, True)
    """
    if not 0 < n_val < n:
        raise ValueError(f"the validation part must hold between 1 and {n - 1} of the {n} rows, got {n_val}")
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(perm[:n_val]), np.sort(perm[n_val:])


def digits_28() -> np.ndarray:
    """scikit-learn's bundled 8x8 digits (1797, values 0..16) as (1797, 28, 28) float32 in [0, 1], corner-aligned
    bilinear upsampling (the far out-of-distribution unknowns)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # a test-and-benchmark dependency (requirements-dev.txt), not one of peftc's
        raise ImportError("the far unknowns need scikit-learn (pip install scikit-learn; requirements-dev.txt)") from e
    small = load_digits().images / 16.0
    up = _linear_matrix(8, 28)
    return np.clip(np.einsum("ij,njk,lk->nil", up, small, up), 0.0, 1.0).astype(np.float32)


class Streams:
    """The corrupted pools of one split ("val" or "test") and one corruption seed, loaded on demand.

    ``pool(c)``: (images, labels) of corruption ``c`` at ``severity`` on the split's rows; ``far_pool(c)``: the
    known-class rows of that pool followed by the split's digits corrupted the same way (label 10, an unknown).
    """

    def __init__(self, split: str, seed: int, severity: int, val_size: int, digits: np.ndarray | None = None):
        self.seed, self.severity = seed, severity
        self.rows = split_rows(10000, val_size)[0 if split == "val" else 1]
        self.digit_rows = None if digits is None else split_rows(len(digits), DIGITS_VAL)[0 if split == "val" else 1]
        self.digits = digits
        self._cache: dict = {}

    def pool(self, c: str, severity: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        x, y = load_fashion_mnist_c(c, severity or self.severity, seed=self.seed)
        return x[self.rows], y[self.rows]

    def far_pool(self, c: str) -> tuple[np.ndarray, np.ndarray]:
        if c not in self._cache:
            x, y = self.pool(c)
            known = y < len(KNOWN)
            d = corrupt(self.digits[self.digit_rows], c, self.severity, seed=self.seed)
            self._cache[c] = (np.concatenate([x[known], d]),
                              np.concatenate([y[known], np.full(len(d), 10, dtype=y.dtype)]))
        return self._cache[c]


# -- one stream of each experiment, for one method -----------------------------------------------------
def run_per_corruption(make, streams: Streams, corruptions, severities, batch: int, limit: int, rng) -> dict:
    method = make()
    rows = evaluate_corruptions(method, streams.pool, corruptions, severities, batch, limit, rng)
    total = {"samples": sum(r["known"] for r in rows), "steps": sum(r["steps"] for r in rows)}
    return {"error": float(np.mean([r["error"] for r in rows])),
            "backward_samples": float(np.mean([r["backward_samples"] for r in rows])), "rows": rows,
            "_stats": total}


def run_continual(make, segs, batch: int, clean=None) -> dict:
    m = make()
    before = clean_error(m, *clean, batch) if clean else None
    rec = run_stream(m, segs, batch)
    out = {**summarize(rec), "error_by_round": [summarize(rec, ids)["error"] for ids in rounds_of(rec).values()],
           "_stats": dict(m.stats)}
    if clean:
        after = clean_error(m, *clean, batch)
        out.update(clean_error_before=before, clean_error_after=after, forgetting=after - before)
    return out


def run_open(make, segs, batch: int) -> dict:
    m = make()
    rec = run_stream(m, segs, batch)
    rounds = rounds_of(rec)
    return {**summarize(rec), "error_by_round": [summarize(rec, ids)["error"] for ids in rounds.values()],
            "auroc_by_round": [summarize(rec, ids)["auroc"] for ids in rounds.values()], "_stats": dict(m.stats)}


def experiments(args) -> list[tuple[str, tuple[str, ...]]]:
    """(experiment key, its methods) in run order: per_corruption, continual, open_set_near, open_set_far."""
    out = []
    for part in args.parts:
        if part == "open_set":
            out += [(f"open_set_{kind}", tuple(args.open_methods)) for kind in args.unknowns]
        else:
            out.append((part, CLOSED_METHODS))
    return out


def build(args, key: str, split: str, seed: int, models: dict, digits) -> dict:
    """The streams and method factory of experiment ``key`` on ``split`` ("val" or "test") with corruption and
    order seed ``seed``: {"run": method factory -> result, "make": (name, lr) -> method factory}."""
    val = split == "val"
    sev = max(args.severities)
    streams = Streams(split, seed, sev, args.val_size, digits if key == "open_set_far" else None)
    if key.startswith("open_set"):
        model, fisher, classes = models["model8"], models["fisher8"], len(KNOWN)
    else:
        model, fisher, classes = models["model"], models["fisher"], 10
    make = (lambda name, lr: (lambda: make_method(name, model, fisher, classes, lr)))
    if key == "per_corruption":
        sevs = [sev] if val else args.severities
        limit = args.val_limit if val else args.limit
        run = (lambda f: run_per_corruption(f, streams, args.corruptions, sevs, args.batch, limit,
                                            np.random.default_rng([seed, 1])))
    elif key == "continual":
        pools = {c: streams.pool(c) for c in args.corruptions}
        rounds, per = (args.val_rounds, args.val_per_segment) if val else (args.rounds, args.per_segment)
        segs = continual_stream(pools, rounds, per, np.random.default_rng([seed, 2]))
        clean = None if val else models["clean"]
        run = (lambda f: run_continual(f, segs, args.batch, clean))
    else:
        pool = streams.pool if key == "open_set_near" else streams.far_pool
        pools = {c: pool(c) for c in args.corruptions}
        rounds, known = (args.val_open_rounds, args.val_open_known) if val else (args.open_rounds, args.open_known)
        segs = open_set_stream(pools, KNOWN, rounds, known, args.open_batch, args.open_batch,
                               np.random.default_rng([seed, 3]))
        run = (lambda f: run_open(f, segs, 2 * args.open_batch))
    return {"run": run, "make": make}


def batch_of(args, key: str) -> int:
    return 2 * args.open_batch if key.startswith("open_set") else args.batch


def tracked(name: str, result: dict, args, key: str) -> dict:
    """The result with its private stats turned into the work counts of :func:`work_units`."""
    stats = result.pop("_stats")
    stats = {"samples": stats["samples"], "steps": stats["steps"]}
    result["work"] = work_units(name, stats, batch_of(args, key), 2000 if name.startswith("eata") else 0)
    if key == "continual":
        result["work"]["forward"] += 2 * args.clean
        result["work"]["units"] += 2 * args.clean
    return result


# -- selection on the validation streams ---------------------------------------------------------------
def select(args, models: dict, digits) -> dict:
    """Per experiment and adapting method, the learning rate of ``args.lr_grid`` with the lowest validation error.

    Returns {experiment: {method: {"candidates", "val_error", "chosen", "work"}}}; the test streams are never
    built here (``select_on_validation``'s test call returns None)."""
    out: dict = {}
    for key, methods in experiments(args):
        setup = build(args, key, "val", args.select_seed, models, digits)
        out[key] = {}
        for name in methods:
            if name in FIXED:
                continue
            work = []

            def train_fn(candidate, name=name, work=work):
                result = tracked(name, setup["run"](setup["make"](name, candidate["lr"])), args, key)
                work.append(result["work"]["units"])
                return result

            sel = select_on_validation([{"lr": lr} for lr in args.lr_grid], train_fn,
                                       lambda r, split: r["error"] if split == "validation" else None,
                                       maximize=False)
            out[key][name] = {"candidates": list(sel.candidates), "val_error": [float(v) for v in sel.scores],
                              "chosen": dict(sel.best_candidate), "work_units": int(sum(work))}
            log(f"select {key} {name}: " + ", ".join(f"lr {c['lr']:g} -> {v:.2f} %" for c, v in
                                                     zip(sel.candidates, sel.scores))
                + f"; chose {sel.best_candidate['lr']:g}")
    return out


# -- one seed ------------------------------------------------------------------------------------------
def seed_data() -> dict:
    """Fashion-MNIST train (all classes and the known 8) and test images, and the 28x28 digits."""
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    return {"train_x": train_x, "train8_x": select_classes(train_x, train_y, KNOWN)[0], "test_x": test_x,
            "test_y": test_y}


def models_for(args, seed: int, model, model8, data: dict) -> dict:
    _, test_rows = split_rows(10000, args.val_size)
    pick = np.random.default_rng([seed, 4]).permutation(test_rows)[:args.clean]
    return {"model": model, "model8": model8, "fisher": fisher_images(data["train_x"], seed),
            "fisher8": fisher_images(data["train8_x"], seed), "clean": (data["test_x"][pick], data["test_y"][pick])}


def run_seed(args, seed: int, model, model8, data: dict, selection: dict, digits) -> dict:
    """Every experiment of ``args`` on seed ``seed``'s test streams, each method at its chosen learning rate."""
    models = models_for(args, seed, model, model8, data)
    out: dict = {}
    for key, methods in experiments(args):
        setup = build(args, key, "test", seed, models, digits)
        out[key] = {}
        for name in methods:
            lr = None if name in FIXED else selection[key][name]["chosen"]["lr"]
            r = tracked(name, setup["run"](setup["make"](name, lr)), args, key)
            out[key][name] = {"lr": lr, **r}
            extra = f", AUROC {r['auroc']:.3f}" if key.startswith("open_set") else ""
            log(f"  seed {seed} {key} {name} (lr {lr}): error {r['error']:.2f} %{extra}")
    return out


def seed_task(args, selection: dict, config: dict) -> dict:
    """One seed as a Dask task (``--scheduler``): the worker loads the cached source models and the data."""
    model, _ = train_source_model()
    model8, _ = train_source_model(SourceConfig(classes=KNOWN))
    digits = digits_28() if "far" in args.unknowns else None
    return run_seed(args, config["seed"], model, model8, seed_data(), selection, digits)


# -- claims, verdicts, report --------------------------------------------------------------------------
CLOSED_CLAIMS = (  # (claim, experiment, arm A, arm B, score): mean(A) < mean(B) is claimed
    ("TENT error < source error (per-corruption protocol)", "per_corruption", "tent", "source", "error"),
    ("EATA error < TENT error (per-corruption protocol)", "per_corruption", "eata", "tent", "error"),
    ("EATA uses fewer backward samples than TENT (per-corruption protocol)", "per_corruption", "eata", "tent",
     "backward_samples"),
    ("EATA error < TENT error (continual stream)", "continual", "eata", "tent", "error"),
    ("EATA uses fewer backward samples than TENT (continual stream)", "continual", "eata", "tent",
     "backward_samples"),
    ("EATA forgets less than TENT (clean error after the continual stream)", "continual", "eata", "tent",
     "clean_error_after"),
)
OPEN_CLAIMS = (  # the same, per kind of unknowns; the score is the known-class error over the whole stream
    ("the filter lowers TENT+div's known-class error (tent+filter+div vs tent+div: the filter's own effect)",
     "tent+filter+div", "tent+div"),
    ("the filter alone lowers TENT's known-class error (tent+filter vs tent)", "tent+filter", "tent"),
    ("the filter lowers EATA+div's known-class error (eata+filter+div vs eata+div)", "eata+filter+div", "eata+div"),
    ("the filter alone lowers EATA's known-class error (eata+filter vs eata)", "eata+filter", "eata"),
    ("UniEnt's loss lowers plain TENT's known-class error (tent+filter+div vs tent: filter and diversity together)",
     "tent+filter+div", "tent"),
    ("the diversity term lowers TENT's known-class error (tent+div vs tent)", "tent+div", "tent"),
    ("the diversity term lowers EATA's known-class error (eata+div vs eata)", "eata+div", "eata"),
)


def claim_rows() -> list[tuple[str, str, str, str, str]]:
    rows = list(CLOSED_CLAIMS)
    for kind, what in (("near", "near unknowns: Fashion-MNIST classes 8-9"), ("far", "far unknowns: digits")):
        rows += [(f"{text}, open-set stream, {what}", f"open_set_{kind}", a, b, "error") for text, a, b in OPEN_CLAIMS]
    return rows


def paired_claims(per_seed: dict) -> list[Claim]:
    """The claims whose arms ran, one score per seed on each side (paired by seed)."""
    seeds = sorted(per_seed, key=int)
    out = []
    for text, key, a, b, score in claim_rows():
        if not all(key in per_seed[s] and a in per_seed[s][key] and b in per_seed[s][key] for s in seeds):
            continue
        out.append(Claim(text, [per_seed[s][key][a][score] for s in seeds],
                         [per_seed[s][key][b][score] for s in seeds], "less"))
    return out


def mean_std(values: list[float]) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    return [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0]


SUMMARY_KEYS = ("error", "backward_samples", "auroc", "clean_error_after", "forgetting")


def aggregate(per_seed: dict) -> dict:
    """Per experiment and method: mean and std over seeds of the headline numbers, the error by round, the lr."""
    seeds = sorted(per_seed, key=int)
    agg: dict = {}
    for key, methods in per_seed[seeds[0]].items():
        agg[key] = {}
        for m, r0 in methods.items():
            rs = [per_seed[s][key][m] for s in seeds]
            row = {k: mean_std([r[k] for r in rs]) for k in SUMMARY_KEYS
                   if all(isinstance(r.get(k), (int, float)) and np.isfinite(r[k]) for r in rs)}
            if "error_by_round" in r0:
                row["error_by_round"] = np.mean([r["error_by_round"] for r in rs], 0).tolist()
            row["lr"] = r0["lr"]
            row["work_units"] = float(np.mean([r["work"]["units"] for r in rs]))
            agg[key][m] = row
    return agg


def finite_or_none(obj):
    """The result tree with NaN (the AUROC of a stream without unknowns) as None, so the JSON is strict."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


TITLES = {"per_corruption": "Per corruption (reset per corruption run)", "continual": "Continual, no reset",
          "open_set_near": "Open-set long-term, near unknowns (Fashion-MNIST classes 8-9)",
          "open_set_far": "Open-set long-term, far unknowns (8x8 digits upsampled to 28x28)"}


def markdown(result: dict) -> str:
    cfg = result["config"]
    pm = (lambda ms: f"{ms[0]:.2f} ± {ms[1]:.2f}")
    lines = [f"# Test-time adaptation on Fashion-MNIST-C: {cfg['label'].upper()} configuration", ""]
    if cfg["label"] != "full":
        lines += [f"**{cfg['label'].upper()} run**, not the full protocol: seeds {cfg['seeds']}, severities "
                  f"{cfg['severities']}, {cfg['limit']} images per corruption run, continual {cfg['rounds']} rounds x "
                  f"{cfg['per_segment']} images per visit, open-set {cfg['open_rounds']} rounds x {cfg['open_known']} "
                  f"known + as many unknown images per visit. Full-configuration command:", "",
                  "```", result["full_command"], "```", ""]
    if cfg["label"].lower() == "tiny":
        lines += ["A tiny smoke configuration that exercises the code path (few corruptions, a few batches per "
                  "stream): its numbers are not evidence for or against any claim.", ""]
    lines += [f"CPU: {result.get('cpu', 'not recorded')}. Command: `{cfg['command']}`", "",
              f"Source models: 10-class clean test accuracy {100 * result['source_accuracy']:.2f} %, "
              f"8-class (classes 0-7) {100 * result['source8_accuracy']:.2f} %. {HYPER}", "",
              f"Wall time {result['seconds']:.0f} s (of this process, the selection included unless it came from "
              "--selection; summed over the processes of merged files).", "",
              "## Verdicts", "", seed_verdicts_markdown(result["verdicts"]),
              "Scores: error % (lower is better; every claim is A < B, so a negative diff favours the claim), "
              "backward samples per corruption run or stream, clean error % after the stream.", ""]
    sel = result["selection"]
    for key, methods in result["aggregate"].items():
        lines += [f"## {TITLES.get(key, key)}", "",
                  "| method | lr (validation) | error % | backward samples | AUROC | clean error after % |",
                  "|---|---|---|---|---|---|"]
        for m, r in methods.items():
            cell = (lambda k: pm(r[k]) if k in r else "-")
            lr = "-" if r["lr"] is None else f"{r['lr']:g}"
            lines.append(f"| {m} | {lr} | {cell('error')} | {r['backward_samples'][0]:.0f} | "
                         f"{cell('auroc') if 'auroc' in r else '-'} | {cell('clean_error_after')} |")
        if any("error_by_round" in r for r in methods.values()):
            lines += ["", "Error % by round: " + "; ".join(
                f"{m} " + " / ".join(f"{e:.1f}" for e in r["error_by_round"]) for m, r in methods.items()
                if "error_by_round" in r)]
        if key in sel:
            lines += ["", "Validation error % per learning rate: " + "; ".join(
                f"{m} " + ", ".join(f"{c['lr']:g}: {v:.2f}" for c, v in zip(s["candidates"], s["val_error"]))
                for m, s in sel[key].items())]
        lines.append("")
    cost = result.get("cost")
    if cost:
        lines += ["## Cost (sample passes, not time)", "",
                  "Work units (forward samples + 2 x backward samples, counted) per seed: "
                  f"{cost['units_per_seed']:,.0f}; "
                  f"selection: {cost['selection_units']:,.0f}. At {1e3 * cost['rate_s_per_unit']:.3f} ms per unit (the "
                  f"committed full run's seconds over its counted units, 1 thread) that is about "
                  f"{cost['seconds_per_seed'] / 60:.1f} min per seed and {cost['selection_seconds'] / 60:.1f} min for "
                  f"the selection.", ""]
    return "\n".join(lines) + "\n"


FULL = ("OPENBLAS_NUM_THREADS=1 python benchmarks/tta_report.py --seeds 0,1,2,3,4 --severities 1,2,3,4,5 --limit 8000 "
        "--rounds 10 --per-segment 1000 --open-rounds 10 --open-known 1000 --open-batch 100 --label full")
# Seconds per work unit at one thread: the committed full run of the previous protocol (tta_report_s0/_s1/_s2:
# 3077, 3074 and 2363 s for 14.92 M units each by work_units' count, 0.206, 0.206 and 0.158 ms per unit; the
# slowest is taken, so the estimate errs long). A count-based estimate, not a timing of this code.
RATE_S_PER_UNIT = 2.06e-4


def cost(per_seed: dict, selection: dict) -> dict:
    """Counted work units per seed (mean) and of the selection, and their time at RATE_S_PER_UNIT."""
    units = float(np.mean([sum(r["work"]["units"] for methods in part.values() for r in methods.values())
                           for part in per_seed.values()]))
    sel = float(sum(v["work_units"] for methods in selection.values() for v in methods.values()))
    return {"units_per_seed": units, "selection_units": sel, "rate_s_per_unit": RATE_S_PER_UNIT,
            "seconds_per_seed": units * RATE_S_PER_UNIT, "selection_seconds": sel * RATE_S_PER_UNIT}


def settings_of(args) -> dict:
    """The settings recorded in a results file (and compared by --selection and --merge)."""
    skip = ("out", "merge", "scheduler", "selection", "select_only", "command")
    return {k: v for k, v in vars(args).items() if k not in skip}


SELECTION_IGNORES = {"seeds"}  # a seed run may differ from its --selection file in these only


def payload(args, command: str, per_seed: dict, selection: dict, info: dict, info8: dict, seconds: float,
            cpu: str | None = None) -> dict:
    """The results file; ``cpu`` is the machine's (:func:`peftc.machine.cpu_model`) unless given (a merge)."""
    result = {"config": {**settings_of(args), "command": command}, "cpu": cpu or cpu_model(),
              "reduced": args.label.lower() != "full",
              "full_command": FULL, "hyperparameters": HYPER, "source_accuracy": info["test_accuracy"],
              "source8_accuracy": info8["test_accuracy"], "seconds": seconds, "selection": selection}
    if per_seed:
        result["verdicts"] = seed_verdicts(paired_claims(per_seed))
        result["aggregate"] = aggregate(per_seed)
        result["cost"] = cost(per_seed, selection)
    else:
        result["verdicts"], result["aggregate"] = [], {}
    result["per_seed"] = {str(s): r for s, r in per_seed.items()}
    return finite_or_none(result)


def load_selection(path: Path, args) -> dict:
    """The "selection" of a --select-only (or seed) results file; ValueError unless it was made with the settings
    of ``args`` outside SELECTION_IGNORES (a selection from another grid or other streams is never reused)."""
    made = json.loads(Path(path).read_text())
    check_selection_settings(settings_of(args), {k: v for k, v in made["config"].items() if k != "command"},
                             path, SELECTION_IGNORES)
    return made["selection"]


def write(result: dict, out: str) -> None:
    stem = Path(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(stem.with_suffix(".json"), (results_json(result) + "\n").encode())
    write_bytes_atomic(stem.with_suffix(".md"), markdown(result).encode())
    for v in result["verdicts"]:
        log(f"{'HOLDS' if v['holds'] else 'no   '} p_holm {v['p_holm']:.3g} diff {v['diff']:+.3f}: {v['claim']}")


def merge(stems: list[Path], out: str) -> dict:
    """Combine results files of the same settings and selection whose seeds ran in separate processes."""
    parts = [json.loads(stem.with_suffix(".json").read_text()) for stem in stems]
    first = parts[0]
    check_seed_parts([{k: v for k, v in p["config"].items() if k != "command"} for p in parts], stems, {"seeds"})
    for part, stem in zip(parts[1:], stems[1:]):
        if part["selection"] != first["selection"]:
            raise ValueError(f"{stem}: its selection differs from {stems[0]}'s; seeds must share one selection")
    per_seed = {}
    for part in parts:
        for s, r in part["per_seed"].items():
            if s in per_seed:
                raise ValueError(f"the files {[str(s) for s in stems]} repeat a seed ({s})")
            per_seed[s] = r
    per_seed = dict(sorted(per_seed.items(), key=lambda kv: int(kv[0])))
    args = argparse.Namespace(**{k: v for k, v in first["config"].items() if k != "command"})
    args.seeds = [int(s) for s in per_seed]
    command = merged_command([p["config"]["command"] for p in parts], stems)
    result = payload(args, command, per_seed, first["selection"], {"test_accuracy": first["source_accuracy"]},
                     {"test_accuracy": first["source8_accuracy"]}, sum(p["seconds"] for p in parts),
                     merged_cpu([p.get("cpu") for p in parts]))
    write(result, out)
    return result


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--severities", default="1,2,3,4,5")
    ap.add_argument("--corruptions", default=",".join(CORRUPTIONS))
    ap.add_argument("--limit", type=int, default=8000, help="test images per (corruption, severity) run")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--lr-grid", default="1e-4,3e-4,1e-3", help="Adam learning rates, one chosen per method")
    ap.add_argument("--rounds", type=int, default=10, help="continual: passes over the corruptions")
    ap.add_argument("--per-segment", type=int, default=1000, help="continual: images per corruption visit")
    ap.add_argument("--open-rounds", type=int, default=10)
    ap.add_argument("--open-known", type=int, default=1000, help="open-set: known images per corruption visit")
    ap.add_argument("--open-batch", type=int, default=100, help="open-set: known (and unknown) images per batch")
    ap.add_argument("--clean", type=int, default=2000, help="clean test images for the forgetting measure")
    ap.add_argument("--val-size", type=int, default=2000, help="test-set rows held out for the validation streams")
    ap.add_argument("--val-limit", type=int, default=1000, help="validation images per corruption run")
    ap.add_argument("--val-rounds", type=int, default=5)
    ap.add_argument("--val-per-segment", type=int, default=300)
    ap.add_argument("--val-open-rounds", type=int, default=5)
    ap.add_argument("--val-open-known", type=int, default=200)
    ap.add_argument("--select-seed", type=int, default=0, help="corruption and order seed of the validation streams")
    ap.add_argument("--parts", default="per_corruption,continual,open_set", help="experiments to run")
    ap.add_argument("--unknowns", default="near,far", help="open-set unknowns: near (classes 8-9), far (digits)")
    ap.add_argument("--open-methods", default=",".join(OPEN_METHODS))
    ap.add_argument("--label", default="full", help="'full', or e.g. 'REDUCED' (printed on the report)")
    ap.add_argument("--out", default=str(OUT / "tta_report"))
    ap.add_argument("--select-only", action="store_true", help="run the validation selection, write it, stop")
    ap.add_argument("--selection", default=None, metavar="JSON", help="reuse the selection stored in this file")
    ap.add_argument("--merge", nargs="+", default=None, metavar="STEM",
                    help="combine these results files (same settings, other seeds) into --out, then stop")
    add_scheduler_argument(ap)
    return ap


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.merge:
        return args
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.severities = [int(s) for s in args.severities.split(",")]
    args.corruptions = args.corruptions.split(",")
    args.parts = args.parts.split(",")
    args.unknowns = args.unknowns.split(",")
    args.open_methods = args.open_methods.split(",")
    args.lr_grid = [float(v) for v in args.lr_grid.split(",")]
    bad = set(args.unknowns) - {"near", "far"}
    if bad:
        raise ValueError(f"--unknowns must name near and/or far, got {sorted(bad)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.merge:
        merge([Path(m) for m in args.merge], args.out)
        return
    threads = os.environ.get("OPENBLAS_NUM_THREADS")
    command = (f"OPENBLAS_NUM_THREADS={threads} " if threads else "") + " ".join(
        ["python", "benchmarks/tta_report.py"] + (sys.argv[1:] if argv is None else argv))
    t0 = time.perf_counter()
    model, info = train_source_model()  # trained once and cached
    model8, info8 = train_source_model(SourceConfig(classes=KNOWN))
    log(f"source models: 10 classes {info['test_accuracy']:.4f}, 8 classes {info8['test_accuracy']:.4f}")
    digits = digits_28() if "open_set" in args.parts and "far" in args.unknowns else None
    data = seed_data()
    if args.selection:
        selection = load_selection(Path(args.selection), args)
    else:
        selection = select(args, models_for(args, args.select_seed, model, model8, data), digits)
    if args.select_only:
        write(payload(args, command, {}, selection, info, info8, time.perf_counter() - t0), args.out)
        return
    if args.scheduler:
        per_seed = sweep_seeds(partial(seed_task, args, selection), args.seeds, args.scheduler,
                               modules=("seed_verdicts", "tta_report"))
    else:
        per_seed = {}
        for seed in args.seeds:
            per_seed[seed] = run_seed(args, seed, model, model8, data, selection, digits)
    write(payload(args, command, per_seed, selection, info, info8, time.perf_counter() - t0), args.out)


if __name__ == "__main__":
    main()
