"""Writers of small dataset files in the exact standard formats (IDX, CIFAR-10 python
pickles, gzip, tar.gz), shared by the data tests."""
import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: 0x00 0x00 0x08 ndim, big-endian uint32 dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def make_mnist_like(n: int, seed: int = 0):
    gen = np.random.default_rng(seed)
    images = gen.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return images, gen.integers(0, 10, n).astype(np.uint8)


def write_mnist_split(folder: Path, split: str, images, labels, gz: bool = True):
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    return (write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz),
            write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz))


def cifar_batch_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """A CIFAR-10 batch pickle: dict with b'data' (N, 3072) uint8 and b'labels' list."""
    batch = {b"batch_label": b"test batch", b"data": images.reshape(len(images), -1),
             b"labels": [int(v) for v in labels], b"filenames": [b"x.png"] * len(images)}
    return pickle.dumps(batch, protocol=2)


CIFAR_BATCHES = {"train": ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                           "data_batch_5"], "test": ["test_batch"]}


def make_cifar_batches(n_per_batch: int = 3, seed: int = 0):
    gen = np.random.default_rng(seed)
    return {name: (gen.integers(0, 256, (n_per_batch, 3, 32, 32), dtype=np.uint8),
                   gen.integers(0, 10, n_per_batch))
            for names in CIFAR_BATCHES.values() for name in names}


def write_cifar_folder(folder: Path, batches) -> Path:
    target = folder / "cifar-10-batches-py"
    target.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in batches.items():
        (target / name).write_bytes(cifar_batch_bytes(images, labels))
    return target


def write_cifar_tar(folder: Path, batches) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, (images, labels) in batches.items():
            raw = cifar_batch_bytes(images, labels)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path
