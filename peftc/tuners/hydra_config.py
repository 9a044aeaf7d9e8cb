"""HydraConfig: the settings of a Hydra adapter (a parallel LoRA branch plus a sequential branch).

Hydra is not a PEFT method: its files carry ``"peft_type": "PEFTC_HYDRA"``, which PEFT refuses to
load. :func:`peftc.tuners.hydra.export_lora` writes an exactly equivalent plain LoRA file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .lora_config import LoraConfig


@dataclass
class HydraConfig(LoraConfig):
    """Hydra: ``r`` / ``lora_alpha`` set the parallel branch, ``seq_r`` / ``seq_alpha`` the sequential one.

    Defaults are the NLU reference (r_p=4, r_s=8, no scaling: alpha = rank). The reference code
    applies Hydra to a block's output projections (e.g. ``target_modules=["output.dense"]``).
    Not supported (a ValueError says so): dropout, ``lora_bias``, a trained base bias
    (``bias`` other than "none"), and ``rank_pattern`` / ``alpha_pattern``.
    """

    r: int = 4
    lora_alpha: float = 4
    seq_r: int = 8
    seq_alpha: float = 8
    peft_type: str = field(default="PEFTC_HYDRA", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.seq_r, bool) or not isinstance(self.seq_r, int) or self.seq_r <= 0:
            raise ValueError(f"HydraConfig.seq_r must be a positive integer, got {self.seq_r!r}")
        if isinstance(self.seq_alpha, bool) or not isinstance(self.seq_alpha, (int, float)) \
                or not math.isfinite(self.seq_alpha):
            raise ValueError(f"HydraConfig.seq_alpha must be a finite number, got {self.seq_alpha!r}")
        if self.lora_dropout != 0.0:
            raise ValueError(f"HydraConfig.lora_dropout must be 0 (Hydra has no dropout in peftc), "
                             f"got {self.lora_dropout!r}")
        if self.lora_bias:
            raise ValueError("HydraConfig.lora_bias must be False (no head biases in peftc's Hydra)")
        if self.bias != "none":
            raise ValueError(f"HydraConfig.bias must be 'none': the base bias also feeds the sequential branch, "
                             f"training it is not supported; got {self.bias!r}")
        if self.rank_pattern or self.alpha_pattern:
            raise ValueError("HydraConfig does not support rank_pattern / alpha_pattern; use r, lora_alpha, seq_r "
                             "and seq_alpha")
