"""The numba kernels of mlcvlab.nn.kernels against the plain NumPy paths, float32 and float64.

Each kernel is compared with its NumPy reference (conv.col2im_numpy,
maxpool2d_numpy, the NumPy batch norm), and the layers are run once with and once
without the kernels (``kernels.available`` patched to False) to check both paths agree.
"""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from mlcvlab.nn import basis, conv, kernels

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-12}

# (x shape, kernel, stride, padding): 3x3 same, stride 2, non-square, 1x1, kernel > stride
IM2COL_CASES = [
    ((2, 3, 7, 6), (3, 3), (1, 1), (1, 1)),
    ((2, 2, 9, 7), (3, 3), (2, 2), (1, 1)),
    ((1, 3, 8, 5), (3, 2), (2, 1), (0, 1)),
    ((3, 4, 5, 5), (1, 1), (2, 2), (0, 0)),
    ((2, 1, 6, 6), (5, 5), (1, 1), (2, 2)),
]


def _rand(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _out_hw(shape, k, s, p):
    return [(shape[2 + a] + 2 * p[a] - k[a]) // s[a] + 1 for a in (0, 1)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, k, s, p", IM2COL_CASES)
def test_im2col_into_a_buffer_matches_the_explicit_fields(shape, k, s, p, dtype):
    x = _rand(shape, dtype)
    N, C, H, W = shape
    Ho, Wo = _out_hw(shape, k, s, p)
    xp = np.zeros((N, C, H + 2 * p[0], W + 2 * p[1]), dtype)
    xp[:, :, p[0]:p[0] + H, p[1]:p[1] + W] = x
    ref = np.empty((C, k[0], k[1], N, Ho, Wo), dtype)      # the definition, one field at a time
    for i in range(k[0]):
        for j in range(k[1]):
            window = xp[:, :, i:i + s[0] * Ho:s[0], j:j + s[1] * Wo:s[1]]
            ref[:, i, j] = window.transpose(1, 0, 2, 3)
    ref = ref.reshape(C * k[0] * k[1], N * Ho * Wo)
    out = np.full(ref.shape, np.nan, dtype)
    assert conv.im2col_numpy(x, k, s, p, out=out) is out
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(conv.im2col_numpy(x, k, s, p), ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, k, s, p", IM2COL_CASES)
def test_col2im_kernel_matches_numpy_and_is_the_adjoint(shape, k, s, p, dtype):
    Ho, Wo = _out_hw(shape, k, s, p)
    cols = _rand((shape[1] * k[0] * k[1], shape[0] * Ho * Wo), dtype, seed=1)
    dx = np.full(shape, np.nan, dtype=dtype)          # the kernel must zero it first
    kernels.get("col2im")(cols, *k, *s, *p, dx)
    np.testing.assert_allclose(dx, conv.col2im_numpy(cols, shape, k, s, p), rtol=TOL[dtype],
                               atol=TOL[dtype])
    # <im2col(x), cols> == <x, col2im(cols)>: col2im is the transpose of im2col
    x = _rand(shape, np.float64, seed=2)
    lhs = np.sum(conv.im2col_numpy(x, k, s, p) * cols)
    assert np.isclose(lhs, np.sum(x * dx), rtol=1e-4 if dtype == np.float32 else 1e-10)


# stride-1 cases of the row-padded layout: 3x3 same, no padding, non-square kernel and padding,
# 1x1, 5x5 with more padding rows than columns
ROW_PADDED_CASES = [
    ((2, 3, 7, 6), (3, 3), (1, 1)),
    ((2, 2, 5, 6), (3, 3), (0, 0)),
    ((1, 3, 8, 5), (3, 2), (2, 1)),
    ((3, 4, 5, 5), (1, 1), (0, 0)),
    ((2, 1, 6, 7), (5, 5), (3, 2)),
]


@pytest.mark.parametrize("stride, padding, kernel", [((2, 2), (1, 1), (3, 3)),
                                                     ((1, 2), (0, 0), (3, 3)),
                                                     ((1, 1), (0, 1), (1, 1))])
def test_row_padded_layout_applies_only_to_stride_one_and_narrow_padding(stride, padding,
                                                                         kernel):
    assert conv.row_padded_geometry(8, 8, kernel, stride, padding) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, k, p", ROW_PADDED_CASES)
def test_im2col_rows_holds_the_fields_of_im2col_on_a_wider_grid(shape, k, p, dtype):
    x = _rand(shape, dtype)
    N, C, H, W = shape
    g = conv.row_padded_geometry(H, W, k, (1, 1), p)
    assert (g.Ho, g.Wo) == tuple(_out_hw(shape, k, (1, 1), p)) and g.pitch >= g.Wo
    buf = np.full(N * C * g.plane + g.slack, np.nan, dtype)   # pad_rows must write every value
    assert conv.pad_rows(x, g, p, buf=buf) is buf
    cols = conv.im2col_rows(buf, N, C, k, g, out=np.full((C * k[0] * k[1], N * g.Ho * g.pitch),
                                                         np.nan, dtype))
    assert np.isfinite(cols).all()          # the dropped columns read zeros or pixels too
    ref = conv.im2col_numpy(x, k, (1, 1), p).reshape(-1, N, g.Ho, g.Wo)
    np.testing.assert_array_equal(cols.reshape(-1, N, g.Ho, g.pitch)[..., :g.Wo], ref)


@pytest.mark.parametrize("use_numba", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, k, p", ROW_PADDED_CASES)
def test_col2im_rows_is_the_adjoint_of_im2col_rows(shape, k, p, dtype, use_numba, monkeypatch):
    monkeypatch.setattr(kernels, "available", lambda: use_numba)
    N, C, H, W = shape
    g = conv.row_padded_geometry(H, W, k, (1, 1), p)
    cols = _rand((C * k[0] * k[1], N * g.Ho * g.pitch), dtype, seed=1)
    buf = np.full(N * C * g.plane + g.slack, np.nan, dtype)   # col2im_rows must zero it first
    conv.col2im_rows(cols, N, C, k, g, buf)
    # <im2col_rows(b), cols> == <b, col2im_rows(cols)> for any buffer b
    b = _rand(buf.shape, np.float64, seed=2)
    lhs = np.sum(conv.im2col_rows(b, N, C, k, g, out=np.empty(cols.shape)) * cols)
    assert np.isclose(lhs, np.sum(b * buf), rtol=1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, s, p", [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)),
                                     ((3, 2), (1, 2), (1, 0))])
def test_maxpool_kernels_match_numpy(k, s, p, dtype):
    # small integers give many ties: the first maximum (row-major) must win in both paths;
    # a nan, an inf and a -inf window must come out as the NumPy path gives them (nan propagates)
    x = np.random.default_rng(3).integers(-2, 3, (2, 3, 7, 6)).astype(dtype)
    x[0, 0, 1, 1], x[0, 1, 3, 4], x[1, 2, 0, 0] = np.nan, np.inf, np.nan
    x[1, 0, :3, :3] = -np.inf
    Ho, Wo = _out_hw(x.shape, k, s, p)
    y = np.empty((2, 3, Ho, Wo), dtype=dtype)
    argmax = np.empty(y.shape, dtype=np.uint8)
    kernels.get("maxpool")(x, *k, *s, *p, y, argmax, True)
    y_ref, arg_ref = conv.maxpool2d_numpy(x, k, s, p)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, arg_ref)
    finite = np.nan_to_num(x, nan=0.0)             # and the fast loop where there is no nan
    y2, arg2 = np.empty_like(y), np.empty_like(argmax)
    kernels.get("maxpool")(finite, *k, *s, *p, y2, arg2, False)
    y2_ref, arg2_ref = conv.maxpool2d_numpy(finite, k, s, p)
    np.testing.assert_array_equal(y2, y2_ref)
    np.testing.assert_array_equal(arg2, arg2_ref)

    dy = _rand(y.shape, dtype, seed=4)
    dx = np.full(x.shape, np.nan, dtype=dtype)
    kernels.get("maxpool_grad")(dy, argmax, *k, *s, *p, dx)
    cache = conv.PoolCache(x.shape, k, s, p, argmax)
    np.testing.assert_allclose(dx, conv.maxpool2d_grad_numpy(dy, cache), rtol=TOL[dtype],
                               atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (2, 3, 7, 5)])   # even, and odd edges
def test_maxpool_2x2_kernels_match_numpy(shape, dtype):
    x = np.random.default_rng(5).integers(-2, 3, shape).astype(dtype)   # many ties
    x[1, 2, :2, :2] = -np.inf
    k = s = (2, 2)
    y_ref, arg_ref = conv.maxpool2d_numpy(x, k, s, (0, 0))
    y, argmax = np.full(y_ref.shape, np.nan, dtype), np.full(y_ref.shape, 9, np.uint8)
    kernels.get("maxpool_2x2")(x, y, argmax)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, arg_ref)
    dy = _rand(y.shape, dtype, seed=6)
    dx = np.full(x.shape, np.nan, dtype=dtype)          # every value written, odd edges zeroed
    kernels.get("maxpool_2x2_grad")(dy, argmax, dx)
    ref = conv.maxpool2d_grad_numpy(dy, conv.PoolCache(x.shape, k, s, (0, 0), argmax))
    np.testing.assert_array_equal(dx, ref)


