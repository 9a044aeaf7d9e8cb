"""LoRA linear layer, one training step (forward + backward), peftc against PyTorch + PEFT's math.

Per configuration (N tokens, d = in = out features, rank r, dropout p) both sides compute
    y = x W^T + b + s * lora_B(lora_A(dropout_p(x))),   then dx, dA, dB from a fixed dy,
with W, b frozen. peftc calls lora_forward / lora_backward into preallocated buffers, zeroing the
gradient buffers each step as a training loop must; torch runs a frozen nn.Linear plus two
bias-free nn.Linear adapters and autograd, with grads set to None each step. Same process, same
thread count, warm-up, median of the repeats, the two sides timed in alternation.

FLOPs counted: frozen GEMMs 4 N d^2 (forward x W^T and backward dy W); adapter GEMMs
6 N r (IC + OC). The frozen GEMMs are also timed alone (peftc's linear forward + dx backward) to
give the fraction of the machine's sgemm speed that they reach; that speed (2048^3 through
peftc.linear_forward) is timed in alternation with each configuration, so both see the same load.

Run:  python benchmarks/bench_lora_layer.py [--threads 2] [--repeats 9] [--autodetect-core]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "bench_lora_layer"
TOKENS = 4096
DIMS = (384, 768, 1024)
RANKS = (8, 16, 64)
DROPOUTS = (0.0, 0.1)
LORA_ALPHA = 32.0
TARGET = {"d": 768, "r": 16, "ratio": 1.3, "frozen_fraction": 0.70}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="only d=768, r=16 (no results file)")
    ap.add_argument("--autodetect-core", action="store_true",
                    help="also run, in a child process, with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the stored .json")
    ap.add_argument("--child-json", help=argparse.SUPPRESS)
    return ap.parse_args()


def flops(n: int, d: int, r: int) -> tuple[float, float]:
    """(frozen GEMM FLOPs, whole-step FLOPs) of one forward + backward."""
    frozen = 4.0 * n * d * d
    return frozen, frozen + 6.0 * n * r * (d + d)


class PeftcStep:
    """One LoRA training step through peftc.functional, every buffer allocated once."""

    def __init__(self, np: Any, F: Any, x, w, b, a, bm, dy, scaling: float, p: float) -> None:
        self.np, self.F = np, F
        self.x, self.w, self.b, self.a, self.bm, self.dy = x, w, b, a, bm, dy
        self.s, self.p = scaling, p
        n, d, r = x.shape[0], w.shape[0], a.shape[0]
        self.y = np.empty((n, d), np.float32)
        self.xd = np.empty_like(x) if p > 0 else None
        self.u = np.empty((n, r), np.float32)
        self.dx, self.da, self.dbm = np.empty_like(x), np.empty_like(a), np.empty_like(bm)
        self.work = np.empty(F.lora_backward_workspace_size(n, x.shape[1], r, p), np.float32)
        self.offset = 0

    def __call__(self) -> None:
        F = self.F
        self.offset += self.x.size  # a fresh dropout mask each step, as training would draw
        self.dx.fill(0.0)
        self.da.fill(0.0)
        self.dbm.fill(0.0)
        F.lora_forward(self.x, self.w, self.b, self.a, self.bm, None, self.s, self.p, 7, self.offset,
                       out=self.y, xd=self.xd, u=self.u)
        F.lora_backward(self.dy, self.xd if self.p > 0 else self.x, self.u, self.w, self.a, self.bm, self.s,
                        self.p, 7, self.offset, dx=self.dx, dlora_A=self.da, dlora_B=self.dbm, work=self.work)


class FrozenGemms:
    """Only the two frozen GEMMs of the step, as peftc runs them (x W^T and dx += dy W)."""

    def __init__(self, np: Any, F: Any, x, w, dy) -> None:
        self.F, self.x, self.w, self.dy = F, x, w, dy
        self.y = np.empty((x.shape[0], w.shape[0]), np.float32)
        self.dx = np.zeros_like(x)

    def __call__(self) -> None:
        self.F.linear_forward(self.x, self.w, None, out=self.y)
        self.F.linear_backward(self.dy, None, self.w, dx=self.dx)


def torch_layer(torch: Any, w, b, a, bm, p: float):
    """PEFT's LoRA Linear, spelled out: frozen base, dropout, lora_A, lora_B, scaling."""
    nn = torch.nn
    d_out, d_in = w.shape
    base = nn.Linear(d_in, d_out, bias=True)
    lora_a = nn.Linear(d_in, a.shape[0], bias=False)
    lora_b = nn.Linear(a.shape[0], d_out, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.from_numpy(w))
        base.bias.copy_(torch.from_numpy(b))
        lora_a.weight.copy_(torch.from_numpy(a))
        lora_b.weight.copy_(torch.from_numpy(bm))
    base.weight.requires_grad_(False)
    base.bias.requires_grad_(False)
    drop = nn.Dropout(p)  # at p = 0 it returns its input object, exactly like PEFT's nn.Identity
    for m in (base, lora_a, lora_b, drop):
        m.train()
    return base, lora_a, lora_b, drop


