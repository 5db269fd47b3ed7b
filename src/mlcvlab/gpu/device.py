"""Where GPU arrays come from: CuPy on a GPU, NumPy under numba's CUDA simulator.

``array_module()`` is the module the GPU twins allocate with (``xp.empty``, ``xp.matmul``):
CuPy when a CUDA device is present; NumPy when the simulator is on
(``NUMBA_ENABLE_CUDASIM=1``), where numba's kernels run on NumPy arrays, so the device path
is tested here end to end with NumPy standing in for CuPy. ``cuda()`` is ``numba.cuda``.
Both fail at once, with what to install or set, when neither a GPU nor the simulator is
there: ``--device cuda`` must not start a run that cannot finish.
"""
from __future__ import annotations

import os
import sys
from types import ModuleType

import numpy as np

DEVICES = ("cpu", "cuda")


def simulated() -> bool:
    """True when numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _no_device(why: str) -> RuntimeError:
    return RuntimeError(
        f"device 'cuda': {why}. On a machine with an NVIDIA GPU install the CUDA extra "
        f"(pip install 'mlcvlab[cuda13]' or 'mlcvlab[cuda12]', matching the driver's CUDA), "
        f"or use device 'cpu'; NUMBA_ENABLE_CUDASIM=1 runs the GPU path on numba's simulator "
        f"(slow, for tests)")


_checked = False


def _no_stream_in_cupy_arrays() -> None:
    """Have CuPy export its arrays without a stream (CUDA array interface v2), before CuPy is
    imported, so that numba does not wait for that stream at every kernel launch.

    With v3 (CuPy's default) each CuPy array names its stream, and numba synchronises it
    before each launch taking the array: the host would stall until the GPU is idle, launch
    after launch. The engine queues everything, CuPy's GEMMs and numba's kernels, on the
    legacy default stream, so the queue orders the work and the wait buys nothing (read in
    the sources of numba-cuda 0.30 and CuPy 14; to be timed on a GPU). Only CuPy arrays are
    affected; numba's own settings are left alone (turning numba's side off instead,
    NUMBA_CUDA_ARRAY_INTERFACE_SYNC=0, broke the --dist cuda workers under the simulator, and
    the variable leaks into child processes). A CuPy imported before mlcvlab keeps v3:
    correct, only slower.
    """
    os.environ.setdefault("CUPY_CUDA_ARRAY_INTERFACE_EXPORT_VERSION", "2")


def speed_up_simulator() -> None:
    """Under numba's simulator (only), switch Python threads every 20 µs instead of 5 ms.

    The simulator runs each CUDA thread as a Python thread and a ``syncthreads`` as a barrier
    that waits for the interpreter to switch threads, so a block-reduction kernel waits about
    one switch interval per barrier: a ResNet-20 step on 4x4 inputs took 75 s with the default
    5 ms and 20 s with 20 µs (cProfile, this machine). Process-wide, so only when simulating.
    """
    if simulated() and sys.getswitchinterval() > 2e-5:
        sys.setswitchinterval(2e-5)


def atomic_simulator_shared_arrays() -> None:
    """Under numba's simulator (only), give every thread of a launch the same
    ``cuda.shared.array``, as a GPU does: numba-cuda 0.30.4 can give two threads of one block
    different arrays.

    The simulator's ``FakeCUDAShared.array`` looks the array up by the calling line and, on a
    miss, allocates and stores it in two steps without a lock; a thread switch between them
    lets a second thread miss too and allocate its own. The threads then add their partial
    sums in different arrays and read uninitialised memory for each other's: a wrong,
    run-to-run different reduction with every barrier in place. Rare on its own (1 wrong
    launch in 3,300 of ``benchmarks/sim_shared_race_repro.py`` at a 1 µs switch interval),
    every launch when the allocation yields; the likely cause of the one-off engine-check
    failures of sessions 8 and 9 (LeNet-5 BN 3.5e3 off, ResNet-20 0.0012 off, see
    ``benchmarks/sim_determinism.py``). The replacement stores with ``dict.setdefault``
    (atomic under the GIL: the key is a (filename, line) tuple), so the first array stored
    is the one every thread gets; the rest is the simulator's own logic, so a kernel's own
    missing barrier still shows. Idempotent.
    """
    if not simulated():
        return
    from numba.cuda.simulator import kernelapi

    shared = kernelapi.FakeCUDAShared
    if getattr(shared.array, "mlcvlab_atomic", False):
        return
    simulator_array = shared.array

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:
            return simulator_array(self, shape, dtype, alignment)   # errors, dynamic memory
        if isinstance(dtype, kernelapi.types.Type):
            dtype = kernelapi.numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)                    # the kernel line asking, as the simulator
        caller = (frame.f_code.co_filename, frame.f_lineno)
        res = self._allocations.get(caller)
        if res is None:
            res = self._allocations.setdefault(caller, np.empty(shape, dtype))
        return res

    array.mlcvlab_atomic = True
    array.simulator_original = simulator_array      # benchmarks/sim_determinism.py's control
    shared.array = array


def cuda() -> ModuleType:
    """``numba.cuda``, after checking that a device (or the simulator) is there."""
    global _checked
    speed_up_simulator()
    try:
        from numba import cuda as numba_cuda
    except ImportError as err:                 # pragma: no cover - numba is a dependency
        raise _no_device("numba is not installed") from err
    if not _checked:
        try:
            available = numba_cuda.is_available() and len(numba_cuda.gpus) > 0
        except Exception:                      # noqa: BLE001 - any driver error: no device
            available = False
        if not available:
            raise _no_device("no CUDA device found (numba.cuda.is_available() is False)")
        _checked = True
    return numba_cuda


def array_module() -> ModuleType:
    """The array module of device arrays: CuPy, or NumPy under the simulator."""
    cuda()
    if simulated():
        return np
    _no_stream_in_cupy_arrays()
    try:
        import cupy
    except ImportError as err:
        raise _no_device("CuPy is not installed") from err
    return cupy


def to_device(a):
    """A host array (or anything array-like) as a device array (a copy; NumPy under the
    simulator, where it is still a fresh copy so that host and device never share memory)."""
    xp = array_module()
    return xp.array(a, copy=True)


def to_host(a) -> np.ndarray:
    """A device array as a NumPy array (a copy); a NumPy array is returned as is."""
    if isinstance(a, np.ndarray):
        return a
    return a.get()


def check_device(device) -> str:
    """``device`` ("cpu", "cuda", "cuda:0") normalised to "cpu" or "cuda", or a ValueError."""
    name = str(device)
    base = name.split(":")[0]
    if base not in DEVICES or (base == "cuda" and name not in ("cuda", "cuda:0")):
        raise ValueError(f"device must be 'cpu' or 'cuda' (one GPU: 'cuda:0'), got {device!r}")
    return base


SIMULATOR = "numba's CUDA simulator"


def device_count() -> int:
    """How many GPUs this process sees (1 under the simulator, which simulates one)."""
    cuda()
    if simulated():
        return 1
    import cupy
    return int(cupy.cuda.runtime.getDeviceCount())


def describe(device: str) -> str:
    """Where a run's numbers come from, in words for a report: "the CPU", "GPU 0 (NAME)", or
    the simulator with what that means for its times (a run there must never pass for a GPU
    run: its kernels are Python threads)."""
    if check_device(device) == "cpu":
        return "the CPU"
    cuda()
    if simulated():
        return (f"{SIMULATOR} (NUMBA_ENABLE_CUDASIM=1: no GPU, NumPy stands in for CuPy; its "
                f"times are the simulator's, not a GPU's)")
    import cupy
    index = cupy.cuda.Device().id
    name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
    return f"GPU {index} ({name.decode() if isinstance(name, bytes) else name})"


def memory_info(release_cached: bool = False):
    """The current GPU's memory as CuPy and the driver see it, or None under the simulator
    (NumPy arrays there: no device memory to read).

    {"pool_used": bytes in live CuPy arrays, "pool_total": bytes the pool holds (live + cached
    for reuse), "driver_free", "driver_total": cudaMemGetInfo}. The engine allocates every
    device array through CuPy (numba's kernels run on CuPy's arrays), so the pool sees all of
    it; the driver's numbers also count CUDA contexts, cuBLAS workspaces and other processes.
    release_cached: hand the pool's unused blocks back to the driver first, so that
    pool_total starts from what is live.
    """
    cuda()
    if simulated():
        return None
    import cupy
    pool = cupy.get_default_memory_pool()
    if release_cached:
        pool.free_all_blocks()
    free, total = cupy.cuda.runtime.memGetInfo()
    return {"pool_used": int(pool.used_bytes()), "pool_total": int(pool.total_bytes()),
            "driver_free": int(free), "driver_total": int(total)}
