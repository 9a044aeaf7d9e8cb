"""The medical-adaptation papers' protocol on our models: base MiniLM against a domain-adapted MiniLM.

Jeong et al. (EMNLP 2024; extended, arXiv 2411.08870) compare each medical model with its own base
model, zero-shot and 3-shot, each with its prompt chosen on validation data *per model*, and count
win / tie / loss per case from paired bootstrap intervals; reusing the medical model's prompt for the
base model (their "medopt" ablation) and reading the sign without a test inflate the medical wins.

Here (all of it offline, on CPU):
- models: all-MiniLM-L6-v2 ("base") and the same model after LoRA continued training on WordNet noun
  glosses, merged into the weights ("adapted"; domain_adapted_minilm.py, cached);
- tasks: five held-out classifications (peftc.data.text_tasks): noun supersenses and 20 fine-grained
  noun categories (the adapted domain, on noun synsets kept apart from the adaptation data), verb
  supersenses, adjective / adverb classes and Debian fortunes topics (other domains);
- classifier: the dual encoder (PromptSRC's zero-shot setup): cosine between the input's sentence
  embedding and each label's, the label rendered through a template (name and one-line description);
  "few_shot" adds the mean embedding of k = 3 (``--shots``) training examples per class, drawn as the
  papers draw theirs, to the label embedding (a prototype); zero_shot and few_shot are the "regimes";
- per model, task and regime the template is chosen on the validation split among the 12 of
  :data:`TEMPLATES` (peftc.evaluation.select_on_validation; first best wins ties); the test split is
  scored once with it ("fair", the papers' protocol);
- "shared": the template chosen for the adapted model is used for both (the papers' ablation);
- per case (task x regime) and seed: accuracy of each, paired bootstrap 95% CI of adapted - base,
  exact McNemar p, Holm over the cases of the seed, the papers' verdict (win / tie / loss from the
  95% CI) and the sign-only verdict; then per case across seeds a verdict of "adapted > base"
  (paired t test over seeds, Holm over all claims of the file: peftc.evaluation.verdicts).
What a seed varies: the train / validation / test split of every task (seeded hash order), the
few-shot draw, and the adaptation run (LoRA initialisation, dropout, data order and the subset of
adaptation pairs); the half of the noun synsets used for adaptation is fixed, so no seed tests on
adaptation text.

Full run on Dask (5 seeds, each a task of peftc.distributed.run_sweep, one results file; ``local`` starts a
LocalCluster of one-thread workers, one per core, or give a scheduler's address):
    PYTHONPATH=. python benchmarks/medical_protocol.py --scheduler local
The same by hand (one process per seed, then merged; ``--seeds 0 1 2 3 4`` does it in one process):
    for s in 0 1 2 3 4; do PYTHONPATH=. OPENBLAS_NUM_THREADS=2 python benchmarks/medical_protocol.py --seed $s; done
    PYTHONPATH=. python benchmarks/medical_protocol.py --merge medical_protocol_s0 medical_protocol_s1 \\
        medical_protocol_s2 medical_protocol_s3 medical_protocol_s4
Expected cost per seed on 2 loaded cores: the adaptation, 250 LoRA steps of 32 pairs at about 4.5 s, about
20 minutes (once: the merged model is cached per seed), and the evaluation, about 10k sentence embeddings
at 50-120 per second, 1.5-3.5 minutes; about 2 hours for the five seeds. ``--render NAME`` redraws a
results file's tables; ``--quick`` is a tiny configuration for checking the code, whose results are
labelled REDUCED and go to medical_protocol_quick.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "medical_protocol"
MODELS = ("base", "adapted")
PROTOCOLS = ("fair", "shared")
REGIMES = ("zero_shot", "few_shot")
# label templates: {name} is the class name, {desc} its one-line description (PromptSRC's text list, made general)
TEMPLATES: tuple[str, ...] = (
    "{name}: {desc}",
    "{desc}",
    "{name}",
    "This text is about {desc}.",
    "Topic: {desc}.",
    "A text about {name}.",
    "Category {name}: {desc}.",
    "A definition of something in the category {name}.",
    "An example of {name}.",
    "Something related to {name}, that is, {desc}.",
    "{name} - {desc}",
    "It is about {name}.",
)


@dataclass
class Settings:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    tasks: list[str] = field(default_factory=lambda: ["noun_supersenses", "noun_categories", "verb_supersenses",
                                                      "adjective_adverb", "fortune_topics"])
    regimes: list[str] = field(default_factory=lambda: list(REGIMES))
    train_per_class: int = 8
    val_per_class: int = 12
    test_per_class: int = 40
    shots: int = 3
    max_length: int = 64
    adapt_pairs: int = 8000
    adapt_epochs: int = 1
    adapt_max_steps: int | None = None
    adapt_batch_size: int = 32
    adapt_lr: float = 5e-4
    n_resamples: int = 10_000
    reduced: bool = False


QUICK = dict(train_per_class=3, val_per_class=2, test_per_class=4, adapt_pairs=32, adapt_max_steps=2,
             adapt_batch_size=8, n_resamples=500, reduced=True, seeds=[0, 1])


# -- the dual encoder ----------------------------------------------------------------------------------
class Encoder:
    """Sentence embeddings of one model, memoised per text (labels recur across templates and regimes)."""

    def __init__(self, model, tokenizer, batch_size: int = 128) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.memo: dict[str, object] = {}

    def __call__(self, texts: list[str]):
        import numpy as np

        todo = sorted({t for t in texts if t not in self.memo}, key=len)
        self.model.eval()
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            enc = self.tokenizer(chunk)
            emb = self.model.sentence_embedding(enc["input_ids"], enc["attention_mask"], skip_padding=True)
            for t, e in zip(chunk, emb):
                self.memo[t] = np.array(e)
        return np.stack([self.memo[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)


def label_texts(task, template: str) -> list[str]:
    return [template.format(name=n, desc=d) for n, d in zip(task.class_names, task.class_descriptions)]


def normalise(x):
    import numpy as np

    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def class_vectors(encoder: Encoder, task, template: str, regime: str, shots):
    """(C, H): the label embeddings through ``template``; "few_shot" adds the mean of the class's shot
    embeddings (both unit length) and renormalises."""
    labels = normalise(encoder(label_texts(task, template)))
    if regime == "zero_shot":
        return labels
    return normalise(labels + normalise(shots.mean(axis=1)))


class SplitScorer:
    """Scores class vectors on a split's precomputed input embeddings; ``calls`` records each split scored,
    so the protocol can prove the test split was scored once per selection."""

    def __init__(self, inputs: dict, labels: dict) -> None:
        self.inputs, self.labels = inputs, labels
        self.calls: list[str] = []

    def predict(self, vectors, split: str):
        return (self.inputs[split] @ vectors.T).argmax(axis=1).astype("int64")

    def __call__(self, vectors, split: str):
        """eval_fn of select_on_validation: validation -> accuracy; test -> the predictions."""
        self.calls.append(split)
        pred = self.predict(vectors, split)
        return float((pred == self.labels[split]).mean()) if split == "validation" else pred


def select_template(vectors_of, scorer: SplitScorer):
    """select_on_validation over TEMPLATES; returns the Selection and checks the test was scored once."""
    from peftc.evaluation import select_on_validation

    before = len(scorer.calls)
    sel = select_on_validation(TEMPLATES, vectors_of, scorer)
    calls = scorer.calls[before:]
    if calls != ["validation"] * len(TEMPLATES) + ["test"]:
        raise RuntimeError(f"template selection scored splits {calls}: expected each template on validation, "
                           f"then the test once")
    return sel


def shot_embeddings(encoder: Encoder, task, train, shots: int, seed: int):
    """(C, shots, H): per class, the first ``shots`` of a permutation from default_rng(seed) of its train rows
    (the papers' few-shot draw)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for c in range(task.num_classes):
        rows = np.flatnonzero(train.labels == c)
        if len(rows) < shots:
            raise ValueError(f"task {task.name}: class {task.class_ids[c]} has {len(rows)} train rows, "
                             f"fewer than shots={shots}")
        pick = rows[rng.permutation(len(rows))[:shots]]
        out.append(encoder([train.texts[i] for i in pick]))
    return np.stack(out)


# -- one seed ----------------------------------------------------------------------------------------
def run_task(task, s: Settings, seed: int, encoders: dict) -> dict:
    """Both models, every regime, both protocols, on one task's split for ``seed``."""
    from peftc.data.text_tasks import SplitSizes

    parts = task.split(seed, SplitSizes(s.train_per_class, s.val_per_class, s.test_per_class))
    labels = {sp: parts[sp].labels for sp in ("validation", "test")}
    out: dict = {"in_domain": task.in_domain, "sizes": {sp: len(p) for sp, p in parts.items()},
                 "classes": list(task.class_ids),
                 "test_labels": labels["test"].tolist(), "regimes": {}}
    for regime in s.regimes:
        r: dict = {"models": {}}
        picks = {}
        for m in MODELS:
            enc = encoders[m]
            scorer = SplitScorer({sp: enc(parts[sp].texts) for sp in ("validation", "test")}, labels)
            shots = shot_embeddings(enc, task, parts["train"], s.shots, seed) if regime != "zero_shot" else None
            sel = select_template(lambda t: class_vectors(enc, task, t, regime, shots), scorer)
            picks[m] = (scorer, shots, sel)
            r["models"][m] = {"template": sel.best_candidate, "validation": list(sel.scores),
                              "test_pred": sel.test_score.tolist(), "test_scored": scorer.calls.count("test")}
        # the papers' ablation: the base model scored with the template chosen for the adapted model
        scorer, shots, _ = picks["base"]
        shared = picks["adapted"][2].best_candidate
        r["shared_template"] = shared
        r["shared_base_test_pred"] = scorer.predict(class_vectors(encoders["base"], task, shared, regime, shots),
                                                    "test").tolist()
        out["regimes"][regime] = r
    return out


def case_statistics(per_task: dict, s: Settings, seed: int) -> dict:
    """Per protocol: per case accuracy of each model, paired bootstrap CI, McNemar p, Holm, win/tie/loss."""
    import numpy as np

    from peftc.evaluation import holm, mcnemar, paired_bootstrap, win_tie_loss

    out: dict = {}
    for protocol in PROTOCOLS:
        cases, triples = [], {}
        for name, t in per_task.items():
            y = np.asarray(t["test_labels"], dtype=np.int64)
            for regime, r in t["regimes"].items():
                a = np.asarray(r["models"]["adapted"]["test_pred"], dtype=np.int64)
                b = np.asarray(r["models"]["base"]["test_pred"] if protocol == "fair" else r["shared_base_test_pred"],
                               dtype=np.int64)
                key = f"{name}/{regime}"
                rng = np.random.default_rng([seed, len(cases)])  # one stream per (seed, case)
                boot = paired_bootstrap(y, a, b, seed=rng, n_resamples=s.n_resamples)
                mc = mcnemar(y, a, b)
                cases.append({"case": key, "task": name, "regime": regime, "n": int(y.size),
                              "acc_adapted": boot.metric_a, "acc_base": boot.metric_b, "diff": boot.estimate,
                              "ci95": list(boot.ci), "verdict": boot.verdict, "p_mcnemar": mc.p_value,
                              "n10": mc.n10, "n01": mc.n01})
                triples[key] = (y, a, b)
        for c, q in zip(cases, holm([c["p_mcnemar"] for c in cases])):
            c["p_holm"] = float(q)
        wtl = win_tie_loss(triples, seed=seed, n_resamples=s.n_resamples, correction="none")
        for c, row in zip(cases, wtl.rows):
            c["sign_only"] = row.sign_only
        out[protocol] = {"cases": cases, "win_tie_loss": wtl.counts(), "sign_only": wtl.counts("sign_only")}
    return out


def run_seed(seed: int, s: Settings, tasks: dict, log=print) -> dict:
    from domain_adapted_minilm import AdaptSettings, adapted_minilm
    from peftc.models import BertModel, Tokenizer, minilm_path

    t0 = time.perf_counter()
    adapt = AdaptSettings(seed=seed, pairs=s.adapt_pairs, epochs=s.adapt_epochs, max_steps=s.adapt_max_steps,
                          batch_size=s.adapt_batch_size, learning_rate=s.adapt_lr, max_length=s.max_length)
    adapted, record = adapted_minilm(adapt, log=log)
    tok = Tokenizer(minilm_path(), s.max_length)
    encoders = {"base": Encoder(BertModel.from_pretrained(minilm_path()), tok), "adapted": Encoder(adapted, tok)}
    t1 = time.perf_counter()
    per_task = {name: run_task(task, s, seed, encoders) for name, task in tasks.items()}
    stats = case_statistics(per_task, s, seed)
    for protocol in PROTOCOLS:
        log(f"seed {seed} {protocol:6s}: " + ", ".join(f"{c['case']} {c['acc_adapted']:.3f} vs {c['acc_base']:.3f}"
                                                      for c in stats[protocol]["cases"]))
    return {"adaptation": record, "tasks": per_task, "statistics": stats,
            "seconds": {"adaptation": t1 - t0, "evaluation": time.perf_counter() - t1}}


# -- across seeds ------------------------------------------------------------------------------------
def aggregate(per_seed: dict) -> dict:
    """Mean accuracies per case and protocol, win/tie/loss summed over seeds, and the verdicts list."""
    import numpy as np

    from peftc.evaluation import Claim, verdicts

    seeds = sorted(per_seed, key=int)
    first = per_seed[seeds[0]]["statistics"]
    table: dict = {}
    claims = []
    for protocol in PROTOCOLS:
        rows = []
        for i, case in enumerate(first[protocol]["cases"]):
            a = [per_seed[k]["statistics"][protocol]["cases"][i]["acc_adapted"] for k in seeds]
            b = [per_seed[k]["statistics"][protocol]["cases"][i]["acc_base"] for k in seeds]
            verdicts_by_seed = [per_seed[k]["statistics"][protocol]["cases"][i]["verdict"] for k in seeds]
            rows.append({"case": case["case"], "acc_adapted": float(np.mean(a)), "acc_base": float(np.mean(b)),
                         "verdicts": {o: verdicts_by_seed.count(o) for o in ("win", "tie", "loss")}})
            claims.append(Claim(f"{protocol}: adapted > base on {case['case']}", a, b, "greater"))
        tally = {o: sum(per_seed[k]["statistics"][protocol]["win_tie_loss"][o] for k in seeds)
                 for o in ("win", "tie", "loss")}
        signs = {o: sum(per_seed[k]["statistics"][protocol]["sign_only"][o] for k in seeds)
                 for o in ("win", "tie", "loss")}
        table[protocol] = {"cases": rows, "win_tie_loss": tally, "sign_only": signs}
    out = {"seeds": [int(k) for k in seeds], "table": table}
    if len(seeds) >= 2:
        out["verdicts"] = verdicts(claims)
    else:  # a single seed cannot be tested across seeds: every claim is recorded as not holding, without an interval
        out["verdicts"] = [{"claim": c.claim, "holds": False, "p_holm": 1.0, "diff": float(c.a[0] - c.b[0]),
                            "ci95": [None, None], "n_seeds": 1, "expected": "greater",
                            "why": "only 1 seed (at least 5 needed)"} for c in claims]
    return out


def _template_numbers(payload: dict, seed: str, case: dict, protocol: str) -> str:
    """ "adapted / base" template numbers (1-based in the payload's template list) of a case."""
    models = payload["per_seed"][seed]["tasks"][case["task"]]["regimes"][case["regime"]]["models"]
    a = payload["templates"].index(models["adapted"]["template"]) + 1
    b = a if protocol == "shared" else payload["templates"].index(models["base"]["template"]) + 1
    return f"{a} / {b}"


def markdown(payload: dict) -> str:
    from peftc.data.text_tasks import IN_DOMAIN
    from peftc.evaluation import verdicts_markdown

    s, agg = payload["settings"], payload["aggregate"]
    in_domain = ", ".join(n for n in s["tasks"] if n in IN_DOMAIN)
    title = "# Medical-adaptation protocol on MiniLM: base vs noun-gloss-adapted, fair vs shared templates"
    lines = [title + (" (REDUCED: a tiny configuration that checks the code, not a result)" if s["reduced"] else ""),
             "",
             f"Seeds {agg['seeds']}; tasks {', '.join(s['tasks'])}; per class {s['train_per_class']} train (few-shot "
             f"pool) / {s['val_per_class']} validation / {s['test_per_class']} test; {len(payload['templates'])} label "
             f"templates, chosen per model on validation; {s['shots']}-shot prototypes; adaptation: LoRA on "
             f"{s['adapt_pairs']} noun (gloss, lemmas) pairs, merged. CPU: {payload['environment']['cpu']}.",
             "",
             f"In the adapted domain (noun glosses): {in_domain or 'none of the tasks run'}; the others are other "
             "domains.",
             "",
             "Per case and seed: accuracy on the test split, diff = adapted - base with its paired bootstrap 95% CI, "
             "exact McNemar p (Holm over the cases of the seed), the papers' verdict (win / loss when the 95% CI "
             "excludes 0, else tie) and the sign of diff alone. Templates: numbers in the list below.", ""]
    for protocol, what in (("fair", "each model with its own best template (the papers' protocol)"),
                           ("shared", "both models with the template chosen for the adapted model (the ablation)")):
        lines += [f"## {protocol}: {what}", ""]
        t = agg["table"][protocol]
        lines += ["Mean over seeds:", "", "| case | adapted | base | diff | win / tie / loss over seeds |",
                  "|---|---|---|---|---|"]
        for c in t["cases"]:
            v = c["verdicts"]
            lines.append(f"| {c['case']} | {c['acc_adapted']:.3f} | {c['acc_base']:.3f} | "
                         f"{c['acc_adapted'] - c['acc_base']:+.3f} | {v['win']} / {v['tie']} / {v['loss']} |")
        w, g = t["win_tie_loss"], t["sign_only"]
        n = sum(w.values())
        lines += ["", f"All seeds and cases: win {w['win']} / tie {w['tie']} / loss {w['loss']} "
                  f"({100 * w['win'] / n:.1f}% / {100 * w['tie'] / n:.1f}% / {100 * w['loss'] / n:.1f}%); "
                  f"sign only: {g['win']} / {g['tie']} / {g['loss']}.", ""]
        for k in [str(x) for x in agg["seeds"]]:
            st = payload["per_seed"][k]["statistics"][protocol]
            lines += [f"Seed {k}:", "", "| case | n | adapted | base | diff | 95% CI | p McNemar (Holm) | verdict | "
                      "sign only | templates A / B |", "|---|---|---|---|---|---|---|---|---|---|"]
            for c in st["cases"]:
                tpl = _template_numbers(payload, k, c, protocol)
                lines.append(f"| {c['case']} | {c['n']} | {c['acc_adapted']:.3f} | {c['acc_base']:.3f} | "
                             f"{c['diff']:+.3f} | [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] | "
                             f"{c['p_mcnemar']:.3g} ({c['p_holm']:.3g}) | {c['verdict']} | {c['sign_only']} | {tpl} |")
            w = st["win_tie_loss"]
            lines += ["", f"win / tie / loss: {w['win']} / {w['tie']} / {w['loss']}", ""]
    lines += ["## Verdicts (adapted > base, across seeds)", ""]
    if len(agg["seeds"]) >= 2:
        lines.append(verdicts_markdown(agg["verdicts"]))
    else:
        lines += ["One seed: no claim can be tested across seeds (merge the per-seed files with --merge).", ""]
    lines += ["Templates:", ""] + [f"{i + 1}. `{t}`" for i, t in enumerate(payload["templates"])]
    lines += ["", f"Command: `{payload['command']}`", ""]
    return "\n".join(lines)


# -- entry points ------------------------------------------------------------------------------------
def seed_task(s: Settings, config: dict) -> dict:
    """One seed as a Dask task (``--scheduler``): the worker builds the tasks' splits itself."""
    from peftc.data.text_tasks import build_tasks

    return run_seed(config["seed"], s, build_tasks(tuple(s.tasks)))


def run(s: Settings, out: str | None, command: str, log=print, scheduler: str | None = None) -> dict:
    """Every seed of ``s``, one after the other here, or with ``scheduler`` ("local" or an address) each seed
    a task of peftc.distributed.run_sweep; one results file either way."""
    from peftc.data.text_tasks import build_tasks

    t0 = time.perf_counter()
    if scheduler:
        done = common.sweep_seeds(partial(seed_task, s), s.seeds, scheduler, modules=(NAME, "domain_adapted_minilm"))
        per_seed = {str(seed): done[seed] for seed in s.seeds}
    else:
        tasks = build_tasks(tuple(s.tasks))
        per_seed = {str(seed): run_seed(seed, s, tasks, log) for seed in s.seeds}
    payload = {"settings": asdict(s), "command": command, "templates": list(TEMPLATES),
               "environment": common.environment(), "seconds": time.perf_counter() - t0,
               "per_seed": per_seed}
    payload["aggregate"] = aggregate(per_seed)
    payload["verdicts"] = payload["aggregate"]["verdicts"]
    if out:
        common.write_results(out, payload, markdown(payload))
    return payload


def merge(stems: list[str], out: str) -> dict:
    """Combine results files of one configuration, each holding other seeds, into ``out``."""
    payload = common.merge_seed_parts(stems)
    per_seed = payload["per_seed"]
    payload["aggregate"] = aggregate(per_seed)
    payload["verdicts"] = payload["aggregate"]["verdicts"]
    common.write_results(out, payload, markdown(payload))
    return payload


def render(name: str) -> dict:
    """Recompute the aggregate, verdicts and markdown of results/<name>.json (no model is run)."""
    payload = common.read_results(name)
    payload["aggregate"] = aggregate(payload["per_seed"])
    payload["verdicts"] = payload["aggregate"]["verdicts"]
    common.write_results(name, payload, markdown(payload))
    return payload


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--seed", type=int, default=None, help="one seed; results go to <out>_s<seed>")
    ap.add_argument("--tasks", nargs="+", default=None)
    ap.add_argument("--adapt-pairs", type=int, default=None, help="adaptation (gloss, lemmas) pairs (default 8000)")
    ap.add_argument("--test-per-class", type=int, default=None, help="test examples per class (default 40)")
    ap.add_argument("--shots", type=int, default=None, help="k of the few-shot regime (default 3)")
    ap.add_argument("--quick", action="store_true", help="tiny configuration (REDUCED), to check the code")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help=f"results name (default {NAME}, {NAME}_quick with --quick)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="NAME",
                    help="combine results/NAME.json files (same settings, other seeds) into --out, then stop")
    common.add_scheduler_argument(ap)
    ap.add_argument("--render", default=None, metavar="NAME",
                    help="recompute the aggregate, verdicts and markdown of results/NAME.json, then stop")
    return ap.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings(**QUICK) if args.quick else Settings()
    if args.seeds is not None:
        s = replace(s, seeds=list(args.seeds))
    if args.seed is not None:
        s = replace(s, seeds=[args.seed])
    if args.tasks is not None:
        s = replace(s, tasks=list(args.tasks))
    if args.adapt_pairs is not None:
        s = replace(s, adapt_pairs=args.adapt_pairs)
    if args.test_per_class is not None:
        s = replace(s, test_per_class=args.test_per_class)
    if args.shots is not None:
        s = replace(s, shots=args.shots)
    return s


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if "numpy" not in sys.modules:
        common.configure_threads(args.threads)
    out = args.out or (NAME + ("_quick" if args.quick else ""))
    if args.merge:
        return merge(args.merge, out)
    if args.render:
        return render(args.render)
    if args.seed is not None and args.out is None:
        out += f"_s{args.seed}"
    command = "PYTHONPATH=. python benchmarks/medical_protocol.py " + " ".join(sys.argv[1:] if argv is None else argv)
    return run(settings_from(args), out, command, scheduler=args.scheduler)


if __name__ == "__main__":
    main()
