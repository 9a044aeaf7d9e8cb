"""Four LoRA adapters trained together on one frozen MiniLM against four separate runs (issue 22, item 3).

The main job's setup (``python -m peftc.demo``): all-MiniLM-L6-v2, mean pooling, a linear head per
adapter (modules_to_save), LoRA on query and value, WordNet supersense glosses tokenized as the job does
(:mod:`peftc.data.wordnet_job`), AdamW with clipping at 1.0. Four adapters on the one base, as a user
sweeping hyperparameters would have them: ranks 8, 8, 4, 16, learning rates 1e-3, 5e-4, 2e-3, 1e-3, each
with its own seed (its data order). Dropout is off everywhere (LoRA dropout 0, the checkpoint's hidden
and attention dropouts set to 0): mixed-adapter batches train without dropout, and it lets the two sides
be checked against each other before timing.

  four_separate:  for each adapter, ``set_adapter`` and a :class:`peftc.Trainer` run of ``--steps`` steps
                  (batch ``--batch-size``): 4 x steps forwards and backwards of B rows.
  four_together:  one :class:`peftc.MultiAdapterTrainer` run of ``--steps`` steps: each step one forward and
                  one backward of the 4 batches stacked (4B rows), every frozen GEMM once over all rows and
                  the four adapters in one grouped kernel call per layer.

Both sides train on the real tokens only (BertModel packs a padded batch in training mode): a separate
run's batch of B glosses and the stacked batch of 4B cost their real tokens, not B or 4B times the longest
gloss (over an epoch of the job's batches of 32 the padded widths hold 2.8x the real tokens; the stacked
4 x 32, padded to the longest of 128, held 3.6x).

Both sides start from the same adapter weights each time and run in one process at the same thread count,
timed in alternation (common.time_interleaved), median of ``--repeats``. Before timing, one short run of
each side is compared: the adapters must end within ``CHECK_TOL`` of each other (but for
AdamW sign flips of gradients within rounding of zero: :func:`check_same_adapters`). The results file
holds "four_separate_s", "four_together_s", "ratio" (separate / together; the issue's target is >= 2),
"upper_same_inputs" (the same for the second workload), "cpu", and verdicts over the paired repeats
(peftc.evaluation: paired t, Holm): "together is faster"
and "together takes at most half the time", for each workload. The repeats are timing repetitions, not seeds.

A second workload, clearly apart ("upper_same_inputs" in the results): the four adapters on blocks 3-5 only
(``layers_to_transform``), all four on the same batches (one data seed: a hyperparameter sweep on one data
order). Separate runs: a single adapter's backward stops at the lowest block holding a trainable parameter,
so they run no backward below block 3. Together: the stacked batch's four identical copies run the
embeddings and the frozen blocks 0-2 once (:class:`peftc.models.BertModel` computes identical rows of
plain frozen blocks once), then blocks 3-5 on all rows, each copy with its adapter. The same check
(adapters of the two sides compared after a few steps) runs before timing.

Run (about 20 minutes on a quiet 2-core machine):
    python benchmarks/bench_multi_adapter.py [--threads 2] [--steps 10] [--repeats 5]
Check that it runs (tiny; writes bench_multi_adapter_quick.{json,md}, not a result):
    python benchmarks/bench_multi_adapter.py --quick
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # peftc from this checkout
import common  # noqa: E402

NAME = "bench_multi_adapter"
ADAPTERS = {"r8_lr1e-3": (8, 1e-3, 1), "r8_lr5e-4": (8, 5e-4, 2), "r4_lr2e-3": (4, 2e-3, 3),
            "r16_lr1e-3": (16, 1e-3, 4)}  # name: (rank, learning rate, seed)
TARGETS = ["query", "value"]
CHECK_TOL = 1e-4
TARGET_RATIO = 2.0
# workload name: (blocks carrying the adapters (None: all), one data seed for all adapters (None: their own))
WORKLOADS = {"all_blocks": (None, None), "upper_same_inputs": ([3, 4, 5], 1)}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per adapter")
    ap.add_argument("--batch-size", type=int, default=32, help="rows per adapter and step")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-per-class", type=int, default=50, help="WordNet glosses per class in the train split")
    ap.add_argument("--check-steps", type=int, default=2, help="steps of the correctness check before timing")
    ap.add_argument("--quick", action="store_true", help="tiny run that checks the script works; not a result")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.batch_size, args.train_per_class, args.check_steps = 1, 4, 2, 1
    return args


def load_data(train_per_class: int, seed: int = 0) -> dict[str, Any]:
    from peftc.data import wordnet_job as job
    from peftc.models import Tokenizer, minilm_path

    settings = job.JobSettings(seed=seed, train_per_class=train_per_class)
    train, _, _ = job.load_splits(settings)
    return job.tokenize(Tokenizer(minilm_path(), max_length=settings.max_length), train)


def build_model(num_classes: int, seed: int = 0, layers: list[int] | None = None):
    """MiniLM + head with the four adapters (dropout off everywhere; on ``layers`` only when given); returns
    (model, initial adapter arrays)."""
    from peftc import LoraConfig, get_peft_model
    from peftc.models import BertModel, SentenceClassifier, minilm_path
    from peftc.nn import Dropout, SelfAttention
    from peftc.random import Generator

    base = SentenceClassifier(BertModel.from_pretrained(minilm_path(), seed=seed), num_classes,
                              generator=Generator(seed))
    for _, m in base.named_modules():
        if isinstance(m, Dropout):
            m.p = 0.0
        elif isinstance(m, SelfAttention):
            m.dropout = 0.0
    model = None
    for name, (r, _, s) in ADAPTERS.items():
        config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=TARGETS,
                            layers_to_transform=layers, modules_to_save=["classifier"])
        if model is None:
            model = get_peft_model(base, config, adapter_name=name, generator=Generator(seed + s))
        else:
            model.add_adapter(name, config, generator=Generator(seed + s))
    start = {name: [p.data.copy() for p in model.get_adapter_parameters(name)] for name in ADAPTERS}
    return model, start


def reset(model, start) -> None:
    for name, arrays in start.items():
        for p, a in zip(model.get_adapter_parameters(name), arrays):
            p.data[...] = a
            p.grad = None


def training_config(name: str, steps: int, batch_size: int, data_seed: int | None = None):
    from peftc import TrainingConfig

    _, lr, seed = ADAPTERS[name]
    seed = seed if data_seed is None else data_seed
    return TrainingConfig(learning_rate=lr, batch_size=batch_size, max_steps=steps, seed=seed, weight_decay=0.01,
                          warmup_ratio=0.06, max_grad_norm=1.0, progress=False, log_every=max(steps, 1))


def four_separate(model, start, data, steps: int, batch_size: int, data_seed: int | None = None) -> None:
    from peftc import Trainer

    reset(model, start)
    for name in ADAPTERS:
        model.set_adapter(name)
        Trainer(model, training_config(name, steps, batch_size, data_seed), data).train()


def four_together(model, start, data, steps: int, batch_size: int, data_seed: int | None = None) -> None:
    from peftc import AdapterTask, MultiAdapterTrainer

    reset(model, start)
    tasks = [AdapterTask(name, data, training_config(name, steps, batch_size, data_seed)) for name in ADAPTERS]
    MultiAdapterTrainer(model, tasks).train()


def check_same_adapters(model, start, data, steps: int, batch_size: int,
                        data_seed: int | None = None) -> tuple[float, float]:
    """(max abs difference, fraction of entries differing by more than CHECK_TOL) of every adapter's weights after
    ``steps`` steps of each side. AdamW's first steps move a weight by about lr * sign(gradient), so a gradient
    within float32 rounding of zero may flip one entry by up to 2 lr: the check allows a few such entries
    (at most 1e-4 of them), never a difference above 2.5 lr."""
    import numpy as np

    four_separate(model, start, data, steps, batch_size, data_seed)
    separate = {name: [p.data.copy() for p in model.get_adapter_parameters(name)] for name in ADAPTERS}
    four_together(model, start, data, steps, batch_size, data_seed)
    diffs = np.concatenate([np.abs(p.data - a).ravel() for name in ADAPTERS
                            for p, a in zip(model.get_adapter_parameters(name), separate[name])])
    worst, off = float(diffs.max()), float(np.mean(diffs > CHECK_TOL))
    if not (worst <= 2.5 * max(lr for _, lr, _ in ADAPTERS.values()) and off <= 1e-4):
        raise SystemExit(f"together and separate training disagree: max abs weight difference {worst:.3g}, "
                         f"{off:.2%} of the entries differ by more than {CHECK_TOL}")
    return worst, off


def render(payload: dict[str, Any]) -> str:
    from peftc.evaluation import verdicts_markdown

    s = payload["settings"]
    upper = payload["upper_same_inputs"]
    rows = [["four separate runs", payload["four_separate_s"], s["steps"] * len(ADAPTERS)],
            ["four together (MultiAdapterTrainer)", payload["four_together_s"], s["steps"]],
            ["blocks 3-5, same inputs: four separate runs", upper["four_separate_s"], s["steps"] * len(ADAPTERS)],
            ["blocks 3-5, same inputs: four together", upper["four_together_s"], s["steps"]]]
    text = [f"# {NAME}{' (QUICK: checks the script, not a result)' if s['quick'] else ''}", "",
            f"Four LoRA adapters (ranks 8, 8, 4, 16 on query and value, a head each) on all-MiniLM-L6-v2, "
            f"WordNet gloss batches of {s['batch_size']} per adapter, {s['steps']} steps per adapter, "
            f"{s['threads']} threads, median of {s['repeats']} alternated repeats, real tokens only (packed). "
            f"CPU: {payload['cpu']}. Second workload: the adapters on blocks 3-5 only, all four on the same "
            f"batches (frozen blocks 0-2 run once for the four copies).", "",
            common.markdown_table(["run", "median seconds", "forward+backward passes"], rows),
            f"ratio (separate / together): **{payload['ratio']:.2f}x** (target >= {TARGET_RATIO:g}x); "
            f"blocks 3-5 with the same inputs: **{upper['ratio']:.2f}x**. "
            f"Adapters of the two sides after {s['check_steps']} steps: max abs difference "
            f"{payload['check_max_abs_diff']:.2g} ({upper['check_max_abs_diff']:.2g} for the second workload).", "",
            f"Command: `{payload['command']}`", "", verdicts_markdown(payload["verdicts"])]
    return "\n".join(text) + "\n"


def main() -> int:
    args = parse_args()
    common.configure_threads(args.threads)
    import numpy as np

    from peftc.evaluation import Claim, verdicts

    t0 = time.perf_counter()
    data = load_data(args.train_per_class)
    num_classes = int(data["labels"].max()) + 1
    runs, checks = {}, {}
    for workload, (layers, data_seed) in WORKLOADS.items():
        model, start = build_model(num_classes, layers=layers)
        checks[workload] = check_same_adapters(model, start, data, args.check_steps, args.batch_size, data_seed)
        print(f"{workload} check: adapters of the two sides within {checks[workload][0]:.3g} after "
              f"{args.check_steps} steps ({checks[workload][1]:.2%} of the entries beyond {CHECK_TOL})")
        runs[f"{workload}/four_separate"] = (lambda m=model, st=start, ds=data_seed:
                                             four_separate(m, st, data, args.steps, args.batch_size, ds))
        runs[f"{workload}/four_together"] = (lambda m=model, st=start, ds=data_seed:
                                             four_together(m, st, data, args.steps, args.batch_size, ds))
    times = common.time_interleaved(runs, repeats=args.repeats, warmup=1)
    result = {}
    for workload in WORKLOADS:
        separate, together = times[f"{workload}/four_separate"], times[f"{workload}/four_together"]
        result[workload] = {"four_separate_s": separate["median_s"], "four_together_s": together["median_s"],
                            "ratio": separate["median_s"] / together["median_s"],
                            "check_max_abs_diff": checks[workload][0], "check_fraction_beyond_tol": checks[workload][1],
                            "together_times_s": together["times_s"], "separate_times_s": separate["times_s"]}
        print(f"{workload}: four separate {separate['median_s']:.2f} s, four together {together['median_s']:.2f} s, "
              f"ratio {result[workload]['ratio']:.2f}x")
    main_run, upper = result["all_blocks"], result["upper_same_inputs"]
    a, b = np.array(main_run["together_times_s"]), np.array(main_run["separate_times_s"])
    ua, ub = np.array(upper["together_times_s"]), np.array(upper["separate_times_s"])
    env = common.environment()
    payload = {
        "four_separate_s": main_run["four_separate_s"], "four_together_s": main_run["four_together_s"],
        "ratio": main_run["ratio"], "cpu": env["cpu"], "target_ratio": TARGET_RATIO,
        "check_max_abs_diff": main_run["check_max_abs_diff"],
        "check_fraction_beyond_tol": main_run["check_fraction_beyond_tol"], "upper_same_inputs": upper,
        "settings": {"threads": args.threads, "steps": args.steps, "batch_size": args.batch_size,
                     "repeats": args.repeats, "train_per_class": args.train_per_class,
                     "check_steps": args.check_steps, "quick": args.quick, "adapters": ADAPTERS,
                     "targets": TARGETS, "workloads": WORKLOADS},
        "times": times, "environment": env, "command": "python " + " ".join(sys.argv),
        "verdicts": verdicts([Claim("four together take less time than four separate runs (seconds)",
                                    list(a), list(b), "less"),
                              Claim(f"four together take at most 1/{TARGET_RATIO:g} of the separate time "
                                    f"({TARGET_RATIO:g} x together < separate, seconds)",
                                    list(TARGET_RATIO * a), list(b), "less"),
                              Claim("blocks 3-5, same inputs: four together take less time than four separate "
                                    "runs (seconds)", list(ua), list(ub), "less"),
                              Claim(f"blocks 3-5, same inputs: four together take at most 1/{TARGET_RATIO:g} of the "
                                    f"separate time ({TARGET_RATIO:g} x together < separate, seconds)",
                                    list(TARGET_RATIO * ua), list(ub), "less")]),
        "total_seconds": time.perf_counter() - t0,
    }
    common.write_results(NAME + ("_quick" if args.quick else ""), payload, render(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
