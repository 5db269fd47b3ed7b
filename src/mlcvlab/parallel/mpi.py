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
``Test``) and aborts the job if the other ranks do not arrive in time. With a
timeout, every rank also sends rank 0 a one-word "arrived at step s" message
before each all-reduce, so when one rank hangs (stopped, swapping, deadlocked)
rank 0's message names the ranks that never arrived. ``mlcvlab train`` passes
``--timeout`` (default 300 s).
"""
from __future__ import annotations

import contextlib
import sys
import time
import traceback
from typing import Callable, Iterator, Optional

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
        # called with the message just before a timed-out collective aborts the job (the train
        # command records it in the run folder: the abort can end the job before mpiexec has
        # passed the printed message on)
        self.on_abort: Optional[Callable[[str], None]] = None
        self._step = 0
        self._arrived = np.zeros(self.size, dtype=np.int64)
        self._arrivals: list = []

    ARRIVE_TAG = 7301

    def _announce(self) -> None:
        """Post this step's arrival messages (rank r -> rank 0) before a timed collective."""
        self._step += 1
        if self.rank == 0:
            self._arrivals = [(r, self.comm.Irecv(self._arrived[r:r + 1], source=r,
                                                  tag=self.ARRIVE_TAG))
                              for r in range(1, self.size)]
        else:
            self._outgoing = np.array([self._step], dtype=np.int64)
            self._arrivals = [(0, self.comm.Isend(self._outgoing, dest=0, tag=self.ARRIVE_TAG))]

    def _missing(self) -> list:
        """Ranks whose arrival message for this step has not come (rank 0's view)."""
        return [r for r, req in self._arrivals if not req.Test()] if self.rank == 0 else []

    def _timed(self, request, what: str) -> None:
        self._wait(request, what)
        for _, req in self._arrivals:    # complete: every rank reached the collective
            req.Wait()
        self._arrivals = []

    def allreduce_mean(self, buf: np.ndarray) -> None:
        buf = check_buffer("MPICommunicator.allreduce_mean", buf, 1)
        if self.size == 1:
            return
        if self.timeout is None:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        else:
            self._announce()
            self._timed(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM),
                        "all-reduce")
        buf /= self.size

    def allgather(self, rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows)
        if rows.shape[0] != 1:
            raise ValueError(f"MPICommunicator.allgather: one row per rank, got {rows.shape[0]}")
        out = np.empty((self.size,) + rows.shape[1:], dtype=rows.dtype)
        if self.timeout is None:
            self.comm.Allgather(rows, out)
        else:
            self._announce()
            self._timed(self.comm.Iallgather(rows, out), "all-gather")
        return out

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

    PING_TAG, PONG_TAG = 7302, 7303
    PING_SECONDS = 3.0          # how long rank 0 waits for the others to answer its ping
    REPORT_GRACE = 10.0         # other ranks wait this much longer, so rank 0 names the culprit

    def _answer_pings(self) -> None:
        """A rank waiting in a collective answers rank 0's "are you alive?" ping."""
        if self.comm.Iprobe(source=0, tag=self.PING_TAG):
            token = np.zeros(1, dtype=np.int64)
            self.comm.Recv(token, source=0, tag=self.PING_TAG)
            self.comm.Send(token, dest=0, tag=self.PONG_TAG)

    def _unresponsive(self) -> list:
        """Rank 0: the ranks that do not answer a ping within PING_SECONDS (stopped or dead;
        a rank waiting in the same collective answers from its wait loop)."""
        tokens = np.zeros((self.size, 1), dtype=np.int64)
        replies = np.zeros((self.size, 1), dtype=np.int64)
        sends = [self.comm.Isend(tokens[r], dest=r, tag=self.PING_TAG)
                 for r in range(1, self.size)]
        recvs = {r: self.comm.Irecv(replies[r], source=r, tag=self.PONG_TAG)
                 for r in range(1, self.size)}
        deadline = time.monotonic() + self.PING_SECONDS
        while time.monotonic() < deadline and not all(q.Test() for q in recvs.values()):
            time.sleep(1e-3)
        del sends
        return [r for r, q in recvs.items() if not q.Test()]

    def _culprits(self) -> str:
        missing = self._missing()
        if missing:
            return (f"rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} "
                    f"never reached step {self._step}")
        silent = self._unresponsive()
        if silent:
            return (f"rank{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))} "
                    f"reached step {self._step} but stopped responding")
        return "every rank answers, but the transfer did not finish"

    def _wait(self, request, what: str) -> None:
        grace = 0.0 if self.rank == 0 else self.REPORT_GRACE
        deadline = time.monotonic() + self.timeout + grace
        pause = 1e-5
        while not request.Test():
            if self.rank != 0:
                self._answer_pings()
            if time.monotonic() > deadline:
                who = (self._culprits() if self.rank == 0
                       else "another rank did not arrive (rank 0 names it, unless rank 0 "
                            "is the one that stopped)")
                message = (f"{what} did not complete within {self.timeout:g} s: {who} "
                           "(stopped, hung or dead); aborting the job. The last checkpoint is "
                           "intact: resume with 'mlcvlab train --resume DIR'")
                print(f"mlcvlab (rank {self.rank}): {message}", file=sys.stderr)
                if self.on_abort is not None:
                    try:
                        self.on_abort(message)
                    except Exception:          # noqa: BLE001 - the abort must happen
                        pass
                self.abort(1)
            time.sleep(pause)
            pause = min(pause * 2, 2e-4)    # poll ever less often, up to every 0.2 ms


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


def run_module(module: str, ranks: int, config: dict, what: str, missing_hint: str,
               timeout: float = 3600, read=None):
    """Run ``python -m module CONFIG.json OUT`` under ``mpiexec -n ranks`` (one BLAS thread
    per rank) and return ``read(OUT)`` (default: the JSON rank 0 wrote to OUT). The labs that
    measure real ranks (data-parallel, sync-async) use it. ``what`` names the caller in errors;
    ``missing_hint`` says what to do when mpiexec is not installed."""
    import json
    import os
    import shutil
    import subprocess
    import tempfile

    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise FileNotFoundError(f"{what}: mpiexec is not on PATH; pip install mpich, or "
                                f"{missing_hint}")
    with tempfile.TemporaryDirectory() as tmp:
        cfg, out = os.path.join(tmp, "config.json"), os.path.join(tmp, "out.json")
        with open(cfg, "w") as f:
            json.dump(config, f)
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        proc = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, "-m", module, cfg,
                               out], capture_output=True, text=True, env=env, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{what}: mpiexec -n {ranks} failed (exit {proc.returncode}): "
                               f"{proc.stderr[-1500:]}")
        if read is not None:
            return read(out)
        with open(out) as f:
            return json.load(f)

