"""The EVA-vs-random experiment combines seeds run in separate processes, and refuses other settings."""
from __future__ import annotations

import json

import pytest

from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def ew():
    return load_benchmark("eva_wordnet")


def _run(arm: str, seed: int, loss: float) -> dict:
    run = {"arm": arm, "seed": seed, "sizes": {"train": 10, "val": 2, "test": 4}, "steps": 30,
           "train_loss": [loss] * 30, "eval": [{"step": 25, "loss": loss, "accuracy": 0.5}],
           "test": {"loss": loss, "accuracy": 0.5 + (0.1 if arm == "eva" else 0.0)}}
    if arm == "eva":
        run.update(eva_seconds=1.0, rank_pattern={"q": 8})
    return run


def _part(ew, monkeypatch, tmp_path, seed: int, epochs: int = 3, cpu: str = "Zen 3") -> str:
    monkeypatch.setattr(ew.common, "RESULTS_DIR", tmp_path)
    settings = {"seeds": [seed], "threads": 1, "epochs": epochs, "ks": [25], "reduced": False,
                "out": f"part{seed}", "merge": None, "render": None}
    payload = {"command": f"seed {seed}", "settings": settings, "runs": [_run("random", seed, 2.0),
                                                                          _run("eva", seed, 1.5 + seed)],
               "environment": {"load_average_at_start": [0.0, 0.0, 0.0], "cpu": cpu}}
    (tmp_path / f"part{seed}.json").write_text(json.dumps(payload))
    return f"part{seed}"


def test_merge_pools_the_runs_and_recomputes_the_verdict(ew, monkeypatch, tmp_path):
    names = [_part(ew, monkeypatch, tmp_path, 0), _part(ew, monkeypatch, tmp_path, 1, cpu="Zen 4"),
             _part(ew, monkeypatch, tmp_path, 2)]
    ew.merge(names[:2], "all")
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["settings"]["seeds"] == [0, 1] and len(merged["runs"]) == 4
    assert merged["paired_train_loss_differences"] == {"25": [-0.5, 0.5]}
    assert "NOT lower" in merged["verdict"]  # seed 1's EVA loss (2.5) is above random's (2.0)
    assert merged["command"] == "seed 0 + seed 1; merged with --merge part0 part1"
    assert "| eva |" in (tmp_path / "all.md").read_text()
    assert merged["cpu"] == merged["environment"]["cpu"] == "Zen 3 + Zen 4"  # the parts' CPUs, not this machine's
    assert "CPU: Zen 3 + Zen 4." in (tmp_path / "all.md").read_text()
    ew.merge([names[0], names[2]], "same")
    assert json.loads((tmp_path / "same.json").read_text())["cpu"] == "Zen 3"


def test_merge_refuses_other_settings_and_repeated_seeds(ew, monkeypatch, tmp_path):
    names = [_part(ew, monkeypatch, tmp_path, 0), _part(ew, monkeypatch, tmp_path, 1, epochs=1)]
    with pytest.raises(ValueError, match="epochs"):
        ew.merge(names, "all")
    with pytest.raises(ValueError, match="repeat a seed"):
        ew.merge([_part(ew, monkeypatch, tmp_path, 0), "part0"], "all")


# -- the per-arm learning-rate selection, the orthonormal control arm, and the verdicts contract ----------------
def _args(ew, **over):
    args = ew.parse_args(["--lr-grid", "3e-3", "1e-3", "--select-steps", "1", "--train-per-class", "2",
                          "--val-per-class", "1", "--test-per-class", "1", "--eva-batches", "2",
                          "--eva-batch-size", "8", "--max-steps", "1", "--ks", "1"])
    for k, v in over.items():
        setattr(args, k, v)
    return args


def test_selection_scores_each_arm_on_validation_only(ew):
    calls = []

    class Fake:
        def __init__(self, lr, data):
            self.lr, self.data = lr, data

        def train(self):
            return []

        def evaluate(self, split):
            which = "val" if split is self.data["val"] else "test"
            calls.append(which)
            return {"accuracy": 0.9 if self.lr == (1e-3 if which == "val" else 3e-3) else 0.5}

    def build(arm, seed, args, lr, steps, with_eval):
        data = {"train": object(), "val": object(), "test": object()}
        assert steps == args.select_steps and not with_eval and seed == args.select_seed
        return None, Fake(lr, data), data, {}

    sel = ew.select(_args(ew), log=lambda *_: None, build=build)
    assert list(sel) == list(ew.ARMS)
    for arm in ew.ARMS:
        assert sel[arm]["chosen"] == 1e-3 and sel[arm]["val_accuracy"] == [0.5, 0.9]  # test prefers 3e-3
    assert calls == ["val"] * 2 * len(ew.ARMS)


