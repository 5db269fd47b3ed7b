"""The cutout lab: quick preset end to end (paired seeds, validation split, the test split once,
comparisons with verdicts), the model builder, the example images, bad config values."""
import numpy as np
import pytest

from mlcvlab.labs import cutout, stats
from mlcvlab.labs.cutout import (arm_label, cifar_resnet, comparisons,
                                 summarize_run, train_run)
from mlcvlab.labs.registry import get_lab

REPORT_KEYS = ["dataset_used", "data_note", "substituted", "depth", "width", "epochs", "Ms",
               "target_acc", "model_name", "n_params", "n_train", "n_val", "n_test", "seeds",
               "n_seeds", "arms", "rows", "comparisons", "skipped_comparisons",
               "steps_per_epoch", "milestone_epochs", "target_pct", "examples_source", "preset"]


@pytest.fixture(scope="module")
def quick_run(run_quick):
    return run_quick("cutout")


def test_cutout_quick_via_api(quick_run):
    quick_run.assert_outputs(keys=REPORT_KEYS,
                             files=("report.md", "runs.csv", "cutout_examples.png",
                                    "val_error.png", "config.json"))
    res = quick_run.results
    arms = res["arms"]
    assert list(arms) == ["baseline"] + [arm_label(m) for m in res["Ms"]]
    assert res["seeds"] == [0, 1]
    for label, runs in arms.items():
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            assert len(r["val_error"]) == res["epochs"]
            assert r["best_val_error"] == pytest.approx(min(r["val_error"]))
            assert r["images_per_step"] == (r["M"] * 16 if r["cutout"] else 16)
            # step decay: the lr of the last epoch is lr0 / 10 (the 50% milestone is passed)
            assert r["lr"][0] == pytest.approx(0.05) and r["lr"][-1] == pytest.approx(0.005)
            assert 0.0 <= r["test_error"] <= 1.0
            assert r["cpu_seconds_total"] > 0 and r["wall_seconds_total"] > 0
    report = quick_run.assert_report("The papers report", "Smoke test",
                                     substituted=res["substituted"])
    assert "differs from the papers' protocol" in report
    if res["substituted"]:
        assert res["examples_source"].endswith("(CIFAR-10 not on disk)")


def test_validation_split_is_held_out_of_training_and_test_is_separate(quick_run):
    res = quick_run.saved()
    assert res["n_train"] + res["n_val"] == 320            # n_train images, 10% held out
    assert res["n_val"] == 32 and res["n_test"] == 256
    for runs in res["arms"].values():
        assert all(r["n_test_evaluated"] == 256 for r in runs)
    report = quick_run.report()
    assert "288 training and 32 validation images (the validation split is held out" in report
    assert "validation = the test split" not in report


def test_comparisons_have_the_schema_and_their_sentences_are_the_reports(quick_run):
    res = quick_run.saved()
    comps = res["comparisons"]
    pairs = {(c["a"], c["b"], c["metric"]) for c in comps}
    for m in res["Ms"]:
        assert (arm_label(m), "baseline", cutout.ERROR) in pairs
        if m > 1:
            assert (arm_label(m), arm_label(1), cutout.ERROR) in pairs
    report = quick_run.report()
    for c in comps:
        stats.check_comparison(c)
        assert c["n_seeds"] == 2 and c["ci95"][0] is not None
        assert stats.sentence(c) in report
    assert "error falls" not in report and "points lower" not in report
    assert "The study's explanation (not a finding of this run)" in report


def test_every_preset_has_seeds_and_standard_measures_over_three():
    spec = get_lab("cutout")
    assert spec.standard is not None
    for which in ("quick", "standard", "full"):
        assert "seeds" in spec.preset(which)
    standard = spec.preset("standard")
    assert len(stats.seeds_of(standard)) >= 3 and 1 in standard["Ms"]
    assert spec.expected_seconds["quick"] < 60 and spec.expected_seconds["standard"] <= 3600


