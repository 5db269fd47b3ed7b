"""The labs' statistics toolkit: intervals that cover at their nominal rate, verdicts that
say "not separable" when the arms do not differ, and the comparison schema of results.json."""
import numpy as np
import pytest

from mlcvlab.labs import registry, stats
from mlcvlab.labs.report import Report


def test_t_interval_matches_the_textbook():
    s = stats.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sd sqrt(2.5), t_{0.975, 4} = 2.776445
    half = 2.776445 * np.sqrt(2.5) / np.sqrt(5)
    assert s["mean"] == 3.0 and s["ci95"] == pytest.approx([3 - half, 3 + half], abs=1e-5)
    one = stats.summarize([0.7])
    assert one["ci95"] == [None, None] and one["n"] == 1


def test_paired_interval_covers_the_true_difference_about_95_percent():
    rng = np.random.default_rng(0)
    true_diff, covered, repeats = 0.3, 0, 2000
    for _ in range(repeats):
        seed_effect = rng.normal(0, 2.0, size=5)            # shared by both arms of a seed
        a = seed_effect + true_diff + rng.normal(0, 0.5, size=5)
        b = seed_effect + rng.normal(0, 0.5, size=5)
        lo, hi = stats.compare("a", a, "b", b, "acc", higher_is_better=True)["ci95"]
        covered += lo <= true_diff <= hi
    assert 0.935 <= covered / repeats <= 0.965


def test_welch_interval_covers_about_95_percent():
    rng = np.random.default_rng(1)
    covered, repeats = 0, 2000
    for _ in range(repeats):
        a, b = rng.normal(1.0, 1.0, 6), rng.normal(0.0, 2.0, 4)
        lo, hi = stats.compare("a", a, "b", b, "x", True, paired=False)["ci95"]
        covered += lo <= 1.0 <= hi
    assert 0.935 <= covered / repeats <= 0.965


def test_same_distribution_is_mostly_not_separable_and_a_real_effect_is_found():
    rng = np.random.default_rng(2)
    verdicts = [stats.compare("a", rng.normal(0, 1, 5), "b", rng.normal(0, 1, 5), "acc",
                              True)["verdict"] for _ in range(400)]
    assert verdicts.count("not separable") / 400 >= 0.93
    big = stats.compare("a", [0.90, 0.91, 0.92], "b", [0.80, 0.80, 0.82], "acc", True)
    assert big["verdict"] == "a better" and big["diff"] == pytest.approx(0.1033333, abs=1e-6)
    lower = stats.compare("a", [0.10, 0.11, 0.12], "b", [0.20, 0.20, 0.22], "error", False)
    assert lower["verdict"] == "a better"          # lower error is better
    assert stats.compare("a", [0.2], "b", [0.1], "error", False)["verdict"] == "not separable"


def test_binomial_interval_and_single_rates():
    r = stats.binomial_interval(40, 2000)         # 2 % error on 2,000 images
    assert r["ci95"] == pytest.approx([0.01475, 0.02716], abs=2e-4)
    c = stats.compare_rates("dropout", 40, 2000, "plain", 48, 2000)
    assert c["verdict"] == "not separable" and c["ci95"][0] < 0 < c["ci95"][1]
    c = stats.compare_rates("dropout", 20, 2000, "plain", 80, 2000)
    assert c["verdict"] == "a better"
    with pytest.raises(ValueError, match="successes"):
        stats.binomial_interval(5, 3)


def test_sentence_takes_its_words_from_the_verdict():
    c = stats.compare("BN", [0.99, 0.985, 0.99], "plain", [0.97, 0.975, 0.972], "test accuracy",
                      True)
    text = stats.sentence(c)
    assert text.startswith("BN vs plain, test accuracy:") and text.endswith("BN is better.")
    assert "3 seeds" in text and "95% CI" in text
    same = stats.compare("x", [1.0, 2.0, 3.0], "y", [1.1, 1.9, 3.2], "loss", False)
    assert stats.sentence(same).endswith("not separable.")


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="paired arms need one value per seed"):
        stats.compare("a", [1, 2, 3], "b", [1, 2], "m", True)
    with pytest.raises(ValueError, match="finite"):
        stats.compare("a", [1, float("nan")], "b", [1, 2], "m", True)
    with pytest.raises(ValueError, match="missing keys"):
        stats.check_comparison({"a": "x"})
    assert stats.seeds_of({"seed": 3, "seeds": 3}) == [3, 4, 5]
    assert stats.seeds_of({"seeds": [7, 9]}) == [7, 9]
    with pytest.raises(ValueError, match="distinct"):
        stats.seeds_of({"seeds": [1, 1]})


