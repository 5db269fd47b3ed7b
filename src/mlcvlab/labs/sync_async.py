"""Lab ``sync-async``: synchronous SGD, synchronous SGD with backup workers, and asynchronous
SGD with stale gradients, with stragglers (Chen et al. 2016, "Revisiting Distributed
Synchronous SGD").

K workers train the same MLP on the same data. The workers run **in this process as a
discrete-event simulation**:

* every gradient is real: the library's ``module_grad_fn`` computes it on a real mini-batch
  against the weights the worker actually read (the model's flat gradient buffer);
* every worker's compute time is *simulated*: the measured CPU seconds of one real gradient
  computation (median of ``timing_repeats`` calls, one BLAS thread) times a straggler factor
  drawn from a heavy-tailed model (``straggler``: ``"lognormal"``, exp(sigma Z), or
  ``"mixture"``, exp(sigma Z) times ``straggler_factor`` with probability ``straggler_p``);
* a simulated clock orders the events. Communication and the update itself take no
  simulated time (not modelled).

Policies (K machines each):

* ``sync``: every step waits for all K gradients (computed on the same weights) and applies
  their mean; a step lasts as long as the slowest worker;
* ``sync+backup``: N = K - b workers' gradients are needed; all K compute, the first N to
  finish are averaged and the slowest b are dropped (their work is cancelled); a step lasts
  as long as the N-th fastest worker;
* ``async``: each worker reads the weights, computes a gradient and applies it alone when it
  finishes, to weights that other workers may have moved meanwhile; the **staleness** of a
  gradient is the number of updates applied between its read and its application.

Pairing by seed: for one seed every policy starts from the same initial weights, sees the
same stream of mini-batches (the i-th batch a worker starts on is the same in every policy)
and the same drawn compute times (worker k's j-th computation gets the same draw in every
policy; sync and sync+backup cancel the stragglers at each step, so step j uses draw j of
every worker in both). The validation split (``train_val_split``) gives every curve and the
time-to-accuracy; the test split is evaluated once per run, on the final weights.

Optional (``mpi_ranks`` >= 2): the synchronous policy, straggler-free, on real MPI ranks
(``mpiexec -n mpi_ranks python -m mlcvlab.labs.sync_async``): measured per-step compute and
all-reduce times, and a check that the ranks end with the same weights as the same steps
computed in this process. It is reported as measured, apart from the simulation.
"""
from __future__ import annotations

import heapq
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

from mlcvlab.labs import stats
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure

QUICK = {"dataset": "mnist10k", "hidden": [64], "workers": 4, "backup": 1, "batch": 32,
         "lr": 0.1, "lr_scaling": "linear", "horizon": 120.0, "target_acc": 0.85, "eval_points": 40,
         "eval_every": 10, "straggler": "mixture", "sigma": 0.1, "straggler_p": 0.05,
         "straggler_factor": 5.0, "straggler_ks": [1, 2, 4, 8, 16], "straggler_steps": 2000,
         "timing_repeats": 20, "val_fraction": 0.1, "mpi_ranks": 0, "mpi_steps": 20,
         "seeds": 2, "seed": 0}
STANDARD = {**QUICK, "hidden": [128], "workers": 16, "backup": 2, "lr": 0.05,
            "horizon": 800.0, "target_acc": 0.93, "eval_points": 100, "eval_every": 20,
            "straggler_ks": [1, 2, 4, 8, 16, 32, 64], "straggler_steps": 5000,
            "timing_repeats": 50, "mpi_ranks": 2, "seeds": 10}
FULL = {**STANDARD, "dataset": "mnist", "workers": 32, "backup": 2, "lr": 0.025,
        "horizon": 1500.0,
        "target_acc": 0.96, "eval_points": 300, "eval_every": 50,
        "straggler_ks": [1, 2, 4, 8, 16, 32, 64, 128], "mpi_ranks": 4, "seeds": 10}

POLICIES = ("sync", "sync+backup", "async")
COLORS = {"sync": "tab:blue", "sync+backup": "tab:green", "async": "tab:red"}
STRAGGLER_MODELS = ("lognormal", "mixture")
LR_SCALINGS = ("none", "linear")
DATASETS = ("mnist10k", "fashion10k", "mnist", "fashion_mnist")


# -- config ------------------------------------------------------------------------------------
def _fail(key: str, rule: str, value: Any) -> None:
    raise ValueError(f"sync-async lab: {key} must be {rule}, got {value!r}")


def _check_int(config, key: str, lo: int) -> None:
    v = config[key]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        _fail(key, f"an integer >= {lo}", v)


def _check_float(config, key: str, lo: float, hi: float, lo_open: bool, hi_open: bool) -> None:
    v = config[key]
    ok = (not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating))
          and np.isfinite(v) and (v > lo if lo_open else v >= lo)
          and (v < hi if hi_open else v <= hi))
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        _fail(key, f"a finite number in {rng}", v)


