"""A small ResNet-style BatchNorm CNN for 28x28x1 images (its training on clean Fashion-MNIST is
:func:`peftc.tta.train_source_model`: a model file does not run training).

Layout: stem conv3x3(1 -> c0)-BN-ReLU at 28x28, then one residual basic block per further width
(conv3x3 stride 2-BN-ReLU-conv3x3-BN, plus a 1x1 stride-2 conv-BN shortcut, add, ReLU):
28 -> 14 -> 7, global average pooling and a linear head. Every BatchNorm is a
:class:`peftc.nn.BatchNorm2d`, so test-time adaptation can switch them to test-batch statistics
and train their affine parameters; a BN directly followed by a ReLU is a
:class:`peftc.nn.BatchNormReLU2d` (one fused pass each way, same parameter names). A block's residual
add and ReLU run inside its last norm's pass (:meth:`peftc.nn.BatchNorm2d.forward_add_relu`); in the
backward the gradient of the sum goes to both branches and the branch gradients are summed.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from .._deprecated import moved
from ..nn import BatchNorm2d, BatchNormReLU2d, Conv2d, GlobalAvgPool2d, Linear
from ..nn.module import Module, ModuleList
from ..random import Generator

# moved to peftc.tta.source_model; the old names warn and forward until the next release
__getattr__ = moved(__name__, "peftc.tta.source_model",
                    ["SourceConfig", "evaluate_accuracy", "select_classes", "train_source_model"])


def _trainable(module: Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


class BasicBlock(Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); the shortcut is identity or conv1x1-BN."""

    def __init__(self, cin: int, cout: int, stride: int, generator: Generator) -> None:
        self.conv1 = Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, generator=generator)
        self.bn1 = BatchNormReLU2d(cout)  # bn1 then ReLU, fused
        self.conv2 = Conv2d(cout, cout, 3, padding=1, bias=False, generator=generator)
        self.bn2 = BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.short_conv = Conv2d(cin, cout, 1, stride=stride, bias=False, generator=generator)
            self.short_bn = BatchNorm2d(cout)
        else:
            self.short_conv = self.short_bn = None
        self._out: np.ndarray | None = None  # the block's output, whose positive set masks dy

    def forward(self, x: np.ndarray) -> np.ndarray:
        h = self.conv2(self.bn1(self.conv1(x)))
        # the sum and its ReLU are applied inside bn2's pass (and the shortcut norm's too): no norm output
        # is stored; each norm's backward masks dy by the block's output (its relu_out attribute)
        if self.short_conv is None:
            self._out = self.bn2.forward_add_relu(h, x)
        else:
            shortcut = self.short_conv(x)
            self._out = self.bn2.forward_add_relu(h, shortcut, self.short_bn.forward_map(shortcut))
            self.short_bn.relu_out = self._out
        return self._out

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Parameter gradients of both branches; the input gradient (their sum) as the module contract says:
        new (conv1 overwrites a fresh buffer, the shortcut adds into it), added into ``dx``, or None."""
        if self._out is None:
            raise RuntimeError("BasicBlock.backward called before forward")
        d = self.conv2.backward(self.bn2.backward(dy))
        d = self.bn1.backward(d, input_grad=input_grad or _trainable(self.conv1))
        dx = self.conv1.backward(d, dx=dx, input_grad=input_grad) if d is not None else None
        if self.short_conv is None:
            if input_grad:
                F.relu_backward(dy, self._out, dx=dx)  # the identity shortcut: dy where the block's output is positive
            return dx
        d = self.short_bn.backward(dy, input_grad=input_grad or _trainable(self.short_conv))
        if d is None:
            return None
        return self.short_conv.backward(d, dx=dx, input_grad=input_grad)  # adds into dx


class SmallResNet(Module):
    """The Fashion-MNIST source model: input (N, 1, 28, 28) float32, output (N, num_classes) logits.

    ``backward(dy, input_grad=False)`` skips the gradient of the input images (test-time adaptation
    needs only BN affine gradients).
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), num_classes: int = 10, seed: int = 0) -> None:
        g = Generator(seed)
        self.stem_conv = Conv2d(1, widths[0], 3, padding=1, bias=False, generator=g)
        self.stem_bn = BatchNormReLU2d(widths[0])  # stem BN then ReLU, fused
        self.blocks = ModuleList([BasicBlock(a, b, 2, g) for a, b in zip(widths, widths[1:])])
        self.pool = GlobalAvgPool2d()
        self.head = Linear(widths[-1], num_classes, generator=g)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.head(self.forward_features(x))

    def forward_features(self, x: np.ndarray) -> np.ndarray:
        """The pooled features (N, widths[-1]) the head reads (DAFL's activation loss reads them)."""
        return self.pool(self.forward_map(x))

    def forward_map(self, x: np.ndarray) -> np.ndarray:
        """The last block's feature map before pooling (a fusion module's input): (N, widths[-1], 7, 7) for three
        widths on 28x28 images.

        >>> SmallResNet((4, 8), 3).forward_map(np.zeros((2, 1, 28, 28), np.float32)).shape
        (2, 8, 14, 14)
        """
        if x.ndim == 3:
            x = x[:, None]
        h = self.stem_bn(self.stem_conv(np.ascontiguousarray(x, dtype=np.float32)))
        for block in self.blocks:
            h = block(h)
        return h

    def backward(self, dy: np.ndarray, *, dx: np.ndarray | None = None, input_grad: bool = True) -> np.ndarray | None:
        """Parameter gradients, and the input gradient as the module contract says (new, added into ``dx``, or
        with ``input_grad=False`` None, the stem convolution's backward then skipped altogether when its
        weight is frozen)."""
        return self.backward_features(self.head.backward(dy), dx=dx, input_grad=input_grad)

    def backward_features(self, dfeatures: np.ndarray, *, dx: np.ndarray | None = None,
                          input_grad: bool = True) -> np.ndarray | None:
        """:meth:`backward` from the gradient of :meth:`forward_features`' output (the head left out)."""
        return self.backward_map(self.pool.backward(dfeatures), dx=dx, input_grad=input_grad)

    def backward_map(self, dmap: np.ndarray, *, dx: np.ndarray | None = None,
                     input_grad: bool = True) -> np.ndarray | None:
        """:meth:`backward` from the gradient of :meth:`forward_map`'s output."""
        d = dmap
        for block in reversed(list(self.blocks)):
            d = block.backward(d)
        need = input_grad or _trainable(self.stem_conv)
        d = self.stem_bn.backward(d, input_grad=need)
        return self.stem_conv.backward(d, dx=dx, input_grad=input_grad) if need else None

    def batchnorms(self) -> list[tuple[str, BatchNorm2d]]:
        """Every BatchNorm2d with its dotted name, input to output."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, BatchNorm2d)]
