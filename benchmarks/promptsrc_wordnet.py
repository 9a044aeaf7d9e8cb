"""PromptSRC on the MiniLM dual encoder, WordNet supersenses: base-to-novel, with paired verdicts over seeds.

Arms (peftc.prompt.METHODS): the frozen dual encoder zero-shot; CoOp-style label prompts at the input
layer trained with CE only; IVLP (PromptSRC's deep prompts on both branches, CE only); PromptSRC; and
PromptSRC without components: ``no_l1`` (both L1 terms off: the ablation of the claim "the
regularisers are what does it"), and, on request, no_text_l1, no_input_l1, no_kl, no_gpa,
no_text_diversity, normal_deep_init. Per seed: 16-shot training on the 21 base classes, accuracy on
base and novel test glosses (each among its own half of the classes) and their harmonic mean; for the
arms in ``--fewshot-methods``, 16-shot training on all 41 classes and 41-way accuracy.

Protocol (peftc.evaluation). Training follows the paper: SGD at batch 4, one warm-up epoch at 1e-5,
cosine over ``--epochs`` epochs (84 steps each on the 336 base shots), logit scale 100 (the paper's
CLIP value, ``--logit-scale 20`` for MiniLM's own, the old setting). Everything is chosen on the
VALIDATION split (``--val-per-class`` glosses per class of the validation split; novel accuracy on the
validation glosses of the novel classes) with seed ``--select-seed``; the test split is evaluated once
per (seed, arm):
  1. Every trained arm runs the whole schedule once per learning rate of ``--lr-grid`` and records its
     validation base / novel / HM accuracy after every epoch (the curves in the results file).
  2. The step count: IVLP is trained until its novel accuracy starts to fall. For each rate, IVLP's
     stop epoch is the first epoch (of 2..epochs; epoch 1 is the warm-up) where its validation novel
     accuracy peaks, its score the validation HM there; IVLP's rate is the best score and its stop epoch
     E* is the one every trained arm uses (``stop_epoch``: the first E* epochs of the same schedule). A
     peak at the last epoch means the cap of the grid was reached (the markdown says so).
  3. Every other arm's rate: the best validation HM at E* (for GPA arms, of the Gaussian aggregate of the
     epoch snapshots 1..E*, centred at 3/4 of E*, sigma 1, exactly what a seed run at E* loads).
  The few-shot runs (41 classes, twice the steps per epoch) reuse each arm's rate and stop epoch.
Claims (CLAIMS) are tested per seed, paired: paired t over seeds, Holm over the file's claims (the
``verdicts`` list; the markdown renders the same table).

Cost (CPU time at one thread, counted as steps x the per-step cost of a tiny run: 0.57 CPU-s per step of
batch 4 over the 21 base classes, label branch included; evaluation 0.015 CPU-s per gloss; CoOp's steps
are a little cheaper, counted the same):
  Full (the paper's 20 epochs = 1,680 steps, five rates, the few-shot arms) -- about 22 CPU-hours:
    OPENBLAS_NUM_THREADS=1 PYTHONPATH=. python benchmarks/promptsrc_wordnet.py --seeds 1 2 3 4 5 \\
        --epochs 20 --lr-grid 1.25e-3 2.5e-3 5e-3 1e-2 2e-2 --fewshot-methods coop promptsrc
    selection 4 arms x 5 rates x 1,680 steps = 33,600 steps (about 6 h with the validation curves); each seed
    at most 4 x 1,680 base steps + 2 x 3,280 few-shot steps over 41 classes, counted at twice the cost
    (about 3.2 h per seed).
  REDUCED (the JSON and markdown say REDUCED with the full command beside them) -- about 2.8 CPU-hours:
    6 epochs (504 steps, the cap of the step-count grid), three rates, 10 validation and 25 test glosses per
    class, the five arms zero_shot coop ivlp promptsrc no_l1, no few-shot runs:
    ... --epochs 6 --lr-grid 2.5e-3 1e-2 4e-2 --val-per-class 10 --test-per-class 25 --reduced
    selection 4 x 3 x 504 = 6,048 steps (57 min) + 72 validation curve points of 410 glosses (7 min);
    each seed <= 4 x 504 = 2,016 steps (19 min) + 5 test evaluations of 1,025 glosses (1.3 min), i.e.
    at most about 21 min per seed (less when E* < 6).
The REDUCED run, split by seed (from the repository root; one process per line, each at one thread):
    R="--epochs 6 --lr-grid 2.5e-3 1e-2 4e-2 --val-per-class 10 --test-per-class 25 --reduced"
    OPENBLAS_NUM_THREADS=1 PYTHONPATH=. python benchmarks/promptsrc_wordnet.py $R --select-only \\
        --out benchmarks/results/promptsrc_wordnet_r6_select
    OPENBLAS_NUM_THREADS=1 PYTHONPATH=. python benchmarks/promptsrc_wordnet.py $R \\
        --selection benchmarks/results/promptsrc_wordnet_r6_select.json --seeds 1 \\
        --out benchmarks/results/promptsrc_wordnet_r6_s1                       # and seeds 2, 3, 4, 5
    PYTHONPATH=. python benchmarks/promptsrc_wordnet.py --merge benchmarks/results/promptsrc_wordnet_r6_s1 \\
        benchmarks/results/promptsrc_wordnet_r6_s2 ... benchmarks/results/promptsrc_wordnet_r6_s5 \\
        --out benchmarks/results/promptsrc_wordnet
In general (the selection runs once, every seed reads it; a selection file made with other settings is
refused):
    python benchmarks/promptsrc_wordnet.py ... --select-only --out benchmarks/results/STEM_select
    python benchmarks/promptsrc_wordnet.py ... --selection benchmarks/results/STEM_select.json --seeds N \\
        --out benchmarks/results/STEM_sN                                        # one process per seed
    python benchmarks/promptsrc_wordnet.py --merge benchmarks/results/STEM_s1 ... --out benchmarks/results/STEM
With ``--scheduler local`` (a LocalCluster of one-thread workers) or a Dask scheduler's address the selection
runs here first (or comes from ``--selection``), then each seed is a task of peftc.distributed.run_sweep.
Writes benchmarks/results/promptsrc_wordnet.{json,md} (``--out`` to change the stem).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

# this folder: run as a script, or from the tests
from common import (add_seed_protocol_arguments, check_seed_parts, check_selection_settings, environment,
                    merged_command, merged_cpu, results_json, sweep_seeds)
from seed_verdicts import seed_verdicts, seed_verdicts_markdown
from peftc.data.wordnet import CLASS_DESCRIPTIONS, CLASS_NAMES, load_wordnet_glosses
from peftc.evaluation import Claim, select_on_validation
from peftc.evaluation.selection import VALIDATION
from peftc.io.atomic import write_bytes_atomic
from peftc.models import BertModel, Tokenizer, minilm_path
from peftc.prompt import (METHODS, PAPER_LOGIT_SCALE, TEXT_TEMPLATES, GaussianPromptAggregator, PromptSRCConfig,
                          PromptSRCDualEncoder, label_text, with_logit_scale)
from peftc.prompt.protocol import ProtocolData, accuracy, harmonic_mean, make_protocol, per_class_accuracy, restrict

RESULTS = Path(__file__).parent / "results"
ARMS = tuple(METHODS)
DEFAULT_ARMS = ["zero_shot", "coop", "ivlp", "promptsrc", "no_l1"]
STEP_ARM = "ivlp"  # its validation novel accuracy sets the step count of every arm
FULL_COMMAND = ("OPENBLAS_NUM_THREADS=1 PYTHONPATH=. python benchmarks/promptsrc_wordnet.py --seeds 1 2 3 4 5 "
                "--epochs 20 --lr-grid 1.25e-3 2.5e-3 5e-3 1e-2 2e-2 --fewshot-methods coop promptsrc")
STEP_CPU_SECONDS = 0.57  # one batch-4 step over 21 classes at one thread (a tiny run), for the cost estimate
GLOSS_CPU_SECONDS = 0.015  # evaluating one gloss


@dataclass
class Settings:
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    fewshot_methods: list[str] = field(default_factory=list)
    shots: int = 16
    batch_size: int = 4
    epochs: int = 20  # the schedule's length (cosine over these epochs) and the cap of the step-count grid
    lr_grid: list[float] = field(default_factory=lambda: [1.25e-3, 2.5e-3, 5e-3, 1e-2, 2e-2])
    lr: float | None = None  # one rate for every arm (a one-candidate grid)
    logit_scale: float = PAPER_LOGIT_SCALE
    val_per_class: int = 10
    test_per_class: int = 25
    split_seed: int = 0
    select_seed: int = 0
    min_stop_epoch: int = 2  # epoch 1 is the warm-up at 1e-5
    reduced: bool = False

    @property
    def grid(self) -> list[float]:
        return [self.lr] if self.lr is not None else list(self.lr_grid)

    @property
    def trained(self) -> list[str]:
        """The arms that train (in selection order: IVLP first, it sets the step count)."""
        names = [m for m in dict.fromkeys([STEP_ARM, *self.methods, *self.fewshot_methods]) if METHODS[m] is not None]
        return names

    def check(self) -> None:
        unknown = sorted((set(self.methods) | set(self.fewshot_methods)) - set(ARMS))
        if unknown:
            raise ValueError(f"unknown arms {unknown}; expected some of {ARMS}")
        if self.epochs < 1 or not self.grid or self.val_per_class < 1 or self.test_per_class < 1:
            raise ValueError(f"need epochs >= 1, a non-empty lr grid and >= 1 validation and test gloss per class, "
                             f"got epochs {self.epochs}, grid {self.grid}, val_per_class {self.val_per_class}, "
                             f"test_per_class {self.test_per_class}")


@dataclass
class Context:
    """The frozen model, tokenizer and label texts every arm shares, and the protocol's data of one seed."""

    model: BertModel
    tokenizer: Tokenizer
    label_texts: list[str]
    variants: list[list[str]]


