"""peftc.distill: data-free knowledge distillation of a teacher into a smaller student.

* :mod:`.kd`: the student's loss on pseudo-samples (AF-STip's CE + tau^2 KL with a confidence threshold);
* :mod:`.pseudo`: AF-STip's Gaussian-perturbed pseudo-samples around class anchors built from the teacher;
* :mod:`.deepinversion`: DeepInversion (inputs optimised against the teacher's BatchNorm statistics), with
  Adaptive DeepInversion's competition term (``alpha_adi``);
* :mod:`.dafl`: DAFL (a generator trained with the one-hot, activation and information-entropy losses);
* :mod:`.fusion`: the student's adaptive fusion module, OUR gated stand-in (AF-STip's formulas were not
  published) and the switchable CNN student that carries it;
* :mod:`.migrate`: migration of the distilled student to a new class;
* :mod:`.text`: the text side: a sentence classifier as teacher on input embeddings, the small encoder student
  (:class:`TextStudent`, fusion switchable) and the text anchors of the AF-STip recipe.

The losses are C kernels (:func:`peftc.functional.kd_kl_forward` and the others of that section).
"""
from .dafl import DAFLConfig, dafl_distill
from .deepinversion import DeepInversionConfig, deepinversion_distill
from .fusion import AdaptiveFusion, FusionStudent
from .kd import KDConfig, confident_rows, distill_step, student_loss
from .migrate import MigrationConfig, migrate_to_new_class
from .pseudo import AFSTipConfig, afstip_distill
from .text import EmbeddingClassifier, TextStudent, embed_tokens, token_anchors, truncated_bert

__all__ = ["AFSTipConfig", "AdaptiveFusion", "DAFLConfig", "DeepInversionConfig", "EmbeddingClassifier",
           "FusionStudent", "KDConfig", "MigrationConfig", "TextStudent", "afstip_distill", "confident_rows",
           "dafl_distill", "deepinversion_distill", "distill_step", "embed_tokens", "migrate_to_new_class",
           "student_loss", "token_anchors", "truncated_bert"]
