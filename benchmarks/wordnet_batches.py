"""WordNet gloss batches for the EVA benchmark and experiment: the main job's tokenisation and
splits (peftc.data.wordnet_job), a seeded sample of training glosses, padding columns trimmed per batch."""
from __future__ import annotations

import numpy as np

from peftc.data.wordnet_job import JobSettings, load_splits, tokenize
from peftc.models import Tokenizer, minilm_path
from peftc.models.classifier import trim_padding


def gloss_batches(n_batches: int, batch_size: int, seed: int = 0,
                  settings: JobSettings | None = None) -> list[dict[str, np.ndarray]]:
    """``n_batches`` batches of ``batch_size`` training glosses drawn without replacement (seeded):
    ``{"input_ids", "attention_mask"}`` int64 (B, T), T the longest gloss of the batch."""
    s = settings or JobSettings(seed=seed)
    train, _, _ = load_splits(s)
    data = tokenize(Tokenizer(minilm_path(), max_length=s.max_length), train)
    need = n_batches * batch_size
    if need > len(train):
        raise ValueError(f"{n_batches} batches of {batch_size} need {need} glosses; the training split has {len(train)}")
    rows = np.random.default_rng(seed).permutation(len(train))[:need]
    out = []
    for i in range(n_batches):
        pick = rows[i * batch_size:(i + 1) * batch_size]
        ids, mask = trim_padding(data["input_ids"][pick], data["attention_mask"][pick])
        out.append({"input_ids": ids, "attention_mask": mask})
    return out
