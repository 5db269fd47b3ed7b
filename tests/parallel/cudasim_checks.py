"""Every CUDA kernel against NumPy, and --dist cuda training steps against the CPU step.

Run by test_cudasim.py as ``NUMBA_ENABLE_CUDASIM=1 python cudasim_checks.py OUT.json``
(the simulator must be on before numba is imported; ``NUMBA_ENABLE_CUDASIM=0`` runs the
same checks on a GPU, as benchmarks/gpu_check.sh does). Writes {check: error or "ok"};
names after OUT.json run only those checks.
Shapes are tiny and never multiples of the tile size, so partial tiles are covered.
"""
import json
import os
import sys
import traceback

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

from mlcvlab.nn import basis  # noqa: E402
from mlcvlab.parallel import cuda_kernels as K  # noqa: E402

R = np.random.default_rng(0)
F = np.float32
CHECKS = {}


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


def rand(*shape):
    return R.normal(size=shape).astype(F)


def close(got, want, tol=1e-5):
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def run1(kernel, n, *args):
    kernel[K.grid1(n)](*args)


@check
def matmul():
    for ta in (False, True):
        for tb in (False, True):
            a, b = rand(5, 7), rand(7, 9)
            A = a.T.copy() if ta else a
            B = b.T.copy() if tb else b
            c = cuda.device_array((5, 9), dtype=F)
            K.matmul_kernel[K.grid2(5, 9)](cuda.to_device(A), cuda.to_device(B), c, ta, tb)
            close(c.copy_to_host(), a @ b)


@check
def add_bias_and_colsum():
    y, b = rand(6, 5), rand(5)
    d = cuda.to_device(y)
    K.add_bias_kernel[K.grid2(6, 5)](d, cuda.to_device(b))
    close(d.copy_to_host(), y + b)
    db = cuda.device_array(5, dtype=F)
    run1(K.colsum_kernel, 5, cuda.to_device(y), db)
    close(db.copy_to_host(), y.sum(axis=0))


@check
def activations():
    x, dy = rand(37), rand(37)
    out = cuda.device_array(37, dtype=F)
    run1(K.relu_kernel, 37, cuda.to_device(x), out)
    close(out.copy_to_host(), basis.relu(x)[0])
    run1(K.relu_grad_kernel, 37, cuda.to_device(x), cuda.to_device(dy), out)
    close(out.copy_to_host(), basis.relu_grad(dy, basis.relu(x)[1]))
    run1(K.sigmoid_kernel, 37, cuda.to_device(x), out)
    s, cache = basis.sigmoid(x)
    close(out.copy_to_host(), s)
    run1(K.sigmoid_grad_kernel, 37, cuda.to_device(s), cuda.to_device(dy), out)
    close(out.copy_to_host(), basis.sigmoid_grad(dy, cache))


@check
def dropout_mask():
    x, dy = rand(6, 7), rand(6, 7)
    keep = R.random((6, 7)) >= 0.4
    want, cache = basis.dropout(x, 0.4, mask=keep)
    m = cache.mask.astype(F)
    out = cuda.device_array(42, dtype=F)
    run1(K.mask_kernel, 42, cuda.to_device(x.ravel()), cuda.to_device(m.ravel()), out)
    close(out.copy_to_host().reshape(6, 7), want)
    run1(K.mask_kernel, 42, cuda.to_device(dy.ravel()), cuda.to_device(m.ravel()), out)
    close(out.copy_to_host().reshape(6, 7), basis.dropout_grad(dy, cache))


@check
def philox_mask_kernel():
    """The device mask equals mlcvlab.nn.philox.dropout_mask (the CPU path) element for
    element, at sizes that are not multiples of the 4-element block or the thread block,
    for several p, seeds, streams and steps."""
    from mlcvlab.nn import philox
    for size in (1, 2, 3, 35, 4 * K.THREADS + 1, 4 * K.THREADS + 7):
        for p, seed, stream, step in ((0.5, 7, 0, 0), (0.2, 2**63 + 5, 3, 2**33 + 1),
                                      (1.0, 1, 1, 1), (0.0, 9, 0, 4)):
            want = philox.dropout_mask((size,), p, seed, stream, step, np.float32)
            words = philox.key_words(philox.DropoutKey(seed, stream, step))
            out = cuda.device_array(size, dtype=F)
            run1(K.dropout_mask_kernel, (size + 3) // 4, out,
                 np.uint32(philox.keep_threshold(p)), F(philox.mask_scale(p)), *words)
            got = out.copy_to_host()
            assert np.array_equal(got, want), (size, p, seed, stream, step, got, want)


