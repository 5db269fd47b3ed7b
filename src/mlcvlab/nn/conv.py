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

3x3 stride-1 convolutions with at least ``WINOGRAD_MIN_CHANNELS`` input and output channels
run as Winograd F(2x2, 3x3) instead (:mod:`mlcvlab.nn.winograd`, 2.25x fewer multiplies);
``set_algorithm("fast")`` also takes F(4x4, 3x3) (4x fewer) where it is faster still, at ~10x
the float32 rounding error. A 3x3 or 5x5 stride-1 convolution with few channels on one side
(C * F / (C + F) small: a 3-channel stem, 16 -> 32, 32 -> 32) runs as a direct convolution
instead (:mod:`mlcvlab.nn.direct`: register tiles, no im2col copy; ``direct_pays``).
``set_algorithm("im2col" | "winograd" | "winograd4" | "direct" | "auto")`` forces one, for
tests and benchmarks (``winograd_tile``, ``direct_pays``).

No dtype is changed: float32 in, float32 out; float64 in, float64 out.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mlcvlab.nn import direct, kernels, simd, winograd
from mlcvlab.nn.basis import check_dy

IntPair = Union[int, Tuple[int, int]]


# --------------------------------------------------------------------------- validation
def _pair(fn: str, name: str, value, minimum: int) -> Tuple[int, int]:
    """An int or a pair of ints -> (rows, cols), each >= ``minimum``."""
    if type(value) is int and value >= minimum:          # the common case, checked cheaply
        return value, value                              # (called ~14 times per LeNet step)
    if (type(value) is tuple and len(value) == 2 and type(value[0]) is int
            and type(value[1]) is int and min(value) >= minimum):
        return value
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


# --------------------------------------------------------------------------- algorithm choice
# 3x3 stride-1 convolutions (dilation 1, one group, symmetric zero padding) can also run as
# Winograd F(2x2, 3x3) or F(4x4, 3x3) (mlcvlab.nn.winograd), and 3x3 and 5x5 ones as the
# direct kernels (mlcvlab.nn.direct). "auto" takes im2col, F(2x2) or the direct kernels where
# the measured rules (winograd_tile, direct_pays) say it is faster: all round about as a
# direct convolution does. "fast" also takes F(4x4) where that is faster still, at ~10x the
# float32 rounding error (see winograd_tile). "im2col", "winograd" (F(2x2, 3x3)), "winograd4"
# (F(4x4, 3x3)) and "direct" force one (each only where it applies: any other convolution
# stays on im2col), for tests and benchmarks.
ALGORITHMS = ("auto", "fast", "im2col", "winograd", "winograd4", "direct")
_algorithm = "auto"


def set_algorithm(name: str) -> str:
    """Choose how 3x3 (and 5x5) stride-1 convolutions run: "auto" (default: im2col, Winograd
    F(2x2, 3x3) or, for a layer with few channels on one side, the direct kernels, whichever is
    faster, all with a direct convolution's float32 rounding), "fast" (also
    Winograd F(4x4, 3x3) where it is faster still: steps up to ~1.1x faster, each
    layer's float32 error is ~10x larger), or one forced: "im2col", "winograd" (F(2x2, 3x3)),
    "winograd4" (F(4x4, 3x3)), "direct" (the direct kernels for every 3x3 and 5x5 stride-1
    convolution they apply to).

    Returns the previous choice, so that a caller can restore it. Process-wide.
    """
    global _algorithm
    if name not in ALGORITHMS:
        raise ValueError(f"set_algorithm: expected one of {ALGORITHMS}, got {name!r}")
    previous, _algorithm = _algorithm, name
    return previous


def get_algorithm() -> str:
    """The current choice of :func:`set_algorithm`."""
    return _algorithm


# The measured rules (winograd_tile). "auto": Winograd F(2x2, 3x3) when both the input and
# the output channels are at least WINOGRAD_MIN_CHANNELS (the backward) or
# WINOGRAD_FORWARD_MIN_CHANNELS (the forward), else im2col. "fast": F(4x4, 3x3) from
# WINOGRAD_MIN_CHANNELS in both directions where the output is at least WINOGRAD4_MIN_SIZE
# pixels high and wide, else as "auto".
#
# Session 7 (F(2x2) only; forward + backward, batch 128, 1 thread, benchmarks/bench_winograd.py,
# im2col / Winograd time): ResNet-20's 64x8x8 1.40, 32x16x16 1.32, 16x32x32 1.13 (forward
# alone 0.91), its 3-channel stem 0.60; MiniGoogLeNet's 3x3 layers with 32-336 channels
# 1.18-1.68, its 3-channel stem 0.55: with few channels the point GEMMs (K = C) run far below
# BLAS peak and the transforms are not paid back. Session 10 timed each direction apart
# (`python benchmarks/bench_gil.py directions`, batch 64 = one thread's part): the 16-channel
# forward was a tie (im2col 6.99 / F(2x2) 7.16 ms), so F(2x2) forwards start at 32 channels.
#
# Session 11, F(4x4): its GEMMs do 1.78x fewer multiply-adds than F(2x2)'s, its scalar
# transforms ~2.2x more operations per output, so it wins where the GEMMs dominate and the
# tiles are not too few. `bench_gil.py directions`, ms, im2col / F(2x2) / F(4x4): 16x32x32
# forward 8.34 / 7.65 / 7.31, backward 17.96 / 13.43 / 14.25; 32x16x16 6.85 / 4.61 / 4.33,
# 13.38 / 9.20 / 8.24; 64x8x8 5.65 / 3.34 / 3.18, 11.29 / 6.80 / 6.12 (a second run: F(4x4)
# 1.08-1.48x over F(2x2) in five of six). MiniGoogLeNet's widest layers: 160->96 at 15x15
# forward 59.8 / 48.0 / 39.7, backward 144.7 / 101.5 / 81.2; 96->32 at 32x32 76.9 / 46.7 /
# 40.6, 170.6 / 91.7 / 93.1; at 7x7 (four 4x4 tiles per image: GEMMs of few columns) F(4x4)
# lost: 336->160 forward 0.80x, backward 0.87x of F(2x2), 240->160 0.84x and 0.85x. ResNet-20's
# whole step, "fast" against "auto" (interleaved rounds, 95% CI of the median ratio): 1 thread,
# batch 64, 20 rounds: training 1.12x (1.05-1.20), evaluation 1.06x (1.02-1.09); 2 threads,
# batch 128, 10 rounds: 1.06x (1.03-1.16), 1.08x (1.04-1.20). MiniGoogLeNet, 2 threads, batch
# 128, 6 rounds: 1.10x (0.93-1.34), 1.13x (1.02-1.22).
#
# Why F(4x4) is not in "auto": each layer's float32 error is ~10x a direct convolution's
# (tests/nn/test_winograd.py: 1.8e-6 to 1.4e-5 of the output's scale, against 1.1e-7 to 5.3e-7
# for im2col and 1.6e-7 to 6.1e-7 for F(2x2)), and a network amplifies a larger error where a
# value near 0 changes sign at a ReLU: ResNet-20 on a batch of 2
# (tests/models/test_torch_parity_models.py) had gradients 1.8e-3 (relative) from torch's
# under F(4x4), 6e-7 under im2col or F(2x2). Training follows im2col's loss as closely
# as rounding noise does (benchmarks/winograd_training_check.py), so "fast" is safe to train
# with; "auto" keeps the engine's float32 results at a direct convolution's accuracy.
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_FORWARD_MIN_CHANNELS = 32
WINOGRAD4_MIN_SIZE = 8


