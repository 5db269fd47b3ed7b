"""Lab ``data-parallel``: synchronous data-parallel SGD over 1, 2, 4 workers.

For every worker count K and per-worker batch b, an MLP takes ``steps`` timed
data-parallel steps (after one warm-up step) and each step is split into compute
(forward + backward of the worker's shard), communication (the all-reduce of the
flat gradient buffer) and update (the optimizer). Every phase is timed with two
clocks: CPU seconds of the rank's process (``time.process_time``; they do not grow
while the rank waits for a core taken by another job) and wall seconds beside them.
A rank's CPU seconds are the maximum over the ranks of the job.

* **Measured** rows: K ranks of ``mpiexec -n K python -m mlcvlab.labs.data_parallel``
  (one BLAS thread per rank), for every K up to ``measure_up_to``. A K above this
  machine's cores is still a measurement, labelled "oversubscribed: K ranks on C
  cores" (the ranks share cores, so its wall seconds include waiting for a core).
* **Modelled** rows (K > 2): per-worker compute and update as *measured at K = 2* with
  the same b, communication scaled from the measured K = 2 all-reduce by the ring model,
  t(K) = t(2) · [2(K−1)/K] / [2(2−1)/2]. They are labelled modelled, drawn hollow and
  dashed, and never used in the headline, the comparisons or the conclusions.

The timing is repeated ``seeds`` times (each repeat a fresh ``mpiexec`` per K, the K's
of one repeat run back to back; the repeat's seed sets the weights and the batches), so
every number has a 95% interval over the repeats and K vs K = 1 is a paired comparison.

Scaling: b is the per-worker batch, so the global batch K·b grows with K: *weak
scaling* (each worker's work per step is constant). An epoch of N samples takes
N / (K b) steps, so time per epoch = N / (K b) · t_step(K, b) and the speedup over
one worker is T_epoch(1, b) / T_epoch(K, b).

All-reduce bandwidth (ring model): a ring all-reduce of S bytes over K workers
moves 2(K−1)/K · S bytes per worker, so bus bandwidth = 2(K−1)/K · S / t_comm (wall); the
utilization is that over this machine's measured memory-copy bandwidth (MPI ranks
on one host exchange data through shared memory).

GPUs (``device`` "cuda", ``mlcvlab lab run data-parallel --device cuda``): the same
DataParallelStep with the model, the loss and the all-reduced buffer on the device. Each MPI
rank takes GPU local rank mod G and reduces with NCCL (as ``mpiexec -n G mlcvlab train
--device cuda --dist mpi``); K ranks on fewer GPUs share them and are labelled oversubscribed.
One process has one GPU, so an in-process K > 1 row is K shards in turn on that GPU
(measured: false). The wall seconds are device times (the step synchronises) and the
speedups, comparisons and headline are read on them; the CPU seconds are the host's share.
No reference bandwidth is measured for the GPUs' link, so no utilization is given. Under
numba's simulator the report says that no time in it is a GPU's.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List, Tuple

import numpy as np

from mlcvlab.labs import stats
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure, timing_clock
from mlcvlab.parallel.comm import Communicator

QUICK = {"dataset": "mnist", "workers": [1, 2, 4], "batches": [32, 512],
         "hidden": [128, 128], "steps": 4, "n_train": 2048, "measure_mpi": True,
         "measure_up_to": 4, "seeds": 2, "seed": 0, "device": "cpu"}
STANDARD = {**QUICK, "batches": [32, 128, 512], "hidden": [1024, 1024], "steps": 30,
            "n_train": 0, "seeds": 8}
FULL = {**QUICK, "batches": [32, 128, 512], "hidden": [1024, 1024], "steps": 30,
        "n_train": 60000, "seeds": 10}

PHASES = ("compute", "communication", "update", "step")
CLOCKS = ("cpu", "wall")
CLOCK_WORDS = {"cpu": "CPU seconds", "wall": "wall seconds"}


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # pragma: no cover - not Linux
        return os.cpu_count() or 1


def primary_clock(config: Dict[str, Any]) -> str:
    """The clock the speedups, comparisons and headline are read on: a rank's CPU seconds on
    the CPU; on "cuda" the wall seconds of the synchronised step (device time), since there
    the host's CPU seconds are only its share of the step (launching kernels, waiting):
    :func:`mlcvlab.labs.report.timing_clock`, the rule of every lab with a device setting."""
    return timing_clock(config)


def capacity(config: Dict[str, Any]) -> Tuple[int, str]:
    """(how many, of what) a rank needs one of to itself: cores on the CPU, GPUs on "cuda"."""
    if config.get("device", "cpu") == "cuda":
        from mlcvlab.gpu.device import device_count
        n = device_count()
        return n, "GPU" if n == 1 else "GPUs"
    return cores(), "cores"


def oversubscribed_text(config: Dict[str, Any], k: int) -> str:
    """"oversubscribed: K ranks on C cores" (or "on G GPUs"), "" when every rank has its own."""
    n, what = capacity(config)
    return f"oversubscribed: {k} ranks on {n} {what}" if k > n else ""


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


class TimedCommunicator(Communicator):
    """A communicator that adds the CPU seconds of each all-reduce to ``cpu_seconds``."""

    def __init__(self, inner: Communicator):
        self.inner, self.rank, self.size, self.name = inner, inner.rank, inner.size, inner.name
        self.cpu_seconds = 0.0

    @property
    def local_ranks(self):
        return self.inner.local_ranks

    def allreduce_mean(self, buf):
        t = time.process_time()
        self.inner.allreduce_mean(buf)
        self.cpu_seconds += time.process_time() - t

    def broadcast(self, buf, root: int = 0):
        self.inner.broadcast(buf, root)

    def barrier(self):
        self.inner.barrier()


def time_steps(config: Dict[str, Any], comm, b: int, X, y, seed: int) -> Dict[str, float]:
    """Mean CPU and wall seconds per step of compute / communication / update / the whole
    step, the bytes all-reduced and the last step's loss, for per-worker batch b with
    communicator ``comm`` (1 warm-up step, then config["steps"]). ``seed`` sets the weights
    and the batches. On config["device"] "cuda" the wall seconds are device times (the step
    synchronises), the CPU seconds the host's share."""
    from mlcvlab.models import mlp
    from mlcvlab.nn import CrossEntropyLoss
    from mlcvlab.optim import SGD
    from mlcvlab.parallel import DataParallelStep, module_grad_fn
    device = config.get("device", "cpu")
    # 10 digit classes; on "cuda" the model, the loss and the packed buffer live on the GPU
    # and each shard is copied there in grad_fn (the batches are drawn on the host)
    model = mlp([X.shape[1], *config["hidden"], 10], rng=seed).to(device)
    timed = TimedCommunicator(comm)
    step = DataParallelStep(model, timed, seed=seed)
    opt = SGD(model.parameters(), lr=0.01)
    inner_grad = module_grad_fn(CrossEntropyLoss().to(device))
    compute_cpu = [0.0]

    def grad_fn(m, xb, yb):
        t = time.process_time()
        out = inner_grad(m, xb, yb)
        compute_cpu[0] += time.process_time() - t
        return out

    gen = np.random.default_rng([seed, 1])
    B = b * comm.size
    sums = {f"{p}_{c}": 0.0 for p in PHASES for c in CLOCKS}
    nbytes = 0.0
    for s in range(config["steps"] + 1):
        idx = gen.choice(len(X), size=B, replace=B > len(X))
        compute_cpu[0], timed.cpu_seconds = 0.0, 0.0
        c0, w0 = time.process_time(), time.perf_counter()
        loss, t = step.step(X[idx], y[idx], opt, grad_fn)
        c1, w1 = time.process_time(), time.perf_counter()
        nbytes = t["bytes_communicated"]
        if s == 0:                         # the first step is a warm-up
            continue
        sums["compute_wall"] += t["compute_seconds"]
        sums["communication_wall"] += t["communication_seconds"]
        sums["update_wall"] += t["update_seconds"]
        sums["step_wall"] += w1 - w0
        sums["compute_cpu"] += compute_cpu[0]
        sums["communication_cpu"] += timed.cpu_seconds
        sums["step_cpu"] += c1 - c0
        sums["update_cpu"] += max(0.0, (c1 - c0) - compute_cpu[0] - timed.cpu_seconds)
    out = {k: v / config["steps"] for k, v in sums.items()}
    out["bytes"] = float(step.packed[0].nbytes)
    out["measured_bytes"] = nbytes
    out["last_loss"] = float(loss)      # the last step's mean loss: the same on every device
    return out


