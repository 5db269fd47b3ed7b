"""Winograd F(2x2, 3x3) and F(4x4, 3x3) convolution (mlcvlab.nn.winograd) against the im2col
path, torch and float64 finite differences, and the algorithm switch of mlcvlab.nn.conv."""
import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from mlcvlab.nn import Conv2d, conv, winograd
from mlcvlab.testing import gradcheck_function

from conv_cases import assert_float64_equal, case as _case, run as _run

# float32 error of the Winograd result against the float64 convolution, relative to the
# largest value of the float64 result. F(2x2, 3x3), measured at ResNet-20 / MiniGoogLeNet
# layer shapes (batch 8-16, He-scaled weights): at most 5.0e-7 (y), 4.0e-7 (dx), 7.4e-7 (dW);
# im2col's float32 error at the same shapes: 6.5e-7, 2.4e-7, 4.0e-7. F(4x4, 3x3), whose
# transform matrices have entries up to 8 and 1/24, at the four shapes of
# test_float32_error_against_float64_is_within_the_stated_bound (batch 4): 2.7e-6 to 7.5e-6
# (y), 1.8e-6 to 5.6e-6 (dx), 2.6e-6 to 1.4e-5 (dW); F(2x2) there: 1.6e-7 to 6.1e-7, im2col
# 1.1e-7 to 5.3e-7. Bounds with a 5x margin.
FLOAT32_REL_BOUND = {"winograd": 4e-6, "winograd4": 7e-5}
WINOGRADS = ["winograd", "winograd4"]

# (x shape, F, padding): odd N, C, H, W, H != W, C != F, padding 0, 1 and 2
ODD_CASES = [((3, 5, 7, 9), 4, 0), ((3, 5, 7, 9), 4, 1), ((1, 3, 9, 6), 6, 1),
             ((2, 2, 4, 5), 3, 2), ((1, 1, 3, 3), 1, 0)]


# ------------------------------------------------------------------ the transform matrices
def test_transform_matrices_compute_a_2x2_tile_of_a_3x3_correlation():
    rng = np.random.default_rng(0)
    for _ in range(20):
        d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
        tile = winograd.AT @ ((winograd.G @ g @ winograd.G.T) * (winograd.BT @ d @ winograd.BT.T)) \
            @ winograd.AT.T
        direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(2)] for i in range(2)])
        np.testing.assert_allclose(tile, direct, rtol=0, atol=1e-13)


def test_f4x4_matrices_compute_a_4x4_tile_of_a_3x3_correlation():
    rng = np.random.default_rng(0)
    BT, G, AT = winograd.MATRICES[4]
    for _ in range(20):
        d, g = rng.standard_normal((6, 6)), rng.standard_normal((3, 3))
        tile = AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T
        direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(4)] for i in range(4)])
        np.testing.assert_allclose(tile, direct, rtol=0, atol=1e-13)


@pytest.mark.parametrize("m", [2, 4])
def test_filter_transform_adjoint_is_the_transpose_of_the_filter_transform(m):
    rng = np.random.default_rng(1)
    W, dU = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(((m + 2) ** 2, 3, 2))
    lhs = np.sum(winograd.filter_transform(W, m) * dU)
    rhs = np.sum(W * winograd.filter_transform_adjoint(dU, m))
    assert abs(lhs - rhs) < 1e-12 * max(1.0, abs(lhs))


@pytest.mark.parametrize("m", [2, 4])
def test_filter_transforms_keep_the_dtype(m):
    W = np.ones((2, 3, 3, 3), np.float32)
    assert winograd.filter_transform(W, m).dtype == np.float32
    assert winograd.filter_transform_adjoint(np.ones(((m + 2) ** 2, 2, 3), np.float32),
                                             m).dtype == np.float32


def test_tiles_rejects_an_unknown_tile_size():
    with pytest.raises(ValueError, match="tile size must be one of"):
        winograd.tiles(8, 8, (1, 1), 3)


