"""Lab ``data-parallel``: synchronous data-parallel SGD over 1, 2, 4 workers.

For every worker count K and per-worker batch b, an MLP takes ``steps`` timed
data-parallel steps (after one warm-up step) and each step is split into compute
(forward + backward of the worker's shard), communication (the all-reduce of the
flat gradient buffer) and update (the optimizer) seconds.

* K = 1 runs in this process; K = 2 runs the ``mpi`` communicator: the lab
  launches ``mpiexec -n 2 python -m mlcvlab.labs.data_parallel`` as a subprocess.
  These rows are **measured**.
* K = 4 (more ranks than this machine's cores) is **modelled** from measured
  numbers: per-worker compute and update as measured at K = 1 with the same b (a
  worker's work does not depend on K), communication scaled from the measured
  K = 2 all-reduce with the ring model, t(K) = t(2) · [2(K−1)/K] / [2(2−1)/2].

Scaling: b is the per-worker batch, so the global batch K·b grows with K: *weak
scaling* (each worker's work per step is constant). An epoch of N samples takes
N / (K b) steps, so time per epoch = N / (K b) · t_step(K, b) and the speedup over
one worker is T_epoch(1, b) / T_epoch(K, b).

All-reduce bandwidth (ring model): a ring all-reduce of S bytes over K workers
moves 2(K−1)/K · S bytes per worker, so bus bandwidth = 2(K−1)/K · S / t_comm; the
utilization is that over this machine's measured memory-copy bandwidth (MPI ranks
on one host exchange data through shared memory).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

import numpy as np

from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure

QUICK = {"dataset": "mnist", "workers": [1, 2, 4], "batches": [32, 128, 512],
         "hidden": [256, 256], "steps": 4, "n_train": 2048, "measure_mpi": True, "seed": 0}
FULL = {"dataset": "mnist", "workers": [1, 2, 4], "batches": [32, 128, 512],
        "hidden": [1024, 1024], "steps": 30, "n_train": 60000, "measure_mpi": True, "seed": 0}


# -- timing one configuration (in this process or on every MPI rank) --------------------------
def _data(config: Dict[str, Any]):
    from mlcvlab.data.datasets import load, resolve_dataset
    used, note = resolve_dataset(config["dataset"])
    X, y = load(used, "train")
    n = config["n_train"]
    if n and n < len(X):     # a random subset (the same on every rank): files may be sorted
        idx = np.sort(np.random.default_rng(config["seed"]).choice(len(X), size=n, replace=False))
        X, y = X[idx], y[idx]
    return X.reshape(len(X), -1).astype(np.float32), np.asarray(y, dtype=np.int64), used, note


def time_steps(config: Dict[str, Any], comm, b: int, X, y) -> Dict[str, float]:
    """Mean compute / communication / update seconds per step and the bytes all-reduced,
    for per-worker batch b with communicator ``comm`` (1 warm-up step, then config["steps"])."""
    from mlcvlab.models import mlp
    from mlcvlab.nn import CrossEntropyLoss
    from mlcvlab.optim import SGD
    from mlcvlab.parallel import DataParallelStep, module_grad_fn
    model = mlp([X.shape[1], *config["hidden"], 10], rng=config["seed"])   # 10 digit classes
    step = DataParallelStep(model, comm, seed=config["seed"])
    opt, grad_fn = SGD(model.parameters(), lr=0.01), module_grad_fn(CrossEntropyLoss())
    gen = np.random.default_rng(config["seed"])
    B = b * comm.size
    sums = {"compute_seconds": 0.0, "communication_seconds": 0.0, "update_seconds": 0.0}
    nbytes = 0.0
    for s in range(config["steps"] + 1):
        idx = gen.choice(len(X), size=B, replace=B > len(X))
        _, t = step.step(X[idx], y[idx], opt, grad_fn)
        if s > 0:                         # the first step is a warm-up
            for k in sums:
                sums[k] += t[k]
        nbytes = t["bytes_communicated"]
    out = {k: v / config["steps"] for k, v in sums.items()}
    out["bytes"] = step.packed[0].nbytes
    out["measured_bytes"] = nbytes
    return out


def _mpi_main(config_path: str, out_path: str) -> None:
    """Entry point on every rank of ``mpiexec -n K python -m mlcvlab.labs.data_parallel``."""
    from mlcvlab.parallel.mpi import MPICommunicator, abort_on_error
    with abort_on_error():
        with open(config_path) as f:
            config = json.load(f)
        comm = MPICommunicator()
        X, y, _, _ = _data(config)
        rows = {str(b): time_steps(config, comm, b, X, y) for b in config["batches"]}
        if comm.rank == 0:
            with open(out_path, "w") as f:
                json.dump(rows, f)


def measure_mpi(config: Dict[str, Any], k: int) -> Dict[str, Dict[str, float]]:
    """Run the timing on k MPI ranks in a subprocess; {str(b): timings} from rank 0."""
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise FileNotFoundError("data-parallel lab: mpiexec is not on PATH; pip install mpich, "
                                "or run with --set measure_mpi=false to model K = 2 too")
    with tempfile.TemporaryDirectory() as tmp:
        cfg, out = os.path.join(tmp, "config.json"), os.path.join(tmp, "out.json")
        with open(cfg, "w") as f:
            json.dump(config, f)
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        proc = subprocess.run([mpiexec, "-n", str(k), sys.executable, "-m",
                               "mlcvlab.labs.data_parallel", cfg, out],
                              capture_output=True, text=True, env=env, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"data-parallel lab: mpiexec -n {k} failed "
                               f"(exit {proc.returncode}): {proc.stderr[-1500:]}")
        with open(out) as f:
            return json.load(f)


def memcpy_bandwidth(nbytes: int = 64 << 20, repeats: int = 5) -> float:
    """Bytes/s of one in-memory copy (best of ``repeats``): the reference for utilization."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return nbytes / best


