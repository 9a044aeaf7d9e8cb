"""peftc: parameter-efficient fine-tuning of pretrained networks on the CPU.

A plain-C core (OpenBLAS, LAPACKE) under a zero-copy NumPy wrapper, with a Hugging Face
PEFT-like API on top.
"""
from . import data, functional, io, models, nn, optim, reference, schedule, tuners
from .random import Generator
from .train import Trainer, TrainingConfig
from .tuners import (BoneConfig, EvaConfig, HydraConfig, LoraConfig, MissConfig, PeftModel, SoraConfig,
                     get_eva_state_dict, get_peft_model, initialize_lora_eva_weights)

__version__ = "0.1.0"
__all__ = ["BoneConfig", "EvaConfig", "Generator", "HydraConfig", "LoraConfig", "MissConfig", "PeftModel",
           "SoraConfig", "Trainer", "TrainingConfig", "data", "functional", "get_eva_state_dict", "get_peft_model",
           "initialize_lora_eva_weights", "io", "models", "nn", "optim", "reference", "schedule", "tuners",
           "__version__"]
