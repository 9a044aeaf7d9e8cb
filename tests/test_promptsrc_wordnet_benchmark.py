"""The PromptSRC benchmark: the step count and each arm's rate chosen on validation only, the stop-epoch
score of a GPA arm equal to what a seed run trains, the paired verdicts, and the seed-file merge."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from peftc.data.wordnet import DEFAULT_ROOT
from tests.benchmark_scripts import load_benchmark

HAVE_WORDNET = os.path.isfile(os.path.join(os.environ.get("PEFTC_WORDNET_DIR") or DEFAULT_ROOT, "data.noun"))


@pytest.fixture(scope="module")
def pw():
    return load_benchmark("promptsrc_wordnet")


class _FakeRun:
    """A selection run with a made-up validation curve; records which stop epochs it was scored at."""

    def __init__(self, novel: list[float], hm: list[float], calls: list) -> None:
        self.curve = [{"epoch": e + 1, "base": 0.5, "novel": n, "hm": h} for e, (n, h) in enumerate(zip(novel, hm))]
        self.calls = calls

    def validation_hm(self, epoch: int) -> float:
        self.calls.append(epoch)
        return self.curve[epoch - 1]["hm"]


def test_step_count_is_ivlps_validation_novel_peak_and_every_arm_is_scored_there(pw):
    calls: list = []
    curves = {  # (method, lr) -> (novel per epoch, hm per epoch)
        ("ivlp", 0.01): ([.9, .5, .6, .4], [.9, .5, .52, .6]),  # novel peaks at epoch 3 (epoch 1 is the warm-up)
        ("ivlp", 0.04): ([.9, .7, .3, .2], [.9, .4, .3, .2]),   # peak at 2, HM there .4 < .52
        ("promptsrc", 0.01): ([.5] * 4, [.1, .2, .3, .9]), ("promptsrc", 0.04): ([.5] * 4, [.1, .2, .4, .1]),
        ("coop", 0.01): ([.5] * 4, [.3, .3, .5, .3]), ("coop", 0.04): ([.5] * 4, [.3, .3, .5, .9]),
    }
    s = pw.Settings(methods=["zero_shot", "coop", "promptsrc"], epochs=4, lr_grid=[0.01, 0.04])
    fit = lambda method, lr, s_, pd, ctx: _FakeRun(*curves[method, lr], calls)  # noqa: E731
    pd = SimpleNamespace(train_base=[0] * 336, validation="val", test="test")
    sel = pw.select_knobs(s, pd, None, log=lambda *_: None, fit=fit)
    assert sel["stop_epoch"] == 3 and not sel["stop_at_cap"] and sel["steps_per_epoch"] == 84
    assert list(sel["methods"]) == ["ivlp", "coop", "promptsrc"]
    assert sel["methods"]["ivlp"]["chosen"] == {"lr": 0.01, "stop_epoch": 3}
    assert sel["methods"]["ivlp"]["val_hm"] == [.52, .4]
    # the others at epoch 3, not at their own best epoch (promptsrc would take 0.01 at epoch 4, coop 0.04)
    assert sel["methods"]["promptsrc"]["chosen"] == {"lr": 0.04, "stop_epoch": 3}
    assert sel["methods"]["coop"]["chosen"] == {"lr": 0.01, "stop_epoch": 3}
    assert calls == [3] * 4 and len(sel["methods"]["coop"]["curves"]) == 2


def test_peak_epoch_skips_the_warm_up_and_takes_the_first_maximum(pw):
    curve = [{"epoch": e, "novel": n} for e, n in [(1, .9), (2, .5), (3, .7), (4, .7), (5, .2)]]
    assert pw.peak_epoch(curve, 2) == 3 and pw.peak_epoch(curve, 1) == 1
    assert pw.peak_epoch(curve[:1], 2) == 1  # a one-epoch schedule stops at its only epoch


def test_arm_configs_use_the_paper_scale_and_stop_with_gpa_at_three_quarters(pw):
    s = pw.Settings(epochs=8)
    cfg = pw.method_config("promptsrc", s, 3, 0.01, 4)
    assert cfg.weights.scale == 100.0 and cfg.epochs == 8 and cfg.stop_epoch == 4 and cfg.gpa == (3.0, 1.0)
    assert cfg.seed == 3 and cfg.lr == 0.01 and cfg.batch_size == 4
    assert pw.method_config("ivlp", s, 3, 0.01, 4).gpa is None
    ablation = pw.method_config("no_l1", s, 3, 0.01, 4).weights
    assert ablation.text_l1 == ablation.input_l1 == 0.0 and ablation.kl == cfg.weights.kl
    assert pw.method_config("coop", pw.Settings(logit_scale=20.0), 0, 0.01, None).weights.scale == 20.0
    with pytest.raises(ValueError, match="unknown arms"):
        pw.Settings(methods=["promptsrc", "nope"]).check()


def _runs(seeds, shift: float = 0.05) -> list[dict]:
    runs = []
    for k in seeds:
        rng = np.random.default_rng([0, k])  # each seed its own noise, whether the seeds are run together or apart
        zs = {"arm": "zero_shot", "seed": k, "knobs": {}, "base": .36, "novel": .40, "hm": .38, "cpu_seconds": 1.0}
        noise = rng.normal(0, 0.01)
        runs += [zs,
                 {"arm": "coop", "seed": k, "knobs": {"lr": .01}, "base": .45, "novel": .30 + noise, "hm": .36,
                  "cpu_seconds": 2.0},
                 {"arm": "ivlp", "seed": k, "knobs": {"lr": .01}, "base": .52, "novel": .45 + noise, "hm": .48,
                  "cpu_seconds": 2.0},
                 {"arm": "promptsrc", "seed": k, "knobs": {"lr": .01}, "base": .52, "novel": .45 + shift + 2 * noise,
                  "hm": .48 + rng.normal(0, 0.01), "cpu_seconds": 2.0}]
    return runs


def test_verdicts_follow_the_contract_and_pair_by_seed(pw):
    runs = _runs([1, 2, 3, 4, 5]) + [{"arm": "ivlp", "seed": 9, "knobs": {}, "base": 0, "novel": 0, "hm": 0}]
    rows = {v["claim"]: v for v in pw.seed_verdicts(pw.paired_claims(runs))}
    assert not any("without both L1" in c or "few-shot" in c for c in rows)  # no_l1 and few-shot did not run
    for v in rows.values():
        assert list(v)[:6] == ["claim", "holds", "p_holm", "diff", "ci95", "n_seeds"] and v["n_seeds"] == 5
    novel = rows["PromptSRC > IVLP (novel accuracy)"]
    by = {(r["arm"], r["seed"]): r for r in runs}
    assert novel["diff"] == pytest.approx(np.mean([by["promptsrc", k]["novel"] - by["ivlp", k]["novel"]
                                                   for k in range(1, 6)]))
    assert novel["holds"] and novel["ci95"][0] > 0
    coop = rows["CoOp < zero-shot (novel accuracy: CoOp's prompts overfit the base classes)"]
    assert coop["expected"] == "less" and coop["holds"] and coop["diff"] < 0
    assert rows["PromptSRC > zero-shot (novel accuracy)"]["holds"]
    hm = rows["PromptSRC > IVLP (harmonic mean)"]  # noise only
    assert not hm["holds"] and hm["p_holm"] >= 0.05 and hm["ci95"][0] < 0 < hm["ci95"][1]


def _selection(stop: int = 2) -> dict:
    curve = [{"epoch": e, "base": .5, "novel": .4, "hm": .44} for e in (1, 2, 3, 4)]
    arm = {"candidates": [{"lr": .01}, {"lr": .04}], "val_hm": [.44, .43], "chosen": {"lr": .01, "stop_epoch": stop},
           "curves": [curve, curve], "cpu_seconds": [1.0, 1.0]}
    return {"methods": {m: dict(arm) for m in ("ivlp", "coop", "promptsrc")}, "stop_epoch": stop,
            "stop_at_cap": False, "steps_per_epoch": 84}


def _part(pw, tmp_path: Path, seeds, epochs: int = 4, selection=None, cpu: str = "AMD EPYC") -> Path:
    s = pw.Settings(seeds=list(seeds), methods=["zero_shot", "coop", "ivlp", "promptsrc"], epochs=epochs, reduced=True)
    pd = SimpleNamespace(base=np.arange(21), novel=np.arange(21, 41), train_base=[0] * 336, validation=[0] * 410,
                         test=[0] * 1025)
    sel = selection or _selection()
    payload = pw._payload(s, f"seeds {seeds}", pd, _runs(seeds), 60.0, sel, cpu)
    stem = tmp_path / f"s{seeds[0]}"
    pw._write(payload, stem)
    return stem


def test_seed_files_merge_into_real_verdicts_and_other_settings_are_refused(pw, tmp_path):
    stems = [_part(pw, tmp_path, [k], cpu="Zen 4" if k == 4 else "AMD EPYC") for k in range(1, 6)]
    one = json.loads(stems[0].with_suffix(".json").read_text())
    assert one["verdicts"][0]["ci95"] == [None, None] and one["cpu"] == "AMD EPYC"  # one seed: not tested yet
    assert "REDUCED" in stems[0].with_suffix(".md").read_text()
    out = tmp_path / "all"
    assert pw.main(["--merge", *map(str, stems), "--out", str(out)]) == 0
    merged = json.loads(out.with_suffix(".json").read_text())
    assert merged["settings"]["seeds"] == [1, 2, 3, 4, 5] and merged["cpu_seconds"] == 300.0
    assert merged["cpu"] == "AMD EPYC + Zen 4"  # every part's CPU, not only the first's
    assert all(v["n_seeds"] == 5 and None not in v["ci95"] for v in merged["verdicts"])
    assert merged["summary"]["promptsrc"]["novel"]["std"] is not None
    md = out.with_suffix(".md").read_text()
    assert "| PromptSRC > IVLP (novel accuracy) | yes |" in md and "REDUCED" in md and pw.FULL_COMMAND in md
    assert "| ivlp | 0.01: 44.0; 0.04: 43.0 | lr 0.01 (at the edge of the grid) |" in md
    with pytest.raises(ValueError, match="epochs"):
        pw.merge([stems[0], _part(pw, tmp_path / "x", [6], epochs=6)], tmp_path / "bad")
    with pytest.raises(ValueError, match="selection"):
        pw.merge([stems[0], _part(pw, tmp_path / "y", [7], selection=_selection(3))],
                 tmp_path / "bad")
    with pytest.raises(ValueError, match="repeat a seed"):
        pw.merge([stems[0], stems[0]], tmp_path / "bad")


def test_a_selection_made_with_other_settings_or_without_an_arm_is_refused(pw, tmp_path):
    stem = _part(pw, tmp_path, [1])
    s = pw.Settings(seeds=[3], methods=["zero_shot", "coop", "ivlp", "promptsrc"], epochs=4, reduced=True)
    assert pw.load_selection(stem.with_suffix(".json"), s)["stop_epoch"] == 2  # another seed is fine
    with pytest.raises(ValueError, match="lr_grid"):
        pw.load_selection(stem.with_suffix(".json"), pw.Settings(**{**vars(s), "lr_grid": [0.1]}))
    with pytest.raises(ValueError, match="no_l1"):
        pw.load_selection(stem.with_suffix(".json"), pw.Settings(**{**vars(s), "methods": ["promptsrc", "no_l1"]}))


@pytest.mark.skipif(not HAVE_WORDNET, reason="WordNet (Debian wordnet-base) not installed")
def test_a_gpa_arms_stop_epoch_score_is_what_a_seed_run_at_that_stop_trains(pw):
    """The selection scores PromptSRC stopped at epoch E from the snapshots of one full-schedule run; a seed run
    with stop_epoch E (same seed) must end with the same prompts and the same validation scores."""
    from peftc.prompt import PromptSRCDualEncoder

    full = pw.load_context()
    ctx = pw.Context(full.model, full.tokenizer, full.label_texts, [[t] for t in full.label_texts])
    s = pw.Settings(shots=1, batch_size=32, epochs=3, val_per_class=1, test_per_class=1, select_seed=2)  # 1 step/epoch
    pd = pw.protocol(s, s.select_seed)
    run = pw.CurveRun("promptsrc", 0.05, s, pd, ctx)
    assert [c["epoch"] for c in run.curve] == [1, 2, 3] and len(run.snapshots) == 3
    hm = run.validation_hm(2)
    seed_run = PromptSRCDualEncoder(ctx.model, ctx.tokenizer, ctx.label_texts, ctx.variants,
                                    pw.method_config("promptsrc", s, s.select_seed, 0.05, 2))
    seed_run.fit(pd.train_base.texts, pd.train_base.labels, pd.base)
    for p, q in zip(run.enc.prompt_params(), seed_run.prompt_params()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-6, atol=1e-7)
    assert hm == pw.scores(seed_run, pd.validation, pd)["hm"]
    assert not np.allclose(run.snapshots[1][0], run.enc.prompt_params()[0].data)  # the aggregate, not epoch 2's
