"""The GPU twins of mlcvlab.gpu.basis / losses / optim against their CPU functions.

Run by test_basis_sim.py as ``NUMBA_ENABLE_CUDASIM=1 python basis_sim_checks.py OUT.json``
(the simulator must be on before numba is imported; NumPy stands in for CuPy there, so the
twins take and return NumPy arrays). Writes {check: traceback or "ok"}, plus
{"errors": {what: max relative error}} of the float32 twins against a float64 reference;
names after OUT.json run only those checks. Shapes are odd and tiny: N=3, C=5, H=7, W=9 and
(N, D) = (5, 13), never multiples of a block.
"""
import math
import os
import sys

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import simcheck  # noqa: E402  (the harness shared by tests/gpu)

from mlcvlab.gpu import basis as G  # noqa: E402
from mlcvlab.gpu import losses as GL  # noqa: E402
from mlcvlab.gpu import optim as GO  # noqa: E402
from mlcvlab.nn import basis as B  # noqa: E402
from mlcvlab.nn import philox  # noqa: E402
from mlcvlab.nn.losses import CrossEntropyLoss  # noqa: E402
from mlcvlab.optim import kernels as OK  # noqa: E402

R = np.random.default_rng(0)
F, D = np.float32, np.float64
CHECKS = {}
ERRORS = {}
SHAPE4 = (3, 5, 7, 9)
SHAPE2 = (5, 13)


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


def rand(*shape, scale=1.0, shift=0.0):
    return (R.normal(size=shape) * scale + shift).astype(F)


def rel_err(got, want) -> float:
    """max |got - want| / max |want|: the error relative to the array's scale (an element-wise
    relative error is meaningless where values cross 0, as x_hat does)."""
    got, want = np.asarray(got, D), np.asarray(want, D)
    if not want.size:
        return 0.0
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def close(what, got, want, tol=1e-5, ref=None):
    """got (float32 twin) vs want (the CPU function) within tol relative (atol tol too), and
    the error against ``ref`` (float64) recorded under ``what``."""
    assert isinstance(got, np.ndarray) and got.dtype == F, (what, type(got),
                                                            getattr(got, "dtype", None))
    assert got.shape == np.shape(want), (what, got.shape, np.shape(want))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=what)
    if ref is not None:
        ERRORS[what] = max(ERRORS.get(what, 0.0), rel_err(got, ref))