def load_context() -> Context:
    label_texts = [label_text(n, d) for n, d in zip(CLASS_NAMES, CLASS_DESCRIPTIONS)]
    variants = [[label_text(n, d, t) for t in TEXT_TEMPLATES] for n, d in zip(CLASS_NAMES, CLASS_DESCRIPTIONS)]
    return Context(BertModel.from_pretrained(minilm_path()), Tokenizer(minilm_path(), 64), label_texts, variants)


def protocol(s: Settings, seed: int, data=None) -> ProtocolData:
    """Seed ``seed``'s shots, the fixed validation and test subsamples."""
    return make_protocol(data if data is not None else load_wordnet_glosses(), s.shots, seed, s.split_seed,
                         s.test_per_class, val_per_class=s.val_per_class)


def steps_per_epoch(s: Settings, n_train: int = 0) -> int:
    """SGD steps per epoch on ``n_train`` glosses (default: the base shots, 21 classes x ``shots``)."""
    return math.ceil((n_train or 21 * s.shots) / s.batch_size)


def method_config(method: str, s: Settings, seed: int, lr: float, stop_epoch: int | None) -> PromptSRCConfig:
    """Arm ``method`` at rate ``lr``, trained for the first ``stop_epoch`` epochs of the ``s.epochs``-epoch
    schedule (None: all); GPA, where the arm has it, centred at 3/4 of the epochs trained, sigma 1 (the
    base-to-novel setting's (15, 1) over 20 epochs)."""
    trained = stop_epoch or s.epochs
    base = dict(epochs=s.epochs, batch_size=s.batch_size, lr=lr, seed=seed, gpa=(0.75 * trained, 1.0),
                stop_epoch=stop_epoch)
    return with_logit_scale(PromptSRCConfig(**{**base, **(METHODS[method] or {})}), s.logit_scale)


