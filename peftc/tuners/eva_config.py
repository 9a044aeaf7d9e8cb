"""EvaConfig: the settings of EVA's data-driven LoRA initialisation, field for field like PEFT's."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class EvaConfig:
    """EVA (Explained Variance Adaptation) settings, PEFT's names and defaults.

    ``rho`` (>= 1): a layer may take up to ``round(r * rho)`` ranks in the redistribution (1 means
    none). ``tau`` in [0, 1]: a component has converged when its cosine similarity to the previous
    step's is at least tau. ``use_label_mask`` / ``label_mask_value``: also drop token positions whose
    label is ``label_mask_value``. ``whiten``: divide each component by the square root of its
    singular value. ``adjust_scaling_factors``: alpha becomes ``alpha * new_rank / r`` so the LoRA
    scale alpha / r of each layer is unchanged by the redistribution.
    """

    rho: float = 2.0
    tau: float = 0.99
    use_label_mask: bool = True
    label_mask_value: int = -100
    whiten: bool = False
    adjust_scaling_factors: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field and value if a setting is out of its domain."""
        if not _is_number(self.rho) or self.rho < 1.0:
            raise ValueError(f"EvaConfig.rho must be a finite number >= 1, got {self.rho!r}")
        if not _is_number(self.tau) or not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"EvaConfig.tau must be a number in [0, 1], got {self.tau!r}")
        for name in ("use_label_mask", "whiten", "adjust_scaling_factors"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"EvaConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.label_mask_value, bool) or not isinstance(self.label_mask_value, int):
            raise ValueError(f"EvaConfig.label_mask_value must be an integer, got {self.label_mask_value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaConfig:
        if not isinstance(data, dict):
            raise ValueError(f"eva_config must be a dict or EvaConfig, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown EvaConfig field(s) {unknown}")
        return cls(**data)
