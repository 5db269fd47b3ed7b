"""Lab ``memory``: where the memory of training goes.

1. Parameters and float32 size of classic ImageNet networks (ResNet-18/50/152,
   AlexNet, VGG19), computed by :mod:`mlcvlab.analysis` from layer specs.
2. Optimizer state: the bytes of the state arrays our SGD, SGD+momentum and
   Adam actually allocate, next to the formula 0 / 1 / 2 x parameters.
3. Memory of one training step vs batch size: the analytic model
   :func:`training_memory` (parameters + gradients + optimizer state + the
   arrays our layers keep for backward) next to the bytes actually held in the
   layers' caches and the peak traced by ``tracemalloc`` (which also sees the
   temporaries of forward and backward).
4. Accuracy after a fixed number of epochs and training time per batch size, over
   ``seeds`` paired by seed (for one seed every batch size starts from the same weights
   and shuffles with the same seed): each batch size's mean with a 95% interval, and the
   comparisons of neighbouring batch sizes with their verdicts. Times are CPU seconds of
   the process (``time.process_time``), which do not grow while it waits for a core taken
   by another job; wall seconds are shown beside them.

The analytic numbers (parameter counts of the spec networks, :func:`training_memory`) are
*modelled*; the bytes in the optimizer state and in the layer caches and the traced peak
are *measured*. The report labels each.

With ``device`` "cuda" the batch-size study trains on the GPU, and each batch size's step is
also measured on the device (:func:`measure_device_step`: CuPy's pool sampled after the
forward, the backward and the update, next to the same analytic model; the driver's free and
total memory once). Under numba's simulator there is no device memory (NumPy stands in for
CuPy): the device step still runs, and the report says its memory is not measurable there.
The time comparisons are then on wall seconds (device time); the CPU seconds are the host's
share.
"""
from __future__ import annotations

import math
import time
import tracemalloc
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mlcvlab import analysis as A
from mlcvlab.data.datasets import load, resolve_dataset
from mlcvlab.labs import stats
from mlcvlab import optim
from mlcvlab.labs.depth_width import EpochShuffledBatches
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure
from mlcvlab.models import get_model, lenet5, mlp
from mlcvlab.nn import CrossEntropyLoss
from mlcvlab.nn.module import declared
from mlcvlab.train import Trainer, array_batches, evaluate

OPTIMIZER_SLOTS = {"sgd": 0, "momentum": 1, "adam": 2}   # state arrays of P values each
MB = 2 ** 20
TIME_METRICS = {"cpu_seconds": "CPU seconds of training",
                "seconds": "wall seconds of training (device time)"}
# An epoch training loss this many times its lowest, at the last epoch, marks an unstable run.
UNSTABLE_LOSS_RISE = 1.5

_FULL = {"spec_models": ["alexnet", "vgg19", "resnet18", "resnet34", "resnet50", "resnet101",
                         "resnet152"], "spec_batch": 32,
         "state_models": ["lenet5", "resnet20", "resnet18", "minigooglenet"],
         "model": "lenet5", "dataset": "mnist", "n_train": 0, "n_test": 0,
         "batch_sizes": [4, 16, 64, 256], "epochs": 10, "lr": 0.01, "momentum": 0.9,
         "seeds": 5, "seed": 0, "device": "cpu"}
_QUICK = {**_FULL, "spec_models": ["alexnet", "resnet18", "resnet50", "resnet152"],
          "state_models": ["mlp", "lenet5"], "model": "mlp", "n_train": 768, "n_test": 512,
          "epochs": 1, "seeds": 2}
_STANDARD = {**_FULL, "model": "lenet5", "batch_sizes": [8, 32, 128, 512], "epochs": 6,
             "seeds": 4}


# -- the analytic memory model ---------------------------------------------------------------------
# What each module keeps for backward is declared by the module itself (Module.kept_for_backward,
# next to its forward); this model adds the declarations up over one traced forward.
TRACE_BATCH = 2      # not 1: a batch norm without running statistics needs two samples


def _trace(model, input_shape: Sequence[int]) -> Tuple[list, Any]:
    """Every module's forward of one eval forward on zeros((TRACE_BATCH, *input_shape)): a list
    of (module, x, y) in the order the calls return (children before their container), and the
    model's output. The arrays are held until the caller is done, so no id is reused."""
    modules = list(model.modules())
    for m in modules:           # a module that declares nothing is refused before any forward
        declared(m, "kept_for_backward")
    calls: list = []
    modes = {id(m): m.training for m in modules}

    def wrap(module):
        original = module.forward

        def forward(x):
            y = original(x)
            calls.append((module, x, y))
            return y
        return forward

    for m in modules:
        object.__setattr__(m, "forward", wrap(m))
    try:
        model.eval()
        y = model(np.zeros((TRACE_BATCH, *input_shape), dtype=model.dtype))
    finally:
        for m in modules:
            m.__dict__.pop("forward", None)
            object.__setattr__(m, "training", modes[id(m)])
    return calls, y


