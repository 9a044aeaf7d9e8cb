"""EATA adaptation throughput: peftc against a PyTorch implementation of the same algorithm.

Both sides run the cached Fashion-MNIST SmallResNet source model (the torch copy below has the
same architecture in torch.nn and is loaded with identical weights), BatchNorm on test-batch
statistics, and the same EATA step: entropy filter H < E0, redundancy filter |cos(m, p)| < d_margin
against the moving-average prediction (momentum 0.9), weights exp(E0 - H), loss mean over the
selected samples of w H plus the Fisher penalty alpha * sum F (theta - theta0)^2, one SGD step
(momentum 0.9) on the BN affine parameters. The Fisher is computed on both sides (2,000 clean
training images by default) and compared.

Before timing, a correctness check: two adaptation steps on the same batches must select the same
samples and give the same Fisher and the same updated BN parameters on both sides, each measured
against a float64 copy of the torch side (the float32 torch Fisher is a batch-mean gradient with
heavy cancellation and differs from float64 by up to ~1 %; peftc accumulates BN sums in double);
the script stops if they disagree. Timing: adapted images/s over a stream of
Fashion-MNIST-C (gaussian noise, severity 5) batches, after a 5-batch warm-up (torch needs a few calls
to build its oneDNN primitives), peftc and torch
interleaved over several repeats in the same process with the same thread count. Two figures: the
best repeat of each side against the other's best, and the median over repeats of the ratio of a peftc
repeat to the torch repeat right after it (this machine's speed drifts by up to 2x over minutes; a
paired ratio compares the two sides at the same moment).

Run: OPENBLAS_NUM_THREADS=2 python benchmarks/bench_eata.py [--batches 64,200] [--images 2000] [--out PATH]
[--clock wall|cpu] (the thread count of both sides is OPENBLAS_NUM_THREADS; ``--clock cpu`` times each side by
this process's CPU time, steadier than elapsed time on a loaded machine). Writes benchmarks/results/bench_eata.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as tF

from common import openblas_info  # this folder: run as a script
from peftc.io.atomic import write_bytes_atomic
from peftc.data.corruptions import load_fashion_mnist_c
from peftc.data.fashion_mnist import load_fashion_mnist
from peftc.tta import EATA, train_source_model

THREADS = int(os.environ.get("OPENBLAS_NUM_THREADS", "2"))
OUT = Path(__file__).parent / "results"
E0_FACTOR, D_MARGIN, FISHER_ALPHA, LR, MOMENTUM = 0.4, 0.4, 1.0, 2.5e-4, 0.9
WARMUP = 5  # batches per timing repeat before the clock starts (torch builds its oneDNN primitives)


class TorchBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, track_running_stats=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, track_running_stats=False)
        self.short_conv = nn.Conv2d(cin, cout, 1, 2, bias=False)
        self.short_bn = nn.BatchNorm2d(cout, track_running_stats=False)

    def forward(self, x):
        h = self.bn2(self.conv2(tF.relu(self.bn1(self.conv1(x)))))
        return tF.relu(h + self.short_bn(self.short_conv(x)))


class TorchSmallResNet(nn.Module):
    """peftc.models.SmallResNet in torch.nn; BN always on batch statistics (TENT/EATA configuration)."""

    def __init__(self, widths: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.stem_conv = nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0], track_running_stats=False)
        self.blocks = nn.ModuleList([TorchBlock(a, b) for a, b in zip(widths, widths[1:])])
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        h = tF.relu(self.stem_bn(self.stem_conv(x)))
        for b in self.blocks:
            h = b(h)
        return self.head(h.mean((2, 3)))


def torch_twin(state: dict[str, np.ndarray], widths, num_classes) -> TorchSmallResNet:
    net = TorchSmallResNet(widths, num_classes)
    own = net.state_dict()
    net.load_state_dict({k: torch.tensor(state[k]) for k in own})
    net.train()
    net.requires_grad_(False)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.requires_grad_(True)
            m.bias.requires_grad_(True)
    return net


def entropy(logits):
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


class TorchEATA:
    """EATA as in the reference implementation, on a TorchSmallResNet."""

    def __init__(self, net: TorchSmallResNet, num_classes: int, fisher=None, theta0=None, lr: float = LR) -> None:
        self.net = net
        self.params = [p for m in net.modules() if isinstance(m, nn.BatchNorm2d) for p in (m.weight, m.bias)]
        self.opt = torch.optim.SGD(self.params, lr=lr, momentum=MOMENTUM)
        self.e0 = E0_FACTOR * math.log(num_classes)
        self.ema = None
        self.fisher, self.theta0 = fisher, theta0
        self.backward_samples = 0

    def compute_fisher(self, images: np.ndarray, batch_size: int) -> None:
        fisher = [torch.zeros_like(p) for p in self.params]
        n = 0
        for i in range(0, len(images), batch_size):
            logits = self.net(torch.from_numpy(images[i:i + batch_size]))
            loss = tF.cross_entropy(logits, logits.argmax(1))
            grads = torch.autograd.grad(loss, self.params)
            for f, g in zip(fisher, grads):
                f += g ** 2
            n += 1
        self.fisher = [f / n for f in fisher]
        self.theta0 = [p.detach().clone() for p in self.params]

    def forward_and_adapt(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        ent = entropy(logits)
        ids1 = torch.where(ent < self.e0)[0]
        probs1 = logits[ids1].softmax(1).detach()
        if self.ema is not None:
            cos = tF.cosine_similarity(self.ema.unsqueeze(0), probs1, dim=1)
            keep = torch.abs(cos) < D_MARGIN
            ids2, probs2 = ids1[keep], probs1[keep]
        else:
            ids2, probs2 = ids1, probs1
        if len(ids2):
            mean = probs2.mean(0)
            self.ema = mean if self.ema is None else MOMENTUM * self.ema + (1 - MOMENTUM) * mean
        if len(ids2):
            w = torch.exp(self.e0 - ent[ids2].detach())
            loss = (w * ent[ids2]).mean()
            if self.fisher is not None:
                loss = loss + FISHER_ALPHA * sum((f * (p - t) ** 2).sum()
                                                 for f, p, t in zip(self.fisher, self.params, self.theta0))
            self.opt.zero_grad(set_to_none=False)
            loss.backward()
            self.opt.step()
            self.backward_samples += len(ids2)
        return logits.detach()


def _rel(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Relative error over all entries: ||a - b|| / ||b||."""
    num = math.sqrt(sum(float(((u - v).astype(np.float64) ** 2).sum()) for u, v in zip(a, b)))
    return num / max(math.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in b)), 1e-300)


