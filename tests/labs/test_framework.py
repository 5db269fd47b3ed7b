"""The lab framework: registry, --set coercion, errors, report toolkit, CLI."""
import json

import numpy as np
import pytest

from mlcvlab import cli
from mlcvlab.labs import registry
from mlcvlab.labs.registry import apply_overrides, coerce, get_lab, lab, lab_names
from mlcvlab.labs.report import Report, markdown_table, to_jsonable, write_config


def test_coerce_follows_preset_types():
    assert coerce("7", 3) == 7 and isinstance(coerce("7", 3), int)
    assert coerce("1e-3", 0.1) == pytest.approx(1e-3)
    assert coerce("no", True) is False and coerce("Yes", False) is True
    assert coerce("2, 4,8", [1]) == [2, 4, 8]
    assert coerce("0.5,0.25", [0.1, 0.2]) == [0.5, 0.25]
    assert coerce("relu", "tanh") == "relu"
    with pytest.raises(ValueError, match="int"):
        coerce("3.5", 3)
    with pytest.raises(ValueError, match="bool"):
        coerce("maybe", True)


def test_apply_overrides_and_unknown_key():
    cfg = {"epochs": 2, "lr": 0.1, "bn": False}
    out = apply_overrides(cfg, ["epochs=5", "bn=true"], "demo")
    assert out == {"epochs": 5, "lr": 0.1, "bn": True} and cfg["epochs"] == 2
    with pytest.raises(ValueError, match="unknown config key 'epoch'.*epochs"):
        apply_overrides(cfg, ["epoch=5"], "demo")
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(cfg, ["epochs"], "demo")


def test_unknown_lab_error_lists_labs():
    with pytest.raises(ValueError, match="unknown lab 'nope'.*architectures"):
        get_lab("nope")


def test_discovery_finds_our_labs_without_framework_modules():
    names = lab_names()
    assert "architectures" in names and "autodiff" in names
    assert not {"registry", "cli", "report"} & set(names)


def test_lab_decorator_checks_presets():
    with pytest.raises(ValueError, match="same keys"):
        lab("bad", "s", {"a": 1}, {"b": 1}, {"quick": 1, "full": 1})
    with pytest.raises(ValueError, match="expected_seconds"):
        lab("bad", "s", {"a": 1}, {"a": 1}, {"quick": 1})
    with pytest.raises(ValueError, match="full_embedded"):
        lab("bad", "s", {"a": 1}, {"a": 1}, {"quick": 1, "full": 2, "full_mnist": 3})


def test_expected_times_read_in_words():
    assert [registry.format_duration(s) for s in (3, 89, 300, 5400, 8 * 3600, 3e6)] == [
        "3 s", "89 s", "5 min", "2 h", "8 h", "35 d"]

    @lab("timed", "s", {"a": 1}, {"a": 1}, {"quick": 5, "full": 28800, "full_embedded": 3600})
    def run(config, out_dir, progress):
        return {}

    try:
        spec = registry.get_lab("timed")
        assert spec.expected_time("quick") == "~5 s"
        assert spec.expected_time("full") == "~8 h (~60 min on embedded data)"
    finally:
        registry._REGISTRY.pop("timed")