def _validate(config: Dict[str, Any]) -> None:
    """A ValueError naming the key and its valid range for every bad value, before any work."""
    if config["dataset"] not in DATASETS:
        _fail("dataset", f"one of {DATASETS}", config["dataset"])
    h = config["hidden"]
    if not isinstance(h, (list, tuple)) or not h or any(
            isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1 for x in h):
        _fail("hidden", "a non-empty list of integers >= 1", h)
    for key, lo in (("workers", 2), ("backup", 1), ("batch", 1), ("eval_points", 2),
                    ("eval_every", 1), ("straggler_steps", 1), ("timing_repeats", 1),
                    ("mpi_ranks", 0), ("mpi_steps", 2)):
        _check_int(config, key, lo)
    if config["mpi_ranks"] == 1 or config["mpi_ranks"] > 64:
        _fail("mpi_ranks", "0 (no MPI measurement) or an integer in [2, 64]",
              config["mpi_ranks"])
    if config["backup"] >= config["workers"]:
        _fail("backup", f"smaller than workers ({config['workers']}): N = workers - backup "
              "gradients are averaged, N >= 1", config["backup"])
    _check_float(config, "lr", 0.0, 10.0, True, False)
    _check_float(config, "horizon", 10.0, 1e7, False, False)   # in median compute times
    _check_float(config, "target_acc", 0.0, 1.0, True, True)
    _check_float(config, "sigma", 0.0, 3.0, False, False)
    _check_float(config, "straggler_p", 0.0, 1.0, False, False)
    _check_float(config, "straggler_factor", 1.0, 1000.0, False, False)
    _check_float(config, "val_fraction", 0.0, 0.5, True, False)
    if config["lr_scaling"] not in LR_SCALINGS:
        _fail("lr_scaling", f"one of {LR_SCALINGS}", config["lr_scaling"])
    if config["straggler"] not in STRAGGLER_MODELS:
        _fail("straggler", f"one of {STRAGGLER_MODELS}", config["straggler"])
    ks = config["straggler_ks"]
    if not isinstance(ks, (list, tuple)) or not ks or any(
            isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1 for x in ks) \
            or len(set(ks)) != len(ks):
        _fail("straggler_ks", "a non-empty list of distinct integers >= 1", ks)
    seeds = stats.seeds_of(config)      # raises on a bad seeds value
    if len(seeds) < 1:
        _fail("seeds", ">= 1", config["seeds"])


# -- the simulation's parts --------------------------------------------------------------------
def straggler_factors(config: Dict[str, Any], gen: np.random.Generator, size) -> np.ndarray:
    """Draws of the straggler factor (median 1 without stragglers): exp(sigma Z), and for the
    ``mixture`` model times ``straggler_factor`` with probability ``straggler_p``."""
    f = np.exp(config["sigma"] * gen.standard_normal(size))
    if config["straggler"] == "mixture":
        slow = gen.random(size) < config["straggler_p"]
        f = np.where(slow, f * config["straggler_factor"], f)
    return f


class WorkerClocks:
    """Per-worker streams of simulated compute times: worker k's j-th computation gets the same
    draw in every policy of a seed (one generator per worker, seeded by (seed, k))."""

    def __init__(self, config: Dict[str, Any], seed: int, workers: int, base_seconds: float):
        self.config, self.base = config, base_seconds
        self.gens = [np.random.default_rng([seed, 3, k]) for k in range(workers)]

    def next(self, k: int) -> float:
        """The simulated seconds of worker k's next gradient computation."""
        return float(self.base * straggler_factors(self.config, self.gens[k], 1)[0])


class BatchStream:
    """Mini-batch indices from seeded epoch permutations of the training set; the i-th call
    returns the same batch in every policy of a seed."""

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch = n, batch
        self.gen = np.random.default_rng([seed, 2])
        self.order, self.pos = self.gen.permutation(n), 0

    def next(self) -> np.ndarray:
        if self.pos + self.batch > self.n:
            self.order, self.pos = self.gen.permutation(self.n), 0
        idx = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return idx


def accuracy(model, X: np.ndarray, y: np.ndarray, chunk: int = 2000) -> float:
    """Top-1 accuracy of ``model`` (its current weights) on (X, y), in eval mode."""
    model.eval()
    correct = 0
    for i in range(0, len(X), chunk):
        logits = np.asarray(model(X[i:i + chunk]))
        correct += int((logits.argmax(axis=1) == y[i:i + chunk]).sum())
    model.train()
    return correct / len(X)


class Recorder:
    """Validation accuracy on a fixed grid of simulated times (exact: the weights at time t are
    those after every update at or before t) and every ``eval_every`` updates."""

    def __init__(self, model, X_val, y_val, horizon: float, points: int, eval_every: int):
        self.model, self.X, self.y = model, X_val, y_val
        self.grid = np.linspace(0.0, horizon, points + 1)
        self.grid_acc: List[float] = []
        self.eval_every = eval_every
        self.updates: List[int] = [0]
        self.update_time: List[float] = [0.0]
        self.update_acc: List[float] = [accuracy(model, X_val, y_val)]

    def before_update(self, t: float) -> None:
        """Evaluate every grid time before ``t`` (an update is about to land at ``t``)."""
        while len(self.grid_acc) < len(self.grid) and self.grid[len(self.grid_acc)] < t:
            self.grid_acc.append(self._grid_value())

    def _grid_value(self) -> float:
        if len(self.grid_acc) == 0:
            return self.update_acc[0]
        return accuracy(self.model, self.X, self.y)

    def after_update(self, n_updates: int, t: float) -> None:
        if n_updates % self.eval_every == 0:
            self.updates.append(n_updates)
            self.update_time.append(t)
            self.update_acc.append(accuracy(self.model, self.X, self.y))

    def finish(self) -> None:
        """Evaluate the remaining grid times (no update lands before the horizon any more)."""
        self.before_update(np.inf)


def time_to_target(grid: np.ndarray, acc: List[float], target: float) -> Optional[float]:
    """The first grid time at which the validation accuracy is >= target, or None."""
    hit = np.nonzero(np.asarray(acc) >= target)[0]
    return float(grid[hit[0]]) if hit.size else None


