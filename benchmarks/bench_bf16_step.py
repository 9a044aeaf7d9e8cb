"""A LoRA training step of MiniLM with a bf16 frozen base: peftc against torch float32 and torch bf16 autocast.

The model on every side: all-MiniLM-L6-v2, mean pooling, a linear head of 41 classes (WordNet's lexicographer
files), LoRA r = 8, alpha 16, lora_dropout 0.1 on query and value (the main job's recipe), the head trained.
One step = forward, cross-entropy, backward, AdamW. Sides:
  - peftc bf16: ``BertModel.from_pretrained(..., dtype="bfloat16")`` (frozen weights packed in bf16, the bf16
    kernels on the path peftc.bf16.selected_path() picks);
  - torch float32: transformers + PEFT with the same LoRA factors and head;
  - torch bf16: the same model under ``torch.autocast("cpu", dtype=torch.bfloat16)``;
  - peftc float32, and peftc bf16 with the path forced (PEFTC_BF16_PATH) to each widening path the CPU runs
    (avx512f, avx2: the fallbacks where a CPU has no AVX512-BF16), on both workloads, for "the fallback is not
    slower than float32": ``fallback_over_fp32[path]`` = peftc float32 time / forced-path time (the generic C
    path is the portable reference, not a fast fallback, and is not timed).
Workloads: (a) the main job's real batches (WordNet training glosses, batch 32, its tokenizer and truncation,
padding trimmed per batch; random labels), ``--steps`` steps per timed repeat after warm-up; (b) the synthetic
batch 32 x 128 (full attention). Modes: train (the checkpoint's dropouts and LoRA dropout on) and eval (all
dropout off). Each side is timed per repeat in alternation with the others (same process, same threads);
medians of ``--repeats`` (>= 5) repeats; the ratios are torch time / peftc time (above 1: peftc faster).

Also: the frozen bf16 GEMMs' throughput inside a peftc bf16 step (the bf16 kernel calls timed from Python in a
separate instrumented pass) against the bf16 dot-product peak of a vdpbf16ps loop run in the same process
(only where the CPU has AVX512-BF16; else null, with the reason); the share of the real-batch step spent
outside the linear layers' kernel calls (frozen products, LoRA kernels, head); peak RSS of peftc bf16 and
torch bf16 autocast, each alone in a subprocess (VmHWM). The main job's accuracy with a bf16 base comes from
two runs of ``python -m peftc.demo --out DIR [--dtype bfloat16]`` passed as ``--demo-fp32 DIR --demo-bf16 DIR``
(null until given).

Run (the lead's full run; tens of minutes on 2 cores):
    python benchmarks/bench_bf16_step.py [--threads 2] [--repeats 5] [--steps 50] [--demo-fp32 D1 --demo-bf16 D2]
``--quick`` runs every part on tiny shapes (one real batch of 4 glosses, batch 4 x 16 synthetic, 1 step per
repeat, 1 warm-up step, RSS children of 1 step) to check the script, and writes its results to a temporary folder, not benchmarks/results/.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # peftc from this checkout
import common  # noqa: E402

NAME = "bench_bf16_step"
NUM_LABELS, RANK, ALPHA, LORA_DROPOUT, LR = 41, 8, 16.0, 0.1, 1e-4
TARGETS = ["query", "value"]
SYNTH = (32, 128)       # workload (b): batch x sequence
QUICK_SYNTH = (4, 16)
QUICK_REAL_BATCH = 4  # glosses per real batch in --quick: torch's bf16 GEMM is a slow reference loop without AVX512-BF16
TARGET = {"real_over_torch_bf16": 1.3, "real_over_torch_fp32": 2.0, "synth_off_over_torch_bf16": 1.5,
          "synth_off_over_torch_fp32": 2.0, "synth_on_over_torch_bf16": 2.0, "gemm_fraction_of_bf16_peak": 0.70,
          "rss_ratio_vs_torch_bf16": 0.5, "fallback_over_fp32": 1.0, "demo_acc_drop_points": 0.5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50, help="real-batch steps per timed repeat (after warm-up)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps of each side before the repeats")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, results to a temporary folder")
    ap.add_argument("--demo-fp32", default=None, help="--out folder of `python -m peftc.demo` (float32)")
    ap.add_argument("--demo-bf16", default=None, help="--out folder of `python -m peftc.demo --dtype bfloat16`")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the stored .json")
    ap.add_argument("--rss-child", choices=("peftc-bf16", "torch-bf16"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats < 5:
        ap.error(f"--repeats must be >= 5 (a median and a paired test need them), got {args.repeats}")
    return args


# ---- the models and their steps ----------------------------------------------------------------------
def peftc_model(dtype: str, seed: int = 3):
    from peftc import LoraConfig, get_peft_model
    from peftc.models import BertModel, SentenceClassifier, minilm_path
    from peftc.random import Generator

    base = SentenceClassifier(BertModel.from_pretrained(minilm_path(), seed=seed, dtype=dtype), NUM_LABELS,
                              generator=Generator(seed))
    base.bert.requires_grad_(False)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=LORA_DROPOUT, target_modules=TARGETS,
                        modules_to_save=["classifier"], init_lora_weights=False)
    return get_peft_model(base, config, generator=Generator(seed + 1))


def torch_model(torch: Any, copy_from: Any):
    """transformers' BertModel + PEFT LoRA, mean pooling, a head (common.py's twin): the LoRA factors and head of
    ``copy_from``."""
    return common.torch_lora_classifier(torch, NUM_LABELS, RANK, ALPHA, LORA_DROPOUT, TARGETS, copy_from)


@contextlib.contextmanager
def forced_path(path: str | None):
    """PEFTC_BF16_PATH set to ``path`` inside the block (None: as it was)."""
    from peftc import bf16

    old = os.environ.get(bf16.ENV_PATH)
    if path is not None:
        os.environ[bf16.ENV_PATH] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(bf16.ENV_PATH, None)
        else:
            os.environ[bf16.ENV_PATH] = old


class PeftcSteps:
    """Training steps of a peftc model over a list of batches, in turn (forward, loss, backward, AdamW)."""

    def __init__(self, model: Any, batches: list[dict], train: bool, path: str | None = None) -> None:
        from peftc.nn import CrossEntropyLoss
        from peftc.optim import AdamW

        self.model, self.batches, self.path, self.i = model.train(train), batches, path, 0
        self.loss_fn, self.opt = CrossEntropyLoss(), AdamW(model.trainable_parameters(), lr=LR)

    def __call__(self, steps: int) -> None:
        with forced_path(self.path):
            for _ in range(steps):
                b = self.batches[self.i % len(self.batches)]
                self.i += 1
                self.opt.zero_grad()
                loss = self.loss_fn.forward(self.model({"input_ids": b["input_ids"],
                                                        "attention_mask": b["attention_mask"]}), b["labels"])
                self.model.backward(self.loss_fn.backward())
                self.opt.step()
                self.loss = loss


class TorchSteps:
    """The same in torch, float32 or under bf16 autocast (the loss in float32 either way)."""

    def __init__(self, torch: Any, model: Any, batches: list[dict], train: bool, autocast: bool) -> None:
        self.torch, self.model, self.autocast, self.i = torch, model.train(train), autocast, 0
        self.batches = [{k: torch.from_numpy(v) for k, v in b.items()} for b in batches]
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)

    def __call__(self, steps: int) -> None:
        torch = self.torch
        for _ in range(steps):
            b = self.batches[self.i % len(self.batches)]
            self.i += 1
            self.opt.zero_grad(set_to_none=True)
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
            with ctx:
                logits = self.model(b["input_ids"], b["attention_mask"])
            loss = torch.nn.functional.cross_entropy(logits.float(), b["labels"])
            loss.backward()
            self.opt.step()
            self.loss = float(loss.detach())


# ---- the batches --------------------------------------------------------------------------------------------
def real_batches(np: Any, n: int, batch_size: int = 32) -> list[dict]:
    from wordnet_batches import gloss_batches

    rng = np.random.default_rng(5)
    return [{**b, "labels": rng.integers(0, NUM_LABELS, len(b["input_ids"]), dtype=np.int64)}
            for b in gloss_batches(n, batch_size, seed=0)]


def synthetic_batch(np: Any, batch: int, seq: int) -> dict:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, size=(batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones((batch, seq), dtype=np.int64),
            "labels": rng.integers(0, NUM_LABELS, size=batch, dtype=np.int64)}


# ---- timing ---------------------------------------------------------------------------------------------------
def alternate(sides: dict[str, Callable[[int], None]], steps: int, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each side: ``warmup`` untimed steps each, then per repeat each side settles and runs
    ``steps`` timed steps, the sides in turn (so load changes hit all of them)."""
    for fn in sides.values():
        fn(warmup)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            common.settle()
            t0 = time.perf_counter()
            fn(steps)
            times[name].append((time.perf_counter() - t0) / steps)
    return times