@check
def batchnorm():
    x, g, b, dy = rand(9, 5), rand(5), rand(5), rand(9, 5)
    want, cache = basis.batchnorm(x, g, b, 1e-5)
    y, xhat = cuda.device_array((9, 5), F), cuda.device_array((9, 5), F)
    st = [cuda.device_array(5, F) for _ in range(3)]
    run1(K.bn_forward_kernel, 5, cuda.to_device(x), cuda.to_device(g), cuda.to_device(b), 1e-5,
         y, xhat, *st)
    close(y.copy_to_host(), want)
    close(st[0].copy_to_host(), cache.mean)
    close(st[1].copy_to_host(), cache.var)
    dx, dg, dbeta = cuda.device_array((9, 5), F), cuda.device_array(5, F), cuda.device_array(5, F)
    run1(K.bn_backward_kernel, 5, cuda.to_device(dy), xhat, cuda.to_device(g), st[2], dx, dg, dbeta)
    wdx, wdg, wdb = basis.batchnorm_grad(dy, cache)
    close(dx.copy_to_host(), wdx, 1e-4)
    close(dg.copy_to_host(), wdg)
    close(dbeta.copy_to_host(), wdb)


@check
def softmax_and_head_gradients():
    z = rand(6, 4)
    p = cuda.device_array((6, 4), F)
    run1(K.softmax_kernel, 6, cuda.to_device(z), p)
    close(p.copy_to_host(), basis.softmax(z)[0])
    y = R.integers(0, 4, 6)
    dz = cuda.device_array((6, 4), F)
    K.prob_minus_target_kernel[K.grid2(6, 4)](p, cuda.to_device(y), dz)
    close(dz.copy_to_host(), (basis.softmax(z)[0] - np.eye(4, dtype=F)[y]) / 6)
    q, t = R.random((6, 1)).astype(F), R.integers(0, 2, 6).astype(F)
    dz = cuda.device_array((6, 1), F)
    K.prob_minus_target_kernel[K.grid2(6, 1)](cuda.to_device(q), cuda.to_device(t), dz)
    close(dz.copy_to_host(), (q - t[:, None]) / 6)


@check
def reduce_mean():
    g, w = rand(3, 41), np.array([1.0, 0.5, 1.5], F)
    d = cuda.to_device(g)
    run1(K.reduce_mean_kernel, 41, d, cuda.to_device(w))
    close(d.copy_to_host(), np.tile((g * w[:, None]).mean(axis=0), (3, 1)))


@check
def sgd_update():
    from mlcvlab.nn import Parameter
    from mlcvlab.optim import SGD
    for momentum, nesterov in ((0.0, False), (0.9, False), (0.9, True)):
        p = Parameter(rand(33))
        opt = SGD([p], lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=0.01)
        w, buf = cuda.to_device(p.data.copy()), cuda.to_device(np.zeros(33, F))
        for _ in range(3):
            p.grad[...] = rand(33)
            run1(K.sgd_update_kernel, 33, w, cuda.to_device(p.grad), buf, F(0.1), F(momentum),
                 F(0.01), nesterov)
            opt.step()
        close(w.copy_to_host(), p.data)