def raises(exc, match, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except exc as err:
        assert match in str(err), f"{exc.__name__} without {match!r}: {err}"
        return
    raise AssertionError(f"{fn.__name__} did not raise {exc.__name__} ({match})")


# --------------------------------------------------------------------------- linear
@check
def linear_forward_backward():
    x, W, b = rand(*SHAPE2), rand(7, 13), rand(7)
    dy = rand(5, 7)
    for bias in (b, None):
        y, cache = G.linear(x, W, bias)
        y0, cache0 = B.linear(x, W, bias)
        ref = x.astype(D) @ W.astype(D).T + (0 if bias is None else bias.astype(D))
        close("linear y", y, y0, ref=ref)
        assert type(cache) is B.LinearCache and cache.has_bias == (bias is not None)
        dx, dW, db = G.linear_grad(dy, cache)
        dx0, dW0, db0 = B.linear_grad(dy, cache0)
        close("linear dx", dx, dx0, ref=dy.astype(D) @ W.astype(D))
        close("linear dW", dW, dW0, ref=dy.astype(D).T @ x.astype(D))
        if bias is None:
            assert db is None and db0 is None
        else:
            close("linear db", db, db0, ref=dy.astype(D).sum(axis=0))
        # dW_out / db_out: overwritten whole (not added to), and returned
        dW_out, db_out = np.full_like(W, 7.0), np.full(7, 7.0, F)
        dx2, dW2, db2 = G.linear_grad(dy, cache, input_grad=False, dW_out=dW_out,
                                      db_out=db_out if bias is not None else None)
        assert dx2 is None and dW2 is dW_out
        close("linear dW", dW_out, dW0)
        if bias is not None:
            assert db2 is db_out
            close("linear db", db_out, db0)
    raises(ValueError, "expected dy of the forward output's shape (5, 7)", G.linear_grad,
           rand(5, 6), cache)
    raises(ValueError, "x has 13 features but W expects 12", G.linear, x, rand(7, 12))
    raises(TypeError, "float32", G.linear, x.astype(D), W)
    raises(ValueError, "dW_out", G.linear_grad, dy, cache, dW_out=np.empty((13, 7), F))


# --------------------------------------------------------------------------- activations
def _special(shape):
    """Random values with 0, -0, nan, +-inf and large +-values in the first places."""
    x = rand(*shape, scale=3.0)
    flat = x.reshape(-1)
    flat[:8] = [0.0, -0.0, np.nan, np.inf, -np.inf, 100.0, -100.0, -1e-30]
    return x


@check
def relu_forward_backward():
    x = _special(SHAPE4)
    dy = rand(*SHAPE4)
    dy.reshape(-1)[8:11] = np.nan                    # nan upstream where y <= 0 or y > 0
    x.reshape(-1)[8:10] = [-1.0, 0.0]
    x.reshape(-1)[10] = 2.0
    y, cache = G.relu(x)
    y0, cache0 = B.relu(x)
    np.testing.assert_array_equal(y, y0)
    assert cache.value is y                          # the output is cached, as the CPU
    dx, dx0 = G.relu_grad(dy, cache), B.relu_grad(dy, cache0)
    np.testing.assert_array_equal(dx, dx0)
    flat = dx.reshape(-1)
    assert flat[8] == 0 and flat[9] == 0 and np.isnan(flat[10]), flat[8:11]
    assert flat[2] == dy.reshape(-1)[2]              # x nan: dy passes (nan <= 0 is false)
    y2, _ = G.relu(x[0, 0])                          # 2-D and non-contiguous sources too
    np.testing.assert_array_equal(y2, B.relu(np.ascontiguousarray(x[0, 0]))[0])
    yt, _ = G.relu(x.transpose(0, 1, 3, 2))
    np.testing.assert_array_equal(yt, B.relu(np.ascontiguousarray(x.transpose(0, 1, 3, 2)))[0])


@check
def leaky_sigmoid_tanh():
    x = _special(SHAPE4)
    finite = np.isfinite(x)
    dy = rand(*SHAPE4)
    x64, dy64 = x.astype(D), dy.astype(D)
    y, cache = G.leaky_relu(x, 0.1)
    y0, cache0 = B.leaky_relu(x, 0.1)
    np.testing.assert_array_equal(y, y0)
    assert cache.value is x and cache.slope == 0.1
    close("leaky_relu grad", G.leaky_relu_grad(dy, cache), B.leaky_relu_grad(dy, cache0),
          ref=dy64 * np.where(x64 > 0, 1.0, 0.1))
    y, cache = G.sigmoid(x)
    y0, cache0 = B.sigmoid(x)
    with np.errstate(over="ignore"):
        ref = 1.0 / (1.0 + np.exp(-x64))
    close("sigmoid y", np.where(finite, y, 0), np.where(finite, y0, 0),
          ref=np.where(finite, ref, 0))
    np.testing.assert_array_equal(y[~finite], y0[~finite])
    assert y.reshape(-1)[6] > 0                      # sigmoid(-100): tiny, not 0 (no 1/(1+inf))
    close("sigmoid grad", G.sigmoid_grad(dy, cache), B.sigmoid_grad(dy, cache0),
          ref=np.where(np.isnan(y0), np.nan, dy64 * y0 * (1.0 - y0.astype(D))))
    y, cache = G.tanh(x)
    y0, cache0 = B.tanh(x)
    close("tanh y", y, y0, ref=np.tanh(x64))
    close("tanh grad", G.tanh_grad(dy, cache), B.tanh_grad(dy, cache0),
          ref=dy64 * (1.0 - y0.astype(D) ** 2))
    for fn, c in ((G.sigmoid_grad, cache), (G.tanh_grad, cache)):
        raises(ValueError, "expected dy of the forward output's shape", fn, rand(3, 5), c)


@check
def softmax_forward_backward():
    x, dy = rand(3, 5, 7), rand(3, 5, 7)
    for axis in (-1, 1, 0):
        y, cache = G.softmax(x, axis)
        y0, cache0 = B.softmax(x, axis)
        e = np.exp(x.astype(D) - x.astype(D).max(axis=axis, keepdims=True))
        close("softmax y", y, y0, ref=e / e.sum(axis=axis, keepdims=True))
        assert cache.slope == axis
        close("softmax grad", G.softmax_grad(dy, cache), B.softmax_grad(dy, cache0), tol=2e-5)
    raises(ValueError, "axis 3 is out of range", G.softmax, x, 3)


# --------------------------------------------------------------------------- dropout
@check
def dropout_masks_equal_cpu():
    for shape in (SHAPE4, SHAPE2, (3, 5, 7)):                 # 945, 65, 105: not multiples of 4
        x, dy = rand(*shape), rand(*shape)
        for p in (0.3, 0.5, 0.9, 1.0):
            for key in (philox.DropoutKey(123456789012345, 0, 0),
                        philox.DropoutKey(2**64 - 5, 3, 2**33 + 7)):
                y, cache = G.dropout(x, p, train=True, rng=key)
                y0, cache0 = B.dropout(x, p, train=True, rng=key)
                np.testing.assert_array_equal(cache.mask, cache0.mask)   # bit for bit
                np.testing.assert_array_equal(y, y0)
                np.testing.assert_array_equal(G.dropout_grad(dy, cache),
                                              B.dropout_grad(dy, cache0))
                assert type(cache) is B.DropoutCache
    x = rand(*SHAPE2)
    for kw in ({"train": False}, {"train": True, "rng": philox.DropoutKey(1, 0, 0)}):
        y, cache = G.dropout(x, 0.0 if kw["train"] else 0.5, **kw)
        assert y is x and cache.mask is None
        assert G.dropout_grad(x, cache) is x
    keep = (R.random(SHAPE2) > 0.5)
    y, cache = G.dropout(x, 0.25, mask=keep.astype(F))
    np.testing.assert_array_equal(y, B.dropout(x, 0.25, mask=keep)[0])
    raises(NotImplementedError, "DropoutKey", G.dropout, x, 0.5, True, None)
    raises(NotImplementedError, "DropoutKey", G.dropout, x, 0.5, True, np.random.default_rng(0))
    raises(ValueError, "must be in [0, 1]", G.dropout, x, 1.5)
    raises(ValueError, "expected dy", G.dropout_grad, rand(5, 12),
           G.dropout(x, 0.5, rng=philox.DropoutKey(1, 0, 0))[1])


# --------------------------------------------------------------------------- batch norm
def _bn_ref(x, gamma, beta, eps):
    """float64 batch norm of x: (y, mean, biased var)."""
    x64 = x.astype(D)
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x64.mean(axis=axes)
    var = ((x64 - mean.reshape(shape)) ** 2).mean(axis=axes)
    xh = (x64 - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return xh * gamma.astype(D).reshape(shape) + beta.astype(D).reshape(shape), mean, var, xh


def _bn_case(shape, tag, shift=0.0):
    C = shape[1]
    x, dy = rand(*shape, scale=2.0, shift=shift), rand(*shape)
    gamma, beta = rand(C, shift=1.0), rand(C)
    eps = 1e-5
    y, cache = G.batchnorm(x, gamma, beta, eps)
    y0, cache0 = B.batchnorm(x, gamma, beta, eps)
    ref, mean64, var64, xh64 = _bn_ref(x, gamma, beta, eps)
    assert type(cache) is B.BatchNormCache and cache.x is x and cache.eps == eps
    tol = 1e-5 if not shift else 1e-3
    close(f"bn{tag} y", y, y0, tol=tol, ref=ref)
    close(f"bn{tag} x_hat", cache.x_hat, cache0.x_hat, tol=tol, ref=xh64)
    close(f"bn{tag} mean", cache.mean, cache0.mean, ref=mean64)
    close(f"bn{tag} var", cache.var, cache0.var, tol=tol, ref=var64)
    close(f"bn{tag} inv_std", cache.inv_std, cache0.inv_std, tol=tol,
          ref=1.0 / np.sqrt(var64 + eps))
    layer_cache = cache._replace(x=None)           # what the BatchNorm layers keep
    dx, dgamma, dbeta = G.batchnorm_grad_fused(dy, layer_cache)
    dx0, dgamma0, dbeta0 = B.batchnorm_grad_fused(dy, cache0._replace(x=None))
    axes = (0,) + tuple(range(2, x.ndim))
    bshape = (1, -1) + (1,) * (x.ndim - 2)
    dy64, m = dy.astype(D), x.size // C
    dgamma64, dbeta64 = (dy64 * xh64).sum(axis=axes), dy64.sum(axis=axes)
    dx64 = (gamma.astype(D) / np.sqrt(var64 + eps)).reshape(bshape) * (
        dy64 - (dbeta64 / m).reshape(bshape) - xh64 * (dgamma64 / m).reshape(bshape))
    close(f"bn{tag} dx", dx, dx0, tol=2e-5 if not shift else 1e-3, ref=dx64)
    close(f"bn{tag} dgamma", dgamma, dgamma0, tol=2e-5 if not shift else 1e-3, ref=dgamma64)
    close(f"bn{tag} dbeta", dbeta, dbeta0, ref=dbeta64)
    # running statistics: both paths from the same start, twice (count = values per channel)
    rm, rv = rand(C), np.abs(rand(C)) + 0.5
    rm0, rv0 = rm.copy(), rv.copy()
    for momentum in (0.1, 0.5):
        G.batchnorm_update_running(rm, rv, cache.mean, cache.var, m, momentum)
        B.batchnorm_update_running(rm0, rv0, cache.mean, cache.var, m, momentum)
    close(f"bn{tag} running_mean", rm, rm0, tol=1e-6)
    close(f"bn{tag} running_var", rv, rv0, tol=1e-6)
    ye = G.batchnorm_eval(x, gamma, beta, rm, rv, eps)
    ye0 = B.batchnorm_eval(x, gamma, beta, rm0, rv0, eps)
    refe = (x.astype(D) - rm.astype(D).reshape(bshape)) / np.sqrt(
        rv.astype(D).reshape(bshape) + eps) * gamma.astype(D).reshape(bshape) \
        + beta.astype(D).reshape(bshape)
    close(f"bn{tag} eval y", ye, ye0, tol=1e-5 if not shift else 1e-3, ref=refe)


@check
def batchnorm_2d():
    _bn_case(SHAPE2, "(N,D)")


@check
def batchnorm_4d():
    _bn_case(SHAPE4, "(N,C,H,W)")


@check
def batchnorm_3d():
    _bn_case((3, 5, 11), "(N,C,L)")


@check
def batchnorm_two_pass_variance():
    """mean 1000, std 2: the one-pass E[x^2] - E[x]^2 in float32 would lose the variance; the
    two-pass kernel keeps it to float32 precision (against float64 of the same inputs)."""
    _bn_case(SHAPE4, "(N,C,H,W) mean 1000", shift=1000.0)
    x = rand(*SHAPE4, scale=2.0, shift=1000.0)
    g, b = np.ones(5, F), np.zeros(5, F)
    _, cache = G.batchnorm(x, g, b)
    var64 = _bn_ref(x, g, b, 1e-5)[2]
    assert rel_err(cache.var, var64) < 1e-4, rel_err(cache.var, var64)


@check
def batchnorm_errors():
    x = rand(*SHAPE4)
    raises(ValueError, "more than one value per feature", G.batchnorm, rand(1, 5), rand(5),
           rand(5))
    raises(ValueError, "expected gamma of shape (5,)", G.batchnorm, x, rand(4), rand(5))
    raises(ValueError, "2-D (N, D), 3-D (N, C, L) or 4-D", G.batchnorm, rand(5), rand(5),
           rand(5))
    raises(TypeError, "float32", G.batchnorm, x.astype(D), rand(5), rand(5))
    _, cache = G.batchnorm(x, rand(5), rand(5))
    raises(ValueError, "expected dy of the forward output's shape", G.batchnorm_grad_fused,
           rand(3, 5, 7, 8), cache)


# --------------------------------------------------------------------------- cross-entropy
@check
def cross_entropy_equals_cpu():
    N, C = 5, 13
    z = rand(N, C, scale=3.0)
    t = R.integers(0, C, N)
    z64 = z.astype(D)
    lse = np.log(np.exp(z64 - z64.max(axis=1, keepdims=True)).sum(axis=1)) + z64.max(axis=1)
    soft = np.exp(z64 - lse[:, None])
    onehot = np.eye(C)[t]
    for reduction, div in (("mean", N), ("sum", 1)):
        loss, dz = GL.cross_entropy(z, t, reduction)
        cpu = CrossEntropyLoss(reduction=reduction)
        want = cpu(z, t)
        assert loss.shape == () and loss.dtype == F, (loss.shape, loss.dtype)
        close(f"cross_entropy {reduction} loss", loss, np.float32(want),
              ref=(lse - z64[np.arange(N), t]).sum() / div)
        close(f"cross_entropy {reduction} dlogits", dz, cpu.backward(), ref=(soft - onehot) / div)
    # ignored rows count for nothing; every row ignored: nan loss and a zero gradient
    t2 = t.copy()
    t2[[1, 3]] = -100
    for reduction in ("mean", "sum"):
        loss, dz = GL.cross_entropy(z, t2, reduction)
        cpu = CrossEntropyLoss(reduction=reduction)
        close(f"cross_entropy {reduction} loss", loss, np.float32(cpu(z, t2)))
        close(f"cross_entropy {reduction} dlogits", dz, cpu.backward())
    t3 = np.full(N, 2, np.int64)
    loss, dz = GL.cross_entropy(z, t3, "mean", ignore_index=2)
    assert math.isnan(float(loss)) and not dz.any(), (loss, dz)
    assert math.isnan(CrossEntropyLoss(ignore_index=2)(z, t3))
    # large logits: the row max keeps exp finite
    big = z * 100
    loss, dz = GL.cross_entropy(big, t, "mean")
    cpu = CrossEntropyLoss()
    close("cross_entropy large-logit loss", loss, np.float32(cpu(big, t)), tol=1e-5)
    close("cross_entropy large-logit dlogits", dz, cpu.backward())
    loss, dz = GL.cross_entropy(z, np.array([0, 1, C, 2, 3]), "mean")   # a label out of range
    assert math.isnan(float(loss)) and np.isnan(dz[2]).all() and not np.isnan(dz[0]).any()
    int32 = GL.cross_entropy(z, t.astype(np.int32), "sum")
    close("cross_entropy int32 labels", int32[1], GL.cross_entropy(z, t, "sum")[1])


@check
def cross_entropy_refusals():
    z, t = rand(5, 13), R.integers(0, 13, 5)
    raises(NotImplementedError, "reduction='none'", GL.cross_entropy, z, t, "none")
    raises(NotImplementedError, "integer class labels", GL.cross_entropy, z, rand(5, 13))
    raises(ValueError, "reduction must be one of", GL.cross_entropy, z, t, "avg")
    raises(ValueError, "expected target of shape (5,)", GL.cross_entropy, z, t[:4])
    raises(TypeError, "float32 logits", GL.cross_entropy, z.astype(D), t)
    raises(NotImplementedError, "logits (N, K), got shape (5, 13, 2)", GL.cross_entropy,
           rand(5, 13, 2), R.integers(0, 13, (5, 2)))
    assert GL.unsupported(CrossEntropyLoss()) is None
    assert GL.unsupported(CrossEntropyLoss(reduction="sum")) is None
    for loss, word in ((CrossEntropyLoss(weight=np.ones(13)), "class weights"),
                       (CrossEntropyLoss(label_smoothing=0.1), "label_smoothing"),
                       (CrossEntropyLoss(from_probs=True), "from_probs"),
                       (CrossEntropyLoss(reduction="none"), "reduction='none'")):
        assert word in GL.unsupported(loss), GL.unsupported(loss)
        raises(NotImplementedError, "use device 'cpu'", GL.check_loss, loss)
    from mlcvlab.nn.losses import NLLLoss
    assert "no GPU twin" in GL.unsupported(NLLLoss())


# --------------------------------------------------------------------------- optimizers
def _steps(update, args_of, n=101, steps=3, **state):
    """(w, *state) after ``steps`` calls of update(w, g_k, *state, *args) from one start."""
    rs = np.random.default_rng(5)
    w = rs.normal(size=n).astype(F)
    bufs = [np.zeros(n, F) for _ in state.get("bufs", ())]
    for k in range(steps):
        g = rs.normal(size=n).astype(F)
        update(w, g, *bufs, *args_of(k + 1))
    return [w] + bufs


@check
def sgd_twin_equals_njit():
    for momentum, wd, nesterov in ((0.9, 0.0, False), (0.9, 0.0, True), (0.5, 1e-2, False),
                                   (0.9, 5e-4, True)):
        args = lambda k: (F(0.1), F(momentum), F(wd), nesterov)  # noqa: E731
        got = _steps(GO.get("sgd_momentum"), args, bufs=("b",))
        want = _steps(OK.get("sgd_momentum"), args, bufs=("b",))
        for a, b, what in zip(got, want, ("w", "buf")):
            close(f"sgd {what}", a, b, tol=1e-6)
    for wd in (0.0, 1e-2):                       # plain SGD: the CPU optimizer's NumPy path
        got = _steps(GO.get("sgd"), lambda k: (F(0.1), F(wd)))
        want = _steps(lambda w, g, lr, wd: w.__isub__((w * wd + g) * lr),
                      lambda k: (F(0.1), F(wd)))
        close("sgd plain w", got[0], want[0], tol=1e-6)
    raises(ValueError, "momentum > 0", GO.sgd_momentum, *[np.zeros(3, F)] * 3, 0.1, 0.0, 0.0,
           False)
    raises(TypeError, "flat float32", GO.sgd_momentum, np.zeros(3), *[np.zeros(3, F)] * 2, 0.1,
           0.9, 0.0, False)
    raises(ValueError, "no GPU update", GO.get, "lamb")


@check
def adam_twin_equals_njit():
    lr, (b1, b2), eps = 1e-2, (0.9, 0.999), 1e-8
    for wd, shrink in ((0.0, 1.0), (1e-2, 1.0), (0.0, 1 - lr * 1e-2)):     # Adam, L2, AdamW
        def args(t):
            return tuple(F(a) for a in (lr / (1 - b1 ** t), b1, 1 - b1, b2, 1 - b2, eps,
                                        1 / math.sqrt(1 - b2 ** t), wd, shrink))
        got = _steps(GO.get("adam"), args, bufs=("m", "v"))
        want = _steps(OK.get("adam"), args, bufs=("m", "v"))
        for a, b, what in zip(got, want, ("w", "m", "v")):
            close(f"adam {what}", a, b, tol=1e-6)


# The device step of every rule of optim/adaptive.py (adagrad_kernel, rmsprop_kernel,
# adadelta_kernel, adam_kernel) against the CPU optimizer's own step, with and without a decay
# mask (on the CPU a mask runs Adam on the NumPy path too).
ADAPTIVE = (
    ("AdaGrad", dict(lr=0.05, lr_decay=0.1, initial_accumulator_value=0.1)),
    ("RMSProp", dict(lr=0.01)),
    ("RMSProp", dict(lr=0.01, momentum=0.9)),
    ("RMSProp", dict(lr=0.01, momentum=0.9, nesterov=True)),
    ("RMSProp", dict(lr=0.01, momentum=0.5, centered=True)),
    ("AdaDelta", dict(lr=1.0, rho=0.95)),
    ("Adam", dict(lr=0.01)),
)


def _optimizer_run(name, kw, device, steps=3):
    """(flat data, {state: array}) of a 13-7-3 MLP's 122 parameters (odd: no whole block)
    after ``steps`` steps of optimizer ``name`` on ``device`` from the same gradients."""
    from mlcvlab import nn, optim
    from mlcvlab.gpu.device import to_device, to_host
    model = nn.Sequential(nn.Linear(13, 7, rng=0), nn.ReLU(), nn.Linear(7, 3, rng=0))
    model.to(device)
    opt = getattr(optim, name)(model.parameters(), **kw)
    flat, rs = model.flat(), np.random.default_rng(7)
    for _ in range(steps):
        g = rs.normal(size=flat.size).astype(F)
        flat.grad[...] = g if device == "cpu" else to_device(g)
        opt.step()
    return to_host(flat.data), {k: to_host(v) for k, v in opt.state.items()}


@check
def adaptive_optimizers_on_the_device_equal_cpu():
    """Three steps of each rule, each weight-decay form (none, scalar L2, decay mask: L2 on
    the weights only), on the CPU (NumPy path; Adam's numba kernel where unmasked) and on the
    device (one fused kernel): the same weights and state, bit for bit under the simulator
    (where the kernels round every operation to float32 as NumPy does), to float32 rounding on
    a GPU (which may fuse a multiply-add)."""
    from mlcvlab.gpu.device import simulated
    for name, kw in ADAPTIVE:
        for decay in ({}, {"weight_decay": 1e-2}, {"weight_decay": 1e-2, "decay_mask": True}):
            cpu_w, cpu_st = _optimizer_run(name, {**kw, **decay}, "cpu")
            gpu_w, gpu_st = _optimizer_run(name, {**kw, **decay}, "cuda")
            assert sorted(cpu_st) == sorted(gpu_st), (name, kw, sorted(cpu_st), sorted(gpu_st))
            for what, a, b in [("w", gpu_w, cpu_w)] + [(k, gpu_st[k], cpu_st[k]) for k in cpu_st]:
                where = f"{name} {kw} {decay} {what}"
                if simulated():
                    np.testing.assert_array_equal(a, b, err_msg=where)
                else:
                    close(where, a, b, tol=1e-6)


SGD_RULES = (dict(lr=0.05), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9,
                                                                nesterov=True))


@check
def sgd_on_the_device_equals_cpu():
    """SGD without momentum and with a decay mask now runs one kernel on the device (before:
    the NumPy path's CuPy passes). Where the CPU runs its NumPy path (momentum 0, or a mask)
    the device's weights and buffer equal it bit for bit under the simulator; momentum with a
    scalar decay is the numba kernel's twin (``sgd_twin_equals_njit``), to float32 rounding."""
    from mlcvlab.gpu.device import simulated
    for kw in SGD_RULES:
        for decay in ({}, {"weight_decay": 1e-2}, {"weight_decay": 1e-2, "decay_mask": True}):
            cpu_w, cpu_st = _optimizer_run("SGD", {**kw, **decay}, "cpu")
            gpu_w, gpu_st = _optimizer_run("SGD", {**kw, **decay}, "cuda")
            assert sorted(cpu_st) == sorted(gpu_st), (kw, sorted(cpu_st), sorted(gpu_st))
            numpy_path = kw.get("momentum", 0) == 0 or decay.get("decay_mask", False)
            for what, a, b in [("w", gpu_w, cpu_w)] + [(k, gpu_st[k], cpu_st[k]) for k in cpu_st]:
                where = f"SGD {kw} {decay} {what}"
                if simulated() and numpy_path:
                    np.testing.assert_array_equal(a, b, err_msg=where)
                else:
                    close(where, a, b, tol=1e-6)


@check
def adaptive_twins_refuse_bad_arguments():
    z = [np.zeros(5, F) for _ in range(4)]
    raises(TypeError, "flat float32", GO.adagrad, z[0], z[1], np.zeros(5), 0.1, 1e-10, 0.0)
    raises(ValueError, "has 4 elements", GO.adagrad, z[0], z[1], z[2], 0.1, 1e-10,
           np.zeros(4, F))
    raises(ValueError, "momentum_buffer is needed exactly when momentum > 0", GO.rmsprop,
           z[0], z[1], z[2], None, None, 0.01, 0.99, 0.01, 1e-8, 0.9, 1.9, 0.0, False, False)
    raises(ValueError, "grad_avg exactly when centered", GO.rmsprop, z[0], z[1], z[2], None,
           z[3], 0.01, 0.99, 0.01, 1e-8, 0.0, 1.0, 0.0, False, False)
    raises(ValueError, "Nesterov needs momentum", GO.rmsprop, z[0], z[1], z[2], None, None,
           0.01, 0.99, 0.01, 1e-8, 0.0, 1.0, 0.0, False, True)
    raises(TypeError, "expected acc_delta", GO.adadelta, z[0], z[1], z[2], np.zeros(5, int),
           1.0, 0.9, 0.1, 1e-6, 0.0)


# --------------------------------------------------------------------------- shared memory
def _shared_memory_launches():
    """The outputs of every kernel with a ``cuda.shared.array``, on odd shapes: batch norm
    per channel forward and backward (block_sum), cross-entropy's reduction, the row sums of
    the conv twins (bias gradient, global pooling) and the handout's tiled matmul."""
    from mlcvlab.gpu import conv_kernels as KC
    from mlcvlab.parallel import cuda_kernels as PK
    x, dy = rand(*SHAPE4, scale=2.0), rand(*SHAPE4)
    y, cache = G.batchnorm(x, rand(5, shift=1.0), rand(5))
    grads = G.batchnorm_grad_fused(dy, cache._replace(x=None))
    loss, dz = GL.cross_entropy(rand(5, 13), R.integers(0, 13, 5))
    rows = rand(6, 37)
    sums = np.empty(6, F)
    KC.row_sums_kernel[KC.launch(6 * KC.THREADS)](rows, 1, sums)
    a, b = rand(6, 9), rand(9, 7)
    c = np.empty((6, 7), F)
    PK.matmul_kernel[PK.grid2(6, 7)](a, b, c, False, False)
    return [y, cache.x_hat, cache.mean, cache.var, *grads, loss, dz, sums, c]


@check
def shared_memory_kernels_exact_when_threads_interleave():
    """Every thread of a launch must get the same shared array, as on a GPU. numba-cuda
    0.30.4's simulator allocates it in two unlocked steps, so a thread switch between them
    gave two threads of a block different arrays and a wrong, run-to-run different sum (the
    rare engine-check failures of sessions 8 and 9); mlcvlab.gpu.device's
    atomic_simulator_shared_arrays fixes that. Here np.empty sleeps 1 ms, so every launch
    switches threads inside that allocation (the worst interleaving, not a rare one): the
    results must still be bit for bit those of an undisturbed run. Without the fix nearly
    every launch sums wrong."""
    import threading
    import time

    from numba.cuda.simulator.kernel import BlockThread
    seed = R.bit_generator.state
    calm = _shared_memory_launches()
    R.bit_generator.state = seed                          # the same inputs again
    real_empty = np.empty
    yielded = []

    def yielding_empty(*args, **kwargs):
        if isinstance(threading.current_thread(), BlockThread):
            yielded.append(1)
            time.sleep(1e-3)                              # the other threads run here
        return real_empty(*args, **kwargs)

    np.empty = yielding_empty
    try:
        stirred = _shared_memory_launches()
    finally:
        np.empty = real_empty
    assert yielded, "no simulated thread allocated: the check tests nothing"
    for i, (a, b) in enumerate(zip(calm, stirred)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.tobytes() == b.tobytes(), (
            f"output {i} of _shared_memory_launches differs when the simulated threads "
            f"interleave: {np.count_nonzero(a != b)} of {a.size} values, max "
            f"{np.nanmax(np.abs(a.astype(D) - b.astype(D)))}")


# --------------------------------------------------------------------------- layers
@check
def unsupported_layers():
    from mlcvlab import nn
    for layer in (nn.Linear(4, 3, rng=0), nn.Linear(4, 3, bias=False, rng=0), nn.ReLU(),
                  nn.LeakyReLU(0.2), nn.Sigmoid(), nn.Tanh(), nn.Softmax(dim=1),
                  nn.Dropout(0.5, rng=0), nn.BatchNorm1d(4), nn.BatchNorm2d(4, affine=False),
                  nn.BatchNorm2d(4, momentum=None, track_running_stats=False),
                  nn.Flatten(), nn.Identity()):
        assert G.unsupported(layer) is None, (layer, G.unsupported(layer))
    assert "no GPU twin" in G.unsupported(nn.Conv2d(1, 2, 3, rng=0))
    lin = nn.Linear(4, 3, rng=0)
    lin.weight.data = lin.weight.data.astype(D)
    assert "float32" in G.unsupported(lin)


# --------------------------------------------------------------------------- launch types
def _numba_type(arg) -> str:
    """The numba type a launch argument gets, as str() of the types in ptx_checks."""
    if isinstance(arg, (bool, np.bool_)):
        return "bool"
    if isinstance(arg, int):
        return "int64"
    if isinstance(arg, float):
        return "float64 (a Python float)"
    if isinstance(arg, np.generic):
        return str(arg.dtype)
    layout = "C" if arg.flags.c_contiguous else "A"
    return f"array({arg.dtype}, {arg.ndim}d, {layout})"


def _ptx_signatures():
    """{kernel: {signature as a tuple of str}} of tests/parallel/ptx_checks.py (which pops
    NUMBA_ENABLE_CUDASIM at import: put back, the twins read it on every call)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "parallel"))
    saved = os.environ.get("NUMBA_ENABLE_CUDASIM")
    try:
        import ptx_checks
    finally:
        os.environ["NUMBA_ENABLE_CUDASIM"] = saved
    return {name: {tuple(str(t) for t in sig) for sig in sigs}
            for table in ptx_checks.signatures().values() for name, sigs in table.items()}


@check
def launches_match_ptx_signatures():
    """Every kernel launch of the twins (run on representative calls) has the argument types
    that tests/parallel/ptx_checks.py compiles the kernel for (C-contiguous float32 arrays,
    float32 scalars, int64 labels): another type would compile a second, unchecked version
    on the GPU (a float64 one for a Python float)."""
    from mlcvlab.gpu import basis_kernels as KB
    from mlcvlab.parallel import cuda_kernels as KP
    log = {}

    class Recorder:
        def __init__(self, name, kern):
            self.name, self.kern = name, kern

        def __getitem__(self, config):
            launch = self.kern[config]

            def call(*args):
                log.setdefault(self.name, set()).add(tuple(_numba_type(a) for a in args))
                return launch(*args)
            return call

    saved = {(m, n): getattr(m, n) for m in (KB, KP) for n in dir(m) if n.endswith("_kernel")}
    try:
        for (m, n), kern in saved.items():
            setattr(m, n, Recorder(n, kern))
        for name in ("linear_forward_backward", "relu_forward_backward", "leaky_sigmoid_tanh",
                     "softmax_forward_backward", "batchnorm_2d", "batchnorm_4d",
                     "cross_entropy_equals_cpu", "sgd_twin_equals_njit",
                     "adam_twin_equals_njit", "adaptive_optimizers_on_the_device_equal_cpu",
                     "sgd_on_the_device_equals_cpu"):
            CHECKS[name]()
        x = rand(*SHAPE4)
        G.dropout_grad(x, G.dropout(x, 0.5, rng=philox.DropoutKey(1, 0, 0))[1])
        G.dropout(x, 0.5, mask=np.ones(SHAPE4, F))
        xt = x.transpose(0, 1, 3, 2)                     # non-contiguous sources
        G.relu(xt)
        G.batchnorm(xt, rand(5), rand(5))
        G.linear(rand(13, 5).T, rand(7, 13), rand(7))
    finally:
        for (m, n), kern in saved.items():
            setattr(m, n, kern)
    sigs = _ptx_signatures()
    bad = {n: calls - sigs.get(n, set()) for n, calls in log.items()}
    bad = {n: c for n, c in bad.items() if c}
    assert not bad, f"launches with types ptx_checks does not compile: {bad}"
    twins = {n for (m, n) in saved if m is KB}
    assert twins <= set(log), f"kernels never launched: {twins - set(log)}"


if __name__ == "__main__":
    simcheck.main(CHECKS, ERRORS)
