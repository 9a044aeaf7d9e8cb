"""One PromptSRC training step on MiniLM: peftc against torch + transformers, same process, same threads.

The step: prompted input branch on B glosses, prompted label branch on all C label texts (deep
prompts in the first J blocks of both), the PromptSRC loss against cached frozen features, the
backward pass to the prompts only, and an SGD step. The torch side runs the transformers
BertModel with the same prompts through a manual layer loop (peftc/testing/prompt_torch.py) under
autograd, frozen weights with requires_grad False. Repeats alternate the two sides, after a
warm-up; the median of each is reported, and the first-step losses are compared.

    PYTHONPATH=. OPENBLAS_NUM_THREADS=2 python benchmarks/bench_prompt_step.py
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from peftc.data.wordnet import CLASS_DESCRIPTIONS, CLASS_NAMES, load_wordnet_glosses
from peftc.io.atomic import write_bytes_atomic
from peftc.models import BertModel, Tokenizer, minilm_path
from peftc.optim import SGD
from peftc.prompt import PromptSRCConfig, PromptSRCDualEncoder, label_text
from peftc.testing.prompt_torch import torch_prompted_features

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--classes", type=int, default=21)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OPENBLAS_NUM_THREADS", "2")))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    model = BertModel.from_pretrained(minilm_path())
    tok = Tokenizer(minilm_path(), 64)
    labels = [label_text(n, d) for n, d in zip(CLASS_NAMES, CLASS_DESCRIPTIONS)]
    cfg = PromptSRCConfig(batch_size=args.batch, lr=0.5)
    enc = PromptSRCDualEncoder(model, tok, labels, [[t] for t in labels], cfg)
    data = load_wordnet_glosses().subsample_per_class(1, seed=0)
    texts = data.texts[:args.batch]
    classes = np.arange(args.classes)
    y = (np.arange(args.batch) % args.classes).astype(np.int64)
    u0 = enc.frozen_features(texts)
    v0 = enc.label_targets[classes]
    params = enc.prompt_params()
    opt = SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    hf = transformers.BertModel.from_pretrained(minilm_path(), add_pooling_layer=False,
                                                attn_implementation="eager").eval()
    for q in hf.parameters():
        q.requires_grad_(False)
    tl = torch.tensor(enc.label_branch.prompts.data.copy(), requires_grad=True)
    ti = torch.tensor(enc.input_branch.prompts.data.copy(), requires_grad=True)
    topt = torch.optim.SGD([tl, ti], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    w = cfg.weights
    tu0, tv0, ty = torch.tensor(u0), torch.tensor(v0), torch.tensor(y)
    f = torch.nn.functional

    def peftc_step() -> float:
        opt.zero_grad()
        terms = enc.training_step(texts, y, classes, u0)
        opt.step()
        return terms["total"]

    def torch_step() -> float:
        topt.zero_grad()
        bi = {k: torch.tensor(v) for k, v in enc._batch(texts, enc.input_branch, enc._input_slot_ids).items()}
        bl = {k: torch.tensor(v) for k, v in enc._batch([labels[c] for c in classes], enc.label_branch,
                                                         enc._label_slot_ids).items()}
        u = torch_prompted_features(torch, hf, bi["input_ids"], bi["attention_mask"], bi["token_type_ids"],
                                    bi["pool_mask"], ti)
        v = torch_prompted_features(torch, hf, bl["input_ids"], bl["attention_mask"], bl["token_type_ids"],
                                    bl["pool_mask"], tl)
        z, z0 = w.scale * u @ v.T, w.scale * tu0 @ tv0.T
        loss = (f.cross_entropy(z, ty) + w.text_l1 * (v - tv0).abs().mean() + w.input_l1 * (u - tu0).abs().mean()
                + w.kl * f.kl_div(f.log_softmax(z, 1), f.log_softmax(z0, 1), reduction="sum", log_target=True)
                / z.numel())
        loss.backward()
        topt.step()
        return float(loss.detach())

    first = (peftc_step(), torch_step())
    times: dict[str, list[float]] = {"peftc": [], "torch": []}
    for _ in range(args.repeats):
        for name, fn in (("peftc", peftc_step), ("torch", torch_step)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    tokens = {"input": int(enc._batch(texts, enc.input_branch, enc._input_slot_ids)["input_ids"].size),
              "label": int(enc._batch([labels[c] for c in classes], enc.label_branch,
                                      enc._label_slot_ids)["input_ids"].size)}
    out = {"batch": args.batch, "classes": args.classes, "threads": args.threads, "padded_tokens": tokens,
           "first_step_loss": {"peftc": first[0], "torch": first[1]}, "median_seconds": med,
           "all_seconds": times, "torch_over_peftc": med["torch"] / med["peftc"],
           "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"), "torch_version": torch.__version__,
           "load_average": os.getloadavg()}
    print(json.dumps({k: out[k] for k in ("first_step_loss", "median_seconds", "torch_over_peftc", "load_average")}))
    write_bytes_atomic(os.path.join(RESULTS, "prompt_step.json"), json.dumps(out, indent=1).encode())
    md = ["# PromptSRC training step on MiniLM: peftc vs torch + transformers", "",
          f"B = {args.batch} glosses, C = {args.classes} labels, deep prompts J = {cfg.input_depth} (input) and "
          f"{cfg.label_depth} (label), {args.threads} threads, OPENBLAS_CORETYPE={out['openblas_coretype']}, "
          f"load average at the end {tuple(round(x, 1) for x in out['load_average'])} (shared machine).", "",
          "| side | median step (s) |", "|---|---|",
          f"| peftc | {med['peftc']:.3f} |", f"| torch {torch.__version__} | {med['torch']:.3f} |", "",
          f"torch / peftc = {out['torch_over_peftc']:.2f}; first-step loss peftc {first[0]:.6f}, torch {first[1]:.6f}.",
          "", "Command: `PYTHONPATH=. OPENBLAS_NUM_THREADS=2 python benchmarks/bench_prompt_step.py`", ""]
    write_bytes_atomic(os.path.join(RESULTS, "prompt_step.md"), "\n".join(md).encode())


if __name__ == "__main__":
    main()
