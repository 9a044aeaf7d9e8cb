"""SoraConfig: the settings of a SoRA adapter (LoRA fields plus the gate's sparsity controls).

SoRA is not a PEFT method: its files carry ``"peft_type": "PEFTC_SORA"``, which PEFT refuses to
load. :func:`peftc.tuners.sora.prune` turns a trained SoRA adapter into a plain LoRA that PEFT reads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .lora_config import LoraConfig

LAMBDA_SCHEDULES = (None, "linear", "log_linear", "exp_linear")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class SoraConfig(LoraConfig):
    """SoRA: ``r`` is r_max, the scale is ``lora_alpha / r`` (official: r=8, alpha=16, so s=2).

    ``sparse_lambda`` (lambda1): weight of the L1 penalty ``lambda1 * sum|g| / P`` (P: all gate
    entries); its subgradient is added to the gate gradient by the layers' backward.
    ``sparse_lambda_2`` (xi): threshold of the proximal step after each gate update; the paper's
    step uses tau = lr * xi, ``sora_code_compat=True`` the official code's tau = xi with its double
    threshold (see :mod:`peftc.tuners.sora`). ``sparse_lr``: learning rate of the gates (None: the
    main rate). ``lambda_schedule`` / ``max_lambda`` / ``lambda_num``: the sparsifying schedule of xi
    over training stages (``None``: one stage at ``sparse_lambda_2``). Defaults are the official
    ``run_glue.py`` ones. ``lora_bias`` is not part of SoRA and must stay False.
    """

    r: int = 8
    lora_alpha: float = 16
    sparse_lambda: float = 1e-3
    sparse_lambda_2: float = 1e-3
    sparse_lr: float | None = None
    lambda_schedule: str | None = None
    max_lambda: float = 10.0
    lambda_num: int = 10
    sora_code_compat: bool = False
    peft_type: str = field(default="PEFTC_SORA", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_bias:
            raise ValueError("SoraConfig.lora_bias must be False: SoRA has no adapter bias")
        for name in ("sparse_lambda", "sparse_lambda_2"):
            value = getattr(self, name)
            if not _number(value) or value < 0:
                raise ValueError(f"SoraConfig.{name} must be a finite number >= 0, got {value!r}")
        if self.sparse_lr is not None and (not _number(self.sparse_lr) or self.sparse_lr <= 0):
            raise ValueError(f"SoraConfig.sparse_lr must be None or a finite number > 0, got {self.sparse_lr!r}")
        if self.lambda_schedule not in LAMBDA_SCHEDULES:
            raise ValueError(f"SoraConfig.lambda_schedule must be one of {LAMBDA_SCHEDULES}, "
                             f"got {self.lambda_schedule!r}")
        if not _number(self.max_lambda) or self.max_lambda < 0:
            raise ValueError(f"SoraConfig.max_lambda must be a finite number >= 0, got {self.max_lambda!r}")
        if isinstance(self.lambda_num, bool) or not isinstance(self.lambda_num, int) or self.lambda_num < 1:
            raise ValueError(f"SoraConfig.lambda_num must be an integer >= 1, got {self.lambda_num!r}")
        if self.lambda_schedule == "exp_linear" and not (self.sparse_lambda_2 > 0 and self.max_lambda > 0):
            raise ValueError("SoraConfig: lambda_schedule='exp_linear' needs sparse_lambda_2 > 0 and max_lambda > 0 "
                             "(it interpolates log xi)")
        if not isinstance(self.sora_code_compat, bool):
            raise ValueError(f"SoraConfig.sora_code_compat must be True or False, got {self.sora_code_compat!r}")
