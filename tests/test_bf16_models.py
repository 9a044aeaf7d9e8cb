"""bf16 frozen weights in the layers and models: Linear.to_bfloat16, LoRA on a bf16 base (forward and
backward against float32 runs), merging in float32 with one rounding, BertModel.from_pretrained(dtype=
"bfloat16") memory, and adapter files from a bf16-base run loading in PEFT."""
from __future__ import annotations

import numpy as np
import pytest

from peftc import bf16
from peftc import functional as F
from peftc.models import BertModel
from peftc.nn import Linear, LoraLinear
from peftc.random import Generator
from peftc.tuners import LoraConfig, get_peft_model

from .conftest import assert_close, f32
from .distributed_cases import write_tiny_bert
from .test_bf16_gemm import U_BF, rne_reference


def frozen_linear(rng, out_features: int, in_features: int) -> Linear:
    layer = Linear.from_weights(f32(rng, out_features, in_features), f32(rng, out_features))
    layer.weight.requires_grad = False
    return layer


def rounded_copy(layer: Linear) -> Linear:
    """A float32 Linear holding the bf16-rounded values of a bf16 layer's weight (the tight reference)."""
    twin = Linear.from_weights(layer.weight.to_float32(), layer.bias.data.copy())
    twin.weight.requires_grad = False
    return twin


def test_to_bfloat16_keeps_only_the_packed_weight_at_half_the_bytes(rng):
    layer = frozen_linear(rng, 48, 64)
    w32 = layer.weight.data
    layer.to_bfloat16()
    assert layer.is_bfloat16 and layer.weight.nbytes == w32.nbytes // 2
    assert [name for name, _ in layer.named_parameters()] == ["bias"]  # the weight is not a float32 parameter
    assert not any(isinstance(v, np.ndarray) and v.dtype == np.float32 and v.shape == w32.shape
                   for v in vars(layer).values())
    assert np.array_equal(layer.weight.packed, rne_reference(w32))
    with pytest.raises(ValueError, match=r"trainable; bf16 storage is for frozen weights"):
        Linear(4, 3).to_bfloat16()


def test_bf16_linear_forward_backward_match_float32_on_rounded_weights(rng):
    layer = frozen_linear(rng, 20, 40).to_bfloat16()
    twin = rounded_copy(layer)
    x, dy = f32(rng, 3, 5, 40), f32(rng, 3, 5, 20)
    assert_close(layer(x), twin(x), 1e-5, 1e-5, "y")
    assert_close(layer.backward(dy), twin.backward(dy), 1e-5, 1e-5, "dx")
    assert layer.bias.grad is not None and np.allclose(layer.bias.grad, twin.bias.grad, rtol=1e-5, atol=1e-5)
    assert "dtype=bfloat16" in repr(layer)


def lora_pair(rng, dropout: float):
    """(LoRA on a bf16 base, LoRA on the float32 base holding the rounded weights, the original float32 weights)."""
    base = frozen_linear(rng, 24, 48)
    original = base.weight.data.copy()
    ours = LoraLinear(base.to_bfloat16(), r=4, lora_alpha=8, lora_dropout=dropout, init_lora_weights=False,
                      generator=Generator(3))
    ref = LoraLinear(rounded_copy(base), r=4, lora_alpha=8, lora_dropout=dropout, init_lora_weights=False,
                     generator=Generator(3))
    return ours, ref, original


@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_lora_on_a_bf16_base_matches_float32_on_the_rounded_weights(rng, dropout):
    ours, ref, _ = lora_pair(rng, dropout)
    x, dy = f32(rng, 6, 48), f32(rng, 6, 24)
    assert_close(ours(x), ref(x), 1e-5, 1e-5, "y")
    dx, dx_ref = ours.backward(dy), ref.backward(dy)
    assert_close(dx, dx_ref, 1e-5, 1e-5, "dx")
    assert_close(ours.lora_A.grad, ref.lora_A.grad, 1e-5, 1e-6, "dlora_A")
    assert_close(ours.lora_B.grad, ref.lora_B.grad, 1e-5, 1e-6, "dlora_B")


