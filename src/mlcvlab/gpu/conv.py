"""The GPU twins of :mod:`mlcvlab.nn.conv`: convolution and pooling on device arrays.

Same names, signatures and return structure as the CPU functions; inputs and outputs are
device arrays (CuPy on a GPU, NumPy under numba's simulator: :mod:`mlcvlab.gpu.device`),
float32 only. GEMMs go through ``xp.matmul`` (cuBLAS); every other op is a kernel of
:mod:`mlcvlab.gpu.conv_kernels` working on the arrays in place. Nothing here copies between
host and device or reads a device value on the host.

How the convolution runs (im2col + one GEMM, as the CPU path's fast path):

* ``cols`` (C*kh*kw, N*Ho*Wo), the layout of :func:`mlcvlab.nn.conv.im2col_numpy`: the
  weights W (F, C, kh, kw) are then the matrix W_mat (F, C*kh*kw) without a copy, the
  forward is y_t = W_mat @ cols (F, N*Ho*Wo) and the weight gradient dW = dy_t @ cols^T
  comes out in W's own shape, so no GEMM operand needs a transposed copy; the im2col
  kernel's consecutive threads write consecutive columns (coalesced stores). The price is
  one layout change of y_t to NCHW, done by the kernel that adds the bias (one pass over y
  either way), and of dy to (F, N*Ho*Wo) in the backward.
* The cache keeps x (by reference, as on the CPU), not ``cols`` (C*kh*kw times larger): the
  backward rebuilds ``cols`` with one im2col launch (memory-bound, cheap next to the GEMMs),
  so the device holds what the layer's ``kept_for_backward`` declares, the input only, and
  the memory lab's analytic model holds on both devices. The backward reuses ``cols`` for
  dcols = W_mat^T @ dy_t, then col2im gathers dx (one thread per input pixel, no atomics).
* db: one block per output channel sums its N*Ho*Wo gradients (:func:`row_sums_kernel`).

Supported: any kernel size and stride, zero padding as an int, a pair, "valid" or "same"
(asymmetric where the kernel is even), dilation 1, groups 1. Pooling: max and average with
dilation 1 and ceil_mode False (average: padding counted, no divisor override), global
average pooling, adaptive average pooling to 1x1. The rest raises NotImplementedError, and
:func:`unsupported` tells ``Module.to("cuda")`` before training starts.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numpy as np

from mlcvlab.gpu import conv_kernels as K
from mlcvlab.gpu import device
from mlcvlab.nn import conv

_CPU = "use device 'cpu' for this layer"


# --------------------------------------------------------------------------- checks
def _check(fn: str, name: str, a, shape=None, ndim: int = 4):
    """a as a C-contiguous float32 device array of ``ndim`` dimensions (and ``shape``), or a
    TypeError / ValueError naming what is wrong."""
    xp = device.array_module()
    if not isinstance(a, xp.ndarray):
        raise TypeError(f"{fn}: expected {name} to be a device array ({xp.__name__}.ndarray; "
                        f"mlcvlab.gpu.device.to_device moves an array), got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{fn}: the GPU path computes in float32, got {name} of dtype {a.dtype}; "
                        f"cast the model with .astype(np.float32) or use device 'cpu'")
    if a.ndim != ndim or (shape is not None and tuple(a.shape) != tuple(shape)):
        want = shape if shape is not None else f"{ndim}-D"
        raise ValueError(f"{fn}: expected {name} of shape {want}, got {tuple(a.shape)}")
    return xp.ascontiguousarray(a)


def _stand_in(a) -> np.ndarray:
    """A zero-byte NumPy array of a's shape and dtype, so that the CPU module's own argument
    rules (``conv.pool_setup``) validate a device array: one home for those rules."""
    return np.broadcast_to(np.zeros((), dtype=a.dtype), a.shape)


def _conv_reason(dilation, groups, pads, padding_mode) -> Optional[str]:
    """Why the GPU convolution cannot run these options, or None (shared by :func:`conv2d`'s
    NotImplementedError and :func:`unsupported`)."""
    if tuple(dilation) != (1, 1):
        return f"dilation={tuple(dilation)} is not on the GPU (dilation 1 only)"
    if groups != 1:
        return f"groups={groups} is not on the GPU (groups 1 only)"
    if padding_mode != "zeros" and any(pads):
        return f"padding_mode={padding_mode!r} is not on the GPU (zero padding only)"
    return None


def _maxpool_reason(dilation, ceil_mode) -> Optional[str]:
    if tuple(dilation) != (1, 1):
        return f"dilation={tuple(dilation)} is not on the GPU (dilation 1 only)"
    if ceil_mode:
        return "ceil_mode=True is not on the GPU (ceil_mode False only)"
    return None


def _avgpool_reason(padding, ceil_mode, count_include_pad, divisor_override) -> Optional[str]:
    if ceil_mode:
        return "ceil_mode=True is not on the GPU (ceil_mode False only)"
    if not count_include_pad and any(padding):      # without padding both counts agree
        return "count_include_pad=False with padding is not on the GPU"
    if divisor_override is not None:
        return f"divisor_override={divisor_override!r} is not on the GPU"
    return None


def _is_one(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v == 1


def _adaptive_reason(output_size) -> Optional[str]:
    pair = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * 2
    if len(pair) != 2 or not all(_is_one(v) for v in pair):
        return f"output_size={output_size!r} is not on the GPU (only 1 or (1, 1))"
    return None


# --------------------------------------------------------------------------- convolution
class GpuConv2dCache(NamedTuple):
    """What :func:`conv2d_grad` needs: the input and weights (by reference) and the geometry."""
    x: object                         # the input (N, C, H, W), a device array
    W: object                         # the weights (F, C, kh, kw), the parameter itself
    stride: Tuple[int, int]
    pads: Tuple[int, int, int, int]   # top, bottom, left, right
    out_hw: Tuple[int, int]
    has_bias: bool


def _im2col(x, kernel, stride, pads, out_hw):
    """cols (C*kh*kw, N*Ho*Wo) of the device array x, a fresh device array."""
    xp = device.array_module()
    N, C = x.shape[:2]
    (kh, kw), (Ho, Wo) = kernel, out_hw
    cols = xp.empty((C * kh * kw, N * Ho * Wo), dtype=np.float32)
    K.im2col_kernel[K.launch(cols.size)](x, cols, kh, kw, *stride, pads[0], pads[2], Ho, Wo)
    return cols


def conv2d(x, W, b=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """2-D convolution (cross-correlation) on the GPU: the twin of
    :func:`mlcvlab.nn.conv.conv2d`, same arguments (dilation 1, groups 1, zero padding).

    x: (N, C, H, W), W: (F, C, kh, kw), b: (F,) or None, device float32 arrays. Returns
    y (N, F, Ho, Wo) and a :class:`GpuConv2dCache` for :func:`conv2d_grad`.
    """
    fn = "conv2d"
    x = _check(fn, "x", x)
    W = _check(fn, "W", W)
    N, C, H, Wd = x.shape
    F, Cw, kh, kw = W.shape
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{fn}: groups must be a positive integer, got {groups!r}")
    stride = conv._pair(fn, "stride", stride, 1)
    dilation = conv._pair(fn, "dilation", dilation, 1)
    pads = conv.conv_padding(fn, padding, (kh, kw), dilation, stride)
    if padding_mode not in conv.PADDING_MODES:
        raise ValueError(f"{fn}: padding_mode must be one of {conv.PADDING_MODES}, "
                         f"got {padding_mode!r}")
    why = _conv_reason(dilation, int(groups), pads, padding_mode)
    if why:
        raise NotImplementedError(f"{fn}: {why}; {_CPU}")
    if Cw != C:
        raise ValueError(f"{fn}: x has {C} channels but W expects {Cw} (x {tuple(x.shape)}, "
                         f"W {tuple(W.shape)})")
    if b is not None:
        b = _check(fn, "b", b, shape=(F,), ndim=1)
    Ho = conv._out_size_dilated(fn, H, kh, stride[0], pads[0] + pads[1], 1)
    Wo = conv._out_size_dilated(fn, Wd, kw, stride[1], pads[2] + pads[3], 1)
    xp = device.array_module()
    cols = _im2col(x, (kh, kw), stride, pads, (Ho, Wo))
    y_t = xp.empty((F, cols.shape[1]), dtype=np.float32)
    xp.matmul(W.reshape(F, -1), cols, out=y_t)
    y = xp.empty((N, F, Ho, Wo), dtype=np.float32)
    if b is None:
        K.cols_to_nchw_kernel[K.launch(y.size)](y_t, y)
    else:
        K.cols_to_nchw_bias_kernel[K.launch(y.size)](y_t, b, y)
    return y, GpuConv2dCache(x, W, stride, pads, (Ho, Wo), b is not None)


def conv2d_grad(dy, cache: GpuConv2dCache, input_grad: bool = True):
    """dy (N, F, Ho, Wo) -> dx (N, C, H, W) or None, dW (F, C, kh, kw), db (F,) or None: the
    twin of :func:`mlcvlab.nn.conv.conv2d_grad`. ``input_grad=False`` (a first layer, whose
    input is data) skips dx: no dcols GEMM, no col2im."""
    x, W, stride, pads, (Ho, Wo), has_bias = cache
    N, C = x.shape[:2]
    F, _, kh, kw = W.shape
    dy = _check("conv2d_grad", "dy", dy, shape=(N, F, Ho, Wo))
    xp = device.array_module()
    dy_t = xp.empty((F, N * Ho * Wo), dtype=np.float32)
    K.nchw_to_cols_kernel[K.launch(dy_t.size)](dy, dy_t)
    db = None
    if has_bias:
        db = xp.empty(F, dtype=np.float32)
        K.row_sums_kernel[K.launch(F * K.THREADS)](dy_t, 1, db)
    cols = _im2col(x, (kh, kw), stride, pads, (Ho, Wo))
    dW = xp.empty((F, C * kh * kw), dtype=np.float32)
    xp.matmul(dy_t, cols.T, out=dW)
    dx = None
    if input_grad:
        dcols = xp.matmul(W.reshape(F, -1).T, dy_t, out=cols)    # reuses cols
        dx = xp.empty(x.shape, dtype=np.float32)
        K.col2im_kernel[K.launch(dx.size)](dcols, kh, kw, *stride, pads[0], pads[2], Ho, Wo,
                                            dx)
    return dx, dW.reshape(W.shape), db


# --------------------------------------------------------------------------- pooling
def _pool_geometry(fn, x, kernel_size, stride, padding):
    """kernel, stride, padding pairs and (Ho, Wo) of a pooling of the device array x (dilation
    1, ceil_mode False), by the CPU's rules."""
    kernel, stride, padding, _, out_hw = conv.pool_setup(fn, _stand_in(x), kernel_size, stride,
                                                         padding)
    return kernel, stride, padding, out_hw