# ------------------------------------------------------------------ float64: exact
@pytest.mark.parametrize("x_shape, F, padding", ODD_CASES + [((2, 3, 10, 11), 5, 1)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("alg", WINOGRADS)
def test_float64_winograd_equals_im2col(x_shape, F, padding, bias, alg):
    x, W, b, dy = _case(x_shape, F, padding, bias=bias)
    assert_float64_equal(_run(alg, x, W, b, padding, dy), _run("im2col", x, W, b, padding, dy))


@pytest.mark.parametrize("alg", WINOGRADS)
def test_winograd_cache_is_used_and_input_grad_false_skips_dx(algorithm, alg):
    x, W, b, dy = _case((2, 3, 6, 5), 4, 1)
    algorithm(alg)
    y, cache = conv.conv2d(x, W, b, 1, 1)
    assert isinstance(cache, winograd.WinogradCache) and cache.x is x
    dx, dW, db = conv.conv2d_grad(dy, cache, input_grad=False)
    assert dx is None
    np.testing.assert_allclose(dW, _run("im2col", x, W, b, 1, dy)[2], atol=1e-12)


@pytest.mark.parametrize("C, forward_on, backward_on", [
    (8, "im2col", "im2col"), (16, "im2col", "winograd"), (24, "im2col", "winograd"),
    (32, "winograd", "winograd")])
def test_auto_rule_picks_each_direction_apart(algorithm, monkeypatch, C, forward_on,
                                              backward_on):
    """With the forward's threshold (WINOGRAD_FORWARD_MIN_CHANNELS) set to 32 and the
    backward's (WINOGRAD_MIN_CHANNELS) at 16, as in session 10's rule, a 16-channel layer's
    forward runs on im2col and its backward on Winograd, from the im2col cache (x and W); the
    gradients equal im2col's."""
    algorithm("auto")
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 16)
    monkeypatch.setattr(conv, "WINOGRAD_FORWARD_MIN_CHANNELS", 32)
    seen = []
    grad = winograd.conv2d_winograd_grad
    monkeypatch.setattr(winograd, "conv2d_winograd_grad",
                        lambda *a, **k: seen.append(1) or grad(*a, **k))
    x, W, b, dy = _case((2, C, 5, 6), C, 1)
    y, cache = conv.conv2d(x, W, b, 1, 1)
    assert isinstance(cache, winograd.WinogradCache) == (forward_on == "winograd")
    got = conv.conv2d_grad(dy, cache)
    assert bool(seen) == (backward_on == "winograd")
    for a, r in zip((y,) + got, _run("im2col", x, W, b, 1, dy)):
        np.testing.assert_allclose(a, r, rtol=0, atol=1e-12 * max(1.0, np.abs(r).max()))


@pytest.mark.parametrize("C, size, forward, auto, fast", [
    (16, 8, True, 0, 4), (16, 8, False, 2, 4), (16, 7, False, 2, 2), (16, 7, True, 0, 0),
    (64, 32, True, 2, 4), (64, 7, True, 2, 2), (8, 32, False, 0, 0)])
def test_the_rules_pick_the_tile_size(algorithm, C, size, forward, auto, fast):
    """"auto": F(2x2, 3x3) from WINOGRAD_MIN_CHANNELS (16, backward) or
    WINOGRAD_FORWARD_MIN_CHANNELS (32, forward), else im2col; "fast": F(4x4, 3x3) from 16
    channels where the output is at least WINOGRAD4_MIN_SIZE (8) pixels high and wide, else
    as "auto"; "im2col": never Winograd."""
    pads = (1, 1, 1, 1)
    for alg, m in (("auto", auto), ("fast", fast), ("im2col", 0)):
        algorithm(alg)
        assert conv.winograd_tile((2, C, size, size), C, (3, 3), (1, 1), (1, 1), 1, pads,
                                  forward) == m, alg


@pytest.mark.parametrize("alg, m", [("winograd", 2), ("winograd4", 4), ("fast", 4)])
def test_the_chosen_tile_size_runs_both_directions(algorithm, monkeypatch, alg, m):
    algorithm(alg)
    seen = []
    fwd, bwd = winograd.conv2d_winograd, winograd.conv2d_winograd_grad
    monkeypatch.setattr(winograd, "conv2d_winograd",
                        lambda *a: seen.append(("forward", a[5])) or fwd(*a))
    monkeypatch.setattr(winograd, "conv2d_winograd_grad",
                        lambda *a: seen.append(("backward", a[-1])) or bwd(*a))
    x, W, b, dy = _case((2, 64, 9, 10), 64, 1)      # too many channels for the direct kernels
    y, cache = conv.conv2d(x, W, b, 1, 1)
    conv.conv2d_grad(dy, cache)
    assert seen == [("forward", m), ("backward", m)]


@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("alg", WINOGRADS)
def test_winograd_gradients_match_finite_differences(algorithm, padding, alg):
    x, W, b, _ = _case((2, 2, 5, 4), 3, padding, seed=3)
    algorithm(alg)

    def forward(x, W, b):
        y, cache = conv.conv2d(x, W, b, 1, padding)
        assert isinstance(cache, winograd.WinogradCache)
        return y, cache
    forward.__name__ = "conv2d_winograd"
    gradcheck_function(forward, conv.conv2d_grad, [x, W, b], names=["x", "W", "b"],
                       max_checks=30)


# ------------------------------------------------------------------ float32: measured error
@pytest.mark.parametrize("C, F, H", [(16, 16, 32), (32, 32, 16), (64, 64, 8), (3, 16, 32)])
@pytest.mark.parametrize("alg", WINOGRADS)
def test_float32_error_against_float64_is_within_the_stated_bound(C, F, H, alg):
    x, W, b, dy = _case((4, C, H, H), F, 1, seed=C)
    ref = _run("im2col", x, W, b, 1, dy)
    ours = _run(alg, *(a.astype(np.float32) for a in (x, W, b)), 1, dy.astype(np.float32))
    for name, a, r in zip(("y", "dx", "dW", "db"), ours, ref):
        assert a.dtype == np.float32, name
        rel = np.abs(a - r).max() / np.abs(r).max()
        assert rel < FLOAT32_REL_BOUND[alg], f"{name}: float32 relative error {rel:.2e}"


# ------------------------------------------------------------------ torch parity
@pytest.mark.parametrize("x_shape, F, padding", ODD_CASES[:3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alg", WINOGRADS)
def test_winograd_matches_torch_conv2d(x_shape, F, padding, dtype, alg):
    tol = 1e-12 if dtype == np.float64 else FLOAT32_REL_BOUND[alg] * 2.5
    x, W, b, dy = _case(x_shape, F, padding, dtype=dtype, seed=7)
    y, dx, dW, db = _run(alg, x, W, b, padding, dy)
    xt, Wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, W, b))
    yt = tF.conv2d(xt, Wt, bt, stride=1, padding=padding)
    yt.backward(torch.tensor(dy))
    for name, a, t in (("y", y, yt), ("dx", dx, xt.grad), ("dW", dW, Wt.grad), ("db", db, bt.grad)):
        t = t.detach().numpy()
        np.testing.assert_allclose(a, t, rtol=tol, atol=tol * np.abs(t).max(), err_msg=name)


# ------------------------------------------------------------------ dispatch
def test_set_algorithm_rejects_unknown_names_and_returns_the_previous(algorithm):
    with pytest.raises(ValueError, match="set_algorithm: expected one of"):
        algorithm("fft")
    previous = algorithm("im2col")
    assert algorithm(previous) == "im2col"


@pytest.mark.parametrize("kernel, stride, dilation, groups, padding", [
    (3, 2, 1, 1, 1), (3, 1, 2, 1, 2), (3, 1, 1, 2, 1), (5, 1, 1, 1, 2), ((3, 2), 1, 1, 1, 1)])
@pytest.mark.parametrize("alg", WINOGRADS)
def test_forced_winograd_leaves_other_convolutions_on_im2col(algorithm, kernel, stride,
                                                             dilation, groups, padding, alg):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 7))
    kh, kw = (kernel, kernel) if np.isscalar(kernel) else kernel
    W = rng.standard_normal((4, 4 // groups, kh, kw))
    algorithm(alg)
    y, cache = conv.conv2d(x, W, None, stride, padding, dilation, groups)
    assert not isinstance(cache, winograd.WinogradCache)
    ref = tF.conv2d(torch.tensor(x), torch.tensor(W), None, stride, padding, dilation, groups)
    np.testing.assert_allclose(y, ref.numpy(), atol=1e-12)


def test_conv2d_layer_trains_the_same_under_both_algorithms(algorithm):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 9, 8)).astype(np.float32)
    dy = rng.standard_normal((3, 5, 9, 8)).astype(np.float32)
    grads = {}
    for alg in ("im2col", "winograd", "winograd4"):
        algorithm(alg)
        layer = Conv2d(4, 5, 3, padding=1, rng=1)
        y = layer(x)
        dx = layer.backward(dy)
        grads[alg] = (y, dx, layer.weight.grad.copy(), layer.bias.grad.copy())
    for alg in WINOGRADS:
        for name, a, r in zip(("y", "dx", "dW", "db"), grads[alg], grads["im2col"]):
            np.testing.assert_allclose(a, r, rtol=1e-4,
                                       atol=FLOAT32_REL_BOUND[alg] * np.abs(r).max(),
                                       err_msg=f"{alg} {name}")