@pytest.mark.parametrize("kernel_size, stride, padding", [(2, 2, 0), (3, 2, 1)])
def test_maxpool_propagates_nan_at_the_first_nan_with_and_without_numba(kernel_size, stride,
                                                                        padding, monkeypatch):
    x = np.random.default_rng(8).standard_normal((2, 2, 6, 6)).astype(np.float32)
    x[0, 0, 0, 1], x[0, 0, 1, 0], x[1, 1, 4, 5] = np.nan, np.nan, np.nan
    outs = []
    for use_numba in (True, False):
        monkeypatch.setattr(kernels, "available", lambda: use_numba)
        y, cache = conv.maxpool2d(x, kernel_size, stride, padding)
        outs.append((y, cache.argmax))
    y, argmax = outs[0]
    touched = conv.maxpool2d(np.isnan(x).astype(np.float32), kernel_size, stride, padding)[0]
    np.testing.assert_array_equal(np.isnan(y), touched > 0)   # every window with a nan is nan
    np.testing.assert_array_equal(y, outs[1][0])
    np.testing.assert_array_equal(argmax, outs[1][1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_kernels_match_numpy(dtype):
    N, C, L = 4, 3, 10
    x = _rand((N, C, L), dtype) * 3 + 1
    gamma, beta = _rand(C, dtype, 5), _rand(C, dtype, 6)
    y, x_hat = np.empty_like(x), np.empty_like(x)
    mean, var, inv_std = (np.empty(C, dtype) for _ in range(3))
    kernels.get("bn_forward")(x, gamma, beta, 1e-5, y, x_hat, mean, var, inv_std)
    x64 = x.astype(np.float64)
    mu, v = x64.mean(axis=(0, 2)), x64.var(axis=(0, 2))
    ref_hat = (x64 - mu[:, None]) / np.sqrt(v[:, None] + 1e-5)
    tol = dict(rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(mean, mu, **tol)
    np.testing.assert_allclose(var, v, **tol)
    np.testing.assert_allclose(inv_std, 1 / np.sqrt(v + 1e-5), **tol)
    np.testing.assert_allclose(x_hat, ref_hat, rtol=10 * TOL[dtype], atol=10 * TOL[dtype])
    np.testing.assert_allclose(y, ref_hat * gamma[:, None] + beta[:, None],
                               rtol=10 * TOL[dtype], atol=10 * TOL[dtype])

    dy = _rand(x.shape, dtype, seed=7)
    scale = (gamma * inv_std).astype(dtype)
    dx, dgamma, dbeta = np.empty_like(x), np.empty(C, dtype), np.empty(C, dtype)
    kernels.get("bn_backward")(dy, x_hat, scale, dx, dgamma, dbeta)
    m = N * L
    ref_db, ref_dg = dy.sum(axis=(0, 2)), (dy * x_hat).sum(axis=(0, 2))
    ref_dx = scale[:, None] * (dy - ref_db[:, None] / m - x_hat * ref_dg[:, None] / m)
    np.testing.assert_allclose(dbeta, ref_db, rtol=10 * TOL[dtype], atol=10 * TOL[dtype])
    np.testing.assert_allclose(dgamma, ref_dg, rtol=10 * TOL[dtype], atol=10 * TOL[dtype])
    np.testing.assert_allclose(dx, ref_dx, rtol=10 * TOL[dtype], atol=10 * TOL[dtype])


def _conv_pool_bn(x, W, b):
    """conv -> batchnorm -> maxpool forward and backward; every output and gradient."""
    y, c1 = conv.conv2d(x, W, b, 1, 1)
    gamma = np.linspace(0.5, 1.5, W.shape[0]).astype(x.dtype)
    z, c2 = basis.batchnorm(y, gamma, np.zeros_like(gamma))
    p, c3 = conv.maxpool2d(z, 2)
    dp = np.cos(np.arange(p.size, dtype=x.dtype)).reshape(p.shape)
    dz = conv.maxpool2d_grad(dp, c3)
    dy, dgamma, dbeta = basis.batchnorm_grad_fused(dz, c2)
    dx, dW, db = conv.conv2d_grad(dy, c1)
    return [y, z, p, dz, dy, dgamma, dbeta, dx, dW, db]


@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_agree_with_and_without_numba(dtype, monkeypatch):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 3, 8, 8)).astype(dtype)
    W = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    monkeypatch.setattr(conv, "BLOCK_BYTES", 2 * 27 * 64 * 4)   # blocks of 1 or 2 samples
    fast = _conv_pool_bn(x, W, b)
    monkeypatch.setattr(kernels, "_AVAILABLE", False)
    slow = _conv_pool_bn(x, W, b)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for a, r in zip(fast, slow):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, r, rtol=tol, atol=tol)


