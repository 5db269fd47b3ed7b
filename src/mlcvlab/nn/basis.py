"""Functional forward/backward pairs: the basis the layers are built on.

Every forward returns ``(out, cache)``; every ``*_grad`` takes the upstream
gradient ``dy`` and that cache and returns the gradients in the order of the
forward's array inputs. Caches are small named tuples. Randomness and mode are
arguments (``rng``, ``train``); nothing here keeps state.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numpy as np

from mlcvlab import backend
from mlcvlab.nn import kernels, philox, threadsplit


def is_array(a) -> bool:
    """A NumPy array, or a device array (CuPy: it has the CUDA array interface)."""
    return isinstance(a, np.ndarray) or hasattr(a, "__cuda_array_interface__")


def _check_array(fn: str, name: str, a) -> np.ndarray:
    if not is_array(a):
        raise TypeError(f"{fn}: expected {name} to be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype.kind != "f":          # np.issubdtype(.., np.floating), 20x cheaper
        raise TypeError(f"{fn}: expected {name} to be float32 or float64, got dtype {a.dtype}")
    return a


def check_dy(fn: str, dy, shape: Tuple[int, ...]) -> np.ndarray:
    """dy, if it is an array of the forward output's ``shape``; else a ValueError naming ``fn``.

    Every backward checks this first: a dy of another shape would otherwise broadcast into a
    gradient of the wrong values without a word.
    """
    if not is_array(dy) or dy.shape != tuple(shape):
        got = dy.shape if is_array(dy) else type(dy).__name__
        raise ValueError(f"{fn}: expected dy of the forward output's shape {tuple(shape)}, "
                         f"got {got}")
    return dy


# --------------------------------------------------------------------------- linear
class LinearCache(NamedTuple):
    x: np.ndarray
    W: np.ndarray
    has_bias: bool


def linear(x: np.ndarray, W: np.ndarray, b: Optional[np.ndarray] = None):
    """Affine map y = x @ W.T + b.

    x: (N, in), W: (out, in), b: (out,) or None -> y: (N, out).
    """
    _check_array("linear", "x", x)
    _check_array("linear", "W", W)
    if x.ndim != 2 or W.ndim != 2:
        raise ValueError("linear: expected x (N, in) and W (out, in), "
                         f"got x {x.shape}, W {W.shape}")
    if x.shape[1] != W.shape[1]:
        raise ValueError(
            f"linear: x has {x.shape[1]} features but W expects {W.shape[1]} "
            f"(x {x.shape}, W {W.shape})"
        )
    if b is not None and b.shape != (W.shape[0],):
        raise ValueError(f"linear: expected b of shape ({W.shape[0]},), got {b.shape}")
    y = kernels.gemm(x, W.T)          # not x @ W.T: see kernels.gemm (the GIL)
    if b is not None:
        y += b
    return y, LinearCache(x, W, b is not None)


def linear_grad(dy: np.ndarray, cache: LinearCache, input_grad: bool = True,
                dW_out: Optional[np.ndarray] = None, db_out: Optional[np.ndarray] = None):
    """dy: (N, out) -> dx (N, in), dW (out, in), db (out,) or None.

    ``input_grad=False`` skips dx (returned as None): one GEMM less when x is data.
    dW and db are written into ``dW_out`` / ``db_out`` when given (e.g. a zeroed
    gradient: see ``Parameter.grad_to_overwrite``).
    """
    x, W, has_bias = cache
    check_dy("linear_grad", dy, (x.shape[0], W.shape[0]))
    dx = kernels.gemm(dy, W) if input_grad else None
    dW = kernels.gemm(dy.T, x, out=dW_out)
    db = np.sum(dy, axis=0, out=db_out) if has_bias else None
    return dx, dW, db


# --------------------------------------------------------------------------- dropout
class DropoutCache(NamedTuple):
    mask: Optional[np.ndarray]  # kept units scaled by 1/(1-p); None when identity


def dropout(x: np.ndarray, p: float, train: bool = True, rng=None,
            mask: Optional[np.ndarray] = None):
    """Inverted dropout (Srivastava et al. 2014).

    ``p`` is the probability of *dropping* a unit: units are kept with
    probability 1 - p and scaled by 1 / (1 - p), so evaluation is the identity (p = 1: zeros
    in training, as torch).
    A fresh Bernoulli mask is drawn on every call in training: from the counter-based
    generator when ``rng`` is a :class:`mlcvlab.nn.philox.DropoutKey` (what ``nn.Dropout``
    and the data-parallel and CUDA steps pass: the same mask on every device), else from
    the NumPy generator (or seed) ``rng``. Tests may inject ``mask`` (0/1 array of x's
    shape) instead.
    x: any shape -> y: same shape.
    """
    _check_array("dropout", "x", x)
    if not (0.0 <= float(p) <= 1.0):
        raise ValueError(f"dropout: p is the drop probability and must be in [0, 1], got {p}")
    if not train or p == 0.0:
        return x, DropoutCache(None)
    if mask is not None and mask.shape != x.shape:
        raise ValueError(f"dropout: mask shape {mask.shape} does not match x shape {x.shape}")
    scaled = dropout_mask(x.shape, p, rng, x.dtype, keep=mask)
    return x * scaled, DropoutCache(scaled)


def dropout_mask(shape: Tuple[int, ...], p: float, rng=None, dtype=np.float32,
                 keep: Optional[np.ndarray] = None) -> np.ndarray:
    """The scaled keep mask of inverted dropout: 1 / (1 - p) where a unit is kept, 0 where it
    is dropped (all 0 for p = 1, as torch), of ``dtype``.

    ``rng`` a :class:`mlcvlab.nn.philox.DropoutKey` (seed, stream, step): the counter-based
    Philox mask of :mod:`mlcvlab.nn.philox`, what ``nn.Dropout``, the data-parallel workers
    and the CUDA kernel draw, so every device and worker count gives the same mask. A
    ``numpy.random.Generator`` or an int seed: each unit is kept where a uniform draw
    (float64 draws for a float64 mask, float32 otherwise) is >= p, for functional callers.
    ``keep`` (0/1 or bool, of ``shape``) replaces the draw. The one home of the mask.
    """
    dtype = np.dtype(dtype)
    if keep is None and isinstance(rng, philox.DropoutKey):
        return philox.dropout_mask(shape, p, *rng, dtype=dtype)
    if keep is None:
        draw = backend.rng(rng).random(shape, dtype=np.float64 if dtype == np.float64
                                       else np.float32)
        keep = draw >= p
    else:
        keep = keep.astype(bool)
    return keep.astype(dtype) * dtype.type(philox.mask_scale(p))


def dropout_grad(dy: np.ndarray, cache: DropoutCache) -> np.ndarray:
    if cache.mask is None:
        return dy
    return check_dy("dropout_grad", dy, cache.mask.shape) * cache.mask


# --------------------------------------------------------------------------- batch norm
class BatchNormCache(NamedTuple):
    x: np.ndarray        # input, (N, D) or (N, C, H, W)
    x_hat: np.ndarray    # normalized input, same shape
    mean: np.ndarray     # (D,) or (C,)
    var: np.ndarray      # biased batch variance, (D,) or (C,)
    inv_std: np.ndarray  # 1 / sqrt(var + eps)
    gamma: np.ndarray
    eps: float


def _bn_axes(x: np.ndarray, fn: str):
    if x.ndim == 2:
        return (0,), (1, -1)
    if x.ndim == 3:
        return (0, 2), (1, -1, 1)
    if x.ndim == 4:
        return (0, 2, 3), (1, -1, 1, 1)
    raise ValueError(f"{fn}: expected a 2-D (N, D), 3-D (N, C, L) or 4-D (N, C, H, W) input, "
                     f"got shape {x.shape}")


def batchnorm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5):
    """Batch normalization with batch statistics (Ioffe & Szegedy 2015).

    Statistics are over axis 0 for x (N, D), over (N, L) for x (N, C, L), over (N, H, W) for
    x (N, C, H, W);
    the variance is the biased one. gamma, beta: (D,) or (C,).
    y = gamma * (x - mean) / sqrt(var + eps) + beta.
    """
    axes, bshape = _check_batchnorm("batchnorm", x, gamma, beta)
    if x.ndim == 4 and kernels.available():
        return _batchnorm_4d_kernel(x, gamma, beta, eps)
    mean = x.mean(axis=axes)
    xc = x - mean.reshape(bshape)
    var = np.mean(xc * xc, axis=axes)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = xc * inv_std.reshape(bshape)
    y = x_hat * gamma.reshape(bshape) + beta.reshape(bshape)
    return y, BatchNormCache(x, x_hat, mean, var, inv_std.astype(x.dtype, copy=False), gamma, eps)


def _check_batchnorm(fn: str, x, gamma, beta):
    """batchnorm's checks of its arguments; returns (axes, bshape) of x (see _bn_axes)."""
    _check_array(fn, "x", x)
    axes, bshape = _bn_axes(x, fn)
    n_feat = x.shape[1]
    if gamma.shape != (n_feat,) or beta.shape != (n_feat,):
        raise ValueError(
            f"{fn}: expected gamma and beta of shape ({n_feat},), "
            f"got {gamma.shape} and {beta.shape}"
        )
    if x.size // n_feat < 2:
        raise ValueError(
            f"{fn}: needs more than one value per feature to compute batch statistics, "
            f"got input shape {x.shape}"
        )
    return axes, bshape


