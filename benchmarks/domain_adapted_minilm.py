"""The domain-adapted MiniLM of the medical-adaptation protocol: LoRA continued training on noun glosses, merged.

The two papers compare a general model with the same model after continued training on domain text.
Here the domain is WordNet's noun glosses (the adaptation half: peftc.data.text_tasks) and the
continued training is contrastive, the objective all-MiniLM-L6-v2 itself was trained with
(sentence-transformers' MultipleNegativesRankingLoss): a batch of B (gloss, lemmas) pairs goes
through the one encoder (2B sentences, mean-pooled and normalised), the logits are
``scale * cos(gloss_i, lemmas_j)`` (B, B), and each gloss must pick its own synset's words among the
batch's (cross-entropy against the diagonal). A pair whose lemma text equals another's in the batch
(two synsets with the same words) is not counted as that one's negative: its logit is left out of
the softmax. The objective uses no label of any downstream task.

LoRA (r 8, alpha 16, dropout 0.1 on query and value by default) through peftc's get_peft_model, trained
by peftc's Trainer (AdamW, warm-up and linear decay, clipping), then ``merge_and_unload``: the adapted
model is a plain BERT checkpoint folder (config.json, tokenizer.json, model.safetensors), cached under
``<peftc cache>/medical_protocol/<key>/`` where the key hashes every setting and the adaptation data, so
a later run (or another seed's process) loads it instead of training again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass

import numpy as np

from peftc.data.corruptions import cache_root
from peftc.data.text_tasks import AdaptationPairs, adaptation_pairs
from peftc.io.atomic import write_bytes_atomic
from peftc.io.safetensors import save_file
from peftc.models import BertModel, Tokenizer, minilm_path
from peftc.nn import Module
from peftc.nn.loss import CrossEntropyLoss
from peftc.random import Generator
from peftc.train import Trainer, TrainingConfig
from peftc.tuners import LoraConfig, get_peft_model

LEFT_OUT = -1e4  # logit of a same-words pair: exp(-1e4 - max) is 0 in float32, so it drops out of the softmax


@dataclass(frozen=True)
class AdaptSettings:
    """What the adapted model is a function of (the cache key hashes all of it)."""

    seed: int = 0
    pairs: int = 8000
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 5e-4
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] = ("query", "value")
    scale: float = 20.0
    max_length: int = 64

    def key(self, data_fingerprint: str) -> str:
        """The cache key: the settings and the adaptation data's fingerprint (:func:`fingerprint`)."""
        text = json.dumps({**asdict(self), "data": data_fingerprint}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(pairs: AdaptationPairs) -> str:
    """SHA-256 of the pairs' ids and texts: a change of the adaptation data changes the cache key."""
    h = hashlib.sha256()
    for row in zip(pairs.ids, pairs.glosses, pairs.lemmas):
        h.update("\t".join(row).encode() + b"\n")
    return h.hexdigest()


class GlossLemmaContrastive(Module):
    """``forward(batch) -> (B, B)`` logits ``scale * cos(gloss_i, lemmas_j)``: both sides through ``encoder``
    (anything with ``sentence_embedding`` / ``sentence_embedding_backward``) in one padded (2B, T) batch."""

    def __init__(self, encoder: Module, scale: float = 20.0) -> None:
        self.encoder = encoder
        self.scale = float(scale)
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    def forward(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        g_ids, g_mask, l_ids, l_mask = (batch[k] for k in ("gloss_ids", "gloss_mask", "lemma_ids", "lemma_mask"))
        b = g_ids.shape[0]
        t = int(max(g_mask.sum(axis=1).max(), l_mask.sum(axis=1).max()))  # drop columns padded in every row
        ids = np.ascontiguousarray(np.concatenate([g_ids[:, :t], l_ids[:, :t]]))
        mask = np.ascontiguousarray(np.concatenate([g_mask[:, :t], l_mask[:, :t]]))
        emb = self.encoder.sentence_embedding(ids, mask)  # (2B, H), unit rows
        g, lem = emb[:b], emb[b:]
        self._cache = (g, lem)
        return (self.scale * (g @ lem.T)).astype(np.float32)

    def backward(self, dy: np.ndarray, *, dx=None, input_grad: bool = True):
        if self._cache is None:
            raise RuntimeError("GlossLemmaContrastive.backward called before forward")
        g, lem = self._cache
        self._no_input_grad(dx, "token ids")
        demb = np.concatenate([self.scale * (dy @ lem), self.scale * (dy.T @ g)]).astype(np.float32)
        self.encoder.sentence_embedding_backward(np.ascontiguousarray(demb))
        return None


class InBatchLoss:
    """Cross-entropy of each row of (B, B) logits against its diagonal; ``groups`` (B,) int64 numbers the
    lemma texts, and an off-diagonal entry of the row's own group is left out of the softmax."""

    def __init__(self) -> None:
        self._ce = CrossEntropyLoss()

    def forward(self, logits: np.ndarray, groups: np.ndarray) -> float:
        b = logits.shape[0]
        if logits.shape != (b, b) or groups.shape != (b,):
            raise ValueError(f"logits must be (B, B) and groups (B,), got {logits.shape} and {groups.shape}")
        same = (groups[:, None] == groups[None, :]) & ~np.eye(b, dtype=bool)
        return self._ce.forward(np.where(same, np.float32(LEFT_OUT), logits).astype(np.float32),
                                np.arange(b, dtype=np.int64))

    __call__ = forward

    def backward(self, dloss: float = 1.0) -> np.ndarray:
        return self._ce.backward(dloss)  # zero at the left-out entries: their softmax weight is 0


def tokenize_pairs(tokenizer: Tokenizer, glosses: list[str], lemmas: list[str], groups: np.ndarray) -> dict:
    """Token arrays of both sides padded to one width, and the groups as the Trainer's label array."""
    g, lem = tokenizer(glosses), tokenizer(lemmas)
    t = max(g["input_ids"].shape[1], lem["input_ids"].shape[1])

    def pad(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.pad(a, ((0, 0), (0, t - a.shape[1]))))

    return {"gloss_ids": pad(g["input_ids"]), "gloss_mask": pad(g["attention_mask"]),
            "lemma_ids": pad(lem["input_ids"]), "lemma_mask": pad(lem["attention_mask"]), "labels": groups}


def adapt(s: AdaptSettings, pairs: AdaptationPairs, log=print) -> tuple[BertModel, dict]:
    """Train the LoRA adapter on ``pairs`` and return the merged encoder and the run's record."""
    if len(pairs) < s.batch_size:  # the in-batch objective drops a last short batch: no batch at all would never end
        raise ValueError(f"adaptation needs at least batch_size={s.batch_size} pairs, got {len(pairs)}")
    folder = minilm_path()
    data = tokenize_pairs(Tokenizer(folder, s.max_length), pairs.glosses, pairs.lemmas, pairs.groups)
    encoder = BertModel.from_pretrained(folder, seed=s.seed)
    config = LoraConfig(r=s.r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                        target_modules=list(s.target_modules))
    model = get_peft_model(GlossLemmaContrastive(encoder, s.scale), config, generator=Generator(s.seed))
    tc = TrainingConfig(learning_rate=s.learning_rate, batch_size=s.batch_size, num_epochs=s.epochs,
                        max_steps=s.max_steps, warmup_ratio=0.06, weight_decay=0.01, max_grad_norm=1.0, seed=s.seed,
                        drop_last=True, progress=False, log_every=1)
    trainer = Trainer(model, tc, data, loss_fn=InBatchLoss())
    t0 = time.perf_counter()
    history = trainer.train()
    losses = [h["loss"] for h in history if "loss" in h]
    merged = model.merge_and_unload().encoder
    merged.eval()
    window = max(1, min(10, len(losses) // 2))
    record = {"settings": asdict(s), "data": fingerprint(pairs), "pairs": len(pairs), "steps": trainer.global_step,
              "seconds": time.perf_counter() - t0, "loss_first": float(np.mean(losses[:window])),
              "loss_last": float(np.mean(losses[-window:]))}
    log(f"adapted MiniLM (seed {s.seed}): {record['steps']} steps on {len(pairs)} noun (gloss, lemmas) pairs, "
        f"loss {record['loss_first']:.3f} -> {record['loss_last']:.3f} ({record['seconds']:.0f} s)")
    return merged, record


def adapted_minilm(s: AdaptSettings, cache: str | os.PathLike | None = None, log=print) -> tuple[BertModel, dict]:
    """The merged adapted encoder for ``s``: loaded from the cache, or trained and cached (atomically)."""
    pairs = adaptation_pairs(limit=s.pairs, seed=s.seed)
    data = fingerprint(pairs)
    folder = os.path.join(cache_root(cache), "medical_protocol", f"minilm_nouns_{s.key(data)}")
    record_path = os.path.join(folder, "adaptation.json")
    if os.path.isfile(record_path):
        record = json.loads(open(record_path).read())
        wanted = json.loads(json.dumps(asdict(s)))  # as JSON stores it (tuples become lists)
        if record["settings"] != wanted or record["data"] != data:
            raise ValueError(f"{record_path}: cached settings {record['settings']} (data {record['data']}) differ "
                             f"from {wanted} (data {data})")
        return BertModel.from_pretrained(folder, seed=s.seed), {**record, "cached": True}
    model, record = adapt(s, pairs, log)
    os.makedirs(folder, exist_ok=True)
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(os.path.join(minilm_path(), name), os.path.join(folder, name))
    save_file(model.state_dict(), os.path.join(folder, "model.safetensors"))
    write_bytes_atomic(record_path, json.dumps(record, indent=1).encode())  # last: marks the folder complete
    return model, {**record, "cached": False}