def test_scratch_reuses_one_buffer_per_dtype_and_grows():
    a = kernels.scratch((10, 20), np.float32)
    b = kernels.scratch((5, 4), np.float32)
    assert b.shape == (5, 4) and np.shares_memory(a, b)
    big = kernels.scratch((10**4,), np.float32)
    assert big.size == 10**4
    assert not np.shares_memory(kernels.scratch((3,), np.float64), big)


def test_conv_cache_keeps_the_input_not_the_im2col_matrix():
    x = _rand((2, 3, 6, 6), np.float32)
    _, cache = conv.conv2d(x, _rand((4, 3, 3, 3), np.float32, 1), None, 1, 1)
    arrays = [a for a in cache if isinstance(a, np.ndarray)]
    assert sum(a.nbytes for a in arrays) == x.nbytes + 4 * 3 * 3 * 3 * 4
    assert cache.x is x


# --------------------------------------------------------------------------- threads
@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_channel_range_kernels_match_the_whole_kernels(dtype):
    N, C, L = 3, 5, 7
    x, dy = _rand((N, C, L), dtype, 10) * 2 + 1, _rand((N, C, L), dtype, 11)
    gamma, beta = _rand(C, dtype, 12), _rand(C, dtype, 13)
    whole = [np.empty_like(x), np.empty_like(x)] + [np.empty(C, dtype) for _ in range(3)]
    kernels.get("bn_forward")(x, gamma, beta, 1e-5, *whole)
    parts = [np.full_like(a, np.nan) for a in whole]
    for c0, c1 in [(0, 2), (2, 3), (3, 5)]:          # every channel written by exactly one range
        kernels.get("bn_forward_channels")(x, gamma, beta, 1e-5, *parts, c0, c1)
    for a, r in zip(parts, whole):
        np.testing.assert_array_equal(a, r)
    scale, x_hat = gamma * whole[4], whole[1]
    ref = [np.empty_like(x), np.empty(C, dtype), np.empty(C, dtype)]
    kernels.get("bn_backward")(dy, x_hat, scale, *ref)
    got = [np.full_like(a, np.nan) for a in ref]
    for c0, c1 in [(0, 4), (4, 5)]:
        kernels.get("bn_backward_channels")(dy, x_hat, scale, *got, c0, c1)
    for a, r in zip(got, ref):
        np.testing.assert_array_equal(a, r)


