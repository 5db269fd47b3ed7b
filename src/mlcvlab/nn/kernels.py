"""numba kernels for the hot loops of convolution, pooling and batch norm (NCHW, any float dtype).

Each kernel does, in one compiled pass, what the NumPy path does in several
(strided scatter-add; windowed argmax; per-channel reductions). They
keep the dtype of their arguments (float32 stays float32) and are checked
against the plain NumPy formulas in ``tests/nn/test_kernels.py``, in float32
and float64. numba is imported on first use (``get``), so importing mlcvlab
stays fast; compiled code is cached on disk (``cache=True``).

Kernels (shapes):

* ``col2im(cols, kh, kw, sh, sw, ph, pw, dx)``: the adjoint of im2col
  (``conv.im2col_numpy``): cols (C*kh*kw, N*Ho*Wo), row (c*kh + i)*kw + j holding
  the values for x[n, c, ho*sh - ph + i, wo*sw - pw + j] of every output pixel
  (n, ho, wo), is added back onto dx (N, C, H, W), which it zeroes first. The
  inner loop runs along image rows (vectorized for stride 1).

* ``col2im_rows(cols, n, C, kh, kw, pitch, plane, Ho, buf)``: the same for the
  row-padded layout of stride-1 convolutions (``conv.col2im_rows``): every run of
  Ho*pitch values of cols is added onto the flat buffer from offset i*pitch + j of
  its plane, one plane at a time so that the plane stays in L1.

im2col itself is not here: NumPy's strided copy from a sliding-window view into
a reused buffer measured 2-3x faster than a numba loop (BENCHMARKS.md).
* ``maxpool(x, kh, kw, sh, sw, ph, pw, y, argmax, nan_aware)`` /
  ``maxpool_grad(dy, argmax, kh, kw, sh, sw, ph, pw, dx)``: max over each window
  (padding never wins; the first maximum in row-major order, like torch) and the
  scatter of dy to it. With ``nan_aware`` a nan in the window gives nan, at the
  first nan (like ``np.argmax``); without it, the loop is 1.3-1.9x faster and nan
  never wins, so ``conv.maxpool2d`` passes True only when x holds a nan.
* ``maxpool_2x2(x, y, argmax)`` / ``maxpool_2x2_grad(dy, argmax, dx)``: the same
  for the common 2x2 window with stride 2 and no padding, with the four loads and
  comparisons written out (no inner loops, no bounds checks): 0.37 vs 4.2 ms for
  LeNet-5's (128, 6, 28, 28) pooling. It assumes x has no nan (nan-aware
  comparisons made it 8x slower): ``conv.maxpool2d`` sends an input with a nan to
  ``maxpool`` with ``nan_aware``. The backward zeroes dx, then stores each dy at
  its window's argmax.
* ``bn_forward(x3, gamma, beta, eps, y, x_hat, mean, var, inv_std)`` and
  ``bn_backward(dy3, x_hat, scale, dx, dgamma, dbeta)`` on x3 (N, C, L):
  batch norm over (N, L) per channel, statistics accumulated in float64, x read in
  memory order. ``bn_forward_channels(..., c0, c1, relu=False)`` /
  ``bn_backward_channels(..., c0, c1)`` do the same for the channels [c0, c1) only,
  so that threads can share the work; ``relu`` fuses a ReLU after the batch norm into
  the pass that writes y (``basis.batchnorm_relu``).
* ``channel_affine(x3, scale, shift, y3, relu=False)`` on x3 (N, C, L): y = x *
  scale[c] + shift[c], batch norm in evaluation in one pass (with ``relu``, and ReLU).
* ``conv_store(y_t, bias, has_bias, relu, y)``: a convolution's GEMM output (F, n, Ho,
  wide) to y (n, F, Ho, Wo), plus the bias, and with ``relu`` max(., 0) (as
  ``relu_forward``), in one pass (``conv.conv2d``; ``then_relu`` for Conv2d + ReLU).
* ``relu_forward(x, y)`` on flat arrays: y = max(x, 0), nan kept (NumPy 2.4's
  ``np.maximum(x, 0)`` has no SIMD loop for an array and a scalar).
* ``add_relu_forward(a, b, y)`` on flat arrays: y = max(a + b, 0), as ``relu_forward``
  on the sum, in one pass (a residual block's sum and the ReLU after it).
* ``relu_backward(dy, y, dx)`` on flat arrays: dx = 0 where ReLU's output y <= 0
  (exactly where its input was), else dy (also where y is nan, as torch), in one pass
  (NumPy's ``np.where`` is two, through a boolean temporary).

Thread parallelism (``parallel_map``): the convolution splits its batch (from
``conv.PARALLEL_MIN_FLOPS`` up), batch norm its channels, and the elementwise
kernels their rows (from ``PARALLEL_MIN_SIZE`` values up), into one part per
thread. The GEMMs, NumPy copies and these ``nogil`` kernels release the GIL, so
the parts run on separate cores; while they run, BLAS is held at one thread per
caller (no oversubscription).
The number of threads follows the BLAS thread limit in force, so
``threadpoolctl.threadpool_limits(1)`` makes everything serial again.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence

import numpy as np

_KERNELS = None
_local = threading.local()

# The batch-norm kernels' sums may be reordered (and multiply-adds fused) so that LLVM
# vectorizes them: a float64 sum over 131,072 float32 values in one dependent chain is
# latency-bound (3.6 ms vs 1.0 ms for a (128, 16, 1024) forward, BENCHMARKS.md). No other
# fast-math flag: NaN and inf still propagate.
_REDUCTION_MATH = {"reassoc", "contract"}


# The kernels another kernel calls: module globals, bound by _compile. Not closure variables
# of _compile: numba caches a kernel across processes only when what it calls is a global;
# as closure variables, col2im and both channel batch norms were compiled again in every
# process and added a file to __pycache__ each time (found in session 11).
_valid = bn_channel_sums = bn_channel_sq_dev = bn_normalize = None
bn_forward_channels = bn_grad_sums = bn_grad_apply = bn_backward_channels = None


def _compile() -> dict:
    global _valid, bn_channel_sums, bn_channel_sq_dev, bn_normalize, \
        bn_forward_channels, bn_grad_sums, bn_grad_apply, bn_backward_channels
    from numba import njit

    @njit(cache=True, fastmath=False, nogil=True)
    def _valid(n_in, n_out, stride, pad, offset):  # pragma: no cover (jitted)
        # the outputs o with 0 <= o*stride - pad + offset < n_in form [lo, hi)
        lo = max(0, (pad - offset + stride - 1) // stride)
        hi = min(n_out, (n_in - 1 + pad - offset) // stride + 1)
        return lo, max(lo, hi)

    @njit(cache=True, fastmath=False, nogil=True)
    def col2im(cols, kh, kw, sh, sw, ph, pw, dx):  # pragma: no cover (jitted)
        N, C, H, W = dx.shape
        Ho = (H + 2 * ph - kh) // sh + 1
        Wo = (W + 2 * pw - kw) // sw + 1
        dx[...] = 0
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    row = cols[(c * kh + i) * kw + j]
                    lo, hi = _valid(W, Wo, sw, pw, j)
                    for n in range(N):
                        for ho in range(Ho):
                            h = ho * sh - ph + i
                            if h < 0 or h >= H:
                                continue
                            base = (n * Ho + ho) * Wo
                            dst = dx[n, c, h]
                            if sw == 1:
                                d, o = dst[lo - pw + j:hi - pw + j], row[base + lo:base + hi]
                                for t in range(hi - lo):
                                    d[t] += o[t]
                            else:
                                for wo in range(lo, hi):
                                    dst[wo * sw - pw + j] += row[base + wo]

    @njit(cache=True, fastmath=False, nogil=True)
    def col2im_rows(cols, n, C, kh, kw, pitch, plane, Ho, buf):  # pragma: no cover (jitted)
        L = Ho * pitch
        for m in range(n):
            for c in range(C):
                base = (m * C + c) * plane
                for i in range(kh):
                    for j in range(kw):
                        run = cols[(c * kh + i) * kw + j, m * L:(m + 1) * L]
                        dst = buf[base + i * pitch + j:base + i * pitch + j + L]
                        for t in range(L):
                            dst[t] += run[t]

    @njit(cache=True, fastmath=False, nogil=True)
    def maxpool(x, kh, kw, sh, sw, ph, pw, y, argmax, nan_aware):  # pragma: no cover (jitted)
        N, C, H, W = x.shape
        Ho, Wo = y.shape[2], y.shape[3]
        for n in range(N):
            for c in range(C):
                img = x[n, c]
                for ho in range(Ho):
                    h0 = ho * sh - ph
                    i_lo, i_hi = max(0, -h0), min(kh, H - h0)     # the rows inside the image
                    for wo in range(Wo):
                        w0 = wo * sw - pw
                        j_lo, j_hi = max(0, -w0), min(kw, W - w0)
                        best = img[h0 + i_lo, w0 + j_lo]          # the first pixel enters
                        arg = i_lo * kw + j_lo
                        for i in range(i_lo, i_hi):
                            row = img[h0 + i]
                            for j in range(j_lo, j_hi):
                                v = row[w0 + j]
                                # larger wins (ties keep the first); with nan_aware, the
                                # first nan wins and stays
                                if v > best or (nan_aware and v != v and best == best):
                                    best = v
                                    arg = i * kw + j
                        y[n, c, ho, wo] = best
                        argmax[n, c, ho, wo] = arg

    @njit(cache=True, fastmath=False, nogil=True)
    def maxpool_grad(dy, argmax, kh, kw, sh, sw, ph, pw, dx):  # pragma: no cover (jitted)
        N, C, Ho, Wo = dy.shape
        dx[...] = 0
        for n in range(N):
            for c in range(C):
                for ho in range(Ho):
                    for wo in range(Wo):
                        a = argmax[n, c, ho, wo]
                        hi = ho * sh - ph + a // kw
                        wi = wo * sw - pw + a % kw
                        dx[n, c, hi, wi] += dy[n, c, ho, wo]

    @njit(cache=True, fastmath=False, nogil=True)
    def maxpool_2x2(x, y, argmax):  # pragma: no cover (jitted)
        N, C = x.shape[:2]
        Ho, Wo = y.shape[2], y.shape[3]
        for n in range(N):
            for c in range(C):
                for ho in range(Ho):
                    r0, r1 = x[n, c, 2 * ho], x[n, c, 2 * ho + 1]
                    y_row, a_row = y[n, c, ho], argmax[n, c, ho]
                    for wo in range(Wo):
                        a, b = r0[2 * wo], r0[2 * wo + 1]
                        d, e = r1[2 * wo], r1[2 * wo + 1]
                        top = b if b > a else a             # ties: the first (row-major) wins
                        bottom = e if e > d else d
                        i_top = 1 if b > a else 0
                        i_bottom = 3 if e > d else 2
                        y_row[wo] = bottom if bottom > top else top
                        a_row[wo] = i_bottom if bottom > top else i_top

    @njit(cache=True, fastmath=False, nogil=True)
    def maxpool_2x2_grad(dy, argmax, dx):  # pragma: no cover (jitted)
        # zero, then one store per window (0.20 ms for LeNet-5's pooling; writing all four
        # values of every window with selects took 1.1 ms)
        Ho, Wo = dy.shape[2], dy.shape[3]
        dx[...] = 0
        for n in range(dy.shape[0]):
            for c in range(dy.shape[1]):
                for ho in range(Ho):
                    g_row, a_row = dy[n, c, ho], argmax[n, c, ho]
                    for wo in range(Wo):
                        k = a_row[wo]
                        dx[n, c, 2 * ho + (k >> 1), 2 * wo + (k & 1)] = g_row[wo]

    # The batch-norm kernels walk x in memory order, sample by sample, each sample's channel
    # range [c0, c1) in turn, and keep per-channel float64 sums: 1.3-2x faster than a whole
    # channel at a time (N strided runs of H*W values) on ResNet-20's maps (BENCHMARKS.md).
    @njit(cache=True, fastmath=_REDUCTION_MATH, nogil=True)
    def bn_channel_sums(x, c0, c1, out):  # pragma: no cover (jitted)
        # out[c - c0] += sum of x[:, c, :] (float64), channels [c0, c1)
        N = x.shape[0]
        L = x.shape[2]
        for n in range(N):
            for c in range(c0, c1):
                row = x[n, c]
                s = 0.0
                for l in range(L):
                    s += row[l]
                out[c - c0] += s

    @njit(cache=True, fastmath=_REDUCTION_MATH, nogil=True)
    def bn_channel_sq_dev(x, mu, c0, c1, out):  # pragma: no cover (jitted)
        # out[c - c0] += sum of (x[:, c, :] - mu[c - c0])^2 (float64)
        N = x.shape[0]
        L = x.shape[2]
        for n in range(N):
            for c in range(c0, c1):
                row, u = x[n, c], mu[c - c0]
                s = 0.0
                for l in range(L):
                    d = row[l] - u
                    s += d * d
                out[c - c0] += s

    @njit(cache=True, fastmath=_REDUCTION_MATH, nogil=True)
    def bn_normalize(x, gamma, beta, mu, istd, y, x_hat, c0, c1,
                     relu):  # pragma: no cover (jitted)
        # x_hat = (x - mu) * istd in x's dtype, y = x_hat * gamma + beta (max(., 0) with relu)
        N = x.shape[0]
        L = x.shape[2]
        zero = y.dtype.type(0)
        for n in range(N):
            for c in range(c0, c1):
                mu_t, istd_t = x.dtype.type(mu[c - c0]), x.dtype.type(istd[c - c0])
                g, b = gamma[c], beta[c]
                row, h_out, y_out = x[n, c], x_hat[n, c], y[n, c]
                for l in range(L):
                    h = (row[l] - mu_t) * istd_t
                    h_out[l] = h
                    v = h * g + b
                    y_out[l] = zero if relu and v < zero else v

    @njit(cache=True, fastmath=_REDUCTION_MATH, nogil=True)
    def bn_forward_channels(x, gamma, beta, eps, y, x_hat, mean, var, inv_std, c0,
                            c1, relu=False):  # pragma: no cover (jitted)
        # relu: y = max(h * g + b, 0) (a ReLU after the batch norm, fused into the write of y)
        m = x.shape[0] * x.shape[2]
        mu, ss = np.zeros(c1 - c0), np.zeros(c1 - c0)
        bn_channel_sums(x, c0, c1, mu)
        mu /= m
        bn_channel_sq_dev(x, mu, c0, c1, ss)
        for c in range(c0, c1):
            v = ss[c - c0] / m
            ss[c - c0] = 1.0 / np.sqrt(v + eps)         # from here on 1 / std, in float64
            mean[c], var[c], inv_std[c] = mu[c - c0], v, ss[c - c0]
        bn_normalize(x, gamma, beta, mu, ss, y, x_hat, c0, c1, relu)

    @njit(cache=True, fastmath=_REDUCTION_MATH, nogil=True)
    def bn_forward(x, gamma, beta, eps, y, x_hat, mean, var, inv_std):  # pragma: no cover
        bn_forward_channels(x, gamma, beta, eps, y, x_hat, mean, var, inv_std, 0, x.shape[1])

    @njit(cache=True, fastmath=_REDUCTION_MATH, nogil=True)
    def bn_grad_sums(dy, x_hat, c0, c1, sb, sg):  # pragma: no cover (jitted)
        # sb[c - c0] += sum of dy[:, c, :], sg[c - c0] += sum of dy * x_hat (float64)
        N = dy.shape[0]
        L = dy.shape[2]
        for n in range(N):
            for c in range(c0, c1):
                g, h = dy[n, c], x_hat[n, c]
                a = 0.0
                b = 0.0
                for l in range(L):
                    a += g[l]
                    b += g[l] * h[l]
                sb[c - c0] += a
                sg[c - c0] += b

    @njit(cache=True, fastmath=_REDUCTION_MATH, nogil=True)
    def bn_grad_apply(dy, x_hat, scale, sb, sg, m, dx, c0, c1):  # pragma: no cover (jitted)
        # dx = scale * (dy - sum(dy) / m - x_hat * sum(dy * x_hat) / m), channels [c0, c1)
        N = dy.shape[0]
        L = dy.shape[2]
        for n in range(N):
            for c in range(c0, c1):
                mb, mg = dy.dtype.type(sb[c - c0] / m), dy.dtype.type(sg[c - c0] / m)
                k = scale[c]
                g, h, out = dy[n, c], x_hat[n, c], dx[n, c]
                for l in range(L):
                    out[l] = k * (g[l] - mb - h[l] * mg)

    @njit(cache=True, fastmath=_REDUCTION_MATH, nogil=True)
    def bn_backward_channels(dy, x_hat, scale, dx, dgamma, dbeta, c0,
                             c1):  # pragma: no cover (jitted)
        m = dy.shape[0] * dy.shape[2]
        sb, sg = np.zeros(c1 - c0), np.zeros(c1 - c0)
        bn_grad_sums(dy, x_hat, c0, c1, sb, sg)
        for c in range(c0, c1):
            dbeta[c], dgamma[c] = sb[c - c0], sg[c - c0]
        bn_grad_apply(dy, x_hat, scale, sb, sg, m, dx, c0, c1)

    @njit(cache=True, fastmath=_REDUCTION_MATH, nogil=True)
    def bn_backward(dy, x_hat, scale, dx, dgamma, dbeta):  # pragma: no cover (jitted)
        bn_backward_channels(dy, x_hat, scale, dx, dgamma, dbeta, 0, dy.shape[1])

    @njit(cache=True, nogil=True)
    def channel_affine(x, scale, shift, y, relu=False):  # pragma: no cover (jitted)
        # y[n, c, :] = x[n, c, :] * scale[c] + shift[c]: batch norm in evaluation, one pass
        # (NumPy's broadcast multiply and add take two, each slower than this one);
        # relu: max(., 0) in the same pass, as relu_forward
        N, C, L = x.shape
        zero = y.dtype.type(0)
        for n in range(N):
            for c in range(C):
                k, b = scale[c], shift[c]
                for l in range(L):
                    v = x[n, c, l] * k + b
                    y[n, c, l] = zero if relu and v < zero else v

    @njit(cache=True, nogil=True)
    def conv_store(y_t, bias, has_bias, relu, y):  # pragma: no cover (jitted)
        # y[m, f, h, w] = y_t[f, m, h, w] (+ bias[f]) (then max(., 0), as relu_forward) for
        # w < y.shape[3]: a convolution's GEMM output grid (F, n, Ho, wide) to NCHW in one
        # pass, in place of a bias add, a transposed copy and a separate ReLU pass
        F, n, Ho, _ = y_t.shape
        Wo = y.shape[3]
        zero = y.dtype.type(0)
        for m in range(n):
            for f in range(F):
                bf = bias[f] if has_bias else zero
                for h in range(Ho):
                    for w in range(Wo):
                        v = y_t[f, m, h, w]
                        if has_bias:
                            v = v + bf
                        y[m, f, h, w] = zero if relu and v < zero else v

    @njit(cache=True, nogil=True)
    def relu_forward(x, y):  # pragma: no cover (jitted)
        # 4-6x faster than np.maximum(x, 0): NumPy 2.4 has no SIMD loop for an array and
        # a scalar (0.39 ms vs 0.07 ms for 602,112 float32, BENCHMARKS.md). nan stays nan.
        zero = y.dtype.type(0)
        for i in range(x.size):
            v = x[i]
            y[i] = zero if v < zero else v

    @njit(cache=True, nogil=True)
    def add_relu_forward(a, b, y):  # pragma: no cover (jitted)
        # y = max(a + b, 0), as relu_forward on a + b (nan stays nan): a residual sum and
        # the ReLU after it in one pass, without the sum's array
        zero = y.dtype.type(0)
        for i in range(a.size):
            v = a[i] + b[i]
            y[i] = zero if v < zero else v

    @njit(cache=True, nogil=True)
    def relu_backward(dy, y, dx):  # pragma: no cover (jitted)
        # torch's threshold_backward: 0 where y <= 0, dy elsewhere (also where y is nan)
        zero = dx.dtype.type(0)
        for i in range(dy.size):
            dx[i] = zero if y[i] <= 0 else dy[i]

    return {"relu_forward": relu_forward, "relu_backward": relu_backward,
            "add_relu_forward": add_relu_forward,
            "conv_store": conv_store,
            "channel_affine": channel_affine,
            "col2im": col2im, "col2im_rows": col2im_rows,
            "maxpool": maxpool, "maxpool_2x2": maxpool_2x2, "maxpool_2x2_grad": maxpool_2x2_grad,
            "maxpool_grad": maxpool_grad, "bn_forward": bn_forward, "bn_backward": bn_backward,
            "bn_forward_channels": bn_forward_channels,
            "bn_backward_channels": bn_backward_channels,
            # the pieces of the two above, for a batch split over threads (nn.threadsplit)
            "bn_channel_sums": bn_channel_sums, "bn_channel_sq_dev": bn_channel_sq_dev,
            "bn_normalize": bn_normalize, "bn_grad_sums": bn_grad_sums,
            "bn_grad_apply": bn_grad_apply}


_AVAILABLE = None


def available() -> bool:
    """True when numba can be imported (the kernels compile on first use); checked once."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            import numba  # noqa: F401
            _AVAILABLE = True
        except ImportError:
            _AVAILABLE = False
    return _AVAILABLE