def test_run_lab_checks_comparisons_and_defaults_to_standard(tmp_path):
    calls = []

    @registry.lab("toy2", "toy", quick={"n": 2}, standard={"n": 3}, full={"n": 4},
                  expected_seconds={"quick": 1, "standard": 2, "full": 3})
    def run(config, out_dir, progress):
        calls.append(config["n"])
        c = stats.compare("a", [1.0, 2.0, 3.0], "b", [0.0, 1.0, 2.0], "m", True)
        results = {"comparisons": [c] if config["n"] != 4 else [{"a": "x"}]}
        rep = Report(out_dir, "Toy2", results)
        rep.comparisons(results["comparisons"][:1] if config["n"] != 4 else [])
        rep.write()
        return results

    try:
        res = registry.run_lab("toy2", out_dir=str(tmp_path / "s"), show_progress=False)
        assert calls == [3] and res["preset"] == "standard"
        report = (tmp_path / "s" / "report.md").read_text()
        assert "Smoke test" not in report and stats.sentence(res["comparisons"][0]) in report
        with pytest.raises(ValueError, match="missing keys"):
            registry.run_lab("toy2", preset="full", out_dir=str(tmp_path / "f"),
                             show_progress=False)
    finally:
        registry._REGISTRY.pop("toy2")


def test_t_quantiles_match_scipy():
    from scipy.stats import t   # a reference in tests only: the core has no SciPy

    for df in (1, 2, 3, 4, 5, 9, 29, 2.5, 7.3, 200):
        for conf in (0.9, 0.95, 0.99):
            assert stats.t_quantile(df, conf) == pytest.approx(t.ppf(0.5 + conf / 2, df),
                                                               rel=1e-9)
    assert stats.t_cdf(0.0, 3) == pytest.approx(0.5)


def test_zero_spread_from_few_seeds_is_not_evidence_and_replicates_are_named():
    c = stats.compare("cnn", [0.9, 0.8], "mlp", [0.8667, 0.7667], "acc", True)
    assert c["verdict"] == "not separable" and "zero-width" in c["note"]
    assert "zero-width" in stats.sentence(c)
    many = stats.compare("a", [1.0] * 6, "b", [0.5] * 6, "acc", True)
    assert many["verdict"] == "a better"          # six identical seeds: deterministic enough
    r = stats.compare("K=2", [1.0, 1.2, 1.1], "K=1", [1.5, 1.6, 1.4], "CPU s", False,
                      replicate="repeat")
    assert "3 repeats" in stats.sentence(r)
    runs = stats.compare_rates("relu", 92, 100, "leaky", 58, 100, "collapse", replicate="run")
    assert runs["n_seeds"] == 100 and "100 runs" in stats.sentence(runs)


def test_steps_to_reach_counts_the_first_point_at_or_above_the_target():
    assert stats.steps_to_reach([0.90, 0.97, 0.985, 0.99], 0.985, 422) == 3 * 422
    assert stats.steps_to_reach([0.99], 0.985) == 1
    assert stats.steps_to_reach([0.90, float("nan"), 0.95], 0.985) is None   # censored


@pytest.mark.parametrize("kind, ci, published, verdict", [
    ("value", [0.71, 1.13], 0.95, "reproduced"),
    ("value", [1.00, 1.20], 0.95, "not reproduced"),
    ("effect", [-0.5, -0.2], -0.35, "reproduced"),
    ("effect", [-0.5, 0.1], -0.35, "not separable at this budget"),
    ("effect", [0.08, 0.30], -0.35, "not reproduced"),
    ("effect", [-0.30, -0.10], -0.35, "not reproduced"),   # right sign, smaller than published
    ("direction", [-3.1, -0.2], -1, "reproduced"),
    ("direction", [0.2, 3.1], -1, "not reproduced"),
    ("direction", [-1.0, 0.5], -1, "not separable at this budget"),
    ("equal", [-0.17, 0.18], 0.0, "reproduced"),
    ("equal", [-0.46, -0.32], 0.0, "not reproduced"),
    ("value", [None, None], 0.95, "not separable at this budget"),
])
def test_against_published(kind, ci, published, verdict):
    assert stats.against_published(kind, ci, published) == verdict


def test_against_published_rejects_an_unknown_kind_and_a_signless_direction():
    with pytest.raises(ValueError, match="kind must be one of"):
        stats.against_published("bigger", [0, 1], 1)
    with pytest.raises(ValueError, match="direction"):
        stats.against_published("direction", [0, 1], 0)
