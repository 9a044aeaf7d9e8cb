"""One LoRA training step of MiniLM (all-MiniLM-L6-v2), peftc against torch + transformers + PEFT.

The model on both sides: the BERT encoder, mean pooling over the attention mask, a linear head of
41 classes (WordNet's lexicographer files); LoRA r = 8, lora_alpha = 8 on query and value (PEFT's
default LoraConfig otherwise), the head trained as modules_to_save. lora_dropout 0.0 (PEFT's default)
and 0.1. Both models are in training mode, so the checkpoint's own dropouts (hidden 0.1, attention
probabilities 0.1) are on as well. One step = forward, cross-entropy, backward, AdamW step.

Input: batch 32, sequence 128, synthetic token ids with attention_mask all ones (full attention),
so both sides compute all 128 positions (a batch of real glosses would be mostly padding, which
peftc's SentenceClassifier trims and torch does not; that would not compare the same work).

Weights are identical: peftc loads the checkpoint, its LoRA factors (random A and B, so every
gradient is non-zero) and head are copied into the PEFT model. Before timing, one step of each in
eval mode is checked against the other (loss, logits, every LoRA and head gradient).

Measured, same process, same thread count, the two sides timed in alternation (common.py):
  - tokens/s of each side and their ratio (target: peftc >= 1.5x torch);
  - peftc's fraction of the GEMM roofline: the step's GEMM FLOPs (counted below, the minimum a
    LoRA step needs) divided by the step time and by the sgemm speed of a 2048^3 product through
    peftc.linear_forward, timed in alternation with the steps; its fastest repeat is the roofline
    (target >= 60%);
  - inference (peftc, eval, forward only): base model, LoRA merged, LoRA unmerged (targets: merged
    at the base speed, unmerged within 5% of it).
Peak RSS: each side in its own subprocess (model, batch, optimizer, 3 steps), the kernel's VmHWM
(ru_maxrss would count the parent's memory, inherited at the fork before exec); target: peftc <= 0.6x
torch.

Run (the default takes about 3-4 minutes on a quiet 2-core machine):
    python benchmarks/bench_train_step.py [--threads 2] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # peftc from this checkout
import common  # noqa: E402

NAME = "bench_train_step"
BATCH, SEQ, NUM_LABELS, RANK, ALPHA = 32, 128, 41, 8, 8.0
TARGETS = ["query", "value"]
DROPOUTS = (0.0, 0.1)
LR = 1e-4
TARGET = {"tokens_per_s_ratio": 1.5, "peak_rss_ratio": 0.6, "gemm_roofline_fraction": 0.60,
          "unmerged_over_base": 1.05}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rss-steps", type=int, default=3, help="steps each RSS subprocess runs")
    ap.add_argument("--quick", action="store_true", help="dropout 0.0 only, no RSS, no results file")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the stored .json")
    ap.add_argument("--name", default=NAME, help="results file stem under benchmarks/results/ (e.g. for a run "
                    "with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset)")
    ap.add_argument("--rss-child", choices=("peftc", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--dropout", type=float, default=0.0, help=argparse.SUPPRESS)
    return ap.parse_args()


# ---- the GEMM FLOPs of one step ------------------------------------------------------------------
def gemm_flops(cfg: dict, b: int = BATCH, t: int = SEQ, r: int = RANK, c: int = NUM_LABELS) -> dict[str, float]:
    """FLOPs of every matrix product a LoRA step on query and value needs (2 per multiply-add).

    Per layer, forward: Q, K, V, output projections 4 * 2NH^2, feed-forward 2 * 2NHF, attention
    scores and context 2 * 2NTH, two LoRA adapters 2 * (2NHr + 2NrH). Backward (frozen weights: input
    gradients only): feed-forward 2 * 2NHF, output projection 2NH^2, attention 4 * 2NTH, Q/K/V
    input gradients 3 * 2NH^2, LoRA 2 * 4 * 2NHr. The first layer's input gradient is not needed
    (the embeddings are frozen): no Q/K/V input gradients, no dK, no LoRA input gradient. Head: the
    forward, its weight gradient and its input gradient, 3 * 2BHC.
    """
    n, h, f, layers = b * t, cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    fwd = 8 * n * h * h + 4 * n * h * f + 4 * n * t * h + 2 * 4 * n * h * r
    bwd = 4 * n * h * f + 2 * n * h * h + 8 * n * t * h + 6 * n * h * h + 2 * 8 * n * h * r
    first_layer_saving = 6 * n * h * h + 2 * n * t * h + 2 * 2 * n * r * h
    head = 3 * 2 * b * h * c
    total = layers * (fwd + bwd) - first_layer_saving + head
    return {"forward": float(layers * fwd + 2 * b * h * c), "step": float(total)}


# ---- the two models --------------------------------------------------------------------------------
def make_batch(np: Any) -> dict:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, size=(BATCH, SEQ), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return {"input_ids": ids, "attention_mask": np.ones((BATCH, SEQ), dtype=np.int64),
            "labels": rng.integers(0, NUM_LABELS, size=BATCH, dtype=np.int64)}


def peftc_model(p: float, seed: int = 3):
    from peftc import LoraConfig, get_peft_model
    from peftc.models import BertModel, SentenceClassifier, minilm_path
    from peftc.random import Generator

    base = SentenceClassifier(BertModel.from_pretrained(minilm_path(), seed=seed), NUM_LABELS,
                              generator=Generator(seed))
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=p, target_modules=TARGETS,
                        modules_to_save=["classifier"], init_lora_weights=False)
    return get_peft_model(base, config, generator=Generator(seed + 1))


def torch_model(torch: Any, p: float, copy_from: Any = None):
    """transformers' BertModel + PEFT LoRA on query/value, mean pooling, a linear head (common.py's twin)."""
    return common.torch_lora_classifier(torch, NUM_LABELS, RANK, ALPHA, p, TARGETS, copy_from)


class PeftcStep:
    """forward, cross-entropy, backward, AdamW step in peftc."""

    def __init__(self, model: Any, batch: dict) -> None:
        from peftc.nn import CrossEntropyLoss
        from peftc.optim import AdamW

        self.model, self.loss_fn = model, CrossEntropyLoss()
        self.inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        self.labels = batch["labels"]
        self.opt = AdamW(model.trainable_parameters(), lr=LR)
        self.loss = float("nan")

    def __call__(self) -> None:
        self.opt.zero_grad()
        self.loss = self.loss_fn.forward(self.model(self.inputs), self.labels)
        self.model.backward(self.loss_fn.backward())
        self.opt.step()


class TorchStep:
    """The same step in torch: autograd backward, torch.optim.AdamW."""

    def __init__(self, torch: Any, model: Any, batch: dict) -> None:
        self.torch, self.model = torch, model
        self.ids = torch.from_numpy(batch["input_ids"])
        self.mask = torch.from_numpy(batch["attention_mask"])
        self.labels = torch.from_numpy(batch["labels"])
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
        self.loss = float("nan")

    def __call__(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.model(self.ids, self.mask), self.labels)
        loss.backward()
        self.opt.step()
        self.loss = float(loss.detach())


# ---- correctness before timing -----------------------------------------------------------------------
def check_same_step(np: Any, torch: Any, model: Any, twin: Any, batch: dict) -> dict[str, float]:
    """Eval mode (no dropout) on the benchmark batch: loss, logits and every trainable gradient."""
    from peftc.nn import CrossEntropyLoss

    model.eval()
    twin.eval()
    loss_fn = CrossEntropyLoss()
    logits = model({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    loss = loss_fn.forward(logits, batch["labels"])
    for p in model.trainable_parameters():
        if p.grad is not None:
            p.grad.fill(0.0)
    model.backward(loss_fn.backward())
    t_logits = twin(torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"]))
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(batch["labels"]))
    twin.zero_grad(set_to_none=True)
    t_loss.backward()
    model.train()
    twin.train()

    def rel(a, b):
        return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-30))

    ours = {k: v.grad for k, v in model.named_trainable_parameters()}
    grad_err = max(rel(ours[common.peft_to_peftc_name(n)], p.grad.numpy()) for n, p in twin.named_parameters()
                   if p.requires_grad)
    t_loss_value = t_loss.item()
    errs = {"loss": abs(loss - t_loss_value) / abs(t_loss_value),
            "logits": rel(logits, t_logits.detach().numpy()), "worst_gradient": grad_err}
    if max(errs.values()) > 1e-3:
        raise RuntimeError(f"peftc and torch disagree before timing: {errs}")
    return errs


# ---- timing ------------------------------------------------------------------------------------------
def train_row(np: Any, torch: Any, batch: dict, p: float, square: Any, flops: dict, repeats: int) -> dict:
    model = peftc_model(p)
    twin = torch_model(torch, p, copy_from=model)
    errs = check_same_step(np, torch, model, twin, batch) if p == 0.0 else None
    model.train()
    twin.train()
    ours, theirs = PeftcStep(model, batch), TorchStep(torch, twin, batch)
    t = common.time_interleaved({"peftc": ours, "torch": theirs, "sgemm": square}, repeats, warmup=1)
    tokens = BATCH * SEQ
    # the roofline is the machine's best sgemm speed in this row (its fastest repeat): under other load a
    # median sgemm can be slower than the step's GEMMs were, which would put the fraction above 100%
    sg = square.flops / t["sgemm"]["min_s"] / 1e9
    row: dict[str, Any] = {"dropout": p, "sgemm_gflops_median": square.flops / t["sgemm"]["median_s"] / 1e9}
    for key in ("median_s", "min_s"):
        tag = key[:-2]
        row.update({
            f"peftc_{tag}_s": t["peftc"][key], f"torch_{tag}_s": t["torch"][key],
            f"peftc_tokens_per_s_{tag}": tokens / t["peftc"][key],
            f"torch_tokens_per_s_{tag}": tokens / t["torch"][key],
            f"ratio_{tag}": t["torch"][key] / t["peftc"][key],
            f"peftc_gemm_gflops_{tag}": flops["step"] / t["peftc"][key] / 1e9,
            f"roofline_fraction_{tag}": flops["step"] / t["peftc"][key] / 1e9 / sg,
        })
    row.update({"sgemm_gflops_best": sg, "times": {k: v["times_s"] for k, v in t.items()}, "check_vs_torch": errs,
                "last_loss": {"peftc": ours.loss, "torch": theirs.loss}})
    return row


def inference_row(np: Any, batch: dict, repeats: int) -> dict:
    """peftc forward only, eval mode: the base classifier, LoRA merged, LoRA unmerged."""
    from peftc.models import BertModel, SentenceClassifier, minilm_path
    from peftc.random import Generator

    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    base = SentenceClassifier(BertModel.from_pretrained(minilm_path()), NUM_LABELS, generator=Generator(3)).eval()
    unmerged = peftc_model(0.0).eval()
    merged = peftc_model(0.0).eval()
    merged.merge_adapter()
    y_u, y_m = unmerged(inputs), merged(inputs)
    err = float(np.abs(y_u - y_m).max() / np.abs(y_u).max())
    if err > 1e-4:
        raise RuntimeError(f"merged and unmerged logits differ: relative error {err:.2e}")
    t = common.time_interleaved({"base": lambda: base(inputs), "merged": lambda: merged(inputs),
                                 "unmerged": lambda: unmerged(inputs)}, repeats, warmup=1)
    row = {"merged_vs_unmerged_rel_err": err, "times": {k: v["times_s"] for k, v in t.items()}}
    for key in ("median_s", "min_s"):
        tag = key[:-2]
        row.update({f"{name}_{tag}_s": t[name][key] for name in t})
        row[f"merged_over_base_{tag}"] = t["merged"][key] / t["base"][key]
        row[f"unmerged_over_base_{tag}"] = t["unmerged"][key] / t["base"][key]
    return row


# ---- peak memory, one subprocess per side ----------------------------------------------------------
def _status_mb(field: str) -> float:
    """A memory line of /proc/self/status ("VmRSS", "VmHWM") in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def rss_child(args: argparse.Namespace) -> None:
    """Runs in the child: imports only its own side, builds model, batch and optimizer, runs steps."""
    import numpy as np

    rss_start = _status_mb("VmRSS")
    batch = make_batch(np)
    if args.rss_child == "peftc":
        step = PeftcStep(peftc_model(args.dropout).train(), batch)
    else:
        import torch

        common.configure_torch_threads(torch, args.threads)
        step = TorchStep(torch, torch_model(torch, args.dropout).train(), batch)
    rss_setup = _status_mb("VmRSS")
    t0 = time.perf_counter()
    for _ in range(args.rss_steps):
        step()
    print(json.dumps({"side": args.rss_child, "dropout": args.dropout, "steps": args.rss_steps,
                      "rss_after_imports_mb": rss_start, "rss_after_setup_mb": rss_setup,
                      # VmHWM, not ru_maxrss: the latter keeps the parent's RSS from the fork before exec
                      "peak_rss_mb": _status_mb("VmHWM"),
                      "wall_s": time.perf_counter() - t0, "loss": step.loss}))


