"""The TTA report's protocol pieces without the data or the source models: the learning rate chosen per method on
the validation streams only, the fixed validation / test split, the far unknowns, paired verdicts over seeds after
combining per-seed files, and the refusals (other settings, another selection, a repeated seed)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark

TINY = ["--corruptions", "gaussian_noise,contrast", "--severities", "5", "--limit", "200", "--batch", "100",
        "--rounds", "2", "--per-segment", "100", "--open-rounds", "2", "--open-known", "100", "--open-batch", "50",
        "--label", "tiny"]


@pytest.fixture(scope="module")
def report():
    return load_benchmark("tta_report")


def _selection(report, args) -> dict:
    return {key: {m: {"candidates": [{"lr": lr} for lr in args.lr_grid], "val_error": [30.0, 20.0, 25.0],
                      "chosen": {"lr": args.lr_grid[1]}, "work_units": 10}
                  for m in methods if m not in report.FIXED}
            for key, methods in report.experiments(args)}


def _seed(report, args, seed: int, rng) -> dict:
    """One seed's results: every method's error is its offset below + noise; EATA below TENT below source, the
    filter arms 3 points below their bases, and EATA's backward samples 30% fewer than TENT's."""
    offsets = {"source": 10.0, "bn": 5.0, "tent": 3.0, "eata": 1.0, "sar": 2.0, "tent+div": 3.0, "eata+div": 1.0,
               "tent+filter": 0.0, "tent+filter+div": 0.0, "eata+filter": -2.0, "eata+filter+div": -2.0}
    out = {}
    for key, methods in report.experiments(args):
        out[key] = {}
        for m in methods:
            r = {"lr": None if m in report.FIXED else 3e-4, "error": 20.0 + offsets[m] + rng.normal(0, 0.3),
                 "backward_samples": (700.0 if m.startswith("eata") else 1000.0) + rng.normal(0, 5),
                 "work": {"forward": 10, "backward": 5, "units": 20}}
            if key == "continual":
                r.update(clean_error_after=12.0 + offsets[m] + rng.normal(0, 0.3), error_by_round=[21.0, 22.0])
            if key.startswith("open_set"):
                r.update(auroc=0.7, error_by_round=[r["error"], r["error"]])
            out[key][m] = r
    return out


def _part(report, tmp_path: Path, seed: int, extra: list[str] = (), selection: dict | None = None) -> Path:
    args = report.parse(TINY + ["--seeds", str(seed), *extra])
    stem = tmp_path / f"s{seed}"
    per_seed = {seed: _seed(report, args, seed, np.random.default_rng(seed))}
    result = report.payload(args, f"seed {seed}", per_seed, selection or _selection(report, args),
                            {"test_accuracy": 0.9}, {"test_accuracy": 0.88}, 1.0, "Zen 4" if seed == 3 else "Zen 3")
    report.write(result, str(stem))
    return stem


def test_selection_chooses_the_lowest_validation_error_and_builds_only_validation_streams(report, monkeypatch):
    args = report.parse(TINY)
    splits = []
    best = {"tent": 1e-3, "eata": 1e-4, "sar": 3e-4}

    def fake_build(args, key, split, seed, models, digits):
        splits.append((key, split, seed))

        def make(name, lr):
            return lambda: (name, lr)

        def run(factory):
            name, lr = factory()
            base = name.split("+")[0]
            err = 10.0 + abs(np.log10(lr) - np.log10(best[base])) + (0.5 if "div" in name else 0.0)
            return {"error": err, "_stats": {"samples": 100, "steps": 2}}
        return {"run": run, "make": make}

    monkeypatch.setattr(report, "build", fake_build)
    sel = report.select(args, {}, None)
    assert {split for _, split, _ in splits} == {"val"} and {seed for *_, seed in splits} == {args.select_seed}
    assert list(sel) == ["per_corruption", "continual", "open_set_near", "open_set_far"]
    for key, methods in sel.items():
        assert "source" not in methods and "bn" not in methods
        for name, v in methods.items():
            assert v["chosen"] == {"lr": best[name.split("+")[0]]}, (key, name)
            assert v["candidates"] == [{"lr": 1e-4}, {"lr": 3e-4}, {"lr": 1e-3}] and len(v["val_error"]) == 3
            assert v["val_error"][v["candidates"].index(v["chosen"])] == min(v["val_error"])
            assert v["work_units"] > 0
    assert set(sel["open_set_far"]) == set(report.OPEN_METHODS) - set(report.FIXED)


def test_validation_and_test_rows_are_disjoint_and_fixed(report):
    val, test = report.split_rows(10000, 2000)
    assert len(val) == 2000 and len(test) == 8000 and not set(val) & set(test)
    assert np.array_equal(val, report.split_rows(10000, 2000)[0])
    with pytest.raises(ValueError, match="validation part"):
        report.split_rows(10, 10)


def test_far_unknowns_are_the_upsampled_digits(report):
    pytest.importorskip("sklearn")
    d = report.digits_28()
    assert d.shape == (1797, 28, 28) and d.dtype == np.float32 and d.min() >= 0.0 and d.max() <= 1.0
    from sklearn.datasets import load_digits
    small = load_digits().images / 16.0
    assert np.allclose(d[:, 0, 0], small[:, 0, 0]) and np.allclose(d[:, 27, 27], small[:, 7, 7])  # corner-aligned
    from scipy.ndimage import zoom  # bilinear (order 1), corner-aligned: the oracle

    for k in (0, 5, 1796):
        assert np.allclose(d[k], zoom(small[k], 28 / 8, order=1), atol=1e-6), k


def test_make_method_builds_every_arm(report):
    from peftc.models import SmallResNet

    model = SmallResNet((4, 8), num_classes=8, seed=0)
    for name in report.OPEN_METHODS + ("sar",):
        m = report.make_method(name, model, None, 8, 1e-3)
        assert (getattr(m, "frozen", None) is not None) == ("filter" in name), name
        assert getattr(m, "diversity_weight", 0.0) == (0.5 if "div" in name else 0.0), name
    with pytest.raises(ValueError, match="unknown method"):
        report.make_method("tent+mystery", model, None, 8, 1e-3)


def test_merge_gives_paired_verdicts_over_the_seeds(report, tmp_path):
    stems = [_part(report, tmp_path, s) for s in range(5)]
    one = json.loads(stems[0].with_suffix(".json").read_text())
    assert all(v["n_seeds"] == 1 and not v["holds"] for v in one["verdicts"])  # one seed: nothing is tested yet
    report.merge(stems, str(tmp_path / "all"))
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["config"]["seeds"] == [0, 1, 2, 3, 4] and sorted(merged["per_seed"]) == ["0", "1", "2", "3", "4"]
    assert "seed 0 + seed 1" in merged["config"]["command"] and merged["seconds"] == pytest.approx(5.0)
    v = {row["claim"]: row for row in merged["verdicts"]}
    assert len(v) == 6 + 2 * 7
    for row in v.values():
        assert set(row) >= {"claim", "holds", "p_holm", "diff", "ci95", "n_seeds"} and row["n_seeds"] == 5
    tent = v["TENT error < source error (per-corruption protocol)"]
    assert tent["holds"] and tent["diff"] == pytest.approx(-7.0, abs=0.6) and tent["ci95"][1] < 0
    assert v["EATA uses fewer backward samples than TENT (continual stream)"]["holds"]
    assert v["EATA forgets less than TENT (clean error after the continual stream)"]["holds"]
    for kind in ("near unknowns: Fashion-MNIST classes 8-9", "far unknowns: digits"):
        own = v[f"the filter lowers TENT+div's known-class error (tent+filter+div vs tent+div: the filter's own "
                f"effect), open-set stream, {kind}"]
        assert own["holds"] and own["diff"] == pytest.approx(-3.0, abs=0.6)
        div = v[f"the diversity term lowers TENT's known-class error (tent+div vs tent), open-set stream, {kind}"]
        assert not div["holds"] and abs(div["diff"]) < 0.6  # no effect planted: must not hold
    ps = sorted(row["p_holm"] for row in merged["verdicts"])
    assert ps == sorted(ps) and all(0.0 <= p <= 1.0 for p in ps)
    md = (tmp_path / "all.md").read_text()
    assert "| claim | holds | diff (A - B) | 95% CI | p (Holm) |" in md and "| tent+filter+div | 0.0003 |" in md
    assert merged["aggregate"]["per_corruption"]["tent"]["error"][0] == pytest.approx(23.0, abs=0.5)
    assert merged["cpu"] == "Zen 3 + Zen 4" and "CPU: Zen 3 + Zen 4." in md  # the parts' CPUs, not this machine's


def test_merge_refuses_other_settings_another_selection_and_repeated_seeds(report, tmp_path):
    with pytest.raises(ValueError, match="rounds"):
        report.merge([_part(report, tmp_path, 0), _part(report, tmp_path, 1, ["--rounds", "3"])], str(tmp_path / "x"))
    other = _selection(report, report.parse(TINY))
    other["continual"]["tent"]["chosen"] = {"lr": 1e-3}
    with pytest.raises(ValueError, match="selection differs"):
        report.merge([_part(report, tmp_path, 0), _part(report, tmp_path, 1, selection=other)], str(tmp_path / "x"))
    with pytest.raises(ValueError, match="repeat a seed"):
        report.merge([_part(report, tmp_path, 0), _part(report, tmp_path, 0)], str(tmp_path / "x"))


def test_a_selection_made_with_other_settings_is_refused(report, tmp_path):
    args = report.parse(TINY + ["--select-only"])
    made = report.payload(args, "select", {}, _selection(report, args), {"test_accuracy": 0.9},
                          {"test_accuracy": 0.88}, 1.0)
    report.write(made, str(tmp_path / "sel"))
    same = report.parse(TINY + ["--seeds", "3"])
    assert report.load_selection(tmp_path / "sel.json", same) == made["selection"]
    with pytest.raises(ValueError, match="lr_grid"):
        report.load_selection(tmp_path / "sel.json", report.parse(TINY + ["--lr-grid", "1e-3,1e-2"]))
    with pytest.raises(ValueError, match="val_open_known"):
        report.load_selection(tmp_path / "sel.json", report.parse(TINY + ["--val-open-known", "100"]))
