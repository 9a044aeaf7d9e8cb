"""Evaluation harness for test-time adaptation: streams, protocols and metrics.

A stream is a list of :class:`Segment` s. A segment names a pool of test images (one corruption at
one severity, say) and the rows of that pool it visits, in stream order. The pool is not copied:
batches are gathered when they are fed, so long streams over many rounds cost no memory. Labels
below zero mark out-of-distribution (unknown-class) images in open-set streams; they count for the
unknown side of the AUROC and never for the error.

:func:`run_stream` feeds a method (anything with ``forward_and_adapt(x) -> logits`` and a
``stats`` dict, see :mod:`peftc.tta.methods`) batch by batch and records, per sample, the
prediction and the maximum softmax probability of the forward that precedes each update, and,
per segment, how many optimizer steps (backward passes) and backward samples the method spent.
The protocols on top:

* :func:`evaluate_corruptions`: TENT's protocol, reset before each (corruption, severity), error
  per corruption and per severity, with the backward counts that carry EATA's efficiency claim.
* :func:`continual_stream` + :func:`run_stream` without reset: long-term adaptation over many
  rounds of mixed corruptions; :func:`clean_error` afterwards measures forgetting (EATA's
  anti-forgetting claim) by forwarding clean images through the adapted model, without adapting.
* :func:`open_set_segment`: corrupted known-class images mixed batch by batch with corrupted
  held-out-class images; :func:`summarize` then gives the error on known classes and the AUROC
  of the maximum softmax score for known against unknown.

What it does not do: load data or build methods (the benchmarks do), or plot.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from .. import functional as F

UNKNOWN = -1  # label of an out-of-distribution image in an open-set stream


@dataclass
class Segment:
    """``images[index]`` with ``labels[index]``, fed in that order. images (M, 28, 28) or (M, 1, 28, 28)."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    index: np.ndarray


@dataclass
class StreamRecord:
    """What :func:`run_stream` saw. Per sample: ``segment`` (id into ``names``), ``label``, ``pred``,
    ``score`` (max softmax). Per segment: ``steps``, ``backward_samples``, ``seconds``."""

    names: list[str]
    segment: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    score: np.ndarray
    steps: np.ndarray
    backward_samples: np.ndarray
    seconds: np.ndarray
    extra: dict = field(default_factory=dict)


