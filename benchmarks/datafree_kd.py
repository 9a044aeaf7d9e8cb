"""Data-free distillation on Fashion-MNIST: a small CNN student distilled from a SmallResNet teacher without
the teacher's data, against students trained on the real data and a student that never saw any data.

Protocol. The teacher (SmallResNet, widths 16-32-64) is trained on the Fashion-MNIST train split (its
"private" data; cached, one teacher for all seeds). The official test split is cut in two: the first half
is the validation split on which every arm's knobs are chosen (peftc.evaluation.select_on_validation), the
second half the test split, touched once per arm and seed. The student is a FusionStudent (widths 8-16-28,
at most a quarter of the teacher's parameters) with and without the adaptive fusion module (our gated
stand-in; see peftc.distill.fusion). Arms:

  scratch          the student untrained (no data at all: the floor)
  real_ce          CE on the real train split (upper reference)
  real_kd          0.5 CE + 0.5 tau^2 KL against the teacher on the real train split
  afstip           AF-STip's recipe: Gaussian-perturbed pseudo-samples around class anchors built from the
                   teacher alone (a short DeepInversion run per anchor)
  dafl             DAFL (generator with the one-hot, activation and information-entropy losses)
  deepinversion    DeepInversion (images optimised against the teacher's BN statistics), then KD

The data-free arms read no image of any split while training (tests/test_distill_methods.py runs them with
the loaders patched to raise); only the knob selection scores them on the validation split. Migration: a
second teacher is trained on classes 0-8; the student is distilled from it by AF-STip (the knobs AF-STip
selected above) and migrated to class 9 with 5, 20 or 100 labelled examples of it, rehearsing the old
classes on pseudo-samples; accuracy and macro-F1 on the old classes, the new class and all ten.

Claims (verdicts, paired t over seeds, Holm over the table): each data-free method beats the untrained
student; each reaches 90% of the real-data KD student's accuracy; the fusion module raises each data-free
method's accuracy.

REDUCED configuration: one teacher for all seeds, two epochs; the students' budgets are a fraction of
the papers' (DAFL's 200 epochs x 120 iterations with a 128-wide generator, here 400 iterations with a
32-wide one; DeepInversion's 2k iterations per batch, here 150 on 6 batches of 64; half an epoch for the
real-data students); about 1 CPU-hour per seed on 2 threads is the target, not yet measured (each arm's
seconds are recorded, knob selection included; deepinversion+fusion reuses the images deepinversion
synthesised for the same knob, and the AF-STip arms after the first reuse its anchors, so their seconds
leave that synthesis out).

Run:  OPENBLAS_NUM_THREADS=2 PYTHONPATH=. python benchmarks/datafree_kd.py --seed 0   (then 1..4)
      PYTHONPATH=. python benchmarks/datafree_kd.py --merge datafree_kd_s0 ... datafree_kd_s4
      PYTHONPATH=. python benchmarks/datafree_kd.py --quick    (tiny, to check the code)
Writes benchmarks/results/datafree_kd.{json,md} (per seed: datafree_kd_s<seed>).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import common

NAME = "datafree_kd"
ARMS = ("scratch", "real_ce", "real_kd", "afstip", "dafl", "deepinversion")
DATA_FREE = ("afstip", "dafl", "deepinversion")


@dataclass
class Settings:
    seeds: list[int] = field(default_factory=lambda: [0])
    teacher_widths: tuple[int, ...] = (16, 32, 64)
    teacher_epochs: int = 2
    teacher_train_limit: int | None = None
    student_widths: tuple[int, ...] = (8, 16, 28)
    memory_slots: int = 8
    val_size: int = 5000  # first half of the official test split; the rest is the test split
    test_size: int = 5000
    real_epochs: float = 0.5
    real_lrs: tuple[float, ...] = (1e-3, 3e-3)
    batch_size: int = 64
    afstip_steps: int = 800
    afstip_sigmas: tuple[float, ...] = (0.05, 0.1)
    anchors_per_class: int = 16
    anchor_steps: int = 150
    dafl_iterations: int = 400
    dafl_width: int = 32
    dafl_lr_gs: tuple[float, ...] = (0.02, 0.2)
    di_batches: int = 6
    di_iterations: int = 150
    di_alpha_fs: tuple[float, ...] = (1.0, 10.0)
    di_kd_steps: int = 800
    migration_shots: tuple[int, ...] = (5, 20, 100)
    migration_steps: int = 300


QUICK = dict(teacher_widths=(8, 16, 32), teacher_epochs=1, teacher_train_limit=1000, student_widths=(4, 8, 8),
             memory_slots=4, val_size=200, test_size=200, real_epochs=0.05, real_lrs=(3e-3,), batch_size=16,
             afstip_steps=4, afstip_sigmas=(0.1, 0.3), anchors_per_class=1, anchor_steps=2, dafl_iterations=4,
             dafl_width=8,
             dafl_lr_gs=(0.2,), di_batches=1, di_iterations=3, di_alpha_fs=(1.0,), di_kd_steps=4,
             migration_shots=(5,), migration_steps=4)


def splits(s: Settings):
    """(train_x, train_y, val_x, val_y, test_x, test_y): the train split, and the official test split cut in
    two (validation first)."""
    import numpy as np

    from peftc.data.fashion_mnist import load_fashion_mnist

    tx, ty = load_fashion_mnist("train")
    ex, ey = load_fashion_mnist("test")
    v, t = s.val_size, s.test_size
    as_nchw = lambda a: np.ascontiguousarray(a[:, None], dtype=np.float32)  # noqa: E731
    return as_nchw(tx), ty, as_nchw(ex[:v]), ey[:v], as_nchw(ex[v:v + t]), ey[v:v + t]


def teacher(s: Settings, classes: tuple[int, ...] | None = None):
    from peftc.tta import SourceConfig, train_source_model

    cfg = SourceConfig(widths=tuple(s.teacher_widths), epochs=s.teacher_epochs, seed=0,
                       train_limit=s.teacher_train_limit, classes=classes)
    model, info = train_source_model(cfg)
    return model, info


def predict(model, x, batch: int = 500):
    import numpy as np

    model.eval()
    return np.concatenate([model.forward(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def class_f1(labels, pred, c: int) -> float:
    """F1 of class ``c`` alone (0 when it is neither predicted nor present)."""
    tp = int(((pred == c) & (labels == c)).sum())
    denom = int((pred == c).sum() + (labels == c).sum())
    return 2.0 * tp / denom if denom else 0.0


def n_params(model) -> int:
    return int(sum(p.size for p in model.parameters()))


def train_real(student, t, x, y, s: Settings, lr: float, kd: bool, seed: int) -> None:
    """One pass (``real_epochs``) over the real train split: CE, or 0.5 CE + 0.5 tau^2 KL (tau 4) with the teacher."""
    import numpy as np

    from peftc import functional as F
    from peftc.distill.teacher import teacher_logits
    from peftc.optim import AdamW

    rng = np.random.default_rng(seed)
    opt = AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    steps = max(1, int(s.real_epochs * len(x) / s.batch_size))
    order = np.concatenate([rng.permutation(len(x)) for _ in range(int(np.ceil(s.real_epochs)) + 1)])
    for i in range(steps):
        idx = order[i * s.batch_size:(i + 1) * s.batch_size]
        xb, yb = x[idx], y[idx].astype(np.int64)
        student.train()
        opt.zero_grad()
        z = student.forward(xb)
        d = np.zeros_like(z)
        ce, _, probs = F.cross_entropy_forward(z, yb)
        F.cross_entropy_backward(0.5 if kd else 1.0, probs, yb, dlogits=d)
        if kd:
            zt = teacher_logits(t, xb)
            _, ps, pt = F.kd_kl_forward(z, zt, 4.0)
            F.kd_kl_backward(0.5, ps, pt, z, zt, 4.0, dstudent_logits=d)
        student.backward(d, input_grad=False)
        opt.step()


def candidates(arm: str, s: Settings) -> list:
    return {"scratch": [None], "real_ce": list(s.real_lrs), "real_kd": list(s.real_lrs),
            "afstip": list(s.afstip_sigmas), "dafl": list(s.dafl_lr_gs), "deepinversion": list(s.di_alpha_fs)}[arm]


def afstip_config(s: Settings, sigma: float, seed: int):
    from peftc.distill import AFSTipConfig, KDConfig

    return AFSTipConfig(sigma=sigma, steps=s.afstip_steps, batch_size=s.batch_size,
                        kd=KDConfig(tau=4.0, lambda_kd=1.0, lambda_cls=0.5, confidence=0.5),
                        anchors_per_class=s.anchors_per_class, anchor_steps=s.anchor_steps, seed=seed)


def train_arm(arm: str, knob, t, data, s: Settings, fusion: bool, seed: int, num_classes: int = 10,
              pools: dict | None = None):
    """A fresh student trained by ``arm`` with knob ``knob``; the data-free arms get no data argument.
    ``pools`` keeps DeepInversion's synthesised images per knob and AF-STip's anchors, so the students with and
    without fusion learn from the same images (neither depends on the student)."""
    from peftc.distill import (DAFLConfig, DeepInversionConfig, FusionStudent, KDConfig, afstip_distill,
                               dafl_distill, deepinversion_distill)
    from peftc.distill.pseudo import build_anchors

    student = FusionStudent(tuple(s.student_widths), num_classes, seed=seed, fusion=fusion,
                            memory_slots=s.memory_slots)
    shape = (1, 28, 28)
    if arm in ("real_ce", "real_kd"):
        train_real(student, t, data[0], data[1], s, knob, arm == "real_kd", seed)
    elif arm == "afstip":
        pools = {} if pools is None else pools
        cfg = afstip_config(s, knob, seed)
        if "anchors" not in pools:  # the anchors depend on the teacher and the seed only: built once per seed
            pools["anchors"] = build_anchors(t, num_classes, shape, cfg)[0]
        afstip_distill(t, student, num_classes, shape, cfg, centres=pools["anchors"])
    elif arm == "dafl":
        dafl_distill(t, student, DAFLConfig(iterations=s.dafl_iterations, batch_size=s.batch_size, lr_g=knob,
                                            width=s.dafl_width, seed=seed))
    elif arm == "deepinversion":
        pools = {} if pools is None else pools
        out = deepinversion_distill(t, student, num_classes, shape,
                                    DeepInversionConfig(batch_size=s.batch_size, iterations=s.di_iterations,
                                                        batches=s.di_batches, alpha_f=knob, kd_steps=s.di_kd_steps,
                                                        kd_batch_size=s.batch_size, kd=KDConfig(tau=4.0), seed=seed),
                                    images=pools.get(knob))
        pools[knob] = out["images"]
    return student


def run_seed(s: Settings, seed: int, data, t, t9) -> dict:
    import numpy as np

    from peftc.distill.migrate import MigrationConfig, migrate_to_new_class
    from peftc.evaluation import accuracy, macro_f1, select_on_validation

    tx, ty, vx, vy, ex, ey = data

    def evaluate(model, split):
        x, y = (vx, vy) if split == "validation" else (ex, ey)
        pred = predict(model, x)
        if split == "validation":
            return accuracy(y, pred)
        return {"acc": accuracy(y, pred), "macro_f1": macro_f1(y, pred, 10)}

    methods, pools = {}, {}
    for arm in ARMS:
        for fusion in (False, True):
            name = arm + ("+fusion" if fusion else "")
            t0 = time.perf_counter()
            sel = select_on_validation(candidates(arm, s),
                                       lambda k: train_arm(arm, k, t, (tx, ty), s, fusion, seed, pools=pools),
                                       evaluate)
            methods[name] = {**sel.test_score, "student_params": n_params(sel.model), "teacher_params": n_params(t),
                             "seconds": time.perf_counter() - t0, "selected": sel.best_candidate,
                             "validation": list(sel.scores)}
            print(f"seed {seed} {name}: test acc {sel.test_score['acc']:.4f} (knob {sel.best_candidate}, "
                  f"{methods[name]['seconds']:.0f} s)", flush=True)
    # migration: a 9-class teacher, AF-STip with the sigma it selected above, then class 9 from k examples
    sigma = methods["afstip"]["selected"]
    t0 = time.perf_counter()
    pools9: dict = {}
    base = train_arm("afstip", sigma, t9, None, s, False, seed, num_classes=9, pools=pools9)
    anchors = pools9["anchors"]
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(ty == 9)
    old, new = ey < 9, ey == 9
    migration = []
    for k in s.migration_shots:
        student = copy.deepcopy(base)
        shots = tx[rng.choice(pool, k, replace=False)]
        migrate_to_new_class(student, t9, shots, anchors,
                             MigrationConfig(steps=s.migration_steps, sigma=sigma, seed=seed))
        pred = predict(student, ex)
        migration.append({"shots": k, "old_acc": accuracy(ey[old], pred[old]),
                          "old_macro_f1": macro_f1(ey[old], pred[old], 10), "new_acc": accuracy(ey[new], pred[new]),
                          "new_f1": class_f1(ey, pred, 9),
                          "all_acc": accuracy(ey, pred), "all_macro_f1": macro_f1(ey, pred, 10)})
    print(f"seed {seed} migration: {migration} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"methods": methods, "migration": migration}


def aggregate(per_seed: dict) -> dict:
    """Means over seeds, and the verdicts (when there are at least two seeds)."""
    import numpy as np

    from peftc.evaluation import Claim, verdicts

    seeds = sorted(per_seed, key=int)
    names = list(per_seed[seeds[0]]["methods"])
    acc = {n: [per_seed[k]["methods"][n]["acc"] for k in seeds] for n in names}
    methods = {n: {key: float(np.mean([per_seed[k]["methods"][n][key] for k in seeds]))
                   for key in ("acc", "macro_f1", "seconds")} for n in names}
    for n in names:
        methods[n]["student_params"] = per_seed[seeds[0]]["methods"][n]["student_params"]
        methods[n]["teacher_params"] = per_seed[seeds[0]]["methods"][n]["teacher_params"]
    keys = [key for key in per_seed[seeds[0]]["migration"][0] if key != "shots"]
    migration = [{"shots": row["shots"], **{key: float(np.mean([per_seed[k]["migration"][i][key] for k in seeds]))
                                          for key in keys}}
                 for i, row in enumerate(per_seed[seeds[0]]["migration"])]
    claims = []
    for m in DATA_FREE:
        claims.append(Claim(f"{m} acc > untrained student acc", acc[m], acc["scratch"], "greater"))
        claims.append(Claim(f"{m} acc > 0.9 x real-data KD acc", acc[m], [0.9 * a for a in acc["real_kd"]],
                            "greater"))
        claims.append(Claim(f"{m}+fusion acc > {m} acc", acc[m + "+fusion"], acc[m], "greater"))
    out = {"methods": methods, "migration": migration, "verdicts": []}
    if len(seeds) >= 2:
        out["verdicts"] = verdicts(claims)
    return out


def markdown(payload: dict) -> str:
    from peftc.evaluation import verdicts_markdown

    agg = payload["aggregate"]
    lines = [f"# Data-free distillation on Fashion-MNIST ({len(payload['per_seed'])} seeds, REDUCED)", "",
             f"CPU: {payload['cpu']}. Command: `{payload['command']}`.", "",
             "Accuracy and macro-F1 on the test half of the official test split (means over seeds); knobs "
             "chosen on the validation half.", ""]
    rows = [[n, m["acc"], m["macro_f1"], m["student_params"], m["teacher_params"], m["seconds"]]
            for n, m in agg["methods"].items()]
    lines.append(common.markdown_table(["method", "acc", "macro-F1", "student params", "teacher params", "seconds"],
                                       rows))
    lines += ["## Migration to class 9 (teacher on classes 0-8, AF-STip student)", ""]
    mrows = [[r["shots"], r["old_acc"], r["old_macro_f1"], r["new_acc"], r["new_f1"], r["all_acc"], r["all_macro_f1"]]
             for r in agg["migration"]]
    lines.append(common.markdown_table(["shots", "old acc", "old macro-F1", "new acc", "new F1", "all acc",
                                        "all macro-F1"], mrows))
    lines += ["## Verdicts", ""]
    if agg["verdicts"]:
        lines.append(verdicts_markdown(agg["verdicts"]))
    else:
        lines.append("One seed: no claim can be tested across seeds (merge the per-seed files with --merge).")
    return "\n".join(lines) + "\n"


def run(s: Settings, out: str, command: str) -> dict:
    t0 = time.perf_counter()
    data = splits(s)
    t, info = teacher(s)
    t9, info9 = teacher(s, tuple(range(9)))
    print(f"teacher test acc {info['test_accuracy']:.4f}, 9-class teacher {info9['test_accuracy']:.4f}", flush=True)
    per_seed = {str(seed): run_seed(s, seed, data, t, t9) for seed in s.seeds}
    env = common.environment()
    payload = {"benchmark": NAME, "cpu": env["cpu"], "command": command, "settings": asdict(s),
               "teacher": {"test_accuracy": info["test_accuracy"], "test_accuracy_9_classes": info9["test_accuracy"],
                           "params": n_params(t)},
               "environment": env, "seconds": time.perf_counter() - t0, "per_seed": per_seed}
    payload["aggregate"] = aggregate(per_seed)
    payload["methods"] = payload["aggregate"]["methods"]
    payload["migration"] = payload["aggregate"]["migration"]
    payload["verdicts"] = payload["aggregate"]["verdicts"]
    common.write_results(out, payload, markdown(payload))
    return payload


def merge(stems: list[str], out: str) -> dict:
    """Combine per-seed results files of one configuration into ``out``, with the verdicts."""
    payload = common.merge_seed_parts(stems)
    per_seed = payload["per_seed"]
    payload["aggregate"] = aggregate(per_seed)
    payload["methods"] = payload["aggregate"]["methods"]
    payload["migration"] = payload["aggregate"]["migration"]
    payload["verdicts"] = payload["aggregate"]["verdicts"]
    common.write_results(out, payload, markdown(payload))
    return payload


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--seed", type=int, default=None, help="one seed; results go to <out>_s<seed>")
    ap.add_argument("--quick", action="store_true", help="tiny configuration, to check the code")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help=f"results name (default {NAME}, {NAME}_quick with --quick)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="NAME",
                    help="combine results/NAME.json files (same settings, other seeds) into --out, then stop")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if "numpy" not in sys.modules:
        common.configure_threads(args.threads)
    out = args.out or (NAME + ("_quick" if args.quick else ""))
    if args.merge:
        return merge(args.merge, out)
    s = Settings(**QUICK) if args.quick else Settings()
    if args.seeds is not None:
        s = replace(s, seeds=list(args.seeds))
    if args.seed is not None:
        s = replace(s, seeds=[args.seed])
        if args.out is None:
            out += f"_s{args.seed}"
    command = "PYTHONPATH=. python benchmarks/datafree_kd.py " + " ".join(sys.argv[1:] if argv is None else argv)
    return run(s, out, command)


if __name__ == "__main__":
    main()
