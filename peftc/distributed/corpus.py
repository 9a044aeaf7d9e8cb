"""map_corpus: an adapted BERT encoder over a corpus, shard by shard, serially or as Dask tasks.

The corpus is cut into shards of ``shard_size`` texts; each shard is one task, which tokenises its texts
(longest first, so batches carry little padding), runs the model in batches and, with an ``out_dir``,
writes ``<output>-<i>-of-<n>.npy`` atomically (a temporary file renamed over the target: a shard file is
complete or absent). A run that stops part-way is resumed by calling map_corpus again with the same
arguments: shards whose file exists are read, not recomputed. ``map_corpus.json`` in ``out_dir`` records
what the shards were computed from; a second call with another model, adapter, output or corpus refuses
to mix its shards in.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..io.atomic import write_atomic, write_bytes_atomic
from ..io.safetensors import read_header
from ..models import Tokenizer
from ..models.classifier import SentenceClassifier
from ..train import progress_disabled
from ..tuners import PeftModel
from .model_cache import base_model

OUTPUTS = ("embeddings", "logits", "predictions")
MANIFEST = "map_corpus.json"


@dataclass
class CorpusOutput:
    """What :func:`map_corpus` produced: one array per shard, in input order (``shards``; read from the files,
    memory-mapped, when ``paths`` is set), the shard indices computed by this call and those found on disk."""

    shards: list[np.ndarray]
    paths: list[str] | None = None
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    def array(self) -> np.ndarray:
        """All rows in input order: (N, H) embeddings, (N, C) logits or (N,) predictions."""
        return np.concatenate(self.shards)


def _sha256_texts(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _classifier_labels(adapter_path: str) -> int | None:
    """Rows of the classifier head saved in the adapter (modules_to_save "classifier"), None without one."""
    header, _ = read_header(os.path.join(adapter_path, "adapter_model.safetensors"))
    shapes = [shape for key, (_, shape) in header.items() if key.endswith("classifier.weight")]
    return shapes[0][0] if shapes else None


def _model(model_path: str, adapter_path: str | None, output: str, seed: int = 0):
    """The encoder over the process's cached base weights, with the adapter injected (frozen, eval mode)."""
    bert = base_model(model_path, seed)
    if adapter_path is None:
        if output != "embeddings":
            raise ValueError(f"output={output!r} needs an adapter with a classifier head; adapter_path is None")
        return bert
    labels = _classifier_labels(adapter_path)
    if output != "embeddings" and labels is None:
        raise ValueError(f"output={output!r} needs a classifier head in the adapter, but {adapter_path!r} holds "
                         "none (modules_to_save=['classifier'] when it was trained)")
    model = SentenceClassifier(bert, labels) if labels is not None else bert
    return PeftModel.from_pretrained(model, adapter_path).get_base_model()


_tokenizers: dict[tuple[str, int], Tokenizer] = {}


def compute_shard(model_path: str, adapter_path: str | None, texts: Sequence[str], output: str, batch_size: int,
                  max_length: int, path: str | None = None) -> np.ndarray | str:
    """One shard: ``output`` of the adapted model for ``texts``, in their order; written atomically to ``path``
    (and the path returned) when one is given, else returned as an array (one task of :func:`map_corpus`).

    Example:
        >>> emb = compute_shard("minilm/", "adapter/", ["a dog", "a cat"], "embeddings", 64, 256)  # doctest: +SKIP
        >>> emb.shape                                                                            # doctest: +SKIP
        (2, 384)
    """
    key = (model_path, max_length)
    if key not in _tokenizers:
        _tokenizers[key] = Tokenizer(model_path, max_length)
    tok = _tokenizers[key]
    model = _model(model_path, adapter_path, output)
    enc = tok(list(texts))
    order = np.argsort(-enc["attention_mask"].sum(axis=1), kind="stable")  # longest first: batches of like lengths
    parts = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        ids, mask = np.ascontiguousarray(enc["input_ids"][rows]), np.ascontiguousarray(enc["attention_mask"][rows])
        if output == "embeddings":
            bert = model.bert if isinstance(model, SentenceClassifier) else model
            parts.append(np.array(bert.sentence_embedding(ids, mask, skip_padding=True)))
        else:
            logits = np.array(model({"input_ids": ids, "attention_mask": mask}))
            parts.append(logits if output == "logits" else logits.argmax(axis=1).astype(np.int64))
    out = np.empty((len(order),) + parts[0].shape[1:], parts[0].dtype)
    out[order] = np.concatenate(parts)
    if path is None:
        return out

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, out)
    write_atomic(path, write)
    return path


def _check_manifest(out_dir: str, manifest: dict[str, Any]) -> None:
    path = os.path.join(out_dir, MANIFEST)
    if os.path.isfile(path):
        with open(path) as fh:
            old = json.load(fh)
        differ = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
        if differ:
            raise ValueError(f"out_dir {out_dir!r} holds shards of another map_corpus run ({', '.join(differ)} "
                             f"differ: {[(k, old.get(k), manifest.get(k)) for k in differ if k != 'texts_sha256']}); "
                             "use another out_dir or empty it")
    else:
        os.makedirs(out_dir, exist_ok=True)
        write_bytes_atomic(path, (json.dumps(manifest, indent=1) + "\n").encode())


def _finished(path: str, rows: int) -> bool:
    """True when ``path`` is a complete shard of ``rows`` rows; False when absent; ValueError otherwise."""
    if not os.path.exists(path):
        return False
    try:
        a = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise ValueError(f"shard file {path!r} is unreadable ({e}); delete it to recompute it") from None
    if a.shape[:1] != (rows,):
        raise ValueError(f"shard file {path!r} has shape {a.shape}, expected {rows} rows; delete it to recompute it")
    return True