def _train_step_equal(build, steps=1, optimizer="sgd", workers=2):
    from mlcvlab.optim import SGD, Adam
    from mlcvlab.parallel import make_step_fn
    from mlcvlab.train import Trainer
    from mlcvlab.train.cli import loss_for
    g = np.random.default_rng(1)
    X, y = g.normal(size=(12, 10)).astype(F), g.integers(0, 3, 12)
    states, losses = [], []
    for dist in ("local", "cuda"):
        m = build()
        opt = (SGD(m.parameters(), lr=0.1, momentum=0.9) if optimizer == "sgd"
               else Adam(m.parameters(), lr=0.01))
        tr = Trainer(m, loss_for(m), opt, step_fn=make_step_fn(dist, workers, m, seed=5))
        for _ in range(steps):
            loss, t = tr.train_step(X, y)
        losses.append(loss)
        states.append(m.state_dict())
    assert abs(losses[0] - losses[1]) < 1e-5, losses
    for name in states[0]:
        close(states[1][name], states[0][name])
    assert not np.array_equal(states[1]["layer1.1.weight" if "layer1.1.weight" in states[1]
                                        else "1.weight"], build().state_dict().get(
        "layer1.1.weight", build().state_dict().get("1.weight")))


@check
def nn4_train_step_equals_cpu():
    from mlcvlab.models import NN4
    _train_step_equal(lambda: NN4(10, hidden=(8, 7, 6), n_classes=3, p_input=0.2, p_hidden=0.5,
                                  rng=0))


@check
def mlp_train_step_equals_cpu():
    from mlcvlab.models import mlp
    # no BN here: a bias followed by BN has a zero gradient, which Adam's g / sqrt(v)
    # turns from float noise into +-lr; the BN path is covered by NN4 with SGD
    _train_step_equal(lambda: mlp([10, 9, 3], p_hidden=0.3, rng=0), optimizer="adam")


def _describe(arg) -> str:
    """The numba type a launch argument gets: float32 arrays and np.float32 scalars keep a
    kernel float32; a Python float (float64) or a float64 array does not."""
    if isinstance(arg, (bool, np.bool_)):
        return "bool"
    if isinstance(arg, (int, np.integer)):
        return "int"
    if isinstance(arg, float):
        return "float64 (a Python float)"
    if isinstance(arg, np.floating):
        return str(arg.dtype)
    return f"{np.dtype(arg.dtype)} array"


class _Recorder:
    """Stands in for a kernel in module K and logs each launch's arguments."""

    def __init__(self, name, kern, log):
        self.name, self.kern, self.log = name, kern, log

    def __getitem__(self, config):
        launch = self.kern[config]

        def call(*args):
            self.log.setdefault(self.name, []).append(
                [(_describe(a), tuple(getattr(a, "shape", ()))) for a in args])
            return launch(*args)
        return call


def _recording(fn):
    """Runs fn() with every kernel of K recorded; returns {kernel: [launch args]}."""
    log = {}
    names = [n for n in dir(K) if n.endswith("_kernel")]
    saved = {n: getattr(K, n) for n in names}
    try:
        for n in names:
            setattr(K, n, _Recorder(n, saved[n], log))
        fn()
    finally:
        for n in names:
            setattr(K, n, saved[n])
    return log


def _nn4():
    from mlcvlab.models import NN4
    return NN4(10, hidden=(8, 7, 6), n_classes=3, p_input=0.2, p_hidden=0.5, rng=0)


@check
def launch_arguments_are_float32():
    """Every kernel launch of nn4/mlp --dist cuda steps (BN, dropout, sigmoid and softmax
    heads, fused SGD and host Adam) passes float32 arrays (int64 labels) and float32
    scalars, the types tests/parallel/ptx_checks.py compiles the kernels for."""
    from mlcvlab.models import mlp

    def steps():
        _train_step_equal(_nn4)
        _train_step_equal(lambda: mlp([10, 9, 3], p_hidden=0.3, rng=0), optimizer="adam")
        _train_step_equal(lambda: mlp([10, 9, 3], activation="sigmoid", rng=0))
    log = _recording(steps)
    allowed = {"float32 array", "float32", "bool", "int", "int64 array"}
    bad = {n: {tuple(d for d, _ in args) for args in calls} for n, calls in log.items()}
    bad = {n: sigs for n, sigs in bad.items() if any(d not in allowed for sig in sigs for d in sig)}
    assert not bad, f"launches with non-float32 arguments: {bad}"
    missing = {n for n in dir(K) if n.endswith("_kernel")} - set(log)
    assert not missing, f"kernels never launched by these steps: {missing}"


