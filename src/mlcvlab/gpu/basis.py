"""GPU twins of :mod:`mlcvlab.nn.basis`: the same names, signatures and caches, on device arrays.

Each function here computes what its namesake in ``nn/basis.py`` computes, on arrays of
:func:`mlcvlab.gpu.device.array_module` (CuPy on a GPU, NumPy under the simulator), float32
only. GEMMs go through ``xp.matmul(..., out=...)`` (cuBLAS); every other op is a numba kernel
of :mod:`mlcvlab.gpu.basis_kernels` or, where one already does the op for the same layout,
of :mod:`mlcvlab.parallel.cuda_kernels` (bias add, column sum, sigmoid gradient, dropout
mask and multiply, (N, D) batch norm, row softmax). Nothing goes to the host: shapes are
host metadata, scalars travel as kernel arguments.

What the device cannot do the CPU checks do not need either: validation here is of shapes,
dtypes and options (host metadata), never of values (a NaN check would be a host round trip).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from mlcvlab.gpu import basis_kernels as K
from mlcvlab.gpu import device
from mlcvlab.nn import philox
from mlcvlab.nn.basis import ActivationCache, BatchNormCache, DropoutCache, LinearCache
from mlcvlab.parallel import cuda_kernels as PK

F32 = np.float32
USE_CPU = "use device 'cpu' for this layer"


def _xp():
    return device.array_module()


def _check_array(fn: str, name: str, a):
    """a, if it is a float32 array (of the device's array module or NumPy); else a TypeError."""
    dtype = getattr(a, "dtype", None)
    if dtype is None or not hasattr(a, "shape"):
        raise TypeError(f"{fn}: expected {name} to be a device array, got {type(a).__name__}")
    if dtype != F32:
        raise TypeError(f"{fn}: the GPU path computes in float32, got {name} of dtype {dtype} "
                        f"(model.astype(np.float32), or {USE_CPU})")
    return a


def check_dy(fn: str, dy, shape: Tuple[int, ...]):
    """dy, if it is a float32 device array of the forward output's ``shape``; else a ValueError
    naming ``fn`` (the twin of :func:`mlcvlab.nn.basis.check_dy`)."""
    got = getattr(dy, "shape", None)
    if got is None or tuple(got) != tuple(shape):
        raise ValueError(f"{fn}: expected dy of the forward output's shape {tuple(shape)}, "
                         f"got {got if got is not None else type(dy).__name__}")
    return _check_array(fn, "dy", dy)


def _flat(a):
    """A C-contiguous 1-D view of a (a copy only if a is not contiguous)."""
    return _xp().ascontiguousarray(a).reshape(-1)


def _elementwise(kernel, out_shape, *arrays_and_scalars):
    """out (float32, out_shape) from an element-wise kernel over flat views; the arrays come
    first in the kernel's arguments, scalars after, out last."""
    xp = _xp()
    out = xp.empty(out_shape, dtype=F32)
    args = [a if isinstance(a, (np.generic, float, int)) else _flat(a)
            for a in arrays_and_scalars]
    n = out.size
    kernel[K.grid(n)](*args, out.reshape(-1))
    return out


# --------------------------------------------------------------------------- linear
def linear(x, W, b=None):
    """y = x @ W.T + b. x: (N, in), W: (out, in), b: (out,) or None -> y: (N, out)."""
    _check_array("linear", "x", x)
    _check_array("linear", "W", W)
    if x.ndim != 2 or W.ndim != 2:
        raise ValueError("linear: expected x (N, in) and W (out, in), "
                         f"got x {x.shape}, W {W.shape}")
    if x.shape[1] != W.shape[1]:
        raise ValueError(f"linear: x has {x.shape[1]} features but W expects {W.shape[1]} "
                         f"(x {x.shape}, W {W.shape})")
    if b is not None:
        _check_array("linear", "b", b)
        if tuple(b.shape) != (W.shape[0],):
            raise ValueError(f"linear: expected b of shape ({W.shape[0]},), got {b.shape}")
    xp = _xp()
    y = xp.empty((x.shape[0], W.shape[0]), dtype=F32)
    xp.matmul(x, W.T, out=y)
    if b is not None and y.size:
        PK.add_bias_kernel[PK.grid2(*y.shape)](y, b)
    return y, LinearCache(x, W, b is not None)


def linear_grad(dy, cache: LinearCache, input_grad: bool = True, dW_out=None, db_out=None):
    """dy: (N, out) -> dx (N, in), dW (out, in), db (out,) or None.

    ``input_grad=False`` skips dx (returned as None). dW and db are written whole into
    ``dW_out`` / ``db_out`` when given (overwritten, not added to), as the CPU function."""
    x, W, has_bias = cache
    check_dy("linear_grad", dy, (x.shape[0], W.shape[0]))
    xp = _xp()
    for name, out, shape in (("dW_out", dW_out, tuple(W.shape)),
                             ("db_out", db_out, (W.shape[0],))):
        if out is not None and (tuple(out.shape) != shape or out.dtype != F32):
            raise ValueError(f"linear_grad: expected {name} float32 of shape {shape}, got "
                             f"{out.dtype} {tuple(out.shape)}")
    dx = None
    if input_grad:
        dx = xp.empty(tuple(x.shape), dtype=F32)
        xp.matmul(dy, W, out=dx)
    dW = xp.empty(tuple(W.shape), dtype=F32) if dW_out is None else dW_out
    xp.matmul(dy.T, x, out=dW)
    db = None
    if has_bias:
        db = xp.empty(W.shape[0], dtype=F32) if db_out is None else db_out
        PK.colsum_kernel[PK.grid1(W.shape[0])](dy, db)
    return dx, dW, db


# --------------------------------------------------------------------------- dropout
def dropout(x, p: float, train: bool = True, rng=None, mask=None):
    """Inverted dropout, as :func:`mlcvlab.nn.basis.dropout`: y = x·m, m the scaled keep mask
    (1/(1-p) kept, 0 dropped), drawn on the device by ``dropout_mask_kernel`` from the
    :class:`mlcvlab.nn.philox.DropoutKey` ``rng`` (what ``nn.Dropout`` passes): bit for bit the
    CPU's mask for the same key. ``mask`` (0/1 device array of x's shape) replaces the draw.
    A NumPy generator or seed as ``rng`` is CPU-only (NotImplementedError)."""
    _check_array("dropout", "x", x)
    if not (0.0 <= float(p) <= 1.0):
        raise ValueError(f"dropout: p is the drop probability and must be in [0, 1], got {p}")
    if not train or p == 0.0:
        return x, DropoutCache(None)
    if mask is not None:
        if tuple(mask.shape) != tuple(x.shape):
            raise ValueError(f"dropout: mask shape {mask.shape} does not match x shape "
                             f"{x.shape}")
        keep = _flat(mask).astype(F32, copy=False)
        scaled = _elementwise(K.keep_mask_kernel, x.shape, keep, F32(philox.mask_scale(p)))
    else:
        if not isinstance(rng, philox.DropoutKey):
            raise NotImplementedError(
                f"dropout: on the GPU the mask comes from a philox.DropoutKey (what nn.Dropout "
                f"passes), got rng={type(rng).__name__}; pass a DropoutKey or {USE_CPU}")
        scaled = dropout_mask(tuple(x.shape), p, rng)
    y = _xp().empty(tuple(x.shape), dtype=F32)
    PK.mask_kernel[PK.grid1(x.size)](_flat(x), scaled.reshape(-1), y.reshape(-1))
    return y, DropoutCache(scaled)


def dropout_mask(shape: Tuple[int, ...], p: float, rng=None, dtype=F32, keep=None):
    """The scaled keep mask of ``shape`` (float32) for the DropoutKey ``rng``, drawn on the
    device: bit for bit :func:`mlcvlab.nn.basis.dropout_mask` of the same key."""
    if np.dtype(dtype) != F32:
        raise TypeError(f"dropout_mask: the GPU path computes in float32, got dtype {dtype}")
    if keep is not None or not isinstance(rng, philox.DropoutKey):
        raise NotImplementedError(f"dropout_mask: on the GPU only a philox.DropoutKey draws the "
                                  f"mask (got rng={type(rng).__name__}); {USE_CPU}")
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"dropout_mask: p is the drop probability and must be in [0, 1], "
                         f"got {p}")
    out = _xp().empty(shape, dtype=F32)
    size = out.size
    nblocks = (size + 3) // 4
    if nblocks > philox.MAX_BLOCKS:
        raise ValueError(f"dropout_mask: {size} elements exceed the 2**34 one mask can "
                         f"index; split the array")
    words = philox.key_words(rng)
    if nblocks:
        PK.dropout_mask_kernel[PK.grid1(nblocks)](
            out.reshape(-1), np.uint32(philox.keep_threshold(p)), F32(philox.mask_scale(p)),
            *words)
    return out


