"""BatchNorm2d + ReLU fused by Sequential (``BatchNorm2d.fuses_with``) against the two layers
run one after the other (``modules.FUSE_BN_RELU = False``): the same outputs, every gradient
and the same running statistics, in training and in evaluation, float64 to 1e-12 and float32 to
float rounding; the fused forward leaves both layers' caches as their own forwards do, so the
backward (layer by layer) gives the unfused gradients."""
import numpy as np
import pytest

from mlcvlab import models, nn
from mlcvlab.nn import basis, kernels, modules
from mlcvlab.nn.module import Module

TOL = {np.float64: 1e-12, np.float32: 1e-5}


def _pool_net(rng):
    """conv -> BN -> ReLU -> max pool (reads ReLU's output and keeps its argmax) -> conv."""
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, rng=rng), nn.BatchNorm2d(5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(5, 4, 3, padding=1, rng=rng),
                         nn.BatchNorm2d(4, momentum=None), nn.ReLU())


def _relu_kept_net(rng):
    """BN -> ReLU -> conv: the conv keeps ReLU's output (ReLU's own cache) for its backward;
    a BN without affine and one that does not track running statistics."""
    return nn.Sequential(nn.BatchNorm2d(3, affine=False), nn.ReLU(),
                         nn.Conv2d(3, 4, 3, rng=rng), nn.BatchNorm2d(4, track_running_stats=False),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 7, 2, rng=rng))


NETS = {"pool": _pool_net, "relu_kept": _relu_kept_net}


def _run(make, dtype, fuse: bool, train: bool, monkeypatch, steps: int = 2):
    """Two forward (+ backward) passes; every output, input gradient, parameter gradient and
    buffer."""
    monkeypatch.setattr(modules, "FUSE_BN_RELU", fuse)
    net = make(0).astype(dtype)
    net.train(train)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((3, 3, 7, 9)) * 2 + 0.5).astype(dtype)
    out = []
    for _ in range(steps):
        y = net.forward(x)
        out.append(y)
        if train:
            dy = rng.standard_normal(y.shape).astype(dtype)
            out.append(net.backward(dy))
    out += [p.grad.copy() for p in net.parameters()]
    out += [np.asarray(b).copy() for _, b in net.named_buffers()]
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("net", sorted(NETS))
def test_fused_sequential_equals_the_layers_one_after_the_other(net, train, dtype, monkeypatch):
    fused = _run(NETS[net], dtype, True, train, monkeypatch)
    apart = _run(NETS[net], dtype, False, train, monkeypatch)
    assert len(fused) == len(apart)
    for a, b in zip(fused, apart):
        assert a.dtype == b.dtype and a.shape == b.shape
        scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
        np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype] * scale)


def _count_calls(monkeypatch, *names):
    calls = dict.fromkeys(names, 0)
    for name in names:
        fn = getattr(basis, name)

        def counted(*args, _fn=fn, _name=name, **kw):
            calls[_name] += 1
            return _fn(*args, **kw)
        monkeypatch.setattr(basis, name, counted)
    return calls


def test_the_fused_path_runs_for_every_bn_relu_pair_of_resnet20(monkeypatch):
    """ResNet-20 has 10 BatchNorm2d -> ReLU pairs (the stem and the first half of each of its
    9 blocks); the other 9 ReLUs follow a residual sum, fused with it (``add_relu``)."""
    net = models.resnet_cifar(20, rng=0)
    calls = _count_calls(monkeypatch, "batchnorm_relu", "relu", "add_relu", "batchnorm",
                         "relu_grad")
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = net.forward(x)
    net.backward(np.ones_like(y))
    assert calls == {"batchnorm_relu": 10, "relu": 0, "add_relu": 9, "batchnorm": 9,
                     "relu_grad": 19}


