"""The optimizers lab: quick preset end to end, and the non-inverted dropout pieces."""
import numpy as np
import pytest

from mlcvlab.labs import stats
from mlcvlab.labs.optimizers import (OPTIMIZERS, NonInvertedDropout, mc_preactivations,
                                     noninverted_mlp, preactivations, weights_scaled_by_keep)

TAG_KEYS = ["wanted", "used", "n_train", "n_val", "n_test", "epochs", "probe_masks", "runs",
            "run_rows", "timing_rows", "curves", "val_acc_curves", "dropout_helped_count",
            "dropout_helped_text", "dropout_hurt_text", "dropout_unsep_text", "time_slower_text",
            "time_unsep_text", "cpu_ratio_mean", "wall_ratio_mean", "lowest_loss_plain",
            "lowest_loss_plain_value", "lowest_beats_text", "lowest_ties_text", "diverged_text",
            "scaling_rows", "probe_examples", "layer1_gap", "layer1_noise", "layer1_unscaled_gap",
            "within_noise_word", "deep_gaps_text", "acc_scaled", "acc_unscaled", "acc_mc",
            "acc_inverted", "scaling_sentence", "inverted_sentence"]
FILES = ["report.md", "results.json", "config.json", "mnist_loss_no_dropout.png",
         "mnist_loss_dropout.png", "mnist_val_accuracy.png", "mnist_test_accuracy.csv",
         "mnist_runs.csv", "mnist_timing.csv", "mnist_weight_scaling.csv",
         "mnist_noninverted_accuracy.csv"]


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The optimizers lab's quick preset, made smaller, run once for all tests of this file."""
    return run_quick("optimizers", overrides=["n_train=1024", "n_test=500", "hidden=64,64",
                                              "epochs=2", "probe_masks=300"])


def test_quick_preset_writes_everything_the_report_uses(quick_run):
    saved = quick_run.assert_outputs(
        keys=[f"mnist_{k}" for k in TAG_KEYS]
        + ["datasets_run", "substitutions", "sizes_text", "mc_masks", "comparisons", "preset"],
        files=FILES)
    quick_run.assert_report("the paper (Srivastava et al. 2014", "CPU seconds",
                            substituted=saved["mnist_used"] != "mnist")


def test_quick_preset_trains_every_arm_over_paired_seeds(quick_run):
    _, results = quick_run
    runs = results["mnist_run_rows"]
    assert [(r["seed"], r["optimizer"], r["dropout"]) for r in runs] == sorted(
        [(s, o, d) for s in (0, 1) for o in OPTIMIZERS for d in (False, True)],
        key=lambda t: (OPTIMIZERS.index(t[1]), t[2], t[0]))
    epochs = results["mnist_epochs"]
    for label, losses in results["mnist_curves"].items():
        assert len(losses) == epochs, label
        assert losses[-1] < losses[0], f"{label}: training loss did not decrease {losses}"
    for r in runs:
        assert 0.0 <= r["test accuracy"] <= 1.0 and not r["diverged"]
        assert 0 < r["CPU s/epoch"] and 0 < r["s/epoch"]
    for row in results["mnist_runs"]:
        assert row["seeds"] == 2 and row["test acc CI lo"] <= row["test accuracy"]
    # Every optimizer without dropout beats chance (10 classes) after the quick preset.
    assert min(r["test accuracy"] for r in runs if not r["dropout"]) > 0.3
    # the validation split is held out of the 1,024 training images
    assert results["mnist_n_train"] + results["mnist_n_val"] == 1024


def test_comparisons_have_verdicts_and_make_the_conclusions(quick_run):
    saved = quick_run.saved()
    comps = saved["comparisons"]
    kinds = [c["kind"] for c in comps]
    assert kinds.count("dropout") == 5 and kinds.count("time") == 5
    assert kinds.count("loss") == 10 and kinds.count("noninverted") == 2
    for c in comps:
        stats.check_comparison(c)
        assert c["n_seeds"] == 2
    dropout = {c["optimizer"]: c for c in comps if c["kind"] == "dropout"}
    helped = [n for n in OPTIMIZERS if dropout[n]["verdict"] == "a better"]
    assert saved["mnist_dropout_helped_count"] == len(helped)
    time_c = [c for c in comps if c["kind"] == "time"]
    assert all(c["metric"] == "CPU seconds per training epoch" for c in time_c)
    report = quick_run.report()
    for c in comps:
        assert stats.sentence(c) in report
    conclusions = report.split("## Conclusions")[1]
    assert "CPU seconds per training epoch with vs without dropout" in conclusions
    assert "dropout gain" not in report and "best test accuracy" not in conclusions


def test_weight_scaling_matches_mean_over_masks_in_the_first_layer(quick_run):
    _, results = quick_run
    first = results["mnist_scaling_rows"][0]
    assert first["exact in expectation"]
    gap = first["rel. gap: mean over masks vs scaled weights"]
    assert gap <= 3 * first["rel. Monte Carlo std error"]
    assert first["rel. gap: mean over masks vs unscaled weights"] > 5 * gap


