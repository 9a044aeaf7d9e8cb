"""Decoding and a LoRA training step of a ~10M-parameter GPT-2, peftc against torch + transformers (+ PEFT).

The model on both sides: one random GPT-2 written by transformers (n_embd 256, 10 blocks of 8 heads, a
vocabulary of 8192, 256 positions: 7.9M non-embedding and 10.1M parameters in all, the token table tied to the
LM head), loaded by peftc from the folder transformers saved (``GPT2LMHeadModel.from_pretrained``), so the
weights are identical. No dropout is configured (inference, and a training step whose gradients can be
compared); the bos / eos ids are unset so that no row stops early and both sides decode every token.

Decode: one prompt of 16 tokens, 256 continuations of 32 new tokens each, sampled at temperature 1 with top-k
and top-p off. peftc: ``model.generate(prompt, 32, num_return_sequences=256, seed=...)`` (the prompt runs once,
its KV cache is repeated for the 256 rows). torch: transformers' ``generate(do_sample=True, top_k=0,
num_return_sequences=256, max_new_tokens=32)`` with its KV cache, under ``torch.inference_mode()``, which is
what a transformers user runs (it expands the prompt to 256 rows first). Before timing, greedy decoding of the
prompt gives the same tokens on both sides and the prompt's logits agree.

Train step: LoRA r = 8, lora_alpha = 16 on c_attn, c_proj, c_fc (``fan_in_fan_out=True``, PEFT's setting for
GPT-2's Conv1D), batch 16 x 128 tokens, the causal-LM loss (labels = input ids), backward, AdamW step. Before
timing, the loss and every LoRA gradient are compared with PEFT's.

Measured, same process, same thread count on both sides (OpenBLAS / OpenMP threads and
``torch.set_num_threads``), the two sides timed in alternation (``common.time_interleaved``), median of
``--repeats`` (>= 5): seconds, new tokens per second (decode), tokens per second (train) and the ratios
(torch time / peftc time). Targets (the issue): decode >= 2x, train step >= 1.5x.

``--quick`` runs the same code on a 2-block model, 8 continuations of 4 tokens and a batch of 2 x 16 only to
check the pipeline (its times mean nothing) and writes a results file only when ``--out`` is given.

Run (the lead times it on a quiet machine):
    python benchmarks/bench_decode.py [--threads 2] [--repeats 7]
    python benchmarks/bench_decode.py --quick --out /tmp/bench_decode_quick
Results: benchmarks/results/bench_decode.{json,md}, keys ``"cpu"``, ``"decode"`` and ``"train_step"`` (each with
``peftc_median_s``, ``torch_median_s``, ``ratio``, tokens per second of each side, ``target``, ``met``) and
``"check_vs_torch"``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # peftc from this checkout
import common  # noqa: E402

NAME = "bench_decode"
TARGET = {"decode": 2.0, "train_step": 1.5}


@dataclass(frozen=True)
class Workload:
    n_embd: int = 256
    n_layer: int = 10
    n_head: int = 8
    vocab_size: int = 8192
    n_positions: int = 256
    prompt_tokens: int = 16
    continuations: int = 256
    new_tokens: int = 32
    train_batch: int = 16
    train_seq: int = 128
    r: int = 8
    lora_alpha: float = 16.0
    targets: tuple[str, ...] = ("c_attn", "c_proj", "c_fc")
    lr: float = 1e-4


QUICK = Workload(n_layer=2, continuations=8, new_tokens=4, train_batch=2, train_seq=16)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="a tiny workload that only checks the pipeline runs")
    ap.add_argument("--out", default=None, help="results file stem (default benchmarks/results/bench_decode; "
                    "--quick writes nothing unless given)")
    return ap.parse_args(argv)


# ---- the two models ------------------------------------------------------------------------------------
def write_hf_model(torch: Any, w: Workload, folder: Path) -> Any:
    """A random GPT-2 from transformers (biases and LayerNorms randomised too), saved as safetensors."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    config = transformers.GPT2Config(vocab_size=w.vocab_size, n_positions=w.n_positions, n_embd=w.n_embd,
                                     n_layer=w.n_layer, n_head=w.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model.eval()


def parameter_counts(model: Any) -> dict[str, int]:
    total = sum(p.size for _, p in model.named_parameters())  # the tied head is listed once
    return {"total": int(total), "non_embedding": int(model.config.num_non_embedding_parameters())}


