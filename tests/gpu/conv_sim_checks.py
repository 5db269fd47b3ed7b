"""The GPU twins of convolution and pooling (mlcvlab.gpu.conv) against the CPU functions.

Run by test_conv_sim.py as ``NUMBA_ENABLE_CUDASIM=1 python conv_sim_checks.py OUT.json``
(the simulator must be on before numba is imported; NumPy then stands in for CuPy);
``NUMBA_ENABLE_CUDASIM=0`` runs the same checks on a GPU, with CuPy arrays (the inputs move
with mlcvlab.gpu.device, see _OnDevice). Writes {check: "ok" or the error} and, under
"errors", the largest float32 errors measured ({what: max |gpu - ref| / max |ref|});
names after OUT.json run only those checks.

Shapes are odd (N=3, C_in=5, C_out=7, H=7, W=9) and larger than one launch's threads
(conv_kernels.THREADS * MAX_BLOCKS), so every kernel goes round its grid-stride loop.
References: the CPU function in float32 and, for the convolution and global pooling,
in float64 (the float32 CPU path rounds differently from the GPU's GEMM and sums, so the
float64 one says which is closer).
"""
import os
import sys

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import simcheck  # noqa: E402  (the harness shared by tests/gpu)

from mlcvlab import nn  # noqa: E402
from mlcvlab.gpu import conv as G  # noqa: E402
from mlcvlab.gpu import conv_kernels as K  # noqa: E402
from mlcvlab.gpu import device  # noqa: E402
from mlcvlab.nn import conv as C  # noqa: E402

R = np.random.default_rng(0)
F32 = np.float32
CHECKS = {}
ERRORS = {}
TOL = 1e-5                     # relative to the largest value of the reference


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


def rand(*shape):
    return R.normal(size=shape).astype(F32)


def rel_err(got, want) -> float:
    want = np.asarray(want, dtype=np.float64)
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


