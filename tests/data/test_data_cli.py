"""`mlcvlab data info` / `mlcvlab data download`."""
import pytest

from mlcvlab.cli import main

from datafiles import make_mnist_like, write_mnist_split


def test_data_info_lists_embedded_and_missing(capsys, tmp_path):
    assert main(["data", "info", "mnist10k"]) == 0
    out = capsys.readouterr().out
    assert "mnist10k       embedded" in out and "mnist10k.npz" in out
    assert "train   8000 images; per class: 801 902" in out
    assert main(["data", "info", "cifar10", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cifar10        missing" in out and str(tmp_path) in out


def test_data_info_shows_present_files(capsys, tmp_path):
    images, labels = make_mnist_like(6)
    for split in ("train", "test"):
        write_mnist_split(tmp_path, split, images, labels)
    assert main(["data", "info", "fashion_mnist", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # Our small files are not the official ones: info says so instead of hiding it.
    assert "fashion_mnist  CORRUPT" in out and "failed verification" in out


@pytest.mark.timeout(30)
def test_data_download_offline_is_a_clean_error(capsys, tmp_path):
    assert main(["data", "download", "mnist", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "download failed" in err and "train-images-idx3-ubyte.gz" in err
