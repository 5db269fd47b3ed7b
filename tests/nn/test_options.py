"""The options PyTorch users reach for (issue #20): dilation, groups, padding="same",
padding modes, ceil_mode, count_include_pad, divisor_override, return_indices, adaptive
pooling, unbatched inputs, Linear on (..., in), BatchNorm1d on (N, C, L). Each against torch
and against central differences in float64."""
import numpy as np
import pytest
import torch

from mlcvlab import nn
from mlcvlab.nn import conv, winograd
from mlcvlab.testing import gradcheck_function, gradcheck_module

pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")

CONV_CASES = [  # C, F, kernel, stride, padding, dilation, groups, padding_mode, (H, W)
    (4, 6, 3, 1, 1, 1, 2, "zeros", (7, 8)),           # grouped, on the fast path per group
    (6, 6, 3, 2, 1, 1, 6, "zeros", (7, 6)),           # depthwise, strided
    (4, 4, 3, 1, "same", 3, 2, "zeros", (8, 7)),      # dilated stride 1: sub-grids, grouped
    (2, 3, (3, 2), 1, (0, 1), (2, 3), 1, "zeros", (7, 8)),  # sub-grids, no padding on rows
    (4, 6, 3, 1, 1, 2, 1, "zeros", (7, 8)),
    (4, 6, 3, 2, 2, (2, 3), 2, "zeros", (9, 10)),
    (4, 8, (2, 3), 1, "same", (1, 2), 4, "zeros", (6, 5)),
    (4, 4, 3, 1, "same", 1, 4, "zeros", (5, 5)),
    (3, 6, 3, 1, "valid", 1, 3, "zeros", (5, 6)),
    (3, 3, 3, 1, 2, 1, 1, "reflect", (5, 6)),
    (2, 4, 3, 2, (1, 2), 1, 1, "circular", (5, 5)),
    (2, 4, 3, 1, 1, 2, 2, "replicate", (6, 5)),
    (2, 4, 3, 2, 2, 2, 2, "reflect", (7, 6)),         # dilated and strided: the general path
]


def _torch_conv(C, F, k, s, p, d, g, mode, W, b):
    m = torch.nn.Conv2d(C, F, k, s, p, d, g, b is not None, mode).double()
    m.weight.data = torch.tensor(W)
    if b is not None:
        m.bias.data = torch.tensor(b)
    return m


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv2d_options_match_torch(case, dtype):
    C, F, k, s, p, d, g, mode, hw = case
    rng = np.random.default_rng(0)
    layer = nn.Conv2d(C, F, k, s, p, d, g, True, mode, rng=0).astype(dtype)
    x = rng.standard_normal((2, C) + hw).astype(dtype)
    tm = _torch_conv(C, F, k, s, p, d, g, mode, layer.weight.data.astype(np.float64),
                     layer.bias.data.astype(np.float64))
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    yt = tm(xt)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(dy.astype(np.float64)))
    dx = layer.backward(dy)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    assert y.dtype == dx.dtype == dtype
    for ours, theirs in ((y, yt), (dx, xt.grad), (layer.weight.grad, tm.weight.grad),
                         (layer.bias.grad, tm.bias.grad)):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_grouped_conv_whose_groups_run_on_winograd_matches_torch(dtype):
    """32 channels per group: each group's 3x3 convolution runs on Winograd under "auto", and
    the backward must not read a kernel size off the group's cache (a WinogradCache has none:
    this raised AttributeError before session 10)."""
    case = (64, 64, 3, 1, 1, 1, 2, "zeros", (6, 5))
    x, W = np.zeros((2, 64, 6, 5), dtype), np.zeros((64, 32, 3, 3), dtype)
    assert all(isinstance(c, winograd.WinogradCache)
               for c in conv.conv2d(x, W, padding=1, groups=2)[1].caches)
    test_conv2d_options_match_torch(case, dtype)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_options_gradcheck(case):
    C, F, k, s, p, d, g, mode, hw = case
    layer = nn.Conv2d(C, F, k, s, p, d, g, True, mode, rng=1)
    gradcheck_module(layer, np.random.default_rng(1).standard_normal((2, C) + hw))