def maxpool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling on the GPU: the twin of :func:`mlcvlab.nn.conv.maxpool2d` (dilation 1,
    ceil_mode False). x (N, C, H, W) -> y (N, C, Ho, Wo) and a ``conv.PoolCache`` whose
    argmax (the smallest unsigned type of kh*kw - 1, as on the CPU) is each window's first
    maximum in row-major order, the first nan where there is one."""
    fn = "maxpool2d"
    x = _check(fn, "x", x)
    why = _maxpool_reason(conv._pair(fn, "dilation", dilation, 1), ceil_mode)
    if why:
        raise NotImplementedError(f"{fn}: {why}; {_CPU}")
    (kh, kw), (sh, sw), (ph, pw), (Ho, Wo) = _pool_geometry(fn, x, kernel_size, stride, padding)
    xp = device.array_module()
    y = xp.empty((*x.shape[:2], Ho, Wo), dtype=np.float32)
    argmax = xp.empty(y.shape, dtype=np.min_scalar_type(kh * kw - 1))
    K.maxpool_kernel[K.launch(y.size)](x, kh, kw, sh, sw, ph, pw, y, argmax)
    return y, conv.PoolCache(tuple(x.shape), (kh, kw), (sh, sw), (ph, pw), argmax)


def maxpool2d_grad(dy, cache: conv.PoolCache):
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W): each dy to its window's maximum, gathered (one
    thread per input pixel), so overlapping windows need no atomics."""
    x_shape, (kh, kw), (sh, sw), (ph, pw), argmax = cache
    dy = _check("maxpool2d_grad", "dy", dy, shape=argmax.shape)
    dx = device.array_module().empty(x_shape, dtype=np.float32)
    K.maxpool_grad_kernel[K.launch(dx.size)](dy, argmax, kh, kw, sh, sw, ph, pw, dx)
    return dx