# -- the lab ---------------------------------------------------------------------------------
def _ring_factor(k: int) -> float:
    return 2.0 * (k - 1) / k


def build_rows(config, measured: Dict[int, Dict[str, Dict[str, float]]], sources: Dict[int, str],
               n_epoch: int, peak: float) -> List[Dict[str, Any]]:
    """One row per (K, b): measured where ``measured`` has K, else modelled (see module doc)."""
    from mlcvlab.parallel import ring_allreduce_bandwidth
    rows, base = [], measured[1]
    comm_ref = max(k for k in measured if k > 1) if any(k > 1 for k in measured) else None
    for k in config["workers"]:
        for b in config["batches"]:
            key = str(b)
            if k in measured:
                t, source = dict(measured[k][key]), sources[k]
            else:
                if comm_ref is None:
                    raise ValueError("data-parallel lab: need a measured K > 1 to model "
                                     "communication; include 2 in workers")
                ref = measured[comm_ref][key]
                t = {"compute_seconds": base[key]["compute_seconds"],
                     "update_seconds": base[key]["update_seconds"], "bytes": ref["bytes"],
                     "communication_seconds": ref["communication_seconds"]
                     * _ring_factor(k) / _ring_factor(comm_ref)}
                source = f"modelled (compute, update from K=1; all-reduce from K={comm_ref}, ring)"
            step = t["compute_seconds"] + t["communication_seconds"] + t["update_seconds"]
            steps_per_epoch = n_epoch / (k * b)
            bw = ring_allreduce_bandwidth(t["bytes"], t["communication_seconds"], k)
            rows.append({"K": k, "per_worker_batch": b, "global_batch": k * b, "source": source,
                         "compute_ms": 1e3 * t["compute_seconds"],
                         "communication_ms": 1e3 * t["communication_seconds"],
                         "update_ms": 1e3 * t["update_seconds"], "step_ms": 1e3 * step,
                         "comm_fraction": t["communication_seconds"] / step,
                         "epoch_seconds": steps_per_epoch * step,
                         "allreduce_MB": t["bytes"] / 1e6, "bus_bandwidth_GBps": bw / 1e9,
                         "bandwidth_utilization": bw / peak if k > 1 else 0.0})
    for r in rows:
        one = next(q for q in rows
                   if q["K"] == 1 and q["per_worker_batch"] == r["per_worker_batch"])
        r["speedup"] = one["epoch_seconds"] / r["epoch_seconds"]
        r["efficiency"] = r["speedup"] / r["K"]
    return rows


