"""The bn-dropout lab: quick preset end to end, variant construction, bad config."""
import numpy as np
import pytest

from mlcvlab.labs.bn_dropout import VARIANTS, bn_layers, build_variant, standardized
from mlcvlab.nn import BatchNorm2d, Dropout

REPORT_KEYS = ["rows", "bn_rows", "bn_values", "curves", "best_variant", "best_description",
               "best_test_acc", "best_test_error", "pairs", "pixel_mean", "pixel_std", "wanted",
               "used", "n_train", "n_test", "epochs", "lr", "momentum", "batch_size",
               "weight_decay", "input_bn_gamma", "input_bn_beta", "input_bn_mean", "input_bn_std",
               "input_bn_scale", "input_bn_shift", "bn_gamma_range", "bn_beta_range"]
PAIR_KEYS = ["acc_points", "acc_word", "gap_points", "gap_word"]
FILES = ["report.md", "results.json", "config.json", "variants.csv", "bn_parameters.csv",
         "curves.png", "bn_parameters.png"]


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The bn-dropout lab's quick preset, run once for all tests of this file."""
    return run_quick("bn-dropout")


def test_quick_preset_writes_everything_the_report_uses(quick_run):
    saved = quick_run.assert_outputs(keys=REPORT_KEYS, files=FILES)
    assert len(saved["pairs"]) == 4
    quick_run.assert_outputs(keys=[f"{p}_{k}" for p in saved["pairs"] for k in PAIR_KEYS])
    quick_run.assert_report("0.95%", substituted=saved["used"] != "mnist")


def test_every_variant_trained_and_bn_parameters_moved(quick_run):
    _, results = quick_run
    rows = {r["variant"]: r for r in results["rows"]}
    assert list(rows) == list(VARIANTS)
    for r in rows.values():
        assert 0.0 <= r["train accuracy"] <= 1.0 and 0.0 <= r["test accuracy"] <= 1.0
        assert np.isfinite(r["test loss"]) and r["test loss"] > 0
    # Batch norm in the hidden layers learns within the quick preset (10 classes: chance 0.1).
    assert rows["bn"]["test accuracy"] > 0.5
    losses = results["curves"]["bn"]["train_loss"]
    assert losses[-1] < losses[0]
    counts = {v: sum(b["variant"] == v for b in results["bn_rows"]) for v in VARIANTS}
    assert counts == {"plain": 0, "bn": 4, "bn_input": 5, "dropout": 0, "bn_dropout": 4}
    for b in results["bn_rows"]:
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


def test_standardization_uses_training_statistics():
    X = np.random.default_rng(0).random((50, 1, 28, 28)).astype(np.float32)
    data = {"X_train": X, "X_test": X[:5] + 1, "mean": float(X.mean()), "std": float(X.std())}
    out = standardized(data)
    assert abs(out["X_train"].mean()) < 1e-4 and abs(out["X_train"].std() - 1) < 1e-4
    assert out["X_test"].mean() > 2       # shifted test data is not re-centred on itself


def test_unknown_variant_is_rejected(run_quick):
    with pytest.raises(ValueError, match="variants must be a non-empty subset"):
        run_quick("bn-dropout", overrides=["variants=plain,batchnorm"])
