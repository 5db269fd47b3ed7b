"""The direct 3x3 and 5x5 convolution (mlcvlab.nn.direct) against the im2col path, torch and float64
finite differences, and the rule of mlcvlab.nn.conv that chooses it."""
import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from mlcvlab.nn import BatchNorm2d, Conv2d, ReLU, Sequential, conv, direct, kernels
from mlcvlab.testing import gradcheck_function

from conv_cases import assert_float64_equal, case as _case, run as _run

# float32 error of the direct result against the float64 convolution, relative to the largest
# value of the float64 result, at the shapes of test_float32_error_is_that_of_a_direct_convolution
# (batch 4, He-scaled weights), measured in session 12: y 2.2e-7 to 8.2e-7, dx 3.1e-7 to 6.0e-7,
# dW 1.3e-7 to 3.0e-7 (each sample's sum in float32 lanes, the samples' in float64); im2col
# there: y 1.5e-7 to 3.6e-7, dx 1.1e-7 to 1.8e-7, dW 2.2e-7 to 4.3e-7 (each output's C*kh*kw
# products are summed in one chain here, in blocks by the GEMM). Bound with a ~4x margin.
FLOAT32_REL_BOUND = 3e-6

# (x shape, F, padding, kernel size): odd N, C, H, W, H != W, C != F, F % 4 = 0..3 (3x3) and
# odd and even F (5x5), every padding up to kernel - 1, an output row of one pixel (a register
# tile overhangs it by many rows), and rows shorter and longer than a tile (both tilings of
# the forward kernel, with a partial last tile in a row: 37, 70 and 41 outputs wide)
ODD_CASES = [((3, 5, 7, 9), 4, 0, 3), ((3, 5, 7, 9), 6, 1, 3), ((1, 3, 9, 6), 7, 1, 3),
             ((2, 2, 4, 5), 3, 2, 3), ((1, 1, 3, 3), 1, 0, 3), ((2, 4, 3, 1), 5, 1, 3),
             ((2, 3, 40, 37), 9, 1, 3), ((1, 2, 20, 70), 2, 2, 3),
             ((2, 1, 28, 28), 6, 2, 5), ((3, 6, 14, 13), 16, 0, 5), ((2, 3, 9, 7), 5, 1, 5),
             ((2, 4, 6, 8), 7, 4, 5), ((1, 2, 5, 5), 3, 3, 5), ((2, 3, 30, 41), 4, 2, 5)]


def _spy(monkeypatch):
    """Records which direct functions run: a list of "forward" / "backward"."""
    seen = []
    fwd, bwd = direct.conv2d_direct, direct.conv2d_grad_direct
    monkeypatch.setattr(direct, "conv2d_direct", lambda *a: seen.append("forward") or fwd(*a))
    monkeypatch.setattr(direct, "conv2d_grad_direct",
                        lambda *a: seen.append("backward") or bwd(*a))
    return seen