def _measure(config, progress) -> tuple:
    """Measured timings {K: {str(b): timings}} for K = 1 and (if asked) K = 2.

    With ``measure_mpi`` both run under mpiexec (-n 1, -n 2) with one BLAS thread
    per rank, so the two are measured the same way; otherwise in this process with
    the local communicator (K = 2: shards one after the other, per-worker compute =
    total / 2).
    """
    from threadpoolctl import threadpool_limits
    from mlcvlab.parallel import LocalCommunicator
    X, y, used, note = _data(config)
    n_epoch = len(X)
    ks = [k for k in (1, 2) if k in config["workers"]]
    measured, sources = {}, {}
    for k in progress(ks, desc="measure"):
        if config["measure_mpi"]:
            measured[k] = measure_mpi(config, k)
            sources[k] = f"measured (mpiexec -n {k})"
            continue
        with threadpool_limits(1):
            measured[k] = {str(b): time_steps(config, LocalCommunicator(k), b, X, y)
                           for b in config["batches"]}
        for t in measured[k].values():
            t["compute_seconds"] /= k        # the k shards ran one after the other
        sources[k] = "measured (1 process)" if k == 1 else \
            "measured (local shards; per-worker compute = total / 2)"
    return measured, sources, n_epoch, used, note


def _figure(rows, config):
    fig, (ax1, ax2) = new_figure(ncols=2, figsize=(10, 4))
    for b in config["batches"]:
        sel = [r for r in rows if r["per_worker_batch"] == b]
        ax1.plot([r["K"] for r in sel], [r["speedup"] for r in sel], "o-", label=f"b={b}")
        ax2.plot([r["K"] for r in sel], [r["comm_fraction"] for r in sel], "o-", label=f"b={b}")
    ks = config["workers"]
    ax1.plot(ks, ks, "k--", label="ideal")
    ax1.set_xlabel("workers K"), ax1.set_ylabel("speedup per epoch"), ax1.legend()
    ax2.set_xlabel("workers K"), ax2.set_ylabel("communication / step time"), ax2.legend()
    return fig


def _summarize(rows, config, n_epoch: int, peak: float, used: str) -> Dict[str, Any]:
    """Numbers the report's sentences are built from."""
    measured = [r for r in rows if r["K"] > 1 and r["source"].startswith("measured")]
    modelled = [r for r in rows if r["source"].startswith("modelled")]
    small, large = min(config["batches"]), max(config["batches"])
    kmax = max(config["workers"])

    def pick(k, b):
        return next(r for r in rows if r["K"] == k and r["per_worker_batch"] == b)
    best = max((r for r in rows if r["K"] > 1), key=lambda r: r["speedup"], default=pick(1, small))
    results = {
        "rows": rows, "used": used, "n_epoch": n_epoch, "memcpy_GBps": peak / 1e9,
        "param_MB": rows[0]["allreduce_MB"], "kmax": kmax, "b_small": small, "b_large": large,
        "measured_ks": sorted({r["K"] for r in rows if r["source"].startswith("measured")}),
        "modelled_ks": sorted({r["K"] for r in modelled}),
        "best_K": best["K"], "best_b": best["per_worker_batch"], "best_speedup": best["speedup"],
        "kmax_small_speedup": pick(kmax, small)["speedup"],
        "kmax_large_speedup": pick(kmax, large)["speedup"],
        "kmax_small_comm": pick(kmax, small)["comm_fraction"],
        "kmax_large_comm": pick(kmax, large)["comm_fraction"],
        "max_bw_GBps": max((r["bus_bandwidth_GBps"] for r in measured), default=0.0),
        "max_util": max((r["bandwidth_utilization"] for r in measured), default=0.0),
    }
    results["comm_trend"] = ("falls" if results["kmax_large_comm"] < results["kmax_small_comm"]
                             else "does not fall")
    return results


