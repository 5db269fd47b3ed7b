"""The optimizers lab: quick preset end to end, and the non-inverted dropout pieces."""
import numpy as np
import pytest

from mlcvlab.labs.optimizers import (OPTIMIZERS, NonInvertedDropout, mc_preactivations,
                                     noninverted_mlp, preactivations, weights_scaled_by_keep)

TAG_KEYS = ["wanted", "used", "n_train", "n_test", "epochs", "probe_masks", "runs", "timing_rows",
            "curves", "test_acc_curves", "best_plain", "best_plain_acc", "best_dropout",
            "best_dropout_acc", "best_effect", "dropout_helped_count", "dropout_helped_text",
            "lowest_loss_plain", "lowest_loss_plain_value", "time_ratio_mean", "time_effect",
            "diverged_text", "scaling_rows", "probe_examples", "layer1_gap", "layer1_noise",
            "layer1_unscaled_gap", "within_noise_word", "deep_gaps_text", "acc_scaled",
            "acc_unscaled", "acc_mc", "acc_inverted", "scaling_effect", "inverted_vs_scaled"]
FILES = ["report.md", "results.json", "config.json", "mnist_loss_no_dropout.png",
         "mnist_loss_dropout.png", "mnist_test_accuracy.png", "mnist_test_accuracy.csv",
         "mnist_timing.csv", "mnist_weight_scaling.csv", "mnist_noninverted_accuracy.csv"]


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The optimizers lab's quick preset, run once for all tests of this file."""
    return run_quick("optimizers")


def test_quick_preset_writes_everything_the_report_uses(quick_run):
    saved = quick_run.assert_outputs(
        keys=[f"mnist_{k}" for k in TAG_KEYS]
        + ["datasets_run", "substitutions", "sizes_text", "mc_masks"],
        files=FILES)
    quick_run.assert_report("the paper (Srivastava et al. 2014",
                            substituted=saved["mnist_used"] != "mnist")


def test_quick_preset_trains_all_ten_runs(quick_run):
    _, results = quick_run
    runs = results["mnist_runs"]
    assert [(r["optimizer"], r["dropout"]) for r in runs] == \
        [(o, d) for o in OPTIMIZERS for d in (False, True)]
    epochs = results["mnist_epochs"]
    for label, losses in results["mnist_curves"].items():
        assert len(losses) == epochs, label
        assert losses[-1] < losses[0], f"{label}: training loss did not decrease {losses}"
    for r in runs:
        assert 0.0 <= r["test accuracy"] <= 1.0 and not r["diverged"]
        assert 0 < r["CPU s/epoch"] and 0 < r["s/epoch"]
    for row in results["mnist_timing_rows"]:
        assert row["CPU ratio (with / without)"] == pytest.approx(
            row["CPU s/epoch with dropout"] / row["CPU s/epoch without dropout"])
    # Every optimizer without dropout beats chance (10 classes) after the quick preset.
    assert min(r["test accuracy"] for r in runs if not r["dropout"]) > 0.3


def test_weight_scaling_matches_mean_over_masks_in_the_first_layer(quick_run):
    _, results = quick_run
    first = results["mnist_scaling_rows"][0]
    assert first["exact in expectation"]
    gap = first["rel. gap: mean over masks vs scaled weights"]
    assert gap <= 3 * first["rel. Monte Carlo std error"]
    assert first["rel. gap: mean over masks vs unscaled weights"] > 5 * gap


def test_noninverted_dropout_masks_without_rescaling():
    layer = NonInvertedDropout(0.5, rng=0)
    x = np.ones((400, 50), dtype=np.float32)
    y = layer(x)
    assert set(np.unique(y)) == {0.0, 1.0}          # kept units are not scaled by 1/q
    assert abs(y.mean() - 0.5) < 0.02
    np.testing.assert_array_equal(layer.backward(np.full_like(x, 3.0)), 3.0 * y)
    layer.eval()
    np.testing.assert_array_equal(layer(x), x)
    with pytest.raises(ValueError, match="NonInvertedDropout"):
        NonInvertedDropout(1.0)


def test_scaled_weights_give_the_expected_first_preactivation_and_are_restored():
    model = noninverted_mlp([12, 8, 3], p_input=0.3, p_hidden=0.5, rng=1)
    x = np.random.default_rng(2).random((5, 12)).astype(np.float32)
    before = model.flat().data.copy()
    first = model[2]
    with weights_scaled_by_keep(model):
        np.testing.assert_allclose(first.weight.data, 0.7 * before[:first.weight.data.size]
                                   .reshape(first.weight.data.shape), rtol=1e-6)
        model.eval()
        scaled = preactivations(model, x)
    np.testing.assert_array_equal(model.flat().data, before)
    means, errors = mc_preactivations(model, x, n_masks=4000)
    gap = np.abs(means[0] - scaled[0])
    assert np.all(gap <= 5 * errors[0] + 1e-6)
    assert not model[1].training and model[2].training is False


def test_cifar10_runs_only_when_present(run_quick):
    run = run_quick("optimizers",
                    overrides=["datasets=mnist,cifar10", "epochs=1", "n_train=256", "n_test=200",
                               "hidden=16,16", "probe_masks=50", "mc_masks=2"])
    res = run.results
    assert "mnist" in res["datasets_run"]
    assert ("cifar10" in res["skipped"]) != ("cifar10" in res["datasets_run"])
    if "cifar10" in res["skipped"]:
        assert "CIFAR-10 is not on disk" in run.report()
