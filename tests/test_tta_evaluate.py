"""The TTA evaluation harness: AUROC, stream batching and bookkeeping, the continual and open-set
stream builders, clean-error forgetting checks, and source models on a class subset."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import numpy as np
import pytest

from peftc.models import SmallResNet
from peftc.tta import EATA, TENT, Source, SourceConfig, train_source_model
from peftc.tta.evaluate import (UNKNOWN, Segment, auroc, clean_error, continual_stream, evaluate_corruptions,
                                max_softmax, open_set_segment, open_set_stream, rounds_of, run_stream, summarize)


class Recorder:
    """A stand-in method: predicts class round(10 * mean pixel) mod C, counts a backward per sample."""

    def __init__(self, classes: int = 10) -> None:
        self.classes = classes
        self.batches: list[np.ndarray] = []
        self.resets = 0
        self.stats = {"steps": 0, "backward_samples": 0}

    def forward_and_adapt(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(x.copy())
        self.stats["steps"] += 1
        self.stats["backward_samples"] += len(x)
        logits = np.zeros((len(x), self.classes), dtype=np.float32)
        logits[np.arange(len(x)), np.rint(10 * x.mean((1, 2, 3))).astype(int) % self.classes] = 5.0
        return logits

    def reset(self) -> None:
        self.resets += 1


def _labelled_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Images whose mean pixel is label/10, so :class:`Recorder` is right on every one."""
    y = rng.integers(0, 10, n)
    return np.repeat(y / 10.0, 28 * 28).reshape(n, 28, 28).astype(np.float32), y.astype(np.int64)


def test_auroc_matches_pairwise_count_with_ties(rng):
    known = rng.integers(0, 5, 40).astype(np.float64)
    unknown = rng.integers(0, 5, 30).astype(np.float64)
    pairs = (known[:, None] > unknown[None]).mean() + 0.5 * (known[:, None] == unknown[None]).mean()
    assert abs(auroc(known, unknown) - pairs) < 1e-12


def test_auroc_is_one_for_separated_scores_zero_reversed_half_for_ties():
    assert auroc([0.9, 0.8], [0.1, 0.2, 0.3]) == 1.0
    assert auroc([0.1], [0.9, 0.8]) == 0.0
    assert auroc([0.5, 0.5], [0.5]) == 0.5
    assert np.isnan(auroc([0.5], []))


def test_max_softmax_matches_numpy(rng):
    z = rng.standard_normal((6, 4)).astype(np.float32)
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(max_softmax(z), (p / p.sum(1, keepdims=True)).max(1), rtol=1e-6)


def test_run_stream_feeds_segments_in_order_in_batches_and_counts_per_segment(rng):
    x, y = _labelled_images(30, rng)
    segs = [Segment("a", x, y, np.arange(10)), Segment("b", x, y, np.arange(29, 9, -1))]
    m = Recorder()
    rec = run_stream(m, segs, batch_size=4)
    assert [len(b) for b in m.batches] == [4, 4, 2, 4, 4, 4, 4, 4]
    assert np.array_equal(np.concatenate(m.batches)[:, 0], x[np.r_[np.arange(10), np.arange(29, 9, -1)]])
    assert rec.steps.tolist() == [3, 5] and rec.backward_samples.tolist() == [10, 20]
    assert np.array_equal(rec.label, y[np.r_[np.arange(10), np.arange(29, 9, -1)]])
    assert summarize(rec)["error"] == 0.0 and summarize(rec, [1])["backward_samples"] == 20


def test_summarize_scores_errors_on_known_samples_only(rng):
    x, y = _labelled_images(8, rng)
    y_shown = y.copy()
    y_shown[:2] = (y[:2] + 1) % 10  # two wrong known samples
    y_shown[6:] = UNKNOWN  # the unknown ones are never counted as errors
    rec = run_stream(Recorder(), [Segment("s", x, y_shown, np.arange(8))], 8)
    out = summarize(rec)
    assert out["known"] == 6 and out["unknown"] == 2
    assert abs(out["error"] - 100.0 * 2 / 6) < 1e-9


def test_evaluate_corruptions_resets_before_every_corruption_and_severity(rng):
    x, y = _labelled_images(12, rng)
    m = Recorder()
    rows = evaluate_corruptions(m, lambda name, sev: (x, y), ["c1", "c2"], [3, 5], batch_size=5, limit=7)
    assert m.resets == 4 and len(rows) == 4
    assert [(r["corruption"], r["severity"]) for r in rows] == [("c1", 3), ("c2", 3), ("c1", 5), ("c2", 5)]
    assert all(r["known"] == 7 and r["steps"] == 2 and r["error"] == 0.0 for r in rows)


def test_continual_stream_visits_every_corruption_once_per_round_and_follows_the_seed(rng):
    x, y = _labelled_images(20, rng)
    pools = {"a": (x, y), "b": (x, y), "c": (x, y)}
    segs = continual_stream(pools, rounds=4, per_segment=6, rng=np.random.default_rng(1))
    assert len(segs) == 12 and all(len(s.index) == 6 and len(set(s.index)) == 6 for s in segs)
    for r in range(4):
        assert sorted(s.name for s in segs[3 * r:3 * r + 3]) == [f"{r}:a", f"{r}:b", f"{r}:c"]
    again = continual_stream(pools, rounds=4, per_segment=6, rng=np.random.default_rng(1))
    other = continual_stream(pools, rounds=4, per_segment=6, rng=np.random.default_rng(2))
    assert [s.name for s in again] == [s.name for s in segs]
    assert all(np.array_equal(a.index, s.index) for a, s in zip(again, segs))
    assert any(not np.array_equal(a.index, s.index) for a, s in zip(other, segs))
    rec = run_stream(Recorder(), segs, 6)
    assert rounds_of(rec) == {r: [3 * r, 3 * r + 1, 3 * r + 2] for r in range(4)}


