"""The depth-width lab: quick preset, the Eggholder function, and resuming a run in pieces."""
import os

import numpy as np
import pytest

from mlcvlab.labs.depth_width import configurations, eggholder

REPORT_KEYS = ["rows", "curve", "finished", "n_configs", "complete", "best_name", "best_rmse",
               "best_params", "best_per_depth_text", "common_total", "common_rmse_text",
               "deepest_vs_shallowest", "deep_word", "n_train", "n_test", "y_std", "target_range"]
SMALL = ["widths=16,32", "max_total=32", "depths=1,2", "epochs=4", "n_points=1500"]


def _params(widths):
    """Hand count: Linear weights + biases, plus BN gamma/beta for 2+ hidden layers."""
    sizes = [2, *widths, 1]
    linear = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return linear + (2 * sum(widths) if len(widths) >= 2 else 0)


def test_eggholder_known_minimum():
    assert eggholder(np.array(512.0), np.array(404.2319)) == pytest.approx(-959.6407, abs=1e-3)


def test_configurations_respect_the_budget():
    cfgs = configurations([1, 2, 3], [16, 32, 64, 128, 256, 512], 512)
    assert all(sum(c) <= 512 for c in cfgs)
    assert (512,) in cfgs and (256, 256) in cfgs and (128, 256, 128) in cfgs
    assert [len([c for c in cfgs if len(c) == d]) for d in (1, 2, 3)] == [6, 25, 112]


def test_depth_width_quick_via_api(run_quick):
    run = run_quick("depth-width")
    run.assert_outputs(keys=REPORT_KEYS,
                       files=("report.md", "networks.csv", "curves.csv", "rmse_vs_units.png",
                              "rmse_vs_params.png", "time_vs_params.png"))
    res = run.results
    assert res["complete"] and res["finished"] == res["n_configs"] == 11
    for row in res["rows"]:
        assert row["params"] == _params(row["widths"])
        assert np.isfinite(row["test_rmse"]) and row["test_rmse"] > 0
    assert res["common_total"] == 64
    assert res["best_rmse"] == min(r["test_rmse"] for r in res["rows"])
    # the curve averages the networks with equal totals
    d3 = [r for r in res["rows"] if r["depth"] == 3 and r["total_units"] == 64]
    point = [c for c in res["curve"] if c["depth"] == 3 and c["total_units"] == 64][0]
    assert point["networks"] == len(d3) == 3
    assert point["mean_test_rmse"] == pytest.approx(np.mean([r["test_rmse"] for r in d3]))
    assert f"{res['best_rmse']:.2f}" in run.report()


def test_resume_in_pieces_matches_an_uninterrupted_run(run_quick, tmp_path):
    whole = run_quick("depth-width", tmp_path / "whole", overrides=SMALL).results
    out = tmp_path / "pieces"
    part = run_quick("depth-width", out, overrides=SMALL + ["epoch_budget=3"]).results
    assert not part["complete"] and part["finished"] == 0           # stopped inside d1_16
    assert (out / "configs" / "d1_16" / "checkpoint.npz").exists()
    assert "Partial run" in (out / "report.md").read_text()
    part = run_quick("depth-width", out, overrides=SMALL + ["epoch_budget=5"]).results
    assert part["finished"] == 2                                    # 1 resumed + 4 new epochs
    done = out / "configs" / "d1_16" / "result.json"
    assert not (out / "configs" / "d1_16" / "checkpoint.npz").exists()
    stamp = os.stat(done).st_mtime_ns
    final = run_quick("depth-width", out, overrides=SMALL).results
    assert final["complete"] and os.stat(done).st_mtime_ns == stamp   # skipped, not retrained
    got = {r["name"]: r for r in final["rows"]}
    for ref in whole["rows"]:
        assert got[ref["name"]]["epochs"] == 4
        assert got[ref["name"]]["test_rmse"] == pytest.approx(ref["test_rmse"], rel=1e-6)
    with pytest.raises(ValueError, match="other settings"):
        run_quick("depth-width", out, overrides=SMALL + ["lr=0.5"])
