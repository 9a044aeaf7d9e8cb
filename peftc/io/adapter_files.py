"""Deprecated: PEFT adapter files moved to :mod:`peftc.tuners.adapter_files` (peftc.io holds generic file
formats only). The old names resolve there with a DeprecationWarning until the next release."""
from .._deprecated import moved

__getattr__ = moved(__name__, "peftc.tuners.adapter_files",
                    ["PREFIX", "WEIGHTS_NAME", "adapter_parameters", "load_adapter_weights", "save_adapter_weights"])
