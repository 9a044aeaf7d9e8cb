"""Adapt-inf on a stream of six real text tasks: lifelong LoRA adaptation of all-MiniLM-L6-v2 with replay policies.

Stream: :mod:`peftc.data.task_stream` (noun entities, verb supersenses, noun categories, fortune topics,
adjectives / adverbs, abstract nouns; fixed order and fixed splits, natural redundancy kept). Model:
:class:`peftc.lifelong.StreamNetwork` on all-MiniLM-L6-v2: the lower blocks frozen and run once per text,
LoRA (query, value) on the top ``--adapted-blocks``, a linear head per task (the task is known at test time,
as an instruction would name it). After every time step the adapters and heads are snapshotted; accuracy on
every task seen so far is computed from the snapshots.

Methods: ``sequential`` (no replay), ``full_replay`` (everything seen), ``random_25`` (a uniform 25% of
everything seen), ``adapt_inf_10`` / ``_25`` / ``_50`` (Adapt-inf at 10%, 25%, 50% of the examples seen so
far, pool pruned to ``--pool-bound``), ``adapt_inf_25_noprune`` (no pruning). Per method and seed the learning
rate is chosen on the validation split (final average accuracy, ``peftc.evaluation.select_on_validation``);
only the chosen run's snapshots are scored on test.

Metrics per method: final average accuracy, forgetting (mean over earlier tasks of best-before-last minus
last accuracy), backward transfer, the relative gain against full replay (100 x mean over tasks of the final
accuracy ratio, the same seed; the paper's normalisation is UNVERIFIED, ours is against full replay), wall
seconds of the chosen run and its example backward passes (training: one per example and epoch; Adapt-inf
scoring: one per pool example and step, through the last block only, also counted in block-backwards).

Claims (paired t across seeds, Holm, ``peftc.evaluation.verdicts``): full replay beats Adapt-inf 25% (the
paper's claim is that this does NOT hold); Adapt-inf 25% forgets less than sequential; Adapt-inf 25% beats
random 25%; pruning does not hurt (Adapt-inf 25% without pruning beats it: expected not to hold). The ratio
of backward passes against full replay (target < 0.35) is deterministic given the pool sizes and is
reported, not tested.

Cost of the sample vectors: ``--pe-cost`` (on by default outside --quick) times, on one batch of 32 training
glosses, the per-example gradient + projection against one LoRA training step (interleaved, median of 7) and
records the ratio (target <= 1.5).

Modes (from the repository root; the lead runs the full one, one process per seed is fine):
    PYTHONPATH=. OPENBLAS_NUM_THREADS=1 python benchmarks/adapt_inf_stream.py --quick
    PYTHONPATH=. OPENBLAS_NUM_THREADS=1 python benchmarks/adapt_inf_stream.py --seeds 0 \
        --out benchmarks/results/adapt_inf_stream_s0
    ... --seeds 1 --out ..._s1 (and so on), then
    python benchmarks/adapt_inf_stream.py --merge benchmarks/results/adapt_inf_stream_s0 ... _s4
Results: benchmarks/results/adapt_inf_stream.{json,md}; the --quick run's are adapt_inf_stream_quick.{json,md}
(4 training examples per class, one epoch, one learning rate: a pipeline check, not evidence).

Cost (an estimate from work counts and the --quick run, not a timing): the --quick run took about 200 s per
seed for the seven methods on a 2-core machine shared by several jobs (load average about 12). The full
defaults do about 6x the examples (1824 training rows over the stream), 2 epochs, 2 learning rates and
sequences of up to 32 tokens instead of 16: roughly 30x the work, so about 1.5-2 hours per seed on such a
machine (less on an idle core), plus a few minutes once for caching the frozen trunk and timing the
per-example gradients. --lrs, --train-per-class and --methods cut it.
Expected cost ratio, from the counts alone: Adapt-inf scores its whole pool every step (one backward per pool
example), so with 2 epochs at 25% its example backward passes come to about 0.68x full replay's (0.46x when
weighted by the blocks each backward runs through); the paper's < 0.35x needs fewer scoring passes than
that (or more epochs per step).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from common import check_seed_parts, environment, markdown_table, merged_command, time_interleaved  # this folder
from peftc.data.task_stream import StreamSizes, build_stream, redundancy
from peftc.evaluation import Claim, select_on_validation, verdicts, verdicts_markdown
from peftc.io.atomic import write_bytes_atomic
from peftc.lifelong.adapt_inf import AdaptInfConfig
from peftc.lifelong.network import StreamNetwork
from peftc.lifelong.stream import (StreamMethod, TrainSettings, accuracy_matrix, prepare_task, run_stream,
                                   stream_metrics)
from peftc.lifelong.vectors import projection_matrix, sample_vectors

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("sequential", "full_replay", "random_25", "adapt_inf_10", "adapt_inf_25", "adapt_inf_50",
           "adapt_inf_25_noprune")


@dataclass
class Settings:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3])
    train_per_class: int = 24
    val_per_class: int = 5
    test_per_class: int = 20
    max_length: int = 32
    adapted_blocks: int = 2
    r: int = 8
    lora_alpha: float = 16.0
    epochs: int = 2
    batch_size: int = 32
    proj_dim: int = 1024
    pool_bound: int = 1000
    dedup_threshold: float = 0.98
    k: int | None = None
    k_candidates: list[int] = field(default_factory=lambda: [4, 6, 8, 10, 12, 16])
    duplicate_rate: float = 0.0
    pe_cost: bool = True


QUICK = dict(seeds=[0, 1], lrs=[2e-3], train_per_class=4, val_per_class=2, test_per_class=4, max_length=16,
             epochs=1, proj_dim=256, pool_bound=160, k_candidates=[2, 4, 6], pe_cost=False)


def method_table(s: Settings) -> dict[str, StreamMethod]:
    adapt = AdaptInfConfig(k=s.k, k_candidates=tuple(s.k_candidates), pool_bound=s.pool_bound,
                           dedup_threshold=s.dedup_threshold)
    return {"sequential": StreamMethod("sequential", "sequential"),
            "full_replay": StreamMethod("full_replay", "full_replay"),
            "random_25": StreamMethod("random_25", "random", 0.25),
            "adapt_inf_10": StreamMethod("adapt_inf_10", "adapt_inf", 0.10, adapt),
            "adapt_inf_25": StreamMethod("adapt_inf_25", "adapt_inf", 0.25, adapt),
            "adapt_inf_50": StreamMethod("adapt_inf_50", "adapt_inf", 0.50, adapt),
            "adapt_inf_25_noprune": StreamMethod("adapt_inf_25_noprune", "adapt_inf", 0.25,
                                                 replace(adapt, prune=False))}


def default_model():
    """(StreamNetwork factory taking (seed, settings), tokenizer factory) for all-MiniLM-L6-v2."""
    from peftc.models import BertModel, Tokenizer, minilm_path

    folder = minilm_path()

    def make(seed: int, s: Settings) -> StreamNetwork:
        return StreamNetwork(BertModel.from_pretrained(folder, seed=seed), s.adapted_blocks, s.r, s.lora_alpha, seed)

    return make, (lambda n: Tokenizer(folder, max_length=n))


@functools.lru_cache(maxsize=1)
def _stream(train_per_class: int, val_per_class: int, test_per_class: int):
    return build_stream(StreamSizes(train_per_class, val_per_class, test_per_class, min_train=min(5, train_per_class)))


def stream_data(s: Settings, make_net, make_tokenizer, log=print):
    """The tasks with cached trunk states (the frozen trunk is the same for every seed) and their statistics."""
    from peftc.data.task_stream import with_duplicates

    tasks = _stream(s.train_per_class, s.val_per_class, s.test_per_class)
    tok = make_tokenizer(s.max_length)
    net = make_net(0, s)
    data, stats = [], []
    for i, t in enumerate(tasks):
        train = with_duplicates(t.train, s.duplicate_rate, seed=i) if s.duplicate_rate else t.train
        splits = {"train": (train.texts, train.labels), "validation": (t.validation.texts, t.validation.labels),
                  "test": (t.test.texts, t.test.labels)}
        data.append(prepare_task(t.name, t.num_classes, net, tok, splits))
        stats.append({"task": t.name, "classes": t.num_classes, "train": len(train), "validation": len(t.validation),
                      "test": len(t.test), **redundancy(train.texts)})
        log(f"  cached {t.name}: {stats[-1]}")
    return data, stats


def run_method(name: str, method: StreamMethod, s: Settings, data, seed: int, make_net, log=print) -> dict:
    """select_on_validation over the learning rates; only the chosen run's snapshots are scored on test."""
    t0 = time.perf_counter()

    def train(lr: float):
        settings = TrainSettings(epochs=s.epochs, batch_size=s.batch_size, lr=lr, proj_dim=s.proj_dim)
        return run_stream(lambda sd: make_net(sd, s), data, method, settings, seed)

    def evaluate(model, part: str):
        run, net = model
        if part == "validation":  # the choice reads the final step only
            return float(np.nanmean(accuracy_matrix(run, net, data, part, steps=[len(data) - 1])[-1]))
        acc = accuracy_matrix(run, net, data, part)
        return {"acc": acc, "run": run}

    sel = select_on_validation(s.lrs, train, evaluate)
    acc, run = sel.test_score["acc"], sel.test_score["run"]
    out = {"method": name, "seed": seed, "lr": sel.best_candidate, "val_final_avg_acc": list(sel.scores),
           **stream_metrics(acc),
           "acc": [[None if np.isnan(v) else float(v) for v in row] for row in acc],
           "backward_passes": int(run.backward_passes),
           "block_backwards": int(run.block_backwards), "trained_per_step": run.trained,
           "scored_per_step": run.scored, "pool_per_step": run.pool_sizes, "seconds": run.seconds,
           "seconds_with_selection": time.perf_counter() - t0, "steps": run.info}
    log(f"seed {seed} {name}: final avg acc {100 * out['final_avg_acc']:.2f}, forgetting "
        f"{100 * out['forgetting']:.2f}, backward passes {out['backward_passes']} (lr {out['lr']}, "
        f"{out['seconds']:.0f} s chosen run, {out['seconds_with_selection']:.0f} s with selection)")
    return out