def test_lora_on_a_bf16_base_is_within_the_bf16_bound_of_the_float32_base(rng):
    ours, _, original = lora_pair(rng, 0.0)
    full = LoraLinear(Linear.from_weights(original, ours.base.bias.data.copy()), r=4, lora_alpha=8,
                      init_lora_weights=False, generator=Generator(3))
    full.base.weight.requires_grad = False
    x, dy = f32(rng, 6, 48), f32(rng, 6, 24)
    y, y32 = ours(x), full(x)
    # the header's bound against the unrounded weight: u_bf sum |x w| (plus float32 terms, far smaller)
    scale = np.abs(x.astype(np.float64)) @ np.abs(original.astype(np.float64)).T
    assert np.all(np.abs(y - y32) <= 1.1 * U_BF * scale + 1e-5)
    assert np.abs(y - y32).max() > 1e-5  # the base really is bf16
    dx, dx32 = ours.backward(dy), full.backward(dy)
    dscale = np.abs(dy.astype(np.float64)) @ np.abs(original.astype(np.float64))
    assert np.all(np.abs(dx - dx32) <= 1.1 * U_BF * dscale + 1e-5)
    # dlora_B depends on the base only through nothing (u = x A^T): identical; dlora_A likewise
    assert_close(ours.lora_B.grad, full.lora_B.grad, 1e-6, 1e-7, "dlora_B")
    assert_close(ours.lora_A.grad, full.lora_A.grad, 1e-6, 1e-7, "dlora_A")


def test_merge_on_a_bf16_base_adds_in_float32_and_rounds_once(rng):
    ours, _, _ = lora_pair(rng, 0.0)
    widened = ours.base.weight.to_float32()
    bias = ours.base.bias.data.copy()
    F.lora_merge(widened, None, ours.lora_A.data, ours.lora_B.data, None, ours.scaling)  # the float32 sum
    ours.merge()
    packed = ours.base.weight.packed[:, :48]
    assert ours.base.is_bfloat16 and np.array_equal(packed, rne_reference(widened))
    assert np.array_equal(ours.base.bias.data, bias)
    # rounding the update on its own first (two roundings) gives other bits: the test can tell them apart
    delta = ours.scaling * (ours.lora_B.data @ ours.lora_A.data)
    twice = rne_reference(bf16.bf16_to_float32(rne_reference(delta.astype(np.float32))) + widened - delta)
    assert not np.array_equal(twice, packed)


def test_mixed_adapter_batches_and_other_adapters_refuse_a_bf16_base(rng):
    from peftc.nn.sora import SoraLinear

    ours, _, _ = lora_pair(rng, 0.0)
    with pytest.raises(NotImplementedError, match="bf16 base"):
        SoraLinear(frozen_linear(rng, 4, 8).to_bfloat16(), r=2)
    ours.row_adapters = object()  # anything set: the check comes before it is read
    with pytest.raises(NotImplementedError, match="bf16 base"):
        ours(f32(rng, 2, 48))


# -- the BERT encoder ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), seed=4)


def linear_layers(model: BertModel) -> list[Linear]:
    return [m for _, m in model.named_modules() if isinstance(m, Linear)]


def array_bytes(model: BertModel) -> int:
    """Bytes of every array the model holds: its parameters and buffers, and the packed bf16 weights."""
    params = sum(p.data.nbytes for p in model.parameters()) + sum(b.nbytes for _, b in model.named_buffers())
    return params + sum(m.weight.nbytes for m in linear_layers(model) if m.is_bfloat16)


