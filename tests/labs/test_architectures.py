"""The architectures lab's quick preset, through the Python API and the CLI."""
import json
import subprocess
import sys

import pytest

from mlcvlab.labs import run_lab

REPORT_KEYS = ["alexnet_rows", "alexnet_params_grouped", "alexnet_params_single", "alexnet_biases",
               "alexnet_fc_share", "alexnet_macs_grouped", "alexnet_macs_single",
               "alexnet_group_saving", "vgg19_rows", "vgg19_weights", "vgg19_biases",
               "vgg19_params", "vgg19_activations", "vgg19_activation_mb", "vgg19_weight_mb",
               "vgg19_conv_weight_share", "rf_rows", "rf_all_agree", "rf_cases", "inception_input",
               "inception_filters", "inception_naive_output", "inception_naive_macs",
               "inception_reduced_output", "inception_reduced_macs", "inception_ratio",
               "inception_naive_rows", "inception_reduced_rows", "resnet_rows"]


def test_architectures_quick_via_api(run_quick):
    run = run_quick("architectures")
    res = run.results
    assert (res["alexnet_params_grouped"] == 60_965_224
            and res["alexnet_params_single"] == 62_378_344)
    assert res["vgg19_weights"] == 143_652_544
    assert res["rf_all_agree"] and res["rf_cases"] == 3 * 3
    assert (res["inception_naive_output"] == "480x32x32"
            and res["inception_reduced_output"] == "256x32x32")
    run.assert_outputs(keys=REPORT_KEYS,
                       files=("alexnet.csv", "vgg19.csv", "receptive_field.csv",
                              "vgg19_per_layer.png"))
    report = run.report()
    assert "143,652,544" in report and "60,965,224" in report and "528,482,304" in report
    saved = run.saved()
    assert saved["comparisons"] == [] and saved["preset"] == "quick"
    assert "nothing is measured" in report
    assert 0.5 < res["vgg19_first_half_act_share"] <= 1
    assert f"{res['vgg19_first_half_act_share']:.0%} of the activations" in report


def test_standard_preset_is_the_full_computation():
    from mlcvlab.labs.registry import get_lab

    spec = get_lab("architectures")
    assert spec.preset("standard") == spec.preset("full")
    assert spec.expected_seconds["standard"] < 60


@pytest.mark.parametrize("key,value", [("rf_max_n", "0"), ("rf_kernels", "0"),
                                       ("inception_in", "256,32"), ("n3x3", "0"),
                                       ("resnet_depths", "20")])
def test_bad_config_fails_up_front_naming_the_key(tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        run_lab("architectures", quick=True, out_dir=str(tmp_path), show_progress=False,
                overrides=[f"{key}={value}"])
    assert not (tmp_path / "report.md").exists()


def test_architectures_via_cli_with_overrides(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mlcvlab", "lab", "run", "architectures", "--quick",
                          "--no-progress", "--out", str(tmp_path), "--set", "rf_max_n=2",
                          "--set", "resnet_depths=18", "--seed", "3"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (saved["rf_cases"] == 2 * 3
            and [r["model"] for r in saved["resnet_rows"]] == ["ResNet-18"])
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 3