@check
def first_layer_skips_input_gradient():
    """As the CPU path after set_input_grad(False): no dL/d(data). NN4 (4 Linear, input
    Dropout), 2 workers, one step: per worker 4 forward + 4 dW + 3 dx GEMMs (not 4 dx)
    and 4 forward + 3 backward dropout masks (the input Dropout is not run backward)."""
    log = _recording(lambda: _train_step_equal(_nn4))
    matmuls, masks = log["matmul_kernel"], log["mask_kernel"]
    assert len(matmuls) == 2 * (4 + 4 + 3), len(matmuls)
    assert len(masks) == 2 * (4 + 3), len(masks)
    # no GEMM writes an (n_k, 10) input gradient: every output has 8, 7, 6 or 3 columns
    # (or is a weight gradient, whose second axis is the layer's fan-in)
    outs = [args[2][1] for args in matmuls]
    assert all(shape[1] != 10 or shape[0] == 8 for shape in outs), outs


@check
def one_worker_equals_local_step():
    """--dist cuda --workers 1 draws the dropout masks of the data-parallel step with K = 1
    (the same counter-based keys), so it equals make_step_fn("local", 1) over 3 steps."""
    _train_step_equal(_nn4, steps=3, workers=1)


@check
def three_paths_draw_the_same_masks():
    """The plain Trainer step (what `mlcvlab train --dist local --workers 1` runs),
    DataParallelStep with one worker and --dist cuda --workers 1 draw the same dropout
    masks: equal losses at each of 3 steps of an MLP with dropout (p_input 0.2, p_hidden
    0.5), equal weights after them, and every Dropout at step 3."""
    from mlcvlab.models import mlp
    from mlcvlab.nn import Dropout
    from mlcvlab.optim import SGD
    from mlcvlab.parallel import make_step_fn
    from mlcvlab.train import Trainer
    from mlcvlab.train.cli import loss_for
    g = np.random.default_rng(2)
    X, y = g.normal(size=(13, 10)).astype(F), g.integers(0, 3, 13)
    curves, states = {}, {}
    for path in ("trainer", "local", "cuda"):
        m = mlp([10, 9, 7, 3], p_input=0.2, p_hidden=0.5, rng=4)
        step_fn = None if path == "trainer" else make_step_fn(path, 1, m)
        tr = Trainer(m, loss_for(m), SGD(m.parameters(), lr=0.1), step_fn=step_fn)
        curves[path] = [tr.train_step(X, y)[0] for _ in range(3)]
        states[path] = m.state_dict()
        assert all(int(d.mask_step) == 3 for d in m.modules() if isinstance(d, Dropout)), path
    assert curves["trainer"] == curves["local"], curves
    close(np.array(curves["cuda"]), np.array(curves["trainer"]))
    plain = mlp([10, 9, 7, 3], rng=4)           # no dropout: other losses from step 1 on
    tr = Trainer(plain, loss_for(plain), SGD(plain.parameters(), lr=0.1))
    assert abs(tr.train_step(X, y)[0] - curves["trainer"][0]) > 1e-3, "dropout had no effect"
    for name in states["trainer"]:
        np.testing.assert_array_equal(states["local"][name], states["trainer"][name])
        close(states["cuda"][name], states["trainer"][name])


@check
def rejects_float64():
    from mlcvlab.models import mlp
    from mlcvlab.parallel import make_step_fn
    try:
        make_step_fn("cuda", 2, mlp([4, 3], rng=0).astype(np.float64))
    except TypeError as err:
        assert "float32" in str(err), err
    else:
        raise AssertionError("a float64 model was accepted by --dist cuda")


if __name__ == "__main__":
    results = {}
    chosen = sys.argv[2:] or list(CHECKS)      # benchmarks/gpu_check.py's dry run picks some
    unknown = [c for c in chosen if c not in CHECKS]
    if unknown:
        sys.exit(f"cudasim_checks.py: unknown checks {unknown}; choose from {list(CHECKS)}")
    for name, fn in ((c, CHECKS[c]) for c in chosen):
        try:
            fn()
            results[name] = "ok"
        except Exception:  # noqa: BLE001 - report every failure to the test
            results[name] = traceback.format_exc()
    with open(sys.argv[1], "w") as f:
        json.dump(results, f)