def test_orthonormal_control_keeps_eva_ranks_and_scales_with_unit_norm_orthonormal_rows(ew):
    import numpy as np

    from peftc.models import BertModel, minilm_path
    from peftc.models.classifier import SentenceClassifier
    from peftc.nn import LoraLinear
    from peftc.random import Generator
    from peftc.tuners import EvaConfig, LoraConfig, get_peft_model

    rng = np.random.default_rng(0)
    batches = [{"input_ids": rng.integers(1000, 5000, (4, 10)), "attention_mask": np.ones((4, 10), np.int64)}
               for _ in range(3)]
    models = {}
    for arm in ("eva", "orthonormal"):
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"],
                            layers_to_transform=[0, 1], init_lora_weights="eva", eva_config=EvaConfig(rho=2, tau=0.5))
        bert = BertModel.from_pretrained(minilm_path())
        model = get_peft_model(SentenceClassifier(bert, 41, generator=Generator(1)), config, generator=Generator(2))
        models[arm] = (model, ew.initialise_a(arm, model, batches, seed=0))
    (eva, eva_facts), (ctrl, facts) = models["eva"], models["orthonormal"]
    assert facts["rank_pattern"] == eva_facts["rank_pattern"] and facts["orthonormality_error"] < 1e-5
    layers = lambda m: {n: x for n, x in m.get_base_model().named_modules() if isinstance(x, LoraLinear)}  # noqa
    ours, theirs = layers(ctrl), layers(eva)
    assert set(ours) == set(theirs) and ours
    for name, layer in ours.items():
        a, e = layer.lora_A.data.astype(np.float64), theirs[name].lora_A.data.astype(np.float64)
        assert a.shape == e.shape and layer.scaling == theirs[name].scaling
        np.testing.assert_allclose(a @ a.T, np.eye(a.shape[0]), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)  # EVA's rows: the same norms
        assert np.abs(a @ e.T).max() < 0.5  # new directions, not EVA's
        assert not layer.lora_B.data.any()


def test_verdicts_follow_the_contract_and_pair_by_seed(ew, monkeypatch, tmp_path):
    monkeypatch.setattr(ew.common, "RESULTS_DIR", tmp_path)
    base = [2.0, 3.0, 2.5, 3.5, 2.2]  # seeds differ a lot; EVA is about 0.1 below each arm in every seed
    wobble = [0.01, -0.01, 0.02, -0.02, 0.0]  # EVA's own, mean 0: no difference is the same with every seed
    runs = []
    for seed in (4, 2, 0, 3, 1):
        for arm, shift in (("random", 0.1), ("eva", wobble[seed]), ("orthonormal", 0.1)):
            run = _run(arm, seed, base[seed] + shift)
            run["test"]["accuracy"] = 0.5 + base[seed] / 10 + (wobble[seed] / 10 if arm == "eva" else -0.01)
            if arm == "orthonormal":
                run["orthonormality_error"] = 1e-7
            runs.append(run)
    settings = {"seeds": [0, 1, 2, 3, 4], "ks": [25], "reduced": True, "select_seed": 0}
    ew.render("five", {"command": "c", "settings": settings, "runs": runs, "selection": {},
                       "environment": {"load_average_at_start": [0.0, 0.0, 0.0]}})
    saved = json.loads((tmp_path / "five.json").read_text())
    rows = saved["verdicts"]
    assert list(saved)[0] == "verdicts" and len(rows) == 4
    for v in rows:
        assert list(v)[:6] == ["claim", "holds", "p_holm", "diff", "ci95", "n_seeds"]
        assert v["n_seeds"] == 5 and v["holds"], v  # paired by seed, every claim holds
    assert [round(v["diff"], 6) for v in rows] == [-0.1, 0.01, -0.1, 0.01]
    text = (tmp_path / "five.md").read_text()
    assert "REDUCED" in text and all(f"| {v['claim']} | yes |" in text for v in rows)


