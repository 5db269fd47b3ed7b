"""numba CUDA kernels for the forward and backward of NN4 and MLPs, the gradient
reduction and the fused SGD update.

Imported only by :mod:`mlcvlab.parallel.cuda` (numba is a lazy import there). Every
function a kernel calls is itself a ``@cuda.jit(device=True)`` function. Shapes:
activations are (N, D) row-major, Linear weights (out, in). One thread per
output element for element-wise kernels; one thread per feature (column) for
column reductions (bias gradient, batch-norm statistics), looping over the N
rows inside the thread; a 2-D grid of TPB x TPB tiles for the matmul, each
block staging tiles of both operands in shared memory.

The kernels also run under the simulator (``NUMBA_ENABLE_CUDASIM=1``, set before
numba is imported), which is how the tests check each against NumPy.

float32 only: every constant is a ``float32(...)`` (``_0``, ``_1``) and every count
(``n``, ``K``) is cast with ``float32(...)`` before it divides a float32, because a
bare Python float literal (``0.0``) or an int64 operand types as float64 on the
device and turns the arithmetic into float64 instructions (``cvt.f64``,
``add.f64``, ``sqrt.rn.f64``...: half rate on an H100/H200, 1/32-1/64 on consumer
GPUs). ``tests/parallel/test_ptx.py`` compiles every kernel to sm_90 PTX and fails on
any ``.f64`` instruction. No builtin ``max``/``min`` either: numba's own CUDA target
(numba >= 0.66 without the ``numba-cuda`` package) does not compile them.
"""
from __future__ import annotations

import math

from numba import config, cuda, float32, uint64

from mlcvlab.gpu.device import atomic_simulator_shared_arrays
from mlcvlab.nn import philox

# The simulator runs every thread as a Python thread: smaller blocks keep it fast
# (results are the same; tests still cover several tiles per matmul).
_SIM = bool(config.ENABLE_CUDASIM)
if _SIM:
    atomic_simulator_shared_arrays()   # one shared array per launch, as on a GPU (the matmul)
TPB = 4 if _SIM else 16          # matmul tile edge: TPB x TPB threads per block
THREADS = 32 if _SIM else 128    # threads per block of the 1-D kernels

_0 = float32(0.0)
_1 = float32(1.0)


# ------------------------------------------------------------------ device functions
@cuda.jit(device=True)
def relu_d(x):
    return x if x > _0 else _0 * x


@cuda.jit(device=True)
def relu_grad_d(x, dy):
    return dy if x > _0 else _0 * dy


@cuda.jit(device=True)
def sigmoid_d(x):
    return _1 / (_1 + math.exp(-x))


@cuda.jit(device=True)
def load_op(A, i, j, trans, rows, cols):
    """op(A)[i, j] with op(A) = A or A.T, of shape (rows, cols); 0 outside."""
    if i >= rows or j >= cols:
        return _0
    if trans:
        return A[j, i]
    return A[i, j]


