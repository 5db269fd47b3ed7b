"""The sync-async lab: the discrete-event simulation (sync, sync+backup, async), its pairing
by seed, the config checks, and the quick run's results, comparisons and report."""
import numpy as np
import pytest

from mlcvlab.labs import run_lab, stats
from mlcvlab.labs import sync_async as sa

OVERRIDES = ["hidden=32", "horizon=60", "straggler_steps=200", "timing_repeats=5",
             "straggler_ks=1,2,4", "eval_points=20"]


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The sync-async lab's quick preset, made smaller, run once for all tests of this file."""
    return run_quick("sync-async", overrides=OVERRIDES)


def tiny_config(**changes):
    config = {**sa.QUICK, "hidden": [8], "workers": 3, "backup": 1, "batch": 8,
              "horizon": 30.0, "eval_points": 5, "eval_every": 2, "seed": 0}
    config.update(changes)
    return config


def tiny_data(n=300, d=12, seed=0):
    gen = np.random.default_rng(seed)
    X = gen.standard_normal((n, d)).astype(np.float32)
    y = np.arange(n) % 10
    return X, y.astype(np.int64), X[:50], y[:50].astype(np.int64)


# -- the parts of the simulation ---------------------------------------------------------------
def test_straggler_factors():
    gen = np.random.default_rng(0)
    none = sa.straggler_factors(tiny_config(sigma=0.0, straggler_p=0.0), gen, 100)
    assert np.all(none == 1.0)
    every = sa.straggler_factors(tiny_config(sigma=0.0, straggler_p=1.0, straggler_factor=5.0),
                                 gen, 100)
    assert np.all(every == 5.0)
    logn = sa.straggler_factors(tiny_config(straggler="lognormal", sigma=0.5,
                                            straggler_p=1.0), gen, 20000)
    assert abs(np.median(logn) - 1.0) < 0.03 and logn.max() < 20   # no 5x mixture applied


def test_clocks_and_batches_are_the_same_for_every_policy_of_a_seed():
    config = tiny_config()
    a, b = sa.WorkerClocks(config, 3, 4, 1e-3), sa.WorkerClocks(config, 3, 4, 1e-3)
    # worker 2's j-th time does not depend on how often the other workers drew
    first = [a.next(2) for _ in range(5)]
    for k in (0, 1, 3):
        b.next(k)
    assert [b.next(2) for _ in range(5)] == first
    s1, s2 = sa.BatchStream(100, 32, 7), sa.BatchStream(100, 32, 7)
    seq = [s1.next() for _ in range(7)]
    assert all(np.array_equal(x, s2.next()) for x in seq)
    assert all(len(x) == 32 for x in seq)
    assert len(np.unique(np.concatenate(seq[:3]))) == 96        # an epoch without repeats


def test_time_to_target():
    grid = np.array([0.0, 1.0, 2.0, 3.0])
    assert sa.time_to_target(grid, [0.1, 0.5, 0.9, 0.95], 0.9) == 2.0
    assert sa.time_to_target(grid, [0.1, 0.5, 0.8, 0.85], 0.9) is None


def test_sync_step_waits_for_the_slowest_and_backup_for_the_nth():
    config = tiny_config(workers=4, backup=1)
    s = sa.Setup(config, 0, tiny_data(), 1e-3)
    plain, backup = sa.run_sync(s, 4), sa.run_sync(s, 3)
    clocks = sa.WorkerClocks(config, 0, 4, 1e-3)
    for j in range(min(len(plain["step_times"]), len(backup["step_times"]))):
        times = np.sort([clocks.next(k) for k in range(4)])
        assert plain["step_times"][j] == pytest.approx(times[-1])
        assert backup["step_times"][j] == pytest.approx(times[-2])
    assert backup["dropped"] == backup["updates"] and plain["dropped"] == 0
    assert backup["updates"] >= plain["updates"] > 0
    assert sum(plain["step_times"]) <= s.horizon


def test_sync_update_is_the_mean_gradient_with_linear_lr():
    config = tiny_config(workers=3, backup=1, horizon=1.5, sigma=0.0, straggler_p=0.0)
    s = sa.Setup(config, 1, tiny_data(), 1e-3)
    out = sa.run_sync(s, 3)                   # one step of 1 unit fits in 1.5 units
    assert out["updates"] == 1
    stream = sa.BatchStream(len(s.X), config["batch"], 1)
    s.flat.data[...] = s.w0
    grads = [s.gradient(stream.next()) for _ in range(3)]
    expected = s.w0 - config["lr"] * 3 * np.mean(grads, axis=0)
    sa.run_sync(s, 3)
    assert np.allclose(s.flat.data, expected, atol=1e-6)


