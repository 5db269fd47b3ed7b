"""The conv-gradients lab: quick preset, the n-growth law of dL/dW, pooling backward."""
import numpy as np
import pytest

from mlcvlab.labs import conv_gradients as cg


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The conv-gradients lab's quick preset, run once for all tests of this file."""
    return run_quick("conv-gradients")


def test_quick_preset_files_and_keys(quick_run):
    quick_run.assert_outputs(
        keys=("growth_rows", "slope_iid", "slope_corr", "slope_derived_exact",
              "slope_corr_derived_exact", "max_rel_err_iid", "max_nonzero_per_window",
              "avg_max_share", "max_grad_at_argmax", "pool_dx_max", "pool_dx_avg"),
        files=("report.md", "grad_std_vs_n.csv", "grad_std_vs_n.png", "pool_gradients.png",
               "pool_backward.csv", "config.json"))
    assert f"{quick_run.results['slope_iid']:.3f}" in quick_run.report()


def test_fitted_growth_rate_matches_derivation(quick_run):
    """std(dL/dW) = (n - k + 1) s_x s_g: slope close to the derived one, each std within 10%."""
    _, res = quick_run
    assert res["slope_iid"] == pytest.approx(res["slope_derived_exact"], abs=0.1)
    assert res["max_rel_err_iid"] < 0.1
    assert res["slope_corr"] > res["slope_iid"] + 0.5     # correlated terms grow like n^2


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