def dropout_grad(dy, cache: DropoutCache):
    if cache.mask is None:
        return dy
    check_dy("dropout_grad", dy, cache.mask.shape)
    dx = _xp().empty(tuple(dy.shape), dtype=F32)
    PK.mask_kernel[PK.grid1(dy.size)](_flat(dy), cache.mask.reshape(-1), dx.reshape(-1))
    return dx


# --------------------------------------------------------------------------- batch norm
def _as3d(a, fn: str):
    """a (N, C), (N, C, L) or (N, C, H, W) as a contiguous (N, C, L) view (L = 1 for 2-D)."""
    if a.ndim not in (2, 3, 4):
        raise ValueError(f"{fn}: expected a 2-D (N, D), 3-D (N, C, L) or 4-D (N, C, H, W) "
                         f"input, got shape {a.shape}")
    L = int(np.prod(a.shape[2:], dtype=np.int64)) if a.ndim > 2 else 1
    return _xp().ascontiguousarray(a).reshape(a.shape[0], a.shape[1], L)


def _check_channels(fn: str, x, **per_channel):
    C = x.shape[1] if x.ndim >= 2 else None
    for name, a in per_channel.items():
        _check_array(fn, name, a)
        if tuple(a.shape) != (C,):
            raise ValueError(f"{fn}: expected {name} of shape ({C},), got {tuple(a.shape)}")


