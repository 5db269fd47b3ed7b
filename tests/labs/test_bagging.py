"""The bagging lab: quick preset, the ensemble-error formula, vectorized MLPs vs the library."""
import itertools

import numpy as np
import pytest

from mlcvlab.labs import bagging as bg
from mlcvlab.models import mlp
from mlcvlab.nn import MSELoss
from mlcvlab.optim import Adam


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The bagging lab's quick preset, run once for all tests of this file."""
    return run_quick("bagging")


def test_quick_preset_writes_files_and_keys(quick_run):
    quick_run.assert_outputs(
        keys=("bagging", "init_only", "bagging_v", "bagging_c", "bagging_kmax", "init_only_rho",
              "dropout_mse_mean", "ranking", "best_method", "table"),
        files=("report.md", "ensemble_error.csv", "moments.csv", "ensemble_error.png",
               "fits.png", "config.json"))
    res, report = quick_run.results, quick_run.report()
    assert f"{res['bagging_v']:.4f}" in report and f"{res['dropout_mse_mean']:.4f}" in report


def test_bagging_decorrelates_and_averaging_helps(quick_run):
    """Bootstrap errors are less correlated than init-only ones, so the bagged ensemble gains
    more; the measured error follows v/K + (K-1)c/K (pool B moments: up to subset sampling)."""
    _, res = quick_run
    assert res["bagging_rho"] < res["init_only_rho"]
    assert res["bagging_gain"] > 1.5 and res["bagging_gain"] > res["init_only_gain"]
    rows = res["bagging"]["rows"]
    assert all(a["measured"] > b["measured"] for a, b in zip(rows, rows[1:]))
    for name in ("bagging", "init_only"):
        for r in res[name]["rows"]:
            tol = 4 * r["measured_se"] + 1e-9 * r["measured"]     # subset-sampling noise only
            assert abs(r["measured"] - r["formula_poolB"]) <= tol, (name, r)
    # pool A's moments predict pool B's ensembles (loosely: 16-model pools, heavy tails)
    assert res["init_only_max_rel_diff"] < 0.3


def test_formula_is_the_mean_over_all_k_subsets():
    """For a pool of M error vectors, the mean over every K-subset of the ensemble's squared
    error equals v/K + (K-1)c/K with the pool's v and c, exactly."""
    gen = np.random.default_rng(0)
    errors = gen.normal(0.3, 1.0, (6, 5)) + gen.normal(size=(1, 5))
    v, c = bg.error_moments(errors)
    for k in (1, 2, 3, 6):
        exact = np.mean([np.mean(errors[list(s)].mean(axis=0) ** 2)
                         for s in itertools.combinations(range(6), k)])
        assert bg.formula(v, c, k) == pytest.approx(exact, rel=1e-12)
    sampled = bg.ensemble_errors(errors, 3, 4000, gen).mean()
    assert sampled == pytest.approx(bg.formula(v, c, 3), rel=0.03)


def test_vectorized_mlps_match_library_on_a_bootstrap_resample():
    """Model 1 of 3: counts-weighted loss == library mlp + MSELoss + Adam on the resampled rows."""
    gen = np.random.default_rng(2)
    x, y, xt, _ = bg.make_data(12, 7, 0.3, gen)
    params = bg.init_mlps(3, 5, gen)
    idx, counts = bg.bootstrap_counts(3, 12, gen)
    trained = bg.train_mlps(params, x, y, counts, steps=25, lr=0.01)
    model = mlp([1, 5, 5, 1], activation="tanh", rng=0).astype(np.float64)
    linears = [m for m in model.modules() if type(m).__name__ == "Linear"]
    for j, lin in enumerate(linears):
        lin.weight.data[...] = params[2 * j][1].T
        lin.bias.data[...] = params[2 * j + 1][1, 0]
    opt, loss = Adam(model.parameters(), lr=0.01), MSELoss()
    for _ in range(25):
        opt.zero_grad()
        loss(model(x[idx[1]]), y[idx[1]][:, None])
        model.backward(loss.backward())
        opt.step()
    model.eval()
    assert not np.allclose(linears[2].weight.data, params[4][1].T)
    for j, lin in enumerate(linears):
        np.testing.assert_allclose(lin.weight.data, trained[2 * j][1].T, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model(xt)[:, 0], bg.forward(trained, xt)[0][1], rtol=1e-9)


def test_bad_ks_are_rejected(run_quick):
    with pytest.raises(ValueError, match="ks"):
        run_quick("bagging", overrides=["ks=1,64"])