def _batchnorm_4d_kernel(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float,
                         relu: bool = False):
    """batchnorm of x (N, C, H, W) in one numba kernel: two passes for the statistics, one for y
    (with ``relu``, max(y, 0) in that same pass)."""
    N, C, H, W = x.shape
    x3 = np.ascontiguousarray(x).reshape(N, C, H * W)
    y, x_hat = np.empty_like(x3), np.empty_like(x3)
    g, b = gamma.astype(x.dtype, copy=False), beta.astype(x.dtype, copy=False)
    team = threadsplit.team()
    if team is not None:                             # this is one part of a split batch
        mean, var, inv_std = _batch_statistics(x3, team, float(eps))
        kernels.get("bn_normalize")(x3, g, b, mean, inv_std, y, x_hat, 0, C, relu)
        mean, var, inv_std = (a.astype(x.dtype) for a in (mean, var, inv_std))
        cache = BatchNormCache(x, x_hat.reshape(x.shape), mean, var, inv_std, gamma, eps)
        return y.reshape(x.shape), cache
    mean, var, inv_std = (np.empty(C, dtype=x.dtype) for _ in range(3))
    kernel = kernels.get("bn_forward_channels")
    kernels.parallel_map(                            # one range of channels per thread
        lambda c: kernel(x3, g, b, float(eps), y, x_hat, mean, var, inv_std, c.start, c.stop,
                         relu),
        kernels.split(C, kernels.num_threads()))
    cache = BatchNormCache(x, x_hat.reshape(x.shape), mean, var, inv_std, gamma, eps)
    return y.reshape(x.shape), cache