def batchnorm(x, gamma, beta, eps: float = 1e-5):
    """Batch normalization with batch statistics, as :func:`mlcvlab.nn.basis.batchnorm`
    (biased variance). x: (N, D): ``bn_forward_kernel`` of parallel/cuda_kernels (one thread
    per feature, N rows each); (N, C, L) / (N, C, H, W): one block per channel
    (``bn_channels_forward_kernel``). Returns (y, BatchNormCache)."""
    _check_array("batchnorm", "x", x)
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"batchnorm: expected a 2-D (N, D), 3-D (N, C, L) or 4-D "
                         f"(N, C, H, W) input, got shape {x.shape}")
    _check_channels("batchnorm", x, gamma=gamma, beta=beta)
    C = x.shape[1]
    count = x.size // C if C else 0
    if count < 2:
        raise ValueError(f"batchnorm: needs more than one value per feature to compute batch "
                         f"statistics, got input shape {x.shape}")
    xp = _xp()
    mean, var, inv_std = (xp.empty(C, dtype=F32) for _ in range(3))
    y, x_hat = xp.empty(tuple(x.shape), dtype=F32), xp.empty(tuple(x.shape), dtype=F32)
    if x.ndim == 2:
        PK.bn_forward_kernel[PK.grid1(C)](xp.ascontiguousarray(x), gamma, beta, F32(eps), y,
                                          x_hat, mean, var, inv_std)
    else:
        x3 = _as3d(x, "batchnorm")
        K.bn_channels_forward_kernel[K.channel_grid(C)](
            x3, gamma, beta, F32(eps), y.reshape(x3.shape), x_hat.reshape(x3.shape), mean,
            var, inv_std)
    return y, BatchNormCache(x, x_hat, mean, var, inv_std, gamma, eps)


