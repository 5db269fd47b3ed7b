"""The GPU twins of convolution and pooling (mlcvlab.gpu.conv), run under numba's simulator
against the CPU functions of mlcvlab.nn.conv.

NUMBA_ENABLE_CUDASIM=1 must be set before numba is imported, so the checks run in one
subprocess (conv_sim_checks.py) and each becomes a test here.
"""
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import simcheck  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKS = ["conv_1x1_stride2", "conv_3x3_pad1_stride1", "conv_3x3_pad1_stride2",
          "conv_5x5_pad2_lenet1", "conv_5x5_pad0_lenet2", "conv_4x2_same_even",
          "conv_2x3_stride3_pad10", "conv_input_grad_false_skips_dx", "conv_errors",
          "maxpool_ties_nan_and_overlap", "avgpool", "global_avgpool", "adaptive_avgpool",
          "unsupported_layers", "lenet_like_chain", "launches_match_ptx_signatures"]


@pytest.fixture(scope="module")
def sim_results(tmp_path_factory):
    return simcheck.run("conv_sim_checks.py", tmp_path_factory.mktemp("conv_sim"), timeout=240)


@pytest.mark.cudasim
@pytest.mark.parametrize("name", CHECKS)
def test_gpu_conv_under_simulator(sim_results, name):
    assert name in sim_results, f"check {name} did not run"
    assert sim_results[name] == "ok", sim_results[name]


@pytest.mark.cudasim
def test_every_check_is_listed(sim_results):
    ran = simcheck.verdicts(sim_results)
    assert ran == sorted(CHECKS), "a check of conv_sim_checks.py is missing from CHECKS here"


def test_cpu_layers_do_not_import_the_gpu_twins():
    """The CPU path imports nothing GPU-related: not the twins, not their kernels."""
    code = ("import sys, mlcvlab.nn, mlcvlab.models\n"
            "print(any(m in sys.modules\n"
            "          for m in ('mlcvlab.gpu.conv', 'mlcvlab.gpu.conv_kernels')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr
