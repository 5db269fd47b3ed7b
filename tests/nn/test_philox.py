"""The counter-based dropout generator (mlcvlab.nn.philox) and nn.Dropout's use of it.

Philox4x32-10 is checked against the known-answer vectors of Random123 (file
``tests/kat_vectors`` of github.com/DEShawResearch/random123, the three ``philox4x32 10``
lines: counter (4 words), key (2 words), expected output (4 words)), in NumPy and
compiled by numba, and the masks against an independent pure-Python reference.
"""
import math

import numpy as np
import pytest

from mlcvlab import nn
from mlcvlab.nn import basis, philox

KAT = [
    ("00000000 00000000 00000000 00000000", "00000000 00000000",
     "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    ("ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff",
     "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    ("243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0",
     "d16cfe09 94fdcceb 5001e420 24126ea1"),
]


def _words(text):
    return [int(w, 16) for w in text.split()]


def _reference_philox(ctr, key):
    """Philox4x32-10 on Python ints, written from the paper independently of the library."""
    M = 0xFFFFFFFF
    c, k = list(ctr), list(key)
    for r in range(10):
        if r:
            k = [(k[0] + 0x9E3779B9) & M, (k[1] + 0xBB67AE85) & M]
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & M, (p0 >> 32) ^ c[3] ^ k[1], p0 & M]
    return c


def _reference_mask(n, p, seed, stream, step):
    key = [seed & 0xFFFFFFFF, seed >> 32]
    thr = math.ceil(p * 2**24)                      # keep when u = (x >> 8) 2**-24 >= p
    scale = 1.0 / (1.0 - p)
    out = []
    for b in range((n + 3) // 4):
        x = _reference_philox([b, stream, step & 0xFFFFFFFF, step >> 32], key)
        out += [scale if (w >> 8) >= thr else 0.0 for w in x]
    return np.array(out[:n])


@pytest.mark.parametrize("ctr, key, want", KAT)
def test_known_answers_numpy_and_reference(ctr, key, want):
    got = philox.philox4x32_10(*(np.uint64(w) for w in _words(ctr) + _words(key)))
    assert [int(w) for w in got] == _words(want)
    assert _reference_philox(_words(ctr), _words(key)) == _words(want)


def test_known_answers_numba_compiled():
    from numba import njit
    fn = njit(philox.philox4x32_10)
    for ctr, key, want in KAT:
        got = fn(*(np.uint64(w) for w in _words(ctr) + _words(key)))
        assert [int(w) for w in got] == _words(want)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 35, 1001])
@pytest.mark.parametrize("p, seed, stream, step", [(0.5, 0, 0, 0), (0.3, 2**64 - 1, 7, 2**40 + 3),
                                                    (0.75, 12345, 1, 9)])
def test_mask_equals_reference(n, p, seed, stream, step):
    want = _reference_mask(n, p, seed, stream, step)
    for dtype in (np.float32, np.float64):
        got = philox.dropout_mask((n,), p, seed, stream, step, dtype)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got != 0, want != 0)      # same decisions in both dtypes
        np.testing.assert_allclose(got, want.astype(dtype), rtol=1e-7)


def test_numpy_fallback_equals_compiled():
    flat = np.empty(4 * 37 + 3, np.float32)
    words = philox.key_words(philox.DropoutKey(99, 2, 5))
    philox._numpy_mask(flat, 0, np.uint32(philox.keep_threshold(0.4)), np.float32(1 / 0.6),
                       np.float32(0), *words)
    np.testing.assert_array_equal(flat, philox.dropout_mask(flat.shape, 0.4, 99, 2, 5))


def test_keep_rate_and_independence():
    n, p = 400_000, 0.3
    m = philox.dropout_mask((n,), p, 5, 0, 0)
    kept = np.count_nonzero(m) / n
    assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n), kept   # 5 standard errors
    assert set(np.unique(m)) == {np.float32(0), np.float32(1 / (1 - p))}
    others = [philox.dropout_mask((n,), p, 6, 0, 0), philox.dropout_mask((n,), p, 5, 1, 0),
              philox.dropout_mask((n,), p, 5, 0, 1)]
    for o in others:      # another seed, stream or step: agreement as for independent masks
        agree = np.mean((o != 0) == (m != 0))
        assert abs(agree - (p * p + (1 - p) ** 2)) < 0.01, agree


def test_p_zero_and_one():
    assert np.all(philox.dropout_mask((3, 5), 0.0, 1, 0, 0) == 1)
    assert np.all(philox.dropout_mask((3, 5), 1.0, 1, 0, 0) == 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="drop probability"):
        philox.dropout_mask((3,), 1.5, 0, 0, 0)
    with pytest.raises(ValueError, match="seed < 2\\*\\*64"):
        philox.dropout_mask((3,), 0.5, -1, 0, 0)
    with pytest.raises(TypeError, match="float32 or float64"):
        philox.dropout_mask((3,), 0.5, 0, 0, 0, np.int32)


def test_layer_seed_leaves_the_generator_stream_alone():
    g = np.random.default_rng(3)
    a, b = nn.Dropout(0.5, rng=g), nn.Dropout(0.5, rng=g)
    assert int(a.mask_seed) != int(b.mask_seed)
    assert g.random() == np.random.default_rng(3).random()
    assert int(nn.Dropout(0.5, rng=3).mask_seed) == int(nn.Dropout(0.5, rng=3).mask_seed)


def test_module_masks_follow_the_step_and_resume_exactly():
    x = np.ones((6, 9), np.float32)
    d = nn.Dropout(0.5, rng=1)
    first = d(x)
    state = d.state_dict()
    second = d(x)
    assert int(d.mask_step) == 2 and not np.array_equal(first, second)
    again = nn.Dropout(0.5, rng=2)             # another seed, restored from the state
    again.load_state_dict(state)
    np.testing.assert_array_equal(again(x), second)
    np.testing.assert_array_equal(first, basis.dropout(x, 0.5, rng=philox.DropoutKey(
        int(d.mask_seed), 0, 0))[0])
    d.eval()
    np.testing.assert_array_equal(d(x), x)
    assert int(d.mask_step) == 2               # evaluation draws nothing


def test_state_saved_before_counter_masks_still_loads():
    m = nn.Sequential(nn.Dropout(0.5, rng=0), nn.Linear(3, 2, rng=0))
    state = {k: v for k, v in m.state_dict().items() if not k.startswith("0.mask_")}
    seed = int(m[0].mask_seed)
    m.load_state_dict(state)
    assert int(m[0].mask_seed) == seed
    with pytest.raises(ValueError, match="missing keys"):
        m.load_state_dict({k: v for k, v in state.items() if k != "1.bias"})
