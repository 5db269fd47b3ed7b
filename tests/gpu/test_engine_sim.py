"""The device engine (``model.to("cuda")``) under numba's simulator, NumPy standing in for
CuPy: LeNet-5, ResNet-20, MiniGoogLeNet and an MLP train as on the CPU; moves, checkpoints
and refusals. The checks run in one subprocess (engine_sim_checks.py), each a test here."""
import os
import re
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import simcheck  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# the check names, read from the source: importing it would turn the simulator on here
with open(os.path.join(HERE, "engine_sim_checks.py")) as _f:
    CHECKS = re.findall(r"^@check\ndef (\w+)", _f.read(), flags=re.M)
assert CHECKS


# Each check's time alone under the simulator (seconds; `python engine_sim_checks.py OUT`
# prints them), so that the two shards take about as long as each other (session 14: the
# checks dealt round-robin made shards of ~172 and ~130 s). Unlisted checks: ~1 s.
SECONDS = {"resnet20_small_input_three_steps_equal_cpu": 64,
           "cyclical_lab_runs_on_the_device": 47,
           "train_cli_device_cuda_matches_the_cpu_run": 33,
           "memory_lab_device_memory_is_not_faked_under_the_simulator": 22,
           "depth_width_lab_runs_on_the_device": 22,
           "bench_device_cuda_times_against_the_cpu_path": 21,
           "lenet5_batchnorm_dropout_three_steps_equal_cpu": 20,
           "data_parallel_lab_mpi_ranks_on_the_device": 13,
           "lenet5_three_steps_equal_cpu": 12,
           "nn4_lab_runs_on_the_cuda_workers": 8,
           "inductive_bias_lab_runs_on_the_device": 7,
           "region_proposals_lab_runs_on_the_device": 7,
           "device_training_is_bit_deterministic": 6,
           "optimizers_lab_runs_on_the_device": 6,
           "data_parallel_lab_in_process_runs_on_the_device": 5,
           "googlenet_modules_three_steps_equal_cpu": 4,
           "checkpoint_state_is_host_numpy_and_loads_back_on_the_device": 4}


@pytest.fixture(scope="module")
def sim_results(tmp_path_factory):
    return simcheck.run("engine_sim_checks.py", tmp_path_factory.mktemp("engine"), timeout=900,
                        names=CHECKS, shards=2, seconds=SECONDS)


def test_the_timed_checks_exist_and_the_shards_balance():
    """SECONDS names real checks (a renamed check would silently count 1 s), and the
    shards' estimated times differ by less than the longest check."""
    assert set(SECONDS) <= set(CHECKS), set(SECONDS) - set(CHECKS)
    groups = simcheck.shard(CHECKS, 2, SECONDS)
    assert sorted(sum(groups, [])) == sorted(CHECKS)
    totals = [sum(SECONDS.get(n, simcheck.DEFAULT_SECONDS) for n in g) for g in groups]
    assert abs(totals[0] - totals[1]) <= max(SECONDS.values()), totals


@pytest.mark.cudasim
@pytest.mark.parametrize("name", CHECKS)
def test_engine_under_simulator(sim_results, name):
    assert name in sim_results, f"check {name} did not run"
    assert sim_results[name] == "ok", sim_results[name]


def test_to_cuda_without_a_gpu_fails_at_once_and_moves_nothing():
    """No GPU and no simulator (this process): a RuntimeError saying what to install."""
    from mlcvlab.models import mlp
    m = mlp([6, 5, 3], rng=0)
    w = m.parameters()[0].data
    with pytest.raises(RuntimeError, match="no CUDA device found|CuPy is not installed") as e:
        m.to("cuda")
    assert "mlcvlab[cuda13]" in str(e.value) and "device 'cpu'" in str(e.value)
    assert m.device == "cpu" and m.parameters()[0].data is w


def test_unknown_device_is_a_value_error():
    from mlcvlab import nn
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        nn.Linear(2, 2).to("tpu")
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        nn.CrossEntropyLoss().to("cuda:1")


def test_to_cpu_on_a_cpu_model_changes_nothing():
    from mlcvlab.models import mlp
    m = mlp([6, 5, 3], rng=0)
    flat = m.flat()
    x = np.ones((2, 6), np.float32)
    y0 = m(x)
    assert m.to("cpu") is m and m.flat() is flat
    np.testing.assert_array_equal(m(x), y0)
