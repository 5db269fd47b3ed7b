"""The layers: stateful modules built on the functional basis (``basis.py``, ``conv.py``).

Each layer validates its input, keeps the forward cache in training mode and
writes parameter gradients into ``Parameter.grad`` in place during ``backward``.
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import numpy as np

from mlcvlab import backend
from mlcvlab.nn import basis, init, kernels, philox, threadsplit
from mlcvlab.nn.module import Kept, Module, Sequential, check_input
from mlcvlab.nn.parameter import Parameter


def _basis(layer: Module):
    """Where ``layer``'s element-wise, linear and normalisation math lives: :mod:`nn.basis`
    on the CPU, its GPU twin :mod:`mlcvlab.gpu.basis` (same names and signatures) on
    "cuda" (imported only then)."""
    if layer.device == "cpu":
        return basis
    from mlcvlab.gpu import basis as gpu_basis
    return gpu_basis


def _conv(layer: Module):
    """Where ``layer``'s convolution and pooling math lives: :mod:`nn.conv`, or on "cuda" its
    GPU twin :mod:`mlcvlab.gpu.conv`."""
    if layer.device == "cpu":
        from mlcvlab.nn import conv
        return conv
    from mlcvlab.gpu import conv as gpu_conv
    return gpu_conv

IntPair = Union[int, Tuple[int, int]]
Shape = Tuple[int, ...]


def _size(shape: Shape) -> int:
    return int(math.prod(shape))


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
    """Fully connected layer y = x W^T + b. x: (..., in_features) -> y: (..., out_features)
    (any leading axes, as torch; (in_features,) too).

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

    def splits_over_batch(self) -> bool:
        return True                     # one row at a time

    def forward(self, x):
        check_input("Linear", x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: expected size {self.in_features} on the last axis, "
                             f"got input shape {x.shape}")
        lead = x.shape[:-1]
        if x.ndim != 2:
            x = x.reshape(int(np.prod(lead)), self.in_features)
        b = self.bias.data if self.bias is not None else None
        y, cache = _basis(self).linear(x, self.weight.data, b)
        self._cache = cache if self.training else None
        self._lead = lead
        return y if len(lead) == 1 else y.reshape(lead + (self.out_features,))

    def backward(self, dy):
        if self._cache is None:
            _no_cache(self)
        lead = self._lead
        if len(lead) != 1:
            basis.check_dy("Linear.backward", dy, lead + (self.out_features,))
            dy = dy.reshape(-1, self.out_features)
        dW_out = self.weight.grad_to_overwrite()
        db_out = self.bias.grad_to_overwrite() if self.bias is not None else None
        try:
            dx, dW, db = _basis(self).linear_grad(dy, self._cache, input_grad=self.input_grad,
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
        return dx if dx is None or len(lead) == 1 else dx.reshape(lead + (self.in_features,))

    def kept_for_backward(self, in_shape: Shape, out_shape: Shape) -> Kept:
        return Kept(input=True)                 # x, for dW = dy^T x

    def multiply_adds(self, in_shape: Shape, out_shape: Shape) -> int:
        return _size(out_shape) * self.in_features

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


def _batched(name: str, x):
    """x (N, C, H, W) as is, or an unbatched (C, H, W) with a batch axis of 1 (as torch)."""
    check_input(name, x, ndim=(3, 4))
    return (x, False) if x.ndim == 4 else (x[None], True)


class Conv2d(Module):
    """2-D convolution (cross-correlation, as in PyTorch) by im2col + GEMM.

    x: (N, in_channels, H, W) or unbatched (in_channels, H, W) -> y: (N, out_channels, H_out,
    W_out), H_out = (H + 2·padding - dilation·(kernel - 1) - 1) // stride + 1.
    ``padding``: an int, a pair, "valid" or "same" (stride 1); ``padding_mode``: "zeros",
    "reflect", "replicate" or "circular"; ``groups`` splits the channels into that many
    independent convolutions (weight (out_channels, in_channels // groups, kh, kw)).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair,
                 stride: IntPair = 1, padding=0, dilation: IntPair = 1, groups: int = 1,
                 bias: bool = True, padding_mode: str = "zeros", rng=None):
        from mlcvlab.nn import conv
        super().__init__()
        self.in_channels = _positive("Conv2d", "in_channels", in_channels)
        self.out_channels = _positive("Conv2d", "out_channels", out_channels)
        self.kernel_size = _pair("Conv2d", "kernel_size", kernel_size, 1)
        self.stride = _pair("Conv2d", "stride", stride, 1)
        self.dilation = _pair("Conv2d", "dilation", dilation, 1)
        self.groups = _positive("Conv2d", "groups", groups)
        if in_channels % self.groups or out_channels % self.groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels ({in_channels}) "
                             f"and out_channels ({out_channels})")
        if padding_mode not in conv.PADDING_MODES:
            raise ValueError(f"Conv2d: padding_mode must be one of {conv.PADDING_MODES}, "
                             f"got {padding_mode!r}")
        self.padding_mode = padding_mode
        if isinstance(padding, str):
            conv.conv_padding("Conv2d", padding, self.kernel_size, self.dilation, self.stride)
            self.padding = padding
        else:
            self.padding = _pair("Conv2d", "padding", padding, 0)
        gen = backend.rng(rng)
        fan_in = in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / np.sqrt(fan_in)
        dtype = backend.default_dtype()
        shape = (out_channels, in_channels // self.groups) + self.kernel_size
        self.weight = Parameter(gen.uniform(-bound, bound, shape).astype(dtype))
        self.bias = (Parameter(gen.uniform(-bound, bound, out_channels).astype(dtype), decay=False)
                     if bias else None)
        self._cache = None

    def splits_over_batch(self) -> bool:
        return True

    def forward(self, x):
        x, unbatched = _batched("Conv2d", x)
        check_input("Conv2d", x, dim={1: self.in_channels})
        b = self.bias.data if self.bias is not None else None
        y, cache = _conv(self).conv2d(x, self.weight.data, b, self.stride, self.padding,
                                      self.dilation, self.groups, self.padding_mode)
        self._cache = cache if self.training else None
        self._unbatched = unbatched
        return y[0] if unbatched else y

    def fuses_with(self, nxt: Module) -> bool:
        """A plain ReLU next: exactly these classes, both on the CPU, neither forward replaced
        (``_as_defined``), and ``FUSE_CONV_RELU``: the ReLU is applied in the pass that writes
        the convolution's output (one pass over the activation and one call less). Or, in
        evaluation, a batch norm that folds into this convolution (``_folds``)."""
        if type(nxt) is BatchNorm2d:
            return self._folds(nxt)
        return (FUSE_CONV_RELU and type(self) is Conv2d and type(nxt) is ReLU
                and self.device == "cpu" and nxt.device == "cpu"
                and _as_defined(self) and _as_defined(nxt))

    def fuses_with_two(self, bn: Module, relu: Module) -> bool:
        """Conv2d -> BatchNorm2d -> ReLU in evaluation: the batch norm folded into the
        convolution (``_folds``), the ReLU in the pass that writes its output."""
        return (type(relu) is ReLU and self._folds(bn) and relu.device == "cpu"
                and not relu.training and _as_defined(relu))

    def _folds(self, bn: Module) -> bool:
        """Whether the batch norm ``bn`` right after this layer folds into it: both in
        evaluation, ``bn`` normalizing with its running statistics, exactly these classes,
        on the CPU, neither forward replaced, and ``FUSE_CONV_BN_EVAL``. Folded, the
        convolution runs with W·scale and b·scale + shift (``basis.batchnorm_eval_affine``):
        the batch norm's pass over the activation disappears, and equals the two layers
        apart to float rounding."""
        return (FUSE_CONV_BN_EVAL and type(self) is Conv2d and type(bn) is BatchNorm2d
                and not self.training and not bn.training and bn.track_running_stats
                and self.device == "cpu" and bn.device == "cpu"
                and _as_defined(self) and _as_defined(bn))

    def _fold_fits(self, bn: Module, x) -> bool:
        """A batch of images and a batch norm of this layer's output channels (else the layers
        run apart, and say what does not fit)."""
        return getattr(x, "ndim", 0) == 4 and bn.num_features == self.out_channels

    def _forward_folded(self, bn: Module, x, then_relu: bool):
        """The convolution with the evaluation-mode batch norm ``bn`` folded in (and a ReLU
        after it when ``then_relu``)."""
        check_input("Conv2d", x, dim={1: self.in_channels})
        gamma, beta = bn._gamma_beta(x.dtype)
        scale, shift = basis.batchnorm_eval_affine(gamma, beta, bn.running_mean,
                                                   bn.running_var, bn.eps, x.dtype)
        W = self.weight.data * scale.reshape(-1, 1, 1, 1)
        b = shift if self.bias is None else self.bias.data * scale + shift
        y, _ = _conv(self).conv2d(x, W, b, self.stride, self.padding, self.dilation,
                                  self.groups, self.padding_mode, then_relu=then_relu)
        self._cache, self._unbatched = None, False          # as in evaluation, unfused
        return y

    def forward_fused_two(self, bn: Module, relu: Module, x):
        """``relu.forward(bn.forward(self.forward(x)))`` in evaluation, the batch norm folded
        into the convolution and the ReLU in its output pass (see :meth:`fuses_with_two`)."""
        if not self._fold_fits(bn, x):
            return relu.forward(bn.forward(self.forward(x)))
        relu._cache = None                                  # as ReLU.forward in evaluation
        return self._forward_folded(bn, x, then_relu=True)

    def forward_fused(self, relu: Module, x):
        """``relu.forward(self.forward(x))``, leaving both layers the caches their own forwards
        would (the ReLU's: its output); or, for a batch norm that folds in (``_folds``), the
        convolution with it folded."""
        if type(relu) is BatchNorm2d:                       # here: the batch norm
            if not self._fold_fits(relu, x):
                return relu.forward(self.forward(x))
            return self._forward_folded(relu, x, then_relu=False)
        if self.training != relu.training or getattr(x, "ndim", 0) != 4:
            return relu.forward(self.forward(x))
        check_input("Conv2d", x, dim={1: self.in_channels})
        b = self.bias.data if self.bias is not None else None
        y, cache = _conv(self).conv2d(x, self.weight.data, b, self.stride, self.padding,
                                      self.dilation, self.groups, self.padding_mode,
                                      then_relu=True)
        self._cache = cache if self.training else None
        self._unbatched = False
        relu._cache = basis.ActivationCache(y) if relu.training else None
        return y

    def backward(self, dy):
        if self._cache is None:
            _no_cache(self)
        dx, dW, db = _conv(self).conv2d_grad(dy[None] if self._unbatched else dy, self._cache,
                                      input_grad=self.input_grad)
        self.weight.grad += dW
        if self.bias is not None:
            self.bias.grad += db
        return dx[0] if self._unbatched and dx is not None else dx

    def kept_for_backward(self, in_shape: Shape, out_shape: Shape) -> Kept:
        """Its input, by reference (the backward rebuilds the im2col patches); a padding the
        fast path cannot do in place (asymmetric, a padding mode) or a dilation with stride 1
        keeps the padded input instead (see ``conv.conv2d``)."""
        from mlcvlab.nn import conv
        pt, pb, pl, pr = pads = conv.conv_padding("Conv2d", self.padding, self.kernel_size,
                                                  self.dilation, self.stride)
        if conv.conv2d_path(pads, self.dilation, self.stride, self.padding_mode) != "padded":
            return Kept(input=True)
        c, h, w = in_shape[-3:]
        return Kept(values=c * (h + pt + pb) * (w + pl + pr))

    def multiply_adds(self, in_shape: Shape, out_shape: Shape) -> int:
        kh, kw = self.kernel_size              # each output sees in_channels / groups inputs
        return _size(out_shape) * (self.in_channels // self.groups) * kh * kw

    def extra_repr(self):
        extra = "".join(f", {k}={getattr(self, k)}" for k, default in (
            ("dilation", (1, 1)), ("groups", 1), ("padding_mode", "zeros"))
            if getattr(self, k) != default)
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{extra}")


class _Pooling(Module):
    """What the fixed and the adaptive pools share: the kernel pair ``conv.<_fn>`` /
    ``conv.<_fn>_grad``, the output of an unbatched (C, H, W) input and the optional indices.
    (The facts are declared next to each forward, as the facts rule asks.)"""
    _fn = ""

    def _output(self, y, index, unbatched):
        """y (and the argmax indices when ``return_indices``), batch axis dropped again for an
        unbatched input."""
        self._unbatched = unbatched
        if getattr(self, "return_indices", False):
            return (y[0], index[0]) if unbatched else (y, index)
        return y[0] if unbatched else y

    def backward(self, dy):
        if self._cache is None:
            _no_cache(self)
        dy = dy[None] if self._unbatched else dy
        dx = getattr(_conv(self), self._fn + "_grad")(dy, self._cache)
        return dx[0] if self._unbatched else dx


class _Pool2d(_Pooling):

    def __init__(self, kernel_size: IntPair, stride=None, padding: IntPair = 0,
                 ceil_mode: bool = False):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _pair(name, "kernel_size", kernel_size, 1)
        self.stride = self.kernel_size if stride is None else _pair(name, "stride", stride, 1)
        self.padding = _pair(name, "padding", padding, 0)
        if self.padding[0] > self.kernel_size[0] // 2 or self.padding[1] > self.kernel_size[1] // 2:
            raise ValueError(f"{name}: padding {self.padding} must be at most half the kernel "
                             f"size {self.kernel_size} (as in PyTorch)")
        self.ceil_mode = bool(ceil_mode)
        self._cache = None

    def _options(self):
        return {"ceil_mode": self.ceil_mode}

    def splits_over_batch(self) -> bool:
        return not getattr(self, "return_indices", False)   # one output array

    def forward(self, x):
        from mlcvlab.nn import conv
        x, unbatched = _batched(type(self).__name__, x)
        y, cache = getattr(_conv(self), self._fn)(x, self.kernel_size, self.stride,
                                                  self.padding, **self._options())
        index = conv.pool_indices(cache) if getattr(self, "return_indices", False) else None
        self._cache = cache if self.training else None
        return self._output(y, index, unbatched)

    def multiply_adds(self, in_shape: Shape, out_shape: Shape) -> int:
        return 0                                # comparisons / additions: not counted

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
                + "".join(f", {k}={v}" for k, v in self._options().items()))


class MaxPool2d(_Pool2d):
    """Max over each kernel window, as torch.nn.MaxPool2d. x: (N, C, H, W) or (C, H, W) ->
    (N, C, H_out, W_out). ``padding`` (at most half the kernel) counts as -inf; ``dilation``
    spaces the window's pixels; ``ceil_mode`` rounds the output size up;
    ``return_indices=True``: forward returns (y, indices), the flat index h*W + w of each
    maximum in its input plane (backward still takes dy of y only)."""
    _fn = "maxpool2d"

    def __init__(self, kernel_size: IntPair, stride=None, padding: IntPair = 0,
                 dilation: IntPair = 1, return_indices: bool = False, ceil_mode: bool = False):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.dilation = _pair("MaxPool2d", "dilation", dilation, 1)
        self.return_indices = bool(return_indices)

    def _options(self):
        return {"dilation": self.dilation, "ceil_mode": self.ceil_mode}

    def kept_for_backward(self, in_shape: Shape, out_shape: Shape) -> Kept:
        """The position of each window's maximum: the smallest unsigned type that holds
        kh·kw - 1, or int64 plane indices on the general path."""
        from mlcvlab.nn import conv
        if conv.pool_on_general_path(in_shape[-2:], self.kernel_size, self.stride, self.padding,
                                     self.dilation, out_shape[-2:]):
            return Kept(index_bytes=8 * _size(out_shape))
        kh, kw = self.kernel_size
        return Kept(index_bytes=_size(out_shape) * np.min_scalar_type(kh * kw - 1).itemsize)


class AvgPool2d(_Pool2d):
    """Mean over each kernel window, as torch.nn.AvgPool2d. x: (N, C, H, W) or (C, H, W).
    ``count_include_pad=True`` (default): the zero padding counts in the mean; False: only the
    input pixels a window covers; ``divisor_override``: divide every window sum by it."""
    _fn = "avgpool2d"

    def __init__(self, kernel_size: IntPair, stride=None, padding: IntPair = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override=None):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)
        if divisor_override is not None and (
                not isinstance(divisor_override, (int, np.integer))
                or isinstance(divisor_override, bool) or divisor_override == 0):
            raise ValueError(f"AvgPool2d: divisor_override must be a non-zero int or None, "
                             f"got {divisor_override!r}")
        self.divisor_override = divisor_override

    def _options(self):
        return {"ceil_mode": self.ceil_mode, "count_include_pad": self.count_include_pad,
                "divisor_override": self.divisor_override}

    def kept_for_backward(self, in_shape: Shape, out_shape: Shape) -> Kept:
        """Shapes only; the general path (a ceil_mode window, a divisor override, padding not
        counted) keeps each window's float64 divisor, (Ho, Wo)."""
        from mlcvlab.nn import conv
        general = conv.avgpool_on_general_path(in_shape[-2:], self.kernel_size, self.stride,
                                               self.padding, out_shape[-2:],
                                               self.count_include_pad, self.divisor_override)
        return Kept(fixed_bytes=8 * _size(out_shape[-2:]) if general else 0)


class _AdaptivePool2d(_Pooling):

    def __init__(self, output_size):
        super().__init__()
        name = type(self).__name__
        pair = (output_size, output_size) if output_size is None or np.isscalar(output_size) \
            else tuple(output_size)
        if len(pair) != 2 or not all(v is None or (isinstance(v, (int, np.integer))
                                                   and not isinstance(v, bool) and v >= 0)
                                     for v in pair):
            raise ValueError(f"{name}: output_size must be a non-negative int, None or a pair "
                             f"of them, got {output_size!r}")
        self.output_size = output_size
        self._cache = None

    def splits_over_batch(self) -> bool:
        return not getattr(self, "return_indices", False)

    def forward(self, x):
        x, unbatched = _batched(type(self).__name__, x)
        y, cache = getattr(_conv(self), self._fn)(x, self.output_size)
        self._cache = cache if self.training else None
        index = cache.index if getattr(self, "return_indices", False) else None
        return self._output(y, index, unbatched)

    def multiply_adds(self, in_shape: Shape, out_shape: Shape) -> int:
        return 0                                # comparisons / additions: not counted

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """Mean over torch's adaptive windows (rows floor(i·H/Ho) to ceil((i+1)·H/Ho), likewise
    columns): x (N, C, H, W) or (C, H, W) -> (..., *output_size); None keeps that axis."""
    _fn = "adaptive_avgpool2d"

    def kept_for_backward(self, in_shape: Shape, out_shape: Shape) -> Kept:
        return Kept()                           # shapes only


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """Max over torch's adaptive windows; ``return_indices`` as MaxPool2d."""
    _fn = "adaptive_maxpool2d"

    def __init__(self, output_size, return_indices: bool = False):
        super().__init__(output_size)
        self.return_indices = bool(return_indices)

    def kept_for_backward(self, in_shape: Shape, out_shape: Shape) -> Kept:
        return Kept(index_bytes=8 * _size(out_shape))     # int64 plane index of each maximum


class GlobalAvgPool2d(Module):
    """Mean over H and W. x: (N, C, H, W) -> (N, C)."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def splits_over_batch(self) -> bool:
        return True

    def forward(self, x):
        check_input("GlobalAvgPool2d", x, ndim=(4,))
        self._shape = x.shape
        if self.device != "cpu":
            return _conv(self).global_avgpool2d(x)
        return x.mean(axis=(2, 3))

    def backward(self, dy):
        if self._shape is None:
            _no_cache(self)
        n, c, h, w = self._shape
        basis.check_dy("GlobalAvgPool2d.backward", dy, (n, c))
        if self.device != "cpu":
            return _conv(self).global_avgpool2d_grad(dy, self._shape)
        dx = np.empty(self._shape, dtype=dy.dtype)
        dx[...] = (dy / (h * w))[:, :, None, None]
        return dx

    def kept_for_backward(self, in_shape: Shape, out_shape: Shape) -> Kept:
        return Kept()                           # the input's shape only

    def multiply_adds(self, in_shape: Shape, out_shape: Shape) -> int:
        return 0                                # additions: not counted


class Flatten(Module):
    """Merge the axes start_dim..end_dim into one, as ``torch.nn.Flatten``.

    Default (1, -1): x (N, ...) -> (N, prod(...)); an empty batch gives (0, prod(...)).
    Negative dims count from the end; a 0-D input is treated as 1-D (as torch).
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        for arg, v in (("start_dim", start_dim), ("end_dim", end_dim)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise TypeError(f"Flatten: {arg} must be an int, got {v!r}")
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)
        self._shape = None

    def _out_shape(self, shape):
        nd = max(len(shape), 1)
        dims = []
        for arg, d in (("start_dim", self.start_dim), ("end_dim", self.end_dim)):
            if not -nd <= d < nd:
                raise ValueError(f"Flatten: {arg}={d} is out of range for an input of shape "
                                 f"{tuple(shape)} (expected in [{-nd}, {nd - 1}])")
            dims.append(d % nd)
        start, end = dims
        if start > end:
            raise ValueError(f"Flatten: start_dim={self.start_dim} comes after "
                             f"end_dim={self.end_dim} for an input of shape {tuple(shape)}")
        shape = tuple(shape) or (1,)
        return shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:]

    def splits_over_batch(self) -> bool:
        return self.start_dim >= 1            # the batch axis stays apart

    def forward(self, x):
        check_input("Flatten", x)
        self._out = self._out_shape(x.shape)
        self._shape = x.shape
        return x.reshape(self._out)

    def backward(self, dy):
        if self._shape is None:
            _no_cache(self)
        basis.check_dy("Flatten.backward", dy, self._out)
        return dy.reshape(self._shape)

    def kept_for_backward(self, in_shape: Shape, out_shape: Shape) -> Kept:
        return Kept(alias=True)                 # a view of a contiguous input

    def multiply_adds(self, in_shape: Shape, out_shape: Shape) -> int:
        return 0

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class _BatchNorm(Module):
    """Batch normalization with running statistics for evaluation (as PyTorch).

    Training: normalize with the biased batch variance and update
    running = (1 - momentum)·running + momentum·batch, using the unbiased
    variance for running_var (``momentum=None``: the cumulative average over the batches
    seen, 1 / num_batches_tracked). Evaluation: normalize with the running statistics.
    ``affine=False``: no weight and bias (gamma = 1, beta = 0, no parameters); ``bias=False``:
    a weight but no bias (beta = 0), as torch's ``bias`` argument.
    ``track_running_stats=False``: no running statistics; batch statistics in both modes.
    """

    _ndims: Tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1,
                 affine: bool = True, track_running_stats: bool = True, *, bias: bool = True):
        super().__init__()
        name = type(self).__name__
        self.num_features = _positive(name, "num_features", num_features)
        if not eps > 0:
            raise ValueError(f"{name}: eps must be > 0, got {eps}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1] or None (cumulative "
                             f"average), got {momentum}")
        for arg, v in (("affine", affine), ("track_running_stats", track_running_stats),
                       ("bias", bias)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name}: {arg} must be True or False, got {v!r}")
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        dtype = backend.default_dtype()
        if self.affine:
            self.weight = Parameter(np.ones(num_features, dtype=dtype), decay=False)   # gamma
            self.bias = (Parameter(np.zeros(num_features, dtype=dtype), decay=False)  # beta
                         if bias else None)
        else:
            self.weight = self.bias = None
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype=dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self._cache = None

    def _gamma_beta(self, dtype):
        xp = self.xp
        gamma = self.weight.data if self.affine else xp.ones(self.num_features, dtype=dtype)
        beta = (self.bias.data if self.bias is not None
                else xp.zeros(self.num_features, dtype=gamma.dtype))
        return gamma, beta

    def splits_over_batch(self) -> bool:
        if self.training:        # batch statistics: the parts add up their sums (4-D only)
            return self._ndims == (4,) and kernels.available()
        return self.track_running_stats         # else batch statistics in evaluation too

    def forward(self, x):
        name = type(self).__name__
        check_input(name, x, ndim=self._ndims, dim={1: self.num_features})
        gamma, beta = self._gamma_beta(x.dtype)
        if not self.training and self.track_running_stats:
            return _basis(self).batchnorm_eval(x, gamma, beta, self.running_mean, self.running_var,
                                        self.eps)
        if x.size == 0:         # an empty batch: empty out, statistics untouched (as torch)
            C = self.num_features
            xp = self.xp
            self._cache = basis.BatchNormCache(None, x, xp.zeros(C, x.dtype), xp.ones(C, x.dtype),
                                               xp.ones(C, x.dtype), gamma, self.eps)
            if self.training and self.track_running_stats:
                self.num_batches_tracked += 1
            return self.xp.empty_like(x)
        y, cache = _basis(self).batchnorm(x, gamma, beta, self.eps)
        self._keep(cache, x)
        return y

    def _keep(self, cache: basis.BatchNormCache, x) -> None:
        """After a forward with batch statistics: keep its cache for the backward and, in
        training, fold the statistics into the running ones."""
        self._cache = cache._replace(x=None)    # the fused backward needs x_hat, not x
        if self.training and self.track_running_stats:
            count = x.size // self.num_features
            crew = threadsplit.team()
            if crew is not None:                # one part of a split batch: the whole batch's
                if threadsplit.rank() != 0:     # statistics, folded in once (shared buffers)
                    return
                count = count // x.shape[0] * crew.batch
            self.update_running(cache.mean, cache.var, count)

    def next_momentum(self) -> float:
        """The momentum of the next running-statistics update: ``momentum``, or with
        ``momentum=None`` the cumulative average's 1 / (batches seen + 1)."""
        if self.momentum is None:
            return 1.0 / (float(self.num_batches_tracked) + 1.0)
        return self.momentum

    def update_running(self, mean: np.ndarray, var: np.ndarray, count: int) -> None:
        """Fold one training batch's mean and biased variance (C,), over ``count`` values per
        feature, into the running statistics (:func:`basis.batchnorm_update_running`)."""
        momentum = self.next_momentum()
        self.num_batches_tracked += 1
        _basis(self).batchnorm_update_running(self.running_mean, self.running_var, mean, var, count,
                                       momentum)

    def backward(self, dy):
        if self._cache is None:
            _no_cache(self)
        dx, dgamma, dbeta = _basis(self).batchnorm_grad_fused(dy, self._cache)
        if self.affine:
            self.weight.grad += dgamma
        if self.bias is not None:
            self.bias.grad += dbeta
        return dx

    def kept_for_backward(self, in_shape: Shape, out_shape: Shape) -> Kept:
        """x_hat (not x), and mean, var, 1/std per feature; without ``affine`` also the ones
        that stand for gamma."""
        fixed = (3 if self.affine else 4) * self.num_features
        return Kept(values=_size(in_shape), fixed_values=fixed)

    def multiply_adds(self, in_shape: Shape, out_shape: Shape) -> int:
        return 0                                # element-wise: not counted

    @property
    def gamma(self) -> np.ndarray:
        return self._gamma_beta(backend.default_dtype())[0]

    @property
    def beta(self) -> np.ndarray:
        return self._gamma_beta(backend.default_dtype())[1]

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch norm over features: x (N, C), or (N, C, L) with statistics over (N, L)."""
    _ndims = (2, 3)


# Sequential runs a Conv2d and the ReLU right after it as one call on the CPU (the ReLU in
# the pass that writes the convolution's output: Conv2d.fuses_with); False: apart.
FUSE_CONV_RELU = True

# In evaluation, Sequential folds a BatchNorm2d into the Conv2d right before it (W·scale,
# b·scale + shift), with a ReLU after the batch norm in the convolution's output pass
# (Conv2d.fuses_with, fuses_with_two). False: the layers apart.
FUSE_CONV_BN_EVAL = True

# Sequential runs a BatchNorm2d and the ReLU right after it as one fused call on the CPU
# (BatchNorm2d.fuses_with). False: the two layers one after the other (for A/B timing and the
# tests that compare both).
FUSE_BN_RELU = True


class BatchNorm2d(_BatchNorm):
    """Batch norm per channel, statistics over (N, H, W). x: (N, C, H, W).

    Followed by a ReLU in a :class:`Sequential` (conv -> BN -> ReLU), the two forwards run
    fused on the CPU: the ReLU in the pass that writes the batch norm's output
    (:func:`basis.batchnorm_relu`, ``basis.batchnorm_eval(..., then_relu=True)``), one pass
    over the activation and one allocation less. Both layers keep their own caches, as
    unfused, and the backward runs layer by layer (a fused backward did not pay: BENCHMARKS.md).
    """
    _ndims = (4,)

    def fuses_with(self, nxt: Module) -> bool:
        """A plain ReLU next: both layers of this class and ReLU exactly (a subclass may
        compute something else), both on the CPU, neither with its forward replaced (see
        ``_as_defined``), and ``FUSE_BN_RELU``."""
        return (FUSE_BN_RELU and type(self) is BatchNorm2d and type(nxt) is ReLU
                and self.device == "cpu" and nxt.device == "cpu"
                and _as_defined(self) and _as_defined(nxt))

    def forward_fused(self, relu: Module, x):
        """``relu.forward(self.forward(x))`` in one pass over the output, leaving both layers
        the caches (and the running statistics) their own forwards would."""
        if self.training != relu.training or not kernels.available():
            return relu.forward(self.forward(x))
        check_input("BatchNorm2d", x, ndim=self._ndims, dim={1: self.num_features})
        gamma, beta = self._gamma_beta(x.dtype)
        if not self.training and self.track_running_stats:
            relu._cache = None                          # as ReLU.forward in evaluation
            return basis.batchnorm_eval(x, gamma, beta, self.running_mean, self.running_var,
                                        self.eps, then_relu=True)
        if x.size == 0:
            return relu.forward(self.forward(x))
        y, cache, relu_cache = basis.batchnorm_relu(x, gamma, beta, self.eps)
        self._keep(cache, x)
        relu._cache = relu_cache if relu.training else None
        return y


class Dropout(Module):
    """Inverted dropout (Srivastava et al. 2014): p is the probability of dropping a unit.

    A fresh mask on every training forward; identity in evaluation. The masks come from
    the counter-based generator of :mod:`mlcvlab.nn.philox`, keyed by the layer's 64-bit
    seed (buffer ``mask_seed``, drawn from ``rng`` when the layer is built, without
    advancing rng's own stream), its forward count (buffer ``mask_step``, +1 per training
    forward) and ``stream`` (the data-parallel worker, set by the data-parallel steps;
    0 otherwise). Both buffers are in ``state_dict``, so a resumed run draws the masks of
    an uninterrupted one, and the GPU step draws the same masks on the device.
    """

    # a state saved before the counter-based masks has neither: the layer keeps its own
    _optional_buffers = ("mask_seed", "mask_step")

    def __init__(self, p: float = 0.5, rng=None):
        super().__init__()
        if not isinstance(p, (float, int, np.floating)) or not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"Dropout: p is the drop probability and must be in [0, 1], got {p!r}")
        self.p = float(p)
        self.stream = 0
        self.register_buffer("mask_seed", np.array(philox.layer_seed(backend.rng(rng)),
                                                   dtype=np.uint64))
        self.register_buffer("mask_step", np.zeros((), dtype=np.uint64))
        self._cache = None

    def next_key(self) -> "philox.DropoutKey":
        """The key of this forward's mask; advances ``mask_step`` (call once per forward)."""
        key = philox.DropoutKey(int(self.mask_seed), int(self.stream), int(self.mask_step))
        self.mask_step[...] = key.step + 1
        return key

    def splits_over_batch(self) -> bool:
        return not self.training    # a training forward advances the shared mask_step

    def forward(self, x):
        check_input("Dropout", x)
        key = self.next_key() if self.training else None
        y, self._cache = _basis(self).dropout(x, self.p, train=self.training, rng=key)
        return y

    def backward(self, dy):
        if self._cache is None:
            _no_cache(self)
        return _basis(self).dropout_grad(dy, self._cache)

    def kept_for_backward(self, in_shape: Shape, out_shape: Shape) -> Kept:
        if self.p == 0:
            return Kept(alias=True)             # the identity: y is x
        return Kept(values=_size(in_shape))     # the scaled mask

    def multiply_adds(self, in_shape: Shape, out_shape: Shape) -> int:
        return 0                                # element-wise: not counted

    def extra_repr(self):
        return f"p={self.p}"


