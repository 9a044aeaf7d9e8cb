"""peftc.nn: layers with explicit forward and backward."""
from .linear import Linear
from .lora import LoraLinear
from .module import Module, ModuleList, Parameter

__all__ = ["Linear", "LoraLinear", "Module", "ModuleList", "Parameter"]