def _mpi_main(config_path: str, out_path: str) -> None:
    """Entry point on every rank of ``mpiexec -n K python -m mlcvlab.labs.data_parallel``.

    Rank 0 writes {str(b): timings}; a CPU time is the maximum over the ranks (the step
    ends when the slowest rank's all-reduce does). With config["device"] "cuda" each rank
    takes GPU local rank mod G (before anything is allocated) and the all-reduce is NCCL's,
    as ``mpiexec -n G mlcvlab train --device cuda --dist mpi`` does."""
    from mlcvlab.parallel.mpi import MPICommunicator, abort_on_error
    with abort_on_error():
        with open(config_path) as f:
            config = json.load(f)
        if config.get("device", "cpu") == "cuda":
            from mlcvlab.parallel.nccl import NcclCommunicator, select_device_for_rank
            select_device_for_rank()
            comm = NcclCommunicator()
            mpi = comm.mpi
        else:
            comm = mpi = MPICommunicator()
        X, y, _, _ = _data(config)
        rows = {}
        for b in config["batches"]:
            t = time_steps(config, comm, b, X, y, config["repeat_seed"])
            for k in [k for k in t if k.endswith("_cpu")]:
                t[k] = mpi.comm.allreduce(t[k], op=mpi.MPI.MAX)
            rows[str(b)] = t
        if comm.rank == 0:
            with open(out_path, "w") as f:
                json.dump(rows, f)


