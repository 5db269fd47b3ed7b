"""Conv2d + ReLU fused by Sequential (``Conv2d.fuses_with``: the ReLU applied in the pass that
writes the convolution's output) against the two layers one after the other
(``modules.FUSE_CONV_RELU = False``): bit for bit the same outputs, gradients and caches, on
every path of ``conv.conv2d`` (row-padded and plain im2col, Winograd, groups, dilation, a
padding mode), with and without numba, in training and in evaluation."""
import numpy as np
import pytest

from mlcvlab import models, nn
from mlcvlab.nn import basis, conv, kernels, modules


def _paths_net(rng):
    """A conv on each path of conv.conv2d, each followed by a ReLU: row-padded stride 1
    (5x5, padding 2), plain im2col (stride 2), Winograd (3x3, 16 channels: forced below),
    grouped, dilated with reflect padding, and one without a bias."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 5, padding=2, rng=rng), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, rng=rng), nn.ReLU(),
        nn.Conv2d(16, 8, 3, stride=2, padding=1, rng=rng), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2, rng=rng), nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=2, dilation=2, padding_mode="reflect", rng=rng), nn.ReLU(),
        nn.Conv2d(6, 5, 1, bias=False, rng=rng), nn.ReLU())


def _run(make, dtype, fuse: bool, train: bool, monkeypatch, shape=(3, 3, 9, 11)):
    monkeypatch.setattr(modules, "FUSE_CONV_RELU", fuse)
    net = make(0).astype(dtype)
    net.train(train)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    out = []
    for _ in range(2):
        y = net.forward(x)
        out.append(y)
        if train:
            out.append(net.backward(rng.standard_normal(y.shape).astype(dtype)))
            out += [layer._cache.value for layer in net if isinstance(layer, nn.ReLU)]
    out += [p.grad.copy() for p in net.parameters()]
    return out


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("algorithm", ["winograd", "winograd4"])
def test_fused_conv_relu_equals_the_layers_apart_bit_for_bit(train, dtype, numba, algorithm,
                                                             monkeypatch):
    """Every conv path, the 3x3 stride-1 ones as Winograd F(2x2) or F(4x4) (the ReLU in the
    output transform's pass)."""
    if not numba:
        monkeypatch.setattr(kernels, "_AVAILABLE", False)
    monkeypatch.setattr(conv, "_algorithm", algorithm)
    fused = _run(_paths_net, dtype, True, train, monkeypatch)
    apart = _run(_paths_net, dtype, False, train, monkeypatch)
    assert len(fused) == len(apart)
    for a, b in zip(fused, apart):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b))


def test_lenet5_step_fuses_both_conv_relu_pairs_and_equals_unfused(monkeypatch):
    """LeNet-5's two conv -> ReLU pairs run fused (basis.relu only for the two FC ReLUs);
    a float32 training step and an evaluation equal the unfused ones bit for bit."""
    calls = {"relu": 0}
    relu = basis.relu

    def counted(x):
        calls["relu"] += 1
        return relu(x)
    monkeypatch.setattr(basis, "relu", counted)

    def step(fuse):
        monkeypatch.setattr(modules, "FUSE_CONV_RELU", fuse)
        net = models.lenet5(rng=0)
        x = np.random.default_rng(2).standard_normal((5, 1, 28, 28)).astype(np.float32)
        loss = nn.CrossEntropyLoss()
        calls["relu"] = 0
        out = [np.float32(loss(net.forward(x), np.array([0, 3, 7, 1, 9])))]
        seen = calls["relu"]
        net.backward(loss.backward())
        out += [p.grad.copy() for p in net.parameters()]
        net.eval()
        out.append(net.forward(x))
        return out, seen
    (fused, relus_fused), (apart, relus_apart) = step(True), step(False)
    assert (relus_fused, relus_apart) == (2, 4)
    for a, b in zip(fused, apart):
        np.testing.assert_array_equal(a, b)


def test_the_fused_forward_leaves_each_layer_its_own_cache():
    """The conv keeps its input (as ever), the ReLU its output (which is the fused output)."""
    c, r = nn.Conv2d(2, 3, 3, padding=1, rng=0).astype(np.float64), nn.ReLU()
    x = np.random.default_rng(3).standard_normal((2, 2, 5, 4))
    y = nn.Sequential(c, r).forward(x)
    assert r._cache.value is y and c._cache.x is x
    assert (y >= 0).all() and (y == 0).any()
    c.eval(), r.eval()
    nn.Sequential(c, r).forward(x)
    assert c._cache is None and r._cache is None


def test_fused_relu_keeps_nan_as_the_unfused_relu(monkeypatch):
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = np.nan
    out = []
    for fuse in (True, False):
        monkeypatch.setattr(modules, "FUSE_CONV_RELU", fuse)
        c = nn.Conv2d(1, 2, 3, padding=1, rng=0).astype(np.float64)
        c.bias.data[...] = [-1.0, 1.0]
        out.append(nn.Sequential(c, nn.ReLU()).forward(x))
    np.testing.assert_array_equal(out[0], out[1])
    assert np.isnan(out[0]).sum() == 2 * 9 and (out[0][0, 0][~np.isnan(out[0][0, 0])] == 0).all()


class _ShiftedReLU(nn.ReLU):
    def forward(self, x):
        return super().forward(x - 1.0)


class _MyConv(nn.Conv2d):
    pass


def test_only_plain_cpu_conv2d_then_relu_fuse(monkeypatch):
    assert nn.Conv2d(1, 2, 3).fuses_with(nn.ReLU())
    assert not nn.Conv2d(1, 2, 3).fuses_with(_ShiftedReLU())
    assert not _MyConv(1, 2, 3).fuses_with(nn.ReLU())
    assert not nn.Conv2d(1, 2, 3).fuses_with(nn.LeakyReLU(0.1))
    assert not nn.Conv2d(1, 2, 3).fuses_with(nn.BatchNorm2d(2))
    on_gpu = nn.Conv2d(1, 2, 3)
    object.__setattr__(on_gpu, "device", "cuda")
    assert not on_gpu.fuses_with(nn.ReLU())
    traced = nn.Conv2d(1, 2, 3)
    object.__setattr__(traced, "forward", traced.forward)    # a trace wraps it: run as is
    assert not traced.fuses_with(nn.ReLU())
    monkeypatch.setattr(modules, "FUSE_CONV_RELU", False)
    assert not nn.Conv2d(1, 2, 3).fuses_with(nn.ReLU())


def test_unbatched_and_mixed_mode_inputs_run_unfused_and_agree():
    c, r = nn.Conv2d(2, 3, 3, rng=0).astype(np.float64), nn.ReLU()
    x = np.random.default_rng(4).standard_normal((2, 5, 5))
    y = nn.Sequential(c, r).forward(x)                         # (C, H, W): one sample
    np.testing.assert_array_equal(y, np.maximum(c.forward(x), 0))
    r.eval()
    y = nn.Sequential(c, r).forward(x[None])                   # conv trains, ReLU evaluates
    assert r._cache is None and c._cache is not None
    np.testing.assert_array_equal(y, np.maximum(c.forward(x[None]), 0))
