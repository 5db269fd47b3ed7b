"""Synchronous SGD over K workers (the course handout's SyncSGD).

Notation of the handout: W are the network's weights, δ the learning rate, K
the number of workers, r = 1, 2, ... the rounds and L̂ the empirical loss. In
round r:

1. the data of the round is divided into K mini-batches B_1 ... B_K of equal size;
2. worker k computes ∇L̂_k = ∇_W L̂(W^(r-1); B_k), the gradient of the empirical
   loss on its mini-batch with respect to the *same* weights W^(r-1)
   (``model.emp_loss_grad``; for NN4, :func:`mlcvlab.models.nn4.emp_loss_grad`);
3. the server waits for all K gradients (synchronous) and averages them:
   ∇L̂ = (1/K) Σ_k ∇L̂_k;
4. W^(r) = W^(r-1) − δ · ∇L̂, and W^(r) is used by every worker in round r + 1.

With equal mini-batches and no batch norm or dropout, ∇L̂ is exactly the gradient
on the round's whole data, so a round is one step of (mini-batch) gradient
descent computed K times faster in parallel; R full-data rounds are R steps of
full-batch gradient descent. With batch norm each worker normalizes with its own
mini-batch statistics (see :mod:`mlcvlab.parallel.step`).

The workers are a :mod:`mlcvlab.parallel` communicator: in-process shards
(``"local"``), MPI ranks (``"mpi"``), or the handout's in-process GPU workers (``"cuda"``,
``--dist cuda`` in the CLI: :class:`mlcvlab.parallel.cuda.CudaDataParallelStep`, whose
kernels compute the gradient of the model's own loss; worker k draws the dropout masks of
worker k of the CPU workers, so both give the same rounds up to float rounding).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Union

import numpy as np

from mlcvlab import backend
from mlcvlab.optim.sgd import SGD


class SyncSGD:
    """Synchronous SGD: hyperparameters δ (``lr``) and K (``workers``).

    model: an NN4 (or any Module with ``emp_loss_grad(X, y) -> (loss, flat grad)``;
    otherwise give ``loss``, e.g. ``CrossEntropyLoss()``). comm: ``"local"`` (the K
    workers in this process), ``"mpi"`` (one MPI rank per worker; K must equal the
    number of ranks), ``"cuda"`` (the K workers on the GPUs of this process, the model's
    weights on the host between rounds; NN4 and the MLPs of ``models.mlp``, float32, no
    ``loss``: the kernels differentiate the model's own head) or a Communicator. seed:
    seeds the per-worker dropout masks.
    """

    def __init__(self, model, lr: float, workers: int = 1, comm: Union[str, object] = "local",
                 loss=None, seed: int = 0):
        from mlcvlab.parallel import DataParallelStep, make_communicator, module_grad_fn
        if not isinstance(workers, (int, np.integer)) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"SyncSGD: workers (K) must be an integer >= 1, got {workers!r}")
        self.K = int(workers)
        self.model = model
        self.optimizer = SGD(model.parameters(), lr=lr)   # W <- W - δ ∇L̂
        self.round = 0
        self.last_timings: Dict[str, float] = {}
        if isinstance(comm, str) and comm == "cuda":
            if loss is not None:
                raise ValueError("SyncSGD: comm='cuda' runs the handout's CUDA workers, whose "
                                 "kernels differentiate the model's own head (NN4's loss, "
                                 "cross-entropy for an mlp); leave loss=None, or use "
                                 "comm='local'")
            from mlcvlab.parallel.cuda import CudaDataParallelStep
            self.grad_fn = None
            self.step_fn = CudaDataParallelStep(model, self.K, seed=seed)
            self.comm = self.step_fn.comm
            return
        self.comm = make_communicator(comm, self.K) if isinstance(comm, str) else comm
        if self.comm.size != self.K:
            raise ValueError(f"SyncSGD: K={self.K} workers but the communicator has "
                             f"{self.comm.size}; start mpiexec with -n {self.K}")
        if loss is not None:
            self.grad_fn = module_grad_fn(loss)
        elif hasattr(model, "emp_loss_grad"):
            self.grad_fn = lambda m, X, y: m.emp_loss_grad(X, y)
        else:
            raise ValueError(f"SyncSGD: {type(model).__name__} has no emp_loss_grad; pass "
                             f"loss=... (e.g. mlcvlab.nn.CrossEntropyLoss())")
        self.step_fn = DataParallelStep(model, self.comm, seed=seed, grad_fn=self.grad_fn)

    @property
    def lr(self) -> float:
        """δ, the learning rate."""
        return self.optimizer.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.optimizer.lr = value

    @property
    def param_groups(self) -> list:
        """The inner SGD's parameter groups, so torch-style schedulers drive δ."""
        return self.optimizer.param_groups

    def step(self, X: np.ndarray, y: np.ndarray) -> float:
        """One round on the data (X: (N, ...), y: (N,)), N >= K (equal mini-batches when K
        divides N).

        Returns L̂ averaged over the K mini-batches, at W^(r-1).
        """
        self.model.train()
        if self.grad_fn is None:                       # the CUDA workers: their own gradient
            loss, self.last_timings = self.step_fn.step(X, y, self.optimizer)
        else:
            loss, self.last_timings = self.step_fn.step(X, y, self.optimizer, self.grad_fn)
        self.round += 1
        return loss

    def fit(self, X: np.ndarray, y: np.ndarray, rounds: int, batch_size: Optional[int] = None,
            rng=None) -> List[float]:
        """Run ``rounds`` rounds; returns the loss of each.

        batch_size None: every round uses all of (X, y) (the handout's full-data
        rounds: gradient descent). Otherwise each round draws ``batch_size``
        samples without replacement (stochastic gradient descent), same on all ranks.
        """
        if not isinstance(rounds, (int, np.integer)) or rounds < 0:
            raise ValueError(f"SyncSGD.fit: rounds must be an integer >= 0, got {rounds!r}")
        if batch_size is not None and not 1 <= batch_size <= len(X):
            raise ValueError(f"SyncSGD.fit: batch_size must be in [1, {len(X)}] or None, "
                             f"got {batch_size}")
        gen = backend.rng(0 if rng is None else rng)
        losses = []
        for _ in range(int(rounds)):
            if batch_size is None:
                losses.append(self.step(X, y))
            else:
                idx = gen.choice(len(X), size=batch_size, replace=False)
                losses.append(self.step(X[idx], y[idx]))
        return losses
