"""The data-parallel lab: measured K = 1, 2, 4 (mpiexec) rows over repeats, modelled K = 4 rows,
a headline and comparisons from measured rows only."""
import pytest

from mlcvlab.labs import stats
from mlcvlab.labs.data_parallel import _summarize, build_rows, comparisons_of, cores

pytestmark = pytest.mark.mpi
OVERRIDES = ["steps=2", "batches=16,64", "hidden=32", "n_train=512", "seeds=2"]


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The data-parallel lab's quick preset, made smaller, run once for all tests of this file."""
    return run_quick("data-parallel", overrides=OVERRIDES)


def test_rows_measured_and_modelled(quick_run):
    _, results = quick_run
    rows = {(r["K"], r["per_worker_batch"], r["measured"]): r for r in results["rows"]}
    assert set(rows) == {(k, b, True) for k in (1, 2, 4) for b in (16, 64)} | \
        {(4, b, False) for b in (16, 64)}
    assert all(isinstance(r["measured"], bool) for r in results["rows"])
    for b in (16, 64):
        assert rows[1, b, True]["source"] == "measured (mpiexec -n 1)"
        assert rows[2, b, True]["source"] == "measured (mpiexec -n 2)"
        four = rows[4, b, True]
        assert four["source"].startswith("measured (mpiexec -n 4")
        assert four["oversubscribed"] == (cores() < 4)
        if cores() < 4:
            assert f"oversubscribed: 4 ranks on {cores()} cores" in four["source"]
        model = rows[4, b, False]
        assert model["source"].startswith("modelled")
        assert rows[1, b, True]["speedup_cpu"] == pytest.approx(1.0)
        assert len(rows[2, b, True]["epoch_cpu_values"]) == 2          # two repeats
        # the K = 4 model: per-worker compute as measured at K = 2 (not K = 1), all-reduce
        # scaled from K = 2 by the ring factor 1.5 / 1
        assert model["compute_cpu_ms"] == pytest.approx(rows[2, b, True]["compute_cpu_ms"])
        assert model["communication_wall_ms"] == pytest.approx(
            1.5 * rows[2, b, True]["communication_wall_ms"])
        r = rows[2, b, True]
        assert r["bus_bandwidth_GBps"] == pytest.approx(
            2 * (2 - 1) / 2 * r["allreduce_MB"] * 1e6 / (r["communication_wall_ms"] / 1e3) / 1e9)
        assert r["epoch_cpu_seconds"] == pytest.approx(
            results["n_epoch"] / (2 * b) * r["step_cpu_ms"] / 1e3, rel=1e-6)
        assert r["step_wall_ms"] > 0 and 0 < r["comm_fraction_cpu"] < 1
    assert results["measured_ks"] == [1, 2, 4] and results["modelled_ks"] == [4]


def test_headline_speedup_is_a_measured_row(quick_run):
    _, results = quick_run
    best = [r for r in results["rows"] if r["K"] == results["best_K"]
            and r["per_worker_batch"] == results["best_b"] and r["measured"]]
    assert len(best) == 1 and best[0]["K"] > 1
    assert results["best_speedup"] == pytest.approx(best[0]["speedup_cpu"])
    assert "modelled" not in results["headline"]


def test_comparisons_and_report(quick_run):
    saved = quick_run.assert_outputs(
        keys=("comparisons", "preset", "rows", "headline"),
        files=("time_speedup.csv", "compute_communication.csv", "bandwidth.csv", "scaling.png",
               "results.json", "config.json"))
    report = quick_run.assert_report("2(K−1)/K · S / t_allreduce", "weak scaling",
                                     "Best measured speedup", "CPU seconds",
                                     "The study's explanation",
                                     substituted=saved["used"] != "mnist")
    comps = saved["comparisons"]
    # K = 2 and K = 4 vs K = 1 for both b, plus the communication share at K = 4
    assert len(comps) == 5 and saved["preset"] == "quick"
    for c in comps:
        stats.check_comparison(c)
        assert c["n_seeds"] == 2
        assert stats.sentence(c) in report
    assert "Best speedup" not in report


def _timings(compute, comm, update=0.001):
    t = {"bytes": 1e6}
    for clock in ("cpu", "wall"):
        t.update({f"compute_{clock}": compute, f"communication_{clock}": comm,
                  f"update_{clock}": update, f"step_{clock}": compute + comm + update})
    return t


def test_a_fast_model_never_becomes_the_headline():
    """The review's bug: K = 2 measured slower than K = 1, while a K = 4 model (built the old
    way from K = 1 compute) looked fast. Measured rows decide; the model is built from K = 2."""
    config = {"workers": [1, 2, 4], "batches": [8]}
    measured = {1: [{"8": _timings(0.010, 0.0)}, {"8": _timings(0.011, 0.0)}],
                2: [{"8": _timings(0.030, 0.010)}, {"8": _timings(0.031, 0.011)}]}
    sources = {1: "measured (mpiexec -n 1)", 2: "measured (mpiexec -n 2)"}
    rows = build_rows(config, measured, sources, 64, 1e9)
    model = next(r for r in rows if r["K"] == 4)
    assert model["measured"] is False
    assert model["compute_cpu_ms"] == pytest.approx(1e3 * 0.0305)          # K = 2's compute
    res = _summarize(rows, config, 64, 1e9, "mnist10k")
    assert res["best_K"] == 2 and res["best_speedup"] < 1
    assert "slower than K = 1" in res["headline"]
    assert [c["a"] for c in comparisons_of(rows)] == ["K=2"]


