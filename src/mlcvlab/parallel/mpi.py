"""The MPI communicator: one process per worker, via mpi4py.

Run K workers with ``mpiexec -n K mlcvlab train --dist mpi --workers K ...``.
Across machines the same command runs unchanged with a host file
(``mpiexec -f hosts -n 8 mlcvlab train --dist mpi --workers 8 ...``, one
``hostname:slots`` per line, for MPICH's hydra; Open MPI spells it
``--hostfile``); every machine needs the same Python environment and the
dataset at the same path.

Semantics:

* every rank loads the same data and draws the same global batch (same seed);
  rank r computes the gradient on shard r of it;
* the parameters are broadcast from rank 0 when the step is built, so every
  rank starts from identical weights;
* one ``Allreduce(SUM)`` on the packed flat gradient buffer, then ``/= K``;
* only rank 0 writes files and prints (``step_fn.is_root``).

Failure handling: a rank killed by a signal or calling ``os._exit`` makes
mpiexec (hydra) tear the whole job down (measured here: under one second). A
rank that *raises* would otherwise finalize MPI while the others wait in a
collective, a hang; :func:`abort_on_error` turns any exception into
``MPI.COMM_WORLD.Abort(1)`` so every rank exits non-zero. As a last resort
``timeout`` makes the all-reduce non-blocking (``Iallreduce`` polled with
``Test``) and aborts the job if the other ranks do not arrive in time.
"""
from __future__ import annotations

import contextlib
import sys
import time
import traceback
from typing import Iterator, Optional

import numpy as np

from mlcvlab.parallel.comm import Communicator, check_buffer


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as err:   # pragma: no cover - mpi4py is a declared dependency
        raise RuntimeError("--dist mpi needs mpi4py and an MPI library: "
                           "pip install 'mlcvlab[mpi]' (mpi4py and mpich)") from err
    return MPI


class MPICommunicator(Communicator):
    """One worker per MPI process. comm: an mpi4py communicator (default COMM_WORLD).

    timeout: seconds an all-reduce may wait for the other ranks before the job is
    aborted (None: a blocking ``Allreduce``, relying on mpiexec to tear down a job
    whose rank died).
    """

    name = "mpi"

    def __init__(self, comm=None, timeout: Optional[float] = None):
        MPI = _mpi()
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        if timeout is not None and not timeout > 0:
            raise ValueError(f"MPICommunicator: timeout must be > 0 seconds or None, got {timeout}")
        self.timeout = timeout

    def allreduce_mean(self, buf: np.ndarray) -> None:
        buf = check_buffer("MPICommunicator.allreduce_mean", buf, 1)
        if self.size == 1:
            return
        if self.timeout is None:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        else:
            self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM), "all-reduce")
        buf /= self.size

    def broadcast(self, buf: np.ndarray, root: int = 0) -> None:
        if not 0 <= root < self.size:
            raise ValueError(f"MPICommunicator.broadcast: root must be in [0, {self.size}), "
                             f"got {root}")
        if self.size > 1:
            self.comm.Bcast(buf, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now, with exit code ``code``."""
        sys.stderr.flush()
        self.comm.Abort(code)

    def _wait(self, request, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not request.Test():
            if time.monotonic() > deadline:
                print(f"mlcvlab (rank {self.rank}): {what} did not complete within "
                      f"{self.timeout}s (another rank died?); aborting the job", file=sys.stderr)
                self.abort(1)
            time.sleep(1e-5)


@contextlib.contextmanager
def abort_on_error() -> Iterator[None]:
    """Run a block; if it raises (or calls sys.exit with a non-zero code), print the
    error and abort every MPI rank with exit code 1 instead of hanging."""
    try:
        yield
    except SystemExit as err:
        if err.code not in (None, 0):
            _abort_with(err)
        raise
    except BaseException as err:  # noqa: B902 - anything, including KeyboardInterrupt
        _abort_with(err)


def _abort_with(err: BaseException) -> None:
    MPI = _mpi()
    rank = MPI.COMM_WORLD.Get_rank()
    print(f"mlcvlab (rank {rank}): {type(err).__name__}: {err}; aborting all ranks",
          file=sys.stderr)
    traceback.print_exc(file=sys.stderr)
    sys.stderr.flush()
    MPI.COMM_WORLD.Abort(1)