@pytest.mark.parametrize("alg", WINOGRADS)
def test_winograd_threads_split_the_batch_like_im2col(algorithm, alg):
    from threadpoolctl import threadpool_limits
    x, W, b, dy = _case((8, 16, 32, 32), 16, 1, dtype=np.float32)   # above PARALLEL_MIN_FLOPS
    with threadpool_limits(1):
        one = _run(alg, x, W, b, 1, dy)
    with threadpool_limits(2):
        two = _run(alg, x, W, b, 1, dy)
    for name, a, r in zip(("y", "dx", "dW", "db"), two, one):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5 * np.abs(r).max(), err_msg=name)


@pytest.mark.parametrize("alg", WINOGRADS)
def test_resnet20_training_steps_follow_im2col(algorithm, alg):
    """Three SGD steps of ResNet-20 (17 of its 19 convs are 3x3 stride 1) from the same seed:
    the losses under forced Winograd follow im2col's to float32 rounding, amplified by the
    updates and batch norm over a batch of 8 (1e-6 after one step, 1e-5 after two). The
    2-epoch version, with a float-noise yardstick, is benchmarks/winograd_training_check.py."""
    from mlcvlab.models import resnet_cifar
    from mlcvlab.nn import CrossEntropyLoss
    from mlcvlab.optim import SGD
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    losses = {}
    for name in ("im2col", alg):
        algorithm(name)
        model = resnet_cifar(20, rng=0)
        model.flat()
        opt = SGD(model.parameters(), lr=0.01)
        loss_fn = CrossEntropyLoss()
        model.train()
        losses[name] = []
        for _ in range(3):
            losses[name].append(loss_fn(model(X), y))
            opt.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
    a, b = np.array(losses["im2col"]), np.array(losses[alg])
    assert not np.array_equal(a[1:], np.full(2, a[0])), "the loss must move"
    # measured at the third step: 1.1e-5 (F(2x2)), 4.1e-5 (F(4x4))
    np.testing.assert_allclose(b, a, rtol={"winograd": 1e-4, "winograd4": 4e-4}[alg])


