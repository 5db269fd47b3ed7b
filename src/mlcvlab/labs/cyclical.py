"""Lab ``cyclical``: LR range test, cyclical learning rates and cyclical batch sizes.

Smith (2017), "Cyclical Learning Rates for Training Neural Networks", rerun with
MiniGoogLeNet (Zhang et al. 2017) on Fashion-MNIST (the embedded ``fashion10k``
subset when the full set is not on disk):

1. LR range test: 10 learning rates growing geometrically from 1e-9 to 10 over
   5 epochs; lr_min / lr_max picked by the rule of
   :func:`mlcvlab.optim.lr_range_test` (stated in the report).
2. Batch-size range test: loss vs batch size from 64 to 8192 (doubling; sizes
   above ``micro_batch`` run by gradient accumulation), giving b_min / b_max.
3. Three training policies from the same initial weights: a fixed lr (lr_max),
   a cyclical lr with exponential decay (``CyclicLR`` mode ``exp_range``), and a
   cyclical batch size (``CyclicBatchSize`` mode ``exp``, geometric between
   b_min and b_max) with the lr decaying at the same rate (``ExponentialDecay``).

The quick preset replaces MiniGoogLeNet (which has no width option) by a small
MLP stand-in on a tiny subset, labelled as such in the report.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Tuple

import numpy as np

from mlcvlab.data.datasets import load, resolve_dataset
from mlcvlab.labs.depth_width import EpochShuffledBatches
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure
from mlcvlab.models import minigooglenet, mlp
from mlcvlab.nn import CrossEntropyLoss
from mlcvlab.optim import (SGD, CyclicBatchSize, CyclicLR, ExponentialDecay,
                           accumulate_gradients, batch_size_range_test, lr_range_test)
from mlcvlab.train import Callback, Trainer, array_batches, evaluate

POLICIES = ("fixed", "clr", "cbs")
POLICY_LABELS = {"fixed": "fixed lr", "clr": "cyclical lr (exp_range)",
                 "cbs": "cyclical batch size (exp) + lr decay"}

_FULL = {"dataset": "fashion_mnist", "model": "minigooglenet", "mlp_hidden": 64, "n_train": 0,
         "n_val": 0, "batch_size": 64, "momentum": 0.9, "weight_decay": 5e-4,
         "lr_test_min": 1e-9, "lr_test_max": 10.0, "lr_test_num": 10, "lr_test_epochs": 5,
         "bs_min": 64, "bs_max": 8192, "bs_steps": 5, "micro_batch": 64, "epochs": 48,
         "clr_step_epochs": 8, "decay_per_epoch": 0.95}
_QUICK = {**_FULL, "model": "mlp", "n_train": 2048, "n_val": 512, "batch_size": 32,
          "lr_test_epochs": 1, "bs_min": 32, "bs_max": 512, "bs_steps": 3, "micro_batch": 128,
          "epochs": 4, "clr_step_epochs": 1}


# -- data and model ----------------------------------------------------------------------------
def _subset(X: np.ndarray, y: np.ndarray, n: int, gen: np.random.Generator):
    if n <= 0 or n >= len(X):
        return X, y
    idx = np.sort(gen.permutation(len(X))[:n])
    return X[idx], y[idx]


def load_data(config: Dict[str, Any]) -> Dict[str, Any]:
    """Train/validation arrays (N, 1, 28, 28) standardized with the training mean and std."""
    gen = np.random.default_rng([config["seed"], 0])
    used, note = resolve_dataset(config["dataset"])      # on disk, else its embedded subset
    Xtr, ytr = load(used, "train")
    Xva, yva = load(used, "test")
    Xtr, ytr = _subset(Xtr, ytr, config["n_train"], gen)
    Xva, yva = _subset(Xva, yva, config["n_val"], gen)
    mean, std = float(Xtr.mean()), float(Xtr.std())
    Xtr, Xva = (((X - mean) / std).astype(np.float32) for X in (Xtr, Xva))
    return {"X_train": Xtr, "y_train": np.asarray(ytr), "X_val": Xva,
            "y_val": np.asarray(yva), "used": used, "note": note}


def build_model(config: Dict[str, Any]):
    """MiniGoogLeNet for 1-channel 28x28 images, or the MLP stand-in 784 -> hidden -> 10."""
    gen = np.random.default_rng([config["seed"], 1])
    if config["model"] == "minigooglenet":
        return minigooglenet(num_classes=10, in_channels=1, rng=gen)
    if config["model"] == "mlp":
        return mlp([784, config["mlp_hidden"], 10], rng=gen)
    raise ValueError(f"cyclical: model must be 'minigooglenet' or 'mlp' (stand-in), "
                     f"got {config['model']!r}")


def make_optimizer(model, config: Dict[str, Any], lr: float) -> SGD:
    return SGD(model.parameters(), lr=lr, momentum=config["momentum"],
               weight_decay=config["weight_decay"], decay_mask=True)


# -- range tests -------------------------------------------------------------------------------
def run_lr_test(data, config) -> Dict[str, Any]:
    """LR range test; returns the curve and the suggested (lr_min, lr_max)."""
    model = build_model(config)
    opt = make_optimizer(model, config, lr=config["lr_test_min"])
    loader = EpochShuffledBatches(data["X_train"], data["y_train"], config["batch_size"],
                                  seed=config["seed"])
    res = lr_range_test(model, CrossEntropyLoss(), opt, loader, lr_min=config["lr_test_min"],
                        lr_max=config["lr_test_max"], num=config["lr_test_num"],
                        epochs=config["lr_test_epochs"])
    lo, hi = res.suggested
    # the rule needs a loss that falls somewhere in the sweep; a minimum at the first rate means
    # the test saw no decrease (too few batches per rate) and the range is not meaningful
    return {"lr_test_no_decrease": bool(res.lr_at_min_loss == res.lrs[0]),
            "lr_test": {"lr": res.lrs, "loss": res.losses, "smoothed": res.smoothed},
            "lr_min": float(lo), "lr_max": float(hi), "lr_ratio": float(hi / lo),
            "lr_at_min_loss": res.lr_at_min_loss,
            "lr_test_diverged": bool(res.diverged), "lr_test_tried": len(res.lrs)}


def bs_test_range(bs_min: int, bs_max: int, n_train: int) -> Tuple[int, int]:
    """(bs_min, largest bs_min * 2**k <= min(bs_max, n_train)); a batch cannot exceed the data."""
    top = min(bs_max, n_train)
    if bs_min > top:
        raise ValueError(f"cyclical: bs_min={bs_min} exceeds the {n_train} training samples; "
                         "lower bs_min or use more data")
    size = bs_min
    while size * 2 <= top:
        size *= 2
    return bs_min, size


def run_bs_test(data, config, lr: float) -> Dict[str, Any]:
    """Batch-size range test at learning rate ``lr``; returns the curve and (b_min, b_max)."""
    lo, hi = bs_test_range(config["bs_min"], config["bs_max"], len(data["y_train"]))
    model = build_model(config)
    opt = make_optimizer(model, config, lr=lr)
    res = batch_size_range_test(model, CrossEntropyLoss(), opt, data["X_train"],
                                data["y_train"], min_size=lo, max_size=hi,
                                steps_per_size=config["bs_steps"],
                                max_micro_batch=config["micro_batch"],
                                rng=np.random.default_rng([config["seed"], 2]))
    b_min, b_max = (int(v) for v in res.suggested)
    return {"bs_test": {"batch_size": res.sizes, "loss": res.losses, "smoothed": res.smoothed},
            "b_min": b_min, "b_max": b_max, "bs_ratio": b_max / b_min, "bs_max_tested": hi,
            "bs_capped": hi < config["bs_max"], "bs_test_diverged": bool(res.diverged)}


# -- training policies --------------------------------------------------------------------------
class TrainAccuracy(Callback):
    """Adds ``train_acc`` (eval mode, on a fixed subset of the training set) to each epoch
    record.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, batch: int):
        self.batches = list(array_batches(X, y, batch))

    def on_epoch_end(self, trainer, record):
        record["train_acc"] = evaluate(trainer.model, trainer.loss, self.batches)["acc"]


