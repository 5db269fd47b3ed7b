"""The bagging lab: quick preset, the ensemble-error formula, vectorized MLPs vs the library."""
import itertools

import numpy as np
import pytest

from mlcvlab.labs import bagging as bg
from mlcvlab.labs import stats
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
              "dropout_mse_mean", "bagging_gap", "bagging_gap_ci", "comparisons", "seeds_used",
              "table"),
        files=("report.md", "ensemble_error.csv", "moments.csv", "ensemble_error.png",
               "fits.png", "config.json"))
    res, report = quick_run.results, quick_run.report()
    assert f"{res['bagging_v']:.4f}" in report and f"{res['dropout_mse_mean']:.4f}" in report
    assert len(res["seeds_used"]) >= 2
    assert "Ranking" not in report and "best:" not in report


def test_comparisons_schema_and_sentences(quick_run):
    """Every comparison (ensembles, dropout, correlation, formula vs measurement) is a paired
    comparison over the seeds, and its sentence is in report.md."""
    saved, report = quick_run.saved(), quick_run.report()
    comps = saved["comparisons"]
    assert len(comps) == 7
    for c in comps:
        stats.check_comparison(c)
        assert c["n_seeds"] == len(saved["seeds_used"]) and c["ci95"][0] is not None
        assert f"- {stats.sentence(c)}" in report
    conclusions = report.split("## Conclusions")[1]
    for c in comps:
        assert stats.sentence(c) in conclusions


def test_predicted_vs_measured_gap_has_its_interval(quick_run):
    """The gap measured - v/K - (K-1)c/K is reported per K with a 95% interval over seeds, and
    the K = kmax gap is in report.md with that interval; the fixed explanation is labelled."""
    res, report = quick_run.results, quick_run.report()
    for name in ("bagging", "init_only"):
        for r in res[name]["rows"]:
            gap = np.subtract(r["measured_per_seed"], r["formula_per_seed"])
            assert r["gap"] == pytest.approx(gap.mean())
            s = stats.summarize(gap)
            assert [r["gap_ci_low"], r["gap_ci_high"]] == pytest.approx(s["ci95"])
        assert f"gap {res[f'{name}_gap']:+.4f} ({res[f'{name}_gap_ci']})" in report
    assert "95% CI [" in res["bagging_gap_ci"]
    assert "*The study's explanation (not a finding of this run):* a gap between" in report


def test_bagging_decorrelates_and_averaging_helps(quick_run):
    """Bootstrap errors are less correlated than init-only ones (mean over seeds), so the bagged
    ensemble gains more; with pool B's own moments the measured error is the formula (up to
    subset sampling)."""
    _, res = quick_run
    assert res["bagging_rho"] < res["init_only_rho"]
    assert res["bagging_gain"] > 1.5 and res["bagging_gain"] > res["init_only_gain"]
    rows = res["bagging"]["rows"]
    assert all(a["measured"] > b["measured"] for a, b in zip(rows, rows[1:]))
    for name in ("bagging", "init_only"):
        r = res[name]["rows"][-1]                     # K = pool size: one subset, exact
        assert r["measured"] == pytest.approx(r["formula_poolB"], rel=1e-9)


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


@pytest.mark.parametrize("override, key", [("ks=1,64", "ks"), ("lr=nan", "lr"),
                                           ("p_dropout=1", "p_dropout"),
                                           ("noise_std=-1", "noise_std"),
                                           ("models_per_pool=1", "models_per_pool"),
                                           ("steps=0", "steps"), ("seeds=0", "seeds")])
def test_bad_config_values_fail_up_front(run_quick, tmp_path, override, key):
    with pytest.raises(ValueError, match=key):
        run_quick("bagging", out=tmp_path, overrides=[override])
    assert not (tmp_path / "report.md").exists()