def measure_mpi(config: Dict[str, Any], k: int, seed: int) -> Dict[str, Dict[str, float]]:
    """Run the timing on k MPI ranks in a subprocess; {str(b): timings} from rank 0."""
    from mlcvlab.parallel.mpi import run_module
    return run_module("mlcvlab.labs.data_parallel", k, {**config, "repeat_seed": int(seed)},
                      "data-parallel lab", "run with --set measure_mpi=false (K > 1 is then "
                      "simulated in one process and modelled, not measured)")


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


MODEL_REF = 2       # the K whose measurements the modelled rows are built from


def model_timings(ref: Dict[str, float], k: int) -> Dict[str, float]:
    """Modelled timings at K = k from the measured timings ``ref`` at K = MODEL_REF (same b):
    per-worker compute and update as at K = 2, the all-reduce scaled by the ring factor."""
    scale = _ring_factor(k) / _ring_factor(MODEL_REF)
    t = {"bytes": ref["bytes"]}
    for c in CLOCKS:
        t[f"compute_{c}"] = ref[f"compute_{c}"]
        t[f"update_{c}"] = ref[f"update_{c}"]
        t[f"communication_{c}"] = ref[f"communication_{c}"] * scale
        t[f"step_{c}"] = t[f"compute_{c}"] + t[f"communication_{c}"] + t[f"update_{c}"]
    return t


def _mean_ci(values: List[float]) -> tuple:
    s = stats.summarize(values)
    return s["mean"], s["ci95"][0], s["ci95"][1]


def build_rows(config, measured: Dict[int, List[Dict[str, Dict[str, float]]]],
               sources: Dict[int, str], n_epoch: int, peak: float = None,
               truly_measured: Dict[int, bool] = None) -> List[Dict[str, Any]]:
    """Rows per (K, b): a measured row for every K in ``measured`` and a modelled row for every
    K > 2 in config["workers"] (from the K = 2 measurements, see the module doc).

    measured: {K: [one {str(b): timings} per repeat]}; every K has the same number of
    repeats. truly_measured: {K: False} marks a K that was simulated in one process (its
    rows say measured: false). peak: the reference bandwidth of the utilization (bytes/s;
    None on a GPU, where none is measured: the utilization is then None). Speedups carry a
    95% interval on both clocks; a measured K above the cores (GPUs on "cuda") is
    oversubscribed.
    """
    from mlcvlab.parallel import ring_allreduce_bandwidth
    truly_measured = truly_measured or {}
    if 1 not in measured:
        raise ValueError("data-parallel lab: need the measured K = 1 baseline")
    modelled_ks = [k for k in config["workers"] if k > MODEL_REF]
    if modelled_ks and MODEL_REF not in measured:
        raise ValueError("data-parallel lab: need a measured K = 2 to model K > 2; include 2 in "
                         "workers")
    n_rep = len(measured[1])
    limit = capacity(config)[0] if any(k > 1 for k in measured) else 1
    rows = []
    plan = [(k, True) for k in config["workers"] if k in measured] + \
        [(k, False) for k in modelled_ks]
    for k, is_meas in plan:
        for b in config["batches"]:
            key = str(b)
            reps = [measured[k][r][key] if is_meas
                    else model_timings(measured[MODEL_REF][r][key], k) for r in range(n_rep)]
            base = [measured[1][r][key] for r in range(n_rep)]
            steps_per_epoch = n_epoch / (k * b)
            epoch = {c: [steps_per_epoch * t[f"step_{c}"] for t in reps] for c in CLOCKS}
            epoch1 = {c: [n_epoch / b * t[f"step_{c}"] for t in base] for c in CLOCKS}
            speed = {c: [e1 / e for e1, e in zip(epoch1[c], epoch[c])] for c in CLOCKS}
            mean = {f: float(np.mean([t[f] for t in reps])) for f in reps[0]}
            measured_flag = bool(is_meas and truly_measured.get(k, True))
            if is_meas:
                source = sources[k]
            else:
                source = (f"modelled (compute, update as measured at K={MODEL_REF}; all-reduce "
                          f"from K={MODEL_REF}, ring)")
            sp = {c: _mean_ci(speed[c]) for c in CLOCKS}
            bw = ring_allreduce_bandwidth(mean["bytes"], mean["communication_wall"], k)
            rows.append({
                "K": k, "per_worker_batch": b, "global_batch": k * b, "measured": measured_flag,
                "source": source,
                "oversubscribed": bool(is_meas and truly_measured.get(k, True) and k > limit),
                "repeats": n_rep,
                "compute_cpu_ms": 1e3 * mean["compute_cpu"],
                "compute_wall_ms": 1e3 * mean["compute_wall"],
                "communication_cpu_ms": 1e3 * mean["communication_cpu"],
                "communication_wall_ms": 1e3 * mean["communication_wall"],
                "update_cpu_ms": 1e3 * mean["update_cpu"],
                "step_cpu_ms": 1e3 * mean["step_cpu"], "step_wall_ms": 1e3 * mean["step_wall"],
                "comm_fraction_cpu": mean["communication_cpu"] / mean["step_cpu"],
                "comm_fraction_wall": mean["communication_wall"] / mean["step_wall"],
                "comm_fraction_cpu_values": [t["communication_cpu"] / t["step_cpu"]
                                             for t in reps],
                "epoch_cpu_seconds": float(np.mean(epoch["cpu"])),
                "epoch_wall_seconds": float(np.mean(epoch["wall"])),
                "epoch_cpu_values": epoch["cpu"], "epoch_wall_values": epoch["wall"],
                "comm_fraction_wall_values": [t["communication_wall"] / t["step_wall"]
                                              for t in reps],
                **{key: value for c in CLOCKS for key, value in (
                    (f"speedup_{c}", sp[c][0]), (f"speedup_{c}_lo", sp[c][1]),
                    (f"speedup_{c}_hi", sp[c][2]), (f"speedup_{c}_values", speed[c]),
                    (f"efficiency_{c}", sp[c][0] / k))},
                "allreduce_MB": mean["bytes"] / 1e6, "bus_bandwidth_GBps": bw / 1e9,
                "bandwidth_utilization": (None if peak is None else
                                          bw / peak if k > 1 else 0.0)})
    return rows


