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
          "adam_twin_equals_njit", "adaptive_optimizers_on_the_device_equal_cpu",
          "adaptive_twins_refuse_bad_arguments", "sgd_on_the_device_equals_cpu",
          "shared_memory_kernels_exact_when_threads_interleave",
          "unsupported_layers", "launches_match_ptx_signatures"]


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


def test_every_shared_memory_kernel_module_fixes_the_simulator():
    """A module of src/mlcvlab with a ``cuda.shared.array`` kernel applies
    ``atomic_simulator_shared_arrays`` when it loads (or imports basis_kernels, which does):
    without it numba-cuda's simulator can give two threads of a block different shared arrays
    (see mlcvlab.gpu.device), and the kernel's sums go wrong at random under the simulator."""
    src = os.path.join(HERE, "..", "..", "src", "mlcvlab")
    users, unfixed = [], []
    for folder, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path) as f:
                text = f.read()
            if "cuda.shared.array(" not in text:
                continue
            users.append(name)
            if ("atomic_simulator_shared_arrays()" not in text
                    and "from mlcvlab.gpu.basis_kernels import" not in text):
                unfixed.append(os.path.relpath(path, src))
    assert len(users) >= 3, users             # basis_kernels, conv_kernels, cuda_kernels
    assert not unfixed, f"shared-memory kernels without the simulator fix: {unfixed}"
