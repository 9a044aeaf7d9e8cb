"""Tokenise text for a checkpoint folder with the ``tokenizers`` package and its ``tokenizer.json``."""
from __future__ import annotations

import os

import numpy as np


class Tokenizer:
    """``Tokenizer(folder, max_length)``; calling it on a list of strings returns int64 arrays (B, T).

    Sequences are truncated to ``max_length`` and padded to the longest in the batch, so
    ``attention_mask`` is 1 for real tokens and 0 for padding.
    """

    def __init__(self, folder: str | os.PathLike, max_length: int = 256) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        path = os.path.join(os.fspath(folder), "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{os.fspath(folder)!r} has no tokenizer.json")
        if int(max_length) <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.max_length = int(max_length)
        self._tok = HFTokenizer.from_file(path)
        padding = self._tok.padding or {}
        self.pad_id = int(padding.get("pad_id", 0))
        self._tok.enable_truncation(self.max_length)
        self._tok.enable_padding(pad_id=self.pad_id, pad_token=padding.get("pad_token", "[PAD]"))

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Return ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64, (B, T))."""
        if isinstance(texts, str):
            texts = [texts]
        enc = self._tok.encode_batch(list(texts))
        return {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64).reshape(len(enc), -1),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64).reshape(len(enc), -1),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64).reshape(len(enc), -1),
        }
