"""PassUntil and the task scaling law on a GPT-2 family trained here (Hu et al., ICLR 2024).

Two generation tasks built here, each answer checked by a program:
- ``add`` (one right answer): "A37+45=" -> "82;". The exact probability that one sampled decode passes is the
  teacher-forced probability of "82;", so it checks the PassUntil estimator (coverage of its 95% interval).
- ``expr`` (many right answers): "E3719:11=" -> any "+"/"-" expression over the given digits, each used at
  most once, equal to 11, e.g. "3+9-1;" or "7+1+3;".

Six GPT-2 sizes (non-embedding parameters over about two orders of magnitude) are trained from scratch on
the same data stream with the same schedule. For each size and task: greedy accuracy, PassUntil's PU
(r = 2 passes or a budget of draws per instance, the unbiased (r-1)/(K-1), bootstrap interval over
instances) and the draws spent, with the paper's own r/K score beside it (``pu_mle``: about twice the
unbiased value at r = 2 for small p). The budget is 10^4 draws per instance, a tenth of the paper's 10^5 cap
(cost: see FULL below): pass probabilities below about 2e-4 end censored (0 or j/K, kept in the mean). The
law log(-log PU) = log c - alpha log N is fitted on the five smaller sizes and its prediction for the largest
is written to the results file before that model is trained.

A seed fixes the models' initialisation, the training stream and the test instances. One seed's run checks
the prediction against its own interval; claims across seeds (paired t over seeds, Holm over the file) come
from merging the per-seed files:
- the law predicts the largest model's PU better than persistence (the second-largest model's PU), per task,
  measured as the distance to the measured PU on the law's own scale log(-log PU);
- the law on PU predicts the largest model with a smaller absolute error than a straight-line trend of greedy
  accuracy in log N (fitted on the same five smaller sizes, clipped to [0, 1]) predicts its greedy accuracy,
  per task: the paper's point that PU is predictable where greedy accuracy is not;
- the estimator's coverage on ``add`` is above 0.90 and below 0.99 (the issue's target band).

    python benchmarks/passuntil_scaling.py --quick     # minutes: tiny budgets, checks the pipeline
    python benchmarks/passuntil_scaling.py --seed 0    # one seed of the reduced full run (3-4 min on one core)
    python benchmarks/passuntil_scaling.py --merge passuntil_scaling_s0 ... passuntil_scaling_s4
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, replace

from common import (check_seed_parts, configure_threads, environment, markdown_table, merged_command, merged_cpu,
                    read_results, write_results)

TOKENS = "0123456789+-=;:AE"
ID = {c: i for i, c in enumerate(TOKENS)}
END, PAD_LABEL = ID[";"], -100


@dataclass
class Settings:
    sizes: tuple[tuple[int, int, int], ...]  # (n_layer, n_embd, n_head), smallest first
    steps: int
    batch: int
    lr: float
    instances: int
    target_passes: int
    max_draws: int
    draw_batch: int
    seq_len: int = 16
    seed: int = 0


# the reduced full run: ~2.5 s per 1000 draws on one core (one-token decode steps of 512 rows), so 30 instances
# x 2 tasks x 6 sizes at <= 10000 draws each stay within about an hour even where every instance is censored
FULL = Settings(sizes=((1, 8, 2), (1, 12, 2), (2, 16, 2), (2, 24, 4), (3, 32, 4), (4, 48, 4)), steps=2000, batch=64,
                lr=3e-3, instances=30, target_passes=2, max_draws=10_000, draw_batch=512)
QUICK = Settings(sizes=((1, 8, 2), (1, 12, 2), (1, 16, 2)), steps=60, batch=32, lr=3e-3, instances=4,
                 target_passes=2, max_draws=256, draw_batch=128)


# ---- the two tasks -----------------------------------------------------------------------------------
def add_example(rng) -> tuple[str, str]:
    a, b = (int(v) for v in rng.integers(0, 100, 2))
    return f"A{a}+{b}=", f"{a + b};"


def expr_example(rng) -> tuple[str, str]:
    digits = [int(d) for d in rng.integers(1, 10, 4)]
    k = int(rng.integers(2, 4))
    used = [digits[i] for i in rng.permutation(4)[:k]]
    ops = ["+" if rng.random() < 0.6 else "-" for _ in range(k - 1)]
    text = str(used[0]) + "".join(o + str(d) for o, d in zip(ops, used[1:]))
    value = eval(text)  # noqa: S307 - digits and +/- only, built here
    if value < 0:
        return expr_example(rng)
    return f"E{''.join(map(str, digits))}:{value}=", text + ";"


def expr_ok(prompt: str, answer: str) -> bool:
    """Whether ``answer`` ("3+9-1;") uses only the prompt's digits (each at most once) and equals its target."""
    if not answer.endswith(";"):
        return False
    body = answer[:-1]
    digits, target = prompt[1:5], int(prompt[6:-1])
    if len(body) % 2 == 0 or any(c not in "+-" for c in body[1::2]) or any(not c.isdigit() for c in body[::2]):
        return False
    pool = list(digits)
    for d in body[::2]:
        if d not in pool:
            return False
        pool.remove(d)
    return eval(body) == target  # noqa: S307 - checked above: single digits joined by + and -