def _batch_statistics(x3: np.ndarray, team, eps: float):
    """Mean, biased variance and 1 / std (float64, (C,)) over the whole batch, from this part
    x3 (n, C, L) and the other parts of ``team`` (:mod:`nn.threadsplit`), in one meeting:
    each part's count, sums and squared deviations from its own mean (the two passes of
    ``bn_forward_channels`` on the part), combined as the parallel variance of Chan, Golub and
    LeVeque (1979): M2 = sum over parts of M2_k + n_k (mean_k - mean)^2, no cancellation."""
    C, n_k = x3.shape[1], x3.shape[0] * x3.shape[2]
    mine = np.zeros(2 * C + 1)                   # count, sums (C), squared deviations (C)
    mine[0] = n_k
    kernels.get("bn_channel_sums")(x3, 0, C, mine[1:C + 1])
    kernels.get("bn_channel_sq_dev")(x3, mine[1:C + 1] / n_k, 0, C, mine[C + 1:])
    parts = team.allgather(mine)
    counts, sums, m2 = parts[:, :1], parts[:, 1:C + 1], parts[:, C + 1:]
    m = counts.sum()
    mean = sums.sum(axis=0) / m
    var = (m2.sum(axis=0) + (counts * (sums / counts - mean) ** 2).sum(axis=0)) / m
    return mean, var, 1.0 / np.sqrt(var + eps)


