"""The nn4 lab: NN4 with SyncSGD for K = 1, 2, 4 on a small quick run."""
import json

import numpy as np
import pytest

import mlcvlab.labs.nn4  # noqa: F401 - registers the lab "nn4"
from mlcvlab.labs import run_lab

OVERRIDES = ["epochs=2", "n_train=512", "n_test=200", "hidden=32,32,32"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("nn4")
    return run_lab("nn4", quick=True, out_dir=str(out), overrides=OVERRIDES,
                   show_progress=False), out


def test_runs_for_each_k(quick):
    results, _ = quick
    assert [r["K"] for r in results["runs"]] == [1, 2, 4]
    for r in results["runs"]:
        assert r["per_worker_batch"] == 64 // r["K"]
        assert len(r["curve"]) == 2 and 0 <= r["test_acc"] <= 1
        assert r["curve"][-1]["round_loss"] < r["curve"][0]["round_loss"] + 0.5
        assert r["test_acc"] > 0.2        # 10 classes: clearly above chance after 2 epochs
    accs = [r["test_acc"] for r in results["runs"]]
    assert results["spread_points"] == pytest.approx(100 * (max(accs) - min(accs)))
    assert results["best_acc"] == max(accs)
    # different K, different per-worker BN statistics: the runs are not identical
    assert len({r["final_train_loss"] for r in results["runs"]}) == 3


def test_report_and_files(quick):
    results, out = quick
    report = (out / "report.md").read_text()
    assert "{" not in report and "K = 4" in report
    for name in ("test_accuracy.csv", "curves.csv", "curves.png", "results.json"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert np.isclose(saved["k1_acc"], results["runs"][0]["test_acc"])
    if saved["used"] != "mnist":
        assert "Data substitution" in report


def test_workers_must_divide_the_batch():
    with pytest.raises(ValueError, match="dividing batch_size"):
        run_lab("nn4", quick=True, overrides=["workers=1,3"], show_progress=False)
