"""The cyclical lab: quick preset (MLP stand-in on fashion10k), a class-balanced train-accuracy
sample, the batch-size test restarted from the same weights, Smith (2017) Sec. 3.3's lr rule,
train / validation / test, policies compared over seeds, config validation."""
import numpy as np
import pytest

from mlcvlab.labs import stats
from mlcvlab.labs.cyclical import (POLICIES, POLICY_LABELS, balanced_sample, bs_test_range,
                                   speed_to_fixed_best)
from mlcvlab.optim.lr_finder import smith_lr_bounds

REPORT_KEYS = ["lr_test", "lr_test_no_decrease", "lr_min", "lr_max", "lr_ratio", "lr_at_min_loss",
               "lr_rule_of_thumb", "lr_test_tried", "lr_test_diverged", "bs_test", "b_min",
               "b_max", "bs_ratio", "bs_max_tested", "bs_capped", "policy_runs", "policy_rows",
               "policy_summary", "ranking_text", "comparisons", "n_train", "n_val", "n_test",
               "n_check", "check_class_counts", "seeds", "dataset_used", "data_note", "preset"]


def test_batch_size_range_is_capped_at_the_data():
    assert bs_test_range(64, 8192, 8000) == (64, 4096)
    assert bs_test_range(64, 8192, 60_000) == (64, 8192)
    with pytest.raises(ValueError, match="exceeds"):
        bs_test_range(64, 128, 50)


def test_balanced_sample_of_class_sorted_labels():
    y = np.repeat(np.arange(10), 100)             # sorted by class, as the embedded sets were
    idx = balanced_sample(y, 200, seed=0)
    assert np.bincount(y[idx], minlength=10).tolist() == [20] * 10
    assert len(set(idx.tolist())) == 200 and not np.all(np.diff(idx) > 0)   # random order


