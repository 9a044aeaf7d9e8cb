"""Adapter head-to-head on WordNet supersenses: LoRA, SoRA, Hydra, Bone and Bat on all-MiniLM-L6-v2.

The task, tokenization and training recipe are the main job's (``python -m peftc.demo``): WordNet
3.0 noun and verb glosses labelled by lexicographer file (41 classes), mean pooling, a linear head
(``classifier``, trained by every method), AdamW with warm-up and linear decay, clipping at 1.0.
Only the adapter on ``query`` and ``value`` changes, at equal adapter parameter counts:

    LoRA   r=8, alpha 16                 8 * (384 + 384) = 6,144 per layer
    SoRA   r_max=8, alpha 16, + 8 gates  6,144 (+ 8) while training; pruned: active * 768
    Hydra  r_p=4 and r_s=4, scale 2      4 * (384 + 384) + 4 * (384 + 384) = 6,144
    Bone   r=16 (block (16, 384))        16 * 384 = 6,144
    Bat    r=16 (block (24, 16, 16))     24 * 16 * 16 = 6,144

i.e. 73,728 adapter parameters on the 12 adapted layers (SoRA: + 96 gates), plus the 15,785 of the
head. No adapter dropout (Hydra has none in peftc). The data split is fixed (seed 0); the run seed
sets the head and adapter initialisation and the data order. Validation accuracy on a fixed
per-class subsample is recorded every ``--eval-every`` steps for the convergence curves.

Full run (3 seeds, 2 epochs of 100 glosses per class; about 5-7 minutes per run on 2 cores):
    OPENBLAS_NUM_THREADS=2 python benchmarks/adapters_wordnet.py --seeds 0 1 2
Reduced run (what is committed unless the JSON says otherwise):
    OPENBLAS_NUM_THREADS=2 python benchmarks/adapters_wordnet.py --seeds 0 --max-steps 150 --test-per-class 25
With ``--scheduler local`` (a LocalCluster of one-thread workers) or ``--scheduler tcp://host:8786`` each seed
is a task of peftc.distributed.run_sweep, and all seeds land in one results file without ``--merge``.
Writes benchmarks/results/adapters_wordnet.{json,md} (``--out`` to change the stem).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

# this folder: run as a script, or from the tests
from common import add_scheduler_argument, check_seed_parts, merged_command, sweep_seeds
from peftc.io.atomic import write_bytes_atomic
from peftc.data.wordnet import NUM_CLASSES, load_wordnet_glosses
from peftc.data.wordnet_job import tokenize
from peftc.models import BertModel, SentenceClassifier, Tokenizer, minilm_path
from peftc.random import Generator
from peftc.train import Trainer, TrainingConfig
from peftc.tuners import BoneConfig, HydraConfig, LoraConfig, SoraConfig, get_peft_model, sora

RESULTS = Path(__file__).parent / "results"
ADAPTERS = ("lora", "sora", "hydra", "bone", "bat")
TARGETS = ["query", "value"]


@dataclass
class Settings:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    train_per_class: int = 100
    val_per_class: int = 10
    test_per_class: int = 50
    max_length: int = 64
    epochs: int = 2
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 1e-3
    eval_every: int = 25
    log_every: int = 5
    # SoRA: L1 coefficient lambda1, proximal threshold xi (paper mode: tau = lr_t * xi), gate learning rate.
    # Chosen so unneeded gates can reach zero within a run of a few hundred steps; not tuned on this task.
    sora_lambda: float = 1.0
    sora_xi: float = 0.5
    sora_lr: float = 1e-2
    adapters: list[str] = field(default_factory=lambda: list(ADAPTERS))
    reduced: bool = False
    progress: bool = False


def adapter_config(name: str, s: Settings | None = None) -> LoraConfig | BoneConfig:
    """The adapter config of ``name`` at the shared parameter budget (see the module docstring)."""
    s = s or Settings()
    common = {"target_modules": list(TARGETS), "modules_to_save": ["classifier"]}
    if name == "lora":
        return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, **common)
    if name == "sora":
        return SoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, sparse_lambda=s.sora_lambda,
                          sparse_lambda_2=s.sora_xi, sparse_lr=s.sora_lr, **common)
    if name == "hydra":
        return HydraConfig(r=4, lora_alpha=8, seq_r=4, seq_alpha=8, **common)
    if name == "bone":
        return BoneConfig(r=16, init_weights=True, **common)
    if name == "bat":
        return BoneConfig(r=16, init_weights="bat", **common)
    raise ValueError(f"unknown adapter {name!r}; expected one of {ADAPTERS}")


def load_data(s: Settings) -> dict[str, dict[str, np.ndarray]]:
    """Tokenized train / val / test: the main job's split (seed 0), subsampled per class (seed 0)."""
    parts = load_wordnet_glosses().split(seed=0)
    picked = {"train": parts["train"].subsample_per_class(s.train_per_class, seed=0),
              "val": parts["validation"].subsample_per_class(s.val_per_class, seed=0),
              "test": parts["test"].subsample_per_class(s.test_per_class, seed=0)}
    tokenizer = Tokenizer(minilm_path(), max_length=s.max_length)
    return {name: tokenize(tokenizer, split) for name, split in picked.items()}


