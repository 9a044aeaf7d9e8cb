"""EVA initialisation on all-MiniLM-L6-v2, peftc vs Hugging Face PEFT: wall time and peak memory of
get_eva_state_dict on the real checkpoint with real WordNet gloss batches.

Both sides get the same batches (``benchmarks/wordnet_batches.py``: seeded training glosses, padding
columns trimmed per batch, padding tokens removed from the SVD by the attention mask), the same
LoRA config (r, rho, tau, targets) and the same thread count (OpenBLAS, OpenMP and torch intra-op;
by default one run at 1 thread and one at 2). peftc runs its BertModel with ``skip_padding=True`` (the
encoder computes the real tokens only; ``--padded`` turns this off); PEFT runs transformers' BertModel
(no pooler) under ``torch.no_grad()`` with its default input preparation.
Targets: ``qv`` (default; query and value, as the main job trains, one shared SVD per block) or
``all`` (query, key, value, attention.output.dense, intermediate.dense, output.dense: every linear
layer of the encoder, inputs of width 384 and 1536).

Each side runs in its own subprocess: model and batches are loaded, one forward pass warms the
libraries up, then ``--repeats`` full EVA runs are timed, in wall time and in the process's CPU time
(all threads; on a loaded machine the CPU time at 1 thread is the steadier measure). Peak memory is
the child's peak resident set (VmHWM from /proc/self/status, ru_maxrss elsewhere) and its growth
during the EVA runs. EVA cycles over the batches until every layer has converged, so the number of
forward passes (reported) can differ between the sides: peftc's hashing pass is also its first PCA
step (one pass fewer for the same batches), and PEFT's randomised SVD can move a component's cosine
across tau a batch earlier or later than the exact one; a layer whose trailing components have tiny
eigengaps then stops at a different batch, which changes the pass count and those components (the
abs_cosine_per_layer entries below 0.99). On the default batches PEFT with an exact SVD stops
at the same batch as peftc and agrees with it to |cos| >= 0.99 on every kept component
(``--peft-exact-svd``). The load
average before and after is recorded: on a shared machine the numbers move with it.

Run from the repository root (1-4 minutes on 2 loaded cores; PEFT at 2 threads is the slow part):
    python benchmarks/bench_eva.py [--threads 1 2] [--targets qv|all] [--batches 32] [--batch-size 16] [--padded]
                                   [--out eva]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NAME = "eva"
TARGETS = {"qv": ["query", "value"],
           "all": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="one run of both sides per count")
    ap.add_argument("--targets", choices=sorted(TARGETS), default="qv")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--rho", type=float, default=2.0)
    ap.add_argument("--tau", type=float, default=0.99)
    ap.add_argument("--batches", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--padded", action="store_true", help="peftc forwards the padded batch (no skip_padding)")
    ap.add_argument("--peft-exact-svd", action="store_true",
                    help="diagnostic: PEFT's IncrementalPCA with an exact SVD instead of its seeded svd_lowrank")
    ap.add_argument("--out", default=NAME, help="results name: benchmarks/results/<out>.json and .md")
    ap.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    ap.add_argument("--side", choices=["peftc", "peft"], help=argparse.SUPPRESS)
    return ap.parse_args()


def _rss_mb() -> float:
    """Peak resident set of this process in MB: VmHWM where /proc exists, else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _counting(forward):
    """Wrap a forward_fn so that the number of forward passes can be read afterwards."""
    calls = [0]

    def fn(model, batch):
        calls[0] += 1
        return forward(model, batch)
    return fn, calls


