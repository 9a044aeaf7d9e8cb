"""peftc.tta: test-time adaptation of BatchNorm models (Source, BNAdapt, TENT, EATA, SAR, open-set filter)."""
from .methods import EATA, SAR, TENT, BNAdapt, Source, TTAMethod, compute_fisher, configure_for_tta

__all__ = ["BNAdapt", "EATA", "SAR", "Source", "TENT", "TTAMethod", "compute_fisher", "configure_for_tta"]
