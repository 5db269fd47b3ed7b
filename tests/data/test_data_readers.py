"""Readers on small files in the exact standard formats; corrupt files; cache; offline."""
import gzip
import hashlib
import os

import numpy as np
import pytest

from mlcvlab.data import datasets, formats, load, load_or_substitute, resolve_dataset

from datafiles import (CIFAR_BATCHES, idx_bytes, make_cifar_batches, make_mnist_like,
                       write_cifar_folder, write_cifar_tar, write_mnist_split)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_reader_gives_the_written_arrays(tmp_path, name, gz):
    images, labels = make_mnist_like(7)
    write_mnist_split(tmp_path, "test", images, labels, gz=gz)
    X, y = load(name, "test", root=tmp_path, verify=False)
    assert X.shape == (7, 1, 28, 28) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.dtype == np.int64
    np.testing.assert_array_equal(np.rint(X[:, 0] * 255).astype(np.uint8), images)
    np.testing.assert_array_equal(y, labels)
    assert X.min() >= 0.0 and X.max() <= 1.0


def test_dataset_subfolder_of_root_and_env_var(tmp_path, monkeypatch):
    images, labels = make_mnist_like(4)
    write_mnist_split(tmp_path / "data" / "mnist", "train", images, labels)
    X, _ = load("mnist", "train", root=tmp_path / "data", verify=False)
    assert len(X) == 4
    monkeypatch.setenv("MLCVLAB_DATA", str(tmp_path / "data"))
    X, y = load("mnist", "train", verify=False)
    np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_cifar_reader_folder_and_tarball(tmp_path, layout):
    batches = make_cifar_batches(n_per_batch=3)
    (write_cifar_folder if layout == "folder" else write_cifar_tar)(tmp_path, batches)
    X, y = load("cifar10", "train", root=tmp_path, verify=False)
    expected = np.concatenate([batches[b][0] for b in CIFAR_BATCHES["train"]])
    assert X.shape == (15, 3, 32, 32) and X.dtype == np.float32
    np.testing.assert_array_equal(np.rint(X * 255).astype(np.uint8), expected)
    np.testing.assert_array_equal(y, np.concatenate([batches[b][1] for b in
                                                     CIFAR_BATCHES["train"]]))
    Xt, yt = load("cifar10", "test", root=tmp_path, verify=False)
    assert Xt.shape == (3, 3, 32, 32) and yt.dtype == np.int64


def test_cache_gives_identical_arrays_and_is_used(tmp_path):
    images, labels = make_mnist_like(6)
    write_mnist_split(tmp_path, "train", images, labels)
    X1, y1 = load("mnist", "train", root=tmp_path, verify=False)
    cache = tmp_path / datasets.CACHE_FOLDER
    assert (cache / "mnist-train-images.npy").is_file()
    # A cached load does not parse the source again: prove it by breaking the parser.
    original = formats.read_idx_pair
    formats.read_idx_pair = None
    try:
        X2, y2 = load("mnist", "train", root=tmp_path, verify=False)
    finally:
        formats.read_idx_pair = original
    assert X2.dtype == X1.dtype and X2.shape == X1.shape and X2.flags.writeable
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)


def test_cache_is_rebuilt_when_the_source_changes(tmp_path):
    images, labels = make_mnist_like(6, seed=0)
    write_mnist_split(tmp_path, "train", images, labels)
    load("mnist", "train", root=tmp_path, verify=False)
    images2, labels2 = make_mnist_like(5, seed=1)
    write_mnist_split(tmp_path, "train", images2, labels2)
    X, y = load("mnist", "train", root=tmp_path, verify=False)
    np.testing.assert_array_equal(y, labels2)
    assert len(X) == 5


def test_truncated_idx_names_the_file(tmp_path):
    images, labels = make_mnist_like(5)
    img_path, _ = write_mnist_split(tmp_path, "train", images, labels, gz=False)
    img_path.write_bytes(img_path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*size mismatch"):
        load("mnist", "train", root=tmp_path, verify=False)


def test_truncated_gzip_names_the_file(tmp_path):
    images, labels = make_mnist_like(5)
    img_path, _ = write_mnist_split(tmp_path, "train", images, labels, gz=True)
    img_path.write_bytes(img_path.read_bytes()[:50])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*truncated or corrupt"):
        load("mnist", "train", root=tmp_path, verify=False)


def test_wrong_magic_number(tmp_path):
    images, labels = make_mnist_like(5)
    _, lab_path = write_mnist_split(tmp_path, "test", images, labels, gz=False)
    raw = bytearray(lab_path.read_bytes())
    raw[0:4] = b"\x12\x34\x08\x01"
    lab_path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: not an IDX file: magic "
                                         r"number 0x12340801"):
        load("mnist", "test", root=tmp_path, verify=False)


def test_label_count_mismatch(tmp_path):
    images, labels = make_mnist_like(5)
    write_mnist_split(tmp_path, "test", images, labels[:4])
    with pytest.raises(ValueError, match="4 labels for 5 images"):
        load("mnist", "test", root=tmp_path, verify=False)


def test_wrong_checksum_with_verify(tmp_path):
    images, labels = make_mnist_like(5)
    write_mnist_split(tmp_path, "train", images, labels, gz=True)
    spec = datasets.REMOTE["mnist"]
    # Give the fake files their exact official sizes, so the md5 is what fails.
    for f in spec.files["train"]:
        path = tmp_path / f.name
        path.write_bytes(path.read_bytes().ljust(f.size, b"\0"))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz failed verification: "
                                         r"md5 checksum [0-9a-f]{32}, expected "
                                         + spec.files["train"][0].md5):
        load("mnist", "train", root=tmp_path, verify=True)


