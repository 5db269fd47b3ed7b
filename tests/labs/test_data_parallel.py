"""The data-parallel lab: measured K = 1, 2 (mpiexec) rows, modelled K = 4, report."""
import json

import pytest

from mlcvlab.labs import run_lab
from mlcvlab.labs.data_parallel import build_rows

pytestmark = pytest.mark.mpi
OVERRIDES = ["steps=2", "batches=16,64", "hidden=32", "n_train=512"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("data_parallel")
    return run_lab("data-parallel", quick=True, out_dir=str(out), overrides=OVERRIDES,
                   show_progress=False), out


def test_rows_measured_and_modelled(quick):
    results, _ = quick
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
        assert r["epoch_seconds"] == pytest.approx(results["n_epoch"] / (2 * b) * r["step_ms"] / 1e3)
        assert 0 < r["comm_fraction"] < 1
    assert results["measured_ks"] == [1, 2] and results["modelled_ks"] == [4]


def test_report_and_files(quick):
    results, out = quick
    report = (out / "report.md").read_text()
    assert "2(K−1)/K · S / t_allreduce" in report and "weak scaling" in report
    assert "{" not in report
    for name in ("time_speedup.csv", "compute_communication.csv", "bandwidth.csv", "scaling.png",
                 "results.json", "config.json"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["best_speedup"] == pytest.approx(max(r["speedup"] for r in saved["rows"]
                                                      if r["K"] > 1))
    if saved["used"] != "mnist":
        assert "Data substitution" in report


def test_build_rows_needs_a_measured_multi_worker_run():
    t = {"compute_seconds": 0.01, "communication_seconds": 0.0, "update_seconds": 0.001,
         "bytes": 100.0}
    with pytest.raises(ValueError, match="include 2"):
        build_rows({"workers": [1, 4], "batches": [8]}, {1: {"8": t}}, {1: "measured"}, 64, 1e9)


def test_bad_config():
    with pytest.raises(ValueError, match="include 1"):
        run_lab("data-parallel", quick=True, overrides=["workers=2,4"], show_progress=False)
