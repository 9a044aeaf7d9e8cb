"""peftc.io: safetensors files and PEFT-format adapter folders."""
from .safetensors import load_file, save_file

__all__ = ["load_file", "save_file"]