def winograd_pays(x_shape, F: int, forward: bool = False) -> bool:
    """Whether "auto" runs a 3x3 stride-1 convolution of x (N, C, H, W) into F channels as
    Winograd F(2x2, 3x3): min(C, F) >= WINOGRAD_MIN_CHANNELS (its backward) or
    WINOGRAD_FORWARD_MIN_CHANNELS (its forward)."""
    least = WINOGRAD_FORWARD_MIN_CHANNELS if forward else WINOGRAD_MIN_CHANNELS
    return min(x_shape[1], F) >= least


def winograd_tile(x_shape, F: int, kernel, stride, dilation, groups: int, pads,
                  forward: bool = True) -> int:
    """The output tile size m of the Winograd F(m x m, 3x3) this convolution's forward (or
    backward) runs as, or 0 for im2col: what ``set_algorithm`` forces, else its measured rule
    (see the comment above). The transforms need numba: without it, every convolution stays
    on im2col's NumPy path."""
    if (_algorithm == "im2col" or not winograd.applies(kernel, stride, dilation, groups, pads)
            or not _use_numba()):
        return 0
    if _algorithm == "winograd":
        return 2
    if _algorithm == "winograd4":
        return 4
    if _algorithm == "fast" and min(x_shape[1], F) >= WINOGRAD_MIN_CHANNELS:
        Ho, Wo = x_shape[2] + pads[0] + pads[1] - 2, x_shape[3] + pads[2] + pads[3] - 2
        if min(Ho, Wo) >= WINOGRAD4_MIN_SIZE:
            return 4
    return 2 if winograd_pays(x_shape, F, forward) else 0


# The direct kernels (mlcvlab.nn.direct) run a 3x3 or 5x5 stride-1 convolution (and the
# forward of a 3x3 stride-2 one) under "auto" and "fast" where they are measured faster than
# the other paths. Their cost per output pixel grows with C * F (every input channel meets
# every filter); the extra work of the others
# (Winograd's transforms, im2col's column copies) with C + F, and their GEMMs run far below
# peak when C or F is small. So the rule is on C * F / (C + F) (half the harmonic mean of C
# and F; 8 for 16 -> 16): the forward runs direct while it is at most DIRECT_FORWARD_MAX_PAIR,
# the backward (dx and dW) while it is at most DIRECT_BACKWARD_MAX_PAIR or while F <=
# DIRECT_MAX_FILTERS, both from DIRECT_MIN_OUTPUTS output pixels.
#
# Session 15, on an AVX2 host (Zen 3), the register-tiled forward kernel (`python
# benchmarks/bench_conv_rule.py --threads 2 --batch 128 --rounds 9-11`, forward with ReLU;
# the previous rule's path time / direct time, median of interleaved rounds; BENCHMARKS.md,
# session 15, has the ranges):
# forward 3->64 32x32 1.52, 3->96 1.76, 16->32 32x32 1.73, 16->64 1.27, 16->96 16x16 1.30,
# 8->32 16x16 1.83, 32->32 16x16 1.16-1.28 (three runs), 32->32 32x32 1.15, 12x12 1.05, 10x10
# 1.02; but 32->32 8x8 0.79, 64->64 8x8 0.63, 64->48 32x32 0.71, 96->32 32x32 0.79, 160->48
# 15x15 0.82 (pair 16-37: Winograd F(2x2) wins). Backward 32->16 32x32 1.49, 64->16 1.45,
# 96->16 16x16 1.40, 128->16 1.28, 16->32 32x32 1.24, 8->32 16x16 1.49, the 3-channel stems'
# weight gradient (no dx) 1.87-1.98; but 16->64 32x32 0.93, 16->96 16x16 0.82, 32->32 16x16
# 0.94, 16->16 8x8 0.82-0.92. 5x5: LeNet-5's 6->16 (14x14 -> 10x10) forward 1.77, backward
# 1.81; 16->32 16x16 1.88 and 1.42. Below 10x10 outputs a tile of 16 overhangs a row by more
# than half (16->16 8x8: forward 1.26-1.33, backward 0.82-0.92; 4->32 4x4 0.92 / 0.65).
# 3x3 stride-2 forwards (on phase planes; their backward then stayed im2col), against im2col: 16->32
# 32x32 1.79 (ResNet-20's), 16->16 2.08, 3->16 1.88; but 32->64 16x16 0.79, 64->128 0.62,
# 80->80 32x32 (padding 0) 0.93, 144->96 15x15 0.61: the same rule.
# (Session 12's rule, for the kernel that kept its accumulators in memory: at most 16 output
# channels, at least 16x16 outputs.)
#
# Session 16, on an AVX-512 host (AMD EPYC, Zen 5), the 64-byte vectors (nn/simd.py) and
# tiles along the pitched rows (no tile wasted on a short row): the same command with
# --algorithms winograd,im2col,direct --rounds 7, direct against the better of the two
# (BENCHMARKS.md, session 16): the forward wins everywhere measured but 64->64 8x8 (0.83):
# 16->16 32x32 2.37, 32->32 16x16 1.45, 32->32 32x32 1.65, 64->64 16x16 1.15, 96->32 32x32
# 1.45, 16->16 8x8 1.65, 32->32 8x8 1.20, stride 2 16->32 32x32 1.93, 32->64 16x16 1.57,
# 64->128 8x8 1.24. The backward wins from 16x16 outputs up to a pair of 24: 16->16 32x32
# 2.20, 32->32 16x16 1.25, 32->32 32x32 1.46, 16->64 1.47, 64->16 1.85, 96->32 1.36; not at
# 64->64 16x16 (pair 32: 0.96) nor on 8x8 maps (0.52-0.99); below that, as on AVX2 (against
# im2col, batch 64: LeNet-5's 6->16 1.36, 16->16 12x12 1.87, 8->8 10x10 2.01). The 3x3
# stride-2 backward (direct since session 16) follows the same rules, against im2col: 16->32
# on 32x32 1.66 (AVX2 code on the same host: 1.23), 3->16 1.85, 16->16 2.29, 64->64 1.47;
# but with 8x8 outputs 32->64 0.86 (AVX2: 0.72) and 128->128 0.70, and 64->128 4x4 0.33.
DIRECT_FORWARD_MAX_PAIR = 16
DIRECT_BACKWARD_MAX_PAIR = 11
DIRECT_MAX_FILTERS = 16
DIRECT_MIN_OUTPUTS = 100
# the rule for 64-byte vectors (AVX-512)
DIRECT_WIDE_MIN_OUTPUTS = 64            # forward at a pair <= DIRECT_FORWARD_MAX_PAIR
DIRECT_WIDE_ANY_PAIR_OUTPUTS = 256      # forward at any pair; backward up to the next
DIRECT_WIDE_BACKWARD_MAX_PAIR = 24
DIRECT_WIDE_STRIDE2_MIN_OUTPUTS = 16    # stride-2 forward at any pair


def direct_pays(x_shape, F: int, kernel, stride, dilation, groups: int, pads,
                forward: bool = True) -> bool:
    """Whether this convolution's forward (or backward) runs as the direct kernels
    (mlcvlab.nn.direct): what ``set_algorithm`` forces ("direct" where they apply; never
    under "im2col", "winograd" or "winograd4"), else the measured rule above. Needs numba."""
    if _algorithm in ("im2col", "winograd", "winograd4") or not _use_numba():
        return False
    if not direct.applies(kernel, stride, dilation, groups, pads, forward):
        return False
    if _algorithm == "direct":
        return True
    Ho = (x_shape[2] + pads[0] + pads[1] - kernel[0]) // stride[0] + 1
    Wo = (x_shape[3] + pads[2] + pads[3] - kernel[1]) // stride[1] + 1
    C = x_shape[1]
    pair, outputs = C * F / (C + F), Ho * Wo
    small_pair = outputs >= DIRECT_MIN_OUTPUTS and (
        pair <= DIRECT_FORWARD_MAX_PAIR if forward
        else pair <= DIRECT_BACKWARD_MAX_PAIR or F <= DIRECT_MAX_FILTERS)
    if simd.BYTES != 64:                    # AVX2: the session-15 rule
        return small_pair
    if not forward:                         # AVX-512: the session-16 rule
        return small_pair or (outputs >= DIRECT_WIDE_ANY_PAIR_OUTPUTS
                              and pair <= DIRECT_WIDE_BACKWARD_MAX_PAIR)
    if stride[0] == 2:
        return outputs >= DIRECT_WIDE_STRIDE2_MIN_OUTPUTS
    return (outputs >= DIRECT_WIDE_ANY_PAIR_OUTPUTS
            or (outputs >= DIRECT_WIDE_MIN_OUTPUTS and pair <= DIRECT_FORWARD_MAX_PAIR))


