"""A sweep of 8 LoRA runs of the main job's shape, serially on 2 BLAS threads vs on a 2-worker Dask cluster.

Each run is the main job's LoRA (``python -m peftc.demo``: all-MiniLM-L6-v2, mean pooling and a 41-way head,
LoRA r=8 alpha 16 dropout 0.1 on query and value plus the head, AdamW, batch 32, max_length 64, WordNet
supersense glosses, at most 250 per class), shortened to ``--steps`` optimizer steps; the 8 configs are 4
seeds x 2 learning rates. The same configs run through :func:`peftc.distributed.run_sweep` twice:

- serial: ``client=None`` in this process, OpenBLAS on 2 threads;
- cluster: a LocalCluster of 2 worker processes with 1 thread each (BLAS held at 1 by the worker plugin).

Each process (this one, each worker) reads MiniLM and tokenises the data once, on its first run, as a user's
sweep would. Reported: ``serial_s`` and ``cluster_s`` (wall time of the sweep, the cluster already started;
its start-up is ``cluster_start_s``), ``speedup`` = serial_s / cluster_s, and ``overhead_per_task_s``: worker
time not spent inside a run, (cluster_s x workers - sum of the runs' own times) / runs, which holds
scheduling, transfers and a worker idle at the end. With ``--repeats`` > 1 the two sweeps alternate and the
medians are reported. Both sides' results are compared (same losses and adapters bit for bit or not: the
BLAS thread counts differ).

Run: PYTHONPATH=. python benchmarks/bench_sweep.py [--steps 30] [--repeats 3]; ``--quick`` (4 runs of 2
steps on 5 glosses per class, one repeat) checks the code and writes bench_sweep_quick.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "bench_sweep"


@dataclass(frozen=True)
class Run:
    """One config of the sweep."""
    seed: int
    learning_rate: float
    steps: int
    train_per_class: int
    batch_size: int = 32
    max_length: int = 64


_data: dict = {}


def training_data(train_per_class: int, max_length: int) -> dict:
    """The main job's training glosses (its seed-0 split), tokenised once per process."""
    key = (train_per_class, max_length)
    if key not in _data:
        from peftc.data import wordnet_job as job
        from peftc.models import Tokenizer, minilm_path

        s = job.JobSettings(train_per_class=train_per_class, max_length=max_length)
        train, _, _ = job.load_splits(s)
        _data[key] = (job.tokenize(Tokenizer(minilm_path(), max_length=max_length), train), train.num_classes)
    return _data[key]


def train_run(run: Run) -> dict:
    """One LoRA run (the sweep's train_fn): loss curve, the trained adapter and head, and its own time."""
    from peftc.distributed import base_model, blas_threads
    from peftc.models import minilm_path
    from peftc.models.classifier import SentenceClassifier
    from peftc.random import Generator
    from peftc.train import Trainer, TrainingConfig
    from peftc.tuners import LoraConfig, get_peft_model

    t0 = time.perf_counter()
    data, num_classes = training_data(run.train_per_class, run.max_length)
    base = SentenceClassifier(base_model(minilm_path(), run.seed), num_classes, generator=Generator(run.seed + 1))
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "value"],
                        modules_to_save=["classifier"])
    model = get_peft_model(base, config, generator=Generator(run.seed + 2))
    cfg = TrainingConfig(learning_rate=run.learning_rate, batch_size=run.batch_size, max_steps=run.steps,
                         warmup_ratio=0.06, weight_decay=0.01, max_grad_norm=1.0, seed=run.seed, progress=False,
                         log_every=1)
    t1 = time.perf_counter()
    history = Trainer(model, cfg, data).train()
    t2 = time.perf_counter()
    return {"losses": [h["loss"] for h in history if "loss" in h],
            "state": {n: p.data.copy() for n, p in model.named_parameters() if p.requires_grad},
            "task_s": t2 - t0, "setup_s": t1 - t0, "train_s": t2 - t1, "pid": os.getpid(),
            "blas_threads": blas_threads()}