def _measure(config, progress) -> tuple:
    """Measured timings {K: [per repeat {str(b): timings}]}.

    With ``measure_mpi`` every K <= measure_up_to runs under mpiexec -n K (one BLAS thread
    per rank), the K's of one repeat back to back; otherwise K = 1 runs in this process and
    K = 2 is simulated with the local communicator (shards one after the other, per-worker
    compute = total / 2): such K = 2 rows say measured: false.

    On "cuda" an MPI rank takes one GPU (local rank mod G; several ranks share one when
    K > G, labelled oversubscribed) and the all-reduce is NCCL's; the in-process K = 2 is two
    shards in turn on the one GPU of this process, labelled so (measured: false).
    """
    from threadpoolctl import threadpool_limits
    from mlcvlab.parallel import LocalCommunicator
    X, y, used, note = _data(config)
    n_epoch = len(X)
    seeds = stats.seeds_of(config)
    if config["measure_mpi"]:
        ks = [k for k in config["workers"] if k <= config["measure_up_to"]]
    else:
        ks = [k for k in config["workers"] if k <= MODEL_REF]
    measured: Dict[int, list] = {k: [] for k in ks}
    sources, truly = {}, {}
    gpu = config.get("device", "cpu") == "cuda"
    sim, reduce = "", "NCCL"
    if gpu:
        from mlcvlab.gpu.device import simulated
        if simulated():     # NumPy buffers: NcclCommunicator reduces them with MPI
            sim, reduce = ", simulated GPU", "MPI all-reduce"
    for seed in progress(seeds, desc="repeats"):
        for k in ks:
            if config["measure_mpi"]:
                measured[k].append(measure_mpi(config, k, seed))
                over = oversubscribed_text(config, k)
                sources[k] = (f"measured (mpiexec -n {k}" + (f", a GPU per rank, {reduce}{sim}"
                                                             if gpu else "")
                              + (f"; {over}" if over else "") + ")")
                continue
            with threadpool_limits(1):
                rep = {str(b): time_steps(config, LocalCommunicator(k), b, X, y, seed)
                       for b in config["batches"]}
            for t in rep.values():
                for c in CLOCKS:        # the k shards ran one after the other
                    t[f"step_{c}"] -= t[f"compute_{c}"] * (k - 1) / k
                    t[f"compute_{c}"] /= k
            measured[k].append(rep)
            if gpu:
                sources[k] = (f"measured (1 process, 1 GPU{sim})" if k == 1 else
                              f"{k} shards on one GPU (1 process, in turn{sim}; per-worker "
                              f"compute = total / {k})")
            else:
                sources[k] = "measured (1 process)" if k == 1 else \
                    "simulated in 1 process (local shards; per-worker compute = total / 2)"
            truly[k] = k == 1
    return measured, sources, truly, n_epoch, used, note