def lora_pair(torch: Any, w: Workload, folder: Path) -> tuple[Any, Any]:
    """peftc's and PEFT's LoRA models with the same (random, non-zero) A and B."""
    import peft
    import transformers

    from peftc import LoraConfig, get_peft_model
    from peftc.models import GPT2LMHeadModel

    kwargs = dict(r=w.r, lora_alpha=w.lora_alpha, target_modules=list(w.targets), fan_in_fan_out=True,
                  init_lora_weights=False)
    ours = get_peft_model(GPT2LMHeadModel.from_pretrained(folder), LoraConfig(**kwargs))
    twin = peft.get_peft_model(transformers.GPT2LMHeadModel.from_pretrained(folder), peft.LoraConfig(**kwargs))
    theirs = {n: p for n, p in twin.named_parameters() if "lora_" in n}
    for name, p in ours.named_parameters():
        if "lora_" in name:
            p.data[...] = theirs[_peft_name(name)].detach().numpy()
    return ours, twin


def _peft_name(name: str) -> str:
    """peftc's ...c_attn.lora_A -> PEFT's ...c_attn.lora_A.default.weight."""
    return name.replace("lora_A", "lora_A.default").replace("lora_B", "lora_B.default") + ".weight"


# ---- correctness before timing ----------------------------------------------------------------------------
def check_decode(np: Any, torch: Any, ours: Any, theirs: Any, prompt: Any, new_tokens: int) -> dict[str, Any]:
    """The prompt's logits and a greedy continuation agree."""
    logits = ours(prompt)
    with torch.inference_mode():
        t_logits = theirs(torch.from_numpy(prompt)).logits.numpy()
        t_greedy = theirs.generate(torch.from_numpy(prompt), do_sample=False, max_new_tokens=new_tokens,
                                   pad_token_id=0).numpy()
    greedy = ours.generate(prompt, new_tokens, do_sample=False)
    err = float(np.abs(logits - t_logits).max() / np.abs(t_logits).max())
    same = bool(np.array_equal(greedy, t_greedy))
    if err > 1e-4 or not same:
        raise RuntimeError(f"peftc and transformers disagree before timing: logits rel err {err:.3g}, greedy "
                           f"continuations equal: {same}")
    return {"logits_rel_err": err, "greedy_tokens_equal": same}


def check_train(np: Any, torch: Any, ours: Any, twin: Any, ids: Any) -> dict[str, float]:
    """Loss and every LoRA gradient of one step, peftc against PEFT."""
    base = ours.get_base_model()
    for p in ours.trainable_parameters():
        if p.grad is not None:
            p.grad.fill(0.0)
    loss = base.causal_lm_loss(ids)
    base.causal_lm_loss_backward()
    twin.zero_grad(set_to_none=True)
    t_loss = twin(input_ids=torch.from_numpy(ids), labels=torch.from_numpy(ids)).loss
    t_loss.backward()
    grads = {n: p.grad.numpy() for n, p in twin.named_parameters() if p.requires_grad}
    worst = max(float(np.abs(p.grad - grads[_peft_name(n)]).max() / max(np.abs(grads[_peft_name(n)]).max(), 1e-30))
                for n, p in ours.named_trainable_parameters())
    errs = {"loss_rel_err": abs(loss - t_loss.item()) / abs(t_loss.item()), "worst_gradient_rel_err": worst}
    if max(errs.values()) > 1e-3:
        raise RuntimeError(f"peftc and PEFT disagree before timing: {errs}")
    return errs


# ---- the timed steps ----------------------------------------------------------------------------------
class PeftcTrainStep:
    def __init__(self, model: Any, ids: Any, lr: float) -> None:
        from peftc.optim import AdamW

        self.base, self.ids = model.get_base_model(), ids
        self.opt = AdamW(model.trainable_parameters(), lr=lr)

    def __call__(self) -> None:
        self.opt.zero_grad()
        self.base.causal_lm_loss(self.ids)
        self.base.causal_lm_loss_backward()
        self.opt.step()


