"""The dropout-regression lab: quick preset, closed forms, trained weights vs the closed form."""
import itertools

import numpy as np
import pytest

from mlcvlab.labs import dropout_regression as dr
from mlcvlab.labs import stats

X = np.array([[10.0, 1.0]])
Y = np.array([11.0])


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The dropout-regression lab's quick preset, run once for all tests of this file."""
    return run_quick("dropout-regression")


def test_quick_preset_writes_files_and_keys(quick_run):
    quick_run.assert_outputs(
        keys=("runs", "runs_per_seed", "sweep", "jump", "large_rel", "jump_size", "comparisons",
              "limit_share1", "minnorm_share1", "full_rank_gap", "conclusions", "sweep_max_rel",
              "seeds_used", "preset"),
        files=("report.md", "runs.csv", "runs_per_seed.csv", "sweep.csv", "loss_curves.png",
               "sweep.png", "config.json"))
    res, report = quick_run.results, quick_run.report()
    assert f"{res['large_rel']:.2%}" in report and res["star_w_r"] in report
    assert len(res["seeds_used"]) >= 2
    assert len(res["runs_per_seed"]) == len(res["seeds_used"]) * len(res["runs"])


def test_sgd_vs_adam_is_a_comparison_over_seeds(quick_run):
    """The SGD-vs-Adam verdict comes from a paired interval over seeds (it flipped between
    presets when it was one run per arm), and its sentence is in report.md and conclusions."""
    saved, report = quick_run.saved(), quick_run.report()
    comps = saved["comparisons"]
    for c in comps:
        stats.check_comparison(c)
        assert c["n_seeds"] == len(saved["seeds_used"]) and c["ci95"][0] is not None
        assert f"- {stats.sentence(c)}" in report
    pairs = {(c["a"], c["b"]) for c in comps}
    assert ("dropout Adam, small batch", "dropout SGD, small batch") in pairs
    assert ("dropout Adam, large batch", "dropout SGD, large batch") in pairs
    adam = next(c for c in comps if c["a"] == "dropout Adam, small batch")
    conclusions = report.split("## Conclusions")[1]
    assert f"SGD vs Adam, small batch: {stats.sentence(adam)}" in conclusions
    # dropout vs no dropout: trained dropout weights sit at w*(p), GD's at the OLS fit
    by = {(c["a"], c["b"]): c for c in comps}
    assert by[("dropout SGD, large batch", "GD, no dropout")]["verdict"] == "a better"
    assert by[("GD, no dropout", "dropout SGD, large batch")]["verdict"] == "a better"


def test_trained_dropout_weights_match_closed_form(quick_run):
    """Large-batch dropout SGD (library, inverted dropout) lands on (XᵀX + εΓ²)⁻¹Xᵀy, every
    seed; the tolerance verdict comes from the interval over seeds."""
    _, res = quick_run
    star = dr.dropout_minimizer(X, Y, 0.5)
    for r in res["runs_per_seed"]:
        if r["run"] == "dropout SGD, large batch":
            np.testing.assert_allclose([r["w1"], r["w2"]], star, rtol=res["tolerance"])
    large = next(r for r in res["runs"] if r["run"] == "dropout SGD, large batch")
    assert large["tolerance"] == "within" and large["rel_error_ci_high"] <= res["tolerance"]
    assert res["sweep_all_within"]
    gd = next(r for r in res["runs"] if r["p"] == 0)
    np.testing.assert_allclose([gd["w1"], gd["w2"]], X[0] * Y[0] / 101.0, rtol=1e-8)


def test_tolerance_verdict():
    assert dr.tolerance_verdict([0.01, 0.02], 0.015, 0.05) == "within"
    assert dr.tolerance_verdict([0.06, 0.08], 0.07, 0.05) == "not within"
    assert dr.tolerance_verdict([0.01, 0.08], 0.04, 0.05) == "not separable from"
    assert dr.tolerance_verdict([None, None], 0.04, 0.05) == "within"


@pytest.mark.parametrize("override, key", [("lr=nan", "lr"), ("adam_lr=-1", "adam_lr"),
                                           ("p=1", "p"), ("tail=0", "tail"),
                                           ("steps=0", "steps"), ("batch_small=0", "batch_small"),
                                           ("sweep_train=0.5,1.5", "sweep_train"),
                                           ("tolerance=inf", "tolerance"), ("seeds=0", "seeds")])
def test_bad_config_values_fail_up_front(run_quick, tmp_path, override, key):
    with pytest.raises(ValueError, match=key):
        run_quick("dropout-regression", out=tmp_path, overrides=[override])
    assert not (tmp_path / "report.md").exists()


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