def test_test_split_is_evaluated_once_after_training(monkeypatch, count_evaluations):
    rng = np.random.default_rng(0)
    sizes = {"train": 24, "val": 10, "test": 14}
    data = {f"X_{k}": rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
            for k, n in sizes.items()}
    data.update({f"y_{k}": rng.integers(0, 10, n) for k, n in sizes.items()})
    seen = count_evaluations(cutout)
    config = {**get_lab("cutout").preset("quick"), "batch_size": 8}
    settings = {"depth": 8, "width": 2, "epochs": 3, "Ms": [2], "target_acc": 0.5}
    out = train_run(arm_label(2), 2, True, data, config, settings, 0, lambda it, **kw: it)
    assert seen == [10, 10, 10, 14]        # validation per epoch, the test split once
    assert out["n_test_evaluated"] == 14 and len(out["val_error"]) == 3


def test_same_seed_same_start_in_every_arm(monkeypatch):
    """Paired by seed: the arms of one seed start from the same weights."""
    firsts = []
    real = cutout.cifar_resnet

    def recording(*args, **kwargs):
        model = real(*args, **kwargs)
        firsts.append(model.parameters()[0].data.copy())
        return model

    monkeypatch.setattr(cutout, "cifar_resnet", recording)
    rng = np.random.default_rng(0)
    data = {"X_train": rng.standard_normal((8, 3, 32, 32)).astype(np.float32),
            "y_train": rng.integers(0, 10, 8), "X_val": np.zeros((4, 3, 32, 32), np.float32),
            "y_val": np.zeros(4, np.int64), "X_test": np.zeros((4, 3, 32, 32), np.float32),
            "y_test": np.zeros(4, np.int64)}
    config = {**get_lab("cutout").preset("quick"), "batch_size": 8}
    settings = {"depth": 8, "width": 2, "epochs": 1, "Ms": [2], "target_acc": 0.5}
    for label, M, cut in (("baseline", 1, False), (arm_label(2), 2, True)):
        train_run(label, M, cut, data, config, settings, 5, lambda it, **kw: it)
    np.testing.assert_array_equal(firsts[0], firsts[1])


def test_cifar_resnet_depths_and_errors():
    x = np.zeros((2, 3, 32, 32), np.float32)
    small = cifar_resnet(8, 4, rng=0)
    assert small.eval()(x).shape == (2, 10)
    assert cifar_resnet(20, 16, rng=0).num_parameters() == 269_722  # He et al.: 0.27M
    with pytest.raises(ValueError, match="6n \\+ 2"):
        cifar_resnet(10, 16)
    with pytest.raises(ValueError, match="width"):
        cifar_resnet(8, 0)


def test_summarize_run_target_and_best_in_cpu_seconds():
    hist = [{"val_acc": a, "seconds": 2.0, "cpu_seconds": 3.0, "train_loss": 1.0, "lr": 0.1}
            for a in (0.5, 0.95, 0.97)]
    s = summarize_run("x", 2, True, hist, target=0.94)
    assert s["reached"] and s["epochs_to_target"] == 2
    assert s["cpu_seconds_to_target"] == pytest.approx(6.0)
    assert s["wall_seconds_to_target"] == pytest.approx(4.0)
    assert s["best_epoch"] == 3 and s["best_val_error"] == pytest.approx(0.03)
    miss = summarize_run("x", 2, True, hist, target=0.99)
    assert not miss["reached"] and miss["epochs_to_target"] is None
    assert miss["cpu_seconds_to_target"] is None and miss["cpu_seconds_total"] == 9.0


def _fake_run(M, cut, err, reached, epochs, cpu):
    return {"label": arm_label(M) if cut else "baseline", "M": M, "cutout": cut,
            "test_error": err, "reached": reached, "epochs_to_target": epochs if reached else None,
            "cpu_seconds_to_target": cpu if reached else None, "cpu_seconds_total": 10 * cpu}