def _figure(rows, config):
    c = primary_clock(config)
    n_units, units = capacity(config)
    fig, (ax1, ax2) = new_figure(ncols=2, figsize=(11, 4.2))
    for i, b in enumerate(config["batches"]):
        color = f"C{i}"
        meas = sorted((r for r in rows if r["per_worker_batch"] == b and r["measured"]),
                      key=lambda r: r["K"])
        model = sorted((r for r in rows if r["per_worker_batch"] == b and not r["measured"]),
                       key=lambda r: r["K"])
        if meas:
            ks = [r["K"] for r in meas]
            sp = [r[f"speedup_{c}"] for r in meas]
            lo = [r[f"speedup_{c}_lo"] for r in meas]
            hi = [r[f"speedup_{c}_hi"] for r in meas]
            err = [[s - (v if v is not None else s) for s, v in zip(sp, lo)],
                   [(v if v is not None else s) - s for s, v in zip(sp, hi)]]
            ax1.errorbar(ks, sp, yerr=err, fmt="o-", color=color, capsize=3,
                         label=f"b={b} measured")
            ax2.plot(ks, [r[f"comm_fraction_{c}"] for r in meas], "o-", color=color,
                     label=f"b={b} measured")
        if model:
            # dashed from the measured K = 2 point the model starts from
            start = [r for r in meas if r["K"] == MODEL_REF]
            line = start + model
            ax1.plot([r["K"] for r in line], [r[f"speedup_{c}"] for r in line], "--",
                     color=color, alpha=0.8)
            ax1.plot([r["K"] for r in model], [r[f"speedup_{c}"] for r in model], "o",
                     mfc="none", color=color, label=f"b={b} modelled")
            ax2.plot([r["K"] for r in line], [r[f"comm_fraction_{c}"] for r in line], "--",
                     color=color, alpha=0.8)
            ax2.plot([r["K"] for r in model], [r[f"comm_fraction_{c}"] for r in model], "o",
                     mfc="none", color=color, label=f"b={b} modelled")
    ks = sorted(set(config["workers"]))
    over = sorted({r["K"] for r in rows if r["oversubscribed"]})
    for ax in (ax1, ax2):
        for j, k in enumerate(over):
            ax.axvspan(k - 0.15, k + 0.15, color="0.9", zorder=0,
                       label=f"oversubscribed: ranks > {n_units} {units}" if j == 0 else None)
    ax1.plot(ks, ks, ":", color="k", label="ideal (speedup = K)")
    ax1.set_xticks(ks), ax2.set_xticks(ks)
    ax1.set_xlabel("workers K"), ax1.set_ylabel(f"speedup per epoch ({CLOCK_WORDS[c]}, ×)")
    ax1.set_title("Speedup over K = 1 (bars: 95% CI over repeats)")
    ax2.set_xlabel("workers K")
    ax2.set_ylabel(f"communication / step ({CLOCK_WORDS[c]}, fraction)")
    ax2.set_title("Communication share of a step")
    ax1.legend(fontsize=7), ax2.legend(fontsize=7)
    fig.suptitle("Synchronous data-parallel SGD: solid = measured, hollow dashed = modelled")
    return fig


def comparisons_of(rows, config: Dict[str, Any] = None) -> List[Dict[str, Any]]:
    """K vs K = 1 on seconds per epoch (the :func:`primary_clock` of ``config``: CPU seconds,
    wall seconds on "cuda") for every measured K > 1 and b (paired by repeat), and, at the
    largest measured K, the communication share of the largest vs the smallest b."""
    config = config or {}
    clock = primary_clock(config)
    out = []
    meas = [r for r in rows if r["measured"]]
    base = {r["per_worker_batch"]: r for r in meas if r["K"] == 1}
    for r in meas:
        if r["K"] > 1:
            over = ""
            if r["oversubscribed"] and clock == "cpu":
                over = (f" ({oversubscribed_text(config, r['K'])}, so less CPU per rank is "
                        "not a wall-time speedup)")
            elif r["oversubscribed"]:
                over = f" ({oversubscribed_text(config, r['K'])}: ranks share a GPU)"
            what = ("CPU seconds per epoch of the slowest rank" if clock == "cpu" else
                    "wall seconds per epoch (device time, rank 0's synchronised steps)")
            c = stats.compare(f"K={r['K']}", r[f"epoch_{clock}_values"], "K=1",
                              base[r["per_worker_batch"]][f"epoch_{clock}_values"],
                              f"{what}, b={r['per_worker_batch']}{over}",
                              higher_is_better=False, replicate="repeat")
            c.update(K=r["K"], per_worker_batch=r["per_worker_batch"])
            out.append(c)
    multi = [r for r in meas if r["K"] > 1]
    if multi:
        kmax = max(r["K"] for r in multi)
        at = {r["per_worker_batch"]: r for r in multi if r["K"] == kmax}
        small, large = min(at), max(at)
        if small != large:
            c = stats.compare(f"b={large}", at[large][f"comm_fraction_{clock}_values"],
                              f"b={small}", at[small][f"comm_fraction_{clock}_values"],
                              f"communication share of a step ({CLOCK_WORDS[clock]}) at "
                              f"K={kmax}",
                              higher_is_better=False, replicate="repeat")
            c.update(K=kmax, kind="comm_share")
            out.append(c)
    return out