def get(name: str):
    """The compiled kernel ``name`` (see the module docstring)."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _compile()
    return _KERNELS[name]


def scratch(shape, dtype, slot: str = "cols") -> np.ndarray:
    """An uninitialized array of ``shape`` in a per-thread buffer reused across calls.

    Used for the arrays that live only inside one conv forward or backward (the
    im2col matrix, the padded input block, the re-laid-out dy): one growing buffer
    per thread, dtype and ``slot`` instead of a fresh allocation per layer and step.
    The next ``scratch`` call with the same slot in the same thread may overwrite it.
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape)      # not np.prod: this is called ~2,600 times per ResNet step
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get((slot, dtype))
    if buf is None or buf.size < size:
        buf = bufs[(slot, dtype)] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


def gemm(a: np.ndarray, b: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``a @ b`` for 2-D NumPy arrays (into ``out`` if given), always without the GIL.

    NumPy's ``matmul`` keeps the GIL while BLAS runs when the product has at most 500
    values, however long the product takes (its threading threshold counts the output):
    LeNet-5's first weight gradient, a (6, 57344) @ (57344, 25) product of about 1 ms at a
    batch of 64, held it, and two threads running it together ran at 0.92x the speed of
    one (``np.dot``: 1.67x; BENCHMARKS.md, session 10). ``np.dot`` calls the same BLAS GEMM
    and releases the GIL whatever the size. Its ``out`` must be C-contiguous of the
    result's dtype; any other ``out`` goes to ``matmul``.
    """
    if out is None or (out.flags.c_contiguous and out.dtype == np.result_type(a.dtype, b.dtype)):
        return np.dot(a, b, out=out)
    return np.matmul(a, b, out=out)


# --------------------------------------------------------------------------- threads
MAX_THREADS = 8
_pool: Optional[ThreadPoolExecutor] = None
_blas = None
_lock = threading.Lock()
_in_parallel = threading.local()


def _blas_controllers() -> list:
    """threadpoolctl's controllers of the loaded BLAS libraries (looked up once; [] if none)."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
            _blas = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        except Exception:  # threadpoolctl missing or unable to inspect the process
            _blas = []
    return _blas


def num_threads() -> int:
    """How many threads ``parallel_map`` uses: the BLAS thread limit, capped by the CPUs
    available to this process and MAX_THREADS; 1 inside a ``parallel_map`` part."""
    if getattr(_in_parallel, "active", False):
        return 1
    ctl = _blas_controllers()
    if not ctl:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(ctl[0].get_num_threads(), cpus or 1, MAX_THREADS))


