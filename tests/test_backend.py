"""backend.keep_freed_memory: glibc keeps a step's freed activations instead of returning them."""
import platform
import subprocess
import sys

import pytest

from mlcvlab import backend

# 8 arrays of 4 MiB allocated, written and freed 20 times; prints the minor page faults of the
# last 19 rounds. Under glibc's defaults the freed 32 MiB at the heap's top is returned to the
# kernel each round, so every round faults its pages in again.
_ROUNDS = """
import resource, sys
import numpy as np
from mlcvlab import backend
if sys.argv[1] == "keep":
    assert backend.keep_freed_memory()
def round_():
    arrays = [np.ones(1 << 20, dtype=np.float32) for _ in range(8)]
    del arrays
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(19):
    round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_keep_freed_memory_stops_the_page_faults_of_repeated_steps():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert backend.keep_freed_memory() is False       # a glibc setting: says it did nothing
        return
    default, kept = _faults("default"), _faults("keep")
    assert default > 19 * 1000            # 8 x 1,024 pages a round come back from the kernel
    assert kept < 200, (default, kept)


@pytest.mark.parametrize("kwargs", [{"block_mib": 0}, {"keep_mib": -1}, {"block_mib": 2.5},
                                    {"keep_mib": 10**6}])
def test_keep_freed_memory_rejects_bad_sizes(kwargs):
    with pytest.raises(ValueError, match="keep_freed_memory"):
        backend.keep_freed_memory(**kwargs)


def test_the_array_module_is_not_a_gpu_switch():
    """The GPU path is model.to('cuda'); setting a global array module says so."""
    import types

    import numpy as np

    from mlcvlab import backend
    backend.set_array_module(np)
    assert backend.get_array_module() is np
    with pytest.raises(ValueError, match=r"model.to\('cuda'\)"):
        backend.set_array_module(types.ModuleType("cupy"))
