"""numba CUDA kernels of the GPU twins in :mod:`mlcvlab.gpu.basis`, :mod:`mlcvlab.gpu.losses`
and :mod:`mlcvlab.gpu.optim`: activations, batch norm over channels, softmax cross-entropy and
the fused optimizer updates (Adam, AdaGrad, RMSProp, AdaDelta).

Kernels that :mod:`mlcvlab.parallel.cuda_kernels` already has for the same layout and the same
arithmetic (bias add, column sum, sigmoid gradient, dropout mask and multiply, (N, D) batch
norm, row softmax, the SGD update) are not repeated here: the twins launch those.

Style, as ``parallel/cuda_kernels.py`` (read its docstring): float32 only (every constant a
``float32(...)``, every count cast with ``float32(...)`` before it meets a float32, no builtin
``max``/``min``), checked by ``tests/parallel/test_ptx.py``. Element-wise kernels: one thread
per element, grid-stride loop (``for i in range(start, n, stride)``), launched with
:func:`grid` (at most ``MAX_BLOCKS`` blocks of ``THREADS``). Per-channel reductions: one
block per channel (grid-stride over channels) of ``BLOCK`` threads, each thread summing a
strided share of the channel's N·L values, then a shared-memory tree: a channel holds N·H·W
values (e.g. 128·32·32 = 131,072), far too many for one thread, and few channels (16-512)
would leave most of the GPU idle with a thread per channel.

Statistics in float32, two passes: the mean first, then the mean of (x - mean)**2. The one-pass
E[x**2] - E[x]**2 cancels catastrophically in float32 when |mean| >> std (an input of mean 1000
and std 1 loses every digit of the variance), which a float64 accumulator would hide but the
kernels must not use (float64 runs at 1/32-1/64 rate on consumer GPUs).
"""
from __future__ import annotations

import math

from numba import config, cuda, float32

from mlcvlab.gpu.device import atomic_simulator_shared_arrays

# The simulator runs every thread as a Python thread (~0.3 ms to start one, and a barrier per
# tree level): small blocks and grids keep it fast (grid-stride loops give the same result
# with any grid). 8 blocks of 4 threads make a ResNet-20 step on 4x4 inputs take seconds
# instead of minutes there, and still run every kernel over several blocks and strides.
_SIM = bool(config.ENABLE_CUDASIM)
THREADS = 8 if _SIM else 256       # threads per block of the element-wise kernels
MAX_BLOCKS = 4 if _SIM else 8192   # grid-stride: blocks of an element-wise launch at most
BLOCK = 4 if _SIM else 256         # threads per channel block of the reductions (a power of 2)
CHANNEL_BLOCKS = 4 if _SIM else 65535  # grid-stride over channels: blocks at most
if _SIM:
    # every thread of a launch gets the same shared array, as on a GPU (block_sum's tree);
    # numba-cuda 0.30.4's simulator can hand two threads different ones (see the function)
    atomic_simulator_shared_arrays()

_0 = float32(0.0)
_1 = float32(1.0)
_NAN = float32(math.nan)