def test_split_covers_the_range_in_near_equal_parts():
    assert kernels.split(10, 3) == [slice(0, 3), slice(3, 6), slice(6, 10)]
    assert kernels.split(2, 4) == [slice(0, 1), slice(1, 2)]        # never an empty part
    assert kernels.split(0, 2) == [slice(0, 0)]


def test_parallel_map_keeps_the_order_and_restores_the_blas_threads():
    before = [c.get_num_threads() for c in kernels._blas_controllers()]
    seen = []

    def work(i):
        seen.append(kernels.num_threads())        # nested calls run serially
        return np.ones((50, 50)) @ np.full((50, 50), float(i))

    out = kernels.parallel_map(work, [0, 1, 2, 3])
    assert [o[0, 0] for o in out] == [0.0, 50.0, 100.0, 150.0]
    assert seen == [1, 1, 1, 1]
    assert [c.get_num_threads() for c in kernels._blas_controllers()] == before


def _layers_forward_backward(x, W, gamma):
    """conv -> batchnorm -> relu, training forward and backward, and the eval BN + relu."""
    from mlcvlab.nn import BatchNorm2d
    y, c1 = conv.conv2d(x, W, None, 2, 1)
    z, c2 = basis.batchnorm(y, gamma, gamma[::-1].copy())
    r, c3 = basis.relu(z)
    dr = np.sin(np.arange(r.size, dtype=x.dtype)).reshape(r.shape)
    dz = basis.relu_grad(dr, c3)
    dy, dgamma, dbeta = basis.batchnorm_grad_fused(dz, c2)
    dx, dW, _ = conv.conv2d_grad(dy, c1)
    bn = BatchNorm2d(W.shape[0]).astype(x.dtype)
    bn.running_mean[...], bn.running_var[...] = c2.mean, c2.var
    y1, c4 = conv.conv2d(x, W, gamma, 1, 1)           # stride 1, the row-padded path; a bias
    dx1, dW1, db1 = conv.conv2d_grad(np.cos(y1), c4)     # db summed over parts and blocks
    return [y, z, r, dz, dy, dgamma, dbeta, dx, dW, bn.eval().forward(y), y1, dx1, dW1, db1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_split_over_threads_agree_with_one_thread(dtype, monkeypatch):
    rng = np.random.default_rng(14)
    x = rng.standard_normal((7, 3, 12, 12)).astype(dtype)
    W = rng.standard_normal((6, 3, 3, 3)).astype(dtype)
    gamma = np.linspace(0.5, 1.5, 6).astype(dtype)
    monkeypatch.setattr(conv, "BLOCK_BYTES", 2 * 27 * 36 * x.itemsize)   # several blocks
    monkeypatch.setattr(kernels, "PARALLEL_MIN_SIZE", 100)           # relu, BN eval split too
    monkeypatch.setattr(conv, "PARALLEL_MIN_FLOPS", 0)                # and these small convs
    monkeypatch.setattr(kernels, "num_threads", lambda: 1)
    serial = _layers_forward_backward(x, W, gamma)
    monkeypatch.setattr(kernels, "num_threads", lambda: 3)            # 3 uneven parts
    threaded = _layers_forward_backward(x, W, gamma)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, r in zip(threaded, serial):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, r, rtol=tol, atol=tol)
    y1, db1 = threaded[-4], threaded[-1]
    np.testing.assert_allclose(db1, np.cos(y1).sum(axis=(0, 2, 3)), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_forward_kernel_matches_numpy_maximum(dtype, monkeypatch):
    """max(x, 0) on the numba path split over threads, on the NumPy fallback and for a
    non-contiguous x: nan stays nan, inf and -inf map as in np.maximum and torch.relu."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 5, 4, 3)).astype(dtype)
    x.flat[[0, 1, 2, 3]] = [np.nan, np.inf, -np.inf, 0.0]
    expected = np.maximum(x, 0)
    monkeypatch.setattr(kernels, "PARALLEL_MIN_SIZE", 10)
    monkeypatch.setattr(kernels, "num_threads", lambda: 4)
    y, cache = basis.relu(x)
    assert y.dtype == dtype and cache.value is y          # the output: x may be freed
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(basis.relu(x.transpose(0, 2, 1, 3))[0],
                                  expected.transpose(0, 2, 1, 3))
    monkeypatch.setattr(kernels, "available", lambda: False)
    np.testing.assert_array_equal(basis.relu(x)[0], expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward_kernel_is_threshold_backward(dtype, monkeypatch):
    """dx = 0 where x <= 0, else dy -- 0 also where dy is nan or inf, dy where x is nan (as
    torch's threshold_backward), on the numba path split over threads and on the NumPy
    fallback."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5, 4, 3)).astype(dtype)
    x[0, 0, 0, :2] = 0.0
    dy = rng.standard_normal(x.shape).astype(dtype)
    dy.flat[np.flatnonzero(x <= 0)[:3]] = np.nan     # dy nan where x <= 0: dx is still 0
    dy.flat[[0, 1, 2]] = [np.nan, np.inf, -np.inf]
    x.flat[[5, 6]] = np.nan                           # x nan: dx is dy
    expected = np.where(x <= 0, 0, dy).astype(dtype)
    assert np.all(expected.flat[[5, 6]] == dy.flat[[5, 6]])
    _, cache = basis.relu(x)
    monkeypatch.setattr(kernels, "PARALLEL_MIN_SIZE", 10)
    monkeypatch.setattr(kernels, "num_threads", lambda: 4)
    got = basis.relu_grad(dy, cache)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, expected)
    monkeypatch.setattr(kernels, "available", lambda: False)
    np.testing.assert_array_equal(basis.relu_grad(dy, cache), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 3, 5, 4), (9, 6)])
