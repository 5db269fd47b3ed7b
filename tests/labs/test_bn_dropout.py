"""The bn-dropout lab: quick preset end to end (seeds, validation split, comparisons with
verdicts), paired initial weights, the test split evaluated once, bad config values."""
import numpy as np
import pytest

from mlcvlab.labs import stats
from mlcvlab.labs import bn_dropout
from mlcvlab.labs.bn_dropout import (VARIANTS, bn_layers, build_variant, standardized,
                                     train_variant)
from mlcvlab.labs.registry import get_lab
from mlcvlab.nn import BatchNorm2d, Conv2d, Dropout, Linear

REPORT_KEYS = ["rows", "bn_rows", "bn_values", "curves", "per_seed", "comparisons",
               "pixel_mean", "pixel_std", "wanted", "used", "n_train", "n_val", "n_test",
               "seeds", "n_seeds", "epochs", "lr", "momentum", "batch_size", "weight_decay",
               "val_fraction", "input_bn_gamma", "input_bn_beta", "input_bn_mean",
               "input_bn_std", "input_bn_scale", "input_bn_shift", "bn_gamma_range",
               "bn_beta_range", "preset", "steps_to_target", "steps_rows",
               "speed_comparisons", "speed_censored", "steps_metric", "target_pct"]
FILES = ["report.md", "results.json", "config.json", "variants.csv", "bn_parameters.csv",
         "curves.png", "bn_parameters.png", "steps_to_target.csv"]


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The bn-dropout lab's quick preset, run once for all tests of this file."""
    return run_quick("bn-dropout")


def test_quick_preset_writes_everything_the_report_uses(quick_run):
    saved = quick_run.assert_outputs(keys=REPORT_KEYS, files=FILES)
    assert saved["preset"] == "quick"
    quick_run.assert_report("0.95%", "Smoke test", substituted=saved["used"] != "mnist")


def test_every_preset_has_seeds_and_standard_measures_over_three():
    spec = get_lab("bn-dropout")
    assert spec.standard is not None
    for which in ("quick", "standard", "full"):
        assert "seeds" in spec.preset(which)
    assert len(stats.seeds_of(spec.preset("standard"))) >= 3
    assert len(stats.seeds_of(spec.preset("full"))) >= 5
    assert spec.preset("standard")["epochs"] > spec.preset("quick")["epochs"]
    assert spec.expected_seconds["quick"] < 60 and spec.expected_seconds["standard"] <= 3600


def test_comparisons_have_the_schema_and_their_sentences_are_the_reports(quick_run):
    saved = quick_run.saved()
    comps = saved["comparisons"]
    pairs = {(c["a"], c["b"], c["metric"]) for c in comps}
    for other in ("bn", "bn_input", "dropout", "bn_dropout"):   # every variant vs the baseline
        assert (other, "plain", bn_dropout.ERROR) in pairs
    assert ("bn_dropout", "bn", bn_dropout.ERROR) in pairs
    report = quick_run.report()
    for c in comps:
        stats.check_comparison(c)
        assert c["n_seeds"] == 2 and c["verdict"] in stats.VERDICTS
        assert len(c["ci95"]) == 2 and c["ci95"][0] is not None     # 2 seeds give an interval
        assert stats.sentence(c) in report
    # the old single-run wording is gone: comparison words come from verdicts only
    assert "percentage points and" not in report and "The best test accuracy" not in report
    assert "The study's explanation (not a finding of this run)" in report


def test_validation_split_is_held_out_and_curves_use_it(quick_run):
    saved = quick_run.saved()
    assert saved["n_train"] + saved["n_val"] == 1024          # n_train images, split 90/10
    assert saved["n_val"] == pytest.approx(0.1 * 1024, abs=10)
    assert saved["n_test"] == 500
    assert saved["seeds"] == [0, 1]
    report = quick_run.report()
    assert f"{saved['n_val']:,} validation images held out" in report
    for name, c in saved["curves"].items():
        assert len(c["val_acc"]) == 2 and all(len(v) == 2 for v in c["val_acc"])   # seeds x ep
        assert "test_acc" not in c
    for name, runs in saved["per_seed"].items():
        assert [r["seed"] for r in runs] == [0, 1]
        assert all(0 <= r["test_acc"] <= 1 and r["cpu_seconds"] > 0 for r in runs)


def test_every_variant_trained_and_bn_parameters_reported(quick_run):
    _, results = quick_run
    rows = {r["variant"]: r for r in results["rows"]}
    assert list(rows) == list(VARIANTS)
    for r in rows.values():
        assert 0.0 <= r["train accuracy"] <= 1.0 and 0.0 <= r["test accuracy"] <= 1.0
        assert np.isfinite(r["test loss"]) and r["test loss"] > 0 and r["seeds"] == 2
    # Batch norm in the hidden layers learns within the quick preset (10 classes: chance 0.1).
    assert rows["bn"]["test accuracy"] > 0.5
    losses = np.mean(results["curves"]["bn"]["train_loss"], axis=0)
    assert losses[-1] < losses[0]
    counts = {v: sum(b["variant"] == v for b in results["bn_rows"]) for v in VARIANTS}
    assert counts == {"plain": 0, "bn": 4, "bn_input": 5, "dropout": 0, "bn_dropout": 4}
    for b in results["bn_rows"]:
        assert b["seeds"] == 2
        if b["features"] > 1:     # trained gamma/beta differ across features (init: all 1, 0)
            assert b["gamma std"] > 0 and b["beta std"] > 0, b


