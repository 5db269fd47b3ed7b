"""The layers: stateful modules built on the functional basis (``basis.py``, ``conv.py``).

Each layer validates its input, keeps the forward cache in training mode and
writes parameter gradients into ``Parameter.grad`` in place during ``backward``.
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np

from mlcvlab import backend
from mlcvlab.nn import basis, init, kernels
from mlcvlab.nn.module import Module, Sequential, check_input
from mlcvlab.nn.parameter import Parameter

IntPair = Union[int, Tuple[int, int]]


def _pair(name: str, arg: str, v: IntPair, minimum: int) -> Tuple[int, int]:
    pair = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(pair) != 2 or not all(isinstance(a, (int, np.integer)) for a in pair):
        raise TypeError(f"{name}: {arg} must be an int or a pair of ints, got {v!r}")
    if any(a < minimum for a in pair):
        raise ValueError(f"{name}: {arg} must be >= {minimum}, got {v!r}")
    return int(pair[0]), int(pair[1])


def _positive(name: str, arg: str, v) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
        raise TypeError(f"{name}: {arg} must be an int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name}: {arg} must be a positive integer, got {v}")
    return int(v)


def _no_cache(layer: Module):
    raise RuntimeError(
        f"{type(layer).__name__}.backward called without a forward pass in training mode "
        "(call model.train() and forward before backward)"
    )


class Linear(Module):
    """Fully connected layer y = x W^T + b. x: (N, in_features) -> y: (N, out_features).

    Weights start from He-uniform-like bounds as in PyTorch (U(-1/sqrt(in), 1/sqrt(in))).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng=None):
        super().__init__()
        self.in_features = _positive("Linear", "in_features", in_features)
        self.out_features = _positive("Linear", "out_features", out_features)
        gen = backend.rng(rng)
        bound = 1.0 / np.sqrt(in_features)
        dtype = backend.default_dtype()
        self.weight = Parameter(
            gen.uniform(-bound, bound, (out_features, in_features)).astype(dtype))
        self.bias = (Parameter(gen.uniform(-bound, bound, out_features).astype(dtype), decay=False)
                     if bias else None)
        self._cache = None

    def forward(self, x):
        check_input("Linear", x, ndim=(2,), dim={1: self.in_features})
        b = self.bias.data if self.bias is not None else None
        y, cache = basis.linear(x, self.weight.data, b)
        self._cache = cache if self.training else None
        return y

    def backward(self, dy):
        if self._cache is None:
            _no_cache(self)
        dW_out = self.weight.grad_to_overwrite()
        db_out = self.bias.grad_to_overwrite() if self.bias is not None else None
        try:
            dx, dW, db = basis.linear_grad(dy, self._cache, input_grad=self.input_grad,
                                           dW_out=dW_out, db_out=db_out)
        except Exception:           # e.g. dy of the wrong shape: the taken gradients stay zero
            for p, taken in ((self.weight, dW_out), (self.bias, db_out)):
                if taken is not None:
                    p.zero_grad()
            raise
        if dW_out is None:
            self.weight.grad += dW
        if self.bias is not None and db_out is None:
            self.bias.grad += db
        return dx

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D convolution (cross-correlation, as in PyTorch) by im2col + GEMM.

    x: (N, in_channels, H, W) -> y: (N, out_channels, H_out, W_out),
    H_out = (H + 2·padding - kernel) // stride + 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding: IntPair = 0, bias: bool = True, rng=None):
        super().__init__()
        self.in_channels = _positive("Conv2d", "in_channels", in_channels)
        self.out_channels = _positive("Conv2d", "out_channels", out_channels)
        self.kernel_size = _pair("Conv2d", "kernel_size", kernel_size, 1)
        self.stride = _pair("Conv2d", "stride", stride, 1)
        self.padding = _pair("Conv2d", "padding", padding, 0)
        gen = backend.rng(rng)
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / np.sqrt(fan_in)
        dtype = backend.default_dtype()
        shape = (out_channels, in_channels) + self.kernel_size
        self.weight = Parameter(gen.uniform(-bound, bound, shape).astype(dtype))
        self.bias = (Parameter(gen.uniform(-bound, bound, out_channels).astype(dtype), decay=False)
                     if bias else None)
        self._cache = None

    def forward(self, x):
        from mlcvlab.nn import conv
        check_input("Conv2d", x, ndim=(4,), dim={1: self.in_channels})
        b = self.bias.data if self.bias is not None else None
        y, cache = conv.conv2d(x, self.weight.data, b, self.stride, self.padding)
        self._cache = cache if self.training else None
        return y

    def backward(self, dy):
        from mlcvlab.nn import conv
        if self._cache is None:
            _no_cache(self)
        dx, dW, db = conv.conv2d_grad(dy, self._cache, input_grad=self.input_grad)
        self.weight.grad += dW
        if self.bias is not None:
            self.bias.grad += db
        return dx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class _Pool2d(Module):
    _fn = ""

    def __init__(self, kernel_size: IntPair, stride=None, padding: IntPair = 0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _pair(name, "kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else _pair(name, "stride", stride, 1)
        self.padding = _pair(name, "padding", padding, 0)
        self._cache = None

    def forward(self, x):
        from mlcvlab.nn import conv
        check_input(type(self).__name__, x, ndim=(4,))
        y, cache = getattr(conv, self._fn)(x, self.kernel_size, self.stride, self.padding)
        self._cache = cache if self.training else None
        return y

    def backward(self, dy):
        from mlcvlab.nn import conv
        if self._cache is None:
            _no_cache(self)
        return getattr(conv, self._fn + "_grad")(dy, self._cache)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d):
    """Max over each kernel window. x: (N, C, H, W) -> (N, C, H_out, W_out)."""
    _fn = "maxpool2d"


class AvgPool2d(_Pool2d):
    """Mean over each kernel window (zero padding counted, as PyTorch's default)."""
    _fn = "avgpool2d"


class GlobalAvgPool2d(Module):
    """Mean over H and W. x: (N, C, H, W) -> (N, C)."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x):
        check_input("GlobalAvgPool2d", x, ndim=(4,))
        self._shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, dy):
        if self._shape is None:
            _no_cache(self)
        n, c, h, w = self._shape
        basis.check_dy("GlobalAvgPool2d.backward", dy, (n, c))
        dx = np.empty(self._shape, dtype=dy.dtype)
        dx[...] = (dy / (h * w))[:, :, None, None]
        return dx


class Flatten(Module):
    """x: (N, ...) -> (N, prod(...))."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x):
        check_input("Flatten", x)
        if x.ndim < 2:
            raise ValueError("Flatten: expected an input with a batch axis (N, ...), "
                             f"got shape {x.shape}")
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        if self._shape is None:
            _no_cache(self)
        basis.check_dy("Flatten.backward", dy, (self._shape[0], int(np.prod(self._shape[1:]))))
        return dy.reshape(self._shape)


class _BatchNorm(Module):
    """Batch normalization with running statistics for evaluation (as PyTorch).

    Training: normalize with the biased batch variance and update
    running = (1 - momentum)·running + momentum·batch, using the unbiased
    variance for running_var. Evaluation: normalize with the running statistics.
    """

    _ndims: Tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        name = type(self).__name__
        self.num_features = _positive(name, "num_features", num_features)
        if not eps > 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1], got {momentum}")
        self.eps, self.momentum = float(eps), float(momentum)
        dtype = backend.default_dtype()
        self.weight = Parameter(np.ones(num_features, dtype=dtype), decay=False)   # gamma
        self.bias = Parameter(np.zeros(num_features, dtype=dtype), decay=False)    # beta
        self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype=dtype))
        self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        self._cache = None

    def forward(self, x):
        name = type(self).__name__
        check_input(name, x, ndim=self._ndims, dim={1: self.num_features})
        if not self.training:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            inv_std = 1.0 / np.sqrt(self.running_var + self.eps)
            scale = (self.weight.data * inv_std).astype(x.dtype, copy=False)
            shift = (self.bias.data - self.running_mean * scale).astype(x.dtype, copy=False)
            y = np.empty(x.shape, dtype=np.result_type(x, scale))
            if kernels.available() and x.flags.c_contiguous and y.dtype == x.dtype:
                kernel = kernels.get("channel_affine")
                x3 = x.reshape(x.shape[0], x.shape[1], -1)
                y3 = y.reshape(x3.shape)
                kernels.parallel_map(lambda p: kernel(x3[p], scale, shift, y3[p]),
                                     kernels.row_parts(x))
                return y
            scale, shift = scale.reshape(shape), shift.reshape(shape)

            def affine(p: slice) -> None:               # y[p] = x[p] * scale + shift
                np.multiply(x[p], scale, out=y[p])
                y[p] += shift

            kernels.parallel_map(affine, kernels.row_parts(x))
            return y
        y, cache = basis.batchnorm(x, self.weight.data, self.bias.data, self.eps)
        self._cache = cache._replace(x=None)    # the fused backward needs x_hat, not x
        m = x.size // self.num_features
        mom = self.momentum
        self.running_mean *= 1 - mom
        self.running_mean += mom * cache.mean
        self.running_var *= 1 - mom
        self.running_var += mom * cache.var * (m / (m - 1))
        self.num_batches_tracked += 1
        return y

    def backward(self, dy):
        if self._cache is None:
            _no_cache(self)
        dx, dgamma, dbeta = basis.batchnorm_grad_fused(dy, self._cache)
        self.weight.grad += dgamma
        self.bias.grad += dbeta
        return dx

    @property
    def gamma(self) -> np.ndarray:
        return self.weight.data

    @property
    def beta(self) -> np.ndarray:
        return self.bias.data

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    """Batch norm over features. x: (N, D)."""
    _ndims = (2,)


