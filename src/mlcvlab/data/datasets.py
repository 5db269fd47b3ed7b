"""``load(name, split)``: the datasets mlcvlab knows, found on disk, downloaded, verified, cached.

Embedded (always available, inside the package): ``digits``, ``mnist10k``, ``fashion10k``
(see :mod:`mlcvlab.data.embedded`). On disk: ``mnist``, ``fashion_mnist`` (IDX files, gzipped
or not) and ``cifar10`` (``cifar-10-python.tar.gz`` or the extracted ``cifar-10-batches-py/``).

Where files are looked for, in this order (the first folder holding all files of the split
wins):

1. ``root`` and ``root/<name>/`` when ``root`` is given;
2. ``$MLCVLAB_DATA/<name>/`` and ``$MLCVLAB_DATA/``;
3. ``~/.mlcvlab/data/<name>/``.

When missing they are downloaded from the official mirrors into ``root`` (or
``$MLCVLAB_DATA/<name>/``, or ``~/.mlcvlab/data/<name>/``), failing within a few seconds
without network. ``verify=True`` checks the official MD5 checksums (of the ``.gz`` files, the
CIFAR archive or each extracted CIFAR batch; extracted IDX files, for which no official
checksum exists, are checked by their exact size). ``verify=False`` reads any file in the
standard format (tests, or your own data in IDX form).

Parsed arrays are cached next to the files, in ``<folder>/mlcvlab-cache/`` (uint8 images and
int64 labels as ``.npy``, opened with ``allow_pickle=False`` and ``mmap_mode="r"``), keyed by
the source files' names, sizes and modification times; a cached load returns exactly the
arrays a fresh parse does. The cache's metadata records the SHA-256 of each cached array's
data, its shape and dtype; a read checks them (once per process and file: the result is
remembered by path, size, modification time and inode) and checks the labels' range, and a
cache file that fails is reported with a warning naming it and rebuilt from the source
files. This catches corrupt, truncated and edited cache files; it cannot catch someone who
rewrites the metadata too (anyone who can write the cache can also write the source files).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .. import io as atomic_io
from . import embedded, formats
from .download import download, file_digest

SPLITS = ("train", "test")
EMBEDDED_NAMES = ("digits", "mnist10k", "fashion10k")
ALIASES = {"fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
           "cifar-10": "cifar10", "cifar_10": "cifar10"}
SUBSTITUTES = {"mnist": "mnist10k", "fashion_mnist": "fashion10k", "cifar10": "fashion10k"}
CACHE_FOLDER = "mlcvlab-cache"
_CACHE_VERSION = 2  # 2: SHA-256, shape and dtype of each cached array in the metadata


@dataclass(frozen=True)
class FileSpec:
    """One official file: name on the mirror, MD5, size in bytes, size once gunzipped."""
    name: str
    md5: str
    size: int
    raw_size: Optional[int] = None


@dataclass(frozen=True)
class RemoteSet:
    """A dataset read from standard files: where to get them and what they must contain."""
    name: str
    title: str
    kind: str                                  # "idx" or "cifar"
    mirrors: Tuple[str, ...]
    files: Dict[str, Tuple[FileSpec, ...]]     # split -> files (idx: images, labels)
    counts: Dict[str, int]                     # split -> number of images
    image_shape: Tuple[int, int, int]          # (C, H, W)
    classes: Tuple[str, ...] = field(default=tuple(str(d) for d in range(10)))


def _idx_files(prefix: str, n: int, md5_images: str, size_images: int, md5_labels: str,
               size_labels: int) -> Tuple[FileSpec, FileSpec]:
    return (FileSpec(f"{prefix}-images-idx3-ubyte.gz", md5_images, size_images, 16 + n * 784),
            FileSpec(f"{prefix}-labels-idx1-ubyte.gz", md5_labels, size_labels, 8 + n))


REMOTE: Dict[str, RemoteSet] = {
    "mnist": RemoteSet(
        "mnist", "MNIST (LeCun, Cortes & Burges)", "idx",
        ("https://ossci-datasets.s3.amazonaws.com/mnist/",
         "http://yann.lecun.com/exdb/mnist/"),
        {"train": _idx_files("train", 60000, "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422,
                             "d53e105ee54ea40749a09fcbcd1e9432", 28881),
         "test": _idx_files("t10k", 10000, "9fb629c4189551a2d022fa330f9573f3", 1648877,
                            "ec29112dd5afa0611ce80d1b7f02629c", 4542)},
        {"train": 60000, "test": 10000}, (1, 28, 28)),
    "fashion_mnist": RemoteSet(
        "fashion_mnist", "Fashion-MNIST (Zalando Research)", "idx",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
         "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        {"train": _idx_files("train", 60000, "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26421880,
                             "25c81989df183df01b3e8a0aad5dffbe", 29515),
         "test": _idx_files("t10k", 10000, "bef4ecab320f06d8554ea6380940ec79", 4422102,
                            "bb300cfdad3c16e7a12a480ee83cd310", 5148)},
        {"train": 60000, "test": 10000}, (1, 28, 28), embedded.FASHION_CLASSES),
    "cifar10": RemoteSet(
        "cifar10", "CIFAR-10 (Krizhevsky 2009)", "cifar",
        ("https://www.cs.toronto.edu/~kriz/",),
        {split: (FileSpec("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                          170498071),) for split in SPLITS},
        {"train": 50000, "test": 10000}, (3, 32, 32),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
         "truck")),
}

# Official MD5 of the extracted CIFAR-10 batches (the same values torchvision checks).
CIFAR_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}


@dataclass(frozen=True)
class Source:
    """Files found on disk for one split: ``folder`` and the paths to read."""
    folder: Path
    paths: Tuple[Path, ...]
    layout: str          # "idx", "cifar-folder" or "cifar-tar"


# ----------------------------------------------------------------------------- names, folders
def canonical_name(name: str) -> str:
    """Lower-case name with aliases resolved; ValueError listing the known names otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"mlcvlab.data.load: name must be a str, got {type(name).__name__}")
    key = ALIASES.get(name.lower(), name.lower())
    if key not in EMBEDDED_NAMES and key not in REMOTE:
        raise ValueError(f"mlcvlab.data.load: unknown dataset {name!r}; known: "
                         f"{', '.join(EMBEDDED_NAMES + tuple(REMOTE))}")
    return key