class _Activation(Module):
    _fn = ""        # the name of its math in nn.basis (and its GPU twin): _fn and _fn + "_grad"

    def __init__(self):
        super().__init__()
        self._cache = None

    def splits_over_batch(self) -> bool:
        return True

    def forward(self, x):
        check_input(type(self).__name__, x)
        y, cache = self._fwd(x)
        self._cache = cache if self.training else None
        return y

    def _fwd(self, x):
        return getattr(_basis(self), self._fn)(x)

    def backward(self, dy):
        if self._cache is None:
            _no_cache(self)
        return getattr(_basis(self), self._fn + "_grad")(dy, self._cache)

    def kept_for_backward(self, in_shape: Shape, out_shape: Shape) -> Kept:
        return Kept(output=True)                # the gradient is read off y

    def multiply_adds(self, in_shape: Shape, out_shape: Shape) -> int:
        return 0                                # element-wise: not counted


class ReLU(_Activation):
    """max(x, 0)."""
    _fn = "relu"


# The forwards a fused (BatchNorm2d or Conv2d, ReLU) pair stands in for, as defined here.
_DEFINED = {cls: cls.forward for cls in (BatchNorm2d, Conv2d, ReLU)}


def _as_defined(layer: Module) -> bool:
    """Whether layer's forward is its class's own, replaced neither on the instance (the
    memory lab's and ``summarize``'s traces wrap each layer's forward) nor on the class (a
    patch): a fused pair would bypass the replacement."""
    return "forward" not in layer.__dict__ and type(layer).forward is _DEFINED[type(layer)]