class BatchNorm2d(_BatchNorm):
    """Batch norm per channel, statistics over (N, H, W). x: (N, C, H, W)."""
    _ndims = (4,)


class Dropout(Module):
    """Inverted dropout (Srivastava et al. 2014): p is the probability of dropping a unit.

    A fresh mask on every training forward; identity in evaluation.
    """

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        if not isinstance(p, (float, int, np.floating)) or not 0.0 <= float(p) < 1.0:
            raise ValueError(f"Dropout: p is the drop probability and must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng = backend.rng(rng)
        self._cache = None

    def forward(self, x):
        check_input("Dropout", x)
        y, self._cache = basis.dropout(x, self.p, train=self.training, rng=self.rng)
        return y

    def backward(self, dy):
        if self._cache is None:
            _no_cache(self)
        return basis.dropout_grad(dy, self._cache)

    def extra_repr(self):
        return f"p={self.p}"


class _Activation(Module):
    _fwd = None
    _bwd = None

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, x):
        check_input(type(self).__name__, x)
        y, cache = type(self)._fwd(x)
        self._cache = cache if self.training else None
        return y

    def backward(self, dy):
        if self._cache is None:
            _no_cache(self)
        return type(self)._bwd(dy, self._cache)


class ReLU(_Activation):
    """max(x, 0)."""
    _fwd, _bwd = basis.relu, basis.relu_grad


