"""EVA: the incremental-PCA kernel against the NumPy reference and PEFT's IncrementalPCA, the rank
redistribution and A initialisation against PEFT's get_eva_state_dict on a torch twin, the config
bookkeeping against PEFT's initialize_lora_eva_weights, and bad input."""
from __future__ import annotations

import dataclasses
from collections import Counter
import warnings

import numpy as np
import pytest

from peftc import functional as F
from peftc import reference as R
from peftc.nn import Linear, LoraLinear
from peftc.tuners import eva as eva_module
from peftc.tuners import (EvaConfig, IncrementalPCA, LoraConfig, get_eva_state_dict, get_peft_model,
                          initialize_lora_eva_weights)
from tests.conftest import assert_close
from tests.eva_twins import EvaTwin, make_batches, make_torch_twin, make_weights

TARGETS = ["query", "key", "value", "intermediate.dense", "output.dense"]


def _spectral_rows(rng, m: int, ic: int, offset: float = 1.0) -> np.ndarray:
    basis, _ = np.linalg.qr(rng.standard_normal((ic, ic)))
    return ((rng.standard_normal((m, ic)) * np.geomspace(5, 0.05, ic)) @ basis.T + offset).astype(np.float32)


def _state(k: int, ic: int) -> list[np.ndarray]:
    return [np.zeros((k, ic), np.float32), np.zeros(k, np.float32), np.zeros(ic, np.float32),
            np.zeros(ic, np.float32)]


def _forward(model, batch):
    return model(batch["x"])


# -- the kernel -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m,ic,k", [(40, 12, 4), (7, 20, 5), (64, 64, 8)])
def test_ipca_update_matches_reference_over_several_batches(rng, m, ic, k):
    got, ref = _state(k, ic), _state(k, ic)
    n = 0
    for _ in range(4):
        x = _spectral_rows(rng, m, ic)
        evr, cos = F.ipca_update(x, *got, n)
        evr_r, cos_r = R.ipca_update(x, *ref, n)
        n += m
        for a, b, name in zip(got, ref, ("components", "singular", "mean", "var")):
            assert_close(a, b, 2e-4, 2e-4 * float(np.abs(b).max()), name)
        assert_close(evr, evr_r, 1e-4, 1e-6, "explained_variance_ratio")
        assert_close(cos, cos_r, 1e-4, 1e-4, "cosine")


def test_ipca_update_matches_peft_incremental_pca(rng, torch):
    from peft.utils.incremental_pca import IncrementalPCA as PeftIPCA
    k, ic = 6, 24
    ours = IncrementalPCA(k, ic)
    theirs = PeftIPCA(n_components=k, lowrank=False)
    for m in (40, 30, 55):
        x = _spectral_rows(rng, m, ic)
        prev = ours.components_.copy()
        ours.partial_fit(x)
        theirs.partial_fit(torch.from_numpy(x))
        assert_close(ours.components_, theirs.components_.numpy(), 1e-4, 1e-4, "components")
        assert_close(ours.singular_values_, theirs.singular_values_.numpy(), 1e-5, 1e-5, "singular values")
        assert_close(ours.mean_, theirs.mean_.numpy(), 1e-5, 1e-5, "mean")
        assert_close(ours.var_, theirs.var_.numpy(), 1e-5, 1e-5, "var")
        assert_close(ours.explained_variance_ratio_, theirs.explained_variance_ratio_.numpy(), 1e-5, 1e-7, "evr")
        if ours.n_samples_seen_ > m:
            want = torch.nn.functional.cosine_similarity(theirs.components_, torch.from_numpy(prev)).numpy()
            assert_close(ours.cosine_, want, 1e-4, 1e-4, "cosine")
    assert ours.n_samples_seen_ == int(theirs.n_samples_seen_)


@pytest.mark.parametrize("m,ic", [(20, 16), (6, 40)], ids=["rows>=IC", "rows<IC"])
def test_ipca_components_are_orthonormal_with_positive_largest_entry(rng, m, ic):
    pca = IncrementalPCA(5, ic)
    for _ in range(3):
        pca.partial_fit(_spectral_rows(rng, m, ic))
    c = pca.components_.astype(np.float64)
    assert_close(c @ c.T, np.eye(5), 0, 1e-5, "V V^T")
    assert np.all(c[np.arange(5), np.argmax(np.abs(c), axis=1)] > 0)
    assert np.all(np.diff(pca.singular_values_) <= 0)


