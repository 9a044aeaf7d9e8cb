"""A tiny BERT, a word-hashing tokenizer and a keyword text task for the FSCIL tests (no downloads)."""
from __future__ import annotations

import zlib

import numpy as np

from peftc.models.bert import BertConfig, BertModel

VOCAB, HIDDEN, MAX_LEN = 64, 16, 16
CLS, SEP, PAD = 1, 2, 0


def tiny_bert(seed: int = 0, dropout: float = 0.0) -> BertModel:
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=24, max_position_embeddings=MAX_LEN, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    rng = np.random.default_rng(seed)
    h, inter = HIDDEN, 24
    state = {"embeddings.word_embeddings.weight": rng.standard_normal((VOCAB, h)) * 0.5,
             "embeddings.position_embeddings.weight": rng.standard_normal((MAX_LEN, h)) * 0.1,
             "embeddings.token_type_embeddings.weight": rng.standard_normal((2, h)) * 0.1,
             "embeddings.LayerNorm.weight": np.ones(h), "embeddings.LayerNorm.bias": np.zeros(h)}
    shapes = {"attention.self.query": (h, h), "attention.self.key": (h, h), "attention.self.value": (h, h),
              "attention.output.dense": (h, h), "intermediate.dense": (inter, h), "output.dense": (h, inter)}
    for i in range(2):
        for name, shape in shapes.items():
            state[f"encoder.layer.{i}.{name}.weight"] = rng.standard_normal(shape) / np.sqrt(shape[1])
            state[f"encoder.layer.{i}.{name}.bias"] = np.zeros(shape[0])
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            state[f"encoder.layer.{i}.{ln}.weight"] = np.ones(h)
            state[f"encoder.layer.{i}.{ln}.bias"] = np.zeros(h)
    return BertModel.from_state_dict(cfg, {k: v.astype(np.float32) for k, v in state.items()}, seed=seed)


def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
    """[CLS] word ids (crc32 of the word, into 3..VOCAB-1) [SEP], truncated to MAX_LEN, right-padded."""
    rows = [[CLS] + [3 + zlib.crc32(w.encode()) % (VOCAB - 3) for w in t.split()][:MAX_LEN - 2] + [SEP] for t in texts]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), PAD, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def keyword_texts(classes, per_class: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Texts of class c: its two keywords among random filler words."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for c in classes:
        for _ in range(per_class):
            words = [f"filler{int(k)}" for k in rng.integers(0, 12, size=int(rng.integers(3, 7)))]
            words[int(rng.integers(len(words)))] = f"key{c}"
            words.append(f"mark{c}")
            texts.append(" ".join(words))
            labels.append(c)
    return texts, np.array(labels, np.int64)


class ToySplit:
    """The shape of :class:`peftc.data.fscil_wordnet.FSCILSplit`: 4 base classes, 2 sessions of 2-way 5-shot."""

    def __init__(self, seed: int = 0, base_classes: int = 4, sessions: int = 2, ways: int = 2, shots: int = 5):
        from peftc.data.text_tasks import TaskSplit

        self.base_classes, self.ways, self.shots = base_classes, ways, shots
        total = base_classes + sessions * ways
        t, y = keyword_texts(range(base_classes), 12, seed)
        self.base_train = TaskSplit([str(i) for i in range(len(t))], t, y)
        self.sessions = []
        for s in range(sessions):
            t, y = keyword_texts(range(base_classes + s * ways, base_classes + (s + 1) * ways), shots, seed + 1 + s)
            self.sessions.append(TaskSplit([str(i) for i in range(len(t))], t, y))
        t, y = keyword_texts(range(total), 6, seed + 100)
        self.test = TaskSplit([str(i) for i in range(len(t))], t, y)
        t, y = keyword_texts(range(total), 4, seed + 200)
        self.val = TaskSplit([str(i) for i in range(len(t))], t, y)