def per_example_cost(s: Settings, data, make_net) -> dict:
    """Median seconds of (per-example gradients + projection) and of one LoRA training step on the same batch of
    32 training glosses, interleaved; their ratio (target <= 1.5)."""
    from peftc.lifelong.stream import gather_pool
    from peftc.optim import AdamW

    net = make_net(0, s)
    for t in data:
        net.add_task(t.num_classes)
    rows = np.arange(32) % len(data[0].train)  # the first task's first 32 glosses (it has far more)
    refs = np.stack([np.zeros(32, np.int64), rows], axis=1)
    states, mask, labels, tasks = gather_pool(data, refs)
    p = sum(layer.lora_A.size + layer.lora_B.size for layer in net.recording_layers())
    proj = projection_matrix(p, s.proj_dim, 0)
    opt = AdamW(net.trainable(), lr=0.0)  # lr 0: the step costs what it costs, the weights stay put

    def per_example():
        pe = net.per_example(states, mask, labels, tasks)
        sample_vectors(pe.grads, proj)

    def lora_step():
        net.zero_grad()
        net.loss_backward(states, mask, labels, tasks)
        opt.step()

    t = time_interleaved({"per_example_and_projection": per_example, "lora_training_step": lora_step}, repeats=7)
    ratio = t["per_example_and_projection"]["median_s"] / t["lora_training_step"]["median_s"]
    return {"batch": 32, "proj_dim": s.proj_dim, "times": t, "ratio": ratio, "target": 1.5, "meets": ratio <= 1.5}


