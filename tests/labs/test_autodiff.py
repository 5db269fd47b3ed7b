"""The autodiff lab's quick preset, through the Python API and the CLI."""
import json
import subprocess
import sys

import pytest

from mlcvlab.labs import run_lab

REPORT_KEYS = ["x1", "x2", "graph_engine", "example_z", "example_grad", "example_fd",
               "example_closed_form", "example_trace", "example_max_err_fd", "example_grad_rounded",
               "neuron_loss", "neuron_y", "neuron_grad_w", "neuron_grad_b", "neuron_fd_w",
               "neuron_fd_b", "neuron_closed_w", "neuron_closed_b", "neuron_trace",
               "neuron_max_err_fd", "neuron_max_err_closed", "neuron_grad_w_rounded"]


def test_autodiff_quick_via_api(run_quick):
    run = run_quick("autodiff")
    res = run.results
    assert res["example_grad_rounded"] == [1.3633, 0.1912]
    assert res["example_max_err_fd"] < 1e-7 and res["neuron_max_err_fd"] < 1e-7
    saved = run.assert_outputs(keys=REPORT_KEYS,
                               files=("graph_example.png", "graph_neuron.png",
                                      "example_steps.csv", "neuron_check.csv"))
    report = run.report()
    assert "1.3633" in report and "0.1912" in report
    ops = [row["op"] for row in saved["neuron_trace"]]
    assert "sigmoid" in ops and ops[-1] == "pow"
    assert saved["comparisons"] == [] and saved["preset"] == "quick"
    assert "not a measured comparison" in report and "agree to" not in report


def test_standard_preset_is_the_full_computation():
    from mlcvlab.labs.registry import get_lab

    spec = get_lab("autodiff")
    assert spec.preset("standard") == spec.preset("full")
    assert spec.expected_seconds["standard"] < 60


@pytest.mark.parametrize("key,value", [("fd_eps", "0"), ("fd_eps", "-1e-6"), ("fd_eps", "nan"),
                                       ("fd_eps", "0.6"), ("x1", "nan"), ("x1", "0"),
                                       ("neuron_w", "1,2,3"), ("graph_engine", "dot"),
                                       ("target", "inf")])
def test_bad_config_fails_up_front_naming_the_key(tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        run_lab("autodiff", quick=True, out_dir=str(tmp_path), show_progress=False,
                overrides=[f"{key}={value}"])
    assert not (tmp_path / "report.md").exists()


def test_autodiff_quick_via_cli_with_set(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mlcvlab", "lab", "run", "autodiff", "--quick",
                          "--no-progress", "--out", str(tmp_path), "--set", "x1=0.25",
                          "--set", "neuron_w=0.5,0.5"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["x1"] == 0.25
    import math
    assert saved["example_grad"][0] == pytest.approx(math.sin(0.75) / 0.25)
    assert json.loads((tmp_path / "config.json").read_text())["config"]["neuron_w"] == [0.5, 0.5]