TASKS = {"add": add_example, "expr": expr_example}
MAX_ANSWER = {"add": 4, "expr": 8}


def encode(text: str):
    import numpy as np

    return np.array([ID[c] for c in text], dtype=np.int64)


def decode(ids) -> str:
    return "".join(TOKENS[int(i)] for i in ids)


def passes(task: str, prompt: str, answer: str, rows) -> "np.ndarray":  # noqa: F821
    """Per generated row (tokens after the prompt): the text up to and including the first ';' is checked."""
    import numpy as np

    out = np.zeros(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        text = decode(row)
        cut = text.find(";")
        if cut < 0:
            continue
        text = text[:cut + 1]
        out[i] = text == answer if task == "add" else expr_ok(prompt, text)
    return out


def batch_of(rng, settings: Settings):
    """A training batch mixing both tasks; loss on the answer tokens only; rows padded with ';' (not counted)."""
    import numpy as np

    ids = np.full((settings.batch, settings.seq_len), END, dtype=np.int64)
    labels = np.full_like(ids, PAD_LABEL)
    for i in range(settings.batch):
        prompt, answer = TASKS["add" if i % 2 == 0 else "expr"](rng)
        seq = encode(prompt + answer)
        ids[i, :seq.size] = seq
        labels[i, len(prompt):seq.size] = seq[len(prompt):]
    return ids, labels


# ---- training and evaluation -------------------------------------------------------------------------
def train(size: tuple[int, int, int], settings: Settings):
    import numpy as np

    from peftc.models import GPT2Config, GPT2LMHeadModel
    from peftc.optim import AdamW

    n_layer, n_embd, n_head = size
    cfg = GPT2Config(vocab_size=len(TOKENS), n_positions=32, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=END)
    model = GPT2LMHeadModel.from_config(cfg, seed=settings.seed).train()
    opt = AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    rng = np.random.default_rng(settings.seed)  # the same data stream for every size
    warm = max(1, settings.steps // 20)
    losses = []
    for step in range(settings.steps):
        ids, labels = batch_of(rng, settings)
        for g in opt.param_groups:  # linear warm-up, then cosine decay: the same schedule for every size
            frac = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) /
                                                                              max(1, settings.steps - warm)))
            g["lr"] = settings.lr * frac
        model.zero_grad()
        losses.append(model.causal_lm_loss(ids, labels))
        model.causal_lm_loss_backward()
        opt.step()
    return model.eval(), float(np.mean(losses[-max(1, settings.steps // 10):]))


def teacher_forced_probability(model, prompt: str, answer: str) -> float:
    """P(answer | prompt) under sampling at temperature 1: the product of the answer tokens' probabilities."""
    import numpy as np

    ids = encode(prompt + answer)[None]
    logits = model(ids)[0].astype(np.float64)
    logp = logits - logits.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    start = len(prompt)
    return float(np.exp(sum(logp[t - 1, ids[0, t]] for t in range(start, ids.shape[1]))))


def evaluate(model, task: str, instances: list[tuple[str, str]], settings: Settings, size_index: int) -> dict:
    import numpy as np

    from peftc.evaluation import estimate_pass_probability, pass_until, passuntil_score

    greedy, estimates, paper, exact, covered = [], [], [], [], []
    for i, (prompt, answer) in enumerate(instances):
        ids = encode(prompt)[None]
        out = model.generate(ids, MAX_ANSWER[task], do_sample=False)[:, ids.shape[1]:]
        greedy.append(bool(passes(task, prompt, answer, out)[0]))
        calls = [0]

        def draw(n: int, prompt=prompt, answer=answer, ids=ids, calls=calls, i=i) -> np.ndarray:
            calls[0] += 1
            seed = ((settings.seed * 1000 + size_index) * 1000 + i) * 100_000 + calls[0]
            rows = model.generate(ids, MAX_ANSWER[task], num_return_sequences=n, seed=seed)[:, ids.shape[1]:]
            return passes(task, prompt, answer, rows)

        j, k = pass_until(draw, settings.target_passes, settings.max_draws, settings.draw_batch)
        est = estimate_pass_probability(j, k, settings.target_passes)
        estimates.append(est)
        paper.append(estimate_pass_probability(j, k, settings.target_passes, estimator="mle").estimate)
        if task == "add":
            p = teacher_forced_probability(model, prompt, answer)
            exact.append(p)
            covered.append(est.ci95[0] <= p <= est.ci95[1])
    score = passuntil_score(estimates, seed=settings.seed)
    row = {"params": None, "greedy_acc": float(np.mean(greedy)), "pu": score.pu, "pu_ci95": list(score.ci95),
           "pu_se": score.se, "pu_mle": float(np.mean(paper)), "samples": score.draws,
           "censored": score.n_censored}
    if exact:
        row["exact_pu"] = float(np.mean(exact))
        row["covered"] = int(sum(covered))
    return row


def render(payload: dict) -> str:
    seeds = (f" ({len(payload['per_seed'])} seeds; the tables show seed {payload['shown_seed']})"
             if "per_seed" in payload else "")
    parts = [f"# PassUntil task scaling on a GPT-2 family trained here{seeds}\n\n`{payload['command']}`, "
             f"CPU {payload.get('cpu') or payload['environment']['cpu']}, {payload['wall_seconds']:.0f} s.\n"]
    for task, t in payload["tasks"].items():
        rows = [[s["params"], s["greedy_acc"], s["pu"], f"[{s['pu_ci95'][0]:.3g}, {s['pu_ci95'][1]:.3g}]",
                 s["samples"], s.get("exact_pu", "")] for s in t["sizes"]]
        parts.append(f"\n## {task}\n\n" + markdown_table(["non-embedding params", "greedy acc", "PU", "PU 95% CI",
                                                           "draws", "exact PU"], rows))
        pred = t.get("prediction")
        if pred and "error" in pred:
            parts.append(f"\nno law fitted: {pred['error']}\n")
        elif pred:
            parts.append(f"\nlaw on the smaller sizes: alpha = {pred['alpha']:.3g}, log c = {pred['log_c']:.3g}; "
                         f"predicted PU {pred['predicted_pu']:.3g} (95% CI [{pred['ci95'][0]:.3g}, "
                         f"{pred['ci95'][1]:.3g}]), measured {pred.get('measured_pu', float('nan')):.3g}: "
                         f"{pred.get('verdict', 'not measured')}\n")
    if payload.get("coverage95") is not None:
        parts.append(f"\nEstimator coverage on `add` (exact teacher-forced probability inside the 95% interval): "
                     f"{payload['coverage95']:.3f} over {payload['coverage_instances']} instance-size pairs"
                     f"{' (pooled over the seeds)' if 'per_seed' in payload else ''}.\n")
    if "per_seed" in payload:
        from peftc.evaluation import verdicts_markdown

        rows = []
        for seed, p in payload["per_seed"].items():
            for task, e in p["prediction_errors"].items():
                pred, last = p["tasks"][task]["prediction"], p["tasks"][task]["sizes"]
                rows.append([seed, task, pred["predicted_pu"], f"[{pred['ci95'][0]:.3g}, {pred['ci95'][1]:.3g}]",
                             last[-1]["pu"], "yes" if e["inside"] else "no", last[-2]["pu"], e["greedy_trend"],
                             last[-1]["greedy_acc"]])
        parts.append("\n## Every seed: the largest model predicted from the five smaller ones\n\n" + markdown_table(
            ["seed", "task", "predicted PU", "95% CI", "measured PU", "inside", "second-largest PU",
             "greedy trend", "measured greedy"], rows))
        parts.append("\nPer-seed coverage on `add`: " + ", ".join(
            f"{p['coverage95']:.3f}" for p in payload["per_seed"].values()) + ".\n")
        parts.append("\n## Verdicts (paired t over seeds, Holm over the claims)\n\n"
                     + verdicts_markdown(payload["verdicts"]))
    return "".join(parts)


def predict_largest(payload: dict, size: tuple[int, int, int], elapsed: float) -> None:
    """Fit each task's law on the sizes measured so far and store its prediction for ``size``."""
    from peftc.evaluation import fit_task_scaling_law
    from peftc.models import GPT2Config

    n = GPT2Config(n_layer=size[0], n_embd=size[1], n_head=size[2]).num_non_embedding_parameters()
    for t in payload["tasks"].values():
        sizes = t["sizes"]
        try:
            law = fit_task_scaling_law([s["params"] for s in sizes], [s["pu"] for s in sizes],
                                       [max(s["pu_se"], 1e-12) for s in sizes])
        except ValueError as exc:
            t["prediction"] = {"error": str(exc)}
            continue
        pu, ci = law.predict(n)
        t["prediction"] = {"params": n, "predicted_pu": pu, "ci95": list(ci), "alpha": law.alpha, "log_c": law.log_c,
                           "fitted_on": [s["params"] for s in sizes], "excluded": list(law.excluded),
                           "written_at": elapsed}


def run(settings: Settings, command: str, on_prediction=None) -> dict:
    """Train and evaluate the family; ``on_prediction(payload)`` is called once the law's prediction for the largest
    size is in the payload and before that model is trained (the script writes the results file there)."""
    import numpy as np

    start = time.time()
    rng = np.random.default_rng(10_000 + settings.seed)  # test instances: a stream apart from training's
    instances = {task: [make(rng) for _ in range(settings.instances)] for task, make in TASKS.items()}
    payload = {"command": command, "settings": asdict(settings), "environment": environment(),
               "tasks": {t: {"sizes": []} for t in TASKS}, "verdicts": [],
               "note": "one training seed: the prediction is checked against its own interval, not a paired claim "
                       "over seeds"}
    payload["cpu"] = payload["environment"]["cpu"]
    for index, size in enumerate(settings.sizes):
        if index == len(settings.sizes) - 1:
            predict_largest(payload, size, time.time() - start)
            if on_prediction is not None:
                on_prediction({**payload, "wall_seconds": time.time() - start})
        model, loss = train(size, settings)
        for task in TASKS:
            row = evaluate(model, task, instances[task], settings, index)
            row["params"] = model.config.num_non_embedding_parameters()
            row["n_layer"], row["n_embd"], row["train_loss"] = size[0], size[1], loss
            payload["tasks"][task]["sizes"].append(row)
            print(f"size {size}: {task} greedy {row['greedy_acc']:.3f} PU {row['pu']:.3g} draws {row['samples']}",
                  flush=True)
    for t in payload["tasks"].values():
        pred = t.get("prediction")
        if pred and "predicted_pu" in pred:
            measured = t["sizes"][-1]
            pred["measured_pu"] = measured["pu"]
            pred["measured_ci95"] = measured["pu_ci95"]
            pred["verdict"] = ("inside the predicted interval" if pred["ci95"][0] <= measured["pu"] <= pred["ci95"][1]
                               else "outside the predicted interval")
    add = payload["tasks"]["add"]
    total = len(add["sizes"]) * settings.instances
    payload["coverage95"] = sum(s["covered"] for s in add["sizes"]) / total
    payload["coverage_instances"] = total
    payload["sizes"] = add["sizes"]  # the top-level keys: the unique-answer task
    payload["prediction"] = add.get("prediction")
    payload["wall_seconds"] = time.time() - start
    return payload


# ---- claims across seeds --------------------------------------------------------------------------------
def law_scale(p: float) -> float:
    """log(-log p), the scale on which the task scaling law is linear (p clipped into (0, 1))."""
    return math.log(-math.log(min(max(float(p), 1e-300), 1.0 - 1e-16)))


def prediction_errors(task: dict, name: str) -> dict:
    """One seed's errors in predicting the largest size of ``task`` (a results file's ``tasks[t]``) from the smaller
    ones: the law's and persistence's (the second-largest size's PU) on the law's scale, the law's in PU, and a
    straight-line trend of greedy accuracy in log N (clipped to [0, 1]) in greedy accuracy."""
    import numpy as np

    pred, sizes = task.get("prediction") or {}, task["sizes"]
    if "predicted_pu" not in pred:
        raise ValueError(f"{name}: no law was fitted ({pred.get('error', 'no prediction stored')}); the seed cannot "
                         "enter the claims")
    measured, previous = sizes[-1], sizes[-2]
    logn = np.log([s["params"] for s in sizes[:-1]])
    slope, intercept = np.polyfit(logn, [s["greedy_acc"] for s in sizes[:-1]], 1)
    greedy_pred = float(np.clip(slope * math.log(measured["params"]) + intercept, 0.0, 1.0))
    return {"law_scale_error": abs(law_scale(pred["predicted_pu"]) - law_scale(measured["pu"])),
            "persistence_scale_error": abs(law_scale(previous["pu"]) - law_scale(measured["pu"])),
            "law_pu_error": abs(pred["predicted_pu"] - measured["pu"]),
            "greedy_trend": greedy_pred, "greedy_trend_error": abs(greedy_pred - measured["greedy_acc"]),
            "inside": pred["ci95"][0] <= measured["pu"] <= pred["ci95"][1]}


def seed_claims(per_seed: dict) -> tuple[list, dict]:
    """The claims of the docstring, one score per seed on each side (seeds in the order of ``per_seed``), and each
    seed's :func:`prediction_errors` per task."""
    from peftc.evaluation import Claim

    errors = {seed: {t: prediction_errors(p["tasks"][t], f"seed {seed} {t}") for t in TASKS}
              for seed, p in per_seed.items()}
    claims = []
    for t in TASKS:
        e = [errors[seed][t] for seed in per_seed]
        claims.append(Claim(f"{t}: the law's prediction is nearer the largest model's PU than the second-largest "
                            "model's PU is (log(-log PU) distance)", [x["law_scale_error"] for x in e],
                            [x["persistence_scale_error"] for x in e], "less"))
        claims.append(Claim(f"{t}: the law predicts PU with a smaller absolute error than a greedy-accuracy trend "
                            "predicts greedy accuracy", [x["law_pu_error"] for x in e],
                            [x["greedy_trend_error"] for x in e], "less"))
    coverage = [p["coverage95"] for p in per_seed.values()]
    claims.append(Claim("add: the estimator's 95% interval covers the exact pass probability more often than 0.90",
                        coverage, [0.90] * len(coverage), "greater"))
    claims.append(Claim("add: the estimator's 95% interval covers the exact pass probability less often than 0.99",
                        coverage, [0.99] * len(coverage), "less"))
    return claims, errors


def merge(names: list[str], out: str) -> dict:
    """Combine the per-seed results files ``names`` (one configuration, other seeds) into ``out`` with the verdicts.

    The top-level ``tasks``, ``sizes`` and ``prediction`` stay those of the first file (``shown_seed``: one seed's
    curves, which the notebook draws); ``coverage95`` is pooled over every seed's instance-size pairs, ``per_seed``
    holds each seed's tasks and prediction errors, and ``verdicts`` the claims across seeds.
    """
    from peftc.evaluation import verdicts

    parts = [read_results(n) for n in names]
    check_seed_parts([p["settings"] for p in parts], names, {"seed"})
    seeds = [p["settings"]["seed"] for p in parts]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the files {names} repeat a seed: {seeds}")
    per_seed = {str(p["settings"]["seed"]): {"tasks": p["tasks"], "coverage95": p["coverage95"],
                                              "coverage_instances": p["coverage_instances"],
                                              "wall_seconds": p["wall_seconds"], "cpu": p.get("cpu")}
                for p in parts}
    claims, errors = seed_claims(per_seed)
    for seed, e in errors.items():
        per_seed[seed]["prediction_errors"] = e
    covered = sum(p["coverage95"] * p["coverage_instances"] for p in parts)
    instances = sum(p["coverage_instances"] for p in parts)
    first = parts[0]
    payload = dict(first, command=merged_command([p["command"] for p in parts], names),
                   settings={**first["settings"], "seeds": seeds}, shown_seed=first["settings"]["seed"],
                   cpu=merged_cpu([p.get("cpu") for p in parts]), coverage95=covered / instances,
                   coverage_instances=instances, wall_seconds=sum(p["wall_seconds"] for p in parts),
                   per_seed=per_seed, verdicts=verdicts(claims),
                   note=f"{len(parts)} seeds; tasks, sizes and prediction show seed {first['settings']['seed']}, "
                        "coverage95 is pooled over the seeds, the verdicts test the claims across seeds")
    write_results(out, payload, render(payload))
    return payload


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the pipeline in minutes")
    parser.add_argument("--seed", type=int, default=0, help="models, training stream and test instances (default 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default=None,
                        help="results name (default passuntil_scaling_s<seed>, passuntil_scaling_quick with --quick, "
                             "passuntil_scaling with --merge)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="NAME",
                        help="combine these per-seed results (same settings, other seeds) into --name, then stop")
    args = parser.parse_args(argv)
    if args.merge:
        merge(args.merge, args.name or "passuntil_scaling")
        return
    configure_threads(args.threads)
    settings = replace(QUICK if args.quick else FULL, seed=args.seed)
    name = args.name or ("passuntil_scaling_quick" if args.quick else f"passuntil_scaling_s{args.seed}")
    command = f"python benchmarks/passuntil_scaling.py --seed {args.seed}" + (" --quick" if args.quick else "")
    payload = run(settings, command, lambda partial: write_results(name, partial, render(partial)))
    write_results(name, payload, render(payload))


if __name__ == "__main__":
    main(sys.argv[1:])
