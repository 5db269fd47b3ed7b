"""The depth-width lab: quick preset, the Eggholder function, the predict-the-mean baseline and
R^2, "did not learn" instead of a ranking, comparisons of depths by their mean over
configurations (paired by seed), selection on the validation split, config validation, and
resuming a run in pieces."""
import json
import os

import numpy as np
import pytest

from mlcvlab.labs import depth_width, stats
from mlcvlab.labs.depth_width import configurations, eggholder, make_data, summarize

REPORT_KEYS = ["rows", "curve", "finished", "n_runs", "n_configs", "complete", "best_name",
               "best_val_rmse", "best_test_rmse", "best_test_r2", "best_params", "best_learned",
               "depth_summary", "not_learned_depths", "comparisons", "baseline_test_rmse",
               "baseline_val_rmse", "n_train", "n_val", "n_test", "y_std", "target_range",
               "seeds", "preset"]
SMALL = ["widths=16,32", "max_total=32", "depths=1,2", "epochs=4", "n_points=1500", "seeds=1"]


def _params(widths, batchnorm=True):
    """Hand count: Linear weights + biases, plus BN gamma/beta after every hidden layer."""
    sizes = [2, *widths, 1]
    linear = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return linear + (2 * sum(widths) if batchnorm else 0)


def test_eggholder_known_minimum():
    assert eggholder(np.array(512.0), np.array(404.2319)) == pytest.approx(-959.6407, abs=1e-3)


def test_configurations_respect_the_budget():
    cfgs = configurations([1, 2, 3], [16, 32, 64, 128, 256, 512], 512)
    assert all(sum(c) <= 512 for c in cfgs)
    assert (512,) in cfgs and (256, 256) in cfgs and (128, 256, 128) in cfgs
    assert [len([c for c in cfgs if len(c) == d]) for d in (1, 2, 3)] == [6, 25, 112]


def test_validation_split_is_held_out_of_training():
    d = make_data(1000, 0.3, 0.2, seed=0, val_fraction=0.1)
    assert (len(d["y_train"]), len(d["y_val"]), len(d["y_test"])) == (720, 80, 200)
    rows = {tuple(x) for x in d["X_train"]}
    assert not rows & {tuple(x) for x in d["X_val"]} and not rows & {tuple(x)
                                                                      for x in d["X_test"]}


@pytest.fixture(scope="module")
def quick_run(run_quick):
    return run_quick("depth-width")


def test_depth_width_quick_via_api(quick_run):
    run = quick_run
    run.assert_outputs(keys=REPORT_KEYS,
                       files=("report.md", "networks.csv", "depths.csv", "curves.csv", "rmse.png",
                              "time_vs_params.png"))
    res = run.results
    assert res["preset"] == "quick" and res["seeds"] == [0, 1]
    assert res["complete"] and res["finished"] == res["n_runs"] == 2 * 11
    base = res["baseline_test_rmse"]
    for row in res["rows"]:
        # batch norm in every depth (the study's hand-out had none in the 1-layer nets)
        assert row["batchnorm"] and row["params"] == _params(row["widths"])
        assert np.isfinite(row["test_rmse"]) and row["test_rmse"] > 0
        assert row["test_r2"] == pytest.approx(1 - (row["test_rmse"] / base) ** 2)
        assert row["learned"] == (row["test_r2"] >= 0.1)
    # the depth summary averages all configurations of a depth (3, 4, 4), per seed
    d3 = [r for r in res["depth_summary"] if r["depth"] == 3][0]
    assert d3["configurations"] == 4 and d3["seeds"] == 2
    per_seed = [np.mean([r["test_rmse"] for r in res["rows"] if r["depth"] == 3 and r["seed"] == s])
                for s in (0, 1)]
    assert d3["mean_test_rmse"] == pytest.approx(np.mean(per_seed))
    # the best network is the one with the lowest validation RMSE
    by_name = {}
    for r in res["rows"]:
        by_name.setdefault(r["name"], []).append(r["val_rmse"])
    assert res["best_name"] == min(by_name, key=lambda n: np.mean(by_name[n]))