def scores(enc: PromptSRCDualEncoder, glosses, pd: ProtocolData, zero: bool = False, per_class: bool = False) -> dict:
    """Base accuracy (base glosses among the base classes), novel (novel among novel) and their HM."""
    gb, gn = restrict(glosses, pd.base), restrict(glosses, pd.novel)
    pb, pn = enc.predict(gb.texts, pd.base, zero_shot=zero), enc.predict(gn.texts, pd.novel, zero_shot=zero)
    out = {"base": accuracy(pb, gb.labels), "novel": accuracy(pn, gn.labels)}
    out["hm"] = harmonic_mean(out["base"], out["novel"])
    if per_class:
        pc = np.full(len(CLASS_NAMES), np.nan)
        pc[pd.base] = per_class_accuracy(pb, gb.labels, len(CLASS_NAMES))[pd.base]
        pc[pd.novel] = per_class_accuracy(pn, gn.labels, len(CLASS_NAMES))[pd.novel]
        out["per_class"] = [None if np.isnan(a) else float(a) for a in pc]
    return out


# -- selection on the validation split ------------------------------------------------------------------
class CurveRun:
    """One arm trained over the whole schedule at one rate, its validation scores after every epoch (raw
    prompts) and the prompt snapshots, so that the arm stopped at any epoch can be scored on validation."""

    def __init__(self, method: str, lr: float, s: Settings, pd: ProtocolData, ctx: Context) -> None:
        self.method, self.pd, self.s = method, pd, s
        self.cfg = method_config(method, s, s.select_seed, lr, None)
        # GPA is not trained through: the aggregate at any stop epoch is rebuilt from the snapshots
        self.enc = PromptSRCDualEncoder(ctx.model, ctx.tokenizer, ctx.label_texts, ctx.variants,
                                        replace(self.cfg, gpa=None))
        self.snapshots: list[list[np.ndarray]] = []
        self.curve: list[dict] = []

        def record(epoch: int, enc: PromptSRCDualEncoder) -> None:
            self.snapshots.append([p.data.copy() for p in enc.prompt_params()])
            self.curve.append({"epoch": epoch, **scores(enc, pd.validation, pd)})

        t0 = time.process_time()
        self.enc.fit(pd.train_base.texts, pd.train_base.labels, pd.base, on_epoch_end=record)
        self.cpu_seconds = time.process_time() - t0

    def validation_hm(self, epoch: int) -> float:
        """Validation HM of this arm stopped after ``epoch`` epochs (the GPA aggregate when the arm has GPA)."""
        if self.cfg.gpa is None:
            return self.curve[epoch - 1]["hm"]
        params = self.enc.prompt_params()
        agg = GaussianPromptAggregator(params, epoch, 0.75 * epoch, self.cfg.gpa[1])
        for snap in self.snapshots[:epoch]:
            for p, value in zip(params, snap):
                p.data[...] = value
            agg.update()
        agg.load()
        return scores(self.enc, self.pd.validation, self.pd)["hm"]


