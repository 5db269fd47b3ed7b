"""The conv-gradients lab: quick preset, the n-growth law of dL/dW, pooling backward."""
import numpy as np
import pytest

from mlcvlab.labs import conv_gradients as cg
from mlcvlab.labs import run_lab


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The conv-gradients lab's quick preset, run once for all tests of this file."""
    return run_quick("conv-gradients")


def test_quick_preset_files_and_keys(quick_run):
    saved = quick_run.assert_outputs(
        keys=("growth_rows", "slope_iid", "slope_corr", "slope_iid_ci", "slope_corr_ci",
              "slope_derived_exact", "slope_corr_derived_exact", "max_rel_err_iid",
              "max_rel_err_corr", "prediction_checks", "n_seeds", "max_nonzero_per_window",
              "avg_max_share", "max_grad_at_argmax", "pool_dx_max", "pool_dx_avg",
              "comparisons", "preset"),
        files=("report.md", "grad_std_vs_n.csv", "grad_std_vs_n.png", "slope_checks.csv",
               "pool_gradients.png", "pool_backward.csv", "config.json"))
    assert saved["comparisons"] == []             # measured vs derived: no two arms compared
    report = quick_run.report()
    assert f"{quick_run.results['slope_iid']:.3f}" in report
    assert "not a finding of this run" in report


def test_both_cases_get_the_same_tolerance_check(quick_run):
    """The correlated case is checked like the independent one: fitted slope next to the
    derived one, a 95% interval over seeds, a verdict and the tolerance, in results and in the
    report's conclusions."""
    res, report = quick_run.results, quick_run.report()
    checks = {c["case"]: c for c in res["prediction_checks"]}
    assert set(checks) == {"iid", "corr"}
    conclusions = report.split("## Conclusions")[1]
    for case, derived in (("iid", res["slope_derived_exact"]),
                          ("corr", res["slope_corr_derived_exact"])):
        c = checks[case]
        assert c["predicted"] == pytest.approx(derived) and c["n_seeds"] == 3
        lo, hi = c["ci95"]
        assert lo < c["measured_mean"] < hi and len(c["values"]) == 3
        assert c["inside"] == (lo <= derived <= hi)
        assert c["verdict"] == ("prediction inside the 95% interval" if c["inside"]
                                else "prediction outside the 95% interval")
        assert c["within_tolerance"] == (abs(c["measured_mean"] - derived) <= res["slope_tol"])
        label = cg.CASES[case]
        assert f"{label}: fitted log-log slope {c['measured_mean']:.3f}" in conclusions
        assert f"against the derived {derived:.3f}: {c['verdict']}" in conclusions
    rows = [r for r in res["growth_rows"] if r["case"] == cg.CASES["corr"]]
    assert len(rows) == len(res["sizes"]) and all(r["ci95 lo"] is not None for r in rows)


def test_fitted_growth_rate_matches_derivation(quick_run):
    """std(dL/dW) = (n - k + 1) s_x s_g and (n - k + 1)^2 s_x s_g: both derived slopes inside
    their intervals, each std within 10% (seeded quick run)."""
    _, res = quick_run
    assert all(c["inside"] and c["within_tolerance"] for c in res["prediction_checks"])
    assert res["max_rel_err_iid"] < 0.02 and res["max_rel_err_corr"] < 0.1
    assert res["slope_corr"] > res["slope_iid"] + 0.5     # correlated terms grow like n^2


def test_prediction_check_says_outside_when_it_is():
    c = cg.prediction_check("x", [1.0, 1.1, 0.9, 1.05], 2.0, 0.1)
    assert c["inside"] is False and not c["within_tolerance"]
    assert c["verdict"] == "prediction outside the 95% interval"
    c = cg.prediction_check("x", [1.0, 1.1, 0.9, 1.05], 1.0, 0.1)
    assert c["inside"] and c["within_tolerance"]


@pytest.mark.parametrize("key,value", [("seeds", "1"), ("repeats", "0"), ("x_std", "0"),
                                       ("g_std", "nan"), ("slope_tol", "-1"), ("sizes", "8"),
                                       ("sizes", "2,16"), ("pool_image", "7"), ("kernel", "0")])
def test_bad_config_fails_up_front_naming_the_key(tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        run_lab("conv-gradients", quick=True, out_dir=str(tmp_path), show_progress=False,
                overrides=[f"{key}={value}"])
    assert not (tmp_path / "report.md").exists()


def test_pool_backward_routes_and_spreads(quick_run):
    _, res = quick_run
    k = res["pool_kernel"]
    assert res["max_nonzero_per_window"] == 1.0 and res["max_grad_at_argmax"]
    assert res["avg_nonzero_per_window"] == k * k
    dx_avg, dy = np.array(res["pool_dx_avg"]), np.array(res["pool_dy"])
    np.testing.assert_allclose(dx_avg, np.kron(dy, np.ones((k, k))) / k ** 2, rtol=1e-6)
    dx_max = np.array(res["pool_dx_max"])
    assert dx_max.sum() == pytest.approx(dy.sum(), rel=1e-5)


def test_too_small_image_is_rejected():
    config = dict(cg._COMMON, repeats=1)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        cg.weight_grad_samples(2, config, np.random.default_rng(0), correlated=False)
