"""The GPU twins of mlcvlab.gpu.basis, losses and optim against their CPU functions, run
under the numba CUDA simulator.

NUMBA_ENABLE_CUDASIM=1 must be set before numba is imported, so the checks run in one
subprocess (basis_sim_checks.py) and each becomes a test here.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import simcheck  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKS = ["linear_forward_backward", "relu_forward_backward", "leaky_sigmoid_tanh",
          "softmax_forward_backward", "dropout_masks_equal_cpu", "batchnorm_2d", "batchnorm_4d",
          "batchnorm_3d", "batchnorm_two_pass_variance", "batchnorm_errors",
          "cross_entropy_equals_cpu", "cross_entropy_refusals", "sgd_twin_equals_njit",
          "adam_twin_equals_njit", "unsupported_layers", "launches_match_ptx_signatures"]


@pytest.fixture(scope="module")
def sim_results(tmp_path_factory):
    return simcheck.run("basis_sim_checks.py", tmp_path_factory.mktemp("gpu_basis"), timeout=240)


@pytest.mark.cudasim
@pytest.mark.parametrize("name", CHECKS)
def test_gpu_twin_under_simulator(sim_results, name):
    assert name in sim_results, f"check {name} did not run"
    assert sim_results[name] == "ok", sim_results[name]


def test_every_check_is_listed(sim_results):
    ran = simcheck.verdicts(sim_results)
    assert ran == sorted(CHECKS), set(ran) ^ set(CHECKS)


@pytest.mark.cudasim
def test_float32_errors_against_float64(sim_results):
    """Every twin within 2e-5 of the float64 reference, relative to the array's scale."""
    worst = {k: v for k, v in sim_results["errors"].items() if not v <= 2e-5}
    assert not worst, worst