def test_time_to_target_is_compared_only_when_every_seed_reached_it():
    arms = {"baseline": [_fake_run(1, False, e, True, 5, 50) for e in (0.10, 0.11, 0.12)],
            arm_label(1): [_fake_run(1, True, e, True, 4, 40) for e in (0.09, 0.10, 0.11)],
            arm_label(4): [_fake_run(4, True, e, True, ep, 120)
                           for e, ep in ((0.08, 2), (0.085, 3), (0.10, 2))]}
    comps, skipped = comparisons(arms)
    metrics = {(c["a"], c["b"], c["metric"]) for c in comps}
    assert (arm_label(4), arm_label(1), "epochs to the validation target") in metrics
    assert (arm_label(4), arm_label(1), "training CPU seconds to the validation target") in metrics
    assert not skipped
    epochs = next(c for c in comps if c["metric"] == "epochs to the validation target")
    assert epochs["verdict"] == "a better" and epochs["diff"] == pytest.approx(7 / 3 - 4)
    arms[arm_label(4)][1] = _fake_run(4, True, 0.085, False, 3, 120)
    comps, skipped = comparisons(arms)
    assert not any(c["metric"] == "epochs to the validation target" for c in comps)
    assert skipped and "not every seed of both reached" in skipped[0]


def test_a_device_run_compares_wall_seconds():
    """On "cuda" the CPU seconds are the host's share: the time comparisons and the table's
    ratio to the baseline read the wall seconds (device time) instead."""
    from mlcvlab.labs.cutout import arm_row
    from mlcvlab.labs.report import timing_clock

    def run(M, cut, err, cpu, wall):
        return {**_fake_run(M, cut, err, True, 4, cpu), "wall_seconds_to_target": wall,
                "wall_seconds_total": 10 * wall, "images_per_step": 8, "best_val_error": err,
                "best_epoch": 4, "final_val_error": err}
    # CPU seconds say M=4 is cheaper, wall seconds (the device's time) say it costs more
    arms = {"baseline": [run(1, False, e, 5, 5) for e in (0.10, 0.11, 0.12)],
            arm_label(1): [run(1, True, e, 40, 4) for e in (0.09, 0.10, 0.11)],
            arm_label(4): [run(4, True, e, c, w) for e, c, w in ((0.08, 10, 12),
                                                                  (0.085, 11, 13),
                                                                  (0.1, 10, 12))]}
    assert timing_clock({"device": "cuda"}) == "wall" and timing_clock({}) == "cpu"
    comps, _ = comparisons(arms, "wall")
    total = next(c for c in comps if c["metric"] == "training wall seconds (device time) (all "
                 "epochs)")
    assert total["verdict"] == "b better"               # M=4 took longer on the device
    assert not any("CPU" in c["metric"] for c in comps)
    cpu_total = next(c for c in comparisons(arms)[0]
                     if c["metric"] == "training CPU seconds (all epochs)")
    assert cpu_total["verdict"] == "a better"
    row = arm_row(arms[arm_label(4)], 50.0, "wall")
    assert row["wall s total / baseline"] == pytest.approx(370 / 3 / 50)
    assert "CPU s total / baseline" not in row


@pytest.mark.parametrize("override, key", [
    ("lr=nan", "lr"), ("epochs=0", "epochs"), ("n_train=-5", "n_train"), ("Ms=0,2", "Ms"),
    ("depth=10", "depth"), ("cutout_size=0", "cutout_size"), ("val_fraction=1", "val_fraction"),
    ("target_acc=1.5", "target_acc"), ("lr_milestones=0.75,0.5", "lr_milestones"),
    ("seeds=0", "seeds"), ("sub_width=0", "sub_width"), ("momentum=-0.1", "momentum")])
def test_bad_config_values_raise_before_any_work(run_quick, monkeypatch, override, key):
    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before the config was validated")

    monkeypatch.setattr(cutout, "load_data", no_data)
    with pytest.raises(ValueError, match=f"(cutout lab: {key} must be|--set {key}=)"):
        run_quick("cutout", overrides=[override])
