"""Data parallelism: communicators (local, mpi, cuda), the data-parallel step, timings.

Workers meet in one call on one flat buffer (see :mod:`mlcvlab.parallel.comm`):

* ``local``: K shards computed one after another in this process (exact
  semantics on one core; what the tests use);
* ``mpi``: one process per worker, ``mpiexec -n K mlcvlab train --dist mpi --workers K``
  (:mod:`mlcvlab.parallel.mpi`); with ``--device cuda`` one GPU per process and the
  all-reduce on the devices with NCCL (:mod:`mlcvlab.parallel.nccl`);
* ``cuda``: K GPU workers in one process with numba CUDA kernels
  (:mod:`mlcvlab.parallel.cuda`; numba is imported only when asked for).

:func:`make_step_fn` builds the ``Trainer`` step for ``mlcvlab train``.
"""
from __future__ import annotations

from typing import Optional

from mlcvlab.parallel.comm import Communicator, LocalCommunicator
from mlcvlab.parallel.step import DataParallelStep, module_grad_fn, shard_bounds

DISTS = ("local", "mpi", "cuda")


def _nccl(timeout):
    from mlcvlab.parallel.nccl import NcclCommunicator
    return NcclCommunicator(timeout=timeout)


def make_communicator(dist: str, workers: int, timeout: Optional[float] = None,
                      device: str = "cpu") -> Communicator:
    """The communicator for ``dist`` ("local" or "mpi") with K = ``workers``, for gradients on
    ``device`` ("cuda": NCCL across the MPI ranks' GPUs; local workers share one GPU)."""
    if dist == "local":
        return LocalCommunicator(workers)
    if dist == "mpi":
        from mlcvlab.parallel.mpi import MPICommunicator
        comm = MPICommunicator(timeout=timeout) if device == "cpu" else _nccl(timeout)
        if comm.size != workers:
            raise ValueError(f"--dist mpi: --workers {workers} but mpiexec started {comm.size} "
                             f"rank(s); run 'mpiexec -n {workers} mlcvlab train --dist mpi "
                             f"--workers {workers} ...'")
        return comm
    if dist == "cuda":
        raise ValueError("make_communicator: the cuda workers live in CudaDataParallelStep; "
                         "use make_step_fn('cuda', K, model)")
    raise ValueError(f"make_communicator: unknown dist {dist!r}; choose one of {DISTS}")


def make_step_fn(dist: str, workers: int, model, seed: int = 0, timeout: Optional[float] = None):
    """A ``Trainer`` step_fn running K = ``workers`` synchronous data-parallel workers.

    The returned callable has ``is_root`` (False on MPI ranks other than 0, which
    must not write files or print). timeout: seconds an MPI collective may wait for
    the other ranks before the job is aborted with a message naming the missing rank.
    """
    if dist == "cuda":
        from mlcvlab.parallel.cuda import CudaDataParallelStep
        return CudaDataParallelStep(model, workers, seed=seed)
    device = getattr(model, "device", "cpu")
    return DataParallelStep(model, make_communicator(dist, workers, timeout, device), seed=seed)


def ring_allreduce_bandwidth(nbytes: float, seconds: float, workers: int) -> float:
    """Achieved all-reduce bus bandwidth in bytes/s under the ring model.

    A ring all-reduce of ``nbytes`` over K workers sends and receives
    2 (K - 1) / K · nbytes per worker, so bandwidth = 2 (K - 1) / K · nbytes / seconds
    (0 for K = 1, where nothing moves).
    """
    if workers < 1 or seconds < 0 or nbytes < 0:
        raise ValueError(f"ring_allreduce_bandwidth: need workers >= 1, seconds >= 0, nbytes >= 0; "
                         f"got {workers}, {seconds}, {nbytes}")
    if workers == 1 or seconds == 0:
        return 0.0
    return 2.0 * (workers - 1) / workers * nbytes / seconds


__all__ = ["Communicator", "LocalCommunicator", "DataParallelStep", "module_grad_fn",
           "shard_bounds", "make_communicator", "make_step_fn", "ring_allreduce_bandwidth", "DISTS"]