def _batchnorm_grad_part(dy3: np.ndarray, x_hat3: np.ndarray, scale: np.ndarray, team):
    """batchnorm_grad_fused on one part of a split batch: dx of this part from the whole
    batch's sums of dy and dy * x_hat; dgamma, dbeta this part's share (the parts' shares
    are added up with the rest of the parameter gradients)."""
    C = dy3.shape[1]
    sums = np.zeros(2 * C)
    kernels.get("bn_grad_sums")(dy3, x_hat3, 0, C, sums[:C], sums[C:])
    total = team.allreduce(sums)
    dx3 = np.empty_like(dy3)
    kernels.get("bn_grad_apply")(dy3, x_hat3, scale, total[:C], total[C:],
                                 team.batch * dy3.shape[2], dx3, 0, C)
    return dx3, sums[C:].astype(dy3.dtype), sums[:C].astype(dy3.dtype)


def batchnorm_update_running(running_mean: np.ndarray, running_var: np.ndarray,
                             mean: np.ndarray, var: np.ndarray, count: int,
                             momentum: float) -> None:
    """Fold one batch's statistics into the running ones, in place, as PyTorch:
    running = (1 - momentum)·running + momentum·batch statistic, the running variance taking the
    unbiased batch variance var·count / (count - 1).

    mean, var: the batch's mean and biased variance, (C,); count: values per feature in the
    batch (N, or N·H·W). The one home of this update: the BatchNorm layers, NN4's written-out
    forward and the GPU workers of ``--dist cuda`` all call it.
    """
    running_mean *= 1 - momentum
    running_mean += momentum * mean
    running_var *= 1 - momentum
    running_var += momentum * var * (count / (count - 1))


def batchnorm_eval_affine(gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                          running_var: np.ndarray, eps: float, dtype):
    """(scale, shift) per feature of batch norm in evaluation, in ``dtype``: y = x·scale + shift
    with scale = gamma / sqrt(running_var + eps), shift = beta - running_mean·scale. The one
    place these are computed: :func:`batchnorm_eval` applies them, ``Conv2d`` folds them into
    its weights and bias when an evaluation-mode batch norm follows it."""
    inv_std = 1.0 / np.sqrt(running_var + eps)
    scale = (gamma * inv_std).astype(dtype, copy=False)
    shift = (beta - running_mean * scale).astype(dtype, copy=False)
    return scale, shift


def batchnorm_eval(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                   running_mean: np.ndarray, running_var: np.ndarray, eps: float,
                   then_relu: bool = False) -> np.ndarray:
    """Batch norm in evaluation: y = x·scale + shift per feature, with
    scale = gamma / sqrt(running_var + eps) and shift = beta - running_mean·scale.

    x: (N, C), (N, C, L) or (N, C, H, W); the other arrays (C,). A contiguous input of the
    parameters' dtype runs one numba kernel (rows of the batch in parallel); the rest NumPy.
    ``then_relu``: return relu(y) instead, in the kernel's same pass (a ReLU after the batch norm,
    fused by ``Sequential``: one pass over the activation less).
    """
    scale, shift = batchnorm_eval_affine(gamma, beta, running_mean, running_var, eps, x.dtype)
    y = np.empty(x.shape, dtype=np.result_type(x, scale))
    if kernels.available() and x.flags.c_contiguous and y.dtype == x.dtype:
        kernel = kernels.get("channel_affine")
        x3 = x.reshape(x.shape[0], x.shape[1], int(np.prod(x.shape[2:])))
        y3 = y.reshape(x3.shape)
        kernels.parallel_map(lambda p: kernel(x3[p], scale, shift, y3[p], then_relu),
                             kernels.row_parts(x))
        return y
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale, shift = scale.reshape(shape), shift.reshape(shape)

    def affine(p: slice) -> None:               # y[p] = x[p] * scale + shift
        np.multiply(x[p], scale, out=y[p])
        y[p] += shift

    kernels.parallel_map(affine, kernels.row_parts(x))
    return relu(y)[0] if then_relu else y