@pytest.mark.parametrize("m,ic", [(300, 96), (120, 384)], ids=["rows>=IC", "rows<IC"])
def test_ipca_update_keeps_leading_components_of_an_ill_conditioned_stream(rng, m, ic):
    # the Gram matrix squares the condition number: a spectrum falling 1e4-fold (1e8 in the Gram
    # matrix, beyond float precision) must still give the leading components of the exact SVD
    basis, _ = np.linalg.qr(rng.standard_normal((ic, ic)))
    scales = np.geomspace(100.0, 0.01, ic)
    got, ref = _state(8, ic), _state(8, ic)
    n = 0
    for _ in range(3):
        x = ((rng.standard_normal((m, ic)) * scales) @ basis.T + 3.0).astype(np.float32)
        F.ipca_update(x, *got, n)
        R.ipca_update(x, *ref, n)
        n += m
    cos = np.abs(np.sum(got[0].astype(np.float64) * ref[0], axis=1))
    assert np.all(cos >= 1 - 1e-4), f"|cos| with the float64 SVD {cos}"
    assert_close(got[1], ref[1], 1e-4, 0, "singular values")
    c = got[0].astype(np.float64)
    assert_close(c @ c.T, np.eye(8), 0, 1e-5, "V V^T")


def test_ipca_update_completes_components_beyond_the_rank_of_the_batch(rng):
    # K rows centred have rank K - 1: the last component is any unit vector orthogonal to the others,
    # as in an exact SVD, and its singular value is zero
    k, ic = 4, 10
    x = _spectral_rows(rng, k, ic)
    got, ref = _state(k, ic), _state(k, ic)
    evr, _ = F.ipca_update(x, *got, 0)
    R.ipca_update(x, *ref, 0)
    cos = np.abs(np.sum(got[0][:k - 1].astype(np.float64) * ref[0][:k - 1], axis=1))
    assert np.all(cos >= 1 - 1e-5), cos
    c = got[0].astype(np.float64)
    assert_close(c @ c.T, np.eye(k), 0, 1e-5, "V V^T")
    assert got[1][-1] < 1e-3 * got[1][0] and evr[-1] < 1e-6


def test_ipca_update_rejects_nonfinite_rows_and_keeps_the_state(rng):
    pca = IncrementalPCA(3, 8)
    pca.partial_fit(_spectral_rows(rng, 10, 8))
    before = [a.copy() for a in (pca.components_, pca.singular_values_, pca.mean_, pca.var_)]
    x = _spectral_rows(rng, 10, 8)
    x[4, 2] = np.nan
    with pytest.raises(ValueError, match=r"'x' \(10, 8\) holds NaN"):
        pca.partial_fit(x)
    for a, b in zip((pca.components_, pca.singular_values_, pca.mean_, pca.var_), before):
        assert np.array_equal(a, b)


def test_ipca_update_rejects_too_few_rows_on_the_first_call(rng):
    with pytest.raises(ValueError, match="M=3 rows, too few for K=4"):
        F.ipca_update(_spectral_rows(rng, 3, 8), *_state(4, 8), 0)


def test_ipca_update_rejects_more_components_than_features(rng):
    with pytest.raises(ValueError, match=r"K=9 must be in \[1, IC=8\]"):
        F.ipca_update(_spectral_rows(rng, 20, 8), *_state(9, 8), 0)


def test_ipca_update_rejects_a_small_workspace(rng):
    need = F.ipca_workspace_size(10, 8, 3)
    with pytest.raises(ValueError, match=f"needs {need}"):
        F.ipca_update(_spectral_rows(rng, 10, 8), *_state(3, 8), 0, work=np.empty(need - 1, np.float32))


# -- configuration ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,fragment", [({"rho": 0.5}, "rho must be a finite number >= 1, got 0.5"),
                                             ({"rho": float("nan")}, "rho"),
                                             ({"tau": 1.5}, r"tau must be a number in \[0, 1\], got 1.5"),
                                             ({"tau": -0.1}, "got -0.1")])
