"""peftc.prompt: deep prompt learning on a frozen text encoder, and PromptSRC on a text dual encoder."""
from __future__ import annotations

from .deep_prompts import PromptedEncoder, insert_prompt_slots, phrase_prompts, twin_encoder
from .gpa import GaussianPromptAggregator, gaussian_epoch_weights
from .losses import LossWeights, promptsrc_loss
from .promptsrc import METHODS, PromptSRCConfig, PromptSRCDualEncoder, lr_at_epoch
from .templates import LABEL_TEMPLATE, TEXT_TEMPLATES, label_text

__all__ = ["LABEL_TEMPLATE", "METHODS", "TEXT_TEMPLATES", "GaussianPromptAggregator", "LossWeights",
           "PromptSRCConfig", "PromptSRCDualEncoder", "PromptedEncoder", "gaussian_epoch_weights",
           "insert_prompt_slots", "label_text", "lr_at_epoch", "phrase_prompts", "promptsrc_loss", "twin_encoder"]
