"""The inductive-bias lab: quick preset end to end, the Sobel bank, freezing, confusion."""
import numpy as np
import pytest

from mlcvlab.data.synthetic import edge_images
from mlcvlab.labs import inductive_bias as ib
from mlcvlab.labs import run_lab, stats
from mlcvlab.labs.inductive_bias import (SOBEL_BANK, _QUICK, build, confusion, edge_cnn,
                                         set_sobel, train)

REPORT_KEYS = ["sizes", "n_small", "n_main", "domains", "curve_rows", "domain_rows", "more_rows",
               "chance_rows", "degenerate", "degenerate_more", "cnn_mlp_cells",
               "comparisons", "comparison_groups", "conclusion_lines", "cnn_max_small",
               "mlp_small", "cnn_max_main", "mlp_main", "cnn_max_n90", "mlp_n90",
               "sobel_frozen_small", "sobel_init_main", "cells_total", "frozen_unchanged",
               "more_cnn_max", "more_cnn_avg", "more_mlp", "mlp_params", "cnn_params", "runs",
               "n_seeds", "preset"]
DOMAINS = ["in-domain", "low contrast + noise", "inverted polarity", "all positions"]


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The inductive-bias lab's quick preset, run once for all tests of this file."""
    return run_quick("inductive-bias")


def test_inductive_bias_quick_via_api(quick_run):
    run = quick_run
    run.assert_outputs(keys=REPORT_KEYS,
                       files=("report.md", "accuracy_vs_training_size.csv",
                              "accuracy_vs_training_size.png", "domain_shift.csv",
                              "accuracy_vs_chance.csv", "cnn_vs_mlp_cells.csv",
                              "more_classes.csv", "confusion_3class.png",
                              "confusion_more_classes.png", "kernels.png"))
    res = run.results
    assert res["domains"] == DOMAINS
    assert res["frozen_unchanged"] is True and res["n_seeds"] == 2
    # frozen Sobel detectors need only a linear read-out: far above the 1/3 chance level
    assert res["sobel_frozen_main"] > 0.9
    assert res["cnn_max_main"] > 0.6 and res["mlp_main"] > 0.6
    assert res["cells_total"] == 8 and len(res["cnn_mlp_cells"]) == 8
    report = run.report()
    assert "Freezing" in report and "not a finding of this run" in report
    assert "validation" not in report.lower()          # test sets are called test sets


def test_comparisons_schema_sentences_and_verdict_words(quick_run):
    """Every comparison is paired over the seeds and its sentence is in report.md; CNN vs MLP,
    kernels, max vs avg and vs-chance groups are all there; each cell's verdict is the
    comparison's."""
    saved, report = quick_run.saved(), quick_run.report()
    comps = saved["comparisons"]
    assert len(comps) == sum(saved["comparison_groups"].values())
    for c in comps:
        stats.check_comparison(c)
        assert c["n_seeds"] == 2
        assert stats.sentence(c) in report
    names = {(c["a"], c["b"].split(" (")[0]) for c in comps}
    assert ("CNN (max pool, random init)", "MLP") in names
    assert ("CNN (max pool, random init)", "CNN") in names          # max vs avg pool
    assert ("MLP", "chance") in names
    cells = {(c["images per class"], c["domain"]): c["verdict"] for c in saved["cnn_mlp_cells"]}
    for c in comps:
        if c["b"] == "MLP":
            n = int(c["metric"].split(", ")[-1].split(" ")[0])
            d = c["metric"].split(", ")[1]
            want = {"a better": "CNN better", "b better": "MLP better"}.get(c["verdict"],
                                                                            c["verdict"])
            assert cells[(n, d)] == want
    conclusions = report.split("## Conclusions")[1]
    assert "worst" not in conclusions


def test_degenerate_domain_in_the_quick_report_is_not_ranked(quick_run):
    res, report = quick_run.results, quick_run.report()
    degenerate = [d for d, why in res["degenerate"].items() if why]
    for d in degenerate:
        assert f"{d} (3 classes, {res['n_main']} images/class): {ib.DEGENERATE}" in report \
            or ib.DEGENERATE_BELOW in report
        assert not any(line.startswith("Lowest") and f"lowest mean on {d}" in line
                       for line in res["conclusion_lines"])


def _fake_grid(kinds, sizes, means, seeds=4, n_classes=3):
    """Runs with the given mean accuracy per domain, exactly: the seeds deviate from it by
    offsets that sum to zero (so an interval over the seeds is centred on the mean)."""
    offsets = [-0.01, 0.01, -0.02, 0.02][:seeds]
    grid = {}
    for k in kinds:
        grid[k] = {}
        for n in sizes:
            runs = []
            for off in offsets:
                acc = {d: m + off for d, m in means.items()}
                runs.append({"acc": acc, "train_acc": 1.0, "frozen_unchanged": True})
            grid[k][n] = runs
    return grid