def batchnorm_grad(dy: np.ndarray, cache: BatchNormCache):
    """The handout's step-by-step backward: dl/dx_hat, dl/dvar, dl/dmean, dl/dx, dl/dgamma,
    dl/dbeta.

    Returns (dx, dgamma, dbeta). m is the number of values per feature.
    """
    x, x_hat, mean, var, inv_std, gamma, eps = cache
    check_dy("batchnorm_grad", dy, x_hat.shape)
    axes, bshape = _bn_axes(x, "batchnorm_grad")
    m = x.size // x.shape[1]
    mu = mean.reshape(bshape)
    istd = inv_std.reshape(bshape)
    dx_hat = dy * gamma.reshape(bshape)                                        # dl/dx_hat
    dvar = np.sum(dx_hat * (x - mu), axis=axes) * -0.5 * inv_std ** 3          # dl/dvar
    dmean = (np.sum(dx_hat * -istd, axis=axes)
             + dvar * np.sum(-2.0 * (x - mu), axis=axes) / m)                  # dl/dmean
    dx = dx_hat * istd + dvar.reshape(bshape) * 2.0 * (x - mu) / m + dmean.reshape(bshape) / m
    dgamma = np.sum(dy * x_hat, axis=axes)                                     # dl/dgamma
    dbeta = np.sum(dy, axis=axes)                                              # dl/dbeta
    return dx.astype(x.dtype, copy=False), dgamma, dbeta


def batchnorm_grad_fused(dy: np.ndarray, cache: BatchNormCache):
    """Closed form of the same gradient, in one pass over dy:
    dx = gamma * inv_std * (dy - mean(dy) - x_hat * mean(dy * x_hat)).

    It needs x_hat, inv_std and gamma of the cache, not x: the BatchNorm layers drop x from their
    cache (one activation less held per layer until the backward).
    """
    _, x_hat, _, _, inv_std, gamma, _ = cache
    check_dy("batchnorm_grad_fused", dy, x_hat.shape)
    axes, bshape = _bn_axes(x_hat, "batchnorm_grad_fused")
    if x_hat.size == 0:                              # an empty batch: nothing flows back
        C = x_hat.shape[1]
        return np.empty_like(dy), np.zeros(C, dy.dtype), np.zeros(C, dy.dtype)
    team = threadsplit.team()
    if team is not None:                             # this is one part of a split batch
        N, C, H, W = x_hat.shape
        dy3 = np.ascontiguousarray(dy, dtype=x_hat.dtype).reshape(N, C, H * W)
        dx3, dgamma, dbeta = _batchnorm_grad_part(
            dy3, np.ascontiguousarray(x_hat).reshape(N, C, H * W),
            (gamma * inv_std).astype(x_hat.dtype, copy=False), team)
        return dx3.reshape(x_hat.shape), dgamma, dbeta
    if x_hat.ndim == 4 and kernels.available() and dy.dtype == x_hat.dtype:
        N, C, H, W = x_hat.shape
        dx, dgamma, dbeta = (np.empty(x_hat.shape, dtype=dy.dtype), np.empty(C, dy.dtype),
                             np.empty(C, dy.dtype))
        scale = (gamma * inv_std).astype(dy.dtype, copy=False)
        dy3 = np.ascontiguousarray(dy).reshape(N, C, H * W)
        x_hat3, dx3 = np.ascontiguousarray(x_hat).reshape(N, C, H * W), dx.reshape(N, C, H * W)
        kernel = kernels.get("bn_backward_channels")
        kernels.parallel_map(                        # one range of channels per thread
            lambda c: kernel(dy3, x_hat3, scale, dx3, dgamma, dbeta, c.start, c.stop),
            kernels.split(C, kernels.num_threads()))
        return dx, dgamma, dbeta
    m = x_hat.size // x_hat.shape[1]
    dbeta = dy.sum(axis=axes)
    dgamma = np.sum(dy * x_hat, axis=axes)
    scale = (gamma * inv_std).reshape(bshape)
    dx = scale * (dy - (dbeta / m).reshape(bshape) - x_hat * (dgamma / m).reshape(bshape))
    return dx.astype(x_hat.dtype, copy=False), dgamma, dbeta


