"""The GPU twins of mlcvlab.gpu.basis, losses and optim against their CPU functions, run
under the numba CUDA simulator.

NUMBA_ENABLE_CUDASIM=1 must be set before numba is imported, so the checks run in one
subprocess (basis_sim_checks.py) and each becomes a test here.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKS = ["linear_forward_backward", "relu_forward_backward", "leaky_sigmoid_tanh",
          "softmax_forward_backward", "dropout_masks_equal_cpu", "batchnorm_2d", "batchnorm_4d",
          "batchnorm_3d", "batchnorm_two_pass_variance", "batchnorm_errors",
          "cross_entropy_equals_cpu", "cross_entropy_refusals", "sgd_twin_equals_njit",
          "adam_twin_equals_njit", "unsupported_layers", "launches_match_ptx_signatures"]


@pytest.fixture(scope="module")
def sim_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_basis") / "results.json"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "basis_sim_checks.py"), str(out)],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.cudasim
@pytest.mark.parametrize("name", CHECKS)
def test_gpu_twin_under_simulator(sim_results, name):
    assert name in sim_results, f"check {name} did not run"
    assert sim_results[name] == "ok", sim_results[name]


def test_every_check_is_listed(sim_results):
    ran = sorted(k for k in sim_results if k != "errors")
    assert ran == sorted(CHECKS), set(ran) ^ set(CHECKS)


@pytest.mark.cudasim
def test_float32_errors_against_float64(sim_results):
    """Every twin within 2e-5 of the float64 reference, relative to the array's scale."""
    worst = {k: v for k, v in sim_results["errors"].items() if not v <= 2e-5}
    assert not worst, worst