def _summarize(rows, config, n_epoch: int, peak: float, used: str) -> Dict[str, Any]:
    """Numbers the report's sentences are built from: measured rows only, speedups on the
    :func:`primary_clock` (CPU seconds; wall seconds, device time, on "cuda")."""
    clock = primary_clock(config)
    other = "wall" if clock == "cpu" else "cpu"
    words = CLOCK_WORDS[clock]
    n_units, units = capacity(config) if any(r["K"] > 1 for r in rows) else (cores(), "cores")
    measured = [r for r in rows if r["measured"] and r["K"] > 1]
    dedicated = [r for r in measured if not r["oversubscribed"]]
    over = [r for r in measured if r["oversubscribed"]]
    comps = comparisons_of(rows, config)
    speed = [c for c in comps if "per_worker_batch" in c]
    utils = [r["bandwidth_utilization"] for r in measured
             if r["bandwidth_utilization"] is not None]
    results = {
        "rows": rows, "used": used, "n_epoch": n_epoch,
        "memcpy_GBps": None if peak is None else peak / 1e9, "clock": clock,
        "clock_words": words, "device": config.get("device", "cpu"),
        "param_MB": rows[0]["allreduce_MB"], "cores": cores(), "units": f"{n_units} {units}",
        "comparisons": comps,
        "measured_ks": sorted({r["K"] for r in rows if r["measured"]}),
        "modelled_ks": sorted({r["K"] for r in rows if not r["measured"]}),
        "oversubscribed_ks": sorted({r["K"] for r in rows if r["oversubscribed"]}),
        "n_repeats": rows[0]["repeats"],
        "n_faster": sum(c["verdict"] == "a better" for c in speed),
        "n_slower": sum(c["verdict"] == "b better" for c in speed),
        "n_unsep": sum(c["verdict"] == "not separable" for c in speed),
        "n_speed_comparisons": len(speed),
        "max_bw_GBps": max((r["bus_bandwidth_GBps"] for r in measured), default=0.0),
        "max_util": max(utils) if utils else None,
    }
    if over and clock == "cpu":
        o = max(over, key=lambda r: r["speedup_cpu"])
        results["over_text"] = (
            f"With more ranks than cores (K = {o['K']}, {oversubscribed_text(config, o['K'])}) "
            f"the best measured CPU-seconds speedup is {o['speedup_cpu']:.2f}x "
            f"(b = {o['per_worker_batch']}) and the wall-seconds speedup there is "
            f"{o['speedup_wall']:.2f}x. A rank's CPU seconds leave out the time it waits for a "
            "core, so on this machine the wall figure is what the run delivered; the verdicts "
            "for this K are in the comparisons above.")
    elif over:
        o = max(over, key=lambda r: r["speedup_wall"])
        results["over_text"] = (
            f"With more ranks than GPUs (K = {o['K']}, {oversubscribed_text(config, o['K'])}) "
            f"ranks share a GPU, so their steps queue on it: the best measured wall-seconds "
            f"speedup there is {o['speedup_wall']:.2f}x (b = {o['per_worker_batch']}); the "
            "verdicts for this K are in the comparisons above.")
    pool = dedicated or measured
    if pool:
        best = max(pool, key=lambda r: r[f"speedup_{clock}"])
        verdict = next(c["verdict"] for c in speed
                       if c["K"] == best["K"] and c["per_worker_batch"] == best["per_worker_batch"])
        results.update(
            best_K=best["K"], best_b=best["per_worker_batch"],
            best_speedup=best[f"speedup_{clock}"],
            best_speedup_ci=[best[f"speedup_{clock}_lo"], best[f"speedup_{clock}_hi"]],
            best_speedup_wall=best["speedup_wall"], best_speedup_other=best[f"speedup_{other}"],
            best_source=best["source"],
            best_verdict={"a better": "faster than K = 1",
                          "b better": "slower than K = 1",
                          "not separable": "not separable from K = 1"}[verdict])
        ci = results["best_speedup_ci"]
        results["best_ci_text"] = ("no interval from 1 repeat" if ci[0] is None else
                                   f"95% CI [{ci[0]:.2f}, {ci[1]:.2f}] over "
                                   f"{best['repeats']} repeats")
        beside = ("wall seconds give {best_speedup_other:.2f}x" if clock == "cpu" else
                  "the host's CPU seconds give {best_speedup_other:.2f}x")
        results["headline"] = (
            "Best measured speedup: {best_speedup:.2f}x ({best_ci_text}) with K = {best_K} "
            "workers at per-worker batch {best_b} ({best_source}; {clock_words} per epoch; "
            + beside + "); in {clock_words} per epoch this K is {best_verdict}.").format(**results)
        if best["oversubscribed"]:
            results["headline"] += (" (No K > 1 ran with a core per rank.)" if clock == "cpu"
                                    else " (No K > 1 ran with a GPU per rank.)")
    else:
        results.update(best_K=None, best_b=None, best_speedup=None, best_speedup_ci=[None, None],
                       best_speedup_wall=None, best_speedup_other=None, best_source=None,
                       best_verdict=None,
                       headline="No multi-worker configuration was measured (measure_mpi is "
                                "false or measure_up_to is 1), so this run reports no speedup; "
                                "its K > 1 rows are simulated or modelled." + (
                                    " (On one GPU in one process, K workers are K shards in "
                                    "turn on that GPU.)" if clock == "wall" else ""))
    return results