def batchnorm_grad_fused(dy, cache: BatchNormCache):
    """dx = gamma·inv_std·(dy - mean(dy) - x_hat·mean(dy·x_hat)), dgamma = sum dy·x_hat,
    dbeta = sum dy, from x_hat, inv_std and gamma of the cache (not x), as the CPU function.
    Returns (dx, dgamma, dbeta)."""
    _, x_hat, _, _, inv_std, gamma, _ = cache
    check_dy("batchnorm_grad_fused", dy, tuple(x_hat.shape))
    xp = _xp()
    C = x_hat.shape[1]
    if x_hat.size == 0:                              # an empty batch: nothing flows back
        return xp.empty(tuple(dy.shape), dtype=F32), xp.zeros(C, F32), xp.zeros(C, F32)
    dx = xp.empty(tuple(dy.shape), dtype=F32)
    dgamma, dbeta = xp.empty(C, dtype=F32), xp.empty(C, dtype=F32)
    if x_hat.ndim == 2:
        PK.bn_backward_kernel[PK.grid1(C)](xp.ascontiguousarray(dy), x_hat, gamma, inv_std, dx,
                                           dgamma, dbeta)
    else:
        dy3, x_hat3 = _as3d(dy, "batchnorm_grad_fused"), _as3d(x_hat, "batchnorm_grad_fused")
        K.bn_channels_backward_kernel[K.channel_grid(C)](
            dy3, x_hat3, gamma, inv_std, dx.reshape(dy3.shape), dgamma, dbeta)
    return dx, dgamma, dbeta


def batchnorm_eval(x, gamma, beta, running_mean, running_var, eps: float):
    """Batch norm in evaluation, y = x·scale + shift per channel with
    scale = gamma/sqrt(running_var + eps), shift = beta - running_mean·scale;
    x: (N, C), (N, C, L) or (N, C, H, W), the rest (C,)."""
    _check_array("batchnorm_eval", "x", x)
    x3 = _as3d(x, "batchnorm_eval")
    _check_channels("batchnorm_eval", x, gamma=gamma, beta=beta, running_mean=running_mean,
                    running_var=running_var)
    y = _xp().empty(tuple(x.shape), dtype=F32)
    K.bn_eval_kernel[K.grid(x.size)](x3, gamma, beta, running_mean, running_var, F32(eps),
                                     y.reshape(x3.shape))
    return y


def batchnorm_update_running(running_mean, running_var, mean, var, count: int,
                             momentum: float) -> None:
    """Fold one batch's statistics into the running ones, in place, as
    :func:`mlcvlab.nn.basis.batchnorm_update_running`: running = (1 - momentum)·running +
    momentum·batch, the variance's batch term the unbiased var·count/(count - 1)."""
    correction = count / (count - 1)            # ZeroDivisionError for count 1, as the CPU
    for name, a in (("running_mean", running_mean), ("running_var", running_var),
                    ("mean", mean), ("var", var)):
        _check_array("batchnorm_update_running", name, a)
    K.bn_running_kernel[K.grid(mean.size)](running_mean, running_var, mean, var,
                                           F32(1 - momentum), F32(momentum), F32(correction))


# --------------------------------------------------------------------------- activations
def relu(x):
    """max(x, 0) (nan stays nan); the cache keeps the output y, as the CPU relu."""
    _check_array("relu", "x", x)
    y = _elementwise(K.relu_forward_kernel, tuple(x.shape), x)
    return y, ActivationCache(y)


def relu_grad(dy, cache: ActivationCache):
    """0 where the output was <= 0 (even where dy is nan), dy elsewhere (also where the
    output is nan): torch's threshold_backward, as the CPU relu_grad."""
    y = cache.value
    check_dy("relu_grad", dy, tuple(y.shape))
    return _elementwise(K.relu_backward_kernel, tuple(y.shape), dy, y)


def leaky_relu(x, slope: float = 0.01):
    """x for x > 0, slope·x otherwise; the cache keeps x and the slope."""
    _check_array("leaky_relu", "x", x)
    return (_elementwise(K.leaky_relu_kernel, tuple(x.shape), x, F32(slope)),
            ActivationCache(x, slope))


def leaky_relu_grad(dy, cache: ActivationCache):
    x = cache.value
    check_dy("leaky_relu_grad", dy, tuple(x.shape))
    return _elementwise(K.leaky_relu_grad_kernel, tuple(x.shape), dy, x, F32(cache.slope))


def sigmoid(x):
    """1/(1 + exp(-x)) without overflow for large |x| (as the CPU sigmoid)."""
    _check_array("sigmoid", "x", x)
    y = _elementwise(K.sigmoid_stable_kernel, tuple(x.shape), x)
    return y, ActivationCache(y)