def run_side(args: argparse.Namespace) -> dict:
    """In the child: load, warm up with one forward, time ``repeats`` EVA runs."""
    common.configure_threads(args.threads)
    import numpy as np

    from peftc.models import minilm_path
    from wordnet_batches import gloss_batches
    batches = gloss_batches(args.batches, args.batch_size, seed=args.seed)
    folder = minilm_path()
    targets = TARGETS[args.targets]
    if args.side == "peftc":
        from peftc.models import BertModel
        from peftc.tuners import EvaConfig, LoraConfig, get_eva_state_dict
        model = BertModel.from_pretrained(folder)
        config = LoraConfig(r=args.r, target_modules=targets, init_lora_weights="eva",
                            eva_config=EvaConfig(rho=args.rho, tau=args.tau))
        skip = not args.padded
        forward, calls = _counting(lambda m, b: m(b["input_ids"], b["attention_mask"], skip_padding=skip))
        forward(model, batches[0])

        def once():
            return get_eva_state_dict(model, batches, config, forward_fn=forward, show_progress_bar=False)
        torch = None
    else:
        import peft
        import torch
        import transformers
        common.configure_torch_threads(torch, args.threads)
        if args.peft_exact_svd:
            import peft.tuners.lora.eva as peft_eva
            peft_eva.IncrementalPCA._svd_fn_lowrank = peft_eva.IncrementalPCA._svd_fn_full
        model = transformers.BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
        batches = [{k: torch.from_numpy(v) for k, v in b.items()} for b in batches]
        config = peft.LoraConfig(r=args.r, target_modules=targets, init_lora_weights="eva",
                                 eva_config=peft.EvaConfig(rho=args.rho, tau=args.tau))
        forward, calls = _counting(lambda m, b: m(**b))
        with torch.no_grad():
            forward(model, batches[0])

        def once():
            with torch.no_grad():
                return peft.get_eva_state_dict(model, batches, config, forward_fn=forward, show_progress_bar=False)
    rss_setup = _rss_mb()
    times, cpu_times, passes = [], [], []
    sd = {}
    for _ in range(args.repeats):
        calls[0] = 0
        t0, c0 = time.perf_counter(), time.process_time()
        sd = once()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        passes.append(calls[0])
    sd = {k: np.asarray(v, dtype=np.float32) for k, v in sd.items()}
    return {"times_s": times, "median_s": float(np.median(times)), "cpu_times_s": cpu_times,
            "min_cpu_s": float(np.min(cpu_times)), "forward_passes": passes,
            "peak_rss_mb": _rss_mb(), "rss_after_setup_mb": rss_setup,
            "ranks": {k: int(v.shape[0]) for k, v in sd.items()}, "components": {k: v.tolist() for k, v in sd.items()},
            "tokens_per_batch": [int(np.asarray(b["attention_mask"]).sum()) for b in batches],
            "environment": common.environment(torch)}


def compare(ours: dict, theirs: dict) -> dict:
    """Rank agreement and the |cosine| of the components both sides kept for each layer."""
    import numpy as np
    cos = {}
    for name, a in ours["components"].items():
        a, b = np.asarray(a, dtype=np.float64), np.asarray(theirs["components"].get(name, []), dtype=np.float64)
        n = min(a.shape[0], b.shape[0]) if b.ndim == 2 else 0
        if n:
            cos[name] = np.abs(np.sum(a[:n] * b[:n], axis=1)).tolist()
    flat = [c for v in cos.values() for c in v]
    return {"same_rank_pattern": ours["ranks"] == theirs["ranks"],
            "layers_with_different_rank": sorted(k for k in ours["ranks"] if ours["ranks"][k] != theirs["ranks"].get(k)),
            "min_abs_cosine": min(flat) if flat else None,
            "fraction_abs_cosine_ge_0.99": float(np.mean(np.asarray(flat) >= 0.99)) if flat else None,
            "abs_cosine_per_layer": cos}


def _child_argv(args: argparse.Namespace, threads: int, side: str) -> list[str]:
    return [sys.executable, __file__, "--threads", str(threads), "--targets", args.targets, "--r", str(args.r),
            "--rho", str(args.rho), "--tau", str(args.tau), "--batches", str(args.batches), "--batch-size",
            str(args.batch_size), "--seed", str(args.seed), "--repeats", str(args.repeats), "--side", side,
            *(["--padded"] if args.padded else []), *(["--peft-exact-svd"] if args.peft_exact_svd else [])]