def test_domain_where_every_model_is_at_chance_is_degenerate_not_worst():
    """Construct a domain where every model sits at chance (1/3 +- noise): it is reported as
    degenerate, is not named the lowest domain, and gets no CNN-vs-MLP ranking."""
    means = {"in-domain": 0.97, "low contrast + noise": 0.7, "inverted polarity": 1 / 3,
             "all positions": 0.9}
    sizes = [5, 50]
    grid3 = _fake_grid(ib.MAIN_KINDS, sizes, means)
    grid5 = _fake_grid(ib.MORE_KINDS, sizes[-1:], {**means, "inverted polarity": 0.2})
    cfg = {**_QUICK, "n_test_per_class": 200}
    res = ib.summarize(cfg, grid3, grid5, sizes, DOMAINS)
    assert res["degenerate"]["inverted polarity"] == ib.DEGENERATE
    assert not res["degenerate"]["low contrast + noise"]
    lines = res["conclusion_lines"]
    assert any(line.startswith("inverted polarity (3 classes") and ib.DEGENERATE in line
               for line in lines)
    assert any(line.startswith("inverted polarity (5 classes") and ib.DEGENERATE in line
               for line in lines)
    lowest = [line for line in lines if line.startswith("Lowest")]
    assert len(lowest) == 2 and all("inverted polarity" not in line for line in lowest)
    assert all("lowest mean on low contrast + noise" in line for line in lowest)
    assert not any("inverted polarity" in c["metric"] and c["b"] == "MLP"
                   for c in res["comparisons"])
    cells = [c for c in res["cnn_mlp_cells"] if c["domain"] == "inverted polarity"]
    assert len(cells) == 2 and all(c["verdict"] == ib.DEGENERATE for c in cells)
    assert not any("inverted polarity" in c["metric"] and c["b"].startswith("CNN")
                   for c in res["comparisons"])                # no max-vs-avg ranking there


def test_vs_chance_with_one_seed_uses_the_binomial_interval():
    runs = [{"acc": {"d": 0.36}}]
    word, c = ib.vs_chance("MLP", runs, "d", 1 / 3, 600, "acc")
    assert word == "at" and c["ci95"][0] < 0 < c["ci95"][1]
    word, c = ib.vs_chance("MLP", [{"acc": {"d": 0.6}}], "d", 1 / 3, 600, "acc")
    assert word == "above" and c["verdict"] == "a better"


@pytest.mark.parametrize("key,value", [("seeds", "0"), ("lr", "nan"), ("lr", "-1"),
                                       ("n_per_class", "0"), ("epochs", "0"),
                                       ("n_test_per_class", "0"), ("batch_size", "0"),
                                       ("more_classes", "9"), ("size", "3")])
def test_bad_config_fails_up_front_naming_the_key(tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        run_lab("inductive-bias", quick=True, out_dir=str(tmp_path), show_progress=False,
                overrides=[f"{key}={value}"])
    assert not (tmp_path / "report.md").exists()


def test_sobel_bank_and_frozen_weights_stay_fixed():
    assert SOBEL_BANK.shape == (8, 3, 3) and np.allclose(SOBEL_BANK.sum(axis=(1, 2)), 0)
    model = edge_cnn(8, 8, 3, "max", rng=0)
    kernels = set_sobel(model)
    assert np.array_equal(kernels, SOBEL_BANK)
    # a vertical edge excites the vertical Sobel kernel (index 0) more than the horizontal one
    X, y = edge_images(30, seed=0, size=8, n_classes=3)
    conv = model[0](X[y == 1])
    assert conv[:, 0].max() > 5 * max(conv[:, 2].max(), 1e-3)
    cfg = {**_QUICK, "epochs": 2}
    model, frozen = build("sobel_frozen", cfg, 3, rng=0)
    bias_before = model[0].bias.data.copy()
    train(model, frozen, X, y, cfg, np.random.default_rng(0))
    assert np.array_equal(model[0].weight.data[:, 0], SOBEL_BANK)
    assert not np.array_equal(model[0].bias.data, bias_before)  # the rest still learns


def test_confusion_counts_and_errors():
    y = np.array([0, 0, 1, 2, 2])
    pred = np.array([0, 1, 1, 2, 0])
    mat = confusion(y, pred, 3)
    assert mat.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    with pytest.raises(ValueError, match="pool"):
        edge_cnn(8, 4, 3, pool="median")