def map_corpus(model_path: str | os.PathLike, adapter_path: str | os.PathLike | None, texts: Sequence[str],
               client: Any = None, *, out_dir: str | os.PathLike | None = None, output: str = "embeddings",
               batch_size: int = 64, shard_size: int = 1024, max_length: int = 256, timeout: float | None = None,
               progress: bool = True, blas_threads: int | None = None) -> CorpusOutput:
    """Run the model of ``model_path`` (a BERT checkpoint folder with its tokenizer.json) with the PEFT-format
    adapter of ``adapter_path`` (or none) over ``texts``; rows come back in input order.

    ``output``: "embeddings" (the L2-normalised mean-pooled sentence embedding, (N, H) float32), "logits" or
    "predictions" (the adapter's classifier head, saved as modules_to_save; (N, C) float32 / (N,) int64).
    Each shard of ``shard_size`` texts is one task, run in batches of ``batch_size``. With ``out_dir`` each
    shard goes to an .npy file written atomically, and shards already there are skipped (resume by calling
    again with the same arguments). ``client``, ``timeout``, ``progress`` and ``blas_threads`` as in
    :func:`run_sweep`; each worker reads the checkpoint once, and no task carries the model.

    Example:
        >>> from peftc.distributed import map_corpus
        >>> out = map_corpus("minilm/", "adapter/", texts, out_dir="emb/")   # doctest: +SKIP
        >>> out.array().shape                                               # doctest: +SKIP
        (100000, 384)
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a sequence of str")
    if not texts:
        raise ValueError("texts is empty")
    for name, v in (("batch_size", batch_size), ("shard_size", shard_size), ("max_length", max_length)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not os.path.isfile(os.path.join(os.fspath(model_path), name)):
            raise FileNotFoundError(f"model_path {os.fspath(model_path)!r} has no {name} (expected a Hugging Face "
                                    "checkpoint folder with its tokenizer)")
    model_path = os.path.realpath(os.fspath(model_path))
    adapter = None if adapter_path is None else os.path.realpath(os.fspath(adapter_path))
    if adapter is not None and not os.path.isdir(adapter):
        raise FileNotFoundError(f"adapter_path {os.fspath(adapter_path)!r} is not a folder")
    if output != "embeddings" and (adapter is None or _classifier_labels(adapter) is None):
        raise ValueError(f"output={output!r} needs an adapter with a classifier head (modules_to_save=['classifier'] "
                         f"when it was trained); adapter_path {adapter_path!r} holds none")
    bounds = [(s, min(s + shard_size, len(texts))) for s in range(0, len(texts), shard_size)]
    paths = None
    todo = list(range(len(bounds)))
    skipped: list[int] = []
    if out_dir is not None:
        out_dir = os.fspath(out_dir)
        _check_manifest(out_dir, {"model_path": model_path, "adapter_path": adapter, "output": output,
                                  "n_texts": len(texts), "shard_size": shard_size, "max_length": max_length,
                                  "texts_sha256": _sha256_texts(texts)})
        paths = [os.path.join(out_dir, f"{output}-{i:05d}-of-{len(bounds):05d}.npy") for i in range(len(bounds))]
        skipped = [i for i in todo if _finished(paths[i], bounds[i][1] - bounds[i][0])]
        todo = [i for i in todo if i not in set(skipped)]

    def task_args(i: int) -> tuple:
        s, e = bounds[i]
        return (model_path, adapter, list(texts[s:e]), output, batch_size, max_length,
                None if paths is None else paths[i])

    results: dict[int, Any] = {}
    if client is None:
        for i in tqdm(todo, desc="map_corpus", disable=progress_disabled(progress), dynamic_ncols=True):
            results[i] = compute_shard(*task_args(i))
    else:
        from .workers import hold_blas_threads, wait_all

        hold_blas_threads(client, blas_threads)
        futures = [client.submit(compute_shard, *task_args(i), pure=False, retries=0) for i in todo]
        try:
            wait_all(futures, timeout, progress, "map_corpus")
            failed = [(i, f) for i, f in zip(todo, futures) if f.status != "finished"]
            if failed:
                i, f = failed[0]
                s, e = bounds[i]
                raise RuntimeError(f"map_corpus: {len(failed)} shard(s) failed, first shard {i} (texts {s}:{e}): "
                                   f"{f.exception()!r}; finished shards are kept, call again to resume")
            results.update(zip(todo, client.gather(futures)))
        finally:
            client.cancel(futures)
    if paths is None:
        return CorpusOutput([results[i] for i in range(len(bounds))], None, todo, skipped)
    return CorpusOutput([np.load(p, mmap_mode="r") for p in paths], paths, todo, skipped)


def load_shards(out_dir: str | os.PathLike) -> np.ndarray:
    """All rows written by :func:`map_corpus` to ``out_dir``, in input order; ValueError if a shard is missing.

    Example:
        >>> from peftc.distributed import load_shards
        >>> emb = load_shards("emb/")   # doctest: +SKIP
    """
    out_dir = os.fspath(out_dir)
    with open(os.path.join(out_dir, MANIFEST)) as fh:
        m = json.load(fh)
    n = -(-m["n_texts"] // m["shard_size"])
    paths = [os.path.join(out_dir, f"{m['output']}-{i:05d}-of-{n:05d}.npy") for i in range(n)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"{out_dir!r}: {len(missing)} of {n} shards missing (first {missing[0]!r}); "
                         "run map_corpus again to finish them")
    return np.concatenate([np.load(p) for p in paths])
