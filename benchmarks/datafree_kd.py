"""Data-free distillation on Fashion-MNIST and on WordNet: a small student distilled from a teacher without
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
  adi              Adaptive DeepInversion: DeepInversion plus the competition term (the student-teacher
                   Jensen-Shannon divergence rewarded), synthesis and KD rounds alternating; alpha_f the one
                   DeepInversion (no fusion) selected, the competition weight alpha_adi chosen on validation
                   (the reference code's get_images default 0.01, and 0.1)

The data-free arms read no image of any split while training (tests/test_distill_methods.py runs them with
the loaders patched to raise); only the knob selection scores them on the validation split. Migration: a
second teacher is trained on classes 0-8; the student is distilled from it by AF-STip (the knobs AF-STip
selected above) and migrated to class 9 with 5, 20 or 100 labelled examples of it, rehearsing the old
classes on pseudo-samples; accuracy and macro-F1 on the old classes, the new class and all ten.

Text side. The teacher is the main job's classifier (all-MiniLM-L6-v2, mean pooling, a linear head, LoRA
r 8 on query and value; peftc.demo's recipe) trained on 40 of the 41 WordNet lexicographer classes, the
41st (``text_held_out``, noun.food) held out for migration; one teacher for all seeds, cached, merged into
its weights. The splits are the main job's (seeded 80/10/10; ``text_*_per_class`` glosses per class). The
student is a TextStudent: MiniLM's embeddings and first two blocks, then mean pooling or the adaptive fusion
module, and a new head; its word table stays frozen (it is the teacher's too, and the pseudo-samples live in
its space). Arms, each with and without fusion: scratch (the student untrained), real_ce, real_kd (as above,
on the teacher's train glosses) and afstip: Gaussian-perturbed input embeddings around text anchors built
from the teacher alone (random vocabulary tokens between [CLS] and [SEP], embedded by the word table and
moved by normalised gradient steps until the teacher gives them their class), the teacher's pseudo-labels
kept at confidence >= 0.5, 0.5 CE + tau^2 KL (tau 4; peftc.distill.text). sigma is a multiple of the word
table's standard deviation (knob chosen on validation). Accuracy and macro-F1 over the old classes' test
glosses. Migration: the selected afstip student (no fusion) gets a 41st output and 5, 20 or 100 labelled
held-out glosses, rehearsing the old classes on pseudo-samples; accuracy and F1 on the old classes, the new
one and all 41. DAFL and DeepInversion need a BatchNorm teacher and a pixel grid: image side only.

Claims (verdicts, paired t over seeds, Holm over the table): each data-free method (image and text) beats
the untrained student; each reaches 90% of the real-data KD student's accuracy; the fusion module raises
each data-free method's accuracy.

REDUCED configuration: one teacher for all seeds, two epochs; the students' budgets are a fraction of
the papers' (DAFL's 200 epochs x 120 iterations with a 128-wide generator, here 400 iterations with a
32-wide one; DeepInversion's 2k iterations per batch, here 150 on 6 batches of 64; half an epoch for the
real-data students); about 1 CPU-hour per seed on 2 threads is the target, not yet measured (each arm's
seconds are recorded, knob selection included; deepinversion+fusion reuses the images deepinversion
synthesised for the same knob, and the AF-STip arms after the first reuse its anchors, so their seconds
leave that synthesis out). The text side, estimated from its arithmetic (not measured): the teacher once
(6000 glosses x 3 LoRA epochs, about 10 min, cached), then per seed about 100 TFLOP (the real-data students
one epoch each, 4 x 400 AF-STip steps with a teacher forward each, the anchors, migration), some 30-40 min
at the 50-60 GFLOP/s a MiniLM training step reaches on 2 threads.

Run:  OPENBLAS_NUM_THREADS=2 PYTHONPATH=. python benchmarks/datafree_kd.py --seed 0   (then 1..4)
      PYTHONPATH=. python benchmarks/datafree_kd.py --merge datafree_kd_s0 ... datafree_kd_s4
      PYTHONPATH=. python benchmarks/datafree_kd.py --quick    (tiny, to check the code)
Writes benchmarks/results/datafree_kd.{json,md} (per seed: datafree_kd_s<seed>). The text teacher is
trained on the first run (cached under $PEFTC_CACHE or ~/.cache/peftc, models/wordnet_teacher_<hash>).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import common

NAME = "datafree_kd"
ARMS = ("scratch", "real_ce", "real_kd", "afstip", "dafl", "deepinversion", "adi")
DATA_FREE = ("afstip", "dafl", "deepinversion", "adi")


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
    adi_alphas: tuple[float, ...] = (0.01, 0.1)
    migration_shots: tuple[int, ...] = (5, 20, 100)
    migration_steps: int = 300
    # the text side: a MiniLM + LoRA teacher on 40 WordNet classes, 2-block MiniLM students
    text_held_out: str = "noun.food"
    text_train_per_class: int = 150  # the teacher's (and the real-data students') glosses per class
    text_val_per_class: int = 10
    text_test_per_class: int = 25
    text_max_length: int = 64
    text_teacher_epochs: int = 3
    text_teacher_lr: float = 1e-3
    text_student_blocks: int = 2
    text_batch_size: int = 32
    text_real_epochs: float = 1.0
    text_real_lrs: tuple[float, ...] = (2e-4, 1e-3)
    text_afstip_steps: int = 400
    text_sigmas: tuple[float, ...] = (0.5, 1.0)  # in units of the word table's standard deviation
    text_anchor_length: int = 16
    text_anchors_per_class: int = 8
    text_anchor_steps: int = 30
    text_anchor_lr: float = 0.5  # in units of the word table's standard deviation
    text_migration_steps: int = 150
    text_student_lr: float = 5e-4


QUICK = dict(teacher_widths=(8, 16, 32), teacher_epochs=1, teacher_train_limit=1000, student_widths=(4, 8, 8),
             memory_slots=4, val_size=200, test_size=200, real_epochs=0.05, real_lrs=(3e-3,), batch_size=16,
             afstip_steps=4, afstip_sigmas=(0.1, 0.3), anchors_per_class=1, anchor_steps=2, dafl_iterations=4,
             dafl_width=8,
             dafl_lr_gs=(0.2,), di_batches=1, di_iterations=3, di_alpha_fs=(1.0,), di_kd_steps=4, adi_alphas=(0.1,),
             migration_shots=(5,), migration_steps=4,
             text_train_per_class=6, text_val_per_class=2, text_test_per_class=2, text_max_length=24,
             text_teacher_epochs=1, text_batch_size=8, text_real_epochs=0.05, text_real_lrs=(1e-3,),
             text_afstip_steps=2, text_sigmas=(0.5,), text_anchor_length=6, text_anchors_per_class=1,
             text_anchor_steps=2, text_migration_steps=2)


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


def migration_row(shots: int, y, pred, old, new, num_classes: int) -> dict:
    """Accuracy and F1 of a migrated student on the old classes, the new one (the last) and all together."""
    from peftc.evaluation import accuracy, macro_f1

    return {"shots": shots, "old_acc": accuracy(y[old], pred[old]),
            "old_macro_f1": macro_f1(y[old], pred[old], num_classes), "new_acc": accuracy(y[new], pred[new]),
            "new_f1": class_f1(y, pred, num_classes - 1),
            "all_acc": accuracy(y, pred), "all_macro_f1": macro_f1(y, pred, num_classes)}


def n_params(model) -> int:
    return int(sum(p.size for p in model.parameters()))


def rows(x, idx):
    """Rows ``idx`` of an image array, or of a token batch dict (its all-padding tail columns trimmed)."""
    if not isinstance(x, dict):
        return x[idx]
    from peftc.models.classifier import trim_padding

    ids, mask = trim_padding(x["input_ids"][idx], x["attention_mask"][idx])
    return {"input_ids": ids, "attention_mask": mask}


def n_rows(x) -> int:
    return len(x["input_ids"]) if isinstance(x, dict) else len(x)


def train_real(student, t, x, y, lr: float, kd: bool, seed: int, epochs: float, batch_size: int) -> None:
    """``epochs`` passes over the real train split (images, or a token batch dict): CE, or 0.5 CE + 0.5 tau^2 KL
    (tau 4) with the teacher."""
    import numpy as np

    from peftc import functional as F
    from peftc.distill.teacher import frozen
    from peftc.optim import AdamW

    rng = np.random.default_rng(seed)
    opt = AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    n = n_rows(x)
    steps = max(1, int(epochs * n / batch_size))
    order = np.concatenate([rng.permutation(n) for _ in range(int(np.ceil(epochs)) + 1)])
    for i in range(steps):
        idx = order[i * batch_size:(i + 1) * batch_size]
        xb, yb = rows(x, idx), y[idx].astype(np.int64)
        student.train()
        opt.zero_grad()
        z = student.forward(xb)
        d = np.zeros_like(z)
        ce, _, probs = F.cross_entropy_forward(z, yb)
        F.cross_entropy_backward(0.5 if kd else 1.0, probs, yb, dlogits=d)
        if kd:
            with frozen(t):
                zt = t.forward(xb)
            _, ps, pt = F.kd_kl_forward(z, zt, 4.0)
            F.kd_kl_backward(0.5, ps, pt, z, zt, 4.0, dstudent_logits=d)
        student.backward(d, input_grad=False)
        opt.step()


def candidates(arm: str, s: Settings) -> list:
    return {"scratch": [None], "real_ce": list(s.real_lrs), "real_kd": list(s.real_lrs),
            "afstip": list(s.afstip_sigmas), "dafl": list(s.dafl_lr_gs), "deepinversion": list(s.di_alpha_fs),
            "adi": list(s.adi_alphas)}[arm]


def afstip_config(s: Settings, sigma: float, seed: int):
    from peftc.distill import AFSTipConfig, KDConfig

    return AFSTipConfig(sigma=sigma, steps=s.afstip_steps, batch_size=s.batch_size,
                        kd=KDConfig(tau=4.0, lambda_kd=1.0, lambda_cls=0.5, confidence=0.5),
                        anchors_per_class=s.anchors_per_class, anchor_steps=s.anchor_steps, seed=seed)


def train_arm(arm: str, knob, t, data, s: Settings, fusion: bool, seed: int, num_classes: int = 10,
              pools: dict | None = None):
    """A fresh student trained by ``arm`` with knob ``knob``; the data-free arms get no data argument.
    ``pools`` keeps DeepInversion's synthesised images per knob and AF-STip's anchors, so the students with and
    without fusion learn from the same images (neither depends on the student); ADI's images depend on the
    student, so it shares none, and it takes alpha_f from ``pools["adi_alpha_f"]`` (DeepInversion's choice)."""
    from peftc.distill import (DAFLConfig, DeepInversionConfig, FusionStudent, KDConfig, afstip_distill,
                               dafl_distill, deepinversion_distill)
    from peftc.distill.pseudo import build_anchors

    student = FusionStudent(tuple(s.student_widths), num_classes, seed=seed, fusion=fusion,
                            memory_slots=s.memory_slots)
    shape = (1, 28, 28)
    if arm in ("real_ce", "real_kd"):
        train_real(student, t, data[0], data[1], knob, arm == "real_kd", seed, s.real_epochs, s.batch_size)
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
    elif arm == "adi":  # the images depend on the student: none are shared
        if "adi_alpha_f" not in (pools or {}):
            raise ValueError("train_arm('adi'): pools['adi_alpha_f'] (the alpha_f DeepInversion selected) is missing; "
                             "run the deepinversion arm first")
        deepinversion_distill(t, student, num_classes, shape,
                              DeepInversionConfig(batch_size=s.batch_size, iterations=s.di_iterations,
                                                  batches=s.di_batches, alpha_adi=knob,
                                                  alpha_f=pools["adi_alpha_f"],
                                                  kd_steps=s.di_kd_steps, kd_batch_size=s.batch_size,
                                                  kd=KDConfig(tau=4.0), seed=seed))
    return student

# -- the text side ------------------------------------------------------------------------------------------
TEXT_ARMS = ("scratch", "real_ce", "real_kd", "afstip")
TEXT_DATA_FREE = ("afstip",)


def text_splits(s: Settings) -> dict:
    """The WordNet glosses of the main job's seeded split, tokenised for MiniLM, with the held-out class last:
    labels 0..39 are the 40 old classes (in lexicographer-file order), 40 is ``s.text_held_out``.
    {"train", "val": the old classes' rows; "test": every class's; "new_train": the held-out class's train
    rows; "num_old": 40, "class_names"}; each split a dict of input_ids, attention_mask, labels."""
    import numpy as np

    from peftc.data import wordnet_job as job
    from peftc.models import Tokenizer, minilm_path

    if s.text_train_per_class < max(s.migration_shots):
        raise ValueError(f"text_train_per_class {s.text_train_per_class} < the largest migration shot count "
                         f"{max(s.migration_shots)}: the held-out class has too few train glosses")
    train, val, test = job.load_splits(job.JobSettings(seed=0, train_per_class=s.text_train_per_class,
                                                       test_per_class=s.text_test_per_class,
                                                       max_length=s.text_max_length))
    val = val.subsample_per_class(s.text_val_per_class, seed=0)
    names = list(train.class_names)
    held = names.index(s.text_held_out)
    order = [c for c in range(len(names)) if c != held] + [held]
    relabel = np.empty(len(names), np.int64)
    relabel[order] = np.arange(len(names))
    tok = Tokenizer(minilm_path(), max_length=s.text_max_length)
    num_old = len(names) - 1

    def encode(glosses, keep=None):
        d = job.tokenize(tok, glosses, by_length=True)
        d["labels"] = relabel[d["labels"]]
        sel = np.ones(len(d["labels"]), bool) if keep is None else keep(d["labels"])
        return {k: np.ascontiguousarray(v[sel]) for k, v in d.items()}

    return {"train": encode(train, lambda y: y < num_old), "val": encode(val, lambda y: y < num_old),
            "test": encode(test), "new_train": encode(train, lambda y: y == num_old), "num_old": num_old,
            "class_names": [names[c] for c in order]}


def text_teacher(s: Settings, text: dict):
    """The main job's classifier (MiniLM, mean pooling, a linear head; LoRA r 8 alpha 16 dropout 0.1 on query and
    value, the head trained; AdamW with warm-up, decay and clipping as peftc.demo) trained on the 40 old
    classes' train glosses. Cached (the adapter in PEFT's format) under <cache>/models/wordnet_teacher_<hash>;
    returned merged into its weights (the same function without the adapter's extra products) as an
    EmbeddingClassifier, with {"test_accuracy" (old classes), "path", "cached"}."""
    import hashlib
    import json
    import os

    from peftc.data.corruptions import cache_root
    from peftc.distill.text import EmbeddingClassifier
    from peftc.io.atomic import write_bytes_atomic
    from peftc.models import BertModel, minilm_path
    from peftc.models.classifier import SentenceClassifier
    from peftc.random import Generator
    from peftc.train import Trainer, TrainingConfig
    from peftc.tuners import LoraConfig, PeftModel, get_peft_model

    fields = {k: getattr(s, k) for k in ("text_held_out", "text_train_per_class", "text_max_length",
                                         "text_teacher_epochs", "text_teacher_lr")}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(cache_root(), "models", f"wordnet_teacher_{key}")
    num_old = text["num_old"]
    base = SentenceClassifier(BertModel.from_pretrained(minilm_path()), num_old, generator=Generator(1))
    old_test = {k: v[text["test"]["labels"] < num_old] for k, v in text["test"].items()}
    info_path = os.path.join(path, "teacher.json")
    if os.path.isfile(info_path):
        model = PeftModel.from_pretrained(base, path)
        with open(info_path, encoding="utf-8") as f:
            info = {**json.load(f), "cached": True}
    else:
        config = LoraConfig(r=8, lora_alpha=16.0, lora_dropout=0.1, target_modules=["query", "value"],
                            modules_to_save=["classifier"])
        model = get_peft_model(base, config, generator=Generator(2))
        trainer = Trainer(model, TrainingConfig(learning_rate=s.text_teacher_lr, batch_size=32,
                                                num_epochs=s.text_teacher_epochs, warmup_ratio=0.06,
                                                weight_decay=0.01, max_grad_norm=1.0, seed=0, progress=False,
                                                eval_batch_size=128), text["train"])
        trainer.train()
        info = {"test_accuracy": trainer.evaluate(old_test)["accuracy"], "settings": fields}
        model.save_pretrained(path)
        write_bytes_atomic(info_path, json.dumps(info).encode())
        info["cached"] = False
    merged = model.merge_and_unload()
    merged.eval()
    return EmbeddingClassifier(merged), {**info, "path": path}


def vocabulary_context(folder) -> dict:
    """What the text anchors draw from: the ids of the tokenizer's ordinary tokens (not [CLS], [unused7], ...)
    and the [CLS] / [SEP] ids that frame a sequence."""
    import os
    import re

    import numpy as np
    from tokenizers import Tokenizer as HFTokenizer

    vocab = HFTokenizer.from_file(os.path.join(os.fspath(folder), "tokenizer.json")).get_vocab()
    ids = np.array(sorted(i for w, i in vocab.items() if not re.fullmatch(r"\[.*\]", w)), np.int64)
    return {"vocab_ids": ids, "cls_id": vocab["[CLS]"], "sep_id": vocab["[SEP]"]}


def predict_text(model, data: dict, batch: int = 128):
    """Predicted classes of a token split, in order (eval mode)."""
    import numpy as np

    model.eval()
    n = n_rows(data)
    return np.concatenate([model.forward(rows(data, np.arange(i, min(i + batch, n)))).argmax(1)
                           for i in range(0, n, batch)])


def text_candidates(arm: str, s: Settings) -> list:
    return {"scratch": [None], "real_ce": list(s.text_real_lrs), "real_kd": list(s.text_real_lrs),
            "afstip": list(s.text_sigmas)}[arm]


def train_text_arm(arm: str, knob, t, data, s: Settings, fusion: bool, seed: int, make_bert, vocab: dict,
                   num_classes: int, pools: dict):
    """A fresh TextStudent (``make_bert()``: the first blocks of MiniLM) trained by ``arm`` with knob ``knob``;
    the data-free arm gets no data (``data`` None is fine): it reads the teacher and ``vocab`` only. ``pools``
    keeps the AF-STip anchors (teacher and seed only), so the students with and without fusion share them."""
    from peftc.distill import AFSTipConfig, KDConfig, afstip_distill
    from peftc.distill.text import TextStudent, token_anchors

    student = TextStudent(make_bert(), num_classes, fusion=fusion, memory_slots=s.memory_slots, seed=seed)
    if arm in ("real_ce", "real_kd"):
        train_real(student, t, data["train"], data["train"]["labels"], knob, arm == "real_kd", seed,
                   s.text_real_epochs, s.text_batch_size)
    elif arm == "afstip":
        std = float(t.word_embeddings.std())
        if "text_anchors" not in pools:
            pools["text_anchors"] = token_anchors(t, num_classes, s.text_anchor_length, s.text_anchors_per_class,
                                                  s.text_anchor_steps, s.text_anchor_lr * std, seed, **vocab)[0]
        anchors = pools["text_anchors"]
        cfg = AFSTipConfig(sigma=knob * std, steps=s.text_afstip_steps, batch_size=s.text_batch_size,
                           lr=s.text_student_lr, kd=KDConfig(tau=4.0, lambda_kd=1.0, lambda_cls=0.5, confidence=0.5),
                           pixel_range=None, seed=seed)
        afstip_distill(t, student, num_classes, anchors.shape[1:], cfg, centres=anchors)
    return student


def run_text_seed(s: Settings, seed: int, text: dict, t, make_bert, vocab: dict) -> dict:
    """The text arms (each with and without fusion, knobs chosen on validation) and the migration of the
    selected AF-STip student (without fusion) to the held-out class."""
    import numpy as np

    from peftc.distill.migrate import MigrationConfig, migrate_to_new_class
    from peftc.distill.text import embed_tokens
    from peftc.evaluation import accuracy, macro_f1, select_on_validation

    num_old = text["num_old"]
    test = text["test"]
    old_test = {k: v[test["labels"] < num_old] for k, v in test.items()}

    def evaluate(model, split):
        d = text["val"] if split == "validation" else old_test
        pred = predict_text(model, d)
        if split == "validation":
            return accuracy(d["labels"], pred)
        return {"acc": accuracy(d["labels"], pred), "macro_f1": macro_f1(d["labels"], pred, num_old)}

    methods, pools, base = {}, {}, None
    for arm in TEXT_ARMS:
        for fusion in (False, True):
            name = arm + ("+fusion" if fusion else "")
            t0 = time.perf_counter()
            sel = select_on_validation(text_candidates(arm, s),
                                       lambda k: train_text_arm(arm, k, t, text, s, fusion, seed, make_bert, vocab,
                                                                num_old, pools), evaluate)
            methods[name] = {**sel.test_score, "student_params": n_params(sel.model), "teacher_params": n_params(t),
                             "seconds": time.perf_counter() - t0, "selected": sel.best_candidate,
                             "validation": list(sel.scores)}
            if name == "afstip":
                base = sel.model
            print(f"seed {seed} text {name}: test acc {sel.test_score['acc']:.4f} (knob {sel.best_candidate}, "
                  f"{methods[name]['seconds']:.0f} s)", flush=True)
    t0 = time.perf_counter()
    sigma = methods["afstip"]["selected"] * float(t.word_embeddings.std())
    table = base.bert.embeddings.word_embeddings.weight.data
    rng = np.random.default_rng(seed)
    y = test["labels"]
    old, new = y < num_old, y == num_old
    migration = []
    for k in s.migration_shots:
        student = copy.deepcopy(base)
        shots = embed_tokens(table, rows(text["new_train"], rng.choice(n_rows(text["new_train"]), k, replace=False)))
        migrate_to_new_class(student, t, shots, pools["text_anchors"],
                             MigrationConfig(steps=s.text_migration_steps, new_per_batch=s.text_batch_size // 4,
                                             pseudo_per_batch=s.text_batch_size - s.text_batch_size // 4,
                                             sigma=sigma, lr=s.text_student_lr, seed=seed))
        pred = predict_text(student, test)
        migration.append(migration_row(k, y, pred, old, new, num_old + 1))
    print(f"seed {seed} text migration: {migration} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"text_methods": methods, "text_migration": migration}


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
        if arm == "adi":  # ADI is DeepInversion plus a term: it keeps the alpha_f DeepInversion selected
            pools["adi_alpha_f"] = methods["deepinversion"]["selected"]
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
        migration.append(migration_row(k, ey, pred, old, new, 10))
    print(f"seed {seed} migration: {migration} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"methods": methods, "migration": migration}


def mean_tables(per_seed: dict, methods_key: str, migration_key: str) -> tuple[dict, list]:
    """Means over seeds of one side's methods table and migration rows."""
    import numpy as np

    seeds = sorted(per_seed, key=int)
    first = per_seed[seeds[0]]
    methods = {n: {key: float(np.mean([per_seed[k][methods_key][n][key] for k in seeds]))
                   for key in ("acc", "macro_f1", "seconds")} for n in first[methods_key]}
    for n, m in methods.items():
        m["student_params"] = first[methods_key][n]["student_params"]
        m["teacher_params"] = first[methods_key][n]["teacher_params"]
    keys = [key for key in first[migration_key][0] if key != "shots"]
    migration = [{"shots": row["shots"], **{key: float(np.mean([per_seed[k][migration_key][i][key] for k in seeds]))
                                          for key in keys}}
                 for i, row in enumerate(first[migration_key])]
    return methods, migration


def side_claims(per_seed: dict, methods_key: str, data_free: tuple[str, ...], prefix: str = "") -> list:
    """Each data-free method beats the untrained student, reaches 90% of the real-data KD student's accuracy,
    and gains from the fusion module."""
    from peftc.evaluation import Claim

    seeds = sorted(per_seed, key=int)
    acc = {n: [per_seed[k][methods_key][n]["acc"] for k in seeds] for n in per_seed[seeds[0]][methods_key]}
    claims = []
    for m in data_free:
        claims.append(Claim(f"{prefix}{m} acc > untrained student acc", acc[m], acc["scratch"], "greater"))
        claims.append(Claim(f"{prefix}{m} acc > 0.9 x real-data KD acc", acc[m], [0.9 * a for a in acc["real_kd"]],
                            "greater"))
        claims.append(Claim(f"{prefix}{m}+fusion acc > {m} acc", acc[m + "+fusion"], acc[m], "greater"))
    return claims


def aggregate(per_seed: dict) -> dict:
    """Means over seeds, and the verdicts (when there are at least two seeds); the text side's tables and
    claims when the seeds carry it."""
    from peftc.evaluation import verdicts

    methods, migration = mean_tables(per_seed, "methods", "migration")
    claims = side_claims(per_seed, "methods", DATA_FREE)
    out = {"methods": methods, "migration": migration}
    if all("text_methods" in part for part in per_seed.values()):
        out["text_methods"], out["text_migration"] = mean_tables(per_seed, "text_methods", "text_migration")
        claims += side_claims(per_seed, "text_methods", TEXT_DATA_FREE, "text ")
    out["verdicts"] = verdicts(claims) if len(per_seed) >= 2 else []
    return out


def markdown(payload: dict) -> str:
    from peftc.evaluation import verdicts_markdown

    agg = payload["aggregate"]
    lines = [f"# Data-free distillation on Fashion-MNIST and WordNet ({len(payload['per_seed'])} seeds, REDUCED)",
             "", f"CPU: {payload['cpu']}. Command: `{payload['command']}`.", "",
             "Accuracy and macro-F1 on the test half of the official test split (means over seeds); knobs "
             "chosen on the validation half.", ""]
    method_header = ["method", "acc", "macro-F1", "student params", "teacher params", "seconds"]
    migration_header = ["shots", "old acc", "old macro-F1", "new acc", "new F1", "all acc", "all macro-F1"]

    def tables(methods: dict, migration: list) -> list[str]:
        rows = [[n, m["acc"], m["macro_f1"], m["student_params"], m["teacher_params"], m["seconds"]]
                for n, m in methods.items()]
        mrows = [[r["shots"], r["old_acc"], r["old_macro_f1"], r["new_acc"], r["new_f1"], r["all_acc"],
                  r["all_macro_f1"]] for r in migration]
        return [common.markdown_table(method_header, rows), common.markdown_table(migration_header, mrows)]

    image, image_migration = tables(agg["methods"], agg["migration"])
    lines += [image, "## Migration to class 9 (teacher on classes 0-8, AF-STip student)", "", image_migration]
    if "text_methods" in agg:
        text, text_migration = tables(agg["text_methods"], agg["text_migration"])
        held = payload["settings"].get("text_held_out", "the held-out class")
        lines += ["## WordNet: 2-block MiniLM students of a MiniLM + LoRA teacher on 40 classes", "",
                  "Accuracy and macro-F1 over the 40 old classes' test glosses; student params count the frozen "
                  "word table (shared with the teacher).", "", text,
                  f"## WordNet migration to {held} (AF-STip student)", "", text_migration]
    lines += ["## Verdicts", ""]
    if agg["verdicts"]:
        lines.append(verdicts_markdown(agg["verdicts"]))
    else:
        lines.append("One seed: no claim can be tested across seeds (merge the per-seed files with --merge).")
    return "\n".join(lines) + "\n"


def finish(payload: dict, out: str) -> dict:
    """Add the aggregate of ``payload["per_seed"]`` (its tables and verdicts also at the top level), write it."""
    payload["aggregate"] = aggregate(payload["per_seed"])
    for key in ("methods", "migration", "text_methods", "text_migration", "verdicts"):
        if key in payload["aggregate"]:
            payload[key] = payload["aggregate"][key]
    common.write_results(out, payload, markdown(payload))
    return payload


def run(s: Settings, out: str, command: str) -> dict:
    from peftc.distill.text import truncated_bert
    from peftc.models import BertModel, minilm_path

    t0 = time.perf_counter()
    data = splits(s)
    t, info = teacher(s)
    t9, info9 = teacher(s, tuple(range(9)))
    print(f"teacher test acc {info['test_accuracy']:.4f}, 9-class teacher {info9['test_accuracy']:.4f}", flush=True)
    text = text_splits(s)
    tt, tinfo = text_teacher(s, text)
    print(f"text teacher (40 classes) test acc {tinfo['test_accuracy']:.4f}", flush=True)
    student_bert = truncated_bert(BertModel.from_pretrained(minilm_path()), s.text_student_blocks)
    vocab = vocabulary_context(minilm_path())
    per_seed = {str(seed): {**run_seed(s, seed, data, t, t9),
                            **run_text_seed(s, seed, text, tt, lambda: copy.deepcopy(student_bert), vocab)}
                for seed in s.seeds}
    env = common.environment()
    payload = {"benchmark": NAME, "cpu": env["cpu"], "command": command, "settings": asdict(s),
               "teacher": {"test_accuracy": info["test_accuracy"], "test_accuracy_9_classes": info9["test_accuracy"],
                           "params": n_params(t)},
               "text_teacher": {"test_accuracy_40_classes": tinfo["test_accuracy"], "params": n_params(tt),
                                "cached": tinfo["cached"]},
               "environment": env, "seconds": time.perf_counter() - t0, "per_seed": per_seed}
    return finish(payload, out)


def merge(stems: list[str], out: str) -> dict:
    """Combine per-seed results files of one configuration into ``out``, with the verdicts."""
    return finish(common.merge_seed_parts(stems), out)


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
