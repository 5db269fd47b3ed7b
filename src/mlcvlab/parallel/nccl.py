"""``mpiexec -n G mlcvlab train --device cuda --dist mpi``: one GPU per MPI process, the
gradients all-reduced on the devices with NCCL.

Each rank selects the GPU ``local rank mod G`` (the local rank among the ranks on its node,
from MPI's shared-memory split) before anything is allocated, moves its model there, and runs
the same :class:`mlcvlab.parallel.step.DataParallelStep` as the CPU ranks: its shard's
forward and backward on its GPU, then one all-reduce of the packed row (gradient | batch-norm
running statistics | loss) in place on the device. NCCL (CuPy's binding,
``cupy.cuda.nccl``) needs a unique id made on rank 0; it crosses to the other ranks over MPI
as 128 integers (``Bcast`` of an array, no pickle). Barriers, the small host all-gathers and
the watch for a stopped rank stay on MPI (:class:`mlcvlab.parallel.mpi.MPICommunicator`):
with a timeout, the ranks meet in a timed MPI barrier before each NCCL call, so a dead rank
ends the job with its name instead of hanging inside NCCL.

Under numba's simulator (``NUMBA_ENABLE_CUDASIM=1``: no GPU, NumPy stands in for CuPy) the
"device" buffers are NumPy arrays and the all-reduce is MPI's, so the whole multi-process
device step runs, and is tested, with ``mpiexec -n 2`` on a CPU machine; only the NCCL call
itself needs a GPU (benchmarks/gpu_check.sh).
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np

from mlcvlab.gpu import device as gpu_device
from mlcvlab.parallel.comm import Communicator, check_buffer
from mlcvlab.parallel.mpi import MPICommunicator, _mpi

_NCCL_ID_BYTES = 128


def local_rank() -> int:
    """This process's rank among the MPI ranks on its node (0 without MPI)."""
    MPI = _mpi()
    return MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()


def select_device_for_rank() -> int:
    """Make GPU ``local rank mod G`` current for CuPy and numba; returns its index. Call it
    before any device array is made (the model's move, the optimizer)."""
    cuda = gpu_device.cuda()
    if gpu_device.simulated():
        return 0
    import cupy
    n = cupy.cuda.runtime.getDeviceCount()
    index = local_rank() % n
    cupy.cuda.Device(index).use()
    cuda.select_device(index)
    return index


class NcclCommunicator(Communicator):
    """One worker per MPI process and GPU; device buffers reduced with NCCL (MPI under the
    simulator). timeout: as :class:`MPICommunicator` (seconds a rank may be missing)."""

    name = "nccl"

    def __init__(self, timeout: Optional[float] = None):
        self.mpi = MPICommunicator(timeout=timeout)
        self.rank, self.size = self.mpi.rank, self.mpi.size
        self._nccl = None
        if not gpu_device.simulated() and self.size > 1:
            from cupy.cuda import nccl
            uid = np.zeros(_NCCL_ID_BYTES, dtype=np.int64)
            if self.rank == 0:
                uid[:] = nccl.get_unique_id()
            self.mpi.comm.Bcast(uid, root=0)
            self._nccl = nccl.NcclCommunicator(self.size, tuple(int(v) for v in uid), self.rank)
            self._nccl_module = nccl

    @property
    def local_ranks(self) -> List[int]:
        return [self.rank]

    def _meet(self, what: str) -> None:
        """With a timeout: every rank reaches this point, or the job ends naming who did not."""
        if self.mpi.timeout is not None:
            self.mpi._announce()
            self.mpi._timed(self.mpi.comm.Ibarrier(), what)

    def _collective(self, buf, what: str):
        """(NCCL dtype, stream) for a device buffer, after the ranks have met."""
        import cupy
        nccl = self._nccl_module
        dtypes = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                  np.dtype(np.float64): nccl.NCCL_FLOAT64}
        if buf.dtype not in dtypes:
            raise TypeError(f"NcclCommunicator.{what}: expected a float32 or float64 buffer, "
                            f"got {buf.dtype}")
        self._meet(what)
        return dtypes[buf.dtype], cupy.cuda.get_current_stream().ptr

    def allreduce_mean(self, buf) -> None:
        buf = check_buffer("NcclCommunicator.allreduce_mean", buf, 1)
        if self.size == 1:
            return
        if self._nccl is None:                  # the simulator: NumPy buffers, MPI
            self.mpi.allreduce_mean(buf)
            return
        dtype, stream = self._collective(buf, "allreduce_mean")
        ptr = buf.data.ptr
        self._nccl.allReduce(ptr, ptr, buf.size, dtype, self._nccl_module.NCCL_SUM, stream)
        buf /= self.size

    def broadcast(self, buf, root: int = 0) -> None:
        if not 0 <= root < self.size:
            raise ValueError(f"NcclCommunicator.broadcast: root must be in [0, {self.size}), "
                             f"got {root}")
        if self.size == 1:
            return
        if self._nccl is None:
            self.mpi.broadcast(buf, root)
            return
        dtype, stream = self._collective(buf, "broadcast")
        self._nccl.bcast(buf.data.ptr, buf.size, dtype, root, stream)

    def allgather(self, rows: np.ndarray) -> np.ndarray:
        return self.mpi.allgather(rows)         # small host state only

    def barrier(self) -> None:
        self.mpi.barrier()

    def abort(self, code: int = 1) -> None:
        self.mpi.abort(code)