def check_split(name: str, split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"mlcvlab.data.load({name!r}): split must be one of {SPLITS}, "
                         f"got {split!r}")


def search_dirs(name: str, root=None) -> List[Path]:
    """Folders searched for dataset ``name``, in order (see the module docstring)."""
    dirs = []
    if root is not None:
        dirs += [Path(root).expanduser(), Path(root).expanduser() / name]
    env = os.environ.get("MLCVLAB_DATA")
    if env:
        dirs += [Path(env).expanduser() / name, Path(env).expanduser()]
    dirs.append(Path.home() / ".mlcvlab" / "data" / name)
    return dirs


def download_dir(name: str, root=None) -> Path:
    """Where a download of ``name`` goes: root, else $MLCVLAB_DATA/<name>, else ~/.mlcvlab."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("MLCVLAB_DATA")
    base = Path(env).expanduser() if env else Path.home() / ".mlcvlab" / "data"
    return base / name


def expected_files(spec: RemoteSet, split: str) -> List[str]:
    """Human-readable list of the files a split needs."""
    if spec.kind == "idx":
        return [f"{f.name} (or {f.name[:-3]})" for f in spec.files[split]]
    batches = ", ".join(formats.CIFAR_BATCHES[split])
    return [f"{spec.files[split][0].name} (or the extracted folder "
            f"{formats.CIFAR_FOLDER}/ with {batches})"]


# ----------------------------------------------------------------------------- finding files
def _find_in(spec: RemoteSet, split: str, folder: Path) -> Optional[Source]:
    if spec.kind == "idx":
        paths = []
        for f in spec.files[split]:
            hit = next((folder / n for n in (f.name, f.name[:-3]) if (folder / n).is_file()),
                       None)
            if hit is None:
                return None
            paths.append(hit)
        return Source(folder, tuple(paths), "idx")
    batches = formats.CIFAR_BATCHES[split]
    extracted = folder / formats.CIFAR_FOLDER
    if all((extracted / b).is_file() for b in batches):
        return Source(folder, tuple(extracted / b for b in batches), "cifar-folder")
    archive = folder / spec.files[split][0].name
    if archive.is_file():
        return Source(folder, (archive,), "cifar-tar")
    return None


def find_source(name: str, split: str, root=None) -> Optional[Source]:
    """The files of ``name``/``split`` on disk, or None."""
    spec = REMOTE[name]
    for folder in search_dirs(name, root):
        if folder.is_dir():
            source = _find_in(spec, split, folder)
            if source is not None:
                return source
    return None


def _download_split(spec: RemoteSet, split: str, root) -> str:
    """Try to download the split's files; return '' on success or the failure text."""
    target = download_dir(spec.name, root)
    try:
        for f in spec.files[split]:
            if not (target / f.name).is_file():
                download([m + f.name for m in spec.mirrors], target / f.name, f.md5, f.size)
    except OSError as err:
        return str(err)
    return ""


