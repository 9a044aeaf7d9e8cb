"""benchmarks/bench_bf16_step.py without timing anything: its verdicts, its report, its kernel clock."""
from __future__ import annotations

import numpy as np

from peftc import bf16
from peftc.nn import Linear, LoraLinear

from .benchmark_scripts import load_benchmark

bench = load_benchmark("bench_bf16_step")


def rows(peftc: float, forced: bool) -> dict:
    """Fake per-step times: peftc bf16 at ``peftc`` s, peftc float32 at 1.2 s, torch float32 at 2 s, torch bf16 at
    1.5 s; with ``forced``, a side forced to the avx512f path at 1.1 s, else the bf16 side itself runs avx2."""
    rng = np.random.default_rng(0)

    def jitter(v: float) -> list[float]:
        return list(v + 0.01 * rng.standard_normal(5))

    out = {}
    for mode in ("dropout_on", "dropout_off"):
        t = {"peftc_bf16": jitter(peftc), "torch_fp32": jitter(2.0), "torch_bf16": jitter(1.5),
             "peftc_fp32": jitter(1.2)}
        sides = {"avx512f": "peftc_bf16_avx512f"} if forced else {"avx2": "peftc_bf16"}
        if forced:
            t["peftc_bf16_avx512f"] = jitter(1.1)
        out[mode] = {"times_s_per_step": t, "peftc_over_torch_fp32": 2.0 / peftc, "peftc_over_torch_bf16": 1.5 / peftc,
                     "fallback_sides": sides, "fallback_over_fp32": {p: 1.2 / (1.1 if forced else peftc) for p in sides}}
    return out


def test_verdicts_follow_the_times():
    fast = bench.speed_verdicts(rows(1.0, forced=True), rows(1.0, forced=True))["verdicts"]
    assert len(fast) == 8 and all(v["holds"] for v in fast)
    forced = [v["claim"] for v in fast if "forced to the avx512f" in v["claim"]]
    assert len(forced) == 2 and forced[0].startswith("real batches, dropout_on") and "(peftc_bf16_avx512f)" in forced[0]
    assert forced[1].startswith("batch 32 x 128, dropout_off")
    slow = bench.speed_verdicts(rows(3.0, forced=False), rows(3.0, forced=False))["verdicts"]
    assert not any(v["holds"] for v in slow) and "avx2 widening path (peftc_bf16)" in slow[-1]["claim"]


def test_report_says_why_a_number_is_missing():
    synth = rows(1.0, forced=False)
    payload = {"cpu": "test CPU", "quick": True, "threads": 2, "repeats": 5, "command": "x", "environment": {},
               "bf16_path": "avx2", "bf16_cpu_paths": ["avx2", "generic"], "synthetic_shape": [4, 32],
               "real_rows": rows(1.0, forced=True), "synthetic_rows": synth,
               "real_batches": {"non_gemm_share": 0.4}, "frozen_gemm_gflops": 50.0,
               "bf16_peak": {"gflops": None, "why": "this CPU has no AVX512-BF16"}, "gemm_fraction_of_bf16_peak": None,
               "rss": {"peftc-bf16": {"peak_rss_mb": 400.0}, "torch-bf16": {"peak_rss_mb": 900.0}},
               "rss_ratio_vs_torch_bf16": 0.44, "demo_acc_fp32": None, "demo_acc_bf16": None, "demo_note": "pending",
               **bench.speed_verdicts(synth, synth, (4, 32))}
    md = bench.render(payload)
    assert "test CPU" in md and "QUICK RUN" in md and "no AVX512-BF16" in md and "(pending)" in md
    assert "| (b) 4 x 32 | dropout_off | 2.00 | 1.50 | avx2 1.20 |" in md and "| batch 4 x 32, dropout_off" in md
    assert "| (a) real batches | dropout_on | 2.00 | 1.50 | avx512f 1.09 |" in md


def test_kernel_clock_counts_the_frozen_products_flops(rng):
    base = Linear.from_weights(rng.standard_normal((24, 64)).astype(np.float32))
    base.weight.requires_grad = False
    layer = LoraLinear(base.to_bfloat16(), r=2)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    clock = bench.KernelClock()
    with clock.installed():
        y = layer(x)
        layer.backward(np.ones_like(y))
    assert clock.frozen_flops == 2 * (2.0 * 5 * 24 * 64) and clock.frozen_s > 0 and clock.other_s > 0
    assert bench.KernelClock().frozen_flops == 0 and layer(x).shape == (5, 24)  # uninstalled again
    assert bf16.linear_forward.__name__ == "linear_forward"
