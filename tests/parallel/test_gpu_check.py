"""benchmarks/gpu_check.sh in its dry run (simulator, tiny sizes): every stage is in the
summary with pass or skip, the device-vs-CPU losses of every model agree (the engine, and the
--dist cuda workers for nn4 and mlp), and the summary is written where $OUT says."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, DRY_RUN="1", OUT=str(out), PYTHON=sys.executable,
               OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh")], capture_output=True,
                          text=True, timeout=600, env=env, cwd=str(out))
    return proc, out


@pytest.mark.cudasim
def test_dry_run_passes_every_stage(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "gpu_check_summary.json").read_text())
    assert summary["dry_run"] is True
    assert set(summary["stages"]) == set(gpu_check.STAGES)
    assert all(v in ("pass", "skip") for v in summary["stages"].values()), summary["stages"]
    text = (out / "gpu_check_summary.md").read_text()
    for title in gpu_check.STAGES.values():
        assert title in text, title


@pytest.mark.cudasim
def test_dry_run_compares_the_losses_of_every_model_on_both_gpu_paths(dry_run):
    _, out = dry_run
    records = json.loads((out / "gpu_check_summary.json").read_text())["records"]
    training = {r["item"]: r for r in records if r["stage"] == "training"}
    items = {"nn4", "mlp", "lenet5", "resnet20", "nn4 (--dist cuda workers)",
             "mlp (--dist cuda workers)"}
    assert set(training) == items, training
    assert all(r["status"] == "pass" for r in training.values()), training
    for name, suffix, steps in (("nn4", "", 5), ("mlp", "_dist_cuda", 5), ("lenet5", "", 3),
                                ("resnet20", "", 3)):
        cpu, gpu = zip(*[map(float, line.split(",")) for line in
                         (out / f"losses_{name}{suffix}.csv").read_text().split()[1:]])
        assert len(cpu) == steps
        assert all(abs(a - b) <= 1e-4 + 1e-3 * abs(a) for a, b in zip(cpu, gpu)), (cpu, gpu)
    kernels = {r["item"]: r["status"] for r in records if r["stage"] == "kernels"}
    for name in ("cudasim_checks", "conv_sim_checks", "basis_sim_checks", "engine_sim_checks"):
        assert kernels[f"{name} (simulator)"] == "pass", kernels
    speed = {r["item"] for r in records if r["stage"] == "speed" and r["status"] == "pass"}
    assert speed == {"nn4", "mlp", "lenet5", "resnet20"}


def test_summary_fails_on_a_failed_or_missing_stage(tmp_path):
    gpu_check.record(tmp_path, "environment", "numba", "pass", "0.68")
    gpu_check.record(tmp_path, "training", "nn4", "fail", "step 3 differs")
    assert gpu_check.stage_summary(tmp_path, dry=True) == 1
    verdicts = json.loads((tmp_path / "gpu_check_summary.json").read_text())["stages"]
    assert verdicts["training"] == "fail" and verdicts["sanitizer"] == "fail"   # did not run
    with pytest.raises(ValueError, match="unknown stage"):
        gpu_check.record(tmp_path, "nope", "x", "pass", "")
