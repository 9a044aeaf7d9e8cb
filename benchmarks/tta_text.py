"""TENT and EATA on the LayerNorm parameters of a MiniLM classifier under character-level corruptions.

Task: WordNet supersense classification of noun and verb glosses (41 classes, peftc.data.wordnet).
Source model: all-MiniLM-L6-v2 with mean pooling and a linear head trained as a linear probe on
the frozen encoder's pooled features of clean training glosses (``--train-per-class`` per class).
Test: held-out glosses (``--test-per-class`` per class, in a seeded order), corrupted by each
kind of peftc.data.text_corruptions (swap, delete, insert, keyboard substitute, mixed) at
``--severity``; clean as a reference. Protocol: reset before each corruption, stream the test
glosses in batches, score the prediction of the forward before each update.

Adaptation trains only the 13 LayerNorm affine pairs of the encoder (2 x 384 each; the encoder
and head weights stay frozen). TENT: mean entropy. EATA: E0 = 0.4 ln 41, d_margin ``--d-margin``,
Fisher penalty from ``--fisher`` clean training glosses. Both with SGD momentum 0.9 at ``--lr``
(SAR's ViT/LayerNorm setting is 0.001 / 64 x batch).

Run: OPENBLAS_NUM_THREADS=2 python benchmarks/tta_text.py [--severity 5] [--test-per-class 8] [--lr 1e-3]
Writes benchmarks/results/tta_text.{json,md} (``--out`` to change).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from peftc.io.atomic import write_bytes_atomic
from peftc.data.text_corruptions import KINDS, corrupt_texts
from peftc.data.wordnet import load_wordnet_glosses
from peftc.models import BertModel, Tokenizer, minilm_path
from peftc.models.classifier import SentenceClassifier
from peftc.random import Generator
from peftc.train import Trainer, TrainingConfig
from peftc.tta import EATA, TENT, Source

OUT = Path(__file__).parent / "results"


def pooled(model: SentenceClassifier, tok: Tokenizer, texts: list[str], batch: int = 64) -> np.ndarray:
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch])
        out.append(model.pooled(enc["input_ids"], enc["attention_mask"]))
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-per-class", type=int, default=20)
    ap.add_argument("--test-per-class", type=int, default=8)
    ap.add_argument("--severity", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--d-margin", type=float, default=0.2)
    ap.add_argument("--fisher", type=int, default=128)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--out", default=str(OUT / "tta_text"), help="output path without suffix")
    args = ap.parse_args()
    t_start = time.perf_counter()
    glosses = load_wordnet_glosses()
    parts = glosses.split(seed=args.seed)
    train = parts["train"].subsample_per_class(args.train_per_class, seed=args.seed)
    test = parts["test"].subsample_per_class(args.test_per_class, seed=args.seed)
    order = np.random.default_rng([args.seed, 5]).permutation(len(test))
    test_texts = [test.texts[i] for i in order]
    test_y = test.labels[order]
    folder = minilm_path()
    tok = Tokenizer(folder, max_length=args.max_length)
    model = SentenceClassifier(BertModel.from_pretrained(folder, seed=args.seed), glosses.num_classes,
                               generator=Generator(args.seed))
    model.requires_grad_(False)
    model.eval()
    feats = pooled(model, tok, train.texts)
    probe_cfg = TrainingConfig(learning_rate=3e-3, batch_size=32, num_epochs=40, warmup_ratio=0.06, seed=args.seed,
                               input_keys=("features",), progress=False, log_every=1000)
    model.classifier.requires_grad_(True)
    Trainer(model.classifier, probe_cfg, {"features": feats, "labels": train.labels}).train()
    model.requires_grad_(False)
    print(f"linear probe trained on {len(train)} glosses ({time.perf_counter() - t_start:.0f} s)", flush=True)
    fisher_rows = np.random.default_rng([args.seed, 6]).permutation(len(train))[:args.fisher]
    fisher_enc = tok([train.texts[i] for i in fisher_rows])
    fisher = {"input_ids": fisher_enc["input_ids"], "attention_mask": fisher_enc["attention_mask"]}
    makers = {
        "source": lambda: Source(model),
        "tent": lambda: TENT(model, optimizer="sgd", lr=args.lr, momentum=0.9),
        "eata": lambda: EATA(model, fisher_images=fisher, optimizer="sgd", lr=args.lr, momentum=0.9,
                             num_classes=glosses.num_classes, d_margin=args.d_margin, fisher_alpha=1.0,
                             fisher_batch_size=32),
    }
    methods = {name: make() for name, make in makers.items()}
    rows = []
    for kind in ("clean",) + KINDS:
        texts = test_texts if kind == "clean" else corrupt_texts(test_texts, kind, args.severity, args.seed)
        batches = []
        for i in range(0, len(texts), args.batch):
            enc = tok(texts[i:i + args.batch])
            batches.append(({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]},
                            test_y[i:i + args.batch]))
        row = {"corruption": kind, "example": texts[0]}
        for name, m in methods.items():
            m.reset()
            t0 = time.perf_counter()
            wrong = sum(int((m.forward_and_adapt(x).argmax(1) != y).sum()) for x, y in batches)
            row[name] = 100.0 * wrong / len(texts)
            row[f"{name}_backward"] = m.stats["backward_samples"]
            row[f"{name}_seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(kind, " ".join(f"{n}={row[n]:.1f}" for n in methods), flush=True)
    corrupted = [r for r in rows if r["corruption"] != "clean"]
    mean = {n: float(np.mean([r[n] for r in corrupted])) for n in methods}
    result = {"command": "OPENBLAS_NUM_THREADS=2 python " + " ".join(["benchmarks/tta_text.py"] + sys.argv[1:]),
              "config": vars(args), "train": len(train), "test": len(test), "rows": rows, "mean_corrupted": mean,
              "seconds": time.perf_counter() - t_start,
              "adapted_parameters": int(sum(p.data.size for p in methods["tent"].params))}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out.with_suffix(".json"), json.dumps(result, indent=1).encode())
    lines = [f"TENT / EATA on the LayerNorm parameters ({result['adapted_parameters']:,} values) of all-MiniLM-L6-v2 "
             f"+ linear probe, WordNet supersenses (41 classes): error %, {len(test)} test glosses per corruption, "
             f"severity {args.severity}, batch {args.batch}, SGD lr {args.lr} momentum 0.9, reset per corruption; "
             f"probe trained on {len(train)} clean glosses.", "", f"Command: `{result['command']}`", "",
             "| corruption | source | TENT | EATA | TENT backward | EATA backward | example (first test gloss) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['corruption']} | {r['source']:.1f} | {r['tent']:.1f} | {r['eata']:.1f} | "
                     f"{r['tent_backward']} | {r['eata_backward']} | {r['example'][:60]} |")
    lines.append(f"| **mean (corrupted)** | **{mean['source']:.2f}** | **{mean['tent']:.2f}** | **{mean['eata']:.2f}** "
                 "| | | |")
    write_bytes_atomic(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
