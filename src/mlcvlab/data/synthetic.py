"""Synthetic datasets of the labs: each a function of (n, seed, ...) returning NumPy arrays.

* :func:`perceptron_points`: 2-D points labelled by x1 > x2 (perceptron vs hinge loss).
* :func:`eggholder`: the Eggholder function with Gaussian noise (depth vs width).
* :func:`dying_relu_1d`: the 1-D targets of Lu et al. 2019 (dying ReLU).
* :func:`dropout_regression`: two features at scales 1 and 10 (dropout as Tikhonov).
* :func:`edge_images`: small images with no edge / a vertical / a horizontal edge (inductive
  bias of CNNs), with more classes and a shifted validation domain on request.

``seed`` is an int or a ``numpy.random.Generator`` (:func:`mlcvlab.backend.rng`).
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np

from ..backend import SeedLike, rng as make_rng


def _check_n(n: int, name: str) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name}: n must be an int >= 1, got {n!r}")


# ----------------------------------------------------------------------------- perceptron
def perceptron_points(n: int, seed: SeedLike = None, low: float = -1.0, high: float = 1.0
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """n points uniform in the box [low, high]^2, labelled +1 where x1 > x2 and -1 elsewhere.

    Returns X: (n, 2) float64, y: (n,) int64 in {-1, +1}.
    """
    _check_n(n, "perceptron_points")
    if not high > low:
        raise ValueError(f"perceptron_points: need high > low, got low={low}, high={high}")
    X = make_rng(seed).uniform(low, high, size=(n, 2))
    y = np.where(X[:, 0] > X[:, 1], 1, -1).astype(np.int64)
    return X, y


# ----------------------------------------------------------------------------- Eggholder
def eggholder_function(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """f(x, y) = -(y + 47) sin(sqrt|x/2 + y + 47|) - x sin(sqrt|x - (y + 47)|), elementwise."""
    return (-(y + 47.0) * np.sin(np.sqrt(np.abs(x / 2.0 + y + 47.0)))
            - x * np.sin(np.sqrt(np.abs(x - (y + 47.0)))))


def eggholder(n: int, seed: SeedLike = None, noise_std: float = 0.3, bound: float = 512.0
              ) -> Tuple[np.ndarray, np.ndarray]:
    """n points uniform on [-bound, bound]^2 with targets f(x, y) + N(0, noise_std^2).

    Returns X: (n, 2) float64, t: (n,) float64. Split 80/20 yourself (the lab does).
    """
    _check_n(n, "eggholder")
    if noise_std < 0:
        raise ValueError(f"eggholder: noise_std must be >= 0, got {noise_std}")
    gen = make_rng(seed)
    X = gen.uniform(-bound, bound, size=(n, 2))
    t = eggholder_function(X[:, 0], X[:, 1]) + gen.normal(0.0, noise_std, size=n)
    return X, t


# ----------------------------------------------------------------------------- dying ReLU
DYING_RELU_TARGETS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "abs": np.abs,                                                   # f(x) = |x|
    "xsin5x": lambda x: x * np.sin(5.0 * x),                         # f(x) = x sin(5x)
    "step_sin": lambda x: (x > 0).astype(np.float64) + 0.2 * np.sin(5.0 * x),
}


def dying_relu_1d(n: int = 3000, target: str = "abs", seed: SeedLike = None
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Training data of Lu, Shin, Su & Karniadakis 2019, "Dying ReLU and initialization":
    n inputs uniform on [-sqrt(7), sqrt(7)] (3000 in the paper) and the noiseless target.

    target: ``"abs"`` |x|, ``"xsin5x"`` x sin(5x), ``"step_sin"`` 1{x > 0} + 0.2 sin(5x).
    Returns x: (n, 1) float64, t: (n, 1) float64.
    """
    _check_n(n, "dying_relu_1d")
    if target not in DYING_RELU_TARGETS:
        raise ValueError(f"dying_relu_1d: unknown target {target!r}; choose one of "
                         f"{sorted(DYING_RELU_TARGETS)}")
    x = make_rng(seed).uniform(-np.sqrt(7.0), np.sqrt(7.0), size=(n, 1))
    return x, DYING_RELU_TARGETS[target](x)


def dying_relu_2d(n: int = 3000, seed: SeedLike = None) -> Tuple[np.ndarray, np.ndarray]:
    """The 2-D example of the same paper: x uniform on [-sqrt(7), sqrt(7)]^2 and the 2-D
    target (|x1 + x2|, |x1 - x2|). Returns x: (n, 2), t: (n, 2), float64."""
    _check_n(n, "dying_relu_2d")
    x = make_rng(seed).uniform(-np.sqrt(7.0), np.sqrt(7.0), size=(n, 2))
    return x, np.stack([np.abs(x[:, 0] + x[:, 1]), np.abs(x[:, 0] - x[:, 1])], axis=1)


