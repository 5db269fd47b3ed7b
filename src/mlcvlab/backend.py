"""Array module, default dtype and seeding: the few global choices of mlcvlab.

Host arrays are NumPy; a model runs on a GPU by ``model.to("cuda")`` (CuPy arrays and the
GPU twins of :mod:`mlcvlab.gpu`), not by swapping a global array module. Every source of
randomness takes a ``numpy.random.Generator`` or a seed; when none is given,
layers draw a child generator from the library's root generator, which
:func:`seed` resets so that the same seed gives the same run, bit for bit.
"""
from __future__ import annotations

import ctypes
import platform
from types import ModuleType
from typing import Union

import numpy as np

_default_dtype = np.dtype(np.float32)
_root_rng = np.random.default_rng(0)

SeedLike = Union[None, int, np.random.Generator]


def set_array_module(module: ModuleType) -> None:
    """Kept for old callers: only NumPy is accepted. A GPU is not a global switch here; move
    a model with ``model.to("cuda")`` (:mod:`mlcvlab.gpu`)."""
    if module is not np:
        raise ValueError(f"set_array_module: the host array module is NumPy; got "
                         f"{getattr(module, '__name__', module)!r}. To run on a GPU, move the "
                         f"model: model.to('cuda') (and the loss: loss.to('cuda'))")


def get_array_module() -> ModuleType:
    """NumPy, the module of host arrays (device arrays: ``mlcvlab.gpu.device.array_module``)."""
    return np


def default_dtype() -> np.dtype:
    """The floating dtype new parameters and data get (float32 unless changed)."""
    return _default_dtype


def set_default_dtype(dtype) -> None:
    global _default_dtype
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"set_default_dtype: expected float32 or float64, got {dtype}")
    _default_dtype = dtype


def seed(value: int) -> None:
    """Reset the root generator: everything built afterwards is reproducible."""
    global _root_rng
    _root_rng = np.random.default_rng(value)


def rng(seed_or_rng: SeedLike = None) -> np.random.Generator:
    """A Generator: the one given, one built from an int seed, or a child of the root."""
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    if seed_or_rng is None:
        return np.random.default_rng(_root_rng.integers(0, 2**63 - 1))
    if isinstance(seed_or_rng, (int, np.integer)) and not isinstance(seed_or_rng, bool):
        return np.random.default_rng(int(seed_or_rng))
    raise TypeError(
        f"expected a seed (int), a numpy.random.Generator or None, got {type(seed_or_rng).__name__}"
    )


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(block_mib: int = 32, keep_mib: int = 128) -> bool:
    """Have glibc's malloc keep freed memory for the next training step.

    A training step frees its activations and allocates the same sizes again in the
    next step. With glibc's defaults, much of that memory goes back to the kernel and
    comes back as fresh pages: a LeNet-5 step took 1,244 page faults, and the faults cost
    about a sixth of its training step and a third of its evaluation (BENCHMARKS.md).
    This setting serves blocks of up to ``block_mib`` from the heap, not from
    mmap/munmap. It also keeps up to ``keep_mib`` of free memory at the top of the heap
    instead of returning it.

    The setting is process-wide, so the ``mlcvlab`` command sets it and a program that
    imports mlcvlab decides for itself (PyTorch's own advice is to swap in jemalloc or
    tcmalloc). The price: up to ``keep_mib`` more resident memory after large frees.
    Returns False where it does not apply (a C library other than glibc).
    """
    if not (isinstance(block_mib, int) and isinstance(keep_mib, int)
            and 0 < block_mib <= 1024 and 0 < keep_mib <= 4096):
        raise ValueError(f"keep_freed_memory: expected block_mib in (0, 1024] and keep_mib in "
                         f"(0, 4096] (MiB, ints), got {block_mib!r} and {keep_mib!r}")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    ok = libc.mallopt(_M_MMAP_THRESHOLD, block_mib << 20)
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, keep_mib << 20)
    return bool(ok)