def accumulating_step(micro_batch: int):
    """A Trainer step_fn: gradient accumulation in micro-batches, then one optimizer step."""

    def step(trainer, xb, yb):
        t0 = time.perf_counter()
        value = accumulate_gradients(trainer.model, trainer.loss, xb, yb, micro_batch)
        t1 = time.perf_counter()
        trainer.optimizer.step()
        return value, {"compute_seconds": t1 - t0, "update_seconds": time.perf_counter() - t1}

    return step


def _schedules(policy: str, opt, loader, config, ranges) -> Tuple[list, Dict[str, Any]]:
    """The schedulers of ``policy`` and a description of their settings."""
    n = len(loader.X)
    if policy == "fixed":
        return [], {"lr": ranges["lr_max"], "batch": config["batch_size"]}
    if policy == "clr":
        steps = -(-n // config["batch_size"])
        step_size = max(1, config["clr_step_epochs"] * steps)
        gamma = config["decay_per_epoch"] ** (1.0 / steps)
        sched = CyclicLR(opt, ranges["lr_min"], ranges["lr_max"], step_size, mode="exp_range",
                         gamma=gamma)
        return [sched], {"step_size": step_size, "gamma": gamma, "batch": config["batch_size"]}
    mean_size = (ranges["b_min"] * ranges["b_max"]) ** 0.5
    steps = max(1, int(round(n / mean_size)))
    step_size = max(1, config["clr_step_epochs"] * steps)
    gamma = config["decay_per_epoch"] ** (1.0 / steps)
    cbs = CyclicBatchSize(loader, ranges["b_min"], ranges["b_max"], step_size, mode="exp")
    return [cbs, ExponentialDecay(opt, gamma)], {"step_size": step_size, "gamma": gamma,
                                                 "lr0": ranges["lr_max"]}


def train_policy(policy: str, data, config, ranges) -> Dict[str, Any]:
    """Train a fresh model (same initial weights for every policy); history and best accuracy."""
    model = build_model(config)
    opt = make_optimizer(model, config, lr=ranges["lr_max"])
    loader = EpochShuffledBatches(data["X_train"], data["y_train"], config["batch_size"],
                                  seed=config["seed"])
    schedulers, settings = _schedules(policy, opt, loader, config, ranges)
    n_check = min(len(data["y_train"]), max(len(data["y_val"]), 256))
    trainer = Trainer(model, CrossEntropyLoss(), opt, schedulers=schedulers,
                      callbacks=[TrainAccuracy(data["X_train"][:n_check],
                                               data["y_train"][:n_check], 256)],
                      step_fn=accumulating_step(config["micro_batch"]))
    start, cpu_start = time.perf_counter(), time.process_time()
    history = trainer.fit(loader, config["epochs"],
                          val_loader=list(array_batches(data["X_val"], data["y_val"], 256)))
    accs = history.column("val_acc")
    best = int(np.argmax(accs))
    return {"history": history.records, "settings": settings,
            "best_val_acc": float(accs[best]), "best_epoch": best + 1,
            "final_val_acc": float(accs[-1]), "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu_start}


# -- report ---------------------------------------------------------------------------------------
def _range_figure(rep: Report, xs, ys, smooth, lo, hi, xlabel: str, name: str, caption: str):
    fig, ax = new_figure(figsize=(6, 4))
    ax.plot(xs, ys, "o-", label="mean loss at the setting")
    ax.plot(xs, smooth, "s--", label="smoothed loss (EMA)")
    ax.axvline(lo, color="g", ls=":", label=f"chosen min ({lo:.3g})")
    ax.axvline(hi, color="r", ls=":", label=f"chosen max ({hi:.3g})")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("training loss (cross-entropy)")
    ax.legend()
    rep.figure(name, fig, caption)


def _curves_figure(rep: Report, policies: Dict[str, Any]) -> None:
    fig, (ax1, ax2) = new_figure(ncols=2, figsize=(11, 4))
    for i, (name, res) in enumerate(policies.items()):
        h = res["history"]
        ep = [r["epoch"] for r in h]
        color = f"C{i}"
        ax1.plot(ep, [r["train_loss"] for r in h], "-", color=color, label=f"{name} train")
        ax1.plot(ep, [r["val_loss"] for r in h], "--", color=color, label=f"{name} val")
        ax2.plot(ep, [r["train_acc"] for r in h], "-", color=color, label=f"{name} train")
        ax2.plot(ep, [r["val_acc"] for r in h], "--", color=color, label=f"{name} val")
    for ax, label in ((ax1, "loss"), (ax2, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    rep.figure("curves", fig, "Training (solid) and validation (dashed) loss and accuracy per "
               "policy.")


def _write_report(out_dir, config, results) -> None:
    rep = Report(out_dir, "Cyclical learning rates and batch sizes", results)
    if results["data_note"]:
        rep.note_substitution(results["dataset_wanted"], results["dataset_used"])
    if config["model"] != "minigooglenet":
        rep.note(f"Model stand-in: this run trains an MLP 784-{config['mlp_hidden']}-10, not "
                 "MiniGoogLeNet (which has no width option to make it small enough for this "
                 "preset). Numbers are for the MLP.")
    if results["lr_test_no_decrease"]:
        rep.note("The LR range test found its minimum loss at the lowest rate tried, so the loss "
                 "never fell and the chosen lr range is not meaningful; rerun with more "
                 "lr_test_epochs or training data (more batches per rate).")
    rep.setup(config)
    rep.text("Data: {n_train:,} training and {n_val:,} validation images of {dataset_used} "
             "(validation = the test split), standardized with the training mean and std. "
             "Optimizer: SGD, momentum {momentum}, weight decay {weight_decay} on weights only.")
    rep.section("LR range test")
    rep.text("{lr_test_tried} learning rates from {lr_test_min:g} to {lr_test_max:g} "
             "(geometric), {lr_test_epochs} epoch(s) in total at batch {batch_size}; the "
             "curve diverged early: {lr_test_diverged}. Rule (mlcvlab.optim.lr_range_test): "
             "lr_max = one decade below the lr of the minimum smoothed loss "
             "({lr_at_min_loss:.3g}), i.e. lr_max = {lr_max:.3g}; lr_min = lr_max / 4 = "
             "{lr_min:.3g} (Smith 2017, Sec. 3.3).")
    rep.table("lr_range_test", results["lr_test_rows"], "Loss per learning rate")
    _range_figure(rep, results["lr_test"]["lr"], results["lr_test"]["loss"],
                  results["lr_test"]["smoothed"], results["lr_min"], results["lr_max"],
                  "learning rate", "lr_range_test", "Loss vs learning rate with the chosen range.")
    rep.section("Batch-size range test")
    rep.text("Batch sizes {bs_min} to {bs_max_tested} doubling ({bs_steps} steps each, lr "
             "{lr_max:.3g}, batches above {micro_batch} by gradient accumulation; with batch norm "
             "the statistics are then per micro-batch). Requested up to {bs_max}; capped at the "
             "data: {bs_capped}. Rule: b_max = the size of the minimum smoothed loss, b_min = "
             "b_max / 4 (clipped to the range): b_min = {b_min}, b_max = {b_max}. Caveat: the test "
             "trains on through the sizes, so larger sizes come later in training and the "
             "minimum is biased towards them.")
    rep.table("bs_range_test", results["bs_test_rows"], "Loss per batch size")
    _range_figure(rep, results["bs_test"]["batch_size"], results["bs_test"]["loss"],
                  results["bs_test"]["smoothed"], results["b_min"], results["b_max"],
                  "batch size", "bs_range_test", "Loss vs batch size with the chosen range.")
    rep.section("Policies")
    rep.text("fixed: lr = lr_max, batch {batch_size}. clr: CyclicLR between lr_min and lr_max, "
             "mode exp_range (amplitude x gamma^t), half cycle {clr_step_epochs} epochs, gamma "
             "chosen so the amplitude shrinks by {decay_per_epoch} per epoch. cbs: "
             "CyclicBatchSize between b_min and b_max in mode exp (geometric), half cycle about "
             "{clr_step_epochs} epochs of data, starting at b_min; lr = lr_max decaying by "
             "{decay_per_epoch} per epoch (ExponentialDecay). Why this trajectory: with "
             "momentum SGD the gradient-noise scale is about lr/B, so cycling B by b_max/b_min "
             "= {bs_ratio:.3g} at a fixed lr cycles the noise by that factor, as CLR cycles it "
             "by lr_max/lr_min = {lr_ratio:.3g}; "
             "a geometric path spends equal steps on every octave of noise (a linear one would "
             "spend most steps near b_max), and starting small takes many cheap noisy steps "
             "while the loss is high. All policies start from the same weights.")
    rep.table("policies", results["policy_rows"], "Best validation accuracy per policy")
    rep.text("Seconds are the wall-clock time of each policy's training and evaluation; on a "
             "machine shared with other jobs they also reflect changes in load. CPU seconds are "
             "the process's CPU time over the same run (all its threads): they do not grow "
             "while the process waits for a core, so they are the ones to compare where the "
             "wall seconds are well above them.")
    _curves_figure(rep, results["policies"])
    rep.conclusions(["Best validation accuracy: {ranking_text}.",
                     "The best policy of this run is {best_policy} ({best_policy_acc:.4f}); "
                     "cyclical lr vs fixed lr: {clr_minus_fixed:+.4f}; cyclical batch size vs "
                     "fixed lr: {cbs_minus_fixed:+.4f}."])
    rep.write()


def _rows(curve: Dict[str, list], key: str) -> List[dict]:
    return [{key: x, "loss": l, "smoothed loss": s}
            for x, l, s in zip(curve[key], curve["loss"], curve["smoothed"])]


@lab(name="cyclical",
     study="Smith (2017): LR range test, cyclical LR and batch size, MiniGoogLeNet on "
           "Fashion-MNIST",
     quick=_QUICK, full=_FULL,
     expected_seconds={"quick": 10, "full": 500_000, "full_embedded": 21600})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    """Range tests, then the three policies; every number in the report comes from this run."""
    data = load_data(config)
    results: Dict[str, Any] = {"dataset_wanted": config["dataset"], "dataset_used": data["used"],
                               "data_note": data["note"], "n_train": len(data["y_train"]),
                               "n_val": len(data["y_val"])}
    steps = ["lr range test", "batch-size range test", *POLICIES]
    policies: Dict[str, Any] = {}
    for step in progress(steps, desc="cyclical"):
        if step == "lr range test":
            results.update(run_lr_test(data, config))
        elif step == "batch-size range test":
            results.update(run_bs_test(data, config, results["lr_max"]))
        else:
            policies[step] = train_policy(step, data, config, results)
    results["policies"] = policies
    results["lr_test_rows"] = _rows(results["lr_test"], "lr")
    results["bs_test_rows"] = _rows(results["bs_test"], "batch_size")
    results["policy_rows"] = [{"policy": POLICY_LABELS[p], "best val acc": r["best_val_acc"],
                               "best epoch": r["best_epoch"], "final val acc": r["final_val_acc"],
                               "seconds": r["seconds"], "CPU seconds": r["cpu_seconds"]}
                              for p, r in policies.items()]
    order = sorted(policies, key=lambda p: -policies[p]["best_val_acc"])
    results["ranking_text"] = ", ".join(f"{p} {policies[p]['best_val_acc']:.4f}" for p in order)
    results["best_policy"], results["best_policy_acc"] = (order[0],
                                                          policies[order[0]]["best_val_acc"])
    for p in ("clr", "cbs"):
        results[f"{p}_minus_fixed"] = (policies[p]["best_val_acc"]
                                       - policies["fixed"]["best_val_acc"])
    results.update({k: config[k] for k in ("lr_test_min", "lr_test_max", "lr_test_epochs",
                                           "batch_size", "momentum", "weight_decay", "bs_min",
                                           "bs_max", "bs_steps", "micro_batch",
                                           "clr_step_epochs", "decay_per_epoch")})
    _write_report(out_dir, config, results)
    return results