class Sigmoid(_Activation):
    """1 / (1 + exp(-x))."""
    _fn = "sigmoid"


class Tanh(_Activation):
    _fn = "tanh"


class Softmax(_Activation):
    """Softmax over axis ``dim`` (the last by default), as torch.nn.Softmax(dim)."""
    _fn = "softmax"

    def __init__(self, dim: int = -1):
        super().__init__()
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
            raise TypeError(f"Softmax: dim must be an int, got {dim!r}")
        self.dim = int(dim)

    def _fwd(self, x):
        if not -max(x.ndim, 1) <= self.dim < max(x.ndim, 1):
            raise ValueError(f"Softmax: dim={self.dim} is out of range for an input of shape "
                             f"{x.shape}")
        return _basis(self).softmax(x, axis=self.dim)

    def splits_over_batch(self) -> bool:
        return self.dim >= 1 or self.dim == -1        # not over the batch axis

    def forward(self, x):
        check_input("Softmax", x)
        y, cache = self._fwd(x)
        self._cache = cache if self.training else None
        return y

    def kept_for_backward(self, in_shape: Shape, out_shape: Shape) -> Kept:
        return Kept(output=True)

    def multiply_adds(self, in_shape: Shape, out_shape: Shape) -> int:
        return 0                                # element-wise: not counted

    def extra_repr(self):
        return f"dim={self.dim}"


