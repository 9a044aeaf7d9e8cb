"""run_sweep on a two-worker LocalCluster against the same sweep run serially: identical results bit for bit,
in config order; a worker killed mid-sweep loses no config and duplicates none; a config that raises comes back
as an error naming it while the others finish; every worker's BLAS held at the worker's thread count."""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import numpy as np
import pytest

from peftc.distributed import SweepError, blas_threads, cache_loads, run_sweep, set_blas_threads
from tests.distributed_cases import TIMEOUT, client, train_lora, write_tiny_bert  # noqa: F401  (client: fixture)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def configs(model_path: str, n: int = 8, **extra) -> list[dict]:
    return [{"model_path": model_path, "seed": 10 + i // 2, "lr": (1e-2, 3e-2)[i % 2], "steps": 6, **extra}
            for i in range(n)]


@pytest.fixture(scope="module")
def serial(model_path):
    """The sweep of configs(model_path) run in this process, one config after the other."""
    results = run_sweep(train_lora, configs(model_path), progress=False)
    assert all(r.ok for r in results) and len({r.value["losses"].tobytes() for r in results}) == 8  # all runs differ
    return results


def assert_same_runs(got: list, want: list) -> None:
    """Each result holds the same config and bit-identical losses and trained arrays as the serial one."""
    assert [r.index for r in got] == list(range(len(want)))
    for g, w in zip(got, want):
        assert g.config == w.config
        assert g.ok == w.ok, (g.error, w.error)
        if not w.ok:
            continue
        assert np.array_equal(g.value["losses"], w.value["losses"]), (g.index, g.value["losses"], w.value["losses"])
        assert sorted(g.value["state"]) == sorted(w.value["state"])
        for name, a in w.value["state"].items():
            assert np.array_equal(g.value["state"][name], a), f"config {g.index}: {name} differs"


def test_sweep_on_the_cluster_equals_the_serial_sweep_bit_for_bit(client, model_path, serial):
    parallel = run_sweep(train_lora, configs(model_path), client, timeout=TIMEOUT, progress=True)
    assert_same_runs(parallel, serial)
    pids = {r.value["pid"] for r in parallel}
    assert os.getpid() not in pids and len(pids) == 2, pids  # both workers ran tasks, none ran here
    # each worker process read the checkpoint once, however many of its tasks used it
    loads = client.run(cache_loads)
    assert all(v.get(os.path.realpath(model_path)) == 1 for v in loads.values()), loads


def fresh_token(config: dict) -> bytes:
    return os.urandom(16)


def test_equal_configs_are_separate_runs_never_served_from_a_cache(client):
    tokens = [r.unwrap() for r in run_sweep(fresh_token, [{"seed": 0}] * 3, client, timeout=TIMEOUT, progress=False)]
    assert len(set(tokens)) == 3


def test_a_config_that_raises_is_reported_with_its_config_and_the_others_finish(client, model_path):
    cfgs = configs(model_path, 4)
    cfgs[1] = {**cfgs[1], "fail": True}
    for c in (None, client):
        results = run_sweep(train_lora, cfgs, c, timeout=TIMEOUT, progress=False)
        assert [r.ok for r in results] == [True, False, True, True]
        bad = results[1]
        assert bad.config == cfgs[1] and bad.value is None
        assert bad.error.startswith("config 1 {") and "'fail': True" in bad.error, bad.error
        assert "ValueError: learning rate 0.03 rejected on purpose" in bad.error
        assert "train_lora" in bad.traceback
        with pytest.raises(SweepError, match="config 1"):
            bad.unwrap()
        assert results[2].unwrap()["losses"].shape == (6,)


def test_a_worker_killed_mid_sweep_loses_no_config_and_duplicates_none(client, model_path, serial):
    cfgs = configs(model_path, sleep=0.4)
    killed: dict = {}

    def kill_a_worker_holding_a_result() -> None:
        """SIGKILL the process of the first worker that holds a finished run's result (so that result is lost
        too), while the sweep goes on."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and not killed:
            holders = [ws for key, ws in client.who_has().items() if ws and str(key).startswith("train_lora")]
            if holders:
                addr = holders[0][0]
                pid = client.run(os.getpid, workers=[addr])[addr]
                os.kill(pid, signal.SIGKILL)
                killed.update(addr=addr, pid=pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_worker_holding_a_result, daemon=True)
    killer.start()
    results = run_sweep(train_lora, cfgs, client, timeout=TIMEOUT, progress=False)
    killer.join(TIMEOUT)
    assert killed, "no worker was killed: the sweep finished before any result appeared"
    assert len(results) == len(cfgs) and [r.config for r in results] == cfgs
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    # the killed process's results were lost with it and recomputed elsewhere: none of them came back
    assert killed["pid"] not in {r.value["pid"] for r in results}
    # sleeping does not change a run: the same results as the serial sweep without it
    assert_same_runs(results, [dataclasses.replace(w, config=c) for w, c in zip(serial, cfgs)])
    client.wait_for_workers(2, timeout=TIMEOUT)  # the nanny restarts the killed worker


def report_blas_threads(config: dict) -> int:
    return blas_threads()


def test_every_worker_runs_blas_on_its_own_thread_count(client):
    client.run(set_blas_threads, 3)  # a worker left at another count by earlier work
    assert set(client.run(blas_threads).values()) == {3}
    held = run_sweep(report_blas_threads, [{"seed": s} for s in range(4)], client, timeout=TIMEOUT, progress=False)
    assert [r.unwrap() for r in held] == [1, 1, 1, 1]  # threads_per_worker=1
    assert set(client.run(lambda: os.environ["OPENBLAS_NUM_THREADS"]).values()) == {"1"}
    two = run_sweep(report_blas_threads, [{"seed": 0}], client, timeout=TIMEOUT, progress=False, blas_threads=2)
    assert two[0].unwrap() == 2
    run_sweep(report_blas_threads, [{"seed": 0}], client, timeout=TIMEOUT, progress=False)  # back to one thread


def test_a_sweep_past_its_timeout_is_cancelled_and_names_the_unfinished(client):
    cfgs = [{"seed": 0, "sleep": 0.0}, {"seed": 1, "sleep": 4.0}]
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"run_sweep: 1 of 2 tasks unfinished after 2 s \(positions \[1\]\)"):
        run_sweep(sleep_then_seed, cfgs, client, timeout=2, progress=False)
    assert time.monotonic() - t0 < 10


def sleep_then_seed(config: dict) -> int:
    time.sleep(config["sleep"])
    return config["seed"]


def test_bad_sweep_arguments_raise_naming_the_argument():
    with pytest.raises(ValueError, match=r"configs\[1\]: every config needs an explicit int seed"):
        run_sweep(sleep_then_seed, [{"seed": 0, "sleep": 0}, {"sleep": 0}], progress=False)
    with pytest.raises(ValueError, match=r"configs\[0\]"):
        run_sweep(sleep_then_seed, [{"seed": 1.0, "sleep": 0}], progress=False)
    with pytest.raises(TypeError, match="configs must be a sequence"):
        run_sweep(sleep_then_seed, {"seed": 0}, progress=False)
    with pytest.raises(TypeError, match="train_fn must be callable"):
        run_sweep(None, [{"seed": 0}], progress=False)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        set_blas_threads(0)


class FlakyFuture:
    """A future that settles on the first wait and, like one whose worker dies right after, turns 'lost' once."""

    def __init__(self, lose_once: bool) -> None:
        self.status, self.lose_once = "pending", lose_once


def test_wait_all_waits_again_for_a_result_lost_with_its_worker(monkeypatch):
    from peftc.distributed import workers

    futures = [FlakyFuture(False), FlakyFuture(True)]
    calls = []

    def fake_wait(fs, timeout):
        calls.append(sum(f is g for f in futures for g in fs))
        for f in fs:
            f.status = "lost" if f.lose_once else "finished"
            f.lose_once = False

    monkeypatch.setattr(workers, "wait", fake_wait)
    workers.wait_all(futures, timeout=5, show_progress=False, what="run_sweep")
    assert [f.status for f in futures] == ["finished", "finished"]
    assert calls == [2, 1]  # the second wait is for the lost future only
