"""The CNN models: shapes, parameter counts, the residual/concat blocks' backward, registry."""
import numpy as np
import pytest

from mlcvlab.models import get_model, lenet5, minigooglenet, resnet18, resnet_cifar
from mlcvlab.models.blocks import Concat, Residual, ZeroPadShortcut, conv_bn_relu
from mlcvlab.models.googlenet import downsample_module, inception_module
from mlcvlab.models.resnet import basic_block
from mlcvlab.nn import BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Linear, MaxPool2d, ReLU
from mlcvlab.testing import gradcheck_module


def _x(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize("build, x_shape, n_out", [
    (lambda: lenet5(rng=0), (3, 1, 28, 28), 10),
    (lambda: lenet5(batchnorm=True, p_input=0.2, p_hidden=0.5, num_classes=7, rng=0),
     (3, 1, 28, 28), 7),
    (lambda: resnet_cifar(20, rng=0), (2, 3, 32, 32), 10),
    (lambda: resnet_cifar(20, num_classes=100, in_channels=1, rng=0), (2, 1, 28, 28), 100),
    (lambda: resnet18(rng=0), (2, 3, 32, 32), 10),
    (lambda: minigooglenet(rng=0), (2, 3, 32, 32), 10),
    (lambda: minigooglenet(num_classes=5, in_channels=1, p_dropout=0.5, rng=0),
     (2, 1, 28, 28), 5),
], ids=["lenet5", "lenet5-bn-dropout", "resnet20", "resnet20-1ch", "resnet18", "minigooglenet",
        "minigooglenet-fashion"])
def test_forward_and_backward_shapes_and_dtype(build, x_shape, n_out):
    model = build()
    x = _x(x_shape)
    y = model(x)
    assert y.shape == (x_shape[0], n_out) and y.dtype == np.float32
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape and dx.dtype == np.float32
    model.eval()
    assert model(x).shape == y.shape


def test_minigooglenet_feature_map_sizes():
    """Downsample modules take 32 -> 15 -> 7 (reference) and 28 -> 13 -> 6 (Fashion-MNIST)."""
    for size, expected in ((32, (15, 7)), (28, (13, 6))):
        model = minigooglenet(in_channels=1, rng=0)
        x = _x((2, 1, size, size))
        seen = []
        for layer in model:
            x = layer(x)
            if isinstance(layer, Concat) and isinstance(list(layer.children())[1], MaxPool2d):
                seen.append(x.shape[2])
        assert tuple(seen) == expected
        assert x.shape == (2, 10)


def test_lenet5_layer_order_with_batchnorm_and_dropout():
    kinds = [type(m) for m in lenet5(batchnorm=True, p_input=0.2, p_hidden=0.5, rng=0)]
    names = [k.__name__ for k in kinds]
    assert names == [
        "Dropout", "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
        "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Flatten",
        "Dropout", "Linear", "BatchNorm1d", "ReLU",
        "Dropout", "Linear", "BatchNorm1d", "ReLU", "Linear",
    ]
    drops = [m.p for m in lenet5(p_input=0.2, p_hidden=0.5, rng=0) if isinstance(m, Dropout)]
    assert drops == [0.2, 0.5, 0.5]
    assert not any(isinstance(m, (Dropout, BatchNorm1d, BatchNorm2d)) for m in lenet5(rng=0))


# ------------------------------------------------------------------ parameter counts
def _conv_bn(c_in, c_out, k):
    return k * k * c_in * c_out + 2 * c_out   # conv without bias + BN gamma, beta


def test_parameter_counts():
    # LeNet-5: convs 6*25+6, 16*150+16; FCs 400*120+120, 120*84+84, 84*10+10
    assert lenet5(rng=0).num_parameters() == 156 + 2416 + 48120 + 10164 + 850 == 61_706
    # ResNet-20 (checked against a PyTorch twin in test_torch_parity_models.py)
    assert resnet_cifar(20, rng=0).num_parameters() == 269_722
    # He et al. (2016), Table 6: 0.27M, 0.46M, 0.66M, 0.85M
    for depth, millions in ((20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85)):
        assert round(resnet_cifar(depth, rng=0).num_parameters() / 1e6, 2) == millions
    assert resnet18(rng=0).num_parameters() == 11_173_962   # as kuangliu/pytorch-cifar


def test_minigooglenet_parameter_count_from_its_modules():
    inceptions = [(96, 32, 32), (64, 32, 48), (160, 112, 48), (160, 96, 64), (160, 80, 80),
                  (160, 48, 96), (240, 176, 160), (336, 176, 160)]
    expected = _conv_bn(3, 96, 3)
    expected += sum(_conv_bn(c, k1, 1) + _conv_bn(c, k3, 3) for c, k1, k3 in inceptions)
    expected += _conv_bn(80, 80, 3) + _conv_bn(144, 96, 3)   # downsample convs; pools are free
    expected += 336 * 10 + 10
    assert minigooglenet(rng=0).num_parameters() == expected == 1_651_114


# ------------------------------------------------------------------ blocks: finite differences
def test_concat_backward_matches_finite_differences():
    gradcheck_module(Concat(Conv2d(2, 3, 1, rng=0), Conv2d(2, 2, 3, padding=1, rng=1), ReLU()),
                     _x((2, 2, 5, 4), seed=1))


@pytest.mark.parametrize("module", [
    lambda: inception_module(3, 2, 4, rng=0),
    lambda: downsample_module(3, 4, rng=0),
], ids=["inception", "downsample"])
def test_minigooglenet_modules_gradcheck(module):
    gradcheck_module(module(), _x((2, 3, 7, 7), seed=2), max_checks=20)


def test_minigooglenet_whole_model_gradcheck_on_a_tiny_input():
    """Every parameter and the input of the full network (15x15 is the smallest size it takes)."""
    model = minigooglenet(num_classes=3, in_channels=1, rng=0)
    gradcheck_module(model, _x((2, 1, 15, 15), seed=3), max_checks=2)


@pytest.mark.parametrize("shortcut, in_ch, out_ch, stride", [
    ("A", 2, 4, 2), ("B", 2, 4, 2), ("A", 3, 3, 1),
])
def test_basic_block_gradcheck(shortcut, in_ch, out_ch, stride):
    block = basic_block(in_ch, out_ch, stride, shortcut, rng=0)
    gradcheck_module(block, _x((2, in_ch, 5, 6), seed=4), max_checks=20)


def test_zero_pad_shortcut_places_the_input_between_zero_channels():
    x = _x((2, 2, 5, 4), dtype=np.float64)
    short = ZeroPadShortcut(2, 6, stride=2)
    y = short(x)
    assert y.shape == (2, 6, 3, 2)
    np.testing.assert_array_equal(y[:, 2:4], x[:, :, ::2, ::2])
    assert not y[:, :2].any() and not y[:, 4:].any()
    dy = _x(y.shape, seed=5, dtype=np.float64)
    dx = short.backward(dy)
    np.testing.assert_array_equal(dx[:, :, ::2, ::2], dy[:, 2:4])
    assert not dx[:, :, 1::2].any() and not dx[:, :, :, 1::2].any()


def test_blocks_reject_mismatched_branches():
    with pytest.raises(ValueError, match="Residual: the body gives shape"):
        Residual(Conv2d(2, 3, 3, padding=1, rng=0))(_x((1, 2, 4, 4)))
    with pytest.raises(ValueError, match="Concat: branches must agree"):
        Concat(Conv2d(2, 3, 3, rng=0), Conv2d(2, 3, 1, rng=0))(_x((1, 2, 4, 4)))
    with pytest.raises(ValueError, match="ZeroPadShortcut"):
        ZeroPadShortcut(4, 2, stride=1)


# ------------------------------------------------------------------ model contract
@pytest.mark.parametrize("build, x_shape", [
    (lambda: lenet5(batchnorm=True, rng=0), (4, 1, 28, 28)),
    (lambda: resnet_cifar(20, rng=0), (2, 3, 16, 16)),
    (lambda: minigooglenet(in_channels=1, rng=0), (2, 1, 15, 15)),
], ids=["lenet5", "resnet20", "minigooglenet"])
def test_backward_accumulates_parameter_gradients_in_the_flat_buffer(build, x_shape):
    model = build().astype(np.float64)
    flat = model.flat()
    x = _x(x_shape, dtype=np.float64)
    dy = _x((x_shape[0], 10), seed=6, dtype=np.float64)
    model.zero_grad()
    model(x)
    model.backward(dy)
    once = flat.grad.copy()
    assert np.count_nonzero(once) > 0.9 * once.size
    model(x)
    model.backward(dy)
    np.testing.assert_allclose(flat.grad, 2 * once, rtol=1e-12, atol=1e-14)
    assert all(np.shares_memory(p.grad, flat.grad) for p in model.parameters())


def test_same_seed_gives_the_same_weights():
    a, b, c = resnet_cifar(20, rng=7), resnet_cifar(20, rng=7), resnet_cifar(20, rng=8)
    wa, wb, wc = (np.concatenate([p.data.ravel() for p in m.parameters()]) for m in (a, b, c))
    np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(wa, wc)


def test_resnet_conv_weights_are_he_normal():
    model = resnet_cifar(56, rng=0)
    convs = [m for m in model.modules() if isinstance(m, Conv2d) and m.weight.size > 10_000]
    for conv in convs:
        fan_in = np.prod(conv.weight.shape[1:])
        assert conv.weight.data.std() == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.05)


# ------------------------------------------------------------------ registry and errors
@pytest.mark.parametrize("name, kwargs, n_params", [
    ("lenet5", {}, 61_706), ("resnet20", {}, 269_722), ("ResNet-32", {}, None),
    ("resnet44", {}, None), ("resnet56", {}, None), ("resnet18", {}, 11_173_962),
    ("minigooglenet", {"in_channels": 1}, None),
    ("mlp", {"sizes": (784, 32, 10)}, 784 * 32 + 32 + 330),
    ("nn4", {"in_features": 20}, None),
])
def test_get_model_builds_every_registered_name(name, kwargs, n_params):
    model = get_model(name, rng=0, **kwargs)
    assert model.num_parameters() > 0
    if n_params is not None:
        assert model.num_parameters() == n_params


def test_get_model_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"get_model: unknown model 'vgg16'.*'resnet20'"):
        get_model("vgg16")


@pytest.mark.parametrize("depth", [18, 21, 110, 0])
def test_resnet_cifar_rejects_invalid_depths(depth):
    with pytest.raises(ValueError, match=r"resnet_cifar: depth must be one of \(20, 32, 44, 56\)"):
        resnet_cifar(depth)


def test_models_reject_bad_hyperparameters():
    with pytest.raises(ValueError, match="lenet5: p_hidden"):
        lenet5(p_hidden=1.0)
    with pytest.raises(ValueError, match="lenet5: num_classes"):
        lenet5(num_classes=0)
    with pytest.raises(ValueError, match="resnet18: num_classes"):
        resnet18(num_classes=0)
    with pytest.raises(ValueError, match="minigooglenet: in_channels"):
        minigooglenet(in_channels=0)
    with pytest.raises(ValueError, match="Conv2d"):
        lenet5(rng=0)(_x((2, 3, 28, 28)))   # LeNet-5 takes one channel


def test_conv_bn_relu_is_conv_without_bias_then_bn_then_relu():
    block = conv_bn_relu(3, 8, 3, padding=1, rng=0)
    conv, bn, relu = list(block)
    assert isinstance(conv, Conv2d) and conv.bias is None
    assert isinstance(bn, BatchNorm2d) and isinstance(relu, ReLU)
    assert not any(isinstance(m, Linear) for m in block)
