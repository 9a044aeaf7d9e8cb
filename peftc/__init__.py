"""peftc: parameter-efficient fine-tuning of pretrained networks on the CPU.

A plain-C core (OpenBLAS, LAPACKE) under a zero-copy NumPy wrapper, with a Hugging Face
PEFT-like API on top.
"""
from . import data, functional, io, nn, optim, reference, schedule, tuners
from .random import Generator
from .train import Trainer, TrainingConfig
from .tuners import LoraConfig, PeftModel, get_peft_model

__version__ = "0.1.0"
__all__ = ["Generator", "LoraConfig", "PeftModel", "Trainer", "TrainingConfig", "data", "functional",
           "get_peft_model", "io", "nn", "optim", "reference", "schedule", "tuners", "__version__"]

# SoRA and Hydra adapters
from .tuners import HydraConfig, SoraConfig  # noqa: E402

__all__ += ["HydraConfig", "SoraConfig"]
