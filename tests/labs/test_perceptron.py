"""The perceptron lab: quick preset, report keys, the vectorized trainer vs the library."""
import numpy as np
import pytest

from mlcvlab.labs import perceptron as pc
from mlcvlab.nn import HingeLoss, Linear
from mlcvlab.optim import SGD


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The perceptron lab's quick preset, run once for all tests of this file."""
    return run_quick("perceptron")


def test_quick_preset_writes_files_and_keys(quick_run):
    quick_run.assert_outputs(
        keys=[f"{name}_{key}" for name in ("perceptron", "hinge")
              for key in ("acc_mean", "acc_std", "mean_var", "frac_unstable", "separated_frac")]
        + ["diff_mean", "diff_se", "acc_verdict", "var_verdict", "table"],
        files=("report.md", "accuracy.csv", "boundaries.png", "accuracy_hist.png",
               "prediction_spread.png", "config.json"))
    res, report = quick_run.results, quick_run.report()
    assert (f"{res['hinge_acc_mean']:.4f}" in report
            and f"{res['perceptron_mean_var']:.4f}" in report)


def test_hinge_loss_generalizes_better_and_varies_less(quick_run):
    """The margin centres the line: higher mean accuracy, less spread of the predictions."""
    _, res = quick_run
    assert res["diff_mean"] > 2 * res["diff_se"]
    assert res["hinge_mean_var"] < res["perceptron_mean_var"]
    assert res["perceptron_separated_frac"] > 0.95          # the perceptron finds a separator
    assert 0.8 < res["perceptron_acc_mean"] < res["hinge_acc_mean"] < 1.0


@pytest.mark.parametrize("margin", [0.0, 1.0])
def test_vectorized_training_matches_library(margin):
    """Draw 2 of 3 vectorized == Linear(2, 1) + HingeLoss(margin) + SGD, full batch, float64."""
    gen = np.random.default_rng(5)
    X, y = pc.draw_training_sets(3, 20, gen)
    w0, b0 = pc.init_linear(3, gen)
    w, b = pc.train_hinge(X, y, w0, b0, margin, lr=0.7, epochs=60)
    model = Linear(2, 1, rng=0).astype(np.float64)
    model.weight.data[...] = w0[2][None, :]
    model.bias.data[...] = b0[2]
    opt, loss = SGD(model.parameters(), lr=0.7), HingeLoss(margin)
    for _ in range(60):
        opt.zero_grad()
        loss(model(X[2]), y[2][:, None])
        model.backward(loss.backward())
        opt.step()
    assert not np.allclose(model.weight.data[0], w0[2])         # it did move
    np.testing.assert_allclose(model.weight.data[0], w[2], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.bias.data[0], b[2], rtol=1e-10, atol=1e-12)


def test_prediction_spread_counts_disagreement():
    pred = np.array([[1, 1, -1], [1, -1, -1]])
    s = pc.prediction_spread(pred)
    np.testing.assert_allclose(s["p_plus"], [1.0, 0.5, 0.0])
    assert s["mean_var"] == pytest.approx(0.25 / 3) and s["frac_unstable"] == pytest.approx(1 / 3)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="train_hinge"):
        pc.train_hinge(np.zeros((2, 5, 3)), np.ones((2, 5)), np.zeros((2, 2)), np.zeros(2),
                       1.0, 0.1, 5)
