"""EVA initialisation, peftc vs Hugging Face PEFT: wall time and peak memory of get_eva_state_dict on
the same model (the test suite's EVA twin: BERT module names, MiniLM-like widths), the same batches
and the same thread count. Each side runs in its own subprocess so peak RSS is its own.

Writes benchmarks/results/eva.json and eva.md. Run from the repository root:
    OPENBLAS_NUM_THREADS=2 python benchmarks/bench_eva.py [--layers 6 --hidden 384 --inter 1536]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TARGETS = ["query", "key", "value", "intermediate.dense", "output.dense"]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_side(side: str, args: argparse.Namespace) -> dict:
    """Runs in the child: build the model and batches, warm up, time `repeats` full EVA runs."""
    import numpy as np

    from tests.eva_twins import EvaTwin, make_batches, make_torch_twin, make_weights
    threads = int(os.environ.get("OPENBLAS_NUM_THREADS", "2"))
    weights = make_weights(args.hidden, args.inter, args.layers)
    batches = make_batches(args.batches, args.batch_size, args.seq, args.hidden)
    if side == "peftc":
        from peftc.tuners import EvaConfig, LoraConfig, get_eva_state_dict
        model = EvaTwin(weights, args.layers)
        config = LoraConfig(r=args.r, target_modules=TARGETS, init_lora_weights="eva",
                            eva_config=EvaConfig(rho=args.rho))

        def once():
            return get_eva_state_dict(model, batches, config, forward_fn=lambda m, b: m(b["x"]),
                                      show_progress_bar=False)
    else:
        import peft
        import torch
        torch.set_num_threads(threads)
        model = make_torch_twin(torch, weights, args.layers)
        tb = [{"x": torch.from_numpy(b["x"]), "attention_mask": torch.from_numpy(b["attention_mask"]),
               "input_ids": torch.from_numpy(b["attention_mask"])} for b in batches]
        config = peft.LoraConfig(r=args.r, target_modules=TARGETS, init_lora_weights="eva",
                                 eva_config=peft.EvaConfig(rho=args.rho))

        def once():
            return peft.get_eva_state_dict(model, tb, config, forward_fn=lambda m, b: m(b["x"]),
                                           show_progress_bar=False)
    base_rss = _rss_mb()
    sd = once()  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sd = once()
        times.append(time.perf_counter() - t0)
    ranks = {k: int(v.shape[0]) for k, v in sd.items()}
    comps = {k: np.asarray(v).tolist() for k, v in sd.items()}
    return {"median_s": statistics.median(times), "times_s": times, "peak_rss_mb": _rss_mb(),
            "rss_after_setup_mb": base_rss, "ranks": ranks, "components": comps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--inter", type=int, default=1536)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--rho", type=float, default=2.0)
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--side", choices=["peftc", "peft"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args)))
        return
    import numpy as np
    env = dict(os.environ, OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "2"))
    results = {}
    for side in ("peftc", "peft"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--side", side], env=env, cwd=ROOT,
                             capture_output=True, text=True, check=True)
        results[side] = json.loads(out.stdout.strip().splitlines()[-1])
    ours, theirs = results["peftc"], results["peft"]
    cos_min = 1.0
    for name, a in ours["components"].items():
        b = np.asarray(theirs["components"][name])
        a = np.asarray(a)
        if a.shape == b.shape and a.size:
            cos_min = min(cos_min, float(np.abs((a * b).sum(axis=1)).min()))
    summary = {
        "setup": {k: v for k, v in vars(args).items() if k != "side"},
        "threads": env["OPENBLAS_NUM_THREADS"],
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "peftc_median_s": ours["median_s"], "peft_median_s": theirs["median_s"],
        "speedup": theirs["median_s"] / ours["median_s"],
        "peftc_peak_rss_mb": ours["peak_rss_mb"], "peft_peak_rss_mb": theirs["peak_rss_mb"],
        "peftc_rss_growth_mb": ours["peak_rss_mb"] - ours["rss_after_setup_mb"],
        "peft_rss_growth_mb": theirs["peak_rss_mb"] - theirs["rss_after_setup_mb"],
        "same_rank_pattern": ours["ranks"] == theirs["ranks"],
        "min_abs_cosine_of_kept_components": cos_min,
    }
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "eva.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    md = ["| side | median time (s) | peak RSS (MB) | RSS growth during EVA (MB) |", "|---|---|---|---|",
          f"| peftc | {ours['median_s']:.3f} | {ours['peak_rss_mb']:.0f} | {summary['peftc_rss_growth_mb']:.0f} |",
          f"| PEFT {__import__('importlib.metadata').metadata.version('peft')} | {theirs['median_s']:.3f} | "
          f"{theirs['peak_rss_mb']:.0f} | {summary['peft_rss_growth_mb']:.0f} |", "",
          f"speedup {summary['speedup']:.2f}x; same rank_pattern: {summary['same_rank_pattern']}; "
          f"min |cos| of kept components {cos_min:.4f}; threads {summary['threads']}; setup {summary['setup']}"]
    with open(os.path.join(ROOT, "benchmarks", "results", "eva.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
