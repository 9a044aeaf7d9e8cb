"""Adapter-file round trips on the tiny BERT-named twins: perturb, save, load on either side, compare.

Shared by the LoRA, MiSS (Bone/Bat), SoRA and Hydra file tests so each states only what differs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from peftc.tuners import PeftModel
from tests.conftest import assert_close, f32
from tests.lora_twins import HIDDEN, TinyBert, make_torch_twin

TOLERANCE = 1e-5  # float32 outputs of the same weights through two implementations


def perturb_trainable(model, rng, scale: float = 0.3) -> None:
    """Make every trainable tensor nonzero and different from the base model's (peftc side)."""
    for _, p in model.named_trainable_parameters():
        p.data[...] += f32(rng, *p.shape, scale=scale)


def perturb_trainable_torch(model, torch, scale: float = 0.3) -> None:
    """The same for a torch / PEFT model, from torch's own seeded generator."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen))


def sample_input(rng) -> np.ndarray:
    """A (batch 2, sequence 5, hidden) input for the twins."""
    return f32(rng, 2, 5, HIDDEN)


def peft_output(folder: Path, weights: dict[str, np.ndarray], x: np.ndarray, torch):
    """(PEFT model loaded from ``folder`` onto the torch twin, its eval output on ``x``)."""
    import peft

    theirs = peft.PeftModel.from_pretrained(make_torch_twin(torch, weights), str(folder))
    theirs.eval()
    with torch.no_grad():
        return theirs, theirs(torch.from_numpy(x)).numpy()


def check_files_load_in_peftc(folder: Path, weights: dict[str, np.ndarray], x: np.ndarray, expected: np.ndarray,
                              name: str, exact: bool = False) -> PeftModel:
    """Load ``folder`` onto a fresh peftc twin and compare its output on ``x`` with ``expected``."""
    ours = PeftModel.from_pretrained(TinyBert(weights), folder)
    tol = 0.0 if exact else TOLERANCE
    assert_close(ours(x), expected, rtol=tol, atol=tol, name=name)
    return ours


def check_files_load_in_peft(folder: Path, weights: dict[str, np.ndarray], x: np.ndarray, expected: np.ndarray,
                             name: str, torch):
    """Load ``folder`` with PEFT onto the torch twin and compare its output on ``x`` with ``expected``."""
    theirs, yt = peft_output(folder, weights, x, torch)
    assert_close(yt, expected, rtol=TOLERANCE, atol=TOLERANCE, name=name)
    return theirs
