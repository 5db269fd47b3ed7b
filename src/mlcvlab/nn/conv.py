"""Convolution and pooling kernels: im2col + one GEMM, col2im, windowed pooling.

Every forward returns ``(y, cache)`` and every ``*_grad`` takes the upstream
gradient ``dy`` and that cache, like :mod:`mlcvlab.nn.basis`. Images are NCHW.
Convolution is cross-correlation with zero padding, as in PyTorch's ``conv2d``.

How the convolution works (im2col, Chellapilla et al. 2006):

* the zero-padded input is laid out channels-last, (N, Hp, Wp, C), so every
  receptive field is a (kh, kw, C) block whose channel values are adjacent;
* a strided view picks every receptive field, (N, Ho, Wo, kh, kw, C), and one
  copy makes it the row matrix ``cols``, (N*Ho*Wo, kh*kw*C);
* then y = cols @ W_mat.T is a single GEMM, W_mat: (F, kh*kw*C).

The backward reuses ``cols`` for dW (one GEMM), computes dcols = dy_rows @ W_mat
(one GEMM) and folds dcols back onto the image (col2im) with one strided add per
kernel offset: a loop over the kh*kw offsets, never over pixels, samples or channels.

No dtype is changed: float32 in, float32 out; float64 in, float64 out.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

IntPair = Union[int, Tuple[int, int]]


# --------------------------------------------------------------------------- validation
def _pair(fn: str, name: str, value, minimum: int) -> Tuple[int, int]:
    """An int or a pair of ints -> (rows, cols), each >= ``minimum``."""
    pair = (value, value) if np.isscalar(value) else tuple(np.ravel(value))
    if len(pair) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair
    ):
        raise TypeError(f"{fn}: expected {name} to be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{fn}: expected {name} >= {minimum}, got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_4d(fn: str, name: str, a, layout: str = "(N, C, H, W)") -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{fn}: expected {name} to be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{fn}: expected {name} to be float32 or float64, got dtype {a.dtype}")
    if a.ndim != 4:
        raise ValueError(f"{fn}: expected {name} to be 4-D {layout}, got shape {a.shape}")
    return a


def _out_size(fn: str, n: int, k: int, stride: int, padding: int) -> int:
    out = (n + 2 * padding - k) // stride + 1
    if n < 1 or out < 1:
        raise ValueError(
            f"{fn}: kernel size {k} is larger than the padded input size {n + 2 * padding} "
            f"(input {n}, padding {padding}); use a smaller kernel or more padding"
        )
    return out


def conv_output_size(n: int, k: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling along one axis: floor((n + 2p - k) / s) + 1.

    Raises ValueError when it would be < 1 (kernel larger than the padded input)
    or when a size is not positive.
    """
    for name, value, minimum in (("n", n, 1), ("k", k, 1), ("stride", stride, 1),
                                 ("padding", padding, 0)):
        if int(value) != value or value < minimum:
            raise ValueError(
                f"conv_output_size: expected an integer {name} >= {minimum}, got {value!r}"
            )
    return _out_size("conv_output_size", int(n), int(k), int(stride), int(padding))


def _check_dy(fn: str, dy, shape: Tuple[int, ...]) -> np.ndarray:
    if not isinstance(dy, np.ndarray) or dy.shape != shape:
        got = dy.shape if isinstance(dy, np.ndarray) else type(dy).__name__
        raise ValueError(f"{fn}: expected dy of the forward output's shape {shape}, got {got}")
    return dy