class StepTimer:
    """Mixin for a Trainer: wall time of every training step (forward, backward, clip, optimizer, schedule)."""

    step_seconds: list[float]

    def training_step(self, batch):
        t0 = time.perf_counter()
        out = super().training_step(batch)
        self.step_seconds.append(time.perf_counter() - t0)
        return out


class TimedTrainer(StepTimer, Trainer):
    pass


class TimedSoraTrainer(StepTimer, sora.SoraTrainer):
    pass


def adapter_param_count(model) -> int:
    """Trainable parameters outside the head copy (the adapter itself)."""
    return int(sum(p.size for n, p in model.named_trainable_parameters() if ".classifier." not in n))


def run_one(name: str, seed: int, data: dict, num_classes: int, s: Settings, log=print) -> dict:
    folder = minilm_path()
    base = SentenceClassifier(BertModel.from_pretrained(folder), num_classes, generator=Generator(seed + 1))
    model = get_peft_model(base, adapter_config(name, s), generator=Generator(seed + 2))
    trainable = int(model.get_nb_trainable_parameters()[0])
    adapter = adapter_param_count(model)
    cfg = TrainingConfig(learning_rate=s.learning_rate, batch_size=s.batch_size, num_epochs=s.epochs,
                         max_steps=s.max_steps, warmup_ratio=0.06, weight_decay=0.01, max_grad_norm=1.0, seed=seed,
                         eval_every=s.eval_every, log_every=s.log_every, progress=s.progress, eval_batch_size=128)
    trainer = (TimedSoraTrainer if name == "sora" else TimedTrainer)(model, cfg, data["train"], data["val"])
    trainer.step_seconds = []
    t0 = time.perf_counter()
    history = trainer.train()
    train_seconds = time.perf_counter() - t0
    test = trainer.evaluate(data["test"])
    out = {"adapter": name, "seed": seed, "steps": trainer.global_step, "trainable_params": trainable,
           "adapter_params": adapter, "retained_params": trainable, "retained_adapter_params": adapter,
           "test_accuracy": test["accuracy"], "test_loss": test["loss"],
           "val_accuracy": trainer.evaluate()["accuracy"],
           "step_seconds_median": float(np.median(trainer.step_seconds)), "train_seconds": train_seconds,
           "val_curve": [[e["step"], e["eval_accuracy"]] for e in history if "eval_accuracy" in e],
           "loss_curve": [[e["step"], e["loss"]] for e in history if "loss" in e]}
    if name == "sora":
        report = sora.sparsity_report(model)
        out["active_ranks"] = {k: v["active"] for k, v in report["layers"].items()}
        pruned = sora.prune(model)
        head = trainable - adapter
        out["retained_adapter_params"] = int(report["retained_params"])
        out["retained_params"] = int(report["retained_params"]) + head
        pruned_test = Trainer(pruned, cfg, data["train"]).evaluate(data["test"])
        # the pruned LoRA must give the same predictions as the gated model it came from
        out["pruned_test_accuracy"] = pruned_test["accuracy"]
    log(f"{name:5s} seed {seed}: test {out['test_accuracy']:.4f}, val {out['val_accuracy']:.4f}, "
        f"trainable {trainable:,}, retained {out['retained_params']:,}, "
        f"{1e3 * out['step_seconds_median']:.0f} ms/step, {train_seconds:.0f} s")
    return out


