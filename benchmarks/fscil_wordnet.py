"""The bag of tricks for FSCIL on the 100-class WordNet benchmark: incremental-frozen against each trick.

Benchmark: :mod:`peftc.data.fscil_wordnet` (60 base classes, 8 sessions of 5-way 5-shot; the class order and
the shots resampled per seed). Model: all-MiniLM-L6-v2 with LoRA (query, value), trained on the base session
(:class:`peftc.fscil.FSCILLearner`), scored after each session on every seen class (A_t, average accuracy,
PD = A_0 - A_T, last-session base / novel accuracy and their harmonic mean).

Methods, in the paper's ablation order: ``baseline`` (incremental-frozen), ``+<trick>`` for each of the six
tricks alone on the baseline (supcon, etf, pseudo_classes, subnet, ssl, pretext), ``full`` (all six), and
``full-<trick>`` (the bag without one). Each method's base learning rate is chosen per seed on validation
glosses (``peftc.evaluation.select_on_validation`` over ``--lrs``; the validation rows are the base and novel
classes' validation glosses, scored by average accuracy over the sessions); only the chosen candidate runs the
sessions on the test glosses. The trick knobs stay at their FSCILConfig defaults (``--subnet-steps`` aside).

Claims (paired t across seeds, Holm over the family, ``peftc.evaluation.verdicts``): each trick alone beats
the baseline on average accuracy; the full bag beats the baseline; the full bag beats the bag without each trick.

Modes (run from the repository root; the lead runs the full one, one process per seed is fine):
    PYTHONPATH=. OPENBLAS_NUM_THREADS=1 python benchmarks/fscil_wordnet.py --quick
    PYTHONPATH=. OPENBLAS_NUM_THREADS=1 python benchmarks/fscil_wordnet.py --seeds 0 \
        --out benchmarks/results/fscil_wordnet_s0
    ... --seeds 1 --out ..._s1, ..., then
    python benchmarks/fscil_wordnet.py --merge benchmarks/results/fscil_wordnet_s0 ... _s4
The full mode is reduced: 10 base glosses per class (one epoch), 10 test and 2 validation glosses per class,
max_length 32, two learning rates, 5 sub-network steps per session at 5e-4 (the trick knobs are not tuned).
With sub-network tuning only the top block changes after base training, so each gloss's output of the five
blocks below it is computed once (peftc.fscil.FrozenBlockCache) and every later session runs the top block
alone; the base training of the tricks that enlarge it (pseudo-classes' 400 mixed texts, the second view, the
rotated view, the SimCSE epoch) is then the largest part. Estimate, not a timing: counting block x token
passes (a backward as two forwards), one full seed is 23e6 of them (35e6 before the cache), the full bag 2.9e6
(4.5e6); at the rate of the --quick run on a machine shared by several jobs (2607 s for 28 method runs, about
400 s per 1e6) that is about 2.6 hours per seed and 19 minutes for the full bag; an idle core is faster. Check
the first seed's per-method seconds (in the results) and cut --test-per-class / --methods if it runs long.
Results: benchmarks/results/fscil_wordnet.{json,md}.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from common import check_seed_parts, environment, markdown_table, merged_command  # this folder
from peftc.data.fscil_wordnet import build_fscil_wordnet
from peftc.data.text_tasks import TaskSplit
from peftc.evaluation import Claim, select_on_validation, verdicts, verdicts_markdown
from peftc.fscil import ORDER, FSCILConfig, FSCILLearner, Session, Tricks, run_fscil
from peftc.io.atomic import write_bytes_atomic

RESULTS = Path(__file__).resolve().parent / "results"


def methods() -> dict[str, Tricks]:
    """The ablation in the paper's order: baseline, each trick alone, the full bag, the bag minus each."""
    out = {"baseline": Tricks()}
    out.update({f"+{t}": Tricks.only(t) for t in ORDER})
    out["full"] = Tricks.all()
    out.update({f"full-{t}": Tricks.all().without(t) for t in ORDER})
    return out


@dataclass
class Settings:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    methods: list[str] = field(default_factory=lambda: list(methods()))
    lrs: list[float] = field(default_factory=lambda: [1e-3, 2e-3])
    base_train_per_class: int = 10
    test_per_class: int = 10
    val_per_class: int = 2
    max_length: int = 32
    base_epochs: int = 1
    batch_size: int = 32
    subnet_steps: int = 5
    subnet_lr: float = 5e-4
    ssl_epochs: int = 1
    with_lemmas: bool = False


QUICK = dict(seeds=[0, 1], lrs=[1e-3], base_train_per_class=1, test_per_class=1, val_per_class=1, max_length=16,
             subnet_steps=1)