def test_open_set_segment_mixes_known_and_unknown_per_batch_and_relabels(rng):
    y = np.repeat(np.arange(10), 10)
    x = np.zeros((100, 28, 28), np.float32)
    seg = open_set_segment("s", x, y, known_classes=[2, 3, 5], n_known=25, known_per_batch=10,
                           unknown_per_batch=4, rng=rng)
    labels = seg.labels[seg.index]
    assert len(seg.index) == 25 + 3 * 4 and len(set(seg.index)) == len(seg.index)
    batches = [labels[i:i + 14] for i in range(0, len(labels), 14)]
    assert [(int((b >= 0).sum()), int((b < 0).sum())) for b in batches] == [(10, 4), (10, 4), (5, 4)]
    assert set(labels[labels >= 0]) <= {0, 1, 2}
    assert np.array_equal(seg.labels[y == 5], np.full(10, 2)) and (seg.labels[y == 9] == UNKNOWN).all()
    with pytest.raises(ValueError, match="unknown images"):
        open_set_segment("s", x, y, [0, 1, 2, 3, 4, 5, 6, 7, 8], 60, 10, 3, rng)


def test_open_set_stream_auroc_separates_a_model_that_is_unsure_on_unknowns(rng):
    y = np.repeat(np.arange(10), 20)
    x = np.zeros((200, 28, 28), np.float32)
    x[y < 8] = (y[y < 8] / 10.0)[:, None, None]  # Recorder: confident and right on classes 0-7

    class Unsure(Recorder):
        def forward_and_adapt(self, xb):
            z = super().forward_and_adapt(xb)
            z[xb.mean((1, 2, 3)) == 0.0] = 0.0  # uniform on blank (unknown) images ... and on class 0
            return z

    segs = open_set_stream({"a": (x, y), "b": (x, y)}, list(range(8)), rounds=2, n_known=40, known_per_batch=10,
                           unknown_per_batch=5, rng=rng)
    out = summarize(run_stream(Unsure(), segs, 15))
    assert out["known"] == 160 and out["unknown"] == 80
    # class 0 images are blank too: they tie with the unknowns (uniform prediction, still argmax 0, so the
    # error is exactly 0), every other known image outscores every unknown: AUROC = 1 - (n_0 / n_known) / 2
    labels = np.concatenate([s.labels[s.index] for s in segs])
    n_0 = int((labels == 0).sum())
    assert 0 < n_0 < 160 and out["error"] == 0.0
    assert out["auroc"] == pytest.approx(1.0 - 0.5 * n_0 / 160, abs=1e-12)


@pytest.fixture(scope="module")
def tiny_model():
    model = SmallResNet((4, 8), num_classes=10, seed=0)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(3):
        model.forward(rng.random((16, 1, 28, 28), dtype=np.float32))
    model.eval()
    return model


def test_clean_error_forwards_without_adapting(tiny_model, rng):
    x, y = _labelled_images(24, rng)
    tent = TENT(tiny_model, lr=1e-2)
    before = {k: v.copy() for k, v in tent.model.state_dict().items()}
    e1 = clean_error(tent, x, y, 8)
    assert tent.stats["steps"] == 0
    assert all(np.array_equal(before[k], v) for k, v in tent.model.state_dict().items())
    assert e1 == clean_error(tent, x, y, 8)
    src = Source(tiny_model)
    expected = 100.0 * (tiny_model.forward(x[:, None]).argmax(1) != y).mean()
    assert abs(clean_error(src, x, y, 8) - expected) < 1e-9


def test_continual_stream_without_reset_adapts_and_eata_counts_fewer_backward_samples(tiny_model, rng):
    x = (rng.random((64, 28, 28), dtype=np.float32) * 0.3 + 0.6).astype(np.float32)
    y = rng.integers(0, 10, 64)
    segs = continual_stream({"a": (x, y), "b": (x[::-1].copy(), y[::-1].copy())}, 3, 32, rng)
    tent = TENT(tiny_model, lr=5e-2)
    eata = EATA(tiny_model, e0_factor=0.6, d_margin=0.9, lr=5e-2, optimizer="adam")
    rt, re = run_stream(tent, segs, 16), run_stream(eata, segs, 16)
    assert summarize(rt)["backward_samples"] == 6 * 32 and summarize(rt)["steps"] == 12
    assert summarize(re)["backward_samples"] < summarize(rt)["backward_samples"]
    assert summarize(re)["backward_samples"] == eata.stats["backward_samples"]
    assert not np.array_equal(tent.model.state_dict()["stem_bn.weight"], tiny_model.state_dict()["stem_bn.weight"])


def test_source_config_without_classes_keeps_the_old_cache_key():
    cfg = SourceConfig()
    old = {k: v for k, v in asdict(cfg).items() if k != "classes"}
    key = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert key == "94c8041d289368db"


def test_train_source_model_on_a_class_subset_relabels_and_has_that_many_outputs(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 120)
    x = (rng.random((120, 28, 28)) * 0.2 + (y[:, None, None] / 10.0)).astype(np.float32)
    cfg = SourceConfig(widths=(4, 8), epochs=2, batch_size=32, learning_rate=1e-2, classes=(7, 2, 4))
    model, info = train_source_model(cfg, cache=tmp_path, data=(x, y, x, y))
    assert model.head.weight.shape[0] == 3 and info["config"]["classes"] == (7, 2, 4)
    full, info_full = train_source_model(SourceConfig(widths=(4, 8), epochs=2, batch_size=32, learning_rate=1e-2),
                                         cache=tmp_path, data=(x, y, x, y))
    assert info_full["path"] != info["path"] and full.head.weight.shape[0] == 10
