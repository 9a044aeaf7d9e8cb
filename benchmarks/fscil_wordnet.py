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
    python benchmarks/fscil_wordnet.py --merge benchmarks/results/fscil_wordnet_s0 ... _s4 \
        --out benchmarks/results/fscil_wordnet
The full mode is reduced: 10 base glosses per class (one epoch), 10 test and 2 validation glosses per class,
max_length 32, two learning rates, 5 sub-network steps per session at 5e-4 (the trick knobs are not tuned).
Work not needed for the numbers is skipped: training and evaluation run on the real tokens only; with
sub-network tuning each gloss's output of the five frozen blocks below the tuned one is computed once
(peftc.fscil.FrozenBlockCache); ``+subnet`` reuses ``baseline``'s base training and ``full-subnet`` ``full``'s
(FSCILLearner.with_tricks; fit_base never reads subnet); the seven methods with ``ssl`` share the SimCSE phase
(one per learning rate and head width, ``fit_base(ssl_cache=)``); no second view runs without SupCon.
Counted, not timed (benchmarks/fscil_wordnet_cost.py, block x token passes, a backward as two forwards):
one seed of the 14 methods is 17.4e6 passes (44.9e6 before these changes), 58% of them supervised base
training (24 runs: 14 methods x 2 learning rates, less the 4 shared); the full bag alone 2.7e6 (5.4e6). A short
real run on a machine shared by several jobs (load average 5 to 9 on 2 cores) took about 300 s per 1e6 passes
with one thread, which puts a seed at about 1.5 h under such load; an idle core is several times faster. Run
each seed in its own process (``--seeds N --out ..._sN``; ``--resume`` continues a stopped one), then
``--merge``.
Results: benchmarks/results/fscil_wordnet.{json,md}.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from common import check_seed_parts, environment, markdown_table, merged_command, merged_cpu  # this folder
from peftc.data.fscil_wordnet import build_fscil_wordnet
from peftc.data.text_tasks import TaskSplit
from peftc.evaluation import Claim, select_on_validation, verdicts, verdicts_markdown
from peftc.fscil import ORDER, FSCILConfig, FSCILLearner, Session, Tricks, run_fscil
from peftc.fscil.learner import SESSION_TRICKS
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


class SharedBaseFits:
    """Base trainings kept for the later methods of a seed that differ only in session tricks (``subnet``:
    ``+subnet`` trains as ``baseline``, ``full`` as ``full-subnet``): fit_base does not read them, so the later
    method takes the kept learner (:meth:`FSCILLearner.with_tricks`, sharing its adapter) instead of training
    the same base again; ``run_method`` restores the state after fit_base before each pass of sessions, as for
    a learner of its own. A kept learner is dropped after the last method that needs it. ``ssl`` is the
    learners' shared ``ssl_cache``: the SimCSE phase of the methods with ``ssl`` depends only on the learning
    rate and the classifier's width (with or without pseudo-classes), so it runs twice per learning rate.

    >>> fits = SharedBaseFits([Tricks(), Tricks.only("subnet")])  # doctest: +SKIP
    >>> learner, state = fits.learner(Tricks(), 1e-3, fit)       # trains, keeps it  # doctest: +SKIP
    """

    def __init__(self, plan: list[Tricks]) -> None:
        self.left = Counter(self.key(t) for t in plan)
        self.kept: dict[tuple[Tricks, float], tuple[FSCILLearner, dict]] = {}
        self.ssl: dict = {}  # FSCILLearner.fit_base's ssl_cache: one SimCSE phase per learning rate and head width

    @staticmethod
    def key(tricks: Tricks) -> Tricks:
        return tricks.without(*SESSION_TRICKS)

    def learner(self, tricks: Tricks, lr: float, fit) -> tuple[FSCILLearner, dict]:
        """(learner, its state after fit_base) for ``tricks`` at ``lr``: a kept base training or ``fit()``."""
        k = (self.key(tricks), lr)
        if k in self.kept:
            fitted, state = self.kept[k]
            return fitted.with_tricks(tricks), state
        learner = fit()
        state = learner.snapshot()
        if self.left[self.key(tricks)] > 1:
            self.kept[k] = (learner, state)
        return learner, state

    def done(self, tricks: Tricks) -> None:
        """A method with ``tricks`` has finished: forget the base trainings no later method needs."""
        key = self.key(tricks)
        self.left[key] -= 1
        if self.left[key] <= 0:
            self.kept = {k: v for k, v in self.kept.items() if k[0] != key}


