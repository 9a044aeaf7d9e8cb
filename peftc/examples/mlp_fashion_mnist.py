"""Example (``python -m peftc.examples.mlp_fashion_mnist``): LoRA on a small MLP, Fashion-MNIST, against a linear probe.

A minimal end-to-end use of peftc's layers and Trainer without the BERT encoder. The story:

1. "Pretraining": an MLP 784-256-256 with a 5-way head is trained on Fashion-MNIST classes 0-4
   (T-shirt/top, Trouser, Pullover, Dress, Coat) and cached under ``$PEFTC_CACHE`` (default
   ``~/.cache/peftc``), so later runs skip it.
2. Adaptation to all 10 classes (the five unseen ones are sandals, shirts, sneakers, bags and
   ankle boots) with a fresh 10-way head, three ways, same budget and seed:
   a linear probe (frozen features, head only), LoRA (r=8 on both hidden layers, plus the head),
   and full fine-tuning as a reference.
3. The report prints test accuracy on the 10k test images, overall and on old/new classes, with
   the trainable-parameter count and time of each. Nothing is tuned on the test set.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from ..checkpoint import load_npz, save_npz_atomic
from ..data.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from ..nn import Linear, LoraLinear, Module, ModuleList, ReLU
from ..random import Generator
from ..train import Trainer, TrainingConfig

OLD_CLASSES = 5


class MLPClassifier(Module):
    """Linear+ReLU blocks and a linear head: ``forward(x (N, IC)) -> logits (N, classes)``."""

    def __init__(self, sizes: tuple[int, ...], num_classes: int, generator: Generator) -> None:
        self.layers = ModuleList([Linear(a, b, generator=generator) for a, b in zip(sizes[:-1], sizes[1:])])
        self.acts = ModuleList([ReLU() for _ in sizes[1:]])
        self.head = Linear(sizes[-1], num_classes, generator=generator)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer, act in zip(self.layers, self.acts):
            x = act(layer(x))
        return self.head(x)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        dy = self.head.backward(dy)
        pairs = list(zip(self.layers, self.acts))
        for i in reversed(range(len(pairs))):
            layer, act = pairs[i]
            first = i == 0
            dy = layer.backward(act.backward(dy), dx=dx if first else None, input_grad=input_grad or not first)
        return dy


@dataclass
class DemoSettings:
    hidden: tuple[int, ...] = (256, 256)
    base_epochs: int = 3
    adapt_epochs: int = 3
    batch_size: int = 128
    base_lr: float = 1e-3
    adapt_lr: float = 2e-3
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    seed: int = 0
    train_limit: int | None = None  # use only the first rows of the training set (quick checks)


def cache_dir() -> str:
    return os.environ.get("PEFTC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "peftc")


def _flat(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.reshape(len(images), -1))


def _train(model: Module, data: dict, epochs: int, lr: float, s: DemoSettings, progress: bool) -> Trainer:
    cfg = TrainingConfig(learning_rate=lr, weight_decay=0.0, batch_size=s.batch_size, num_epochs=epochs,
                         warmup_ratio=0.05, max_grad_norm=1.0, seed=s.seed, log_every=50, progress=progress,
                         input_keys=("x",), eval_batch_size=1000)
    trainer = Trainer(model, cfg, data)
    trainer.train()
    return trainer


def pretrained_base(train: dict, s: DemoSettings, progress: bool, log=print) -> tuple[MLPClassifier, str, bool]:
    """The base MLP trained on classes 0..4, from the cache when a matching file exists."""
    sizes = (train["x"].shape[1], *s.hidden)
    key = hashlib.sha256(json.dumps({"sizes": sizes, "epochs": s.base_epochs, "lr": s.base_lr, "bs": s.batch_size,
                                     "seed": s.seed, "rows": len(train["x"])}).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir(), "demo", f"fashion_mlp_base_{key}.npz")
    model = MLPClassifier(sizes, OLD_CLASSES, Generator(s.seed))
    if os.path.isfile(path):
        try:
            arrays, meta = load_npz(path)
            if meta.get("kind") == "fashion_mlp_base" and meta.get("key") == key:
                model.load_state_dict(arrays)
                return model, path, True
        except (ValueError, KeyError) as e:
            log(f"  cached base {path} unusable ({e}); retraining")
    old = train["labels"] < OLD_CLASSES
    _train(model, {"x": np.ascontiguousarray(train["x"][old]), "labels": train["labels"][old]}, s.base_epochs,
           s.base_lr, s, progress)
    save_npz_atomic(path, model.state_dict(), {"kind": "fashion_mlp_base", "key": key})
    return model, path, False


def adapted_model(base: MLPClassifier, method: str, s: DemoSettings) -> MLPClassifier:
    """A copy of the base with a fresh 10-way head, set up for ``method``: probe, lora or full."""
    sizes = (base.layers[0].in_features, *[layer.out_features for layer in base.layers])
    model = MLPClassifier(sizes, len(CLASS_NAMES), Generator(s.seed + 1))
    model.load_state_dict({k: v for k, v in base.state_dict().items() if not k.startswith("head.")}, strict=False)
    if method in ("probe", "lora"):
        for layer in model.layers:
            layer.requires_grad_(False)
    if method == "lora":
        for i in range(len(model.layers)):
            model.layers[i] = LoraLinear(model.layers[i], r=s.lora_r, lora_alpha=s.lora_alpha,
                                         lora_dropout=s.lora_dropout, generator=Generator(s.seed + 10 + i))
    return model


def run(settings: DemoSettings | None = None, progress: bool = True, out=sys.stdout) -> dict:
    """Run the whole demo, print the report to ``out`` and return the numbers."""
    s = settings or DemoSettings()

    def log(msg: str = "") -> None:
        print(msg, file=out, flush=True)

    t0 = time.perf_counter()
    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    if s.train_limit:
        x_train, y_train = x_train[:s.train_limit], y_train[:s.train_limit]
    train = {"x": _flat(x_train), "labels": y_train}
    test = {"x": _flat(x_test), "labels": y_test}
    log("peftc demo: LoRA adaptation on Fashion-MNIST (interim main job until the BERT encoder lands)")
    log(f"data: {len(y_train)} train / {len(y_test)} test images, 28x28, 10 classes "
        f"({time.perf_counter() - t0:.1f} s to load)")

    t = time.perf_counter()
    base, path, cached = pretrained_base(train, s, progress, log)
    old_test = {k: v[y_test < OLD_CLASSES] for k, v in test.items()}
    base_acc = Trainer(base, TrainingConfig(input_keys=("x",), progress=False), old_test).evaluate(old_test)
    log(f"base: MLP {'-'.join(map(str, (784, *s.hidden)))} trained on classes 0-{OLD_CLASSES - 1} "
        f"({', '.join(CLASS_NAMES[:OLD_CLASSES])}), {s.base_epochs} epochs; "
        f"test accuracy on those classes {base_acc['accuracy']:.4f}")
    log(f"      {'loaded from cache' if cached else 'trained and cached'} in {time.perf_counter() - t:.1f} s: {path}")
    log(f"task: all 10 classes, fresh 10-way head, {s.adapt_epochs} epochs, AdamW lr {s.adapt_lr}, "
        f"batch {s.batch_size}, seed {s.seed}")

    results = {"base_accuracy_old_classes": base_acc["accuracy"], "methods": {}}
    rows = []
    for method, label in (("probe", "linear probe (frozen features)"),
                          ("lora", f"LoRA r={s.lora_r} alpha={s.lora_alpha:g} + head"),
                          ("full", "full fine-tune (reference)")):
        t = time.perf_counter()
        model = adapted_model(base, method, s)
        trainer = _train(model, train, s.adapt_epochs, s.adapt_lr, s, progress)
        elapsed = time.perf_counter() - t
        preds = np.concatenate([np.argmax(o, axis=-1) for o, _ in trainer.predict(test)])
        acc = float(np.mean(preds == y_test))
        old, new = y_test < OLD_CLASSES, y_test >= OLD_CLASSES
        acc_old, acc_new = float(np.mean(preds[old] == y_test[old])), float(np.mean(preds[new] == y_test[new]))
        n_train = sum(p.size for p in trainer.params)
        results["methods"][method] = {"accuracy": acc, "accuracy_old": acc_old, "accuracy_new": acc_new,
                                      "trainable_params": n_train, "seconds": elapsed}
        rows.append((label, n_train, acc, acc_old, acc_new, elapsed))

    log()
    log(f"{'method':<34}{'trainable':>10}{'test acc':>10}{'old 0-4':>9}{'new 5-9':>9}{'time':>8}")
    for label, n_train, acc, acc_old, acc_new, elapsed in rows:
        log(f"{label:<34}{n_train:>10,}{acc:>10.4f}{acc_old:>9.4f}{acc_new:>9.4f}{elapsed:>7.1f}s")
    probe, lora = results["methods"]["probe"]["accuracy"], results["methods"]["lora"]["accuracy"]
    verdict = "beats" if lora > probe else "does not beat"
    log()
    log(f"LoRA {verdict} the linear probe: {lora:.4f} vs {probe:.4f} ({100 * (lora - probe):+.2f} points) "
        f"on the 10,000 test images.")
    log(f"total time {time.perf_counter() - t0:.1f} s")
    results["seconds"] = time.perf_counter() - t0
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run(DemoSettings(seed=args.seed), progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
