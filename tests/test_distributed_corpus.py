"""map_corpus on a two-worker LocalCluster: rows in input order and identical to the serial run, shards written
atomically, a run interrupted part-way resumed without recomputing the shards it had finished."""
from __future__ import annotations

import os

import numpy as np
import pytest

from peftc.distributed import cache_loads, load_shards, map_corpus
from peftc.distributed import corpus as corpus_module
from peftc.models import Tokenizer
from tests.distributed_cases import TIMEOUT, client, lora_model, sentences, write_tiny_bert  # noqa: F401

N_TEXTS, SHARD, BATCH = 50, 8, 4  # 7 shards, the last one short


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def adapter_path(model_path, tmp_path_factory):
    """A LoRA adapter with a classifier head whose B matrices are non-zero, so that it changes the encoder."""
    model = lora_model(model_path, seed=5)
    g = np.random.default_rng(5)
    for name, p in model.named_parameters():
        if p.requires_grad:
            p.data[...] = (0.5 * g.standard_normal(p.shape)).astype(np.float32)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def texts():
    return sentences(N_TEXTS, seed=3)


def one_by_one(model_path: str, adapter_path: str, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and logits of each text run alone: the reference for which row belongs to which text."""
    model = corpus_module._model(model_path, adapter_path, "logits")
    tok = Tokenizer(model_path, 256)
    emb, logits = [], []
    for t in texts:
        enc = tok([t])
        emb.append(model.bert.sentence_embedding(enc["input_ids"], enc["attention_mask"])[0])
        logits.append(model({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})[0])
    return np.stack(emb), np.stack(logits)


def test_map_corpus_on_the_cluster_equals_the_serial_run_in_input_order(client, model_path, adapter_path, texts,
                                                                         tmp_path):
    kw = dict(batch_size=BATCH, shard_size=SHARD, progress=False)
    emb_ref, logits_ref = one_by_one(model_path, adapter_path, texts)
    for output in ("embeddings", "logits"):
        serial = map_corpus(model_path, adapter_path, texts, **kw, output=output).array()
        assert serial.shape == (N_TEXTS, 16 if output == "embeddings" else 3) and serial.dtype == np.float32
        np.testing.assert_allclose(serial, emb_ref if output == "embeddings" else logits_ref, rtol=1e-4, atol=1e-5)
        out = map_corpus(model_path, adapter_path, texts, client, out_dir=tmp_path / output, timeout=TIMEOUT,
                         **kw, output=output)
        assert out.computed == list(range(7)) and out.skipped == []
        assert [os.path.basename(p) for p in out.paths] == [f"{output}-{i:05d}-of-00007.npy" for i in range(7)]
        assert np.array_equal(out.array(), serial) and np.array_equal(load_shards(tmp_path / output), serial)
    preds = map_corpus(model_path, adapter_path, texts, client, output="predictions", timeout=TIMEOUT, **kw).array()
    assert preds.dtype == np.int64 and np.array_equal(preds, logits_ref.argmax(axis=1))
    # the adapter matters (a map without it is another model), and the workers read the checkpoint once each
    plain = map_corpus(model_path, None, texts, **kw).array()
    assert np.abs(plain - emb_ref).max() > 1e-2
    loads = client.run(cache_loads)
    assert all(v.get(os.path.realpath(model_path)) == 1 for v in loads.values()), loads


def test_map_corpus_resumes_without_recomputing_finished_shards(client, model_path, adapter_path, texts, tmp_path,
                                                                  monkeypatch):
    kw = dict(batch_size=BATCH, shard_size=SHARD, progress=False)
    full = map_corpus(model_path, adapter_path, texts, **kw).array()
    real = corpus_module.compute_shard
    calls = []

    def interrupted(*args):
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run stops while shard 3 is being computed
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(corpus_module, "compute_shard", interrupted)
    out_dir = tmp_path / "emb"
    with pytest.raises(KeyboardInterrupt):
        map_corpus(model_path, adapter_path, texts, out_dir=out_dir, **kw)
    monkeypatch.undo()
    done = sorted(p for p in os.listdir(out_dir) if p.endswith(".npy"))
    assert done == [f"embeddings-{i:05d}-of-00007.npy" for i in range(3)]
    stamp = {p: (os.stat(out_dir / p).st_ino, os.stat(out_dir / p).st_mtime_ns) for p in done}

    out = map_corpus(model_path, adapter_path, texts, client, out_dir=out_dir, timeout=TIMEOUT, **kw)
    assert out.skipped == [0, 1, 2] and out.computed == [3, 4, 5, 6]
    # a recomputed shard would be a new file renamed over the old one: a new inode
    assert {p: (os.stat(out_dir / p).st_ino, os.stat(out_dir / p).st_mtime_ns) for p in done} == stamp
    assert np.array_equal(out.array(), full)
    assert sorted(os.listdir(out_dir)) == sorted(["map_corpus.json"] + [f"embeddings-{i:05d}-of-00007.npy"
                                                                         for i in range(7)])  # no temporary files
    again = map_corpus(model_path, adapter_path, texts, out_dir=out_dir, **kw)
    assert again.computed == [] and np.array_equal(again.array(), full)


def test_map_corpus_refuses_to_mix_shards_of_another_run_or_a_damaged_shard(model_path, adapter_path, texts,
                                                                             tmp_path):
    kw = dict(batch_size=BATCH, shard_size=SHARD, progress=False, out_dir=tmp_path)
    map_corpus(model_path, adapter_path, texts[:20], **kw)
    with pytest.raises(ValueError, match="holds shards of another map_corpus run.*n_texts"):
        map_corpus(model_path, adapter_path, texts, **kw)
    with pytest.raises(ValueError, match="another map_corpus run.*adapter_path"):
        map_corpus(model_path, None, texts[:20], **kw)
    shard = tmp_path / "embeddings-00001-of-00003.npy"
    np.save(shard, np.zeros((3, 16), np.float32))  # the wrong number of rows
    with pytest.raises(ValueError, match=r"embeddings-00001-of-00003.npy.*has shape \(3, 16\), expected 8 rows"):
        map_corpus(model_path, adapter_path, texts[:20], **kw)
    shard.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="embeddings-00001-of-00003.npy.*unreadable"):
        map_corpus(model_path, adapter_path, texts[:20], **kw)
    shard.unlink()
    with pytest.raises(ValueError, match="1 of 3 shards missing"):
        load_shards(tmp_path)


def test_bad_map_corpus_arguments_raise_naming_the_argument(model_path, adapter_path, texts, tmp_path):
    with pytest.raises(ValueError, match="output must be one of"):
        map_corpus(model_path, adapter_path, texts, output="tokens")
    with pytest.raises(TypeError, match="texts must be a sequence of str"):
        map_corpus(model_path, adapter_path, "one text")
    with pytest.raises(TypeError, match="texts must be a sequence of str"):
        map_corpus(model_path, adapter_path, ["a", 3])
    with pytest.raises(ValueError, match="texts is empty"):
        map_corpus(model_path, adapter_path, [])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        map_corpus(model_path, adapter_path, texts, batch_size=0)
    with pytest.raises(FileNotFoundError, match="adapter_path"):
        map_corpus(model_path, tmp_path / "none", texts)
    with pytest.raises(FileNotFoundError, match="model_path .* has no config.json"):
        map_corpus(tmp_path, None, texts, progress=False)
    with pytest.raises(ValueError, match="output='logits' needs an adapter with a classifier head.*adapter_path None"):
        map_corpus(model_path, None, texts, output="logits", progress=False)


def test_cached_base_weights_are_read_only_so_no_task_can_change_the_next_ones_model(model_path):
    from peftc.distributed import base_model

    bert = base_model(model_path)
    w = dict(bert.named_parameters())["encoder.layer.0.attention.self.query.weight"].data
    with pytest.raises(ValueError, match="read-only"):
        w += 1.0
    assert base_model(model_path, seed=1) is not bert