def _pad_nhwc(x: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """x: (N, C, H, W) -> zero-padded channels-last copy (N, H + 2ph, W + 2pw, C)."""
    N, C, H, W = x.shape
    xp = np.zeros((N, H + 2 * ph, W + 2 * pw, C), dtype=x.dtype)
    xp[:, ph:ph + H, pw:pw + W, :] = x.transpose(0, 2, 3, 1)
    return xp


# --------------------------------------------------------------------------- convolution
class Conv2dCache(NamedTuple):
    cols: np.ndarray         # (N*Ho*Wo, kh*kw*C), the receptive fields as rows
    W_mat: np.ndarray        # (F, kh*kw*C), W in the same (kh, kw, C) order
    x_shape: Tuple[int, int, int, int]
    kernel: Tuple[int, int]  # (kh, kw)
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    has_bias: bool


def conv2d(x: np.ndarray, W: np.ndarray, b: Optional[np.ndarray] = None,
           stride: IntPair = 1, padding: IntPair = 0):
    """2-D convolution (cross-correlation, zero padding), as ``torch.nn.functional.conv2d``.

    x: (N, C, H, W), W: (F, C, kh, kw), b: (F,) or None; stride and padding an
    int or a pair (rows, cols). Returns y: (N, F, Ho, Wo) with
    Ho = floor((H + 2*ph - kh) / sh) + 1 (likewise Wo), and the cache for
    :func:`conv2d_grad`.
    """
    _check_4d("conv2d", "x", x)
    _check_4d("conv2d", "W", W, "(F, C, kh, kw)")
    if W.dtype != x.dtype:
        raise TypeError(f"conv2d: x is {x.dtype} but W is {W.dtype}; cast x with x.astype(W.dtype)")
    N, C, H, Wd = x.shape
    F, Cw, kh, kw = W.shape
    if Cw != C:
        raise ValueError(
            f"conv2d: x has {C} channels but W expects {Cw} (x {x.shape}, W {W.shape})"
        )
    if b is not None and (not isinstance(b, np.ndarray) or b.shape != (F,) or b.dtype != x.dtype):
        got = (b.shape, b.dtype) if isinstance(b, np.ndarray) else type(b).__name__
        raise ValueError(f"conv2d: expected b of shape ({F},) and dtype {x.dtype}, got {got}")
    sh, sw = _pair("conv2d", "stride", stride, 1)
    ph, pw = _pair("conv2d", "padding", padding, 0)
    Ho = _out_size("conv2d", H, kh, sh, ph)
    Wo = _out_size("conv2d", Wd, kw, sw, pw)

    xp = _pad_nhwc(x, ph, pw)
    # (N, Hp-kh+1, Wp-kw+1, C, kh, kw) -> every (sh, sw)-th field -> (N, Ho, Wo, kh, kw, C)
    fields = sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]
    cols = fields.transpose(0, 1, 2, 4, 5, 3).reshape(N * Ho * Wo, kh * kw * C)
    W_mat = np.ascontiguousarray(W.transpose(0, 2, 3, 1)).reshape(F, kh * kw * C)
    y_rows = cols @ W_mat.T                                    # (N*Ho*Wo, F)
    if b is not None:
        y_rows += b
    y = np.ascontiguousarray(y_rows.reshape(N, Ho, Wo, F).transpose(0, 3, 1, 2))
    cache = Conv2dCache(cols, W_mat, (N, C, H, Wd), (kh, kw), (sh, sw), (ph, pw), b is not None)
    return y, cache


def conv2d_grad(dy: np.ndarray, cache: Conv2dCache):
    """dy: (N, F, Ho, Wo) -> dx (N, C, H, W), dW (F, C, kh, kw), db (F,) or None."""
    cols, W_mat, (N, C, H, Wd), (kh, kw), (sh, sw), (ph, pw), has_bias = cache
    F = W_mat.shape[0]
    Ho = (H + 2 * ph - kh) // sh + 1
    Wo = (Wd + 2 * pw - kw) // sw + 1
    _check_dy("conv2d_grad", dy, (N, F, Ho, Wo))
    dy_rows = dy.transpose(0, 2, 3, 1).reshape(N * Ho * Wo, F)
    dW = (dy_rows.T @ cols).reshape(F, kh, kw, C).transpose(0, 3, 1, 2)
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    dcols = (dy_rows @ W_mat).reshape(N, Ho, Wo, kh, kw, C)
    dx = _col2im_nhwc(dcols, (N, H + 2 * ph, Wd + 2 * pw, C), (sh, sw))
    dx = dx[:, ph:ph + H, pw:pw + Wd, :].transpose(0, 3, 1, 2)
    return np.ascontiguousarray(dx), np.ascontiguousarray(dW), db


def _col2im_nhwc(dcols: np.ndarray, padded_shape, stride) -> np.ndarray:
    """Sum every receptive field's gradient back onto the padded image.

    dcols: (N, Ho, Wo, kh, kw, C) -> (N, Hp, Wp, C). Overlapping fields add up;
    one vectorized strided add per kernel offset (i, j).
    """
    _, Ho, Wo, kh, kw, _ = dcols.shape
    sh, sw = stride
    dxp = np.zeros(padded_shape, dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, i:i + sh * Ho:sh, j:j + sw * Wo:sw, :] += dcols[:, :, :, i, j, :]
    return dxp


# --------------------------------------------------------------------------- pooling
class PoolCache(NamedTuple):
    x_shape: Tuple[int, int, int, int]
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    argmax: Optional[np.ndarray]  # max pooling: (N, C, Ho, Wo) flat index i*kw + j in the window


def _pool_setup(fn: str, x, kernel_size, stride, padding):
    """Validate pooling arguments; returns kernel, stride, padding pairs and (Ho, Wo)."""
    _check_4d(fn, "x", x)
    kh, kw = _pair(fn, "kernel_size", kernel_size, 1)
    sh, sw = (kh, kw) if stride is None else _pair(fn, "stride", stride, 1)
    ph, pw = _pair(fn, "padding", padding, 0)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(
            f"{fn}: padding {(ph, pw)} must be at most half the kernel size {(kh, kw)} "
            f"(as in PyTorch), otherwise a window can lie entirely in the padding"
        )
    Ho = _out_size(fn, x.shape[2], kh, sh, ph)
    Wo = _out_size(fn, x.shape[3], kw, sw, pw)
    return (kh, kw), (sh, sw), (ph, pw), (Ho, Wo)