class Sigmoid(_Activation):
    """1 / (1 + exp(-x))."""
    _fwd, _bwd = basis.sigmoid, basis.sigmoid_grad


class Tanh(_Activation):
    _fwd, _bwd = basis.tanh, basis.tanh_grad


class Softmax(_Activation):
    """Softmax over the last axis."""
    _fwd, _bwd = basis.softmax, basis.softmax_grad


class LeakyReLU(Module):
    """x for x > 0, slope·x otherwise."""

    def __init__(self, slope: float = 0.01):
        super().__init__()
        if slope < 0:
            raise ValueError(f"LeakyReLU: slope must be >= 0, got {slope}")
        self.slope = float(slope)
        self._cache = None

    def forward(self, x):
        check_input("LeakyReLU", x)
        y, cache = basis.leaky_relu(x, self.slope)
        self._cache = cache if self.training else None
        return y

    def backward(self, dy):
        if self._cache is None:
            _no_cache(self)
        return basis.leaky_relu_grad(dy, self._cache)

    def extra_repr(self):
        return f"slope={self.slope}"


class Identity(Module):
    def forward(self, x):
        return x

    def backward(self, dy):
        return dy


__all__ = [
    "Module", "Parameter", "Sequential", "Linear", "Conv2d", "MaxPool2d", "AvgPool2d",
    "GlobalAvgPool2d", "Flatten", "BatchNorm1d", "BatchNorm2d", "Dropout", "ReLU", "LeakyReLU",
    "Sigmoid", "Tanh", "Softmax", "Identity", "init",
]
