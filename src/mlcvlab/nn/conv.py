"""Convolution and pooling kernels: im2col + one GEMM, col2im, windowed pooling.

Every forward returns ``(y, cache)`` and every ``*_grad`` takes the upstream
gradient ``dy`` and that cache, like :mod:`mlcvlab.nn.basis`. Images are NCHW.
Convolution is cross-correlation with zero padding, as in PyTorch's ``conv2d``.

How the convolution works (im2col, Chellapilla et al. 2006):

* im2col lays every zero-padded receptive field of x (N, C, H, W) out as a
  column of ``cols`` (C*kh*kw, N*Ho*Wo), rows in (c, i, j) order, so the weights
  W (F, C, kh, kw) reshape to the matching matrix W_mat (F, C*kh*kw) without a copy;
* then y = W_mat @ cols is a single GEMM, (F, N*Ho*Wo), transposed to NCHW.

im2col is one strided copy from a sliding-window view of the padded input into
a per-thread scratch buffer reused by every layer and step; its adjoint col2im
is a numba kernel (``mlcvlab.nn.kernels``), with the NumPy version (one strided
add per kernel offset, :func:`col2im_numpy`) used when numba is missing.
The cache keeps the input x, not ``cols`` (C*kh*kw times larger): the backward
rebuilds ``cols`` for dW = dy_t @ cols^T, computes dcols = W_mat^T @ dy_t
into the same buffer and folds it back onto the image (col2im). Both passes
run over blocks of the batch whose ``cols`` fit in ``BLOCK_BYTES`` (2 MiB), so
each GEMM reads its ``cols`` from cache rather than main memory: a loop over a
few cache-sized blocks, not over samples, pixels or channels. Before that the
batch is split into one part per thread (``kernels.parallel_map``; as many
threads as the BLAS thread limit allows): each part pads, im2cols, multiplies
and col2ims its own samples in its own scratch buffer, and the backward sums
the parts' dW. A convolution under ``PARALLEL_MIN_FLOPS`` (LeNet-5's) is not split:
it runs whole in the calling thread with BLAS on one thread, since waking a
second thread would cost about what it saves.

Stride-1 convolutions (all but the downsampling ones in a ResNet) use a variant
of this, the row-padded layout (see the section below): the zero padding is
stored once per row, so every kernel offset's values are long contiguous runs
and im2col / col2im copy or add whole runs instead of 8-32-value image rows, at
the price of ``kw - 1 - pw`` computed-and-dropped output columns per row.

No dtype is changed: float32 in, float32 out; float64 in, float64 out.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mlcvlab.nn import kernels
from mlcvlab.nn.basis import check_dy

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


# --------------------------------------------------------------------------- im2col / col2im
def _use_numba() -> bool:
    return kernels.available()


def im2col_numpy(x: np.ndarray, kernel, stride, padding, out: Optional[np.ndarray] = None,
                 padded: bool = False) -> np.ndarray:
    """The receptive fields of x as columns, by one strided copy from a sliding-window view.

    x: (N, C, H, W) -> cols (C*kh*kw, N*Ho*Wo): row (c, i, j), column (n, ho, wo).
    ``out``: write into this (C*kh*kw, N*Ho*Wo) array instead of a new one;
    ``padded``: x is already zero-padded by ``padding``.
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    N, C = x.shape[:2]
    xp = x if padded else _pad_nchw(x, ph, pw, 0)
    fields = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    Ho, Wo = fields.shape[2:4]
    fields = fields.transpose(1, 4, 5, 0, 2, 3)               # (C, kh, kw, N, Ho, Wo)
    if out is None:
        return fields.reshape(C * kh * kw, N * Ho * Wo)
    np.copyto(out.reshape(fields.shape), fields)
    return out


def col2im_numpy(cols: np.ndarray, x_shape, kernel, stride, padding) -> np.ndarray:
    """The adjoint of :func:`im2col_numpy`: add every column back onto its receptive field.

    cols: (C*kh*kw, N*Ho*Wo) -> dx: (N, C, H, W); one strided add per kernel offset.
    """
    (N, C, H, W), (kh, kw), (sh, sw), (ph, pw) = x_shape, kernel, stride, padding
    Ho = (H + 2 * ph - kh) // sh + 1
    Wo = (W + 2 * pw - kw) // sw + 1
    fields = cols.reshape(C, kh, kw, N, Ho, Wo)
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + sh * Ho:sh, j:j + sw * Wo:sw] += fields[:, i, j].transpose(1, 0, 2, 3)
    return np.ascontiguousarray(dxp[:, :, ph:ph + H, pw:pw + W])