def sigmoid_grad(dy, cache: ActivationCache):
    """dy·y·(1 - y): ``sigmoid_grad_kernel`` of parallel/cuda_kernels."""
    y = cache.value
    check_dy("sigmoid_grad", dy, tuple(y.shape))
    dx = _xp().empty(tuple(y.shape), dtype=F32)
    PK.sigmoid_grad_kernel[PK.grid1(y.size)](_flat(y), _flat(dy), dx.reshape(-1))
    return dx


def tanh(x):
    _check_array("tanh", "x", x)
    y = _elementwise(K.tanh_kernel, tuple(x.shape), x)
    return y, ActivationCache(y)


def tanh_grad(dy, cache: ActivationCache):
    y = cache.value
    check_dy("tanh_grad", dy, tuple(y.shape))
    return _elementwise(K.tanh_grad_kernel, tuple(y.shape), dy, y)


def _rows_last(x, axis: int):
    """x with ``axis`` moved last, contiguous, as (rows, C); and the moved shape."""
    xp = _xp()
    moved = xp.ascontiguousarray(xp.moveaxis(x, axis, -1))
    return moved.reshape(-1, moved.shape[-1]), moved.shape


def softmax(x, axis: int = -1):
    """exp(x)/sum(exp(x)) along ``axis``, shifted by the max (``softmax_kernel`` of
    parallel/cuda_kernels, one thread per row; another axis than the last is moved last by
    a device copy). Cache as the CPU: (y, axis)."""
    _check_array("softmax", "x", x)
    xp = _xp()
    if x.size == 0:
        y = xp.empty(tuple(x.shape), dtype=F32)
        return y, ActivationCache(y, axis)
    if x.ndim == 0:
        if axis not in (0, -1):
            raise ValueError(f"softmax: axis {axis} is out of range for a 0-D input")
        y = xp.ones((), dtype=F32)
        return y, ActivationCache(y, axis)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"softmax: axis {axis} is out of range for an input of shape "
                         f"{x.shape}")
    z2, moved = _rows_last(x, axis)
    y2 = xp.empty(z2.shape, dtype=F32)
    PK.softmax_kernel[PK.grid1(z2.shape[0])](z2, y2)
    y = xp.moveaxis(y2.reshape(moved), -1, axis)
    return y, ActivationCache(y, axis)


def softmax_grad(dy, cache: ActivationCache):
    """y·(dy - sum(dy·y)) along the cached axis, one thread per row."""
    y, axis = cache.value, int(cache.slope)
    check_dy("softmax_grad", dy, tuple(y.shape))
    xp = _xp()
    if y.ndim == 0:
        return xp.zeros((), dtype=F32)
    if y.size == 0:
        return xp.empty(tuple(y.shape), dtype=F32)
    y2, moved = _rows_last(y, axis)
    dy2, _ = _rows_last(dy, axis)
    dx2 = xp.empty(y2.shape, dtype=F32)
    K.softmax_grad_rows_kernel[K.grid(y2.shape[0])](dy2, y2, dx2)
    return xp.moveaxis(dx2.reshape(moved), -1, axis)


# --------------------------------------------------------------------------- layers
LAYERS = ("Linear", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Dropout",
          "BatchNorm1d", "BatchNorm2d", "Flatten", "Identity")


def unsupported(layer) -> Optional[str]:
    """Why ``layer`` cannot run on the GPU with this module's twins (one line), or None if it
    can. A layer whose class is not in ``LAYERS`` gets a reason too (its math is elsewhere,
    e.g. :mod:`mlcvlab.gpu.conv`, or nowhere on the GPU)."""
    name = type(layer).__name__
    if name not in LAYERS:
        return f"{name}: no GPU twin in mlcvlab.gpu.basis"
    for pname in ("weight", "bias"):
        p = getattr(layer, pname, None)
        data = getattr(p, "data", None)
        if data is not None and getattr(data, "dtype", F32) != F32:
            return f"{name}: {pname} is {data.dtype}; the GPU path computes in float32"
    return None


__all__ = [
    "linear", "linear_grad", "dropout", "dropout_mask", "dropout_grad", "batchnorm",
    "batchnorm_update_running", "batchnorm_eval", "batchnorm_grad_fused", "relu", "relu_grad",
    "leaky_relu", "leaky_relu_grad", "sigmoid", "sigmoid_grad", "tanh", "tanh_grad", "softmax",
    "softmax_grad", "unsupported", "LAYERS",
]
