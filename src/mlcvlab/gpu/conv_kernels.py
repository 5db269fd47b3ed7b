"""numba CUDA kernels of the GPU convolution and pooling (:mod:`mlcvlab.gpu.conv`).

Imported only by :mod:`mlcvlab.gpu.conv`, on the device path. Images are NCHW, C-contiguous
float32; a convolution's column matrix ``cols`` is (C*kh*kw, N*Ho*Wo), row (c, i, j) and
column (n, ho, wo), the layout of :func:`mlcvlab.nn.conv.im2col_numpy`.

Every element-wise kernel gives one thread to each output element and walks the elements
with a grid-stride loop (``for t in range(start, size, step)``), so a launch of a bounded
number of blocks (:func:`launch`) covers any size. The backward kernels *gather*: one thread
per input pixel sums every contribution to it in a fixed order, so there are no atomics and
every run gives the same bits. The order is the one the CPU kernels of ``mlcvlab.nn.kernels``
add in, so col2im, max pooling's and average pooling's backward add the same float32 values
in the same order as the CPU path.

Row sums (a conv's bias gradient over N*Ho*Wo values per channel, global average pooling
over H*W values per (n, c)) take one block per row: each thread sums a strided share of the
row, then a shared-memory tree adds the THREADS partial sums. A row of a conv's dy is long
(N*Ho*Wo: 131,072 values for ResNet-20's first layers at batch 128) and there are few rows
(F: 16-64), so one thread per row would leave the GPU idle; the fixed tree keeps the sum
deterministic.

float32 only, as the rules in the docstring of :mod:`mlcvlab.parallel.cuda_kernels` say:
constants are ``float32(...)``, counts are cast with ``float32(...)``, scalars arrive as
``np.float32``, integer index arithmetic uses ``//`` and ``%`` (never ``/``), and there is no
builtin ``max``/``min``. ``tests/parallel/test_ptx.py`` compiles each kernel to sm_90 PTX and
fails on a float64 instruction.
"""
from __future__ import annotations

from numba import config, cuda, float32

from mlcvlab.gpu.basis_kernels import block_sum

# The simulator runs every thread as a Python thread: small blocks and few of them keep it
# fast, and make the tests' tiny shapes still go round the grid-stride loops several times.
_SIM = bool(config.ENABLE_CUDASIM)
THREADS = 8 if _SIM else 256         # threads per block (a power of two: the row-sum tree)
MAX_BLOCKS = 4 if _SIM else 4096     # blocks per launch; the grid-stride loops do the rest

_0 = float32(0.0)


def launch(n: int):
    """(blocks, threads) of a grid-stride launch over n items."""
    blocks = (n + THREADS - 1) // THREADS
    return (MAX_BLOCKS if blocks > MAX_BLOCKS else (blocks if blocks > 0 else 1), THREADS)


# ------------------------------------------------------------------ convolution
@cuda.jit(device=True)
def nchw_index(t, C, H, W):
    """(n, c, h, w) of flat position t in a C-contiguous (N, C, H, W) array: the one-thread-
    per-element kernels' index."""
    return t // (W * H * C), (t // (W * H)) % C, (t // W) % H, t % W