WIDENING = ("avx512f", "avx2")  # the bf16 paths that widen bf16 to float32: the fallbacks without vdpbf16ps


def fallback_side(path: str, selected: str) -> str:
    """The side that runs the bf16 base on ``path``: the unforced peftc bf16 side when that is the path selected."""
    return "peftc_bf16" if path == selected else f"peftc_bf16_{path}"


def workload_rows(np: Any, torch: Any, batches: list[dict], steps: int, repeats: int, warmup: int,
                  fallbacks: list[str], selected: str) -> dict[str, Any]:
    """Both modes of one workload: per-step times of every side and the ratios. ``fallbacks``: the widening paths
    to force, each against peftc float32; ``selected``: the path the unforced peftc bf16 side runs on."""
    out: dict[str, Any] = {}
    for mode, train in (("dropout_on", True), ("dropout_off", False)):
        ours = peftc_model("bfloat16")
        sides: dict[str, Callable[[int], None]] = {"peftc_bf16": PeftcSteps(ours, batches, train)}
        for path in fallbacks:
            if fallback_side(path, selected) != "peftc_bf16":
                sides[fallback_side(path, selected)] = PeftcSteps(peftc_model("bfloat16"), batches, train, path=path)
        sides["peftc_fp32"] = PeftcSteps(peftc_model("float32"), batches, train)
        sides["torch_fp32"] = TorchSteps(torch, torch_model(torch, ours), batches, train, autocast=False)
        sides["torch_bf16"] = TorchSteps(torch, torch_model(torch, ours), batches, train, autocast=True)
        times = alternate(sides, steps, repeats, warmup)
        med = {k: statistics.median(v) for k, v in times.items()}
        out[mode] = {"median_s_per_step": med, "times_s_per_step": times,
                     "peftc_over_torch_fp32": med["torch_fp32"] / med["peftc_bf16"],
                     "peftc_over_torch_bf16": med["torch_bf16"] / med["peftc_bf16"],
                     "fallback_sides": {p: fallback_side(p, selected) for p in fallbacks},
                     "fallback_over_fp32": {p: med["peftc_fp32"] / med[fallback_side(p, selected)] for p in fallbacks}}
        print(f"{mode}: " + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in med.items()), flush=True)
    return out


