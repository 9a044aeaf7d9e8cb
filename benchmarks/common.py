"""Shared helpers for peftc's benchmarks: thread setup, timing, machine sgemm speed, results files.

Call :func:`configure_threads` before NumPy, peftc or torch is imported: OpenBLAS reads
``OPENBLAS_NUM_THREADS`` once, when the library is loaded. NumPy and peftc are therefore imported
lazily inside the functions below.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

RESULTS_DIR = Path(__file__).resolve().parent / "results"
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def configure_threads(threads: int) -> None:
    """Give OpenBLAS, OpenMP and MKL ``threads`` threads; must run before NumPy is imported."""
    loaded = [m for m in ("numpy", "peftc", "torch") if m in sys.modules]
    if loaded:
        raise RuntimeError(f"configure_threads must run before importing {', '.join(loaded)}")
    for var in THREAD_VARS:
        os.environ[var] = str(threads)


def configure_torch_threads(torch: Any, threads: int) -> None:
    """Give torch the same thread count as OpenBLAS (intra-op) and one inter-op thread."""
    torch.set_num_threads(threads)


def settle(seconds: float = 0.2) -> None:
    """Sleep so that idle worker threads of the previous library stop spinning on the cores.

    OpenBLAS workers busy-wait for about 2^28 cycles after each call and OpenMP workers spin after
    a torch op; timing one side while the other side's threads still spin would charge it for them.
    """
    time.sleep(seconds)


def _stats(times: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}


def time_median(fn: Callable[[], Any], repeats: int = 7, warmup: int = 2) -> dict[str, Any]:
    """Settle, run ``fn`` ``warmup`` times untimed, then ``repeats`` timed runs; seconds."""
    if repeats < 5:
        raise ValueError(f"need at least 5 repeats for a median, got {repeats}")
    settle()
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return _stats(times)


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int = 7, warmup: int = 2) -> dict[str, Any]:
    """Time several functions in alternation: per repeat each one settles, runs once untimed, once timed.

    Alternating puts both sides of a comparison under the same machine conditions (frequency, other
    load); the untimed run before each timed one rewarms caches and wakes the library's threads.
    """
    if repeats < 5:
        raise ValueError(f"need at least 5 repeats for a median, got {repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            settle()
            fn()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: _stats(t) for name, t in times.items()}


def peft_to_peftc_name(torch_name: str) -> str:
    """A PEFT parameter name as peftc names it: ...query.lora_A.default.weight -> ...query.lora_A; the head's
    (modules_to_save) names alike.

    >>> peft_to_peftc_name("base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.default.weight")
    'base_model.model.bert.encoder.layer.0.attention.self.query.lora_A'
    """
    name = torch_name.replace(".default", "")
    return name.rsplit(".weight", 1)[0] if ".lora_" in name else name


def torch_lora_classifier(torch: Any, num_labels: int, r: int, lora_alpha: float, lora_dropout: float,
                          target_modules: list[str], copy_from: Any = None) -> Any:
    """The torch twin of the benchmarks' peftc MiniLM classifier: transformers' BertModel (all-MiniLM-L6-v2, no
    pooler), mean pooling over the attention mask, a linear head of ``num_labels``, PEFT LoRA on
    ``target_modules`` with the head as modules_to_save. With ``copy_from`` (a peftc PeftModel of the same
    recipe) its LoRA factors and head are copied in, so both sides start from the same weights.

    >>> model = torch_lora_classifier(torch, 41, 8, 16.0, 0.1, ["query", "value"])  # doctest: +SKIP
    >>> model(input_ids, attention_mask).shape  # doctest: +SKIP
    torch.Size([32, 41])
    """
    import peft
    import transformers

    from peftc.models import minilm_path

    transformers.logging.set_verbosity_error()  # the checkpoint's unused pooler is reported otherwise
    transformers.logging.disable_progress_bar()

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = transformers.AutoModel.from_pretrained(minilm_path(), add_pooling_layer=False)
            self.classifier = torch.nn.Linear(self.bert.config.hidden_size, num_labels)

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask[..., None].to(hidden.dtype)
            return self.classifier((hidden * m).sum(1) / m.sum(1))

    model = peft.get_peft_model(Classifier(), peft.LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                                              target_modules=target_modules,
                                                              modules_to_save=["classifier"]))
    if copy_from is not None:
        ours = {k: v.data for k, v in copy_from.named_trainable_parameters()}
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad:
                    param.copy_(torch.from_numpy(ours[peft_to_peftc_name(name)]))
    return model


def measure_sgemm(repeats: int = 7) -> dict[str, Any]:
    """The machine's float32 GEMM speed through peftc's own linear_forward, in GFLOP/s.

    Shapes: (M, N, K) = (4096, 384, 384), a transformer-layer-sized product, and 2048^3, a large
    square one. ``reference_gflops`` is the better of the two and is what the benchmarks divide by.
    """
    import numpy as np

    from peftc import functional as F

    rng = np.random.default_rng(0)
    shapes = {"4096x384x384": (4096, 384, 384), "2048x2048x2048": (2048, 2048, 2048)}
    out: dict[str, Any] = {}
    for name, (m, n, k) in shapes.items():
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((n, k), dtype=np.float32)
        y = np.empty((m, n), dtype=np.float32)
        t = time_median(lambda: F.linear_forward(x, w, None, out=y), repeats=repeats)
        out[name] = {"median_s": t["median_s"], "gflops": 2.0 * m * n * k / t["median_s"] / 1e9}
    out["reference_gflops"] = max(v["gflops"] for v in out.values() if isinstance(v, dict))
    return out


def openblas_info() -> dict[str, Any]:
    """Build (scipy-openblas32 wheel or system), library, core name, configuration, thread count and thread
    timeout of the OpenBLAS peftc runs on (peftc.openblas.openblas_info)."""
    from peftc.openblas import openblas_info as peftc_openblas_info

    return peftc_openblas_info()


def environment(torch: Any | None = None) -> dict[str, Any]:
    """What a reader needs to reproduce a number: CPU, BLAS core, threads, relevant variables."""
    import numpy as np

    from peftc.machine import cpu_model

    env = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "openblas": openblas_info(),
        "variables": {v: os.environ.get(v) for v in (*THREAD_VARS, "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                     "OPENBLAS_THREAD_TIMEOUT")},
        "load_average_at_start": os.getloadavg(),
    }
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    return env


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats are printed with 3 significant decimals."""
    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write results/<name>.json and results/<name>.md, each through a temporary file and a rename."""
    from peftc.io.atomic import write_bytes_atomic  # imported late: threads are configured before numpy loads

    json_path, md_path = RESULTS_DIR / f"{name}.json", RESULTS_DIR / f"{name}.md"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(json_path, (results_json(payload) + "\n").encode())
    write_bytes_atomic(md_path, markdown.encode())
    print(f"wrote {json_path}, {md_path}")
    return json_path, md_path


def results_json(value: Any, indent: int = 0) -> str:
    """JSON text of a results payload: objects, and lists that hold objects or lists, one item a line,
    indented by two; a list of plain values (per-example predictions, per-seed scores) on one line, so
    that long lists do not make the file long. ``json.loads`` gives back the same payload."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k))}: {results_json(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in value):
        items = [f"{inner}{results_json(v, indent + 2)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value, separators=(", ", ": "))


def read_results(name: str) -> dict[str, Any]:
    """The payload of results/<name>.json (for re-rendering its markdown)."""
    return json.loads((RESULTS_DIR / f"{name}.json").read_text())


def check_seed_parts(settings: list[dict[str, Any]], names: list[Any], ignore: set[str]) -> None:
    """Raise ValueError unless every results file's settings equal the first one's outside ``ignore``:
    only then are the files seeds of one configuration that ``--merge`` may combine."""
    first = settings[0]
    for other, name in zip(settings[1:], names[1:]):
        differ = sorted(k for k in first if k not in ignore and first[k] != other.get(k))
        if differ:
            raise ValueError(f"{name}: settings {differ} differ from {names[0]}; only seeds may differ")


def check_selection_settings(run: dict[str, Any], made_with: dict[str, Any], name: Any, ignore: set[str]) -> None:
    """Raise ValueError unless the settings ``made_with`` of the selection file ``name`` equal this run's
    settings ``run`` outside ``ignore`` (a key missing on one side differs): a selection chosen from another
    grid, schedule or data size is never reused silently.

    >>> check_selection_settings({"lr_grid": [1e-3], "seeds": [1]}, {"lr_grid": [1e-3], "seeds": [0]}, "s", {"seeds"})
    >>> check_selection_settings({"lr_grid": [1e-3, 1e-2]}, {"lr_grid": [1e-3]}, "s", set())
    Traceback (most recent call last):
    ...
    ValueError: --selection s was made with other settings: lr_grid (this run [0.001, 0.01], the file [0.001]); \
run --select-only with this run's settings into a new --out
    """
    differ = sorted(k for k in set(run) | set(made_with) if k not in ignore and run.get(k) != made_with.get(k))
    if differ:
        detail = ", ".join(f"{k} (this run {run.get(k)!r}, the file {made_with.get(k)!r})" for k in differ)
        raise ValueError(f"--selection {name} was made with other settings: {detail}; "
                         "run --select-only with this run's settings into a new --out")


def merge_seed_parts(stems: list[str]) -> dict[str, Any]:
    """The payload of per-seed results files ``stems`` of one configuration combined: the first file's keys,
    its settings with every seed, the merged command, the summed seconds, ``per_seed`` of all files in seed
    order and (when the files record one) the parts' ``cpu`` (:func:`merged_cpu`). Raises ValueError when the
    settings differ outside the seeds or a seed appears twice."""
    parts = [read_results(stem) for stem in stems]
    check_seed_parts([p["settings"] for p in parts], stems, {"seeds"})
    per_seed: dict[str, Any] = {}
    for stem, part in zip(stems, parts):
        clash = set(per_seed) & set(part["per_seed"])
        if clash:
            raise ValueError(f"{stem}: seeds {sorted(clash)} appear in more than one file")
        per_seed.update(part["per_seed"])
    per_seed = dict(sorted(per_seed.items(), key=lambda kv: int(kv[0])))
    merged = dict(parts[0], settings={**parts[0]["settings"], "seeds": [int(k) for k in per_seed]},
                  command=merged_command([p["command"] for p in parts], stems),
                  seconds=sum(p["seconds"] for p in parts), per_seed=per_seed)
    if "cpu" in parts[0]:
        merged["cpu"] = merged_cpu([p.get("cpu") for p in parts])
    return merged


def merged_cpu(cpus: list[Any]) -> str:
    """The CPU recorded for results combined from parts that ran on ``cpus``: each distinct CPU once, in the
    order the parts give them, joined with " + " (a missing one is "not recorded").

    >>> merged_cpu(["AMD EPYC (family 25, model 1)", None, "AMD EPYC (family 25, model 1)"])
    'AMD EPYC (family 25, model 1) + not recorded'
    """
    return " + ".join(dict.fromkeys(str(c) if c else "not recorded" for c in cpus))


def merged_command(commands: list[str], names: list[Any]) -> str:
    """The command line recorded for results combined with ``--merge names``."""
    return " + ".join(commands) + f"; merged with --merge {' '.join(map(str, names))}"


def add_scheduler_argument(parser: Any) -> None:
    """``--scheduler ADDRESS|local``: run the seeds as Dask tasks (peftc.distributed.run_sweep) instead of one
    after the other in this process."""
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS|local",
                        help="run the seeds on Dask: 'local' starts a LocalCluster of one-thread workers on this "
                             "machine, an address (tcp://host:8786) uses that scheduler's workers; each seed is "
                             "one task and the results land in one file (no --merge needed)")


