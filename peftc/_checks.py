"""Small argument checks shared by the Python layer (the C wrapper does the array checks)."""
from __future__ import annotations

import numpy as np


def as_rows(x: np.ndarray, name: str, features: int) -> np.ndarray:
    """View x (..., features) as (rows, features) without copying; raise if that needs a copy."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[-1] != features:
        raise ValueError(f"{name} must have shape (..., {features}), got {x.shape}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (peftc never copies silently), got strides {x.strides}")
    return x.reshape(-1, features)


def check_probability(name: str, p: float) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")
    return p