def test_variants_are_built_as_described():
    config = {"p_input": 0.2, "p_hidden": 0.5}
    assert not bn_layers(build_variant("plain", config, 0))
    with_input = build_variant("bn_input", config, 0)
    assert isinstance(with_input[0], BatchNorm2d) and bn_layers(with_input)[0][0] == "BN on input"
    drops = [m.p for m in build_variant("bn_dropout", config, 0) if isinstance(m, Dropout)]
    assert drops == [0.2, 0.5, 0.5]
    x = np.random.default_rng(0).random((2, 1, 28, 28)).astype(np.float32)
    assert build_variant("bn_dropout", config, 0).eval()(x).shape == (2, 10)


def test_variants_of_one_seed_start_from_the_same_weights():
    config = {"p_input": 0.2, "p_hidden": 0.5}
    weights = {name: [m.weight.data.copy() for m in build_variant(name, config, 7)
                      if isinstance(m, (Conv2d, Linear))] for name in VARIANTS}
    for name in VARIANTS:
        assert len(weights[name]) == 5
        for w, ref in zip(weights[name], weights["plain"]):
            np.testing.assert_array_equal(w, ref)
    other = [m.weight.data for m in build_variant("plain", config, 8)
             if isinstance(m, (Conv2d, Linear))]
    assert not np.array_equal(other[0], weights["plain"][0])   # another seed, other weights


def test_test_split_is_evaluated_once_after_training(monkeypatch, count_evaluations):
    """Validation data feed the per-epoch curves; the test data are seen once, at the end."""
    rng = np.random.default_rng(0)
    sizes = {"train": 60, "val": 20, "test": 30}
    data = {f"X_{k}": rng.random((n, 1, 28, 28)).astype(np.float32) for k, n in sizes.items()}
    data.update({f"y_{k}": rng.integers(0, 10, n) for k, n in sizes.items()})
    seen = count_evaluations(bn_dropout)
    config = {**get_lab("bn-dropout").preset("quick"), "epochs": 3, "batch_size": 16}
    out = train_variant("bn", data, config, 0, lambda it, **kw: it)
    # 3 epochs of validation, then the training set and the test set once each
    assert seen == [20, 20, 20, 60, 30]
    assert len(out["curves"]["val_acc"]) == 3


def test_standardization_uses_training_statistics():
    X = np.random.default_rng(0).random((50, 1, 28, 28)).astype(np.float32)
    data = {"X_train": X, "X_val": X[:5], "X_test": X[:5] + 1, "mean": float(X.mean()),
            "std": float(X.std())}
    out = standardized(data)
    assert abs(out["X_train"].mean()) < 1e-4 and abs(out["X_train"].std() - 1) < 1e-4
    assert out["X_test"].mean() > 2       # shifted test data is not re-centred on itself


def test_unknown_variant_is_rejected(run_quick):
    with pytest.raises(ValueError, match="variants must be a non-empty subset"):
        run_quick("bn-dropout", overrides=["variants=plain,batchnorm"])


@pytest.mark.parametrize("override, key", [
    ("lr=nan", "lr"), ("lr=0", "lr"), ("epochs=0", "epochs"), ("n_train=-1", "n_train"),
    ("p_hidden=1", "p_hidden"), ("momentum=1.5", "momentum"), ("val_fraction=0", "val_fraction"),
    ("weight_decay=-1", "weight_decay"), ("seeds=0", "seeds"), ("batch_size=0", "batch_size"),
    ("dataset=cifar10", "dataset"), ("target_val_acc=0", "target_val_acc"),
    ("target_val_acc=1.5", "target_val_acc")])
def test_bad_config_values_raise_before_any_work(run_quick, monkeypatch, override, key):
    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before the config was validated")

    monkeypatch.setattr(bn_dropout, "load_data", no_data)
    with pytest.raises(ValueError, match=f"(bn-dropout lab: {key} must be|--set {key}=)"):
        run_quick("bn-dropout", overrides=[override])


def test_steps_to_target_compares_bn_with_plain_paired_by_seed():
    # two seeds' per-epoch validation curves; 10 steps an epoch
    curves = {"plain": {"val_acc": [[0.96, 0.98, 0.986], [0.97, 0.986, 0.99]]},
              "bn": {"val_acc": [[0.986, 0.99, 0.99], [0.98, 0.99, 0.99]]},
              "bn_input": {"val_acc": [[0.98, 0.98, 0.98], [0.99, 0.99, 0.99]]}}
    out = bn_dropout.steps_to_target(curves, 0.985, 10)
    assert out["steps_to_target"]["plain"] == [30.0, 20.0]
    assert out["steps_to_target"]["bn"] == [10.0, 20.0]
    (c,) = out["speed_comparisons"]            # bn_input never reached 98.5% on seed 0
    assert (c["a"], c["b"], c["diff"]) == ("bn", "plain", -10.0)
    assert c["metric"].startswith("steps to 98.5% validation accuracy")
    assert out["speed_censored"] == ["bn_input vs plain: bn_input reached 98.5% in 1 of 2 "
                                     "seeds, plain in 2 of 2"]


def test_quick_report_states_the_steps_to_target_and_its_comparisons(quick_run):
    saved = quick_run.saved()
    report = quick_run.report()
    assert "Training steps to first reach 98.5% validation accuracy" in report
    for c in saved["speed_comparisons"]:
        assert c in saved["comparisons"] and stats.sentence(c) in report
    for line in saved["speed_censored"]:
        assert line in report
