"""A small BERT-named model built twice, in peftc and in torch, with identical weights.

Names follow Hugging Face BERT (``encoder.layer.N.attention.self.query`` ...), so adapter files
move between peftc and PEFT unchanged. Forward: h <- h + q(h) + k(h) + v(h) + out(inter(h)) per
layer, then ``classifier``; every step is linear so the peftc backward stays short.
"""
from __future__ import annotations

import numpy as np

from peftc.nn import Linear, Module, ModuleList

HIDDEN, INTER, CLASSES, LAYERS = 6, 10, 3, 2
LINEAR_NAMES = ("attention.self.query", "attention.self.key", "attention.self.value",
                "intermediate.dense", "output.dense")


class _Node(Module):
    """A named container (attribute order is registration order)."""


def _shape(name: str) -> tuple[int, int]:
    if name == "intermediate.dense":
        return INTER, HIDDEN
    if name == "output.dense":
        return HIDDEN, INTER
    return HIDDEN, HIDDEN


def make_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Weights keyed by the torch state_dict names."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(LAYERS):
        for name in LINEAR_NAMES:
            o, n = _shape(name)
            out[f"encoder.layer.{i}.{name}.weight"] = (rng.standard_normal((o, n)) / np.sqrt(n)).astype(np.float32)
            out[f"encoder.layer.{i}.{name}.bias"] = (0.1 * rng.standard_normal(o)).astype(np.float32)
    out["classifier.weight"] = (rng.standard_normal((CLASSES, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
    out["classifier.bias"] = (0.1 * rng.standard_normal(CLASSES)).astype(np.float32)
    return out


class BertNamedLayer(Module):
    """The five linear maps of a BERT block under Hugging Face names, copied from ``weights[prefix...]``;
    subclasses give the forward."""

    def __init__(self, weights: dict[str, np.ndarray], prefix: str) -> None:
        def lin(name: str) -> Linear:
            return Linear.from_weights(weights[f"{prefix}.{name}.weight"].copy(),
                                       weights[f"{prefix}.{name}.bias"].copy())
        self.attention = _Node()
        self.attention.self = _Node()
        self.attention.self.query = lin("attention.self.query")
        self.attention.self.key = lin("attention.self.key")
        self.attention.self.value = lin("attention.self.value")
        self.intermediate = _Node()
        self.intermediate.dense = lin("intermediate.dense")
        self.output = _Node()
        self.output.dense = lin("output.dense")


class TinyBertLayer(BertNamedLayer):
    def forward(self, h: np.ndarray) -> np.ndarray:
        s = self.attention.self
        return h + s.query(h) + s.key(h) + s.value(h) + self.output.dense(self.intermediate.dense(h))

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        s = self.attention.self
        branches = [m.backward(dy, input_grad=input_grad) for m in (s.query, s.key, s.value)]
        inner = self.intermediate.dense.backward(self.output.dense.backward(dy), input_grad=input_grad)
        if not input_grad:
            return None
        d = dy + branches[0] + branches[1] + branches[2] + inner
        if dx is None:
            return d
        dx += d
        return dx


class TinyBert(Module):
    """peftc side: encoder.layer.N.* and a classifier head."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.encoder = _Node()
        self.encoder.layer = ModuleList([TinyBertLayer(weights, f"encoder.layer.{i}") for i in range(LAYERS)])
        self.classifier = Linear.from_weights(weights["classifier.weight"].copy(), weights["classifier.bias"].copy())

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.encoder.layer:
            x = layer(x)
        return self.classifier(x)

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        d = self.classifier.backward(dy)
        layers = list(self.encoder.layer)
        for i in reversed(range(len(layers))):
            d = layers[i].backward(d, dx=dx if i == 0 else None, input_grad=input_grad or i > 0)
        return d


def torch_bert_named(torch, weights: dict[str, np.ndarray], block):
    """A torch model with Hugging Face BERT module names (``encoder.layer.N.attention.self.query`` ...,
    ``classifier``), sized by and loaded with ``weights``; each layer's forward is ``block(layer, h)``."""
    nn = torch.nn
    hidden, classes = weights["classifier.weight"].shape[1], weights["classifier.weight"].shape[0]
    inter = weights["encoder.layer.0.intermediate.dense.weight"].shape[0]
    layers = sum(1 for k in weights if k.endswith(".attention.self.query.weight"))

    class Self(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query = nn.Linear(hidden, hidden)
            self.key = nn.Linear(hidden, hidden)
            self.value = nn.Linear(hidden, hidden)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self = Self()

    class Dense(nn.Module):
        def __init__(self, n: int, o: int) -> None:
            super().__init__()
            self.dense = nn.Linear(n, o)

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention, self.intermediate, self.output = Attention(), Dense(hidden, inter), Dense(inter, hidden)

        def forward(self, h):
            return block(self, h)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.ModuleList([Layer() for _ in range(layers)])

    class TorchBertNamed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = Encoder()
            self.classifier = nn.Linear(hidden, classes)

        def forward(self, x):
            for layer in self.encoder.layer:
                x = layer(x)
            return self.classifier(x)

    model = TorchBertNamed()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    return model.eval()


def make_torch_twin(torch, weights: dict[str, np.ndarray]):
    """torch side of TinyBert: the same module names and the same weights."""
    def block(layer, h):
        s = layer.attention.self
        return h + s.query(h) + s.key(h) + s.value(h) + layer.output.dense(layer.intermediate.dense(h))
    return torch_bert_named(torch, weights, block)
