"""Batch transforms for image data: vectorized over the whole batch, no per-image Python loop.

Every transform works on a batch ``xb``: (N, C, H, W) float and its labels ``yb``: (N,), and is
called in one of two ways:

* ``t(xb, yb) -> (xb, yb)``: the general form, used by :class:`~mlcvlab.data.DataLoader`;
* ``t(xb) -> xb``: images only, returns an array (not a tuple), so it cannot be mistaken for
  the pair. Transforms that change the batch size (:class:`BatchAugment`, or a
  :class:`Compose` containing one) refuse this form with a ``TypeError``, because their
  labels must be repeated too.

Inputs are never modified in place. Each random transform owns a ``numpy.random.Generator``
(``rng``: a seed or a Generator, see :func:`mlcvlab.backend.rng`), so a seeded pipeline
repeats exactly.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence, Tuple, Union

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..backend import SeedLike, rng as make_rng

Size = Union[int, Tuple[int, int]]


def _pair(value: Size, what: str) -> Tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
        raise ValueError(f"{what}: expected a positive int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_batch(xb, name: str) -> np.ndarray:
    if not isinstance(xb, np.ndarray):
        raise TypeError(f"{name}: expected xb as a numpy array (N, C, H, W), got "
                        f"{type(xb).__name__}")
    if xb.ndim != 4:
        raise ValueError(f"{name}: expected xb of shape (N, C, H, W), got shape {xb.shape}")
    return xb


class Transform:
    """Base class: subclasses implement ``forward(xb, yb) -> (xb, yb)`` (``yb`` may be None)."""

    changes_batch_size = False

    def __call__(self, xb, yb=None):
        name = type(self).__name__
        xb = _check_batch(xb, name)
        if yb is None:
            if self.changes_batch_size:
                raise TypeError(
                    f"{name} changes the batch size, so its labels must change too: call it "
                    "as `xb, yb = t(xb, yb)`, not `t(xb)`")
            return self.forward(xb, None)[0]
        yb = np.asarray(yb)
        if yb.shape[:1] != xb.shape[:1]:
            raise ValueError(f"{name}: {len(xb)} images but yb has shape {yb.shape}")
        return self.forward(xb, yb)

    def forward(self, xb: np.ndarray, yb: Optional[np.ndarray]):
        raise NotImplementedError(f"{type(self).__name__}.forward: Transform is abstract; "
                                  "subclasses (RandomCrop, RandomHorizontalFlip, Normalize, "
                                  "Cutout, BatchAugment, Compose) implement forward(xb, yb)")

    def generators(self) -> Iterator[np.random.Generator]:
        """The generators this transform draws from (the DataLoader saves/restores their
        state to keep prefetching deterministic)."""
        if isinstance(getattr(self, "rng", None), np.random.Generator):
            yield self.rng

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "rng")
        return f"{type(self).__name__}({fields})"


class RandomCrop(Transform):
    """Zero-pad each side by ``padding`` pixels, then crop a ``size`` window at a uniformly
    random position, independently per image (the standard CIFAR augmentation: size 32,
    padding 4). xb: (N, C, H, W) -> (N, C, size_h, size_w)."""

    def __init__(self, size: Size, padding: int = 0, rng: SeedLike = None):
        self.size = _pair(size, "RandomCrop(size)")
        if not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"RandomCrop: padding must be an int >= 0, got {padding!r}")
        self.padding = int(padding)
        self.rng = make_rng(rng)

    def forward(self, xb, yb):
        n, c, h, w = xb.shape
        p, (sh, sw) = self.padding, self.size
        if sh > h + 2 * p or sw > w + 2 * p:
            raise ValueError(f"RandomCrop: crop {self.size} larger than the padded image "
                             f"({h + 2 * p}, {w + 2 * p})")
        padded = np.zeros((n, c, h + 2 * p, w + 2 * p), dtype=xb.dtype)
        padded[:, :, p:p + h, p:p + w] = xb
        top = self.rng.integers(0, h + 2 * p - sh + 1, size=n)
        left = self.rng.integers(0, w + 2 * p - sw + 1, size=n)
        # windows[i, c, y, x] is the (sh, sw) window whose top-left corner is (y, x).
        windows = sliding_window_view(padded, (sh, sw), axis=(2, 3))
        return np.ascontiguousarray(windows[np.arange(n), :, top, left]), yb


class RandomHorizontalFlip(Transform):
    """Mirror each image left-right with probability ``p``. xb: (N, C, H, W), same shape."""

    def __init__(self, p: float = 0.5, rng: SeedLike = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p!r}")
        self.p = float(p)
        self.rng = make_rng(rng)

    def forward(self, xb, yb):
        flip = self.rng.random(len(xb)) < self.p
        out = xb.copy()
        out[flip] = xb[flip, :, :, ::-1]
        return out, yb


class Normalize(Transform):
    """Per-channel standardization: (x - mean[c]) / std[c]. xb: (N, C, H, W), same shape."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"Normalize: mean has {self.mean.size} values, std has "
                             f"{self.std.size}; give one of each per channel")
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize: std must be > 0, got {self.std.tolist()}")

    def forward(self, xb, yb):
        if xb.shape[1] != self.mean.size:
            raise ValueError(f"Normalize: {self.mean.size} channel statistics for xb with "
                             f"{xb.shape[1]} channels (shape {xb.shape})")
        mean = self.mean.astype(xb.dtype)[None, :, None, None]
        scale = (1.0 / self.std).astype(xb.dtype)[None, :, None, None]
        return (xb - mean) * scale, yb


