"""The data-parallel step: K shards, one all-reduce, one optimizer update.

One step on a global batch (x: (B, ...), y: (B,)) with K workers:

1. the batch is split into K shards of B / K samples; worker k takes shard k (when B
   is not divisible by K, e.g. an epoch's last batch, shard sizes n_k differ by one
   and worker k's row is weighted by K n_k / B, so the mean is still the
   gradient of the global batch's mean loss; equal shards get weight exactly 1);
2. every worker computes the gradient of its shard's mean loss against the
   *same* weights (W^(r-1)) into its copy of the flat gradient buffer (P,);
3. the communicator averages the K buffers in ONE call (all-reduce mean), so
   the result is the mean of the shard gradients = the gradient of the global
   batch's mean loss (for models without batch norm or dropout);
4. any optimizer of :mod:`mlcvlab.optim` is applied once, identically everywhere.

Batch norm: each worker normalizes with its own shard's batch statistics, as
PyTorch DistributedDataParallel does without SyncBatchNorm, so with BN a K-worker
step is not the same as a one-worker step on the whole batch. The running
statistics (buffers) are *averaged across workers* in the same all-reduce (the
gradient buffer is packed with them and the loss), so every rank keeps identical
running statistics.

Dropout: worker k draws its masks from the counter-based generator
(:mod:`mlcvlab.nn.philox`) with each Dropout layer's own seed and step and stream k. A
local K-shard run and an MPI run with K ranks therefore draw identical masks and end
bit-identical (K = 2), and with K = 1 the step draws the masks of the plain Trainer step
(stream 0). Each layer's step advances once per data-parallel step (every worker starts
from the same integer buffers), so a checkpoint of the model's buffers resumes the masks.

Timings per step (summed per epoch by the Trainer): ``compute_seconds``
(forward + backward of all shards computed in this process),
``communication_seconds`` (the all-reduce), ``update_seconds`` (the optimizer),
``bytes_communicated`` (size of the all-reduced buffer, the per-worker payload;
0 with one worker).

On GPUs (a model moved with ``to("cuda")``; NCCL across MPI ranks, see
:mod:`mlcvlab.parallel.nccl`) the same step runs on device arrays. Reading each shard's loss,
reading the reduced loss and one synchronisation after the update close the three timings,
so they are device times, not launch times.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from mlcvlab.nn.basis import is_array
from mlcvlab.parallel.comm import Communicator

GradFn = Callable[[object, np.ndarray, np.ndarray], Tuple[float, np.ndarray]]


def shard_bounds(owner: str, n: int, k: int) -> np.ndarray:
    """Start/stop indices (k + 1,) of k contiguous shards of n samples, as equal as possible
    (sizes differ by at most one, e.g. for the last, smaller batch of an epoch)."""
    if n < k:
        raise ValueError(f"{owner}: a batch of {n} samples cannot feed {k} workers; use a batch "
                         f"size of at least {k} (the global batch is split across workers)")
    return (np.arange(k + 1) * n) // k


def _labels_for(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Targets shaped for the loss: a (N, 1) sigmoid head takes (N, 1) float targets."""
    if pred.ndim == 2 and pred.shape[1] == 1 and y.ndim == 1:
        return y.reshape(-1, 1).astype(pred.dtype)
    return y


def module_grad_fn(loss) -> GradFn:
    """A gradient function from a loss object: forward, loss, backward through the module.

    Returns ``grad_fn(model, x, y) -> (loss value, flat gradient (P,))`` (a view of
    ``model.flat().grad``, valid until the next call).
    """
    from mlcvlab.train.trainer import _model_input, loss_and_grad

    def grad_fn(model, x, y):
        if model.input_grad:        # the input is data: its gradient is never used
            model.set_input_grad(False)
        model.zero_grad()
        pred = model(_model_input(model, x))
        value, dpred = loss_and_grad(loss, model, pred, _labels_for(pred, y))
        model.backward(dpred)
        return float(value), model.flat().grad
    return grad_fn


