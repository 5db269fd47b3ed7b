"""Direct 3x3 and 5x5 stride-1 convolution, for layers with few output channels.

im2col turns a 3x3 convolution into one GEMM by copying every input value nine times
(the column matrix; 25 times for 5x5); with 16 output channels, as in ResNet-20's first
stage, that GEMM has only 16 rows and a reduction of 144, so writing and reading back the
nine-fold copy costs about as much as the arithmetic, and neither core runs near its peak
(LeNet-5's first layer, 6 filters over 1 channel, is worse off still). Here the convolution
runs straight from the (zero-padded) input, with no copy beyond the padding.

Layout (the row-padded layout of ``conv.row_padded_geometry``): each channel plane of one
sample is stored flat, each row as ``pw`` zeros followed by the W pixels (``pitch = W + pw``
values), with ``ph`` zero rows above and below. Output (ho, wo), computed on a (Ho, pitch)
grid whose last ``pitch - Wo`` columns are dropped, then reads the input at flat position
``(ho + i) * pitch + wo + j`` for kernel offset (i, j). So for one input channel c and
kernel row i the contribution to output channel f is, over a flat run of outputs o,

    acc_f[o] += W[f, c, i, 0] * r[o] + W[f, c, i, 1] * r[o + 1] + W[f, c, i, 2] * r[o + 2]

(five terms for 5x5) with r the plane of c from row i: one loop along o that LLVM
vectorizes (8 float32 lanes on AVX2). The loop updates four output channels at once for 3x3
(twelve weights held in registers, each input value loaded once for four channels), two for
5x5 (ten weights), and the outputs are taken a chunk of ``_chunk(F)`` positions at a time so
that the accumulators of all F channels stay in the L1 cache while every (c, i) passes over
them. The chunk is rounded up to a multiple of 8 (the vector width) so that no scalar
remainder loop runs; the few extra outputs it computes read zeros or the next plane's values
and are dropped.

Each sample is copied into a per-thread padded buffer (``C * plane`` values, zeroed once per
call) just before its outputs are computed, so the copy is read back from cache.

The backward (:func:`conv2d_grad_direct`): dW from a second kernel that walks the same
layout, four (3x3) or two (5x5) output channels and their twelve or ten weight sums per pass
over a sample's outputs (sums in vector lanes, no stores in the loop); dx as the forward
kernel's convolution of dy with the flipped filters.

Where this is faster than im2col or Winograd is measured, not assumed: ``conv.direct_pays``
(at most 16 output channels, at least 16x16 outputs) and BENCHMARKS.md, session 12. With
more output channels a GEMM reuses each loaded input value across all of them, where a pass
here reuses it across four.

Precision: every output is a sum of C * kh * kw products in float32 (fused multiply-adds,
summed in the order c, i, j), as im2col's GEMM sums them in another order: the rounding of a
direct convolution, measured against float64 in ``tests/nn/test_direct_conv.py`` (y and dx
up to ~2-4x im2col's error, as one chain of additions rounds more than the GEMM's blocks; dW
below it, the samples' sums being added in float64).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from mlcvlab.nn import kernels

# Accumulator values kept per chunk of outputs: F rows of _chunk(F) values, about 24 KiB of
# float32, within the 32 KiB L1 data cache of the machines measured (BENCHMARKS.md, session 12).
ACC_VALUES = 6144

_kernel = None


def _chunk(F: int) -> int:
    """Outputs per chunk for F output channels: ACC_VALUES / F, a multiple of 8 in [64, 1024]."""
    return max(64, min(1024, ACC_VALUES // max(F, 1))) // 8 * 8


KERNEL_SIZES = ((3, 3), (5, 5))


def applies(kernel, stride, dilation, groups: int, pads) -> bool:
    """Whether the direct kernels compute this convolution: a 3x3 or 5x5 kernel, stride 1,
    dilation 1, one group, symmetric zero padding of at most kernel - 1 on each side (pads:
    top, bottom, left, right). Wider padding would make the output wider than a stored row,
    and the input gradient (a convolution of dy padded by kernel - 1 - padding) impossible."""
    kh, kw = kernel
    return (tuple(kernel) in KERNEL_SIZES and tuple(stride) == (1, 1)
            and tuple(dilation) == (1, 1) and groups == 1 and pads[0] == pads[1]
            and pads[2] == pads[3] and pads[0] <= kh - 1 and pads[2] <= kw - 1)


# The jitted pieces both forward kernels call: module globals, set once by _jit_helpers (numba
# caches a kernel across processes only when what it calls is a global; see winograd.py).
_copy_in = _init_chunk = _store_chunk = None


def _jit_helpers() -> None:
    """Compile (or load) the pieces shared by the forward kernels."""
    global _copy_in, _init_chunk, _store_chunk
    if _copy_in is not None:
        return
    from numba import njit

    @njit(cache=True, nogil=True)
    def _copy_in(x, m, ph, pw, plane, pitch, pad):  # pragma: no cover (jitted)
        # sample m's pixels into the row-padded buffer (whose zeros are already there)
        C, H, Wd = x.shape[1], x.shape[2], x.shape[3]
        for c in range(C):
            for h in range(H):
                start = c * plane + (h + ph) * pitch + pw
                dst = pad[start:start + Wd]
                src = x[m, c, h]
                for w in range(Wd):
                    dst[w] = src[w]

    @njit(cache=True, nogil=True)
    def _init_chunk(acc, b, L8):  # pragma: no cover (jitted)
        # every channel's accumulators start at its bias
        for f in range(acc.shape[0]):
            a = acc[f]
            bf = b[f]
            for o in range(L8):
                a[o] = bf

    @njit(cache=True, nogil=True)
    def _store_chunk(acc, y, m, s, L, pitch, relu):  # pragma: no cover (jitted)
        # the chunk's outputs [s, s + L) of the (Ho, pitch) grid with wo < Wo into y[m]
        F, Ho, Wo = y.shape[1], y.shape[2], y.shape[3]
        zero = y.dtype.type(0)
        ho_end = min(Ho, (s + L + pitch - 1) // pitch)
        for f in range(F):
            for ho in range(s // pitch, ho_end):
                lo, hi = max(ho * pitch, s), min(ho * pitch + Wo, s + L)
                if hi <= lo:
                    continue
                dst = y[m, f, ho, lo - ho * pitch:hi - ho * pitch]
                src = acc[f, lo - s:hi - s]
                if relu:                            # as kernels.relu_forward: nan stays nan
                    for w in range(hi - lo):
                        v = src[w]
                        dst[w] = zero if v < zero else v
                else:
                    for w in range(hi - lo):
                        dst[w] = src[w]


def _compile():
    from numba import njit
    _jit_helpers()

    # Two forward kernels, one per kernel width, not one with a branch per width: in one
    # function LLVM left the 5-tap loop at scalar speed (8 vs 65 GFLOP/s, session 12).
    # contract only: multiply-adds are fused, the order of the sums is as written.
    @njit(cache=True, nogil=True, fastmath={"contract"})
    def forward3(x, W, b, relu, ph, pw, y, pad, acc, chunk):  # pragma: no cover (jitted)
        # y[m] = conv(x[m], W) + b (max(., 0) with relu) for every sample m of x, W (F, C,
        # kh, 3); pad holds at least C * plane + 16 values, acc at least (F, chunk + 8)
        C, H, Wd = x.shape[1], x.shape[2], x.shape[3]
        F, Ho = y.shape[1], y.shape[2]
        kh = W.shape[2]
        pitch = Wd + pw
        plane = (H + 2 * ph) * pitch
        total = Ho * pitch
        pad[:] = 0
        for m in range(x.shape[0]):
            _copy_in(x, m, ph, pw, plane, pitch, pad)
            for s in range(0, total, chunk):
                L = min(chunk, total - s)
                L8 = (L + 7) // 8 * 8
                _init_chunk(acc, b, L8)
                for c in range(C):
                    for i in range(kh):
                        base = c * plane + i * pitch + s
                        r = pad[base:base + L8 + 2]
                        f = 0
                        while f + 4 <= F:               # four output channels per pass
                            a0, a1, a2, a3 = acc[f], acc[f + 1], acc[f + 2], acc[f + 3]
                            w00, w01, w02 = W[f, c, i, 0], W[f, c, i, 1], W[f, c, i, 2]
                            w10, w11, w12 = W[f + 1, c, i, 0], W[f + 1, c, i, 1], W[f + 1, c, i, 2]
                            w20, w21, w22 = W[f + 2, c, i, 0], W[f + 2, c, i, 1], W[f + 2, c, i, 2]
                            w30, w31, w32 = W[f + 3, c, i, 0], W[f + 3, c, i, 1], W[f + 3, c, i, 2]
                            for o in range(L8):
                                r0, r1, r2 = r[o], r[o + 1], r[o + 2]
                                v = a0[o]
                                v += w00 * r0
                                v += w01 * r1
                                v += w02 * r2
                                a0[o] = v
                                v = a1[o]
                                v += w10 * r0
                                v += w11 * r1
                                v += w12 * r2
                                a1[o] = v
                                v = a2[o]
                                v += w20 * r0
                                v += w21 * r1
                                v += w22 * r2
                                a2[o] = v
                                v = a3[o]
                                v += w30 * r0
                                v += w31 * r1
                                v += w32 * r2
                                a3[o] = v
                            f += 4
                        while f < F:                    # the last F % 4 channels
                            a0 = acc[f]
                            w00, w01, w02 = W[f, c, i, 0], W[f, c, i, 1], W[f, c, i, 2]
                            for o in range(L8):
                                v = a0[o]
                                v += w00 * r[o]
                                v += w01 * r[o + 1]
                                v += w02 * r[o + 2]
                                a0[o] = v
                            f += 1
                _store_chunk(acc, y, m, s, L, pitch, relu)

    @njit(cache=True, nogil=True, fastmath={"contract"})
    def forward5(x, W, b, relu, ph, pw, y, pad, acc, chunk):  # pragma: no cover (jitted)
        # as forward3 for W (F, C, kh, 5): two output channels per pass (ten weights)
        C, H, Wd = x.shape[1], x.shape[2], x.shape[3]
        F, Ho = y.shape[1], y.shape[2]
        kh = W.shape[2]
        pitch = Wd + pw
        plane = (H + 2 * ph) * pitch
        total = Ho * pitch
        pad[:] = 0
        for m in range(x.shape[0]):
            _copy_in(x, m, ph, pw, plane, pitch, pad)
            for s in range(0, total, chunk):
                L = min(chunk, total - s)
                L8 = (L + 7) // 8 * 8
                _init_chunk(acc, b, L8)
                for c in range(C):
                    for i in range(kh):
                        base = c * plane + i * pitch + s
                        r = pad[base:base + L8 + 4]
                        f = 0
                        while f + 2 <= F:
                            a0, a1 = acc[f], acc[f + 1]
                            w00, w01, w02 = W[f, c, i, 0], W[f, c, i, 1], W[f, c, i, 2]
                            w03, w04 = W[f, c, i, 3], W[f, c, i, 4]
                            w10, w11, w12 = W[f + 1, c, i, 0], W[f + 1, c, i, 1], W[f + 1, c, i, 2]
                            w13, w14 = W[f + 1, c, i, 3], W[f + 1, c, i, 4]
                            for o in range(L8):
                                r0, r1, r2, r3, r4 = r[o], r[o + 1], r[o + 2], r[o + 3], r[o + 4]
                                v = a0[o]
                                v += w00 * r0
                                v += w01 * r1
                                v += w02 * r2
                                v += w03 * r3
                                v += w04 * r4
                                a0[o] = v
                                v = a1[o]
                                v += w10 * r0
                                v += w11 * r1
                                v += w12 * r2
                                v += w13 * r3
                                v += w14 * r4
                                a1[o] = v
                            f += 2
                        if f < F:                       # an odd F's last channel
                            a0 = acc[f]
                            w00, w01, w02 = W[f, c, i, 0], W[f, c, i, 1], W[f, c, i, 2]
                            w03, w04 = W[f, c, i, 3], W[f, c, i, 4]
                            for o in range(L8):
                                v = a0[o]
                                v += w00 * r[o]
                                v += w01 * r[o + 1]
                                v += w02 * r[o + 2]
                                v += w03 * r[o + 3]
                                v += w04 * r[o + 4]
                                a0[o] = v
                _store_chunk(acc, y, m, s, L, pitch, relu)

    # reassoc as well: the sums over the outputs run in vector lanes (as a GEMM's do)
    @njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
    def weight_grad(x, dy, ph, pw, dW, pad, dyp):  # pragma: no cover (jitted)
        # dW[f, c, i, j] += sum over the samples m of x and the outputs (ho, wo) of
        # dy[m, f, ho, wo] * x_padded[m, c, ho + i, wo + j], each sample's sum in x's dtype
        # (vector lanes), the samples' sums added in dW's (float64). kw 3 or 5; pad as for
        # forward; dyp at least F * Ho * pitch values
        n, C, H, Wd = x.shape
        F, Ho, Wo = dy.shape[1], dy.shape[2], dy.shape[3]
        kh, kw = dW.shape[2], dW.shape[3]
        pitch = Wd + pw
        plane = (H + 2 * ph) * pitch
        L = Ho * pitch
        zero = x.dtype.type(0)
        pad[:] = 0
        dyp[:] = 0                                  # the dropped columns stay 0: they add 0
        for m in range(n):
            for c in range(C):
                for h in range(H):
                    start = c * plane + (h + ph) * pitch + pw
                    dst = pad[start:start + Wd]
                    src = x[m, c, h]
                    for w in range(Wd):
                        dst[w] = src[w]
            for f in range(F):
                for h in range(Ho):
                    dst = dyp[f * L + h * pitch:f * L + h * pitch + Wo]
                    src = dy[m, f, h]
                    for w in range(Wo):
                        dst[w] = src[w]
            step = 4 if kw == 3 else 2              # output channels per pass
            for f in range(0, F, step):
                k = min(step, F - f)
                # the pass's channels; past F the last one again (computed, unused)
                g0 = dyp[f * L:(f + 1) * L]
                g1 = dyp[(f + min(1, k - 1)) * L:(f + min(1, k - 1) + 1) * L]
                g2 = dyp[(f + min(2, k - 1)) * L:(f + min(2, k - 1) + 1) * L]
                g3 = dyp[(f + min(3, k - 1)) * L:(f + min(3, k - 1) + 1) * L]
                for c in range(C):
                    for i in range(kh):
                        r = pad[c * plane + i * pitch:c * plane + i * pitch + L + kw - 1]
                        if kw == 3:
                            s00 = s01 = s02 = s10 = s11 = s12 = zero
                            s20 = s21 = s22 = s30 = s31 = s32 = zero
                            for o in range(L):
                                r0, r1, r2 = r[o], r[o + 1], r[o + 2]
                                d = g0[o]
                                s00 += d * r0
                                s01 += d * r1
                                s02 += d * r2
                                d = g1[o]
                                s10 += d * r0
                                s11 += d * r1
                                s12 += d * r2
                                d = g2[o]
                                s20 += d * r0
                                s21 += d * r1
                                s22 += d * r2
                                d = g3[o]
                                s30 += d * r0
                                s31 += d * r1
                                s32 += d * r2
                            sums = ((s00, s01, s02, zero, zero), (s10, s11, s12, zero, zero),
                                    (s20, s21, s22, zero, zero), (s30, s31, s32, zero, zero))
                        else:
                            s00 = s01 = s02 = s03 = s04 = zero
                            s10 = s11 = s12 = s13 = s14 = zero
                            for o in range(L):
                                r0, r1, r2, r3, r4 = r[o], r[o + 1], r[o + 2], r[o + 3], r[o + 4]
                                d = g0[o]
                                s00 += d * r0
                                s01 += d * r1
                                s02 += d * r2
                                s03 += d * r3
                                s04 += d * r4
                                d = g1[o]
                                s10 += d * r0
                                s11 += d * r1
                                s12 += d * r2
                                s13 += d * r3
                                s14 += d * r4
                            sums = ((s00, s01, s02, s03, s04), (s10, s11, s12, s13, s14),
                                    (zero, zero, zero, zero, zero),
                                    (zero, zero, zero, zero, zero))
                        for q in range(k):
                            row = sums[q]
                            for j in range(kw):
                                dW[f + q, c, i, j] += row[j]

    return {"forward3": forward3, "forward5": forward5, "weight_grad": weight_grad}


def kernel(name: str):
    """The compiled kernel "forward3", "forward5" (by kernel width) or "weight_grad" (numba,
    on first use; cached on disk)."""
    global _kernel
    if _kernel is None:
        _kernel = _compile()
    return _kernel[name]


def conv2d_direct(x: np.ndarray, W: np.ndarray, b: Optional[np.ndarray],
                  padding: Tuple[int, int], parts, then_relu: bool = False) -> np.ndarray:
    """y = conv2d(x, W, b, stride 1, padding) for W (F, C, kh, kw), relu(y) when
    ``then_relu``.

    The caller (``conv.conv2d``) has checked the arguments and that :func:`applies`;
    ``parts`` are the batch slices, one per thread (``conv._batch_parts``). Returns y
    (N, F, Ho, Wo).
    """
    from mlcvlab.nn.conv import _map_parts
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    ph, pw = padding
    Ho, Wo = H + 2 * ph - kh + 1, Wd + 2 * pw - kw + 1
    y = np.empty((N, F, Ho, Wo), dtype=x.dtype)
    bias = b if b is not None else np.zeros(F, dtype=x.dtype)
    chunk = _chunk(F)
    run = kernel(f"forward{kw}")
    plane = (H + 2 * ph) * (Wd + pw)

    def forward_part(part: slice) -> None:
        pad = kernels.scratch((C * plane + 16,), x.dtype, slot="direct_pad")
        acc = kernels.scratch((F, chunk + 8), x.dtype, slot="direct_acc")
        run(x[part], W, bias, then_relu, ph, pw, y[part], pad, acc, chunk)

    _map_parts(forward_part, parts)
    return y


def conv2d_grad_direct(dy: np.ndarray, x: np.ndarray, W: np.ndarray, padding: Tuple[int, int],
                       has_bias: bool, input_grad: bool, parts):
    """dy (N, F, Ho, Wo) -> dx (N, C, H, W) or None, dW (F, C, kh, kw), db (F,) or None, of
    :func:`conv2d_direct`'s convolution of x by W.

    dW: the ``weight_grad`` kernel, each sample's sums in vector lanes, the samples' in
    float64. dx: the convolution of dy, padded by kernel - 1 - padding, with the filters
    flipped and their input and output channels swapped (W[f, c, kh - 1 - i, kw - 1 - j] as
    filter c, channel f), by the forward kernel. The caller (``conv.conv2d_grad``) has
    checked dy's shape.
    """
    from mlcvlab.nn.conv import _map_parts
    N, C, H, Wd = x.shape
    F, Ho, Wo = dy.shape[1], dy.shape[2], dy.shape[3]
    ph, pw = padding
    plane = (H + 2 * ph) * (Wd + pw)
    dx = np.empty(x.shape, dtype=dy.dtype) if input_grad else None
    kh, kw = W.shape[2], W.shape[3]
    weight_grad, forward = kernel("weight_grad"), kernel(f"forward{kw}")
    W_flip = np.ascontiguousarray(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (C, F, kh, kw)
    no_bias = np.zeros(C, dtype=dy.dtype)
    qh, qw = kh - 1 - ph, kw - 1 - pw
    dy_plane = (Ho + 2 * qh) * (Wo + qw)
    chunk = _chunk(C)

    def backward_part(part: slice) -> np.ndarray:
        dW = np.zeros((F, C, kh, kw))
        pad = kernels.scratch((max(C * plane, F * dy_plane) + 16,), x.dtype, slot="direct_pad")
        dyp = kernels.scratch((F * Ho * (Wd + pw),), dy.dtype, slot="direct_dy")
        weight_grad(x[part], dy[part], ph, pw, dW, pad, dyp)
        if dx is not None:
            acc = kernels.scratch((C, chunk + 8), dy.dtype, slot="direct_acc")
            forward(dy[part], W_flip, no_bias, False, qh, qw, dx[part], pad, acc, chunk)
        return dW

    shares = _map_parts(backward_part, parts)
    dW = sum(shares).astype(W.dtype)
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dW, db
