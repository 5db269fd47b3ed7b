"""In evaluation, Sequential folds a BatchNorm2d into the Conv2d before it (W·scale,
b·scale + shift) and runs a ReLU after the pair in the convolution's output pass
(``Conv2d.fuses_with`` / ``fuses_with_two``, ``modules.FUSE_CONV_BN_EVAL``): the same outputs as
the layers one after the other, float64 to 1e-12 and float32 to float rounding; never in
training, nor for a batch norm that normalizes with its batch's statistics, nor for subclasses
or replaced forwards."""
import numpy as np
import pytest

from mlcvlab import models, nn
from mlcvlab.nn import basis, modules

TOL = {np.float64: 1e-12, np.float32: 1e-5}


def _net(rng):
    """conv (bias) -> BN -> ReLU (a triple), max pool, grouped conv -> BN without affine (a
    pair), conv -> BN that does not track running statistics -> ReLU (not folded)."""
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, rng=rng), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(6, 4, 3, padding=1, groups=2, bias=False,
                                                    rng=rng),
                         nn.BatchNorm2d(4, affine=False),
                         nn.Conv2d(4, 4, 1, rng=rng), nn.BatchNorm2d(4, track_running_stats=False),
                         nn.ReLU())


def _trained(make, dtype):
    """A net whose running statistics and batch-norm parameters are not the defaults."""
    net = make(0).astype(dtype)
    rng = np.random.default_rng(3)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d) and m.affine:
            m.weight.data[...] = rng.uniform(0.5, 2.0, m.num_features)
            m.bias.data[...] = rng.uniform(-1.0, 1.0, m.num_features)
    net.train()
    for _ in range(3):
        net.forward((rng.standard_normal((4, 3, 8, 10)) * 2 + 0.5).astype(dtype))
    return net.eval()


def _eval(net, x, fold: bool, monkeypatch):
    monkeypatch.setattr(modules, "FUSE_CONV_BN_EVAL", fold)
    return net.forward(x)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_folded_evaluation_equals_the_layers_one_after_the_other(dtype, monkeypatch):
    net = _trained(_net, dtype)
    x = (np.random.default_rng(4).standard_normal((3, 3, 8, 10)) * 2 + 0.5).astype(dtype)
    folded, apart = _eval(net, x, True, monkeypatch), _eval(net, x, False, monkeypatch)
    assert folded.dtype == apart.dtype == dtype and folded.shape == apart.shape
    np.testing.assert_allclose(folded, apart, rtol=TOL[dtype],
                               atol=TOL[dtype] * np.abs(apart).max())


def _count(monkeypatch, name):
    calls = [0]
    fn = getattr(basis, name)

    def counted(*args, **kw):
        calls[0] += 1
        return fn(*args, **kw)
    monkeypatch.setattr(basis, name, counted)
    return calls


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_batch_norm_of_resnet20_folds_in_evaluation(dtype, monkeypatch):
    """All 19 of ResNet-20's batch norms follow a convolution: none runs on its own."""
    net = _trained(lambda rng: models.resnet_cifar(20, rng=rng), dtype)
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 10)).astype(dtype)
    calls = _count(monkeypatch, "batchnorm_eval")
    folded = _eval(net, x, True, monkeypatch)
    assert calls[0] == 0
    apart = _eval(net, x, False, monkeypatch)
    assert calls[0] == 19
    np.testing.assert_allclose(folded, apart, rtol=TOL[dtype],
                               atol=TOL[dtype] * np.abs(apart).max())


def test_no_folding_in_training_or_mixed_modes_or_with_batch_statistics():
    conv, bn, relu = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()
    assert not conv.fuses_with(bn) and not conv.fuses_with_two(bn, relu)    # training
    conv.eval(), bn.eval(), relu.eval()
    assert conv.fuses_with(bn) and conv.fuses_with_two(bn, relu)
    bn.train()
    assert not conv.fuses_with(bn) and not conv.fuses_with_two(bn, relu)
    bn.eval(), relu.train()
    assert conv.fuses_with(bn) and not conv.fuses_with_two(bn, relu)
    free = nn.BatchNorm2d(4, track_running_stats=False).eval()
    assert not conv.fuses_with(free)


class _MyBatchNorm(nn.BatchNorm2d):
    pass


def test_no_folding_for_subclasses_or_replaced_forwards(monkeypatch):
    conv = nn.Conv2d(3, 4, 3).eval()
    assert not conv.fuses_with(_MyBatchNorm(4).eval())
    bn = nn.BatchNorm2d(4).eval()
    bn.forward = lambda x: x                         # a trace, as the memory lab installs
    assert not conv.fuses_with(bn)
    seen = []
    original = nn.BatchNorm2d.forward
    monkeypatch.setattr(nn.BatchNorm2d, "forward",
                        lambda self, x: seen.append(1) or original(self, x))
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    net.forward(np.ones((1, 3, 5, 5), np.float32))
    assert seen == [1]


def test_a_batch_norm_of_other_width_still_fails_with_its_own_message():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(5), nn.ReLU()).eval()
    with pytest.raises(ValueError, match="BatchNorm2d"):
        net.forward(np.ones((1, 3, 5, 5), np.float32))
