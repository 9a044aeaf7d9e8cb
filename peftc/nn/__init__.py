"""peftc.nn: layers with explicit forward and backward."""
from .linear import Linear
from .lora import LoraLinear
from .module import Module, ModuleList, Parameter

__all__ = ["Linear", "LoraLinear", "Module", "ModuleList", "Parameter"]

# -- data-trainer family: activations and losses ---------------------------------------------------
from .activation import ReLU  # noqa: E402
from .loss import CrossEntropyLoss  # noqa: E402

__all__ += ["CrossEntropyLoss", "ReLU"]