def test_async_staleness_with_equal_times():
    """All workers equally fast: the first round applies with staleness 0, 1, ..., K-1 (ties
    by worker index), every later gradient has staleness K-1."""
    K = 4
    config = tiny_config(workers=K, sigma=0.0, straggler_p=0.0, horizon=5.0)
    s = sa.Setup(config, 0, tiny_data(), 1e-3)
    out = sa.run_async(s)
    assert out["updates"] == 5 * K
    assert out["staleness"][:K] == list(range(K))
    assert set(out["staleness"][K:]) == {K - 1}


def test_async_with_one_worker_is_sequential_sgd():
    config = tiny_config(workers=2, sigma=0.0, straggler_p=0.0, horizon=3.0)
    s = sa.Setup({**config, "workers": 1}, 0, tiny_data(), 1e-3)
    out = sa.run_async(s)
    assert out["staleness"] == [0, 0, 0]
    final = s.flat.data.copy()
    stream = sa.BatchStream(len(s.X), config["batch"], 0)
    w = s.w0.copy()
    for _ in range(3):
        s.flat.data[...] = w
        w = w - config["lr"] * s.gradient(stream.next())
    assert np.allclose(final, w, atol=1e-6)


def test_recorder_grid_sees_the_weights_at_each_time():
    config = tiny_config(sigma=0.0, straggler_p=0.0, horizon=4.0, eval_points=4)
    s = sa.Setup(config, 0, tiny_data(), 1.0)
    out = sa.run_sync(s, config["workers"])      # updates land at t = 1, 2, 3, 4
    assert out["grid"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert out["update_counts"] == [0, 2, 4]
    # grid time 2 is after the update at t = 2 (weights after every update at or before t)
    assert out["grid_acc"][2] == out["update_acc"][1]
    assert out["grid_acc"][4] == out["update_acc"][2] == out["final_val_acc"]
    assert out["grid_acc"][0] == out["update_acc"][0]


def test_straggler_effect_rows():
    config = tiny_config(straggler_ks=[1, 2, 8], straggler_steps=500, backup=1)
    rows = sa.straggler_effect(config, [0, 1], 2.0)
    by = {(r["K"], r["policy"]): r for r in rows}
    assert (1, "sync+backup") not in by                     # K must exceed b
    assert by[1, "sync"]["step_seconds"] == by[1, "one worker"]["step_seconds"]
    for K in (2, 8):
        assert by[K, "sync"]["step_seconds"] > by[K, "sync+backup"]["step_seconds"]
    assert by[8, "sync"]["step_seconds"] > by[2, "sync"]["step_seconds"]


# -- config checks -----------------------------------------------------------------------------
@pytest.mark.parametrize("key,value", [
    ("workers", 1), ("backup", 4), ("backup", 0), ("lr", 0.0), ("lr", float("nan")),
    ("horizon", -1.0), ("horizon", 5.0), ("target_acc", 1.0), ("sigma", -0.1),
    ("straggler_p", 1.5),
    ("straggler_factor", 0.5), ("straggler", "pareto"), ("lr_scaling", "sqrt"),
    ("hidden", []), ("straggler_ks", [2, 2]), ("eval_points", 1), ("batch", 0),
    ("dataset", "cifar10"), ("val_fraction", 0.0), ("seeds", 0), ("mpi_ranks", 1),
    ("mpi_ranks", -2), ("mpi_steps", 1)])
def test_bad_config_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        sa._validate({**sa.QUICK, "workers": 4, "backup": 1, key: value})


def test_bad_value_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="backup"):
        run_lab("sync-async", quick=True, out_dir=str(tmp_path), show_progress=False,
                overrides=["backup=4"])
    assert not (tmp_path / "report.md").exists()