class LeakyReLU(Module):
    """x for x > 0, slope·x otherwise."""

    def __init__(self, slope: float = 0.01):
        super().__init__()
        if slope < 0:
            raise ValueError(f"LeakyReLU: slope must be >= 0, got {slope}")
        self.slope = float(slope)
        self._cache = None

    def splits_over_batch(self) -> bool:
        return True

    def forward(self, x):
        check_input("LeakyReLU", x)
        y, cache = _basis(self).leaky_relu(x, self.slope)
        self._cache = cache if self.training else None
        return y

    def backward(self, dy):
        if self._cache is None:
            _no_cache(self)
        return _basis(self).leaky_relu_grad(dy, self._cache)

    def kept_for_backward(self, in_shape: Shape, out_shape: Shape) -> Kept:
        return Kept(input=True)                 # the slope is read off the sign of x

    def multiply_adds(self, in_shape: Shape, out_shape: Shape) -> int:
        return 0                                # element-wise: not counted

    def extra_repr(self):
        return f"slope={self.slope}"


class Identity(Module):
    def splits_over_batch(self) -> bool:
        return True

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy

    def kept_for_backward(self, in_shape: Shape, out_shape: Shape) -> Kept:
        return Kept(alias=True)

    def multiply_adds(self, in_shape: Shape, out_shape: Shape) -> int:
        return 0


__all__ = [
    "Module", "Parameter", "Sequential", "Linear", "Conv2d", "MaxPool2d", "AvgPool2d",
    "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
    "GlobalAvgPool2d", "Flatten", "BatchNorm1d", "BatchNorm2d", "Dropout", "ReLU", "LeakyReLU",
    "Sigmoid", "Tanh", "Softmax", "Identity", "init",
]
