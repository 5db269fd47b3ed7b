"""Run by the MPI tests under ``mpiexec -n 2 python mpi_worker.py MODE OUT``.

MODE train: a few data-parallel steps of a small MLP (dropout and batch norm) on
fixed data; every rank saves its weights and buffers to OUT/rank<r>.npz.
MODE kill / exit / raise: rank 1 dies mid-run (SIGKILL, os._exit(3), an exception);
the other rank must then exit non-zero instead of hanging.
"""
import os
import signal
import sys

import numpy as np

STEPS, BATCH, SEED = 4, 32, 3


def build_model():
    from mlcvlab.models import mlp
    return mlp([10, 16, 12, 3], p_hidden=0.3, batchnorm=True, rng=SEED).astype(np.float64)


def data():
    g = np.random.default_rng(SEED)
    return g.normal(size=(STEPS * BATCH, 10)), g.integers(0, 3, STEPS * BATCH)


def train(dist: str, die=None):
    """Train with ``dist`` ("local" or "mpi") on 2 workers; returns (model, step_fn)."""
    from mlcvlab.nn import CrossEntropyLoss
    from mlcvlab.optim import SGD
    from mlcvlab.parallel import make_step_fn
    from mlcvlab.train import Trainer
    model = build_model()
    step_fn = make_step_fn(dist, 2, model, seed=SEED)
    trainer = Trainer(model, CrossEntropyLoss(), SGD(model.parameters(), lr=0.1, momentum=0.9),
                      step_fn=step_fn)
    X, y = data()
    for s in range(STEPS):
        if die is not None and s == 2 and step_fn.comm.rank == 1:
            die()
        trainer.train_step(X[s * BATCH:(s + 1) * BATCH], y[s * BATCH:(s + 1) * BATCH])
    return model, step_fn


def _raise():
    raise RuntimeError("rank 1 fails on purpose")


def main(mode: str, out: str) -> None:
    from mlcvlab.parallel.mpi import abort_on_error
    dies = {"train": None, "kill": lambda: os.kill(os.getpid(), signal.SIGKILL),
            "exit": lambda: os._exit(3), "raise": _raise}
    with abort_on_error():
        model, step_fn = train("mpi", dies[mode])
        state = dict(model.state_dict())
        np.savez(os.path.join(out, f"rank{step_fn.comm.rank}.npz"), **state)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main(sys.argv[1], sys.argv[2])
