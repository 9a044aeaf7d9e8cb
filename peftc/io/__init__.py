"""peftc.io: generic file formats only (safetensors files, atomic writes); it imports no other peftc layer.

The PEFT key layout of adapter folders lives in :mod:`peftc.tuners.adapter_files`."""
from .safetensors import load_file, save_file

__all__ = ["load_file", "save_file"]
