"""Readers for the standard dataset file formats: IDX (MNIST, Fashion-MNIST) and the CIFAR-10
"python version" pickled batches.

Readers return raw arrays (uint8 images, int64 labels) and raise ``ValueError`` naming the file
for anything truncated or malformed, so a corrupt file never becomes a wrong array.

IDX (http://yann.lecun.com/exdb/mnist/): a big-endian header ``0x00 0x00 <type> <ndim>``, then
``ndim`` uint32 sizes, then the data in C order. Files may be gzipped (``.gz``).

CIFAR-10 (https://www.cs.toronto.edu/~kriz/cifar.html): ``data_batch_1`` ... ``data_batch_5``
and ``test_batch``, each a pickled dict with ``data`` (10000, 3072) uint8 (row = 1024 red, 1024
green, 1024 blue values of a 32x32 image, row-major) and ``labels`` (10000 ints), either in a
``cifar-10-batches-py/`` folder or inside ``cifar-10-python.tar.gz``.
"""
from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Iterable, List, Tuple, Union

import numpy as np

PathLike = Union[str, Path]

# IDX type code -> big-endian dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCHES = {
    "train": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
    "test": ("test_batch",),
}


def read_bytes(path: PathLike) -> bytes:
    """The file's content, decompressed when its name ends in ``.gz``."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(f"{path}: truncated or corrupt gzip file ({err}); delete it and "
                         "download it again") from err


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into an array of the stored shape and dtype (native byte order)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        magic = raw[:4].hex() if len(raw) >= 4 else raw.hex()
        raise ValueError(
            f"{source}: not an IDX file: magic number 0x{magic}, expected 0x0000TTNN with type "
            f"TT in {{{', '.join(f'{k:02x}' for k in _IDX_DTYPES)}}} (e.g. 0x00000803 for "
            "images, 0x00000801 for labels)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{source}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{source}: IDX size mismatch: header says shape {shape} of {dtype.name} "
            f"({expected} bytes), the file has {len(raw)} bytes (truncated or corrupt)")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not)."""
    return parse_idx(read_bytes(path), source=str(path))


def read_idx_pair(images_path: PathLike, labels_path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """IDX images (N, H, W) uint8 and labels (N,) int64, checked against each other."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected an IDX image file (N, H, W) of uint8, got "
                         f"shape {images.shape} {images.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected an IDX label file (N,), got shape "
                         f"{labels.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{labels_path}: {len(labels)} labels for {len(images)} images in "
                         f"{images_path}")
    return images, labels.astype(np.int64)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and NumPy arrays: a corrupt or hostile pickle cannot
    run code."""

    _ALLOWED = {"_reconstruct", "ndarray", "dtype", "_frombuffer", "scalar"}

    def find_class(self, module: str, name: str):
        if (module.split(".")[0] == "numpy" and name in self._ALLOWED) or \
                (module == "_codecs" and name == "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def parse_cifar_batch(raw: bytes, source: str) -> Tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch: images (N, 3, 32, 32) uint8, labels (N,) int64."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as err:  # pickle raises many types on garbage; all mean "corrupt"
        raise ValueError(f"{source}: not a readable CIFAR-10 batch pickle ({type(err).__name__}: "
                         f"{err}); delete it and download it again") from err
    if not isinstance(batch, dict):
        raise ValueError(f"{source}: expected a pickled dict, got {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{source}: CIFAR batch without 'data'/'labels' keys "
                         f"(keys: {sorted(map(str, batch))})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{source}: 'data' must be (N, 3072) uint8, got {data.shape} "
                         f"{data.dtype}")
    if labels.shape != (len(data),):
        raise ValueError(f"{source}: {labels.size} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32), labels


def _concat(parts: List[Tuple[np.ndarray, np.ndarray]]) -> Tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def read_cifar_folder(folder: PathLike, batches: Iterable[str]) -> Tuple[np.ndarray, np.ndarray]:
    """Batches from an extracted ``cifar-10-batches-py/`` folder, concatenated in order."""
    folder = Path(folder)
    return _concat([parse_cifar_batch((folder / b).read_bytes(), str(folder / b))
                    for b in batches])


def read_cifar_tar(archive: PathLike, batches: Iterable[str]) -> Tuple[np.ndarray, np.ndarray]:
    """Batches read straight from ``cifar-10-python.tar.gz`` (no extraction on disk)."""
    archive = Path(archive)
    wanted = list(batches)
    found = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and name in wanted and name not in found:
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{archive}: truncated or corrupt tar.gz archive ({err}); delete it "
                         "and download it again") from err
    missing = [b for b in wanted if b not in found]
    if missing:
        raise ValueError(f"{archive}: archive has no member(s) {missing} "
                         f"(expected {CIFAR_FOLDER}/<batch>)")
    return _concat([parse_cifar_batch(found[b], f"{archive}:{b}") for b in wanted])
