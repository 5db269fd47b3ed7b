"""The dropout-regression lab: quick preset, closed forms, trained weights vs the closed form."""
import itertools

import numpy as np
import pytest

from mlcvlab.labs import dropout_regression as dr

X = np.array([[10.0, 1.0]])
Y = np.array([11.0])


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The dropout-regression lab's quick preset, run once for all tests of this file."""
    return run_quick("dropout-regression")


def test_quick_preset_writes_files_and_keys(quick_run):
    quick_run.assert_outputs(
        keys=("runs", "sweep", "jump", "large_rel", "small_rel", "adam_small_rel", "jump_size",
              "limit_share1", "minnorm_share1", "full_rank_gap", "conclusions", "sweep_max_rel"),
        files=("report.md", "runs.csv", "sweep.csv", "loss_curves.png", "sweep.png",
               "config.json"))
    res, report = quick_run.results, quick_run.report()
    assert f"{res['large_rel']:.2%}" in report and res["star_w_r"] in report


def test_trained_dropout_weights_match_closed_form(quick_run):
    """Large-batch dropout SGD (library, inverted dropout) lands on (XᵀX + εΓ²)⁻¹Xᵀy."""
    _, res = quick_run
    large = next(r for r in res["runs"] if r["run"] == "dropout SGD, large batch")
    star = dr.dropout_minimizer(X, Y, 0.5)
    np.testing.assert_allclose([large["w1"], large["w2"]], star, rtol=res["tolerance"])
    assert large["within_tol"] and res["sweep_all_within"]
    gd = next(r for r in res["runs"] if r["p"] == 0)
    np.testing.assert_allclose([gd["w1"], gd["w2"]], X[0] * Y[0] / 101.0, rtol=1e-8)


def test_jump_at_zero(quick_run):
    """p -> 0+ gives the min-Γ-norm fit y Γ⁻²x / (xᵀΓ⁻²x) = (0.55, 5.5); p = 0 the min-norm fit."""
    _, res = quick_run
    np.testing.assert_allclose(res["jump"]["limit_w"], [0.55, 5.5], rtol=1e-9)
    np.testing.assert_allclose(res["jump"]["tiny_w"], [0.55, 5.5], rtol=1e-4)
    assert res["jump_size"] > 5.0 and res["limit_share1"] == pytest.approx(0.5)
    assert res["full_rank_gap"] < 1e-3


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_expected_loss_formulas_by_enumerating_masks(p):
    """Exact expectation over the 4 masks: inverted loss = ||y-Xw||² + ε||Γw||², and the
    non-inverted one = ||y-qXw||² + q(1-q)||Γw||², with w_formula* = w_inverted* / q."""
    q, w = 1.0 - p, np.array([0.3, -1.7])
    inv = non = 0.0
    for m in itertools.product([0, 1], repeat=2):
        m = np.array(m, float)
        prob = np.prod(np.where(m == 1, q, 1 - q))
        inv += prob * (Y[0] - (m * X[0] / q) @ w) ** 2
        non += prob * (Y[0] - (m * X[0]) @ w) ** 2
    assert inv == pytest.approx(dr.expected_loss(X, Y, w, p))
    g2 = dr.gamma_sq(X)
    assert non == pytest.approx((Y[0] - q * X[0] @ w) ** 2 + q * (1 - q) * g2 @ w ** 2)
    star = dr.dropout_minimizer(X, Y, p)
    formula = np.linalg.solve(q * q * X.T @ X + q * (1 - q) * np.diag(g2), q * X.T @ Y)
    np.testing.assert_allclose(formula, star / q, rtol=1e-10)


def test_errors_name_the_function():
    with pytest.raises(ValueError, match="dropout_minimizer"):
        dr.dropout_minimizer(X, Y, 0.0)
    with pytest.raises(ValueError, match="optimizer"):
        dr.train(X, Y, 0.5, 4, 10, 0.01, "lbfgs", 0, 0.5)
