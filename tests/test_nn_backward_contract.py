"""The one backward contract of every peftc module: ``backward(dy, *, dx=None, input_grad=True)``.

The signature is checked on every Module subclass defined in peftc.nn, peftc.models, peftc.tuners,
peftc.prompt and the examples; the behaviour on an instance of each: with ``dx=None`` a new array
the caller owns, with a given ``dx`` (random values) that very array holding random + the fresh
gradient, with ``input_grad=False`` None while the parameter gradients still come out the same.
Modules whose input is token ids return None every time and refuse a ``dx``.

Losses are not covered: ``CrossEntropyLoss.backward(dloss)`` starts the backward from a scalar and
is not a Module (checked below), so "the input gradient accumulated into dx" has no meaning there.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import numpy as np
import pytest

from peftc import nn
from peftc.models import BertModel, SentenceClassifier, SmallResNet
from peftc.models.cnn import BasicBlock
from peftc.nn.module import Module
from peftc.random import Generator

from .conftest import assert_close, f32

PACKAGES = ("peftc.nn", "peftc.models", "peftc.tuners", "peftc.prompt", "peftc.examples")


def module_classes() -> dict[str, type]:
    """Every Module subclass defined in PACKAGES (and everything peftc.nn exports), by qualified name."""
    found = {}
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        names = [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]
        for name in names:
            mod = importlib.import_module(name)
            for obj in vars(mod).values():
                if inspect.isclass(obj) and issubclass(obj, Module) and obj.__module__.startswith("peftc."):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    for name in nn.__all__:
        obj = getattr(nn, name)
        if inspect.isclass(obj) and issubclass(obj, Module):
            found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


CLASSES = module_classes()


def test_the_walk_finds_the_layers_and_blocks():
    names = {c.__name__ for c in CLASSES.values()}
    for want in ("Linear", "LoraLinear", "SoraLinear", "HydraLinear", "BoneLinear", "Conv2d", "BatchNorm2d",
                 "BatchNormReLU2d", "SelfAttention", "MeanPooling", "Embedding", "BertEmbeddings", "BertLayer",
                 "BertResidualOutput", "BertModel", "BasicBlock", "SmallResNet", "SentenceClassifier", "PeftModel",
                 "ModulesToSaveWrapper", "PromptedEncoder", "MLPClassifier"):
        assert want in names, want
    assert not issubclass(nn.CrossEntropyLoss, Module), "a loss that became a Module must join the contract"


@pytest.mark.parametrize("qualname", sorted(CLASSES))
def test_backward_has_the_one_signature(qualname):
    params = list(inspect.signature(CLASSES[qualname].backward).parameters.values())
    assert [p.name for p in params] == ["self", "dy", "dx", "input_grad"], qualname
    dy, dx, input_grad = params[1:]
    assert dy.kind in (dy.POSITIONAL_ONLY, dy.POSITIONAL_OR_KEYWORD) and dy.default is dy.empty
    assert dx.kind is dx.KEYWORD_ONLY and dx.default is None
    assert input_grad.kind is input_grad.KEYWORD_ONLY and input_grad.default is True


# -- behaviour ---------------------------------------------------------------------------------------
def tiny_bert(rng, dropout: float = 0.1) -> BertModel:
    from .test_encoder_modules import random_bert

    return random_bert(rng, dropout).train()


MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=np.int64)
IDS = np.array([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]], dtype=np.int64)


def _linear(rng):
    m = nn.Linear(6, 4, generator=Generator(1))
    x = f32(rng, 2, 3, 6)
    return m, lambda: m(x), x


def _adapter(cls, **kw):
    def build(rng):
        m = cls(nn.Linear(6, 4, generator=Generator(1)), generator=Generator(2), **kw)
        for p in m.parameters():
            p.data[...] = f32(rng, *p.shape, scale=0.3)  # B = 0 at init would hide the adapter's input gradient
        x = f32(rng, 2, 3, 6)
        return m, lambda: m(x), x
    return build


def _bat(rng):
    m = nn.BoneLinear(nn.Linear(6, 4, generator=Generator(1)), r=2, init_weights="bat")
    m.base.weight.requires_grad = False
    m.miss_block.data[...] = f32(rng, *m.miss_block.shape, scale=0.3)
    x = f32(rng, 3, 6)
    return m, lambda: m(x), x


def _conv(rng):
    m = nn.Conv2d(2, 3, 3, stride=2, padding=1, generator=Generator(0))
    x = f32(rng, 2, 2, 7, 7)
    return m, lambda: m(x), x


def _bn(cls, mode, relu_out=False):
    def build(rng):
        m = cls(3)
        m.mode = mode
        x = f32(rng, 4, 3, 5, 5)
        s = f32(rng, 4, 3, 5, 5)

        def forward():
            y = m(x)
            if relu_out:  # a ReLU downstream after a residual sum: the norm masks dy by its output
                m.relu_out = np.maximum(y + s, 0)
            return y
        return m, forward, x
    return build


def _bn_add_relu(rng):
    m = nn.BatchNorm2d(3)
    m.mode = "test_batch"
    x, r = f32(rng, 4, 3, 5, 5), f32(rng, 4, 3, 5, 5)
    return m, lambda: m.forward_add_relu(x, r), x


def _elementwise(make, *shape):
    def build(rng):
        m = make()
        x = f32(rng, *shape)
        return m, lambda: m(x), x
    return build


def _self_attention(rng):
    m = nn.SelfAttention(*(nn.Linear(6, 6, generator=Generator(i)) for i in range(3)), num_heads=2, dropout=0.1)
    x = f32(rng, 2, 5, 6)
    return m, lambda: m(x, MASK), x


def _mean_pooling(normalize):
    def build(rng):
        m = nn.MeanPooling(normalize)
        x = f32(rng, 2, 5, 6)
        return m, lambda: m(x, MASK), x
    return build


def _bert_part(pick, masked=False):
    def build(rng):
        m = pick(tiny_bert(rng))
        x = f32(rng, 2, 5, 8)
        return m, (lambda: m(x, MASK)) if masked else (lambda: m(x)), x
    return build


def _residual_output(rng):
    model = tiny_bert(rng)
    m = model.encoder.layer[0].output
    x, r = f32(rng, 2, 5, 12), f32(rng, 2, 5, 8)
    return m, lambda: m(x, r), x


def _embeddings_from_vectors(rng):
    m = tiny_bert(rng).embeddings
    e = f32(rng, 2, 5, 8)
    return m, lambda: m(None, None, e), e


def _bert_from_vectors(rng):
    m = tiny_bert(rng)
    e = f32(rng, 2, 5, 8)
    return m, lambda: m(IDS, MASK, inputs_embeds=e), e


def _block(shortcut):
    def build(rng):
        m = BasicBlock(3, 3 if shortcut == "identity" else 4, 1 if shortcut == "identity" else 2, Generator(0))
        for _, bn in m.named_modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.mode = "test_batch"
        x = f32(rng, 2, 3, 8, 8)
        return m, lambda: m(x), x
    return build


def _resnet(rng):
    m = SmallResNet((3, 6), num_classes=5, seed=1)
    x = rng.random((2, 1, 28, 28), dtype=np.float32)
    return m, lambda: m(x), x


def _mlp(rng):
    from peftc.examples.mlp_fashion_mnist import MLPClassifier

    m = MLPClassifier((6, 5, 4), 3, Generator(0))
    x = f32(rng, 4, 6)
    return m, lambda: m(x), x


def _peft(rng):
    from peftc.tuners import LoraConfig, get_peft_model

    from .lora_twins import HIDDEN, TinyBert, make_weights

    m = get_peft_model(TinyBert(make_weights()), LoraConfig(r=2, target_modules=["query", "value"],
                                                           init_lora_weights=False))
    x = f32(rng, 2, 3, HIDDEN)
    return m, lambda: m(x), x


def _modules_to_save(rng):
    from peftc.tuners import ModulesToSaveWrapper

    m = ModulesToSaveWrapper(nn.Linear(6, 4, generator=Generator(1)))
    x = f32(rng, 3, 6)
    return m, lambda: m(x), x


# modules with an input gradient
FLOAT_INPUT = {
    "Linear": _linear,
    "LoraLinear": _adapter(nn.LoraLinear, r=2, lora_dropout=0.2),
    "SoraLinear": _adapter(nn.SoraLinear, r=2, l1_weight=0.1),
    "HydraLinear": _adapter(nn.HydraLinear, r=2, seq_r=2),
    "BoneLinear": _adapter(nn.BoneLinear, r=2, miss_dropout=0.2),
    "BoneLinear[bat]": _bat,
    "Conv2d": _conv,
    "BatchNorm2d[train]": _bn(nn.BatchNorm2d, "train"),
    "BatchNorm2d[eval]": _bn(nn.BatchNorm2d, "eval"),
    "BatchNorm2d[relu_out]": _bn(nn.BatchNorm2d, "test_batch", relu_out=True),
    "BatchNorm2d[forward_add_relu]": _bn_add_relu,
    "BatchNormReLU2d": _bn(nn.BatchNormReLU2d, "test_batch"),
    "ReLU": _elementwise(nn.ReLU, 3, 4),
    "GELU": _elementwise(nn.GELU, 3, 4),
    "Dropout": _elementwise(lambda: nn.Dropout(0.5), 3, 4),
    "LayerNorm": _elementwise(lambda: nn.LayerNorm(4, 1e-5), 2, 3, 4),
    "MaxPool2d": _elementwise(lambda: nn.MaxPool2d(2), 2, 3, 6, 6),
    "AvgPool2d": _elementwise(lambda: nn.AvgPool2d(3, 2, 1), 2, 3, 6, 6),
    "GlobalAvgPool2d": _elementwise(nn.GlobalAvgPool2d, 2, 3, 4, 4),
    "SelfAttention": _self_attention,
    "MeanPooling": _mean_pooling(False),
    "MeanPooling[normalize]": _mean_pooling(True),
    "BertEmbeddings[inputs_embeds]": _embeddings_from_vectors,
    "BertSelfAttention": _bert_part(lambda m: getattr(m.encoder.layer[0].attention, "self"), masked=True),
    "BertResidualOutput": _residual_output,
    "BertAttention": _bert_part(lambda m: m.encoder.layer[0].attention, masked=True),
    "BertIntermediate": _bert_part(lambda m: m.encoder.layer[1].intermediate),
    "BertLayer": _bert_part(lambda m: m.encoder.layer[1], masked=True),
    "BertEncoder": _bert_part(lambda m: m.encoder, masked=True),
    "BertTopBlocks": _bert_part(lambda m: m.top_blocks(1), masked=True),
    "BertModel[inputs_embeds]": _bert_from_vectors,
    "BasicBlock[identity]": _block("identity"),
    "BasicBlock[conv]": _block("conv"),
    "SmallResNet": _resnet,
    "MLPClassifier": _mlp,
    "PeftModel": _peft,
    "ModulesToSaveWrapper": _modules_to_save,
}


def tiny_gpt2(dropout: float = 0.1):
    from peftc.models import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=9, n_positions=8, n_embd=8, n_layer=2, n_head=2, resid_pdrop=dropout,
                     embd_pdrop=dropout, attn_pdrop=dropout)
    return GPT2LMHeadModel.from_config(cfg, seed=3).train()


def _gpt2_part(pick):
    def build(rng):
        m = pick(tiny_gpt2())
        x = f32(rng, 2, 5, 8)
        return m, lambda: m(x), x
    return build


def _conv1d(rng):
    m = nn.Conv1D.from_hf_weight(f32(rng, 6, 4), f32(rng, 4))
    x = f32(rng, 2, 3, 6)
    return m, lambda: m(x), x


FLOAT_INPUT.update({
    "Conv1D": _conv1d,
    "GPT2Attention": _gpt2_part(lambda m: m.transformer.h[0].attn),
    "GPT2MLP": _gpt2_part(lambda m: m.transformer.h[1].mlp),
    "GPT2Block": _gpt2_part(lambda m: m.transformer.h[1]),
})


def _ids_gpt2(pick):
    def build(rng):
        m = pick(tiny_gpt2())
        return m, lambda: m(IDS), None
    return build


def _ids_embedding(rng):
    m = nn.Embedding(9, 4, generator=Generator(0))
    return m, lambda: m(IDS), None


def _ids_embeddings(rng):
    m = tiny_bert(rng).embeddings
    return m, lambda: m(IDS), None


def _ids_bert(rng):
    m = tiny_bert(rng)
    return m, lambda: m(IDS, MASK), None


def _ids_classifier(rng):
    m = SentenceClassifier(tiny_bert(rng), 3, dropout=0.1)
    m.train()
    return m, lambda: m({"input_ids": IDS, "attention_mask": MASK}), None


def _ids_prompted(rng):
    from peftc.prompt import PromptedEncoder, insert_prompt_slots

    bert = tiny_bert(rng, 0.0).eval()
    bert.requires_grad_(False)
    m = PromptedEncoder(bert, f32(rng, 2, 1, 8))
    batch = insert_prompt_slots({"input_ids": IDS, "attention_mask": MASK}, 1)
    return m, lambda: m(batch), None


# modules whose input is token ids (no input gradient)
ID_INPUT = {
    "Embedding": _ids_embedding,
    "BertEmbeddings": _ids_embeddings,
    "BertModel": _ids_bert,
    "SentenceClassifier": _ids_classifier,
    "PromptedEncoder": _ids_prompted,
    "GPT2Model": _ids_gpt2(lambda m: m.transformer),
    "GPT2LMHeadModel": _ids_gpt2(lambda m: m),
}

# classes with no backward of their own to exercise: the abstract base, the container
NO_BACKWARD = {"Module", "ModuleList", "LoraModel"}  # LoraModel: PeftModel's inner wrapper, run through PeftModel


def test_every_module_class_has_a_behaviour_case():
    covered = {name.split("[")[0] for name in (*FLOAT_INPUT, *ID_INPUT)} | NO_BACKWARD
    missing = sorted({c.__name__ for c in CLASSES.values()} - covered)
    assert not missing, f"add a behaviour case for {missing}"


def _grads(m: Module) -> dict[str, np.ndarray]:
    return {n: p.grad.copy() for n, p in m.named_parameters() if p.grad is not None}


def _arrays(m: Module) -> list[np.ndarray]:
    return [a for p in m.parameters() for a in (p.data, p.grad) if a is not None]


@pytest.mark.parametrize("name", sorted(FLOAT_INPUT))
def test_backward_contract_on_a_float_input(rng, name):
    m, forward, x = FLOAT_INPUT[name](rng)
    dy = f32(rng, *forward().shape)
    m.zero_grad()
    fresh = m.backward(dy)
    want = _grads(m)
    assert isinstance(fresh, np.ndarray) and fresh.dtype == np.float32 and fresh.shape == x.shape, name
    assert not any(np.shares_memory(fresh, a) for a in (dy, x, *_arrays(m))), "dx=None must give a new array"
    assert bool(want) == any(p.requires_grad for p in m.parameters()), f"{name}: trainable parameters get gradients"
    again = m.backward(dy)
    assert not np.shares_memory(again, fresh), "each dx=None call must give its own array"
    assert_close(again, fresh, 0, 0, f"{name}: the same backward twice")

    m.zero_grad()
    start = f32(rng, *x.shape)
    dx = start.copy()
    assert m.backward(dy, dx=dx) is dx, "a given dx must be returned"
    assert_close(dx, start.astype(np.float64) + fresh, 1e-5, 1e-5, f"{name}: dx = start + fresh")
    for k, g in want.items():
        assert_close(_grads(m)[k], g, 1e-6, 1e-7, f"{name}: {k} with a given dx")

    m.zero_grad()
    assert m.backward(dy, input_grad=False) is None
    got = _grads(m)
    assert got.keys() == want.keys(), name
    for k, g in want.items():
        assert_close(got[k], g, 1e-6, 1e-7, f"{name}: {k} without the input gradient")


@pytest.mark.parametrize("name", sorted(ID_INPUT))
def test_backward_contract_on_token_ids(rng, name):
    m, forward, _ = ID_INPUT[name](rng)
    out = forward()
    dy = f32(rng, *out.shape)
    m.zero_grad()
    assert m.backward(dy) is None
    want = _grads(m)
    assert want, f"{name}: the case must have a trainable parameter"
    m.zero_grad()
    assert m.backward(dy, input_grad=False) is None
    got = _grads(m)
    assert got.keys() == want.keys()
    for k, g in want.items():
        assert_close(got[k], g, 1e-6, 1e-7, f"{name}: {k} without the input gradient")
    with pytest.raises(ValueError, match="dx must be None"):
        m.backward(dy, dx=np.zeros((2, 5, 4), np.float32))


def test_identity_dropout_returns_dy_itself_and_accumulates_into_a_given_dx(rng):
    drop = nn.Dropout(0.5).eval()
    x, dy = f32(rng, 3, 4), f32(rng, 3, 4)
    drop(x)
    assert drop.backward(dy) is dy  # the documented exception: no copy for an identity
    start = f32(rng, 3, 4)
    dx = start.copy()
    assert drop.backward(dy, dx=dx) is dx
    assert_close(dx, start + dy, 0, 0, "dx + dy")
    assert drop.backward(dy, input_grad=False) is None


@pytest.mark.parametrize("bad", ["shape", "dtype", "layout"])
def test_a_dx_that_cannot_take_the_gradient_is_an_error_naming_the_shapes(rng, bad):
    for build in (_linear, _conv, _bn(nn.BatchNorm2d, "train"), _mean_pooling(True), _elementwise(nn.ReLU, 3, 4)):
        m, forward, x = build(rng)
        dy = f32(rng, *forward().shape)
        dx = {"shape": np.zeros((1, *x.shape), np.float32), "dtype": np.zeros(x.shape, np.float64),
              "layout": np.zeros(x.shape[::-1], np.float32).T}[bad]
        with pytest.raises(ValueError, match=r"dx must be .*" + re.escape(str(tuple(x.shape)))):
            m.backward(dy, dx=dx)