def test_report_prints_the_baseline_and_says_did_not_learn(quick_run):
    res = quick_run.results
    report = quick_run.assert_report("Predict-the-mean baseline",
                                     f"test RMSE {res['baseline_test_rmse']:.2f}",
                                     "test_r2", substituted=False)
    for row in res["depth_summary"]:
        if not row["learned"]:
            assert f"{row['arm']}: did not learn" in report
    # the old unfounded ranking sentence is gone; only computed comparisons compare depths
    assert "error is lower" not in report and "Best test RMSE per depth" not in report
    for c in res["comparisons"]:
        assert stats.sentence(c, 3) in report
    if len([r for r in res["depth_summary"] if r["learned"]]) < 2:
        assert res["comparisons"] == [] and "No comparison of depths" in report


def _fake_train(rmse_of):
    """A train_config stand-in: a finished result whose RMSEs come from rmse_of(hidden, seed)."""
    def fake(hidden, data, config, folder, max_epochs=None, seed=None, batchnorm=True):
        test, val = rmse_of(tuple(hidden), seed, batchnorm)
        return {"name": depth_width.config_name(hidden), "depth": len(hidden),
                "widths": list(hidden), "seed": seed, "batchnorm": batchnorm,
                "total_units": sum(hidden), "params": 10 * sum(hidden) + len(hidden),
                "test_rmse": test, "val_rmse": val, "train_rmse": test, "train_seconds": 1.0,
                "train_cpu_seconds": 0.1 * sum(hidden) + seed, "epochs": config["epochs"],
                "final_train_loss": 0.1}, 0
    return fake


def test_depths_that_learned_are_compared_paired_by_seed(run_quick, tmp_path, monkeypatch):
    # deeper is better by 40 function units on every seed; seeds add a shared offset; the
    # network with the lowest validation RMSE is not the one with the lowest test RMSE
    def rmse_of(hidden, seed, bn):
        # a little seed-to-seed noise: identical differences on every seed would be a
        # zero-width interval, which stats does not count as evidence from 3 seeds
        jitter = 0.4 * np.sin(3.1 * seed + len(hidden) + (0.7 if bn else 0.0))
        test = (200.0 - 40 * len(hidden) + 7 * seed + (0 if bn else 15) + 0.01 * sum(hidden)
                + jitter)
        val = test + (-150 if hidden == (16,) else 0)
        return test, val
    monkeypatch.setattr(depth_width, "train_config", _fake_train(rmse_of))
    run = run_quick("depth-width", tmp_path / "fake",
                    overrides=["seeds=3", "batchnorm=both", "depths=1,2,3"])
    res = run.saved()
    comps = res["comparisons"]
    # 3 pairs of depths within each batch-norm arm, and BN vs no BN at each depth
    assert len(comps) == 3 * 2 + 3
    for c in comps:
        stats.check_comparison(c)
        assert c["n_seeds"] == 3 and c["metric"].startswith("test RMSE")
    c13 = [c for c in comps if c["a"] == "1 hidden layer, BN" and c["b"] == "3 hidden layers, BN"]
    assert len(c13) == 1 and c13[0]["verdict"] == "b better"
    bn1 = [c for c in comps if c["a"] == "1 hidden layer, BN" and c["b"] == "1 hidden layer, no BN"]
    assert bn1[0]["verdict"] == "a better" and bn1[0]["diff"] == pytest.approx(-15, abs=1)
    report = run.report()
    assert "## Comparisons of depths (paired by seed)" in report
    for c in comps:
        assert stats.sentence(c, 3) in report
    assert res["best_name"] == "d1_16 (BN)"               # chosen on validation, not test
    assert "Chosen on the validation split: d1_16 (BN)" in report
    assert res["not_learned_depths"] == [] and ": did not learn" not in report


def test_summarize_does_not_rank_depths_that_did_not_learn():
    rows = []
    for seed in (0, 1, 2):
        for hidden, r2 in (((16,), 0.02), ((32,), 0.05), ((16, 16), 0.5), ((8, 8), 0.4),
                           ((4, 4, 4), 0.6)):
            rmse = 300 * np.sqrt(1 - r2) + seed
            rows.append({"name": depth_width.config_name(hidden), "depth": len(hidden),
                         "batchnorm": True, "seed": seed, "total_units": sum(hidden),
                         "params": sum(hidden), "test_rmse": rmse, "val_rmse": rmse,
                         "test_r2": 1 - (rmse / 300) ** 2, "train_cpu_seconds": 1.0})
    res = summarize(rows, len(rows), [0, 1, 2])
    assert res["not_learned_depths"] == ["1 hidden layer"]
    assert [(c["a"], c["b"]) for c in res["comparisons"]] == [("2 hidden layers",
                                                               "3 hidden layers")]