@cuda.jit
def im2col_kernel(X, cols, kh, kw, sh, sw, pt, pl, Ho, Wo):
    """cols (C*kh*kw, N*Ho*Wo) = the zero-padded receptive fields of X (N, C, H, W): element
    [(c*kh + i)*kw + j, (n*Ho + ho)*Wo + wo] = X[n, c, ho*sh - pt + i, wo*sw - pl + j], 0 in
    the padding (pt rows on top, pl columns on the left; the bottom and right padding only
    decide Ho and Wo). One thread per element of cols; consecutive threads take consecutive
    columns, so their stores are coalesced."""
    N, C, H, W = X.shape
    M = N * Ho * Wo
    size = cols.shape[0] * M
    for t in range(cuda.grid(1), size, cuda.gridsize(1)):
        k = t // M
        m = t - k * M
        c = k // (kh * kw)
        i = (k // kw) % kh
        j = k % kw
        n = m // (Ho * Wo)
        ho = (m // Wo) % Ho
        wo = m % Wo
        h = ho * sh - pt + i
        w = wo * sw - pl + j
        if h >= 0 and h < H and w >= 0 and w < W:
            cols[k, m] = X[n, c, h, w]
        else:
            cols[k, m] = _0


@cuda.jit
def col2im_kernel(dcols, kh, kw, sh, sw, pt, pl, Ho, Wo, dX):
    """The adjoint of :func:`im2col_kernel`, by gathering: dX[n, c, h, w] (N, C, H, W) = the
    sum of the elements of dcols (C*kh*kw, N*Ho*Wo) that im2col copied from (n, c, h, w),
    over the kernel offsets (i, j) in row-major order (the order of the CPU's col2im). One
    thread per input pixel; no atomics."""
    N, C, H, W = dX.shape
    size = N * C * H * W
    for t in range(cuda.grid(1), size, cuda.gridsize(1)):
        n, c, h, w = nchw_index(t, C, H, W)
        acc = _0
        for i in range(kh):
            hp = h + pt - i                       # = ho*sh for the output row that reads it
            if hp < 0 or hp % sh != 0:
                continue
            ho = hp // sh
            if ho >= Ho:
                continue
            for j in range(kw):
                wp = w + pl - j
                if wp < 0 or wp % sw != 0:
                    continue
                wo = wp // sw
                if wo >= Wo:
                    continue
                acc += dcols[(c * kh + i) * kw + j, (n * Ho + ho) * Wo + wo]
        dX[n, c, h, w] = acc


@cuda.jit
def cols_to_nchw_kernel(Yt, Y):
    """Y (N, F, Ho, Wo) = Yt (F, N*Ho*Wo) with the channel and batch axes swapped: the GEMM's
    output in NCHW."""
    N, F, Ho, Wo = Y.shape
    L = Ho * Wo
    size = N * F * L
    for t in range(cuda.grid(1), size, cuda.gridsize(1)):
        l = t % L                                 # noqa: E741 - the pixel index ho*Wo + wo
        f = (t // L) % F
        n = t // (L * F)
        Y[n, f, l // Wo, l % Wo] = Yt[f, n * L + l]


@cuda.jit
def cols_to_nchw_bias_kernel(Yt, b, Y):
    """As :func:`cols_to_nchw_kernel`, plus the bias b (F,) of each output channel: the
    convolution's bias add, fused with the layout change (one pass over y instead of two)."""
    N, F, Ho, Wo = Y.shape
    L = Ho * Wo
    size = N * F * L
    for t in range(cuda.grid(1), size, cuda.gridsize(1)):
        l = t % L                                 # noqa: E741 - the pixel index ho*Wo + wo
        f = (t // L) % F
        n = t // (L * F)
        Y[n, f, l // Wo, l % Wo] = Yt[f, n * L + l] + b[f]


@cuda.jit
def nchw_to_cols_kernel(dY, dYt):
    """dYt (F, N*Ho*Wo) = dY (N, F, Ho, Wo) with the batch and channel axes swapped: the
    upstream gradient in the layout of the backward's GEMMs."""
    N, F, Ho, Wo = dY.shape
    L = Ho * Wo
    size = N * F * L
    for t in range(cuda.grid(1), size, cuda.gridsize(1)):
        m = t % (N * L)                           # consecutive threads: consecutive stores
        f = t // (N * L)
        n = m // L
        l = m % L                                 # noqa: E741 - the pixel index ho*Wo + wo
        dYt[f, m] = dY[n, f, l // Wo, l % Wo]


@cuda.jit
def row_sums_kernel(A, divisor, out):
    """out (R,) = the sum of each row of A (R, L), divided by float32(divisor): a conv's bias
    gradient (divisor 1) or global average pooling (divisor H*W, as ``x.mean``). One block
    per row (grid-stride over the rows): each thread sums the row's elements t, t + THREADS,
    ..., then a shared-memory tree adds the partial sums; fixed order, deterministic."""
    part = cuda.shared.array(THREADS, dtype=float32)
    tid = cuda.threadIdx.x
    R, L = A.shape
    for r in range(cuda.blockIdx.x, R, cuda.gridDim.x):
        acc = _0
        for j in range(tid, L, THREADS):
            acc += A[r, j]
        total = block_sum(part, tid, acc)         # ends with a barrier: part is free again
        if tid == 0:
            out[r] = total / float32(divisor)


@cuda.jit
def spread_kernel(dy, divisor, dX):
    """dX (R, L) = dy (R,) / float32(divisor) in every column: the backward of global
    average pooling (R = N*C planes of L = H*W pixels, divisor H*W)."""
    R, L = dX.shape
    for t in range(cuda.grid(1), R * L, cuda.gridsize(1)):
        r = t // L
        dX[r, t - r * L] = dy[r] / float32(divisor)


# ------------------------------------------------------------------ pooling
@cuda.jit
def maxpool_kernel(X, kh, kw, sh, sw, ph, pw, Y, argmax):
    """Y (N, C, Ho, Wo) = the maximum of each window of X (N, C, H, W), argmax its position
    i*kw + j in the window. Only the pixels inside the image compete (padding is -inf, so
    never wins); the first pixel inside enters, a larger one replaces it (ties keep the
    first, row-major), and the first nan wins and stays: the rule of the CPU's maxpool
    kernel with ``nan_aware`` (a window of -inf only keeps its first pixel inside)."""
    N, C, H, W = X.shape
    Ho, Wo = Y.shape[2], Y.shape[3]
    size = N * C * Ho * Wo
    for t in range(cuda.grid(1), size, cuda.gridsize(1)):
        n, c, ho, wo = nchw_index(t, C, Ho, Wo)
        h0 = ho * sh - ph
        w0 = wo * sw - pw
        i_lo = -h0 if h0 < 0 else 0               # the window's rows / columns inside
        i_hi = H - h0 if H - h0 < kh else kh
        j_lo = -w0 if w0 < 0 else 0
        j_hi = W - w0 if W - w0 < kw else kw
        best = X[n, c, h0 + i_lo, w0 + j_lo]
        arg = i_lo * kw + j_lo
        for i in range(i_lo, i_hi):
            for j in range(j_lo, j_hi):
                v = X[n, c, h0 + i, w0 + j]
                if v > best or (v != v and best == best):
                    best = v
                    arg = i * kw + j
        Y[n, c, ho, wo] = best
        argmax[n, c, ho, wo] = arg


@cuda.jit
def maxpool_grad_kernel(dY, argmax, kh, kw, sh, sw, ph, pw, dX):
    """dX (N, C, H, W) = the sum of dY (N, C, Ho, Wo) over the windows whose maximum (argmax)
    is this pixel, by gathering: one thread per input pixel visits the windows that contain
    it, (ho, wo) in row-major order (the CPU kernel's order of adding). Overlapping windows
    (3x3, stride 2) are fine; no atomics."""
    N, C, H, W = dX.shape
    Ho, Wo = dY.shape[2], dY.shape[3]
    size = N * C * H * W
    for t in range(cuda.grid(1), size, cuda.gridsize(1)):
        n, c, h, w = nchw_index(t, C, H, W)
        hp = h + ph                               # the pixel's row in the padded image
        wp = w + pw
        # windows ho with ho*sh <= hp < ho*sh + kh, inside [0, Ho); likewise wo
        ho_lo = (hp - kh + sh) // sh if hp >= kh else 0
        ho_hi = hp // sh + 1 if hp // sh + 1 < Ho else Ho
        wo_lo = (wp - kw + sw) // sw if wp >= kw else 0
        wo_hi = wp // sw + 1 if wp // sw + 1 < Wo else Wo
        acc = _0
        for ho in range(ho_lo, ho_hi):
            for wo in range(wo_lo, wo_hi):
                if argmax[n, c, ho, wo] == (hp - ho * sh) * kw + (wp - wo * sw):
                    acc += dY[n, c, ho, wo]
        dX[n, c, h, w] = acc


@cuda.jit
def avgpool_kernel(X, kh, kw, sh, sw, ph, pw, scale, Y):
    """Y (N, C, Ho, Wo) = scale * (the sum of each window of X (N, C, H, W)), the padding
    counting as zeros; scale = float32(1 / (kh*kw)). The window is summed row-major and then
    scaled once, as the CPU path does (the same float32 operations)."""
    N, C, H, W = X.shape
    Ho, Wo = Y.shape[2], Y.shape[3]
    size = N * C * Ho * Wo
    for t in range(cuda.grid(1), size, cuda.gridsize(1)):
        n, c, ho, wo = nchw_index(t, C, Ho, Wo)
        acc = _0
        for i in range(kh):
            h = ho * sh - ph + i
            if h < 0 or h >= H:
                continue
            for j in range(kw):
                w = wo * sw - pw + j
                if w >= 0 and w < W:
                    acc += X[n, c, h, w]
        Y[n, c, ho, wo] = acc * scale


@cuda.jit
def avgpool_grad_kernel(dY, kh, kw, sh, sw, ph, pw, scale, dX):
    """dX (N, C, H, W) = the sum of scale * dY (N, C, Ho, Wo) over the windows that contain
    the pixel, by gathering (one thread per input pixel; kernel offsets (i, j) in row-major
    order, the CPU path's order of adding)."""
    N, C, H, W = dX.shape
    Ho, Wo = dY.shape[2], dY.shape[3]
    size = N * C * H * W
    for t in range(cuda.grid(1), size, cuda.gridsize(1)):
        n, c, h, w = nchw_index(t, C, H, W)
        acc = _0
        for i in range(kh):
            hp = h + ph - i
            if hp < 0 or hp % sh != 0 or hp // sh >= Ho:
                continue
            for j in range(kw):
                wp = w + pw - j
                if wp < 0 or wp % sw != 0 or wp // sw >= Wo:
                    continue
                acc += dY[n, c, hp // sh, wp // sw] * scale
        dX[n, c, h, w] = acc
