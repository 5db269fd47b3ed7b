"""The init lab: quick preset, report keys, and the ReLU variance-propagation law."""
import numpy as np
import pytest

from mlcvlab.labs import init as init_lab


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The init lab's quick preset, run once for all tests of this file."""
    return run_quick("init")


def test_quick_preset_files_and_keys(quick_run):
    saved = quick_run.assert_outputs(
        keys=("summary", "relu_growth", "layers", "healthy", "unhealthy", "input_std",
              "act_explode", "grad_ratio_vanish", "depth", "width"),
        files=("report.md", "summary.csv", "per_layer.csv", "relu_growth.csv",
               "activation_histograms.png", "activation_std.png", "gradient_norms.png"))
    assert len(saved["summary"]) == 9 and len(saved["layers"]) == 9 * saved["depth"]
    report = quick_run.report()
    for s in saved["summary"]:
        assert f"{s['init']} + {s['activation']}: {s['verdict']}" in report


def test_relu_rms_growth_matches_derivation(quick_run):
    """E[h_l^2] = fan_in s^2 / 2 E[h_(l-1)^2]: measured per-layer factor within 10%."""
    _, res = quick_run
    assert {g["init"] for g in res["relu_growth"]} == {"normal", "xavier_normal", "he_normal"}
    for g in res["relu_growth"]:
        assert g["measured factor"] == pytest.approx(g["predicted factor"], rel=0.1), g


def test_verdicts_match_the_classic_picture(quick_run):
    _, res = quick_run
    verdict = {(s["init"], s["activation"]): s["verdict"] for s in res["summary"]}
    assert "activations explode" in verdict[("normal", "relu")]
    assert verdict[("he_normal", "relu")] == "healthy"
    assert verdict[("xavier_normal", "tanh")] == "healthy"
    assert "saturated" in verdict[("normal", "tanh")]
    assert "gradients vanish toward the input" in verdict[("xavier_normal", "sigmoid")]


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


def test_bad_activation_is_rejected():
    with pytest.raises(ValueError, match="unknown activation"):
        init_lab.build_net(4, 2, 2, "swish", "he_normal", np.random.default_rng(0))