def rss_rows(args: argparse.Namespace, dropouts: tuple[float, ...]) -> list[dict]:
    rows = []
    for p in dropouts:
        row: dict[str, Any] = {"dropout": p}
        for side in ("peftc", "torch"):
            cmd = [sys.executable, __file__, "--rss-child", side, "--dropout", str(p), "--threads", str(args.threads),
                   "--rss-steps", str(args.rss_steps)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row[side] = json.loads(out.strip().splitlines()[-1])
        row["peak_rss_ratio"] = row["peftc"]["peak_rss_mb"] / row["torch"]["peak_rss_mb"]
        row["step_memory_ratio"] = ((row["peftc"]["peak_rss_mb"] - row["peftc"]["rss_after_setup_mb"])
                                    / (row["torch"]["peak_rss_mb"] - row["torch"]["rss_after_setup_mb"]))
        print(f"RSS p={p}: peftc peak {row['peftc']['peak_rss_mb']:.0f} MB, torch peak "
              f"{row['torch']['peak_rss_mb']:.0f} MB, ratio {row['peak_rss_ratio']:.2f}", flush=True)
        rows.append(row)
    return rows


# ---- report ------------------------------------------------------------------------------------------
def target_lines(payload: dict) -> list[str]:
    out = []
    for row in payload["train"]:
        out.append(f"lora_dropout={row['dropout']}: tokens/s peftc/torch = {row['ratio_median']:.2f} (medians), "
                   f"{row['ratio_min']:.2f} (minima), target >= {TARGET['tokens_per_s_ratio']}; GEMM roofline "
                   f"fraction {100 * row['roofline_fraction_median']:.0f}% (medians), "
                   f"{100 * row['roofline_fraction_min']:.0f}% (minima), target >= "
                   f"{100 * TARGET['gemm_roofline_fraction']:.0f}%")
    for row in payload.get("rss", []):
        out.append(f"lora_dropout={row['dropout']}: peak RSS peftc/torch = {row['peak_rss_ratio']:.2f} "
                   f"({row['peftc']['peak_rss_mb']:.0f} / {row['torch']['peak_rss_mb']:.0f} MB), target <= "
                   f"{TARGET['peak_rss_ratio']}")
    inf = payload["inference"]
    out.append(f"inference: merged/base = {inf['merged_over_base_median']:.3f}, unmerged/base = "
               f"{inf['unmerged_over_base_median']:.3f} (medians; minima {inf['merged_over_base_min']:.3f}, "
               f"{inf['unmerged_over_base_min']:.3f}), target unmerged <= {TARGET['unmerged_over_base']}")
    return out


def write(payload: dict, name: str = NAME) -> None:
    env = payload["environment"]
    md = [f"# MiniLM LoRA training step, peftc vs torch {env.get('torch')} + transformers + PEFT", "",
          f"Batch {BATCH} x sequence {SEQ} (synthetic ids, full attention), LoRA r={RANK} alpha={ALPHA:g} on "
          f"query and value, head trained, AdamW; both models in training mode (checkpoint dropouts 0.1). "
          f"{payload['threads']} threads on both sides, {payload['repeats']} repeats timed in alternation.", "",
          f"Command: `{payload['command']}`", "",
          f"OpenBLAS core `{env['openblas']['corename']}`, CPU {env['cpu']}, OPENBLAS_CORETYPE="
          f"{env['variables']['OPENBLAS_CORETYPE']}, OPENBLAS_THREAD_TIMEOUT {env['openblas'].get('thread_timeout')}. "
          f"Load average (1 min) {env['load_average_at_start'][0]:.2f} at "
          f"start, {payload['load_average_at_end'][0]:.2f} at end (the benchmark's own threads count {payload['threads']}).",
          ""]
    # the benchmark itself keeps `threads` cores busy: only load beyond that comes from other processes
    if max(env["load_average_at_start"][0], payload["load_average_at_end"][0]) > payload["threads"] + 0.5:
        md += ["**Other processes loaded the machine during this run: times are inflated and noisy.**", ""]
    md += [f"GEMM FLOPs per step (minimum a LoRA step needs): {payload['flops']['step'] / 1e9:.1f} GFLOP; "
           f"forward only {payload['flops']['forward'] / 1e9:.1f} GFLOP.", ""]
    md += [f"- {line}" for line in target_lines(payload)] + ["", "## Training step", ""]
    cols = [("dropout", "lora_dropout"), ("peftc_median_s", "peftc s"), ("torch_median_s", "torch s"),
            ("peftc_tokens_per_s_median", "peftc tok/s"), ("torch_tokens_per_s_median", "torch tok/s"),
            ("ratio_median", "peftc/torch tok/s"), ("ratio_min", "same, minima"),
            ("peftc_gemm_gflops_median", "peftc GEMM GFLOP/s"), ("sgemm_gflops_best", "sgemm GFLOP/s (best)"),
            ("roofline_fraction_median", "roofline fraction"), ("roofline_fraction_min", "same, minima")]
    md.append(common.markdown_table([c[1] for c in cols], [[r[c[0]] for c in cols] for r in payload["train"]]))
    if payload.get("rss"):
        md += ["", "## Peak RSS (each side alone in a subprocess: model, batch, optimizer, "
               f"{payload['rss_steps']} steps)", ""]
        md.append(common.markdown_table(
            ["lora_dropout", "peftc peak MB", "torch peak MB", "peftc/torch", "peftc after setup MB",
             "torch after setup MB", "step working set peftc/torch"],
            [[r["dropout"], r["peftc"]["peak_rss_mb"], r["torch"]["peak_rss_mb"], r["peak_rss_ratio"],
              r["peftc"]["rss_after_setup_mb"], r["torch"]["rss_after_setup_mb"], r["step_memory_ratio"]]
             for r in payload["rss"]]))
    inf = payload["inference"]
    md += ["", "## Inference (peftc, eval mode, forward only)", ""]
    md.append(common.markdown_table(
        ["", "base s", "merged s", "unmerged s", "merged/base", "unmerged/base"],
        [[tag, inf[f"base_{tag}_s"], inf[f"merged_{tag}_s"], inf[f"unmerged_{tag}_s"], inf[f"merged_over_base_{tag}"],
          inf[f"unmerged_over_base_{tag}"]] for tag in ("median", "min")]))
    common.write_results(name, payload, "\n".join(md))


def main() -> None:
    args = parse_args()
    if args.render:
        write(common.read_results(args.name), args.name)
        return
    common.configure_threads(args.threads)
    if args.rss_child:
        rss_child(args)
        return
    import numpy as np
    import torch

    from bench_lora_layer import SquareSgemm
    from peftc import functional as F

    common.configure_torch_threads(torch, args.threads)
    env = common.environment(torch)
    print(f"OpenBLAS core {env['openblas']['corename']}, threads {env['openblas']['num_threads']}, "
          f"torch threads {env['torch_threads']}, load {env['load_average_at_start'][0]:.1f}", flush=True)
    from peftc.models import BertConfig, minilm_path

    cfg = vars(BertConfig.from_json(os.path.join(minilm_path(), "config.json")))
    flops = gemm_flops(cfg)
    batch = make_batch(np)
    square = SquareSgemm(np, F)
    dropouts = DROPOUTS[:1] if args.quick else DROPOUTS
    train = []
    for p in dropouts:
        row = train_row(np, torch, batch, p, square, flops, args.repeats)
        print(f"train p={p}: peftc {row['peftc_median_s']:.3f} s, torch {row['torch_median_s']:.3f} s, "
              f"ratio {row['ratio_median']:.2f} (min {row['ratio_min']:.2f}), roofline "
              f"{100 * row['roofline_fraction_median']:.0f}% (min {100 * row['roofline_fraction_min']:.0f}%), "
              f"sgemm {row['sgemm_gflops_best']:.0f} GFLOP/s (best), {row['sgemm_gflops_median']:.0f} (median)",
              flush=True)
        train.append(row)
    inference = inference_row(np, batch, args.repeats)
    print(f"inference: base {inference['base_median_s']:.3f} s, "
          f"merged/base {inference['merged_over_base_median']:.3f}, "
          f"unmerged/base {inference['unmerged_over_base_median']:.3f}", flush=True)
    payload = {"benchmark": NAME, "batch": BATCH, "seq": SEQ, "r": RANK, "lora_alpha": ALPHA,
               "num_labels": NUM_LABELS, "threads": args.threads, "repeats": args.repeats, "target": TARGET,
               "flops": flops, "environment": env, "train": train, "inference": inference,
               "attn_implementation": "transformers default", "rss_steps": args.rss_steps,
               "command": " ".join(["python", "benchmarks/bench_train_step.py", *sys.argv[1:]])}
    if not args.quick:
        payload["rss"] = rss_rows(args, dropouts)
    payload["load_average_at_end"] = os.getloadavg()
    print("\n".join(target_lines(payload)))
    if not args.quick:
        write(payload, args.name)


if __name__ == "__main__":
    main()
