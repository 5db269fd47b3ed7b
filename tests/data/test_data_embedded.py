"""The shipped real subsets mnist10k / fashion10k and scikit-learn's digits."""
import numpy as np
import pytest

from mlcvlab.data import embedded, load, stratified_split

PER_CLASS = {"mnist10k": [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978],
             "fashion10k": [1000] * 10}


@pytest.mark.parametrize("name", ["mnist10k", "fashion10k"])
def test_shipped_files_match_recorded_checksums(name):
    path = embedded.embedded_path(name)
    assert embedded.sha256_file(path) == embedded.EMBEDDED_SHA256[path.name]
    assert (embedded.EMBEDDED_DIR / "NOTICE").is_file()


@pytest.mark.parametrize("name", ["mnist10k", "fashion10k"])
def test_shapes_dtypes_and_class_counts(name):
    Xtr, ytr = load(name, "train")
    Xte, yte = load(name, "test")
    assert Xtr.shape == (8000, 1, 28, 28) and Xte.shape == (2000, 1, 28, 28)
    assert Xtr.dtype == np.float32 and ytr.dtype == np.int64 and Xtr.flags.c_contiguous
    assert 0.0 == Xtr.min() and Xtr.max() == 1.0
    total = np.bincount(ytr, minlength=10) + np.bincount(yte, minlength=10)
    assert total.tolist() == PER_CLASS[name]
    # Stratified: every class is 20% of its count in the test split (rounded).
    assert np.bincount(yte, minlength=10).tolist() == \
        [int(np.rint(0.2 * c)) for c in PER_CLASS[name]]
    # Real images, not blank: mean intensity of MNIST digits is about 0.13.
    assert 0.05 < Xtr.mean() < 0.5


@pytest.mark.parametrize("name", ["mnist10k", "fashion10k", "digits"])
def test_split_is_disjoint_and_the_same_on_every_call(name):
    Xtr, _ = load(name, "train")
    Xte, _ = load(name, "test")
    Xtr2, ytr2 = load(name, "train")
    np.testing.assert_array_equal(Xtr, Xtr2)
    # No image is in both splits (compare exact pixel rows; the sets hold no duplicates
    # across the split boundary).
    train_rows = {row.tobytes() for row in Xtr.reshape(len(Xtr), -1)}
    assert not any(row.tobytes() in train_rows for row in Xte.reshape(len(Xte), -1))


def fewest_classes_in_a_window(y, window=100):
    """The fewest distinct labels in any ``window`` consecutive entries of ``y``."""
    return min(len(np.unique(y[i:i + window])) for i in range(len(y) - window + 1))


@pytest.mark.parametrize("name", ["mnist10k", "fashion10k", "digits"])
def test_no_slice_is_sorted_by_class(name):
    """Issue #16: the embedded sets were stored sorted by class (y[:512] of mnist10k was all
    zeros). Any 100 consecutive labels of either split now hold at least 8 classes."""
    for split in ("train", "test"):
        _, y = load(name, split)
        assert fewest_classes_in_a_window(y) >= 8, (name, split)
        assert np.unique(y[:512]).size == 10


@pytest.mark.parametrize("name", ["mnist10k", "fashion10k"])
def test_files_are_stored_shuffled_and_split_as_the_class_sorted_build(name):
    images, labels, source_index = embedded.read_embedded(name)
    assert fewest_classes_in_a_window(labels) >= 8
    # source_index maps the file back to the class-sorted build order ...
    sorted_labels = np.empty_like(labels)
    sorted_labels[source_index] = labels
    assert np.all(np.diff(sorted_labels) >= 0)
    # ... and the split is the one that order had before the shuffle (same images per split).
    train_idx, test_idx = embedded.embedded_split_indices(labels, source_index)
    train_src, test_src = stratified_split(sorted_labels)
    assert set(source_index[test_idx].tolist()) == set(test_src.tolist())
    assert set(source_index[train_idx].tolist()) == set(train_src.tolist())
    X, y = load(name, "test")
    np.testing.assert_array_equal(y, labels[test_idx])
    np.testing.assert_array_equal(np.rint(X[:, 0] * 255).astype(np.uint8), images[test_idx])


def test_stratified_split_indices():
    y = np.repeat(np.arange(3), [10, 20, 5])
    train, test = stratified_split(y, 0.2, seed=0)
    assert np.intersect1d(train, test).size == 0
    assert np.union1d(train, test).tolist() == list(range(35))
    assert np.bincount(y[test]).tolist() == [2, 4, 1]
    train2, test2 = stratified_split(y, 0.2, seed=0)
    np.testing.assert_array_equal(test, test2)
    np.testing.assert_array_equal(train, train2)
    # A random order, not sorted indices (y is sorted by class here).
    assert not np.all(np.diff(train) > 0) and not np.all(np.diff(test) > 0)
    assert not np.array_equal(stratified_split(y, 0.2, seed=1)[1], test)


def test_digits():
    X, y = load("digits", "train")
    Xt, yt = load("digits", "test")
    assert X.shape[1:] == (1, 8, 8) and len(X) + len(Xt) == 1797 and X.dtype == np.float32
    assert X.max() == 1.0 and X.min() == 0.0 and yt.dtype == np.int64


def test_corrupt_embedded_file_gives_clear_error(tmp_path, monkeypatch):
    broken = tmp_path / "embedded"
    broken.mkdir()
    data = embedded.embedded_path("mnist10k").read_bytes()
    (broken / "mnist10k.npz").write_bytes(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])
    monkeypatch.setattr(embedded, "EMBEDDED_DIR", broken)
    with pytest.raises(ValueError, match=r"mnist10k.npz is corrupt: SHA-256 [0-9a-f]{64}, "
                                         r"expected 20c8c4c0"):
        load("mnist10k", "train")
    (broken / "mnist10k.npz").unlink()
    with pytest.raises(FileNotFoundError, match="embedded file .*mnist10k.npz is missing"):
        load("mnist10k", "test")


def test_digits_file_equals_scikit_learns_digits_and_needs_no_sklearn_at_run_time():
    import subprocess
    import sys

    from sklearn.datasets import load_digits   # the reference, in the tests only

    from mlcvlab import data
    bunch = load_digits()
    X_tr, y_tr = data.load("digits", "train")
    X_te, y_te = data.load("digits", "test")
    assert len(y_tr) + len(y_te) == 1797
    got = np.sort(np.concatenate([X_tr, X_te]).reshape(1797, 64) * 16, axis=0)
    np.testing.assert_allclose(got, np.sort(bunch.images.reshape(1797, 64), axis=0), atol=1e-5)
    code = ("import sys; sys.modules['sklearn'] = None; from mlcvlab import data; "
            "print(data.load('digits', 'train')[0].shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "(1438, 1, 8, 8)" in out.stdout, out.stderr
