"""The dying-relu lab: quick preset, the vectorized trainer against the library, Wilson CI."""
import numpy as np
import pytest

from mlcvlab import nn, optim
from mlcvlab.labs import dying_relu as dr
from mlcvlab.labs import stats


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The dying-relu lab's quick preset, run once for all tests of this file."""
    return run_quick("dying-relu")


def test_quick_preset_writes_report_and_keys(quick_run):
    quick_run.assert_outputs(
        keys=("abs_relu_strict_fraction", "abs_relu_strict_ci_low", "abs_relu_strict_ci_high",
              "abs_leaky_strict_fraction", "abs_relu_loose_fraction",
              "abs_relu_born_dead_fraction", "abs_leaky_median_r2", "collapse_tol", "table"),
        files=("report.md", "collapse.csv", "runs.csv", "collapse_fraction.png",
               "examples_abs_relu.png", "examples_abs_leaky.png", "config.json"))
    res, report = quick_run.results, quick_run.report()
    assert f"{res['abs_relu_strict_fraction']:.1%}" in report


def test_comparisons_schema_and_sentences(quick_run):
    """ReLU vs Leaky ReLU per target and criterion, each as a stats comparison whose sentence
    (computed verdict) is in report.md, in results.json as saved."""
    saved, report = quick_run.saved(), quick_run.report()
    comps = saved["comparisons"]
    assert saved["preset"] == "quick" and len(comps) == 2 * len(saved["targets"])
    for c in comps:
        stats.check_comparison(c)
        assert c["a"] == "ReLU" and c["b"].startswith("LeakyReLU")
        lo, hi = c["ci95"]
        assert lo <= c["diff"] <= hi and c["n_seeds"] == saved["total_runs"]
        assert f"- {stats.sentence(c)}" in report
    assert f"- {stats.sentence(comps[0])}" in report.split("## Conclusions")[1]


def test_paper_quote_with_measured_interval(quick_run):
    """The paper's ">90%" stands next to each measured fraction and its Wilson interval, with
    the criterion stated and a verdict computed from the interval."""
    res, report = quick_run.results, quick_run.report()
    assert '">90%"' in report and "**Collapse criterion.**" in report
    conclusions = report.split("## Conclusions")[1]
    for arm in ("relu", "leaky"):
        lo, hi = res[f"abs_{arm}_strict_ci_low"], res[f"abs_{arm}_strict_ci_high"]
        assert (lo, hi) == tuple(stats.binomial_interval(res[f"abs_{arm}_strict_count"],
                                                         res["total_runs"])["ci95"])
        line = next(ln for ln in conclusions.splitlines()
                    if f"{res[f'abs_{arm}_strict_fraction']:.1%} of" in ln)
        assert f"95% Wilson CI {lo:.1%}-{hi:.1%}" in line and '">90%"' in line
        assert res[f"abs_{arm}_paper_verdict"] in line


def test_paper_verdict_from_the_interval():
    assert dr.paper_verdict(0.92, 0.97).startswith("above 90%")
    assert dr.paper_verdict(0.5, 0.7).startswith("below 90%")
    assert dr.paper_verdict(0.85, 0.95).startswith("not separable")


@pytest.mark.parametrize("override, key", [("lr=nan", "lr"), ("lr=0", "lr"),
                                           ("runs=0", "runs"), ("leaky_slope=-0.1", "leaky_slope"),
                                           ("collapse_tol=0", "collapse_tol"),
                                           ("epochs=-1", "epochs"), ("seeds=0", "seeds")])
def test_bad_config_values_fail_up_front(run_quick, tmp_path, override, key):
    with pytest.raises(ValueError, match=key):
        run_quick("dying-relu", out=tmp_path, overrides=[override])
    assert not (tmp_path / "report.md").exists()


