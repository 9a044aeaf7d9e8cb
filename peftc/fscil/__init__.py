"""peftc.fscil: few-shot class-incremental learning (FSCIL) on a text encoder.

- :class:`Session` (session.py): one session's labelled texts;
- :class:`FSCILLearner` (learner.py): ``fit_base``, ``add_session``, ``predict``, ``save_pretrained`` /
  ``from_pretrained``; the incremental-frozen baseline (LoRA base training, frozen encoder, cosine
  prototypes);
- :func:`run_fscil` (protocol.py) and :func:`fscil_scores` (metrics.py): the protocol and its scores (A_t per
  session, average accuracy, performance drop, last-session base / novel accuracy and harmonic mean);
- :class:`Tricks` (tricks.py): the bag of tricks' six switches (stability, adaptability, training);
- :class:`FSCILNetwork` (network.py), :class:`FSCILObjective` (objective.py), views.py: base training;
- :class:`FrozenBlockCache` (block_cache.py): each text's output of the frozen lower blocks, kept once, so the
  ``subnet`` trick's sessions run the tuned top blocks alone.

The benchmark is :mod:`peftc.data.fscil_wordnet`.
"""
from .block_cache import FrozenBlockCache
from .learner import FSCILConfig, FSCILLearner
from .metrics import FSCILScores, fscil_scores
from .network import FSCILNetwork
from .objective import FSCILObjective
from .protocol import FSCILRun, run_fscil
from .prototypes import PrototypeClassifier, class_means
from .session import Session
from .tricks import GROUPS, ORDER, Tricks

__all__ = ["GROUPS", "ORDER", "FSCILConfig", "FSCILLearner", "FSCILNetwork", "FSCILObjective", "FSCILRun",
           "FSCILScores", "FrozenBlockCache", "PrototypeClassifier", "Session", "Tricks", "class_means",
           "fscil_scores", "run_fscil"]