def test_from_pretrained_bfloat16_packs_every_linear_and_nothing_else(tiny_folder):
    m32 = BertModel.from_pretrained(tiny_folder)
    m16 = BertModel.from_pretrained(tiny_folder, dtype="bfloat16")
    layers32, layers16 = linear_layers(m32), linear_layers(m16)
    assert len(layers16) == 12 and all(m.is_bfloat16 for m in layers16)
    w32 = sum(m.weight.data.nbytes for m in layers32)
    packed = sum(m.weight.nbytes for m in layers16)
    # per layer, rows x padded columns: 4 (16 x 16) -> 16 x 32, (32 x 16) -> 32 x 32, (16 x 32) stays; 2 bytes each
    assert packed == 2 * (4 * 16 * 32 + 32 * 32 + 16 * 32) * 2
    assert array_bytes(m16) == array_bytes(m32) - w32 + packed
    assert all(p.data.dtype == np.float32 for p in m16.parameters())  # embeddings, LayerNorms, biases
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'bfloat16'"):
        BertModel.from_pretrained(tiny_folder, dtype="float16")


def tiny_batch():
    ids = np.array([[2, 6, 7, 9, 3, 0], [2, 10, 11, 3, 0, 0]], dtype=np.int64)
    return ids, (ids != 0).astype(np.int64)


def lora_bert(folder: str, dtype: str):
    model = get_peft_model(BertModel.from_pretrained(folder, dtype=dtype),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False),
                           generator=Generator(5))
    model.eval()
    return model


def test_parameter_counts_of_a_bf16_base_are_those_of_the_float32_base(tiny_folder, capsys):
    """A packed bf16 weight counts its out x in elements (not its padded storage), as its float32 original did."""
    m32, m16 = lora_bert(tiny_folder, "float32"), lora_bert(tiny_folder, "bfloat16")
    assert m16.get_nb_trainable_parameters() == m32.get_nb_trainable_parameters()
    packed = dict(m16.named_packed_weights())
    assert len(packed) == 12 and not dict(m32.named_packed_weights())
    assert sum(w.packed.size for w in packed.values()) > sum(w.shape[0] * w.shape[1] for w in packed.values())
    m32.print_trainable_parameters()
    m16.print_trainable_parameters()
    line32, line16 = capsys.readouterr().out.splitlines()
    assert line16 == line32


def test_lora_bert_on_a_bf16_base_trains_like_float32(tiny_folder):
    ids, mask = tiny_batch()
    grads = {}
    for dtype in ("float32", "bfloat16"):
        model = lora_bert(tiny_folder, dtype)
        out = model(ids, mask)
        model.backward(np.ones_like(out))
        grads[dtype] = {n: p.grad.copy() for n, p in model.named_trainable_parameters()}
    assert grads["float32"].keys() == grads["bfloat16"].keys() and len(grads["float32"]) == 8
    for name, g in grads["float32"].items():
        err = np.abs(grads["bfloat16"][name] - g).max() / np.abs(g).max()
        assert err < 0.05, f"{name}: relative gradient difference {err:.3g} (bf16 weights: about 2^-8 per product)"


def test_merge_and_unload_on_a_bf16_bert_gives_the_unmerged_outputs(tiny_folder):
    ids, mask = tiny_batch()
    model = lora_bert(tiny_folder, "bfloat16")
    unmerged = model(ids, mask)
    merged = model.merge_and_unload()
    assert all(m.is_bfloat16 for m in linear_layers(merged))
    assert_close(merged(ids, mask), unmerged, 3e-2, 3e-2, "hidden states after merge_and_unload")