def test_the_common_case_keeps_the_fast_path_and_the_rest_takes_the_general_one():
    x, W = np.zeros((1, 4, 6, 6)), np.zeros((4, 4, 3, 3))
    assert isinstance(conv.conv2d(x, W, padding=1)[1], conv.Conv2dCache)
    assert isinstance(conv.conv2d(x, W, padding="same")[1], conv.Conv2dCache)   # odd: symmetric
    assert isinstance(conv.conv2d(x, W, dilation=2)[1], conv.DilatedConv2dCache)
    assert isinstance(conv.conv2d(x, W, dilation=2, stride=2)[1], conv.GeneralConv2dCache)
    assert isinstance(conv.conv2d(x, W, padding=1, dilation=2, padding_mode="reflect")[1],
                      conv.DilatedConv2dCache)
    assert isinstance(conv.conv2d(x, W, padding=1, stride=2, padding_mode="circular")[1],
                      conv.DilatedConv2dCache)
    assert isinstance(conv.conv2d(x, W, padding=1, stride=2, dilation=2,
                                  padding_mode="circular")[1], conv.GeneralConv2dCache)
    assert isinstance(conv.conv2d(x, W[:, :2], groups=2)[1], conv.GroupedConv2dCache)
    assert isinstance(conv.conv2d(x, W[:, :2], groups=2, dilation=2)[1], conv.DilatedConv2dCache)
    assert isinstance(conv.maxpool2d(x, 2)[1], conv.PoolCache)
    assert isinstance(conv.maxpool2d(x, 2, ceil_mode=True)[1], conv.PoolCache)  # same size
    assert isinstance(conv.maxpool2d(x, 3, 2, ceil_mode=True)[1], conv.GeneralPoolCache)
    assert isinstance(conv.avgpool2d(x, 3, 1, 1, count_include_pad=False)[1],
                      conv.GeneralPoolCache)


def test_conv2d_option_errors_name_the_layer():
    with pytest.raises(ValueError, match="Conv2d: dilation must be >= 1"):
        nn.Conv2d(2, 2, 3, dilation=0)
    with pytest.raises(ValueError, match=r"Conv2d: groups=2 must divide in_channels \(3\)"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="Conv2d: padding='same' needs stride 1"):
        nn.Conv2d(2, 2, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="Conv2d: padding_mode must be one of"):
        nn.Conv2d(2, 2, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="Conv2d: padding must be"):
        nn.Conv2d(2, 2, 3, padding="full")
    with pytest.raises(ValueError, match="conv2d: kernel size 3 is larger than the padded input "
                                         r"size 4 \(input 4, padding 0 in all, dilation 2"):
        nn.Conv2d(2, 2, 3, dilation=2).astype(np.float64).forward(np.zeros((1, 2, 4, 4)))
    with pytest.raises(ValueError, match="conv2d: groups=3 must divide both the input channels"):
        conv.conv2d(np.zeros((1, 4, 5, 5)), np.zeros((3, 1, 3, 3)), groups=3)
    with pytest.raises(ValueError, match="conv2d: padding .* is too large for padding_mode="):
        conv.conv2d(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 3, 3)), padding=3,
                    padding_mode="reflect")


POOL_CASES = [  # kernel, stride, padding, dilation, ceil_mode, (H, W)
    (3, 2, 1, 1, True, (7, 8)), (2, 2, 0, 1, True, (5, 7)), (3, 1, 1, 2, False, (7, 7)),
    ((2, 3), (1, 2), (1, 1), (2, 1), True, (6, 9)), (3, 3, 0, 1, True, (8, 8)),
]


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_maxpool_options_and_indices_match_torch(case, dtype):
    k, s, p, d, ceil, hw = case
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3) + hw).astype(dtype)
    layer = nn.MaxPool2d(k, s, p, d, return_indices=True, ceil_mode=ceil)
    y, idx = layer.forward(x)
    xt = torch.tensor(x, requires_grad=True)
    yt, it = torch.nn.MaxPool2d(k, s, p, d, return_indices=True, ceil_mode=ceil)(xt)
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(idx, it.numpy())
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=1e-6, atol=1e-6)
    # unbatched: (C, H, W) in, (C, Ho, Wo) out
    y0, idx0 = layer.forward(x[0])
    np.testing.assert_array_equal(y0, y[0])
    np.testing.assert_array_equal(idx0, idx[0])
    assert layer.backward(dy[0]).shape == x[0].shape


