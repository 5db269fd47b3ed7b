"""Weight initializers, each ``(shape, rng) -> array`` in the default dtype.

fan_in / fan_out follow PyTorch: for a (out, in) matrix fan_in = in; for a conv
weight (F, C, kh, kw) fan_in = C·kh·kw and fan_out = F·kh·kw.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from mlcvlab import backend


def fans(shape: Sequence[int]) -> Tuple[int, int]:
    """(fan_in, fan_out) of a weight of this shape."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or any(s < 1 for s in shape):
        raise ValueError(f"init: expected a shape of positive sizes, got {shape}")
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _out(a: np.ndarray) -> np.ndarray:
    return a.astype(backend.default_dtype(), copy=False)


def normal(shape, rng=None, std: float = 1.0) -> np.ndarray:
    """N(0, std²): the "standard normal" initialization of the init study."""
    fans(shape)
    return _out(backend.rng(rng).normal(0.0, std, size=tuple(shape)))


def xavier_normal(shape, rng=None, gain: float = 1.0) -> np.ndarray:
    """Glorot & Bengio (2010): N(0, 2 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    std = gain * np.sqrt(2.0 / (fan_in + fan_out))
    return _out(backend.rng(rng).normal(0.0, std, size=tuple(shape)))


def xavier_uniform(shape, rng=None, gain: float = 1.0) -> np.ndarray:
    """Glorot & Bengio (2010): U(-a, a), a = sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    a = gain * np.sqrt(6.0 / (fan_in + fan_out))
    return _out(backend.rng(rng).uniform(-a, a, size=tuple(shape)))


def he_normal(shape, rng=None) -> np.ndarray:
    """He et al. (2015): N(0, 2 / fan_in), for ReLU networks."""
    fan_in, _ = fans(shape)
    return _out(backend.rng(rng).normal(0.0, np.sqrt(2.0 / fan_in), size=tuple(shape)))


def he_uniform(shape, rng=None) -> np.ndarray:
    """He et al. (2015): U(-a, a), a = sqrt(6 / fan_in)."""
    fan_in, _ = fans(shape)
    a = np.sqrt(6.0 / fan_in)
    return _out(backend.rng(rng).uniform(-a, a, size=tuple(shape)))


INITIALIZERS = {
    "normal": normal,
    "xavier_normal": xavier_normal,
    "xavier_uniform": xavier_uniform,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
}


def get(name: str):
    try:
        return INITIALIZERS[name]
    except KeyError:
        raise ValueError(f"init: unknown initializer {name!r}; "
                         f"choose one of {sorted(INITIALIZERS)}") from None