@pytest.mark.parametrize("alg", WINOGRADS)
def test_many_blocks_with_a_smaller_last_one_equal_im2col(algorithm, monkeypatch, alg):
    """Blocks of the batch reuse one padded buffer whose border is zeroed once per part, and
    slices of one V and M: 7 samples in blocks of 2 (the last of 1) give im2col's result."""
    x, W, b, dy = _case((7, 3, 9, 10), 4, 1)
    t = winograd.tiles(9, 10, (1, 1), 2 if alg == "winograd" else 4)
    monkeypatch.setattr(winograd, "BLOCK_BYTES", 2 * t.points * 4 * t.th * t.tw * 8)
    assert [s.stop - s.start for s in winograd._blocks(7, 4, t, 8)] == [2, 2, 2, 1]
    ours, ref = _run(alg, x, W, b, 1, dy), _run("im2col", x, W, b, 1, dy)
    for name, a, r in zip(("y", "dx", "dW", "db"), ours, ref):
        np.testing.assert_allclose(a, r, rtol=0, atol=1e-12 * np.abs(r).max(), err_msg=name)


# ------------------------------------------------------------------ the points' own GEMM
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("points, rows, K, P, used", [(16, 19, 7, 37, 37), (36, 64, 64, 100, 70),
                                                      (16, 4, 33, 1, 1), (16, 16, 16, 64, 64)])
def test_points_matmul_equals_np_matmul(dtype, points, rows, K, P, used):
    """Rows not a multiple of 4, P not a multiple of a tile, and a view whose rows are longer
    than what is used (a block smaller than the part's largest)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((points, rows, K)).astype(dtype)
    B, B_buf = winograd._points("wino_V", K, P, dtype, points)
    out, out_buf = winograd._points("wino_M", rows, P, dtype, points)
    B[...] = rng.standard_normal(B.shape)
    out[...] = np.nan                                   # what is not computed stays nan
    winograd.points_matmul(winograd.pack_rows(A), rows, B[:, :, :used], B_buf,
                           out[:, :, :used], out_buf)
    ref = np.matmul(A, B[:, :, :used])
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(out[:, :, :used], ref, rtol=tol, atol=tol * np.abs(ref).max())
    assert np.isnan(out[:, :, used:]).all()


@pytest.mark.parametrize("alg", WINOGRADS)
def test_winograd_on_the_own_gemm_equals_im2col_in_float64(monkeypatch, alg):
    """Forward and dx through points_matmul (forced, as on an AVX-512 host), 20 and 24
    channels, tiles that do not fill the last vector."""
    monkeypatch.setattr(winograd, "own_gemm", lambda rows, K: True)
    x, W, b, dy = _case((3, 20, 9, 11), 24, 1)
    assert_float64_equal(_run(alg, x, W, b, 1, dy), _run("im2col", x, W, b, 1, dy))
