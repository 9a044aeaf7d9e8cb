"""peftc: parameter-efficient fine-tuning of pretrained networks on the CPU.

A plain-C core (OpenBLAS, LAPACKE) under a zero-copy NumPy wrapper, with a Hugging Face
PEFT-like API on top.
"""
from . import functional, nn, optim, reference
from .random import Generator

__version__ = "0.1.0"
__all__ = ["Generator", "functional", "nn", "optim", "reference", "__version__"]

# transformer encoder family: the BERT encoder and its checkpoint loader
from . import models  # noqa: E402

__all__ += ["models"]
