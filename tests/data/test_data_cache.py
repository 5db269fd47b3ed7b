"""The dataset cache (``<folder>/mlcvlab-cache/``) is verified on read, or rebuilt (issue #18:
a tampered cache used to return labels of 77)."""
import json
import re
import warnings

import numpy as np
import pytest

from mlcvlab.data import datasets, load

from datafiles import make_mnist_like, write_mnist_split


@pytest.fixture
def mnist_folder(tmp_path, monkeypatch):
    """Small synthetic MNIST train files, loaded once (which writes the cache); the
    in-process verification memo starts empty and is restored afterwards."""
    monkeypatch.setattr(datasets, "_VERIFIED", {})
    images, labels = make_mnist_like(12, seed=3)
    write_mnist_split(tmp_path, "train", images, labels)
    X, y = load("mnist", "train", root=tmp_path, verify=False)
    np.testing.assert_array_equal(y, labels)
    cache = tmp_path / datasets.CACHE_FOLDER
    return tmp_path, images, labels, cache


def new_process():
    """Forget what this process verified, as a fresh process would."""
    datasets._VERIFIED.clear()


def load_expecting_warning(folder, path):
    with pytest.warns(UserWarning, match=re.escape(str(path))):
        return load("mnist", "train", root=folder, verify=False)


def load_without_warning(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load("mnist", "train", root=folder, verify=False)


def test_metadata_records_a_sha256_of_each_array(mnist_folder):
    _, images, labels, cache = mnist_folder
    meta = json.loads((cache / "mnist-train-meta.json").read_text())
    assert meta["version"] == datasets._CACHE_VERSION
    assert meta["arrays"]["labels"]["sha256"] == datasets._array_digest(labels.astype(np.int64))
    assert meta["arrays"]["images"]["shape"] == [12, 1, 28, 28]
    assert meta["arrays"]["images"]["dtype"] == "|u1"


def test_tampered_labels_are_detected_warned_and_rebuilt(mnist_folder):
    folder, _, labels, cache = mnist_folder
    labels_path = cache / "mnist-train-labels.npy"
    # Same size, in range, wrong (issue #18's 77 is caught by the range check as well).
    np.save(labels_path, (labels.astype(np.int64) + 1) % 10)
    new_process()
    _, y = load_expecting_warning(folder, labels_path)
    np.testing.assert_array_equal(y, labels)
    # The cache was rewritten: the next load (also in a new process) is silent and right.
    new_process()
    np.testing.assert_array_equal(load_without_warning(folder)[1], labels)


def test_tampering_in_the_same_process_is_detected(mnist_folder):
    """A replaced file has a new inode / mtime, so the in-process memo does not vouch for it."""
    folder, _, labels, cache = mnist_folder
    labels_path = cache / "mnist-train-labels.npy"
    tampered = cache / "tampered.npy"
    np.save(tampered, np.full(12, 7, dtype=np.int64))
    tampered.replace(labels_path)
    _, y = load_expecting_warning(folder, labels_path)
    np.testing.assert_array_equal(y, labels)


def test_flipped_image_byte_is_detected(mnist_folder):
    folder, images, _, cache = mnist_folder
    images_path = cache / "mnist-train-images.npy"
    raw = bytearray(images_path.read_bytes())
    raw[-100] ^= 0xFF
    images_path.write_bytes(bytes(raw))
    new_process()
    X, _ = load_expecting_warning(folder, images_path)
    np.testing.assert_array_equal(np.rint(X[:, 0] * 255).astype(np.uint8), images)


def test_out_of_range_labels_are_rejected_even_with_a_matching_hash(mnist_folder):
    """Someone who rewrites the metadata too still cannot hand out labels outside 0..9."""
    folder, _, labels, cache = mnist_folder
    labels_path, meta_path = cache / "mnist-train-labels.npy", cache / "mnist-train-meta.json"
    bad = np.full(12, 77, dtype=np.int64)
    np.save(labels_path, bad)
    meta = json.loads(meta_path.read_text())
    meta["arrays"]["labels"]["sha256"] = datasets._array_digest(bad)
    meta_path.write_text(json.dumps(meta))
    new_process()
    with pytest.warns(UserWarning, match=r"labels outside 0\.\.9 \(min 77, max 77\)"):
        _, y = load("mnist", "train", root=folder, verify=False)
    np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize("which", ["images", "labels"])
def test_truncated_cache_file_is_rebuilt(mnist_folder, which):
    folder, images, labels, cache = mnist_folder
    path = cache / f"mnist-train-{which}.npy"
    path.write_bytes(path.read_bytes()[:200])
    new_process()
    X, y = load_expecting_warning(folder, path)
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(np.rint(X[:, 0] * 255).astype(np.uint8), images)
    assert path.stat().st_size > 200
    new_process()
    load_without_warning(folder)


def test_corrupt_or_missing_metadata_and_missing_array(mnist_folder):
    folder, _, labels, cache = mnist_folder
    meta_path = cache / "mnist-train-meta.json"
    meta_path.write_text("{not json")
    np.testing.assert_array_equal(load_expecting_warning(folder, meta_path)[1], labels)
    (cache / "mnist-train-images.npy").unlink()
    load_expecting_warning(folder, cache / "mnist-train-images.npy")
    meta_path.unlink()
    np.testing.assert_array_equal(load_without_warning(folder)[1], labels)  # no cache: silent


def test_pickled_cache_file_is_not_unpickled(mnist_folder, tmp_path):
    folder, _, labels, cache = mnist_folder
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    labels_path = cache / "mnist-train-labels.npy"
    np.save(labels_path, np.array([Payload()], dtype=object), allow_pickle=True)
    new_process()
    _, y = load_expecting_warning(folder, labels_path)
    assert not marker.exists()
    np.testing.assert_array_equal(y, labels)


def test_hash_checked_once_per_process_and_file(mnist_folder, monkeypatch):
    folder, _, labels, _ = mnist_folder
    calls = []
    real = datasets._array_digest
    monkeypatch.setattr(datasets, "_array_digest", lambda a: calls.append(a.shape) or real(a))
    load_without_warning(folder)
    assert calls == []  # this process wrote the cache: nothing to hash again
    new_process()
    load_without_warning(folder)
    assert len(calls) == 2  # images and labels, once
    for _ in range(3):
        np.testing.assert_array_equal(load_without_warning(folder)[1], labels)
    assert len(calls) == 2


def test_old_cache_version_is_rebuilt_silently(mnist_folder):
    folder, _, labels, cache = mnist_folder
    meta_path = cache / "mnist-train-meta.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = 1
    del meta["arrays"]
    meta_path.write_text(json.dumps(meta))
    np.testing.assert_array_equal(load_without_warning(folder)[1], labels)
    assert json.loads(meta_path.read_text())["version"] == datasets._CACHE_VERSION


def test_labels_that_do_not_match_the_images_are_rejected(mnist_folder):
    folder, _, labels, cache = mnist_folder
    labels_path, meta_path = cache / "mnist-train-labels.npy", cache / "mnist-train-meta.json"
    short = labels[:11].astype(np.int64)
    np.save(labels_path, short)
    meta = json.loads(meta_path.read_text())
    meta["arrays"]["labels"] = datasets._array_record(short)
    meta_path.write_text(json.dumps(meta))
    new_process()
    expected = r"mnist-train-labels\.npy holds labels int64 \(11,\); expected int64 \(12,\)"
    with pytest.warns(UserWarning, match=expected):
        _, y = load("mnist", "train", root=folder, verify=False)
    np.testing.assert_array_equal(y, labels)