class TorchStep:
    """One LoRA training step in torch: forward as PEFT writes it, autograd backward."""

    def __init__(self, torch: Any, x, w, b, a, bm, dy, scaling: float, p: float) -> None:
        self.torch = torch
        self.base, self.lora_a, self.lora_b, self.drop = torch_layer(torch, w, b, a, bm, p)
        self.x = torch.from_numpy(x.copy()).requires_grad_(True)
        self.dy = torch.from_numpy(dy.copy())
        self.s = scaling

    def forward(self):
        x = self.x
        return self.base(x) + self.lora_b(self.lora_a(self.drop(x))) * self.s

    def __call__(self) -> None:
        self.x.grad = None
        self.lora_a.weight.grad = None
        self.lora_b.weight.grad = None
        self.forward().backward(self.dy)


def check_correctness(np: Any, torch: Any, F: Any, n: int, d: int, r: int) -> dict[str, float]:
    """peftc against torch (dropout 0) and a float64 NumPy evaluation; max relative errors."""
    rng = np.random.default_rng(1)
    x, w, b, a, bm, dy = make_inputs(np, rng, n, d, r)
    s = LORA_ALPHA / r
    pstep = PeftcStep(np, F, x, w, b, a, bm, dy, s, 0.0)
    pstep()
    tstep = TorchStep(torch, x, w, b, a, bm, dy, s, 0.0)
    y_t = tstep.forward()
    y_t.backward(tstep.dy)
    x64, w64, a64, bm64, dy64 = (v.astype(np.float64) for v in (x, w, a, bm, dy))
    ref = {
        "y": x64 @ w64.T + b + s * (x64 @ a64.T) @ bm64.T,
        "dx": dy64 @ w64 + s * (dy64 @ bm64) @ a64,
        "dA": s * (dy64 @ bm64).T @ x64,
        "dB": s * dy64.T @ (x64 @ a64.T),
    }
    mine = {"y": pstep.y, "dx": pstep.dx, "dA": pstep.da, "dB": pstep.dbm}
    theirs = {"y": y_t.detach().numpy(), "dx": tstep.x.grad.numpy(), "dA": tstep.lora_a.weight.grad.numpy(),
              "dB": tstep.lora_b.weight.grad.numpy()}

    def rel(u, v):
        return float(np.abs(u - v).max() / np.abs(v).max())

    errs = {f"peftc_vs_f64_{k}": rel(mine[k], ref[k]) for k in ref}
    errs.update({f"torch_vs_f64_{k}": rel(theirs[k], ref[k]) for k in ref})
    worst_torch = max(v for k, v in errs.items() if k.startswith("torch"))
    worst_peftc = max(v for k, v in errs.items() if k.startswith("peftc"))
    if worst_peftc > max(1e-4, 10 * worst_torch):
        raise RuntimeError(f"peftc disagrees with the float64 reference: {errs}")
    return errs


def make_inputs(np: Any, rng, n: int, d: int, r: int):
    x = rng.standard_normal((n, d), dtype=np.float32)
    w = (rng.standard_normal((d, d), dtype=np.float32) / np.sqrt(d)).astype(np.float32)
    b = rng.standard_normal(d, dtype=np.float32)
    a = (rng.standard_normal((r, d), dtype=np.float32) / np.sqrt(d)).astype(np.float32)
    bm = (0.1 * rng.standard_normal((d, r), dtype=np.float32)).astype(np.float32)
    dy = rng.standard_normal((n, d), dtype=np.float32)
    return x, w, b, a, bm, dy


class SquareSgemm:
    """The 2048^3 sgemm reference, timed alongside each configuration so load changes hit both."""

    SIZE = 2048

    def __init__(self, np: Any, F: Any) -> None:
        rng = np.random.default_rng(2)
        n = self.SIZE
        self.F = F
        self.x, self.w = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        self.y = np.empty((n, n), np.float32)
        self.flops = 2.0 * n ** 3

    def __call__(self) -> None:
        self.F.linear_forward(self.x, self.w, None, out=self.y)