class DataParallelStep:
    """Synchronous data-parallel step; also a ``Trainer`` ``step_fn``.

    model: a Module (its flat buffer is used). comm: a Communicator. seed: not used by
    the step since the dropout masks became counter-based (keyed by each Dropout layer's
    own seed, drawn from the model's generator); accepted so that callers need not change.
    grad_fn: ``(model, x, y) -> (loss, flat grad)``; default: the trainer's loss through
    ``forward``/``backward``.
    """

    def __init__(self, model, comm: Communicator, seed: int = 0, grad_fn: Optional[GradFn] = None):
        if not isinstance(comm, Communicator):
            raise TypeError(f"DataParallelStep: expected a Communicator, got {type(comm).__name__}")
        self.model, self.comm, self.grad_fn = model, comm, grad_fn
        self.flat = model.flat()
        self.size = comm.size
        self.is_root = comm.is_root
        from mlcvlab.nn.modules import Dropout
        self._dropouts = [m for m in model.modules() if isinstance(m, Dropout)]
        # every buffer is reset before each worker's forward; floating ones are averaged
        # (on a device model they live on the device, as the packed row; the integer ones,
        # dropout steps and batch counts, on the host)
        self._all_buffers = [b for _, b in model.named_buffers() if is_array(b)]
        self._buffers = [b for b in self._all_buffers if np.issubdtype(b.dtype, np.floating)]
        n_buf = sum(b.size for b in self._buffers)
        width = self.flat.size + n_buf + 1     # gradient | BN running statistics | loss
        self.xp = model.xp
        self.packed = self.xp.zeros((len(comm.local_ranks), width), dtype=self.flat.dtype)
        self._sync_initial_state()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The worker count. The dropout state (each layer's seed and step) is in the
        model's buffers, the same on every rank, so nothing else is needed to resume."""
        return {"workers": self.size}

    def load_state_dict(self, state: dict) -> None:
        """Checks the worker count (``worker_rngs`` of a checkpoint written before the
        counter-based masks is ignored: such a run cannot continue its old masks)."""
        if int(state["workers"]) != self.size:
            raise ValueError(f"the checkpoint was written with {state['workers']} workers, this "
                             f"run has {self.size}: resume with --workers {state['workers']}")

    def _sync_initial_state(self) -> None:
        """Every rank starts from rank 0's parameters and buffers."""
        if self.size == 1 or len(self.comm.local_ranks) == self.size:
            return
        state = self.xp.concatenate([self.flat.data] + [b.ravel() for b in self._buffers])
        self.comm.broadcast(state, root=0)
        self.flat.data[...] = state[:self.flat.size]
        self._unpack_buffers(state[self.flat.size:])

    def _unpack_buffers(self, values: np.ndarray) -> None:
        offset = 0
        for b in self._buffers:
            b[...] = values[offset:offset + b.size].reshape(b.shape)
            offset += b.size

    def _shard_gradients(self, xb, yb, grad_fn: GradFn) -> None:
        """Fill one packed row per local worker: gradient, buffers after forward, loss."""
        P, n = self.flat.size, len(xb)
        bounds = shard_bounds("DataParallelStep", n, self.size)
        before = [b.copy() for b in self._all_buffers]
        try:
            for i, r in enumerate(self.comm.local_ranks):
                for b, b0 in zip(self._all_buffers, before):
                    b[...] = b0      # every worker starts from the same statistics and steps
                for d in self._dropouts:
                    d.stream = r
                lo, hi = bounds[r], bounds[r + 1]
                value, grad = grad_fn(self.model, xb[lo:hi], yb[lo:hi])
                row = self.packed[i]
                row[:P] = grad
                offset = P
                for b in self._buffers:
                    row[offset:offset + b.size] = b.ravel()
                    offset += b.size
                row[-1] = value
                if (hi - lo) * self.size != n:
                    row *= (hi - lo) * self.size / n
        finally:
            for d in self._dropouts:
                d.stream = 0

    def step(self, xb: np.ndarray, yb: np.ndarray, optimizer, grad_fn: GradFn
             ) -> Tuple[float, Dict[str, float]]:
        """One synchronous step on the global batch (xb, yb); returns (mean loss, timings)."""
        t0 = time.perf_counter()
        self._shard_gradients(xb, yb, grad_fn)
        t1 = time.perf_counter()
        self.comm.allreduce_mean(self.packed)
        row = self.packed[0]
        loss = float(row[-1])           # on a GPU: waits for the all-reduce to finish
        t2 = time.perf_counter()
        self.flat.grad[...] = row[:self.flat.size]
        self._unpack_buffers(row[self.flat.size:-1])
        optimizer.step()
        self._synchronize()             # so that the update's time is the device's
        t3 = time.perf_counter()
        timings = {"compute_seconds": t1 - t0, "communication_seconds": t2 - t1,
                   "update_seconds": t3 - t2,
                   "bytes_communicated": float(row.nbytes if self.size > 1 else 0)}
        return loss, timings

    def _synchronize(self) -> None:
        """Wait for the device's queued work (nothing to wait for on the CPU or under the
        simulator, where the arrays are NumPy)."""
        if self.xp is not np:
            self.xp.cuda.get_current_stream().synchronize()

    def __call__(self, trainer, xb: np.ndarray, yb: np.ndarray) -> Tuple[float, Dict[str, float]]:
        grad_fn = self.grad_fn or module_grad_fn(trainer.loss)
        return self.step(xb, yb, trainer.optimizer, grad_fn)