# --------------------------------------------------------------------------- batch norm + ReLU
def batchnorm_relu(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5):
    """relu(batchnorm(x, gamma, beta, eps)) with batch statistics, the ReLU in the pass that
    writes y (one pass over the activation and one allocation less than the two calls; the
    same float operations). Returns (y, bn_cache, relu_cache): the caches batchnorm and relu
    (of its output y) would return, so batchnorm_grad_fused and relu_grad work on them as on
    the unfused pair's. x: (N, C, H, W) runs the kernel; any other input the two functions in
    turn. ``Sequential`` calls it for a BatchNorm2d followed by a ReLU on the CPU."""
    _check_batchnorm("batchnorm_relu", x, gamma, beta)
    if not (x.ndim == 4 and kernels.available()):
        z, bn_cache = batchnorm(x, gamma, beta, eps)
        y, relu_cache = relu(z)
        return y, bn_cache, relu_cache
    y, bn_cache = _batchnorm_4d_kernel(x, gamma, beta, eps, relu=True)
    return y, bn_cache, ActivationCache(y)


# --------------------------------------------------------------------------- activations
class ActivationCache(NamedTuple):
    value: np.ndarray   # the input for leaky_relu, the output for relu/sigmoid/tanh/softmax
    slope: float = 0.0


def relu(x: np.ndarray):
    """max(x, 0), elementwise; large arrays in one slice of axis 0 per thread.

    The cache keeps the output y, not x: y <= 0 exactly where x <= 0 (and y is nan where x
    is), and the layer before may free x (as torch's relu saves its result).
    """
    _check_array("relu", "x", x)
    if x.ndim == 0:
        y = np.maximum(x, 0)
        return y, ActivationCache(y)
    y = np.empty_like(x)
    if kernels.available() and x.flags.c_contiguous:
        kernel = kernels.get("relu_forward")
        kernels.parallel_map(lambda p: kernel(x[p].reshape(-1), y[p].reshape(-1)),
                             kernels.row_parts(x))
    else:
        kernels.parallel_map(lambda p: np.maximum(x[p], 0, out=y[p]), kernels.row_parts(x))
    return y, ActivationCache(y)


def add_relu(a: np.ndarray, b: np.ndarray):
    """relu(a + b) in one pass, without the sum's array: a residual block's sum and the ReLU
    after it. Equal to ``relu(a + b)`` bit for bit, with the same cache (the output); a and b
    of different dtypes go through ``relu(a + b)`` itself (NumPy's promotion).
    a, b: the same shape -> y: that shape."""
    _check_array("add_relu", "a", a)
    _check_array("add_relu", "b", b)
    if a.shape != b.shape:
        raise ValueError(f"add_relu: expected a and b of one shape, got {a.shape} and {b.shape}")
    if a.ndim == 0 or a.dtype != b.dtype or not (kernels.available() and a.flags.c_contiguous
                                                 and b.flags.c_contiguous):
        return relu(a + b)
    y = np.empty_like(a)
    kernel = kernels.get("add_relu_forward")
    kernels.parallel_map(lambda p: kernel(a[p].reshape(-1), b[p].reshape(-1), y[p].reshape(-1)),
                         kernels.row_parts(a))
    return y, ActivationCache(y)


