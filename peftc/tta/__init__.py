"""peftc.tta: test-time adaptation of BatchNorm models (Source, BNAdapt, TENT, EATA, SAR, open-set filter), and
the Fashion-MNIST source model they adapt (trained once, then cached)."""
from .methods import EATA, SAR, TENT, BNAdapt, Source, TTAMethod, compute_fisher, configure_for_tta
from .source_model import SourceConfig, train_source_model

__all__ = ["BNAdapt", "EATA", "SAR", "Source", "SourceConfig", "TENT", "TTAMethod", "compute_fisher",
           "configure_for_tta", "train_source_model"]
