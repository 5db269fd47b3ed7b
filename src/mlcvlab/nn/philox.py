"""Counter-based dropout masks: Philox4x32-10, one source for the CPU and the GPU.

Philox4x32-10 (Salmon, Moraes, Dror and Shaw 2011, "Parallel random numbers: as easy as
1, 2, 3") maps a 128-bit counter and a 64-bit key to 128 random bits through 10 rounds of
two 32x32 -> 64-bit multiplications. There is no state to carry: the mask of a dropout
layer at training step t is a pure function of (key, t), so

* the CPU and the GPU draw the same mask (the round function below is compiled with
  ``numba.njit`` here and as a CUDA device function in
  :mod:`mlcvlab.parallel.cuda_kernels`; called on NumPy arrays it is the NumPy fallback);
* data-parallel workers draw independent masks without a generator each (the worker
  index is a counter word), and ``--dist local --workers 1``, a one-worker
  data-parallel step and ``--dist cuda --workers 1`` draw identical masks;
* a checkpoint stores two integers per layer (its seed and step), not a generator state.

The words, for element i (row-major) of the mask at a layer's forward number ``step``:

    key     = (seed mod 2**32, seed >> 32)          64-bit per-layer seed
    counter = (i // 4, stream, step mod 2**32, step >> 32)
    x       = word i % 4 of philox4x32_10(counter, key)

``stream`` is the data-parallel worker index (0 outside data parallelism). The layer
needs no word of its own: every Dropout layer draws its own 64-bit seed when it is built
(:func:`layer_seed`). The uniform is u = (x >> 8) * 2**-24 (24 bits: exact in float32),
and a unit is *kept* when u >= p, i.e. with probability 1 - ceil(p 2**24) / 2**24
(within 2**-24 of 1 - p). The test is done on integers, (x >> 8) >= ceil(p 2**24), so that
float32 and float64 arrays, CPU and GPU, make the same decision. Kept units get
1 / (1 - p) in the array's dtype, dropped ones 0 (inverted dropout).
The known-answer vectors of Random123 (``tests/kat_vectors``) are checked in
``tests/nn/test_philox.py``.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Tuple

import numpy as np

# Random123's philox.h: the multipliers and the Weyl key increments (golden ratio, sqrt(3)-1)
PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint64(0x9E3779B9)
PHILOX_W1 = np.uint64(0xBB67AE85)
MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
SHIFT8_32 = np.uint32(8)   # x >> 8: the top 24 bits of a word
ROUNDS = 10
UNIFORM_BITS = 24
MAX_BLOCKS = 2**32          # the block index is one 32-bit counter word


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of the counter (c0, c1, c2, c3) under the key (k0, k1).

    Arguments are unsigned integers holding 32-bit words (NumPy scalars or arrays, or
    integers inside numba); returns the four output words as uint32. Written in the
    operations that numba (CPU and CUDA) and NumPy all accept: each 32x32-bit product
    in uint64, every word cast back to uint32 (numba widens uint32 arithmetic to 64
    bits; the casts keep the words 32-bit, which lets LLVM vectorize the CPU loop),
    nothing ever a float.
    """
    u32, u64 = np.uint32, np.uint64
    c0, c1, c2, c3 = u32(c0 & MASK32), u32(c1 & MASK32), u32(c2 & MASK32), u32(c3 & MASK32)
    k0, k1 = u32(k0 & MASK32), u32(k1 & MASK32)
    for _ in range(ROUNDS):
        p0 = u64(c0) * PHILOX_M0
        p1 = u64(c2) * PHILOX_M1
        c0, c1, c2, c3 = (u32((p1 >> SHIFT32) ^ c1 ^ k0), u32(p1 & MASK32),
                          u32((p0 >> SHIFT32) ^ c3 ^ k1), u32(p0 & MASK32))
        k0 = u32((k0 + PHILOX_W0) & MASK32)
        k1 = u32((k1 + PHILOX_W1) & MASK32)
    return c0, c1, c2, c3


class DropoutKey(NamedTuple):
    """Where a dropout mask comes from: a layer's 64-bit ``seed``, the data-parallel
    worker ``stream`` (0 outside data parallelism) and the layer's forward number ``step``."""
    seed: int
    stream: int
    step: int


def keep_threshold(p: float) -> int:
    """ceil(p 2**24): a unit is kept when the top 24 bits of its word are >= this."""
    return int(math.ceil(float(p) * 2**UNIFORM_BITS))


def mask_scale(p: float) -> float:
    """The value of a kept unit: 1 / (1 - p) (0 for p = 1, which drops every unit)."""
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - float(p))


def key_words(key: DropoutKey) -> Tuple[np.uint64, ...]:
    """(k0, k1, stream, step_lo, step_hi) as uint64 words, range-checked."""
    seed, stream, step = int(key.seed), int(key.stream), int(key.step)
    if not (0 <= seed < 2**64 and 0 <= stream < 2**32 and 0 <= step < 2**64):
        raise ValueError(f"dropout key: expected 0 <= seed < 2**64, 0 <= stream < 2**32 and "
                         f"0 <= step < 2**64, got {key}")
    words = (seed & 0xFFFFFFFF, seed >> 32, stream, step & 0xFFFFFFFF, step >> 32)
    return tuple(np.uint64(w) for w in words)