def _missing_error(spec: RemoteSet, split: str, root, reason: str) -> FileNotFoundError:
    env = os.environ.get("MLCVLAB_DATA")
    dirs = "\n  ".join(str(d) for d in search_dirs(spec.name, root))
    substitute = SUBSTITUTES[spec.name]
    return FileNotFoundError(
        f"mlcvlab.data.load({spec.name!r}, split={split!r}): {spec.title} files not found, "
        f"and the download failed ({reason.strip()}).\n"
        f"Put these files in one folder:\n  " + "\n  ".join(expected_files(spec, split)) +
        f"\nin one of these folders (searched in this order"
        f"{'' if env else '; set MLCVLAB_DATA to add your own'}):\n  {dirs}\n"
        f"or run `mlcvlab data download {spec.name}` on a machine with network, or use the "
        f"embedded real subset load({substitute!r}).")


# ----------------------------------------------------------------------------- verification
def verify_source(spec: RemoteSet, source: Source) -> None:
    """ValueError naming the file if any file of ``source`` is not the official one."""
    for path in source.paths:
        if source.layout == "cifar-folder":
            expected_md5, expected_size = CIFAR_BATCH_MD5[path.name], None
        else:
            fspec = next(f for f in _all_files(spec) if path.name in (f.name, f.name[:-3]))
            if path.suffix == ".gz":
                expected_md5, expected_size = fspec.md5, fspec.size
            else:  # extracted IDX file: no official checksum, check the exact size
                expected_md5, expected_size = None, fspec.raw_size
        size = path.stat().st_size
        problem = ""
        if expected_size is not None and size != expected_size:
            problem = f"size {size} bytes, expected {expected_size}"
        elif expected_md5 is not None:
            actual = file_digest(path, "md5")
            if actual != expected_md5:
                problem = f"md5 checksum {actual}, expected {expected_md5}"
        if problem:
            raise ValueError(
                f"mlcvlab.data.load({spec.name!r}): {path} failed verification: {problem}. "
                "The file is truncated, corrupt or not the official one: delete it and "
                "download it again, or pass verify=False to read your own file in the "
                "same format.")


def _all_files(spec: RemoteSet) -> List[FileSpec]:
    return [f for split in SPLITS for f in spec.files[split]]


