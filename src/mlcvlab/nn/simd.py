"""Explicit vector registers inside numba kernels: load, store, splat, fused multiply-add, ReLU.

Why: numba compiles a loop to vector instructions only when LLVM's loop vectorizer can
prove it safe, and it vectorizes the innermost loop only. A convolution kernel wants the
opposite shape: a small tile of outputs held in vector registers while a loop over input
channels and kernel taps runs *around* the multiply-adds, then stored once. Written with
NumPy arrays, those accumulators live in memory (numba's arrays carry no ``noalias``, so
LLVM must reload and store them on every pass: BENCHMARKS.md, sessions 13-14). With the
values below they are SSA values of LLVM's own vector type, which its register allocator
keeps in registers, and the loops around them can be any shape.

What this module adds to numba (through ``numba.extending.intrinsic``, i.e. a few lines of
LLVM IR each, no C):

- ``Vector(dtype)``, a numba type for ``BYTES`` bytes of float32 or float64: 64 on a CPU
  with AVX-512 (16 float32 / 8 float64 lanes, LLVM's ``<16 x float>`` / ``<8 x double>``),
  else 32 (8 / 4 lanes, ``<8 x float>`` / ``<4 x double>``), one register either way; LLVM
  splits it on narrower targets (SSE, NEON), where the code still runs, slower. On the
  AVX-512 hosts the 64-byte vectors made the direct kernels 1.5-1.9x faster than 32-byte
  ones (BENCHMARKS.md, session 16).
- ``width(a)``: the lanes of ``a``'s dtype, a compile-time constant (``lanes(dtype)`` in
  Python).
- ``load(a, i)`` / ``store(a, i, v)``: the ``width`` values at flat index ``i`` of a
  C-contiguous array (any number of dimensions), unaligned. No bounds check: the caller
  guarantees ``0 <= i`` and ``i + width(a) <= a.size``.
- ``splat(s)``: every lane set to the scalar ``s``.
- ``fma(a, b, c)``: ``a * b + c`` with one rounding per lane (``llvm.fma``), the operation a
  ``fastmath={"contract"}`` loop fuses ``c += a * b`` into, so results match such loops bit
  for bit when the order of the sums is the same.
- ``relu(v)``: ``0 if v < 0 else v`` per lane (NaN stays NaN, as ``kernels.relu_forward``).
- ``fma_tile`` and ``store_tile``: one multiply-add step and the store of a register tile of
  4 rows x 2 vectors, the tile of the direct convolution and of Winograd's points' GEMM
  (inlined jitted functions: the sums stay in the caller's registers).

Used by ``nn/direct.py`` and ``nn/winograd.py``; tested in ``tests/nn/test_simd.py``.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba import njit
from numba.extending import intrinsic, models, register_model



def _host_vector_bytes() -> int:
    """64 (one AVX-512 register) where the CPU numba compiles for has AVX-512F, else 32 (one
    AVX register). Numba keys its on-disk cache by the CPU's name and features, so a kernel
    compiled for one width is never loaded on a CPU that gets the other."""
    from numba import config
    if config.CPU_NAME is not None:     # NUMBA_CPU_NAME: numba compiles for that CPU instead
        return 64 if "+avx512f" in (config.CPU_FEATURES or "") else 32
    try:
        from llvmlite import binding
        features = binding.get_host_cpu_features()
    except Exception:                   # llvmlite cannot tell (an unknown host): the safe width
        return 32
    return 64 if features.get("avx512f", False) else 32


BYTES = _host_vector_bytes()


def lanes(dtype) -> int:
    """The lanes of a Vector of ``dtype`` (a NumPy dtype): ``width`` outside numba."""
    return BYTES // np.dtype(dtype).itemsize


class Vector(types.Type):
    """A numba type: ``BYTES`` bytes of ``dtype`` (float32 or float64) in vector lanes."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.lanes = BYTES * 8 // dtype.bitwidth
        super().__init__(name=f"Vector({dtype} x {self.lanes})")


def _llvm(vector: Vector) -> ir.VectorType:
    elem = ir.FloatType() if vector.dtype == types.float32 else ir.DoubleType()
    return ir.VectorType(elem, vector.lanes)


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _llvm(fe_type))


_FLOATS = (types.float32, types.float64)


def _array_vector(fn: str, arr) -> Vector:
    """The Vector type of a C-contiguous float32/float64 array type; a TypingError else."""
    if not (isinstance(arr, types.Array) and arr.dtype in _FLOATS and arr.layout == "C"):
        raise TypingError(f"simd.{fn}: expected a C-contiguous float32 or float64 array, "
                          f"got {arr}")
    return Vector(arr.dtype)


