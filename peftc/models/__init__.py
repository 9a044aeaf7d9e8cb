"""peftc.models: networks built from peftc.nn."""
from .cnn import BasicBlock, SmallResNet, SourceConfig, train_source_model

__all__ = ["BasicBlock", "SmallResNet", "SourceConfig", "train_source_model"]