# --------------------------------------------------------------------------- convolution
class Conv2dCache(NamedTuple):
    x: np.ndarray            # the input (N, C, H, W), kept by reference (not copied)
    W: np.ndarray            # the weights (F, C, kh, kw), the parameter itself
    kernel: Tuple[int, int]  # (kh, kw)
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    has_bias: bool


def conv_padding(fn: str, padding, kernel, dilation, stride) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) of an int, a pair, "valid" or "same" (torch's rule: the
    total d*(k-1) split with the extra value at the bottom / right; stride 1 only)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ValueError(f"{fn}: padding must be an int, a pair of ints, 'valid' or 'same', "
                             f"got {padding!r}")
        if tuple(stride) != (1, 1):
            raise ValueError(f"{fn}: padding='same' needs stride 1 (as torch), got stride "
                             f"{tuple(stride)}")
        pads = []
        for k, d in zip(kernel, dilation):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    ph, pw = _pair(fn, "padding", padding, 0)
    return (ph, ph, pw, pw)


def conv2d_path(pads, dilation, stride, padding_mode: str) -> str:
    """The implementation :func:`conv2d` runs, which decides what its cache keeps:
    "fast" (dilation 1, symmetric zero padding: keeps x), "padded" (another padding, or a
    dilation with stride 1: convolutions of the explicitly padded input, which it keeps
    instead of x) or "general" (dilated and strided: keeps x).
    pads: (top, bottom, left, right); dilation, stride: pairs."""
    if (tuple(dilation) == (1, 1) and pads[0] == pads[1] and pads[2] == pads[3]
            and (padding_mode == "zeros" or not any(pads))):
        return "fast"
    return "padded" if tuple(dilation) == (1, 1) or tuple(stride) == (1, 1) else "general"


