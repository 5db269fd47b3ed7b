"""A minimal repro of a race in numba-cuda's CUDA simulator (0.30.4): the threads of one block
can get *different* ``cuda.shared.array`` arrays, so a shared-memory reduction with every
barrier in place gives a wrong, run-to-run different answer.

``FakeCUDAShared.array`` (numba_cuda/numba/cuda/simulator/kernelapi.py) finds a launch's
shared array in a dict keyed by the calling line, and on a miss does, with no lock::

    res = self._allocations.get(caller)
    if res is None:
        res = np.empty(shape, dtype)
        self._allocations[caller] = res

Each simulated CUDA thread is a Python thread. If the interpreter switches threads between
the ``get`` and the store, a second thread of the block misses too and allocates its own
array; the first thread's store then replaces it. The two threads write their partial sums
into different arrays and read uninitialised (``np.empty``) entries where the other's partial
should be: the sum is wrong by whatever the fresh memory held (a stale float of an earlier
launch, or any bit pattern). A GPU allocates a block's shared memory before any thread runs,
so the kernel below is correct on a GPU; only the simulator gets it wrong.

Run (no mlcvlab needed)::

    NUMBA_ENABLE_CUDASIM=1 python benchmarks/sim_shared_race_repro.py [LAUNCHES] [fixed]

It launches the kernel LAUNCHES times (default 2000) with the interpreter switching threads
every 1 µs (mlcvlab's sim default is 20 µs, Python's 5 ms), counts the wrong sums, then once
more with ``np.empty`` made to yield the interpreter (a 1 ms sleep: the forced interleaving),
where nearly every launch goes wrong (session 9, this host: 1 of 300 and 0 of 3000 launches
wrong at 1 µs; 18 and 20 of 20 forced). ``fixed`` first applies mlcvlab's fix
(``mlcvlab.gpu.device.atomic_simulator_shared_arrays``); both counts are then 0.
"""
import os
import sys
import time

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
from numba import cuda, float32  # noqa: E402

BLOCK = 4


@cuda.jit
def block_total(x, out):
    """out[0] = sum(x) over one block of BLOCK threads: the textbook shared-memory tree."""
    sh = cuda.shared.array(BLOCK, dtype=float32)
    t = cuda.threadIdx.x
    sh[t] = x[t]
    cuda.syncthreads()
    s = BLOCK // 2
    while s > 0:
        if t < s:
            sh[t] += sh[t + s]
        cuda.syncthreads()
        s //= 2
    if t == 0:
        out[0] = sh[0]


def wrong_launches(launches: int) -> int:
    out = np.zeros(1, dtype=np.float32)
    bad = 0
    for i in range(launches):
        # new values each launch (exact sums): a stray array recycled from the previous
        # launch must not hold the partial sums that happen to make the right total
        x = np.arange(1, BLOCK + 1, dtype=np.float32) + np.float32(i % 1000)
        out[0] = -1
        block_total[1, BLOCK](x, out)
        bad += out[0] != x.sum()
    return int(bad)


def main() -> None:
    launches = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    if "fixed" in sys.argv[2:]:
        from mlcvlab.gpu.device import atomic_simulator_shared_arrays
        atomic_simulator_shared_arrays()
    sys.setswitchinterval(1e-6)
    t0 = time.perf_counter()
    bad = wrong_launches(launches)
    print(f"switch interval 1 us: {bad} of {launches} launches summed wrong "
          f"({time.perf_counter() - t0:.1f} s)")
    real_empty = np.empty

    def yielding_empty(*args, **kwargs):
        time.sleep(1e-3)                   # let the block's other threads run here
        return real_empty(*args, **kwargs)

    np.empty = yielding_empty
    try:
        forced = wrong_launches(20)
    finally:
        np.empty = real_empty
    print(f"np.empty yielding (forced interleaving): {forced} of 20 launches summed wrong")


if __name__ == "__main__":
    main()
