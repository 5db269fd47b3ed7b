"""Winograd convolution F(2x2, 3x3) for 3x3, stride-1 convolutions (Lavin & Gray 2015).

A 3x3 cross-correlation computes each 2x2 block of outputs ("tile") from a 4x4 block of the
zero-padded input; neighbouring tiles' input blocks overlap by two rows or columns. In the
Winograd form (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015,
Sec. 4) the tile of output channel f is

    Y = A^T [ sum_c (G g_fc G^T) * (B^T d_c B) ] A        (* element-wise, 4x4)

with d_c the 4x4 input block of channel c, g_fc the 3x3 filter and the constant matrices
B^T (4x4), G (4x3), A^T (2x4) below (all entries 0, +-1 or +-1/2: exact in floating point).
Collecting the 16 transform points xi = (a, b) of every tile p of the batch,

    U[xi] = (G g G^T)[xi]        (16, F, C)   filter transform
    V[xi] = (B^T d B)[xi]        (16, C, P)   input transform, P = N * tiles
    M[xi] = U[xi] @ V[xi]        (16, F, P)   16 GEMMs (one np.matmul over the stack)
    y     = A^T M A              per tile     output transform

so the GEMMs do 16 * F * C multiply-adds per 2x2 tile where im2col's GEMM does 9 * F * C
per pixel, 36 per tile: 2.25x fewer. The transforms are numba kernels (``_compile``). The
GEMMs run np.matmul, or with 64-byte vectors (AVX-512) our own register-tiled kernel
(:func:`points_matmul`, :func:`own_gemm`: OpenBLAS may run only its AVX2 kernels there).

The backward is the exact adjoint of these linear maps (not a separate Winograd convolution
with the rotated filter, which would need its own dy transform): with dM = A dY A^T per
tile (the transpose of the output transform),

    dU[xi] = dM[xi] @ V[xi]^T   -> dW = G^T dU G            (weight gradient)
    dV[xi] = U[xi]^T @ dM[xi]   -> dx = sum over tiles of B dV B^T   (input gradient)

so one transform of dy feeds both gradients, V is rebuilt from x (the cache keeps x, as
im2col's does), and the overlapping tiles' dx blocks are added into a padded buffer.
Both transforms work plane by plane through one zero-bordered (Hp, Wp) plane per thread,
small enough to stay in L1: the input is never copied padded as a whole.

Precision: the transforms add and subtract up to 16 inputs before the GEMM, so float32
results differ from the float64 convolution somewhat more than im2col's do (measured in
``tests/nn/test_winograd.py`` and the notes); in float64 the result equals the direct
convolution to ~1e-13.

Odd output sizes: the last row / column of tiles reads zeros past the padded input and its
outputs past Ho / Wo are dropped (dy is taken as zero there).

F(4x4, 3x3) (``m = 4``, Lavin & Gray Sec. 4.2) is the same scheme with 4x4 output tiles
computed from 6x6 input blocks (overlapping by two): 36 transform points, so the GEMMs do
36 * F * C multiply-adds per tile of 16 outputs where im2col does 144: 4x fewer (F(2x2, 3x3):
2.25x), and the transforms move 2.25 values per output and channel instead of 4. Its
matrices have entries up to 8 (A^T), 5 (B^T) and 1/24 (G), so the transforms amplify float32
rounding more: the filter transform runs in float64 (G is not exact in float32) and the
measured error is stated in ``tests/nn/test_winograd.py``. Every function below takes the
tile size ``m`` (2 or 4); the kernels of each are compiled apart.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numpy as np

from mlcvlab.nn import kernels

# Lavin & Gray (2015), Sec. 4.1, F(2x2, 3x3).
BT = np.array([[1, 0, -1, 0],
               [0, 1, 1, 0],
               [0, -1, 1, 0],
               [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0],
              [0.5, 0.5, 0.5],
              [0.5, -0.5, 0.5],
              [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0],
               [0, 1, -1, -1]], dtype=np.float64)

# Lavin & Gray (2015), Sec. 4.2, F(4x4, 3x3) (interpolation points 0, +-1, +-2 and infinity).
BT4 = np.array([[4, 0, -5, 0, 1, 0],
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1]], dtype=np.float64)
G4 = np.array([[1 / 4, 0, 0],
               [-1 / 6, -1 / 6, -1 / 6],
               [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6],
               [0, 0, 1]], dtype=np.float64)
AT4 = np.array([[1, 1, 1, 1, 1, 0],
                [0, 1, -1, 2, -2, 0],
                [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], dtype=np.float64)

# (B^T, G, A^T) of each output tile size m.
MATRICES = {2: (BT, G, AT), 4: (BT4, G4, AT4)}
TILE_SIZES = tuple(MATRICES)

# The transforms and GEMMs run over blocks of the batch whose V and M (16 points x channels x
# tiles each) fit in about this many bytes, so that the GEMMs read them from cache.
BLOCK_BYTES = 2**20

_KERNELS = {}


# The jitted helpers the kernels inline: module globals, set once by _jit_helpers. Not closure
# variables of _compile / _compile4: numba caches a kernel across processes only when what it
# calls is a global; with the helpers in the closure every process compiled the kernels again
# (2.2 s for F(2x2)'s, 5.6-6.3 s for F(4x4)'s, measured at their first call) and added a file
# to __pycache__ each time.
_out = _b_col = _bt_col = _bt6 = _at6 = _a6 = _b6 = None
_bt6_row = _at6_point_row = _b6_point_row = _a6_dy_row = None
_plane_in = _plane_out = None


def _jit_helpers() -> None:
    """Compile (or load) the helpers: the output store ``_out`` (v, then max(., 0) when relu,
    as ``kernels.relu_forward``: nan stays nan), F(2x2)'s ``_b_col`` (B u for a column u) and
    ``_bt_col`` (B^T d for a column of a 4x4 window),
    F(4x4)'s 1-D transforms and their row / column readers, and the plane copies
    ``_plane_in`` / ``_plane_out`` (an image plane into / out of the interior of the
    zero-padded plane the tiles read / the adjoint adds onto)."""
    global _out, _b_col, _bt_col, _bt6, _at6, _a6, _b6, \
        _bt6_row, _at6_point_row, _b6_point_row, _a6_dy_row, _plane_in, _plane_out
    if _out is not None:
        return
    from numba import njit

    @njit(cache=True, nogil=True, inline="always")
    def _plane_in(x, m, c, ph, pw, img):  # pragma: no cover (jitted)
        # img[ph + h, pw + w] = x[m, c, h, w]; img's border stays as it is (zero)
        H, W = x.shape[2], x.shape[3]
        for h in range(H):
            src, dst = x[m, c, h], img[ph + h, pw:pw + W]
            for w in range(W):
                dst[w] = src[w]

    @njit(cache=True, nogil=True, inline="always")
    def _plane_out(img, ph, pw, dx, m, c):  # pragma: no cover (jitted)
        # dx[m, c, h, w] = img[ph + h, pw + w]
        H, W = dx.shape[2], dx.shape[3]
        for h in range(H):
            src, dst = img[ph + h, pw:pw + W], dx[m, c, h]
            for w in range(W):
                dst[w] = src[w]

    @njit(cache=True, nogil=True, inline="always")
    def _out(v, relu, zero):  # pragma: no cover (jitted)
        return zero if relu and v < zero else v

    @njit(cache=True, nogil=True, inline="always")
    def _bt_col(img, r, s):  # pragma: no cover (jitted)
        # B^T d for column s of the 4x4 window at row r: (d0 - d2, d1 + d2, d2 - d1, d1 - d3)
        d0, d1, d2, d3 = img[r, s], img[r + 1, s], img[r + 2, s], img[r + 3, s]
        return d0 - d2, d1 + d2, d2 - d1, d1 - d3

    @njit(cache=True, nogil=True, inline="always")
    def _b_col(u0, u1, u2, u3):  # pragma: no cover (jitted)
        return u0, u1 - u2 + u3, u1 + u2 - u0, -u3

    @njit(cache=True, nogil=True, inline="always")
    def _bt6(d0, d1, d2, d3, d4, d5):  # pragma: no cover (jitted)
        # the rows of B^T with their common terms shared (19 operations, not 24)
        a, b, p, q, r, t = d4 - d2, d1 - d3, d3 + d4, d1 + d2, d4 - d3, d1 - d2
        b2 = b + b
        return (_FOUR * (d0 - d2) + a, p - _FOUR * q, r + _FOUR * t, a - b2, a + b2,
                _FOUR * b + (d5 - d3))

    @njit(cache=True, nogil=True, inline="always")
    def _at6(m0, m1, m2, m3, m4, m5):  # pragma: no cover (jitted)
        a, b, c, e = m1 + m2, m1 - m2, m3 + m4, m3 - m4
        return m0 + a + c, b + _TWO * e, a + _FOUR * c, b + _EIGHT * e + m5

    @njit(cache=True, nogil=True, inline="always")
    def _a6(e0, e1, e2, e3):  # pragma: no cover (jitted)
        a, b, c, d = e0 + e2, e1 + e3, e0 + _FOUR * e2, _TWO * e1 + _EIGHT * e3
        return e0, a + b, a - b, c + d, c - d, e3

    @njit(cache=True, nogil=True, inline="always")
    def _b6(v0, v1, v2, v3, v4, v5):  # pragma: no cover (jitted)
        # the columns of B^T with their common terms shared
        t, u, q, r = v3 - v4, v2 - v1, v1 + v2, v3 + v4
        t2 = t + t
        return (_FOUR * v0, _FOUR * (u + v5) - t2, -_FIVE * v0 - _FOUR * q - r,
                t2 - u - _FIVE * v5, v0 + q + r, v5)

    @njit(cache=True, nogil=True, inline="always")
    def _bt6_row(img, r, s):  # pragma: no cover (jitted)
        return _bt6(img[r, s], img[r, s + 1], img[r, s + 2], img[r, s + 3], img[r, s + 4],
                   img[r, s + 5])

    @njit(cache=True, nogil=True, inline="always")
    def _at6_point_row(M, k, f, p):  # pragma: no cover (jitted)
        q = 6 * k
        return _at6(M[q, f, p], M[q + 1, f, p], M[q + 2, f, p], M[q + 3, f, p], M[q + 4, f, p],
                   M[q + 5, f, p])

    @njit(cache=True, nogil=True, inline="always")
    def _b6_point_row(dV, k, c, p):  # pragma: no cover (jitted)
        q = 6 * k
        return _b6(dV[q, c, p], dV[q + 1, c, p], dV[q + 2, c, p], dV[q + 3, c, p],
                  dV[q + 4, c, p], dV[q + 5, c, p])

    @njit(cache=True, nogil=True, inline="always")
    def _a6_dy_row(g, r, s, Ho, Wo, zero):  # pragma: no cover (jitted)
        # A e of dy's row r, columns s .. s + 3, zero past Ho / Wo
        if r >= Ho:
            return _a6(zero, zero, zero, zero)
        if s + 3 < Wo:
            return _a6(g[r, s], g[r, s + 1], g[r, s + 2], g[r, s + 3])
        return _a6(g[r, s], g[r, s + 1] if s + 1 < Wo else zero,
                  g[r, s + 2] if s + 2 < Wo else zero, zero)


def _compile() -> dict:
    """The four tile transforms of F(2x2, 3x3) as numba kernels, unrolled (no per-tile
    temporaries)."""
    from numba import njit
    _jit_helpers()

    @njit(cache=True, nogil=True)
    def input_transform(x, ph, pw, th, tw, img, V):  # pragma: no cover (jitted)
        # x (n, C, H, W) -> V (16, C, n*th*tw): B^T d B per tile of the plane zero-padded by
        # (ph, pw), which each plane is copied into: img (2*th + 2, 2*tw + 2), in cache
        n, C = x.shape[0], x.shape[1]
        img[...] = 0
        for m in range(n):
            for c in range(C):
                _plane_in(x, m, c, ph, pw, img)
                for ty in range(th):
                    r = 2 * ty
                    base = (m * th + ty) * tw
                    # T = B^T d column by column; a tile's columns s + 2, s + 3 are the next
                    # tile's s, s + 1, so each column of T is computed once, not twice
                    e0, e1, e2, e3 = _bt_col(img, r, 0)
                    f0, f1, f2, f3 = _bt_col(img, r, 1)
                    for tx in range(tw):
                        s = 2 * tx
                        p = base + tx
                        g0, g1, g2, g3 = _bt_col(img, r, s + 2)
                        h0, h1, h2, h3 = _bt_col(img, r, s + 3)
                        # V = T B, row by row of T (columns e, f, g, h = s .. s + 3)
                        V[0, c, p] = e0 - g0
                        V[1, c, p] = f0 + g0
                        V[2, c, p] = g0 - f0
                        V[3, c, p] = f0 - h0
                        V[4, c, p] = e1 - g1
                        V[5, c, p] = f1 + g1
                        V[6, c, p] = g1 - f1
                        V[7, c, p] = f1 - h1
                        V[8, c, p] = e2 - g2
                        V[9, c, p] = f2 + g2
                        V[10, c, p] = g2 - f2
                        V[11, c, p] = f2 - h2
                        V[12, c, p] = e3 - g3
                        V[13, c, p] = f3 + g3
                        V[14, c, p] = g3 - f3
                        V[15, c, p] = f3 - h3
                        e0, e1, e2, e3 = g0, g1, g2, g3
                        f0, f1, f2, f3 = h0, h1, h2, h3

    @njit(cache=True, nogil=True)
    def output_transform(M, th, tw, b, relu, y):  # pragma: no cover (jitted)
        # M (16, F, n*th*tw) -> y (n, F, Ho, Wo): A^T m A per tile, + b[f] (b zeros for no
        # bias: adding 0 is exact), then max(., 0) when relu; drops the outputs
        # of the last tile row / column that fall past Ho / Wo
        n, F, Ho, Wo = y.shape
        zero = y.dtype.type(0)
        for m in range(n):
            for f in range(F):
                bias = b[f]
                out = y[m, f]
                for ty in range(th):
                    r = 2 * ty
                    base = (m * th + ty) * tw
                    for tx in range(tw):
                        p = base + tx
                        s = 2 * tx
                        # S = A^T m (2x4)
                        s00 = M[0, f, p] + M[4, f, p] + M[8, f, p]
                        s01 = M[1, f, p] + M[5, f, p] + M[9, f, p]
                        s02 = M[2, f, p] + M[6, f, p] + M[10, f, p]
                        s03 = M[3, f, p] + M[7, f, p] + M[11, f, p]
                        s10 = M[4, f, p] - M[8, f, p] - M[12, f, p]
                        s11 = M[5, f, p] - M[9, f, p] - M[13, f, p]
                        s12 = M[6, f, p] - M[10, f, p] - M[14, f, p]
                        s13 = M[7, f, p] - M[11, f, p] - M[15, f, p]
                        out[r, s] = _out(s00 + s01 + s02 + bias, relu, zero)
                        if s + 1 < Wo:
                            out[r, s + 1] = _out(s01 - s02 - s03 + bias, relu, zero)
                        if r + 1 < Ho:
                            out[r + 1, s] = _out(s10 + s11 + s12 + bias, relu, zero)
                            if s + 1 < Wo:
                                out[r + 1, s + 1] = _out(s11 - s12 - s13 + bias, relu, zero)

    @njit(cache=True, nogil=True)
    def dy_transform(dy, th, tw, zero, dM):  # pragma: no cover (jitted)
        # dy (n, F, Ho, Wo) -> dM (16, F, n*th*tw): A e A^T per 2x2 tile e (zero past Ho, Wo;
        # ``zero`` is 0 in dy's dtype, so that float32 stays float32)
        n, F, Ho, Wo = dy.shape
        for m in range(n):
            for f in range(F):
                g = dy[m, f]
                for ty in range(th):
                    r = 2 * ty
                    base = (m * th + ty) * tw
                    for tx in range(tw):
                        p = base + tx
                        s = 2 * tx
                        e00 = g[r, s]
                        e01 = g[r, s + 1] if s + 1 < Wo else zero
                        e10 = g[r + 1, s] if r + 1 < Ho else zero
                        e11 = g[r + 1, s + 1] if (r + 1 < Ho and s + 1 < Wo) else zero
                        # R = A e (4x2): rows e0, e0 + e1, e0 - e1, -e1
                        r00, r01 = e00, e01
                        r10, r11 = e00 + e10, e01 + e11
                        r20, r21 = e00 - e10, e01 - e11
                        r30, r31 = -e10, -e11
                        # dM = R A^T: columns R0, R0 + R1, R0 - R1, -R1
                        dM[0, f, p] = r00
                        dM[1, f, p] = r00 + r01
                        dM[2, f, p] = r00 - r01
                        dM[3, f, p] = -r01
                        dM[4, f, p] = r10
                        dM[5, f, p] = r10 + r11
                        dM[6, f, p] = r10 - r11
                        dM[7, f, p] = -r11
                        dM[8, f, p] = r20
                        dM[9, f, p] = r20 + r21
                        dM[10, f, p] = r20 - r21
                        dM[11, f, p] = -r21
                        dM[12, f, p] = r30
                        dM[13, f, p] = r30 + r31
                        dM[14, f, p] = r30 - r31
                        dM[15, f, p] = -r31

    @njit(cache=True, nogil=True)
    def input_transform_adjoint(dV, th, tw, ph, pw, img, dx):  # pragma: no cover (jitted)
        # dV (16, C, n*th*tw) -> dx (n, C, H, W): per plane, adds B v B^T of every tile onto
        # its (overlapping) 4x4 block of img (2*th + 2, 2*tw + 2, zeroed first), the plane
        # padded by (ph, pw), whose interior is dx's plane. (B u) = (u0, u1 - u2 + u3,
        # u1 + u2 - u0, -u3) for a column u, the same along rows for B^T.
        n, C = dx.shape[0], dx.shape[1]
        for m in range(n):
            for c in range(C):
                img[...] = 0
                for ty in range(th):
                    r = 2 * ty
                    base = (m * th + ty) * tw
                    for tx in range(tw):
                        p = base + tx
                        s = 2 * tx
                        # Z = B v, column by column (v row a = points 4a .. 4a + 3)
                        z00, z10, z20, z30 = _b_col(dV[0, c, p], dV[4, c, p], dV[8, c, p],
                                                    dV[12, c, p])
                        z01, z11, z21, z31 = _b_col(dV[1, c, p], dV[5, c, p], dV[9, c, p],
                                                    dV[13, c, p])
                        z02, z12, z22, z32 = _b_col(dV[2, c, p], dV[6, c, p], dV[10, c, p],
                                                    dV[14, c, p])
                        z03, z13, z23, z33 = _b_col(dV[3, c, p], dV[7, c, p], dV[11, c, p],
                                                    dV[15, c, p])
                        # dd = Z B^T, row by row
                        img[r, s] += z00
                        img[r, s + 1] += z01 - z02 + z03
                        img[r, s + 2] += z01 + z02 - z00
                        img[r, s + 3] -= z03
                        img[r + 1, s] += z10
                        img[r + 1, s + 1] += z11 - z12 + z13
                        img[r + 1, s + 2] += z11 + z12 - z10
                        img[r + 1, s + 3] -= z13
                        img[r + 2, s] += z20
                        img[r + 2, s + 1] += z21 - z22 + z23
                        img[r + 2, s + 2] += z21 + z22 - z20
                        img[r + 2, s + 3] -= z23
                        img[r + 3, s] += z30
                        img[r + 3, s + 1] += z31 - z32 + z33
                        img[r + 3, s + 2] += z31 + z32 - z30
                        img[r + 3, s + 3] -= z33
                _plane_out(img, ph, pw, dx, m, c)

    return {"input_transform": input_transform, "output_transform": output_transform,
            "dy_transform": dy_transform, "input_transform_adjoint": input_transform_adjoint}


# The constants of the F(4x4, 3x3) kernels, as float32 so that float32 data stays float32 in
# numba's arithmetic (a Python int or float would promote it to float64); exact in float32.
_TWO, _FOUR, _FIVE, _EIGHT = (np.float32(v) for v in (2, 4, 5, 8))


def _compile4() -> dict:
    """The four tile transforms of F(4x4, 3x3) as numba kernels. Each applies a 1-D transform
    (``_bt6``: B^T d, ``_at6``: A^T m, ``_a6``: A e, ``_b6``: B v; inlined, common terms shared)
    to the rows of a tile, as tuples, then to the columns of the result. They are scalar code
    (LLVM does not vectorize loops with this many load and store streams through numba's
    arrays) and do ~2.2x F(2x2)'s operations per output value: BENCHMARKS.md, session 11."""
    from numba import njit
    _jit_helpers()

    @njit(cache=True, nogil=True)
    def input_transform(x, ph, pw, th, tw, img, V):  # pragma: no cover (jitted)
        # x (n, C, H, W) -> V (36, C, n*th*tw): B^T d B per tile of the plane zero-padded by
        # (ph, pw), which each plane is copied into: img (4*th + 2, 4*tw + 2); point
        # 6k + l = (row k, column l)
        n, C = x.shape[0], x.shape[1]
        img[...] = 0
        for m in range(n):
            for c in range(C):
                _plane_in(x, m, c, ph, pw, img)
                for ty in range(th):
                    r = 4 * ty
                    base = (m * th + ty) * tw
                    for tx in range(tw):
                        s = 4 * tx
                        p = base + tx
                        # d B, row by row (row i of the tile -> a_i), then B^T (d B) by column
                        a0, a1, a2 = _bt6_row(img, r, s), _bt6_row(img, r + 1, s), \
                            _bt6_row(img, r + 2, s)
                        a3, a4, a5 = _bt6_row(img, r + 3, s), _bt6_row(img, r + 4, s), \
                            _bt6_row(img, r + 5, s)
                        for j in range(6):
                            v0, v1, v2, v3, v4, v5 = _bt6(a0[j], a1[j], a2[j], a3[j], a4[j],
                                                         a5[j])
                            V[j, c, p] = v0
                            V[6 + j, c, p] = v1
                            V[12 + j, c, p] = v2
                            V[18 + j, c, p] = v3
                            V[24 + j, c, p] = v4
                            V[30 + j, c, p] = v5

    @njit(cache=True, nogil=True)
    def output_transform(M, th, tw, b, relu, y):  # pragma: no cover (jitted)
        # M (36, F, n*th*tw) -> y (n, F, Ho, Wo): A^T m A per tile, + b[f], then max(., 0)
        # when relu (nan stays nan); drops the outputs
        # of the last tile row / column that fall past Ho / Wo
        n, F, Ho, Wo = y.shape
        zero = y.dtype.type(0)
        for m in range(n):
            for f in range(F):
                bias = b[f]
                out = y[m, f]
                for ty in range(th):
                    r = 4 * ty
                    base = (m * th + ty) * tw
                    for tx in range(tw):
                        s = 4 * tx
                        p = base + tx
                        # m A, point row by point row, then A^T (m A) by column
                        a0, a1, a2 = _at6_point_row(M, 0, f, p), _at6_point_row(M, 1, f, p), \
                            _at6_point_row(M, 2, f, p)
                        a3, a4, a5 = _at6_point_row(M, 3, f, p), _at6_point_row(M, 4, f, p), \
                            _at6_point_row(M, 5, f, p)
                        full = r + 3 < Ho and s + 3 < Wo
                        for j in range(4):
                            y0, y1, y2, y3 = _at6(a0[j], a1[j], a2[j], a3[j], a4[j], a5[j])
                            if full:
                                out[r, s + j] = _out(y0 + bias, relu, zero)
                                out[r + 1, s + j] = _out(y1 + bias, relu, zero)
                                out[r + 2, s + j] = _out(y2 + bias, relu, zero)
                                out[r + 3, s + j] = _out(y3 + bias, relu, zero)
                            elif s + j < Wo:
                                out[r, s + j] = _out(y0 + bias, relu, zero)
                                if r + 1 < Ho:
                                    out[r + 1, s + j] = _out(y1 + bias, relu, zero)
                                if r + 2 < Ho:
                                    out[r + 2, s + j] = _out(y2 + bias, relu, zero)
                                if r + 3 < Ho:
                                    out[r + 3, s + j] = _out(y3 + bias, relu, zero)

    @njit(cache=True, nogil=True)
    def dy_transform(dy, th, tw, zero, dM):  # pragma: no cover (jitted)
        # dy (n, F, Ho, Wo) -> dM (36, F, n*th*tw): A e A^T per 4x4 tile e (zero past Ho, Wo)
        n, F, Ho, Wo = dy.shape
        for m in range(n):
            for f in range(F):
                g = dy[m, f]
                for ty in range(th):
                    r = 4 * ty
                    base = (m * th + ty) * tw
                    for tx in range(tw):
                        s = 4 * tx
                        p = base + tx
                        # e A^T, row by row, then A (e A^T) by column
                        e0, e1 = _a6_dy_row(g, r, s, Ho, Wo, zero), \
                            _a6_dy_row(g, r + 1, s, Ho, Wo, zero)
                        e2, e3 = _a6_dy_row(g, r + 2, s, Ho, Wo, zero), \
                            _a6_dy_row(g, r + 3, s, Ho, Wo, zero)
                        for j in range(6):
                            u0, u1, u2, u3, u4, u5 = _a6(e0[j], e1[j], e2[j], e3[j])
                            dM[j, f, p] = u0
                            dM[6 + j, f, p] = u1
                            dM[12 + j, f, p] = u2
                            dM[18 + j, f, p] = u3
                            dM[24 + j, f, p] = u4
                            dM[30 + j, f, p] = u5

    @njit(cache=True, nogil=True)
    def input_transform_adjoint(dV, th, tw, ph, pw, img, dx):  # pragma: no cover (jitted)
        # dV (36, C, n*th*tw) -> dx (n, C, H, W): per plane, adds B v B^T of every tile onto
        # its (overlapping) 6x6 block of img (4*th + 2, 4*tw + 2, zeroed first), the plane
        # padded by (ph, pw), whose interior is dx's plane
        n, C = dx.shape[0], dx.shape[1]
        for m in range(n):
            for c in range(C):
                img[...] = 0
                for ty in range(th):
                    r = 4 * ty
                    base = (m * th + ty) * tw
                    for tx in range(tw):
                        s = 4 * tx
                        p = base + tx
                        # v B^T, point row by point row, then B (v B^T) by column
                        z0, z1, z2 = _b6_point_row(dV, 0, c, p), _b6_point_row(dV, 1, c, p), \
                            _b6_point_row(dV, 2, c, p)
                        z3, z4, z5 = _b6_point_row(dV, 3, c, p), _b6_point_row(dV, 4, c, p), \
                            _b6_point_row(dV, 5, c, p)
                        for j in range(6):
                            w0, w1, w2, w3, w4, w5 = _b6(z0[j], z1[j], z2[j], z3[j], z4[j], z5[j])
                            img[r, s + j] += w0
                            img[r + 1, s + j] += w1
                            img[r + 2, s + j] += w2
                            img[r + 3, s + j] += w3
                            img[r + 4, s + j] += w4
                            img[r + 5, s + j] += w5
                _plane_out(img, ph, pw, dx, m, c)

    return {"input_transform": input_transform, "output_transform": output_transform,
            "dy_transform": dy_transform, "input_transform_adjoint": input_transform_adjoint}


