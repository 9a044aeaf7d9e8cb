"""Where one peftc LoRA training step of bench_train_step.py spends its time, per kernel, in CPU seconds.

The step (MiniLM, batch 32 x 128, LoRA r=8 on query and value, AdamW) runs under cProfile with the
process CPU clock as its timer, so other processes on a loaded machine inflate the numbers less than
they would wall-clock times. Each peftc._C function is one row (its own time, per step); the rest of
the step (Python, NumPy allocation and adds, optimizer) is summed into "other". The GEMM floor is the
step's GEMM FLOPs (bench_train_step.gemm_flops) at the speed of a 2048^3 sgemm measured here.
Optionally torch + PEFT is timed the same way (CPU time per step, same thread count).

Run at one thread for a breakdown that does not depend on thread scheduling:
    OPENBLAS_NUM_THREADS=1 python benchmarks/profile_train_step.py [--dropout 0.1] [--steps 3] [--torch]
Nothing is written to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # peftc from this checkout
import bench_train_step as bench  # noqa: E402
import common  # noqa: E402

# kernels whose time is almost all GEMM (the attention core is its per-head GEMMs plus softmax)
GEMM_KERNELS = {"linear_forward", "linear_backward", "lora_forward", "lora_backward"}


def cpu_times(step, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        t0 = time.process_time()
        step()
        out.append(time.process_time() - t0)
    return out


def kernel_table(step, steps: int) -> tuple[dict[str, float], float]:
    """{_C function: CPU s per step} and the whole step's CPU s per step, from one profiled run."""
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    for _ in range(steps):
        step()
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    rows: dict[str, float] = {}
    total = 0.0
    for (_, _, name), (_, _, tottime, _, _) in stats.items():
        total += tottime
        kernel = name[len("<built-in method peftc._C."):-1] if name.startswith("<built-in method peftc._C.") else ""
        if kernel and not kernel.endswith("_workspace_size"):  # size queries count as "other"
            rows[kernel] = tottime / steps
    return rows, total / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dropout", type=float, default=0.0, help="lora_dropout")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--torch", action="store_true", help="also time torch + PEFT (CPU s per step)")
    args = ap.parse_args()
    import numpy as np

    from bench_lora_layer import SquareSgemm
    from peftc import functional as F
    from peftc.models import BertConfig, minilm_path

    threads = int(os.environ.get("OPENBLAS_NUM_THREADS", "0") or 0) or None
    batch = bench.make_batch(np)
    step = bench.PeftcStep(bench.peftc_model(args.dropout).train(), batch)
    cpu_times(step, 2)  # warm-up: first-touch page faults, caches
    square = SquareSgemm(np, F)
    sgemm = square.flops / min(cpu_times(square, 3)) / 1e9
    flops = bench.gemm_flops(vars(BertConfig.from_json(os.path.join(minilm_path(), "config.json"))))["step"]
    plain = cpu_times(step, args.steps)
    rows, profiled = kernel_table(step, args.steps)
    step_s = min(plain)
    print(f"peftc step, lora_dropout={args.dropout}, OPENBLAS_NUM_THREADS={threads}: CPU s per step "
          f"min {step_s:.3f}, median {sorted(plain)[len(plain) // 2]:.3f} (profiled: {profiled:.3f})")
    print(f"GEMM floor {flops / 1e9:.1f} GFLOP at {sgemm:.0f} GFLOP/s (2048^3 sgemm) = {flops / sgemm / 1e9:.3f} s; "
          f"step at {100 * flops / sgemm / 1e9 / step_s:.0f}% of it")
    table = sorted(rows.items(), key=lambda kv: -kv[1])
    other = profiled - sum(rows.values())
    body = [[name, "GEMM" if name in GEMM_KERNELS else ("GEMM + softmax" if name.startswith("attention") else
                                                           "elementwise"), s, 100 * s / profiled] for name, s in table]
    body.append(["other (Python, NumPy, optimizer)", "", other, 100 * other / profiled])
    print(common.markdown_table(["kernel", "kind", "CPU s / step", "% of step"], body))
    if args.torch:
        import torch

        torch.set_num_threads(threads or torch.get_num_threads())
        theirs = bench.TorchStep(torch, bench.torch_model(torch, args.dropout).train(), batch)
        cpu_times(theirs, 2)
        t = cpu_times(theirs, args.steps)
        print(f"torch step: CPU s per step min {min(t):.3f}, median {sorted(t)[len(t) // 2]:.3f}; "
              f"torch/peftc {min(t) / step_s:.2f}")


if __name__ == "__main__":
    main()