def avgpool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
              divisor_override=None):
    """Average pooling on the GPU: the twin of :func:`mlcvlab.nn.conv.avgpool2d` (ceil_mode
    False, padding counted, no divisor override). x (N, C, H, W) -> y (N, C, Ho, Wo) and a
    ``conv.PoolCache`` (argmax None)."""
    fn = "avgpool2d"
    x = _check(fn, "x", x)
    (kh, kw), (sh, sw), (ph, pw), (Ho, Wo) = _pool_geometry(fn, x, kernel_size, stride, padding)
    why = _avgpool_reason((ph, pw), ceil_mode, count_include_pad, divisor_override)
    if why:
        raise NotImplementedError(f"{fn}: {why}; {_CPU}")
    y = device.array_module().empty((*x.shape[:2], Ho, Wo), dtype=np.float32)
    K.avgpool_kernel[K.launch(y.size)](x, kh, kw, sh, sw, ph, pw, np.float32(1.0 / (kh * kw)), y)
    return y, conv.PoolCache(tuple(x.shape), (kh, kw), (sh, sw), (ph, pw), None)


def avgpool2d_grad(dy, cache: conv.PoolCache):
    """dy (N, C, Ho, Wo) -> dx (N, C, H, W); each dy spreads evenly over its window
    (gathered: one thread per input pixel)."""
    (N, C, H, W), (kh, kw), (sh, sw), (ph, pw), _ = cache
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    dy = _check("avgpool2d_grad", "dy", dy, shape=(N, C, Ho, Wo))
    dx = device.array_module().empty((N, C, H, W), dtype=np.float32)
    K.avgpool_grad_kernel[K.launch(dx.size)](dy, kh, kw, sh, sw, ph, pw,
                                             np.float32(1.0 / (kh * kw)), dx)
    return dx