def algorithm(x_shape, W_shape, stride: IntPair = 1, padding: Union[IntPair, str] = 0,
              dilation: IntPair = 1, groups: int = 1,
              padding_mode: str = "zeros") -> Tuple[str, str]:
    """(forward, backward): the names of what :func:`conv2d` and :func:`conv2d_grad` run for
    an input of ``x_shape`` (N, C, H, W) and filters of ``W_shape`` (F, C // groups, kh, kw)
    under the current :func:`set_algorithm` and the measured rules: "direct", "winograd
    F(2x2)", "winograd F(4x4)" or "im2col"; "im2col (padded input)" or "im2col (general)" off
    the fast path (``conv2d_path``); "<g> groups of <name>" for groups > 1. The backward of a
    Winograd forward is Winograd (its cache), else its own rule. For reports (``mlcvlab bench
    --per-conv``); it decides nothing."""
    F, _, kh, kw = W_shape
    stride = _pair("algorithm", "stride", stride, 1)
    dilation = _pair("algorithm", "dilation", dilation, 1)
    pads = conv_padding("algorithm", padding, (kh, kw), dilation, stride)
    path = conv2d_path(pads, dilation, stride, padding_mode)
    if path != "fast":
        name = "im2col (padded input)" if path == "padded" else "im2col (general)"
        return name, name
    if groups > 1:
        one = algorithm((x_shape[0], x_shape[1] // groups) + tuple(x_shape[2:]),
                        (F // groups,) + tuple(W_shape[1:]), stride, padding, dilation)
        return tuple(f"{groups} groups of {a}" for a in one)
    shape = tuple(x_shape)

    def named(forward: bool) -> str:
        if direct_pays(shape, F, (kh, kw), stride, dilation, 1, pads, forward=forward):
            return "direct"
        m = winograd_tile(shape, F, (kh, kw), stride, dilation, 1, pads, forward=forward)
        return f"winograd F({m}x{m})" if m else "im2col"

    forward = named(True)
    if forward.startswith("winograd"):              # the backward of a WinogradCache
        m = winograd_tile(shape, F, (kh, kw), stride, dilation, 1, pads, forward=False) or 2
        return forward, f"winograd F({m}x{m})"
    return forward, named(False)


def conv2d(x: np.ndarray, W: np.ndarray, b: Optional[np.ndarray] = None,
           stride: IntPair = 1, padding: Union[IntPair, str] = 0, dilation: IntPair = 1,
           groups: int = 1, padding_mode: str = "zeros", then_relu: bool = False):
    """2-D convolution (cross-correlation), as ``torch.nn.functional.conv2d``.

    x: (N, C, H, W), W: (F, C // groups, kh, kw), b: (F,) or None; stride, padding and
    dilation an int or a pair (rows, cols); padding also "valid" or "same" (stride 1).
    ``groups``: the channels in that many groups, each convolved with its F // groups filters;
    ``padding_mode``: "zeros", "reflect", "replicate" or "circular" (as torch.nn.Conv2d).
    Returns y: (N, F, Ho, Wo) with Ho = floor((H + 2*ph - dh*(kh-1) - 1) / sh) + 1 (likewise
    Wo), and the cache for :func:`conv2d_grad`. The cache keeps x, not the im2col matrix
    (C*kh*kw times larger): the backward rebuilds it, which costs one cheap pass.

    Dilation 1 and symmetric zero padding (the common case) run the fast path (blocked,
    threaded im2col; the row-padded layout for stride 1), once per group when ``groups > 1``;
    other paddings (asymmetric "same", the padding modes) pad first and run it on the padded
    input, a stride-1 dilated convolution once per sub-grid of the padded input
    (:func:`_conv2d_dilated`); only a dilated and strided one takes the general path (a
    dilated im2col per group and block of the batch). A 3x3 stride-1 convolution on the fast
    path with groups 1 runs as Winograd F(2x2, 3x3) (or, under ``set_algorithm("fast")``,
    F(4x4, 3x3)) instead where ``set_algorithm`` and the measured rule (``winograd_tile``)
    say so.
    """
    _check_4d("conv2d", "x", x)
    _check_4d("conv2d", "W", W, "(F, C // groups, kh, kw)")
    if W.dtype != x.dtype:
        raise TypeError(f"conv2d: x is {x.dtype} but W is {W.dtype}; cast x with x.astype(W.dtype)")
    N, C, H, Wd = x.shape
    F, Cw, kh, kw = W.shape
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive integer, got {groups!r}")
    groups = int(groups)
    if C % groups or F % groups:
        raise ValueError(f"conv2d: groups={groups} must divide both the input channels ({C}) "
                         f"and the output channels ({F})")
    if Cw * groups != C:
        raise ValueError(
            f"conv2d: x has {C} channels but W expects {Cw * groups} "
            f"({Cw} per group, groups={groups}; x {x.shape}, W {W.shape})"
        )
    if b is not None and (not isinstance(b, np.ndarray) or b.shape != (F,) or b.dtype != x.dtype):
        got = (b.shape, b.dtype) if isinstance(b, np.ndarray) else type(b).__name__
        raise ValueError(f"conv2d: expected b of shape ({F},) and dtype {x.dtype}, got {got}")
    stride = _pair("conv2d", "stride", stride, 1)
    dilation = _pair("conv2d", "dilation", dilation, 1)
    pads = conv_padding("conv2d", padding, (kh, kw), dilation, stride)
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"conv2d: padding_mode must be one of {PADDING_MODES}, "
                         f"got {padding_mode!r}")
    if padding_mode != "zeros" and any(pads):
        limit = {"reflect": (H - 1, Wd - 1), "circular": (H, Wd), "replicate": None}[padding_mode]
        if limit and (max(pads[:2]) > limit[0] or max(pads[2:]) > limit[1]):
            raise ValueError(f"conv2d: padding {pads[::2]} is too large for padding_mode="
                             f"{padding_mode!r} on an input of {H}x{Wd} (at most {limit})")
    path = conv2d_path(pads, dilation, stride, padding_mode)
    if path == "padded":
        return _relu_after(then_relu, *_conv2d_dilated(x, W, b, stride, pads, dilation, groups,
                                                       padding_mode))
    if path == "general":
        return _relu_after(then_relu, *_conv2d_general(x, W, b, stride, pads, dilation, groups,
                                                       padding_mode))
    if groups > 1:
        _out_size("conv2d", H, kh, stride[0], pads[0])
        _out_size("conv2d", Wd, kw, stride[1], pads[2])
        return _relu_after(then_relu, *_conv2d_grouped(x, W, b, stride, (pads[0], pads[2]),
                                                       groups))
    padding = (pads[0], pads[2])
    Ho = _out_size("conv2d", H, kh, stride[0], padding[0])
    Wo = _out_size("conv2d", Wd, kw, stride[1], padding[1])
    if direct_pays(x.shape, F, (kh, kw), stride, dilation, groups, pads):
        flops = 2.0 * N * F * C * kh * kw * Ho * Wo
        y = direct.conv2d_direct(x, W, b, padding, _batch_parts(N, flops), then_relu,
                                 stride[0])
        return y, Conv2dCache(x, W, (kh, kw), stride, padding, b is not None)
    m = winograd_tile(x.shape, F, (kh, kw), stride, dilation, groups, pads)
    if m:                                           # the ReLU in the output transform's pass
        return winograd.conv2d_winograd(x, W, b, padding,
                                        _batch_parts(N, 2.0 * N * F * C * 9 * Ho * Wo), m,
                                        then_relu)

    K = C * kh * kw
    W_mat = W.reshape(F, K)
    y = np.empty((N, F, Ho, Wo), dtype=x.dtype)
    g = row_padded_geometry(H, Wd, (kh, kw), stride, padding)
    wide = Wo if g is None else g.pitch             # columns of the GEMM's output grid
    bias = b if b is not None else np.zeros(F, x.dtype)     # unread without a bias

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
            y_t = kernels.gemm(W_mat, cols, out=kernels.scratch((F, cols.shape[1]), x.dtype, "out"))
            grid = y_t.reshape(F, n, Ho, wide)
            if kernels.available():                 # bias, NCHW and ReLU in one pass
                kernels.get("conv_store")(grid, bias, b is not None, then_relu, y_part[blk])
                continue
            if b is not None:                       # on the GEMM's output, still in cache
                y_t += b[:, None]
            y_part[blk] = grid[..., :Wo].transpose(1, 0, 2, 3)
            if then_relu:
                np.maximum(y_part[blk], 0, out=y_part[blk])

    _map_parts(forward_part, _batch_parts(N, 2.0 * N * F * K * Ho * Wo))
    return y, Conv2dCache(x, W, (kh, kw), stride, padding, b is not None)


def _relu_after(then_relu: bool, y: np.ndarray, cache):
    """(y, cache), y with max(., 0) applied in place when ``then_relu`` (nan kept)."""
    if then_relu:
        if kernels.available() and y.flags.c_contiguous:
            flat = y.reshape(-1)
            kernels.get("relu_forward")(flat, flat)
        else:
            np.maximum(y, 0, out=y)
    return y, cache


def conv2d_grad(dy: np.ndarray, cache: Conv2dCache, input_grad: bool = True):
    """dy: (N, F, Ho, Wo) -> dx (N, C, H, W), dW (F, C, kh, kw), db (F,) or None.

    ``input_grad=False`` skips dx (returned as None): no dcols GEMM and no col2im,
    for a first layer whose input is data.

    dW = dy_t @ cols^T and dcols = W_mat^T @ dy_t (two GEMMs), then col2im;
    dy_t (F, N*Ho*Wo) is dy with the batch and channel axes swapped (in the
    row-padded layout: (F, N*Ho*pitch), zero in the dropped columns, so that
    they add nothing to dW or dx).
    """
    if isinstance(cache, winograd.WinogradCache):
        (N, C, H, Wd), F = cache.x.shape, cache.W.shape[0]
        ph, pw = cache.padding
        m = winograd_tile(cache.x.shape, F, (3, 3), (1, 1), (1, 1), 1, (ph, ph, pw, pw),
                          forward=False) or 2       # im2col chosen since the forward: F(2x2)
        t = winograd.tiles(H, Wd, cache.padding, m)
        check_dy("conv2d_grad", dy, (N, F, t.Ho, t.Wo))
        return winograd.conv2d_winograd_grad(
            dy, cache, _batch_parts(N, 2.0 * N * F * C * 9 * t.Ho * t.Wo), input_grad, m)
    if isinstance(cache, DilatedConv2dCache):
        check_dy("conv2d_grad", dy, (cache.x_shape[0], cache.F) + cache.out_hw)
        return _conv2d_dilated_grad(dy, cache, input_grad)
    if isinstance(cache, GroupedConv2dCache):     # its groups may run on Winograd
        F = sum(c.W.shape[0] for c in cache.caches)
        check_dy("conv2d_grad", dy, (cache.x_shape[0], F) + tuple(cache.out_hw))
        return _conv2d_grouped_grad(dy, cache, input_grad)
    if isinstance(cache, GeneralConv2dCache):
        (N, _, H, Wd), F = cache.x_shape, cache.W.shape[0]
        pt, pb, pl, pr = cache.pads
        Ho = (H + pt + pb - cache.dilation[0] * (cache.W.shape[2] - 1) - 1) // cache.stride[0] + 1
        Wo = (Wd + pl + pr - cache.dilation[1] * (cache.W.shape[3] - 1) - 1) // cache.stride[1] + 1
        check_dy("conv2d_grad", dy, (N, F, Ho, Wo))
        return _conv2d_general_grad(dy, cache, input_grad)
    x, W, kernel, stride, padding, has_bias = cache
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    N, C, H, Wd = x.shape
    F = W.shape[0]
    Ho = (H + 2 * ph - kh) // sh + 1
    Wo = (Wd + 2 * pw - kw) // sw + 1
    pads = (ph, ph, pw, pw)
    if direct_pays(x.shape, F, kernel, stride, (1, 1), 1, pads, forward=False):
        check_dy("conv2d_grad", dy, (N, F, Ho, Wo))
        return direct.conv2d_grad_direct(dy, x, W, padding, has_bias, input_grad,
                                         _batch_parts(N, 4.0 * N * F * C * kh * kw * Ho * Wo),
                                         sh)
    if winograd_tile(x.shape, F, kernel, stride, (1, 1), 1, pads, forward=False):
        return conv2d_grad(dy, winograd.WinogradCache(x, W, padding, has_bias), input_grad)
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
            dW += kernels.gemm(dy_t, cols.T)                   # (F, C*kh*kw): may be < 500 values
            if dx is None:
                continue
            dcols = kernels.gemm(W_mat.T, dy_t, out=cols)      # reuses the scratch
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


# --------------------------------------------------------------------------- the general path
# Dilation, groups, asymmetric padding ("same" with an even effective kernel) and the padding
# modes other than zeros run here: one im2col of the whole batch (dilated windows) and one GEMM
# per group; the common case (dilation 1, groups 1, symmetric zero padding) keeps the fast
# path above.
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_NP_PAD_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


class GeneralConv2dCache(NamedTuple):
    x_shape: Tuple[int, int, int, int]
    x: np.ndarray            # the input (N, C, H, W), kept by reference
    W: np.ndarray
    stride: Tuple[int, int]
    pads: Tuple[int, int, int, int]   # top, bottom, left, right
    dilation: Tuple[int, int]
    groups: int
    padding_mode: str
    has_bias: bool


def _pad_index(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source index of every padded position along one axis (np.pad's modes on an arange)."""
    return np.pad(np.arange(n), (before, after), mode=_NP_PAD_MODE[mode])


def pad2d(x: np.ndarray, pads, mode: str = "zeros", value=0) -> np.ndarray:
    """x (N, C, H, W) padded by (top, bottom, left, right) as torch's F.pad: a constant
    ``value`` for "zeros", else reflect / replicate / circular."""
    pt, pb, pl, pr = pads
    if mode == "zeros":
        if not any(pads):
            return x
        N, C, H, W = x.shape
        xp = np.full((N, C, H + pt + pb, W + pl + pr), value, dtype=x.dtype)
        xp[:, :, pt:pt + H, pl:pl + W] = x
        return xp
    ih = _pad_index(x.shape[2], pt, pb, mode)
    iw = _pad_index(x.shape[3], pl, pr, mode)
    return x[:, :, ih[:, None], iw[None, :]]


def pad2d_grad(dxp: np.ndarray, x_shape, pads, mode: str = "zeros") -> np.ndarray:
    """The adjoint of :func:`pad2d`: crop (zeros) or add every padded value back onto its
    source pixel (the other modes)."""
    N, C, H, W = x_shape
    pt, pb, pl, pr = pads
    if mode == "zeros":
        return np.ascontiguousarray(dxp[:, :, pt:pt + H, pl:pl + W])
    ih = _pad_index(H, pt, pb, mode)
    iw = _pad_index(W, pl, pr, mode)
    Ph = (ih[None, :] == np.arange(H)[:, None]).astype(dxp.dtype)    # (H, Hp) one-hot
    Pw = (iw[None, :] == np.arange(W)[:, None]).astype(dxp.dtype)    # (W, Wp)
    return np.ascontiguousarray(Ph @ dxp @ Pw.T)


def _dilated_windows(xp: np.ndarray, kernel, stride, dilation, out_hw) -> np.ndarray:
    """(N, C, Ho, Wo, kh, kw) view of the windows of the padded xp."""
    (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = kernel, stride, dilation, out_hw
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    win = sliding_window_view(xp, (eh, ew), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    return win[:, :, :Ho, :Wo]


def im2col_dilated(xp: np.ndarray, kernel, stride, dilation, out_hw) -> np.ndarray:
    """The padded xp (N, C, Hp, Wp) -> cols (C*kh*kw, N*Ho*Wo), as im2col_numpy with dilation."""
    N, C = xp.shape[:2]
    (kh, kw), (Ho, Wo) = kernel, out_hw
    win = _dilated_windows(xp, kernel, stride, dilation, out_hw)
    return win.transpose(1, 4, 5, 0, 2, 3).reshape(C * kh * kw, N * Ho * Wo)


def col2im_dilated(cols: np.ndarray, xp_shape, kernel, stride, dilation, out_hw) -> np.ndarray:
    """The adjoint of :func:`im2col_dilated`: dxp (N, C, Hp, Wp)."""
    N, C, Hp, Wp = xp_shape
    (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = kernel, stride, dilation, out_hw
    fields = cols.reshape(C, kh, kw, N, Ho, Wo)
    dxp = np.zeros(xp_shape, dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i * dh:i * dh + sh * (Ho - 1) + 1:sh,
                j * dw:j * dw + sw * (Wo - 1) + 1:sw] += fields[:, i, j].transpose(1, 0, 2, 3)
    return dxp


def _conv2d_general(x, W, b, stride, pads, dilation, groups, padding_mode):
    N, C, H, Wd = x.shape
    F, Cg, kh, kw = W.shape
    pt, pb, pl, pr = pads
    Ho = _out_size_dilated("conv2d", H, kh, stride[0], pt + pb, dilation[0])
    Wo = _out_size_dilated("conv2d", Wd, kw, stride[1], pl + pr, dilation[1])
    xp = pad2d(x, pads, padding_mode)
    Fg = F // groups
    y = np.empty((N, F, Ho, Wo), dtype=x.dtype)
    for g in range(groups):
        xs, fs = xp[:, g * Cg:(g + 1) * Cg], slice(g * Fg, (g + 1) * Fg)
        W_mat = W[fs].reshape(Fg, -1)
        for blk in _blocks(xs, Cg * kh * kw, Ho, Wo):      # cols of at most BLOCK_BYTES
            n = blk.stop - blk.start
            cols = im2col_dilated(xs[blk], (kh, kw), stride, dilation, (Ho, Wo))
            y_t = kernels.gemm(W_mat, cols)
            if b is not None:
                y_t += b[fs, None]
            y[blk, fs] = y_t.reshape(Fg, n, Ho, Wo).transpose(1, 0, 2, 3)
    # the cache keeps x, not its padded copy: the backward pads again
    return y, GeneralConv2dCache(x.shape, x, W, stride, pads, dilation, groups, padding_mode,
                                 b is not None)


def _conv2d_general_grad(dy, cache: GeneralConv2dCache, input_grad: bool):
    x_shape, x, W, stride, pads, dilation, groups, padding_mode, has_bias = cache
    xp = pad2d(x, pads, padding_mode)
    F, Cg, kh, kw = W.shape
    Fg = F // groups
    Ho, Wo = dy.shape[2:]
    dW = np.zeros(W.shape, dtype=dy.dtype)
    dxp = np.empty(xp.shape, dtype=dy.dtype) if input_grad else None
    for g in range(groups):
        xs, fs, cs = xp[:, g * Cg:(g + 1) * Cg], slice(g * Fg, (g + 1) * Fg), \
            slice(g * Cg, (g + 1) * Cg)
        W_mat = W[fs].reshape(Fg, -1)
        for blk in _blocks(xs, Cg * kh * kw, Ho, Wo):
            n = blk.stop - blk.start
            cols = im2col_dilated(xs[blk], (kh, kw), stride, dilation, (Ho, Wo))
            dy_t = dy[blk, fs].transpose(1, 0, 2, 3).reshape(Fg, n * Ho * Wo)
            dW[fs] += kernels.gemm(dy_t, cols.T).reshape(Fg, Cg, kh, kw)
            if input_grad:
                dxp[blk, cs] = col2im_dilated(kernels.gemm(W_mat.T, dy_t), (n,) + xs.shape[1:],
                                              (kh, kw), stride, dilation, (Ho, Wo))
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    dx = pad2d_grad(dxp, x_shape, pads, padding_mode) if input_grad else None
    return dx, dW, db


class DilatedConv2dCache(NamedTuple):
    """A convolution run on its explicitly padded input: for dilation (dh, dw) (stride 1) as
    dh*dw undilated ones on the padded input's sub-grids; for dilation 1 as one."""
    x_shape: Tuple[int, int, int, int]
    xp_shape: Tuple[int, int, int, int]
    pads: Tuple[int, int, int, int]
    dilation: Tuple[int, int]
    padding_mode: str
    out_hw: Tuple[int, int]
    F: int
    caches: dict          # (a, c) -> the cache of the sub-grid x_pad[:, :, a::dh, c::dw]
    has_bias: bool


def _conv2d_dilated(x, W, b, stride, pads, dilation, groups, padding_mode):
    """The input padded first (any padding, any padding mode), then ordinary convolutions on the
    fast path (threads, blocking, the row-padded layout). With dilation (dh, dw), stride 1:
    output rows a, a+dh, ... only read padded input rows a, a+dh, ... with the kernel
    undilated, so each of the dh*dw sub-grids x_pad[:, :, a::dh, c::dw] is one such
    convolution, written to y[:, :, a::dh, c::dw] ("space to batch", as atrous convolution is
    often run). With dilation 1 (asymmetric "same" padding, a padding mode): one convolution
    of x_pad, any stride."""
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    (dh, dw), (pt, pb, pl, pr) = dilation, pads
    Ho = _out_size_dilated("conv2d", H, kh, stride[0], pt + pb, dh)
    Wo = _out_size_dilated("conv2d", Wd, kw, stride[1], pl + pr, dw)
    xp = pad2d(x, pads, padding_mode)
    if dilation == (1, 1):
        y, sub = conv2d(xp, W, b, stride, 0, 1, groups)
        caches = {(0, 0): sub}
    else:
        y = np.empty((N, F, Ho, Wo), dtype=x.dtype)
        caches = {}
        for a in range(min(dh, Ho)):
            for c in range(min(dw, Wo)):
                y_s, caches[(a, c)] = conv2d(xp[:, :, a::dh, c::dw], W, b, 1, 0, 1, groups)
                y[:, :, a::dh, c::dw] = y_s
    return y, DilatedConv2dCache(x.shape, xp.shape, pads, dilation, padding_mode, (Ho, Wo), F,
                                 caches, b is not None)


def _conv2d_dilated_grad(dy, cache: DilatedConv2dCache, input_grad: bool):
    dh, dw = cache.dilation
    dxp = np.zeros(cache.xp_shape, dtype=dy.dtype) if input_grad else None
    dW = db = None
    for (a, c), sub in cache.caches.items():
        dy_s = dy if cache.dilation == (1, 1) else np.ascontiguousarray(dy[:, :, a::dh, c::dw])
        dx_s, dW_s, db_s = conv2d_grad(dy_s, sub, input_grad)
        if input_grad:
            dxp[:, :, a::dh, c::dw] = dx_s
        dW = dW_s if dW is None else dW + dW_s
        if cache.has_bias:
            db = db_s if db is None else db + db_s
    dx = (pad2d_grad(dxp, cache.x_shape, cache.pads, cache.padding_mode) if input_grad
          else None)
    return dx, dW, db


class GroupedConv2dCache(NamedTuple):
    """A grouped convolution run as one fast-path convolution per group."""
    x_shape: Tuple[int, int, int, int]
    caches: Tuple[object, ...]          # each group's Conv2dCache or WinogradCache
    has_bias: bool
    out_hw: Tuple[int, int]


def _conv2d_grouped(x, W, b, stride, padding, groups):
    """groups > 1 with dilation 1 and symmetric zero padding: the fast path on each group's
    channels (threads, blocking, the row-padded layout), outputs side by side."""
    C, F = x.shape[1], W.shape[0]
    Cg, Fg = C // groups, F // groups
    ys, caches = [], []
    for g in range(groups):
        fs = slice(g * Fg, (g + 1) * Fg)
        y_g, cache = conv2d(x[:, g * Cg:(g + 1) * Cg], W[fs], None if b is None else b[fs],
                            stride, padding)
        ys.append(y_g)
        caches.append(cache)
    y = np.concatenate(ys, axis=1)
    return y, GroupedConv2dCache(x.shape, tuple(caches), b is not None, y.shape[2:])


def _conv2d_grouped_grad(dy, cache: GroupedConv2dCache, input_grad: bool):
    groups = len(cache.caches)
    Fg = dy.shape[1] // groups
    parts = [conv2d_grad(np.ascontiguousarray(dy[:, g * Fg:(g + 1) * Fg]), c, input_grad)
             for g, c in enumerate(cache.caches)]
    dx = np.concatenate([p[0] for p in parts], axis=1) if input_grad else None
    dW = np.concatenate([p[1] for p in parts], axis=0)
    db = np.concatenate([p[2] for p in parts]) if cache.has_bias else None
    return dx, dW, db


def _out_size_dilated(fn: str, n: int, k: int, stride: int, total_pad: int, dilation: int,
                      ceil_mode: bool = False, pad_before: int = 0) -> int:
    """Output length with dilation, ``total_pad`` the padding of both ends (torch's rule; with
    ``ceil_mode`` the last window must start inside the input or the leading padding)."""
    span = dilation * (k - 1) + 1
    room = n + total_pad - span
    if n < 1 or room < 0:
        spans = f", dilation {dilation}: it spans {span} positions" if dilation > 1 else ""
        raise ValueError(
            f"{fn}: kernel size {k} is larger than the padded input size {n + total_pad} "
            f"(input {n}, padding {total_pad} in all{spans}); use a smaller kernel or "
            f"dilation, or more padding")
    out = (-(-room // stride) if ceil_mode else room // stride) + 1
    if ceil_mode and (out - 1) * stride >= n + pad_before:
        out -= 1
    return out


# --------------------------------------------------------------------------- pooling
class PoolCache(NamedTuple):
    x_shape: Tuple[int, int, int, int]
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    argmax: Optional[np.ndarray]  # max pooling: (N, C, Ho, Wo) flat index i*kw + j in the window


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


def pool_on_general_path(in_hw, kernel, stride, padding, dilation, out_hw) -> bool:
    """Whether a pooling of this geometry runs the general path (:func:`maxpool2d_general`,
    which keeps int64 plane indices): a dilation, or a last window that ceil_mode adds beyond
    the floor formula's output size. All arguments are pairs (rows, columns)."""
    floor_hw = tuple((n + 2 * p - k) // s + 1
                     for n, k, s, p in zip(in_hw, kernel, stride, padding))
    return tuple(dilation) != (1, 1) or tuple(out_hw) != floor_hw


def avgpool_on_general_path(in_hw, kernel, stride, padding, out_hw, count_include_pad=True,
                            divisor_override=None) -> bool:
    """Whether an average pooling runs the general path (:func:`avgpool2d_general`, which keeps
    the (Ho, Wo) float64 divisors): a ceil_mode window, a divisor override, or padding that
    does not count."""
    return (pool_on_general_path(in_hw, kernel, stride, padding, (1, 1), out_hw)
            or divisor_override is not None or (not count_include_pad and any(padding)))


def maxpool2d(x: np.ndarray, kernel_size: IntPair, stride: Optional[IntPair] = None,
              padding: IntPair = 0, dilation: IntPair = 1, ceil_mode: bool = False):
    """Max pooling over (kh, kw) windows, as ``torch.nn.functional.max_pool2d``.

    x: (N, C, H, W) -> y: (N, C, Ho, Wo). ``stride`` defaults to the kernel size;
    padding counts as -inf (it never wins); ``dilation`` spaces the window's pixels;
    ``ceil_mode`` rounds the output size up (a last, partial window, as torch). The cache
    keeps the position of each window's first maximum (row-major), the element that gets the
    gradient; a nan in a window makes its output nan (as in torch), at the first nan.
    :func:`pool_indices` gives torch's ``return_indices``. Dilation 1 without an extra
    ceil_mode window runs the numba kernels; the rest the general path.
    """
    (kh, kw), (sh, sw), (ph, pw), dilation, (Ho, Wo) = pool_setup(
        "maxpool2d", x, kernel_size, stride, padding, dilation, ceil_mode)
    if pool_on_general_path(x.shape[2:], (kh, kw), (sh, sw), (ph, pw), dilation, (Ho, Wo)):
        y, index = maxpool2d_general(x, (kh, kw), (sh, sw), (ph, pw), dilation, (Ho, Wo))
        return y, GeneralPoolCache(x.shape, (kh, kw), (sh, sw), (ph, pw), dilation, (Ho, Wo),
                                   index, None)
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


def pool_indices(cache) -> np.ndarray:
    """torch's ``return_indices`` of a max pooling: the flat index h*W + w in its input plane
    of each output's maximum, int64 (N, C, Ho, Wo)."""
    if isinstance(cache, (GeneralPoolCache, AdaptivePoolCache)):
        return cache.index
    (N, C, H, W), (kh, kw), (sh, sw), (ph, pw), argmax = cache
    Ho, Wo = argmax.shape[2:]
    i, j = np.divmod(argmax.astype(np.int64), kw)
    rows = np.arange(Ho)[:, None] * sh - ph + i
    cols = np.arange(Wo)[None, :] * sw - pw + j
    return rows * W + cols


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
    if isinstance(cache, GeneralPoolCache):
        check_dy("maxpool2d_grad", dy, cache.index.shape)
        return scatter_to_index(dy, cache.index, cache.x_shape)
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
              padding: IntPair = 0, ceil_mode: bool = False, count_include_pad: bool = True,
              divisor_override: Optional[int] = None):
    """Average pooling over (kh, kw) windows, as ``torch.nn.functional.avg_pool2d``.

    x: (N, C, H, W) -> y: (N, C, Ho, Wo). ``stride`` defaults to the kernel size.
    ``count_include_pad=True`` (torch's default): zero padding counts in the average, so a
    window divides by kh*kw (a ceil_mode window that passes the padding by its size up to the
    padded edge); False: by the number of input pixels it covers. ``divisor_override``: divide
    every window by this instead. The common case (no extra ceil_mode window, padding counted,
    no override) runs the plain path; the rest the general path.
    """
    (kh, kw), (sh, sw), (ph, pw), _, (Ho, Wo) = pool_setup(
        "avgpool2d", x, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None and (
            not isinstance(divisor_override, (int, np.integer))
            or isinstance(divisor_override, bool) or divisor_override == 0):
        raise ValueError(f"avgpool2d: divisor_override must be a non-zero int or None, "
                         f"got {divisor_override!r}")
    if avgpool_on_general_path(x.shape[2:], (kh, kw), (sh, sw), (ph, pw), (Ho, Wo),
                               count_include_pad, divisor_override):
        y, divisor = avgpool2d_general(x, (kh, kw), (sh, sw), (ph, pw), (Ho, Wo),
                                       bool(count_include_pad), divisor_override)
        return y, GeneralPoolCache(x.shape, (kh, kw), (sh, sw), (ph, pw), (1, 1), (Ho, Wo),
                                   None, divisor)
    xp = _pad_nchw(x, ph, pw, 0)
    y = np.zeros((*x.shape[:2], Ho, Wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            y += xp[:, :, i:i + sh * Ho:sh, j:j + sw * Wo:sw]
    y *= x.dtype.type(1.0 / (kh * kw))
    return y, PoolCache(x.shape, (kh, kw), (sh, sw), (ph, pw), None)


def avgpool2d_grad(dy: np.ndarray, cache: PoolCache) -> np.ndarray:
    """dy: (N, C, Ho, Wo) -> dx: (N, C, H, W); each dy spreads evenly over its window."""
    if isinstance(cache, GeneralPoolCache):
        check_dy("avgpool2d_grad", dy, cache.x_shape[:2] + cache.out_hw)
        return avgpool2d_general_grad(dy, cache)
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



# --------------------------------------------------------------------------- pooling: general path
# Dilation, ceil_mode (where it adds a window), count_include_pad=False and divisor_override run
# here; the pooling above stays the path of the common case.
class GeneralPoolCache(NamedTuple):
    x_shape: Tuple[int, int, int, int]
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    out_hw: Tuple[int, int]
    index: Optional[np.ndarray]     # max: flat input index h*W + w of each output's maximum
    divisor: Optional[np.ndarray]   # avg: (Ho, Wo) divisor of each window


def pool_setup(fn: str, x, kernel_size, stride, padding, dilation=1, ceil_mode=False):
    """Validate pooling arguments (torch's rules): kernel, stride, padding, dilation pairs and
    (Ho, Wo)."""
    _check_4d(fn, "x", x)
    kernel = _pair(fn, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None else _pair(fn, "stride", stride, 1)
    padding = _pair(fn, "padding", padding, 0)
    dilation = _pair(fn, "dilation", dilation, 1)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(
            f"{fn}: padding {padding} must be at most half the kernel size {kernel} "
            f"(as in PyTorch), otherwise a window can lie entirely in the padding"
        )
    out = tuple(_out_size_dilated(fn, n, k, s, 2 * p, d, bool(ceil_mode), p)
                for n, k, s, p, d in zip(x.shape[2:], kernel, stride, padding, dilation))
    return kernel, stride, padding, dilation, out


def _pool_pad(x, padding, kernel, stride, dilation, out_hw, value):
    """x padded on the left/top by padding and on the right/bottom far enough for every window
    (ceil_mode can put the last one past the padding), with ``value``."""
    pads = []
    for n, k, s, p, d, o in zip(x.shape[2:], kernel, stride, padding, dilation, out_hw):
        need = (o - 1) * s + d * (k - 1) + 1
        pads += [p, max(need - n - p, 0)]
    return pad2d(x, tuple(pads), "zeros", value), pads


def maxpool2d_general(x, kernel, stride, padding, dilation, out_hw):
    """Max pooling with dilation / ceil_mode: (y, flat input index of each maximum), the first
    maximum of a window in row-major order (a nan wins, at the first nan), as torch."""
    N, C, H, W = x.shape
    Ho, Wo = out_hw
    xp, pads = _pool_pad(x, padding, kernel, stride, dilation, out_hw, -np.inf)
    win = _dilated_windows(xp, kernel, stride, dilation, out_hw).reshape(N, C, Ho, Wo, -1)
    # positions of the window's pixels in the input; outside the input -> not eligible
    kh, kw = kernel
    rows = (np.arange(Ho)[:, None] * stride[0] - padding[0]
            + np.arange(kh)[None, :] * dilation[0])                   # (Ho, kh)
    cols = (np.arange(Wo)[:, None] * stride[1] - padding[1]
            + np.arange(kw)[None, :] * dilation[1])                   # (Wo, kw)
    inside = (((rows >= 0) & (rows < H))[:, None, :, None]
              & ((cols >= 0) & (cols < W))[None, :, None, :]).reshape(Ho, Wo, kh * kw)
    flat_pos = (rows[:, None, :, None] * W + cols[None, :, None, :]).reshape(Ho, Wo, kh * kw)
    nan = np.isnan(win)
    key = np.where(inside, win, -np.inf)
    arg = key.argmax(axis=-1)
    first_nan = nan.argmax(axis=-1)
    arg = np.where(nan.any(axis=-1), first_nan, arg)
    picked = np.take_along_axis(key, arg[..., None], axis=-1)[..., 0]
    # a window of -inf only: torch keeps its first pixel inside the input
    first_inside = np.broadcast_to(inside.argmax(axis=-1), arg.shape)
    arg = np.where(np.isneginf(picked) & ~np.isnan(picked), first_inside, arg)
    y = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    index = np.take_along_axis(np.broadcast_to(flat_pos, (N, C, Ho, Wo, kh * kw)),
                               arg[..., None], axis=-1)[..., 0]
    return np.ascontiguousarray(y), index.astype(np.int64)


def scatter_to_index(dy: np.ndarray, index: np.ndarray, x_shape) -> np.ndarray:
    """dx (N, C, H, W) with every dy added at its flat plane index h*W + w."""
    N, C, H, W = x_shape
    plane = np.arange(N * C).reshape(N, C, 1, 1) * (H * W)
    dx = np.bincount((plane + index).reshape(-1), weights=dy.reshape(-1).astype(np.float64),
                     minlength=N * C * H * W)
    return dx.astype(dy.dtype, copy=False).reshape(x_shape)


def _avg_divisor(n, k, s, p, o, count_include_pad):
    """torch's avg_pool2d window sizes along one axis: (o,) values."""
    start = np.arange(o) * s - p
    end = np.minimum(start + k, n + p)
    size = end - start
    if count_include_pad:
        return size
    return np.minimum(end, n) - np.maximum(start, 0)


def avgpool2d_general(x, kernel, stride, padding, out_hw, count_include_pad=True,
                      divisor_override=None):
    N, C, H, W = x.shape
    xp, _ = _pool_pad(x, padding, kernel, stride, (1, 1), out_hw, 0)
    win = _dilated_windows(xp, kernel, stride, (1, 1), out_hw)
    total = win.sum(axis=(-2, -1))
    if divisor_override is not None:
        divisor = np.full(out_hw, float(divisor_override))
    else:
        dh = _avg_divisor(H, kernel[0], stride[0], padding[0], out_hw[0], count_include_pad)
        dw = _avg_divisor(W, kernel[1], stride[1], padding[1], out_hw[1], count_include_pad)
        divisor = (dh[:, None] * dw[None, :]).astype(np.float64)
    y = (total / divisor).astype(x.dtype, copy=False)
    return y, divisor


def avgpool2d_general_grad(dy, cache: GeneralPoolCache):
    (N, C, H, W), kernel, stride, padding, _, out_hw, _, divisor = cache
    pads = []
    share = (dy / divisor).astype(dy.dtype, copy=False)
    (kh, kw), (sh, sw), (Ho, Wo) = kernel, stride, out_hw
    for n, k, s, p, o in zip((H, W), kernel, stride, padding, out_hw):
        need = (o - 1) * s + k
        pads += [p, max(need - n - p, 0)]
    dxp = np.zeros((N, C, H + pads[0] + pads[1], W + pads[2] + pads[3]), dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw] += share
    return np.ascontiguousarray(dxp[:, :, pads[0]:pads[0] + H, pads[2]:pads[2] + W])


# --------------------------------------------------------------------------- adaptive pooling
def adaptive_bounds(n: int, o: int):
    """torch's adaptive windows along one axis: start floor(i*n/o), end ceil((i+1)*n/o)."""
    i = np.arange(o)
    return (i * n) // o, -((-(i + 1) * n) // o)


def _adaptive_matrix(n: int, o: int, dtype) -> np.ndarray:
    start, end = adaptive_bounds(n, o)
    pos = np.arange(n)
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    return inside / (end - start)[:, None].astype(np.float64)


def _adaptive_out(fn: str, x, output_size):
    _check_4d(fn, "x", x)
    pair = (output_size, output_size) if output_size is None or np.isscalar(output_size) \
        else tuple(output_size)
    if len(pair) != 2:
        raise ValueError(f"{fn}: expected output_size an int, None or a pair, got {output_size!r}")
    out = []
    for v, n in zip(pair, x.shape[2:]):
        v = n if v is None else v
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{fn}: output_size must hold non-negative ints or None, "
                             f"got {output_size!r}")
        out.append(int(v))
    if min(x.shape[2:]) < 1 and max(out) > 0:
        raise ValueError(f"{fn}: input of shape {x.shape} has an empty spatial axis")
    return tuple(out)


class AdaptivePoolCache(NamedTuple):
    x_shape: Tuple[int, int, int, int]
    out_hw: Tuple[int, int]
    index: Optional[np.ndarray]     # max: flat input index of each maximum


def adaptive_avgpool2d(x: np.ndarray, output_size):
    """Average over torch's adaptive windows: x (N, C, H, W) -> (N, C, *output_size); two small
    matrix products (rows, then columns) by the window-averaging matrices."""
    Ho, Wo = _adaptive_out("adaptive_avgpool2d", x, output_size)
    Ah = _adaptive_matrix(x.shape[2], Ho, x.dtype)
    Aw = _adaptive_matrix(x.shape[3], Wo, x.dtype)
    y = np.einsum("ih,nchw,jw->ncij", Ah, x, Aw, optimize=True).astype(x.dtype, copy=False)
    return y, AdaptivePoolCache(x.shape, (Ho, Wo), None)


def adaptive_avgpool2d_grad(dy: np.ndarray, cache: AdaptivePoolCache) -> np.ndarray:
    (N, C, H, W), (Ho, Wo), _ = cache
    check_dy("adaptive_avgpool2d_grad", dy, (N, C, Ho, Wo))
    Ah, Aw = _adaptive_matrix(H, Ho, dy.dtype), _adaptive_matrix(W, Wo, dy.dtype)
    return np.einsum("ih,ncij,jw->nchw", Ah, dy, Aw, optimize=True).astype(dy.dtype, copy=False)


def adaptive_maxpool2d(x: np.ndarray, output_size):
    """Max over torch's adaptive windows; the cache keeps the flat input index of each
    maximum (the first in row-major order; a nan wins, at the first nan)."""
    Ho, Wo = _adaptive_out("adaptive_maxpool2d", x, output_size)
    N, C, H, W = x.shape
    hs, he = adaptive_bounds(H, Ho)
    ws, we = adaptive_bounds(W, Wo)
    y = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    index = np.empty((N, C, Ho, Wo), dtype=np.int64)
    for i in range(Ho):
        for j in range(Wo):
            win = x[:, :, hs[i]:he[i], ws[j]:we[j]]
            flat = win.reshape(N, C, -1)
            nan = np.isnan(flat)
            arg = np.where(nan.any(axis=-1), nan.argmax(axis=-1), flat.argmax(axis=-1))
            y[:, :, i, j] = np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]
            r, c = np.divmod(arg, we[j] - ws[j])
            index[:, :, i, j] = (hs[i] + r) * W + ws[j] + c
    return y, AdaptivePoolCache(x.shape, (Ho, Wo), index)


def adaptive_maxpool2d_grad(dy: np.ndarray, cache: AdaptivePoolCache) -> np.ndarray:
    check_dy("adaptive_maxpool2d_grad", dy, cache.index.shape)
    return scatter_to_index(dy, cache.index, cache.x_shape)


__all__ = [
    "im2col_numpy", "col2im_numpy", "maxpool2d_numpy", "maxpool2d_grad_numpy",
    "conv_output_size", "conv2d", "conv2d_path", "conv2d_grad", "algorithm", "maxpool2d",
    "maxpool2d_grad",
    "pool_on_general_path", "avgpool_on_general_path",
    "avgpool2d", "avgpool2d_grad", "Conv2dCache", "PoolCache",
    "RowPadded", "row_padded_geometry", "pad_rows", "im2col_rows", "col2im_rows",
    "GeneralConv2dCache", "GroupedConv2dCache", "DilatedConv2dCache", "GeneralPoolCache",
    "AdaptivePoolCache", "PADDING_MODES", "pad2d",
    "pad2d_grad", "im2col_dilated", "col2im_dilated", "conv_padding", "pool_setup",
    "pool_indices", "adaptive_avgpool2d", "adaptive_avgpool2d_grad", "adaptive_maxpool2d",
    "adaptive_maxpool2d_grad",
]
