"""Trainer: learns a separable problem, History records, checkpoint/resume gives the
same trajectory, early stopping restores the best weights, NaN guard stops clearly."""
import json
import os
import time

import numpy as np
import pytest

from mlcvlab import nn, optim
from mlcvlab.train import Checkpoint, EarlyStopping, Trainer, array_batches, load_checkpoint


class Batches:
    """A minimal deterministic loader: shuffled batches from a seeded generator."""

    def __init__(self, X, y, batch_size, seed=0):
        self.X, self.y, self.batch_size = X, y, batch_size
        self.gen = np.random.default_rng(seed)

    def __len__(self):
        return -(-len(self.X) // self.batch_size)

    def __iter__(self):
        order = self.gen.permutation(len(self.X))
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.X[idx], self.y[idx]

    def state_dict(self):
        return {"rng": self.gen.bit_generator.state}

    def load_state_dict(self, state):
        self.gen.bit_generator.state = state["rng"]


def _problem(seed=0, n=256):
    gen = np.random.default_rng(seed)
    X = gen.standard_normal((n, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    return X, y


def _model():
    return nn.Sequential(nn.Linear(4, 16, rng=0), nn.ReLU(), nn.Linear(16, 2, rng=1))


def test_fit_learns_and_records():
    X, y = _problem()
    model = _model()
    trainer = Trainer(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.2))
    hist = trainer.fit(Batches(X, y, 32), epochs=8, val_loader=list(array_batches(X, y)))
    assert len(hist) == 8
    assert (set(["epoch", "train_loss", "val_loss", "val_acc", "seconds", "lr", "batch_size"])
            <= set(hist[0]))
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["val_acc"] > 0.95
    assert hist[0]["batch_size"] == 32 and hist[0]["lr"] == 0.2
    assert all(r["cpu_seconds"] > 0 for r in hist)
    # training never needed the input's gradient, so the first Linear skipped it
    assert not model.input_grad and not model[0].input_grad and model[2].input_grad


def test_checkpoint_resume_gives_same_trajectory(tmp_path):
    X, y = _problem()

    def run(epochs, directory=None, resume=False):
        model = _model()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        cbs = [Checkpoint(str(directory))] if directory else []
        trainer = Trainer(model, nn.CrossEntropyLoss(), opt, callbacks=cbs)
        loader = Batches(X, y, 32)
        if resume:
            trainer.load_checkpoint_state(load_checkpoint(str(directory)))
            trainer.restore_loader(loader)
        trainer.fit(loader, epochs - trainer.epoch)
        return model, trainer

    full, _ = run(6)
    run(3, tmp_path)
    resumed, trainer = run(6, tmp_path, resume=True)
    assert trainer.epoch == 6 and len(trainer.history) == 6
    np.testing.assert_array_equal(full.flat().data, resumed.flat().data)


def test_corrupt_or_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        load_checkpoint(str(tmp_path))
    (tmp_path / "checkpoint.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="checkpoint.npz is unreadable"):
        load_checkpoint(str(tmp_path))


def test_early_stopping_restores_best():
    X, y = _problem()
    model = _model()
    stopper = EarlyStopping(monitor="val_loss", patience=1)
    # a learning rate this large makes validation loss jump around, so it stops early
    trainer = Trainer(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=5.0),
                      callbacks=[stopper], nan_guard=False)
    val = list(array_batches(X, y))
    hist = trainer.fit(Batches(X, y, 32), epochs=30, val_loader=val)
    assert stopper.stopped_epoch is not None and len(hist) < 30
    from mlcvlab.train import evaluate
    best = min(r["val_loss"] for r in hist)
    assert abs(evaluate(model, nn.CrossEntropyLoss(), val)["loss"] - best) < 1e-5


def test_nan_guard():
    X, y = _problem()
    X[0, 0] = np.nan
    model = _model()
    trainer = Trainer(model, nn.MSELoss(), optim.SGD(model.parameters(), lr=0.1),
                      classification=False)
    with pytest.raises((FloatingPointError, ValueError), match="NaN"):
        trainer.fit(Batches(X, np.zeros((len(X), 2), np.float32), 32), epochs=1)


def test_bad_epochs():
    model = _model()
    trainer = Trainer(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="epochs must be a non-negative integer"):
        trainer.fit([], epochs=-1)


class SleepyBatches(Batches):
    """Batches that wait 50 ms before each one, as a process waiting for a core would."""

    def __iter__(self):
        for batch in super().__iter__():
            time.sleep(0.05)
            yield batch


def test_cpu_seconds_do_not_count_waiting():
    X, y = _problem(n=128)
    model = _model()
    trainer = Trainer(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.2))
    record = trainer.fit(SleepyBatches(X, y, 32), epochs=1)[0]       # 4 batches: 0.2 s asleep
    assert record["seconds"] >= 0.2
    assert 0 < record["cpu_seconds"] < record["seconds"] - 0.15
