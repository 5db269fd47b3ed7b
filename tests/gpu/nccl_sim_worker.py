"""Run by test_nccl_sim.py as ``mpiexec -n 2 python nccl_sim_worker.py OUT`` with
NUMBA_ENABLE_CUDASIM=1: each rank moves a small MLP (dropout, batch norm) to "cuda" and trains
3 data-parallel steps through make_step_fn("mpi", 2, model), i.e. the NCCL communicator with
MPI standing in for NCCL; it saves its weights, buffers and the communicator's name."""
import os
import sys

import numpy as np

STEPS, BATCH, SEED = 3, 8, 3


def build_model():
    from mlcvlab.models import mlp
    return mlp([10, 9, 7, 3], p_hidden=0.3, batchnorm=True, rng=SEED)


def data():
    g = np.random.default_rng(SEED)
    return (g.normal(size=(STEPS * BATCH, 10)).astype(np.float32),
            g.integers(0, 3, STEPS * BATCH))


def train(dist: str, device: str):
    """2 workers with ``dist`` ("local" or "mpi") on ``device``; returns (model, step_fn,
    losses)."""
    from mlcvlab.nn import CrossEntropyLoss
    from mlcvlab.optim import SGD
    from mlcvlab.parallel import make_step_fn
    from mlcvlab.train import Trainer
    model = build_model().to(device)
    step_fn = make_step_fn(dist, 2, model, seed=SEED)
    trainer = Trainer(model, CrossEntropyLoss().to(device),
                      SGD(model.parameters(), lr=0.1, momentum=0.9), step_fn=step_fn)
    X, y = data()
    losses = [trainer.train_step(X[s * BATCH:(s + 1) * BATCH], y[s * BATCH:(s + 1) * BATCH])[0]
              for s in range(STEPS)]
    return model, step_fn, losses


if __name__ == "__main__":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")    # before numba is imported
    out = sys.argv[1]
    model, step_fn, losses = train("mpi", "cuda")
    state = model.state_dict()
    np.savez(os.path.join(out, f"rank{step_fn.comm.rank}.npz"), losses=np.array(losses),
             comm=np.array(type(step_fn.comm).__name__), **state)
