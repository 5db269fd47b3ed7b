"""The perceptron lab: quick preset, report keys, the vectorized trainer vs the library."""
import numpy as np
import pytest

from mlcvlab.labs import perceptron as pc
from mlcvlab.labs import run_lab, stats
from mlcvlab.nn import HingeLoss, Linear
from mlcvlab.optim import SGD


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The perceptron lab's quick preset, run once for all tests of this file."""
    return run_quick("perceptron")


def test_quick_preset_writes_files_and_keys(quick_run):
    quick_run.assert_outputs(
        keys=[f"{name}_{key}" for name in ("perceptron", "hinge")
              for key in ("acc_mean", "acc_ci_lo", "acc_std", "mean_var", "frac_unstable",
                          "separated_frac")]
        + ["draws", "comparisons", "preset", "table"],
        files=("report.md", "accuracy.csv", "boundaries.png", "accuracy_hist.png",
               "prediction_spread.png", "config.json"))
    res, report = quick_run.results, quick_run.report()
    assert (f"{res['hinge_acc_mean']:.4f}" in report
            and f"{res['perceptron_mean_var']:.4f}" in report)
    assert "not a finding of this run" in report           # the why is labelled explanation


def test_comparisons_are_paired_by_draw_and_in_the_report(quick_run):
    """Accuracy, angle and spread: each a paired comparison over the draws, its sentence in
    report.md, and the conclusions' words taken from its verdict."""
    saved, report = quick_run.saved(), quick_run.report()
    comps = saved["comparisons"]
    assert [c["metric"].split(" ")[0] for c in comps] == ["test", "angle", "deviation"]
    for c in comps:
        stats.check_comparison(c)
        assert c["n_seeds"] == saved["draws"] == 300 and c["paired"]
        assert stats.sentence(c) in report
    acc = comps[0]
    words = {"a better": "the hinge loss's test accuracy is higher",
             "b better": "the perceptron criterion's test accuracy is higher",
             "not separable": "not separable"}[acc["verdict"]]
    assert words in report.split("## Conclusions")[1]
    assert "within 2 standard errors" not in report


def test_hinge_loss_generalizes_better_and_varies_less(quick_run):
    """The margin centres the line: higher mean accuracy, less spread of the predictions
    (verdicts of the seeded quick run)."""
    _, res = quick_run
    acc, angle, dev = res["comparisons"]
    assert acc["verdict"] == "a better" and acc["ci95"][0] > 0
    assert dev["verdict"] == "a better" and res["hinge_mean_var"] < res["perceptron_mean_var"]
    assert angle["verdict"] == "a better"
    assert res["perceptron_separated_frac"] > 0.95          # the perceptron finds a separator
    assert 0.8 < res["perceptron_acc_mean"] < res["hinge_acc_mean"] < 1.0


def test_a_draw_depends_on_its_seed_only():
    """Draw for seed 7 is the same whether it runs with seeds 5..9 or alone."""
    X1, y1, w1, b1 = pc.draw_sets([5, 6, 7, 8, 9], 20)
    X2, y2, w2, b2 = pc.draw_sets([7], 20)
    np.testing.assert_array_equal(X1[2], X2[0])
    np.testing.assert_array_equal(w1[2], w2[0])


def test_deviation_per_draw_averages_to_the_spread():
    pred = np.where(np.random.default_rng(0).random((40, 30)) > 0.4, 1, -1)
    dev = pc.deviation_per_draw(pred)
    assert dev.shape == (40,)
    assert dev.mean() == pytest.approx(pc.prediction_spread(pred)["mean_var"])


@pytest.mark.parametrize("key,value", [("seeds", "1"), ("lr", "0"), ("lr", "nan"),
                                       ("n_train", "1"), ("epochs", "0"), ("n_test", "0"),
                                       ("boundary_draws", "-1")])
def test_bad_config_fails_up_front_naming_the_key(tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        run_lab("perceptron", quick=True, out_dir=str(tmp_path), show_progress=False,
                overrides=[f"{key}={value}"])
    assert not (tmp_path / "report.md").exists()


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