def relative_gain(final: list[float], reference: list[float]) -> float:
    """100 x the mean over tasks of final / reference accuracy (tasks where the reference scored 0 left out)."""
    a, b = np.asarray(final, np.float64), np.asarray(reference, np.float64)
    ok = b > 0
    return float(100.0 * np.mean(a[ok] / b[ok])) if ok.any() else float("nan")


def summarize(runs: list[dict], names: list[str]) -> dict:
    full = {r["seed"]: r for r in runs if r["method"] == "full_replay"}
    out = {}
    for name in names:
        rows = sorted((r for r in runs if r["method"] == name), key=lambda r: r["seed"])
        if not rows:
            continue
        gains = [relative_gain(r["acc"][-1], full[r["seed"]]["acc"][-1]) for r in rows if r["seed"] in full]
        passes = [r["backward_passes"] / full[r["seed"]]["backward_passes"] for r in rows if r["seed"] in full]
        out[name] = {"final_avg_acc": float(np.mean([r["final_avg_acc"] for r in rows])),
                     "forgetting": float(np.mean([r["forgetting"] for r in rows])),
                     "bwt": float(np.mean([r["bwt"] for r in rows])),
                     "relative_gain": float(np.nanmean(gains)) if gains and not np.isnan(gains).all() else None,
                     "backward_passes": int(round(np.mean([r["backward_passes"] for r in rows]))),
                     "passes_vs_full_replay": float(np.mean(passes)) if passes else None,
                     "seconds": float(np.mean([r["seconds"] for r in rows])),
                     "acc_per_task_final": np.mean([r["acc"][-1] for r in rows], axis=0).tolist(),
                     "seeds": len(rows)}
    return out


