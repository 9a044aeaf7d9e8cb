"""A small encoder built twice, in peftc and in torch, for EVA parity: the same HF BERT module names,
the same weights, and token batches with padding whose activations have a decaying spectrum.

Forward per layer (BERT's data flow without attention softmax and norms):
    a = h + (q(h) + k(h) + v(h)) / 3,   h <- a + out(relu(inter(a))) / 2,   then ``classifier``.
The query/key/value of a layer read the same input, so EVA has to detect them as one shared SVD.
"""
from __future__ import annotations

import numpy as np

from peftc.nn import Linear, Module, ModuleList

from .lora_twins import BertNamedLayer, _Node, torch_bert_named

QKV = ("attention.self.query", "attention.self.key", "attention.self.value")


def make_weights(hidden: int, inter: int, layers: int, classes: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {**{n: (hidden, hidden) for n in QKV}, "intermediate.dense": (inter, hidden),
              "output.dense": (hidden, inter)}
    out = {}
    for i in range(layers):
        for name, (o, n) in shapes.items():
            # a spectrum decaying at a module-specific rate, so layer inputs differ in how concentrated
            # their variance is and EVA has ranks to move
            u, _ = np.linalg.qr(rng.standard_normal((o, o)))
            v, _ = np.linalg.qr(rng.standard_normal((n, n)))
            d = np.geomspace(1.5, 10.0 ** -rng.uniform(0.3, 3.0), min(o, n))
            out[f"encoder.layer.{i}.{name}.weight"] = (u[:, :d.size] * d) @ v[:, :d.size].T
            out[f"encoder.layer.{i}.{name}.weight"] = out[f"encoder.layer.{i}.{name}.weight"].astype(np.float32)
            out[f"encoder.layer.{i}.{name}.bias"] = (0.1 * rng.standard_normal(o)).astype(np.float32)
    out["classifier.weight"] = (rng.standard_normal((classes, hidden)) / np.sqrt(hidden)).astype(np.float32)
    out["classifier.bias"] = np.zeros(classes, dtype=np.float32)
    return out


def make_batches(n_batches: int, batch: int, seq: int, hidden: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    """Token activations with a geometric spectrum plus padding (attention_mask 0 at the tail)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((hidden, hidden)))
    scales = np.geomspace(8.0, 0.01, hidden)
    out = []
    for _ in range(n_batches):
        x = (rng.standard_normal((batch, seq, hidden)) * scales) @ basis.T + 0.3
        lengths = rng.integers(seq // 2, seq + 1, size=batch)
        mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
        x[mask == 0] = 50.0  # padding rows would dominate the SVD if they were not filtered
        out.append({"x": x.astype(np.float32), "attention_mask": mask})
    return out


class EvaTwinLayer(BertNamedLayer):
    def forward(self, h: np.ndarray) -> np.ndarray:
        s = self.attention.self
        a = (h + (s.query(h) + s.key(h) + s.value(h)) / 3).astype(np.float32)
        return (a + self.output.dense(np.maximum(self.intermediate.dense(a), 0.0)) / 2).astype(np.float32)


class EvaTwin(Module):
    def __init__(self, weights: dict[str, np.ndarray], layers: int) -> None:
        self.encoder = _Node()
        self.encoder.layer = ModuleList([EvaTwinLayer(weights, f"encoder.layer.{i}") for i in range(layers)])
        self.classifier = Linear.from_weights(weights["classifier.weight"].copy(), weights["classifier.bias"].copy())

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.encoder.layer:
            x = layer(x)
        return self.classifier(x)


def make_torch_twin(torch, weights: dict[str, np.ndarray], layers: int):
    """torch side of EvaTwin (``layers`` layers): the same module names and weights, the same forward."""
    def block(layer, h):
        s = layer.attention.self
        a = h + (s.query(h) + s.key(h) + s.value(h)) / 3
        return a + layer.output.dense(torch.relu(layer.intermediate.dense(a))) / 2
    model = torch_bert_named(torch, weights, block)
    assert len(model.encoder.layer) == layers
    return model
