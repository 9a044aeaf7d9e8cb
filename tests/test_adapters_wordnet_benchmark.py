"""The adapter head-to-head benchmark: validation-only selection, SoRA's shared learning rate, the control
arms, the verdicts contract, and a tiny end-to-end run with a merge."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def aw():
    return load_benchmark("adapters_wordnet")


TINY = dict(train_per_class=1, val_per_class=1, test_per_class=1, max_length=16, max_steps=2, batch_size=8,
            eval_every=1, log_every=1, lr_grid=[1e-3], select_steps=1, sora_lambdas=[0.1])


def _tiny_data(rows: int = 8, length: int = 6, classes: int = 41) -> dict:
    rng = np.random.default_rng(0)
    split = {"input_ids": rng.integers(1000, 2000, (rows, length)).astype(np.int64),
             "attention_mask": np.ones((rows, length), dtype=np.int64),
             "labels": rng.integers(0, classes, rows).astype(np.int64)}
    return {"train": split, "val": dict(split), "test": dict(split)}


class _FakeTrainer:
    """Scores by which split object it is handed: validation favours lr 1e-3, test favours 3e-3."""

    def __init__(self, lr: float, data: dict, calls: list) -> None:
        self.lr, self.data, self.calls = lr, data, calls

    def evaluate(self, split):
        which = "val" if split is self.data["val"] else "test" if split is self.data["test"] else "other"
        self.calls.append(which)
        best = 1e-3 if which == "val" else 3e-3
        return {"accuracy": 0.9 if self.lr == best else 0.5}


def test_selection_scores_on_validation_only_and_never_touches_test(aw):
    data = {"train": {"labels": np.zeros(4)}, "val": {"labels": np.zeros(2)}, "test": {"labels": np.zeros(2)}}
    calls: list = []
    s = aw.Settings(adapters=["lora", "bone"], lr_grid=[3e-3, 1e-3])
    fit = lambda name, knobs, steps, data_, s_, log: _FakeTrainer(knobs["lr"], data, calls)  # noqa: E731
    sel = aw.select_knobs(s, data, log=lambda *_: None, fit=fit)
    assert set(sel) == {"lora", "bone"}
    for name in ("lora", "bone"):
        assert sel[name]["chosen"] == {"lr": 1e-3}  # the test split prefers 3e-3
        assert sel[name]["val_accuracy"] == [0.5, 0.9] and sel[name]["steps"] == s.select_steps
    assert calls == ["val"] * 4


def test_sora_gates_train_at_the_adapter_learning_rate(aw):
    s = aw.Settings(**TINY)
    model, trainer = aw.make_trainer("sora", 0, _tiny_data(), 41, s, {"lr": 3e-4, "sora_lambda": 0.1}, 1, None)
    assert aw.adapter_config("sora", s).sparse_lr is None
    rates = [g["lr"] for g in trainer.optimizer.param_groups]
    assert len(rates) == 2 and rates[0] == rates[1]  # adapters + head, then gates
    trainer.train()
    assert trainer.gate_group["lr"] == trainer.optimizer.param_groups[0]["lr"]
    assert trainer.optimizer.param_groups[0]["initial_lr" if "initial_lr" in trainer.gate_group else "lr"] \
        == trainer.gate_group.get("initial_lr", trainer.gate_group["lr"])
    assert trainer.gate_group["sparse_xi"] == s.sora_xi and trainer.gate_group["sora_code_compat"]


def test_lora_control_has_the_ranks_sora_ends_with(aw):
    from peftc.nn import LoraLinear

    s = aw.Settings(**TINY)
    model, _ = aw.make_trainer("sora", 0, _tiny_data(), 41, s, {"lr": 1e-3, "sora_lambda": 0.1}, 1, None)
    layers = aw.sora.sora_layers(model)
    names = list(layers)
    layers[names[0]].lora_gate.data[:5] = 0.0  # 3 ranks kept
    layers[names[1]].lora_gate.data[:] = 0.0   # layer dropped
    facts = aw.sora_facts(model)
    assert facts["retention"] == pytest.approx((len(names) * 8 - 13) / (len(names) * 8))
    control = aw.get_peft_model(aw.SentenceClassifier(aw.BertModel.from_pretrained(aw.minilm_path()), 41),
                                aw.adapter_config("lora_sora_rank", s, {"pruned": facts["pruned"]}))
    lora = {n: m for n, m in control.get_base_model().named_modules() if isinstance(m, LoraLinear)}
    assert set(lora) == set(names[:1] + names[2:])
    assert lora[names[0]].r == 3 and all(lora[n].r == 8 for n in names[2:])
    assert all(m.scaling == pytest.approx(2.0) for m in lora.values())  # SoRA's alpha / r_max
    assert aw.adapter_param_count(control) == facts["retained_adapter_params"]
    with pytest.raises(ValueError, match="pruned"):
        aw.adapter_config("lora_sora_rank", s)


def test_every_arm_has_its_parameter_budget(aw):
    counts = {}
    for name in ("lora", "sora", "hydra", "hydra_paper", "bone", "bat"):
        model = aw.get_peft_model(aw.SentenceClassifier(aw.BertModel.from_pretrained(aw.minilm_path()), 41),
                                  aw.adapter_config(name))
        counts[name] = aw.adapter_param_count(model)
        if name == "hydra_paper":
            adapted = {n.rsplit(".", 1)[0] for n, _ in model.named_trainable_parameters() if ".classifier." not in n}
            assert adapted and all(n.endswith("output.dense") and "attention" not in n for n in adapted)
    assert counts == {"lora": 12 * 6144, "sora": 12 * (6144 + 8), "hydra": 12 * 6144,
                      "hydra_paper": 6 * (4 * (1536 + 384) + 8 * (384 + 384)), "bone": 12 * 6144, "bat": 12 * 6144}
    with pytest.raises(ValueError, match="unknown adapter"):
        aw.adapter_config("adalora")


def _fake_run(arm: str, seed: int, acc: float) -> dict:
    run = {"adapter": arm, "seed": seed, "knobs": {"lr": 1e-3}, "steps": 100, "trainable_params": 10,
           "adapter_params": 8, "retained_params": 10, "retained_adapter_params": 8, "test_accuracy": acc,
           "step_seconds_median": 0.1, "val_curve": [[25, acc - 0.1], [50, acc], [100, acc]]}
    if arm == "sora":
        run.update(retention=0.7, active_ranks={"q": 6}, pruned_test_accuracy=acc)
    return run


def test_verdicts_follow_the_contract_and_pair_by_seed(aw):
    base = [0.40, 0.55, 0.47, 0.61, 0.52]  # large spread between seeds, a small, steady paired gain
    gain = [0.010, 0.012, 0.009, 0.011, 0.008]
    runs = [_fake_run(arm, k, base[k] + (gain[k] if arm == "bone" else 0.0)) for k in (3, 0, 4, 1, 2)
            for arm in ("lora", "bone")]
    runs.sort(key=lambda r: (r["adapter"], -r["seed"] if r["adapter"] == "bone" else r["seed"]))
    s = aw.Settings(seeds=[0, 1, 2, 3, 4], adapters=["lora", "bone"])
    result = aw._payload(s, "cmd", {"train": 1, "val": 1, "test": 1}, runs, 0.0, {})
    rows = result["verdicts"]
    assert [v["claim"] for v in rows] == [c for c, a, b, _ in aw.CLAIMS if {a, b} == {"bone", "lora"}]
    for v in rows:
        assert list(v)[:6] == ["claim", "holds", "p_holm", "diff", "ci95", "n_seeds"]
        assert v["n_seeds"] == 5 and isinstance(v["holds"], bool) and len(v["ci95"]) == 2
    test_row = next(v for v in rows if "test accuracy" in v["claim"])
    assert test_row["diff"] == pytest.approx(0.01) and test_row["holds"]  # paired: every seed +0.008..0.012
    text = aw.markdown(result)
    for v in rows:
        assert f"| {v['claim']} | yes |" in text and f"{v['p_holm']:.3g}" in text
    assert "Learning rates come from the grid {0.0003, 0.001, 0.003, 0.01} on validation" in text


def test_tiny_run_with_selection_then_seed_files_merge_or_one_scheduler_run(aw, tmp_path, monkeypatch):
    quiet = lambda *_: None  # noqa: E731
    s = aw.Settings(seeds=[0], adapters=["lora", "sora", "lora_sora_rank"], **TINY)
    sel = aw.run(s, tmp_path / "select", command="select", log=quiet, select_only=True)["selection"]
    assert set(sel) == {"lora", "sora"} and sel["sora"]["chosen"] == {"lr": 1e-3, "sora_lambda": 0.1}
    assert len(sel["sora"]["retention"]) == 1 and sel["sora"]["steps"] == 2  # the seed runs' schedule
    stored = aw.load_selection(tmp_path / "select.json")
    for seed in (0, 1):
        aw.run(aw.Settings(**dict(vars(s), seeds=[seed])), tmp_path / f"s{seed}", command=f"s{seed}", log=quiet,
               selection=stored)
    one = json.loads((tmp_path / "s0.json").read_text())
    assert [v["n_seeds"] for v in one["verdicts"]] == [1, 1]
    (sora_run,) = [r for r in one["runs"] if r["adapter"] == "sora"]
    (control,) = [r for r in one["runs"] if r["adapter"] == "lora_sora_rank"]
    assert sora_run["pruned_test_accuracy"] == sora_run["test_accuracy"]
    assert control["adapter_params"] == sora_run["retained_adapter_params"]
    assert all(r["steps"] == 2 and [st for st, _ in r["val_curve"]] == [1, 2] for r in one["runs"])
    assert one["cpu"]
    for seed in (0, 1):  # a merge records the machine the seeds ran on, not the one merging them
        part = json.loads((tmp_path / f"s{seed}.json").read_text())
        (tmp_path / f"s{seed}.json").write_text(json.dumps(dict(part, cpu="the seeds' CPU")))
    merged = aw.merge([tmp_path / "s0", tmp_path / "s1"], tmp_path / "all")
    assert merged["settings"]["seeds"] == [0, 1] and [v["n_seeds"] for v in merged["verdicts"]] == [2, 2]
    assert merged["cpu"] == "the seeds' CPU"
    assert "## Verdicts" in (tmp_path / "all.md").read_text()
    bad = json.loads((tmp_path / "s1.json").read_text())
    bad["selection"]["lora"]["chosen"] = {"lr": 3e-3}
    (tmp_path / "s1.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="selection"):
        aw.merge([tmp_path / "s0", tmp_path / "s1"], tmp_path / "bad")
    with pytest.raises(ValueError, match="repeat a seed"):
        aw.merge([tmp_path / "s0", tmp_path / "s0"], tmp_path / "bad")
    # --scheduler: the stored selection, each seed a run_sweep task (pickled as for a worker), one file with
    # the same runs as the per-seed processes
    tasks: list = []

    def sweep(task, seeds, scheduler, modules=(), timeout=None):
        import cloudpickle

        from peftc.distributed import run_sweep

        tasks.append((scheduler, modules))
        task = cloudpickle.loads(cloudpickle.dumps(task))
        return {r.config["seed"]: r.unwrap() for r in run_sweep(task, [{"seed": k} for k in seeds], progress=False)}

    monkeypatch.setattr(aw, "sweep_seeds", sweep)
    swept = aw.run(aw.Settings(**dict(vars(s), seeds=[0, 1])), tmp_path / "swept", command="swept", log=quiet,
                   selection=stored, scheduler="local")
    assert tasks == [("local", ("seed_verdicts", "adapters_wordnet"))]
    assert json.loads((tmp_path / "swept.json").read_text())["selection"] == stored
    timing = {"step_seconds_median", "train_seconds"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in swept["runs"]] == \
        [{k: v for k, v in r.items() if k not in timing} for r in merged["runs"]]
    assert swept["verdicts"] == merged["verdicts"]


def test_a_selection_made_with_other_settings_is_refused(aw, tmp_path):
    s = aw.Settings(seeds=[0], adapters=["lora"], **TINY)
    (tmp_path / "sel.json").write_text(json.dumps({"settings": aw.asdict(s), "selection": {"lora": {}}}))
    assert aw.load_selection(tmp_path / "sel.json", aw.Settings(**dict(vars(s), seeds=[3]))) == {"lora": {}}
    for change in ({"lr_grid": [1e-3, 1e-2]}, {"select_steps": 2}, {"max_steps": 3}):
        with pytest.raises(ValueError, match=f"--selection .*sel.json was made with other settings: {list(change)[0]}"):
            aw.load_selection(tmp_path / "sel.json", aw.Settings(**dict(vars(s), **change)))


def test_steps_to_reach_returns_first_step_at_or_above_target(aw):
    curve = [[10, 0.2], [20, 0.5], [30, 0.45], [40, 0.6]]
    assert aw.steps_to_reach(curve, 0.5) == 20
    assert aw.steps_to_reach(curve, 0.7) is None


def test_adapter_step_layer_timing_covers_every_adapter():
    bench = load_benchmark("bench_adapter_step")
    ms = bench.time_layers(rows=8, features=32, repeats=1)
    assert list(ms) == ["base", "lora", "sora", "hydra", "bone", "bat"]
    assert all(0 < v["min_ms"] <= v["median_ms"] for v in ms.values())