# im2col works on blocks of the batch whose column matrix fits in this many bytes, so
# that the GEMM reads it back from cache instead of main memory (cache blocking).
BLOCK_BYTES = 2 * 2**20


def _blocks(x: np.ndarray, K: int, Ho: int, Wo: int):
    """Slices of the batch axis of x with at most BLOCK_BYTES of im2col each."""
    n = x.shape[0]
    per_sample = K * Ho * Wo * x.dtype.itemsize
    step = max(1, min(n, BLOCK_BYTES // per_sample))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


# A convolution splits its batch over the threads only if its forward GEMM has at least this
# many FLOPs (2 x multiply-adds; the backward's two GEMMs have twice as many). A smaller one
# runs whole in the calling thread with BLAS on one thread: waking the second thread costs
# 0.2-0.6 ms on a virtual CPU that was idle, about what LeNet-5's convs (22 and 39 MFLOP, 1-4 ms)
# would save, and their GEMMs are too small for BLAS's own threads to pay either. Measured on
# LeNet-5, 2 threads, in-process A/B: train step +10.8 %, eval +15.7 % (BENCHMARKS.md, session 5).
# ResNet-20's convs (302-604 MFLOP) still split.
PARALLEL_MIN_FLOPS = 10**8


def _batch_parts(n: int, flops: float):
    """The batch [0, n) in one contiguous part per thread, or whole if the conv is too small to
    split (PARALLEL_MIN_FLOPS)."""
    return kernels.split(n, kernels.num_threads() if flops >= PARALLEL_MIN_FLOPS else 1)


def _map_parts(fn, parts):
    """fn over the batch parts: on separate threads (kernels.parallel_map), or for one part
    here, with BLAS on one thread."""
    if len(parts) > 1:
        return kernels.parallel_map(fn, parts)
    with kernels.one_blas_thread():
        return [fn(parts[0])]


def _im2col(xp: np.ndarray, kernel, stride, padding, Ho: int, Wo: int) -> np.ndarray:
    """xp (n, C, Hp, Wp), already zero-padded -> cols (C*kh*kw, n*Ho*Wo) in the per-thread
    scratch buffer (reused by every layer and step)."""
    N, C = xp.shape[:2]
    cols = kernels.scratch((C * kernel[0] * kernel[1], N * Ho * Wo), xp.dtype)
    return im2col_numpy(xp, kernel, stride, padding, out=cols, padded=True)


def _col2im(cols: np.ndarray, kernel, stride, padding, dx: np.ndarray) -> None:
    """Write the col2im of cols (C*kh*kw, n*Ho*Wo) into dx (n, C, H, W)."""
    if _use_numba():
        kernels.get("col2im")(cols, *kernel, *stride, *padding, dx)
    else:
        dx[...] = col2im_numpy(cols, dx.shape, kernel, stride, padding)


# --------------------------------------------------------------------------- stride 1: row padding
# A stride-1 convolution reads its input through the row-padded layout: every image plane
# is stored flat, each row as ``pw`` zeros followed by the W pixels (``pitch = W + pw``
# values), with ``ph`` zero rows above and below; a row's leading zeros are also the
# previous row's right padding. The window of output (ho, wo) at kernel offset (i, j) then
# starts at flat position (ho + i) * pitch + wo + j, so computing the outputs on a
# (Ho, pitch) grid, the values that offset (i, j) needs from one plane are a single
# contiguous run of Ho * pitch values from position i * pitch + j. im2col becomes a copy of
# long runs (rows of 8-32 values before) and col2im an add of long runs; the price is
# ``pitch - Wo = kw - 1 - pw`` extra output columns per row (1 for a 3x3 kernel with
# padding 1), computed by the GEMM and dropped.
class RowPadded(NamedTuple):
    """The geometry of the row-padded layout of a stride-1 convolution's input."""
    pitch: int  # values per stored row: pw zeros, then the W pixels
    rows: int   # stored rows per plane: ph zero rows, the H image rows, ph zero rows
    plane: int  # rows * pitch
    slack: int  # zeros after the last plane, which its last runs reach into
    Ho: int
    Wo: int


def row_padded_geometry(H: int, W: int, kernel, stride, padding) -> Optional[RowPadded]:
    """The layout for a conv of an (H, W) image, or None when it does not apply (a stride
    other than 1, or ``pw > kw - 1``: then the output is wider than a stored row)."""
    (kh, kw), (ph, pw) = kernel, padding
    if tuple(stride) != (1, 1) or pw > kw - 1:
        return None
    pitch, rows = W + pw, H + 2 * ph
    return RowPadded(pitch, rows, rows * pitch, kw - 1, rows - kh + 1, W + 2 * pw - kw + 1)


def _planes(buf: np.ndarray, n: int, C: int, g: RowPadded) -> np.ndarray:
    """The (n, C, rows, pitch) planes of a flat row-padded buffer."""
    return buf[:n * C * g.plane].reshape(n, C, g.rows, g.pitch)


def pad_rows(x: np.ndarray, g: RowPadded, padding, buf: Optional[np.ndarray] = None):
    """x (n, C, H, W) -> its flat row-padded buffer (n*C*plane + slack values), zeros around
    the pixels; in ``buf`` if given, else in the per-thread scratch."""
    n, C, H, W = x.shape
    ph, pw = padding
    if buf is None:
        buf = kernels.scratch((n * C * g.plane + g.slack,), x.dtype, slot="pad")
    buf.fill(0)
    _planes(buf, n, C, g)[:, :, ph:ph + H, pw:] = x
    return buf


def _runs(buf: np.ndarray, n: int, C: int, kernel, g: RowPadded, start: int = 0) -> np.ndarray:
    """A (C, kh, kw, n, Ho*pitch) view of the flat buf from ``start``: [c, i, j, m] is plane
    (m, c)'s run for offset (i, j). Runs of one offset never overlap (each ends before the
    next plane's starts). NumPy checks that the view stays inside buf."""
    kh, kw = kernel
    it = buf.itemsize
    return np.ndarray((C, kh, kw, n, g.Ho * g.pitch), buf.dtype, buffer=buf, offset=start * it,
                      strides=(g.plane * it, g.pitch * it, it, C * g.plane * it, it))


def im2col_rows(buf: np.ndarray, n: int, C: int, kernel, g: RowPadded,
                out: Optional[np.ndarray] = None) -> np.ndarray:
    """The row-padded buffer of n images -> cols (C*kh*kw, n*Ho*pitch), row (c, i, j) and
    column (m, ho, wo) with wo < pitch, in ``out`` if given, else in the per-thread scratch."""
    kh, kw = kernel
    if out is None:
        out = kernels.scratch((C * kh * kw, n * g.Ho * g.pitch), buf.dtype)
    runs = _runs(buf, n, C, kernel, g)
    np.copyto(out.reshape(runs.shape), runs)
    return out


def col2im_rows(cols: np.ndarray, n: int, C: int, kernel, g: RowPadded, buf: np.ndarray) -> None:
    """The adjoint of :func:`im2col_rows`: add every run of cols onto the row-padded buffer
    ``buf``, which it zeroes first."""
    buf.fill(0)
    if _use_numba():
        kernels.get("col2im_rows")(cols, n, C, *kernel, g.pitch, g.plane, g.Ho, buf)
        return
    kh, kw = kernel
    fields = cols.reshape(C, kh, kw, n, -1)
    for i in range(kh):
        for j in range(kw):
            target = _runs(buf, n, C, (1, 1), g, start=i * g.pitch + j)[:, 0, 0]
            target += fields[:, i, j]


# --------------------------------------------------------------------------- convolution
class Conv2dCache(NamedTuple):
    x: np.ndarray            # the input (N, C, H, W), kept by reference (not copied)
    W: np.ndarray            # the weights (F, C, kh, kw), the parameter itself
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
    :func:`conv2d_grad`. The cache keeps x, not the im2col matrix (C*kh*kw
    times larger): the backward rebuilds it, which costs one cheap pass.
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
    stride = _pair("conv2d", "stride", stride, 1)
    padding = _pair("conv2d", "padding", padding, 0)
    Ho = _out_size("conv2d", H, kh, stride[0], padding[0])
    Wo = _out_size("conv2d", Wd, kw, stride[1], padding[1])

    K = C * kh * kw
    W_mat = W.reshape(F, K)
    y = np.empty((N, F, Ho, Wo), dtype=x.dtype)
    g = row_padded_geometry(H, Wd, (kh, kw), stride, padding)
    wide = Wo if g is None else g.pitch             # columns of the GEMM's output grid

    def forward_part(part: slice) -> None:          # the samples x[part] -> y[part]
        x_part, y_part = x[part], y[part]
        if g is None:
            x_part = _pad_nchw(x_part, *padding, 0)
        for blk in _blocks(x_part, K, Ho, wide):
            n = blk.stop - blk.start
            if g is None:
                cols = _im2col(x_part[blk], (kh, kw), stride, padding, Ho, Wo)
            else:
                cols = im2col_rows(pad_rows(x_part[blk], g, padding), n, C, (kh, kw), g)
            y_t = np.matmul(W_mat, cols, out=kernels.scratch((F, cols.shape[1]), x.dtype, "out"))
            if b is not None:                       # on the GEMM's output, still in cache
                y_t += b[:, None]
            y_part[blk] = y_t.reshape(F, n, Ho, wide)[..., :Wo].transpose(1, 0, 2, 3)

    _map_parts(forward_part, _batch_parts(N, 2.0 * N * F * K * Ho * Wo))
    return y, Conv2dCache(x, W, (kh, kw), stride, padding, b is not None)


def conv2d_grad(dy: np.ndarray, cache: Conv2dCache, input_grad: bool = True):
    """dy: (N, F, Ho, Wo) -> dx (N, C, H, W), dW (F, C, kh, kw), db (F,) or None.

    ``input_grad=False`` skips dx (returned as None): no dcols GEMM and no col2im,
    for a first layer whose input is data.

    dW = dy_t @ cols^T and dcols = W_mat^T @ dy_t (two GEMMs), then col2im;
    dy_t (F, N*Ho*Wo) is dy with the batch and channel axes swapped (in the
    row-padded layout: (F, N*Ho*pitch), zero in the dropped columns, so that
    they add nothing to dW or dx).
    """
    x, W, kernel, stride, padding, has_bias = cache
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    N, C, H, Wd = x.shape
    F = W.shape[0]
    Ho = (H + 2 * ph - kh) // sh + 1
    Wo = (Wd + 2 * pw - kw) // sw + 1
    check_dy("conv2d_grad", dy, (N, F, Ho, Wo))
    K = C * kh * kw
    W_mat = W.reshape(F, K)
    dx = np.empty(x.shape, dtype=dy.dtype) if input_grad else None
    g = row_padded_geometry(H, Wd, kernel, stride, padding)
    wide = Wo if g is None else g.pitch             # columns of the GEMM's output grid

    def backward_part(part: slice):                 # dx[part]; this part's share of dW, db
        dW = np.zeros_like(W_mat)
        db = np.zeros(F, dtype=dy.dtype) if has_bias else None
        x_part, dy_part = x[part], dy[part]
        if g is None:
            x_part = _pad_nchw(x_part, ph, pw, 0)
        for blk in _blocks(x_part, K, Ho, wide):
            n = blk.stop - blk.start
            dy_t = kernels.scratch((F, n, Ho, wide), dy.dtype, "dy")
            dy_t[..., :Wo] = dy_part[blk].transpose(1, 0, 2, 3)
            dy_t[..., Wo:] = 0
            dy_t = dy_t.reshape(F, n * Ho * wide)
            if has_bias:                            # the dropped columns are 0: they add 0
                db += dy_t.sum(axis=1)
            if g is None:
                cols = _im2col(x_part[blk], kernel, stride, padding, Ho, Wo)
            else:
                buf = pad_rows(x_part[blk], g, padding)
                cols = im2col_rows(buf, n, C, kernel, g)
            dW += dy_t @ cols.T                                # (F, C*kh*kw)
            if dx is None:
                continue
            dcols = np.matmul(W_mat.T, dy_t, out=cols)         # reuses the scratch
            dx_blk = dx[part][blk]
            if g is None:
                _col2im(dcols, kernel, stride, padding, dx_blk)
            else:
                col2im_rows(dcols, n, C, kernel, g, buf)
                dx_blk[...] = _planes(buf, n, C, g)[:, :, ph:ph + H, pw:]
        return dW, db

    shares = _map_parts(backward_part, _batch_parts(N, 2.0 * N * F * K * Ho * Wo))
    dW = sum(share[0] for share in shares)
    db = sum(share[1] for share in shares) if has_bias else None
    return dx, dW.reshape(W.shape), db


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


def _is_2x2(kernel, stride, padding) -> bool:
    """The common 2x2 / stride 2 / no padding pooling, which has its own kernels."""
    return kernel == (2, 2) and stride == (2, 2) and padding == (0, 0)


def maxpool2d(x: np.ndarray, kernel_size: IntPair, stride: Optional[IntPair] = None,
              padding: IntPair = 0):
    """Max pooling over (kh, kw) windows, as ``torch.nn.functional.max_pool2d``.

    x: (N, C, H, W) -> y: (N, C, Ho, Wo). ``stride`` defaults to the kernel size;
    padding counts as -inf (it never wins). The cache keeps the position of each
    window's first maximum (row-major), the element that gets the gradient; a nan
    in a window makes its output nan (as in torch), at the first nan.
    """
    (kh, kw), (sh, sw), (ph, pw), (Ho, Wo) = _pool_setup("maxpool2d", x, kernel_size, stride,
                                                         padding)
    index_dtype = np.min_scalar_type(kh * kw - 1)   # uint8 for kernels up to 16x16
    if _use_numba():
        y = np.empty((*x.shape[:2], Ho, Wo), dtype=x.dtype)
        argmax = np.empty(y.shape, dtype=index_dtype)
        # the fast kernels let no nan win; one sum (~0.1 ms for LeNet-5's pooling) finds them
        has_nan = bool(np.isnan(np.sum(x)))
        if _is_2x2((kh, kw), (sh, sw), (ph, pw)) and not has_nan:
            kernels.get("maxpool_2x2")(np.ascontiguousarray(x), y, argmax)
        else:
            kernels.get("maxpool")(np.ascontiguousarray(x), kh, kw, sh, sw, ph, pw, y, argmax,
                                   has_nan)
    else:
        y, argmax = maxpool2d_numpy(x, (kh, kw), (sh, sw), (ph, pw))
        argmax = argmax.astype(index_dtype)
    return y, PoolCache(x.shape, (kh, kw), (sh, sw), (ph, pw), argmax)


def maxpool2d_numpy(x: np.ndarray, kernel, stride, padding):
    """The NumPy reference of max pooling: (y, argmax), both (N, C, Ho, Wo)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    xp = _pad_nchw(x, ph, pw, -np.inf)

    def windows_of(a):  # (N, C, Ho, Wo, kh*kw); with stride == kernel just a reshape
        w = sliding_window_view(a, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
        return w.reshape(*w.shape[:4], kh * kw)

    flat = windows_of(xp)
    argmax = flat.argmax(axis=-1)                   # first maximum on ties (or first nan)
    if ph or pw:     # a window whose pixels are all -inf: its first pixel, not the padding
        inside = windows_of(_pad_nchw(np.ones((1, 1) + x.shape[2:], bool), ph, pw, False))
        first_inside = inside.argmax(axis=-1)
        all_ninf = np.isneginf(np.take_along_axis(flat, argmax[..., None], axis=-1)[..., 0])
        argmax = np.where(all_ninf, first_inside, argmax)
    return np.take_along_axis(flat, argmax[..., None], axis=-1)[..., 0], argmax


def maxpool2d_grad(dy: np.ndarray, cache: PoolCache) -> np.ndarray:
    """dy: (N, C, Ho, Wo) -> dx: (N, C, H, W); each dy goes to its window's argmax."""
    (N, C, H, W), (kh, kw), (sh, sw), (ph, pw), argmax = cache
    check_dy("maxpool2d_grad", dy, argmax.shape)
    if _use_numba():
        dx = np.empty((N, C, H, W), dtype=dy.dtype)
        if _is_2x2((kh, kw), (sh, sw), (ph, pw)):
            kernels.get("maxpool_2x2_grad")(np.ascontiguousarray(dy), argmax, dx)
        else:
            kernels.get("maxpool_grad")(np.ascontiguousarray(dy), argmax, kh, kw, sh, sw, ph, pw,
                                        dx)
        return dx
    return maxpool2d_grad_numpy(dy, cache)


def maxpool2d_grad_numpy(dy: np.ndarray, cache: PoolCache) -> np.ndarray:
    """The NumPy reference of the max-pooling backward."""
    (N, C, H, W), (kh, kw), (sh, sw), (ph, pw), argmax = cache
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
    check_dy("avgpool2d_grad", dy, (N, C, Ho, Wo))
    share = dy * dy.dtype.type(1.0 / (kh * kw))
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + sh * Ho:sh, j:j + sw * Wo:sw] += share
    return np.ascontiguousarray(dxp[:, :, ph:ph + H, pw:pw + W])


__all__ = [
    "im2col_numpy", "col2im_numpy", "maxpool2d_numpy", "maxpool2d_grad_numpy",
    "conv_output_size", "conv2d", "conv2d_grad", "maxpool2d", "maxpool2d_grad",
    "avgpool2d", "avgpool2d_grad", "Conv2dCache", "PoolCache",
    "RowPadded", "row_padded_geometry", "pad_rows", "im2col_rows", "col2im_rows",
]