class TorchTrainStep:
    def __init__(self, torch: Any, model: Any, ids: Any, lr: float) -> None:
        self.model, self.ids = model, torch.from_numpy(ids)
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    def __call__(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.model(input_ids=self.ids, labels=self.ids).loss.backward()
        self.opt.step()


def ratio_row(t: dict, work: float, unit: str, target: float) -> dict[str, Any]:
    ratio = t["torch"]["median_s"] / t["peftc"]["median_s"]
    return {"peftc_median_s": t["peftc"]["median_s"], "torch_median_s": t["torch"]["median_s"],
            f"peftc_{unit}_per_s": work / t["peftc"]["median_s"], f"torch_{unit}_per_s": work / t["torch"]["median_s"],
            "ratio": ratio, "target": target, "met": bool(ratio >= target),
            "times_s": {k: v["times_s"] for k, v in t.items()}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    common.configure_threads(args.threads)
    import numpy as np
    import torch

    from peftc.models import GPT2LMHeadModel

    common.configure_torch_threads(torch, args.threads)
    w = QUICK if args.quick else Workload()
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, w.vocab_size, (1, w.prompt_tokens)).astype(np.int64)
    train_ids = rng.integers(0, w.vocab_size, (w.train_batch, w.train_seq)).astype(np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        theirs = write_hf_model(torch, w, folder)
        ours = GPT2LMHeadModel.from_pretrained(folder)
        counts = parameter_counts(ours)
        checks = {"decode": check_decode(np, torch, ours, theirs, prompt, min(w.new_tokens, 8))}
        lora, twin = lora_pair(torch, w, folder)
    checks["train_step"] = check_train(np, torch, lora, twin, train_ids)

    seeds = iter(range(1_000_000))

    def decode_peftc() -> None:
        ours.generate(prompt, w.new_tokens, num_return_sequences=w.continuations, seed=next(seeds))

    t_prompt = torch.from_numpy(prompt)

    def decode_torch() -> None:
        with torch.inference_mode():
            theirs.generate(t_prompt, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                            max_new_tokens=w.new_tokens, min_new_tokens=w.new_tokens,
                            num_return_sequences=w.continuations, pad_token_id=0)

    decode = common.time_interleaved({"peftc": decode_peftc, "torch": decode_torch}, args.repeats, warmup=1)
    lora.train()
    twin.train()
    train = common.time_interleaved({"peftc": PeftcTrainStep(lora, train_ids, w.lr),
                                     "torch": TorchTrainStep(torch, twin, train_ids, w.lr)}, args.repeats, warmup=1)
    env = common.environment(torch)
    return {"benchmark": NAME, "quick": bool(args.quick), "cpu": env["cpu"], "environment": env,
            "command": "python benchmarks/bench_decode.py " + " ".join(sys.argv[1:]), "threads": args.threads,
            "repeats": args.repeats, "workload": asdict(w), "parameters": counts, "check_vs_torch": checks,
            "decode": ratio_row(decode, w.continuations * w.new_tokens, "new_tokens", TARGET["decode"]),
            "train_step": ratio_row(train, w.train_batch * w.train_seq, "tokens", TARGET["train_step"])}


def render(p: dict[str, Any]) -> str:
    w, d, t = p["workload"], p["decode"], p["train_step"]
    rows = [["decode", f"{w['continuations']} x {w['new_tokens']} new tokens", d["peftc_median_s"],
             d["torch_median_s"], f"{d['ratio']:.2f}x", f">= {d['target']}x", "yes" if d["met"] else "no"],
            ["LoRA train step", f"{w['train_batch']} x {w['train_seq']} tokens", t["peftc_median_s"],
             t["torch_median_s"], f"{t['ratio']:.2f}x", f">= {t['target']}x", "yes" if t["met"] else "no"]]
    quick = "**--quick run: a pipeline check, not a timing.** " if p["quick"] else ""
    return (f"# GPT-2 decoding and LoRA training step: peftc vs torch + transformers\n\n{quick}"
            f"Model: n_embd {w['n_embd']}, {w['n_layer']} blocks, {w['n_head']} heads, vocabulary {w['vocab_size']} "
            f"({p['parameters']['total']:,} parameters, {p['parameters']['non_embedding']:,} non-embedding). "
            f"CPU: {p['cpu']}; {p['threads']} threads each side; median of {p['repeats']} interleaved repeats. "
            f"Command: `{p['command']}`\n\n"
            + common.markdown_table(["workload", "size", "peftc s", "torch s", "speed-up", "target", "met"], rows))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    payload = run(args)
    text = render(payload)
    print(text)
    if args.out is not None or not args.quick:
        from peftc.io.atomic import write_bytes_atomic

        stem = Path(args.out) if args.out else common.RESULTS_DIR / NAME
        stem.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(stem.with_suffix(".json"), (common.results_json(payload) + "\n").encode())
        write_bytes_atomic(stem.with_suffix(".md"), text.encode())
        print(f"wrote {stem.with_suffix('.json')}, {stem.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