def run_config(np: Any, torch: Any, F: Any, square: SquareSgemm, d: int, r: int, p: float, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    n = TOKENS
    x, w, b, a, bm, dy = make_inputs(np, rng, n, d, r)
    s = LORA_ALPHA / r
    t = common.time_interleaved({"peftc": PeftcStep(np, F, x, w, b, a, bm, dy, s, p),
                                 "torch": TorchStep(torch, x, w, b, a, bm, dy, s, p),
                                 "frozen": FrozenGemms(np, F, x, w, dy), "sgemm": square}, repeats)
    t_peftc, t_torch, t_frozen = (t[k]["median_s"] for k in ("peftc", "torch", "frozen"))
    sgemm = square.flops / t["sgemm"]["median_s"] / 1e9
    f_frozen, f_step = flops(n, d, r)
    return {
        "N": n, "d": d, "r": r, "dropout": p,
        "peftc_ms": 1e3 * t_peftc, "torch_ms": 1e3 * t_torch, "ratio_torch_over_peftc": t_torch / t_peftc,
        "peftc_gflops": f_step / t_peftc / 1e9, "torch_gflops": f_step / t_torch / 1e9,
        "step_fraction_of_sgemm": f_step / t_peftc / 1e9 / sgemm,
        "frozen_gemms_ms": 1e3 * t_frozen, "frozen_gflops": f_frozen / t_frozen / 1e9,
        "frozen_fraction_of_sgemm": f_frozen / t_frozen / 1e9 / sgemm,
        "frozen_in_step_fraction_of_sgemm": f_frozen / t_peftc / 1e9 / sgemm, "sgemm_gflops": sgemm,
        "peftc_min_ms": 1e3 * t["peftc"]["min_s"], "torch_min_ms": 1e3 * t["torch"]["min_s"],
    }


COLUMNS = [("d", "d"), ("r", "r"), ("dropout", "p"), ("peftc_ms", "peftc ms"), ("torch_ms", "torch ms"),
           ("ratio_torch_over_peftc", "torch/peftc"), ("peftc_gflops", "peftc GFLOP/s"),
           ("sgemm_gflops", "sgemm GFLOP/s"),
           ("frozen_fraction_of_sgemm", "frozen GEMMs / sgemm"),
           ("frozen_in_step_fraction_of_sgemm", "frozen FLOPs per step time / sgemm"),
           ("peftc_min_ms", "peftc min ms"), ("torch_min_ms", "torch min ms"),
           ("ratio_of_min_times", "torch/peftc of min")]


def with_min_ratio(row: dict) -> dict:
    """The row plus torch/peftc of the fastest repeats, the ratio least disturbed by other load."""
    return {**row, "ratio_of_min_times": row["torch_min_ms"] / row["peftc_min_ms"]}


def print_row(row: dict) -> None:
    row = with_min_ratio(row)
    print("  ".join(f"{label}={row[key]:.3g}" if isinstance(row[key], float) else f"{label}={row[key]}"
                    for key, label in COLUMNS), flush=True)


def measure(args: argparse.Namespace) -> dict:
    """Everything measured under the current environment."""
    import numpy as np
    import torch

    from peftc import functional as F

    common.configure_torch_threads(torch, args.threads)
    env = common.environment(torch)
    print(f"OpenBLAS core {env['openblas']['corename']}, threads {env['openblas']['num_threads']}, "
          f"torch threads {env['torch_threads']}, OPENBLAS_CORETYPE={env['variables']['OPENBLAS_CORETYPE']}",
          flush=True)
    errors = check_correctness(np, torch, F, 512, 256, 16)
    print("correctness (max rel err vs float64): " + ", ".join(f"{k}={v:.1e}" for k, v in errors.items()))
    sgemm = common.measure_sgemm(args.repeats)
    print("sgemm GFLOP/s: " + ", ".join(f"{k} {v['gflops']:.0f}" for k, v in sgemm.items() if isinstance(v, dict)))
    square = SquareSgemm(np, F)
    dims, ranks = ((TARGET["d"],), (TARGET["r"],)) if args.quick else (DIMS, RANKS)
    rows = []
    for d in dims:
        for r in ranks:
            for p in DROPOUTS:
                row = run_config(np, torch, F, square, d, r, p, args.repeats)
                print_row(row)
                rows.append(row)
    return {"environment": env, "correctness": errors, "sgemm": sgemm, "rows": rows,
            "load_average_at_end": os.getloadavg()}


def target_lines(run: dict) -> list[str]:
    out = []
    for row in run["rows"]:
        if row["d"] == TARGET["d"] and row["r"] == TARGET["r"]:
            out.append(f"d={row['d']} r={row['r']} p={row['dropout']}: torch/peftc = "
                       f"{row['ratio_torch_over_peftc']:.2f} of medians, "
                       f"{with_min_ratio(row)['ratio_of_min_times']:.2f} of minima "
                       f"(target >= {TARGET['ratio']}), frozen GEMMs at "
                       f"{100 * row['frozen_fraction_of_sgemm']:.0f}% of sgemm "
                       f"(target >= {100 * TARGET['frozen_fraction']:.0f}%), whole step at "
                       f"{100 * row['frozen_in_step_fraction_of_sgemm']:.0f}% counting frozen FLOPs only")
    return out


def run_markdown(title: str, run: dict) -> str:
    env = run["environment"]
    sg = run["sgemm"]
    lines = [f"## {title}", "",
             f"OpenBLAS core `{env['openblas']['corename']}` ({env['openblas']['num_threads']} threads), "
             f"torch {env.get('torch')} ({env.get('torch_threads')} threads), CPU {env['cpu']}, "
             f"OPENBLAS_CORETYPE={env['variables']['OPENBLAS_CORETYPE']}, "
             f"OPENBLAS_L2_SIZE={env['variables']['OPENBLAS_L2_SIZE']}. Load average (1 min) "
             f"{env['load_average_at_start'][0]:.2f} at start, {run['load_average_at_end'][0]:.2f} at end.", "",
             "sgemm through peftc.linear_forward at the start of the run: " + ", ".join(
                 f"{k} {v['gflops']:.0f} GFLOP/s" for k, v in sg.items() if isinstance(v, dict))
             + ".", ""]
    if max(env["load_average_at_start"][0], run["load_average_at_end"][0]) > 1.0:
        lines += ["**Other processes loaded the machine during this run; times are inflated and the "
                  "multi-threaded torch side usually suffers more from it than peftc.**", ""]
    lines += [f"- {t}" for t in target_lines(run)] + [""]
    lines.append(common.markdown_table([label for _, label in COLUMNS],
                                       [[with_min_ratio(row)[key] for key, _ in COLUMNS] for row in run["rows"]]))
    return "\n".join(lines)


def autodetect_run(args: argparse.Namespace) -> dict:
    """Re-run in a child process with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset (read at load time)."""
    import json
    import tempfile

    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "child.json"
        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--repeats", str(args.repeats),
               "--child-json", str(out)] + (["--quick"] if args.quick else [])
        subprocess.run(cmd, env=env, check=True)
        return json.loads(out.read_text())