@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool_options_gradcheck(case):
    k, s, p, d, ceil, hw = case
    x = np.random.default_rng(3).permutation(2 * 3 * hw[0] * hw[1]).reshape((2, 3) + hw) * 0.1
    gradcheck_function(lambda a: conv.maxpool2d(a, k, s, p, d, ceil), conv.maxpool2d_grad, [x])


@pytest.mark.parametrize("k,s,p,ceil", [(3, 2, 1, True), (2, 2, 0, True), (3, 1, 1, False),
                                         ((2, 3), (2, 1), (1, 1), True)])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("divisor_override", [None, 5])
def test_avgpool_options_match_torch_and_gradcheck(k, s, p, ceil, count_include_pad,
                                                   divisor_override):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 7, 8))
    layer = nn.AvgPool2d(k, s, p, ceil, count_include_pad, divisor_override)
    y = layer.forward(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.AvgPool2d(k, s, p, ceil, count_include_pad, divisor_override)(xt)
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=1e-13, atol=1e-13)
    gradcheck_function(lambda a: conv.avgpool2d(a, k, s, p, ceil, count_include_pad,
                                                divisor_override), conv.avgpool2d_grad, [x])


def test_pool_option_errors_name_the_layer():
    with pytest.raises(ValueError, match="MaxPool2d: dilation must be >= 1"):
        nn.MaxPool2d(2, dilation=0)
    with pytest.raises(ValueError, match="MaxPool2d: padding .* must be at most half"):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="AvgPool2d: divisor_override must be a non-zero int"):
        nn.AvgPool2d(2, divisor_override=0)
    with pytest.raises(ValueError, match="maxpool2d: kernel size 3 is larger than the padded "
                                         "input size 4"):
        nn.MaxPool2d(3, dilation=2).forward(np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match="AdaptiveAvgPool2d: output_size must be"):
        nn.AdaptiveAvgPool2d(-1)


@pytest.mark.parametrize("out", [1, (3, 4), (None, 2), (7, 10), 2])
@pytest.mark.parametrize("kind", ["Avg", "Max"])
def test_adaptive_pools_match_torch_and_gradcheck(out, kind):
    rng = np.random.default_rng(5)
    x = rng.permutation(2 * 3 * 5 * 7).reshape(2, 3, 5, 7) * 0.1
    layer = getattr(nn, f"Adaptive{kind}Pool2d")(out)
    y = layer.forward(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = getattr(torch.nn, f"Adaptive{kind}Pool2d")(out)(xt)
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=1e-13, atol=1e-13)
    gradcheck_module(getattr(nn, f"Adaptive{kind}Pool2d")(out), x)
    assert layer.forward(x[0]).shape == y.shape[1:]                 # unbatched


def test_adaptive_maxpool_returns_torch_indices():
    x = np.random.default_rng(6).standard_normal((2, 3, 6, 5))
    y, idx = nn.AdaptiveMaxPool2d((4, 3), return_indices=True).forward(x)
    yt, it = torch.nn.AdaptiveMaxPool2d((4, 3), return_indices=True)(torch.tensor(x))
    np.testing.assert_array_equal(idx, it.numpy())


def test_conv_on_an_unbatched_input_is_the_batch_of_one():
    layer = nn.Conv2d(3, 4, 3, padding=1, rng=0).astype(np.float64)
    x = np.random.default_rng(7).standard_normal((3, 5, 6))
    y = layer.forward(x)
    np.testing.assert_allclose(y, layer.forward(x[None])[0])
    layer.zero_grad()
    layer.forward(x)
    dx = layer.backward(np.ones(y.shape))
    assert dx.shape == x.shape
    gradcheck_module(nn.Conv2d(3, 4, 3, padding=1, dilation=2, rng=0), x)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 5), (2, 1, 3, 5)])
