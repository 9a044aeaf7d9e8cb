"""peftc.distill: data-free knowledge distillation of a teacher into a smaller student.

* :mod:`.kd`: the student's loss on pseudo-samples (AF-STip's CE + tau^2 KL with a confidence threshold);
* :mod:`.pseudo`: AF-STip's Gaussian-perturbed pseudo-samples around class anchors built from the teacher;
* :mod:`.deepinversion`: DeepInversion (inputs optimised against the teacher's BatchNorm statistics);
* :mod:`.dafl`: DAFL (a generator trained with the one-hot, activation and information-entropy losses).

The losses are C kernels (:func:`peftc.functional.kd_kl_forward` and the others of that section).
"""
from .kd import KDConfig, confident_rows, distill_step, student_loss

__all__ = ["KDConfig", "confident_rows", "distill_step", "student_loss"]