def _address(context, builder, arr_type, arr, index, vector: Vector):
    data = context.make_array(arr_type)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [index]), _llvm(vector).as_pointer())


@intrinsic
def width(typingctx, arr):
    """The number of lanes of a Vector of ``arr``'s dtype (a constant)."""
    lanes = _array_vector("width", arr).lanes

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, lanes)
    return types.intp(arr), codegen


@intrinsic
def load(typingctx, arr, index):
    """The lanes ``arr.flat[index:index + width]`` (unaligned, unchecked)."""
    vector = _array_vector("load", arr)
    if not isinstance(index, types.Integer):
        raise TypingError(f"simd.load: the index must be an integer, got {index}")

    def codegen(context, builder, sig, args):
        index = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = _address(context, builder, sig.args[0], args[0], index, vector)
        return builder.load(ptr, align=vector.dtype.bitwidth // 8)
    return vector(arr, index), codegen


@intrinsic
def store(typingctx, arr, index, value):
    """``arr.flat[index:index + width] = value`` (unaligned, unchecked)."""
    vector = _array_vector("store", arr)
    if value != vector:
        raise TypingError(f"simd.store: a {vector} goes into {arr}, got {value}")

    def codegen(context, builder, sig, args):
        index = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = _address(context, builder, sig.args[0], args[0], index, vector)
        builder.store(args[2], ptr, align=vector.dtype.bitwidth // 8)
        return context.get_dummy_value()
    return types.void(arr, index, value), codegen


@intrinsic
def splat(typingctx, scalar):
    """A Vector with every lane ``scalar`` (float32 or float64)."""
    if scalar not in _FLOATS:
        raise TypingError(f"simd.splat: expected a float32 or float64 scalar, got {scalar}")
    vector = Vector(scalar)

    def codegen(context, builder, sig, args):
        vty = _llvm(vector)
        one = builder.insert_element(ir.Constant(vty, ir.Undefined), args[0],
                                     ir.Constant(ir.IntType(32), 0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), vector.lanes), [0] * vector.lanes)
        return builder.shuffle_vector(one, ir.Constant(vty, ir.Undefined), zeros)
    return vector(scalar), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """``a * b + c`` lane by lane, rounded once (three Vectors of one type)."""
    if not (isinstance(a, Vector) and a == b == c):
        raise TypingError(f"simd.fma: expected three Vectors of one type, got {a}, {b}, {c}")

    def codegen(context, builder, sig, args):
        vty = _llvm(a)
        name = f"llvm.fma.v{a.lanes}f{a.dtype.bitwidth}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                            name)
        return builder.call(fn, args)
    return a(a, b, c), codegen


@intrinsic
def relu(typingctx, v):
    """``0 if v < 0 else v`` lane by lane (NaN stays NaN)."""
    if not isinstance(v, Vector):
        raise TypingError(f"simd.relu: expected a Vector, got {v}")

    def codegen(context, builder, sig, args):
        zero = ir.Constant(_llvm(v), None)
        return builder.select(builder.fcmp_ordered("<", args[0], zero), zero, args[0])
    return v(v), codegen


@njit(inline="always", cache=True)
def fma_tile(x0, x1, w, at, a00, a01, a10, a11, a20, a21, a30, a31):  # pragma: no cover
    """One step of a register tile of 4 rows x 2 vectors: a_q0 += w[at + q] * x0 and a_q1 +=
    w[at + q] * x1 for q = 0..3 (the four weights adjacent, as packed by
    ``direct.pack_filters`` and ``winograd.pack_rows``); returns the eight sums. Inlined, so
    the sums stay in registers in the caller's loop."""
    v = splat(w[at])
    a00, a01 = fma(v, x0, a00), fma(v, x1, a01)
    v = splat(w[at + 1])
    a10, a11 = fma(v, x0, a10), fma(v, x1, a11)
    v = splat(w[at + 2])
    a20, a21 = fma(v, x0, a20), fma(v, x1, a21)
    v = splat(w[at + 3])
    a30, a31 = fma(v, x0, a30), fma(v, x1, a31)
    return a00, a01, a10, a11, a20, a21, a30, a31


@njit(inline="always", cache=True)
def store_tile(dst, at, step, a00, a01, a10, a11, a20, a21, a30, a31):  # pragma: no cover
    """Store a register tile of 4 rows x 2 vectors: row q's two vectors at flat positions
    ``at + q * step`` and ``at + q * step + width(dst)`` of ``dst``."""
    n = width(dst)
    store(dst, at, a00)
    store(dst, at + n, a01)
    store(dst, at + step, a10)
    store(dst, at + step + n, a11)
    store(dst, at + 2 * step, a20)
    store(dst, at + 2 * step + n, a21)
    store(dst, at + 3 * step, a30)
    store(dst, at + 3 * step + n, a31)