def check(model, fisher_x, batches, widths, num_classes, lr: float) -> dict:
    """Two adaptation steps on peftc, torch float32 (the timed side) and torch float64 (the oracle):
    same selections, and the Fisher and the BN parameter updates of both float32 sides close to the
    float64 ones. ``lr`` is larger than the timed one so that updates stand well above float32 rounding."""
    ours = EATA(model, fisher_images=fisher_x, optimizer="sgd", lr=lr, momentum=MOMENTUM, num_classes=num_classes,
                e0_factor=E0_FACTOR, d_margin=D_MARGIN, fisher_alpha=FISHER_ALPHA, fisher_batch_size=200)
    t32 = TorchEATA(torch_twin(model.state_dict(), widths, num_classes), num_classes, lr=lr)
    t64 = TorchEATA(torch_twin(model.state_dict(), widths, num_classes).double(), num_classes, lr=lr)
    t32.compute_fisher(fisher_x, 200)
    t64.compute_fisher(fisher_x.astype(np.float64), 200)
    f64 = [f.numpy() for f in t64.fisher]
    report = {"check_lr": lr, "fisher_rel_err_peftc": _rel(ours.fisher, f64),
              "fisher_rel_err_torch32": _rel([f.numpy() for f in t32.fisher], f64), "steps": []}
    p0 = [p.detach().numpy().copy() for p in t64.params]
    for x in batches:
        ours.forward_and_adapt(x)
        t32.forward_and_adapt(torch.from_numpy(x))
        t64.forward_and_adapt(torch.from_numpy(x.astype(np.float64)))
        d64 = [p.detach().numpy() - q for p, q in zip(t64.params, p0)]
        d_ours = [p.data - q for p, q in zip(ours.params, p0)]
        d32 = [p.detach().numpy() - q for p, q in zip(t32.params, p0)]
        report["steps"].append({
            "update_rel_err_peftc_vs_f64": _rel(d_ours, d64), "update_rel_err_torch32_vs_f64": _rel(d32, d64),
            "update_rel_err_peftc_vs_torch32": _rel(d_ours, d32),
            "max_abs_err_peftc_vs_torch32": max(float(np.abs(a.data - b.detach().numpy()).max())
                                                for a, b in zip(ours.params, t32.params)),
            "update_norm": math.sqrt(sum(float((d ** 2).sum()) for d in d64)),
            "backward_samples": [ours.stats["backward_samples"], t32.backward_samples, t64.backward_samples]})
    steps = report["steps"]
    # The Fisher is a float32 sum of squared gradients over the Fisher images; how far it lands from
    # float64 depends on the trained model (2e-6 on one checkpoint, 1e-4 on another), so peftc's must be
    # under 1e-4 or no farther from float64 than torch's own float32 Fisher.
    fisher_bound = max(1e-4, report["fisher_rel_err_torch32"])
    report["ok"] = bool(report["fisher_rel_err_peftc"] < fisher_bound and report["fisher_rel_err_torch32"] < 5e-2
                        and all(len(set(s["backward_samples"])) == 1 and s["update_norm"] > 0
                                and s["update_rel_err_peftc_vs_f64"] < 1e-3
                                and s["update_rel_err_torch32_vs_f64"] < 5e-2
                                for s in steps))
    return report


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_side(make, batches, warmup: int = WARMUP, clock=time.perf_counter) -> float:
    m = make()
    for x in batches[:warmup]:
        m.forward_and_adapt(x)
    t0 = clock()
    for x in batches[warmup:]:
        m.forward_and_adapt(x)
    return sum(len(x) for x in batches[warmup:]) / (clock() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="64,200")
    ap.add_argument("--images", type=int, default=2000, help="stream length per timing repeat")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--fisher", type=int, default=2000)
    ap.add_argument("--out", default=str(OUT / "bench_eata"), help="output path without suffix")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time (steadier on a loaded machine)")
    args = ap.parse_args()
    clock = CLOCKS[args.clock]
    torch.set_num_threads(THREADS)
    model, info = train_source_model()
    widths, num_classes = tuple(info["config"]["widths"]), 10
    train_x, _ = load_fashion_mnist("train")
    fisher_x = np.ascontiguousarray(train_x[np.random.default_rng(0).permutation(len(train_x))[:args.fisher], None])
    x, _ = load_fashion_mnist_c("gaussian_noise", 5)
    x = np.ascontiguousarray(x[np.random.default_rng(1).permutation(len(x))[:args.images], None])
    chk = check(model, fisher_x, [x[:64], x[64:128]], widths, num_classes, lr=1e-2)
    print("correctness:", json.dumps(chk))
    if not chk["ok"]:
        raise SystemExit("peftc and torch EATA disagree; not timing")
    ours_model = EATA(model, fisher_images=fisher_x, optimizer="sgd", lr=LR, momentum=MOMENTUM,
                      num_classes=num_classes, e0_factor=E0_FACTOR, d_margin=D_MARGIN, fisher_alpha=FISHER_ALPHA)
    fisher_t = [torch.tensor(f) for f in ours_model.fisher]
    theta0_t = [torch.tensor(t) for t in ours_model.theta0]

    def make_ours():
        ours_model.reset()
        return ours_model

    def make_torch():
        return TorchEATA(torch_twin(model.state_dict(), widths, num_classes), num_classes, fisher_t, theta0_t)

    rows = []
    for b in [int(v) for v in args.batches.split(",")]:
        np_batches = [x[i:i + b] for i in range(0, len(x) - b + 1, b)]
        if len(np_batches) <= WARMUP:
            raise SystemExit(f"--images {args.images} gives {len(np_batches)} batches of {b}: more than the "
                             f"{WARMUP} warm-up batches are needed to time anything")
        t_batches = [torch.from_numpy(v) for v in np_batches]
        ours, theirs = [], []
        for _ in range(args.repeats):
            ours.append(time_side(make_ours, np_batches, clock=clock))
            theirs.append(time_side(make_torch, t_batches, clock=clock))
        paired = [o / t for o, t in zip(ours, theirs)]
        row = {"batch": b, "images": len(np_batches) * b, "peftc_img_s": max(ours), "torch_img_s": max(theirs),
               "speedup": max(ours) / max(theirs), "paired_median": float(np.median(paired)),
               "paired_min": min(paired), "paired_max": max(paired), "peftc_all": ours, "torch_all": theirs}
        rows.append(row)
        print(f"batch {b}: peftc {row['peftc_img_s']:.0f} img/s, torch {row['torch_img_s']:.0f} img/s, "
              f"peftc/torch {row['speedup']:.2f}x (best), {row['paired_median']:.2f}x (paired median)", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"threads": THREADS, "clock": args.clock, "torch": torch.__version__, "load_average": os.getloadavg(),
              "openblas": openblas_info(), "openblas_coretype_variable": os.environ.get("OPENBLAS_CORETYPE"),
              "check": chk, "rows": rows, "source_config": info["config"],
              "setting": f"EATA SGD lr {LR} momentum {MOMENTUM}, E0 = {E0_FACTOR} ln 10, d_margin {D_MARGIN}, "
                         f"fisher_alpha {FISHER_ALPHA}; Fashion-MNIST-C gaussian_noise severity 5"}
    write_bytes_atomic(out.with_suffix(".json"), json.dumps(result, indent=1).encode())
    lines = [f"EATA adapted images/s ({args.clock} clock), peftc vs torch {torch.__version__}, {THREADS} threads each, "
             "same process "
             f"(load average at the end {result['load_average'][0]:.1f}; {args.repeats} interleaved repeats: best against "
             "best, and the median of paired ratios, a peftc repeat against the torch repeat right after it). "
             f"peftc's OpenBLAS core `{result['openblas']['corename']}` (OPENBLAS_CORETYPE="
             f"{result['openblas_coretype_variable']}), OPENBLAS_THREAD_TIMEOUT {result['openblas']['thread_timeout']}.",
             "", f"Correctness before timing (two steps at lr {chk['check_lr']}, against a float64 torch oracle): "
             f"Fisher rel err peftc {chk['fisher_rel_err_peftc']:.1e}, "
             f"torch float32 {chk['fisher_rel_err_torch32']:.1e}; "
             "BN parameter update rel err "
             + "; ".join(f"step {i + 1}: peftc {s['update_rel_err_peftc_vs_f64']:.1e}, torch float32 "
                         f"{s['update_rel_err_torch32_vs_f64']:.1e}, peftc vs torch float32 "
                         f"{s['update_rel_err_peftc_vs_torch32']:.1e} "
                         f"(max abs {s['max_abs_err_peftc_vs_torch32']:.1e}), "
                         f"backward samples {s['backward_samples'][0]}/{s['backward_samples'][1]}"
                         for i, s in enumerate(chk["steps"])), "",
             "| batch | images | peftc img/s (best) | torch img/s (best) | peftc/torch (best) "
             "| peftc/torch paired (median [min, max]) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['images']} | {r['peftc_img_s']:.0f} | {r['torch_img_s']:.0f} | "
              f"{r['speedup']:.2f}x | {r['paired_median']:.2f}x [{r['paired_min']:.2f}, {r['paired_max']:.2f}] |"
              for r in rows]
    write_bytes_atomic(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