def peak_epoch(curve: list[dict], first: int) -> int:
    """The first epoch >= ``first`` where the validation novel accuracy is highest (the stop before it falls).

    >>> peak_epoch([{"epoch": e, "novel": n} for e, n in [(1, .9), (2, .5), (3, .6), (4, .6), (5, .4)]], 2)
    3
    """
    tail = [c for c in curve if c["epoch"] >= first] or curve[-1:]
    return int(max(tail, key=lambda c: (c["novel"], -c["epoch"]))["epoch"])


def select_knobs(s: Settings, pd: ProtocolData, ctx: Context | None, log=print,
                 fit: Callable[..., Any] = CurveRun) -> dict:
    """The step count and each trained arm's rate, chosen on the validation split (module docstring, 1-3).

    ``fit(method, lr, s, pd, ctx)`` returns an object with ``curve`` (per-epoch validation base / novel / hm)
    and ``validation_hm(epoch)``. Returns {"stop_epoch", "stop_at_cap", "steps_per_epoch", "methods": {arm:
    {"candidates", "val_hm", "chosen", "curves", "cpu_seconds"}}}; the test split is never evaluated here.
    """
    first = min(s.min_stop_epoch, s.epochs)
    out: dict = {"methods": {}}

    def choose(method: str, score: Callable[[Any], float]) -> Any:
        curves: list = []
        cpu: list = []

        def train_fn(knobs):
            run = fit(method, knobs["lr"], s, pd, ctx)
            curves.append(run.curve)
            cpu.append(float(getattr(run, "cpu_seconds", 0.0)))
            return run

        sel = select_on_validation([{"lr": lr} for lr in s.grid], train_fn,
                                   lambda run, split: score(run) if split == VALIDATION else None)
        out["methods"][method] = {"candidates": list(sel.candidates), "val_hm": [float(v) for v in sel.scores],
                                  "chosen": dict(sel.best_candidate), "curves": curves, "cpu_seconds": cpu}
        tried = ", ".join(f"lr {c['lr']:g} -> HM {v:.4f}" for c, v in zip(sel.candidates, sel.scores))
        log(f"select {method}: {tried}; chose {sel.best_candidate}")
        return sel.model

    ivlp = choose(STEP_ARM, lambda run: run.curve[peak_epoch(run.curve, first) - 1]["hm"])
    stop = peak_epoch(ivlp.curve, first)
    out.update(stop_epoch=stop, stop_at_cap=stop == s.epochs, steps_per_epoch=steps_per_epoch(s, len(pd.train_base)))
    out["methods"][STEP_ARM]["chosen"]["stop_epoch"] = stop
    log(f"step count: IVLP's validation novel accuracy peaks at epoch {stop} of {s.epochs}")
    for method in s.trained:
        if method != STEP_ARM:
            choose(method, lambda run: run.validation_hm(stop))
            out["methods"][method]["chosen"]["stop_epoch"] = stop
    return out


