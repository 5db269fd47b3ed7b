"""The init lab: quick preset, report keys, labels from per-layer ratios, the small-σ arm, the
ReLU variance-propagation law, comparisons over seeds, config validation."""
import numpy as np
import pytest

from mlcvlab.labs import init as init_lab
from mlcvlab.labs import stats


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The init lab's quick preset, run once for all tests of this file."""
    return run_quick("init")


def test_quick_preset_files_and_keys(quick_run):
    saved = quick_run.assert_outputs(
        keys=("summary", "relu_growth", "layers", "act_exploding", "act_vanishing",
              "grad_exploding", "grad_vanishing", "input_std", "factor_explode", "factor_vanish",
              "depth", "width", "comparisons", "seeds_used", "factors"),
        files=("report.md", "summary.csv", "per_layer.csv", "relu_growth.csv",
               "activation_histograms.png", "activation_std.png", "backprop_gradients.png",
               "gradient_norms.png"))
    assert len(saved["summary"]) == 12 and len(saved["layers"]) == 12 * saved["depth"]
    assert len(saved["seeds_used"]) >= 2
    report = quick_run.report()
    for s in saved["summary"]:
        assert f"{s['init']} + {s['activation']}: {s['verdict']}" in report
    assert "**Criterion.**" in report and "*The study's explanation" in report


def test_small_sigma_arm_shows_vanishing_activations(quick_run):
    """N(0, 0.01²): tanh and ReLU activations and gradients shrink layer after layer."""
    _, res = quick_run
    by = {(s["init"], s["activation"]): s for s in res["summary"]}
    for act in ("tanh", "relu"):
        s = by[("normal_small", act)]
        assert s["act_label"] == "vanishing" and s["grad_label"] == "vanishing", s
        assert s["act_factor"] < res["factor_vanish"] and s["act_factor_ci"][1] < 0.3
        assert "activations vanishing" in s["verdict"]
    assert "normal_small+relu" in res["act_vanishing"] and "normal_small+tanh" in \
        res["act_vanishing"]


def test_labels_follow_the_per_layer_ratios(quick_run):
    """Exploding / vanishing are read off the stated thresholds on the per-layer factors."""
    _, res = quick_run
    by = {(s["init"], s["activation"]): s for s in res["summary"]}
    assert by[("normal", "relu")]["act_label"] == "exploding"
    assert by[("normal", "relu")]["grad_label"] == "exploding"
    assert by[("normal", "tanh")]["grad_label"] == "exploding"
    assert "saturated" in by[("normal", "tanh")]["verdict"]
    assert by[("he_normal", "relu")]["act_label"] == "stable"
    assert by[("xavier_normal", "sigmoid")]["grad_label"] == "vanishing"
    for s in res["summary"]:
        for kind in ("act", "grad"):
            f = s[f"{kind}_factor"]
            want = ("exploding" if f > res["factor_explode"] else
                    "vanishing" if f < res["factor_vanish"] else "stable")
            assert s[f"{kind}_label"] == want
            lo, hi = s[f"{kind}_factor_ci"]
            assert lo <= f <= hi


def test_relu_rms_growth_matches_derivation(quick_run):
    """E[h_l^2] = fan_in s^2 / 2 E[h_(l-1)^2]: measured per-layer factor within 10%."""
    _, res = quick_run
    assert {g["init"] for g in res["relu_growth"]} == set(init_lab.INITS)
    for g in res["relu_growth"]:
        assert g["measured factor"] == pytest.approx(g["predicted factor"], rel=0.1), g


def test_comparisons_schema_and_sentences(quick_run):
    saved, report = quick_run.saved(), quick_run.report()
    comps = saved["comparisons"]
    assert len(comps) == 12
    for c in comps:
        stats.check_comparison(c)
        assert c["n_seeds"] == len(saved["seeds_used"]) and c["ci95"][0] is not None
        assert f"- {stats.sentence(c)}" in report
    relu = [c for c in comps if c["a"] == "he_normal + relu"]
    assert relu and all(c["verdict"] == "a better" for c in relu)


def test_probe_gradient_matches_finite_difference():
    """The per-layer gradient the lab reports is dL/dW of the library's backward pass."""
    rng = np.random.default_rng(0)
    model = init_lab.build_net(6, 3, 4, "tanh", "xavier_normal", rng).astype(np.float64)
    x, y = rng.standard_normal((5, 6)), rng.integers(0, 4, 5)
    p = init_lab.probe(model, "tanh", x, y, 0.01)
    W = model[0].weight.data
    eps, (i, j) = 1e-6, (2, 3)
    W[i, j] += eps
    up = init_lab.probe(model, "tanh", x, y, 0.01)["loss"]
    W[i, j] -= 2 * eps
    down = init_lab.probe(model, "tanh", x, y, 0.01)["loss"]
    W[i, j] += eps
    model.zero_grad()
    init_lab.probe(model, "tanh", x, y, 0.01)
    assert model[0].weight.grad[i, j] == pytest.approx((up - down) / (2 * eps), rel=1e-5)
    assert p["grad_norms"][0] == pytest.approx(np.linalg.norm(model[0].weight.grad))
    assert len(p["delta_rms"]) == 3 and all(d > 0 for d in p["delta_rms"])


def test_geometric_factor():
    assert init_lab.geometric_factor([1.0, 2.0, 4.0, 8.0]) == pytest.approx(2.0)
    assert init_lab.geometric_factor([1.0, 0.0]) == 0.0


def test_bad_activation_is_rejected():
    with pytest.raises(ValueError, match="unknown activation"):
        init_lab.build_net(4, 2, 2, "swish", "he_normal", np.random.default_rng(0))


@pytest.mark.parametrize("override, key", [("small_std=0", "small_std"),
                                           ("small_std=nan", "small_std"),
                                           ("factor_explode=0.5", "factor_explode"),
                                           ("width=0", "width"), ("inits=foo", "inits"),
                                           ("seeds=0", "seeds")])
def test_bad_config_values_fail_up_front(run_quick, tmp_path, override, key):
    with pytest.raises(ValueError, match=key):
        run_quick("init", out=tmp_path, overrides=[override])
    assert not (tmp_path / "report.md").exists()