def sweep_seeds(task: Callable[[dict], Any], seeds: list[int], scheduler: str, modules: tuple[str, ...] = (),
                timeout: float | None = None) -> dict[int, Any]:
    """``{seed: task({"seed": seed})}`` for every seed, each seed one Dask task (peftc.distributed.run_sweep).

    ``scheduler``: "local" starts a LocalCluster of one-thread workers, one per core (at most one per seed);
    anything else is a scheduler address, whose workers need peftc installed: the benchmark modules named in
    ``modules`` (and this one) are uploaded to them. Raises the first failed seed's error, naming it, after
    all seeds have run.
    """
    from distributed import Client

    from peftc.distributed import local_cluster, run_sweep

    configs = [{"seed": int(s)} for s in seeds]
    if scheduler == "local":
        cluster = local_cluster(n_workers=max(1, min(len(seeds), os.cpu_count() or 1)), threads_per_worker=1)
        client = Client(cluster)
    else:
        cluster, client = None, Client(scheduler)
        for name in ("common", *modules):
            client.upload_file(str(Path(__file__).resolve().parent / f"{name}.py"))
    try:
        results = run_sweep(task, configs, client, timeout=timeout)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(results)} seeds failed; first: {failed[0].error}\n"
                           f"{failed[0].traceback or ''}")
    return {r.config["seed"]: r.value for r in results}


def add_seed_protocol_arguments(parser: Any, out: str) -> None:
    """The arguments of a benchmark run split into a validation selection, one process per seed and a merge:
    ``--select-only``, ``--selection JSON``, ``--reduced``, ``--out STEM`` (default ``out``), ``--merge STEM ...``
    and ``--scheduler`` (:func:`add_scheduler_argument`).

    >>> import argparse
    >>> p = argparse.ArgumentParser(); add_seed_protocol_arguments(p, "results/x")
    >>> a = p.parse_args(["--selection", "s.json", "--reduced"]); (a.selection, a.reduced, a.out, a.merge)
    ('s.json', True, 'results/x', None)
    """
    parser.add_argument("--select-only", action="store_true", help="run the validation selection, write it, stop")
    parser.add_argument("--selection", default=None, metavar="JSON", help="reuse the selection stored in this file")
    parser.add_argument("--reduced", action="store_true", help="label the results as a reduced run")
    parser.add_argument("--out", default=out, help="output path stem (.json and .md)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="STEM",
                        help="combine these results files (same settings, other seeds) into --out, then stop")
    add_scheduler_argument(parser)