def _write_report(rep: Report, rows, config) -> None:
    rep.text("Per-worker batch b is fixed while K grows, so the global batch is K·b: **weak "
             "scaling** (each worker does the same work per step). An epoch of {n_epoch} samples "
             "takes {n_epoch}/(K·b) steps; time per epoch = steps × (compute + communication + "
             "update) and speedup = T_epoch(K=1) / T_epoch(K). Measured: K in {measured_ks}; "
             "modelled from measured compute and communication: K in {modelled_ks}.")
    rep.text("Modelled rows: compute and update per worker as measured at K = 1 with the same b "
             "(a worker's work does not depend on K); all-reduce time scaled from the measured "
             "K = 2 all-reduce with the ring model, t(K) = t(2) · [2(K−1)/K] / [2(2−1)/2].")
    cols = ["K", "per_worker_batch", "global_batch", "source", "step_ms", "epoch_seconds",
            "speedup", "efficiency"]
    rep.table("time_speedup", rows, "Time per epoch and speedup", columns=cols)
    cols = ["K", "per_worker_batch", "source", "compute_ms", "communication_ms", "update_ms",
            "comm_fraction"]
    rep.table("compute_communication", rows, "Compute vs communication per step", columns=cols)
    rep.text("Communication time is the wall time of the all-reduce call, so it includes "
             "waiting for the slowest rank (load imbalance), not only data movement.")
    rep.text("Bandwidth: a ring all-reduce of S bytes over K workers sends and receives "
             "2(K−1)/K · S bytes per worker, so **bus bandwidth = 2(K−1)/K · S / t_allreduce**; "
             "utilization = bus bandwidth / memory-copy bandwidth of this machine "
             "({memcpy_GBps:.2f} GB/s, one np.copyto of 64 MB). S = {param_MB:.3f} MB (the flat "
             "gradient buffer with BN statistics and the loss).")
    cols = ["K", "per_worker_batch", "source", "allreduce_MB", "communication_ms",
            "bus_bandwidth_GBps", "bandwidth_utilization"]
    rep.table("bandwidth", [r for r in rows if r["K"] > 1], "All-reduce bandwidth utilization",
              columns=cols)
    rep.conclusions([
        "Best speedup: {best_speedup:.2f}x with K = {best_K} workers at per-worker batch "
        "{best_b}.",
        "At K = {kmax}, the speedup is {kmax_small_speedup:.2f}x with b = {b_small} and "
        "{kmax_large_speedup:.2f}x with b = {b_large}; communication takes "
        "{kmax_small_comm:.0%} of a step with b = {b_small} and {kmax_large_comm:.0%} with "
        "b = {b_large}: the communication share {comm_trend} as the per-worker batch grows, "
        "because the all-reduced buffer has the same size whatever b is.",
        "The highest measured all-reduce bus bandwidth is {max_bw_GBps:.3f} GB/s, "
        "{max_util:.1%} of this machine's memory-copy bandwidth.",
    ])


@lab(name="data-parallel", study="Synchronous data-parallel SGD: time per epoch, speedup, "
     "compute vs communication and all-reduce bandwidth for 1, 2, 4 workers",
     quick=QUICK, full=FULL, expected_seconds={"quick": 40, "full": 900})
def run(config, out_dir, progress):
    for key in ("workers", "batches"):
        if not config[key] or any(int(v) < 1 for v in config[key]):
            raise ValueError(f"data-parallel lab: {key} must be a list of integers >= 1, "
                             f"got {config[key]}")
    if 1 not in config["workers"]:
        raise ValueError("data-parallel lab: workers must include 1 (the speedup baseline)")
    measured, sources, n_epoch, used, note = _measure(config, progress)
    peak = memcpy_bandwidth()
    rows = build_rows(config, measured, sources, n_epoch, peak)
    results = _summarize(rows, config, n_epoch, peak, used)
    rep = Report(out_dir, "Synchronous data-parallel SGD", results)
    if note:
        rep.note_substitution(config["dataset"], used)
    rep.setup(config)
    _write_report(rep, rows, config)
    rep.figure("scaling", _figure(rows, config),
               "Speedup per epoch (left) and communication share of a step (right)")
    rep.write()
    return results


if __name__ == "__main__":     # an MPI rank started by measure_mpi
    _mpi_main(sys.argv[1], sys.argv[2])
