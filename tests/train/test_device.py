"""``mlcvlab train --device cpu|cuda``: without a GPU, --device cuda fails at once with a clear
message and writes nothing; the handout's --dist cuda names the models it runs; and the CPU
path imports nothing GPU-related (numba.cuda, cupy). Run without the CUDA simulator (the
device path itself is tested under it in tests/gpu)."""
import os
import subprocess
import sys

from mlcvlab.cli import main

ENV = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}


def test_device_cuda_without_a_gpu_fails_at_once(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "mlcvlab", "train", "--device", "cuda",
                           "--model", "nn4", "--dataset", "digits", "--epochs", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=120,
                          env=ENV)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no CUDA device found" in proc.stderr, proc.stderr
    assert "mlcvlab[cuda13]" in proc.stderr and "use device 'cpu'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "config.json").exists()         # nothing written before the check


def test_dist_cuda_names_the_models_it_runs(tmp_path, capsys):
    rc = main(["train", "--dist", "cuda", "--model", "lenet5", "--dataset", "digits",
               "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "--dist cuda runs the models nn4, mlp" in err and "--device cuda" in err, err
    assert not (tmp_path / "run" / "config.json").exists()


def test_device_cuda_and_dist_cuda_are_two_paths(tmp_path, capsys):
    rc = main(["train", "--device", "cuda", "--dist", "cuda", "--dataset", "digits",
               "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "--device cuda and --dist cuda are two GPU paths" in err, err


def test_device_cpu_is_the_default_path(tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "--device", "cpu", "--model", "mlp", "--dataset", "digits",
               "--epochs", "1", "--out", str(out), "--quiet"])
    assert rc == 0 and (out / "results.json").exists()


def test_cpu_path_imports_nothing_gpu_related():
    code = (
        "import sys\n"
        "import numpy as np\n"
        "import mlcvlab\n"
        "from mlcvlab import nn\n"
        "from mlcvlab.models import mlp\n"
        "from mlcvlab.optim import SGD\n"
        "from mlcvlab.train import Trainer\n"
        "m = mlp([6, 5, 3], p_input=0.2, p_hidden=0.5, rng=0)\n"
        "tr = Trainer(m, nn.CrossEntropyLoss(), SGD(m.parameters(), lr=0.1))\n"
        "loss, _ = tr.train_step(np.ones((4, 6), np.float32), np.array([0, 1, 2, 0]))\n"
        "drops = [d for d in m.modules() if isinstance(d, nn.Dropout)]\n"
        "assert np.isfinite(loss) and [int(d.mask_step) for d in drops] == [1, 1], loss\n"
        "print(sorted(k for k in ('numba.cuda', 'cupy') if k in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
