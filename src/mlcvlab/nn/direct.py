"""Direct 3x3 and 5x5 stride-1 convolution (and 3x3 stride 2), forward and backward.

im2col turns a 3x3 convolution into one GEMM by copying every input value nine times
(the column matrix; 25 times for 5x5); with 16 output channels, as in ResNet-20's first
stage, that GEMM has only 16 rows and a reduction of 144, so writing and reading back the
nine-fold copy costs about as much as the arithmetic, and neither core runs near its peak
(LeNet-5's first layer, 6 filters over 1 channel, is worse off still). Here the convolution
runs straight from the (zero-padded) input, with no copy beyond the padding.

Layout (the row-padded layout of ``conv.row_padded_geometry``): each channel plane of one
sample is stored flat, each row as ``pw`` zeros followed by the W pixels (``pitch = W + pw``
values), with ``ph`` zero rows above and below. Output (ho, wo) then reads the input at flat
position ``(ho + i) * pitch + wo + j`` for kernel offset (i, j), so a run of consecutive
outputs of one row reads a run of consecutive inputs for every (c, i, j).

The forward kernel works on register tiles (``nn/simd.py``): 4 output channels x 2 vectors
of consecutive outputs (T = 2 * lanes: 32 float32 outputs with AVX-512's 64-byte vectors, 16
with AVX2's 32), eight vector accumulators that stay in registers while the loop runs over
every input channel c and kernel tap (i, j), each step two input loads, four weight
broadcasts and eight fused multiply-adds; then the tile is stored once. (Written with NumPy
arrays instead, numba kept the accumulators in memory and reloaded and stored them on every
(c, i): 1.3-1.9x slower, BENCHMARKS.md, session 15.) The filters are packed
(:func:`pack_filters`) so that the four weights of one tap are adjacent; F is rounded up to a
multiple of 4 with zero filters whose outputs are not stored.

Where the tiles lie: rows at least T outputs long get tiles along each row, and a whole tile
is stored straight into y. Shorter rows (16x16 and 8x8 maps with AVX-512) would leave most of
a row tile empty, so there the tiles run over the outputs in the pitched order ho * pitch +
wo, T consecutive positions each, across row ends (the positions wo >= Wo, the pad columns,
are computed and dropped: 1 of 9 on an 8x8 map instead of 3 of 4); such tiles, and a row's
last partial tile, go through a buffer (``out``, :func:`pitched_outputs`) whose kept columns
are copied into y while still in cache. Either way a tile reads past its outputs (zeros, the
next row or channel, or at the end :func:`pad_slack` spare values): outputs that are dropped.
(Session 16: pitched tiles made ResNet-20's 8x8 and 16x16 layers 1.5-2.6x faster than row
tiles, and the row tiles kept the 32x32 layers 6-17 % ahead of pitched ones.)

Each sample is copied into a per-thread padded buffer (``C * plane`` values, zeroed once per
call) just before its outputs are computed, so the copy is read back from cache.

Stride 2 (3x3): the padded image is split into its four phase planes (row parity x column
parity, :func:`geometry`), so that a run of outputs along a row again reads a run of
consecutive values for each tap, and the same register tiles apply; the weight gradient
walks the same phase planes. The input gradient splits by phase too: each phase of dx is a
stride-1 convolution of dy with the taps of that parity (2x2, 2x1, 1x2 and 1x1 kernels, nine
taps in all), run by the forward kernel (:func:`_stride2_input_grad`). (Until session 16 the
stride-2 backward ran on im2col: 16->32 on 32x32 is 1.66x faster this way.)

The backward (:func:`conv2d_grad_direct`): dW from a second kernel that walks the same
layout, four (3x3) or two (5x5) output channels and their twelve or ten weight sums per pass
over a sample's outputs (sums in vector lanes, no stores in the loop); dx as the forward
kernel's convolution of dy with the flipped filters.

Where this is faster than im2col or Winograd is measured, not assumed: ``conv.direct_pays``
and BENCHMARKS.md, sessions 12, 15 and 16. With 32-byte vectors (AVX2): C * F / (C + F) at
most 16 forward, 11 backward, from 10x10 outputs; with many channels on both sides Winograd's
2.25x fewer multiplies win. With 64-byte vectors (AVX-512), where our BLAS may still run its
AVX2 kernels (OpenBLAS on a CPU it does not know), also every forward from 16x16 outputs,
every stride-2 forward and the backward from 16x16 outputs up to a pair of 24.

Precision: every output is a sum of C * kh * kw products in float32 (fused multiply-adds,
summed in the order c, i, j: the same bits as the session-14 kernel, which summed
in that order too), as im2col's GEMM sums them in another order: the rounding of a
direct convolution, measured against float64 in ``tests/nn/test_direct_conv.py`` (y and dx
up to ~2-4x im2col's error, as one chain of additions rounds more than the GEMM's blocks; dW
below it, the samples' sums being added in float64).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from mlcvlab.nn import kernels, simd

def pad_slack(dtype) -> int:
    """Spare values after the input buffer's planes: a tile's loads run past its own outputs
    by up to 2 * lanes + kw - 2 values (outputs that are dropped), 2 * lanes + 3 at most."""
    return 2 * simd.lanes(dtype) + 8


def pitched_outputs(Ho: int, pitch: int, dtype) -> int:
    """Values per output channel in the forward's tile buffer: Ho rows of ``pitch``, rounded
    up to whole tiles of T = 2 * lanes, and one tile more (a row's last tile, in tiles along
    the rows, reaches up to T - 1 values past the last row)."""
    T = 2 * simd.lanes(dtype)
    return (Ho * pitch + T - 1) // T * T + T


_kernel = None


def pack_filters(W: np.ndarray) -> np.ndarray:
    """W (F, C, kh, kw) -> (G, C, kh, kw, 4) with G = ceil(F / 4): filter 4g + q at [g, ..., q],
    zeros past F, so that the forward kernel reads the four weights of one tap together."""
    F, C, kh, kw = W.shape
    G = (F + 3) // 4
    packed = np.zeros((G, C, kh, kw, 4), dtype=W.dtype)
    for q in range(4):
        packed[:len(W[q::4]), ..., q] = W[q::4]
    return packed


def _padded_bias(b: Optional[np.ndarray], F: int, dtype) -> np.ndarray:
    out = np.zeros((F + 3) // 4 * 4, dtype=dtype)
    if b is not None:
        out[:F] = b
    return out


KERNEL_SIZES = ((3, 3), (5, 5))


def applies(kernel, stride, dilation, groups: int, pads, forward: bool = False) -> bool:
    """Whether the direct kernels compute this convolution: a 3x3 or 5x5 kernel, stride 1 (or,
    3x3, stride 2), dilation 1, one group, symmetric zero padding of at most kernel - 1 on each
    side (pads: top, bottom, left, right). Wider padding would make the output wider than a
    stored row, and the input gradient (a convolution of dy padded by kernel - 1 - padding)
    impossible. The same for the forward and the backward since session 16 (``forward`` is
    kept for the callers that name the direction)."""
    kh, kw = kernel
    strides = ((1, 1), (2, 2)) if tuple(kernel) == (3, 3) else ((1, 1),)
    return (tuple(kernel) in KERNEL_SIZES and tuple(stride) in strides
            and tuple(dilation) == (1, 1) and groups == 1 and pads[0] == pads[1]
            and pads[2] == pads[3] and pads[0] <= kh - 1 and pads[2] <= kw - 1)


def geometry(H: int, W: int, ph: int, pw: int, stride: int) -> Tuple[int, int, int]:
    """(pitch, phase, plane) of one channel of the forward kernel's input buffer.

    Stride 1: the row-padded layout (rows of ``pw`` zeros + W pixels, ``ph`` zero rows above
    and below): pitch W + pw, plane (H + 2 ph) * pitch (phase unused: 0). Stride 2: the
    zero-padded image split into its four phase planes (row parity x column parity), each
    ceil((H + 2 ph) / 2) rows of pitch ceil((W + 2 pw) / 2) values: then output (ho, wo)
    reads tap (i, j) from phase plane (i % 2, j % 2) at (ho + i // 2, wo + j // 2), and a run
    of outputs along a row reads a run of consecutive values again."""
    if stride == 1:
        pitch = W + pw
        return pitch, 0, (H + 2 * ph) * pitch
    pitch = (W + 2 * pw + 1) // 2
    phase = (H + 2 * ph + 1) // 2 * pitch
    return pitch, phase, 4 * phase


# The jitted pieces the kernels call: module globals, set once by _jit_helpers (numba
# caches a kernel across processes only when what it calls is a global; see winograd.py).
_copy_in = _copy_in_phases = None


def _jit_helpers() -> None:
    """Compile (or load) the pieces the kernels share."""
    global _copy_in, _copy_in_phases
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
    def _copy_in_phases(x, m, ph, pw, phase, plane, pitch, pad):  # pragma: no cover (jitted)
        # sample m's pixels into the four phase planes of the stride-2 layout (geometry)
        C, H, Wd = x.shape[1], x.shape[2], x.shape[3]
        for c in range(C):
            for h in range(H):
                r = h + ph
                row = c * plane + (r % 2) * 2 * phase + (r // 2) * pitch
                src = x[m, c, h]
                for w in range(Wd):
                    s = w + pw
                    pad[row + (s % 2) * phase + s // 2] = src[w]


def _compile():
    from numba import njit
    _jit_helpers()

    def make_forward(KW: int, STRIDE: int):
        # one kernel per kernel width KW and stride (constants to numba, so that LLVM unrolls
        # the taps: 1.4-1.7x over a loop of W.shape[3] taps, session 15); contract only:
        # multiply-adds are fused, the order of the sums is as written
        @njit(cache=True, nogil=True, fastmath={"contract"})
        def forward(x, Wp, b4, relu, ph, pw, geom, lanes, y, pad, out):  # pragma: no cover
            # y[m] = conv(x[m], W) + b (max(., 0) with relu) for every sample m of x, with Wp
            # the filters packed by pack_filters (G, C, kh, kw, 4), b4 the bias padded to 4 * G
            # values, geom = geometry(H, W, ph, pw, STRIDE), lanes = simd.lanes(x.dtype);
            # pad holds at least C * plane + pad_slack(x.dtype) values, out 4 * G * Lp with
            # Lp = pitched_outputs(Ho, pitch, x.dtype)
            n = simd.width(pad)
            if n != lanes:
                raise ValueError("direct: this kernel was compiled for another vector width "
                                 "(a stale numba cache): delete the __pycache__ folders of "
                                 "mlcvlab/nn")
            F, Ho, Wo = y.shape[1], y.shape[2], y.shape[3]
            G, kh = Wp.shape[0], Wp.shape[2]                 # Wp.shape[3] is KW
            pitch, phase, plane = geom
            C = x.shape[1]
            T = 2 * n                                   # outputs per tile
            Lp = (Ho * pitch + T - 1) // T * T + T      # pitched_outputs: one channel in out
            HW = Ho * Wo
            # rows at least a tile long: tiles along each row, whole ones stored straight
            # into y; shorter rows: tiles of T consecutive outputs in the pitched order
            # ho * pitch + wo (the columns wo >= Wo computed and dropped), through out
            rows = Wo >= T
            per_row = (Wo + T - 1) // T
            tiles = Ho * per_row if rows else (Ho * pitch + T - 1) // T
            wf = Wp.reshape(-1)
            yf = y.reshape(-1)
            pad[:] = 0
            for m in range(x.shape[0]):
                if STRIDE == 1:
                    _copy_in(x, m, ph, pw, plane, pitch, pad)
                else:
                    _copy_in_phases(x, m, ph, pw, phase, plane, pitch, pad)
                done = 0                                # rows copied into y (pitched)
                for t in range(tiles):
                    if rows:                            # tile t: row ho, columns wo..
                        ho, wo = t // per_row, (t % per_row) * T
                        p = ho * pitch + wo
                    else:
                        p = t * T
                    for g in range(G):
                        # the tile: 4 output channels x 2 vectors, in registers
                        a00 = simd.splat(b4[4 * g])
                        a01 = a00
                        a10 = simd.splat(b4[4 * g + 1])
                        a11 = a10
                        a20 = simd.splat(b4[4 * g + 2])
                        a21 = a20
                        a30 = simd.splat(b4[4 * g + 3])
                        a31 = a30
                        for c in range(C):
                            for i in range(kh):
                                base = c * plane + p
                                wb = ((g * C + c) * kh + i) * KW * 4
                                for j in range(KW):
                                    if STRIDE == 1:
                                        at = base + i * pitch + j
                                    else:
                                        at = (base + ((i % 2) * 2 + j % 2) * phase
                                              + (i // 2) * pitch + j // 2)
                                    a00, a01, a10, a11, a20, a21, a30, a31 = simd.fma_tile(
                                        simd.load(pad, at), simd.load(pad, at + n), wf,
                                        wb + 4 * j, a00, a01, a10, a11, a20, a21, a30, a31)
                        if relu:
                            a00, a01 = simd.relu(a00), simd.relu(a01)
                            a10, a11 = simd.relu(a10), simd.relu(a11)
                            a20, a21 = simd.relu(a20), simd.relu(a21)
                            a30, a31 = simd.relu(a30), simd.relu(a31)
                        f = 4 * g
                        whole = rows and wo + T <= Wo and f + 4 <= F
                        if whole:                       # straight into y
                            dst, at, step = yf, ((m * F + f) * Ho + ho) * Wo + wo, HW
                        else:                           # into out, copied below
                            dst, at, step = out, f * Lp + p, Lp
                        simd.store_tile(dst, at, step, a00, a01, a10, a11, a20, a21, a30, a31)
                        if rows and not whole:          # a row's last tile, or past F
                            for q in range(min(4, F - f)):
                                src = out[at + q * Lp:at + q * Lp + min(T, Wo - wo)]
                                dst = y[m, f + q, ho, wo:]
                                for k in range(len(src)):
                                    dst[k] = src[k]
                    if not rows:
                        # the rows this tile completed: their kept columns into y, while
                        # the tiles are still in cache
                        last = Ho if p + T >= Ho * pitch else (p + T) // pitch
                        for r in range(done, last):
                            for f in range(F):
                                src = out[f * Lp + r * pitch:f * Lp + r * pitch + Wo]
                                dst = y[m, f, r]
                                for k in range(Wo):
                                    dst[k] = src[k]
                        done = last
        return forward

    def make_weight_grad(STRIDE: int):
        # one kernel per stride: 1, or 2 for a 3x3 kernel on the phase planes of
        # geometry(..., 2) (tap (i, j) at phase plane (i % 2, j % 2), offset (i // 2,
        # j // 2)); reassoc as well: the sums over the outputs run in vector lanes (as a
        # GEMM's do)
        @njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
        def weight_grad(x, dy, ph, pw, geom, dW, pad, dyp):  # pragma: no cover (jitted)
            # dW[f, c, i, j] += sum over the samples m of x and the outputs (ho, wo) of
            # dy[m, f, ho, wo] * x_padded[m, c, ho + i, wo + j], each sample's sum in x's dtype
            # (vector lanes), the samples' sums added in dW's (float64). kw 3 or 5 (3 with
            # stride 2); geom = geometry(H, W, ph, pw, STRIDE), pad as for forward; dyp at
            # least F * Ho * pitch values
            C = x.shape[1]
            F, Ho, Wo = dy.shape[1], dy.shape[2], dy.shape[3]
            kh, kw = dW.shape[2], dW.shape[3]
            pitch, phase, plane = geom
            L = Ho * pitch
            zero = x.dtype.type(0)
            pad[:] = 0
            dyp[:] = 0                                  # the dropped columns stay 0: they add 0
            for m in range(x.shape[0]):
                if STRIDE == 1:
                    _copy_in(x, m, ph, pw, plane, pitch, pad)
                else:
                    _copy_in_phases(x, m, ph, pw, phase, plane, pitch, pad)
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
                            if STRIDE == 1:
                                at = c * plane + i * pitch
                                r = pad[at:at + L + kw - 1]
                                q = r                       # unused
                            else:                           # taps j = 0, 2 and j = 1
                                at = c * plane + (i % 2) * 2 * phase + (i // 2) * pitch
                                r = pad[at:at + L + 1]
                                q = pad[at + phase:at + phase + L]
                            if kw == 3:
                                s00 = s01 = s02 = s10 = s11 = s12 = zero
                                s20 = s21 = s22 = s30 = s31 = s32 = zero
                                for o in range(L):
                                    if STRIDE == 1:
                                        r0, r1, r2 = r[o], r[o + 1], r[o + 2]
                                    else:
                                        r0, r1, r2 = r[o], q[o], r[o + 1]
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
                                    r0, r1, r2 = r[o], r[o + 1], r[o + 2]
                                    r3, r4 = r[o + 3], r[o + 4]
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

        return weight_grad

    return {"forward3": make_forward(3, 1), "forward5": make_forward(5, 1),
            "forward3_stride2": make_forward(3, 2),
            # the stride-2 input gradient's four phase convolutions (conv2d_grad_direct)
            "forward1": make_forward(1, 1), "forward2": make_forward(2, 1),
            "weight_grad": make_weight_grad(1), "weight_grad_stride2": make_weight_grad(2)}


def kernel(name: str):
    """The compiled kernel "forward3", "forward5" (by kernel width), "forward3_stride2" or
    "weight_grad" (numba, on first use; cached on disk)."""
    global _kernel
    if _kernel is None:
        _kernel = _compile()
    return _kernel[name]


def conv2d_direct(x: np.ndarray, W: np.ndarray, b: Optional[np.ndarray],
                  padding: Tuple[int, int], parts, then_relu: bool = False,
                  stride: int = 1) -> np.ndarray:
    """y = conv2d(x, W, b, stride, padding) for W (F, C, kh, kw), relu(y) when
    ``then_relu``; stride 1, or 2 for a 3x3 W.

    The caller (``conv.conv2d``) has checked the arguments and that :func:`applies`;
    ``parts`` are the batch slices, one per thread (``conv._batch_parts``). Returns y
    (N, F, Ho, Wo).
    """
    from mlcvlab.nn.conv import _map_parts
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    ph, pw = padding
    Ho, Wo = (H + 2 * ph - kh) // stride + 1, (Wd + 2 * pw - kw) // stride + 1
    y = np.empty((N, F, Ho, Wo), dtype=x.dtype)
    packed, bias = pack_filters(W), _padded_bias(b, F, x.dtype)
    run = kernel(f"forward{kw}" + ("_stride2" if stride == 2 else ""))
    geom = geometry(H, Wd, ph, pw, stride)
    plane = geom[2]

    out_values = 4 * packed.shape[0] * pitched_outputs(Ho, geom[0], x.dtype)
    lanes = simd.lanes(x.dtype)

    def forward_part(part: slice) -> None:
        pad = kernels.scratch((C * plane + pad_slack(x.dtype),), x.dtype, slot="direct_pad")
        out = kernels.scratch((out_values,), x.dtype, slot="direct_out")
        run(x[part], packed, bias, then_relu, ph, pw, geom, lanes, y[part], pad, out)

    _map_parts(forward_part, parts)
    return y


def conv2d_grad_direct(dy: np.ndarray, x: np.ndarray, W: np.ndarray, padding: Tuple[int, int],
                       has_bias: bool, input_grad: bool, parts, stride: int = 1):
    """dy (N, F, Ho, Wo) -> dx (N, C, H, W) or None, dW (F, C, kh, kw), db (F,) or None, of
    :func:`conv2d_direct`'s convolution of x by W (stride 1, or 2 for a 3x3 W).

    dW: the ``weight_grad`` kernel, each sample's sums in vector lanes, the samples' in
    float64. dx, stride 1: the convolution of dy, padded by kernel - 1 - padding, with the
    filters flipped and their input and output channels swapped (W[f, c, kh - 1 - i, kw - 1 -
    j] as filter c, channel f), by the forward kernel; stride 2: :func:`_stride2_input_grad`.
    The caller (``conv.conv2d_grad``) has checked dy's shape.
    """
    from mlcvlab.nn.conv import _map_parts
    N, C, H, Wd = x.shape
    F, Ho, Wo = dy.shape[1], dy.shape[2], dy.shape[3]
    ph, pw = padding
    geom = geometry(H, Wd, ph, pw, stride)
    pitch, plane = geom[0], geom[2]
    dx = np.empty(x.shape, dtype=dy.dtype) if input_grad else None
    kh, kw = W.shape[2], W.shape[3]
    weight_grad = kernel("weight_grad" + ("_stride2" if stride == 2 else ""))
    if stride == 2:
        phases = _stride2_phases(W, dy.dtype)
        dy_plane = geometry(Ho, Wo, 1, 1, 1)[2]
        dx_out_values = max(4 * p.shape[0] * pitched_outputs(Ho + 1, Wo + 1, dy.dtype)
                            for _, _, p in phases)
    else:
        forward = kernel(f"forward{kw}")
        W_flip = pack_filters(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (C, F, kh, kw)
        no_bias = _padded_bias(None, C, dy.dtype)
        qh, qw = kh - 1 - ph, kw - 1 - pw
        dy_geom = geometry(Ho, Wo, qh, qw, 1)
        dy_plane = dy_geom[2]
        dx_out_values = 4 * W_flip.shape[0] * pitched_outputs(H, dy_geom[0], dy.dtype)

    def backward_part(part: slice) -> np.ndarray:
        dW = np.zeros((F, C, kh, kw))
        pad = kernels.scratch((max(C * plane, F * dy_plane) + pad_slack(x.dtype),), x.dtype,
                              slot="direct_pad")
        dyp = kernels.scratch((F * Ho * pitch,), dy.dtype, slot="direct_dy")
        weight_grad(x[part], dy[part], ph, pw, geom, dW, pad, dyp)
        if dx is not None:
            out = kernels.scratch((dx_out_values,), dy.dtype, slot="direct_out")
            if stride == 2:
                _stride2_input_grad(dy[part], phases, padding, dx[part], pad, out)
            else:
                forward(dy[part], W_flip, no_bias, False, qh, qw, dy_geom,
                        simd.lanes(dy.dtype), dx[part], pad, out)
        return dW

    shares = _map_parts(backward_part, parts)
    dW = sum(shares).astype(W.dtype)
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dW, db


# The input gradient of a 3x3 stride-2 convolution by phases. Input row r of the padded image
# meets output row u through kernel row i = r - 2u, so the even rows r = 2u get dy[u] W[0] +
# dy[u - 1] W[2] and the odd rows r = 2u + 1 get dy[u] W[1]: a stride-1 correlation of dy
# (padded by one row) with the 2-row kernel (W[2], W[0]), and one with the 1-row kernel W[1];
# the same along columns. So dx splits into four stride-1 convolutions of dy with 2x2, 2x1,
# 1x2 and 1x1 kernels (9 taps in all, no multiply by an inserted zero), one per phase of the
# padded input (row parity a, column parity b), computed by the forward kernel.
_PHASE_TAPS = {0: (2, 0), 1: (1,)}      # the kernel rows (or columns) of each parity, in order


def _stride2_phases(W: np.ndarray, dtype):
    """[(a, b, packed)] for the four phases: the filters (C, F, |rows|, |cols|) of phase (a, b)
    (channels swapped, taps of that parity), packed by :func:`pack_filters`."""
    out = []
    for a in (0, 1):
        for b in (0, 1):
            sub = W[:, :, list(_PHASE_TAPS[a])][:, :, :, list(_PHASE_TAPS[b])]
            out.append((a, b, pack_filters(np.ascontiguousarray(sub.transpose(1, 0, 2, 3),
                                                                dtype=dtype))))
    return out


def _stride2_input_grad(dy: np.ndarray, phases, padding: Tuple[int, int], dx: np.ndarray,
                        pad: np.ndarray, out: np.ndarray) -> None:
    """dx (n, C, H, W) of a 3x3 stride-2 convolution from dy (n, F, Ho, Wo): each phase's
    convolution of dy into a buffer, then into dx's rows and columns of that parity."""
    n, C, H, Wd = dx.shape
    Ho, Wo = dy.shape[2], dy.shape[3]
    ph, pw = padding
    lanes = simd.lanes(dy.dtype)
    no_bias = _padded_bias(None, C, dy.dtype)
    for a, b, packed in phases:
        qh, qw = packed.shape[2] - 1, packed.shape[3] - 1     # dy's padding: 1 for 2 taps
        geom = geometry(Ho, Wo, qh, qw, 1)
        y = kernels.scratch((n * C * (Ho + qh) * (Wo + qw),), dy.dtype, slot="direct_phase")
        y = y.reshape(n, C, Ho + qh, Wo + qw)
        kernel(f"forward{qw + 1}")(dy, packed, no_bias, False, qh, qw, geom, lanes, y, pad,
                                   out)
        # y[u, v] is padded input (2u + a, 2v + b); dx row r - ph for padded row r
        r0, s0 = ph + (a - ph) % 2, pw + (b - pw) % 2      # the first of parity a (b)
        rows, cols = len(range(r0 - ph, H, 2)), len(range(s0 - pw, Wd, 2))
        u0, v0 = (r0 - a) // 2, (s0 - b) // 2
        got_r, got_c = min(rows, y.shape[2] - u0), min(cols, y.shape[3] - v0)
        target = dx[:, :, r0 - ph::2, s0 - pw::2]
        target[:, :, :got_r, :got_c] = y[:, :, u0:u0 + got_r, v0:v0 + got_c]
        target[:, :, got_r:] = 0                            # rows no output reaches
        target[:, :, :, got_c:] = 0
