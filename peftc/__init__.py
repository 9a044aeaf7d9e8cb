"""peftc: parameter-efficient fine-tuning of pretrained networks on the CPU.

A plain-C core (OpenBLAS, LAPACKE) under a zero-copy NumPy wrapper, with a Hugging Face
PEFT-like API on top.
"""
from . import data, functional, io, models, nn, optim, reference, schedule, tuners
from .random import Generator
from .train import Trainer, TrainingConfig
from .tuners import BoneConfig, HydraConfig, LoraConfig, MissConfig, PeftModel, SoraConfig, get_peft_model

__version__ = "0.1.0"
__all__ = ["BoneConfig", "Generator", "HydraConfig", "LoraConfig", "MissConfig", "PeftModel", "SoraConfig",
           "Trainer", "TrainingConfig", "data", "functional", "get_peft_model", "io", "models", "nn", "optim",
           "reference", "schedule", "tuners", "__version__"]