def test_the_fused_forward_leaves_each_layer_its_own_cache():
    """BatchNorm2d keeps x_hat and the statistics (not x), ReLU its output: what each layer's
    forward would keep, so relu.backward then bn.backward give the unfused gradients."""
    rng = np.random.default_rng(2)
    x, dy = rng.standard_normal((5, 4, 3, 6)), rng.standard_normal((5, 4, 3, 6))
    caches, grads = [], []
    for fuse in (True, False):
        modules.FUSE_BN_RELU = fuse
        try:
            bn, relu = nn.BatchNorm2d(4).astype(np.float64), nn.ReLU()
            bn.weight.data[...] = np.linspace(-1, 2, 4)
            bn.bias.data[...] = np.linspace(0.5, -0.5, 4)
            y = nn.Sequential(bn, relu).forward(x)
            assert relu._cache.value is y and bn._cache.x is None
            caches.append([relu._cache.value, *bn._cache[1:5]])
            grads.append([bn.backward(relu.backward(dy)), bn.weight.grad, bn.bias.grad])
        finally:
            modules.FUSE_BN_RELU = True
    for a, b in zip(caches[0] + grads[0], caches[1] + grads[1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


class _ShiftedReLU(nn.ReLU):
    def forward(self, x):
        return super().forward(x - 1.0)


class _MyBatchNorm(nn.BatchNorm2d):
    pass


def test_no_fusion_when_a_forward_is_patched_on_the_class(monkeypatch):
    seen = []
    original = nn.ReLU.forward

    def hooked(self, x):
        seen.append(x.shape)
        return original(self, x)
    monkeypatch.setattr(nn.ReLU, "forward", hooked)
    assert not nn.BatchNorm2d(3).fuses_with(nn.ReLU())
    nn.Sequential(nn.BatchNorm2d(3), nn.ReLU()).forward(np.ones((2, 3, 2, 2)))
    assert seen == [(2, 3, 2, 2)]


def test_only_plain_cpu_batchnorm2d_then_relu_fuse():
    assert nn.BatchNorm2d(3).fuses_with(nn.ReLU())
    assert not nn.BatchNorm2d(3).fuses_with(_ShiftedReLU())     # a subclass may compute else
    assert not _MyBatchNorm(3).fuses_with(nn.ReLU())
    assert not nn.BatchNorm2d(3).fuses_with(nn.LeakyReLU(0.1))
    assert not nn.BatchNorm1d(3).fuses_with(nn.ReLU())
    assert not nn.ReLU().fuses_with(nn.BatchNorm2d(3))
    on_gpu = nn.BatchNorm2d(3)
    object.__setattr__(on_gpu, "device", "cuda")               # its GPU twin runs unfused
    assert not on_gpu.fuses_with(nn.ReLU())
    assert not Module().fuses_with(nn.ReLU())
    traced = nn.ReLU()
    object.__setattr__(traced, "forward", traced.forward)     # a trace wraps it: run it as is
    assert not nn.BatchNorm2d(3).fuses_with(traced)
    logged = nn.ReLU()
    object.__setattr__(logged, "backward", logged.backward)   # the fused forward bypasses no
    assert nn.BatchNorm2d(3).fuses_with(logged)                # backward: still fused


def test_mixed_modes_run_unfused_and_agree(monkeypatch):
    """BN in training and ReLU in evaluation (set one by one): the pair runs as two layers."""
    def run(fuse):
        monkeypatch.setattr(modules, "FUSE_BN_RELU", fuse)
        bn, relu = nn.BatchNorm2d(2).astype(np.float64), nn.ReLU()
        relu.eval()
        y = nn.Sequential(bn, relu).forward(np.arange(36.0).reshape(2, 2, 3, 3) - 17)
        return y, relu._cache, bn.running_mean.copy()
    (y1, c1, m1), (y0, c0, m0) = run(True), run(False)
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(m1, m0)
    assert c1 is None and c0 is None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("numba", [True, False])
def test_basis_pair_functions_equal_their_parts(dtype, numba, monkeypatch):
    if not numba:
        monkeypatch.setattr(kernels, "_AVAILABLE", False)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 5, 6)).astype(dtype)
    gamma, beta = rng.standard_normal(3).astype(dtype), rng.standard_normal(3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, bn_cache, relu_cache = basis.batchnorm_relu(x, gamma, beta, 1e-5)
    z, ref_bn = basis.batchnorm(x, gamma, beta, 1e-5)
    ref_y, ref_relu = basis.relu(z)
    tol = dict(rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(y, ref_y, **tol)
    assert relu_cache.value is y
    for a, b in zip(bn_cache[1:5], ref_bn[1:5]):                  # x_hat, mean, var, inv_std
        np.testing.assert_allclose(a, b, **tol)
    got = basis.batchnorm_grad_fused(basis.relu_grad(dy, relu_cache), bn_cache)
    ref = basis.batchnorm_grad_fused(basis.relu_grad(dy, ref_relu), ref_bn)
    for a, b in zip(got, ref):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=10 * TOL[dtype], atol=10 * TOL[dtype])
    running_mean, running_var = rng.random(3).astype(dtype), rng.random(3).astype(dtype) + 0.5
    ev = basis.batchnorm_eval(x, gamma, beta, running_mean, running_var, 1e-5, then_relu=True)
    ref_ev = basis.relu(basis.batchnorm_eval(x, gamma, beta, running_mean, running_var, 1e-5))[0]
    np.testing.assert_array_equal(ev, ref_ev)


def test_fused_relu_keeps_nan_and_signed_zero_as_the_unfused_relu():
    """A nan input makes its channel's statistics and outputs nan, kept by the ReLU (as
    relu); an output of -0.0 stays -0.0 (relu's kernel keeps v unless v < 0)."""
    x = np.array([[[[1.0, np.nan], [-3.0, 2.0]], [[1.0, 2.0], [3.0, 4.0]]],
                  [[[0.5, -1.0], [4.0, -2.0]], [[1.0, 0.0], [3.0, 2.0]]]])
    gamma, beta = np.array([1.0, -1.0]), np.array([0.0, -0.0])   # x == mean: 0 * -1 - 0
    y = basis.batchnorm_relu(x, gamma, beta)[0]
    ref = basis.relu(basis.batchnorm(x, gamma, beta)[0])[0]
    np.testing.assert_array_equal(y, ref)
    assert np.isnan(y[:, 0]).all() and not np.isnan(y[:, 1]).any()
    assert np.signbit(y[:, 1][y[:, 1] == 0]).any()               # a -0.0 is there
    np.testing.assert_array_equal(np.signbit(y), np.signbit(ref))


@pytest.mark.parametrize("make, shape", [
    (lambda: models.resnet_cifar(20, rng=0), (3, 3, 32, 32)),
    (lambda: models.lenet5(batchnorm=True, rng=0), (3, 1, 28, 28)),
    (lambda: models.minigooglenet(rng=0), (3, 3, 32, 32))],
    ids=["resnet20", "lenet5_batchnorm", "minigooglenet"])
def test_model_training_step_equals_unfused_in_float64(make, shape, monkeypatch):
    def step(fuse):
        monkeypatch.setattr(modules, "FUSE_BN_RELU", fuse)
        net = make().astype(np.float64)
        x = np.random.default_rng(4).standard_normal(shape)
        loss = nn.CrossEntropyLoss()
        out = [loss(net.forward(x), np.array([0, 3, 7]))]
        out.append(net.backward(loss.backward()))
        out += [p.grad.copy() for p in net.parameters()]
        out += [np.asarray(b, dtype=np.float64).copy() for _, b in net.named_buffers()]
        net.eval()
        out.append(net.forward(x))
        return out
    for a, b in zip(step(True), step(False)):
        scale = max(1.0, float(np.max(np.abs(b))))
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * scale)