def split(n: int, parts: int) -> List[slice]:
    """[0, n) as ``min(parts, n)`` contiguous slices of near-equal length."""
    parts = max(1, min(parts, n))
    edges = [n * i // parts for i in range(parts + 1)]
    return [slice(edges[i], edges[i + 1]) for i in range(parts)]


# Elementwise work on arrays smaller than this many elements (4 MiB of float32) stays on one
# thread: below it, the hand-off and the second core's cache misses cost more than they save
# (the MLP's (128, 1000) ReLU: 0.21 ms on one thread, 0.41 ms split in two; LeNet-5's first
# ReLU, 602,112 values: 0.39 ms on one thread, 0.58 ms split, on the session-5 host).
PARALLEL_MIN_SIZE = 2**20


def row_parts(a: np.ndarray) -> List[slice]:
    """Slices of a's first axis, one per thread if a has >= PARALLEL_MIN_SIZE elements."""
    return split(a.shape[0], num_threads() if a.size >= PARALLEL_MIN_SIZE else 1)


def _run_part(fn: Callable, item):
    _in_parallel.active = True
    try:
        return fn(item)
    finally:
        _in_parallel.active = False


@contextlib.contextmanager
def one_blas_thread():
    """BLAS on one thread inside the block (the caller's setting restored after it)."""
    ctl = [c for c in _blas_controllers() if c.get_num_threads() != 1]   # setting costs ~10 us
    saved = [c.get_num_threads() for c in ctl]
    for c in ctl:
        c.set_num_threads(1)
    try:
        yield
    finally:
        for c, n in zip(ctl, saved):
            c.set_num_threads(n)


def parallel_map(fn: Callable, items: Sequence) -> list:
    """[fn(item) for item in items], the items run on separate threads.

    The first item runs in the calling thread, the others on a shared pool.
    fn must only write to memory no other item touches (disjoint slices of
    an output) and must release the GIL for its heavy work (NumPy, BLAS,
    ``nogil`` kernels). BLAS runs one thread per caller meanwhile.
    """
    if len(items) < 2:
        return [fn(item) for item in items]
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(MAX_THREADS - 1, thread_name_prefix="mlcvlab")
    with one_blas_thread():
        futures = [_pool.submit(_run_part, fn, item) for item in items[1:]]
        first = _run_part(fn, items[0])
        return [first] + [f.result() for f in futures]