def steps_to_reach(curve: list[list[float]], target: float) -> int | None:
    """The first evaluated step whose validation accuracy is >= target (None if never)."""
    return next((int(step) for step, acc in curve if acc >= target), None)


def summarize(runs: list[dict], adapters: list[str]) -> dict:
    summary = {}
    for name in adapters:
        rs = [r for r in runs if r["adapter"] == name]
        acc = np.array([r["test_accuracy"] for r in rs])
        steps = sorted({int(st) for r in rs for st, _ in r["val_curve"]})
        curve = [[st, float(np.mean([a for r in rs for s2, a in r["val_curve"] if int(s2) == st]))] for st in steps]
        summary[name] = {"seeds": [r["seed"] for r in rs], "test_accuracy_mean": float(acc.mean()),
                         "test_accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else None,
                         "trainable_params": rs[0]["trainable_params"], "adapter_params": rs[0]["adapter_params"],
                         "retained_params_mean": float(np.mean([r["retained_params"] for r in rs])),
                         "retained_adapter_params_mean": float(np.mean([r["retained_adapter_params"] for r in rs])),
                         "step_seconds_median": float(np.median([r["step_seconds_median"] for r in rs])),
                         "mean_val_curve": curve}
    return summary


def _pm(m: dict) -> str:
    std = m["test_accuracy_std"]
    return f"{100 * m['test_accuracy_mean']:.2f}" + (f" ± {100 * std:.2f}" if std is not None else " (1 seed)")


def _compare(a: dict, b: dict) -> tuple[float, str]:
    """(mean difference a - b in points, verdict) with noise = the larger of the two seed stds."""
    diff = 100 * (a["test_accuracy_mean"] - b["test_accuracy_mean"])
    stds = [m["test_accuracy_std"] for m in (a, b) if m["test_accuracy_std"] is not None]
    if len(stds) < 2:
        return diff, ("higher" if diff > 0 else "lower") + " on a single seed (no spread to judge noise)"
    noise = 100 * max(stds)
    if diff >= 0:
        return diff, "higher" + (" (within seed noise)" if diff <= noise else "")
    return diff, "within seed noise" if -diff <= noise else "lower, beyond seed noise"


def claims(summary: dict) -> list[str]:
    """One honest sentence per paper claim, from the measured numbers."""
    out = []
    lora = summary.get("lora")
    if lora and "sora" in summary:
        so = summary["sora"]
        diff, verdict = _compare(so, lora)
        fewer = so["retained_params_mean"] < lora["trainable_params"]
        ok = diff >= 0 or "within" in verdict
        out.append(f"SoRA matches or beats LoRA with fewer retained parameters: "
                   f"{'SUPPORTED' if ok and fewer else 'NOT SUPPORTED'} here. SoRA {_pm(so)} vs LoRA {_pm(lora)} "
                   f"({diff:+.2f} points, {verdict}); retained {so['retained_params_mean']:,.0f} "
                   f"(adapter {so['retained_adapter_params_mean']:,.0f} of {so['adapter_params']:,}) vs "
                   f"{lora['trainable_params']:,}.")
    if lora and "hydra" in summary:
        hy = summary["hydra"]
        diff, verdict = _compare(hy, lora)
        ok = diff >= 0 or "within" in verdict
        out.append(f"Hydra >= LoRA at equal parameters ({hy['trainable_params']:,} vs {lora['trainable_params']:,}): "
                   f"{'SUPPORTED' if ok else 'NOT SUPPORTED'} here. Hydra {_pm(hy)} vs LoRA {_pm(lora)} "
                   f"({diff:+.2f} points, {verdict}).")
    if lora and "bone" in summary:
        bo = summary["bone"]
        target = 0.9 * lora["mean_val_curve"][-1][1]
        s_bone, s_lora = steps_to_reach(bo["mean_val_curve"], target), steps_to_reach(lora["mean_val_curve"], target)
        early = [(st, b, a) for (st, b), (_, a) in zip(bo["mean_val_curve"], lora["mean_val_curve"])][:3]
        ahead = sum(b > a for _, b, a in early)
        faster = s_bone is not None and (s_lora is None or s_bone < s_lora)
        same = s_bone is not None and s_bone == s_lora
        verdict = ("SUPPORTED" if faster and ahead >= 2 else
                   "PARTLY SUPPORTED (ahead early, but no fewer steps to 90% at this evaluation spacing)"
                   if same and ahead >= 2 else "NOT SUPPORTED")
        out.append(f"Bone converges faster than LoRA: {verdict} "
                   f"here. Steps to reach 90% of LoRA's final validation accuracy ({100 * target:.1f}%): Bone "
                   f"{s_bone}, LoRA {s_lora}; mean validation accuracy at the first evaluations "
                   + ", ".join(f"step {st}: Bone {100 * b:.1f} / LoRA {100 * a:.1f}" for st, b, a in early) + ".")
    return out


