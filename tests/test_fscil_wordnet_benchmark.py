"""benchmarks/fscil_wordnet.py end to end on the real WordNet benchmark with a tiny encoder (the suite's size),
its results contract, and the merge of seeds run apart."""
from __future__ import annotations

import json
import os

import pytest

from peftc.data.wordnet import DEFAULT_ROOT
from tests.benchmark_scripts import load_benchmark
from tests.fscil_toys import tiny_bert, tokenize

HAVE_WORDNET = os.path.isfile(os.path.join(os.environ.get("PEFTC_WORDNET_DIR") or DEFAULT_ROOT, "data.noun"))
pytestmark = pytest.mark.skipif(not HAVE_WORDNET, reason="Debian package wordnet-base not installed")
TINY_MODEL = (lambda seed: tiny_bert(seed), lambda max_length: tokenize)


@pytest.fixture(scope="module")
def ft():
    return load_benchmark("fscil_wordnet")


def test_methods_follow_the_ablation_order(ft):
    names = list(ft.methods())
    assert names[:7] == ["baseline", "+supcon", "+etf", "+pseudo_classes", "+subnet", "+ssl", "+pretext"]
    assert names[7] == "full" and len(names) == 14
    assert ft.methods()["full-subnet"].enabled() == ("supcon", "etf", "pseudo_classes", "ssl", "pretext")


def test_the_benchmark_writes_the_results_contract_and_merges_seeds(ft, tmp_path):
    tiny = dict(methods=["baseline", "full"], lrs=[1e-3, 5e-3], base_train_per_class=2, test_per_class=1,
                val_per_class=1, max_length=16, subnet_steps=1)
    for seed in (0, 1):
        ft.run(ft.Settings(seeds=[seed], **tiny), tmp_path / f"s{seed}", command=f"s{seed}", log=lambda *_: None,
               model=TINY_MODEL)
    one = json.loads((tmp_path / "s0.json").read_text())
    assert "verdicts" not in one and one["cpu"]
    s1 = json.loads((tmp_path / "s1.json").read_text())
    (tmp_path / "s1.json").write_text(json.dumps(dict(s1, cpu="Zen 4")))
    merged = ft.merge([tmp_path / "s0", tmp_path / "s1"], tmp_path / "all")
    assert set(merged["methods"]) == {"baseline", "full"} and merged["cpu"] == f"{one['cpu']} + Zen 4"
    for m in merged["methods"].values():
        assert set(m) == {"avg_acc", "pd", "last_hm", "per_session", "seeds"}
        assert len(m["per_session"]) == 9 and m["seeds"] == 2
    assert [v["claim"] for v in merged["verdicts"]] == ["full bag avg acc > baseline"]
    for v in merged["verdicts"]:
        assert v["n_seeds"] == 2 and not v["holds"]  # two seeds never make a verdict
    for r in merged["runs"]:
        assert r["lr"] in (1e-3, 5e-3) and len(r["val_avg_acc"]) == 2 and len(r["predictions_last"]) == 100
    assert "| full |" in (tmp_path / "all.md").read_text()
    assert "**REDUCED run**: base training on 2 glosses per base class" in (tmp_path / "all.md").read_text()
    with pytest.raises(ValueError, match="repeat a seed"):
        ft.merge([tmp_path / "s0", tmp_path / "s0"], tmp_path / "bad")


def test_a_shared_base_training_and_a_resumed_run_repeat_the_separate_runs(ft, tmp_path, monkeypatch):
    # subnet tuning moves the adapter hard here, so a kept learner not rewound to its base state would show
    tiny = dict(lrs=[1e-3, 5e-3], base_train_per_class=2, test_per_class=1, val_per_class=1, max_length=16,
                subnet_steps=3, subnet_lr=0.5)
    quiet = dict(log=lambda *_: None, model=TINY_MODEL)
    fits, ssl = [], []
    fit_base, phase_state = ft.FSCILLearner.fit_base, ft.FSCILLearner._phase_state
    monkeypatch.setattr(ft.FSCILLearner, "fit_base", lambda self, *a, **k: fits.append(1) or fit_base(self, *a, **k))
    monkeypatch.setattr(ft.FSCILLearner, "_phase_state", lambda self: ssl.append(1) or phase_state(self))
    three = ["full", "full-subnet", "full-etf"]
    shared = ft.run(ft.Settings(seeds=[0], methods=three, **tiny), tmp_path / "shared", "a", **quiet)
    # one base training per learning rate for full and full-subnet, one for full-etf; one SimCSE phase for all
    assert (len(fits), len(ssl)) == (4, 2)
    keys = ("lr", "val_avg_acc", "per_session", "predictions_last")
    for k, name in enumerate(three[1:], 1):
        alone = ft.run(ft.Settings(seeds=[0], methods=[name], **tiny), tmp_path / name, "b", **quiet)
        assert [shared["runs"][k][key] for key in keys] == [alone["runs"][0][key] for key in keys], name
    resumed = ft.run(ft.Settings(seeds=[0], methods=three + ["baseline"], **tiny), tmp_path / "shared",
                     "c", resume=True, **quiet)
    assert [r["method"] for r in resumed["runs"]] == three + ["baseline"]
    assert resumed["runs"][:3] == shared["runs"]  # kept, not run again (the seconds would differ)
    assert resumed["command"] == "a; resumed with c"
    with pytest.raises(ValueError, match=r"settings \['lrs'\] differ"):
        ft.run(ft.Settings(seeds=[0], methods=["full"], **{**tiny, "lrs": [1e-3]}), tmp_path / "shared", "d",
               resume=True, **quiet)
