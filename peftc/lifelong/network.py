"""StreamNetwork: a BERT encoder whose lower blocks are frozen and cached, LoRA on the top blocks, one head per task.

Lifelong selection scores every stored example at every time step, so the frozen part of the encoder is run
once per text (:meth:`StreamNetwork.encode_trunk`) and its output, the input of the first adapted block,
is kept; training, scoring and evaluation run only the top ``adapted_blocks`` blocks (LoRA on query and
value, PEFT's ``layers_to_transform``), mean pooling over the real tokens and the task's linear head. With
no dropout in the frozen blocks the cached states are exactly what a full forward computes.

Per-example gradients (:meth:`StreamNetwork.per_example`): the paper's code takes each example's gradient
of the LoRA parameters of one block; here the last block's query and value adapters record their input rows
and output-gradient rows during one batched backward of the *summed* per-example losses, and
:func:`peftc.lifelong.kernels.lora_per_example_grad` splits them by example in one C call.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._checks import as_rows
from ..models.bert import BertModel
from ..nn import Linear, LoraLinear, MeanPooling, Module, ModuleList, Parameter
from ..random import Generator
from . import kernels
from .selectors import selector_scores

TARGETS = ("query", "value")


class RecordingLoraLinear(LoraLinear):
    """A :class:`~peftc.nn.LoraLinear` that, while ``recording`` is on, keeps its last forward input rows and
    last backward output-gradient rows (the arrays themselves) for per-example gradients. No dropout."""

    def __init__(self, base: Linear, r: int, lora_alpha: float, generator: Generator) -> None:
        super().__init__(base, r=r, lora_alpha=lora_alpha, lora_dropout=0.0, generator=generator)
        self.recording = False
        self.recorded: tuple[np.ndarray, np.ndarray | None] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = super().forward(x)
        self.recorded = (as_rows(x, "x", self.in_features), None) if self.recording else None
        return y

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        if self.recording and self.recorded is not None:
            self.recorded = (self.recorded[0], as_rows(dy, "dy", self.out_features))
        return super().backward(dy, dx=dx, input_grad=input_grad)


@dataclass
class PerExample:
    """What one scoring pass gives per example: the logit-based selector scores (entropy, el2n, loss; each
    (E,) float64, :func:`peftc.lifelong.selectors.selector_scores`), the flat last-block LoRA gradients (E, P)
    and whether each prediction was right (E,) bool."""

    scores: dict[str, np.ndarray]
    grads: np.ndarray
    correct: np.ndarray


class StreamNetwork(Module):
    """``StreamNetwork(bert, adapted_blocks=2, r=8, lora_alpha=16, seed=0)``; heads are added per task.

    >>> from tests.fscil_toys import tiny_bert, tokenize  # a 2-block BERT and a word-hashing tokenizer
    >>> net = StreamNetwork(tiny_bert(), adapted_blocks=1, r=2)
    >>> net.add_task(3)
    0
    >>> batch = tokenize(["a b c", "d e"])
    >>> states = net.encode_trunk(batch["input_ids"], batch["attention_mask"])
    >>> net.logits(states, batch["attention_mask"], np.array([0, 0])).shape
    (2, 3)
    """

    def __init__(self, bert: BertModel, adapted_blocks: int = 2, r: int = 8, lora_alpha: float = 16.0,
                 seed: int = 0) -> None:
        layers = list(bert.encoder.layer)
        if int(adapted_blocks) != adapted_blocks or not 1 <= adapted_blocks <= len(layers):
            raise ValueError(f"adapted_blocks must be in [1, {len(layers)}] for this encoder, got {adapted_blocks}")
        bert.requires_grad_(False)
        bert.eval()
        self._bert = bert  # the frozen trunk, run by encode_trunk; not a child: it has nothing to train
        self.generator = Generator(seed)
        self.frozen_blocks = len(layers) - int(adapted_blocks)
        self.blocks = ModuleList(layers[self.frozen_blocks:])
        for block in self.blocks:
            attention = getattr(block.attention, "self")
            for name in TARGETS:
                setattr(attention, name, RecordingLoraLinear(getattr(attention, name), r, lora_alpha, self.generator))
        self.pooling = MeanPooling()
        self.heads = ModuleList([])
        self.hidden = bert.config.hidden_size
        self.train()

    # -- tasks ---------------------------------------------------------------------------------------
    def add_task(self, num_classes: int) -> int:
        """Add a head for a new task; returns its task index."""
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes}")
        head = Linear(self.hidden, int(num_classes), generator=self.generator)
        head.weight.data *= 0.1  # a small start keeps the first steps from tearing the adapted blocks
        self.heads.append(head)
        head.training = self.training
        return len(self.heads) - 1

    def recording_layers(self) -> list[RecordingLoraLinear]:
        """The last block's adapters, whose gradients make the sample vectors."""
        attention = getattr(self.blocks[len(self.blocks) - 1].attention, "self")
        return [getattr(attention, name) for name in TARGETS]

    def trainable(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters() if p.requires_grad]

    # -- the frozen trunk ----------------------------------------------------------------------------
    def encode_trunk(self, input_ids: np.ndarray, attention_mask: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """(B, T, H) float32: the input of the first adapted block for every text (frozen, eval mode)."""
        out = np.zeros((*input_ids.shape, self.hidden), dtype=np.float32)
        bert = self._bert
        for start in range(0, input_ids.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            ids, mask = input_ids[sl], attention_mask[sl]
            t = max(int(mask.sum(axis=1).max()), 1)
            ids, mask = np.ascontiguousarray(ids[:, :t]), np.ascontiguousarray(mask[:, :t])
            x = bert.embeddings(ids, None, None)
            for block in list(bert.encoder.layer)[:self.frozen_blocks]:
                x = block(x, mask)
            out[sl, :t] = x
        return out

    # -- the adapted part ----------------------------------------------------------------------------
    def _pooled(self, states: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = max(int(mask.sum(axis=1).max()), 1)
        x = np.ascontiguousarray(states[:, :t])
        m = np.ascontiguousarray(mask[:, :t])
        for block in self.blocks:
            x = block(x, m)
        return self.pooling(x, m), m

    def _heads_forward(self, pooled: np.ndarray, tasks: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """[(task, rows, logits)] per task present in the batch."""
        out = []
        for task in np.unique(tasks):
            rows = np.flatnonzero(tasks == task)
            out.append((int(task), rows, self.heads[int(task)](np.ascontiguousarray(pooled[rows]))))
        return out

    def logits(self, states: np.ndarray, mask: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        """(B, C) logits of a batch whose rows all belong to one task (eval use)."""
        if np.unique(tasks).size != 1:
            raise ValueError(f"logits takes rows of one task, got tasks {np.unique(tasks).tolist()}")
        pooled, _ = self._pooled(states, mask)
        return self._heads_forward(pooled, tasks)[0][2]

    def loss_backward(self, states: np.ndarray, mask: np.ndarray, labels: np.ndarray, tasks: np.ndarray,
                      reduction: str = "mean", blocks: int | None = None) -> tuple[float, list]:
        """Forward, cross-entropy on each row's own head, backward (accumulating into the parameters' grads).

        ``reduction="sum"`` gives each row's own loss gradient (what per-example gradients need);
        ``blocks`` limits the backward to the last ``blocks`` adapted blocks. Returns (loss, per-task logits).
        """
        pooled, _ = self._pooled(states, mask)
        parts = self._heads_forward(pooled, tasks)
        scale = 1.0 / len(labels) if reduction == "mean" else 1.0
        dpooled = np.zeros_like(pooled)
        total = 0.0
        for task, rows, z in parts:
            zz = z.astype(np.float64) - z.max(axis=1, keepdims=True)
            logp = zz - np.log(np.exp(zz).sum(axis=1, keepdims=True))
            y = labels[rows]
            total += float(-logp[np.arange(len(rows)), y].sum())
            d = np.exp(logp)
            d[np.arange(len(rows)), y] -= 1.0
            dpooled[rows] = self.heads[task].backward(np.ascontiguousarray((d * scale).astype(np.float32)))
        dx = self.pooling.backward(dpooled)
        n = len(self.blocks) if blocks is None else int(blocks)
        for i in reversed(range(len(self.blocks))):
            last = i == len(self.blocks) - n
            dx = self.blocks[i].backward(dx, input_grad=not last)
            if last:
                break
        return total * scale, parts

    def per_example(self, states: np.ndarray, mask: np.ndarray, labels: np.ndarray,
                    tasks: np.ndarray) -> PerExample:
        """Selector scores and the flat per-example gradients of the last block's LoRA parameters (A then B of
        query, then of value), from one batched forward and a backward through the last block only, with
        dropout off (a score must not depend on a dropout draw). Leaves the parameters' ``grad`` zeroed."""
        layers = self.recording_layers()
        mode = self.training
        self.eval()
        for layer in layers:
            layer.recording = True
        try:
            _, parts = self.loss_backward(states, mask, labels, tasks, reduction="sum", blocks=1)
        finally:
            for layer in layers:
                layer.recording = False
            self.train(mode)
        self.zero_grad()
        n = len(labels)
        t = max(int(mask.sum(axis=1).max()), 1)  # the forward trimmed the padding columns to this width
        offsets = np.arange(n + 1, dtype=np.int64) * t
        flat = []
        for layer in layers:
            x, dy = layer.recorded
            layer.recorded = None
            da, db = kernels.lora_per_example_grad(x, dy, layer.lora_A.data, layer.lora_B.data, offsets,
                                                   layer.scaling)
            flat += [da.reshape(n, -1), db.reshape(n, -1)]
        scores = {name: np.zeros(n) for name in ("entropy", "el2n", "loss")}
        correct = np.zeros(n, dtype=bool)
        for _, rows, z in parts:
            part = selector_scores(z, labels[rows], np.zeros(len(rows)))
            for name in scores:
                scores[name][rows] = part[name]
            correct[rows] = z.argmax(axis=1) == labels[rows]
        return PerExample(scores, np.concatenate(flat, axis=1), correct)