def test_relu_collapses_and_leaky_relu_collapses_less(quick_run):
    """Lu et al.'s finding: most width-2 depth-10 ReLU nets end constant; Leaky ReLU fewer."""
    _, res = quick_run
    assert res["abs_relu_strict_fraction"] > 0.5
    assert res["abs_relu_strict_ci_low"] <= res["abs_relu_strict_fraction"] \
        <= res["abs_relu_strict_ci_high"]
    assert res["abs_leaky_strict_fraction"] < res["abs_relu_strict_fraction"]
    # a hidden layer dead for every grid input makes the output constant (never the reverse
    # for Leaky ReLU, which has no dead units); nearly all ReLU collapses are of this kind
    assert res["abs_relu_dead_layer_count"] <= res["abs_relu_strict_count"]
    assert res["abs_relu_dead_layer_count"] >= 0.9 * res["abs_relu_strict_count"]
    assert res["abs_leaky_dead_layer_count"] == 0


def _library_model(params, slope):
    layers = []
    for i, (W, b) in enumerate(params):
        lin = nn.Linear(W.shape[2], W.shape[1])
        layers.append(lin)
        if i < len(params) - 1:
            layers.append(nn.ReLU() if slope == 0 else nn.LeakyReLU(slope))
    model = nn.Sequential(*layers).astype(np.float64)
    for lin, (W, b) in zip([m for m in model if isinstance(m, nn.Linear)], params):
        lin.weight.data[...] = W[0]
        lin.bias.data[...] = b[0]
    return model


@pytest.mark.parametrize("slope", [0.0, 0.01])
def test_vectorized_training_matches_library_sequential(slope):
    """Run 1 of 3 vectorized nets == mlcvlab.nn Sequential + optim.Adam + MSELoss, same batches."""
    rng = np.random.default_rng(3)
    runs, n, epochs, batch = 3, 200, 3, 64          # 200 = 3 * 64 + 8: a short last batch
    X = rng.uniform(-np.sqrt(7), np.sqrt(7), (runs, n))
    Y = np.abs(X)
    params = dr.init_nets(runs, 6, 2, rng)
    # pick a run that is not dead at init so that the comparison exercises real updates
    alive = np.flatnonzero(dr.grid_stats(params, "abs", 101, slope)["std_ratio"] > 1e-3)
    assert alive.size > 0
    r = int(alive[0])
    one = [(W[r:r + 1].copy(), b[r:r + 1].copy()) for W, b in params]
    model = _library_model(one, slope)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    loss = nn.MSELoss()

    dr.train_nets(params, X, Y, np.random.default_rng(7), epochs, batch, 1e-2, slope)

    order_rng = np.random.default_rng(7)
    for _ in range(epochs):
        order = dr.epoch_order(order_rng, runs, n)[r]
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            opt.zero_grad()
            pred = model(X[r, idx][:, None])
            loss(pred, Y[r, idx][:, None])
            model.backward(loss.backward())
            opt.step()
    lins = [m for m in model if isinstance(m, nn.Linear)]
    moved = 0.0
    for lin, (W, b), (W0, _) in zip(lins, params, one):
        np.testing.assert_allclose(W[r], lin.weight.data, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(b[r], lin.bias.data, rtol=1e-9, atol=1e-12)
        moved = max(moved, float(np.abs(W[r] - W0[0]).max()))
    assert moved > 1e-3          # training really changed the weights


def test_wilson_interval_known_values():
    lo, hi = dr.wilson_interval(91, 100)
    assert lo == pytest.approx(0.8377, abs=1e-4) and hi == pytest.approx(0.9519, abs=1e-4)
    assert dr.wilson_interval(0, 50)[0] == 0.0 and dr.wilson_interval(50, 50)[1] == 1.0
    with pytest.raises(ValueError, match="wilson_interval"):
        dr.wilson_interval(0, 0)


def test_unknown_target_is_rejected(run_quick):
    with pytest.raises(ValueError, match="unknown target"):
        run_quick("dying-relu", overrides=["targets=nope"])