def close(what, got, want, tol=TOL):
    """got within tol * max|want| of want everywhere; the error is recorded under ``what``."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == F32, f"{what}: dtype {got.dtype}"
    err = rel_err(got, want)
    ERRORS[what] = max(err, ERRORS.get(what, 0.0))
    assert err <= tol, f"{what}: max |gpu - ref| / max |ref| = {err:.3g} > {tol}"


def _dev(a):
    return device.to_device(a) if isinstance(a, np.ndarray) else a


def _host(out):
    """Device arrays of a result back to NumPy; caches (named tuples) and None stay as they
    are."""
    if out is None or hasattr(out, "_fields"):
        return out
    if isinstance(out, tuple):
        return tuple(_host(o) for o in out)
    return device.to_host(out)


class _OnDevice:
    """The functions of mlcvlab.gpu.conv with NumPy arguments moved to the device and array
    results moved back (caches stay on the device), so that these checks run the same under
    the simulator and, with NUMBA_ENABLE_CUDASIM=0, on a GPU."""

    def __getattr__(self, name):
        fn = getattr(G, name)

        def run(*args, **kwargs):
            out = fn(*map(_dev, args), **{k: _dev(v) for k, v in kwargs.items()})
            return _host(out)
        run.__name__ = name
        return run


D = _OnDevice()


def raises(exc, match, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc as err:
        assert match in str(err), f"{exc.__name__} without {match!r}: {err}"
        return str(err)
    raise AssertionError(f"{fn.__name__}{args[1:] if args else ''} {kwargs} did not raise "
                         f"{exc.__name__}")


# --------------------------------------------------------------------------- convolution
# (name, x shape, W shape, stride, padding, bias)
CONVS = [
    ("1x1_stride2", (3, 5, 7, 9), (7, 5, 1, 1), 2, 0, True),
    ("3x3_pad1_stride1", (3, 5, 7, 9), (7, 5, 3, 3), 1, 1, True),
    ("3x3_pad1_stride2", (3, 5, 7, 9), (7, 5, 3, 3), 2, 1, False),
    ("5x5_pad2_lenet1", (3, 1, 7, 9), (6, 1, 5, 5), 1, 2, True),
    ("5x5_pad0_lenet2", (3, 5, 7, 9), (7, 5, 5, 5), 1, 0, True),
    ("4x2_same_even", (3, 5, 7, 9), (7, 5, 4, 2), 1, "same", True),
    ("2x3_stride3_pad10", (2, 3, 8, 11), (4, 3, 2, 3), 3, (1, 0), True),
]


def conv_case(name, x_shape, w_shape, stride, padding, bias):
    x, W = rand(*x_shape), rand(*w_shape)
    b = rand(w_shape[0]) if bias else None
    y, cache = D.conv2d(x, W, b, stride, padding)
    y32, cache32 = C.conv2d(x, W, b, stride, padding)
    b64 = None if b is None else b.astype(np.float64)
    y64, cache64 = C.conv2d(x.astype(np.float64), W.astype(np.float64), b64, stride, padding)
    close(f"conv {name} y vs cpu f32", y, y32)
    close(f"conv {name} y vs f64", y, y64)
    dy = rand(*y.shape)
    dx, dW, db = D.conv2d_grad(dy, cache)
    want32 = C.conv2d_grad(dy, cache32)
    want64 = C.conv2d_grad(dy.astype(np.float64), cache64)
    for what, got, w32, w64 in zip(("dx", "dW", "db"), (dx, dW, db), want32, want64):
        if not bias and what == "db":
            assert got is None, "db of a conv without bias is not None"
            continue
        close(f"conv {name} {what} vs cpu f32", got, w32)
        close(f"conv {name} {what} vs f64", got, w64)
    again = D.conv2d_grad(dy, cache)             # gathers, no atomics: the same bits
    for a, c in zip((dx, dW, db), again):
        assert (a is None and c is None) or np.array_equal(a, c), "conv2d_grad not repeatable"


def _conv_check(case):
    def run():
        conv_case(*case)
    run.__name__ = f"conv_{case[0]}"
    return check(run)


for _case in CONVS:
    _conv_check(_case)


class _Count:
    """Counts calls of a kernel launch or a function (patched onto a module attribute)."""

    def __init__(self, target):
        self.target, self.calls = target, 0

    def __getitem__(self, launch):
        self.calls += 1
        return self.target[launch]

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.target(*args, **kwargs)


@check
def conv_input_grad_false_skips_dx():
    x, W, b = rand(3, 5, 7, 9), rand(7, 5, 3, 3), rand(7)
    y, cache = D.conv2d(x, W, b, 1, 1)
    dy = rand(*y.shape)
    dx, dW, db = D.conv2d_grad(dy, cache)
    xp = device.array_module()
    col2im, matmul = _Count(K.col2im_kernel), _Count(xp.matmul)
    K.col2im_kernel, xp.matmul = col2im, matmul
    try:
        none, dW2, db2 = D.conv2d_grad(dy, cache, input_grad=False)
    finally:
        K.col2im_kernel, xp.matmul = col2im.target, matmul.target
    assert none is None, "input_grad=False returned a dx"
    assert col2im.calls == 0, f"input_grad=False launched col2im {col2im.calls} times"
    assert matmul.calls == 1, f"input_grad=False ran {matmul.calls} GEMMs (dW only: 1)"
    np.testing.assert_array_equal(dW2, dW)
    np.testing.assert_array_equal(db2, db)


@check
def conv_errors():
    x, W = rand(2, 5, 7, 9), rand(7, 5, 3, 3)
    for kwargs, word in (({"dilation": 2}, "dilation=(2, 2)"), ({"groups": 5}, "groups=5"),
                         ({"padding": 1, "padding_mode": "reflect"}, "padding_mode='reflect'")):
        msg = raises(NotImplementedError, word, D.conv2d, x, W, **kwargs)
        assert "use device 'cpu'" in msg, msg
    # a padding mode with no padding to apply is plain zero padding: it runs
    close("conv reflect without padding", D.conv2d(x, W, padding_mode="reflect")[0],
          C.conv2d(x, W)[0])
    raises(TypeError, "float32", D.conv2d, x.astype(np.float64), W)
    raises(TypeError, "device array", G.conv2d, x.tolist(), W)
    raises(ValueError, "channels", D.conv2d, x, rand(7, 4, 3, 3))
    raises(ValueError, "larger than the padded input", D.conv2d, x, rand(7, 5, 9, 3))
    raises(ValueError, "stride 1", D.conv2d, x, W, stride=2, padding="same")
    raises(ValueError, "padding_mode", D.conv2d, x, W, padding_mode="mirror")
    raises(ValueError, "shape (7,)", D.conv2d, x, W, rand(6))
    y, cache = D.conv2d(x, W, None, 1, 1)
    raises(ValueError, "dy of shape", D.conv2d_grad, rand(2, 7, 7, 8), cache)


# --------------------------------------------------------------------------- pooling
def tied(*shape):
    """Small integers (many ties in every window) with a nan and a -inf."""
    x = R.integers(-2, 3, size=shape).astype(F32)
    x[0, 1, 2, 3] = np.nan
    x[1, 0, 0, :3] = -np.inf
    x[1, 0, 1, :3] = -np.inf
    return x


def pool_equal(what, got, want):
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape)
    np.testing.assert_array_equal(got, want, err_msg=what)   # nan == nan here
    ERRORS[what] = 0.0


@check
def maxpool_ties_nan_and_overlap():
    x = tied(3, 5, 7, 9)
    for ks, stride, pad in ((2, None, 0), (3, 2, 0), (3, 2, 1), (3, 1, 1),
                            ((3, 2), (2, 1), (1, 0))):
        name = f"maxpool k{ks} s{stride} p{pad}"
        y, cache = D.maxpool2d(x, ks, stride, pad)
        y_c, cache_c = C.maxpool2d(x, ks, stride, pad)
        pool_equal(f"{name} y", y, y_c)
        on_host = cache._replace(argmax=device.to_host(cache.argmax))
        pool_equal(f"{name} argmax", on_host.argmax, cache_c.argmax)
        np.testing.assert_array_equal(C.pool_indices(on_host), C.pool_indices(cache_c))
        dy = rand(*y.shape)
        pool_equal(f"{name} dx", D.maxpool2d_grad(dy, cache), C.maxpool2d_grad(dy, cache_c))
    assert np.isnan(D.maxpool2d(x, 3, 2)[0][0, 1, 0, 1]), "a nan in the window did not win"
    x_finite = np.nan_to_num(x, nan=1.0, neginf=-np.inf)   # the CPU's 2x2 kernel (no nan)
    y, cache = D.maxpool2d(x_finite, 2)
    y_c, cache_c = C.maxpool2d(x_finite, 2)
    pool_equal("maxpool k2 no nan y", y, y_c)
    pool_equal("maxpool k2 no nan argmax", device.to_host(cache.argmax), cache_c.argmax)
    dy = rand(*y.shape)
    pool_equal("maxpool k2 no nan dx", D.maxpool2d_grad(dy, cache), C.maxpool2d_grad(dy, cache_c))
    y, cache = D.maxpool2d(x, 3, 2)
    raises(ValueError, "dy of shape", D.maxpool2d_grad, rand(3, 5, 3, 3), cache)
    for kwargs, word in (({"dilation": 2}, "dilation"), ({"ceil_mode": True}, "ceil_mode")):
        raises(NotImplementedError, word, D.maxpool2d, x, 2, **kwargs)
    raises(ValueError, "at most half the kernel", D.maxpool2d, x, 2, 2, 2)
    raises(TypeError, "float32", D.maxpool2d, x.astype(np.float64), 2)


@check
def avgpool():
    x = rand(3, 5, 7, 9)
    for ks, stride, pad in ((2, None, 0), (3, 2, 1), ((3, 2), (2, 1), (1, 0)), (3, 3, 0)):
        name = f"avgpool k{ks} s{stride} p{pad}"
        y, cache = D.avgpool2d(x, ks, stride, pad)
        y_c, cache_c = C.avgpool2d(x, ks, stride, pad)
        pool_equal(f"{name} y", y, y_c)                # same float32 ops in the same order
        dy = rand(*y.shape)
        pool_equal(f"{name} dx", D.avgpool2d_grad(dy, cache), C.avgpool2d_grad(dy, cache_c))
    # without padding both counts agree: count_include_pad=False runs
    pool_equal("avgpool count_include_pad=False p0",
               D.avgpool2d(x, 2, count_include_pad=False)[0],
               C.avgpool2d(x, 2, count_include_pad=False)[0])
    for kwargs, word in (({"ceil_mode": True}, "ceil_mode"),
                         ({"padding": 1, "count_include_pad": False}, "count_include_pad"),
                         ({"divisor_override": 2}, "divisor_override")):
        raises(NotImplementedError, word, D.avgpool2d, x, 3, 2, **kwargs)


@check
def global_avgpool():
    for shape in ((3, 5, 7, 9), (2, 3, 2, 2)):       # planes longer and shorter than a block
        x = rand(*shape)
        layer = nn.GlobalAvgPool2d()
        y = D.global_avgpool2d(x)
        close(f"global_avgpool {shape} y vs cpu f32", y, layer.forward(x))
        close(f"global_avgpool {shape} y vs f64", y, x.astype(np.float64).mean(axis=(2, 3)))
        dy = rand(*shape[:2])
        dx = D.global_avgpool2d_grad(dy, x.shape)
        pool_equal(f"global_avgpool {shape} dx", dx, layer.backward(dy))
    raises(ValueError, "dy of shape", D.global_avgpool2d_grad, rand(3, 4), (3, 5, 7, 9))


@check
def adaptive_avgpool():
    x = rand(3, 5, 7, 9)
    for size in (1, (1, 1)):
        y, cache = D.adaptive_avgpool2d(x, size)
        y_c, cache_c = C.adaptive_avgpool2d(x, size)
        close(f"adaptive_avgpool {size} y vs cpu", y, y_c)
        assert cache.out_hw == cache_c.out_hw and cache.x_shape == cache_c.x_shape, cache
        dy = rand(*y.shape)
        close(f"adaptive_avgpool {size} dx vs cpu", D.adaptive_avgpool2d_grad(dy, cache),
              C.adaptive_avgpool2d_grad(dy, cache_c))
    for size in (2, (1, 2), None, (None, 1)):
        raises(NotImplementedError, "output_size", D.adaptive_avgpool2d, x, size)


@check
def unsupported_layers():
    supported = [nn.Conv2d(5, 7, 3), nn.Conv2d(5, 7, 4, padding="same"),
                 nn.Conv2d(5, 7, 3, 2, 1, bias=False),
                 nn.Conv2d(5, 7, 3, padding_mode="reflect"),
                 nn.MaxPool2d(2), nn.MaxPool2d(3, stride=2, padding=1), nn.AvgPool2d(3, 2, 1),
                 nn.AvgPool2d(2, count_include_pad=False), nn.AdaptiveAvgPool2d(1),
                 nn.AdaptiveAvgPool2d((1, 1)), nn.GlobalAvgPool2d(), nn.Linear(3, 4), nn.ReLU()]
    for layer in supported:
        assert G.unsupported(layer) is None, (layer, G.unsupported(layer))
    cases = [(nn.Conv2d(5, 7, 3, dilation=2), "dilation"),
             (nn.Conv2d(4, 6, 3, groups=2), "groups"),
             (nn.Conv2d(5, 7, 3, padding=1, padding_mode="circular"), "padding_mode"),
             (nn.Conv2d(5, 7, 3).astype(np.float64), "float64"),
             (nn.MaxPool2d(2, dilation=2), "dilation"),
             (nn.MaxPool2d(2, ceil_mode=True), "ceil_mode"),
             (nn.MaxPool2d(2, return_indices=True), "return_indices"),
             (nn.AvgPool2d(2, ceil_mode=True), "ceil_mode"),
             (nn.AvgPool2d(3, padding=1, count_include_pad=False), "count_include_pad"),
             (nn.AvgPool2d(2, divisor_override=3), "divisor_override"),
             (nn.AdaptiveAvgPool2d(2), "output_size"), (nn.AdaptiveMaxPool2d(1), "no GPU twin")]
    for layer, word in cases:
        why = G.unsupported(layer)
        assert why and word in why and why.startswith(type(layer).__name__), (layer, why)
        assert why.endswith("use device 'cpu' for this model") and "\n" not in why, why


@check
def lenet_like_chain():
    """conv 5x5 p2 -> maxpool 2 -> conv 3x3 -> maxpool 3 s2 p1 -> avgpool 3 s1 p1 -> global
    average, forward and backward through the twins (caches held while later layers run,
    the first layer without dx) against the same chain on the CPU."""
    x, W1, b1, W2 = rand(2, 1, 12, 12), rand(6, 1, 5, 5), rand(6), rand(4, 6, 3, 3)

    def chain(m, x):
        h1, c1 = m.conv2d(x, W1, b1, 1, 2)
        p1, q1 = m.maxpool2d(h1, 2)
        h2, c2 = m.conv2d(p1, W2, None, 1, 0)
        p2, q2 = m.maxpool2d(h2, 3, 2, 1)
        a, qa = m.avgpool2d(p2, 3, 1, 1)
        gap = nn.GlobalAvgPool2d()                  # the CPU layer's inline mean
        y = m.global_avgpool2d(a) if m is D else gap.forward(a)
        dy = rand(*y.shape)
        da = m.global_avgpool2d_grad(dy, a.shape) if m is D else gap.backward(dy)
        dp2 = m.avgpool2d_grad(da, qa)
        dh2 = m.maxpool2d_grad(dp2, q2)
        dp1, dW2, _ = m.conv2d_grad(dh2, c2)
        dh1 = m.maxpool2d_grad(dp1, q1)
        none, dW1, db1 = m.conv2d_grad(dh1, c1, input_grad=False)
        assert none is None
        return {"y": y, "dp1": dp1, "dW2": dW2, "dW1": dW1, "db1": db1}

    state = R.bit_generator.state                   # the same dy for both chains
    got = chain(D, x)
    R.bit_generator.state = state
    want = chain(C, x)
    for k in got:
        close(f"chain {k} vs cpu f32", got[k], want[k])


def _ptx_signatures():
    """ptx_checks.signatures() for mlcvlab.gpu.conv_kernels. Importing ptx_checks unsets
    NUMBA_ENABLE_CUDASIM (it compiles with the real numba.cuda); set it back, since
    mlcvlab.gpu.device reads it on every call."""
    sim = os.environ["NUMBA_ENABLE_CUDASIM"]
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parallel"))
    try:
        import ptx_checks
    finally:
        os.environ["NUMBA_ENABLE_CUDASIM"] = sim
    return ptx_checks.signatures()["mlcvlab.gpu.conv_kernels"]


class _Record:
    """A kernel whose launches record the numba types of their arguments."""

    def __init__(self, target, log):
        self.target, self.log = target, log

    def __getitem__(self, launch):
        from numba import typeof

        def run(*args):
            self.log.append(tuple(typeof(a) for a in args))
            return self.target[launch](*args)
        return run


@check
def launches_match_ptx_signatures():
    """Every kernel is launched with exactly the argument types that tests/parallel/
    ptx_checks.py compiles it for (float32 arrays and scalars, int64 ints, a uint8 argmax),
    so the PTX check's no-float64 verdict is about the code that runs."""
    sigs = _ptx_signatures()
    names = [n for n in dir(K) if n.endswith("_kernel")]
    assert sorted(names) == sorted(sigs), f"kernels {names} vs signatures {sorted(sigs)}"
    logs = {n: [] for n in names}
    saved = {n: getattr(K, n) for n in names}
    for n in names:
        setattr(K, n, _Record(saved[n], logs[n]))
    try:
        x, W, b = rand(2, 3, 4, 5), rand(2, 3, 3, 3), rand(2)
        for bias in (b, None):
            y, cache = D.conv2d(x, W, bias, 1, 1)
            D.conv2d_grad(rand(*y.shape), cache)
        for pool in (D.maxpool2d, D.avgpool2d):
            y, cache = pool(x, 2)
            getattr(G, pool.__name__ + "_grad")(rand(*y.shape), cache)
        y, cache = D.adaptive_avgpool2d(x, 1)
        D.adaptive_avgpool2d_grad(rand(*y.shape), cache)
    finally:
        for n in names:
            setattr(K, n, saved[n])
    for n in names:
        assert logs[n], f"{n} was never launched"
        wrong = {s for s in logs[n] if s not in sigs[n]}
        assert not wrong, f"{n} launched with {wrong}, compiled for {sigs[n]}"


if __name__ == "__main__":
    simcheck.main(CHECKS, ERRORS)
