"""The files of a Hugging Face checkpoint folder, as every model's ``from_pretrained`` reads them."""
from __future__ import annotations

import os

import numpy as np


def read_checkpoint_folder(folder: str | os.PathLike) -> tuple[str, dict[str, np.ndarray]]:
    """``(path of config.json, tensors of model.safetensors)`` of ``folder``; FileNotFoundError naming the
    missing file when the folder is not a Hugging Face checkpoint folder.

    Example:
        >>> config_path, state = read_checkpoint_folder(minilm_path())  # doctest: +SKIP
    """
    from safetensors.numpy import load_file

    folder = os.fspath(folder)
    for name in ("config.json", "model.safetensors"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise FileNotFoundError(f"{folder!r} has no {name} (expected a Hugging Face checkpoint folder)")
    return os.path.join(folder, "config.json"), load_file(os.path.join(folder, "model.safetensors"))
