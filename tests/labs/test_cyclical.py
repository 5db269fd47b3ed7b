"""The cyclical lab: quick preset (MLP stand-in on fashion10k), range tests and policies."""
import pytest

from mlcvlab.labs.cyclical import POLICIES, bs_test_range

REPORT_KEYS = ["lr_test", "lr_test_no_decrease", "lr_min", "lr_max", "lr_ratio", "lr_at_min_loss",
               "lr_test_tried", "lr_test_diverged", "bs_test", "b_min", "b_max", "bs_ratio",
               "bs_max_tested", "bs_capped", "policies", "policy_rows", "ranking_text",
               "best_policy", "best_policy_acc", "clr_minus_fixed", "cbs_minus_fixed", "n_train",
               "n_val", "dataset_used", "data_note"]


def test_batch_size_range_is_capped_at_the_data():
    assert bs_test_range(64, 8192, 8000) == (64, 4096)
    assert bs_test_range(64, 8192, 60_000) == (64, 8192)
    with pytest.raises(ValueError, match="exceeds"):
        bs_test_range(64, 128, 50)


def test_cyclical_quick_via_api(run_quick):
    run = run_quick("cyclical")
    run.assert_outputs(keys=REPORT_KEYS,
                       files=("report.md", "lr_range_test.csv", "lr_range_test.png",
                              "bs_range_test.csv", "bs_range_test.png", "policies.csv",
                              "curves.png"))
    res = run.results
    lrs = res["lr_test"]["lr"]
    assert 2 <= len(lrs) <= 10 and lrs[0] == pytest.approx(1e-9)
    assert 0 < res["lr_min"] < res["lr_max"] and res["lr_ratio"] == pytest.approx(4.0)
    assert res["lr_max"] == pytest.approx(res["lr_at_min_loss"] / 10)
    assert not res["lr_test_no_decrease"]
    sizes = list(res["bs_test"]["batch_size"])
    assert sizes == [32, 64, 128, 256, 512]
    assert 32 <= res["b_min"] <= res["b_max"] <= 512
    assert set(res["policies"]) == set(POLICIES)
    for name, pol in res["policies"].items():
        hist = pol["history"]
        assert [r["epoch"] for r in hist] == [1, 2, 3, 4]
        assert all(0 <= r["train_acc"] <= 1 and 0 <= r["val_acc"] <= 1 for r in hist)
        assert pol["best_val_acc"] == max(r["val_acc"] for r in hist)
        assert 0 < pol["cpu_seconds"] and 0 < pol["seconds"]
    # learning happened: far above the 10% chance level of 10 classes
    assert res["policies"]["fixed"]["best_val_acc"] > 0.4
    # the cyclical batch size moved within [b_min, b_max]; the cyclical lr within [lr_min, lr_max]
    cbs = [r["batch_size"] for r in res["policies"]["cbs"]["history"]]
    assert all(res["b_min"] <= b <= res["b_max"] for b in cbs) and len(set(cbs)) > 1
    clr = [r["lr"] for r in res["policies"]["clr"]["history"]]
    assert all(res["lr_min"] - 1e-12 <= v <= res["lr_max"] + 1e-12 for v in clr)
    report = run.report()
    assert "Model stand-in" in report and res["best_policy"] in report
    if res["data_note"]:
        assert "Data substitution" in report and "fashion10k" in report
