"""The inductive-bias lab: quick preset end to end, the Sobel bank, freezing, confusion."""
import numpy as np
import pytest

from mlcvlab.data.synthetic import edge_images
from mlcvlab.labs.inductive_bias import (SOBEL_BANK, _QUICK, build, confusion, edge_cnn,
                                         set_sobel, train)

REPORT_KEYS = ["sizes", "n_small", "n_main", "domains", "curve_rows", "domain_rows", "more_rows",
               "cnn_max_small", "mlp_small", "cnn_max_main", "mlp_main", "cnn_vs_mlp_small_word",
               "cnn_max_n90", "mlp_n90", "sobel_frozen_small", "sobel_init_main",
               "frozen_vs_random_small_word", "cnn_max_worst_domain", "mlp_worst_acc",
               "cnn_worse_rows", "cnn_worse_text", "cnn_worse_count", "cells_total",
               "frozen_unchanged", "more_cnn_max", "more_cnn_avg", "more_mlp", "max_vs_avg_word",
               "mlp_params", "cnn_params", "runs"]


def test_inductive_bias_quick_via_api(run_quick):
    run = run_quick("inductive-bias")
    run.assert_outputs(keys=REPORT_KEYS,
                       files=("report.md", "accuracy_vs_training_size.csv",
                              "accuracy_vs_training_size.png", "domain_shift.csv",
                              "more_classes.csv", "confusion_3class.png",
                              "confusion_more_classes.png", "kernels.png"))
    res = run.results
    assert res["domains"] == ["in-domain", "low contrast + noise", "inverted polarity",
                              "all positions"]
    assert res["frozen_unchanged"] is True
    # frozen Sobel detectors need only a linear read-out: far above the 1/3 chance level
    assert res["sobel_frozen_main"] > 0.9
    assert res["cnn_max_main"] > 0.6 and res["mlp_main"] > 0.6
    # the "CNN worse than MLP" list is exactly the cells where the numbers say so
    assert res["cnn_worse_count"] == len(res["cnn_worse_rows"]) <= res["cells_total"] == 8
    assert all(r["CNN acc"] < r["MLP acc"] for r in res["cnn_worse_rows"])
    report = run.report()
    assert "Freezing" in report and res["cnn_worse_text"] in report


def test_sobel_bank_and_frozen_weights_stay_fixed():
    assert SOBEL_BANK.shape == (8, 3, 3) and np.allclose(SOBEL_BANK.sum(axis=(1, 2)), 0)
    model = edge_cnn(8, 8, 3, "max", rng=0)
    kernels = set_sobel(model)
    assert np.array_equal(kernels, SOBEL_BANK)
    # a vertical edge excites the vertical Sobel kernel (index 0) more than the horizontal one
    X, y = edge_images(30, seed=0, size=8, n_classes=3)
    conv = model[0](X[y == 1])
    assert conv[:, 0].max() > 5 * max(conv[:, 2].max(), 1e-3)
    cfg = {**_QUICK, "epochs": 2}
    model, frozen = build("sobel_frozen", cfg, 3, rng=0)
    bias_before = model[0].bias.data.copy()
    train(model, frozen, X, y, cfg, np.random.default_rng(0))
    assert np.array_equal(model[0].weight.data[:, 0], SOBEL_BANK)
    assert not np.array_equal(model[0].bias.data, bias_before)  # the rest still learns


def test_confusion_counts_and_errors(run_quick):
    y = np.array([0, 0, 1, 2, 2])
    pred = np.array([0, 1, 1, 2, 0])
    mat = confusion(y, pred, 3)
    assert mat.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    with pytest.raises(ValueError, match="pool"):
        edge_cnn(8, 4, 3, pool="median")
    with pytest.raises(ValueError, match="n_per_class"):
        run_quick("inductive-bias", overrides=["n_per_class=0"])