@pytest.mark.parametrize("override, match", [
    ("lr_adam=nan", "lr_adam"), ("epochs=0", "epochs"), ("p_input=1.0", "p_input"),
    ("val_fraction=0", "val_fraction"), ("seeds=0", "seeds"), ("datasets=svhn", "datasets"),
    ("momentum=1.5", "momentum")])
def test_bad_config(run_quick, override, match):
    with pytest.raises(ValueError, match=match):
        run_quick("optimizers", overrides=[override])


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


def test_a_device_run_compares_wall_seconds():
    """On "cuda" the CPU seconds are the host's share: the with/without-dropout time
    comparison reads the wall seconds (device time). Here the two clocks disagree."""
    from mlcvlab.labs.optimizers import TIME_METRIC, summarize_grid
    runs = []
    for seed, jitter in ((0, 0.0), (1, 0.1), (2, 0.05)):
        for name in OPTIMIZERS:
            for dropout in (False, True):
                cpu = (1.0 if dropout else 3.0) + jitter            # dropout: less host time
                wall = (4.0 if dropout else 2.0) + jitter           # but more device time
                runs.append({"optimizer": name, "dropout": dropout, "seed": seed,
                             "train_loss": [1.0, 0.5], "val_acc": [0.5, 0.6],
                             "cpu_seconds": [cpu, cpu], "seconds": [wall, wall],
                             "test_acc": 0.9 + jitter, "diverged": False})
    verdicts = {}
    for clock in ("cpu", "wall"):
        out = summarize_grid(runs, [0, 1, 2], "t", clock)
        times = [c for c in out["t_comparisons"] if c["kind"] == "time"]
        assert {c["metric"] for c in times} == {TIME_METRIC[clock]}
        assert out["t_clock"] == clock and out["t_time_metric"] == TIME_METRIC[clock]
        verdicts[clock] = {c["verdict"] for c in times}
    assert verdicts == {"cpu": {"a better"}, "wall": {"b better"}}


def test_noninverted_dropout_keeps_the_units_the_library_dropout_keeps():
    """The same Philox masks as nn.Dropout built with the same generator and p (not rescaled),
    a fresh one per training forward, and the step in the state dict (a resumed run and a
    device run draw the same masks)."""
    from mlcvlab import nn
    x = np.random.default_rng(3).random((7, 13)).astype(np.float32) + 0.5
    ours, theirs = NonInvertedDropout(0.3, rng=4), nn.Dropout(0.3, rng=4)
    for _ in range(2):
        y, z = ours(x), theirs(x)
        np.testing.assert_array_equal(y != 0, z != 0)
        np.testing.assert_array_equal(y[y != 0], x[y != 0])
    assert int(ours.state_dict()["mask_step"]) == 2
    assert not np.array_equal(ours(x) != 0, y != 0)


def test_noninverted_net_has_the_inverted_nets_weights_and_masks():
    """One seed's non-inverted MLP starts from the weights of the inverted one and its dropout
    layers have the same mask seeds, so with the same batches the two draw the same masks."""
    from mlcvlab.labs.optimizers import mlp
    from mlcvlab.nn import Dropout
    inverted = mlp([12, 8, 8, 3], p_input=0.2, p_hidden=0.5, rng=5)
    ours = noninverted_mlp([12, 8, 8, 3], 0.2, 0.5, 5)
    np.testing.assert_array_equal(ours.flat().data, inverted.flat().data)
    seeds = [[int(m.mask_seed) for m in net if isinstance(m, Dropout)]
             for net in (ours, inverted)]
    assert seeds[0] == seeds[1] and len(set(seeds[0])) == 3


def test_noninverted_dropout_declares_that_it_runs_on_the_gpu():
    """mlcvlab.gpu.engine lets model.to("cuda") move the layer (its forward draws the masks with
    gpu.basis.dropout_mask on a device model) and still refuses a subclass whose own forward
    declares nothing."""
    from mlcvlab.gpu import engine

    class Mine(NonInvertedDropout):
        def forward(self, x):
            return x

    assert engine.reason(NonInvertedDropout(0.5)) is None
    assert "no GPU twin" in engine.reason(Mine(0.5))


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
                               "hidden=16,16", "probe_masks=50", "mc_masks=2", "seeds=1"])
    res = run.results
    assert "mnist" in res["datasets_run"]
    assert ("cifar10" in res["skipped"]) != ("cifar10" in res["datasets_run"])
    if "cifar10" in res["skipped"]:
        assert "CIFAR-10 is not on disk" in run.report()


def test_with_and_without_dropout_start_from_the_same_weights():
    """Pairing by seed: the dropout layers draw nothing at construction, so one seed gives the
    same initial weights with and without dropout."""
    from mlcvlab.labs.optimizers import mlp
    plain = mlp([12, 8, 8, 3], rng=5)
    drop = mlp([12, 8, 8, 3], p_input=0.2, p_hidden=0.5, rng=5)
    np.testing.assert_array_equal(plain.flat().data, drop.flat().data)
