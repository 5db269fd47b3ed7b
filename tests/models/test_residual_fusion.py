"""A Residual and the ReLU after it fused by Sequential (``Residual.fuses_with``: the sum and the
ReLU in one pass, ``basis.add_relu``) against the two layers one after the other
(``blocks.FUSE_RESIDUAL_RELU = False``): the same values bit for bit, since the fused pass adds
and clamps exactly as ``a + b`` then ``relu`` do."""
import numpy as np
import pytest

from mlcvlab import nn
from mlcvlab.models import blocks
from mlcvlab.models.blocks import Residual
from mlcvlab.models.resnet import basic_block
from mlcvlab.nn import basis


def _outputs(fuse: bool, train: bool, dtype, monkeypatch):
    """Two forward (+ backward) passes of three basic blocks (an identity, a zero-padding and
    a projection shortcut): outputs, input gradients, parameter gradients and buffers."""
    monkeypatch.setattr(blocks, "FUSE_RESIDUAL_RELU", fuse)
    net = nn.Sequential(basic_block(3, 3, 1, "A", rng=0), basic_block(3, 4, 2, "A", rng=1),
                        basic_block(4, 6, 2, "B", rng=2)).astype(dtype).train(train)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, 9, 7)).astype(dtype)
    out = []
    for _ in range(2):
        y = net.forward(x)
        out.append(y)
        if train:
            out.append(net.backward(rng.standard_normal(y.shape).astype(dtype)))
    out += [p.grad.copy() for p in net.parameters()]
    out += [np.asarray(b).copy() for _, b in net.named_buffers()]
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("train", [True, False])
def test_fused_residual_relu_equals_the_layers_apart(train, dtype, monkeypatch):
    fused = _outputs(True, train, dtype, monkeypatch)
    apart = _outputs(False, train, dtype, monkeypatch)
    assert len(fused) == len(apart)
    for a, b in zip(fused, apart):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_add_relu_is_relu_of_the_sum_bit_for_bit():
    """nan stays nan, -0.0 and the infinities as relu(a + b) gives them; one thread's slice
    and a split over threads (a large array) alike; the cache is the output."""
    rng = np.random.default_rng(3)
    specials = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-45, -1e-45], np.float32)
    for shape in [(7,), (3, 5, 4), (64, 16, 32, 32)]:
        a = rng.standard_normal(shape).astype(np.float32)
        b = rng.standard_normal(shape).astype(np.float32)
        a.reshape(-1)[:7], b.reshape(-1)[:7] = specials, specials[::-1]
        y, cache = basis.add_relu(a, b)
        want, _ = basis.relu(a + b)
        np.testing.assert_array_equal(y, want)
        assert np.array_equal(np.signbit(y), np.signbit(want))
        assert cache.value is y


def test_add_relu_takes_views_and_mixed_dtypes_as_relu_of_the_sum_and_names_a_shape_mismatch():
    a = np.arange(-12.0, 12.0).reshape(4, 6)
    y, _ = basis.add_relu(a[:, ::2], a[:, 1::2])
    np.testing.assert_array_equal(y, np.maximum(a[:, ::2] + a[:, 1::2], 0))
    b = (-a[::-1]).astype(np.float32) + 0.5
    y, _ = basis.add_relu(a, b)                     # float64 + float32: NumPy's promotion
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, basis.relu(a + b)[0])
    with pytest.raises(ValueError, match=r"add_relu: expected a and b of one shape, got "
                                         r"\(4, 6\) and \(4, 3\)"):
        basis.add_relu(a, a[:, :3])


def test_the_fused_forward_leaves_the_relu_its_own_cache(monkeypatch):
    """In training the ReLU keeps its output (its backward reads it); in evaluation nothing."""
    body = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, rng=0), nn.BatchNorm2d(2))
    res, relu = Residual(body), nn.ReLU()
    net = nn.Sequential(res, relu)
    x = np.random.default_rng(4).standard_normal((2, 2, 4, 4)).astype(np.float32)
    y = net.forward(x)
    assert relu._cache.value is y and (y >= 0).all()
    net.eval()
    net.forward(x)
    assert relu._cache is None


class _ShiftedReLU(nn.ReLU):
    def forward(self, x):
        return super().forward(x - 1.0)


class _MyResidual(Residual):
    pass


def test_only_a_plain_cpu_residual_then_a_plain_relu_fuse(monkeypatch):
    body = nn.Identity()
    assert Residual(body).fuses_with(nn.ReLU())
    assert not Residual(body).fuses_with(_ShiftedReLU())         # a subclass may compute else
    assert not _MyResidual(body).fuses_with(nn.ReLU())
    assert not Residual(body).fuses_with(nn.LeakyReLU(0.1))
    traced = Residual(body)
    traced.forward = lambda x: Residual.forward(traced, x)      # a trace on the instance
    assert not traced.fuses_with(nn.ReLU())
    monkeypatch.setattr(blocks, "FUSE_RESIDUAL_RELU", False)
    assert not Residual(body).fuses_with(nn.ReLU())


def test_a_shape_mismatch_is_still_named_when_fused():
    net = nn.Sequential(Residual(nn.Conv2d(2, 3, 1, rng=0)), nn.ReLU())
    with pytest.raises(ValueError, match=r"Residual: the body gives shape .* shortcut gives"):
        net.forward(np.zeros((1, 2, 3, 3), np.float32))