def test_a_selection_made_with_other_settings_is_refused(ew):
    # the committed selection was chosen from the 3-point grid: a run on the current default grid refuses it
    committed = ew.common.read_results("eva_wordnet_select")
    args = ew.parse_args(["--max-steps", "150", "--train-per-class", "100", "--val-per-class", "10",
                          "--test-per-class", "50", "--select-steps", "50", "--reduced", "--threads", "1"])
    assert committed["settings"]["lr_grid"] != args.lr_grid
    with pytest.raises(ValueError, match=r"--selection eva_wordnet_select was made with other settings: lr_grid"):
        ew.load_selection("eva_wordnet_select", args)
    args.lr_grid = committed["settings"]["lr_grid"]  # its own settings (other seeds, out and threads may differ)
    args.seeds, args.out, args.threads, args.selection = [3], "eva_s3", 2, "eva_wordnet_select"
    assert ew.load_selection("eva_wordnet_select", args) == committed["selection"]


def test_scheduler_runs_the_selection_once_and_each_seed_as_a_task(ew, monkeypatch, tmp_path):
    import cloudpickle

    from peftc.distributed import run_sweep

    monkeypatch.setattr(ew.common, "RESULTS_DIR", tmp_path)
    chosen = {"random": 3e-3, "eva": 1e-3, "orthonormal": 1e-2}
    selected, trained, swept = [], [], []

    def select(args, log=print, build=None):
        selected.append(args.select_seed)
        return {arm: {"candidates": [1e-3, 3e-3, 1e-2], "val_accuracy": [0.1, 0.2, 0.3], "chosen": lr, "steps": 1}
                for arm, lr in chosen.items()}

    def run_arm(arm, seed, args, lr, log=print):
        trained.append((arm, seed, lr))
        run = _run(arm, seed, 2.0 - (0.1 if arm == "eva" else 0.0))
        return dict(run, lr=lr, orthonormality_error=0.0) if arm == "orthonormal" else dict(run, lr=lr)

    def sweep_seeds(task, seeds, scheduler, modules=(), timeout=None):
        swept.append((list(seeds), scheduler, modules))
        task = cloudpickle.loads(cloudpickle.dumps(task))  # as it travels to a worker
        return {r.config["seed"]: r.unwrap() for r in run_sweep(task, [{"seed": k} for k in seeds], progress=False)}

    monkeypatch.setattr(ew, "select", select)
    monkeypatch.setattr(ew, "run_arm", run_arm)
    monkeypatch.setattr(ew.common, "sweep_seeds", sweep_seeds)
    args = _args(ew, seeds=[0, 1, 2, 3, 4], scheduler="local", out="swept", ks=[25])
    ew.run(args, "cmd")
    assert selected == [0]
    assert swept == [([0, 1, 2, 3, 4], "local", ("seed_verdicts", "wordnet_batches", "eva_wordnet"))]
    assert sorted(trained) == sorted((arm, k, lr) for arm, lr in chosen.items() for k in range(5))
    saved = json.loads((tmp_path / "swept.json").read_text())
    assert [r["seed"] for r in saved["runs"]] == [k for k in range(5) for _ in ew.ARMS]
    assert saved["selection"]["orthonormal"]["chosen"] == 1e-2 and saved["settings"]["scheduler"] == "local"
    assert all(v["n_seeds"] == 5 for v in saved["verdicts"]) and len(saved["verdicts"]) == 4
    assert "lr from the grid {0.003, 0.001} on validation" in (tmp_path / "swept.md").read_text()


def test_a_selection_only_file_carries_the_cpu_and_an_empty_verdicts_list(ew, monkeypatch, tmp_path):
    monkeypatch.setattr(ew.common, "RESULTS_DIR", tmp_path)
    chosen = {arm: {"candidates": [1e-3, 1e-2], "val_accuracy": [0.4, 0.5], "chosen": 1e-2, "steps": 4}
              for arm in ew.ARMS}
    monkeypatch.setattr(ew, "select", lambda args: chosen)
    args = ew.parse_args(["--select-only", "--out", "sel"])
    ew.run(args, "select")
    payload = json.loads((tmp_path / "sel.json").read_text())
    assert payload["verdicts"] == [] and payload["cpu"] == payload["environment"]["cpu"] and payload["cpu"]
    assert payload["selection"] == chosen and payload["runs"] == []
    assert "no claims tested here" in (tmp_path / "sel.md").read_text()