def validation_rows(split) -> TaskSplit:
    """The base and novel classes' validation glosses together, labels in session order."""
    parts = (split.base_val, split.novel_val)
    return TaskSplit([i for p in parts for i in p.ids], [t for p in parts for t in p.texts],
                     np.concatenate([p.labels for p in parts]))


@functools.lru_cache(maxsize=2)
def benchmark_data(with_lemmas: bool = False):
    """The 100 classes and their glosses, or "lemmas: gloss" inputs (read once per process)."""
    return build_fscil_wordnet(with_lemmas=with_lemmas)


def default_model():
    """(BertModel factory, tokenizer) for all-MiniLM-L6-v2."""
    from peftc.models import BertModel, Tokenizer, minilm_path

    folder = minilm_path()
    return (lambda seed: BertModel.from_pretrained(folder, seed=seed)), (lambda n: Tokenizer(folder, max_length=n))


def run_method(name: str, tricks: Tricks, s: Settings, split, val: TaskSplit, seed: int, make_bert,
               tokenizer) -> dict:
    """select_on_validation over the learning rates; the chosen learner runs the sessions on test once."""
    t0 = time.perf_counter()
    states: dict[int, dict] = {}

    def train(lr: float) -> FSCILLearner:
        cfg = FSCILConfig(max_length=s.max_length, batch_size=s.batch_size, base_epochs=s.base_epochs,
                          learning_rate=lr, seed=seed, subnet_steps=s.subnet_steps, subnet_lr=s.subnet_lr,
                          ssl_epochs=s.ssl_epochs,
                          total_classes=split.num_seen(len(split.sessions)))
        learner = FSCILLearner(make_bert(seed), tokenizer, tricks, cfg)
        learner.fit_base(Session.from_split(split.base_train))
        states[id(learner)] = learner.snapshot()
        return learner

    def evaluate(learner: FSCILLearner, part: str):
        learner.restore(states[id(learner)])
        if part == "validation":
            return run_fscil(learner, split, test=val, fit=False).scores.avg_acc
        return run_fscil(learner, split, fit=False)

    sel = select_on_validation(s.lrs, train, evaluate)
    run = sel.test_score
    return {"method": name, "seed": seed, "tricks": list(tricks.enabled()), "lr": sel.best_candidate,
            "val_avg_acc": list(sel.scores), **run.scores.as_dict(),
            "predictions_last": run.predictions[-1].tolist(), "seconds": time.perf_counter() - t0}


def summarize(runs: list[dict], names: list[str]) -> dict:
    out = {}
    for name in names:
        rows = sorted((r for r in runs if r["method"] == name), key=lambda r: r["seed"])
        if rows:
            out[name] = {"avg_acc": float(np.mean([r["avg_acc"] for r in rows])),
                         "pd": float(np.mean([r["pd"] for r in rows])),
                         "last_hm": float(np.mean([r["last_hm"] for r in rows])),
                         "per_session": np.mean([r["per_session"] for r in rows], axis=0).tolist(),
                         "seeds": len(rows)}
    return out


def claims(runs: list[dict], names: list[str]) -> list[Claim]:
    by = {(r["method"], r["seed"]): r["avg_acc"] for r in runs}
    seeds = sorted({r["seed"] for r in runs})

    def side(name):
        return [by[(name, sd)] for sd in seeds]

    have = lambda *ns: all((n, sd) in by for n in ns for sd in seeds)  # noqa: E731
    out = [Claim(f"+{t} avg acc > baseline", side(f"+{t}"), side("baseline")) for t in ORDER
           if have(f"+{t}", "baseline")]
    if have("full", "baseline"):
        out.append(Claim("full bag avg acc > baseline", side("full"), side("baseline")))
    out += [Claim(f"full bag avg acc > full-{t}", side("full"), side(f"full-{t}")) for t in ORDER
            if have("full", f"full-{t}")]
    return out


def render(payload: dict) -> str:
    s = payload["settings"]
    rows = [[name, f"{100 * m['avg_acc']:.2f}", f"{100 * m['pd']:.2f}", f"{100 * m['last_hm']:.2f}",
             " ".join(f"{100 * a:.1f}" for a in m["per_session"]), m["seeds"]]
            for name, m in payload["methods"].items()]
    md = (f"# FSCIL bag of tricks, WordNet 100 classes (60 base + 8 x 5-way 5-shot), all-MiniLM-L6-v2 + LoRA\n\n"
          f"Seeds {s['seeds']}; {s['base_train_per_class']} base glosses per class, {s['test_per_class']} test "
          f"glosses per class; learning rate chosen per method and seed on validation among {s['lrs']}. "
          f"CPU: {payload['cpu']}. Command: `{payload['command']}`\n\n"
          + markdown_table(["method", "avg acc %", "PD %", "last HM %", "A_t per session %", "seeds"], rows))
    if payload.get("verdicts"):
        md += "\n" + verdicts_markdown(payload["verdicts"])
    return md


