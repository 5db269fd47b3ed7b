"""The data-parallel lab: measured K = 1, 2 (mpiexec) rows, modelled K = 4, report."""
import pytest

from mlcvlab.labs.data_parallel import build_rows

pytestmark = pytest.mark.mpi
OVERRIDES = ["steps=2", "batches=16,64", "hidden=32", "n_train=512"]


@pytest.fixture(scope="module")
def quick_run(run_quick):
    """The data-parallel lab's quick preset, made smaller, run once for all tests of this file."""
    return run_quick("data-parallel", overrides=OVERRIDES)


def test_rows_measured_and_modelled(quick_run):
    _, results = quick_run
    rows = {(r["K"], r["per_worker_batch"]): r for r in results["rows"]}
    assert set(rows) == {(k, b) for k in (1, 2, 4) for b in (16, 64)}
    for b in (16, 64):
        assert rows[1, b]["source"] == "measured (mpiexec -n 1)"
        assert rows[2, b]["source"] == "measured (mpiexec -n 2)"
        assert rows[4, b]["source"].startswith("modelled")
        assert rows[1, b]["speedup"] == 1.0
        # K = 4: compute from K = 1, all-reduce scaled from K = 2 by the ring factor 1.5 / 1
        assert rows[4, b]["compute_ms"] == rows[1, b]["compute_ms"]
        assert rows[4, b]["communication_ms"] == pytest.approx(1.5 * rows[2, b]["communication_ms"])
        r = rows[2, b]
        assert r["bus_bandwidth_GBps"] == pytest.approx(
            2 * (2 - 1) / 2 * r["allreduce_MB"] * 1e6 / (r["communication_ms"] / 1e3) / 1e9)
        assert r["epoch_seconds"] == pytest.approx(
            results["n_epoch"] / (2 * b) * r["step_ms"] / 1e3)
        assert 0 < r["comm_fraction"] < 1
    assert results["measured_ks"] == [1, 2] and results["modelled_ks"] == [4]


def test_report_and_files(quick_run):
    saved = quick_run.assert_outputs(
        files=("time_speedup.csv", "compute_communication.csv", "bandwidth.csv", "scaling.png",
               "results.json", "config.json"))
    quick_run.assert_report("2(K−1)/K · S / t_allreduce", "weak scaling",
                            substituted=saved["used"] != "mnist")
    assert saved["best_speedup"] == pytest.approx(max(r["speedup"] for r in saved["rows"]
                                                      if r["K"] > 1))


def test_build_rows_needs_a_measured_multi_worker_run():
    t = {"compute_seconds": 0.01, "communication_seconds": 0.0, "update_seconds": 0.001,
         "bytes": 100.0}
    with pytest.raises(ValueError, match="include 2"):
        build_rows({"workers": [1, 4], "batches": [8]}, {1: {"8": t}}, {1: "measured"}, 64, 1e9)


def test_bad_config(run_quick):
    with pytest.raises(ValueError, match="include 1"):
        run_quick("data-parallel", overrides=["workers=2,4"])
