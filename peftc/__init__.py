"""peftc: parameter-efficient fine-tuning of pretrained networks on the CPU.

A plain-C core (OpenBLAS, LAPACKE) under a zero-copy NumPy wrapper, with a Hugging Face
PEFT-like API on top.

peftc's kernels run threads of their own next to OpenBLAS's. After each call an idle OpenBLAS worker
thread keeps spinning for 2^OPENBLAS_THREAD_TIMEOUT cycles (2^28, about a tenth of a second, by
default) and takes a core from them. Unless the variable is already set, importing peftc sets it to
14 (a few microseconds) before peftc loads its OpenBLAS, which reads it once. On a MiniLM LoRA
training step at 2 threads this took tokens/s from 1.21x to 1.47x torch's (benchmarks/bench_train_step.py).
It has no effect on an OpenBLAS that another module loaded first: NumPy's own copy, when NumPy was
imported before peftc.
"""
import os as _os

_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "14")

# Written by setup.py for the BLAS the extension was built against: for the default build it imports
# scipy_openblas32, which loads the wheel's OpenBLAS (reading the variable above) before the extension needs
# it; for PEFTC_BLAS=system it is empty.
from . import _distributor_init  # noqa: E402,F401  (isort: skip)

from . import data, functional, io, models, nn, openblas, optim, reference, schedule, tuners
from .openblas import get_num_threads, set_num_threads
from .random import Generator
from .train import Trainer, TrainingConfig
from .multi_adapter_train import AdapterTask, MultiAdapterTrainer
from .tuners import (BoneConfig, EvaConfig, HydraConfig, LoraConfig, MissConfig, PeftModel, SoraConfig,
                     get_eva_state_dict, get_peft_model, initialize_lora_eva_weights)

__version__ = "0.1.0"
__all__ = ["AdapterTask", "BoneConfig", "EvaConfig", "Generator", "HydraConfig", "LoraConfig", "MissConfig", "MultiAdapterTrainer", "PeftModel",
           "SoraConfig", "Trainer", "TrainingConfig", "data", "functional", "get_eva_state_dict", "get_num_threads", "get_peft_model",
           "initialize_lora_eva_weights", "io", "models", "nn", "openblas", "optim", "reference", "schedule", "set_num_threads", "tuners",
           "__version__"]
