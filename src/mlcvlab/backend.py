"""Array module, default dtype and seeding: the few global choices of mlcvlab.

Library code is written once against ``xp`` (NumPy here; a GPU array module such
as CuPy can be plugged in with :func:`set_array_module`). Every source of
randomness takes a ``numpy.random.Generator`` or a seed; when none is given,
layers draw a child generator from the library's root generator, which
:func:`seed` resets so that the same seed gives the same run, bit for bit.
"""
from __future__ import annotations

from types import ModuleType
from typing import Union

import numpy as np

xp: ModuleType = np

_default_dtype = np.dtype(np.float32)
_root_rng = np.random.default_rng(0)

SeedLike = Union[None, int, np.random.Generator]


def set_array_module(module: ModuleType) -> None:
    """Use ``module`` (NumPy-compatible, e.g. cupy) for new arrays."""
    global xp
    xp = module


def get_array_module() -> ModuleType:
    return xp


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
