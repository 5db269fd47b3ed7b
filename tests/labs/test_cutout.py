"""The cutout lab: quick preset end to end, the model builder and the example images."""
import numpy as np
import pytest

from mlcvlab.labs.cutout import cifar_resnet, sample_images_32, summarize_run

REPORT_KEYS = ["dataset_used", "data_note", "substituted", "depth", "width", "epochs", "Ms",
               "model_name", "n_params", "n_train", "n_val", "runs", "rows", "best_run",
               "best_run_error_pct", "baseline_error_pct", "comparison_text", "reached_text",
               "largest_M", "largest_M_seconds_ratio", "steps_per_epoch", "milestone_epochs",
               "target_pct", "examples_source"]


def test_cutout_quick_via_api(run_quick):
    run = run_quick("cutout")
    run.assert_outputs(keys=REPORT_KEYS,
                       files=("report.md", "runs.csv", "cutout_examples.png",
                              "val_error_vs_epoch.png", "val_error_vs_seconds.png",
                              "config.json"))
    res = run.results
    runs = res["runs"]
    assert list(runs) == ["baseline"] + [f"cutout M={m}" for m in res["Ms"]]
    for r in runs.values():
        assert len(r["val_error"]) == res["epochs"]
        assert r["best_error"] == pytest.approx(min(r["val_error"]))
        assert r["images_per_step"] == r["M"] * 16
        # step decay: the lr of the last epoch is lr0 / 10 (the 50% milestone is passed)
        assert r["lr"][0] == pytest.approx(0.05) and r["lr"][-1] == pytest.approx(0.005)
    # the models learned something: better than the 90% error of guessing among 10 classes
    assert min(r["best_error"] for r in runs.values()) < 0.85
    report = run.report()
    assert res["best_run"] in report and "the papers report" in report.lower()
    if res["substituted"]:
        assert "Data substitution" in report and "Small substitute run" in report
        assert res["examples_source"].startswith("scikit-learn")


def test_cifar_resnet_depths_and_errors():
    x = np.zeros((2, 3, 32, 32), np.float32)
    small = cifar_resnet(8, 4, rng=0)
    assert small.eval()(x).shape == (2, 10)
    assert cifar_resnet(20, 16, rng=0).num_parameters() == 269_722  # He et al.: 0.27M
    with pytest.raises(ValueError, match="6n \\+ 2"):
        cifar_resnet(10, 16)
    with pytest.raises(ValueError, match="width"):
        cifar_resnet(8, 0)


def test_sample_images_are_downsampled_photos():
    imgs, names = sample_images_32()
    assert imgs.shape == (2, 3, 32, 32) and imgs.dtype == np.float32
    assert 0.0 <= imgs.min() and imgs.max() <= 1.0 and imgs.std() > 0.05
    assert names == ["china.jpg", "flower.jpg"]


def test_summarize_run_target_and_best():
    hist = [{"val_acc": a, "seconds": 2.0, "train_loss": 1.0, "lr": 0.1}
            for a in (0.5, 0.95, 0.97)]
    s = summarize_run("x", 2, True, hist, target=0.94)
    assert s["reached"] and s["epochs_to_target"] == 2
    assert s["seconds_to_target_or_best"] == pytest.approx(4.0)
    assert s["best_epoch"] == 3 and s["best_error"] == pytest.approx(0.03)
    miss = summarize_run("x", 2, True, hist, target=0.99)
    assert not miss["reached"] and miss["epochs_to_target"] is None
    assert miss["seconds_to_target_or_best"] == pytest.approx(6.0)