@pytest.mark.parametrize("override, key", [("lr=nan", "lr"), ("seeds=0", "seeds"),
                                           ("batchnorm=some", "batchnorm"),
                                           ("val_fraction=0", "val_fraction"),
                                           ("epochs=-1", "epochs"), ("momentum=1", "momentum"),
                                           ("widths=0,16", "widths")])
def test_bad_config_values_are_refused_before_any_work(run_quick, tmp_path, override, key):
    with pytest.raises(ValueError, match=key):
        run_quick("depth-width", tmp_path / "bad", overrides=[override])
    assert not (tmp_path / "bad" / "configs").exists()


def test_resume_in_pieces_matches_an_uninterrupted_run(run_quick, tmp_path):
    whole = run_quick("depth-width", tmp_path / "whole", overrides=SMALL).results
    out = tmp_path / "pieces"
    first = out / "configs" / "s0-bn" / "d1_16"
    part = run_quick("depth-width", out, overrides=SMALL + ["epoch_budget=3"]).results
    assert not part["complete"] and part["finished"] == 0           # stopped inside d1_16
    assert (first / "checkpoint.npz").exists()
    assert "Partial run" in (out / "report.md").read_text()
    part = run_quick("depth-width", out, overrides=SMALL + ["epoch_budget=5"]).results
    assert part["finished"] == 2                                    # 1 resumed + 4 new epochs
    done = first / "result.json"
    assert not (first / "checkpoint.npz").exists()
    stamp = os.stat(done).st_mtime_ns
    final = run_quick("depth-width", out, overrides=SMALL).results
    assert final["complete"] and os.stat(done).st_mtime_ns == stamp   # skipped, not retrained
    got = {r["name"]: r for r in final["rows"]}
    for ref in whole["rows"]:
        assert got[ref["name"]]["epochs"] == 4
        assert got[ref["name"]]["test_rmse"] == pytest.approx(ref["test_rmse"], rel=1e-6)
    assert json.loads(done.read_text())["val_rmse"] > 0
    with pytest.raises(ValueError, match="other settings"):
        run_quick("depth-width", out, overrides=SMALL + ["lr=0.5"])


def test_runs_that_diverge_are_reported_not_fatal(run_quick, tmp_path):
    out = tmp_path / "div"
    res = run_quick("depth-width", out, overrides=SMALL + ["lr=100000"]).saved()
    assert res["finished"] == 0 and len(res["diverged_runs"]) == 3
    report = (out / "report.md").read_text()
    assert "Runs that diverged" in report and "without diverging" in report
    done = json.loads((out / "configs" / "s0-bn" / "d1_16" / "result.json").read_text())
    assert done["diverged"]                       # a rerun skips it instead of retraining


def test_time_fit_reads_the_chosen_clock():
    """On "cuda" the time fit is on wall seconds (device time), not on the host's CPU
    seconds, and says which."""
    rows = [{"name": f"d1_{w}", "depth": 1, "batchnorm": True, "seed": 0, "total_units": w,
             "params": 10 * w, "test_rmse": 100.0, "val_rmse": 100.0, "test_r2": 0.5,
             "train_cpu_seconds": 5.0 - w / 100, "train_seconds": w / 10} for w in (8, 16, 32)]
    wall = summarize(rows, 3, [0], "wall")
    assert wall["wall_seconds_per_kparam"] == pytest.approx(10.0)
    assert "cpu_seconds_per_kparam" not in wall
    cpu = summarize(rows, 3, [0])
    assert cpu["cpu_seconds_per_kparam"] == pytest.approx(-1.0)
    assert "wall_seconds_per_kparam" not in cpu


def test_device_setting_is_cpu_by_default_and_cuda_needs_a_gpu(run_quick, tmp_path):
    from mlcvlab.labs.registry import get_lab
    spec = get_lab("depth-width")
    assert all(spec.preset(p)["device"] == "cpu" for p in spec.presets())
    assert "device" not in depth_width._RUN_KEYS     # a resumed run may change device
    with pytest.raises(RuntimeError, match="no CUDA device found|CuPy is not installed"):
        run_quick("depth-width", tmp_path / "gpu", overrides=["device=cuda"])
    assert not (tmp_path / "gpu" / "configs").exists()
