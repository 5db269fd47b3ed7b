"""Test cases shared by the convolution algorithms' tests (test_winograd.py,
test_direct_conv.py): random inputs of a layer, one forward and backward under an algorithm,
and the comparison of its results with a reference's."""
import numpy as np

from mlcvlab.nn import conv


def case(x_shape, F, padding, dtype=np.float64, seed=0, bias=True, k=3):
    """x, W (F, C, k, k, He-scaled), b (or None) and a dy of the output's shape."""
    rng = np.random.default_rng(seed)
    N, C, H, Wd = x_shape
    x = rng.standard_normal(x_shape)
    W = rng.standard_normal((F, C, k, k)) * np.sqrt(2.0 / (k * k * C))
    b = rng.standard_normal(F) if bias else None
    dy = rng.standard_normal((N, F, H + 2 * padding - k + 1, Wd + 2 * padding - k + 1))
    cast = (lambda a: None if a is None else a.astype(dtype))
    return cast(x), cast(W), cast(b), cast(dy)


def run(alg, x, W, b, padding, dy):
    """(y, dx, dW, db) of conv2d and conv2d_grad under set_algorithm(alg)."""
    previous = conv.set_algorithm(alg)
    try:
        y, cache = conv.conv2d(x, W, b, 1, padding)
        return (y,) + conv.conv2d_grad(dy, cache)
    finally:
        conv.set_algorithm(previous)


def assert_float64_equal(ours, ref, rel=1e-12):
    """Each of (y, dx, dW, db) float64 and within rel of the reference's largest value (None
    where the reference's is None)."""
    for name, a, r in zip(("y", "dx", "dW", "db"), ours, ref):
        if r is None:
            assert a is None, name
            continue
        assert a.shape == r.shape and a.dtype == np.float64, name
        np.testing.assert_allclose(a, r, rtol=0, atol=rel * max(1.0, np.abs(r).max()),
                                   err_msg=name)