class Setup:
    """One seed's model, data, gradient function and optimizer; ``reset`` restores the seed's
    initial weights before each policy."""

    def __init__(self, config, seed: int, data, base_seconds: float):
        from mlcvlab.models import mlp
        from mlcvlab.nn import CrossEntropyLoss
        from mlcvlab.optim import SGD
        from mlcvlab.parallel import module_grad_fn
        from mlcvlab.data import train_val_split
        X, y, self.X_test, self.y_test = data
        self.X, self.y, self.X_val, self.y_val = train_val_split(
            X, y, val_fraction=config["val_fraction"], seed=seed)
        self.config, self.seed, self.base = config, seed, base_seconds
        self.model = mlp([X[0].size, *config["hidden"], 10], rng=seed)
        self.flat = self.model.flat()
        self.w0 = self.flat.data.copy()
        self.grad_fn = module_grad_fn(CrossEntropyLoss())
        self.optimizer = SGD(self.model.parameters(), lr=config["lr"])
        self.horizon = config["horizon"] * base_seconds

    def reset(self, synchronous: bool):
        """Initial weights, fresh batch stream, clocks and recorder for one policy. The
        learning rate is ``lr``; with ``lr_scaling="linear"`` both synchronous policies use
        lr times K (their updates average up to K gradients; the same rate with and without
        backup workers, so the two differ only in which gradients they wait for)."""
        self.flat.data[...] = self.w0
        linear = synchronous and self.config["lr_scaling"] == "linear"
        scale = self.config["workers"] if linear else 1
        self.optimizer.lr = self.config["lr"] * scale
        self.model.train()
        c = self.config
        return (BatchStream(len(self.X), c["batch"], self.seed),
                WorkerClocks(c, self.seed, c["workers"], self.base),
                Recorder(self.model, self.X_val, self.y_val, self.horizon, c["eval_points"],
                         c["eval_every"]))

    def gradient(self, idx: np.ndarray) -> np.ndarray:
        """A real gradient (a copy) on batch ``idx`` against the model's current weights."""
        _, g = self.grad_fn(self.model, self.X[idx], self.y[idx])
        return g.copy()

    def apply(self, grad: np.ndarray) -> None:
        """One optimizer update with ``grad`` in the flat gradient buffer."""
        self.flat.grad[...] = grad
        self.optimizer.step()


def run_sync(s: Setup, n_aggregate: int) -> Dict[str, Any]:
    """Synchronous steps: all K workers compute on the same weights, the first
    ``n_aggregate`` to finish are averaged (n_aggregate = K: plain sync; K - b: backup
    workers), the others are cancelled; a step lasts the n_aggregate-th fastest time. The
    update is the library's :class:`DataParallelStep` over the aggregated workers' batches
    (one shard each, mean of the shard gradients, one optimizer step)."""
    from mlcvlab.parallel import DataParallelStep, LocalCommunicator
    K = s.config["workers"]
    stream, clocks, rec = s.reset(synchronous=True)
    # the library's synchronous step: one shard per aggregated worker, all-reduce mean, update
    dp = DataParallelStep(s.model, LocalCommunicator(n_aggregate), seed=s.seed,
                          grad_fn=s.grad_fn)
    t, updates, step_times, dropped = 0.0, 0, [], 0
    while True:
        times = np.array([clocks.next(k) for k in range(K)])
        batches = [stream.next() for _ in range(K)]
        order = np.argsort(times, kind="stable")
        step = float(times[order[n_aggregate - 1]])
        if t + step > s.horizon:
            break
        rec.before_update(t + step)
        idx = np.concatenate([batches[k] for k in order[:n_aggregate]])
        dp.step(s.X[idx], s.y[idx], s.optimizer, s.grad_fn)
        t, updates = t + step, updates + 1
        step_times.append(step)
        dropped += K - n_aggregate
        rec.after_update(updates, t)
    rec.finish()
    return _outcome(s, rec, updates, t, step_times=step_times, gradients=updates * n_aggregate,
                    dropped=dropped)


def run_async(s: Setup) -> Dict[str, Any]:
    """Asynchronous SGD: every worker reads the weights, computes its gradient on them, and
    applies it when it finishes; staleness = updates applied between its read and its apply."""
    K = s.config["workers"]
    stream, clocks, rec = s.reset(synchronous=False)
    pending, events = {}, []
    version = 0

    def start(k: int, now: float) -> None:
        pending[k] = (version, s.gradient(stream.next()))
        heapq.heappush(events, (now + clocks.next(k), k))

    for k in range(K):
        start(k, 0.0)
    t, staleness = 0.0, []
    while events[0][0] <= s.horizon:
        t, k = heapq.heappop(events)
        read_version, grad = pending.pop(k)
        rec.before_update(t)
        s.apply(grad)
        staleness.append(version - read_version)
        version += 1
        rec.after_update(version, t)
        start(k, t)
    rec.finish()
    return _outcome(s, rec, version, t, staleness=staleness, gradients=version, dropped=0)


def _outcome(s: Setup, rec: Recorder, updates: int, t_last: float, **extra) -> Dict[str, Any]:
    """A policy's record for one seed; the test split is evaluated here, once, on the final
    weights."""
    out = {"updates": updates, "t_last": t_last, "grid": rec.grid.tolist(),
           "grid_acc": rec.grid_acc, "update_counts": rec.updates,
           "update_time": rec.update_time, "update_acc": rec.update_acc,
           "tta": time_to_target(rec.grid, rec.grid_acc, s.config["target_acc"]),
           "final_val_acc": rec.grid_acc[-1],
           "test_acc": accuracy(s.model, s.X_test, s.y_test)}
    out.update(extra)
    return out