def test_eva_config_rejects_values_outside_their_domain(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        EvaConfig(**kwargs)


def test_lora_config_validates_and_round_trips_eva_config(tmp_path):
    with pytest.raises(ValueError, match="rho"):
        LoraConfig(init_lora_weights="eva", eva_config={"rho": 0.9})
    with pytest.warns(UserWarning, match="using EvaConfig"):
        assert LoraConfig(init_lora_weights="eva").eva_config == EvaConfig()
    cfg = LoraConfig(r=4, target_modules=["query"], init_lora_weights="eva",
                     eva_config=EvaConfig(rho=1.5, tau=0.9, whiten=True))
    cfg.save_pretrained(tmp_path)
    back = LoraConfig.from_pretrained(tmp_path)
    assert back.eva_config == cfg.eva_config and back.init_lora_weights == "eva"


def test_lora_config_json_with_eva_is_read_by_peft(tmp_path, torch):
    import peft
    cfg = LoraConfig(r=4, target_modules=["query"], init_lora_weights="eva", eva_config=EvaConfig(rho=1.5))
    cfg.save_pretrained(tmp_path)
    theirs = peft.LoraConfig.from_pretrained(str(tmp_path))
    assert theirs.init_lora_weights == "eva" and theirs.eva_config.rho == 1.5


# -- parity with PEFT's get_eva_state_dict ----------------------------------------------------------------------

def _torch_batches(torch, batches):
    # PEFT's default mask function reads input_ids even when attention_mask is present
    return [{"x": torch.from_numpy(b["x"]), "attention_mask": torch.from_numpy(b["attention_mask"]),
             "input_ids": torch.from_numpy(b["attention_mask"])} for b in batches]


PARITY_CASES = [
    dict(hidden=32, inter=48, layers=2, r=4, rho=2.0, tau=0.99, n_batches=12, seed=0),
    dict(hidden=24, inter=40, layers=3, r=2, rho=3.0, tau=0.99, n_batches=16, seed=3),
    dict(hidden=16, inter=24, layers=2, r=3, rho=1.0, tau=0.95, n_batches=8, seed=5),
]


@pytest.mark.parametrize("case", PARITY_CASES, ids=lambda c: f"L{c['layers']}-r{c['r']}-rho{c['rho']}")
def test_eva_state_dict_matches_peft(torch, case):
    import peft
    weights = make_weights(case["hidden"], case["inter"], case["layers"], seed=case["seed"])
    batches = make_batches(case["n_batches"], 4, 16, case["hidden"], seed=case["seed"] + 1)
    eva = dict(rho=case["rho"], tau=case["tau"])
    ours = get_eva_state_dict(EvaTwin(weights, case["layers"]), batches,
                              LoraConfig(r=case["r"], target_modules=TARGETS, init_lora_weights="eva",
                                         eva_config=EvaConfig(**eva)),
                              forward_fn=_forward, show_progress_bar=False)
    theirs = peft.get_eva_state_dict(make_torch_twin(torch, weights, case["layers"]), _torch_batches(torch, batches),
                                     peft.LoraConfig(r=case["r"], target_modules=TARGETS, init_lora_weights="eva",
                                                     eva_config=peft.EvaConfig(**eva)),
                                     forward_fn=_forward, show_progress_bar=False)
    assert list(ours) == list(theirs)
    assert {k: v.shape[0] for k, v in ours.items()} == {k: v.shape[0] for k, v in theirs.items()}
    assert sum(v.shape[0] for v in ours.values()) == case["r"] * len(ours)
    for name, a in ours.items():
        cos = np.abs(np.sum(a.astype(np.float64) * theirs[name].numpy(), axis=1))
        assert np.all(cos >= 0.99), f"{name}: |cos| {cos.round(4)}"


def test_eva_moves_ranks_between_layers_in_a_parity_case():
    case = PARITY_CASES[1]
    weights = make_weights(case["hidden"], case["inter"], case["layers"], seed=case["seed"])
    batches = make_batches(case["n_batches"], 4, 16, case["hidden"], seed=case["seed"] + 1)
    sd = get_eva_state_dict(EvaTwin(weights, case["layers"]), batches,
                            LoraConfig(r=case["r"], target_modules=TARGETS, init_lora_weights="eva",
                                       eva_config=EvaConfig(rho=case["rho"])),
                            forward_fn=_forward, show_progress_bar=False)
    assert len({v.shape[0] for v in sd.values()}) > 1, "the parity cases should exercise redistribution"


# -- behaviour ---------------------------------------------------------------------------------------------

def _twin_setup(r=4, rho=2.0, whiten=False, n_batches=10, hidden=32):
    weights = make_weights(hidden, 48, 2)
    batches = make_batches(n_batches, 4, 16, hidden)
    config = LoraConfig(r=r, lora_alpha=8, target_modules=TARGETS, init_lora_weights="eva",
                        eva_config=EvaConfig(rho=rho, whiten=whiten))
    return weights, batches, config


def test_padding_tokens_do_not_reach_the_svd():
    weights, batches, config = _twin_setup()
    other = [dict(b, x=np.where(b["attention_mask"][..., None] == 0, -7.0, b["x"]).astype(np.float32))
             for b in batches]
    a = get_eva_state_dict(EvaTwin(weights, 2), batches, config, forward_fn=_forward, show_progress_bar=False)
    b = get_eva_state_dict(EvaTwin(weights, 2), other, config, forward_fn=_forward, show_progress_bar=False)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_label_mask_drops_positions_labelled_with_the_mask_value():
    weights, batches, config = _twin_setup()
    labelled = [dict(b, labels=np.where(np.arange(16)[None, :] < 3, -100, 1).repeat(4, 0)) for b in batches]
    cut = [dict(b, attention_mask=b["attention_mask"] * (np.arange(16)[None, :] >= 3)) for b in batches]
    a = get_eva_state_dict(EvaTwin(weights, 2), labelled, config, forward_fn=_forward, show_progress_bar=False)
    b = get_eva_state_dict(EvaTwin(weights, 2), cut, config, forward_fn=_forward, show_progress_bar=False)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_layers_with_identical_inputs_share_components():
    weights, batches, config = _twin_setup()
    sd = get_eva_state_dict(EvaTwin(weights, 2), batches, config, forward_fn=_forward, show_progress_bar=False)
    for i in range(2):
        q, k, v = (sd[f"encoder.layer.{i}.attention.self.{n}"] for n in ("query", "key", "value"))
        n = min(q.shape[0], k.shape[0], v.shape[0])
        assert np.array_equal(q[:n], k[:n]) and np.array_equal(q[:n], v[:n])
        assert q.shape[0] >= max(k.shape[0], v.shape[0])  # the owner holds the group's largest rank


def test_whiten_divides_each_component_by_the_root_of_its_singular_value(monkeypatch):
    weights, batches, config = _twin_setup()
    plain = get_eva_state_dict(EvaTwin(weights, 2), batches, config, forward_fn=_forward, show_progress_bar=False)
    pcas = []

    class RecordedPCA(IncrementalPCA):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pcas.append(self)

    monkeypatch.setattr(eva_module, "IncrementalPCA", RecordedPCA)
    white_cfg = dataclasses.replace(config, eva_config=EvaConfig(whiten=True))
    white = get_eva_state_dict(EvaTwin(weights, 2), batches, white_cfg, forward_fn=_forward, show_progress_bar=False)
    checked = 0
    for name in plain:
        ratio = plain[name] / white[name]
        norms = 1.0 / np.linalg.norm(white[name], axis=1)
        assert np.allclose(ratio, ratio[:, :1], rtol=1e-4), name  # one factor per row
        assert np.all(np.diff(norms) <= 1e-6)  # sqrt(S) descends
        # the exact relation: row i is the PCA's unit component i over sqrt(singular value i)
        r = plain[name].shape[0]
        owner = [p for p in pcas if r and np.array_equal(p.components_[:r], plain[name])]
        if r:
            assert owner, f"{name}: no PCA holds its components"
            s = owner[0].singular_values_[:r].astype(np.float64)
            assert s.min() > 4.0  # so s and sqrt(s) differ at least twofold
            assert_close(np.linalg.norm(plain[name], axis=1), np.ones(r), 0, 1e-6, f"{name} unit rows")
            assert_close(ratio[:, 0], np.sqrt(s), 1e-5, 0, f"{name} component / whitened")
            checked += 1
    assert checked == sum(a.shape[0] > 0 for a in plain.values())
    q, k = white["encoder.layer.0.attention.self.query"], white["encoder.layer.0.attention.self.key"]
    n = min(q.shape[0], k.shape[0])
    assert np.array_equal(q[:n], k[:n])  # divided once per layer, also inside a shared group


def test_initialize_sets_a_resizes_layers_and_writes_patterns():
    weights, batches, config = _twin_setup(r=4, rho=2.0)
    model = get_peft_model(EvaTwin(weights, 2), config)
    x = batches[0]["x"]
    before = model(x)
    sd = get_eva_state_dict(model, batches, forward_fn=_forward, show_progress_bar=False)
    initialize_lora_eva_weights(model, eva_state_dict=sd)
    cfg = model.peft_config["default"]
    base = model.get_base_model()
    for name, a in sd.items():
        layer = base.get_submodule(name)
        if a.shape[0] == 0:
            assert type(layer) is Linear and name not in cfg.target_modules
            continue
        assert isinstance(layer, LoraLinear) and layer.r == a.shape[0]
        assert np.array_equal(layer.lora_A.data, a) and not layer.lora_B.data.any()
        assert layer.scaling == pytest.approx(8 / 4)  # alpha adjusted: alpha_l / r_l == alpha / r
        assert (cfg.rank_pattern.get(name, 4), cfg.alpha_pattern.get(name, 8)) == (a.shape[0], 8 * a.shape[0] / 4)
    np.testing.assert_array_equal(model(x), before)  # B = 0: still the base model


def _peft_load(torch, weights, sd, r, alpha, adjust):
    import peft
    tm = make_torch_twin(torch, weights, 2)
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights="eva",
                          eva_config=peft.EvaConfig(adjust_scaling_factors=adjust))
    pm = peft.get_peft_model(tm, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft.initialize_lora_eva_weights(pm, eva_state_dict={f"base_model.model.{k}": torch.from_numpy(v.copy())
                                                             for k, v in sd.items()})
    return pm.peft_config["default"]


@pytest.mark.parametrize("adjust", [True, False])
def test_initialize_writes_the_same_config_as_peft(torch, adjust):
    weights = make_weights(32, 48, 2)
    rng = np.random.default_rng(0)
    ranks = {"query": 6, "key": 2, "value": 4, "intermediate.dense": 0, "output.dense": 4}
    sd = {}
    for i in range(2):
        for short, rank in ranks.items():
            name = f"encoder.layer.{i}.{'attention.self.' if short in ('query', 'key', 'value') else ''}{short}"
            ic = 48 if short == "output.dense" else 32
            sd[name] = rng.standard_normal((rank if i == 0 else 4, ic)).astype(np.float32)
    config = LoraConfig(r=4, lora_alpha=6, target_modules=TARGETS, init_lora_weights="eva",
                        eva_config=EvaConfig(adjust_scaling_factors=adjust))
    model = get_peft_model(EvaTwin(weights, 2), config)
    initialize_lora_eva_weights(model, eva_state_dict=sd)
    ours = model.peft_config["default"]
    theirs = _peft_load(torch, weights, sd, 4, 6, adjust)
    assert ours.rank_pattern == theirs.rank_pattern
    assert ours.alpha_pattern == theirs.alpha_pattern
    assert sorted(ours.target_modules) == sorted(theirs.target_modules)


def test_initialize_uses_the_dataloader_and_shows_progress(capsys):
    weights, batches, config = _twin_setup()
    model = get_peft_model(EvaTwin(weights, 2), config)
    initialize_lora_eva_weights(model, batches, forward_fn=_forward)
    assert "EVA" in capsys.readouterr().err
    assert all(layer.lora_A.data.any() for layer in model._lora_layers())


# -- bad input -------------------------------------------------------------------------------------------

def test_nan_activations_raise_value_error_naming_the_layer():
    weights, batches, config = _twin_setup()
    bad = [dict(b) for b in batches]
    bad[2] = dict(bad[2], x=bad[2]["x"].copy())
    bad[2]["x"][0, 0, 5] = np.nan
    with pytest.raises(ValueError, match=r"layer 'encoder.layer.0.attention.self.query'.*NaN"):
        get_eva_state_dict(EvaTwin(weights, 2), bad, config, forward_fn=_forward, show_progress_bar=False)


def test_too_few_tokens_for_the_rank_raise_value_error():
    weights, batches, config = _twin_setup(r=8, rho=2.0)
    tiny = [dict(b, attention_mask=np.pad(np.ones((4, 3), np.int64), ((0, 0), (0, 13)))) for b in batches]
    with pytest.raises(ValueError, match="fewer tokens than its 16 components"):
        get_eva_state_dict(EvaTwin(weights, 2), tiny, config, forward_fn=_forward, show_progress_bar=False)


def test_rank_times_rho_above_the_input_width_raises_value_error():
    weights, batches, config = _twin_setup(r=12, rho=3.0)
    with pytest.raises(ValueError, match=r"round\(r \* rho\) = 36 components but has only 32 input features"):
        get_eva_state_dict(EvaTwin(weights, 2), batches, config, forward_fn=_forward, show_progress_bar=False)


def test_rho_or_tau_changed_after_construction_are_rejected():
    weights, batches, config = _twin_setup()
    config.eva_config.rho = 0.5
    with pytest.raises(ValueError, match="rho must be a finite number >= 1, got 0.5"):
        get_eva_state_dict(EvaTwin(weights, 2), batches, config, forward_fn=_forward, show_progress_bar=False)


def test_generator_or_empty_dataloader_is_rejected():
    weights, batches, config = _twin_setup()
    with pytest.raises(TypeError, match="not an iterator"):
        get_eva_state_dict(EvaTwin(weights, 2), iter(batches), config, forward_fn=_forward)
    with pytest.raises(ValueError, match="no batches"):
        get_eva_state_dict(EvaTwin(weights, 2), [], config, forward_fn=_forward)


def test_initialize_requires_eva_init_and_a_peft_model():
    weights, batches, config = _twin_setup()
    with pytest.raises(ValueError, match="needs a PeftModel"):
        initialize_lora_eva_weights(EvaTwin(weights, 2), batches)
    model = get_peft_model(EvaTwin(weights, 2), LoraConfig(r=4, target_modules=TARGETS))
    with pytest.raises(ValueError, match="init_lora_weights='eva'"):
        initialize_lora_eva_weights(model, batches, forward_fn=_forward)


# -- early end of the forward pass ------------------------------------------------------------------------

def _count_layer_calls(model, names):
    calls = Counter()
    for name in names:
        module = model.get_submodule(name)
        original = module.forward

        def forward(x, _name=name, _original=original):
            calls[_name] += 1
            return _original(x)
        module.forward = forward
    return calls


def test_stopping_the_forward_early_gives_the_same_components_with_fewer_layer_calls():
    weights, batches, config = _twin_setup(n_batches=12)
    names = [n for n, m in EvaTwin(weights, 2).named_modules() if isinstance(m, Linear)]
    results, calls = {}, {}
    for early in (True, False):
        model = EvaTwin(weights, 2)
        calls[early] = _count_layer_calls(model, names)
        results[early] = get_eva_state_dict(model, batches, config, forward_fn=_forward, show_progress_bar=False,
                                             stop_forward_early=early)
    assert list(results[True]) == list(results[False])
    for name in results[True]:
        assert np.array_equal(results[True][name], results[False][name]), name
    # the last layer's output.dense is a target, so an early stop skips at least the classifier
    assert calls[True]["classifier"] < calls[False]["classifier"]
    assert sum(calls[True].values()) < sum(calls[False].values())


def test_a_forward_fn_catching_exceptions_does_not_swallow_the_early_stop():
    weights, batches, config = _twin_setup()

    def forgiving(model, batch):
        try:
            return model(batch["x"])
        except Exception:  # noqa: BLE001 - the point of the test
            return None
    a = get_eva_state_dict(EvaTwin(weights, 2), batches, config, forward_fn=forgiving, show_progress_bar=False)
    b = get_eva_state_dict(EvaTwin(weights, 2), batches, config, forward_fn=_forward, show_progress_bar=False,
                           stop_forward_early=False)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


# -- the hashing pass doubles as the first step; models that skip padding ---------------------------------------

def test_the_hashing_pass_is_the_first_step_one_forward_fewer_than_peft(torch):
    import peft
    case = PARITY_CASES[0]
    weights = make_weights(case["hidden"], case["inter"], case["layers"], seed=case["seed"])
    batches = make_batches(case["n_batches"], 4, 16, case["hidden"], seed=case["seed"] + 1)
    calls = Counter()

    def counting(model, batch):
        calls["torch" if isinstance(model, torch.nn.Module) else "peftc"] += 1
        return model(batch["x"])
    ours = get_eva_state_dict(EvaTwin(weights, case["layers"]), batches,
                              LoraConfig(r=case["r"], target_modules=TARGETS, init_lora_weights="eva",
                                         eva_config=EvaConfig(rho=case["rho"])),
                              forward_fn=counting, show_progress_bar=False)
    theirs = peft.get_eva_state_dict(make_torch_twin(torch, weights, case["layers"]), _torch_batches(torch, batches),
                                     peft.LoraConfig(r=case["r"], target_modules=TARGETS, init_lora_weights="eva",
                                                     eva_config=peft.EvaConfig(rho=case["rho"])),
                                     forward_fn=counting, show_progress_bar=False)
    assert calls["torch"] > 2 and calls["peftc"] == calls["torch"] - 1, dict(calls)
    assert {k: v.shape[0] for k, v in ours.items()} == {k: v.shape[0] for k, v in theirs.items()}


def test_a_layer_called_twice_in_the_hashing_pass_gets_both_inputs(monkeypatch):
    weights, batches, config = _twin_setup(n_batches=6)
    config = dataclasses.replace(config, target_modules=["encoder.layer.0.attention.self.query"])
    twin = EvaTwin(weights, 2)
    # layer 1 runs layer 0's module: the target sees two different inputs per pass
    twin.encoder.layer[1].attention.self.query = twin.encoder.layer[0].attention.self.query
    seen = []
    update_many = eva_module.partial_fit_many

    def recording(pcas, rows, labels=None):
        seen.extend(x.shape[0] for x in rows)
        return update_many(pcas, rows, labels)
    monkeypatch.setattr(eva_module, "partial_fit_many", recording)
    get_eva_state_dict(twin, batches, config, forward_fn=_forward, show_progress_bar=False)
    rows = [int(b["attention_mask"].sum()) for b in batches]
    assert seen[:4] == [rows[0], rows[0], rows[1], rows[1]]


def _token_batches(rng, n, batch=4, seq=8, vocab=20):
    out = []
    for _ in range(n):
        ids = rng.integers(1, vocab, (batch, seq)).astype(np.int64)
        lengths = rng.integers(seq // 3, seq + 1, batch)
        mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
        out.append({"input_ids": ids * mask, "attention_mask": mask})
    return out


def test_skip_padding_forward_gives_the_components_of_the_padded_forward(rng):
    from tests.test_encoder_modules import random_bert
    model = random_bert(rng, dropout=0.0).eval()
    batches = _token_batches(rng, 14)
    assert any((b["attention_mask"] == 0).any() for b in batches)
    config = LoraConfig(r=3, target_modules=["query", "value", "intermediate.dense", "output.dense"],
                        init_lora_weights="eva", eva_config=EvaConfig(rho=2.0))
    rows = Counter()
    layer = model.get_submodule("encoder.layer.1.attention.self.query")
    original = layer.forward
    layer.forward = lambda x: (rows.update([x.shape[0] if x.ndim == 2 else x.shape[0] * x.shape[1]]), original(x))[1]
    results = {}
    for skip in (False, True):
        results[skip] = get_eva_state_dict(
            model, batches, config, show_progress_bar=False,
            forward_fn=lambda m, b, skip=skip: m(b["input_ids"], b["attention_mask"], skip_padding=skip))
    assert sum(int(b["attention_mask"].sum()) == n for b in batches for n in rows) > 0, "packed rows were not seen"
    assert {k: v.shape[0] for k, v in results[True].items()} == {k: v.shape[0] for k, v in results[False].items()}
    for name, a in results[True].items():
        cos = np.abs(np.sum(a.astype(np.float64) * results[False][name], axis=1))
        assert np.all(cos >= 0.9999), f"{name}: |cos| {cos.round(6)}"


def test_packed_rows_are_taken_as_kept_rows_and_a_narrower_mask_is_an_error():
    from peftc.tuners.eva import prepare_layer_inputs_fn_language_modeling as rows_of
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)
    packed = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(rows_of(packed, mask, "q"), packed)
    padded = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert np.array_equal(rows_of(padded, mask, "q"), padded[mask])
    narrower = mask.copy()
    narrower[0, 1] = False  # a label mask inside the attention mask: the packed rows cannot be matched
    with pytest.raises(ValueError, match="does not match"):
        rows_of(packed, narrower, "q")
