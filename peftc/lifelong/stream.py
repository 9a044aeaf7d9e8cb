"""Running a method over a task stream: training steps, replay policies, accuracy after every step, cost counts.

Methods (``StreamMethod.kind``):

- ``sequential``: train on the new task only (no replay);
- ``full_replay``: train on everything seen so far;
- ``random``: a uniform random subset of everything seen, ``budget`` x (examples seen so far);
- ``adapt_inf``: the same budget chosen by :func:`peftc.lifelong.adapt_inf.select_step` from the stored pool,
  scored at every step with the current model (one forward and a last-block backward per pool example);
  with pruning on, the pool is cut permanently after each clustering.

Cost: ``backward_passes`` counts example backward passes (one per trained example per epoch, one per scored
pool example: the gradient of the sample vector); ``block_backwards`` weighs them by the encoder blocks
they run through (training: all adapted blocks; scoring: the last one). After every step the trainable
parameters (adapters and heads) are snapshotted, so accuracy on any split can be computed afterwards for
every step: the test split is then read only for the run that validation chose.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from ..optim import AdamW
from .adapt_inf import AdaptInfConfig, cluster_and_prune, sample_clusters
from .network import StreamNetwork
from .vectors import projection_matrix, sample_vectors

KINDS = ("sequential", "full_replay", "random", "adapt_inf")


@dataclass
class Split:
    """Cached trunk states (n, T, H) float32, attention mask (n, T) int64 and labels (n,) int64 of one split."""

    states: np.ndarray
    mask: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TaskData:
    name: str
    num_classes: int
    train: Split
    validation: Split
    test: Split


@dataclass(frozen=True)
class StreamMethod:
    name: str
    kind: str
    budget: float | None = None  # fraction of the examples seen so far (random, adapt_inf)
    adapt: AdaptInfConfig = AdaptInfConfig()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind in ("random", "adapt_inf") and not (self.budget is not None and 0.0 < self.budget <= 1.0):
            raise ValueError(f"method {self.name}: budget must be a fraction in (0, 1], got {self.budget}")


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    proj_dim: int = 1024
    score_batch: int = 64


@dataclass
class StreamRun:
    """What a run keeps: per-step snapshots of the trainable parameters, counts and the selections."""

    method: str
    seed: int
    snapshots: list[list[np.ndarray]] = field(default_factory=list)
    trained: list[int] = field(default_factory=list)  # examples trained on per step (one epoch)
    scored: list[int] = field(default_factory=list)  # pool examples scored per step
    pool_sizes: list[int] = field(default_factory=list)  # stored pool after each step
    backward_passes: int = 0
    block_backwards: int = 0
    seconds: float = 0.0
    info: list[dict] = field(default_factory=list)


def prepare_task(name: str, num_classes: int, net: StreamNetwork, tokenize, splits: dict) -> TaskData:
    """Tokenise the three splits ({"train"|"validation"|"test": (texts, labels)}) and cache their trunk states."""
    out = {}
    for part in ("train", "validation", "test"):
        texts, labels = splits[part]
        enc = tokenize(list(texts))
        out[part] = Split(net.encode_trunk(enc["input_ids"], enc["attention_mask"]),
                          np.ascontiguousarray(enc["attention_mask"]), np.asarray(labels, dtype=np.int64))
    return TaskData(name, int(num_classes), out["train"], out["validation"], out["test"])


def gather_pool(data: list[TaskData], refs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """States, mask, labels, tasks of pool references (n, 2) = (task, row), padded to a common width."""
    width = max(data[t].train.states.shape[1] for t in np.unique(refs[:, 0]))
    h = data[0].train.states.shape[2]
    states = np.zeros((len(refs), width, h), dtype=np.float32)
    mask = np.zeros((len(refs), width), dtype=np.int64)
    labels = np.empty(len(refs), dtype=np.int64)
    for t in np.unique(refs[:, 0]):
        sel = np.flatnonzero(refs[:, 0] == t)
        src = data[t].train
        w = src.states.shape[1]
        states[sel, :w] = src.states[refs[sel, 1]]
        mask[sel, :w] = src.mask[refs[sel, 1]]
        labels[sel] = src.labels[refs[sel, 1]]
    return states, mask, labels, refs[:, 0].copy()


def _train(net: StreamNetwork, data: list[TaskData], refs: np.ndarray, s: TrainSettings,
           rng: np.random.Generator) -> None:
    params = net.trainable()
    opt = AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    for _ in range(s.epochs):
        order = rng.permutation(len(refs))
        for start in range(0, len(order), s.batch_size):
            batch = refs[order[start:start + s.batch_size]]
            states, mask, labels, tasks = gather_pool(data, batch)
            net.zero_grad()
            net.loss_backward(states, mask, labels, tasks)
            opt.step()
    net.zero_grad()


def score_pool(net: StreamNetwork, data: list[TaskData], refs: np.ndarray, projection: np.ndarray,
               batch: int = 64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(unit sample vectors (n, d), {selector: (n,)}) of the pool references with the current model."""
    vecs, parts = [], []
    for start in range(0, len(refs), batch):
        states, mask, labels, tasks = gather_pool(data, refs[start:start + batch])
        pe = net.per_example(states, mask, labels, tasks)
        v, norms = sample_vectors(pe.grads, projection)
        vecs.append(v)
        parts.append({**pe.scores, "grad_norm": norms})
    scores = {k: np.concatenate([p[k] for p in parts]) for k in ("entropy", "el2n", "grad_norm", "loss")}
    return np.concatenate(vecs), scores