# -- the quick run -----------------------------------------------------------------------------
def test_quick_run_outputs(quick_run):
    saved = quick_run.assert_outputs(
        keys=("comparisons", "preset", "policy_rows", "staleness_counts", "straggler_rows",
              "compute_cpu_seconds", "headline", "curves"),
        files=("report.md", "policies.csv", "straggler_effect.csv", "accuracy_curves.png",
               "staleness.png", "straggler_effect.png", "results.json", "config.json"))
    assert saved["preset"] == "quick"
    assert [r["policy"] for r in saved["policy_rows"]] == list(sa.POLICIES)
    assert saved["compute_cpu_seconds"] > 0
    # the async staleness histogram counts every async update of every seed
    assert sum(saved["staleness_counts"]) == sum(c["updates"] for c in saved["curves"]["async"])
    # paired by seed: every policy starts from the same weights (same accuracy at update 0)
    for i in range(len(saved["seeds"])):
        first = {p: saved["curves"][p][i]["update_acc"][0] for p in sa.POLICIES}
        assert len(set(first.values())) == 1


def test_quick_run_comparisons_and_report(quick_run):
    saved = quick_run.saved()
    comps = saved["comparisons"]
    kinds = [(c["a"], c["b"], c["kind"]) for c in comps]
    assert ("sync+backup", "sync", "time_to_accuracy") in kinds
    assert ("sync+backup", "async", "time_to_accuracy") in kinds
    assert ("async", "sync", "accuracy_per_update") in kinds
    assert ("sync+backup", "sync", "step_time") in kinds
    for c in comps:
        stats.check_comparison(c)
        assert c["n_seeds"] == len(saved["seeds"])
    report = quick_run.assert_report("Smoke test", "simulated", "Chen et al.",
                                     "The study's explanation (not a finding of this run)",
                                     "Staleness", substituted=False)
    for c in comps:
        assert stats.sentence(c) in report
    assert "not the wall-clock time of real parallel workers" in report


def test_paper_verdict_follows_the_two_time_to_accuracy_verdicts():
    def comps(v_sync, v_async):
        return {("sync+backup", "sync", "time_to_accuracy"): {"verdict": v_sync},
                ("sync+backup", "async", "time_to_accuracy"): {"verdict": v_async}}
    assert sa._paper_verdict(comps("a better", "a better")).startswith("supports it")
    assert sa._paper_verdict(comps("a better", "b better")).startswith("contradicts it: async")
    text = sa._paper_verdict(comps("a better", "not separable"))
    assert text.startswith("does not show it") and "from async" in text and "faster than sync" \
        in text


@pytest.mark.mpi
def test_real_mpi_ranks_match_the_in_process_sync_steps(tmp_path):
    import shutil
    assert shutil.which("mpiexec"), "mpiexec is not on PATH: pip install mpich (test extra)"
    config = {**sa.QUICK, "hidden": [16], "mpi_ranks": 2, "mpi_steps": 3, "seed": 0}
    data, _, _ = sa._load(config)
    m = sa.measure_mpi(config, data, seed=0)
    assert m["ranks"] == 2 and m["steps"] == 3
    assert m["max_weight_diff"] <= 1e-6          # the same synchronous math on real ranks
    assert m["step_wall"] > 0 and 0 <= m["allreduce_share"] <= 1
    from mlcvlab.labs.report import Report
    results = {"mpi": m, "seeds": [0]}
    rep = Report(tmp_path, "t", results)
    sa._mpi_section(rep, results)
    rep.write()
    text = (tmp_path / "report.md").read_text()
    assert "Measured, not simulated: 2 MPI ranks" in text and "{" not in text


def test_runs_that_miss_the_target_count_as_the_horizon_and_say_so():
    def run(tta, counts=(0, 10, 20), step=1.0):
        return {"tta": tta, "update_counts": list(counts), "update_acc": [0.1, 0.5, 0.8],
                "step_times": [step]}
    runs = {"sync": [run(None), run(4.0)], "sync+backup": [run(2.0), run(3.0)],
            "async": [run(1.0), run(2.0)]}
    comps = sa.comparisons_of(runs, tiny_config(target_acc=0.9, eval_every=10), horizon=9.0)
    c = next(c for c in comps if (c["a"], c["b"]) == ("sync+backup", "sync")
             and c["kind"] == "time_to_accuracy")
    assert c["b_mean"] == pytest.approx((9.0 + 4.0) / 2)
    assert "sync on 1 of 2 seeds" in c["metric"] and "lower bound" in c["metric"]
    ok = next(c for c in comps if (c["a"], c["b"]) == ("sync+backup", "async"))
    assert "not reached" not in ok["metric"]
    per_update = next(c for c in comps if c["kind"] == "accuracy_per_update")
    assert per_update["updates"] == 20