# ------------------------------------------------------------------ float64: exact
@pytest.mark.parametrize("x_shape, F, padding, k", ODD_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_float64_direct_equals_im2col(monkeypatch, x_shape, F, padding, k, bias):
    seen = _spy(monkeypatch)
    x, W, b, dy = _case(x_shape, F, padding, bias=bias, k=k)
    ours = _run("direct", x, W, b, padding, dy)
    assert seen == ["forward", "backward"]
    assert_float64_equal(ours, _run("im2col", x, W, b, padding, dy))


@pytest.mark.parametrize("k", [3, 5])
def test_then_relu_is_applied_and_keeps_nan(k):
    x, W, b, _ = _case((2, 3, 6, 7), 5, 1, k=k)
    x[1, 2, 3, 3] = np.nan
    y = direct.conv2d_direct(x, W, b, (1, 1), [slice(0, 2)], then_relu=True)
    ref = conv.conv2d(x, W, b, 1, 1)[0]
    nan = np.isnan(ref)
    assert nan.any() and np.array_equal(np.isnan(y), nan)
    np.testing.assert_allclose(y[~nan], np.maximum(ref[~nan], 0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [3, 5])
def test_batch_parts_give_the_whole_batch_result(k):
    """Each thread's part of the batch runs in its own scratch: split in three, the forward
    is bit-identical to one part, the gradients equal up to the order of dW's sum."""
    x, W, b, dy = _case((7, 4, 9, 8), 6, 1, dtype=np.float32, k=k)
    whole = direct.conv2d_direct(x, W, b, (1, 1), [slice(0, 7)])
    split = direct.conv2d_direct(x, W, b, (1, 1), kernels.split(7, 3))
    assert np.array_equal(whole, split)
    g1 = direct.conv2d_grad_direct(dy, x, W, (1, 1), True, True, [slice(0, 7)])
    g3 = direct.conv2d_grad_direct(dy, x, W, (1, 1), True, True, kernels.split(7, 3))
    assert np.array_equal(g1[0], g3[0])
    np.testing.assert_allclose(g1[1], g3[1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g1[2], g3[2], rtol=1e-6)


def test_input_grad_false_skips_dx():
    x, W, b, dy = _case((2, 3, 6, 5), 4, 1)
    dx, dW, db = direct.conv2d_grad_direct(dy, x, W, (1, 1), True, False, [slice(0, 2)])
    assert dx is None
    np.testing.assert_allclose(dW, _run("im2col", x, W, b, 1, dy)[2], atol=1e-12)


def test_a_non_contiguous_input_and_dy_give_the_same_result(algorithm):
    x, W, b, dy = _case((2, 3, 6, 5), 4, 1)
    xs, dys = x[:, :, :, ::-1], dy[:, :, ::-1, :]
    algorithm("direct")
    ours = _run("direct", xs, W, b, 1, dys)
    ref = _run("im2col", np.ascontiguousarray(xs), W, b, 1, np.ascontiguousarray(dys))
    for a, r in zip(ours, ref):
        np.testing.assert_allclose(a, r, rtol=0, atol=1e-12)


@pytest.mark.parametrize("padding, k", [(0, 3), (1, 3), (2, 3), (2, 5), (4, 5)])
def test_direct_gradients_match_finite_differences(algorithm, padding, k):
    x, W, b, _ = _case((2, 2, 5, 4), 3, padding, seed=3, k=k)
    algorithm("direct")

    def forward(x, W, b):
        return conv.conv2d(x, W, b, 1, padding)
    forward.__name__ = "conv2d_direct"
    gradcheck_function(forward, conv.conv2d_grad, [x, W, b], names=["x", "W", "b"],
                       max_checks=30)


# ------------------------------------------------------------------ float32
@pytest.mark.parametrize("C, F, H, k", [(16, 16, 32, 3), (3, 16, 32, 3), (16, 8, 16, 3),
                                        (5, 13, 19, 3), (1, 6, 28, 5), (16, 16, 16, 5)])
def test_float32_error_is_that_of_a_direct_convolution(C, F, H, k):
    x, W, b, dy = _case((4, C, H, H), F, 1, seed=C, k=k)
    ref = _run("im2col", x, W, b, 1, dy)
    cast = [a.astype(np.float32) for a in (x, W, b, dy)]
    ours = _run("direct", *cast[:3], 1, cast[3])
    for name, a, r in zip(("y", "dx", "dW", "db"), ours, ref):
        assert a.dtype == np.float32, name
        rel = np.abs(a - r).max() / np.abs(r).max()
        assert rel < FLOAT32_REL_BOUND, (name, rel)


def test_matches_torch_in_float32(algorithm):
    """Forced "direct" against torch.nn.functional.conv2d, forward and both gradients, at a
    ResNet-20 first-stage shape."""
    x, W, b, dy = _case((3, 16, 16, 16), 16, 1, dtype=np.float32, seed=5)
    algorithm("direct")
    y, dx, dW, db = _run("direct", x, W, b, 1, dy)
    tx, tW, tb = (torch.tensor(a, requires_grad=True) for a in (x, W, b))
    ty = tF.conv2d(tx, tW, tb, 1, 1)
    ty.backward(torch.tensor(dy))
    for name, a, t in (("y", y, ty), ("dx", dx, tx.grad), ("dW", dW, tW.grad),
                       ("db", db, tb.grad)):
        t = t.detach().numpy()
        np.testing.assert_allclose(a, t, rtol=1e-4, atol=1e-4 * np.abs(t).max(), err_msg=name)


# ------------------------------------------------------------------ the rule
@pytest.mark.parametrize("C, F, size, forward, expected", [
    (16, 16, 32, True, True), (16, 16, 32, False, True), (3, 16, 32, True, True),
    (16, 16, 16, True, True), (16, 16, 8, True, False), (16, 16, 8, False, False),
    (16, 16, 10, True, True), (16, 32, 32, True, True), (16, 32, 32, False, True),
    (32, 16, 32, True, True), (128, 16, 16, False, True), (3, 96, 32, False, True),
    (32, 32, 16, True, True), (32, 32, 16, False, False), (16, 64, 32, False, False),
    (32, 32, 8, True, False), (64, 64, 16, True, False), (96, 32, 32, True, False)])
def test_auto_rule(algorithm, monkeypatch, C, F, size, forward, expected):
    """With 32-byte vectors (AVX2), under "auto" and "fast", from DIRECT_MIN_OUTPUTS (100)
    output pixels: the direct forward while C * F / (C + F) <= DIRECT_FORWARD_MAX_PAIR (16),
    the direct backward while it is at most DIRECT_BACKWARD_MAX_PAIR (11) or F <=
    DIRECT_MAX_FILTERS (16). Never under "im2col" or a forced Winograd."""
    from mlcvlab.nn import simd
    monkeypatch.setattr(simd, "BYTES", 32)
    pads = (1, 1, 1, 1)
    for alg in ("auto", "fast"):
        algorithm(alg)
        assert conv.direct_pays((2, C, size, size), F, (3, 3), (1, 1), (1, 1), 1, pads,
                                forward) == expected, alg
    for alg in ("im2col", "winograd", "winograd4"):
        algorithm(alg)
        assert not conv.direct_pays((2, C, size, size), F, (3, 3), (1, 1), (1, 1), 1, pads,
                                    forward), alg


@pytest.mark.parametrize("C, F, size, stride, forward, expected", [
    (16, 16, 32, 1, True, True), (16, 16, 32, 1, False, True), (16, 16, 8, 1, True, True),
    (16, 16, 8, 1, False, False), (16, 16, 10, 1, False, True), (32, 32, 16, 1, True, True),
    (32, 32, 16, 1, False, True), (64, 64, 16, 1, True, True), (64, 64, 16, 1, False, False),
    (96, 32, 32, 1, True, True), (96, 32, 32, 1, False, True), (64, 64, 8, 1, True, False),
    (32, 32, 8, 1, False, False), (16, 32, 32, 2, True, True), (32, 64, 16, 2, True, True),
    (64, 128, 8, 2, True, True), (64, 128, 4, 2, True, False), (16, 32, 32, 2, False, True),
    (32, 64, 16, 2, False, False)])
def test_auto_rule_with_avx512_vectors(algorithm, monkeypatch, C, F, size, stride, forward,
                                       expected):
    """With 64-byte vectors (AVX-512) the session-16 rule: the forward from 16x16 outputs at
    any pair, from 8x8 at a pair <= 16, and every 3x3 stride-2 forward from 4x4 outputs; the
    backward (stride 1 or 2) as with 32-byte vectors, and also from 16x16 outputs up to a pair
    of 24."""
    from mlcvlab.nn import simd
    monkeypatch.setattr(simd, "BYTES", 64)
    algorithm("auto")
    assert conv.direct_pays((2, C, size, size), F, (3, 3), (stride, stride), (1, 1), 1,
                            (1, 1, 1, 1), forward) == expected


@pytest.mark.parametrize("kernel, stride, dilation, groups, pads", [
    ((3, 3), (3, 3), (1, 1), 1, (1, 1, 1, 1)),
    ((3, 3), (1, 1), (2, 2), 1, (2, 2, 2, 2)), ((3, 3), (1, 1), (1, 1), 2, (1, 1, 1, 1)),
    ((3, 3), (1, 1), (1, 1), 1, (3, 3, 3, 3)), ((3, 3), (1, 1), (1, 1), 1, (0, 1, 0, 1)),
    ((7, 7), (1, 1), (1, 1), 1, (3, 3, 3, 3)), ((3, 5), (1, 1), (1, 1), 1, (1, 1, 2, 2)),
    ((5, 5), (1, 1), (1, 1), 1, (5, 5, 5, 5)), ((5, 5), (2, 2), (1, 1), 1, (2, 2, 2, 2))])
def test_the_direct_kernel_does_not_take_what_it_cannot_compute(algorithm, kernel, stride,
                                                                 dilation, groups, pads):
    algorithm("direct")
    assert not direct.applies(kernel, stride, dilation, groups, pads)
    assert not conv.direct_pays((2, 4, 20, 20), 4, kernel, stride, dilation, groups, pads)


def test_a_3x3_stride_2_runs_direct_both_ways_and_a_5x5_one_does_not(algorithm):
    algorithm("direct")
    for forward in (True, False):
        assert direct.applies((3, 3), (2, 2), (1, 1), 1, (1, 1, 1, 1), forward=forward)
        assert conv.direct_pays((2, 4, 20, 20), 4, (3, 3), (2, 2), (1, 1), 1, (1, 1, 1, 1),
                                forward=forward)
        assert not direct.applies((5, 5), (2, 2), (1, 1), 1, (2, 2, 2, 2), forward=forward)


# odd and even sizes (both phase-plane parities), every padding, F % 4 = 0..3, rows shorter
# and longer than a tile
STRIDE2_CASES = [((3, 5, 7, 9), 4, 0), ((2, 3, 9, 6), 7, 1), ((1, 2, 4, 5), 3, 2),
                 ((2, 1, 3, 3), 1, 1), ((2, 6, 33, 40), 5, 1), ((1, 16, 32, 32), 32, 1)]


@pytest.mark.parametrize("x_shape, F, padding", STRIDE2_CASES)
@pytest.mark.parametrize("then_relu", [False, True])
def test_stride_2_equals_im2col_in_float64(monkeypatch, x_shape, F, padding, then_relu):
    """The forward on phase planes, dW on them, dx as four phase convolutions of dy."""
    seen = _spy(monkeypatch)
    x, W, b, _ = _case(x_shape, F, padding)
    outs = {}
    for alg in ("direct", "im2col"):
        previous = conv.set_algorithm(alg)
        try:
            y, cache = conv.conv2d(x, W, b, 2, padding, then_relu=then_relu)
            dy = np.random.default_rng(1).standard_normal(y.shape)
            outs[alg] = (y,) + conv.conv2d_grad(dy, cache)
        finally:
            conv.set_algorithm(previous)
    assert seen == ["forward", "backward"]
    Ho, Wo = (x_shape[2] + 2 * padding - 3) // 2 + 1, (x_shape[3] + 2 * padding - 3) // 2 + 1
    assert outs["direct"][0].shape == (x_shape[0], F, Ho, Wo)
    assert_float64_equal(outs["direct"], outs["im2col"])


def test_stride_2_float32_matches_torch(algorithm):
    algorithm("direct")
    x, W, b, _ = _case((3, 16, 31, 32), 32, 1, dtype=np.float32)
    y, cache = conv.conv2d(x, W, b, 2, 1, then_relu=True)
    tx, tW, tb = (torch.from_numpy(a).requires_grad_() for a in (x, W, b))
    ty = torch.relu(tF.conv2d(tx, tW, tb, stride=2, padding=1))
    ref = ty.detach().numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32) * (y > 0)
    dx, dW, db = conv.conv2d_grad(dy, cache)
    ty.backward(torch.from_numpy(dy))
    for ours, theirs in ((dx, tx.grad), (dW, tW.grad), (db, tb.grad)):
        theirs = theirs.numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())


def test_auto_runs_a_resnet_first_stage_layer_direct_both_ways(algorithm, monkeypatch):
    seen = _spy(monkeypatch)
    algorithm("auto")
    x, W, b, dy = _case((2, 16, 16, 16), 16, 1, dtype=np.float32)
    y, cache = conv.conv2d(x, W, b, 1, 1)
    conv.conv2d_grad(dy, cache)
    assert seen == ["forward", "backward"]


def test_conv_bn_relu_in_evaluation_runs_direct_and_matches_im2col(algorithm, monkeypatch):
    """The evaluation path that folds batch norm into the convolution and the ReLU into its
    store (Conv2d.forward_fused_two) reaches the direct kernel too."""
    rng = np.random.default_rng(2)
    net = Sequential(Conv2d(8, 16, 3, padding=1, bias=False), BatchNorm2d(16), ReLU())
    net.train()
    x = rng.standard_normal((4, 8, 16, 16)).astype(np.float32)
    net.forward(x)                                  # running statistics away from 0 and 1
    net.eval()
    algorithm("im2col")
    ref = net.forward(x)
    seen = _spy(monkeypatch)
    algorithm("auto")
    got = net.forward(x)
    assert seen == ["forward"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_lenet_layers_both_run_direct(algorithm, monkeypatch):
    """LeNet-5's 1->6 5x5 layer (28x28 outputs) and its 6->16 5x5 layer (10x10 outputs, at
    DIRECT_MIN_OUTPUTS) run direct both ways under "auto"."""
    seen = _spy(monkeypatch)
    algorithm("auto")
    x, W, b, dy = _case((2, 1, 28, 28), 6, 2, dtype=np.float32, k=5)
    y, cache = conv.conv2d(x, W, b, 1, 2)
    conv.conv2d_grad(dy, cache, input_grad=False)
    assert seen == ["forward", "backward"]
    x, W, b, dy = _case((2, 6, 14, 14), 16, 0, dtype=np.float32, k=5)
    y, cache = conv.conv2d(x, W, b, 1, 0)
    conv.conv2d_grad(dy, cache)
    assert seen == ["forward", "backward"] * 2


# ------------------------------------------------------------------ conv.algorithm names it
def _what_ran(monkeypatch):
    """Records what conv2d / conv2d_grad run: "direct", "winograd F(mxm)" or "im2col" (the
    fast path's GEMM: neither of the others)."""
    from mlcvlab.nn import winograd
    seen = []
    fwd, bwd = direct.conv2d_direct, direct.conv2d_grad_direct
    wf, wb = winograd.conv2d_winograd, winograd.conv2d_winograd_grad
    monkeypatch.setattr(direct, "conv2d_direct", lambda *a: seen.append("direct") or fwd(*a))
    monkeypatch.setattr(direct, "conv2d_grad_direct",
                        lambda *a: seen.append("direct") or bwd(*a))
    monkeypatch.setattr(winograd, "conv2d_winograd",
                        lambda *a: seen.append(f"winograd F({a[5]}x{a[5]})") or wf(*a))
    monkeypatch.setattr(winograd, "conv2d_winograd_grad",
                        lambda *a: seen.append(f"winograd F({a[4]}x{a[4]})") or wb(*a))
    return seen


@pytest.mark.parametrize("alg", ["auto", "fast", "im2col", "direct"])
@pytest.mark.parametrize("x_shape, F, k, stride", [
    ((2, 3, 32, 32), 16, 3, 1), ((2, 16, 32, 32), 16, 3, 1), ((2, 16, 16, 16), 32, 3, 1),
    ((2, 32, 16, 16), 32, 3, 1), ((2, 64, 8, 8), 64, 3, 1), ((2, 16, 32, 32), 32, 3, 2),
    ((2, 1, 28, 28), 6, 5, 1), ((2, 6, 14, 14), 16, 5, 1), ((2, 8, 9, 9), 8, 1, 1)])
def test_algorithm_names_what_conv2d_and_its_gradient_run(algorithm, monkeypatch, alg,
                                                         x_shape, F, k, stride):
    algorithm(alg)
    x, W, b, _ = _case(x_shape, F, k // 2, dtype=np.float32, k=k)
    seen = _what_ran(monkeypatch)
    y, cache = conv.conv2d(x, W, b, stride, k // 2)
    forward = seen[-1] if seen else "im2col"
    seen.clear()
    conv.conv2d_grad(np.ones_like(y), cache)
    backward = seen[-1] if seen else "im2col"
    assert conv.algorithm(x.shape, W.shape, stride, k // 2) == (forward, backward)


def test_algorithm_names_the_other_paths():
    assert conv.algorithm((2, 4, 9, 9), (4, 4, 3, 3), 2, 1, dilation=2) == (
        "im2col (general)",) * 2
    assert conv.algorithm((2, 4, 9, 9), (4, 4, 3, 3), 1, 1, padding_mode="reflect") == (
        "im2col (padded input)",) * 2
    fwd, bwd = conv.algorithm((2, 8, 16, 16), (8, 4, 3, 3), 1, 1, groups=2)
    assert fwd.startswith("2 groups of ") and bwd.startswith("2 groups of ")
