"""The main WordNet job's data recipe: its settings, its splits and its tokenisation.

The job itself (``python -m peftc.demo``) and the benchmarks that reproduce its task (adapters,
EVA) take their data from here, so that they train and test on the same glosses with the same
tokens without importing the job's script.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .wordnet import WordNetGlosses, load_wordnet_glosses


@dataclass
class JobSettings:
    seed: int = 0
    train_per_class: int = 250
    test_per_class: int | None = None
    max_length: int = 64
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-3
    probe_epochs: int = 40
    probe_learning_rate: float = 3e-3
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    eval_every: int = 200
    progress: bool = True


def tokenize(tokenizer: Callable[[list[str]], dict[str, np.ndarray]], glosses: WordNetGlosses,
             by_length: bool = False) -> dict[str, np.ndarray]:
    """Token ids, mask and labels; ``by_length`` orders the rows by token count, so that sequential
    (evaluation) batches hold glosses of similar length and carry little padding.

    ``tokenizer``: a :class:`peftc.models.Tokenizer` (texts -> {"input_ids", "attention_mask"}).
    """
    enc = tokenizer(glosses.input_texts())
    data = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": glosses.labels}
    if by_length:
        order = np.argsort(data["attention_mask"].sum(axis=1), kind="stable")
        data = {k: np.ascontiguousarray(v[order]) for k, v in data.items()}
    return data


def load_splits(s: JobSettings) -> tuple[WordNetGlosses, WordNetGlosses, WordNetGlosses]:
    """Train, validation and test glosses: the seeded 80/10/10 split, training subsampled to
    ``s.train_per_class`` per class, validation and test to ``s.test_per_class`` when it is set."""
    glosses = load_wordnet_glosses()
    parts = glosses.split(seed=s.seed)
    train, val, test = parts["train"], parts["validation"], parts["test"]
    train = train.subsample_per_class(s.train_per_class, seed=s.seed)
    if s.test_per_class is not None:
        val = val.subsample_per_class(s.test_per_class, seed=s.seed)
        test = test.subsample_per_class(s.test_per_class, seed=s.seed)
    return train, val, test
