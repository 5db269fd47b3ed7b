"""``--device cuda --dist mpi`` under the simulator: ``mpiexec -n 2`` ranks, each with its model
on "cuda" (NumPy standing in for CuPy) and the NCCL communicator (MPI standing in for NCCL,
which needs a GPU), train as the local two-worker CPU step does."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
MPIEXEC = shutil.which("mpiexec")
pytestmark = [pytest.mark.mpi, pytest.mark.cudasim]


def test_two_device_ranks_train_as_the_local_two_worker_cpu_step(tmp_path):
    if MPIEXEC is None:
        pytest.fail("mpiexec is not on PATH: pip install mpich (the test extra installs it)")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable,
                           os.path.join(HERE, "nccl_sim_worker.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    assert str(ranks[0]["comm"]) == "NcclCommunicator"
    sys.path.insert(0, HERE)
    import nccl_sim_worker
    cpu, _, cpu_losses = nccl_sim_worker.train("local", "cpu")
    np.testing.assert_allclose(ranks[0]["losses"], cpu_losses, rtol=1e-4, atol=1e-5)
    for name, want in cpu.state_dict().items():
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
        np.testing.assert_allclose(ranks[0][name], want, rtol=1e-4, atol=1e-5, err_msg=name)
