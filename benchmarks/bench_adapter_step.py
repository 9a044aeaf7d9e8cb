"""Training-step time of each adapter relative to LoRA on all-MiniLM-L6-v2, same process, same targets.

A step is what the Trainer runs: forward, backward, gradient clipping, AdamW (SoRA: plus its
proximal gate step), learning-rate schedule. Every adapter sits on ``query`` and ``value`` at the
head-to-head's shared budget (adapters_wordnet.py: LoRA r=8, SoRA r_max=8, Hydra 4+4, Bone r=16,
Bat r=16), plus the trained head. "head only" (frozen encoder, nothing adapted) is the floor.

Two batches of 32: ``seq128`` (random token ids, every row 128 tokens) and ``gloss`` (32 real
WordNet glosses, padded to their longest, max_length 64). The adapters are timed round-robin,
one step each per round, so load from other processes falls on all of them alike; the median of
the rounds is reported. A layer table times one adapted 384 x 384 layer's forward + backward on
the seq128 rows (4096 x 384) to show where an adapter's own math costs more.

Run: OPENBLAS_NUM_THREADS=2 python benchmarks/bench_adapter_step.py [--rounds 5]
Writes benchmarks/results/bench_adapter_step.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from adapters_wordnet import ADAPTERS, Settings, adapter_config, load_data  # noqa: E402

from peftc.io.atomic import write_bytes_atomic
from peftc.data.wordnet import NUM_CLASSES  # noqa: E402
from peftc.models import BertModel, SentenceClassifier, minilm_path  # noqa: E402
from peftc.nn import BoneLinear, HydraLinear, Linear, LoraLinear, SoraLinear  # noqa: E402
from peftc.random import Generator  # noqa: E402
from peftc.train import Trainer, TrainingConfig  # noqa: E402
from peftc.tuners import get_peft_model, sora  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TARGET = 1.2


def make_trainer(name: str, bert: BertModel) -> Trainer:
    """A Trainer over a fresh classifier on ``bert``'s arrays with adapter ``name`` (or the head only)."""
    dummy = {"input_ids": np.zeros((1, 1), np.int64), "attention_mask": np.ones((1, 1), np.int64),
             "labels": np.zeros(1, np.int64)}
    cfg = TrainingConfig(learning_rate=1e-3, max_steps=10 ** 6, warmup_steps=0, weight_decay=0.01, progress=False)
    base = SentenceClassifier(bert, NUM_CLASSES, generator=Generator(1))
    if name == "head only":
        base.bert.requires_grad_(False)
        return Trainer(base, cfg, dummy)
    model = get_peft_model(base, adapter_config(name), generator=Generator(2))
    if name == "sora":
        return sora.SoraTrainer(model, cfg, dummy)
    return Trainer(model, cfg, dummy)