def _kernel(name: str, m: int = 2):
    """The compiled transform ``name`` of F(m x m, 3x3)."""
    if m not in _KERNELS:
        _KERNELS[m] = _compile() if m == 2 else _compile4()
    return _KERNELS[m][name]


# --------------------------------------------------------------------------- the points' GEMMs
_point_gemm = None
POINTS_SLACK = 64           # values after a _points array: 2 * lanes <= 32 read past its end


def _point_gemm_kernel():
    """The compiled kernel of :func:`points_matmul` (numba, on first use; cached on disk)."""
    global _point_gemm
    if _point_gemm is not None:
        return _point_gemm
    from numba import njit

    from mlcvlab.nn import simd

    @njit(cache=True, nogil=True, fastmath={"contract"})
    def point_gemm(Ap, Bf, b_plane, b_row, Cf, c_plane, c_row, rows, P,
                   tmp):  # pragma: no cover (jitted)
        # C[xi, r, p] = sum_k A[xi, r, k] B[xi, k, p] for r < rows and p < P, with A packed
        # as (points, G, K, 4) (rows 4g..4g+3 of column k together), B and C flat with point
        # planes b_plane / c_plane and rows b_row / c_row values apart (B readable past its
        # last row by 2 * lanes); tiles of 4 rows x 2 vectors in registers, as the direct
        # convolution's (nn/direct.py)
        n = simd.width(Bf)
        T = 2 * n
        points, G, K = Ap.shape[0], Ap.shape[1], Ap.shape[2]
        af = Ap.reshape(-1)
        for xi in range(points):
            bb, cb = xi * b_plane, xi * c_plane
            for p in range(0, P, T):
                for g in range(G):
                    a00 = simd.splat(Bf.dtype.type(0))
                    a01 = a10 = a11 = a20 = a21 = a30 = a31 = a00
                    wb = (xi * G + g) * K * 4
                    for k in range(K):
                        at = bb + k * b_row + p
                        a00, a01, a10, a11, a20, a21, a30, a31 = simd.fma_tile(
                            simd.load(Bf, at), simd.load(Bf, at + n), af, wb + 4 * k,
                            a00, a01, a10, a11, a20, a21, a30, a31)
                    r = 4 * g
                    at = cb + r * c_row + p
                    if p + T <= P and r + 4 <= rows:
                        simd.store_tile(Cf, at, c_row, a00, a01, a10, a11, a20, a21, a30, a31)
                    else:                           # a row's last tile, or rows past the end
                        simd.store_tile(tmp, 0, T, a00, a01, a10, a11, a20, a21, a30, a31)
                        for q in range(min(4, rows - r)):
                            for t in range(min(T, P - p)):
                                Cf[at + q * c_row + t] = tmp[q * T + t]

    _point_gemm = point_gemm
    return point_gemm