def test_run_lab_with_registered_toy_lab(tmp_path):
    @lab("toy", "a toy study", quick={"n": 3, "scale": 1.0}, full={"n": 30, "scale": 1.0},
         expected_seconds={"quick": 1, "full": 2})
    def run(config, out_dir, progress):
        rng = np.random.default_rng(config["seed"])
        values = rng.standard_normal(config["n"]) * config["scale"]
        results = {"mean": values.mean(), "n": config["n"], "values": values}
        rep = Report(out_dir, "Toy", results)
        rep.note_substitution("MNIST", "mnist10k")
        rep.setup(config)
        rep.text("Mean of {n} draws: {mean:.3f}.")
        rep.table("draws", [{"i": i, "value": v} for i, v in enumerate(values)], "{n} draws")
        rep.write()
        return results

    try:
        res = registry.run_lab("toy", quick=True, out_dir=str(tmp_path), seed=5,
                               overrides=["scale=2"], show_progress=False)
        again = registry.run_lab("toy", quick=True, out_dir=str(tmp_path / "b"), seed=5,
                                 overrides=["scale=2"], show_progress=False)
    finally:
        registry._REGISTRY.pop("toy")
    assert res["n"] == 3 and np.array_equal(res["values"], again["values"])   # same seed, same run
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["mean"] == pytest.approx(float(res["mean"])) and len(saved["values"]) == 3
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["seed"] == 5 and config["config"]["scale"] == 2.0
            and config["numpy"] == np.__version__)
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# Toy\n\n> **Smoke test (quick preset).**")   # the banner first
    assert "> **Note:** Data substitution: MNIST" in report
    assert saved["preset"] == "quick" and saved["comparisons"] == []
    assert f"Mean of 3 draws: {res['mean']:.3f}." in report
    assert (tmp_path / "draws.csv").read_text().splitlines()[0] == "i,value"


def test_a_lab_run_records_the_commit_its_code_came_from(tmp_path, monkeypatch):
    """The commit is read when the run starts: a checkout that moves during a long run (a
    commit made meanwhile) must not be recorded as the code that ran."""
    from mlcvlab.labs import report as report_mod
    commits = iter(["commit-at-start", "commit-at-the-end"])
    monkeypatch.setattr(report_mod, "git_commit", lambda: next(commits))

    @lab("toy2", "a toy study", quick={"n": 1}, full={"n": 2},
         expected_seconds={"quick": 1, "full": 2})
    def run(config, out_dir, progress):
        report_mod.git_commit()                  # meanwhile, the checkout moves on
        rep = Report(out_dir, "Toy", {"n": config["n"]})
        rep.text("{n} draw.")
        rep.write()
        return {"n": config["n"]}

    try:
        registry.run_lab("toy2", quick=True, out_dir=str(tmp_path), show_progress=False)
    finally:
        registry._REGISTRY.pop("toy2")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["git_commit"] == "commit-at-start"


def test_a_lab_runs_under_the_conv_algorithm_it_is_given_and_records_it(tmp_path):
    from mlcvlab.nn import conv
    seen = []

    @lab("toy3", "a toy study", quick={"n": 1}, full={"n": 2},
         expected_seconds={"quick": 1, "full": 2})
    def run(config, out_dir, progress):
        seen.append(conv.get_algorithm())
        rep = Report(out_dir, "Toy", {"n": config["n"]})
        rep.text("{n} draw.")
        rep.write()
        return {"n": config["n"]}

    before = conv.get_algorithm()
    try:
        registry.run_lab("toy3", quick=True, out_dir=str(tmp_path), show_progress=False,
                         conv_algorithm="fast")
        with pytest.raises(ValueError, match="set_algorithm: expected one of"):
            registry.run_lab("toy3", quick=True, out_dir=str(tmp_path / "b"),
                             show_progress=False, conv_algorithm="fastest")
    finally:
        registry._REGISTRY.pop("toy3")
    assert seen == ["fast"] and conv.get_algorithm() == before
    assert json.loads((tmp_path / "config.json").read_text())["conv_algorithm"] == "fast"
    lines = (tmp_path / "report.md").read_text().split("\n")
    assert lines[2].startswith("> **Smoke test") and "set_algorithm('fast')" in lines[4]


def test_lab_run_command_passes_conv_algorithm(tmp_path, monkeypatch):
    from mlcvlab.cli import main
    calls = []
    monkeypatch.setattr(registry, "run_lab", lambda name, **kw: calls.append((name, kw)))
    assert main(["lab", "run", "cutout", "--quick", "--conv-algorithm", "fast",
                 "--out", str(tmp_path)]) == 0
    assert calls and calls[0][0] == "cutout" and calls[0][1]["conv_algorithm"] == "fast"