def run_stream(make_net, data: list[TaskData], method: StreamMethod, settings: TrainSettings, seed: int,
               log=None) -> tuple[StreamRun, StreamNetwork]:
    """Run ``method`` over the tasks in order; ``make_net(seed)`` gives a fresh :class:`StreamNetwork`."""
    t0 = time.perf_counter()
    net = make_net(seed)
    rng = np.random.default_rng([int(seed), 0x57E])
    run = StreamRun(method.name, int(seed))
    pool = np.zeros((0, 2), dtype=np.int64)
    seen = 0
    projection = None
    for t, task in enumerate(data):
        net.add_task(task.num_classes)
        new = np.stack([np.full(len(task.train), t), np.arange(len(task.train))], axis=1).astype(np.int64)
        seen += len(new)
        info: dict = {"task": task.name}
        if method.kind == "sequential":
            pool, train = new, new
        elif method.kind == "full_replay":
            pool = np.concatenate([pool, new])
            train = pool
        elif method.kind == "random":
            pool = np.concatenate([pool, new])
            size = min(int(round(method.budget * seen)), len(pool))
            train = pool[np.sort(rng.choice(len(pool), size=size, replace=False))]
        else:
            pool = np.concatenate([pool, new])
            if projection is None:
                p = sum(layer.lora_A.size + layer.lora_B.size for layer in net.recording_layers())
                projection = projection_matrix(p, settings.proj_dim, seed)
            vectors, scores = score_pool(net, data, pool, projection, settings.score_batch)
            run.scored.append(len(pool))
            run.backward_passes += len(pool)
            run.block_backwards += len(pool)
            cfg = method.adapt
            if cfg.k is not None and cfg.k > len(pool):  # a first task smaller than k: one cluster a sample
                cfg = replace(cfg, k=len(pool))
            step_seed = int(rng.integers(2**31))
            k, labels, keep = cluster_and_prune(vectors, step_seed, cfg)
            size = min(int(round(method.budget * seen)), len(keep))
            rows, selectors, budgets = sample_clusters(scores, labels, keep, k, size, step_seed, cfg)
            info.update(k=k, selectors=selectors, budgets=budgets)
            train, pool = pool[rows], pool[keep]
        _train(net, data, train, settings, rng)
        run.trained.append(len(train))
        run.pool_sizes.append(len(pool))
        run.backward_passes += settings.epochs * len(train)
        run.block_backwards += settings.epochs * len(train) * len(net.blocks)
        run.snapshots.append([p.data.copy() for p in net.trainable()])
        run.info.append(info)
        if log:
            log(f"  step {t} ({task.name}): trained on {len(train)}, pool {len(pool)}")
    run.seconds = time.perf_counter() - t0
    return run, net


def accuracy_matrix(run: StreamRun, net: StreamNetwork, data: list[TaskData], split: str,
                    batch: int = 128, steps: list[int] | None = None) -> np.ndarray:
    """(T, T) accuracy: row t after step t, column j task j (NaN for j > t), on ``split`` of each task; with
    ``steps`` only those rows are computed (the others stay NaN)."""
    if split not in ("validation", "test"):
        raise ValueError(f"split must be 'validation' or 'test', got {split!r}")
    total = len(run.snapshots)
    acc = np.full((total, total), np.nan)
    current = [p.data.copy() for p in net.trainable()]
    net.eval()
    try:
        for t in (range(total) if steps is None else steps):
            params = net.trainable()
            for p, saved in zip(params, run.snapshots[t]):
                if p.data.shape == saved.shape:
                    p.data[...] = saved
            for j in range(t + 1):
                part = getattr(data[j], split)
                right = 0
                for start in range(0, len(part), batch):
                    sl = slice(start, start + batch)
                    z = net.logits(part.states[sl], part.mask[sl], np.full(len(part.labels[sl]), j))
                    right += int((z.argmax(axis=1) == part.labels[sl]).sum())
                acc[t, j] = right / max(len(part), 1)
    finally:
        for p, saved in zip(net.trainable(), current):
            p.data[...] = saved
        net.train()
    return acc


def stream_metrics(acc: np.ndarray) -> dict[str, float]:
    """Final average accuracy, forgetting (mean over earlier tasks of best-before-last minus last) and backward
    transfer (mean of last minus just-learned) of a (T, T) accuracy matrix.

    >>> stream_metrics(np.array([[0.8, np.nan], [0.6, 0.9]]))  # doctest: +ELLIPSIS
    {'final_avg_acc': 0.75, 'forgetting': 0.2..., 'bwt': -0.2...}
    """
    steps = acc.shape[0]
    last = acc[steps - 1]
    final = float(np.nanmean(last))
    if steps < 2:
        return {"final_avg_acc": final, "forgetting": 0.0, "bwt": 0.0}
    forget = [float(np.nanmax(acc[:steps - 1, j]) - last[j]) for j in range(steps - 1)]
    bwt = [float(last[j] - acc[j, j]) for j in range(steps - 1)]
    return {"final_avg_acc": final, "forgetting": float(np.mean(forget)), "bwt": float(np.mean(bwt))}
