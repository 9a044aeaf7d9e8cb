"""Where one seed of benchmarks/fscil_wordnet.py spends its work: block x token passes counted per phase.

The encoder's cost is (nearly) proportional to the tokens each transformer block processes: MiniLM's block does
about 3.5 MFLOP of products per token and 1.5 kFLOP of attention per pair of tokens, so with glosses of 15 tokens
the attention is about 1% of it. This script runs the benchmark's own code (``fscil_wordnet.run`` with its
settings) on a stand-in encoder with MiniLM's depth, vocabulary and tokenizer but a width of 32 (the counts do
not depend on the width, and the run takes minutes instead of hours), and counts, for every block call:

- forward block x token passes: the rows a block processes (B*T for a padded batch, the real tokens N for a
  packed one); a backward counts as two forwards (the input and the weight gradients), as in the estimate of
  ``fscil_wordnet``'s docstring;
- attention pairs: B*T^2 padded, sum of t_b^2 packed (per block, all heads together).

Each count is filed under the phase that made it: ``ssl`` (the SimCSE epoch), ``base`` (supervised base
training), ``base prototypes`` (the base texts' features after training), ``subnet`` (tuning the top block on
the shots, including its cache fills), ``shot features`` (the shots' prototypes), ``val sessions`` /
``test sessions`` (the seen classes' glosses encoded after each session), split by whether the lower blocks ran
(``cache fill``) or only the blocks above the cache. Nothing is timed.

    PYTHONPATH=. OPENBLAS_NUM_THREADS=1 python benchmarks/fscil_wordnet_cost.py              # one seed, 14 methods
    PYTHONPATH=. OPENBLAS_NUM_THREADS=1 python benchmarks/fscil_wordnet_cost.py --methods full
    PYTHONPATH=. OPENBLAS_NUM_THREADS=1 python benchmarks/fscil_wordnet_cost.py --methods full --minilm \
        --lrs 1e-3 --base-train-per-class 3 --test-per-class 3      # a short real run: seconds per M passes
Writes benchmarks/results/fscil_wordnet_cost.{json,md} (``--out`` to change the stem).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import fscil_wordnet as bench  # this folder
from common import environment, markdown_table  # this folder
from peftc.distill.text import _random_state
from peftc.fscil import FrozenBlockCache, FSCILLearner
from peftc.io.atomic import write_bytes_atomic
from peftc.models.bert import BertConfig, BertLayer, BertModel
from peftc.nn.packed_tokens import PackedTokens

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ("ssl", "base", "base prototypes", "subnet", "shot features", "val sessions", "test sessions")


class BlockCounter:
    """Counts block x token passes and attention pairs per (method, phase, part) while installed (it wraps
    BertLayer's forward and backward and the learner's and this benchmark's phase functions).

    >>> with BlockCounter() as c:                        # doctest: +SKIP
    ...     learner.fit_base(session)
    >>> c.totals()                                       # doctest: +SKIP
    """

    def __init__(self) -> None:
        # per key: forward passes, backward passes (x2), attention pairs, real tokens among the forward passes
        self.counts: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
        self.method = ""
        self._stack: list[str] = []
        self._tokens: dict[int, int] = {}

    def key(self) -> tuple[str, str, str]:
        stack = self._stack
        if "_adapt" in stack:
            phase = "subnet"
        elif "add_session" in stack:
            phase = "shot features"
        elif "ssl" in stack:
            phase = "ssl"
        elif "base" in stack:
            phase = "base prototypes" if "features" in stack else "base"
        else:
            phase = next((p for p in reversed(stack) if p in PHASES), "other")
        return self.method, phase, "cache fill" if "fill" in stack else "blocks"

    @contextlib.contextmanager
    def phase(self, name: str):
        self._stack.append(name)
        try:
            yield
        finally:
            self._stack.pop()

    def _wrap(self, owner, attr: str, name: str):
        fn = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)

        return fn, wrapped

    def __enter__(self) -> BlockCounter:
        counter = self
        fwd, bwd = BertLayer.forward, BertLayer.backward

        def forward(layer, x, attention_mask):
            if isinstance(attention_mask, PackedTokens):
                tokens, pairs, real = x.shape[0], float(np.sum(np.diff(attention_mask.offsets) ** 2)), x.shape[0]
            else:
                tokens, pairs = x.shape[0] * x.shape[1], float(x.shape[0] * x.shape[1] ** 2)
                real = tokens if attention_mask is None else int(np.count_nonzero(attention_mask))
            counter._tokens[id(layer)] = tokens
            c = counter.counts[counter.key()]
            c[0] += tokens
            c[2] += pairs
            c[3] += real
            return fwd(layer, x, attention_mask)

        def backward(layer, dy, **kwargs):
            counter.counts[counter.key()][1] += 2 * counter._tokens[id(layer)]
            return bwd(layer, dy, **kwargs)

        wraps = [(FSCILLearner, "_pretrain", "ssl"), (FSCILLearner, "fit_base", "base"),
                 (FSCILLearner, "add_session", "add_session"), (FSCILLearner, "_adapt", "_adapt"),
                 (FSCILLearner, "features", "features"), (FrozenBlockCache, "fill", "fill")]
        self._saved = [(BertLayer, "forward", fwd), (BertLayer, "backward", bwd)]
        BertLayer.forward, BertLayer.backward = forward, backward
        for owner, attr, name in wraps:
            old, new = self._wrap(owner, attr, name)
            self._saved.append((owner, attr, old))
            setattr(owner, attr, new)
        run_fscil = bench.run_fscil

        def run_fscil_phase(learner, split, test=None, **kwargs):
            with counter.phase("test sessions" if test is None else "val sessions"):
                return run_fscil(learner, split, test, **kwargs)

        self._saved.append((bench, "run_fscil", run_fscil))
        bench.run_fscil = run_fscil_phase
        run_method = bench.run_method

        def run_method_named(name, *args, **kwargs):
            counter.method = name
            return run_method(name, *args, **kwargs)

        self._saved.append((bench, "run_method", run_method))
        bench.run_method = run_method_named
        return self

    def __exit__(self, *exc) -> None:
        for owner, attr, old in reversed(self._saved):
            setattr(owner, attr, old)

    def rows(self) -> list[dict]:
        return [{"method": m, "phase": p, "part": part, "forward": f, "backward": b, "attention_pairs": a,
                 "forward_real_tokens": r} for (m, p, part), (f, b, a, r) in sorted(self.counts.items())]


def stand_in_model(width: int = 32):
    """(BertModel factory, tokenizer factory): MiniLM's tokenizer, vocabulary, depth and dropout, width ``width``,
    random weights (the counts depend on the texts' tokens and the code path, not on the width)."""
    from peftc.models import Tokenizer, minilm_path

    folder = minilm_path()
    full = BertConfig.from_json(str(Path(folder) / "config.json"))
    cfg = dataclasses.replace(full, hidden_size=width, num_attention_heads=2, intermediate_size=2 * width)
    return (lambda seed: BertModel.from_state_dict(cfg, _random_state(cfg), seed=seed),
            lambda n: Tokenizer(folder, max_length=n))


def summary(rows: list[dict]) -> dict:
    """{"total": passes, "by_phase": {phase: passes}, "by_method": {method: passes}, "padding": {phase: forward
    passes on padding / forward passes}}; passes = forward + backward."""
    by_phase: dict[str, float] = defaultdict(float)
    by_method: dict[str, float] = defaultdict(float)
    forward: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        n = r["forward"] + r["backward"]
        phase = f"{r['phase']} ({r['part']})"
        by_phase[phase] += n
        by_method[r["method"]] += n
        forward[phase][0] += r["forward"]
        forward[phase][1] += r["forward_real_tokens"]
    padding = {k: 1.0 - real / total for k, (total, real) in forward.items() if total}
    return {"total": sum(by_method.values()), "by_phase": dict(by_phase), "by_method": dict(by_method),
            "padding": padding}


def render(payload: dict) -> str:
    s = payload["summary"]
    total = max(s["total"], 1.0)
    phase_rows = [[k, f"{v / 1e6:.3f}", f"{100 * v / total:.1f}", f"{100 * s['padding'].get(k, 0.0):.0f}"]
                  for k, v in sorted(s["by_phase"].items(), key=lambda kv: -kv[1])]
    method_rows = [[k, f"{v / 1e6:.3f}"] for k, v in s["by_method"].items()]
    return (f"# FSCIL WordNet: block x token passes of one seed (counted, not timed)\n\n"
            f"Settings: {payload['settings']}. Command: `{payload['command']}`\n\n"
            f"Total: {total / 1e6:.3f} M block x token passes (a backward counts as two forwards).\n\n"
            + markdown_table(["phase (part)", "M passes", "%", "% padding"], phase_rows) + "\n"
            + markdown_table(["method", "M passes"], method_rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=None, choices=list(bench.methods()))
    p.add_argument("--lrs", type=float, nargs="+", default=None)
    p.add_argument("--base-train-per-class", type=int, default=None)
    p.add_argument("--test-per-class", type=int, default=None)
    p.add_argument("--minilm", action="store_true",
                   help="run the real all-MiniLM-L6-v2 instead of the stand-in and print the wall-clock seconds per "
                        "million counted passes (a rough rate for estimates; nothing is written)")
    p.add_argument("--out", default=str(RESULTS / "fscil_wordnet_cost"))
    a = p.parse_args(argv)
    overrides = {"methods": a.methods, "lrs": a.lrs, "base_train_per_class": a.base_train_per_class,
                 "test_per_class": a.test_per_class}
    s = dataclasses.replace(bench.Settings(), seeds=[a.seed], **{k: v for k, v in overrides.items() if v is not None})
    counter = BlockCounter()
    start = time.perf_counter()
    with counter, tempfile.TemporaryDirectory() as tmp:
        bench.run(s, Path(tmp) / "counted", command="count", log=print,
                  model=bench.default_model() if a.minilm else stand_in_model())
    seconds = time.perf_counter() - start
    rows = counter.rows()
    if a.minilm:
        total = summary(rows)["total"]
        print(f"{total / 1e6:.3f} M block x token passes in {seconds:.0f} s: {seconds / (total / 1e6):.0f} s per M "
              f"passes on this machine now (OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')})")
        return 0
    command = "python benchmarks/fscil_wordnet_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = {"benchmark": "fscil_wordnet_cost", "command": command, "cpu": environment()["cpu"],
               "settings": dataclasses.asdict(s), "summary": summary(rows), "rows": rows}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out.with_suffix(".json"), (json.dumps(payload, indent=1) + "\n").encode())
    write_bytes_atomic(out.with_suffix(".md"), render(payload).encode())
    print(render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