# ---- where the time goes: the linear layers' kernel calls, timed from Python ------------------------------------
class KernelClock:
    """Wraps the bf16 products (as the layers call them) and the float32 linear / LoRA kernels with timers."""

    def __init__(self) -> None:
        self.frozen_s = self.frozen_flops = self.other_s = 0.0

    @contextlib.contextmanager
    def installed(self):
        import peftc.functional as F
        import peftc.nn.linear as linear
        import peftc.nn.lora as lora

        def timed_frozen(fn):
            def run(*a, **kw):  # (x, weight, ...) forward, (dy, weight, ...) backward: 2 N OC IC FLOPs either way
                x, w = a[0], a[1]
                t0 = time.perf_counter()
                out = fn(*a, **kw)
                self.frozen_s += time.perf_counter() - t0
                self.frozen_flops += 2.0 * x.shape[0] * w.shape[0] * w.shape[1]
                return out
            return run

        def timed_other(fn):
            def run(*a, **kw):
                t0 = time.perf_counter()
                out = fn(*a, **kw)
                self.other_s += time.perf_counter() - t0
                return out
            return run

        saved = [(m, n, getattr(m, n)) for m in (linear, lora) for n in ("bf16_linear_forward", "bf16_linear_backward")]
        saved += [(F, n, getattr(F, n)) for n in ("lora_forward", "lora_backward", "linear_forward", "linear_backward")]
        try:
            for m, n, fn in saved:
                setattr(m, n, timed_frozen(fn) if n.startswith("bf16") else timed_other(fn))
            yield self
        finally:
            for m, n, fn in saved:
                setattr(m, n, fn)


