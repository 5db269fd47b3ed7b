"""The CUDA kernels and --dist cuda steps, run under the numba CUDA simulator.

NUMBA_ENABLE_CUDASIM=1 must be set before numba is imported, so the checks run in
one subprocess (cudasim_checks.py) and each becomes a test here.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKS = ["matmul", "add_bias_and_colsum", "activations", "dropout_mask", "philox_mask_kernel",
          "batchnorm",
          "softmax_and_head_gradients", "reduce_mean", "sgd_update",
          "nn4_train_step_equals_cpu", "mlp_train_step_equals_cpu",
          "launch_arguments_are_float32", "first_layer_skips_input_gradient",
          "one_worker_equals_local_step", "three_paths_draw_the_same_masks", "rejects_float64"]


@pytest.fixture(scope="module")
def sim_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("cudasim") / "results.json"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "cudasim_checks.py"), str(out)],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.cudasim
@pytest.mark.parametrize("name", CHECKS)
def test_cuda_under_simulator(sim_results, name):
    assert name in sim_results, f"check {name} did not run"
    assert sim_results[name] == "ok", sim_results[name]


def test_no_cuda_device_gives_a_clear_error():
    """Without a GPU and without the simulator: a RuntimeError naming the problem."""
    code = ("import os; os.environ.pop('NUMBA_ENABLE_CUDASIM', None)\n"
            "import mlcvlab.parallel as P\n"
            "from mlcvlab.models import mlp\n"
            "try:\n    P.make_step_fn('cuda', 2, mlp([4, 3], rng=0))\n"
            "except RuntimeError as e:\n    print('ERR', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)
    assert "ERR --dist cuda: no CUDA device" in proc.stdout, proc.stdout + proc.stderr


def test_importing_parallel_does_not_import_numba_cuda():
    code = "import sys, mlcvlab.parallel; print('numba.cuda' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def test_cuda_rejects_conv_models():
    from mlcvlab.models import lenet5
    from mlcvlab.parallel.cuda import _leaf_layers
    with pytest.raises(ValueError, match="Conv2d"):
        _leaf_layers(lenet5())
