"""Convolution and pooling kernels (mlcvlab.nn.conv) and the layers built on them.

Gradients by float64 central differences, values and gradients against PyTorch,
output-shape arithmetic by hypothesis, and the error messages of bad input.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcvlab.nn import AvgPool2d, Conv2d, GlobalAvgPool2d, MaxPool2d
from mlcvlab.nn.conv import (avgpool2d, avgpool2d_grad, conv2d, conv2d_grad, conv_output_size,
                             maxpool2d, maxpool2d_grad)
from mlcvlab.testing import gradcheck_function, gradcheck_module

TOL = {np.float32: 1e-4, np.float64: 1e-8}

# (x shape, W shape, stride, padding): stride 1 and 2, padding 0 and 1, non-square
CONV_CASES = [
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, 0),
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, 1),
    ((2, 2, 9, 7), (3, 2, 3, 2), 2, 0),
    ((2, 2, 9, 7), (3, 2, 2, 3), 2, 1),
    ((1, 3, 8, 5), (2, 3, 1, 1), (2, 1), (0, 1)),
    ((2, 1, 6, 6), (2, 1, 6, 6), 1, 0),  # kernel covers the whole image: Ho = Wo = 1
    # stride 1 runs on the row-padded layout unless pw > kw - 1 (the 1x1 case here)
    ((2, 2, 9, 7), (3, 2, 3, 2), 1, (2, 1)),
    ((2, 3, 8, 8), (2, 3, 5, 5), 1, 2),
    ((1, 3, 8, 5), (2, 3, 1, 1), 1, (0, 1)),
]

# (kernel_size, stride, padding): default stride, overlapping, padded, non-square
POOL_CASES = [(2, None, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 0)), (2, 1, 1), (3, None, 0)]


def _conv_fn(stride, padding, with_bias):
    def forward(*arrays):
        x, W = arrays[:2]
        return conv2d(x, W, arrays[2] if with_bias else None, stride, padding)
    forward.__name__ = "conv2d"
    return forward


# ------------------------------------------------------------------ finite differences
@pytest.mark.parametrize("x_shape, w_shape, stride, padding", CONV_CASES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv2d_gradients_match_finite_differences(x_shape, w_shape, stride, padding, with_bias):
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal(x_shape), rng.standard_normal(w_shape)]
    if with_bias:
        inputs.append(rng.standard_normal(w_shape[0]))
    gradcheck_function(_conv_fn(stride, padding, with_bias), conv2d_grad, inputs,
                       names=["x", "W", "b"][:len(inputs)], max_checks=30)


def test_conv2d_grad_gives_no_bias_gradient_without_bias():
    rng = np.random.default_rng(0)
    y, cache = conv2d(rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3)))
    _, _, db = conv2d_grad(np.ones_like(y), cache)
    assert db is None


@pytest.mark.parametrize("kernel_size, stride, padding", POOL_CASES)
@pytest.mark.parametrize("pool, pool_grad", [(maxpool2d, maxpool2d_grad),
                                             (avgpool2d, avgpool2d_grad)])
def test_pool_gradients_match_finite_differences(pool, pool_grad, kernel_size, stride, padding):
    x = np.random.default_rng(2).standard_normal((2, 3, 7, 6))

    def forward(a):
        return pool(a, kernel_size, stride, padding)
    forward.__name__ = pool.__name__
    gradcheck_function(forward, pool_grad, [x], names=["x"], max_checks=None)


# ------------------------------------------------------------------ PyTorch parity
def _torch(a, grad=False):
    return torch.tensor(a, requires_grad=grad)


def _max_diff(a, t):
    return float(np.max(np.abs(a - t.detach().numpy())))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, w_shape, stride, padding", CONV_CASES)
def test_conv2d_matches_torch(dtype, x_shape, w_shape, stride, padding):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(x_shape).astype(dtype)
    W = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    y, cache = conv2d(x, W, b, stride, padding)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dW, db = conv2d_grad(dy, cache)

    tx, tW, tb = _torch(x, True), _torch(W, True), _torch(b, True)
    ty = F.conv2d(tx, tW, tb, stride, padding)
    ty.backward(_torch(dy))
    assert y.shape == tuple(ty.shape)
    for ours, theirs in ((y, ty), (dx, tx.grad), (dW, tW.grad), (db, tb.grad)):
        assert ours.dtype == dtype  # no hidden upcast
        assert _max_diff(ours, theirs) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel_size, stride, padding", POOL_CASES)
@pytest.mark.parametrize("pool, pool_grad, torch_pool", [
    (maxpool2d, maxpool2d_grad, F.max_pool2d),
    (avgpool2d, avgpool2d_grad, F.avg_pool2d),
])
def test_pool_matches_torch(pool, pool_grad, torch_pool, dtype, kernel_size, stride, padding):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    y, cache = pool(x, kernel_size, stride, padding)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = pool_grad(dy, cache)

    tx = _torch(x, True)
    ty = torch_pool(tx, kernel_size, stride, padding)
    ty.backward(_torch(dy))
    assert y.dtype == dx.dtype == dtype
    assert y.shape == tuple(ty.shape) and dx.shape == x.shape
    assert _max_diff(y, ty) <= TOL[dtype]
    assert _max_diff(dx, tx.grad) <= TOL[dtype]


@pytest.mark.parametrize("kernel_size, stride", [(2, None), (3, 1)])
def test_maxpool_sends_tied_gradients_to_the_first_maximum_like_torch(kernel_size, stride):
    x = np.random.default_rng(5).integers(0, 2, size=(2, 2, 6, 6)).astype(np.float64)
    y, cache = maxpool2d(x, kernel_size, stride)
    dy = np.arange(y.size, dtype=np.float64).reshape(y.shape) + 1
    tx = _torch(x, True)
    F.max_pool2d(tx, kernel_size, stride).backward(_torch(dy))
    np.testing.assert_array_equal(maxpool2d_grad(dy, cache), tx.grad.numpy())


# ------------------------------------------------------------------ shape arithmetic
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 9), stride=st.integers(1, 5),
       padding=st.integers(0, 4))
def test_conv_output_size_is_the_number_of_window_positions(n, k, stride, padding):
    fits = n + 2 * padding >= k
    if not fits:
        with pytest.raises(ValueError, match="conv_output_size"):
            conv_output_size(n, k, stride, padding)
        return
    out = conv_output_size(n, k, stride, padding)
    # the last window starts at (out - 1) * stride and must fit; one more step must not
    assert (out - 1) * stride + k <= n + 2 * padding < out * stride + k


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), kh=st.integers(1, 5), kw=st.integers(1, 5),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2))
def test_conv2d_output_shape_matches_torch(h, w, kh, kw, sh, sw, ph, pw):
    x = np.zeros((1, 2, h, w), dtype=np.float32)
    W = np.zeros((3, 2, kh, kw), dtype=np.float32)
    if h + 2 * ph < kh or w + 2 * pw < kw:
        with pytest.raises(ValueError, match="conv2d: kernel size"):
            conv2d(x, W, stride=(sh, sw), padding=(ph, pw))
        return
    y, cache = conv2d(x, W, stride=(sh, sw), padding=(ph, pw))
    expected = F.conv2d(_torch(x), _torch(W), stride=(sh, sw), padding=(ph, pw)).shape
    assert y.shape == tuple(expected)
    assert conv2d_grad(y, cache)[0].shape == x.shape


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), pad=st.booleans(), use_max=st.booleans())
def test_pool_output_shape_matches_torch(h, w, kh, kw, sh, sw, pad, use_max):
    x = np.zeros((1, 2, h, w), dtype=np.float32)
    padding = (kh // 2, kw // 2) if pad else (0, 0)
    pool, torch_pool = (maxpool2d, F.max_pool2d) if use_max else (avgpool2d, F.avg_pool2d)
    if h + 2 * padding[0] < kh or w + 2 * padding[1] < kw:
        with pytest.raises(ValueError, match=pool.__name__):
            pool(x, (kh, kw), (sh, sw), padding)
        return
    y, _ = pool(x, (kh, kw), (sh, sw), padding)
    assert y.shape == tuple(torch_pool(_torch(x), (kh, kw), (sh, sw), padding).shape)


# ------------------------------------------------------------------ bad input
def test_conv2d_rejects_bad_input_with_clear_messages():
    x = np.zeros((2, 3, 5, 5), dtype=np.float32)
    W = np.zeros((4, 3, 3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"conv2d: expected x to be 4-D .* got shape \(3, 5, 5\)"):
        conv2d(x[0], W)
    with pytest.raises(ValueError, match="conv2d: x has 3 channels but W expects 2"):
        conv2d(x, W[:, :2])
    with pytest.raises(ValueError, match="conv2d: kernel size 7 is larger than the padded input"):
        conv2d(x, np.zeros((4, 3, 7, 7), dtype=np.float32), padding=0)
    with pytest.raises(ValueError, match="conv2d: expected stride >= 1"):
        conv2d(x, W, stride=0)
    with pytest.raises(ValueError, match="conv2d: expected padding >= 0"):
        conv2d(x, W, padding=(1, -1))
    with pytest.raises(TypeError, match="conv2d: x is float32 but W is float64"):
        conv2d(x, W.astype(np.float64))
    with pytest.raises(TypeError, match="conv2d: expected x to be float32 or float64"):
        conv2d(x.astype(np.int64), W)
    with pytest.raises(ValueError, match=r"conv2d: expected b of shape \(4,\)"):
        conv2d(x, W, np.zeros(3, dtype=np.float32))
    y, cache = conv2d(x, W)
    with pytest.raises(ValueError, match="conv2d_grad: expected dy of the forward output's shape"):
        conv2d_grad(y[:1], cache)


def test_conv_output_size_rejects_non_positive_sizes():
    for args in [(0, 3, 1, 0), (5, 0, 1, 0), (5, 3, 0, 0), (5, 3, 1, -1)]:
        with pytest.raises(ValueError, match="conv_output_size"):
            conv_output_size(*args)


@pytest.mark.parametrize("pool", [maxpool2d, avgpool2d])
def test_pools_reject_bad_input_with_clear_messages(pool):
    x = np.zeros((1, 2, 4, 4), dtype=np.float64)
    name = pool.__name__
    with pytest.raises(ValueError, match=f"{name}: expected x to be 4-D"):
        pool(x[0], 2)
    with pytest.raises(ValueError, match=f"{name}: kernel size 5 is larger than the padded input"):
        pool(x, 5)
    with pytest.raises(ValueError, match=f"{name}: padding .* at most half the kernel size"):
        pool(x, 2, padding=2)
    with pytest.raises(ValueError, match=f"{name}: expected kernel_size >= 1"):
        pool(x, 0)
    with pytest.raises(TypeError, match=f"{name}: expected stride to be an int or a pair"):
        pool(x, 2, stride=1.5)
    y, cache = pool(x, 2)
    with pytest.raises(ValueError, match=f"{name}_grad: expected dy"):
        globals()[f"{name}_grad"](y[:, :1], cache)


# ------------------------------------------------------------------ the layers
@pytest.mark.parametrize("layer, shape", [
    (lambda: Conv2d(2, 3, (3, 2), stride=2, padding=1, rng=0), (2, 2, 7, 6)),
    (lambda: Conv2d(2, 3, 3, bias=False, rng=0), (2, 2, 5, 6)),
    (lambda: MaxPool2d(3, stride=2, padding=1), (2, 2, 7, 6)),
    (lambda: AvgPool2d((2, 3), stride=1), (2, 2, 5, 6)),
    (lambda: GlobalAvgPool2d(), (2, 3, 4, 5)),
], ids=["conv-strided", "conv-nobias", "maxpool", "avgpool", "globalavg"])
def test_layers_gradcheck(layer, shape):
    x = np.random.default_rng(6).standard_normal(shape)
    gradcheck_module(layer(), x, max_checks=30)


def test_conv2d_layer_accumulates_gradients_and_keeps_float32():
    layer = Conv2d(2, 3, 3, padding=1, rng=0)
    x = np.random.default_rng(7).standard_normal((2, 2, 5, 5)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32
    dy = np.ones_like(y)
    layer.backward(dy)
    once = layer.weight.grad.copy(), layer.bias.grad.copy()
    layer(x)
    layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * once[0], rtol=1e-6)
    np.testing.assert_allclose(layer.bias.grad, 2 * once[1], rtol=1e-6)