def test_linear_on_any_leading_axes_matches_torch(shape):
    rng = np.random.default_rng(8)
    layer = nn.Linear(5, 4, rng=0)
    tm = torch.nn.Linear(5, 4).double()
    tm.weight.data, tm.bias.data = (torch.tensor(layer.weight.data.astype(np.float64)),
                                    torch.tensor(layer.bias.data.astype(np.float64)))
    layer.astype(np.float64)
    x = rng.standard_normal(shape)
    y = layer.forward(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = tm(xt)
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=1e-13)
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), atol=1e-13)
    np.testing.assert_allclose(layer.weight.grad, tm.weight.grad.numpy(), atol=1e-13)
    gradcheck_module(nn.Linear(5, 4, rng=0), x)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm1d_on_nCL_with_affine_and_tracking_matches_torch(affine, track, momentum):
    rng = np.random.default_rng(9)
    ours = nn.BatchNorm1d(3, momentum=momentum, affine=affine,
                          track_running_stats=track).astype(np.float64)
    theirs = torch.nn.BatchNorm1d(3, momentum=momentum, affine=affine,
                                  track_running_stats=track).double()
    assert (ours.weight is None) == (theirs.weight is None)
    for step in range(3):
        x = rng.standard_normal((4, 3, 5)) * 2 + 1
        xt = torch.tensor(x, requires_grad=True)
        yt = theirs(xt)
        y = ours.forward(x)
        dy = rng.standard_normal(y.shape)
        yt.backward(torch.tensor(dy))
        np.testing.assert_allclose(y, yt.detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), atol=1e-12)
    if track:
        np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), atol=1e-12)
        np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), atol=1e-12)
    else:
        assert ours.running_mean is None and "running_mean" not in ours.state_dict()
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((4, 3, 5))
    np.testing.assert_allclose(ours.forward(x), theirs(torch.tensor(x)).detach().numpy(),
                               atol=1e-12)
    gradcheck_module(nn.BatchNorm1d(3, affine=affine, track_running_stats=track),
                     rng.standard_normal((4, 3, 5)))


def test_batchnorm_without_bias_matches_torch():
    rng = np.random.default_rng(10)
    ours = nn.BatchNorm2d(3, bias=False).astype(np.float64)
    theirs = torch.nn.BatchNorm2d(3, bias=False).double()
    assert ours.bias is None and len(list(ours.parameters())) == 1
    x = rng.standard_normal((4, 3, 2, 2))
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    dy = rng.standard_normal(x.shape)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(ours.forward(x), yt.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), atol=1e-12)
    gradcheck_module(nn.BatchNorm2d(3, bias=False), x)


def _conv_outputs(layer, x, dy):
    """y, dx and dW of one forward and backward of ``layer`` (gradients zeroed first)."""
    layer.zero_grad()
    y = layer.forward(x)
    return y, layer.backward(dy), layer.weight.grad.copy()


@pytest.mark.parametrize("case", [CONV_CASES[3], CONV_CASES[5], CONV_CASES[9]])
def test_general_conv_path_in_small_batch_blocks_gives_the_same_result(case, monkeypatch):
    """the general path's im2col runs over blocks of the batch of at most BLOCK_BYTES: blocks
    of one sample give what one block of the whole batch gives."""
    C, F, k, s, p, d, g, mode, hw = case
    rng = np.random.default_rng(11)
    layer = nn.Conv2d(C, F, k, s, p, d, g, True, mode, rng=0).astype(np.float64)
    x = rng.standard_normal((5, C) + hw)
    dy = rng.standard_normal(layer.forward(x).shape)
    before = _conv_outputs(layer, x, dy)
    monkeypatch.setattr(conv, "BLOCK_BYTES", 1)
    for a, b in zip(_conv_outputs(layer, x, dy), before):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_options_agree_with_and_without_numba(case, monkeypatch):
    from mlcvlab.nn import kernels
    C, F, k, s, p, d, g, mode, hw = case
    rng = np.random.default_rng(12)
    layer = nn.Conv2d(C, F, k, s, p, d, g, True, mode, rng=0).astype(np.float64)
    x = rng.standard_normal((3, C) + hw)
    dy = rng.standard_normal(layer.forward(x).shape)
    before = _conv_outputs(layer, x, dy)
    monkeypatch.setattr(kernels, "available", lambda: False)
    for a, b in zip(_conv_outputs(layer, x, dy), before):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