# ----------------------------------------------------------------------------- parse + cache
def parse_source(spec: RemoteSet, split: str, source: Source
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Raw arrays: images (N, C, H, W) uint8, labels (N,) int64, shape- and range-checked."""
    if source.layout == "idx":
        images, labels = formats.read_idx_pair(*source.paths)
        images = images[:, None, :, :]
    elif source.layout == "cifar-folder":
        images, labels = formats.read_cifar_folder(source.paths[0].parent,
                                                   formats.CIFAR_BATCHES[split])
    else:
        images, labels = formats.read_cifar_tar(source.paths[0], formats.CIFAR_BATCHES[split])
    where = ", ".join(str(p) for p in source.paths)
    if images.shape[1:] != spec.image_shape:
        raise ValueError(f"mlcvlab.data.load({spec.name!r}): {where}: images of shape "
                         f"{images.shape[1:]}, expected {spec.image_shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(spec.classes)):
        raise ValueError(f"mlcvlab.data.load({spec.name!r}): {where}: labels outside "
                         f"0..{len(spec.classes) - 1} (min {labels.min()}, max {labels.max()})")
    return np.ascontiguousarray(images), labels


def _stamp(source: Source) -> List[list]:
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in source.paths]


def _cache_paths(spec: RemoteSet, split: str, source: Source) -> Tuple[Path, Path, Path]:
    folder = source.folder / CACHE_FOLDER
    stem = f"{spec.name}-{split}"
    return (folder / f"{stem}-images.npy", folder / f"{stem}-labels.npy",
            folder / f"{stem}-meta.json")


class CacheError(ValueError):
    """A cache file that exists but does not hold what its metadata records."""


# Cache files whose SHA-256 this process has checked: (path, size, mtime_ns, inode) -> digest.
_VERIFIED: Dict[Tuple[str, int, int, int], str] = {}


def _file_key(path: Path) -> Tuple[str, int, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def _array_digest(array: np.ndarray) -> str:
    """SHA-256 of a C-contiguous array's data bytes (what ``np.save`` writes after the header)."""
    array = np.ascontiguousarray(array)
    return hashlib.sha256(memoryview(array).cast("B") if array.size else b"").hexdigest()


def _array_record(array: np.ndarray) -> dict:
    return {"shape": list(array.shape), "dtype": array.dtype.str, "sha256": _array_digest(array)}


def _load_cached_array(path: Path, record: dict) -> np.ndarray:
    """The array in ``path`` (memory-mapped, read-only), checked against its metadata record:
    shape and dtype on every read, the SHA-256 of the data once per process and file."""
    key = _file_key(path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise CacheError(f"is unreadable ({err})") from None
    if _file_key(path) != key:  # replaced while we opened it: check what we mapped
        key = None
    if list(array.shape) != record["shape"] or array.dtype.str != record["dtype"]:
        raise CacheError(f"holds {array.dtype.str} {list(array.shape)}, but the metadata "
                         f"records {record['dtype']} {record['shape']}")
    if not array.flags.c_contiguous:
        raise CacheError("is not in C order")
    if key is None or _VERIFIED.get(key) != record["sha256"]:
        digest = _array_digest(array)
        if digest != record["sha256"]:
            raise CacheError(f"has SHA-256 {digest}, but the metadata records "
                             f"{record['sha256']} (corrupt or edited)")
        if key is not None:
            _VERIFIED[key] = digest
    return array


def _read_cache(spec, split, source, verify):
    """The cached (images, labels) of ``source``, or None when there is no usable cache: none
    yet, or made from other source files (silently), or failing its checks (with a warning
    naming the file). The caller then parses the source files and rewrites the cache."""
    images_path, labels_path, meta_path = _cache_paths(spec, split, source)
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        _warn_cache(spec, source, meta_path, f"is unreadable ({err})")
        return None
    if (not isinstance(meta, dict) or meta.get("version") != _CACHE_VERSION
            or meta.get("sources") != _stamp(source) or (verify and not meta.get("verified"))):
        return None
    path = meta_path
    try:
        records = meta["arrays"]
        path = images_path
        images = _load_cached_array(images_path, records["images"])
        _check_cached_images(spec, split, images, verify)
        path = labels_path
        labels = _load_cached_array(labels_path, records["labels"])
        _check_cached_labels(spec, images, labels)
    except FileNotFoundError:
        _warn_cache(spec, source, path, "is missing")
        return None
    except (CacheError, KeyError, TypeError) as err:
        what = str(err) if isinstance(err, CacheError) else f"has no valid record ({err!r})"
        _warn_cache(spec, source, path, what)
        return None
    return images, labels


def _check_cached_images(spec, split, images, verify) -> None:
    """Shape and dtype, as :func:`parse_source` guarantees them."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != spec.image_shape:
        raise CacheError(f"holds images {images.dtype} {images.shape}; expected uint8 (N, "
                         f"{', '.join(map(str, spec.image_shape))})")
    if verify and len(images) != spec.counts[split]:
        raise CacheError(f"holds {len(images)} images, the official split has "
                         f"{spec.counts[split]}")


def _check_cached_labels(spec, images, labels) -> None:
    """Dtype, one label per image and the label range, as :func:`parse_source` guarantees."""
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise CacheError(f"holds labels {labels.dtype} {labels.shape}; expected int64 "
                         f"({len(images)},), one per cached image")
    if labels.size and (labels.min() < 0 or labels.max() >= len(spec.classes)):
        raise CacheError(f"holds labels outside 0..{len(spec.classes) - 1} (min "
                         f"{labels.min()}, max {labels.max()})")


def _warn_cache(spec, source, path, what) -> None:
    sources = ", ".join(p.name for p in source.paths)
    warnings.warn(f"mlcvlab.data.load({spec.name!r}): the cache file {path} {what}; ignoring "
                  f"the cache and rebuilding it from {sources} in {source.folder}",
                  stacklevel=5)


def _write_cache(spec, split, source, images, labels, verified) -> None:
    images_path, labels_path, meta_path = _cache_paths(spec, split, source)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    try:
        images_path.parent.mkdir(exist_ok=True)
        # Metadata last: a crash in between leaves records that do not match (-> rebuilt).
        records = {}
        for name, path, array in (("images", images_path, images),
                                  ("labels", labels_path, labels)):
            atomic_io.atomic_writer(str(path), lambda f, a=array: np.save(f, a,
                                                                         allow_pickle=False))
            records[name] = _array_record(array)
        meta = {"version": _CACHE_VERSION, "sources": _stamp(source), "verified": verified,
                "arrays": records}
        atomic_io.atomic_write_text(str(meta_path), json.dumps(meta, indent=1))
        # What this process just wrote needs no second hash in this process.
        for name, path in (("images", images_path), ("labels", labels_path)):
            _VERIFIED[_file_key(path)] = records[name]["sha256"]
    except OSError as err:  # read-only data folder: loading still works, only slower
        warnings.warn(f"mlcvlab.data: could not write the cache in {images_path.parent}: {err}")


def load_raw(name: str, split: str = "train", root=None, verify: bool = True,
             download_missing: bool = True) -> Tuple[np.ndarray, np.ndarray, Source]:
    """Images (N, C, H, W) uint8 (read-only when from the cache), labels (N,) int64, Source."""
    spec = REMOTE[name]
    source = find_source(name, split, root)
    if source is None:
        reason = (_download_split(spec, split, root) if download_missing
                  else "download not attempted")
        source = find_source(name, split, root)
        if source is None:
            raise _missing_error(spec, split, root, reason or "files still missing")
    cached = _read_cache(spec, split, source, verify)
    if cached is not None:
        return cached[0], cached[1], source
    if verify:
        verify_source(spec, source)
    images, labels = parse_source(spec, split, source)
    _write_cache(spec, split, source, images, labels, verified=verify)
    return images, labels, source


# ----------------------------------------------------------------------------- public API
def load(name: str, split: str = "train", root=None, verify: bool = True
         ) -> Tuple[np.ndarray, np.ndarray]:
    """Load a dataset split as float32 images in [0, 1] and int64 labels.

    name: ``digits``, ``mnist10k``, ``fashion10k`` (embedded), ``mnist``, ``fashion_mnist``,
    ``cifar10`` (files, see the module docstring). split: ``"train"`` or ``"test"``.
    Returns X: (N, C, H, W) float32 (C, H, W = 1, 8, 8 for digits; 1, 28, 28 for the MNIST
    family; 3, 32, 32 for CIFAR-10), y: (N,) int64.
    Raises FileNotFoundError (saying which files to put where) when files are missing and
    cannot be downloaded; ValueError naming the file when one is truncated or corrupt.
    """
    key = canonical_name(name)
    check_split(key, split)
    if key == "digits":
        return embedded.load_digits_split(split)
    if key in EMBEDDED_NAMES:
        return embedded.load_embedded_split(key, split, verify=verify)
    images, labels, _ = load_raw(key, split, root=root, verify=verify)
    return embedded.to_float_images(images, 255.0), np.array(labels, dtype=np.int64)


def resolve_dataset(name: str, root=None) -> Tuple[str, str]:
    """(name to use, note): ``name`` itself when its files are on disk (or it is embedded),
    else its embedded substitute with a sentence saying so. Nothing is downloaded.
    ``load(used_name)`` then gives the substitute's own shape (1x28x28 for cifar10's
    substitute); use :func:`load_or_substitute` to get it shaped like CIFAR-10."""
    key = canonical_name(name)
    if key in EMBEDDED_NAMES or all(find_source(key, s, root) for s in SPLITS):
        return key, ""
    return SUBSTITUTES[key], _substitute_note(key, "its files are not on disk", False)


def _substitute_note(key: str, why: str, reshaped: bool) -> str:
    sub = SUBSTITUTES[key]
    note = (f"{REMOTE[key].title} is not available ({why}); using the embedded real subset "
            f"'{sub}' instead (10,000 images, stratified 80/20 train/test split).")
    if key == "cifar10":
        note += " It is Fashion-MNIST (1x28x28 grey images), not CIFAR-10"
        note += (": images are zero-padded to 32x32 and repeated over 3 channels so CIFAR "
                 "models run unchanged." if reshaped else ".")
    return note + f" Run `mlcvlab data info {key}` to see where to put the full dataset."


def load_or_substitute(name: str, split: str = "train", root=None, verify: bool = True
                       ) -> Tuple[np.ndarray, np.ndarray, str, str]:
    """Load ``name``; if its files are missing (and cannot be downloaded) load its embedded
    substitute instead: mnist -> mnist10k, fashion_mnist -> fashion10k, cifar10 -> fashion10k
    shaped (N, 3, 32, 32).

    Returns (X, y, used_name, note); ``note`` is "" when ``name`` itself was loaded, else a
    sentence for the console and the report header. Corrupt files still raise ValueError:
    a substitute never hides a broken dataset.
    """
    key = canonical_name(name)
    try:
        X, y = load(key, split, root=root, verify=verify)
        return X, y, key, ""
    except FileNotFoundError:
        if key not in SUBSTITUTES:
            raise
    X, y = load(SUBSTITUTES[key], split, verify=verify)
    if key == "cifar10":
        X = as_cifar_shape(X)
    return X, y, SUBSTITUTES[key], _substitute_note(key, "files not found, download failed",
                                                          reshaped=key == "cifar10")


def as_cifar_shape(X: np.ndarray) -> np.ndarray:
    """(N, 1, 28, 28) -> (N, 3, 32, 32): zero-pad 2 pixels per side, repeat the channel."""
    if X.ndim != 4 or X.shape[1:] != (1, 28, 28):
        raise ValueError(f"as_cifar_shape: expected X of shape (N, 1, 28, 28), got {X.shape}")
    padded = np.pad(X, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return np.ascontiguousarray(np.repeat(padded, 3, axis=1))