def relu_grad(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    """0 where the input was <= 0, dy elsewhere, as torch's threshold_backward: 0 even where
    dy is nan, and dy where the input was nan (nan <= 0 is false). Read off the cached output
    y, which is <= 0 exactly where x <= 0 and nan where x is nan. Large arrays in one slice of
    axis 0 per thread."""
    y = cache.value
    check_dy("relu_grad", dy, y.shape)
    if dy.dtype != y.dtype or y.ndim == 0:
        return np.where(y <= 0, 0, dy).astype(np.result_type(dy, y), copy=False)
    dy, y = np.ascontiguousarray(dy), np.ascontiguousarray(y)
    dx = np.empty_like(dy)
    if kernels.available():
        kernel = kernels.get("relu_backward")
        kernels.parallel_map(lambda p: kernel(dy[p].reshape(-1), y[p].reshape(-1),
                                              dx[p].reshape(-1)), kernels.row_parts(y))
    else:
        dx[...] = np.where(y <= 0, 0, dy)
    return dx


def leaky_relu(x: np.ndarray, slope: float = 0.01):
    """x for x > 0, slope * x otherwise (Maas et al. 2013)."""
    _check_array("leaky_relu", "x", x)
    return np.where(x > 0, x, x * x.dtype.type(slope)), ActivationCache(x, slope)


def leaky_relu_grad(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    x = cache.value
    check_dy("leaky_relu_grad", dy, x.shape)
    return dy * np.where(x > 0, x.dtype.type(1), x.dtype.type(cache.slope))


def sigmoid(x: np.ndarray):
    """1 / (1 + exp(-x)), computed without overflow for large |x|."""
    _check_array("sigmoid", "x", x)
    e = np.exp(-np.abs(x))
    y = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)
    return y, ActivationCache(y)


def sigmoid_grad(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    y = cache.value
    check_dy("sigmoid_grad", dy, y.shape)
    return dy * y * (1 - y)


def tanh(x: np.ndarray):
    _check_array("tanh", "x", x)
    y = np.tanh(x)
    return y, ActivationCache(y)


def tanh_grad(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    y = cache.value
    check_dy("tanh_grad", dy, y.shape)
    return dy * (1 - y * y)


def softmax(x: np.ndarray, axis: int = -1):
    """exp(x) / sum(exp(x)) along ``axis``, shifted by the max for stability."""
    _check_array("softmax", "x", x)
    if x.size == 0:                                 # an empty axis or batch: empty, as torch
        y = np.empty_like(x)
        return y, ActivationCache(y, axis)
    if x.ndim == 0:                                 # a scalar is its own axis: 1, as torch
        if axis not in (0, -1):
            raise ValueError(f"softmax: axis {axis} is out of range for a 0-D input")
        y = np.ones_like(x)
        return y, ActivationCache(y, axis)
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    y = e / e.sum(axis=axis, keepdims=True)
    return y, ActivationCache(y, axis)


def softmax_grad(dy: np.ndarray, cache: ActivationCache) -> np.ndarray:
    y, axis = cache.value, int(cache.slope)
    check_dy("softmax_grad", dy, y.shape)
    if y.ndim == 0:
        return np.zeros_like(dy)
    return y * (dy - np.sum(dy * y, axis=axis, keepdims=True))


__all__ = [
    "linear", "linear_grad", "dropout", "dropout_mask", "dropout_grad", "batchnorm",
    "batchnorm_update_running", "batchnorm_eval", "batchnorm_grad", "batchnorm_grad_fused",
    "batchnorm_relu",
    "relu", "relu_grad", "leaky_relu", "leaky_relu_grad", "sigmoid", "sigmoid_grad", "tanh",
    "tanh_grad", "softmax", "softmax_grad",
]
