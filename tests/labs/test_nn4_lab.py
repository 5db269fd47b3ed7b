"""The nn4 lab: NN4 with SyncSGD for K = 1, 2, 4 over paired seeds, curves on a validation
split, comparisons K vs K = 1 with intervals and verdicts."""
import numpy as np
import pytest

import mlcvlab.labs.nn4  # noqa: F401 - registers the lab "nn4"
from mlcvlab.labs import stats

OVERRIDES = ["epochs=2", "n_train=512", "n_test=200", "hidden=32,32,32", "seeds=2"]


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The nn4 lab's quick preset, made smaller, run once for all tests of this file."""
    return run_quick("nn4", overrides=OVERRIDES)


def test_runs_for_each_seed_and_k(quick_run):
    _, results = quick_run
    assert [(r["seed"], r["K"]) for r in results["runs"]] == \
        [(s, k) for s in (0, 1) for k in (1, 2, 4)]
    for r in results["runs"]:
        assert r["per_worker_batch"] == 64 // r["K"]
        assert len(r["curve"]) == 2 and 0 <= r["test_acc"] <= 1
        assert "val_acc" in r["curve"][0] and "test_acc" not in r["curve"][0]
        assert r["test_acc"] > 0.2        # 10 classes: clearly above chance after 2 epochs
    # different K, different per-worker BN statistics: the runs of one seed are not identical
    assert len({r["final_train_loss"] for r in results["runs"] if r["seed"] == 0}) == 3
    # the validation split is held out of the 512 training images
    assert results["n_train"] + results["n_val"] == 512 and results["n_val"] > 0


def test_comparisons_are_paired_over_seeds(quick_run):
    _, results = quick_run
    comps = results["comparisons"]
    assert [(c["a"], c["b"], c["metric"]) for c in comps] == [
        (f"K={k}", "K=1", m) for k in (2, 4) for m in ("test accuracy", "final training loss")]
    runs = results["runs"]
    for c in comps:
        stats.check_comparison(c)
        assert c["n_seeds"] == 2
        if c["metric"] == "test accuracy":
            a = [r["test_acc"] for r in runs if r["K"] == c["K"]]
            b = [r["test_acc"] for r in runs if r["K"] == 1]
            assert c["diff"] == pytest.approx(np.mean(a) - np.mean(b))


def test_report_and_files(quick_run):
    saved = quick_run.assert_outputs(keys=("comparisons", "preset", "summary_rows"),
                                     files=("test_accuracy.csv", "runs.csv", "curves.csv",
                                            "curves.png", "results.json"))
    report = quick_run.assert_report("K = 4", "validation", "The study's explanation",
                                     substituted=saved["used"] != "mnist")
    for c in saved["comparisons"]:
        assert stats.sentence(c) in report
    conclusions = report.split("## Conclusions")[1]
    for c in saved["comparisons"]:
        if c["metric"] == "test accuracy":
            assert stats.sentence(c) in conclusions


@pytest.mark.parametrize("override, match", [
    ("workers=1,3", "dividing batch_size"), ("lr=nan", "lr"), ("lr=0", "lr"),
    ("epochs=0", "epochs"), ("val_fraction=0", "val_fraction"), ("p_hidden=1", "p_hidden"),
    ("seeds=0", "seeds"), ("hidden=32,32", "hidden")])
def test_bad_config(run_quick, override, match):
    with pytest.raises(ValueError, match=match):
        run_quick("nn4", overrides=[override])
