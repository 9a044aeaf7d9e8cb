"""Shared by the peftc.distributed tests: a tiny random BERT checkpoint written by peftc (weights, config and
a word-level tokenizer), a short LoRA training run on it, and the module-scoped two-worker LocalCluster."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from peftc.io import save_file

WORDS = ["the", "a", "cat", "dog", "bird", "runs", "sits", "flies", "on", "mat", "tree", "sky", "red", "big", "small",
         "quick", "slow", "sleeps", "eats", "sings"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
HIDDEN, LAYERS, HEADS, INTER, MAX_POS = 16, 2, 2, 32, 32
NUM_LABELS = 3
TIMEOUT = 60  # seconds for any one sweep or corpus map: a hang fails the test instead of blocking CI


def write_tiny_bert(folder: str | os.PathLike, seed: int = 0) -> str:
    """A random 2-layer BERT (hidden 16) in Hugging Face's folder layout, with a word-level tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                                ("[SEP]", 3)])
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.save(os.path.join(folder, "tokenizer.json"))
    config = {"model_type": "bert", "vocab_size": len(vocab), "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
              "num_attention_heads": HEADS, "intermediate_size": INTER, "max_position_embeddings": MAX_POS,
              "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1, "pad_token_id": 0}
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(config, fh)
    rng = np.random.default_rng(seed)
    shapes = {"embeddings.word_embeddings.weight": (len(vocab), HIDDEN),
              "embeddings.position_embeddings.weight": (MAX_POS, HIDDEN),
              "embeddings.token_type_embeddings.weight": (2, HIDDEN),
              "embeddings.LayerNorm.weight": (HIDDEN,), "embeddings.LayerNorm.bias": (HIDDEN,)}
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for name, (o, n) in {"attention.self.query": (HIDDEN, HIDDEN), "attention.self.key": (HIDDEN, HIDDEN),
                             "attention.self.value": (HIDDEN, HIDDEN), "attention.output.dense": (HIDDEN, HIDDEN),
                             "intermediate.dense": (INTER, HIDDEN), "output.dense": (HIDDEN, INTER)}.items():
            shapes[p + name + ".weight"] = (o, n)
            shapes[p + name + ".bias"] = (o,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + name + ".weight"] = (HIDDEN,)
            shapes[p + name + ".bias"] = (HIDDEN,)
    state = {k: (0.3 * rng.standard_normal(s) + (1.0 if "LayerNorm.weight" in k else 0.0)).astype(np.float32)
             for k, s in shapes.items()}
    save_file(state, os.path.join(folder, "model.safetensors"))
    return folder


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 12)))) for _ in range(n)]


def lora_model(model_path: str, seed: int):
    """LoRA r=4 on query and value of the cached tiny BERT, plus a trainable 3-way head."""
    from peftc.distributed import base_model
    from peftc.models.classifier import SentenceClassifier
    from peftc.random import Generator
    from peftc.tuners import LoraConfig, get_peft_model

    clf = SentenceClassifier(base_model(model_path, seed), NUM_LABELS, generator=Generator(seed + 1))
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["query", "value"],
                        modules_to_save=["classifier"])
    return get_peft_model(clf, config, generator=Generator(seed + 2))


def train_lora(config: dict) -> dict:
    """A short LoRA run (the sweep's train_fn): the loss curve, the trainable arrays and who ran it.

    ``config``: model_path, seed, lr, steps; ``fail`` raises (a broken config); ``sleep`` pads the run, so
    that a test can act while tasks are in flight."""
    from peftc.models import Tokenizer
    from peftc.train import Trainer, TrainingConfig

    if config.get("fail"):
        raise ValueError(f"learning rate {config['lr']} rejected on purpose")
    time.sleep(config.get("sleep", 0.0))
    seed = config["seed"]
    texts = sentences(48, seed)
    enc = Tokenizer(config["model_path"], 16)(texts)
    labels = np.array([len(t.split()) % NUM_LABELS for t in texts], dtype=np.int64)
    data = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
    model = lora_model(config["model_path"], seed)
    trainer = Trainer(model, TrainingConfig(learning_rate=config["lr"], batch_size=8, max_steps=config["steps"],
                                            seed=seed, progress=False, log_every=1), data)
    history = trainer.train()
    losses = np.array([h["loss"] for h in history if "loss" in h], dtype=np.float64)
    trained = {name: p.data.copy() for name, p in model.named_parameters() if p.requires_grad}
    return {"losses": losses, "state": trained, "pid": os.getpid()}


@pytest.fixture(scope="module")
def client():
    """Two one-thread worker processes on 127.0.0.1, shared by a test module (Dask is in requirements-dev.txt:
    these tests fail, never skip, without it)."""
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        c.wait_for_workers(2, timeout=TIMEOUT)
        yield c
