"""Batch-norm kernels on the seven BN layers of the EATA network (SmallResNet on Fashion-MNIST):
forward and backward in test-batch mode (batch statistics, affine gradients and dx), per layer.

Prints the best of ``--repeats`` calls in ms in three cache states: warm (the same arrays again and
again), L3 (4 MB read between calls, which leaves the arrays in a large last-level cache but not in
L1/L2) and DRAM (64 MB read between calls). In the network, where other layers run in between, a
layer's inputs are somewhere between the last two. Writes no results file; meant for before/after
comparisons of batchnorm.c, e.g. run from two checkouts in turn. Run: OPENBLAS_NUM_THREADS=1 python benchmarks/bench_bn_shapes.py [--batch 200]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from peftc import functional as F

# (channels, height = width, fused ReLU) of the network's BN layers, in order
LAYERS = [(12, 28, True), (24, 14, True), (24, 14, False), (24, 14, False), (48, 7, True), (48, 7, False),
          (48, 7, False)]


def time_layer(n: int, ch: int, hw: int, relu: bool, repeats: int, flush_mb: int) -> tuple[float, float]:
    """Best forward and backward times in ms of one layer."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((n, ch, hw, hw)) * 2.0 + 0.5).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    g, b = rng.standard_normal(ch).astype(np.float32), rng.standard_normal(ch).astype(np.float32)
    dx, dg, db = np.zeros_like(x), np.zeros(ch, np.float32), np.zeros(ch, np.float32)
    flush = np.ones(flush_mb << 18, np.float32)  # ones, not zeros: untouched zero pages all share one page
    forward = F.batchnorm2d_relu_forward if relu else F.batchnorm2d_forward
    fwd, bwd = [], []
    for _ in range(repeats):
        flush.sum()
        t0 = time.perf_counter()
        y, mean, rstd = forward(x, None, None, g, b, True, 0.1, 1e-5)
        fwd.append(time.perf_counter() - t0)
        flush.sum()
        t0 = time.perf_counter()
        if relu:
            F.batchnorm2d_relu_backward(dy, y, x, mean, rstd, g, True, dx=dx, dweight=dg, dbias=db)
        else:
            F.batchnorm2d_backward(dy, x, mean, rstd, g, True, dx=dx, dweight=dg, dbias=db)
        bwd.append(time.perf_counter() - t0)
    return 1e3 * min(fwd), 1e3 * min(bwd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    for state, flush_mb in (("warm", 0), ("L3", 4), ("DRAM", 64)):
        total_f = total_b = 0.0
        print(f"{state}: batch {args.batch}, best of {args.repeats} (ms)")
        for ch, hw, relu in LAYERS:
            f, b = time_layer(args.batch, ch, hw, relu, args.repeats, flush_mb)
            total_f, total_b = total_f + f, total_b + b
            print(f"  ({args.batch},{ch},{hw},{hw}) {'bn+relu' if relu else 'bn     '}  fwd {f:6.3f}  bwd {b:6.3f}")
        print(f"  all seven                 fwd {total_f:6.3f}  bwd {total_b:6.3f}  sum {total_f + total_b:6.3f}")


if __name__ == "__main__":
    main()