def step_profile(batches: list[dict], steps: int) -> dict[str, Any]:
    """One instrumented pass of peftc bf16 steps (train mode): time in the frozen bf16 products and their
    GFLOP/s, time in the other linear-layer kernels, and the share of the step outside both."""
    run = PeftcSteps(peftc_model("bfloat16"), batches, train=True)
    run(1)
    clock = KernelClock()
    with clock.installed():
        t0 = time.perf_counter()
        run(steps)
        total = time.perf_counter() - t0
    return {"step_s": total / steps, "frozen_gemm_s": clock.frozen_s / steps,
            "other_linear_kernels_s": clock.other_s / steps,
            "frozen_gemm_gflops": clock.frozen_flops / clock.frozen_s / 1e9 if clock.frozen_s else None,
            "non_gemm_share": 1.0 - (clock.frozen_s + clock.other_s) / total}


def bf16_peak(threads: int, repeats: int, quick: bool) -> dict[str, Any]:
    """GFLOP/s of the vdpbf16ps loop on ``threads`` threads, median of ``repeats``; null where it cannot run."""
    from peftc import _C, bf16

    if "avx512bf16" not in bf16.cpu_paths():
        return {"gflops": None, "why": f"this CPU has no AVX512-BF16 (vdpbf16ps); it runs the bf16 paths "
                                       f"{', '.join(bf16.cpu_paths())}"}
    iters = 10_000 if quick else 2_000_000
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        flops, _checksum = _C.bf16_dot_peak(iters, threads)
        times.append(time.perf_counter() - t0)
    return {"gflops": flops / statistics.median(times) / 1e9, "iterations": iters, "times_s": times}


# ---- peak memory ----------------------------------------------------------------------------------------------
def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def rss_child(args: argparse.Namespace) -> None:
    import numpy as np

    batch = synthetic_batch(np, *(QUICK_SYNTH if args.quick else SYNTH))
    steps = 1 if args.quick else 3
    ours = peftc_model("bfloat16")
    if args.rss_child == "peftc-bf16":
        run: Any = PeftcSteps(ours, [batch], train=True)
    else:
        import torch

        common.configure_torch_threads(torch, args.threads)
        run = TorchSteps(torch, torch_model(torch, ours), [batch], train=True, autocast=True)
        del ours
    rss_setup = _status_mb("VmRSS")
    run(steps)
    print(json.dumps({"side": args.rss_child, "steps": steps, "rss_after_setup_mb": rss_setup,
                      "peak_rss_mb": _status_mb("VmHWM")}))


