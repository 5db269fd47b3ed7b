"""What a student in a notebook or a PyTorch user expects: progress without a terminal, plots
that leave matplotlib alone, a readable History, threads set from Python or the environment,
--version, eval with a confusion matrix."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mlcvlab import nn, optim
from mlcvlab.cli import main
from mlcvlab.train import History, Trainer
from mlcvlab.train.callbacks import ProgressBar


def _history():
    return History([{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + e / 10,
                     "val_loss": 1.2 / e, "val_acc": 0.4 + e / 10, "seconds": 0.1,
                     "cpu_seconds": 0.1, "lr": 0.1} for e in (1, 2, 3)])


def test_history_repr_table_and_plot_leave_the_backend_alone(tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    h = _history()
    assert repr(h).startswith("History(3 epochs; last: train_loss=0.3333")
    assert h.table().splitlines()[0].split()[:5] == ["epoch", "train_loss", "train_acc",
                                                      "val_loss", "val_acc"]
    fig = h.plot(str(tmp_path / "c.png"), title="t")
    assert (tmp_path / "c.png").stat().st_size > 1000 and len(fig.axes) == 2
    assert matplotlib.get_backend() == before
    import matplotlib.pyplot as plt
    fig2, ax = plt.subplots()
    assert h.plot(ax=ax) is fig2                 # draws into the user's Axes
    plt.close(fig2)


def test_progress_prints_one_line_per_epoch_when_not_a_terminal(capsys):
    X = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    model = nn.Sequential(nn.Linear(4, 2))
    from mlcvlab.data import DataLoader
    Trainer(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1),
            progress=True).fit(DataLoader(X, y, 16, seed=0), 2)
    captured = capsys.readouterr()
    lines = [l for l in captured.out.splitlines() if l.startswith("epoch")]
    assert len(lines) == 2 and "train_loss" in lines[0]
    assert "\r" not in captured.err                  # no bar drawn into a log
    assert not ProgressBar().enabled                 # pytest's stderr is no terminal


def test_threads_from_python_and_from_the_environment():
    import mlcvlab
    code = "import mlcvlab; print(mlcvlab.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, MLCVLAB_THREADS="1"))
    assert out.stdout.strip() == "1", out.stderr
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        mlcvlab.set_num_threads(0)


def test_version_and_help_show_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("mlcvlab 0.")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "default nn4" in text and "adam 0.001" in text and "resnet20" in text


def test_eval_on_another_split_writes_a_confusion_matrix(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--epochs", "2", "--quiet",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--split", "val"]) == 0
    text = capsys.readouterr().out
    assert "(val, 143 images)" in text and "class  images  accuracy" in text
    rows = (out / "confusion_digits_val.csv").read_text().splitlines()
    assert len(rows) == 11 and sum(sum(map(int, r.split(",")[1:])) for r in rows[1:]) == 143
    assert (out / "confusion_digits_val.png").exists()
    main(["eval", str(out), "--dataset", "mnist10k"])
    assert "trained on digits; evaluating it on mnist10k" in capsys.readouterr().err


def test_names_with_hyphens_or_underscores_and_one_data_root_flag(tmp_path, capsys):
    assert main(["data", "info", "fashion-mnist", "--data-root", str(tmp_path)]) == 0
    assert "fashion_mnist" in capsys.readouterr().out
    from mlcvlab.labs.registry import get_lab
    assert get_lab("dying_relu").name == "dying-relu"


def test_silent_surprises_now_speak():
    import warnings

    from mlcvlab.models import NN4
    x = np.random.default_rng(0).random((8, 784)).astype(np.float32)
    with pytest.raises(ValueError, match="BCELoss: targets must be in \\[0, 1\\].*softmax head"):
        nn.BCELoss()(NN4(784)(x), np.arange(8).reshape(-1, 1).astype(np.float32))
    softmax_model = NN4(784, n_classes=10)
    with pytest.warns(UserWarning, match="softmax twice"):
        nn.CrossEntropyLoss()(softmax_model(x), np.arange(8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # logits: no warning; the model's own loss: none
        nn.CrossEntropyLoss()(np.random.default_rng(1).normal(size=(8, 10)), np.arange(8))
        softmax_model.loss_fn()(softmax_model(x), np.arange(8))


def test_predict_default_batch_size_and_summary_shape(capsys):
    from mlcvlab.data import DataLoader
    X = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    y = np.arange(10) % 2
    assert DataLoader(X, y).batch_size == 1                       # torch's default
    model = nn.Sequential(nn.Linear(4, 2))
    trainer = Trainer(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1))
    out = trainer.predict(X, batch_size=3)
    assert out.shape == (10, 2) and model.training
    np.testing.assert_allclose(out, X @ model[0].weight.data.T + model[0].bias.data, rtol=1e-5)
    assert main(["summary", "lenet5"]) == 0
    assert "lenet5 on input 1x28x28 (C x H x W, assumed" in capsys.readouterr().out
    assert main(["summary", "resnet20", "--input-shape", "3x16"]) == 1
    assert "--input-shape must be CxHxW" in capsys.readouterr().err