def test_wrong_size_with_verify_and_verify_false_reads_it(tmp_path):
    images, labels = make_mnist_like(5)
    write_mnist_split(tmp_path, "train", images, labels, gz=False)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte failed verification: size "
                                         r"3936 bytes, expected 47040016"):
        load("mnist", "train", root=tmp_path, verify=True)
    X, _ = load("mnist", "train", root=tmp_path, verify=False)
    assert len(X) == 5


def test_cifar_batch_md5_checked_with_verify(tmp_path):
    write_cifar_folder(tmp_path, make_cifar_batches(2))
    with pytest.raises(ValueError, match="test_batch failed verification: md5 checksum"):
        load("cifar10", "test", root=tmp_path, verify=True)


def test_bad_pickle_names_the_file(tmp_path):
    folder = write_cifar_folder(tmp_path, make_cifar_batches(2))
    (folder / "test_batch").write_bytes(b"\x80\x02garbage that is not a pickle")
    with pytest.raises(ValueError, match="test_batch: not a readable CIFAR-10 batch pickle"):
        load("cifar10", "test", root=tmp_path, verify=False)


def test_pickle_with_code_is_refused(tmp_path):
    folder = write_cifar_folder(tmp_path, make_cifar_batches(2))
    evil = b"cos\nsystem\n(S'echo hacked'\ntR."   # os.system('echo hacked')
    (folder / "test_batch").write_bytes(evil)
    with pytest.raises(ValueError, match="forbidden global os.system"):
        load("cifar10", "test", root=tmp_path, verify=False)


def test_truncated_tar_names_the_file(tmp_path):
    path = write_cifar_tar(tmp_path, make_cifar_batches(2))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="cifar-10-python.tar.gz: truncated or corrupt"):
        load("cifar10", "train", root=tmp_path, verify=False)


def test_split_and_name_are_validated():
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\), got 'val'"):
        load("mnist10k", "val")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; known: digits"):
        load("imagenet")


@pytest.mark.timeout(30)
def test_offline_missing_mnist_fails_fast_with_instructions(tmp_path, isolated_data_env):
    with pytest.raises(FileNotFoundError) as info:
        load("mnist", "train")
    message = str(info.value)
    for text in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 str(isolated_data_env / ".mlcvlab" / "data" / "mnist"), "download failed",
                 "http://127.0.0.1:9/train-images-idx3-ubyte.gz", "load('mnist10k')"):
        assert text in message
    # Nothing was left behind under a final name (or as a partial file).
    target = isolated_data_env / ".mlcvlab" / "data" / "mnist"
    assert not target.exists() or list(target.iterdir()) == []


@pytest.mark.timeout(30)
def test_offline_switch_and_cifar_message(monkeypatch, tmp_path):
    monkeypatch.setenv("MLCVLAB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"(?s)MLCVLAB_OFFLINE.*cifar-10-python.tar.gz "
                                                r"\(or the extracted folder cifar-10-batches-py/"):
        load("cifar10", "test", root=tmp_path)


def test_load_or_substitute(tmp_path):
    X, y, used, note = load_or_substitute("mnist", "test", root=tmp_path)
    assert used == "mnist10k" and "mnist10k" in note and "not available" in note
    assert X.shape == (2000, 1, 28, 28)
    X, y, used, note = load_or_substitute("cifar10", "test", root=tmp_path)
    assert used == "fashion10k" and X.shape == (2000, 3, 32, 32) and "not CIFAR-10" in note
    np.testing.assert_array_equal(X[:, 0], X[:, 2])
    assert np.all(X[:, :, :2, :] == 0)
    assert resolve_dataset("fashion_mnist", root=tmp_path)[0] == "fashion10k"
    used, note = resolve_dataset("cifar10", root=tmp_path)
    assert used == "fashion10k" and "not CIFAR-10" in note and "padded" not in note
    images, labels = make_mnist_like(3)
    for split in ("train", "test"):
        write_mnist_split(tmp_path, split, images, labels)
    assert resolve_dataset("mnist", root=tmp_path) == ("mnist", "")
    X, y, used, note = load_or_substitute("mnist", "test", root=tmp_path, verify=False)
    assert used == "mnist" and note == "" and len(X) == 3


def test_substitute_never_hides_a_corrupt_file(tmp_path):
    images, labels = make_mnist_like(3)
    img, _ = write_mnist_split(tmp_path, "test", images, labels, gz=False)
    img.write_bytes(b"\0\0\x08\x03" + img.read_bytes()[4:-1])
    with pytest.raises(ValueError, match="size mismatch"):
        load_or_substitute("mnist", "test", root=tmp_path, verify=False)


def test_download_verifies_and_writes_atomically(tmp_path):
    """A local HTTP server stands in for the mirror: a good file arrives under its final
    name; a file with the wrong checksum leaves nothing behind."""
    import functools
    import http.server
    import threading

    from mlcvlab.data.download import download

    served = tmp_path / "served"
    served.mkdir()
    payload = gzip.compress(idx_bytes(np.arange(10, dtype=np.uint8)))
    (served / "f.gz").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/f.gz"
        md5 = hashlib.md5(payload).hexdigest()
        out = download([url], tmp_path / "dl" / "f.gz", md5=md5, size=len(payload))
        assert out.read_bytes() == payload
        with pytest.raises(OSError, match=r"md5 [0-9a-f]{32}, expected 0{32}"):
            download([url], tmp_path / "dl" / "g.gz", md5="0" * 32)
        with pytest.raises(OSError, match="got .* bytes, expected 5"):
            download([url], tmp_path / "dl" / "h.gz", size=5)
        assert sorted(os.listdir(tmp_path / "dl")) == ["f.gz"]
    finally:
        server.shutdown()
        server.server_close()
