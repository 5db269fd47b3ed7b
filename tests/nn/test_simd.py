"""nn/simd.py: the explicit vectors the direct convolution kernels hold their tiles in."""
import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from mlcvlab.nn import simd


@njit
def _copy_through_vectors(src, dst, at):
    n = simd.width(src)
    simd.store(dst, at + n, simd.load(src, at))
    return n


def test_the_vector_width_is_the_host_cpus():
    from llvmlite import binding
    from numba import config
    if config.CPU_NAME is None:
        avx512 = binding.get_host_cpu_features().get("avx512f", False)
        assert simd.BYTES == (64 if avx512 else 32)
    assert simd.lanes(np.float32) == simd.BYTES // 4 and simd.lanes(np.float64) == simd.BYTES // 8


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_load_and_store_move_width_values_at_any_offset(dtype):
    lanes = simd.lanes(dtype)
    src = np.arange(5 * lanes, dtype=dtype).reshape(5, lanes)   # 2-D: a flat index
    for at in (0, 1, 3, 7):                                  # unaligned offsets too
        dst = np.full((5, lanes), -1, dtype=dtype)
        assert _copy_through_vectors(src, dst, at) == lanes
        flat = dst.reshape(-1)
        moved = flat[at + lanes:at + 2 * lanes]
        np.testing.assert_array_equal(moved, src.reshape(-1)[at:at + lanes])
        assert (np.delete(flat, np.arange(at + lanes, at + 2 * lanes)) == -1).all()


@njit
def _fma(a, b, c, out):
    simd.store(out, 0, simd.fma(simd.load(a, 0), simd.load(b, 0), simd.load(c, 0)))


def test_fma_rounds_once():
    # (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24: a float32 product drops the 2^-24, a fused one keeps it
    n = simd.lanes(np.float32)
    a = np.full(n, 1 + 2.0 ** -12, dtype=np.float32)
    c = np.full(n, -(1 + 2.0 ** -11), dtype=np.float32)
    out = np.zeros(n, dtype=np.float32)
    _fma(a, a, c, out)
    assert (a * a + c == 0).all()                            # NumPy: two roundings
    np.testing.assert_array_equal(out, np.float32(2.0 ** -24))


def test_fma_of_float64_lanes_is_a_times_b_plus_c_rounded_once():
    from fractions import Fraction
    rng = np.random.default_rng(0)
    a, b, c = rng.standard_normal((3, simd.lanes(np.float64)))
    out = np.zeros(simd.lanes(np.float64))
    _fma(a, b, c, out)
    exact = [float(Fraction(p) * Fraction(q) + Fraction(r)) for p, q, r in zip(a, b, c)]
    np.testing.assert_array_equal(out, exact)           # the exact value, rounded once


@njit
def _relu_of_splat(s, out):
    simd.store(out, 0, simd.relu(simd.splat(s)))


@njit
def _relu(v, out):
    simd.store(out, 0, simd.relu(simd.load(v, 0)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_and_splat(dtype):
    out = np.zeros(simd.lanes(dtype), dtype=dtype)
    _relu_of_splat(dtype(2.5), out)
    assert (out == 2.5).all()
    v = np.resize(np.array([-1.0, 0.0, -0.0, np.nan, 3.0, -np.inf, np.inf, 1e-30], dtype=dtype),
                  len(out))
    _relu(v, out)
    expected = np.where(v < 0, 0, v)                         # kernels.relu_forward's rule
    np.testing.assert_array_equal(out, expected)
    assert np.signbit(out[2])                                # -0.0 is not < 0: kept as is


@njit
def _load_first(a):
    return simd.load(a, 0)


@njit
def _store_into(a, b):
    simd.store(a, 0, simd.load(b, 0))


def test_what_a_vector_cannot_hold_is_a_typing_error():
    with pytest.raises(TypingError, match="C-contiguous float32 or float64"):
        _load_first(np.zeros(32, dtype=np.int32))
    with pytest.raises(TypingError, match="C-contiguous float32 or float64"):
        _load_first(np.zeros((4, 32), dtype=np.float32)[:, ::2])
    with pytest.raises(TypingError, match="simd.store"):
        _store_into(np.zeros(16, dtype=np.float32), np.zeros(16))


@njit
def _tile_step(x, w, at, out):
    n = simd.width(x)
    a = simd.load(x, 0)                                     # every sum starts at x[:n]
    a00, a01, a10, a11, a20, a21, a30, a31 = simd.fma_tile(simd.load(x, 0), simd.load(x, n),
                                                           w, at, a, a, a, a, a, a, a, a)
    simd.store_tile(out, 1, 2 * n + 3, a00, a01, a10, a11, a20, a21, a30, a31)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_tile_step_multiplies_four_adjacent_weights_and_stores_rows_step_apart(dtype):
    n = simd.lanes(dtype)
    x = np.arange(1, 2 * n + 1, dtype=dtype)
    w = np.array([9, 2, 3, 5, 7, 9], dtype=dtype)               # the four from index 1
    out = np.zeros(1 + 3 * (2 * n + 3) + 2 * n + 1, dtype=dtype)
    _tile_step(x, w, 1, out)
    for q, wq in enumerate((2, 3, 5, 7)):
        at = 1 + q * (2 * n + 3)
        np.testing.assert_array_equal(out[at:at + n], wq * x[:n] + x[:n])
        np.testing.assert_array_equal(out[at + n:at + 2 * n], wq * x[n:] + x[:n])
    assert out[0] == 0 and out[-1] == 0