def pack_rows(A: np.ndarray) -> np.ndarray:
    """A (points, R, K) -> (points, ceil(R / 4), K, 4): rows 4g + q at [:, g, :, q], zero rows
    past R; the left factor of :func:`points_matmul`."""
    points, R, K = A.shape
    G = (R + 3) // 4
    packed = np.zeros((points, G, K, 4), dtype=A.dtype)
    for q in range(4):
        packed[:, :len(range(q, R, 4)), :, q] = A[:, q::4, :]
    return packed


def own_gemm(rows: int, K: int) -> bool:
    """Whether the points' GEMMs of ``rows`` x ``K`` factors run :func:`points_matmul` rather
    than np.matmul: with 64-byte vectors (AVX-512, where NumPy's OpenBLAS may run its AVX2
    kernels) and at least 16 rows and columns. Measured (1 thread, float32, session 16):
    16 points of (64 x 64) @ (64 x 250) 1.73x np.matmul's speed, (32 x 32) @ (32 x 512) 1.35x,
    (16 x 16) @ (16 x 1024) 1.19x, 36 of (64 x 64) @ (64 x 100) 1.47x; compiled for AVX2 the
    same kernel ran at 0.62-0.98x of OpenBLAS's own AVX2 kernels, so there np.matmul stays."""
    from mlcvlab.nn import simd
    return simd.BYTES == 64 and min(rows, K) >= 16


