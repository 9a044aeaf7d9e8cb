"""BatchNorm2d with the three statistics modes test-time adaptation needs."""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .module import Module, Parameter

MODES = ("train", "eval", "test_batch")


class BatchNorm2d(Module):
    """Batch norm over (N, H, W) per channel, like ``torch.nn.BatchNorm2d``.

    Which statistics normalise the batch (``mode``):

    * ``"train"`` (``training`` and ``use_batch_stats is None``): the batch's, and the running
      buffers are updated (momentum, unbiased variance) as torch does in ``train()``;
    * ``"eval"`` (not ``training``, ``use_batch_stats`` None or False): the running buffers, read only;
    * ``"test_batch"`` (``use_batch_stats = True``): the batch's, with the running buffers left
      alone whatever ``training`` says: BN-adapt and TENT. ``use_batch_stats = False`` forces the
      running statistics even in training.

    Set ``bn.mode = "test_batch"`` (or ``bn.use_batch_stats = True``) for TTA; a later
    ``model.train()`` / ``model.eval()`` changes ``training`` only. Without running buffers
    (``track_running_stats=False``) the batch statistics are always used. The running buffers are
    plain arrays (not Parameters), reachable through :meth:`named_buffers` and saved in :meth:`state_dict`.

    ``relu_out`` (attribute, None by default): the output of a ReLU downstream of this norm (directly,
    or after a sum such as a residual block's) whose gradient the backward's ``dy`` is. When set, the
    backward masks ``dy`` to ``relu_out > 0`` inside its kernel, which stands for that ReLU's backward
    without its pass and buffer. :meth:`forward` and :meth:`forward_map` clear it,
    :meth:`forward_add_relu` sets it to its own output; after :meth:`forward_map` the module that
    applies the map (a residual block) sets it to the ReLU's output.

    ``input_hook`` (attribute, None by default): an object with ``forward(x)``, called with the norm's
    input on every forward (whichever forward), and ``backward(dx)``, called with the input gradient the
    backward returns, into which it may add its own term. DeepInversion's statistics matching
    (:mod:`peftc.distill.deepinversion`) is one: a loss on the input of each norm of a frozen network.
    """

    _forward_kernel = staticmethod(F.batchnorm2d_forward)  # BatchNormReLU2d: the fused kernel

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        if not 0.0 <= momentum <= 1.0 or not eps > 0.0:
            raise ValueError(f"BatchNorm2d needs momentum in [0, 1] and eps > 0, got momentum={momentum}, eps={eps}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.weight = Parameter(np.ones(num_features, dtype=np.float32)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype=np.float32)) if affine else None
        self.running_mean = np.zeros(num_features, dtype=np.float32) if track_running_stats else None
        self.running_var = np.ones(num_features, dtype=np.float32) if track_running_stats else None
        self.num_batches_tracked = 0
        self.use_batch_stats: bool | None = None
        self.relu_out: np.ndarray | None = None
        self._relu_map: tuple[np.ndarray, np.ndarray] | None = None  # BatchNormReLU2d's forward sets it
        self.input_hook = None
        self._cache: tuple | None = None

    @classmethod
    def from_weights(cls, weight: np.ndarray | None, bias: np.ndarray | None, running_mean: np.ndarray | None,
                     running_var: np.ndarray | None, eps: float = 1e-5, momentum: float = 0.1) -> BatchNorm2d:
        """Wrap existing arrays (no copies); weight/bias and the running pair are each both-or-neither."""
        if (weight is None) != (bias is None) or (running_mean is None) != (running_var is None):
            raise ValueError("BatchNorm2d.from_weights: give weight and bias together, and the running pair together")
        first = next((a for a in (weight, running_mean) if a is not None), None)
        if first is None:
            raise ValueError("BatchNorm2d.from_weights: give the affine parameters or the running statistics")
        layer = cls(first.shape[0], eps, momentum, affine=weight is not None,
                    track_running_stats=running_mean is not None)
        for name, a in (("running_mean", running_mean), ("running_var", running_var)):
            if a is not None and (a.dtype != np.float32 or a.shape != first.shape or not a.flags.c_contiguous):
                raise ValueError(f"BatchNorm2d {name} must be C-contiguous float32 {first.shape}, got {a.dtype} {a.shape}")
            setattr(layer, name, a)
        if weight is not None:
            layer.weight, layer.bias = Parameter(weight), Parameter(bias)
        return layer

    @property
    def mode(self) -> str:
        if self.use_batch_stats or self.running_mean is None:
            return "train" if self.training and self.use_batch_stats is None else "test_batch"
        if self.use_batch_stats is False:
            return "eval"
        return "train" if self.training else "eval"

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"BatchNorm2d mode must be one of {MODES}, got {value!r}")
        self.training = value == "train"
        self.use_batch_stats = {"train": None, "eval": False, "test_batch": True}[value]

    def _own_buffers(self) -> list[tuple[str, np.ndarray]]:
        """The running statistics (empty without track_running_stats)."""
        if self.running_mean is None:
            return []
        return [("running_mean", self.running_mean), ("running_var", self.running_var)]

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.relu_out = self._relu_map = None
        return self._normalise(self._forward_kernel, x)

    def forward_map(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The forward without its output: the statistics (running buffers updated as the mode says, and
        cached for the backward) and the per-channel map ``(mean, scale, shift)`` with which
        :meth:`forward_add_relu` of another norm applies this one inside its own pass."""
        scale, shift = np.empty(self.num_features, np.float32), np.empty(self.num_features, np.float32)
        self.relu_out = self._relu_map = None
        self._normalise(F.batchnorm2d_forward, x, scale=scale, shift=shift, output=False)
        return self._cache[1], scale, shift

    def forward_add_relu(self, x: np.ndarray, residual: np.ndarray,
                         residual_map: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """``relu(self(x) + r)`` (a residual block's output) in one pass, without writing ``self(x)``: r is
        ``residual``, or another norm's output when ``residual_map`` is its :meth:`forward_map`. The
        same bits as the separate passes. The output becomes this norm's ``relu_out``; the norm whose map
        was applied takes it as its own ``relu_out`` too (its caller sets it)."""
        self._relu_map = None
        self.relu_out = self._normalise(F.batchnorm2d_add_relu_forward, x, residual, residual_map=residual_map)
        return self.relu_out

    def _normalise(self, kernel, x: np.ndarray, *extra, **options) -> np.ndarray | None:
        """Run a forward kernel in this layer's mode (statistics, running buffers) and cache its backward's inputs."""
        if self.input_hook is not None:
            self.input_hook.forward(x)
        mode = self.mode
        batch_stats = mode != "eval"
        update = mode == "train" and self.running_mean is not None
        run = (self.running_mean, self.running_var) if (update or not batch_stats) else (None, None)
        y, mean, rstd = kernel(x, *extra, *run, self.weight.data if self.weight is not None else None,
                               self.bias.data if self.bias is not None else None, batch_stats, self.momentum,
                               self.eps, **options)
        if update:
            self.num_batches_tracked += 1
        self._cache = (x, mean, rstd, batch_stats)
        return y

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the affine gradients (when trainable) and return dx, or None with ``input_grad=False``.

        ``dx=None``: the kernel overwrites a new ``np.empty`` buffer (no zeroing pass); ``dx`` given: the
        input gradient is added into it. ``dy`` is masked by the ReLU of :attr:`relu_out` when that is set
        (:class:`BatchNormReLU2d`: by its fused ReLU, rebuilt from the forward's per-channel map).
        """
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        x, mean, rstd, batch_stats = self._cache
        fresh = input_grad and dx is None
        if not input_grad:
            dx = None
        elif fresh:
            dx = np.empty(x.shape, dtype=np.float32)  # overwritten by the kernel
        else:
            dx = self._check_dx(dx, x.shape)
        weight = self.weight.data if self.weight is not None else None
        grads = dict(dx=dx, dweight=self.weight.grad_buffer() if self.weight is not None else None,
                     dbias=self.bias.grad_buffer() if self.bias is not None else None)
        if self.relu_out is None and self._relu_map is None:
            F.batchnorm2d_backward(dy, x, mean, rstd, weight, batch_stats, overwrite_dx=fresh, **grads)
        else:
            scale, shift = self._relu_map if self._relu_map is not None else (None, None)
            F.batchnorm2d_relu_backward(dy, self.relu_out, x, mean, rstd, weight, batch_stats, overwrite_dx=fresh,
                                        scale=scale, shift=shift, **grads)
        if self.input_hook is not None and dx is not None:
            self.input_hook.backward(dx)
        return dx

    def __repr__(self) -> str:
        return (f"BatchNorm2d({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.weight is not None}, track_running_stats={self.running_mean is not None}, "
                f"mode={self.mode!r})")