def run_method(name: str, tricks: Tricks, s: Settings, split, val: TaskSplit, seed: int, make_bert,
               tokenizer, fits: SharedBaseFits | None = None) -> dict:
    """select_on_validation over the learning rates; the chosen learner runs the sessions on test once.
    ``fits``: base trainings shared with the seed's other methods (default: none kept)."""
    t0 = time.perf_counter()
    states: dict[int, dict] = {}
    fits = fits or SharedBaseFits([])

    def fit(lr: float) -> FSCILLearner:
        cfg = FSCILConfig(max_length=s.max_length, batch_size=s.batch_size, base_epochs=s.base_epochs,
                          learning_rate=lr, seed=seed, subnet_steps=s.subnet_steps, subnet_lr=s.subnet_lr,
                          ssl_epochs=s.ssl_epochs,
                          total_classes=split.num_seen(len(split.sessions)))
        learner = FSCILLearner(make_bert(seed), tokenizer, tricks, cfg)
        learner.fit_base(Session.from_split(split.base_train), ssl_cache=fits.ssl)
        return learner

    def train(lr: float) -> FSCILLearner:
        learner, states_after_fit = fits.learner(tricks, lr, lambda: fit(lr))
        states[id(learner)] = states_after_fit
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
    reduced = ("" if s["base_train_per_class"] is None else
               f"**REDUCED run**: base training on {s['base_train_per_class']} glosses per base class, not all of "
               f"each class's training glosses; {s['base_epochs']} epoch(s), max_length {s['max_length']}, trick "
               "knobs not tuned.\n\n")
    md = (f"# FSCIL bag of tricks, WordNet 100 classes (60 base + 8 x 5-way 5-shot), all-MiniLM-L6-v2 + LoRA\n\n"
          + reduced + f"Seeds {s['seeds']}; {s['base_train_per_class'] or 'all'} base glosses per class, "
          f"{s['test_per_class']} test glosses per class; learning rate chosen per method and seed on validation "
          f"among {s['lrs']}. "
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


def resumed_runs(s: Settings, out: Path, command: str) -> tuple[list[dict], str]:
    """(the method runs of ``out``'s results file that this run would repeat, the command to record): the file
    must hold the same settings apart from seeds and methods (ValueError naming the difference otherwise)."""
    path = out.with_suffix(".json")
    if not path.exists():
        return [], command
    old = json.loads(path.read_text())
    check_seed_parts([asdict(s), old["settings"]], ["this run", str(path)], ignore={"seeds", "methods"})
    runs = [r for r in old["runs"] if r["seed"] in s.seeds and r["method"] in s.methods]
    return runs, f"{old['command']}; resumed with {command}"


def run(s: Settings, out: Path, command: str, log=print, model=None, resume: bool = False) -> dict:
    """Every method on every seed; the results files are rewritten after each method. ``resume``: keep the
    (method, seed) runs already in ``out`` (same settings) and run only the others."""
    make_bert, make_tokenizer = model or default_model()
    tokenizer = make_tokenizer(s.max_length)
    bench = benchmark_data(s.with_lemmas)
    cpu = environment()["cpu"]
    table = methods()
    runs, command = resumed_runs(s, out, command) if resume else ([], command)
    done = {(r["method"], r["seed"]) for r in runs}
    if done:
        log(f"resuming {out}: {len(done)} method runs kept")
    for seed in s.seeds:
        todo = [name for name in s.methods if (name, seed) not in done]
        if not todo:
            continue
        split = bench.split(seed, test_per_class=s.test_per_class, val_per_class=s.val_per_class,
                            base_train_per_class=s.base_train_per_class)
        val = validation_rows(split)
        fits = SharedBaseFits([table[name] for name in todo])
        for name in todo:
            r = run_method(name, table[name], s, split, val, seed, make_bert, tokenizer, fits)
            fits.done(table[name])
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
    payload = finish(runs, s, merged_command([p["command"] for p in parts], [str(p) for p in stems]),
                     merged_cpu([p["cpu"] for p in parts]))
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
    p.add_argument("--resume", action="store_true",
                   help="keep the method runs already in --out (same settings) and run only the missing ones")
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
    payload = run(s, Path(a.out), command, resume=a.resume)
    print(render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
