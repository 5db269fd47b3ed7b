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


@pytest.fixture(scope="module")
def sim_results(tmp_path_factory):
    return simcheck.run("engine_sim_checks.py", tmp_path_factory.mktemp("engine"), timeout=900,
                        names=CHECKS, shards=2)


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