# -- measurement of the base compute time -------------------------------------------------------
def measure_compute(config, data, seed: int) -> Dict[str, float]:
    """Median CPU and wall seconds of one real gradient computation at the per-worker batch
    (after 3 warm-up calls), with one BLAS thread (one worker = one core)."""
    from mlcvlab.models import mlp
    from mlcvlab.nn import CrossEntropyLoss
    from mlcvlab.parallel import module_grad_fn
    X, y = data[0], data[1]
    model = mlp([X[0].size, *config["hidden"], 10], rng=seed)
    grad_fn = module_grad_fn(CrossEntropyLoss())
    gen = np.random.default_rng([seed, 5])
    cpu, wall = [], []
    for i in range(config["timing_repeats"] + 3):
        idx = gen.choice(len(X), size=config["batch"], replace=False)
        c0, w0 = time.process_time(), time.perf_counter()
        grad_fn(model, X[idx], y[idx])
        c1, w1 = time.process_time(), time.perf_counter()
        if i >= 3:
            cpu.append(c1 - c0)
            wall.append(w1 - w0)
    return {"cpu_seconds": float(np.median(cpu)), "wall_seconds": float(np.median(wall)),
            "n": len(cpu)}


# -- the straggler effect ----------------------------------------------------------------------
def straggler_effect(config, seeds, base: float) -> List[Dict[str, Any]]:
    """Simulated mean step time vs K under the drawn straggler model: sync waits for the
    slowest of K; sync+backup (same b) for the (K - b)-th fastest. One mean per seed over
    ``straggler_steps`` drawn steps; rows with the interval over seeds."""
    b, n = config["backup"], config["straggler_steps"]
    rows = []
    for K in sorted(config["straggler_ks"]):
        per = {"sync": [], "sync+backup": [], "one worker": []}
        for seed in seeds:
            f = straggler_factors(config, np.random.default_rng([seed, 4, K]), (n, K))
            srt = np.sort(f, axis=1)
            per["sync"].append(base * float(srt[:, -1].mean()))
            per["one worker"].append(base * float(f.mean()))
            if K > b:
                per["sync+backup"].append(base * float(srt[:, K - b - 1].mean()))
        for policy, vals in per.items():
            if vals:
                s = stats.summarize(vals)
                rows.append({"K": K, "policy": policy, "backup": b if policy == "sync+backup"
                             else 0, "step_seconds": s["mean"], "lo": s["ci95"][0],
                             "hi": s["ci95"][1], "slowdown_vs_median": s["mean"] / base,
                             "values": vals})
    return rows


# -- optional: real MPI ranks for the synchronous policy ---------------------------------------
def sync_steps(config, data, comm, seed: int) -> Dict[str, Any]:
    """``mpi_steps`` straggler-free synchronous steps with the library's DataParallelStep over
    ``comm`` (one real worker per rank under MPI, or all shards in this process with a
    LocalCommunicator): the same init weights and batches on every rank. Returns per-step
    means (first step = warm-up, left out) and the final weights."""
    from mlcvlab.parallel import DataParallelStep
    k = comm.size
    s = Setup({**config, "workers": k}, seed, data, 1.0)
    stream, _, _ = s.reset(synchronous=True)
    cpu = [0.0]

    def timed_grad(model, x, y):
        c0 = time.process_time()
        out = s.grad_fn(model, x, y)
        cpu[0] += time.process_time() - c0
        return out

    dp = DataParallelStep(s.model, comm, seed=seed, grad_fn=timed_grad)
    rows = []
    for _ in range(config["mpi_steps"] + 1):
        idx = np.concatenate([stream.next() for _ in range(k)])
        cpu[0] = 0.0
        w0 = time.perf_counter()
        _, t = dp.step(s.X[idx], s.y[idx], s.optimizer, timed_grad)
        rows.append({"compute_cpu": cpu[0], "compute_wall": t["compute_seconds"],
                     "allreduce_wall": t["communication_seconds"],
                     "step_wall": time.perf_counter() - w0})
    means = {key: float(np.mean([r[key] for r in rows[1:]])) for key in rows[0]}
    return {"ranks": k, "steps": config["mpi_steps"], **means,
            "weights": s.flat.data.copy()}


def _mpi_main(config_path: str, out_path: str) -> None:
    """Entry point on every rank of ``mpiexec -n k python -m mlcvlab.labs.sync_async``."""
    from threadpoolctl import threadpool_limits
    from mlcvlab.parallel.mpi import MPICommunicator, abort_on_error
    with abort_on_error():
        with open(config_path) as f:
            config = json.load(f)
        comm = MPICommunicator()
        data, _, _ = _load(config)
        with threadpool_limits(limits=1):
            out = sync_steps(config, data, comm, config["mpi_seed"])
        for key in ("compute_cpu", "step_wall"):     # a step ends with the slowest rank
            out[key] = comm.comm.allreduce(out[key], op=comm.MPI.MAX)
        if comm.rank == 0:
            np.save(out_path + ".npy", out.pop("weights"))
            with open(out_path, "w") as f:
                json.dump(out, f)


