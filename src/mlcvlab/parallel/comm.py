"""Communicators: how the K workers' gradients meet.

A communicator reduces the model's *one* flat gradient buffer in *one* call.
Every communicator has

* ``rank`` / ``size``: this process's rank and the number of workers K;
* ``local_ranks``: the worker ranks computed in this process (all K for
  :class:`LocalCommunicator`, just ``[rank]`` for MPI);
* ``allreduce_mean(buf)``: ``buf`` has shape (len(local_ranks), P), one row per
  worker of this process; afterwards every row (on every process) holds the
  mean of all K workers' rows;
* ``broadcast(buf, root=0)``: every process gets root's ``buf`` (in place);
* ``barrier()``.

Summation is always in rank order, (((g_0 + g_1) + g_2) + ...) / K, so a local
run and an MPI run with K = 2 give bit-identical results (a + b == b + a
exactly in IEEE arithmetic; for K > 2 MPI's reduction tree may associate
differently, which changes the last bits only).
"""
from __future__ import annotations

from typing import List

import numpy as np


def check_buffer(owner: str, buf, rows: int) -> np.ndarray:
    """``buf`` as a (rows, P) view (a NumPy or a device array); raise a clear error for
    anything else."""
    is_array = isinstance(buf, np.ndarray) or hasattr(buf, "__cuda_array_interface__")
    if not is_array or not np.issubdtype(buf.dtype, np.floating):
        raise TypeError(f"{owner}: expected a floating numpy array, got "
                        f"{type(buf).__name__} {getattr(buf, 'dtype', '')}")
    if buf.ndim == 1 and rows == 1:
        return buf.reshape(1, -1)
    if buf.ndim != 2 or buf.shape[0] != rows:
        raise ValueError(f"{owner}: expected a buffer of shape ({rows}, P) (one row per worker of "
                         f"this process), got shape {buf.shape}")
    if not buf.flags.c_contiguous:
        raise ValueError(f"{owner}: the buffer must be C-contiguous (reduce the flat buffer, "
                         f"not a strided view)")
    return buf


class Communicator:
    """Interface shared by the local, MPI and CUDA communicators."""

    name = "base"
    rank: int = 0
    size: int = 1

    @property
    def local_ranks(self) -> List[int]:
        return [self.rank]

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_mean(self, buf: np.ndarray) -> None:
        raise NotImplementedError(f"{type(self).__name__}.allreduce_mean: Communicator is "
                                  "abstract; use LocalCommunicator, MPICommunicator or "
                                  "CudaCommunicator")

    def broadcast(self, buf: np.ndarray, root: int = 0) -> None:
        raise NotImplementedError(f"{type(self).__name__}.broadcast: Communicator is abstract; "
                                  "use LocalCommunicator, MPICommunicator or CudaCommunicator")

    def barrier(self) -> None:
        """Wait until every worker reaches this point (nothing to wait for by default)."""

    def allgather(self, rows: np.ndarray) -> np.ndarray:
        """Every worker's row: ``rows`` (len(local_ranks), m) of this process in, (size, m) out,
        row r from rank r. Used for small state (the workers' generator states), not hot paths."""
        rows = np.asarray(rows)
        if rows.shape[0] != len(self.local_ranks):
            raise ValueError(f"{type(self).__name__}.allgather: expected one row per local "
                             f"rank ({len(self.local_ranks)}), got {rows.shape[0]}")
        if len(self.local_ranks) == self.size:
            return rows.copy()
        raise NotImplementedError(f"{type(self).__name__}.allgather: not available")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class LocalCommunicator(Communicator):
    """K workers simulated in one process: exact synchronous-SGD semantics on one core.

    The K gradients are the K rows of one (K, P) array; the all-reduce is their
    sum in rank order divided by K, written back into every row.
    """

    name = "local"

    def __init__(self, size: int):
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
            raise ValueError(f"LocalCommunicator: size (the number of workers K) must be an "
                             f"integer >= 1, got {size!r}")
        self.rank, self.size = 0, int(size)

    @property
    def local_ranks(self) -> List[int]:
        return list(range(self.size))

    def allreduce_mean(self, buf: np.ndarray) -> None:
        buf = check_buffer("LocalCommunicator.allreduce_mean", buf, self.size)
        if self.size == 1:
            return
        acc = buf[0].copy()
        for k in range(1, self.size):     # a loop over workers, in rank order
            acc += buf[k]
        acc /= self.size
        buf[...] = acc

    def broadcast(self, buf: np.ndarray, root: int = 0) -> None:
        """One process holds every worker's copy already: nothing moves."""
        if not 0 <= root < self.size:
            raise ValueError(f"LocalCommunicator.broadcast: root must be in [0, {self.size}), "
                             f"got {root}")