def configs(runs: int, steps: int, train_per_class: int) -> list[Run]:
    rates = (1e-3, 3e-3)
    return [Run(seed=i // 2, learning_rate=rates[i % 2], steps=steps, train_per_class=train_per_class)
            for i in range(runs)]


def same_results(a: list, b: list) -> bool:
    import numpy as np

    return all(x.value["losses"] == y.value["losses"]
               and all(np.array_equal(x.value["state"][k], y.value["state"][k]) for k in x.value["state"])
               for x, y in zip(a, b))


def markdown(p: dict) -> str:
    rows = [["serial, 1 process, 2 BLAS threads", p["serial_s"], p["serial_task_s_mean"], "-"],
            [f"Dask LocalCluster, {p['workers']} workers x 1 thread", p["cluster_s"], p["cluster_task_s_mean"],
             p["overhead_per_task_s"]]]
    title = "# Sweep of LoRA runs: serial vs a 2-worker Dask cluster" + (
        " (REDUCED: a tiny configuration that checks the code, not a result)" if p["settings"]["quick"] else "")
    return "\n".join([
        title, "",
        f"{p['settings']['runs']} runs of the main job's LoRA (MiniLM, r=8 on query and value + head, batch 32), "
        f"{p['settings']['steps']} steps each, at most {p['settings']['train_per_class']} glosses per class; "
        f"median of {p['settings']['repeats']} alternating repeat(s). CPU: {p['cpu']}.", "",
        common.markdown_table(["side", "sweep s", "mean run s", "overhead per task s"], rows),
        f"Speed-up of the cluster: **{p['speedup']:.2f}x** (serial_s / cluster_s); cluster start-up "
        f"{p['cluster_start_s']:.1f} s, not included. Results identical bit for bit: {p['identical_results']}.", "",
        f"Command: `{p['command']}`", ""])


def sweep_verdicts(serial_s: list[float], cluster_s: list[float]) -> dict[str, Any]:
    """The claim "the cluster sweep takes less time than the serial one" over the alternated repeats (paired
    t, Holm: peftc.evaluation), when there are the 5 repeats a verdict needs; otherwise an empty list and why."""
    from peftc.evaluation import Claim, verdicts

    if len(serial_s) < 5:
        return {"verdicts": [], "verdicts_note": f"no claim tested: {len(serial_s)} repeat(s); a verdict needs 5"}
    return {"verdicts": verdicts([Claim("the cluster sweep takes less time than the serial sweep (seconds)",
                                        cluster_s, serial_s, expected="less")])}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--train-per-class", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds for one sweep on the cluster")
    ap.add_argument("--quick", action="store_true", help="4 runs of 2 steps on 5 glosses per class, one repeat")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.steps, args.train_per_class, args.repeats = 4, 2, 5, 1
    common.configure_threads(2)  # this process: the serial side; the workers get their own (1 thread each)

    from distributed import Client

    import bench_sweep as this  # the run function by module reference: the workers import it
    from peftc.distributed import local_cluster, run_sweep

    runs = configs(args.runs, args.steps, args.train_per_class)
    t0 = time.perf_counter()
    cluster = local_cluster(n_workers=args.workers, threads_per_worker=1)
    client = Client(cluster)
    client.wait_for_workers(args.workers, timeout=120)
    cluster_start = time.perf_counter() - t0
    serial_s, cluster_s, serial, parallel = [], [], [], []
    try:
        for _ in range(args.repeats):
            common.settle()
            t = time.perf_counter()
            serial = run_sweep(this.train_run, runs, progress=False)
            serial_s.append(time.perf_counter() - t)
            common.settle()
            t = time.perf_counter()
            parallel = run_sweep(this.train_run, runs, client, timeout=args.timeout, progress=False)
            cluster_s.append(time.perf_counter() - t)
            print(f"serial {serial_s[-1]:.1f} s, cluster {cluster_s[-1]:.1f} s")
    finally:
        client.close()
        cluster.close()
    for r in serial + parallel:
        r.unwrap()
    s_med, c_med = statistics.median(serial_s), statistics.median(cluster_s)
    task_s = [r.value["task_s"] for r in parallel]
    env = common.environment()
    payload = {
        "settings": {**vars(args), "run": asdict(runs[0])}, "cpu": env["cpu"], "environment": env,
        "workers": args.workers, "serial_s": s_med, "cluster_s": c_med, "speedup": s_med / c_med,
        "serial_s_all": serial_s, "cluster_s_all": cluster_s, "cluster_start_s": cluster_start,
        "overhead_per_task_s": (c_med * args.workers - sum(task_s)) / len(runs),
        "serial_task_s_mean": statistics.mean(r.value["task_s"] for r in serial),
        "cluster_task_s_mean": statistics.mean(task_s),
        "blas_threads": {"serial": sorted({r.value["blas_threads"] for r in serial}),
                         "cluster": sorted({r.value["blas_threads"] for r in parallel})},
        "identical_results": same_results(serial, parallel),
        **sweep_verdicts(serial_s, cluster_s),
        "runs": [{"config": asdict(a.config), "serial": {k: a.value[k] for k in ("task_s", "setup_s", "train_s")},
                  "cluster": {k: b.value[k] for k in ("task_s", "setup_s", "train_s", "pid")},
                  "final_loss": a.value["losses"][-1]} for a, b in zip(serial, parallel)],
        "command": "PYTHONPATH=. python benchmarks/bench_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    out = args.out or (NAME + ("_quick" if args.quick else ""))
    common.write_results(out, payload, markdown(payload))
    print(markdown(payload))
    return payload


if __name__ == "__main__":
    main()
