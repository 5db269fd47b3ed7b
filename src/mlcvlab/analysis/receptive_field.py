"""Receptive fields: the closed form and a brute-force check.

The receptive field r of one output unit grows layer by layer as
r_out = r_in + (k − 1)·j_in, with the jump (input-pixel distance between
neighbouring units) j_out = j_in·stride, starting from r = j = 1 at the image.
For N stacked F×F stride-1 convs this is r = N·F − N + 1 (e.g. three 3×3 = 7×7).

:func:`receptive_field_bruteforce` does not use the formula: it marks one
output pixel and pushes the set of pixels it depends on back through each
layer (the adjoint of the convolution with an all-ones kernel), then measures
the marked region at the input.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def stacked_receptive_field(n: int, f: int) -> int:
    """N·F − N + 1: receptive field of ``n`` stacked ``f``×``f`` stride-1 convs."""
    if n < 1 or f < 1:
        raise ValueError(f"stacked_receptive_field: need n >= 1 and f >= 1, got n={n}, f={f}")
    return n * f - n + 1


def _check_layers(fn: str, kernels: Sequence[int], strides: Sequence[int]) -> None:
    if len(kernels) != len(strides) or not kernels:
        raise ValueError(f"{fn}: need one stride per kernel (at least one layer), "
                         f"got {len(kernels)} kernels and {len(strides)} strides")
    if min(kernels) < 1 or min(strides) < 1:
        raise ValueError(f"{fn}: kernels and strides must be >= 1, got {kernels}, {strides}")


def receptive_field(kernels: Sequence[int], strides: Sequence[int] = ()) -> Tuple[int, int]:
    """(receptive field, jump) after the layers; strides default to 1."""
    strides = tuple(strides) or (1,) * len(kernels)
    _check_layers("receptive_field", kernels, strides)
    r, j = 1, 1
    for k, s in zip(kernels, strides):
        r, j = r + (k - 1) * j, j * s
    return r, j


def receptive_field_bruteforce(kernels: Sequence[int], strides: Sequence[int] = ()) -> int:
    """Side of the input region one output pixel depends on, by propagating dependency sets.

    Starts from a one-hot 1×1 output and, layer by layer from the top, marks
    input pixel (o·s + dy, o·s + dx) for every marked output o and kernel offset
    (dy, dx). Returns the side of the marked region's bounding box (with a stride
    larger than the kernel the region has holes; its extent is still the field).
    """
    strides = tuple(strides) or (1,) * len(kernels)
    _check_layers("receptive_field_bruteforce", kernels, strides)
    mask = np.ones((1, 1), dtype=bool)                       # the one output pixel
    for k, s in zip(reversed(kernels), reversed(strides)):
        h = mask.shape[0]
        size = (h - 1) * s + k
        prev = np.zeros((size, size), dtype=bool)
        span = (h - 1) * s + 1
        for dy in range(k):
            for dx in range(k):
                prev[dy:dy + span:s, dx:dx + span:s] |= mask
        mask = prev
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    side = int(rows[-1] - rows[0] + 1)
    if side != cols[-1] - cols[0] + 1:
        raise RuntimeError("receptive_field_bruteforce: the dependency region is not square")
    return side
