"""Building blocks of the CNN models: residual add, channel concat, option-A shortcut.

Each block is a :class:`~mlcvlab.nn.Module` with a hand-written backward (no
autograd graph): the branches are ordinary modules, so their ``backward``
accumulates into their own parameter gradients; the block only routes ``dy``
to the branches and sums the input gradients they return.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from mlcvlab import backend
from mlcvlab.nn import BatchNorm2d, Conv2d, Identity, Module, ReLU, Sequential, basis, init
from mlcvlab.nn.module import Kept, check_input
from mlcvlab.nn.modules import _as_defined

# Sequential runs a Residual and the ReLU right after it (a ResNet basic block's end) as one
# fused call on the CPU: the sum and the ReLU in one pass (basis.add_relu). False: the two
# layers one after the other (for A/B timing and the tests that compare both).
FUSE_RESIDUAL_RELU = True


class Residual(Module):
    """y = body(x) + shortcut(x) (He et al. 2016); the shortcut defaults to the identity.

    backward: dx = body.backward(dy) + shortcut.backward(dy), since the sum
    passes dy unchanged to both terms.
    """

    def __init__(self, body: Module, shortcut: Optional[Module] = None):
        super().__init__()
        self.body = body
        self.shortcut = Identity() if shortcut is None else shortcut

    def splits_over_batch(self) -> bool:
        return True                     # a sum per sample

    def _branches(self, x):
        y = self.body.forward(x)
        s = self.shortcut.forward(x)
        if y.shape != s.shape:
            raise ValueError(
                f"Residual: the body gives shape {y.shape} but the shortcut gives {s.shape}; "
                "use a shortcut that matches the body's stride and channels"
            )
        return y, s

    def forward(self, x):
        y, s = self._branches(x)
        return y + s

    def fuses_with(self, nxt: Module) -> bool:
        """A plain ReLU next: this class and ReLU exactly, both on the CPU, neither with its
        forward replaced (a trace wrapping either must see it called), and
        ``FUSE_RESIDUAL_RELU``."""
        return (FUSE_RESIDUAL_RELU and type(self) is Residual and type(nxt) is ReLU
                and self.device == "cpu" and nxt.device == "cpu"
                and "forward" not in self.__dict__ and _as_defined(nxt))

    def forward_fused(self, relu: Module, x):
        """``relu.forward(self.forward(x))`` with the sum and the ReLU in one pass; the ReLU
        keeps the cache its own forward would (its output, in training). The backward runs
        layer by layer, as unfused."""
        y, s = self._branches(x)
        check_input("ReLU", y)
        out, cache = basis.add_relu(y, s)
        relu._cache = cache if relu.training else None
        return out

    def backward(self, dy):
        return self.body.backward(dy) + self.shortcut.backward(dy)

    def kept_for_backward(self, in_shape, out_shape) -> Kept:
        return Kept()           # the sum needs nothing: dy goes to both terms


class Concat(Module):
    """Run every branch on the same input and concatenate along channels (axis 1).

    x: (N, C, H, W) -> y: (N, sum of branch channels, H', W'); every branch must
    give the same N, H', W'. backward splits dy by channel and sums the branches' dx.
    """

    def __init__(self, *branches: Module):
        super().__init__()
        if not branches:
            raise ValueError("Concat: expected at least one branch module")
        for i, branch in enumerate(branches):
            if not isinstance(branch, Module):
                raise TypeError(
                    f"Concat: branch {i} is a {type(branch).__name__}, expected a Module"
                )
            self.add_module(str(i), branch)
        self._splits: Optional[List[int]] = None

    def splits_over_batch(self) -> bool:
        return True                     # along channels

    def forward(self, x):
        outs = [branch.forward(x) for branch in self.children()]
        rest = {o.shape[:1] + o.shape[2:] for o in outs}
        if len(rest) != 1:
            shapes = [o.shape for o in outs]
            raise ValueError(
                f"Concat: branches must agree on every axis but channels, got shapes {shapes}; "
                "adjust their strides or padding"
            )
        self._splits = list(np.cumsum([o.shape[1] for o in outs])[:-1])
        return self.xp.concatenate(outs, axis=1)

    def backward(self, dy):
        if self._splits is None:
            raise RuntimeError("Concat.backward called before forward")
        xp = self.xp
        parts = xp.split(dy, self._splits, axis=1)
        dx = None
        for branch, part in zip(self.children(), parts):
            d = branch.backward(xp.ascontiguousarray(part))
            dx = d if dx is None else dx + d
        return dx

    def kept_for_backward(self, in_shape, out_shape) -> Kept:
        return Kept()           # the split points only


class ZeroPadShortcut(Module):
    """Option A shortcut of He et al. (2016): subsample by ``stride``, zero-pad the channels.

    x: (N, C_in, H, W) -> (N, C_out, ceil(H/s), ceil(W/s)); the C_out - C_in new
    channels are zeros, split evenly before and after the input's channels (as in
    the common CIFAR implementations). No parameters.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels or stride < 1:
            raise ValueError(
                f"ZeroPadShortcut: expected out_channels >= in_channels and stride >= 1, got "
                f"in_channels={in_channels}, out_channels={out_channels}, stride={stride}"
            )
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.pad_front = (out_channels - in_channels) // 2
        self._x_shape = None

    def splits_over_batch(self) -> bool:
        return True

    def forward(self, x):
        check_input("ZeroPadShortcut", x, ndim=(4,), dim={1: self.in_channels})
        s, lo = self.stride, self.pad_front
        sub = x[:, :, ::s, ::s]
        y = self.xp.zeros((x.shape[0], self.out_channels) + sub.shape[2:], dtype=x.dtype)
        y[:, lo:lo + self.in_channels] = sub
        self._x_shape = x.shape
        return y

    def backward(self, dy):
        s, lo = self.stride, self.pad_front
        dx = self.xp.zeros(self._x_shape, dtype=dy.dtype)
        dx[:, :, ::s, ::s] = dy[:, lo:lo + self.in_channels]
        return dx

    def kept_for_backward(self, in_shape, out_shape) -> Kept:
        return Kept()                           # the input's shape only

    def multiply_adds(self, in_shape, out_shape) -> int:
        return 0                                # a strided copy: nothing to count

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, rng=None) -> Sequential:
    """Conv (no bias: the batch norm's shift replaces it) -> BatchNorm2d -> ReLU."""
    return Sequential(
        Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False, rng=rng),
        BatchNorm2d(out_channels),
        ReLU(),
    )


def init_conv_weights(model: Module, initializer=init.he_normal, rng=None) -> Module:
    """Re-draw every Conv2d weight of ``model`` with ``initializer(shape, rng)`` in place."""
    gen = backend.rng(rng)
    for m in model.modules():
        if isinstance(m, Conv2d):
            m.weight.data[...] = initializer(m.weight.data.shape, gen)
    return model


__all__ = ["Residual", "Concat", "ZeroPadShortcut", "conv_bn_relu", "init_conv_weights"]