def grid(n: int):
    """(blocks, threads) of an element-wise launch over n items (grid-stride loop)."""
    return (max(1, min(MAX_BLOCKS, (n + THREADS - 1) // THREADS)), THREADS)


def channel_grid(channels: int):
    """(blocks, threads) of a per-channel reduction: one block of BLOCK threads per channel."""
    return (max(1, min(CHANNEL_BLOCKS, channels)), BLOCK)


# ------------------------------------------------------------------ device functions
@cuda.jit(device=True)
def block_sum(sh, t, value):
    """The sum of ``value`` over the block's threads, one per entry of the shared array sh
    (a power of two of them; a shared-memory tree, fixed order); every thread gets it. Ends
    with a barrier, so sh may be written again at once. (Also the conv twins' row sums.)"""
    sh[t] = value
    cuda.syncthreads()
    s = sh.shape[0] // 2
    while s > 0:
        if t < s:
            sh[t] += sh[t + s]
        cuda.syncthreads()
        s //= 2
    total = sh[0]
    cuda.syncthreads()
    return total


# ------------------------------------------------------------------ activations (flat (S,))
@cuda.jit
def relu_forward_kernel(X, Y):
    """Y = 0 where X < 0, else X (nan stays nan, -inf gives 0), as the CPU relu."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, X.shape[0], stride):
        v = X[i]
        Y[i] = _0 if v < _0 else v


@cuda.jit
def relu_backward_kernel(dY, Y, dX):
    """dX = 0 where the output Y <= 0, else dY (dY where Y is nan; 0 where dY is nan and
    Y <= 0): torch's threshold_backward, as the CPU relu_grad."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, dY.shape[0], stride):
        dX[i] = _0 if Y[i] <= _0 else dY[i]


@cuda.jit
def leaky_relu_kernel(X, slope, Y):
    """Y = X where X > 0, else X·slope."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, X.shape[0], stride):
        v = X[i]
        Y[i] = v if v > _0 else v * slope


@cuda.jit
def leaky_relu_grad_kernel(dY, X, slope, dX):
    """dX = dY·(1 where X > 0, else slope), X the input."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, dY.shape[0], stride):
        dX[i] = dY[i] * (_1 if X[i] > _0 else slope)


@cuda.jit
def sigmoid_stable_kernel(X, Y):
    """Y = 1/(1+e) for X >= 0, e/(1+e) otherwise, e = exp(-|X|): no overflow, and tiny
    values for X << 0 (not 0), as the CPU sigmoid."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, X.shape[0], stride):
        v = X[i]
        e = math.exp(-abs(v))
        Y[i] = _1 / (_1 + e) if v >= _0 else e / (_1 + e)


@cuda.jit
def tanh_kernel(X, Y):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, X.shape[0], stride):
        Y[i] = math.tanh(X[i])


@cuda.jit
def tanh_grad_kernel(dY, Y, dX):
    """dX = dY·(1 - Y·Y), Y the tanh output."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, dY.shape[0], stride):
        dX[i] = dY[i] * (_1 - Y[i] * Y[i])


@cuda.jit
def keep_mask_kernel(keep, scale, M):
    """An injected dropout mask: M = scale where keep != 0, else 0 (keep 0/1 floats)."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, keep.shape[0], stride):
        M[i] = scale if keep[i] != _0 else _0


@cuda.jit
def softmax_grad_rows_kernel(dY, Y, dX):
    """dX = Y·(dY - sum_c dY·Y) per row, one thread per row (grid-stride); (R, C)."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for r in range(start, Y.shape[0], stride):
        s = _0
        for c in range(Y.shape[1]):
            s += dY[r, c] * Y[r, c]
        for c in range(Y.shape[1]):
            dX[r, c] = Y[r, c] * (dY[r, c] - s)


# ------------------------------------------------------------------ batch norm (N, C, L)
@cuda.jit
def bn_channels_forward_kernel(X, gamma, beta, eps, Y, Xhat, mean, var, inv_std):
    """Batch norm with batch statistics over (N, L) per channel; X, Y, Xhat: (N, C, L).

    One block per channel: mean, then the biased variance as the mean of (x - mean)**2 (two
    passes, see the module docstring), inv_std = 1/sqrt(var + eps); then
    x_hat = (x - mean)·inv_std and y = x_hat·gamma + beta."""
    sh = cuda.shared.array(shape=BLOCK, dtype=float32)
    t = cuda.threadIdx.x
    N, C, L = X.shape
    m = N * L
    mf = float32(m)
    for c in range(cuda.blockIdx.x, C, cuda.gridDim.x):
        acc = _0
        for k in range(t, m, BLOCK):
            n = k // L
            acc += X[n, c, k - n * L]
        mu = block_sum(sh, t, acc) / mf
        acc = _0
        for k in range(t, m, BLOCK):
            n = k // L
            d = X[n, c, k - n * L] - mu
            acc += d * d
        v = block_sum(sh, t, acc) / mf
        s = _1 / math.sqrt(v + eps)
        if t == 0:
            mean[c], var[c], inv_std[c] = mu, v, s
        g, b = gamma[c], beta[c]
        for k in range(t, m, BLOCK):
            n = k // L
            h = (X[n, c, k - n * L] - mu) * s
            Xhat[n, c, k - n * L] = h
            Y[n, c, k - n * L] = h * g + b


@cuda.jit
def bn_channels_backward_kernel(dY, Xhat, gamma, inv_std, dX, dgamma, dbeta):
    """The fused batch-norm backward per channel; dY, Xhat, dX: (N, C, L).
    dbeta = sum dY, dgamma = sum dY·x_hat,
    dX = (gamma·inv_std)·(dY - dbeta/m - x_hat·(dgamma/m)), as the CPU kernel."""
    sh = cuda.shared.array(shape=BLOCK, dtype=float32)
    t = cuda.threadIdx.x
    N, C, L = dY.shape
    m = N * L
    mf = float32(m)
    for c in range(cuda.blockIdx.x, C, cuda.gridDim.x):
        ab = _0
        ag = _0
        for k in range(t, m, BLOCK):
            n = k // L
            d = dY[n, c, k - n * L]
            ab += d
            ag += d * Xhat[n, c, k - n * L]
        sb = block_sum(sh, t, ab)
        sg = block_sum(sh, t, ag)
        if t == 0:
            dbeta[c], dgamma[c] = sb, sg
        mb, mg = sb / mf, sg / mf
        scale = gamma[c] * inv_std[c]
        for k in range(t, m, BLOCK):
            n = k // L
            l = k - n * L
            dX[n, c, l] = scale * (dY[n, c, l] - mb - Xhat[n, c, l] * mg)


@cuda.jit
def bn_eval_kernel(X, gamma, beta, running_mean, running_var, eps, Y):
    """Y = X·scale + shift per channel, scale = gamma/sqrt(running_var + eps),
    shift = beta - running_mean·scale (each thread recomputes its channel's two numbers:
    no scratch arrays, and the kernel is memory-bound anyway); X, Y: (N, C, L)."""
    N, C, L = X.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, N * C * L, stride):
        n = i // (C * L)
        r = i - n * (C * L)
        c = r // L
        l = r - c * L
        scale = gamma[c] * (_1 / math.sqrt(running_var[c] + eps))
        shift = beta[c] - running_mean[c] * scale
        Y[n, c, l] = X[n, c, l] * scale + shift


@cuda.jit
def bn_running_kernel(running_mean, running_var, mean, var, keep, momentum, correction):
    """running = running·keep + momentum·batch (keep = 1 - momentum), the variance's batch
    term momentum·var·correction (correction = count/(count - 1): the unbiased variance);
    one thread per channel, in the order of the CPU's in-place NumPy ops."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for c in range(start, mean.shape[0], stride):
        running_mean[c] = running_mean[c] * keep + momentum * mean[c]
        running_var[c] = running_var[c] * keep + (momentum * var[c]) * correction


# ------------------------------------------------------------------ softmax cross-entropy
@cuda.jit
def ce_rows_kernel(Z, target, ignore_index, P, losses, kept):
    """Per row i of the logits Z (N, K) (one thread per row, grid-stride): with z = Z[i] -
    max(Z[i]) and lse = log(sum exp(z)), losses[i] = lse - z[t] and P[i] = exp(z - lse) (the
    softmax), kept[i] = 1; for t == ignore_index losses[i] = 0 and kept[i] = 0. A label
    outside [0, K) gives a nan loss and a nan row (the host checks labels before upload)."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    K = Z.shape[1]
    for i in range(start, Z.shape[0], stride):
        zmax = Z[i, 0]
        for c in range(1, K):
            if Z[i, c] > zmax:
                zmax = Z[i, c]
        total = _0
        for c in range(K):
            total += math.exp(Z[i, c] - zmax)
        lse = math.log(total)
        for c in range(K):
            P[i, c] = math.exp((Z[i, c] - zmax) - lse)
        t = target[i]
        if t == ignore_index:
            losses[i] = _0
            kept[i] = _0
        elif t < 0 or t >= K:
            losses[i] = _NAN
            kept[i] = _1
            for c in range(K):
                P[i, c] = _NAN
        else:
            losses[i] = lse - (Z[i, t] - zmax)
            kept[i] = _1


@cuda.jit
def ce_reduce_kernel(losses, kept, mean, out, scale):
    """One block: out[0] = sum(losses) (/ sum(kept) for the mean, nan when nothing is kept,
    as the CPU), scale[0] = the gradient's factor per kept row: 1/sum(kept) for the mean
    (0 when nothing is kept), 1 for the sum. Shared-memory tree over BLOCK threads."""
    sh = cuda.shared.array(shape=BLOCK, dtype=float32)
    t = cuda.threadIdx.x
    al = _0
    ak = _0
    for i in range(t, losses.shape[0], BLOCK):
        al += losses[i]
        ak += kept[i]
    total = block_sum(sh, t, al)
    count = block_sum(sh, t, ak)
    if t == 0:
        if mean:
            out[0] = total / count if count > _0 else _NAN
            scale[0] = _1 / count if count > _0 else _0
        else:
            out[0] = total
            scale[0] = _1


@cuda.jit
def ce_grad_kernel(P, target, kept, scale):
    """P[i, c] becomes P[i, c]·g - (g where c is the label), g = scale[0]·kept[i], in place:
    the gradient of the reduced loss (softmax minus one-hot, times the reduction's factor),
    as the CPU's ``soft * g`` then ``grad[rows, t] -= g``; (N, K)."""
    N, K = P.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for k in range(start, N * K, stride):
        i = k // K
        c = k - i * K
        g = scale[0] * kept[i]
        d = P[i, c] * g
        if c == target[i]:
            d -= g
        P[i, c] = d


# ------------------------------------------------------------------ optimizer
# The fused updates of mlcvlab.optim on flat (P,) vectors, each the arithmetic of the CPU
# optimizer in the same order and rounding (every product, sum and quotient a float32, the
# square roots rounded to float32: under the simulator, where math.sqrt returns a double, the
# update is then the CPU's bit for bit; a GPU may contract a multiply and an add into one fma).
# Weight decay is coupled as on the CPU, g = w·wd + grad: ``wd`` a scalar, or, with
# ``masked``, the decay mask's per-element values ``wdv`` (the CPU's NumPy path for
# ``decay_mask=True``: wd on weights, 0 on biases and batch-norm parameters).
@cuda.jit(device=True)
def coupled_grad_d(w, grad, wd, wdv, masked, i):
    """g = w[i]·wd + grad[i] (wd = wdv[i] when masked)."""
    return w[i] * (wdv[i] if masked else wd) + grad[i]


@cuda.jit
def adam_kernel(w, grad, m, v, step_size, beta1, one_m_beta1, beta2, one_m_beta2, eps,
                inv_bc2_sqrt, wd, shrink, wdv, masked):
    """The fused Adam/AdamW step of ``mlcvlab.optim.kernels.adam``, same arithmetic in the
    same order: w' = w·shrink, g = w'·wd + grad, m = m·b1 + g·(1-b1),
    v = v·b2 + g²·(1-b2), w = w' - (m/(sqrt(v)·inv_bc2_sqrt + eps))·step_size."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, w.shape[0], stride):
        wi = w[i] * shrink
        g = wi * (wdv[i] if masked else wd) + grad[i]
        mi = m[i] * beta1 + g * one_m_beta1
        vi = v[i] * beta2 + (g * g) * one_m_beta2
        m[i] = mi
        v[i] = vi
        w[i] = wi - (mi / (float32(math.sqrt(vi)) * inv_bc2_sqrt + eps)) * step_size


@cuda.jit
def sgd_kernel(w, grad, buf, lr, momentum, wd, wdv, masked, nesterov):
    """SGD (``mlcvlab.optim.SGD``) as its NumPy path computes it, for the decay mask's vector
    (``masked``) or momentum 0: g = w·wd + grad; momentum 0: w -= g·lr; momentum μ:
    b = b·μ + g, w -= ((b·μ + g) if nesterov else b)·lr. ``buf`` is read only when μ > 0."""
    for i in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
        g = coupled_grad_d(w, grad, wd, wdv, masked, i)
        if momentum > 0:
            b = buf[i] * momentum + g
            buf[i] = b
            g = b * momentum + g if nesterov else b
        w[i] = w[i] - g * lr


@cuda.jit
def adagrad_kernel(w, grad, s, clr, eps, wd, wdv, masked):
    """AdaGrad (``mlcvlab.optim.AdaGrad``): s = s + g², w = w - (g/(sqrt(s) + eps))·clr, clr
    the step's decayed learning rate lr/(1 + (t-1)·lr_decay)."""
    for i in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
        g = coupled_grad_d(w, grad, wd, wdv, masked, i)
        si = s[i] + g * g
        s[i] = si
        w[i] = w[i] - (g / (float32(math.sqrt(si)) + eps)) * clr


@cuda.jit
def rmsprop_kernel(w, grad, r, v, mean, lr, alpha, one_m_alpha, eps, momentum,
                   one_p_momentum, wd, wdv, masked, centered, nesterov):
    """RMSProp (``mlcvlab.optim.RMSProp``): r = r·α + g²·(1-α); centered: mean = mean·α +
    g·(1-α), den = sqrt(r - mean²) + eps, else sqrt(r) + eps; b = g/den, then
    momentum 0: w -= b·lr; momentum μ: v = v·μ + b, w -= v·lr; Nesterov (Goodfellow et al.,
    Alg. 8.7, in the model's variables): v' = v·μ + b·(-lr), w = (w + v·(-μ)) + v'·(1+μ).
    ``v`` and ``mean`` are read only when momentum > 0 / centered."""
    for i in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
        g = coupled_grad_d(w, grad, wd, wdv, masked, i)
        ri = r[i] * alpha + (g * g) * one_m_alpha
        r[i] = ri
        if centered:
            mi = mean[i] * alpha + g * one_m_alpha
            mean[i] = mi
            den = float32(math.sqrt(ri - mi * mi)) + eps
        else:
            den = float32(math.sqrt(ri)) + eps
        b = g / den
        if momentum > _0:
            vo = v[i]
            if nesterov:
                vn = vo * momentum + b * (-lr)
                v[i] = vn
                w[i] = (w[i] + vo * (-momentum)) + vn * one_p_momentum
            else:
                vn = vo * momentum + b
                v[i] = vn
                w[i] = w[i] - vn * lr
        else:
            w[i] = w[i] - b * lr


@cuda.jit
def adadelta_kernel(w, grad, r, u, lr, rho, one_m_rho, eps, wd, wdv, masked):
    """AdaDelta (``mlcvlab.optim.AdaDelta``): r = r·ρ + g²·(1-ρ),
    delta = (sqrt(u + eps)/sqrt(r + eps))·g, u = u·ρ + delta²·(1-ρ), w = w - delta·lr."""
    for i in range(cuda.grid(1), w.shape[0], cuda.gridsize(1)):
        g = coupled_grad_d(w, grad, wd, wdv, masked, i)
        ri = r[i] * rho + (g * g) * one_m_rho
        r[i] = ri
        delta = (float32(math.sqrt(u[i] + eps)) / float32(math.sqrt(ri + eps))) * g
        u[i] = u[i] * rho + (delta * delta) * one_m_rho
        w[i] = w[i] - delta * lr