def claims(runs: list[dict]) -> list[Claim]:
    by = {(r["method"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})

    def side(name, key):
        return [by[(name, sd)][key] for sd in seeds]

    have = lambda *ns: all((n, sd) in by for n in ns for sd in seeds)  # noqa: E731
    out = []
    if have("full_replay", "adapt_inf_25"):
        out.append(Claim("full replay final avg acc > Adapt-inf 25% (the paper expects this NOT to hold)",
                         side("full_replay", "final_avg_acc"), side("adapt_inf_25", "final_avg_acc")))
    if have("adapt_inf_25", "sequential"):
        out.append(Claim("Adapt-inf 25% forgetting < sequential", side("adapt_inf_25", "forgetting"),
                         side("sequential", "forgetting"), "less"))
    if have("adapt_inf_25", "random_25"):
        out.append(Claim("Adapt-inf 25% final avg acc > random 25%", side("adapt_inf_25", "final_avg_acc"),
                         side("random_25", "final_avg_acc")))
    if have("adapt_inf_25_noprune", "adapt_inf_25"):
        out.append(Claim("Adapt-inf 25% without pruning final avg acc > with pruning (expected NOT to hold)",
                         side("adapt_inf_25_noprune", "final_avg_acc"), side("adapt_inf_25", "final_avg_acc")))
    return out


def render(payload: dict) -> str:
    s = payload["settings"]
    rows = [[name, f"{100 * m['final_avg_acc']:.2f}", f"{100 * m['forgetting']:.2f}", f"{100 * m['bwt']:.2f}",
             "" if m["relative_gain"] is None else f"{m['relative_gain']:.1f}", m["backward_passes"],
             "" if m["passes_vs_full_replay"] is None else f"{m['passes_vs_full_replay']:.3f}",
             f"{m['seconds']:.0f}", m["seeds"]]
            for name, m in payload["methods"].items()]
    md = (f"# Adapt-inf on a six-task text stream, all-MiniLM-L6-v2 + LoRA (top {s['adapted_blocks']} blocks)\n\n"
          f"Seeds {s['seeds']}; {s['train_per_class']} training examples per class (cap), {s['test_per_class']} test "
          f"per class; {s['epochs']} epochs per step; learning rate chosen per method and seed on validation among "
          f"{s['lrs']}; pool bound {s['pool_bound']}, de-dup cosine {s['dedup_threshold']}. "
          f"CPU: {payload['cpu']}. Command: `{payload['command']}`\n\n"
          + markdown_table(["method", "final avg acc %", "forgetting %", "BWT %", "relative gain", "backward passes",
                            "passes / full replay", "seconds", "seeds"], rows))
    if payload.get("stream"):
        md += "\nStream:\n\n" + markdown_table(
            ["task", "classes", "train", "validation", "test", "exact duplicates", "same first 3 words"],
            [[t["task"], t["classes"], t["train"], t["validation"], t["test"], t["exact_duplicates"],
              t["same_first_3_words"]] for t in payload["stream"]])
    if payload.get("per_example_cost"):
        c = payload["per_example_cost"]
        md += (f"\nPer-example gradients + projection vs one LoRA step (batch 32): ratio {c['ratio']:.2f} "
               f"(target <= 1.5).\n")
    if payload.get("verdicts"):
        md += "\n" + verdicts_markdown(payload["verdicts"])
    elif payload.get("verdicts_note"):
        md += f"\nVerdicts: {payload['verdicts_note']}\n"
    return md


def write(payload: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out.with_suffix(".json"), (json.dumps(payload, indent=1) + "\n").encode())
    write_bytes_atomic(out.with_suffix(".md"), render(payload).encode())


def finish(runs: list[dict], s: Settings, command: str, cpu: str, stats=None, cost=None, seconds=0.0) -> dict:
    payload = {"benchmark": "adapt_inf_stream", "command": command, "cpu": cpu, "settings": asdict(s),
               "seconds": seconds, "stream": stats, "per_example_cost": cost,
               "methods": summarize(runs, s.methods), "runs": runs}
    found = claims(runs)
    seeds = {r["seed"] for r in runs}
    payload["verdicts"] = verdicts(found) if found and len(seeds) >= 2 else []
    if not payload["verdicts"]:
        payload["verdicts_note"] = f"none: {len(seeds)} seed(s), the paired tests need at least 2 (5 to hold)"
    return payload


def run(s: Settings, out: Path, command: str, log=print, model=None) -> dict:
    """Every method on every seed; the results files are rewritten after each method."""
    t0 = time.perf_counter()
    make_net, make_tokenizer = model or default_model()
    cpu = environment()["cpu"]
    data, stats = stream_data(s, make_net, make_tokenizer, log)
    cost = per_example_cost(s, data, make_net) if s.pe_cost else None
    if cost:
        log(f"per-example gradients + projection / LoRA step: {cost['ratio']:.2f}")
    table = method_table(s)
    runs: list[dict] = []
    for seed in s.seeds:
        for name in s.methods:
            runs.append(run_method(name, table[name], s, data, seed, make_net, log))
            write(finish(runs, s, command, cpu, stats, cost, time.perf_counter() - t0), out)
    return finish(runs, s, command, cpu, stats, cost, time.perf_counter() - t0)


def merge(stems: list[Path], out: Path) -> dict:
    """Combine results files of one configuration run with different seeds into ``out``."""
    parts = [json.loads(Path(p).with_suffix(".json").read_text()) for p in stems]
    check_seed_parts([p["settings"] for p in parts], [str(p) for p in stems], ignore={"seeds"})
    runs = [r for p in parts for r in p["runs"]]
    keys = [(r["method"], r["seed"]) for r in runs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"the files repeat a (method, seed): {sorted(k for k in keys if keys.count(k) > 1)[:4]}")
    s = Settings(**{**parts[0]["settings"], "seeds": sorted({r["seed"] for r in runs})})
    payload = finish(runs, s, merged_command([p["command"] for p in parts], [str(p) for p in stems]), parts[0]["cpu"],
                     parts[0]["stream"], parts[0]["per_example_cost"], sum(p["seconds"] for p in parts))
    write(payload, out)
    return payload


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings that only check the pipeline runs")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None, choices=list(METHODS))
    p.add_argument("--lrs", type=float, nargs="+", default=None)
    p.add_argument("--train-per-class", type=int, default=None)
    p.add_argument("--test-per-class", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--pool-bound", type=int, default=None)
    p.add_argument("--duplicate-rate", type=float, default=None,
                   help="the controlled-duplication setting: append this fraction of each task's training rows again")
    p.add_argument("--no-pe-cost", action="store_true", help="skip the per-example-gradient cost measurement")
    p.add_argument("--out", default=str(RESULTS / "adapt_inf_stream"))
    p.add_argument("--merge", nargs="+", default=None, metavar="STEM")
    a = p.parse_args(argv)
    if a.merge:
        merge([Path(m) for m in a.merge], Path(a.out))
        return 0
    s = replace(Settings(), **QUICK) if a.quick else Settings()
    overrides = {"seeds": a.seeds, "methods": a.methods, "lrs": a.lrs, "train_per_class": a.train_per_class,
                 "test_per_class": a.test_per_class, "epochs": a.epochs, "pool_bound": a.pool_bound,
                 "duplicate_rate": a.duplicate_rate, "pe_cost": False if a.no_pe_cost else None}
    s = replace(s, **{k: v for k, v in overrides.items() if v is not None})
    command = "python benchmarks/adapt_inf_stream.py " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = run(s, Path(a.out), command)
    print(render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