def test_batchnorm_eval_kernel_matches_numpy(shape, dtype, monkeypatch):
    """Batch norm in evaluation (x * scale + shift per channel): the numba kernel split over
    threads gives the NumPy path's values bit for bit, for 4-D and 2-D inputs."""
    from mlcvlab import nn
    rng = np.random.default_rng(5)
    bn = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(shape[1]).astype(dtype)
    bn.running_mean[...] = rng.standard_normal(shape[1])
    bn.running_var[...] = rng.random(shape[1]) + 0.5
    bn.weight.data[...] = rng.standard_normal(shape[1])
    bn.bias.data[...] = rng.standard_normal(shape[1])
    bn.eval()
    x = rng.standard_normal(shape).astype(dtype)
    monkeypatch.setattr(kernels, "PARALLEL_MIN_SIZE", 10)
    monkeypatch.setattr(kernels, "num_threads", lambda: 3)
    got = bn.forward(x)
    with monkeypatch.context() as m:
        m.setattr(kernels, "available", lambda: False)
        expected = bn.forward(x)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, expected)
    inv_std = 1 / np.sqrt(bn.running_var + bn.eps)
    bshape = (1, -1) + (1,) * (len(shape) - 2)
    ref = ((x - bn.running_mean.reshape(bshape)) * (bn.weight.data * inv_std).reshape(bshape)
           + bn.bias.data.reshape(bshape))
    np.testing.assert_allclose(got, ref, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


def _blas_threads():
    return [c.get_num_threads() for c in kernels._blas_controllers()]


def test_one_blas_thread_restores_the_callers_setting_even_on_error():
    with threadpool_limits(2, user_api="blas"):      # the tests run BLAS on one thread
        _check_one_blas_thread()


def _check_one_blas_thread():
    before = _blas_threads()
    assert before and all(n == 2 for n in before), "threadpoolctl sees NumPy's BLAS"
    with kernels.one_blas_thread():
        assert _blas_threads() == [1] * len(before)
    assert _blas_threads() == before
    with pytest.raises(ZeroDivisionError):
        with kernels.one_blas_thread():
            1 / 0
    assert _blas_threads() == before


def test_a_conv_too_small_to_split_runs_whole_with_one_blas_thread(monkeypatch):
    """Below PARALLEL_MIN_FLOPS the batch is one part, run in the calling thread with BLAS on one
    thread; from it up, one part per thread."""
    monkeypatch.setattr(kernels, "num_threads", lambda: 2)
    with threadpool_limits(2, user_api="blas"):
        _check_small_conv_runs_whole()
        assert all(n == 2 for n in _blas_threads())


def _check_small_conv_runs_whole():
    small, big = conv.PARALLEL_MIN_FLOPS - 1, conv.PARALLEL_MIN_FLOPS
    assert conv._batch_parts(128, small) == [slice(0, 128)]
    assert conv._batch_parts(128, big) == [slice(0, 64), slice(64, 128)]
    seen = []
    out = conv._map_parts(lambda part: seen.append((part, _blas_threads())) or part.stop,
                          conv._batch_parts(128, small))
    assert out == [128] and seen == [(slice(0, 128), [1] * len(_blas_threads()))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shapes", [((6, 4001), (4001, 25)), ((7, 3), (3, 5)),
                                    ((33, 17), (17, 40))])
def test_gemm_is_the_matrix_product_into_any_out(shapes, dtype):
    """kernels.gemm (np.dot, which releases the GIL for every size) gives matmul's product,
    with transposed operands, into a C-contiguous out (returned), and into a strided out too
    (which np.dot refuses: gemm hands that one to matmul)."""
    rng = np.random.default_rng(0)
    (m, k), (_, n) = shapes
    a = rng.standard_normal((m, k)).astype(dtype)
    b_t = rng.standard_normal((n, k)).astype(dtype)           # b = b_t.T, Fortran-ordered
    want = a.astype(np.float64) @ b_t.T.astype(np.float64)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    got = kernels.gemm(a, b_t.T)
    assert got.dtype == dtype and got.shape == (m, n)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.sqrt(k))
    out = np.full((m, n), np.nan, dtype)
    assert kernels.gemm(a, b_t.T, out=out) is out
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol * np.sqrt(k))
    strided = np.full((m, 2 * n), np.nan, dtype)[:, ::2]
    assert kernels.gemm(a, b_t.T, out=strided) is strided
    np.testing.assert_allclose(strided, want, rtol=tol, atol=tol * np.sqrt(k))
