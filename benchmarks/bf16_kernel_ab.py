"""Development A/B of the bf16 frozen products against peftc's float32 products, kernel by kernel.

For each product a MiniLM LoRA training step runs on a bf16 base (forward y = x W^T and input gradient
dx += dy W; (in, out) features (384, 384), (384, 1536), (1536, 384); rows 416, about a batch of 32 real
WordNet glosses, and 4096 = 32 x 128), and each thread count, the bf16 kernel on one path and the float32
product (peftc.functional.linear_forward / linear_backward, OpenBLAS sgemm) run in alternation in this
process, each call timed by itself (one thread: its CPU time; more: wall time); the ratio is the median float32 time / the median bf16 time (above 1:
bf16 faster). This guides kernel work on a busy machine, where absolute times mean little: it writes no
results file, and its numbers are not benchmark results (bench_bf16_step.py is the benchmark).

Run:
    python benchmarks/bf16_kernel_ab.py [--path avx2] [--threads 1 2] [--repeats 41] [--rows 416 4096]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # peftc from this checkout
import common  # noqa: E402

FEATURES = ((384, 384), (384, 1536), (1536, 384))  # (in, out) of MiniLM's projections and feed-forward


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", default=None, help="bf16 path (default: peftc.bf16.selected_path())")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rows", type=int, nargs="+", default=[416, 4096])
    ap.add_argument("--repeats", type=int, default=41)
    ap.add_argument("--direction", choices=("forward", "backward", "both"), default="both")
    return ap.parse_args()


def ab_ratio(fp32: Callable[[], object], bf: Callable[[], object], repeats: int,
             clock: Callable[[], float]) -> tuple[float, float, float]:
    """(median float32 s, median bf16 s, their ratio), the two calls alternated ``repeats`` times after warm-up,
    each timed by ``clock``."""
    for _ in range(3):
        fp32()
        bf()
    t32, t16 = [], []
    for _ in range(repeats):
        for fn, times in ((fp32, t32), (bf, t16)):
            t0 = clock()
            fn()
            times.append(clock() - t0)
    m32, m16 = statistics.median(t32), statistics.median(t16)
    return m32, m16, m32 / m16


def main() -> None:
    args = parse_args()
    common.configure_threads(max(args.threads))
    import numpy as np

    import peftc
    from peftc import bf16
    from peftc import functional as F

    path = args.path or bf16.selected_path()
    rng = np.random.default_rng(0)
    print(f"bf16 path {path}; float32 time / bf16 time (above 1: bf16 faster); development numbers, not results")
    print(f"{'threads':>7} {'dir':>8} {'rows':>5} {'in':>5} {'out':>5} {'fp32 ms':>8} {'bf16 ms':>8} {'ratio':>6}")
    directions = ("forward", "backward") if args.direction == "both" else (args.direction,)
    for threads in args.threads:
        peftc.set_num_threads(threads)
        # one thread: the calling thread's CPU time, which a busy machine's preemptions do not inflate;
        # more: wall time (the other threads' CPU time would count their idle spinning)
        clock = time.thread_time if threads == 1 else time.perf_counter
        for direction in directions:
            for rows in args.rows:
                for ic, oc in FEATURES:
                    w = (rng.standard_normal((oc, ic), dtype=np.float32) * 0.05).astype(np.float32)
                    pw = bf16.PackedWeight(w)
                    if direction == "forward":
                        x = rng.standard_normal((rows, ic), dtype=np.float32)
                        y32, y16 = np.empty((rows, oc), np.float32), np.empty((rows, oc), np.float32)
                        m32, m16, r = ab_ratio(lambda: F.linear_forward(x, w, None, out=y32),
                                               lambda: bf16.linear_forward(x, pw, None, out=y16, path=path),
                                               args.repeats, clock)
                    else:
                        dy = rng.standard_normal((rows, oc), dtype=np.float32)
                        dx32, dx16 = np.zeros((rows, ic), np.float32), np.zeros((rows, ic), np.float32)
                        m32, m16, r = ab_ratio(lambda: F.linear_backward(dy, None, w, dx=dx32),
                                               lambda: bf16.linear_backward(dy, pw, dx=dx16, path=path),
                                               args.repeats, clock)
                    print(f"{threads:>7} {direction:>8} {rows:>5} {ic:>5} {oc:>5} {1e3 * m32:8.3f} {1e3 * m16:8.3f} "
                          f"{r:6.2f}", flush=True)


if __name__ == "__main__":
    main()