# -- seed runs ------------------------------------------------------------------------------------------
def run_arm(method: str, s: Settings, seed: int, pd: ProtocolData, ctx: Context, selection: dict | None,
            log=print) -> dict:
    """Arm ``method`` of seed ``seed`` at its chosen knobs: test base / novel / HM (and 41-way few-shot)."""
    zero = METHODS[method] is None
    knobs = {} if zero else dict(selection["methods"][method]["chosen"])
    t0 = time.process_time()
    out: dict = {"arm": method, "seed": seed, "knobs": knobs}
    enc = PromptSRCDualEncoder(ctx.model, ctx.tokenizer, ctx.label_texts, ctx.variants,
                               method_config(method, s, seed, knobs.get("lr", 0.0), knobs.get("stop_epoch")))
    if not zero:
        out["history"] = enc.fit(pd.train_base.texts, pd.train_base.labels, pd.base)
        out["steps"] = knobs["stop_epoch"] * steps_per_epoch(s, len(pd.train_base))
    out.update(scores(enc, pd.test, pd, zero, per_class=True))
    if method in s.fewshot_methods:
        allc = np.arange(len(CLASS_NAMES))
        enc = PromptSRCDualEncoder(ctx.model, ctx.tokenizer, ctx.label_texts, ctx.variants,
                                   method_config(method, s, seed, knobs.get("lr", 0.0), knobs.get("stop_epoch")))
        if not zero:
            enc.fit(pd.train_all.texts, pd.train_all.labels, allc)
        out["fewshot_all"] = accuracy(enc.predict(pd.test.texts, allc, zero_shot=zero), pd.test.labels)
    out["cpu_seconds"] = time.process_time() - t0
    log(f"seed {seed} {method:18s} base {out['base']:.3f} novel {out['novel']:.3f} hm {out['hm']:.3f} "
        f"fewshot {out.get('fewshot_all', float('nan')):.3f} ({out['cpu_seconds']:.0f} CPU-s)")
    return out


def seed_runs(s: Settings, seed: int, ctx: Context, selection: dict, data=None, log=print) -> list[dict]:
    pd = protocol(s, seed, data)
    return [run_arm(m, s, seed, pd, ctx, selection, log) for m in s.methods]


def seed_task(s: Settings, selection: dict, config: dict) -> list[dict]:
    """Every arm of one seed as a Dask task (``--scheduler``): the worker loads the model and data itself."""
    return seed_runs(s, config["seed"], load_context(), selection)


# -- verdicts, summary, markdown ------------------------------------------------------------------------
CLAIMS = (  # (claim, arm A, arm B, score, expected)
    ("PromptSRC > IVLP (novel accuracy)", "promptsrc", "ivlp", "novel", "greater"),
    ("PromptSRC > IVLP (harmonic mean)", "promptsrc", "ivlp", "hm", "greater"),
    ("PromptSRC > PromptSRC without both L1 terms (novel accuracy)", "promptsrc", "no_l1", "novel", "greater"),
    ("PromptSRC > PromptSRC without both L1 terms (harmonic mean)", "promptsrc", "no_l1", "hm", "greater"),
    ("PromptSRC > zero-shot (novel accuracy)", "promptsrc", "zero_shot", "novel", "greater"),
    ("PromptSRC > zero-shot (harmonic mean)", "promptsrc", "zero_shot", "hm", "greater"),
    ("CoOp < zero-shot (novel accuracy: CoOp's prompts overfit the base classes)", "coop", "zero_shot", "novel",
     "less"),
    ("PromptSRC > CoOp (few-shot, 41-way accuracy)", "promptsrc", "coop", "fewshot_all", "greater"),
)