def global_avgpool2d(x):
    """The mean over H and W on the GPU: x (N, C, H, W) -> y (N, C), the twin of the CPU
    GlobalAvgPool2d's ``x.mean(axis=(2, 3))``: each (n, c) plane summed in float32 by one
    block, divided by float32(H*W)."""
    x = _check("global_avgpool2d", "x", x)
    N, C, H, W = x.shape
    if H * W == 0:
        raise ValueError(f"global_avgpool2d: x of shape {tuple(x.shape)} has no pixels")
    y = device.array_module().empty((N, C), dtype=np.float32)
    K.row_sums_kernel[K.launch(N * C * K.THREADS)](x.reshape(N * C, H * W), H * W,
                                                   y.reshape(N * C))
    return y


def global_avgpool2d_grad(dy, x_shape):
    """dy (N, C) -> dx of shape x_shape (N, C, H, W): dy / (H*W) on every pixel."""
    N, C, H, W = x_shape
    dy = _check("global_avgpool2d_grad", "dy", dy, shape=(N, C), ndim=2)
    dx = device.array_module().empty((N, C, H, W), dtype=np.float32)
    K.spread_kernel[K.launch(dx.size)](dy.reshape(N * C), H * W, dx.reshape(N * C, H * W))
    return dx


def adaptive_avgpool2d(x, output_size):
    """The twin of :func:`mlcvlab.nn.conv.adaptive_avgpool2d` for output_size 1 or (1, 1)
    (global average pooling, the only adaptive pooling the models use): x (N, C, H, W) ->
    y (N, C, 1, 1) and a ``conv.AdaptivePoolCache``."""
    fn = "adaptive_avgpool2d"
    why = _adaptive_reason(output_size)
    if why:
        raise NotImplementedError(f"{fn}: {why}; {_CPU}")
    x = _check(fn, "x", x)
    N, C = x.shape[:2]
    y = global_avgpool2d(x).reshape(N, C, 1, 1)
    return y, conv.AdaptivePoolCache(tuple(x.shape), (1, 1), None)


def adaptive_avgpool2d_grad(dy, cache: conv.AdaptivePoolCache):
    """dy (N, C, 1, 1) -> dx (N, C, H, W)."""
    N, C = cache.x_shape[:2]
    dy = _check("adaptive_avgpool2d_grad", "dy", dy, shape=(N, C, 1, 1))
    return global_avgpool2d_grad(dy.reshape(N, C), cache.x_shape)


# --------------------------------------------------------------------------- layers
def unsupported(layer) -> Optional[str]:
    """Why the GPU twins cannot run this layer, in one line, or None if they can.

    For the layers whose math is :mod:`mlcvlab.nn.conv`'s: Conv2d, MaxPool2d, AvgPool2d,
    AdaptiveAvgPool2d, AdaptiveMaxPool2d (no GPU twin) and GlobalAvgPool2d (always
    supported). Any other layer is not this module's: None (the module that twins it says).
    ``Module.to("cuda")`` calls this for every layer, so the error comes before training.
    """
    from mlcvlab import nn
    name = type(layer).__name__
    if isinstance(layer, nn.Conv2d):
        pads = conv.conv_padding("Conv2d", layer.padding, layer.kernel_size, layer.dilation,
                                 layer.stride)
        why = _conv_reason(layer.dilation, layer.groups, pads, layer.padding_mode)
        dtype = layer.weight.data.dtype
        if why is None and dtype != np.float32:
            why = f"weights of dtype {dtype} (the GPU path computes in float32)"
    elif isinstance(layer, nn.MaxPool2d):
        why = _maxpool_reason(layer.dilation, layer.ceil_mode)
        if why is None and layer.return_indices:
            why = "return_indices=True is not on the GPU"
    elif isinstance(layer, nn.AvgPool2d):
        why = _avgpool_reason(layer.padding, layer.ceil_mode, layer.count_include_pad,
                              layer.divisor_override)
    elif isinstance(layer, nn.AdaptiveAvgPool2d):
        why = _adaptive_reason(layer.output_size)
    elif isinstance(layer, nn.AdaptiveMaxPool2d):
        why = "adaptive max pooling has no GPU twin"
    else:
        return None
    return None if why is None else f"{name}: {why}; use device 'cpu' for this model"


__all__ = ["GpuConv2dCache", "conv2d", "conv2d_grad", "maxpool2d", "maxpool2d_grad",
           "avgpool2d", "avgpool2d_grad", "global_avgpool2d", "global_avgpool2d_grad",
           "adaptive_avgpool2d", "adaptive_avgpool2d_grad", "unsupported"]
