"""Kernels that split their work over threads (attention, packed-sequence attention and its training forward and
backward, GELU, LayerNorm and its
residual fusion, dropout, the bias rows of linear outputs, convolutions) give the same bits on one thread and on
two. OpenBLAS reads its thread
count once, at load, so each count runs in its own process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

# Sizes above every kernel's per-thread minimum; T = 128 also makes attention split its GEMMs by rows.
SCRIPT = r"""
import sys
import numpy as np
from peftc import functional as F
rng = np.random.default_rng(0)
B, T, H, NH = 2, 128, 64, 2
q, k, v, dout = (rng.standard_normal((B, T, H), dtype=np.float32) for _ in range(4))
mask = np.ones((B, T), dtype=np.int64)
mask[1, 100:] = 0
res = {}
for p in (0.0, 0.2):
    out, att = F.attention_forward(q, k, v, NH, mask, False, p, 3, 5)
    g = [np.zeros_like(q) for _ in range(3)]
    F.attention_backward(dout, q, k, v, att, NH, p, 3, 5, dq=g[0], dk=g[1], dv=g[2])
    res.update({f"out{p}": out, f"att{p}": att, f"dq{p}": g[0], f"dk{p}": g[1], f"dv{p}": g[2]})
x, dy = rng.standard_normal((2, 150_000), dtype=np.float32), rng.standard_normal((2, 150_000), dtype=np.float32)
res["gelu"] = F.gelu_forward(x)
res["dgelu"] = np.zeros_like(x)
F.gelu_backward(dy, x, dx=res["dgelu"])
res["gelu_tanh"] = F.gelu_tanh_forward(x)
res["dgelu_tanh"] = np.zeros_like(x)
F.gelu_tanh_backward(dy, x, dx=res["dgelu_tanh"])
res["drop"] = F.dropout_forward(x, 0.3, 9, 17)
res["ddrop"] = np.zeros_like(x)
F.dropout_backward(dy, 0.3, 9, 17, dx=res["ddrop"])
xl, dl = (a.ravel()[:700 * 384].reshape(700, 384).copy() for a in (x, dy))
w, b = rng.standard_normal(384, dtype=np.float32), rng.standard_normal(384, dtype=np.float32)
y, mean, rstd = F.layernorm_forward(xl, w, b)
res.update({"ln": y, "mean": mean, "rstd": rstd, "dln": np.ones_like(xl), "dln_w": np.ones_like(xl),
            "dw": np.ones_like(w)})  # the backward accumulates
F.layernorm_backward(dl, xl, w, mean, rstd, dx=res["dln"])
F.layernorm_backward(dl, xl, w, mean, rstd, dx=res["dln_w"], dweight=res["dw"])
# linear and LoRA outputs start as bias rows filled on the threads; zero weights leave exactly those rows
xz, wz = rng.standard_normal((3000, 64), dtype=np.float32), np.zeros((96, 64), np.float32)
bl = rng.standard_normal(96, dtype=np.float32)
res["bias_rows"] = F.linear_forward(xz, wz, bl)
res["bias"] = bl
res["ln_sum"] = xl.copy()
res["ln_res"], _, _ = F.layernorm_residual_forward(res["ln_sum"], dl, w, b)
# convolutions split their images over threads: Winograd (3x3 stride 1), im2col (stride 2), 1x1 stride 2
for name, (ic, oc, hw, k, s, p) in {"wino": (16, 16, 14, 3, 1, 1), "s2": (16, 32, 14, 3, 2, 1),
                                    "short": (16, 32, 14, 1, 2, 0)}.items():
    xc = rng.standard_normal((40, ic, hw, hw), dtype=np.float32)
    wc = rng.standard_normal((oc, ic, k, k), dtype=np.float32)
    res[name] = F.conv2d_forward(xc, wc, None, s, p)
    res["d" + name] = np.ones_like(xc)
    F.conv2d_backward(res[name], None, wc, s, p, dx=res["d" + name])
# packed sequences: enough score entries for two threads, lengths uneven so the split cuts a sequence's heads
lens = np.array([40, 3, 60, 17, 1, 90, 33], dtype=np.int64)
offs = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
qp, kp, vp = (rng.standard_normal((int(offs[-1]), 96), dtype=np.float32) for _ in range(3))
res["packed"] = F.attention_packed_forward(qp, kp, vp, offs, 3)
# training: probabilities kept (their block of a part's first pair found by the part), dropout, backward
starts = np.arange(lens.size, dtype=np.int64)
attp = np.empty(F.attention_packed_probs_size(offs, 3), dtype=np.float32)
res["packed_train"] = F.attention_packed_forward(qp, kp, vp, offs, 3, 0.2, 3, 5, starts=starts, seq_len=100, att=attp)
res["packed_att"] = attp
gp = [np.zeros_like(qp) for _ in range(3)]
F.attention_packed_backward(vp, qp, kp, vp, attp, offs, 3, 0.2, 3, 5, starts=starts, seq_len=100, dq=gp[0], dk=gp[1],
                            dv=gp[2])
res.update({"packed_dq": gp[0], "packed_dk": gp[1], "packed_dv": gp[2]})
rows = rng.permutation(3000)[:1500].astype(np.int64)
res["drop_rows"] = F.dropout_rows_forward(xz[:1500] * 1.0, rows, 0.3, 9, 17)
res["ddrop_rows"] = np.ones((1500, 64), np.float32)
F.dropout_rows_backward(xz[:1500] * 1.0, rows, 0.3, 9, 17, dx=res["ddrop_rows"])
# decoding: attention against a KV cache (pairs split over threads) and token sampling (rows split)
kc, vc = (rng.standard_normal((64, 40, 32), dtype=np.float32) for _ in range(2))
res["cached"] = F.attention_cached_forward(rng.standard_normal((64, 2, 32), dtype=np.float32), kc, vc, 30, 4)
res["tokens"], res["sample_probs"] = F.sample_tokens(rng.standard_normal((300, 50), dtype=np.float32), 0.9, 10, 0.8, 7)
# the cross-entropy's row softmax (rows split once a part holds 64k logits), its loss summed in row order
ce_labels = rng.integers(0, 4096, 64).astype(np.int64)
ce_labels[::7] = -100
ce_loss, _, res["ce_probs"] = F.cross_entropy_forward(3 * rng.standard_normal((64, 4096), dtype=np.float32), ce_labels)
res["ce_loss"] = np.array([ce_loss])
np.savez(sys.argv[1], **res)
"""


def run_with_threads(threads: int, out: Path, script: str = SCRIPT) -> dict[str, np.ndarray]:
    """Run ``script`` (which saves its arrays to the .npz path in argv[1]) on ``threads`` threads."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", script, str(out)], env=env, check=True, cwd=ROOT)
    with np.load(out) as f:
        return dict(f)


def test_threaded_kernels_give_identical_bits_on_one_and_two_threads(tmp_path):
    one = run_with_threads(1, tmp_path / "one.npz")
    two = run_with_threads(2, tmp_path / "two.npz")
    assert one.keys() == two.keys()
    for name in one:
        assert np.array_equal(one[name], two[name]), f"{name} differs between 1 and 2 threads"
    assert np.array_equal(one["bias_rows"], np.broadcast_to(one["bias"], one["bias_rows"].shape))
    assert np.abs(one["dq0.2"]).max() > 0 and np.count_nonzero(one["drop"]) < one["drop"].size