def run_threads(args: argparse.Namespace, threads: int) -> dict:
    """Both sides at one thread count, one subprocess each; timings, memory and agreement."""
    load_before = os.getloadavg()
    results = {}
    for side in ("peftc", "peft"):
        out = subprocess.run(_child_argv(args, threads, side), cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"the {side} side ({threads} threads) failed:\n{out.stderr[-3000:]}")
        results[side] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, theirs = results["peftc"], results["peft"]
    return {
        "threads": threads, "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "speedup": theirs["median_s"] / ours["median_s"],
        "cpu_speedup": theirs["min_cpu_s"] / ours["min_cpu_s"],
        **{f"{side}_{key}": results[side][key] for side in ("peftc", "peft")
           for key in ("median_s", "times_s", "min_cpu_s", "cpu_times_s", "forward_passes", "peak_rss_mb",
                       "rss_after_setup_mb")},
        **{f"{side}_seconds_per_forward_pass": results[side]["median_s"] / results[side]["forward_passes"][0]
           for side in ("peftc", "peft")},
        **compare(ours, theirs),
        "ranks": {"peftc": ours["ranks"], "peft": theirs["ranks"]},
        "tokens_per_batch": ours["tokens_per_batch"],
        "environment": ours["environment"],
    }


def markdown(summary: dict) -> str:
    a = summary["setup"]
    runs = summary["runs"]
    tokens = runs[0]["tokens_per_batch"]
    rows = []
    for r in runs:
        for side, label in (("peftc", "peftc"), ("peft", f"PEFT {summary['versions']['peft']}")):
            rows.append([r["threads"], label, f"{r[f'{side}_median_s']:.2f}", f"{r[f'{side}_min_cpu_s']:.2f}",
                         r[f"{side}_forward_passes"][0],
                         f"{r[f'{side}_seconds_per_forward_pass']:.2f}", f"{r[f'{side}_peak_rss_mb']:.0f}",
                         f"{r[f'{side}_peak_rss_mb'] - r[f'{side}_rss_after_setup_mb']:.0f}",
                         f"{r['speedup']:.2f}x / {r['cpu_speedup']:.2f}x" if side == "peft" else "",
                         f"{tuple(round(x, 1) for x in r['load_average_before'])}"])
    first = runs[0]
    return (f"EVA init (get_eva_state_dict) on all-MiniLM-L6-v2, {a['batches']} WordNet gloss batches of "
            f"{a['batch_size']} (mean {sum(tokens) / len(tokens):.0f} real tokens), targets "
            f"{', '.join(summary['targets'])}, r={a['r']}, rho={a['rho']}, tau={a['tau']}, {a['repeats']} timed "
            f"run(s) per side, each side in its own process; peftc "
            f"{'on the padded batches' if a.get('padded') else 'with skip_padding (real tokens only)'}; "
            f"{'PEFT patched to an exact SVD (diagnostic); ' if a.get('peft_exact_svd') else ''}"
            f"EVA seconds is the median wall time, CPU seconds the minimum process CPU time.\n\n"
            + common.markdown_table(["threads", "side", "EVA seconds", "EVA CPU seconds", "forward passes", "s / pass",
                                     "peak RSS (MB)", "RSS growth during EVA (MB)", "PEFT / peftc (wall / CPU)",
                                     "load avg before (1, 5, 15 min)"],
                                    rows)
            + f"\nSame rank_pattern: {first['same_rank_pattern']}; min |cos| of components both kept "
              f"{first['min_abs_cosine']:.4f} ({100 * first['fraction_abs_cosine_ge_0.99']:.0f}% >= 0.99; "
              f"abs_cosine_per_layer in the JSON shows where they differ). {os.cpu_count()} logical CPUs.\n"
              f"Command: `{summary['command']}`\n")


def main() -> None:
    args = parse_args()
    if args.side:
        args.threads = args.threads[0]
        print(json.dumps(run_side(args)))
        return
    import importlib.metadata as md
    summary = {
        "command": "python benchmarks/bench_eva.py " + " ".join(sys.argv[1:]),
        "setup": {k: v for k, v in vars(args).items() if k not in ("side", "no_write", "out", "threads")},
        "targets": TARGETS[args.targets],
        "versions": {p: md.version(p) for p in ("peft", "transformers", "torch")},
        "runs": [run_threads(args, t) for t in args.threads],
    }
    text = markdown(summary)
    if not args.no_write:
        common.write_results(args.out, summary, text)
    print(text)


if __name__ == "__main__":
    main()