def paired_claims(runs: list[dict]) -> list[Claim]:
    """The claims whose two arms ran (with the score), one score per seed for each side, paired by seed."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    out = []
    for text, a, b, key, expected in CLAIMS:
        seeds = sorted(k for (arm, k) in by if arm == a and (b, k) in by and key in by[a, k] and key in by[b, k])
        if seeds:
            out.append(Claim(text, [by[a, k][key] for k in seeds], [by[b, k][key] for k in seeds], expected))
    return out


def summarize(runs: list[dict], methods: list[str]) -> dict:
    summary = {}
    for m in methods:
        rs = [r for r in runs if r["arm"] == m]
        if not rs:
            continue
        s: dict = {"seeds": [r["seed"] for r in rs], "knobs": rs[0]["knobs"]}
        for key in ("base", "novel", "hm", "fewshot_all", "cpu_seconds"):
            vals = [r[key] for r in rs if key in r]
            if vals:
                s[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None}
        summary[m] = s
    return summary


def _pm(s: dict, key: str, scale: float = 100.0, digits: int = 1) -> str:
    if key not in s:
        return "-"
    std = s[key]["std"]
    return f"{scale * s[key]['mean']:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if std is not None else "")


def markdown(result: dict) -> str:
    s, sel = result["settings"], result["selection"]
    head = f"**REDUCED RUN** ({result['reduced_note']})\n\n" if s["reduced"] else ""
    spe = sel.get("steps_per_epoch", "?")
    lines = [head + "# PromptSRC on the MiniLM dual encoder: WordNet supersenses, base-to-novel", "",
             f"Seeds {s['seeds']}; K = {s['shots']} shots; batch {s['batch_size']}; logit scale {s['logit_scale']:g}; "
             f"a {s['epochs']}-epoch schedule ({spe} steps per epoch) stopped after epoch {sel.get('stop_epoch')} "
             f"(chosen on validation); per-arm SGD rate chosen on validation from "
             f"{s['lr_grid'] if s['lr'] is None else [s['lr']]}; "
             f"{s['val_per_class']} validation and {s['test_per_class']} test glosses per class; base/novel split "
             f"seed {s['split_seed']} (base = {result['base_classes']}). Command: `{result['command']}`", "",
             "## Verdicts", "", seed_verdicts_markdown(result["verdicts"]),
             "## Test accuracy", "",
             "Accuracy in %, mean ± sample std (ddof 1) over seeds. Base: base test glosses among the 21 base "
             "classes; novel: novel test glosses among the 20 novel classes (never trained on); HM: harmonic mean; "
             "few-shot: K shots of all 41 classes, 41-way accuracy.", "",
             "| arm | knobs (chosen on validation) | base | novel | HM | few-shot (41-way) | CPU-s per seed |",
             "|---|---|---|---|---|---|---|"]
    for m, v in result["summary"].items():
        knobs = ", ".join(f"{k} {x:g}" for k, x in v["knobs"].items()) or "-"
        lines.append(f"| {m} | {knobs} | {_pm(v, 'base')} | {_pm(v, 'novel')} | {_pm(v, 'hm')} | "
                     f"{_pm(v, 'fewshot_all')} | {_pm(v, 'cpu_seconds', 1.0, 0)} |")
    se = 100.0 * float(np.sqrt(0.5 * 0.5 / max(result["sizes"]["test"] / 2, 1)))
    lines += ["", f"{result['sizes']['test']} test glosses, about half on each side: one base or novel accuracy near "
              f"50% has a binomial standard error of about {se:.1f} points (shared by every arm: the verdicts pair "
              "the arms on the same glosses and seeds)."]
    if sel.get("methods"):
        cap = " (the cap of the grid: IVLP's novel accuracy had not fallen yet)" if sel.get("stop_at_cap") else ""
        lines += ["", f"## Selection on the validation split (seed {s['select_seed']})", "",
                  f"Step count: IVLP's validation novel accuracy peaks at epoch {sel['stop_epoch']} of {s['epochs']}"
                  f"{cap}, i.e. {sel['stop_epoch'] * spe if isinstance(spe, int) else '?'} steps; every trained arm "
                  "stops there.", "", "| arm | lr -> validation HM % | chosen |", "|---|---|---|"]
        for m, v in sel["methods"].items():
            lrs = [c["lr"] for c in v["candidates"]]
            edge = len(lrs) > 1 and v["chosen"]["lr"] in (min(lrs), max(lrs))
            cells = "; ".join(f"{c['lr']:g}: {100 * h:.1f}" for c, h in zip(v["candidates"], v["val_hm"]))
            lines.append(f"| {m} | {cells} | lr {v['chosen']['lr']:g}{' (at the edge of the grid)' if edge else ''} |")
        lines += ["", "Validation accuracy % after each epoch (base / novel), one column per rate:", ""]
        for m in (STEP_ARM, "promptsrc"):
            v = sel["methods"].get(m)
            if not v:
                continue
            lines += [f"{m}:", "", "| epoch | " + " | ".join(f"lr {c['lr']:g}" for c in v["candidates"]) + " |",
                      "|---" * (len(v["candidates"]) + 1) + "|"]
            for i in range(max(len(c) for c in v["curves"])):
                row = [f"{100 * c[i]['base']:.1f} / {100 * c[i]['novel']:.1f}" if i < len(c) else "-"
                       for c in v["curves"]]
                lines.append(f"| {i + 1} | " + " | ".join(row) + " |")
            lines.append("")
    cost = result["cost_estimate"]
    lines += ["## Cost", "", f"Estimated from step counts at {STEP_CPU_SECONDS} CPU-s per step and "
              f"{GLOSS_CPU_SECONDS} CPU-s per evaluated gloss (one thread): selection "
              f"{cost['selection_steps']:,} steps, "
              f"about {cost['selection_cpu_minutes']:.0f} CPU-min; each seed at most {cost['seed_steps_max']:,} steps, "
              f"about {cost['seed_cpu_minutes_max']:.0f} CPU-min. CPU time measured here: "
              f"{result['cpu_seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def cost_estimate(s: Settings) -> dict:
    """CPU minutes of the selection and of one seed from step counts (STEP_CPU_SECONDS, GLOSS_CPU_SECONDS); the
    seed bound assumes the step count at the cap; few-shot steps (41 classes) are counted at 2x."""
    spe = steps_per_epoch(s)
    trained = len(s.trained)
    sel_steps = trained * len(s.grid) * s.epochs * spe
    sel_gloss = trained * len(s.grid) * s.epochs * 41 * s.val_per_class
    seed_steps = sum(1 for m in s.methods if METHODS[m] is not None) * s.epochs * spe
    few = sum(1 for m in s.fewshot_methods if METHODS[m] is not None) * s.epochs * steps_per_epoch(s, 41 * s.shots) * 2
    seed_gloss = (len(s.methods) + len(s.fewshot_methods)) * 41 * s.test_per_class
    return {"selection_steps": sel_steps, "seed_steps_max": seed_steps + few,
            "selection_cpu_minutes": (sel_steps * STEP_CPU_SECONDS + sel_gloss * GLOSS_CPU_SECONDS) / 60,
            "seed_cpu_minutes_max": ((seed_steps + few) * STEP_CPU_SECONDS + seed_gloss * GLOSS_CPU_SECONDS) / 60}


def _payload(s: Settings, command: str, pd: ProtocolData, runs: list[dict], cpu_seconds: float, selection: dict,
             cpu: str) -> dict:
    return {"benchmark": "promptsrc_wordnet", "command": command, "cpu": cpu, "settings": asdict(s),
            "threads": os.environ.get("OPENBLAS_NUM_THREADS"),
            "reduced_note": (f"REDUCED: a {s.epochs}-epoch schedule, rates {s.grid}, {s.val_per_class} validation and "
                             f"{s.test_per_class} test glosses per class, arms {s.methods}, few-shot arms "
                             f"{s.fewshot_methods}; the full command is `{FULL_COMMAND}`" if s.reduced else None),
            "verdicts": seed_verdicts(paired_claims(runs)), "summary": summarize(runs, s.methods),
            "selection": selection, "cost_estimate": cost_estimate(s), "class_names": list(CLASS_NAMES),
            "base_classes": pd.base.tolist(), "novel_classes": pd.novel.tolist(),
            "sizes": {"train_base": len(pd.train_base), "validation": len(pd.validation), "test": len(pd.test)},
            "cpu_seconds": cpu_seconds, "runs": runs}


def _write(result: dict, out_stem: Path | None) -> None:
    if out_stem is None:
        return
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out_stem.with_suffix(".json"), (results_json(result) + "\n").encode())
    write_bytes_atomic(out_stem.with_suffix(".md"), markdown(result).encode())


SELECTION_IGNORES = {"seeds", "methods", "fewshot_methods"}  # a seed run may pick arms the selection covers


def load_selection(path: Path, s: Settings | None = None) -> dict:
    """The "selection" of a results file; with ``s``, raises ValueError unless the file was made with the same
    settings outside SELECTION_IGNORES and it chose knobs for every arm ``s`` trains."""
    payload = json.loads(Path(path).read_text())
    sel = payload["selection"]
    if s is not None:
        check_selection_settings(asdict(s), payload["settings"], path, SELECTION_IGNORES)
        missing = sorted(set(s.trained) - set(sel.get("methods", {})))
        if missing:
            raise ValueError(f"--selection {path} chose no knobs for the arms {missing}; run --select-only with "
                             "them in --methods")
    return sel


def run(s: Settings, out_stem: Path | None = RESULTS / "promptsrc_wordnet", command: str = "", log=print,
        selection: dict | None = None, select_only: bool = False, scheduler: str | None = None,
        ctx: Context | None = None) -> dict:
    """Select on validation (unless ``selection`` is given), then every (seed, arm) at the chosen knobs; the
    results files are rewritten after each seed."""
    s.check()
    t0 = time.process_time()
    cpu = environment()["cpu"]
    data = load_wordnet_glosses()
    ctx = ctx or (load_context() if not scheduler or selection is None else None)
    pd = protocol(s, s.select_seed, data)
    if selection is None:
        selection = select_knobs(s, pd, ctx, log)
    runs: list[dict] = []
    result = _payload(s, command, pd, runs, time.process_time() - t0, selection, cpu)
    if select_only:
        _write(result, out_stem)
        return result
    if scheduler:
        done = sweep_seeds(partial(seed_task, s, selection), s.seeds, scheduler,
                           modules=("seed_verdicts", "promptsrc_wordnet"))
        runs = [r for seed in s.seeds for r in done[seed]]
        result = _payload(s, command, pd, runs, time.process_time() - t0, selection, cpu)
        _write(result, out_stem)
        return result
    for seed in s.seeds:
        runs += seed_runs(s, seed, ctx, selection, data, log)
        result = _payload(s, command, pd, runs, time.process_time() - t0, selection, cpu)
        _write(result, out_stem)
    return result


def merge(stems: list[Path], out_stem: Path) -> dict:
    """Combine results files of the same settings and selection (seeds run in separate processes) into one."""
    parts = [json.loads(Path(stem).with_suffix(".json").read_text()) for stem in stems]
    first = parts[0]
    check_seed_parts([p["settings"] for p in parts], stems, {"seeds"})
    for part, stem in zip(parts[1:], stems[1:]):
        if part["selection"] != first["selection"]:
            raise ValueError(f"{stem}: its selection differs from {stems[0]}'s; seeds must share one selection")
    runs = [r for p in parts for r in p["runs"]]
    keys = [(r["arm"], r["seed"]) for r in runs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"the files {[str(s) for s in stems]} repeat a seed")
    seeds = sorted({r["seed"] for r in runs})
    result = dict(first, settings={**first["settings"], "seeds": seeds},
                  command=merged_command([p["command"] for p in parts], [str(s) for s in stems]),
                  cpu_seconds=sum(p["cpu_seconds"] for p in parts), runs=runs,
                  cpu=merged_cpu([p.get("cpu") for p in parts]))
    s = Settings(**result["settings"])
    result.update(verdicts=seed_verdicts(paired_claims(runs)), summary=summarize(runs, s.methods),
                  cost_estimate=cost_estimate(s))
    _write(result, Path(out_stem))
    return result


def main(argv: list[str] | None = None) -> int:
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=d.seeds)
    p.add_argument("--methods", nargs="+", default=d.methods, choices=ARMS)
    p.add_argument("--fewshot-methods", nargs="*", default=d.fewshot_methods, choices=ARMS)
    for key in ("shots", "batch_size", "epochs", "val_per_class", "test_per_class", "split_seed", "select_seed"):
        p.add_argument("--" + key.replace("_", "-"), type=int, default=getattr(d, key))
    p.add_argument("--lr-grid", type=float, nargs="+", default=d.lr_grid, help="candidate rates, chosen on val")
    p.add_argument("--lr", type=float, default=None, help="one rate for every arm (skips the grid)")
    p.add_argument("--logit-scale", type=float, default=d.logit_scale,
                   help=f"fixed logit scale (default the paper's {PAPER_LOGIT_SCALE:g}; 20 is the old setting)")
    add_seed_protocol_arguments(p, str(RESULTS / "promptsrc_wordnet"))
    a = p.parse_args(argv)
    if a.merge:
        print(markdown(merge([Path(m) for m in a.merge], Path(a.out))))
        return 0
    s = Settings(seeds=a.seeds, methods=a.methods, fewshot_methods=a.fewshot_methods, shots=a.shots,
                 batch_size=a.batch_size, epochs=a.epochs, lr_grid=a.lr_grid, lr=a.lr, logit_scale=a.logit_scale,
                 val_per_class=a.val_per_class, test_per_class=a.test_per_class, split_seed=a.split_seed,
                 select_seed=a.select_seed, reduced=a.reduced)
    command = "python benchmarks/promptsrc_wordnet.py " + " ".join(sys.argv[1:] if argv is None else argv)
    selection = load_selection(Path(a.selection), s) if a.selection else None
    result = run(s, Path(a.out), command.strip(), selection=selection, select_only=a.select_only,
                 scheduler=a.scheduler)
    print()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
