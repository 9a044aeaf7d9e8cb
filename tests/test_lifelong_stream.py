"""Lifelong adaptation over a tiny stream (a 2-block BERT, keyword tasks): every replay policy, its cost counts,
the pool bound, determinism, snapshots; and benchmarks/adapt_inf_stream.py end to end on the real stream."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from peftc.data.wordnet import DEFAULT_ROOT
from peftc.lifelong.adapt_inf import AdaptInfConfig
from peftc.lifelong.network import StreamNetwork
from peftc.lifelong.stream import StreamMethod, TrainSettings, accuracy_matrix, prepare_task, run_stream
from tests.benchmark_scripts import load_benchmark
from tests.fscil_toys import keyword_texts, tiny_bert, tokenize

SETTINGS = TrainSettings(epochs=2, batch_size=8, lr=5e-3, proj_dim=64)


def make_net(seed: int) -> StreamNetwork:
    return StreamNetwork(tiny_bert(0), adapted_blocks=1, r=2, lora_alpha=4.0, seed=seed)


@pytest.fixture(scope="module")
def data():
    net = make_net(0)
    tasks = []
    for t, classes in enumerate([(0, 1, 2), (3, 4), (5, 6, 7)]):
        splits = {}
        for part, per, off in (("train", 8, 0), ("validation", 2, 50), ("test", 4, 100)):
            texts, labels = keyword_texts(classes, per, seed=10 * t + off)
            splits[part] = (texts, labels - classes[0])
        tasks.append(prepare_task(f"toy{t}", len(classes), net, tokenize, splits))
    return tasks


def test_replay_policies_count_what_they_train(data):
    seen = np.cumsum([len(t.train) for t in data])
    seq, _ = run_stream(make_net, data, StreamMethod("seq", "sequential"), SETTINGS, seed=0)
    assert seq.trained == [len(t.train) for t in data] and seq.backward_passes == 2 * sum(seq.trained)
    full, _ = run_stream(make_net, data, StreamMethod("full", "full_replay"), SETTINGS, seed=0)
    assert full.trained == seen.tolist() and full.backward_passes == 2 * int(seen.sum())
    rnd, _ = run_stream(make_net, data, StreamMethod("rnd", "random", 0.5), SETTINGS, seed=0)
    assert rnd.trained == [int(round(0.5 * s)) for s in seen]


def test_adapt_inf_scores_the_pool_keeps_its_bound_and_is_deterministic(data):
    method = StreamMethod("ai", "adapt_inf", 0.5, AdaptInfConfig(k=3, pool_bound=30, dedup_threshold=None))
    a, net = run_stream(make_net, data, method, SETTINGS, seed=1)
    b, _ = run_stream(make_net, data, method, SETTINGS, seed=1)
    assert a.scored == [24, 40, 54] and a.pool_sizes == [24, 30, 30]
    assert a.trained == [12, 20, 30]  # half of everything seen (24, 40, 64), at most the pool kept
    assert a.backward_passes == sum(a.scored) + 2 * sum(a.trained)
    assert a.block_backwards == sum(a.scored) + 2 * sum(a.trained) * 1
    assert [i["k"] for i in a.info] == [3, 3, 3] and all(set(i["selectors"]) <= {"", "entropy", "el2n", "grad_norm",
                                                                                  "loss"} for i in a.info)
    acc = accuracy_matrix(a, net, data, "test")
    assert np.array_equal(acc, accuracy_matrix(b, net, data, "test"), equal_nan=True)  # same seed, same snapshots
    assert all(np.array_equal(p, q) for s, t in zip(a.snapshots, b.snapshots) for p, q in zip(s, t))
    assert np.isnan(acc[0, 1:]).all() and not np.isnan(np.tril(acc)).any()
    noprune = StreamMethod("np", "adapt_inf", 0.5, AdaptInfConfig(k=3, pool_bound=30, prune=False))
    c, _ = run_stream(make_net, data, noprune, SETTINGS, seed=1)
    assert c.pool_sizes == [24, 40, 64]


def test_full_replay_learns_the_keyword_tasks_and_snapshots_restore(data):
    run, net = run_stream(make_net, data, StreamMethod("full", "full_replay"), SETTINGS, seed=0)
    before = [p.data.copy() for p in net.trainable()]
    acc = accuracy_matrix(run, net, data, "test")
    assert np.nanmean(acc[-1]) > 0.6, acc  # chance is about 0.4
    assert all(np.array_equal(p.data, q) for p, q in zip(net.trainable(), before))


HAVE_DATA = (os.path.isfile(os.path.join(os.environ.get("PEFTC_WORDNET_DIR") or DEFAULT_ROOT, "data.noun"))
             and os.path.isdir(os.environ.get("PEFTC_FORTUNES_DIR") or "/usr/share/games/fortunes"))


@pytest.mark.skipif(not HAVE_DATA, reason="Debian packages wordnet-base and fortunes not installed")
def test_the_benchmark_writes_the_results_contract_and_merges_seeds(tmp_path):
    bench = load_benchmark("adapt_inf_stream")
    model = (lambda seed, s: StreamNetwork(tiny_bert(0), 1, 2, 4.0, seed), lambda n: tokenize)
    tiny = dict(methods=["sequential", "full_replay", "adapt_inf_25"], lrs=[5e-3, 1e-2], train_per_class=2,
                val_per_class=1, test_per_class=1, max_length=16, epochs=1, proj_dim=32, pool_bound=40,
                k_candidates=[2, 3], pe_cost=False)
    for seed in (0, 1):
        bench.run(bench.Settings(seeds=[seed], **tiny), tmp_path / f"s{seed}", command=f"s{seed}",
                  log=lambda *_: None, model=model)
    one = json.loads((tmp_path / "s0.json").read_text())
    assert one["cpu"] and one["verdicts"] == [] and len(one["stream"]) == 6
    merged = bench.merge([tmp_path / "s0", tmp_path / "s1"], tmp_path / "all")
    for name, m in merged["methods"].items():
        assert {"final_avg_acc", "forgetting", "backward_passes", "seconds"} <= set(m) and m["seeds"] == 2
        assert isinstance(m["backward_passes"], int) and 0.0 <= m["final_avg_acc"] <= 1.0
    assert merged["methods"]["full_replay"]["relative_gain"] == pytest.approx(100.0)
    assert [v["claim"][:22] for v in merged["verdicts"]] == ["full replay final avg ", "Adapt-inf 25% forgetti"]
    assert all(v["n_seeds"] == 2 and not v["holds"] for v in merged["verdicts"])
    for r in merged["runs"]:
        assert r["lr"] in (5e-3, 1e-2) and len(r["acc"]) == 6 and len(r["val_final_avg_acc"]) == 2
    assert "| adapt_inf_25 |" in (tmp_path / "all.md").read_text()
    with pytest.raises(ValueError, match="repeat"):
        bench.merge([tmp_path / "s0", tmp_path / "s0"], tmp_path / "bad")


def test_accuracy_after_each_step_comes_from_that_steps_snapshot(data):
    method = StreamMethod("seq", "sequential")
    fast = TrainSettings(epochs=3, batch_size=4, lr=3e-2, proj_dim=16)
    whole, net = run_stream(make_net, data, method, fast, seed=2)
    first, net1 = run_stream(make_net, data[:1], method, fast, seed=2)  # the same first step, stopped there
    assert all(np.array_equal(p, q) for p, q in zip(whole.snapshots[0], first.snapshots[0]))
    z_step0 = net1.logits(data[0].test.states, data[0].test.mask, np.zeros(len(data[0].test), np.int64))
    acc = accuracy_matrix(whole, net, data, "test")
    assert acc[0, 0] == np.mean(z_step0.argmax(axis=1) == data[0].test.labels)
    z_last = net.logits(data[0].test.states, data[0].test.mask, np.zeros(len(data[0].test), np.int64))
    assert not np.allclose(z_last, z_step0, atol=1e-3)  # the later steps did move task 0's features


def test_per_example_gradients_sum_to_the_networks_batch_gradient(data):
    net = make_net(3)
    net.add_task(data[0].num_classes)
    rng = np.random.default_rng(0)
    for layer in net.recording_layers():  # B = 0 at init would make dA vanish
        layer.lora_B.data[...] = rng.standard_normal(layer.lora_B.shape).astype(np.float32)
    split = data[0].train
    tasks = np.zeros(len(split), np.int64)
    pe = net.per_example(split.states, split.mask, split.labels, tasks)
    assert net.training  # the scoring pass ran in eval mode and restored the mode
    net.eval()
    net.zero_grad()
    net.loss_backward(split.states, split.mask, split.labels, tasks, reduction="sum", blocks=1)
    batch = np.concatenate([np.concatenate([layer.lora_A.grad.ravel(), layer.lora_B.grad.ravel()])
                            for layer in net.recording_layers()])
    err = np.abs(pe.grads.sum(axis=0) - batch).max()
    assert err < 1e-5 * max(1.0, np.abs(batch).max()), f"max abs error {err}"
    assert np.abs(pe.grads).sum(axis=1).min() > 0  # every example has its own gradient
    assert set(pe.scores) == {"entropy", "el2n", "loss"} and pe.correct.shape == (len(split),)


def test_the_cost_measurement_runs_both_sides_on_one_batch(data, monkeypatch):
    bench = load_benchmark("adapt_inf_stream")
    ran = []

    def run_once(fns, repeats=7, warmup=2):  # no timing in the suite: each side runs once, fixed "times"
        out = {}
        for name, fn in fns.items():
            fn()
            ran.append(name)
            out[name] = {"median_s": 3.0 if name.startswith("per_example") else 2.0}
        return out

    monkeypatch.setattr(bench, "time_interleaved", run_once)
    s = bench.Settings(proj_dim=16)
    cost = bench.per_example_cost(s, data, lambda seed, _: make_net(seed))
    assert ran == ["per_example_and_projection", "lora_training_step"]
    assert cost["ratio"] == 1.5 and cost["meets"] and cost["batch"] == 32
