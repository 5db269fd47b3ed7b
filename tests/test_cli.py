"""The ``mlcvlab`` command end to end: train writes the run folder, eval and resume
read it, summary prints the per-layer table, errors are one clear line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mlcvlab.cli import main


def _run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mlcvlab", *args], capture_output=True, text=True,
                          timeout=300, **kw)


def test_train_one_epoch_on_mnist10k_writes_run_folder(tmp_path):
    out = tmp_path / "run"
    proc = _run("train", "--epochs", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "final test accuracy" in proc.stdout and "mnist10k" in proc.stdout
    for name in ("history.json", "metrics.csv", "curves.png", "model.npz", "config.json",
                 "results.json"):
        assert (out / name).exists(), name
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1]
    assert ({"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds",
             "cpu_seconds", "lr", "batch_size"} <= set(history[0]))
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "mnist10k" and config["model"] == "nn4"
    # the validation curve comes from 10 % of the training split, held out; test once at the end
    assert config["n_val"] == 800 and config["n_train"] == 7200 and config["n_test"] == 2000
    assert config["status"] == "finished" and config["versions"]["numpy"] == np.__version__
    results = json.loads((out / "results.json").read_text())
    assert results["test_accuracy"] > 0.8          # one epoch of NN4 on real MNIST digits
    assert "test" not in json.dumps(history)       # no test number in the per-epoch curves

    proc = _run("eval", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"accuracy {results['test_accuracy']:.4f}" in proc.stdout


def test_digits_reaches_95_percent(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["train", "--dataset", "digits", "--epochs", "20", "--out", str(out),
                 "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["test_accuracy"] >= 0.95


def test_resume_continues_the_same_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["train", "--dataset", "digits", "--quiet", "--optimizer", "momentum"]
    assert main(common + ["--epochs", "4", "--out", str(a)]) == 0
    assert main(common + ["--epochs", "2", "--out", str(b)]) == 0
    assert main(["train", "--resume", str(b), "--epochs", "4", "--quiet"]) == 0
    wa, wb = np.load(a / "model.npz"), np.load(b / "model.npz")
    for k in wa.files:
        np.testing.assert_array_equal(wa[k], wb[k])
    assert len(json.loads((b / "history.json").read_text())) == 4


def test_summary_prints_table(capsys):
    assert main(["summary", "lenet5"]) == 0
    out = capsys.readouterr().out
    assert "61,706" in out or "61706" in out           # LeNet-5 parameters


def test_clear_errors(tmp_path, capsys):
    assert main(["train", "--batch-size", "0", "--out", str(tmp_path)]) == 1
    assert "--batch-size must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["train", "--dataset", "nope", "--out", str(tmp_path)]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing")]) == 1
    assert "config.json not found" in capsys.readouterr().err