def markdown(result: dict) -> str:
    s, summary = result["settings"], result["summary"]
    sizes = result["sizes"]
    head = ("**REDUCED RUN** (not the full configuration: " + result["reduced_note"] + ")\n\n"
            if s["reduced"] else "")
    steps = f"{s['max_steps']} steps" if s["max_steps"] else f"{s['epochs']} epochs"
    lines = [head + f"WordNet supersenses (41 classes), all-MiniLM-L6-v2, adapters on query and value + head; "
             f"train {sizes['train']} glosses ({s['train_per_class']} per class), val {sizes['val']}, "
             f"test {sizes['test']}; {steps}, batch {s['batch_size']}, lr {s['learning_rate']}, "
             f"seeds {s['seeds']}. Command: `{result['command']}`", "",
             "| adapter | test accuracy % | trainable params | retained params | adapter params (retained) | "
             "ms / step |", "|---|---|---|---|---|---|"]
    for name, m in summary.items():
        lines.append(f"| {name} | {_pm(m)} | {m['trainable_params']:,} | {m['retained_params_mean']:,.0f} | "
                     f"{m['adapter_params']:,} ({m['retained_adapter_params_mean']:,.0f}) | "
                     f"{1e3 * m['step_seconds_median']:.0f} |")
    lines += ["", "Mean validation accuracy % by step:", ""]
    names = list(summary)
    lines += ["| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for i, (st, _) in enumerate(summary[names[0]]["mean_val_curve"]):
        lines.append(f"| {st} | " + " | ".join(f"{100 * summary[n]['mean_val_curve'][i][1]:.1f}" for n in names)
                     + " |")
    lines += ["", "Paper claims, as measured here:", ""] + [f"- {c}" for c in result["claims"]]
    pruned = [r for r in result["runs"] if "pruned_test_accuracy" in r]
    if pruned:
        same = all(r["pruned_test_accuracy"] == r["test_accuracy"] for r in pruned)
        lines += ["", "SoRA pruned to a plain LoRA (zero gates cut away) gives "
                  f"{'the same' if same else 'a DIFFERENT'} "
                  f"test accuracy as the gated model in every run; active ranks per layer in model order (first run): "
                  f"{list(pruned[0]['active_ranks'].values())}."]
    if "sora" in summary:
        r_max = adapter_config("sora").r
        kept = float(np.mean([sum(r["active_ranks"].values()) / (r_max * len(r["active_ranks"]))
                              for r in result["runs"] if r["adapter"] == "sora"]))
        lines += ["", f"SoRA settings: lambda1 {s['sora_lambda']}, xi {s['sora_xi']} (paper mode, tau = lr_t xi), gate "
                  f"lr {s['sora_lr']}; chosen so gates can reach zero in a short run, not tuned. They kept "
                  f"{100 * kept:.0f}% of the ranks, so an accuracy gap may come from this aggressive setting as much "
                  f"as from the method. Hydra here adapts query and value (the reference adapts output projections) "
                  f"with r_p = r_s = 4 at scale 2, LoRA's scale."]
    lines += ["", "Time per step is the median wall time of a training step (forward, backward, clip, AdamW) "
              "on a machine shared with other jobs; see bench_adapter_step.md for a controlled comparison."]
    return "\n".join(lines) + "\n"


def _payload(s: Settings, command: str, sizes: dict, runs: list[dict], seconds: float) -> dict:
    summary = summarize(runs, s.adapters)
    return {"settings": asdict(s), "command": command, "sizes": sizes,
            "threads": os.environ.get("OPENBLAS_NUM_THREADS"), "summary": summary, "claims": claims(summary),
            "runs": runs, "total_seconds": seconds,
            "reduced_note": ("fewer seeds or steps than the full command in the script docstring"
                             if s.reduced else None)}


def _write(result: dict, out_stem: Path | None) -> None:
    if out_stem is None:
        return
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out_stem.with_suffix(".json"), json.dumps(result, indent=1).encode())
    write_bytes_atomic(out_stem.with_suffix(".md"), markdown(result).encode())