def _pad_nchw(x: np.ndarray, ph: int, pw: int, value) -> np.ndarray:
    if ph == 0 and pw == 0:
        return x
    N, C, H, W = x.shape
    xp = np.full((N, C, H + 2 * ph, W + 2 * pw), value, dtype=x.dtype)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    return xp


def maxpool2d(x: np.ndarray, kernel_size: IntPair, stride: Optional[IntPair] = None,
              padding: IntPair = 0):
    """Max pooling over (kh, kw) windows, as ``torch.nn.functional.max_pool2d``.

    x: (N, C, H, W) -> y: (N, C, Ho, Wo). ``stride`` defaults to the kernel size;
    padding counts as -inf (it never wins). The cache keeps the position of each
    window's first maximum (row-major), the element that gets the gradient.
    """
    (kh, kw), (sh, sw), (ph, pw), (Ho, Wo) = _pool_setup("maxpool2d", x, kernel_size, stride,
                                                         padding)
    xp = _pad_nchw(x, ph, pw, -np.inf)
    # (N, C, Ho, Wo, kh, kw); with stride == kernel this is just a reshape of the image
    windows = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    flat = windows.reshape(*windows.shape[:4], kh * kw)
    argmax = flat.argmax(axis=-1)                   # first maximum on ties, like torch
    y = np.take_along_axis(flat, argmax[..., None], axis=-1)[..., 0]
    index_dtype = np.min_scalar_type(kh * kw - 1)   # uint8 for kernels up to 16x16
    return y, PoolCache(x.shape, (kh, kw), (sh, sw), (ph, pw), argmax.astype(index_dtype))


def maxpool2d_grad(dy: np.ndarray, cache: PoolCache) -> np.ndarray:
    """dy: (N, C, Ho, Wo) -> dx: (N, C, H, W); each dy goes to its window's argmax."""
    (N, C, H, W), (kh, kw), (sh, sw), (ph, pw), argmax = cache
    _check_dy("maxpool2d_grad", dy, argmax.shape)
    Ho, Wo = argmax.shape[2:]
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    if (sh, sw) == (kh, kw):
        # non-overlapping windows tile the image: scatter into (.., kh*kw) and reshape back
        dwin = np.zeros((N, C, Ho, Wo, kh * kw), dtype=dy.dtype)
        np.put_along_axis(dwin, argmax[..., None].astype(np.intp), dy[..., None], axis=-1)
        dwin = dwin.reshape(N, C, Ho, Wo, kh, kw).transpose(0, 1, 2, 4, 3, 5)
        dxp[:, :, :Ho * kh, :Wo * kw] = dwin.reshape(N, C, Ho * kh, Wo * kw)
    else:
        for k in range(kh * kw):
            i, j = divmod(k, kw)
            dxp[:, :, i:i + sh * Ho:sh, j:j + sw * Wo:sw] += dy * (argmax == k)
    return np.ascontiguousarray(dxp[:, :, ph:ph + H, pw:pw + W])


def avgpool2d(x: np.ndarray, kernel_size: IntPair, stride: Optional[IntPair] = None,
              padding: IntPair = 0):
    """Average pooling over (kh, kw) windows, as ``torch.nn.functional.avg_pool2d``.

    x: (N, C, H, W) -> y: (N, C, Ho, Wo). ``stride`` defaults to the kernel size.
    Zero padding counts in the average (count_include_pad=True, torch's default),
    so every window divides by kh*kw.
    """
    (kh, kw), (sh, sw), (ph, pw), (Ho, Wo) = _pool_setup("avgpool2d", x, kernel_size, stride,
                                                         padding)
    xp = _pad_nchw(x, ph, pw, 0)
    y = np.zeros((*x.shape[:2], Ho, Wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            y += xp[:, :, i:i + sh * Ho:sh, j:j + sw * Wo:sw]
    y *= x.dtype.type(1.0 / (kh * kw))
    return y, PoolCache(x.shape, (kh, kw), (sh, sw), (ph, pw), None)


def avgpool2d_grad(dy: np.ndarray, cache: PoolCache) -> np.ndarray:
    """dy: (N, C, Ho, Wo) -> dx: (N, C, H, W); each dy spreads evenly over its window."""
    (N, C, H, W), (kh, kw), (sh, sw), (ph, pw), _ = cache
    Ho = (H + 2 * ph - kh) // sh + 1
    Wo = (W + 2 * pw - kw) // sw + 1
    _check_dy("avgpool2d_grad", dy, (N, C, Ho, Wo))
    share = dy * dy.dtype.type(1.0 / (kh * kw))
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + sh * Ho:sh, j:j + sw * Wo:sw] += share
    return np.ascontiguousarray(dxp[:, :, ph:ph + H, pw:pw + W])


__all__ = [
    "conv_output_size", "conv2d", "conv2d_grad", "maxpool2d", "maxpool2d_grad",
    "avgpool2d", "avgpool2d_grad", "Conv2dCache", "PoolCache",
]