def device_text(config: Dict[str, Any]) -> str:
    """The report's paragraph on a GPU run: where the numbers come from and what each clock
    means there ("" on the CPU). Under the simulator it says that no number is a GPU's."""
    if config.get("device", "cpu") != "cuda":
        return ""
    from mlcvlab.gpu.device import simulated
    text = ("On the GPU (the device is named under Setup): the model, the loss and the "
            "all-reduced buffer live there; each shard is copied there from the host inside "
            "its compute time (the batches are drawn on the host, as the Trainer's are). "
            "**Device times**: the wall seconds (the step reads each shard's loss and the "
            "reduced loss and synchronises after the update, so they are the device's work, "
            "not launch times); speedups and verdicts are on them, the host's CPU seconds "
            "only beside them. One process has one GPU: an in-process K > 1 row is K shards "
            "in turn on that GPU (not measured as K workers); K GPUs need `mpiexec -n K` ranks "
            "(measure_mpi), each on GPU local rank mod G, reduced with NCCL, and K ranks on "
            "fewer GPUs share them (oversubscribed). No bandwidth reference is measured for the "
            "GPUs' link, so no utilization is given.")
    if simulated():
        text += (" **Simulator run**: NUMBA_ENABLE_CUDASIM=1, no GPU; the kernels are Python "
                 "threads and the all-reduce is MPI's on host memory, so every time in this "
                 "report is a simulator time and says nothing about a GPU's speed: this run "
                 "checks that the GPU path runs end to end.")
    return text


def _write_report(rep: Report, rows, config, results) -> None:
    gpu = device_text(config)
    if gpu:
        rep.text(gpu)
    if results["clock"] == "cpu":
        clocks = ("Times are CPU seconds of a rank (the maximum over the ranks; they do not "
                  "count time spent waiting for a core taken by another job) with wall seconds "
                  "beside them")
    else:
        clocks = ("Times are wall seconds (device time) with the host's CPU seconds beside "
                  "them")
    rep.text("Per-worker batch b is fixed while K grows, so the global batch is K·b: **weak "
             "scaling** (each worker does the same work per step). An epoch of {n_epoch} samples "
             "takes {n_epoch}/(K·b) steps; time per epoch = steps × (compute + communication + "
             "update) and speedup = T_epoch(K=1) / T_epoch(K). " + clocks + "; each is the mean "
             "over {n_repeats} repeats of the timing, and a speedup's 95% interval is over the "
             "repeats. This machine has {units}. **Measured**: K in {measured_ks} "
             "(oversubscribed, more ranks than {units}: K in {oversubscribed_ks}). "
             "**Modelled** (not measured; never used in the conclusions): K in {modelled_ks}.")
    rep.text("Modelled rows: per-worker compute and update as measured at K = 2 with the same b; "
             "all-reduce time scaled from the measured K = 2 all-reduce with the ring model, "
             "t(K) = t(2) · [2(K−1)/K] / [2(2−1)/2].")
    c = results["clock"]
    other = "wall" if c == "cpu" else "cpu"
    cols = ["K", "per_worker_batch", "global_batch", "measured", "source", "step_cpu_ms",
            "step_wall_ms", "epoch_cpu_seconds", "epoch_wall_seconds", f"speedup_{c}",
            f"speedup_{c}_lo", f"speedup_{c}_hi", f"speedup_{other}", f"efficiency_{c}"]
    beside = "wall beside" if c == "cpu" else "the host's CPU seconds beside"
    rep.table("time_speedup", rows, f"Time per epoch and speedup ({CLOCK_WORDS[c]}; {beside}; "
              f"speedup_{c}_lo/hi: 95% CI over repeats)", columns=cols)
    cols = ["K", "per_worker_batch", "measured", "compute_cpu_ms", "compute_wall_ms",
            "communication_cpu_ms", "communication_wall_ms", "update_cpu_ms",
            "comm_fraction_cpu", "comm_fraction_wall"]
    rep.table("compute_communication", rows, "Compute vs communication per step", columns=cols)
    rep.text("Communication time is the time of the all-reduce call, so it includes waiting for "
             "the slowest rank (load imbalance), not only data movement; MPI ranks may spin "
             "while they wait, so the wait also shows in CPU seconds.")
    reference = ("utilization = bus bandwidth / memory-copy bandwidth of this machine "
                 "({memcpy_GBps:.2f} GB/s, one np.copyto of 64 MB)" if results["memcpy_GBps"]
                 else "no utilization (no reference bandwidth measured for the GPUs' link)")
    rep.text("Bandwidth: a ring all-reduce of S bytes over K workers sends and receives "
             "2(K−1)/K · S bytes per worker, so **bus bandwidth = 2(K−1)/K · S / t_allreduce** "
             "(wall seconds); " + reference + ". S = {param_MB:.3f} MB (the flat "
             "gradient buffer with BN statistics and the loss).")
    cols = ["K", "per_worker_batch", "measured", "source", "allreduce_MB",
            "communication_wall_ms", "bus_bandwidth_GBps", "bandwidth_utilization"]
    rep.table("bandwidth", [r for r in rows if r["K"] > 1], "All-reduce bandwidth utilization",
              columns=cols)
    rep.comparisons(results["comparisons"], "Comparisons (measured rows, paired by repeat)")
    bullets = ["{headline}"] + (["{over_text}"] if "over_text" in results else []) + [
               "Of the {n_speed_comparisons} measured K > 1 vs K = 1 comparisons of "
               "{clock_words} per epoch, {n_faster} found the K > 1 run faster, {n_slower} "
               "found it slower and {n_unsep} were not separable (sentences above)."]
    share = [c for c in results["comparisons"] if c.get("kind") == "comm_share"]
    if share:
        results["share_sentence"] = stats.sentence(share[0])
        bullets.append("Communication share of a step: {share_sentence}")
    if results["max_bw_GBps"] and results["max_util"] is not None:
        bullets.append("The highest measured all-reduce bus bandwidth is {max_bw_GBps:.3f} GB/s, "
                       "{max_util:.1%} of this machine's memory-copy bandwidth.")
    elif results["max_bw_GBps"]:
        bullets.append("The highest measured all-reduce bus bandwidth is {max_bw_GBps:.3f} "
                       "GB/s.")
    rep.conclusions(bullets)
    rep.explanation("the all-reduced buffer has the same size whatever b is, so the larger the "
                    "per-worker batch, the more compute there is per byte communicated; on a "
                    "machine with fewer cores than ranks, ranks also wait for a core, which "
                    "shows as communication time.")