def seed_task(s: Settings, config: dict) -> list[dict]:
    """Every adapter of one seed as a Dask task (``--scheduler``): the worker loads the data itself."""
    data = load_data(s)
    return [run_one(name, config["seed"], data, NUM_CLASSES, s) for name in s.adapters]


def run(s: Settings, out_stem: Path | None = RESULTS / "adapters_wordnet", command: str = "", log=print,
        scheduler: str | None = None) -> dict:
    """Train every (seed, adapter) pair; the results files are rewritten after each seed. With ``scheduler``
    ("local" or a Dask scheduler's address) each seed is a task of peftc.distributed.run_sweep instead."""
    t0 = time.perf_counter()
    data = load_data(s)
    sizes = {k: int(len(v["labels"])) for k, v in data.items()}
    log(f"train {sizes['train']}, val {sizes['val']}, test {sizes['test']}")
    runs: list[dict] = []
    if scheduler:
        done = sweep_seeds(partial(seed_task, s), s.seeds, scheduler, modules=("adapters_wordnet",))
        runs = [r for seed in s.seeds for r in done[seed]]
        result = _payload(s, command, sizes, runs, time.perf_counter() - t0)
        _write(result, out_stem)
        return result
    for seed in s.seeds:
        for name in s.adapters:
            runs.append(run_one(name, seed, data, NUM_CLASSES, s, log))
        result = _payload(s, command, sizes, runs, time.perf_counter() - t0)
        _write(result, out_stem)
    return result


def merge(stems: list[Path], out_stem: Path) -> dict:
    """Combine results files of the same settings (e.g. seeds run in separate processes) into one."""
    parts = [json.loads(stem.with_suffix(".json").read_text()) for stem in stems]
    first = parts[0]
    check_seed_parts([part["settings"] for part in parts], stems, {"seeds", "progress"})
    runs = [r for part in parts for r in part["runs"]]
    settings = dict(first["settings"], seeds=sorted({r["seed"] for r in runs}))
    s = Settings(**settings)
    command = merged_command([part["command"] for part in parts], stems)
    result = _payload(s, command, first["sizes"], runs, sum(part["total_seconds"] for part in parts))
    _write(result, out_stem)
    return result


def main(argv: list[str] | None = None) -> int:
    d = Settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=d.seeds)
    p.add_argument("--adapters", nargs="+", default=d.adapters, choices=ADAPTERS)
    for key in ("train_per_class", "val_per_class", "test_per_class", "max_length", "epochs", "batch_size",
                "eval_every", "log_every"):
        p.add_argument("--" + key.replace("_", "-"), type=int, default=getattr(d, key))
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=d.learning_rate)
    p.add_argument("--reduced", action="store_true", help="label the results as a reduced run")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "adapters_wordnet"), help="output path stem (.json and .md)")
    p.add_argument("--merge", nargs="+", default=None, metavar="STEM",
                   help="combine these results files (same settings, other seeds) into --out, then stop")
    add_scheduler_argument(p)
    a = p.parse_args(argv)
    if a.merge:
        print(markdown(merge([Path(m) for m in a.merge], Path(a.out))))
        return 0
    s = Settings(seeds=a.seeds, adapters=a.adapters, train_per_class=a.train_per_class, val_per_class=a.val_per_class,
                 test_per_class=a.test_per_class, max_length=a.max_length, epochs=a.epochs, max_steps=a.max_steps,
                 batch_size=a.batch_size, eval_every=a.eval_every, log_every=a.log_every, learning_rate=a.lr,
                 reduced=a.reduced, progress=a.progress)
    command = "python benchmarks/adapters_wordnet.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = run(s, Path(a.out), command.strip(), scheduler=a.scheduler)
    print()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