def write(payload: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out.with_suffix(".json"), (json.dumps(payload, indent=1) + "\n").encode())
    write_bytes_atomic(out.with_suffix(".md"), render(payload).encode())


def finish(runs: list[dict], s: Settings, command: str, cpu: str) -> dict:
    payload = {"benchmark": "fscil_wordnet", "command": command, "cpu": cpu, "settings": asdict(s),
               "methods": summarize(runs, s.methods), "runs": runs}
    found = claims(runs, s.methods)
    seeds = {r["seed"] for r in runs}
    if found and len(seeds) >= 2:
        payload["verdicts"] = verdicts(found)
    return payload


def run(s: Settings, out: Path, command: str, log=print, model=None) -> dict:
    """Every method on every seed; the results files are rewritten after each method."""
    make_bert, make_tokenizer = model or default_model()
    tokenizer = make_tokenizer(s.max_length)
    bench = benchmark_data(s.with_lemmas)
    cpu = environment()["cpu"]
    table = methods()
    runs: list[dict] = []
    for seed in s.seeds:
        split = bench.split(seed, test_per_class=s.test_per_class, val_per_class=s.val_per_class,
                            base_train_per_class=s.base_train_per_class)
        val = validation_rows(split)
        for name in s.methods:
            r = run_method(name, table[name], s, split, val, seed, make_bert, tokenizer)
            runs.append(r)
            log(f"seed {seed} {name}: avg acc {100 * r['avg_acc']:.2f}, PD {100 * r['pd']:.2f}, last HM "
                f"{100 * r['last_hm']:.2f} (lr {r['lr']}, {r['seconds']:.0f} s)")
            write(finish(runs, s, command, cpu), out)
    return finish(runs, s, command, cpu)


def merge(stems: list[Path], out: Path) -> dict:
    """Combine results files of one configuration run with different seeds into ``out``."""
    parts = [json.loads(Path(p).with_suffix(".json").read_text()) for p in stems]
    check_seed_parts([p["settings"] for p in parts], [str(p) for p in stems], ignore={"seeds"})
    runs = [r for p in parts for r in p["runs"]]
    seeds = sorted({r["seed"] for r in runs})
    if len(seeds) != len(runs) / max(len({r["method"] for r in runs}), 1):
        raise ValueError(f"the files repeat a seed: {[r['seed'] for r in runs]}")
    s = Settings(**{**parts[0]["settings"], "seeds": seeds})
    payload = finish(runs, s, merged_command([p["command"] for p in parts], [str(p) for p in stems]), parts[0]["cpu"])
    write(payload, out)
    return payload


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = Settings()
    p.add_argument("--quick", action="store_true", help="tiny settings that only check the pipeline runs")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=None, choices=list(methods()))
    p.add_argument("--lrs", type=float, nargs="+", default=None)
    p.add_argument("--base-train-per-class", type=int, default=None)
    p.add_argument("--test-per-class", type=int, default=None)
    p.add_argument("--val-per-class", type=int, default=None)
    p.add_argument("--subnet-steps", type=int, default=None)
    p.add_argument("--subnet-lr", type=float, default=None)
    p.add_argument("--with-lemmas", action="store_true", help='inputs "lemma, lemma: gloss" instead of the gloss')
    p.add_argument("--out", default=str(RESULTS / "fscil_wordnet"))
    p.add_argument("--merge", nargs="+", default=None, metavar="STEM")
    a = p.parse_args(argv)
    if a.merge:
        merge([Path(m) for m in a.merge], Path(a.out))
        return 0
    s = replace(d, **QUICK) if a.quick else d
    overrides = {"seeds": a.seeds, "methods": a.methods, "lrs": a.lrs, "base_train_per_class": a.base_train_per_class,
                 "test_per_class": a.test_per_class, "val_per_class": a.val_per_class,
                 "subnet_steps": a.subnet_steps, "subnet_lr": a.subnet_lr, "with_lemmas": a.with_lemmas or None}
    s = replace(s, **{k: v for k, v in overrides.items() if v is not None})
    command = "python benchmarks/fscil_wordnet.py " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = run(s, Path(a.out), command)
    print(render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