def rss_row(args: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for side in ("peftc-bf16", "torch-bf16"):
        cmd = [sys.executable, __file__, "--rss-child", side, "--threads", str(args.threads)] + (
            ["--quick"] if args.quick else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row[side] = json.loads(out.strip().splitlines()[-1])
    row["ratio"] = row["peftc-bf16"]["peak_rss_mb"] / row["torch-bf16"]["peak_rss_mb"]
    return row


# ---- demo accuracy and verdicts ------------------------------------------------------------------------------------
def demo_accuracy(folder: str | None) -> float | None:
    if folder is None:
        return None
    with open(os.path.join(folder, "result.json")) as f:
        return float(json.load(f)["lora"]["test"]["accuracy"])


def speed_verdicts(synth: dict, real: dict, shape: tuple[int, int] = SYNTH) -> dict[str, Any]:
    """Paired t / Holm (peftc.evaluation) over the alternated repeats: peftc bf16 steps take less time than
    torch's, and each forced widening path's less than peftc float32's."""
    from peftc.evaluation import Claim, verdicts

    claims = []
    synth_label = f"batch {shape[0]} x {shape[1]}"
    for label, rows, modes in (("real batches", real, ("dropout_on",)), (synth_label, synth,
                                                                         ("dropout_on", "dropout_off"))):
        for mode in modes:
            t = rows[mode]["times_s_per_step"]
            for other in ("torch_fp32", "torch_bf16"):
                claims.append(Claim(f"{label}, {mode}: a peftc bf16 step takes less time than {other} (s)",
                                    t["peftc_bf16"], t[other], expected="less"))
    for label, row in (("real batches, dropout_on", real["dropout_on"]),
                       (f"{synth_label}, dropout_off", synth["dropout_off"])):
        t = row["times_s_per_step"]
        for path, side in row["fallback_sides"].items():
            claims.append(Claim(f"{label}: peftc bf16 forced to the {path} widening path ({side}) takes less time "
                                f"than peftc float32 (s)", t[side], t["peftc_fp32"], expected="less"))
    return {"verdicts": verdicts(claims)}


# ---- report ----------------------------------------------------------------------------------------------------------
def render(p: dict) -> str:
    def f(v: Any, fmt: str = ".2f") -> str:
        return "null" if v is None else format(v, fmt)

    real, synth = p["real_batches"], p["synthetic_rows"]
    md = [f"# MiniLM LoRA step with a bf16 frozen base: peftc vs torch {p['environment'].get('torch')} (float32 "
          f"and bf16 autocast)", "",
          f"CPU: {p['cpu']}. bf16 path: {p['bf16_path']} (the CPU runs {', '.join(p['bf16_cpu_paths'])}). "
          f"{p['threads']} threads each side; medians of {p['repeats']} alternated repeats; ratios are torch time / "
          f"peftc time.{' QUICK RUN (tiny shapes): not a measurement.' if p['quick'] else ''}", "",
          f"Command: `{p['command']}`", "",
          "| workload | mode | peftc / torch fp32 | peftc / torch bf16 | peftc fp32 / forced widening path |",
          "|---|---|---|---|---|"]

    def fallbacks(r: dict) -> str:
        return ", ".join(f"{path} {f(v)}" for path, v in r["fallback_over_fp32"].items()) or "(none)"

    for label, rows in (("(a) real batches", p["real_rows"]),
                        (f"(b) {p['synthetic_shape'][0]} x {p['synthetic_shape'][1]}", synth)):
        for mode in ("dropout_on", "dropout_off"):
            r = rows[mode]
            md.append(f"| {label} | {mode} | {f(r['peftc_over_torch_fp32'])} | {f(r['peftc_over_torch_bf16'])} | "
                      f"{fallbacks(r)} |")
    peak = p["bf16_peak"]
    md += ["", f"- real batches, dropout on: non-GEMM share of the peftc bf16 step {f(real['non_gemm_share'])} "
               f"(outside the frozen bf16 products, the LoRA kernels and the head)",
           f"- frozen bf16 GEMMs: {f(p['frozen_gemm_gflops'], '.1f')} GFLOP/s; vdpbf16ps peak "
           f"{f(peak['gflops'], '.1f')} GFLOP/s{'' if peak['gflops'] else ' (' + peak['why'] + ')'}; fraction "
           f"{f(p['gemm_fraction_of_bf16_peak'])}",
           f"- peak RSS peftc bf16 / torch bf16 autocast: {f(p['rss_ratio_vs_torch_bf16'])} "
           f"({f(p['rss']['peftc-bf16']['peak_rss_mb'], '.0f')} / {f(p['rss']['torch-bf16']['peak_rss_mb'], '.0f')} MB)",
           f"- main job (make demo) LoRA test accuracy: float32 {f(p['demo_acc_fp32'], '.4f')}, bf16 base "
           f"{f(p['demo_acc_bf16'], '.4f')}{'' if p['demo_acc_bf16'] is not None else ' (' + p['demo_note'] + ')'}",
           "", f"Targets: {json.dumps(TARGET)}", ""]
    if p.get("verdicts"):
        from peftc.evaluation import verdicts_markdown

        md += ["## Verdicts (paired t over the alternated repeats, Holm)", "", verdicts_markdown(p["verdicts"])]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.render:
        payload = common.read_results(NAME)
        common.write_results(NAME, payload, render(payload))
        return payload
    common.configure_threads(args.threads)
    if args.rss_child:
        rss_child(args)
        return None
    import numpy as np
    import torch

    from peftc import bf16

    common.configure_torch_threads(torch, args.threads)
    env = common.environment(torch)
    paths = bf16.cpu_paths()
    fallbacks = [p for p in WIDENING if p in paths]
    steps = 1 if args.quick else args.steps
    warmup = 1 if args.quick else args.warmup
    real = (real_batches(np, steps, QUICK_REAL_BATCH) if args.quick else real_batches(np, max(steps, 50)))
    shape = QUICK_SYNTH if args.quick else SYNTH
    synth = [synthetic_batch(np, *shape)]
    print(f"CPU {env['cpu']}; bf16 path {bf16.selected_path()} (runs {paths}); {args.threads} threads", flush=True)
    selected = bf16.selected_path()
    real_rows = workload_rows(np, torch, real, steps, args.repeats, warmup, fallbacks, selected)
    synth_rows = workload_rows(np, torch, synth, 1 if args.quick else 3, args.repeats, warmup, fallbacks, selected)
    profile = step_profile(real, steps)
    synth_profile = step_profile(synth, 1 if args.quick else 3)
    peak = bf16_peak(args.threads, args.repeats, args.quick)
    rss = rss_row(args)
    acc32, acc16 = demo_accuracy(args.demo_fp32), demo_accuracy(args.demo_bf16)
    frozen = synth_profile["frozen_gemm_gflops"]
    payload = {
        "cpu": env["cpu"], "quick": args.quick, "threads": args.threads, "repeats": args.repeats,
        "command": "python benchmarks/bench_bf16_step.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "bf16_path": selected, "bf16_cpu_paths": paths, "fallback_paths": fallbacks,
        "synthetic_shape": list(shape), "real_steps_per_repeat": steps,
        "peftc_over_torch_fp32": {m: synth_rows[m]["peftc_over_torch_fp32"] for m in synth_rows},
        "peftc_over_torch_bf16": {m: synth_rows[m]["peftc_over_torch_bf16"] for m in synth_rows},
        "real_batches": {"peftc_over_torch_fp32": real_rows["dropout_on"]["peftc_over_torch_fp32"],
                         "peftc_over_torch_bf16": real_rows["dropout_on"]["peftc_over_torch_bf16"],
                         "non_gemm_share": profile["non_gemm_share"]},
        "fallback_over_fp32": {path: {workload: {m: rows[m]["fallback_over_fp32"][path] for m in rows}
                                      for workload, rows in (("real_batches", real_rows), ("synthetic", synth_rows))}
                               for path in fallbacks},
        "gemm_fraction_of_bf16_peak": frozen / peak["gflops"] if peak["gflops"] and frozen else None,
        "frozen_gemm_gflops": frozen, "bf16_peak": peak,
        "rss_ratio_vs_torch_bf16": rss["ratio"], "rss": rss,
        "demo_acc_fp32": acc32, "demo_acc_bf16": acc16,
        "demo_note": "pending: run `python -m peftc.demo --out D1` and `python -m peftc.demo --dtype bfloat16 --out "
                     "D2`, then this script with --demo-fp32 D1 --demo-bf16 D2",
        "real_rows": real_rows, "synthetic_rows": synth_rows,
        "step_profile": {"real_batches": profile, "synthetic": synth_profile},
        "environment": env, "load_average_at_end": os.getloadavg(),
    }
    payload.update(speed_verdicts(synth_rows, real_rows, shape))
    if args.quick:
        folder = Path(tempfile.mkdtemp(prefix="bench_bf16_quick_"))
        (folder / f"{NAME}.json").write_text(common.results_json(payload) + "\n")
        (folder / f"{NAME}.md").write_text(render(payload))
        print(f"quick run (not a measurement): wrote {folder}/{NAME}.json and .md")
    else:
        common.write_results(NAME, payload, render(payload))
    print(render(payload))
    return payload


if __name__ == "__main__":
    main()
