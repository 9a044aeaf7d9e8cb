"""Convolution kernels on the seven convolutions of the EATA network (SmallResNet on Fashion-MNIST):
the forward and the input gradient (what test-time adaptation runs; the weights are frozen), per layer.

Prints the best of ``--repeats`` calls in ms of process CPU time (steadier than wall time on a shared
machine; at OPENBLAS_NUM_THREADS=1 it is the kernel's time), and each layer's largest error against
float64 over 8 images, relative to the sum of magnitudes it comes from (sum |x| |w|, or sum |dy| |w|):
the accuracy of the path the layer takes. Writes no results file; meant for before/after comparisons
of conv.c, winograd.c and small_gemm.c, e.g. run from two checkouts in turn.
Run: OPENBLAS_NUM_THREADS=1 python benchmarks/bench_conv_shapes.py [--batch 200] [--layers b0c1,b1c1]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from peftc import functional as F
from peftc import reference as R

# name: (input channels, output channels, input height = width, kernel, stride, padding)
LAYERS = {
    "stem": (1, 12, 28, 3, 1, 1),  # implicit forward, stride 1
    "b0c1": (12, 24, 28, 3, 2, 1),  # strided: implicit forward and input gradient
    "b0c2": (24, 24, 14, 3, 1, 1),  # Winograd
    "b0s": (12, 24, 28, 1, 2, 0),  # 1x1 stride 2: patch path
    "b1c1": (24, 48, 14, 3, 2, 1),
    "b1c2": (48, 48, 7, 3, 1, 1),
    "b1s": (24, 48, 14, 1, 2, 0),
}


def time_layer(n: int, ic: int, oc: int, hw: int, k: int, stride: int, pad: int, repeats: int
               ) -> tuple[float, float]:
    """Best forward and input-gradient CPU times in ms of one layer."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, ic, hw, hw), dtype=np.float32)
    w = rng.standard_normal((oc, ic, k, k), dtype=np.float32)
    work = np.empty(F.conv2d_workspace_size(x.shape, w.shape, stride, pad), np.float32)
    y = F.conv2d_forward(x, w, None, stride, pad, work=work)
    dy, dx = np.ones_like(y), F.zeros(x.shape)
    fwd = bwd = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        F.conv2d_forward(x, w, None, stride, pad, work=work)
        t1 = time.process_time()
        F.conv2d_backward(dy, None, w, stride, pad, dx=dx, work=work)
        t2 = time.process_time()
        fwd, bwd = min(fwd, t1 - t0), min(bwd, t2 - t1)
    return fwd * 1e3, bwd * 1e3


def relative_errors(ic: int, oc: int, hw: int, k: int, stride: int, pad: int, n: int = 8) -> tuple[float, float]:
    """Largest |error| against float64 over n images, divided by the sum of magnitudes of the same
    entry: forward (sum |x| |w|) and input gradient (sum |dy| |w|)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, ic, hw, hw), dtype=np.float32)
    w = rng.standard_normal((oc, ic, k, k), dtype=np.float32)
    x64, w64, aw = x.astype(np.float64), w.astype(np.float64), np.abs(w.astype(np.float64))
    y = F.conv2d_forward(x, w, None, stride, pad)
    fwd = np.abs(y - R.conv2d_forward(x64, w64, None, stride, pad)) / R.conv2d_forward(np.abs(x64), aw, None, stride,
                                                                                       pad)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx, ref, mag = np.zeros_like(x), np.zeros(x.shape), np.zeros(x.shape)
    F.conv2d_backward(dy, None, w, stride, pad, dx=dx)
    R.conv2d_backward(dy.astype(np.float64), None, w64, stride, pad, dx=ref)
    R.conv2d_backward(np.abs(dy.astype(np.float64)), None, aw, stride, pad, dx=mag)
    return float(fwd.max()), float((np.abs(dx - ref) / np.maximum(mag, 1e-30)).max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--layers", default=",".join(LAYERS))
    args = ap.parse_args()
    print(f"batch {args.batch}, best of {args.repeats}, process CPU ms")
    for name in args.layers.split(","):
        fwd, bwd = time_layer(args.batch, *LAYERS[name], args.repeats)
        err_fwd, err_bwd = relative_errors(*LAYERS[name])
        print(f"{name:5s} {LAYERS[name]}: forward {fwd:.3f}, input gradient {bwd:.3f}; error / magnitudes "
              f"{err_fwd:.1e}, {err_bwd:.1e}")


if __name__ == "__main__":
    main()
