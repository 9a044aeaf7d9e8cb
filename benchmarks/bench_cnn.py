"""CNN kernels against torch on Fashion-MNIST-sized batches, same process, same thread count.

Prints per-op median times (of >= 5 repeats after a warm-up) and the peftc/torch ratio, and writes
benchmarks/results/cnn.json plus a markdown table. Run: OPENBLAS_NUM_THREADS=2 python benchmarks/bench_cnn.py
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from peftc.io.atomic import write_bytes_atomic
from peftc import functional as F

THREADS = int(os.environ.get("OPENBLAS_NUM_THREADS", "2"))
REPEATS = 7


def median_ms(fn) -> float:
    fn()
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def conv_case(n, ic, oc, hw, k, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, ic, hw, hw)).astype(np.float32)
    w = (0.1 * rng.standard_normal((oc, ic, k, k))).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    y = F.conv2d_forward(x, w, b, 1, pad)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    work = np.empty(F.conv2d_workspace_size(x.shape, w.shape, 1, pad), np.float32)
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    flops = 2.0 * n * oc * ic * k * k * y.shape[2] * y.shape[3]

    def ours_fwd():
        F.conv2d_forward(x, w, b, 1, pad, out=y, work=work)

    def ours_bwd():
        F.conv2d_backward(dy, x, w, 1, pad, dx=dx, dweight=dw, dbias=db, work=work)

    xt, wt, bt = (torch.tensor(v, requires_grad=True) for v in (x, w, b))
    dyt = torch.tensor(dy)

    def torch_fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, wt, bt, 1, pad)

    def torch_bwd():
        yt = torch.nn.functional.conv2d(xt, wt, bt, 1, pad)
        torch.autograd.grad(yt, (xt, wt, bt), dyt)

    return flops, [("fwd", ours_fwd, torch_fwd, flops), ("fwd+bwd", lambda: (ours_fwd(), ours_bwd()), torch_bwd,
                                                             3 * flops)]


def sgemm_gflops() -> float:
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    return 2.0 * 2048**3 / median_ms(lambda: a @ a) / 1e6


def main() -> None:
    torch.set_num_threads(THREADS)
    rows = []
    for name, args in [("conv 1->32 3x3 p1", (200, 1, 32, 28, 3, 1)), ("conv 32->64 3x3 p1", (200, 32, 64, 28, 3, 1)),
                       ("conv 64->64 3x3 p1 @14", (200, 64, 64, 14, 3, 1)), ("conv 64->64 1x1 @14", (200, 64, 64, 14, 1, 0))]:
        _, cases = conv_case(*args)
        for what, ours, theirs, flops in cases:
            a, b = median_ms(ours), median_ms(theirs)
            rows.append(dict(op=f"{name} {what}", peftc_ms=a, torch_ms=b, ratio=a / b, peftc_gflops=flops / a / 1e6))
    x = np.random.default_rng(1).standard_normal((200, 64, 28, 28)).astype(np.float32)
    xt = torch.tensor(x)
    g, bb = np.ones(64, np.float32), np.zeros(64, np.float32)
    rm, rv = np.zeros(64, np.float32), np.ones(64, np.float32)
    others = [
        ("batchnorm2d train (200,64,28,28)", lambda: F.batchnorm2d_forward(x, rm, rv, g, bb, True),
         lambda: torch.nn.functional.batch_norm(xt, torch.tensor(rm), torch.tensor(rv), torch.tensor(g),
                                                torch.tensor(bb), True)),
        ("maxpool2d 2x2 (200,64,28,28)", lambda: F.maxpool2d_forward(x, 2),
         lambda: torch.nn.functional.max_pool2d(xt, 2, return_indices=True)),
        ("relu (200,64,28,28)", lambda: F.relu_forward(x), lambda: torch.relu(xt)),
    ]
    for name, ours, theirs in others:
        a, b = median_ms(ours), median_ms(theirs)
        rows.append(dict(op=name, peftc_ms=a, torch_ms=b, ratio=a / b, peftc_gflops=None))
    peak = sgemm_gflops()
    result = dict(threads=THREADS, openblas_coretype=os.environ.get("OPENBLAS_CORETYPE"), sgemm_2048_gflops=peak,
                  rows=rows)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    write_bytes_atomic(out / "cnn.json", json.dumps(result, indent=2).encode())
    lines = [f"threads={THREADS}, OPENBLAS_CORETYPE={result['openblas_coretype']}, sgemm 2048^3 {peak:.0f} GFLOP/s",
             "", "| op | peftc ms | torch ms | peftc/torch | peftc GFLOP/s |", "|---|---|---|---|---|"]
    for r in rows:
        gf = f"{r['peftc_gflops']:.0f}" if r["peftc_gflops"] else "-"
        lines.append(f"| {r['op']} | {r['peftc_ms']:.2f} | {r['torch_ms']:.2f} | {r['ratio']:.2f} | {gf} |")
    write_bytes_atomic(out / "cnn.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