def test_build_rows_needs_a_measured_k2_to_model():
    with pytest.raises(ValueError, match="include 2"):
        build_rows({"workers": [1, 4], "batches": [8]}, {1: [{"8": _timings(0.01, 0.0)}]},
                   {1: "measured"}, 64, 1e9)


def test_in_process_simulation_is_not_measured(run_quick):
    run = run_quick("data-parallel", overrides=OVERRIDES + ["measure_mpi=false"])
    rows = run.results["rows"]
    assert {(r["K"], r["measured"]) for r in rows} == {(1, True), (2, False), (4, False)}
    assert run.results["best_speedup"] is None
    assert "No multi-worker configuration was measured" in run.report()


@pytest.mark.parametrize("override, match", [
    ("workers=2,4", "include 1"), ("workers=1,4", "include 2"), ("steps=0", "steps"),
    ("batches=0,8", "batches"), ("seeds=0", "seeds"), ("measure_up_to=0", "measure_up_to"),
    ("n_train=8", "n_train")])
def test_bad_config(run_quick, override, match):
    with pytest.raises(ValueError, match=match):
        run_quick("data-parallel", overrides=[override])


def test_gpu_rows_read_speedups_on_device_time(monkeypatch):
    """On "cuda" the speedup, verdict and headline are on wall seconds (device time); the
    host's CPU seconds are only beside them. Here K = 2 halves the host's CPU seconds but is
    slower in wall seconds: the headline must say slower, on wall seconds."""
    from mlcvlab.labs import data_parallel as dp
    monkeypatch.setattr(dp, "capacity", lambda config: (2, "GPUs"))
    config = {"workers": [1, 2], "batches": [8], "device": "cuda"}

    def timings(cpu, wall):
        t = _timings(wall, wall / 10)
        t.update(compute_cpu=cpu, communication_cpu=0.0, update_cpu=0.0, step_cpu=cpu)
        return t
    measured = {1: [{"8": timings(0.010, 0.010)}, {"8": timings(0.011, 0.011)}],
                2: [{"8": timings(0.004, 0.030)}, {"8": timings(0.005, 0.031)}]}
    sources = {1: "measured (mpiexec -n 1, a GPU per rank, NCCL)",
               2: "measured (mpiexec -n 2, a GPU per rank, NCCL)"}
    rows = build_rows(config, measured, sources, 64, None)
    two = next(r for r in rows if r["K"] == 2)
    assert two["speedup_cpu"] > 1 > two["speedup_wall"]
    assert two["bandwidth_utilization"] is None and not two["oversubscribed"]
    assert two["speedup_wall_lo"] is not None and len(two["speedup_wall_values"]) == 2
    res = _summarize(rows, config, 64, None, "mnist10k")
    assert res["clock"] == "wall" and res["best_speedup"] == pytest.approx(two["speedup_wall"])
    assert "wall seconds per epoch" in res["headline"] and "slower than K = 1" in res["headline"]
    assert "the host's CPU seconds give" in res["headline"]
    comp = next(c for c in res["comparisons"] if c.get("K") == 2)
    assert "wall seconds per epoch (device time" in comp["metric"]
    assert res["max_util"] is None and res["memcpy_GBps"] is None


def test_gpu_ranks_above_the_gpus_are_oversubscribed(monkeypatch):
    from mlcvlab.labs import data_parallel as dp
    monkeypatch.setattr(dp, "capacity", lambda config: (1, "GPU"))
    config = {"workers": [1, 2], "batches": [8], "device": "cuda"}
    assert dp.oversubscribed_text(config, 2) == "oversubscribed: 2 ranks on 1 GPU"
    assert dp.oversubscribed_text(config, 1) == ""
    measured = {k: [{"8": _timings(0.01 * k, 0.001)}] * 2 for k in (1, 2)}
    rows = build_rows(config, measured, {1: "m", 2: "m"}, 64, None)
    assert [r["oversubscribed"] for r in rows] == [False, True]
    res = _summarize(rows, config, 64, None, "mnist10k")
    assert "ranks share a GPU" in res["over_text"] and "GPU per rank" in res["headline"]


def test_in_process_gpu_shards_are_not_measured_workers(monkeypatch):
    """In one process there is one GPU: K = 2 there is 2 shards in turn, measured: false, and
    never oversubscribed (no rank waits for another GPU)."""
    from mlcvlab.labs import data_parallel as dp
    monkeypatch.setattr(dp, "capacity", lambda config: (1, "GPU"))
    config = {"workers": [1, 2], "batches": [8], "device": "cuda"}
    measured = {k: [{"8": _timings(0.01, 0.0)}] * 2 for k in (1, 2)}
    rows = build_rows(config, measured, {1: "measured (1 process, 1 GPU)",
                                         2: "2 shards on one GPU"}, 64, None, {1: True, 2: False})
    two = next(r for r in rows if r["K"] == 2)
    assert two["measured"] is False and two["oversubscribed"] is False
    res = _summarize(rows, config, 64, None, "mnist10k")
    assert res["best_speedup"] is None and "shards in turn on that GPU" in res["headline"]


def test_cpu_runs_keep_cpu_seconds_and_no_device_text():
    from mlcvlab.labs import data_parallel as dp
    assert dp.primary_clock({}) == "cpu" and dp.primary_clock({"device": "cpu"}) == "cpu"
    assert dp.primary_clock({"device": "cuda"}) == "wall"
    assert dp.device_text({"device": "cpu"}) == ""
    assert dp.QUICK["device"] == dp.STANDARD["device"] == dp.FULL["device"] == "cpu"


def test_device_cuda_without_a_gpu_stops_before_any_work(run_quick):
    with pytest.raises(RuntimeError, match="no CUDA device found|CuPy is not installed"):
        run_quick("data-parallel", overrides=["device=cuda"])