def measure_mpi(config, data, seed: int) -> Dict[str, Any]:
    """The synchronous policy on ``mpi_ranks`` real MPI ranks (measured), and the largest
    weight difference to the same steps computed in this process."""
    from threadpoolctl import threadpool_limits
    from mlcvlab.parallel import LocalCommunicator
    k = config["mpi_ranks"]
    from mlcvlab.parallel.mpi import run_module

    def read(out):
        with open(out) as f:
            return json.load(f), np.load(out + ".npy")
    measured, weights = run_module("mlcvlab.labs.sync_async", k,
                                   {**config, "mpi_seed": int(seed)}, "sync-async lab",
                                   "run with --set mpi_ranks=0 (no MPI measurement)",
                                   timeout=1800, read=read)
    with threadpool_limits(limits=1):
        local = sync_steps(config, data, LocalCommunicator(k), seed)
    measured["max_weight_diff"] = float(np.abs(weights - local["weights"]).max())
    measured["cores"] = _cores()
    measured["oversubscribed"] = k > measured["cores"]
    measured["allreduce_share"] = measured["allreduce_wall"] / measured["step_wall"]
    return measured


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # pragma: no cover - not Linux
        return os.cpu_count() or 1


# -- running all policies over the seeds -------------------------------------------------------
def _load(config):
    from mlcvlab.data import load
    from mlcvlab.data.datasets import resolve_dataset
    used, note = resolve_dataset(config["dataset"])
    X, y = load(used, "train")
    Xt, yt = load(used, "test")
    as_float = lambda a: a.reshape(len(a), -1).astype(np.float32)   # noqa: E731
    return (as_float(X), np.asarray(y, np.int64), as_float(Xt), np.asarray(yt, np.int64)), \
        used, note


def run_policies(config, data, seeds, base: float, progress) -> Dict[str, List[Dict[str, Any]]]:
    """{policy: [one outcome per seed]}, the policies of one seed run back to back from the
    same initial weights."""
    K, b = config["workers"], config["backup"]
    runs = {p: [] for p in POLICIES}
    for seed in progress(seeds, desc="seeds", total=len(seeds)):
        s = Setup(config, int(seed), data, base)
        runs["sync"].append(run_sync(s, K))
        runs["sync+backup"].append(run_sync(s, K - b))
        runs["async"].append(run_async(s))
        for p in POLICIES:
            if runs[p][-1]["updates"] == 0:
                raise ValueError(f"sync-async lab: {p} made no update within the horizon on "
                                 f"seed {seed}; increase horizon (now {config['horizon']:g} "
                                 "median compute times)")
    return runs


def _interval(values: List[float]) -> Dict[str, Any]:
    s = stats.summarize(values)
    return {"mean": s["mean"], "lo": s["ci95"][0], "hi": s["ci95"][1]}


def _fmt_ci(s: Dict[str, Any], fmt: str = ".4g") -> str:
    if s["lo"] is None:
        return f"{s['mean']:{fmt}} (no interval from 1 seed)"
    return f"{s['mean']:{fmt}} (95% CI [{s['lo']:{fmt}}, {s['hi']:{fmt}}])"


def tta_values(outs: List[Dict[str, Any]], horizon: float) -> List[float]:
    """Per-seed time-to-accuracy; a run that never reached the target counts as the horizon
    (a lower bound on its time)."""
    return [o["tta"] if o["tta"] is not None else horizon for o in outs]