class Cutout(Transform):
    """Zero a ``size`` x ``size`` square per image (DeVries & Taylor 2017, "Improved
    Regularization of Convolutional Neural Networks with Cutout").

    The square's centre (cy, cx) is uniform over all pixels; it covers rows
    cy - size // 2 ... cy - size // 2 + size - 1 (columns alike), clipped at the border, so
    squares near an edge are partly outside the image, as in the paper. Applied to each image
    with probability ``p`` (1 by default). xb: (N, C, H, W), same shape.
    """

    def __init__(self, size: int, p: float = 1.0, rng: SeedLike = None):
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"Cutout: size must be an int >= 1, got {size!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Cutout: p must be in [0, 1], got {p!r}")
        self.size, self.p = int(size), float(p)
        self.rng = make_rng(rng)

    def forward(self, xb, yb):
        n, _, h, w = xb.shape
        top = self.rng.integers(0, h, size=n) - self.size // 2
        left = self.rng.integers(0, w, size=n) - self.size // 2
        apply = self.rng.random(n) < self.p
        rows = np.arange(h)[None, :] - top[:, None]      # (N, H): row offset in the square
        cols = np.arange(w)[None, :] - left[:, None]     # (N, W)
        in_rows = (rows >= 0) & (rows < self.size)
        in_cols = (cols >= 0) & (cols < self.size)
        hole = in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]  # (N, H, W)
        return np.where(hole[:, None], xb.dtype.type(0), xb), yb


class BatchAugment(Transform):
    """Batch augmentation (Hoffer et al. 2019, "Augment your batch"): M augmented copies of
    every image in the same batch.

    xb: (N, C, H, W), yb: (N,) -> (N*M, C', H', W'), (N*M,). Order: the M copies of image 0
    first, then those of image 1, ...: output row i*M + m is copy m of input image i, and its
    label is yb[i] (``np.repeat`` order). ``transform`` is applied once to the whole
    repeated batch, so each copy gets its own random draw. Call as ``t(xb, yb)`` only.
    """

    changes_batch_size = True

    def __init__(self, M: int, transform):
        if not isinstance(M, (int, np.integer)) or M < 1:
            raise ValueError(f"BatchAugment: M must be an int >= 1, got {M!r}")
        if not callable(transform):
            raise TypeError(f"BatchAugment: transform must be callable, got "
                            f"{type(transform).__name__}")
        self.M, self.transform = int(M), transform

    def forward(self, xb, yb):
        return _apply(self.transform, np.repeat(xb, self.M, axis=0), np.repeat(yb, self.M))

    def generators(self):
        yield from generators_of(self.transform)


class Compose(Transform):
    """Apply ``transforms`` in order: Compose([RandomCrop(32, 4), RandomHorizontalFlip()])."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose: every transform must be callable, got "
                                f"{type(t).__name__}")
        self.changes_batch_size = any(getattr(t, "changes_batch_size", False)
                                      for t in self.transforms)

    def forward(self, xb, yb):
        for t in self.transforms:
            xb, yb = _apply(t, xb, yb)
        return xb, yb

    def generators(self):
        for t in self.transforms:
            yield from generators_of(t)


def _apply(t, xb, yb):
    """Call a transform in the (xb, yb) form. Other callables must take (xb, yb) and return
    (xb, yb); without labels (yb None) they are called as f(xb) -> xb."""
    if isinstance(t, Transform):
        return t.forward(_check_batch(xb, type(t).__name__), yb)
    if yb is None:
        return t(xb), None
    return t(xb, yb)


def generators_of(transform) -> Iterator[np.random.Generator]:
    """The generators of a transform (none for plain functions)."""
    if isinstance(transform, Transform):
        yield from transform.generators()