@lab(name="data-parallel", study="Synchronous data-parallel SGD: time per epoch, speedup, "
     "compute vs communication and all-reduce bandwidth for 1, 2, 4 workers",
     quick=QUICK, standard=STANDARD, full=FULL,
     expected_seconds={"quick": 30, "standard": 900, "full": 3600})
def run(config, out_dir, progress):
    _validate(config)
    measured, sources, truly, n_epoch, used, note = _measure(config, progress)
    # the host's copy bandwidth is the reference of CPU ranks only (GPUs: none is measured)
    peak = memcpy_bandwidth() if config.get("device", "cpu") == "cpu" else None
    rows = build_rows(config, measured, sources, n_epoch, peak, truly)
    results = _summarize(rows, config, n_epoch, peak, used)
    rep = Report(out_dir, "Synchronous data-parallel SGD", results)
    if note:
        rep.note_substitution(config["dataset"], used)
    rep.setup(config)
    _write_report(rep, rows, config, results)
    rep.figure("scaling", _figure(rows, config),
               f"Speedup per epoch in {CLOCK_WORDS[results['clock']]} (left) and communication "
               "share of a step (right); solid markers: measured, hollow markers on dashed "
               "lines: modelled")
    rep.write()
    return results


def _validate(config) -> None:
    """A clear ValueError for every bad config value, before any work."""
    def ints(key, lo, unique=True):
        v = config[key]
        if not isinstance(v, (list, tuple)) or not v or any(
                isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < lo for x in v):
            raise ValueError(f"data-parallel lab: {key} must be a non-empty list of integers "
                             f">= {lo}, got {v!r}")
        if unique and len(set(v)) != len(v):
            raise ValueError(f"data-parallel lab: {key} must not repeat a value, got {v!r}")
    ints("workers", 1), ints("batches", 1), ints("hidden", 1, unique=False)
    if 1 not in config["workers"]:
        raise ValueError("data-parallel lab: workers must include 1 (the speedup baseline)")
    if any(k > MODEL_REF for k in config["workers"]) and MODEL_REF not in config["workers"]:
        raise ValueError("data-parallel lab: workers above 2 are modelled from K = 2; include 2 "
                         f"in workers, got {config['workers']}")
    for key, lo in (("steps", 1), ("measure_up_to", 1), ("n_train", 0)):
        v = config[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"data-parallel lab: {key} must be an integer >= {lo}, got {v!r}")
    if 0 < config["n_train"] < max(config["batches"]):
        raise ValueError(f"data-parallel lab: n_train ({config['n_train']}) must be 0 (all) or at "
                         f"least the largest batch ({max(config['batches'])})")
    stats.seeds_of(config)      # raises on a bad seeds value


if __name__ == "__main__":     # an MPI rank started by measure_mpi
    _mpi_main(sys.argv[1], sys.argv[2])