def _as_batch(images: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(images, dtype=np.float32)
    return x[:, None] if x.ndim == 3 else x


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """The maximum softmax probability of each row (N,): the baseline known-vs-unknown score."""
    return F.softmax_entropy_forward(np.ascontiguousarray(logits, dtype=np.float32))[1].max(1)


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Area under the ROC curve for telling ``known`` scores (positives) from ``unknown`` ones.

    The Mann-Whitney statistic: the probability that a random known sample scores higher than a
    random unknown one, ties counting one half. NaN when either side is empty.
    """
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if len(known) == 0 or len(unknown) == 0:
        return float("nan")
    both = np.concatenate([known, unknown])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both), dtype=np.float64)
    sorted_scores = both[order]
    # average rank over ties: group equal scores, give each the mean of its 1-based positions
    start = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    stop = np.r_[start[1:], len(both)]
    for a, b in zip(start, stop):
        ranks[order[a:b]] = 0.5 * (a + 1 + b)
    u = ranks[:len(known)].sum() - len(known) * (len(known) + 1) / 2.0
    return float(u / (len(known) * len(unknown)))


def run_stream(method, segments: Sequence[Segment], batch_size: int) -> StreamRecord:
    """Feed each segment in batches of ``batch_size`` (the last batch of a segment may be shorter)."""
    ids, labels, preds, scores = [], [], [], []
    steps = np.zeros(len(segments), dtype=np.int64)
    back = np.zeros(len(segments), dtype=np.int64)
    secs = np.zeros(len(segments), dtype=np.float64)
    for s, seg in enumerate(segments):
        steps0, back0 = method.stats["steps"], method.stats["backward_samples"]
        t0 = time.perf_counter()
        for i in range(0, len(seg.index), batch_size):
            rows = seg.index[i:i + batch_size]
            logits = method.forward_and_adapt(_as_batch(seg.images[rows]))
            ids.append(np.full(len(rows), s, dtype=np.int64))
            labels.append(seg.labels[rows])
            preds.append(logits.argmax(1))
            scores.append(max_softmax(logits))
        secs[s] = time.perf_counter() - t0
        steps[s] = method.stats["steps"] - steps0
        back[s] = method.stats["backward_samples"] - back0
    cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt))
    return StreamRecord([seg.name for seg in segments], cat(ids, np.int64), cat(labels, np.int64),
                        cat(preds, np.int64), cat(scores, np.float32), steps, back, secs)


def summarize(record: StreamRecord, segments: Sequence[int] | None = None) -> dict[str, float]:
    """Error % on known-class samples, AUROC of the max softmax (NaN without unknowns) and the
    backward counts, over the given segment ids (all by default)."""
    chosen = np.arange(len(record.names)) if segments is None else np.asarray(segments, dtype=np.int64)
    rows = np.isin(record.segment, chosen)
    known = rows & (record.label >= 0)
    unknown = rows & (record.label < 0)
    n_known = int(known.sum())
    err = 100.0 * float((record.pred[known] != record.label[known]).mean()) if n_known else float("nan")
    return {"error": err, "known": n_known, "unknown": int(unknown.sum()),
            "auroc": auroc(record.score[known], record.score[unknown]),
            "steps": int(record.steps[chosen].sum()), "backward_samples": int(record.backward_samples[chosen].sum()),
            "seconds": float(record.seconds[chosen].sum())}


def clean_error(method, images: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """Error % of the method's current model on (clean) images, forwarded without adapting.

    The model normalises as the method does (test-batch statistics for the adapting methods,
    running statistics for Source), so the number is comparable before and after a stream.
    """
    wrong = 0
    for i in range(0, len(images), batch_size):
        wrong += int((method.model.forward(_as_batch(images[i:i + batch_size])).argmax(1)
                      != labels[i:i + batch_size]).sum())
    return 100.0 * wrong / max(len(images), 1)


def evaluate_corruptions(method, load: Callable[[str, int], tuple[np.ndarray, np.ndarray]],
                         corruptions: Sequence[str], severities: Sequence[int], batch_size: int,
                         limit: int | None = None, rng: np.random.Generator | None = None) -> list[dict]:
    """TENT's protocol: for each severity and corruption, ``method.reset()``, then stream ``limit``
    images of ``load(corruption, severity)`` (in an order drawn from ``rng``, else in file order).

    Returns one row per (corruption, severity): error %, steps, backward samples, seconds.
    """
    rows = []
    for severity in severities:
        for name in corruptions:
            x, y = load(name, severity)
            index = rng.permutation(len(x)) if rng is not None else np.arange(len(x))
            index = index[:limit] if limit else index
            method.reset()
            record = run_stream(method, [Segment(name, x, y, index)], batch_size)
            rows.append({"corruption": name, "severity": severity, **summarize(record)})
    return rows


def continual_stream(pools: Mapping[str, tuple[np.ndarray, np.ndarray]], rounds: int, per_segment: int,
                     rng: np.random.Generator, shuffle_order: bool = True) -> list[Segment]:
    """``rounds`` passes over the corruptions of ``pools`` (name -> (images, labels)), each pass in
    a fresh random order (fixed order when ``shuffle_order`` is False), ``per_segment`` random
    images per visit. Segment names are ``"<round>:<corruption>"``."""
    names = list(pools)
    segments = []
    for r in range(rounds):
        order = rng.permutation(len(names)) if shuffle_order else np.arange(len(names))
        for k in order:
            x, y = pools[names[k]]
            segments.append(Segment(f"{r}:{names[k]}", x, y, rng.choice(len(x), per_segment, replace=False)))
    return segments


def open_set_segment(name: str, images: np.ndarray, labels: np.ndarray, known_classes: Sequence[int],
                     n_known: int, known_per_batch: int, unknown_per_batch: int,
                     rng: np.random.Generator) -> Segment:
    """Batches of ``known_per_batch`` known-class rows then ``unknown_per_batch`` unknown-class rows
    (random, without replacement within the segment), ``n_known`` known rows in all.

    Known labels are relabelled to their position in ``known_classes`` (as the source model was
    trained, see ``SourceConfig.classes``); every other class becomes :data:`UNKNOWN`. Feed the
    segment with ``batch_size = known_per_batch + unknown_per_batch``.
    """
    lookup = np.full(int(labels.max()) + 1, UNKNOWN, dtype=np.int64)
    lookup[list(known_classes)] = np.arange(len(known_classes))
    mapped = lookup[labels]
    known = rng.permutation(np.flatnonzero(mapped >= 0))[:n_known]
    batches = -(-len(known) // known_per_batch)
    unknown_pool = np.flatnonzero(mapped < 0)
    need = batches * unknown_per_batch
    if need > len(unknown_pool):
        raise ValueError(f"open_set_segment {name!r}: {batches} batches need {need} unknown images, "
                         f"the pool has {len(unknown_pool)}")
    unknown = rng.permutation(unknown_pool)[:need]
    parts = []
    for b in range(batches):
        parts.append(known[b * known_per_batch:(b + 1) * known_per_batch])
        parts.append(unknown[b * unknown_per_batch:(b + 1) * unknown_per_batch])
    return Segment(name, images, mapped, np.concatenate(parts))


def rounds_of(record: StreamRecord) -> dict[int, list[int]]:
    """Segment ids grouped by the round prefix of their ``"<round>:<name>"`` names."""
    out: dict[int, list[int]] = {}
    for s, name in enumerate(record.names):
        out.setdefault(int(name.split(":", 1)[0]), []).append(s)
    return out


def open_set_stream(pools: Mapping[str, tuple[np.ndarray, np.ndarray]], known_classes: Sequence[int], rounds: int,
                    n_known: int, known_per_batch: int, unknown_per_batch: int, rng: np.random.Generator,
                    shuffle_order: bool = True) -> list[Segment]:
    """:func:`continual_stream` with every visit an :func:`open_set_segment` of the same corruption."""
    names = list(pools)
    segments = []
    for r in range(rounds):
        order = rng.permutation(len(names)) if shuffle_order else np.arange(len(names))
        for k in order:
            x, y = pools[names[k]]
            segments.append(open_set_segment(f"{r}:{names[k]}", x, y, known_classes, n_known, known_per_batch,
                                             unknown_per_batch, rng))
    return segments
