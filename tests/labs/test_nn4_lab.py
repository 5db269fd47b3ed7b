"""The nn4 lab: NN4 with SyncSGD for K = 1, 2, 4 on a small quick run."""
import numpy as np
import pytest

import mlcvlab.labs.nn4  # noqa: F401 - registers the lab "nn4"

OVERRIDES = ["epochs=2", "n_train=512", "n_test=200", "hidden=32,32,32"]


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The nn4 lab's quick preset, made smaller, run once for all tests of this file."""
    return run_quick("nn4", overrides=OVERRIDES)


def test_runs_for_each_k(quick_run):
    _, results = quick_run
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


def test_report_and_files(quick_run):
    saved = quick_run.assert_outputs(files=("test_accuracy.csv", "curves.csv", "curves.png",
                                            "results.json"))
    quick_run.assert_report("K = 4", substituted=saved["used"] != "mnist")
    assert np.isclose(saved["k1_acc"], quick_run.results["runs"][0]["test_acc"])


def test_workers_must_divide_the_batch(run_quick):
    with pytest.raises(ValueError, match="dividing batch_size"):
        run_quick("nn4", overrides=["workers=1,3"])
