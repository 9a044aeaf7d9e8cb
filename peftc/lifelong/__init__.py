"""peftc.lifelong: Adapt-inf, lifelong adaptation over a stream of tasks with dynamic data selection and pruning.

- :mod:`~peftc.lifelong.network`: :class:`StreamNetwork` (frozen cached trunk, LoRA on the top blocks, a head
  per task, per-example LoRA gradients of the last block);
- :mod:`~peftc.lifelong.vectors`, :mod:`~peftc.lifelong.kmeans`, :mod:`~peftc.lifelong.selectors`,
  :mod:`~peftc.lifelong.budget`, :mod:`~peftc.lifelong.prune`: the pieces of one selection step, put together
  by :mod:`~peftc.lifelong.adapt_inf`;
- :mod:`~peftc.lifelong.stream`: running a replay policy over a task stream, with accuracy after every step;
- :mod:`~peftc.lifelong.kernels` (C) and :mod:`~peftc.lifelong.reference` (NumPy): per-example LoRA gradients and
  the k-means steps.
"""
from .adapt_inf import AdaptInfConfig, StepSelection, cluster_and_prune, sample_clusters, select_step
from .network import StreamNetwork
from .stream import StreamMethod, StreamRun, TrainSettings, accuracy_matrix, run_stream, stream_metrics

__all__ = ["AdaptInfConfig", "StepSelection", "StreamMethod", "StreamNetwork", "StreamRun", "TrainSettings",
           "accuracy_matrix", "cluster_and_prune", "run_stream", "sample_clusters", "select_step", "stream_metrics"]