def batches(rng: np.random.Generator, seq: int, batch: int) -> dict[str, dict[str, np.ndarray]]:
    ids = rng.integers(1000, 30000, (batch, seq)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    rand = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": rng.integers(0, NUM_CLASSES, batch)}
    train = load_data(Settings(train_per_class=5, val_per_class=1, test_per_class=1))["train"]
    rows = rng.choice(len(train["labels"]), batch, replace=False)
    gloss = {k: np.ascontiguousarray(v[rows]) for k, v in train.items()}
    return {f"seq{seq}": rand, "gloss": gloss}


def time_steps(names: list[str], batch: dict[str, np.ndarray], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Round-robin step times: one warm-up step each, then ``rounds`` timed steps each, interleaved.

    Returns {name: {"wall": seconds, "cpu": process CPU seconds (all threads)}}.
    """
    trainers = {n: make_trainer(n, BertModel.from_pretrained(minilm_path())) for n in names}
    for t in trainers.values():
        t.training_step(batch)
    times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
    for _ in range(rounds):
        for n, t in trainers.items():
            t0, c0 = time.perf_counter(), time.process_time()
            t.training_step(batch)
            times[n]["wall"].append(time.perf_counter() - t0)
            times[n]["cpu"].append(time.process_time() - c0)
    return times


def layer_case(name: str, base: Linear):
    """``base`` frozen, wrapped in adapter ``name`` with small nonzero adapter weights (no branch skipped)."""
    base.requires_grad_(False)
    g = Generator(3)
    if name == "base":
        return base
    if name == "lora":
        layer = LoraLinear(base, r=8, lora_alpha=16, generator=g)
    elif name == "sora":
        layer = SoraLinear(base, r=8, lora_alpha=16, generator=g)
    elif name == "hydra":
        layer = HydraLinear(base, r=4, lora_alpha=8, seq_r=4, seq_alpha=8, generator=g)
    else:
        layer = BoneLinear(base, r=16, init_weights=True if name == "bone" else "bat", generator=g)
    rng = np.random.default_rng(0)
    for p in layer.adapter_parameters().values():
        p.data[...] = 0.01 * rng.standard_normal(p.shape)
    return layer


def time_layers(rows: int, features: int, repeats: int) -> dict[str, dict[str, float]]:
    """Forward + backward of one adapted (features x features) layer on (rows, features), round-robin.

    Returns {name: {"min_ms", "median_ms"}} of wall time over ``repeats`` rounds.
    """
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, features)).astype(np.float32)
    dy = rng.standard_normal((rows, features)).astype(np.float32)
    layers = {name: layer_case(name, Linear(features, features, generator=Generator(0)))
              for name in ("base", *ADAPTERS)}
    times: dict[str, list[float]] = {name: [] for name in layers}
    for k in range(repeats + 1):
        for name, layer in layers.items():
            t0 = time.perf_counter()
            layer.forward(x)
            layer.backward(dy)
            if k:  # round 0 is the warm-up
                times[name].append(time.perf_counter() - t0)
    return {n: {"min_ms": 1e3 * min(ts), "median_ms": 1e3 * float(np.median(ts))} for n, ts in times.items()}


WHY = {
    "lora": "reference",
    "sora": "LoRA plus a gate vector and a proximal step on 96 gate entries: no extra GEMM of size N x 384 x 384",
    "hydra": "LoRA with r_p=4 plus a sequential branch on the base output (y0 A_s^T, rank 4): the same low-rank "
             "work as LoRA r=8",
    "bone": "one pass summing the input's 16-wide shards (N x 384 adds) and one (N x 16) x (16 x 384) GEMM",
    "bat": "builds W' = W + W T + T per step (384 x 384 x 16 MACs, twice) and, in backward, the full weight "
           "gradient dW = dy^T x (N x 384 x 384 MACs, a third GEMM of the base layer's size) to get dT",
}


def verdict_lines(steps: dict) -> list[str]:
    """Per adapter: within TARGET of LoRA or not, judged on the larger of the wall and CPU ratios of every case."""
    out = []
    for n in ADAPTERS[1:]:
        worst = max(max(case[n]["vs_lora"], case[n]["vs_lora_cpu"]) for case in steps.values())
        out.append(f"{n}: {'within' if worst <= TARGET else 'OVER'} target (worst {worst:.2f}x).")
    return out


def _load(result: dict) -> str:
    load = result.get("load_average_at_end")
    return "not recorded" if load is None else ", ".join(f"{x:.1f}" for x in load)


def markdown(result: dict) -> str:
    lines = [f"Adapter training-step time on all-MiniLM-L6-v2 (query, value), batch {result['batch']}, "
             f"OPENBLAS_NUM_THREADS={result['threads']}, {result['rounds']} round-robin rounds (one step of each "
             f"adapter per round, after a warm-up step). Load average at the end (1, 5, 15 min): "
             f"{_load(result)}. Times are the fastest round (wall) and the ratio is min / min; in brackets the ratio "
             f"of median process CPU times (all threads), which other jobs on the machine disturb less.", "",
             "Tokens per row: " + ", ".join(f"{c} {n}" for c, n in result["tokens"].items()) + ".", "",
             "| adapter | " + " | ".join(f"{c} ms | {c} / LoRA" for c in result["cases"]) + " |",
             "|---|" + "---|---|" * len(result["cases"])]
    for name in result["names"]:
        cells = []
        for c in result["cases"]:
            m = result["steps"][c][name]
            cells.append(f"{m['min_ms']:.0f} | {m['vs_lora']:.2f} ({m['vs_lora_cpu']:.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"One adapted 384 x 384 layer, forward + backward on {result['layer_rows']} rows, fastest of "
              f"{result['layer_repeats']} round-robin rounds:", "",
              "| layer | ms | / LoRA | why |", "|---|---|---|---|"]
    lora = result["layer_ms"]["lora"]["min_ms"]
    for name, m in result["layer_ms"].items():
        why = "frozen Linear forward + dx only (no adapter)" if name == "base" else WHY[name]
        lines.append(f"| {name} | {m['min_ms']:.2f} | {m['min_ms'] / lora:.2f} | {why} |")
    bat = result["layer_ms"]["bat"]["min_ms"] / lora
    base = result["layer_ms"]["base"]["min_ms"]
    lines += ["", f"Where the math costs more: Bat's backward forms the full weight gradient dW = dy^T x to get dT "
              f"(one more GEMM of the frozen layer's size, which LoRA never computes) and rebuilds W' twice per "
              f"step; on the layer that is {bat:.2f}x LoRA and {result['layer_ms']['bat']['min_ms'] / base:.2f}x the "
              f"frozen layer. Only query and value carry it (2 of the 6 linear maps per block, the smaller ones), "
              f"which is why the whole step stays close to LoRA. The other adapters add only rank-r work."]
    lines += ["", f"Target: within {TARGET}x of LoRA per step, judged on the larger of the wall and CPU ratios "
              f"(a single slow round under load can make either one misleading). " + " ".join(result["verdicts"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--layer-repeats", type=int, default=30)
    ap.add_argument("--out", default=str(RESULTS / "bench_adapter_step"))
    a = ap.parse_args(argv)
    names = ["head only", *ADAPTERS]
    cases = batches(np.random.default_rng(0), a.seq, a.batch)
    steps = {}
    for case, batch in cases.items():
        times = time_steps(names, batch, a.rounds)
        ref = times["lora"]
        steps[case] = {n: {"min_ms": 1e3 * min(t["wall"]), "median_ms": 1e3 * float(np.median(t["wall"])),
                           "cpu_median_ms": 1e3 * float(np.median(t["cpu"])),
                           "all_ms": [1e3 * v for v in t["wall"]],
                           "vs_lora": min(t["wall"]) / min(ref["wall"]),
                           "vs_lora_median": float(np.median(t["wall"]) / np.median(ref["wall"])),
                           "vs_lora_cpu": float(np.median(t["cpu"]) / np.median(ref["cpu"]))}
                       for n, t in times.items()}
        print(case, {n: f"{v['min_ms']:.0f} ms ({v['vs_lora']:.2f}x)" for n, v in steps[case].items()}, flush=True)
    layer_rows = a.batch * a.seq
    layer_ms = time_layers(layer_rows, 384, a.layer_repeats)
    print("layer", {n: f"{v['min_ms']:.2f} ms" for n, v in layer_ms.items()})
    verdicts = verdict_lines(steps)
    tokens = {c: int(np.flatnonzero(b["attention_mask"].any(0))[-1]) + 1 for c, b in cases.items()}
    result = {"batch": a.batch, "seq": a.seq, "rounds": a.rounds, "threads": os.environ.get("OPENBLAS_NUM_THREADS"),
              "load_average_at_end": os.getloadavg(),
              "cases": list(cases), "names": names, "tokens": tokens, "steps": steps, "layer_rows": layer_rows,
              "layer_repeats": a.layer_repeats, "layer_ms": layer_ms, "why": WHY, "verdicts": verdicts,
              "command": "python benchmarks/bench_adapter_step.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    stem = Path(a.out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(stem.with_suffix(".json"), json.dumps(result, indent=1).encode())
    write_bytes_atomic(stem.with_suffix(".md"), markdown(result).encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