def test_adapter_files_from_a_bf16_base_load_in_peft(tiny_folder, tmp_path, torch):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    ids, mask = tiny_batch()
    model = lora_bert(tiny_folder, "bfloat16")
    ours = model(ids, mask)
    model.save_pretrained(tmp_path / "adapter")

    def peft_output(round_weights: bool) -> np.ndarray:
        base = transformers.BertModel.from_pretrained(tiny_folder, add_pooling_layer=False,
                                                      attn_implementation="eager")
        if round_weights:  # the torch side on the very bf16 values peftc ran with
            with torch.no_grad():
                for name, p in base.named_parameters():
                    if name.endswith(".weight") and p.ndim == 2 and name.startswith("encoder."):
                        p.copy_(torch.from_numpy(bf16.bf16_to_float32(rne_reference(p.numpy())).copy()))
        theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
        with torch.no_grad():
            return theirs(input_ids=torch.from_numpy(ids),
                          attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()

    assert_close(ours, peft_output(round_weights=True), 1e-4, 1e-4, "PEFT on the rounded weights")
    assert_close(ours, peft_output(round_weights=False), 3e-2, 3e-2, "PEFT on the float32 checkpoint")


def test_the_cnn_head_runs_on_a_bf16_weight_once_frozen(rng):
    from peftc.models.cnn import SmallResNet

    net = SmallResNet(widths=(4, 8), num_classes=5, seed=2).eval()
    x = f32(rng, 2, 1, 12, 12)
    net.head.weight.requires_grad = False
    rounded = net.head.weight.data.copy()
    rounded[...] = bf16.bf16_to_float32(rne_reference(rounded))
    net.head.weight.data[...] = rounded  # the float32 run on the very values the bf16 head holds
    want = net(x)
    net.head.to_bfloat16()
    assert_close(net(x), want, 1e-5, 1e-5, "logits")
    net.backward(np.ones_like(want))  # the frozen bf16 head passes the gradient on to the trainable convolutions


def test_state_dict_of_a_bf16_bert_holds_every_weight_and_loads_back(tiny_folder):
    m32 = BertModel.from_pretrained(tiny_folder)
    m16 = BertModel.from_pretrained(tiny_folder, dtype="bfloat16")
    state = m16.state_dict()
    assert set(state) == set(m32.state_dict())  # the bf16 weights are in it, under the float32 names
    q = "encoder.layer.0.attention.self.query.weight"
    layer = dict(m16.named_modules())["encoder.layer.0.attention.self.query"]
    assert state[q].dtype == np.uint16 and np.shares_memory(state[q], layer.weight.packed)  # a view, no copy
    np.testing.assert_array_equal(bf16.bf16_to_float32(state[q]), layer.weight.to_float32())
    # a float32 model from that state holds the bf16 values exactly, and computes what the bf16 model does
    widened = BertModel.from_state_dict(m16.config, state)
    ids, mask = tiny_batch()
    np.testing.assert_array_equal(dict(widened.named_parameters())[q].data, layer.weight.to_float32())
    assert_close(widened.eval()(ids, mask), m16.eval()(ids, mask), rtol=1e-5, atol=1e-5)
    # loading: bit patterns are copied, float32 values rounded to nearest even, other dtypes refused by name
    snapshot = {k: v.copy() for k, v in state.items()}
    m16.load_state_dict({k: (v.copy() if k != q else np.zeros_like(v)) for k, v in snapshot.items()})
    assert not layer.weight.to_float32().any()
    m16.load_state_dict(snapshot)
    np.testing.assert_array_equal(layer.weight.bits, snapshot[q])
    m16.load_state_dict(m32.state_dict())
    w = dict(m32.named_parameters())[q].data
    np.testing.assert_array_equal(layer.weight.bits, bf16.round_bf16(np.ascontiguousarray(w)))
    with pytest.raises(ValueError, match=rf"load_state_dict: {q}: .*uint16 bit patterns or float32.*float64"):
        m16.load_state_dict({q: w.astype(np.float64)}, strict=False)
    with pytest.raises(ValueError, match=rf"load_state_dict: {q}: .*shape \(16, 16\).*\(16, 8\)"):
        m16.load_state_dict({q: w[:, :8].copy()}, strict=False)
    with pytest.raises(KeyError, match="missing keys"):
        m16.load_state_dict({k: v for k, v in snapshot.items() if k != q})


def test_twin_encoder_of_a_bf16_bert_shares_its_weights(tiny_folder):
    from peftc.prompt import twin_encoder

    m16 = BertModel.from_pretrained(tiny_folder, dtype="bfloat16").eval()
    twin = twin_encoder(m16)
    ours, theirs = linear_layers(m16), linear_layers(twin)
    assert len(ours) == len(theirs) == 12 and all(t.weight is o.weight for o, t in zip(ours, theirs))
    assert all(np.shares_memory(p.data, q.data) for p, q in zip(m16.parameters(), twin.parameters()))
    ids, mask = tiny_batch()
    np.testing.assert_array_equal(twin(ids, mask), m16(ids, mask))