def activation_bytes(model, input_shape: Sequence[int], batch_size: int) -> int:
    """Bytes our layers keep for backward after a training forward of ``batch_size`` samples.

    Each module declares what it keeps (``Module.kept_for_backward``: Linear/Conv2d/LeakyReLU
    their input, ReLU/Sigmoid/Tanh/Softmax their output, BatchNorm its x_hat and statistics,
    Dropout its mask, MaxPool2d its argmax indices; Flatten/Identity/Dropout(p=0) outputs are
    the input itself; containers nothing of their own). The tensors are followed through one
    traced forward, so a chain, a residual block and an inception module alike: each distinct
    tensor kept by some module counts once, plus each module's own arrays, plus the loss's
    stored gradient (batch x outputs, cross-entropy). float = the model's dtype. A module that
    declares nothing raises NotImplementedError before anything runs.
    """
    calls, out = _trace(model, input_shape)
    tensor_of = {}                              # id(array) -> tensor number
    sizes: List[int] = []                       # values per sample of each tensor

    def new_tensor(a) -> int:
        sizes.append(a.size // TRACE_BATCH)
        tensor_of[id(a)] = len(sizes) - 1
        return len(sizes) - 1

    kept, per_sample, fixed, index_bytes, fixed_bytes = set(), 0, 0, 0, 0
    for module, x, y in calls:
        t_in = tensor_of[id(x)] if id(x) in tensor_of else new_tensor(x)
        keeps = declared(module, "kept_for_backward")(x.shape[1:], y.shape[1:])
        if keeps.alias:
            t_out = t_in
        elif id(y) in tensor_of and any(True for _ in module.children()):
            t_out = tensor_of[id(y)]            # a container passing a child's output on
        else:               # a new array (an eval-mode dropout returns x: its consumers follow)
            t_out = new_tensor(y)
        tensor_of[id(y)] = t_out
        kept.update(t for t, flag in ((t_in, keeps.input), (t_out, keeps.output)) if flag)
        per_sample += keeps.values
        fixed += keeps.fixed_values
        index_bytes += keeps.index_bytes
        fixed_bytes += keeps.fixed_bytes
    per_sample += sum(sizes[t] for t in kept) + out.size // TRACE_BATCH   # + the loss gradient
    item = model.dtype.itemsize
    return batch_size * (per_sample * item + index_bytes) + fixed * item + fixed_bytes


def training_memory(model, input_shape: Sequence[int], batch_size: int,
                    optimizer: str = "adam") -> Dict[str, int]:
    """Analytic bytes of one training step of ``model`` on batches of ``batch_size``.

    parameters + gradients (P values each) + optimizer state (0, 1 or 2 x P for
    "sgd", "momentum", "adam") + :func:`activation_bytes`. input_shape: one
    sample's shape, e.g. (784,) or (1, 28, 28). Temporaries of the forward and
    backward passes are not part of the model (the measured peak shows them).
    """
    if optimizer not in OPTIMIZER_SLOTS:
        raise ValueError(f"training_memory: optimizer must be one of {sorted(OPTIMIZER_SLOTS)}, "
                         f"got {optimizer!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"training_memory: batch_size must be a positive int, got {batch_size!r}")
    p_bytes = model.num_parameters() * model.dtype.itemsize
    out = {"parameters": p_bytes, "gradients": p_bytes,
           "optimizer_state": OPTIMIZER_SLOTS[optimizer] * p_bytes,
           "activations": activation_bytes(model, input_shape, int(batch_size))}
    out["total"] = sum(out.values())
    return out


def cached_bytes(model, loss) -> int:
    """Bytes of the arrays the layers' caches and the loss hold now (after a training forward).

    Arrays are counted once (by data address and size) and views of the
    parameters (weights referenced by a cache) are skipped: they are parameters.
    """
    params = [p.data for p in model.parameters()]
    seen, total = set(), 0
    arrays = [loss._grad]

    def collect(item):        # caches nest (a grouped conv keeps one cache per group)
        if isinstance(item, np.ndarray):
            arrays.append(item)
        elif isinstance(item, (tuple, list)):
            for x in item:
                collect(x)
        elif isinstance(item, dict):
            for x in item.values():
                collect(x)

    from mlcvlab.nn import threadsplit         # a batch split over threads: the other parts'
    for m in list(model.modules()) + threadsplit.replica_modules(model):    # caches too
        collect(getattr(m, "_cache", None))
    for a in arrays:
        if not isinstance(a, np.ndarray) or any(np.shares_memory(a, w) for w in params):
            continue
        key = (a.__array_interface__["data"][0], a.nbytes)
        if key not in seen:
            seen.add(key)
            total += a.nbytes
    return total


# -- measurements -------------------------------------------------------------------------------
def build(name: str, seed: int):
    """One of our models by name; 'mlp' is 784-64-10 and 'lenet5' takes 1x28x28 images."""
    gen = np.random.default_rng(seed)
    if name == "mlp":
        return mlp([784, 64, 10], rng=gen)
    if name == "lenet5":
        return lenet5(rng=gen)
    if name == "minigooglenet":
        return get_model(name, num_classes=10, in_channels=1, rng=gen)
    return get_model(name, rng=gen)


def make_optimizer(kind: str, model, lr: float = 0.01, momentum: float = 0.9):
    """sgd, momentum or adam (at a tenth of the lr) from ``mlcvlab.optim.build``."""
    if kind not in OPTIMIZER_SLOTS:
        raise ValueError(f"memory lab: optimizer must be one of {sorted(OPTIMIZER_SLOTS)}, "
                         f"got {kind!r}")
    return optim.build(kind, model.parameters(), lr=lr * 0.1 if kind == "adam" else lr,
                       momentum=momentum if kind == "momentum" else None)


def spec_table(names: Sequence[str], batch: int) -> List[dict]:
    """Parameters, float32 MB and an Adam training estimate of the ImageNet spec networks."""
    rows = []
    for name in names:
        if name.startswith("resnet"):
            specs, shape = A.resnet(int(name[6:])), A.IMAGENET_INPUT
        elif name in ("alexnet", "vgg19"):
            specs = getattr(A, name)()
            shape = A.ALEXNET_INPUT if name == "alexnet" else A.IMAGENET_INPUT
        else:
            raise ValueError(f"memory lab: unknown spec model {name!r}; use alexnet, vgg19 or "
                             "resnet18/34/50/101/152")
        t = A.totals(A.analyze(specs, shape))
        rows.append({"model": name, "params": t["params"], "param MB": 4 * t["params"] / MB,
                     "params+grads+Adam MB": 16 * t["params"] / MB,
                     "activations per image": t["activations"],
                     "activation MB per image": 4 * t["activations"] / MB,
                     f"estimate at batch {batch} (GB)":
                         (16 * t["params"] + 4 * batch * t["activations"]) / 2**30})
    return rows


def state_table(names: Sequence[str], seed: int) -> List[dict]:
    """Bytes of the state arrays each optimizer allocates, next to slots x P x itemsize."""
    rows = []
    for name in names:
        model = build(name, seed)
        p, item = model.num_parameters(), model.dtype.itemsize
        for kind, slots in OPTIMIZER_SLOTS.items():
            opt = make_optimizer(kind, model)
            actual = sum(v.nbytes for v in opt.state.values())
            rows.append({"model": name, "params": p, "optimizer": kind,
                         "state arrays": ", ".join(sorted(opt.state)) or "-",
                         "state bytes (actual)": actual, "formula bytes": slots * p * item,
                         "matches": actual == slots * p * item, "state MB": actual / MB})
    return rows


def _step(model, loss, opt, xb, yb) -> None:
    model.zero_grad()
    loss(model(xb), yb)
    model.backward(loss.backward())
    opt.step()


def measure_step(name: str, kind: str, X: np.ndarray, y: np.ndarray, batch: int,
                 seed: int) -> Dict[str, int]:
    """Traced peak bytes of a training step, and the bytes held in the caches after it.

    The model, optimizer and batch are built while tracemalloc runs (so they
    count); one step runs first (it allocates the optimizer's scratch buffers
    and the caches a steady-state step replaces), then the peak of the second
    step is read. Kernels are compiled beforehand, outside the trace.
    """
    warm = build(name, seed)
    _step(warm, CrossEntropyLoss(), make_optimizer(kind, warm), X[:2], y[:2])
    loss = CrossEntropyLoss()
    tracemalloc.start()
    try:
        model = build(name, seed)
        opt = make_optimizer(kind, model)
        xb, yb = X[:batch].copy(), y[:batch].copy()
        _step(model, loss, opt, xb, yb)
        tracemalloc.reset_peak()
        _step(model, loss, opt, xb, yb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return {"measured_peak": int(peak), "cached": cached_bytes(model, loss)}


def measure_device_step(name: str, kind: str, X: np.ndarray, y: np.ndarray, batch: int,
                        seed: int) -> Optional[Dict[str, int]]:
    """Device bytes of a training step on "cuda", or None under the simulator (the steps
    still run there: the device path is exercised, its memory is not measurable).

    The pool's cached blocks are released and its live bytes read before the model is built
    (the baseline); then model, optimizer and loss move to the device and two steps run (the
    first allocates the momentum buffer and the caches a steady step replaces); the second is
    sampled after its forward, backward and update. Each sample is the CuPy pool's bytes in
    live arrays above the baseline (the engine allocates every device array through CuPy), so
    a temporary freed inside a pass is not seen. Also: the pool's total (live + cached) after
    the step, and the driver's free and total memory before the model was built.
    """
    import gc
    from mlcvlab.gpu.device import memory_info
    from mlcvlab.train.trainer import _model_input, loss_and_grad
    gc.collect()
    base = memory_info(release_cached=True)
    model = build(name, seed).to("cuda")
    opt = make_optimizer(kind, model)
    loss = CrossEntropyLoss().to("cuda")
    xb, yb = X[:batch], y[:batch]
    samples: Dict[str, int] = {}

    def sample(tag: str) -> None:
        info = memory_info()
        if info is not None:
            samples[tag] = info["pool_used"] - base["pool_used"]

    for step in range(2):
        model.zero_grad()
        pred = model(_model_input(model, xb))
        if step:
            sample("forward")
        _, dpred = loss_and_grad(loss, model, pred, yb)
        model.backward(dpred)
        if step:
            sample("backward")
        opt.step()
        if step:
            sample("update")
    if base is None:
        return None
    after = memory_info()
    return {**samples, "peak_sampled": max(samples.values()),
            "pool_total": after["pool_total"], "driver_free": base["driver_free"],
            "driver_total": base["driver_total"]}


def train_at(name: str, data: Dict[str, Any], batch: int, config: Dict[str, Any],
             seed: int) -> dict:
    """Train for config['epochs'] at ``batch`` from seed ``seed`` (initial weights and
    shuffling) on config["device"]: test accuracy (the test split once, at the end), CPU and
    wall seconds of the training (on "cuda": wall seconds are device time, the step reads its
    loss; CPU seconds the host's share), and the epochs' training losses."""
    model = build(name, seed).to(config.get("device", "cpu"))   # before the optimizer
    opt = optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"])
    loader = EpochShuffledBatches(data["X_train"], data["y_train"], batch, seed=seed)
    trainer = Trainer(model, CrossEntropyLoss(), opt)
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(loader, config["epochs"])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    test = evaluate(model, CrossEntropyLoss(), array_batches(data["X_test"], data["y_test"], 512))
    losses = trainer.history.column("train_loss")
    return {"seed": seed, "batch": batch, "test_acc": test["acc"], "test_loss": test["loss"],
            "seconds": seconds, "cpu_seconds": cpu, "steps": trainer.epoch * len(loader),
            "train_loss_lowest": min(losses), "train_loss_last": losses[-1],
            "finite": all(math.isfinite(v) for v in losses) and math.isfinite(test["loss"])}


def load_data(config: Dict[str, Any]) -> Dict[str, Any]:
    used, note = resolve_dataset(config["dataset"])
    gen = np.random.default_rng([config["seed"], 0])
    out = {"used": used, "note": note}
    for split, n in (("train", config["n_train"]), ("test", config["n_test"])):
        X, y = load(used, split)
        if 0 < n < len(X):
            idx = np.sort(gen.permutation(len(X))[:n])
            X, y = X[idx], y[idx]
        out[f"X_{split}"], out[f"y_{split}"] = np.ascontiguousarray(X, np.float32), np.asarray(y)
    return out


def batch_table(data, config, progress) -> Tuple[List[dict], List[dict]]:
    """Per batch size: the modelled (analytic) memory terms, the measured cache bytes and
    traced peak (our CPU engine), on "cuda" the device step's sampled memory (None under the
    simulator), and accuracy and time as mean over the seeds; and every training run.

    The batch sizes of one seed train back to back, so they share the machine's load."""
    name = config["model"]
    shape = data["X_train"].shape[1:]
    model = build(name, config["seed"])
    train_at(name, {**data, "X_train": data["X_train"][:64], "y_train": data["y_train"][:64]},
             min(config["batch_sizes"]), {**config, "epochs": 1}, 0)   # untimed warm-up
    runs = []
    for seed in progress(stats.seeds_of(config), desc="seeds"):
        for b in config["batch_sizes"]:
            runs.append(train_at(name, data, b, config, seed))
    rows = []
    for b in config["batch_sizes"]:
        mem = training_memory(model, shape, b, "momentum")
        meas = measure_step(name, "momentum", data["X_train"], data["y_train"], b, config["seed"])
        dev = None
        if config.get("device", "cpu") == "cuda":
            dev = measure_device_step(name, "momentum", data["X_train"], data["y_train"], b,
                                      config["seed"]) or {}
        mine = [r for r in runs if r["batch"] == b]
        acc = stats.summarize([r["test_acc"] for r in mine])
        cpu = stats.summarize([r["cpu_seconds"] for r in mine])
        rows.append({"batch": b,
                     "params+grads+state KB (modelled)": (mem["total"] - mem["activations"]) / 1024,
                     "activations KB (modelled)": mem["activations"] / 1024,
                     "activations KB (measured in caches)": meas["cached"] / 1024,
                     "total KB (modelled)": mem["total"] / 1024,
                     "peak KB (measured)": meas["measured_peak"] / 1024,
                     "peak / modelled": meas["measured_peak"] / mem["total"],
                     "test acc": acc["mean"], "test acc CI lo": acc["ci95"][0],
                     "test acc CI hi": acc["ci95"][1],
                     "CPU seconds": cpu["mean"], "CPU s CI lo": cpu["ci95"][0],
                     "CPU s CI hi": cpu["ci95"][1],
                     "wall seconds": float(np.mean([r["seconds"] for r in mine])),
                     "steps": mine[0]["steps"], "seeds": len(mine),
                     "analytic_bytes": mem["total"],
                     "activation_bytes": mem["activations"], "cached_bytes": meas["cached"],
                     "peak_bytes": meas["measured_peak"]})
        if dev is not None:         # "cuda": {} under the simulator, where nothing is read
            kb = {k: (dev[k] / 1024 if k in dev else None)
                  for k in ("forward", "backward", "update", "peak_sampled", "pool_total")}
            rows[-1].update({
                "device KB after forward (measured)": kb["forward"],
                "device KB after backward (measured)": kb["backward"],
                "device KB after update (measured)": kb["update"],
                "device peak KB (sampled)": kb["peak_sampled"],
                "device peak / modelled": (dev["peak_sampled"] / mem["total"]
                                           if dev else None),
                "device pool KB (live + cached)": kb["pool_total"],
                "device_peak_bytes": dev.get("peak_sampled"),
                "driver_free_bytes": dev.get("driver_free"),
                "driver_total_bytes": dev.get("driver_total")})
    return rows, runs


def batch_comparisons(runs: List[dict], batch_sizes: Sequence[int],
                      time_key: str = "cpu_seconds") -> List[dict]:
    """Neighbouring batch sizes on test accuracy and on training time, and the smallest vs
    the largest batch on training time; paired by seed. Batch sizes with a diverged run
    (NaN/inf loss) are left out. time_key: "cpu_seconds" (the CPU) or "seconds" (wall
    seconds: device time on "cuda", where the CPU seconds are the host's share)."""
    if time_key not in TIME_METRICS:
        raise ValueError(f"batch_comparisons: time_key must be one of {sorted(TIME_METRICS)}, "
                         f"got {time_key!r}")
    by_b = {b: [r for r in runs if r["batch"] == b] for b in batch_sizes}   # in seed order
    ok = [b for b in batch_sizes if all(r["finite"] for r in by_b[b])]
    out = []
    for a, b in zip(ok, ok[1:]):
        c = stats.compare(f"batch {b}", [r["test_acc"] for r in by_b[b]], f"batch {a}",
                          [r["test_acc"] for r in by_b[a]], "test accuracy",
                          higher_is_better=True)
        c["kind"] = "accuracy"
        out.append(c)
    pairs = list(zip(batch_sizes, batch_sizes[1:]))
    if len(batch_sizes) > 2:
        pairs.append((batch_sizes[0], batch_sizes[-1]))
    for a, b in pairs:
        c = stats.compare(f"batch {b}", [r[time_key] for r in by_b[b]], f"batch {a}",
                          [r[time_key] for r in by_b[a]], TIME_METRICS[time_key],
                          higher_is_better=False)
        c["kind"] = "time"
        out.append(c)
    return out


# -- report -------------------------------------------------------------------------------------
def _figures(rep: Report, rows: List[dict], results: Dict[str, Any]) -> None:
    b = [r["batch"] for r in rows]
    fig, ax = new_figure(figsize=(6, 4))
    ax.plot(b, [r["analytic_bytes"] / MB for r in rows], "o--", mfc="none", color="C0",
            label="modelled: total (analytic)")
    ax.plot(b, [r["activation_bytes"] / MB for r in rows], "s--", mfc="none", color="C1",
            label="modelled: activations (analytic)")
    ax.plot(b, [r["cached_bytes"] / MB for r in rows], "x", ms=9, color="C2",
            label="measured: bytes in layer caches")
    ax.plot(b, [r["peak_bytes"] / MB for r in rows], "^-", color="C3",
            label="measured: peak (tracemalloc)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(b, [str(v) for v in b])
    ax.set_xlabel("batch size (samples)")
    ax.set_ylabel("memory of a training step (MB)")
    ax.set_title(f"Training-step memory of {results['model']}: modelled vs measured")
    ax.legend(fontsize=8)
    rep.figure("memory_vs_batch", fig, "Training-step memory of {model} vs batch size "
               "(hollow, dashed: modelled; solid: measured).")
    fig, (ax1, ax2) = new_figure(ncols=2, figsize=(10, 4))

    def bars(key, lo, hi):
        mean = [r[key] for r in rows]
        if rows[0][lo] is None:
            return mean, None
        return mean, [[r[key] - r[lo] for r in rows], [r[hi] - r[key] for r in rows]]
    acc, acc_err = bars("test acc", "test acc CI lo", "test acc CI hi")
    ax1.errorbar(b, acc, yerr=acc_err, fmt="o-", color="C0", capsize=3,
                 label=f"test accuracy (mean of {results['n_seeds']} seeds, 95% CI)")
    cpu, cpu_err = bars("CPU seconds", "CPU s CI lo", "CPU s CI hi")
    ax2.errorbar(b, cpu, yerr=cpu_err, fmt="s-", color="C1", capsize=3,
                 label=f"CPU seconds (mean of {results['n_seeds']} seeds, 95% CI)")
    ax2.plot(b, [r["wall seconds"] for r in rows], "s:", color="C1", mfc="none",
             label="wall seconds (mean)")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(b, [str(v) for v in b])
        ax.set_xlabel("batch size (samples)")
        ax.legend(fontsize=8)
    ax1.set_ylabel("test accuracy (fraction)")
    ax1.set_title(f"Test accuracy after {results['epochs']} epoch(s)")
    ax2.set_ylabel("training time (s)")
    ax2.set_title(f"Training time of {results['epochs']} epoch(s)")
    rep.figure("accuracy_time_vs_batch", fig, "Test accuracy after {epochs} epoch(s) and "
               "training time (CPU seconds, wall seconds dotted) vs batch size.")


def _write_report(out_dir, config: Dict[str, Any], results: Dict[str, Any]) -> None:
    rep = Report(out_dir, "Memory of training: parameters, optimizer state, batch size", results)
    if results["data_note"]:
        rep.note_substitution(results["dataset_wanted"], results["dataset_used"])
    rep.setup(config)
    rep.section("Model sizes (ImageNet specs, mlcvlab.analysis; modelled)")
    rep.text("Modelled from the networks' layer specs (no network was built or run): parameters "
             "and float32 sizes; 'params+grads+Adam' is 4 x P x 4 bytes; the batch estimate adds "
             "every layer output kept once (4 bytes each). {largest_model} is the largest here "
             "with {largest_params:,} parameters ({largest_mb:.1f} MB).")
    rep.table("model_sizes", results["spec_rows"], "Parameters and memory per network "
              "(modelled)")
    rep.section("Optimizer state (measured)")
    rep.text("The bytes of the state arrays each of our optimizers allocates (opt.state, "
             "measured), next to the formula slots x P x itemsize with 0 slots for SGD, 1 for "
             "momentum, 2 for Adam (m, v). All {state_rows_n} rows match the formula: "
             "{state_all_match}. Scratch buffers used inside step() are not state and are not "
             "counted here (the measured peak below includes them).")
    rep.table("optimizer_state", results["state_rows"], "Optimizer state memory")
    rep.section("Memory of a training step vs batch size")
    rep.text("Model {model} ({model_params:,} parameters) on {dataset_used}, SGD with momentum "
             "{momentum}, lr {lr}. **Modelled** (the analytic training_memory of this lab): "
             "parameters + gradients + momentum buffer (3 x P x 4 bytes = {fixed_kb:.1f} KB) + "
             "the arrays our layers keep for backward (inputs of Linear/Conv2d, outputs of ReLU, "
             "BN's x_hat, dropout masks, pooling argmax, the loss gradient). **Measured**: the "
             "bytes held in the layer caches after a step, and the peak traced by tracemalloc "
             "over one step. The measured cache bytes equal the modelled activation term at "
             "every batch size: {cache_matches}. The measured peak also holds the temporaries "
             "of forward/backward (gradients flowing back, conv patch matrices, the previous "
             "step's caches while the new ones are built) and is {peak_ratio_min:.2f}x to "
             "{peak_ratio_max:.2f}x the modelled total.")
    gpu = config.get("device", "cpu") == "cuda"
    times = ("Times are CPU seconds of the process, with wall seconds beside them" if not gpu
             else "Training ran on the device named under Setup. Times are wall seconds "
             "(device time: the Trainer reads every step's loss) with the CPU seconds, the "
             "host's share, beside them; the time comparisons are on the wall seconds")
    rep.text("Accuracy and time: every batch size trained for {epochs} epoch(s) from each of "
             "the seeds {seeds} (for one seed, the same initial weights and shuffling seed at "
             "every batch size; the batch sizes of one seed back to back). The test split is "
             "evaluated once, after the last epoch. " + times + "; means with 95% intervals "
             "over the seeds.")
    cols = ["batch", "params+grads+state KB (modelled)", "activations KB (modelled)",
            "activations KB (measured in caches)", "total KB (modelled)", "peak KB (measured)",
            "peak / modelled", "test acc", "test acc CI lo", "test acc CI hi", "CPU seconds",
            "CPU s CI lo", "CPU s CI hi", "wall seconds", "steps", "seeds"]
    rep.table("batch_sizes", results["batch_rows"], "Memory, accuracy and time per batch size",
              cols)
    rep.table("runs", results["runs"], "Every training run (one row per seed and batch size)",
              ["seed", "batch", "test_acc", "test_loss", "cpu_seconds", "seconds", "steps",
               "train_loss_lowest", "train_loss_last"])
    if gpu:
        _device_memory_section(rep, results)
    _figures(rep, results["batch_rows"], results)
    rep.comparisons(results["comparisons"], "Comparisons (paired by seed)")
    bullets = [
        "Modelled: activation memory grows {act_growth:.1f}x from batch {b_first} to {b_last} "
        "while the parameter-sized terms stay at {fixed_kb:.1f} KB; at batch {b_last} "
        "activations are {act_share_last:.1%} of the modelled total. Measured peak: "
        "{peak_first_kb:.1f} KB at batch {b_first}, {peak_last_kb:.1f} KB at batch {b_last}.",
        "Measured: Adam keeps {adam_over_sgd:.0f}x the parameter bytes as state, momentum 1x, "
        "SGD none.",
        ("Training time: {time_first:.3g} CPU s at batch {b_first} and {time_last:.3g} CPU s "
         "at batch {b_last} (wall: {wall_first:.3g} s and {wall_last:.3g} s); {time_sentence}"
         if not gpu else
         "Training time on the device: {wall_first:.3g} wall s at batch {b_first} and "
         "{wall_last:.3g} wall s at batch {b_last} (the host's CPU seconds: {time_first:.3g} "
         "and {time_last:.3g}); {time_sentence}"),
    ]
    bullets += ["{acc_sentences[%d]}" % i
                for i in range(len(results["acc_sentences"]))]
    if gpu and results["device_memory_measured"]:
        bullets.append("Measured on the device: the sampled peak of a step is "
                       "{device_peak_ratio_min:.2f}x to {device_peak_ratio_max:.2f}x the "
                       "modelled total.")
    elif gpu:
        bullets.append("Device memory was not measurable under the simulator: no device "
                       "number is reported.")
    bullets.append("{stability_text}")
    rep.conclusions(bullets)
    if results["unstable_runs"]:
        rep.explanation(
            f"every batch size ran with the same lr {results['lr']} and momentum "
            f"{results['momentum']}, so a small batch takes many more steps per epoch, each on "
            "a noisier gradient; the linear scaling rule (Goyal et al. 2017) would scale the lr "
            "with the batch size. The accuracy of an unstable run depends on where it stopped, "
            "not on the batch size's memory.")
    rep.write()


def _device_memory_section(rep: Report, results: Dict[str, Any]) -> None:
    """The device-memory text and table of a "cuda" run: measured bytes next to the analytic
    model, or, under the simulator, that they are not measurable (no number is made up)."""
    rep.section("Device memory of a training step (--device cuda)")
    if not results["device_memory_measured"]:
        rep.text("Device memory: **not measurable under the simulator**. This run used "
                 "{device_where}: there is no device memory to read; the "
                 "device step ran end to end at every batch size, and its memory columns are "
                 "empty.")
        return
    rep.text("Device memory on {device_where}, **measured**: CuPy's memory pool, bytes in live "
             "arrays above what was live before the model was built, sampled after the "
             "forward, the backward and the update of a second step (the first allocates the "
             "momentum buffer); the largest sample is set next to the modelled total of the "
             "table above. A temporary freed inside a pass is not seen by these samples. The "
             "driver reported {driver_free_gb:.2f} GB free of {driver_total_gb:.2f} GB "
             "(cudaMemGetInfo, before the first measured model; it also counts the CUDA "
             "context, the libraries' workspaces and other processes).")
    cols = ["batch", "total KB (modelled)", "device KB after forward (measured)",
            "device KB after backward (measured)", "device KB after update (measured)",
            "device peak KB (sampled)", "device peak / modelled",
            "device pool KB (live + cached)"]
    rep.table("device_memory", results["batch_rows"], "Device memory per batch size "
              "(measured, CuPy's pool) next to the modelled total", cols)


def _device_summary(config: Dict[str, Any], rows: List[dict]) -> Dict[str, Any]:
    """Where the device numbers come from (cuda runs only)."""
    if config.get("device", "cpu") != "cuda":
        return {"device": "cpu"}
    from mlcvlab.gpu.device import describe
    measured = [r for r in rows if r.get("device_peak_bytes") is not None]
    out = {"device": "cuda", "device_where": describe("cuda"),
           "device_memory_measured": bool(measured)}
    if measured:
        out.update(driver_free_gb=measured[0]["driver_free_bytes"] / 2**30,
                   driver_total_gb=measured[0]["driver_total_bytes"] / 2**30,
                   device_peak_ratio_min=min(r["device peak / modelled"] for r in measured),
                   device_peak_ratio_max=max(r["device peak / modelled"] for r in measured))
    return out


def _summary(results: Dict[str, Any]) -> Dict[str, Any]:
    rows, spec, state = results["batch_rows"], results["spec_rows"], results["state_rows"]
    big = max(spec, key=lambda r: r["params"])
    first, last = rows[0], rows[-1]
    unstable = [r for r in results["runs"] if not r["finite"]
                or r["train_loss_last"] > UNSTABLE_LOSS_RISE * r["train_loss_lowest"]]
    adam = [r for r in state if r["optimizer"] == "adam"][0]
    comps = results["comparisons"]
    time_c = [c for c in comps if c["kind"] == "time"
              and {c["a"], c["b"]} == {f"batch {first['batch']}", f"batch {last['batch']}"}]
    return {"largest_model": big["model"], "largest_params": big["params"],
            "largest_mb": big["param MB"], "state_rows_n": len(state),
            "state_all_match": all(r["matches"] for r in state),
            "cache_matches": all(r["cached_bytes"] == r["activation_bytes"] for r in rows),
            "peak_ratio_min": min(r["peak / modelled"] for r in rows),
            "peak_ratio_max": max(r["peak / modelled"] for r in rows),
            "peak_first_kb": first["peak KB (measured)"],
            "peak_last_kb": last["peak KB (measured)"],
            "fixed_kb": first["params+grads+state KB (modelled)"], "b_first": first["batch"],
            "b_last": last["batch"],
            "act_growth": last["activation_bytes"] / first["activation_bytes"],
            "act_share_last": last["activation_bytes"] / last["analytic_bytes"],
            "adam_over_sgd": adam["state bytes (actual)"] / (adam["params"] * 4),
            "time_first": first["CPU seconds"], "time_last": last["CPU seconds"],
            "wall_first": first["wall seconds"], "wall_last": last["wall seconds"],
            "time_sentence": stats.sentence(time_c[0]) if time_c else "one batch size only.",
            "acc_sentences": [stats.sentence(c) for c in comps if c["kind"] == "accuracy"],
            "unstable_runs": [{"batch": r["batch"], "seed": r["seed"]} for r in unstable],
            "unstable_batches": sorted({r["batch"] for r in unstable}),
            "stability_text": _stability_text(unstable, results["epochs"])}


def _stability_text(unstable: List[dict], epochs: int = 2) -> str:
    """The conclusion on the runs whose training loss rose by the end (none: it says so)."""
    if epochs < 2 and not unstable:
        return "One epoch per run: no training-loss trend to judge stability by."
    if not unstable:
        return (f"In every run the last epoch's training loss was within "
                f"{UNSTABLE_LOSS_RISE}x of the lowest epoch's: training was stable.")
    runs = "; ".join(f"batch {r['batch']} seed {r['seed']}: {r['train_loss_lowest']:.3f} -> "
                     f"{r['train_loss_last']:.3f}, test accuracy {r['test_acc']:.4f}"
                     for r in unstable)
    return (f"Training was unstable in {len(unstable)} run(s): the epoch training loss "
            f"rose from its lowest to more than {UNSTABLE_LOSS_RISE}x that by the last epoch, or "
            f"became NaN/inf ({runs}).")


def _validate(config: Dict[str, Any]) -> None:
    """A clear ValueError for every bad config value, before any work."""
    bs = config["batch_sizes"]
    if not isinstance(bs, (list, tuple)) or not bs or any(
            isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in bs) \
            or sorted(set(bs)) != list(bs):
        raise ValueError(f"memory lab: batch_sizes must be a non-empty strictly increasing list "
                         f"of integers >= 1, got {bs!r}")
    for key, lo in (("epochs", 1), ("n_train", 0), ("n_test", 0), ("spec_batch", 1)):
        v = config[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"memory lab: {key} must be an integer >= {lo}, got {v!r}")
    if not (math.isfinite(config["lr"]) and config["lr"] > 0):
        raise ValueError(f"memory lab: lr must be a finite number > 0, got {config['lr']!r}")
    if not (math.isfinite(config["momentum"]) and 0 <= config["momentum"] < 1):
        raise ValueError(f"memory lab: momentum must be in [0, 1), got {config['momentum']!r}")
    if config["model"] not in ("mlp", "lenet5"):
        raise ValueError(f"memory lab: model must be mlp or lenet5 (the models its batch-size "
                         f"study trains), got {config['model']!r}")
    if 0 < config["n_train"] < max(bs):
        raise ValueError(f"memory lab: n_train ({config['n_train']}) must be 0 (all) or at "
                         f"least the largest batch size ({max(bs)})")
    stats.seeds_of(config)


@lab(name="memory",
     study="Memory of training: ResNet-152 and others, optimizer state, batch size vs memory, "
           "accuracy and time",
     quick=_QUICK, standard=_STANDARD, full=_FULL,
     expected_seconds={"quick": 10, "standard": 2200, "full": 5400, "full_embedded": 800})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    """Spec tables, optimizer state, then the batch-size study on our engine."""
    _validate(config)
    data = load_data(config)
    seeds = stats.seeds_of(config)
    results: Dict[str, Any] = {"dataset_wanted": config["dataset"], "dataset_used": data["used"],
                               "data_note": data["note"], "model": config["model"],
                               "model_params": build(config["model"], 0).num_parameters(),
                               "seeds": seeds, "n_seeds": len(seeds),
                               **{k: config[k] for k in ("epochs", "lr", "momentum")}}
    results["spec_rows"] = spec_table(config["spec_models"], config["spec_batch"])
    results["state_rows"] = state_table(config["state_models"], config["seed"])
    results["batch_rows"], results["runs"] = batch_table(data, config, progress)
    results["comparisons"] = batch_comparisons(
        results["runs"], config["batch_sizes"],
        "seconds" if config["device"] == "cuda" else "cpu_seconds")
    results.update(_summary(results))
    results.update(_device_summary(config, results["batch_rows"]))
    _write_report(out_dir, config, results)
    return results
