"""The source model of the Fashion-MNIST test-time adaptation work: :class:`peftc.models.SmallResNet`
trained on clean Fashion-MNIST and cached.

It lives beside the adaptation methods, not in :mod:`peftc.models`: a model file defines the network
and does not run training. The cache is looked up first, so a cached model costs neither training
nor reading the data set.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

import numpy as np

from ..checkpoint import load_npz, save_npz_atomic
from ..data.corruptions import cache_root
from ..data.fashion_mnist import load_fashion_mnist
from ..models.cnn import SmallResNet
from ..nn.module import Module
from ..train import Trainer, TrainingConfig


@dataclass
class SourceConfig:
    """How the source model is trained; the cache file name is a hash of these fields."""

    widths: tuple[int, ...] = (12, 24, 48)
    epochs: int = 2
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    train_limit: int | None = None  # first rows of the training set only (quick checks and tests)
    # train and test on these labels only, relabelled 0..len-1 in this order (open-set work holds
    # the others out as unknowns); None = all ten classes. Left out of the cache key when None,
    # so models cached before this field existed keep their file names.
    classes: tuple[int, ...] | None = None


def select_classes(images: np.ndarray, labels: np.ndarray, classes: tuple[int, ...] | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The rows whose label is in ``classes``, relabelled to the position of their label in ``classes``."""
    if classes is None:
        return images, labels
    lookup = np.full(max(int(labels.max()), max(classes)) + 1, -1, dtype=np.int64)
    lookup[list(classes)] = np.arange(len(classes))
    new = lookup[labels]
    keep = new >= 0
    return images[keep], new[keep]


def evaluate_accuracy(model: Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    """Accuracy in eval mode (running statistics); the model's mode is restored afterwards."""
    was = model.training
    model.eval()
    try:
        correct = 0
        for i in range(0, len(images), batch_size):
            correct += int((model.forward(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
    finally:
        model.train(was)
    return correct / max(len(images), 1)


def train_source_model(config: SourceConfig | None = None, cache: str | os.PathLike | None = None,
                       progress: bool = False, data: tuple | None = None) -> tuple[SmallResNet, dict]:
    """The source CNN trained with :class:`peftc.train.Trainer` (AdamW, warm-up + linear decay) on clean
    Fashion-MNIST train (the classes of ``config.classes`` only, when set), loaded from
    ``<cache>/models/fmnist_resnet_<hash>.npz`` when it exists; the data set is read only when the model
    must be trained.

    ``data`` = (train_x, train_y, test_x, test_y) overrides the Debian loader. Returns
    ``(model, info)`` with info {"path", "cached", "test_accuracy", "config"}; the model is in eval mode.
    """
    cfg = config or SourceConfig()
    fields = {k: v for k, v in asdict(cfg).items() if not (k == "classes" and v is None)}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(cache_root(cache), "models", f"fmnist_resnet_{key}.npz")
    model = SmallResNet(tuple(cfg.widths), 10 if cfg.classes is None else len(cfg.classes), cfg.seed)
    if os.path.isfile(path):
        arrays, meta = load_npz(path)
        model.load_state_dict(arrays)
        model.eval()
        return model, {"path": path, "cached": True, "test_accuracy": meta["test_accuracy"], "config": asdict(cfg)}
    if data is None:
        (tx, ty), (vx, vy) = load_fashion_mnist("train"), load_fashion_mnist("test")
    else:
        tx, ty, vx, vy = data
    tx, ty = select_classes(tx, ty, cfg.classes)
    vx, vy = select_classes(vx, vy, cfg.classes)
    if cfg.train_limit is not None:
        tx, ty = tx[:cfg.train_limit], ty[:cfg.train_limit]
    tcfg = TrainingConfig(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                          num_epochs=cfg.epochs, warmup_ratio=0.05, max_grad_norm=5.0, seed=cfg.seed,
                          progress=progress, input_keys=("x",), log_every=100)
    Trainer(model, tcfg, {"x": np.ascontiguousarray(tx[:, None]), "labels": ty}).train()
    acc = evaluate_accuracy(model, vx, vy)
    save_npz_atomic(path, model.state_dict(), {"kind": "fmnist_resnet", "key": key, "test_accuracy": acc})
    model.eval()
    return model, {"path": path, "cached": False, "test_accuracy": acc, "config": asdict(cfg)}