def points_matmul(A_packed: np.ndarray, rows: int, B: np.ndarray, B_buf: np.ndarray,
                  out: np.ndarray, out_buf: np.ndarray) -> None:
    """out[xi] = A[xi] @ B[xi] for every transform point xi, A packed by :func:`pack_rows`
    (``rows`` rows), B (points, K, P) and out (points, rows, P) views of :func:`_points`
    arrays, whose flat buffers (from their first value, with a slack after the last) are
    ``B_buf`` and ``out_buf``. Where it runs instead of np.matmul: :func:`own_gemm`."""
    from mlcvlab.nn import simd
    it = B.itemsize
    tmp = kernels.scratch((8 * simd.lanes(B.dtype),), B.dtype, slot="wino_tile")
    _point_gemm_kernel()(A_packed, B_buf, B.strides[0] // it, B.strides[1] // it, out_buf,
                         out.strides[0] // it, out.strides[1] // it, rows, B.shape[2], tmp)


# --------------------------------------------------------------------------- filter transforms
def _g_for(dtype, m: int) -> np.ndarray:
    """F(m x m, 3x3)'s G in the dtype the filter transforms compute in: the data's for m = 2
    (entries 0, 1, 1/2: exact in float32), float64 for m = 4 (1/6 and 1/24 are not)."""
    return G.astype(dtype) if m == 2 else G4


def filter_transform(W: np.ndarray, m: int = 2) -> np.ndarray:
    """W (F, C, 3, 3) -> U ((m+2)^2, F, C): G g G^T of every filter, point xi = (m+2) a + b,
    in W's dtype.

    Two GEMMs over the F*C filters at once, not ``np.einsum(..., optimize=True)``, which plans
    its contraction in Python on every call (~0.1 ms holding the GIL, per layer and step)."""
    F, C = W.shape[:2]
    Gd = _g_for(W.dtype, m)
    a = Gd.shape[0]
    Wt = np.ascontiguousarray(W.reshape(F * C, 9).T, dtype=Gd.dtype)        # [i, (j, fc)]
    A = np.dot(Gd, Wt.reshape(3, 3 * F * C)).reshape(a, 3, F * C)          # [a, j, fc]
    U = np.matmul(Gd, A).reshape(a * a, F, C)                               # [a, b, fc]
    return U.astype(W.dtype, copy=False)


def filter_transform_adjoint(dU: np.ndarray, m: int = 2) -> np.ndarray:
    """dU ((m+2)^2, F, C) -> dW (F, C, 3, 3): G^T dU G per (f, c), the transpose of
    :func:`filter_transform`, in dU's dtype."""
    F, C = dU.shape[1:]
    Gd = _g_for(dU.dtype, m)
    a = Gd.shape[0]
    E = np.dot(Gd.T, dU.astype(Gd.dtype, copy=False).reshape(a, a * F * C))
    dW = np.matmul(Gd.T, E.reshape(3, a, F * C))                             # [i, j, fc]
    dW = np.ascontiguousarray(dW.reshape(9, F * C).T, dtype=dU.dtype)
    return dW.reshape(F, C, 3, 3)


# --------------------------------------------------------------------------- geometry
class Tiles(NamedTuple):
    """The tiling of a 3x3 stride-1 convolution's output into m x m tiles."""
    Ho: int
    Wo: int
    th: int    # tile rows: ceil(Ho / m)
    tw: int    # tile columns
    Hp: int    # rows of the padded input the tiles read: m*th + 2
    Wp: int
    m: int     # the output tile size: 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3))

    @property
    def points(self) -> int:
        """The transform points per tile, (m + 2)^2."""
        return (self.m + 2) ** 2


def tiles(H: int, W: int, padding: Tuple[int, int], m: int = 2) -> Tiles:
    """The m x m tiles covering the output of a 3x3 stride-1 conv of an (H, W) image."""
    if m not in MATRICES:
        raise ValueError(f"winograd: the output tile size must be one of {TILE_SIZES}, got {m!r}")
    Ho, Wo = H + 2 * padding[0] - 2, W + 2 * padding[1] - 2
    th, tw = -(-Ho // m), -(-Wo // m)
    return Tiles(Ho, Wo, th, tw, m * th + 2, m * tw + 2, m)


def applies(kernel, stride, dilation, groups: int, pads) -> bool:
    """Whether F(m x m, 3x3) computes this convolution: a 3x3 kernel, stride 1, dilation 1,
    one group, symmetric zero padding (pads: top, bottom, left, right)."""
    return (tuple(kernel) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and groups == 1 and pads[0] == pads[1] and pads[2] == pads[3])


def _blocks(n: int, channels: int, t: Tiles, itemsize: int):
    """Slices of [0, n) whose V or M (points x channels x tiles) fit in BLOCK_BYTES."""
    per_sample = t.points * channels * t.th * t.tw * itemsize
    step = max(1, min(n, BLOCK_BYTES // per_sample))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _points(slot: str, channels: int, P: int, dtype, points: int) -> np.ndarray:
    """A (points, channels, P) array in the per-thread scratch whose point planes start 256
    bytes apart modulo 4 KiB (each plane padded), not at the same offset, and its flat buffer
    (POINTS_SLACK values longer: :func:`points_matmul` reads past the last row).

    The transform kernels write (read) the planes of a tile at once; with planes a power
    of two apart (ResNet's sizes) all the streams fall into the same cache sets and evict each
    other: the input transform of a (128, 16, 32, 32) batch took 62 ms with the planes packed,
    15 ms padded (the output transform 46 vs 11 ms), on the session-7 host.
    """
    dtype = np.dtype(dtype)
    period, shift = 4096 // dtype.itemsize, 256 // dtype.itemsize
    plane = channels * P
    plane += (shift - plane % period) % period
    buf = kernels.scratch((points * plane + POINTS_SLACK,), dtype, slot=slot)
    it = dtype.itemsize
    return np.ndarray((points, channels, P), dtype, buffer=buf,
                      strides=(plane * it, P * it, it)), buf


class _Blocks:
    """One thread's part of the batch in blocks (``_blocks``), with the scratch arrays every
    block reuses set up once for the part, not per block (Python per block holds the GIL,
    which the other part's thread waits for): V and M (the largest block's; a smaller last
    block takes a slice of them, whose planes keep their stride), the one zero-padded plane
    (Hp, Wp) the transforms copy each image plane into (the input is never padded whole) and
    the kernels."""

    def __init__(self, n: int, C: int, F: int, t: Tiles, padding, dtype):
        self.t, self.padding = t, padding
        self.slices = _blocks(n, max(C, F), t, np.dtype(dtype).itemsize)
        most = self.slices[0].stop - self.slices[0].start if self.slices else 0
        P = most * t.th * t.tw
        self.plane = kernels.scratch((t.Hp, t.Wp), dtype, slot="wino_plane")
        self.V, self.V_buf = _points("wino_V", C, P, dtype, t.points)
        self.M, self.M_buf = _points("wino_M", F, P, dtype, t.points)
        self.input_transform = _kernel("input_transform", t.m)

    def input_V(self, x_blk: np.ndarray) -> np.ndarray:
        """V (points, C, n*th*tw) of a block of the batch (a view of the part's V)."""
        ph, pw = self.padding
        V = self.V[:, :, :x_blk.shape[0] * self.t.th * self.t.tw]
        self.input_transform(x_blk, ph, pw, self.t.th, self.t.tw, self.plane, V)
        return V

    def M_for(self, n: int) -> np.ndarray:
        """The part's M for a block of n samples."""
        return self.M[:, :, :n * self.t.th * self.t.tw]


# --------------------------------------------------------------------------- convolution
class WinogradCache(NamedTuple):
    """What the backward needs: x and W (the backward chooses its own tile size)."""
    x: np.ndarray            # the input (N, C, H, W), kept by reference (not copied)
    W: np.ndarray            # the weights (F, C, 3, 3), the parameter itself
    padding: Tuple[int, int]
    has_bias: bool


def conv2d_winograd(x: np.ndarray, W: np.ndarray, b: Optional[np.ndarray],
                    padding: Tuple[int, int], parts, m: int = 2, then_relu: bool = False):
    """y = conv2d(x, W, b, stride 1, padding) by F(m x m, 3x3); x (N, C, H, W), W (F, C, 3, 3);
    relu(y) when ``then_relu`` (in the output transform's pass).

    The caller (``conv.conv2d``) has checked the arguments; ``parts`` are the batch slices,
    one per thread (``conv._batch_parts``). Returns y (N, F, Ho, Wo) and the cache.
    """
    from mlcvlab.nn.conv import _map_parts
    N, C, H, Wd = x.shape
    F = W.shape[0]
    t = tiles(H, Wd, padding, m)
    U = filter_transform(W, m)
    y = np.empty((N, F, t.Ho, t.Wo), dtype=x.dtype)
    bias = b if b is not None else np.zeros(F, dtype=x.dtype)

    output_transform = _kernel("output_transform", m)
    U_packed = pack_rows(U) if own_gemm(F, C) else None

    def forward_part(part: slice) -> None:
        x_part, y_part = x[part], y[part]
        plan = _Blocks(x_part.shape[0], C, F, t, padding, x.dtype)
        for blk in plan.slices:
            V = plan.input_V(x_part[blk])
            M = plan.M_for(blk.stop - blk.start)
            if U_packed is not None:
                points_matmul(U_packed, F, V, plan.V_buf, M, plan.M_buf)
            else:
                np.matmul(U, V, out=M)
            output_transform(M, t.th, t.tw, bias, then_relu, y_part[blk])

    _map_parts(forward_part, parts)
    return y, WinogradCache(x, W, tuple(padding), b is not None)


def conv2d_winograd_grad(dy: np.ndarray, cache: WinogradCache, parts,
                         input_grad: bool = True, m: int = 2):
    """dy (N, F, Ho, Wo) -> dx (N, C, H, W) or None, dW (F, C, 3, 3), db (F,) or None, by
    F(m x m, 3x3).

    dM = A dY A^T per tile; dU = dM @ V^T (summed over the batch) gives dW = G^T dU G;
    dV = U^T @ dM gives dx by the adjoint input transform. The caller checked dy's shape.
    """
    from mlcvlab.nn.conv import _map_parts
    x, W, padding, has_bias = cache
    N, C, H, Wd = x.shape
    F = W.shape[0]
    ph, pw = padding
    t = tiles(H, Wd, padding, m)
    U_T = filter_transform(W, m).transpose(0, 2, 1)    # (points, C, F)
    UT_packed = pack_rows(U_T) if input_grad and own_gemm(C, F) else None
    dx = np.empty(x.shape, dtype=dy.dtype) if input_grad else None

    dy_transform = _kernel("dy_transform", m)
    adjoint = _kernel("input_transform_adjoint", m)
    zero = dy.dtype.type(0)

    def backward_part(part: slice):
        dU = np.zeros((t.points, F, C), dtype=dy.dtype)
        x_part, dy_part = x[part], dy[part]
        plan = _Blocks(x_part.shape[0], C, F, t, padding, x.dtype)
        if dx is not None:
            dx_part = dx[part]
        for blk in plan.slices:
            n = blk.stop - blk.start
            dM = plan.M_for(n)
            dy_transform(dy_part[blk], t.th, t.tw, zero, dM)
            V = plan.input_V(x_part[blk])
            dU += np.matmul(dM, V.transpose(0, 2, 1))
            if dx is None:
                continue
            if UT_packed is not None:                        # dV into V's scratch
                points_matmul(UT_packed, C, dM, plan.M_buf, V, plan.V_buf)
                dV = V
            else:
                dV = np.matmul(U_T, dM, out=V)
            adjoint(dV, t.th, t.tw, ph, pw, plan.plane, dx_part[blk])
        return dU

    shares = _map_parts(backward_part, parts)
    dW = filter_transform_adjoint(sum(shares), m).astype(W.dtype, copy=False)
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, np.ascontiguousarray(dW), db