def test_initial_weights_depend_on_the_seed_only():
    """Paired by seed: every policy of one seed builds the same initial weights."""
    from mlcvlab.labs.cyclical import _QUICK, build_model

    config = dict(_QUICK, seed=0)
    a, b, c = (build_model(config, s).flat().data.copy() for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.fixture(scope="module")
def quick_run(run_quick):
    return run_quick("cyclical")


def test_cyclical_quick_via_api(quick_run):
    run = quick_run
    run.assert_outputs(keys=REPORT_KEYS,
                       files=("report.md", "lr_range_test.csv", "lr_range_test.png",
                              "bs_range_test.csv", "bs_range_test.png", "policies.csv",
                              "policy_runs.csv", "curves.png"))
    res = run.results
    assert res["seeds"] == [0, 1]
    # train accuracy is measured on a class-balanced sample, not on X_train[:n]
    assert res["check_class_counts"] == [50] * 10 and res["n_check"] == 500
    # the validation split is held out of the 2,048 training images; the test split is apart
    assert res["n_train"] + res["n_val"] == 2048 and res["n_val"] > 0 and res["n_test"] == 512
    lrs = res["lr_test"]["lr"]
    assert 2 <= len(lrs) <= 10 and lrs[0] == pytest.approx(1e-9)
    rule = smith_lr_bounds(lrs, res["lr_test"]["smoothed"])
    assert (res["lr_min"], res["lr_max"]) == pytest.approx((rule["base_lr"], rule["max_lr"]))
    assert 0 < res["lr_min"] < res["lr_max"] <= res["lr_at_min_loss"]
    assert not res["lr_test_no_decrease"]
    # every size of the batch-size test trains the same number of steps from the same weights;
    # b_max where the loss stops falling with the size, b_min = b_max / 4
    sizes = list(res["bs_test"]["batch_size"])
    assert sizes == [32, 64, 128, 256, 512]
    assert res["bs_test"]["examples"] == [16 * s for s in sizes]
    bs_rule = smith_lr_bounds(sizes, res["bs_test"]["loss"])
    assert res["b_max"] == sizes[bs_rule["stop_index"]]
    assert res["b_min"] == max(32, res["b_max"] // 4)
    assert set(res["policy_runs"]) == set(POLICIES)
    for name, runs in res["policy_runs"].items():
        assert [r["seed"] for r in runs] == [0, 1]
        for pol in runs:
            hist = pol["history"]
            assert [r["epoch"] for r in hist] == [1, 2, 3, 4]
            assert all(0 <= r["train_acc"] <= 1 and 0 <= r["val_acc"] <= 1 for r in hist)
            assert pol["best_val_acc"] == max(r["val_acc"] for r in hist)
            assert hist[pol["best_epoch"] - 1]["val_acc"] == pol["best_val_acc"]
            assert 0 <= pol["test_acc"] <= 1 and 0 < pol["cpu_seconds"]
    # learning happened: far above the 10% chance level of 10 classes
    assert np.mean([r["test_acc"] for r in res["policy_runs"]["fixed"]]) > 0.4
    cbs = [r["batch_size"] for r in res["policy_runs"]["cbs"][0]["history"]]
    assert all(res["b_min"] <= b <= res["b_max"] for b in cbs)
    clr = [r["lr"] for r in res["policy_runs"]["clr"][0]["history"]]
    assert all(res["lr_min"] - 1e-12 <= v <= res["lr_max"] + 1e-12 for v in clr)


def test_comparisons_and_their_sentences(quick_run):
    res = quick_run.saved()
    comps = [c for c in res["comparisons"] if c not in res["speed_comparisons"]]
    assert [(c["a"], c["b"]) for c in comps] == [
        (POLICY_LABELS["clr"], POLICY_LABELS["fixed"]),
        (POLICY_LABELS["cbs"], POLICY_LABELS["fixed"]),
        (POLICY_LABELS["clr"], POLICY_LABELS["cbs"])]
    runs = res["policy_runs"]
    for c in comps:
        stats.check_comparison(c)
        assert c["n_seeds"] == 2 and c["higher_is_better"]
    # Smith's speed comparison: compared, or listed as censored (never silently dropped)
    assert len(res["speed_comparisons"]) + len(res["speed_censored"]) == 2
    first = comps[0]
    assert first["diff"] == pytest.approx(np.mean([r["test_acc"] for r in runs["clr"]])
                                          - np.mean([r["test_acc"] for r in runs["fixed"]]))
    report = quick_run.assert_report("Sec. 3.3", "slows, becomes ragged, or starts to fall",
                                     "1/3 or 1/4 of max_lr", "class-balanced",
                                     "restarts from the same initial weights",
                                     "the paper has no batch-size test",
                                     "The study's explanation (not a finding of this run)",
                                     substituted=bool(res["data_note"]))
    assert "## Comparisons of policies (paired by seed)" in report
    for c in res["comparisons"]:
        assert report.count(stats.sentence(c, 3)) == 2       # the section and the conclusions
    for line in res["speed_censored"]:
        assert line in report
    assert "Model stand-in" in report and "validation = the test split" not in report


@pytest.mark.parametrize("override, key", [("lr_test_min=nan", "lr_test_min"),
                                           ("seeds=0", "seeds"), ("model=resnet", "model"),
                                           ("val_fraction=1", "val_fraction"),
                                           ("epochs=0", "epochs"), ("bs_steps=-5", "bs_steps"),
                                           ("decay_per_epoch=0", "decay_per_epoch")])
def test_bad_config_values_are_refused_before_any_work(run_quick, tmp_path, override, key):
    with pytest.raises(ValueError, match=key):
        run_quick("cyclical", tmp_path / "bad", overrides=[override])
    assert not (tmp_path / "bad" / "report.md").exists()


def test_a_policy_that_diverges_is_reported_and_left_out(run_quick, tmp_path, monkeypatch):
    """An lr far too high makes the fixed-lr runs diverge in their first epoch: the run still
    finishes, the report says so, and no comparison uses the diverged policy."""
    from mlcvlab.labs import cyclical

    real = cyclical.run_lr_test

    def too_high(data, config):
        res = real(data, config)
        res.update(lr_max=1e6, lr_min=1e-3)
        return res

    monkeypatch.setattr(cyclical, "run_lr_test", too_high)
    run = run_quick("cyclical", tmp_path / "div", overrides=["epochs=2", "lr_test_epochs=1"])
    res = run.saved()
    assert POLICY_LABELS["fixed"] in res["left_out"]
    assert all(POLICY_LABELS["fixed"] not in (c["a"], c["b"]) for c in res["comparisons"])
    report = run.report()
    assert "Runs that diverged" in report and "no epoch finished" in report


def _run(seed, val_accs):
    return {"seed": seed, "best_val_acc": max(val_accs),
            "history": [{"val_acc": v} for v in val_accs]}


def test_speed_to_fixed_best_counts_iterations_for_clr_and_epochs_for_cbs():
    runs = {"fixed": [_run(0, [0.80, 0.85, 0.90]), _run(1, [0.70, 0.88, 0.87])],
            "clr": [_run(0, [0.86, 0.91, 0.92]), _run(1, [0.88, 0.89, 0.90])],
            "cbs": [_run(0, [0.70, 0.80, 0.85]), _run(1, [0.80, 0.90, 0.90])]}
    out = speed_to_fixed_best(runs, n_train=1000, batch_size=100)    # 10 iterations an epoch
    (clr,) = out["speed_comparisons"]               # cbs never reached 0.90 on seed 0
    assert clr["a"] == POLICY_LABELS["clr"] and clr["b"] == POLICY_LABELS["fixed"]
    # fixed reached its best at epochs 3 and 2; CLR reached it at epochs 2 and 1
    assert clr["a_mean"] == 15.0 and clr["b_mean"] == 25.0 and clr["diff"] == -10.0
    assert clr["metric"].startswith("iterations to the fixed policy's best validation accuracy")
    assert not clr["higher_is_better"]
    assert out["speed_censored"] == [
        f"{POLICY_LABELS['cbs']} vs {POLICY_LABELS['fixed']}: {POLICY_LABELS['cbs']} reached "
        "the fixed policy's best validation accuracy in 1 of 2 seeds"]
    cbs_rows = [r for r in out["speed_rows"] if r["unit"] == "epochs"]
    assert [r["to reach it"] for r in cbs_rows] == ["not reached", 2, 3, 2]