# ------------------------------------------------------------------ matmul
@cuda.jit
def matmul_kernel(A, B, C, trans_a, trans_b):
    """C (M, N) = op(A) (M, K) @ op(B) (K, N), tiled in shared memory (float32 tiles)."""
    sa = cuda.shared.array(shape=(TPB, TPB), dtype=float32)
    sb = cuda.shared.array(shape=(TPB, TPB), dtype=float32)
    row, col = cuda.grid(2)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    M, N = C.shape
    K = A.shape[0] if trans_a else A.shape[1]
    acc = _0
    for t in range((K + TPB - 1) // TPB):
        sa[tx, ty] = load_op(A, row, t * TPB + ty, trans_a, M, K)
        sb[tx, ty] = load_op(B, t * TPB + tx, col, trans_b, K, N)
        cuda.syncthreads()
        for k in range(TPB):
            acc += sa[tx, k] * sb[k, ty]
        cuda.syncthreads()
    if row < M and col < N:
        C[row, col] = acc


# ------------------------------------------------------------------ element-wise
@cuda.jit
def add_bias_kernel(Y, b):
    """Y (N, D) += b (D,)."""
    i, j = cuda.grid(2)
    if i < Y.shape[0] and j < Y.shape[1]:
        Y[i, j] += b[j]


@cuda.jit
def relu_kernel(X, Y):
    """Y = max(X, 0); X, Y: (S,) flat views."""
    i = cuda.grid(1)
    if i < X.shape[0]:
        Y[i] = relu_d(X[i])


@cuda.jit
def relu_grad_kernel(X, dY, dX):
    """dX = dY where X > 0 else 0 (X the ReLU input); (S,)."""
    i = cuda.grid(1)
    if i < X.shape[0]:
        dX[i] = relu_grad_d(X[i], dY[i])


@cuda.jit
def sigmoid_kernel(X, Y):
    i = cuda.grid(1)
    if i < X.shape[0]:
        Y[i] = sigmoid_d(X[i])


@cuda.jit
def sigmoid_grad_kernel(Y, dY, dX):
    """dX = dY · y (1 - y), Y the sigmoid output."""
    i = cuda.grid(1)
    if i < Y.shape[0]:
        dX[i] = dY[i] * Y[i] * (_1 - Y[i])


# The round function of mlcvlab.nn.philox, the very Python function the CPU path compiles
philox4x32_10_d = cuda.jit(device=True)(philox.philox4x32_10)


@cuda.jit
def dropout_mask_kernel(M, thr, scale, k0, k1, stream, step_lo, step_hi):
    """M (S,) = the scaled keep mask of ``mlcvlab.nn.philox.dropout_mask``: scale (1/(1-p))
    where the top 24 bits of the element's Philox word are >= thr (ceil(p 2**24)), else 0.
    One thread per block of 4 elements (block b: counter (b, stream, step_lo, step_hi),
    key (k0, k1); uint64 words, thr uint32); launch over ceil(S / 4) threads."""
    b = cuda.grid(1)
    n = M.shape[0]
    i = 4 * b
    if i < n:
        x0, x1, x2, x3 = philox4x32_10_d(uint64(b), stream, step_lo, step_hi, k0, k1)
        M[i] = scale if (x0 >> philox.SHIFT8_32) >= thr else _0
        if i + 1 < n:
            M[i + 1] = scale if (x1 >> philox.SHIFT8_32) >= thr else _0
        if i + 2 < n:
            M[i + 2] = scale if (x2 >> philox.SHIFT8_32) >= thr else _0
        if i + 3 < n:
            M[i + 3] = scale if (x3 >> philox.SHIFT8_32) >= thr else _0


@cuda.jit
def mask_kernel(X, M, Y):
    """Dropout forward and backward: Y = X · M, M the scaled keep mask (0 or 1/(1-p)); (S,)."""
    i = cuda.grid(1)
    if i < X.shape[0]:
        Y[i] = X[i] * M[i]


# ------------------------------------------------------------------ column reductions
@cuda.jit
def colsum_kernel(dY, db):
    """db (D,) = sum over rows of dY (N, D): the bias gradient."""
    j = cuda.grid(1)
    if j < dY.shape[1]:
        acc = _0
        for i in range(dY.shape[0]):
            acc += dY[i, j]
        db[j] = acc


@cuda.jit
def bn_forward_kernel(X, gamma, beta, eps, Y, Xhat, mean, var, inv_std):
    """Batch norm with batch statistics, one thread per feature j. X, Y, Xhat: (N, D)."""
    j = cuda.grid(1)
    n = X.shape[0]
    if j < X.shape[1]:
        nf = float32(n)
        m = _0
        for i in range(n):
            m += X[i, j]
        m /= nf
        v = _0
        for i in range(n):
            v += (X[i, j] - m) * (X[i, j] - m)
        v /= nf
        s = _1 / math.sqrt(v + float32(eps))
        for i in range(n):
            Xhat[i, j] = (X[i, j] - m) * s
            Y[i, j] = Xhat[i, j] * gamma[j] + beta[j]
        mean[j], var[j], inv_std[j] = m, v, s


@cuda.jit
def bn_backward_kernel(dY, Xhat, gamma, inv_std, dX, dgamma, dbeta):
    """dX = γ·inv_std·(dY − mean(dY) − x̂·mean(dY·x̂)); dγ = Σ dY·x̂; dβ = Σ dY."""
    j = cuda.grid(1)
    n = dY.shape[0]
    if j < dY.shape[1]:
        nf = float32(n)
        sdy = _0
        sdyx = _0
        for i in range(n):
            sdy += dY[i, j]
            sdyx += dY[i, j] * Xhat[i, j]
        for i in range(n):
            dX[i, j] = gamma[j] * inv_std[j] * (dY[i, j] - sdy / nf - Xhat[i, j] * sdyx / nf)
        dgamma[j], dbeta[j] = sdyx, sdy


# ------------------------------------------------------------------ heads and losses
@cuda.jit
def softmax_kernel(Z, P):
    """Row-wise softmax, one thread per row. Z, P: (N, C)."""
    i = cuda.grid(1)
    if i < Z.shape[0]:
        zmax = Z[i, 0]
        for c in range(1, Z.shape[1]):
            if Z[i, c] > zmax:       # Python's max(zmax, z), NaN included
                zmax = Z[i, c]
        total = _0
        for c in range(Z.shape[1]):
            P[i, c] = math.exp(Z[i, c] - zmax)
            total += P[i, c]
        for c in range(Z.shape[1]):
            P[i, c] = P[i, c] / total


@cuda.jit
def prob_minus_target_kernel(P, y, dZ):
    """dZ (N, C) = (P − T) / N: the gradient of the mean cross-entropy (softmax head,
    T one-hot of int labels y) or binary cross-entropy (C = 1, sigmoid head, T = y)
    with respect to the pre-activation."""
    i, c = cuda.grid(2)
    n, classes = P.shape
    if i < n and c < classes:
        if classes == 1:
            t = float32(y[i])
        else:
            t = _1 if int(y[i]) == c else _0
        dZ[i, c] = (P[i, c] - t) / float32(n)


# ------------------------------------------------------------------ reduction and update
@cuda.jit
def reduce_mean_kernel(G, wts):
    """Every row of G (K, P) becomes (((w_0 G[0] + w_1 G[1]) + ...) + w_{K-1} G[K-1]) / K,
    summed in worker order; wts (K,) are 1 for equal shards."""
    j = cuda.grid(1)
    if j < G.shape[1]:
        acc = G[0, j] * wts[0]
        for k in range(1, G.shape[0]):
            acc += G[k, j] * wts[k]
        acc /= float32(G.shape[0])
        for k in range(G.shape[0]):
            G[k, j] = acc


@cuda.jit
def sgd_update_kernel(w, g, buf, lr, momentum, weight_decay, nesterov):
    """Fused SGD step (as mlcvlab.optim.SGD): d = g + wd·w; b = μ·b + d (if μ > 0);
    w −= lr · (d + μ·b if nesterov else b). A grid-stride loop: any grid covers the vector
    (the model's GPU twin of the optimizer launches a capped grid, see mlcvlab.gpu.optim)."""
    for j in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
        d = g[j] + weight_decay * w[j]
        if momentum > 0:
            b = momentum * buf[j] + d
            buf[j] = b
            d = d + momentum * b if nesterov else b
        w[j] -= lr * d


def grid1(n: int):
    """(blocks, threads) covering n items."""
    return (max(1, (n + THREADS - 1) // THREADS), THREADS)


def grid2(rows: int, cols: int, tile: int = TPB):
    return ((max(1, (rows + tile - 1) // tile), max(1, (cols + tile - 1) // tile)), (tile, tile))