def layer_seed(gen: np.random.Generator) -> int:
    """A 64-bit seed for a dropout layer built with the generator ``gen``.

    It comes from a child of gen's seed sequence (``SeedSequence.spawn``), so the
    generator's own stream (the weights it initializes next) is left as it was, and layers
    sharing one generator get distinct seeds in the order they are built. A generator
    without a seed sequence gives one draw instead.
    """
    seq = getattr(gen.bit_generator, "seed_seq", None)
    if isinstance(seq, np.random.SeedSequence):
        return int(seq.spawn(1)[0].generate_state(1, np.uint64)[0])
    return int(gen.integers(0, 2**64, dtype=np.uint64))


def with_globals(fn, name: str, **names):
    """A copy of the function ``fn`` whose global ``names`` are rebound (e.g. the round
    function to its numba-compiled version, so that a compiled caller can call it)."""
    scope = dict(fn.__globals__, **names)
    copy = type(fn)(fn.__code__, scope, name, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = name
    return copy


def _fill_mask(out, b0, thr, scale, zero, k0, k1, stream, step_lo, step_hi):
    """Mask values of the 4-element blocks b0, b0 + 1, ... into ``out`` (a multiple of 4
    elements long); thr uint32, scale and zero in out's dtype, the key words uint64. The
    loop has no branch and counts from 0, which is what LLVM needs to vectorize the
    rounds (4 blocks per AVX2 instruction; the loop from b0 with a partial last block
    stayed scalar and took 14x as long for a (128, 1000) mask, one run on a loaded host)."""
    for j in range(out.size // 4):
        x0, x1, x2, x3 = philox4x32_10(np.uint64(b0 + j), stream, step_lo, step_hi, k0, k1)
        out[4 * j] = scale if (x0 >> SHIFT8_32) >= thr else zero
        out[4 * j + 1] = scale if (x1 >> SHIFT8_32) >= thr else zero
        out[4 * j + 2] = scale if (x2 >> SHIFT8_32) >= thr else zero
        out[4 * j + 3] = scale if (x3 >> SHIFT8_32) >= thr else zero


_CPU = None


def _cpu_kernel():
    """``_fill_mask`` compiled by numba (the round function inlined), or None without numba."""
    global _CPU
    if _CPU is None:
        try:
            from numba import njit
        except ImportError:    # pragma: no cover - numba is a dependency
            _CPU = False
            return None
        round_fn = njit(inline="always", nogil=True, cache=True)(philox4x32_10)
        _CPU = njit(nogil=True, cache=True)(with_globals(_fill_mask, "_fill_mask_cpu",
                                             philox4x32_10=round_fn))
    return _CPU or None


def _numpy_mask(out: np.ndarray, b0: int, thr, scale, zero, *words) -> None:
    """``_fill_mask`` with NumPy arrays as the counters: the blocks of ``out`` (any
    length: the last block may be partial) from block b0 on. The fallback without numba,
    and the partial last block of every mask."""
    k0, k1, stream, lo, hi = words
    blocks = np.arange(b0, b0 + (out.size + 3) // 4, dtype=np.uint64)
    x = np.stack(philox4x32_10(blocks, stream, lo, hi, k0, k1), axis=1).reshape(-1)[:out.size]
    out[...] = np.where((x >> SHIFT8_32) >= thr, scale, zero)


def dropout_mask(shape, p: float, seed: int, stream: int, step: int,
                 dtype=np.float32) -> np.ndarray:
    """The scaled keep mask of ``shape``: 1/(1-p) where a unit is kept, else 0, in ``dtype``.

    seed, stream, step: the :class:`DropoutKey` words (see the module docstring). Large
    masks are filled by one range of blocks per thread (``kernels.parallel_map``).
    """
    from mlcvlab.nn import kernels
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"dropout_mask: p is the drop probability and must be in [0, 1], "
                         f"got {p}")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dropout_mask: expected dtype float32 or float64, got {dtype}")
    out = np.empty(shape, dtype=dtype)
    flat = out.reshape(-1)
    nblocks = (flat.size + 3) // 4
    if nblocks > MAX_BLOCKS:
        raise ValueError(f"dropout_mask: {flat.size} elements exceed the 2**34 one mask can "
                         f"index; split the array")
    words = key_words(DropoutKey(seed, stream, step))
    thr, scale, zero = np.uint32(keep_threshold(p)), dtype.type(mask_scale(p)), dtype.type(0)
    kernel = _cpu_kernel()
    # float64 (gradient checks): a float32 0/1 mask times the float64 scale, 4x faster than
    # the compiled loop storing doubles (it vectorizes 2 blocks per instruction, not 4)
    fill = flat if dtype == np.float32 or kernel is None else np.empty(flat.size, np.float32)
    fscale, fzero = (scale, zero) if fill is flat else (np.float32(1), np.float32(0))
    full = flat.size // 4 if kernel is not None else 0
    if full:
        parts = kernels.split(full, kernels.num_threads()
                              if flat.size >= kernels.PARALLEL_MIN_SIZE else 1)
        kernels.parallel_map(lambda s: kernel(fill[4 * s.start:4 * s.stop], s.start, thr,
                                              fscale, fzero, *words), parts)
    if 4 * full < flat.size:
        _numpy_mask(fill[4 * full:], full, thr, fscale, fzero, *words)
    if fill is not flat:
        np.multiply(fill, scale, out=flat)
    return out