def test_report_refuses_numbers_not_in_results(tmp_path):
    rep = Report(tmp_path, "t", {"acc": 0.9})
    rep.text("accuracy {acc:.0%}")
    assert rep.used_keys == {"acc"}
    with pytest.raises(KeyError, match="loss"):
        rep.text("loss {loss:.3f}")


def test_json_conversion_and_config_without_git(tmp_path, monkeypatch):
    obj = {"a": np.float32(1.5), "b": np.arange(3), "c": (np.int64(2), np.bool_(True)),
           "d": float("nan")}
    assert to_jsonable(obj) == {"a": 1.5, "b": [0, 1, 2], "c": [2, True], "d": "nan"}
    monkeypatch.setenv("PATH", "")                      # no git binary reachable
    write_config(tmp_path, {"seed": 1}, workers=4)
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["git_commit"] is None and record["workers"] == 4


def test_markdown_table_alignment():
    text = markdown_table([{"name": "a", "n": 1234}, {"name": "b", "n": 5}])
    assert text.splitlines()[1] == "|---|---:|" and "1,234" in text


def test_cli_list_and_errors(capsys):
    assert cli.main(["lab", "list"]) == 0
    out = capsys.readouterr().out
    assert "architectures" in out and "autodiff" in out and "quick" in out
    assert cli.main(["lab", "run", "nope"]) == 1
    assert "unknown lab 'nope'" in capsys.readouterr().err
    assert cli.main(["lab", "run", "autodiff", "--quick", "--set", "nokey=1"]) == 1
    assert "unknown config key 'nokey'" in capsys.readouterr().err


def test_every_lab_has_three_presets_with_times():
    labs, errors = registry.discover()
    assert not errors and len(labs) >= 17
    for spec in labs:
        assert spec.presets() == ["quick", "standard", "full"], spec.name
        for p in ("quick", "standard", "full"):
            assert spec.expected_seconds[p] > 0, (spec.name, p)
        assert spec.expected_seconds["quick"] < 60, spec.name     # a smoke test: < 1 min
        assert spec.expected_seconds["standard"] <= 3600, spec.name


def test_device_labs_named_in_the_help_are_the_labs_with_a_device_setting(capsys):
    """--device's help and its refusal name the labs whose presets have "device" (the list in
    labs/cli.py must follow the presets), and a CPU-only lab refuses --device before work."""
    import argparse
    from mlcvlab.labs import cli as lab_cli
    with_device = [n for n in lab_names() if "device" in get_lab(n).quick]
    assert sorted(lab_cli.DEVICE_LABS) == sorted(with_device)
    for name in with_device:
        assert all(get_lab(name).preset(p)["device"] == "cpu" for p in get_lab(name).presets())
    args = argparse.Namespace(name="perceptron", device="cuda", overrides=[])
    with pytest.raises(ValueError, match="runs on the CPU only") as err:
        lab_cli._device_override(args)
    assert all(n in str(err.value) for n in with_device)
    args = argparse.Namespace(name="memory", device="cuda", overrides=["seeds=2"])
    lab_cli._device_override(args)
    assert args.overrides == ["seeds=2", "device=cuda"]


def test_setup_names_the_device_of_a_cuda_run(tmp_path, monkeypatch):
    """A "cuda" run's setup says where its numbers come from (gpu.device.describe: the GPU or
    the simulator) and that its CPU seconds are the host's share; a CPU run's says nothing."""
    from mlcvlab.gpu import device
    monkeypatch.setattr(device, "describe", lambda d: "GPU 0 (Test)")
    for dev in ("cpu", "cuda"):
        rep = Report(tmp_path / dev, "t", {})
        rep.setup({"seed": 0, "device": dev})
        rep.write()
        text = (tmp_path / dev / "report.md").read_text()
        assert ("**Device: cuda**, on GPU 0 (Test)" in text) == (dev == "cuda"), text
        assert ("host's share" in text) == (dev == "cuda"), text