# ----------------------------------------------------------------------------- dropout
def dropout_regression(n: int, seed: SeedLike = None, scales: Tuple[float, float] = (1.0, 10.0),
                       w_true: Tuple[float, float] = (1.0, 1.0), noise_std: float = 0.1
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """Two-feature linear regression where one feature has ten times the other's scale.

    Exactly what is generated: z ~ N(0, I_2) (n, 2); features X = z * scales, i.e.
    x1 = scales[0] * z1 (std 1) and x2 = scales[1] * z2 (std 10); target
    y = X @ w_true + N(0, noise_std^2) = w1 x1 + w2 x2 + noise. With the defaults the
    prediction for the unit input z = (1, 1) is w1 + 10 w2, the "10 w1 + w2" of the lab up to
    which feature is called first: plain least squares recovers w_true, while dropout, acting
    like a Tikhonov penalty q(1-q) ||Gamma w||^2 with Gamma = diag of X's column norms,
    shrinks the weight of the large-scale feature much more.
    Returns X: (n, 2) float64, y: (n,) float64.
    """
    _check_n(n, "dropout_regression")
    if len(scales) != 2 or len(w_true) != 2 or min(scales) <= 0:
        raise ValueError(f"dropout_regression: need two positive scales and two weights, got "
                         f"scales={scales}, w_true={w_true}")
    gen = make_rng(seed)
    X = gen.standard_normal((n, 2)) * np.asarray(scales, dtype=np.float64)
    y = X @ np.asarray(w_true, dtype=np.float64) + gen.normal(0.0, noise_std, size=n)
    return X, y


# ----------------------------------------------------------------------------- edge images
EDGE_CLASSES = ("none", "vertical", "horizontal", "diagonal", "antidiagonal")


def edge_images(n: int, seed: SeedLike = None, size: int = 8, n_classes: int = 3,
                contrast: Tuple[float, float] = (0.5, 1.0), noise_std: float = 0.05,
                margin: int = 1, invert: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Grayscale images with one step edge (or none): the CNN-vs-MLP inductive-bias toy.

    Classes (first ``n_classes`` of :data:`EDGE_CLASSES`): 0 no edge (a flat image),
    1 vertical edge, 2 horizontal edge, 3 diagonal (x - y = offset), 4 anti-diagonal.
    Each image: a background level b ~ U(0, 1 - c), contrast c ~ U(*contrast); pixels on the
    bright side of the edge get b + c (swap sides when ``invert``; class 0 is flat at b),
    the edge position is uniform in [margin, size - margin), then N(0, noise_std^2) noise,
    clipped to [0, 1]. Balanced classes (label i % n_classes, then shuffled).

    A *shifted validation domain*: call again with other ``contrast``, ``noise_std``,
    ``margin`` (edge positions) or ``invert`` (dark-to-bright edges), e.g.
    ``edge_images(500, seed=1, contrast=(0.2, 0.4), noise_std=0.15)``.
    Returns X: (n, 1, size, size) float32, y: (n,) int64.
    """
    _check_n(n, "edge_images")
    if not 1 <= n_classes <= len(EDGE_CLASSES):
        raise ValueError(f"edge_images: n_classes must be in 1..{len(EDGE_CLASSES)}, "
                         f"got {n_classes}")
    if not 0 <= margin < size // 2 or size < 2:
        raise ValueError(f"edge_images: need size >= 2 and 0 <= margin < size // 2, got "
                         f"size={size}, margin={margin}")
    lo, hi = contrast
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"edge_images: contrast must be 0 <= low <= high <= 1, got {contrast}")
    gen = make_rng(seed)
    y = gen.permutation(np.arange(n) % n_classes).astype(np.int64)
    c = gen.uniform(lo, hi, size=n)
    b = gen.uniform(0.0, 1.0 - c)
    pos = gen.integers(margin, size - margin, size=n) if size - margin > margin else \
        np.full(n, size // 2)
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")  # (S, S)
    p = pos[:, None, None]
    sides = np.stack([np.zeros((n, size, size), bool),          # none
                      cols[None] >= p,                          # vertical
                      rows[None] >= p,                          # horizontal
                      (cols - rows)[None] >= p - size // 2,     # diagonal
                      (cols + rows)[None] >= p + size // 2 - 1])  # anti-diagonal
    bright = sides[y, np.arange(n)]                              # (n, S, S)
    if invert:
        bright = ~bright & (y != 0)[:, None, None]
    X = b[:, None, None] + c[:, None, None] * bright + gen.normal(0.0, noise_std, (n, size, size))
    return np.clip(X, 0.0, 1.0).astype(np.float32)[:, None], y
