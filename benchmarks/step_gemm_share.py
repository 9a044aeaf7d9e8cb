"""The share of the main job's LoRA training step that is not matrix products, in instructions (callgrind).

The step is ``python -m peftc.demo``'s: all-MiniLM-L6-v2, LoRA r=8 on query and value (alpha 16, dropout 0.1)
plus the head, AdamW with clipping, on the job's own batches (WordNet glosses, batch 32, the job's tokenizer and
truncation, padded to the longest gloss of each batch), in the order its Trainer draws them. A child process runs
``--warmup`` steps and then ``--steps`` more under valgrind's callgrind, which counts the instructions each
function executes; a dump is taken as the measured steps begin and end (valgrind's ``--dump-before`` on the
extension's ``sample_tokens`` entry, which a training step never calls: the child calls it without arguments,
which enters the C function and raises), so the counts cover the measured steps only. Instruction counts do not depend on what else the machine runs, so this works on a loaded
machine; they weigh a vectorised multiply-add like a Python bytecode, so they are a measure of work, not of time.

GEMM = everything under the BLAS ``cblas_sgemm`` (packing included) plus peftc's own register-blocked products
(``peftc_small_gemm_*``: attention's per-head products). Everything else (the Python layer, NumPy,
element-wise kernels, softmax, allocation, zero-filling, thread hand-offs, the optimizer) is "not GEMM".
Not counted: time in the kernel (page faults on fresh allocations) and waiting. One BLAS thread, so that the
counts are a property of the step rather than of thread scheduling.

    PYTHONPATH=. python benchmarks/step_gemm_share.py [--steps 3] [--warmup 1] [--peftc CHECKOUT] [--out FILE]

``--peftc`` runs the step on another checkout (with its extension built in place), for a before/after pair.
The step runs about 50 times slower under valgrind, and far slower on a busy machine (at load 10 on 2 cores a
run had not reached its first measured step after 50 minutes): there, use ``--cpu``.

``--cpu`` measures in CPU time instead, at full speed and without valgrind: the extension's GEMM accounting
(``_C.sgemm_profile``: the calling thread's CPU time inside each cblas_sgemm) against the main thread's CPU time
over the step (``time.thread_time``), median over ``--steps`` steps (at least 5). CPU time, unlike wall time, does
not count the time other processes hold the cores, but it does grow with their cache and memory traffic, so on a
loaded machine take it as a second opinion; it counts what callgrind cannot see (page faults of fresh buffers,
kernel time) and weighs instructions by what they cost. Here attention's own products count as not GEMM.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "py_sample_tokens"  # the extension's C entry point the measured region is cut at (see mark())
BLAS_GEMM = re.compile(r"^(scipy_)?cblas_sgemm$")
OWN_GEMM = re.compile(r"^peftc_small_gemm_")


# -- the child: the main job's model and batches, steps between two markers -----------------------------
def mark() -> int:
    """Enter the marker function (callgrind dumps there) and return the count of products peftc_sgemm ran on one
    thread so far (0 for a checkout that predates the count)."""
    from peftc import _C

    try:
        _C.sample_tokens()  # no arguments: enters py_sample_tokens, which raises
    except TypeError:
        pass
    count = getattr(_C, "sgemm_single_thread_count", None)
    return int(count()) if count else 0


def child(batches_file: str, warmup: int, steps: int, cpu: bool = False) -> None:
    import numpy as np

    from peftc import _C
    from peftc.data import wordnet_job as job
    from peftc.models import BertModel, minilm_path
    from peftc.models.classifier import SentenceClassifier
    from peftc.random import Generator
    from peftc.train import Trainer, TrainingConfig
    from peftc.tuners import LoraConfig, get_peft_model

    s = job.JobSettings(progress=False)
    saved = np.load(batches_file)
    batches = [{k: saved[f"{k}{i}"] for k in ("input_ids", "attention_mask", "labels")}
               for i in range(warmup + steps)]
    num_classes = int(saved["num_classes"])
    # the model and recipe of peftc.demo.run's LoRA part
    base = SentenceClassifier(BertModel.from_pretrained(minilm_path(), seed=s.seed), num_classes,
                              generator=Generator(s.seed + 1))
    config = LoraConfig(r=s.r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                        target_modules=["query", "value"], modules_to_save=["classifier"])
    model = get_peft_model(base, config, generator=Generator(s.seed + 2))
    cfg = TrainingConfig(learning_rate=s.learning_rate, batch_size=s.batch_size, num_epochs=s.epochs,
                         warmup_ratio=0.06, weight_decay=0.01, max_grad_norm=1.0, seed=s.seed, progress=False)
    trainer = Trainer(model, cfg, batches[0])
    for batch in batches[:warmup]:
        trainer.training_step(batch)
    first = mark()  # dump: everything so far
    losses, cpu_steps = [], []
    for batch in batches[warmup:]:
        if cpu:
            _C.sgemm_profile(True)
            t0 = time.thread_time_ns()
        losses.append(float(trainer.training_step(batch)[0]))
        if cpu:
            step_ns = time.thread_time_ns() - t0
            calls, flops, gemm_ns = _C.sgemm_profile_read()
            _C.sgemm_profile(False)
            cpu_steps.append({"step_ns": step_ns, "gemm_ns": gemm_ns, "sgemm_calls": calls, "gemm_flops": flops})
    last = mark()  # dump: the measured steps
    print(json.dumps({"losses": losses, "single_thread_products": last - first, "cpu_steps": cpu_steps,
                      "tokens": [int(b["attention_mask"].sum()) for b in batches[warmup:]],
                      "shapes": [list(b["input_ids"].shape) for b in batches[warmup:]]}))


# -- the parent: batches, valgrind, the profile -------------------------------------------------------
def write_batches(path: str, count: int) -> None:
    """The first ``count`` training batches of the main job, as its Trainer draws them (epoch 0)."""
    import numpy as np

    from peftc.data import wordnet_job as job
    from peftc.data.batching import BatchSampler, take
    from peftc.models import Tokenizer, minilm_path
    from peftc.models.classifier import trim_padding
    from peftc.train import TrainingConfig

    s = job.JobSettings(progress=False)
    train, _, _ = job.load_splits(s)
    data = job.tokenize(Tokenizer(minilm_path(), max_length=s.max_length), train)
    sampler = BatchSampler(len(train), s.batch_size, s.seed, shuffle=True, drop_last=TrainingConfig().drop_last)
    arrays = {"num_classes": np.array(train.num_classes)}
    for i, rows in zip(range(count), sampler.batches(0)):
        batch = take(data, rows)
        ids, mask = trim_padding(batch["input_ids"], batch["attention_mask"])
        arrays.update({f"input_ids{i}": ids, f"attention_mask{i}": mask, f"labels{i}": batch["labels"]})
    np.savez(path, **arrays)


def parse_callgrind(path: Path) -> tuple[dict[tuple[str, str], int], dict[str, int], dict[str, int]]:
    """({(object, function): exclusive Ir}, {function: inclusive Ir}, {function: calls}) of one callgrind file
    (one event, Ir; name compression as callgrind writes it). Inclusive = own cost plus the cost of the calls it
    makes, which is right for the functions asked about here (none of them recursive)."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}}
    own: dict[tuple[str, str], int] = defaultdict(int)
    inclusive: dict[str, int] = defaultdict(int)
    calls: dict[str, int] = defaultdict(int)
    ob = fn = callee = ""
    pending_call = False
    define = re.compile(r"^(c?)(ob|fn)=\((\d+)\)(?: (.*))?$")
    with open(path, encoding="utf8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = define.match(line)
            if m:
                called, kind, ident, name = m.groups()
                if name is not None:
                    names[kind][ident] = name
                value = names[kind].get(ident, ident)
                if kind == "fn":
                    if called:
                        callee = value
                    else:
                        fn = value
                elif not called:
                    ob = value
                continue
            if line.startswith("calls="):
                calls[callee] += int(line.split("=")[1].split()[0])
                pending_call = True
                continue
            if line and (line[0].isdigit() or line[0] in "+-*"):
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if pending_call:
                    inclusive[fn] += cost  # a call's cost line: counted in the caller's inclusive cost only
                    pending_call = False
                else:
                    own[(ob, fn)] += cost
                    inclusive[fn] += cost
    return own, inclusive, calls


def profile(dump: Path, steps: int) -> dict:
    own, inclusive, calls = parse_callgrind(dump)
    total = sum(own.values())
    blas = sum(v for f, v in inclusive.items() if BLAS_GEMM.match(f))
    mine = sum(v for f, v in inclusive.items() if OWN_GEMM.match(f))
    gemm_fns = {f for f in inclusive if BLAS_GEMM.match(f) or OWN_GEMM.match(f)}
    # the not-GEMM part by function: own costs of functions not reached from a GEMM. A function reached from
    # both (memcpy, say) is counted whole here, so this table is a guide, the share above is exact.
    under_gemm = {fn for (_, fn) in own if fn.startswith(("scipy_", "sgemm", "dgemm")) or fn in gemm_fns}
    rest = sorted(((v, ob, fn) for (ob, fn), v in own.items() if fn not in under_gemm), reverse=True)
    by_object: dict[str, int] = defaultdict(int)
    for v, ob, _ in rest:
        by_object[Path(ob).name] += v
    return {"ir_per_step": total / steps, "gemm_blas_ir_per_step": blas / steps,
            "gemm_own_ir_per_step": mine / steps, "non_gemm_share": 1.0 - (blas + mine) / total,
            "sgemm_calls_per_step": sum(v for f, v in calls.items() if BLAS_GEMM.match(f)) / steps,
            "top_non_gemm": [{"function": fn, "object": Path(ob).name, "ir_per_step": v / steps,
                              "share_of_step": v / total} for v, ob, fn in rest[:25]],
            "non_gemm_by_object": {k: v / steps for k, v in sorted(by_object.items(), key=lambda kv: -kv[1])}}


def run(args: argparse.Namespace) -> dict:
    checkout = Path(args.peftc).resolve()
    work = Path(tempfile.mkdtemp(prefix="step_gemm_share."))
    try:
        batches = work / "batches.npz"
        write_batches(str(batches), args.warmup + args.steps)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(PYTHONPATH=str(checkout), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
        out = work / "callgrind.out"
        step = [sys.executable, str(Path(__file__).resolve()), "--child", str(batches), "--warmup", str(args.warmup),
                "--steps", str(args.steps)]
        cmd = step + ["--cpu"] if args.cpu else ["valgrind", "--tool=callgrind", f"--dump-before={MARKER}",
                                                 f"--callgrind-out-file={out}", *step]
        done = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        if args.cpu:
            return {"peftc": str(checkout), "steps": args.steps, "warmup": args.warmup,
                    "child": json.loads(done.stdout.strip().splitlines()[-1])}
        measured = out.with_name(out.name + ".2")  # dump 1: up to the first marker; dump 2: the measured steps
        if not measured.exists():
            raise RuntimeError(f"no second callgrind dump in {work}: was {MARKER} called twice?")
        result = {"peftc": str(checkout), "steps": args.steps, "warmup": args.warmup,
                  "child": json.loads(done.stdout.strip().splitlines()[-1]), **profile(measured, args.steps)}
        if args.keep:
            shutil.copy(measured, args.keep)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cpu_report(r: dict) -> str:
    rows = r["child"]["cpu_steps"]
    shares = [1.0 - x["gemm_ns"] / x["step_ns"] for x in rows]
    r["non_gemm_share_cpu"] = statistics.median(shares)
    return "\n".join([
        f"peftc from {r['peftc']}; {r['steps']} steps after {r['warmup']} warm-up; batch shapes {r['child']['shapes']}",
        "CPU s per step (this thread): " + " ".join(f"{x['step_ns'] / 1e9:.3f}" for x in rows),
        "of which in cblas_sgemm:      " + " ".join(f"{x['gemm_ns'] / 1e9:.3f}" for x in rows),
        f"NOT GEMM (CPU time, median of {len(rows)} steps): {100 * r['non_gemm_share_cpu']:.1f}% "
        f"(per step: {', '.join(f'{100 * v:.1f}' for v in shares)})"])


def report(r: dict) -> str:
    lines = [f"peftc from {r['peftc']}; {r['steps']} steps after {r['warmup']} warm-up; batch shapes "
             f"{r['child']['shapes']}, real tokens {r['child']['tokens']}",
             f"instructions per step {r['ir_per_step'] / 1e9:.3f} G: BLAS sgemm {r['gemm_blas_ir_per_step'] / 1e9:.3f} G "
             f"({r['sgemm_calls_per_step']:.0f} calls, {r['child']['single_thread_products'] / r['steps']:.0f} by the "
             f"one-thread rule), peftc's small GEMMs {r['gemm_own_ir_per_step'] / 1e9:.3f} G",
             f"NOT GEMM: {100 * r['non_gemm_share']:.1f}% of the step's instructions", "",
             "not GEMM by object (M instructions per step):"]
    lines += [f"  {v / 1e6:10.1f}  {k}" for k, v in list(r["non_gemm_by_object"].items())[:8]]
    lines += ["", "largest not-GEMM functions (M instructions per step, % of step):"]
    lines += [f"  {t['ir_per_step'] / 1e6:10.1f} {100 * t['share_of_step']:5.1f}%  {t['function']} [{t['object']}]"
              for t in r["top_non_gemm"]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="measured steps")
    ap.add_argument("--warmup", type=int, default=1, help="steps before the measured ones")
    ap.add_argument("--peftc", default=str(ROOT), help="the checkout to run peftc from (default: this one)")
    ap.add_argument("--out", help="also write the result as JSON here")
    ap.add_argument("--keep", help="copy the measured callgrind dump here (for callgrind_annotate)")
    ap.add_argument("--cpu", action="store_true", help="CPU-time shares, natively, instead of callgrind")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.warmup, args.steps, args.cpu)
        return
    if args.steps < (5 if args.cpu else 1) or args.warmup < 0:
        ap.error("--steps must be >= 1 (>= 5 with --cpu) and --warmup >= 0")
    if not args.cpu and shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    r = run(args)
    print(cpu_report(r) if args.cpu else report(r))
    if args.out:
        Path(args.out).write_text(json.dumps(r, indent=1) + "\n", encoding="utf8")


if __name__ == "__main__":
    main()