def common_update_count(runs, eval_every: int) -> int:
    """The largest evaluated update count that sync and async both reached on every seed."""
    reach = min(max(o["update_counts"]) for p in ("sync", "async") for o in runs[p])
    return int(reach // eval_every * eval_every)


def acc_at_updates(o: Dict[str, Any], u: int) -> float:
    return o["update_acc"][o["update_counts"].index(u)]


def comparisons_of(runs, config, horizon: float) -> List[Dict[str, Any]]:
    """The verdicts: time-to-accuracy of sync+backup vs sync and vs async, async vs sync; and
    validation accuracy at the same number of updates, async vs sync; paired by seed."""
    target = config["target_acc"]
    tta = {p: tta_values(runs[p], horizon) for p in POLICIES}
    miss = {p: sum(o["tta"] is None for o in runs[p]) for p in POLICIES}
    n = len(runs["sync"])
    out = []
    for a, b in (("sync+backup", "sync"), ("sync+backup", "async"), ("async", "sync")):
        metric = f"simulated seconds to validation accuracy {target:g}"
        missed = [f"{p} on {miss[p]} of {n} seeds" for p in (a, b) if miss[p]]
        if missed:
            metric += (" (not reached within the horizon, counted as the horizon, a lower bound: "
                       + ", ".join(missed) + ")")
        c = stats.compare(a, tta[a], b, tta[b], metric, higher_is_better=False)
        c.update(kind="time_to_accuracy")
        out.append(c)
    c = stats.compare("sync+backup", [float(np.mean(o["step_times"])) for o in runs["sync+backup"]],
                      "sync", [float(np.mean(o["step_times"])) for o in runs["sync"]],
                      "mean simulated step time (s) during training", higher_is_better=False)
    c.update(kind="step_time")
    out.append(c)
    u = common_update_count(runs, config["eval_every"])
    if u > 0:
        c = stats.compare("async", [acc_at_updates(o, u) for o in runs["async"]], "sync",
                          [acc_at_updates(o, u) for o in runs["sync"]],
                          f"validation accuracy after {u} updates (a sync update averages "
                          f"{config['workers']} gradients, an async update applies one)",
                          higher_is_better=True)
        c.update(kind="accuracy_per_update", updates=u)
        out.append(c)
    return out


def summarize_runs(runs, config, base: Dict[str, float], seeds, used: str, straggler_rows
                   ) -> Dict[str, Any]:
    """The results dict: per-policy rows with intervals, staleness, comparisons, headline."""
    K, b = config["workers"], config["backup"]
    horizon = config["horizon"] * base["cpu_seconds"]
    labels = {"sync": f"sync (K={K})", "sync+backup": f"sync+backup (N={K - b}, b={b})",
              "async": f"async (K={K})"}
    rows = []
    for p in POLICIES:
        outs = runs[p]
        reached = [o["tta"] for o in outs if o["tta"] is not None]
        row = {"policy": p, "label": labels[p], "seeds": len(outs),
               "reached_target": len(reached),
               "tta_seconds": _interval(tta_values(outs, horizon)),
               "updates": _interval([o["updates"] for o in outs]),
               "gradients_applied": _interval([o["gradients"] for o in outs]),
               "gradients_dropped": _interval([o["dropped"] for o in outs]),
               "final_val_acc": _interval([o["final_val_acc"] for o in outs]),
               "test_acc": _interval([o["test_acc"] for o in outs])}
        if p != "async":
            row["step_seconds"] = _interval([float(np.mean(o["step_times"])) for o in outs])
        else:
            row["mean_staleness"] = _interval([float(np.mean(o["staleness"])) for o in outs])
        rows.append(row)
    stale = np.concatenate([o["staleness"] for o in runs["async"]]).astype(int)
    comps = comparisons_of(runs, config, horizon)
    results = {
        "used": used, "workers": K, "backup": b, "n_aggregate": K - b, "seeds": list(seeds),
        "labels": labels, "policy_rows": rows, "comparisons": comps,
        "compute_cpu_seconds": base["cpu_seconds"], "compute_wall_seconds": base["wall_seconds"],
        "timing_repeats": base["n"], "horizon_seconds": horizon,
        "target_acc": config["target_acc"], "straggler_rows": straggler_rows,
        "eval_points": config["eval_points"], "grid_step": horizon / config["eval_points"],
        "staleness_counts": np.bincount(stale).tolist(),
        "staleness_mean": float(stale.mean()), "staleness_median": float(np.median(stale)),
        "staleness_p99": float(np.percentile(stale, 99)), "staleness_max": int(stale.max()),
        "curves": {p: [{k: o[k] for k in ("grid", "grid_acc", "update_counts", "update_time",
                                          "update_acc", "tta", "updates", "test_acc")}
                       for o in runs[p]] for p in POLICIES},
    }
    results["straggler_text"] = _straggler_model_text(config)
    results["lr_text"] = (
        f"learning rate {config['lr']:g} for async and {config['lr'] * K:g} (= lr × K, linear "
        f"scaling for the averaged gradient) for both synchronous policies."
        if config["lr_scaling"] == "linear" else
        f"the same learning rate {config['lr']:g} for all policies.")
    results["headline"] = " ".join(
        f"{r['label']}: {_fmt_ci(r['tta_seconds'])} simulated s to validation accuracy "
        f"{config['target_acc']:g} (reached on {r['reached_target']}/{r['seeds']} seeds)."
        for r in rows)
    return results


def _straggler_model_text(config) -> str:
    if config["straggler"] == "lognormal":
        return (f"lognormal: each compute time is the measured median times exp(σZ), "
                f"Z ~ N(0, 1), σ = {config['sigma']:g}")
    return (f"mixture: each compute time is the measured median times exp(σZ), Z ~ N(0, 1), "
            f"σ = {config['sigma']:g}, and with probability p = {config['straggler_p']:g} "
            f"also times {config['straggler_factor']:g} (a straggler)")


# -- figures -----------------------------------------------------------------------------------
def _band(ax, x, values: np.ndarray, color: str, label: str) -> None:
    """Mean curve and its 95% t-interval over seeds (rows of ``values``), clipped to [0, 1]
    (the values are accuracies)."""
    mean = values.mean(axis=0)
    ax.plot(x, mean, color=color, label=label)
    if values.shape[0] >= 2:
        half = stats.t_quantile(values.shape[0] - 1) * values.std(axis=0, ddof=1) / \
            np.sqrt(values.shape[0])
        ax.fill_between(x, np.clip(mean - half, 0, 1), np.clip(mean + half, 0, 1), color=color,
                        alpha=0.2, linewidth=0)


def curves_figure(results):
    """Validation accuracy vs updates (left) and vs simulated time (right), one colour per
    policy, bands: 95% CI over seeds."""
    fig, (ax1, ax2) = new_figure(ncols=2, figsize=(12, 4.5))
    for p in POLICIES:
        curves = results["curves"][p]
        u_max = min(max(c["update_counts"]) for c in curves)
        n = curves[0]["update_counts"].index(u_max) + 1
        x = np.array(curves[0]["update_counts"][1:n])       # from the first evaluated update
        _band(ax1, x, np.array([c["update_acc"][1:n] for c in curves]), COLORS[p],
              results["labels"][p])
        grid = np.array(curves[0]["grid"])
        _band(ax2, grid, np.array([c["grid_acc"] for c in curves]), COLORS[p],
              results["labels"][p])
    for ax in (ax1, ax2):
        ax.axhline(results["target_acc"], color="0.4", ls=":", label="target (validation)")
        ax.set_ylabel("validation accuracy (fraction)")
        ax.legend(fontsize=8, loc="lower right")
    ax1.set_xscale("log")
    ax1.set_xlabel("updates applied (count, log scale)")
    ax1.set_title("Validation accuracy vs updates")
    ax2.set_xlabel("simulated time (s)")
    ax2.set_title("Validation accuracy vs simulated time")
    fig.suptitle("Sync vs sync+backup vs async (bands: 95% CI over seeds; simulated times)")
    return fig


def staleness_figure(results):
    counts = np.array(results["staleness_counts"])
    fig, ax = new_figure(figsize=(6, 4))
    ax.bar(np.arange(len(counts)), counts / counts.sum(), color=COLORS["async"],
           label=results["labels"]["async"])
    ax.axvline(results["staleness_mean"], color="k", ls="--",
               label=f"mean {results['staleness_mean']:.2f}")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("staleness (updates between read and apply)")
    ax.set_ylabel("fraction of async updates")
    ax.set_title("Measured staleness of async gradients (all seeds)")
    ax.legend(fontsize=8)
    return fig


def straggler_figure(results):
    fig, ax = new_figure(figsize=(6.5, 4.5))
    colors = {"sync": COLORS["sync"], "sync+backup": COLORS["sync+backup"], "one worker": "0.4"}
    names = {"sync": "sync: slowest of K", "sync+backup":
             f"sync+backup: (K-{results['backup']})-th fastest", "one worker": "one worker (mean)"}
    for p in ("sync", "sync+backup", "one worker"):
        rows = [r for r in results["straggler_rows"] if r["policy"] == p]
        ks = [r["K"] for r in rows]
        y = np.array([r["step_seconds"] for r in rows]) * 1e3
        lo = np.array([r["lo"] if r["lo"] is not None else r["step_seconds"] for r in rows]) * 1e3
        hi = np.array([r["hi"] if r["hi"] is not None else r["step_seconds"] for r in rows]) * 1e3
        ax.errorbar(ks, y, yerr=[y - lo, hi - y], fmt="o-", color=colors[p], capsize=3,
                    label=names[p])
    ax.set_xscale("log", base=2)
    ks = sorted({r["K"] for r in results["straggler_rows"]})
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("workers K (count)")
    ax.set_ylabel("simulated step time (ms)")
    ax.set_title("Straggler effect: simulated step time vs K (95% CI over seeds)")
    ax.legend(fontsize=8)
    return fig


# -- the report --------------------------------------------------------------------------------
def _write_report(rep: Report, results, config) -> None:
    rep.text("**All times in this report are simulated**, not the wall-clock time of real "
             "parallel workers: the {workers} workers run one after another in this process as a "
             "discrete-event simulation. Every gradient is real (the library's gradient on a "
             "real mini-batch, against the weights that worker actually read); every compute "
             "time is the measured CPU time of one gradient computation "
             "({compute_cpu_seconds:.3g} CPU s, median of {timing_repeats} calls, one BLAS "
             "thread; wall {compute_wall_seconds:.3g} s) times a drawn straggler factor "
             "({straggler_text}). Communication and the update take no simulated time (not "
             "modelled). Each policy runs for a simulated horizon of {horizon_seconds:.3g} s.")
    rep.text("Policies, each on K = {workers} machines: **sync** waits for all K gradients and "
             "averages them; **sync+backup** averages the first N = {n_aggregate} to finish and "
             "drops (cancels) the slowest b = {backup}; **async** applies each worker's gradient "
             "alone when it finishes. Plain SGD; {lr_text} "
             "Paired by seed: the same initial weights, the same mini-batch stream and the same "
             "drawn compute times in every policy. Validation accuracy comes from a held-out "
             "split of the training data; test accuracy is evaluated once per run, on the "
             "final weights. Time-to-accuracy is the first point of a grid of {eval_points} + 1 "
             "simulated times (spacing {grid_step:.3g} s) at which validation accuracy reaches "
             "{target_acc:g}. The learning rates are not tuned per policy: the verdicts below "
             "hold for these rates and this straggler model only.")
    rep.section("Results per policy")
    table = []
    for r in results["policy_rows"]:
        table.append({
            "policy": r["label"], "time_to_target_s": _fmt_ci(r["tta_seconds"]),
            "reached": f"{r['reached_target']}/{r['seeds']}",
            "updates": _fmt_ci(r["updates"], ".0f"),
            "mean_step_s": _fmt_ci(r["step_seconds"]) if "step_seconds" in r else "-",
            "mean_staleness": _fmt_ci(r["mean_staleness"], ".3g") if "mean_staleness" in r
            else "-",
            "gradients_dropped": f"{r['gradients_dropped']['mean']:.0f}",
            "final_val_acc": _fmt_ci(r["final_val_acc"]), "test_acc": _fmt_ci(r["test_acc"])})
    rep.table("policies", table, "Per policy over seeds {seeds} (simulated seconds; 95% CI over "
              "seeds)")
    rep.bullets(["{headline}"])
    rep.figure("accuracy_curves", curves_figure(results),
               "Validation accuracy vs updates applied (left) and vs simulated time (right); "
               "bands: 95% CI over seeds; dotted: the target {target_acc:g}")
    rep.section("Staleness of asynchronous gradients")
    rep.text("Measured over all async updates of all seeds: mean {staleness_mean:.2f}, median "
             "{staleness_median:.0f}, 99th percentile {staleness_p99:.0f}, maximum "
             "{staleness_max} updates between a worker's read and its apply.")
    rep.figure("staleness", staleness_figure(results),
               "Histogram of async staleness (updates between read and apply), all seeds")
    rep.section("Straggler effect (simulated)")
    rep.text("Mean simulated step time over drawn steps of the straggler model with the "
             "measured compute time (no training): sync waits for the slowest of K workers, "
             "sync+backup for the (K - {backup})-th fastest.")
    rep.table("straggler_effect", [{k: v for k, v in r.items() if k != "values"}
                                   for r in results["straggler_rows"]],
              "Simulated step time vs K (seconds; lo/hi: 95% CI over seeds)")
    rep.figure("straggler_effect", straggler_figure(results),
               "Simulated step time vs the number of workers K")
    if "mpi" in results:
        _mpi_section(rep, results)
    rep.comparisons(results["comparisons"], "Comparisons (paired by seed; simulated times)")
    _conclusions(rep, results)


def _mpi_section(rep: Report, results) -> None:
    m = results["mpi"]
    results["mpi_over"] = (f" (oversubscribed: {m['ranks']} ranks on {m['cores']} cores, so "
                           "wall seconds include waiting for a core)" if m["oversubscribed"]
                           else "")
    rep.section("Real MPI ranks (synchronous policy only; measured)")
    rep.text("Measured, not simulated: {mpi[ranks]} MPI ranks (`mpiexec -n {mpi[ranks]}`, one "
             "BLAS thread each){mpi_over} ran {mpi[steps]} straggler-free synchronous steps "
             "of the library's DataParallelStep (one mini-batch per rank, all-reduce mean, one "
             "update) on seed {seeds[0]}, after one warm-up step. Per step (means over steps, "
             "one run, no interval): gradient compute {mpi[compute_cpu]:.3g} CPU s (slowest "
             "rank; wall {mpi[compute_wall]:.3g} s on rank 0), all-reduce "
             "{mpi[allreduce_wall]:.3g} "
             "wall s, whole step {mpi[step_wall]:.3g} wall s (slowest rank); the all-reduce is "
             "{mpi[allreduce_share]:.1%} of rank 0's step (the all-reduce call includes waiting "
             "for the slower rank). The simulation above gives communication no time. The MPI "
             "run's final weights differ from the same steps "
             "computed in one process by at most {mpi[max_weight_diff]:.2g} (float32).")


def _paper_verdict(comps) -> str:
    """What this run's two time-to-accuracy verdicts say about Chen et al.'s claim."""
    keys = [("sync+backup", other, "time_to_accuracy") for other in ("sync", "async")]
    verdicts = {k[1]: comps[k]["verdict"] for k in keys}
    if all(v == "a better" for v in verdicts.values()):
        return "supports it: sync+backup reached the target sooner than both sync and async"
    faster = [o for o, v in verdicts.items() if v == "b better"]
    if faster:
        return (f"contradicts it: {' and '.join(faster)} reached the target sooner than "
                "sync+backup (95% confidence)")
    separated = [o for o, v in verdicts.items() if v == "a better"]
    unsep = [o for o, v in verdicts.items() if v == "not separable"]
    return ("does not show it at 95% confidence: in time to accuracy sync+backup is not "
            f"separable from {' and '.join(unsep)}"
            + (f" (it was faster than {separated[0]})" if separated else ""))


def _conclusions(rep: Report, results) -> None:
    comps = {(c["a"], c["b"], c["kind"]): c for c in results["comparisons"]}
    bullets = []
    for i, key in enumerate([("sync+backup", "sync", "time_to_accuracy"),
                             ("sync+backup", "async", "time_to_accuracy"),
                             ("async", "sync", "accuracy_per_update")]):
        if key in comps:
            results[f"conclusion_{i}"] = stats.sentence(comps[key])
            bullets.append(f"{{conclusion_{i}}}")
    results["paper_supported"] = _paper_verdict(comps)
    bullets.append("Chen et al.'s qualitative result (below): this run {paper_supported}.")
    rep.conclusions(bullets)
    rep.explanation("Chen et al. (2016), \"Revisiting Distributed Synchronous SGD\", report "
                    "that synchronous SGD with a few backup workers reaches a given test "
                    "accuracy faster than both plain synchronous SGD (which waits for the "
                    "slowest worker every step) and asynchronous SGD (whose stale gradients "
                    "hurt convergence and final accuracy). This is the paper's claim, not a "
                    "finding of this run; this run's verdicts are the comparisons above.")


@lab(name="sync-async", study="Chen et al. (2016): synchronous SGD, synchronous with backup "
     "workers and asynchronous SGD with stragglers (simulated times, real gradients)",
     quick=QUICK, standard=STANDARD, full=FULL,
     expected_seconds={"quick": 20, "standard": 360, "full": 3600})
def run(config, out_dir, progress):
    _validate(config)
    from threadpoolctl import threadpool_limits
    seeds = stats.seeds_of(config)
    data, used, note = _load(config)
    with threadpool_limits(limits=1):
        base = measure_compute(config, data, seeds[0])
        runs = run_policies(config, data, seeds, base["cpu_seconds"], progress)
    straggler_rows = straggler_effect(config, seeds, base["cpu_seconds"])
    results = summarize_runs(runs, config, base, seeds, used, straggler_rows)
    if config["mpi_ranks"]:
        results["mpi"] = measure_mpi(config, data, seeds[0])
    rep = Report(out_dir, "Sync vs sync+backup vs async SGD with stragglers (simulated)",
                 results)
    if note:
        rep.note_substitution(config["dataset"], used)
    rep.setup(config)
    _write_report(rep, results, config)
    rep.write()
    return results


if __name__ == "__main__":     # an MPI rank started by measure_mpi
    _mpi_main(sys.argv[1], sys.argv[2])