def write(payload: dict) -> None:
    runs = payload["runs"]
    md = [f"# LoRA layer, forward + backward, N={payload['tokens']} tokens, {payload['threads']} threads, "
          f"median of {payload['repeats']}", "",
          "torch/peftc > 1 means peftc is faster. 'sgemm GFLOP/s': a 2048^3 product through "
          "peftc.linear_forward timed in alternation with the configuration. 'frozen GEMMs / sgemm': the two "
          "frozen products of the step timed alone against it; 'frozen FLOPs per step time / sgemm' charges "
          "the whole step time to the frozen FLOPs (a lower bound).", "",
          f"Command: `{payload.get('command', 'python benchmarks/bench_lora_layer.py')}`", ""]
    md.append(run_markdown("OPENBLAS_CORETYPE as set on the machine", runs["as_configured"]))
    if "autodetected_core" in runs:
        md.append(run_markdown("OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset", runs["autodetected_core"]))
    common.write_results(NAME, payload, "\n".join(md))


def main() -> None:
    args = parse_args()
    if args.render:
        write(common.read_results(NAME))
        return
    common.configure_threads(args.threads)
    print(f"== {NAME}: OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}", flush=True)
    run = measure(args)
    if args.child_json:
        import json
        Path(args.child_json).write_text(json.dumps(run))
        return
    runs = {"as_configured": run}
    if args.autodetect_core:
        print("== child run with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset", flush=True)
        runs["autodetected_core"] = autodetect_run(args)
    for lines in (target_lines(r) for r in runs.values()):
        print("\n".join(lines))
    if args.quick:
        return
    payload = {"benchmark": NAME, "tokens": TOKENS, "lora_alpha": LORA_ALPHA, "threads": args.threads,
               "repeats": args.repeats, "target": TARGET,
               "command": " ".join(["python", "benchmarks/bench_lora_layer.py", *sys.argv[1:]]), "runs": runs}
    write(payload)


if __name__ == "__main__":
    main()
