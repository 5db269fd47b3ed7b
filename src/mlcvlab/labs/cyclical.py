"""Lab ``cyclical``: LR range test, cyclical learning rates and cyclical batch sizes.

Smith (2017), "Cyclical Learning Rates for Training Neural Networks", rerun with
MiniGoogLeNet (Zhang et al. 2017) on Fashion-MNIST (the embedded ``fashion10k``
subset when the full set is not on disk):

1. LR range test: 10 learning rates growing geometrically from 1e-9 to 10 over
   5 epochs; base_lr / max_lr by Smith (2017) Sec. 3.3's rule
   (:func:`mlcvlab.optim.lr_finder.smith_lr_bounds`, quoted in the report).
2. Batch-size range test: sizes from 64 to 8192 (doubling; sizes above ``micro_batch``
   run by gradient accumulation), every size restarted from the same initial weights and
   trained for the same ``bs_steps`` steps, its loss measured on a fixed class-balanced
   sample of the training set; b_max where the loss stops falling with the size, b_min =
   b_max / 4.
3. Three training policies from the same initial weights, per seed: a fixed lr (max_lr),
   a cyclical lr with exponential decay (``CyclicLR`` mode ``exp_range``), and a
   cyclical batch size (``CyclicBatchSize`` mode ``exp``, geometric between
   b_min and b_max) with the lr decaying at the same rate (``ExponentialDecay``).
   Curves and the best epoch come from a validation split held out of the training data;
   the test split is evaluated once, at the end, with the best epoch's weights. The
   policies are compared over ``seeds`` (paired: the same initial weights and batch order
   for every policy of one seed) with 95% intervals and verdicts.

The range tests run once (with the base seed); their bounds serve every seed. The quick
preset replaces MiniGoogLeNet by a small MLP stand-in on a tiny subset, the standard preset
by LeNet-5 with batch norm (MiniGoogLeNet is too slow for 2 CPU cores); both say so in the
report.
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Tuple

import numpy as np

from mlcvlab.data import train_val_split
from mlcvlab.data.datasets import load, resolve_dataset
from mlcvlab.labs import stats
from mlcvlab.labs.depth_width import EpochShuffledBatches
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure
from mlcvlab.models import lenet5, minigooglenet, mlp
from mlcvlab.nn import CrossEntropyLoss
from mlcvlab.optim import (SGD, CyclicBatchSize, CyclicLR, ExponentialDecay,
                           accumulate_gradients, batch_size_range_test, lr_range_test)
from mlcvlab.optim.lr_finder import SLOW_FRACTION, START_FRACTION
from mlcvlab.train import Callback, Trainer, array_batches, evaluate

POLICIES = ("fixed", "clr", "cbs")
POLICY_LABELS = {"fixed": "fixed lr", "clr": "cyclical lr (exp_range)",
                 "cbs": "cyclical batch size (exp) + lr decay"}
MODELS = ("minigooglenet", "lenet5", "mlp")
SMITH_QUOTE = (
    "\"run your model for several epochs while letting the learning rate increase linearly "
    "between low and high LR values. [...] Next, plot the accuracy versus learning rate. Note "
    "the learning rate value when the accuracy starts to increase and when the accuracy "
    "slows, becomes ragged, or starts to fall. These two learning rates are good choices for "
    "bounds; that is, set base_lr to the first value and set max_lr to the latter value. "
    "Alternatively, one can use the rule of thumb that the optimum learning rate is usually "
    "within a factor of two of the largest one that converges [2] and set base_lr to 1/3 or "
    "1/4 of max_lr.\" (Smith 2017, \"Cyclical Learning Rates for Training Neural Networks\", "
    "Sec. 3.3)")

_FULL = {"dataset": "fashion_mnist", "model": "minigooglenet", "mlp_hidden": 64, "n_train": 0,
         "device": "cpu",
         "val_fraction": 0.1, "n_test": 0, "n_check": 2000, "batch_size": 64,
         "momentum": 0.9, "weight_decay": 5e-4, "lr_test_min": 1e-9, "lr_test_max": 10.0,
         "lr_test_num": 10, "lr_test_epochs": 5, "bs_min": 64, "bs_max": 8192,
         "bs_steps": 20, "micro_batch": 64, "epochs": 48, "clr_step_epochs": 8,
         "decay_per_epoch": 0.95, "seeds": 5}
# standard: LeNet-5 (with batch norm) instead of MiniGoogLeNet, 20,000 training images of
# Fashion-MNIST (all 8,000 of fashion10k when Fashion-MNIST is not on disk), 5 seeds x 3
# policies x 16 epochs. Measured basis: the same preset with 10,000 images and 3 seeds ran on
# the real Fashion-MNIST in 298 CPU s (31 CPU s per 16-epoch run, session 7); doubling the
# images and going to 5 seeds gives ~16 CPU min (an extrapolation).
_STANDARD = {**_FULL, "model": "lenet5", "n_train": 20_000, "n_check": 1000,
             "lr_test_epochs": 2, "bs_min": 32, "bs_max": 1024, "bs_steps": 16,
             "micro_batch": 256, "epochs": 16, "clr_step_epochs": 2, "decay_per_epoch": 0.9,
             "seeds": 5}
_QUICK = {**_FULL, "model": "mlp", "n_train": 2048, "n_test": 512, "n_check": 500,
          "batch_size": 32, "lr_test_epochs": 3, "bs_min": 32, "bs_max": 512,
          "bs_steps": 16, "micro_batch": 128, "epochs": 4, "clr_step_epochs": 1,
          "seeds": 2}


def check_config(config: Dict[str, Any]) -> None:
    """A ValueError naming the first config value out of its range, before any work."""
    def bad(key, valid):
        raise ValueError(f"cyclical: {key}={config[key]!r} is invalid; valid: {valid}")

    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def finite(v):
        return isinstance(v, (int, float, np.number)) and math.isfinite(float(v))

    if config["model"] not in MODELS:
        bad("model", " / ".join(MODELS) + " (mlp and lenet5 are stand-ins)")
    for key, lo in (("mlp_hidden", 1), ("n_train", 0), ("n_test", 0), ("n_check", 10),
                    ("batch_size", 1), ("lr_test_num", 2), ("bs_min", 1), ("bs_max", 1),
                    ("bs_steps", 1), ("micro_batch", 1), ("epochs", 1),
                    ("clr_step_epochs", 1)):
        if not is_int(config[key]) or config[key] < lo:
            bad(key, f"an integer >= {lo}")
    if config["bs_max"] < config["bs_min"]:
        bad("bs_max", f"an integer >= bs_min ({config['bs_min']})")
    if not finite(config["val_fraction"]) or not 0 < config["val_fraction"] < 1:
        bad("val_fraction", "a number in (0, 1)")
    if not finite(config["momentum"]) or not 0 <= config["momentum"] < 1:
        bad("momentum", "a number in [0, 1)")
    if not finite(config["weight_decay"]) or config["weight_decay"] < 0:
        bad("weight_decay", "a finite number >= 0")
    if not finite(config["lr_test_min"]) or config["lr_test_min"] <= 0:
        bad("lr_test_min", "a finite number > 0")
    if not finite(config["lr_test_max"]) or config["lr_test_max"] <= config["lr_test_min"]:
        bad("lr_test_max", f"a finite number > lr_test_min ({config['lr_test_min']})")
    if not finite(config["lr_test_epochs"]) or config["lr_test_epochs"] <= 0:
        bad("lr_test_epochs", "a finite number > 0")
    if not finite(config["decay_per_epoch"]) or not 0 < config["decay_per_epoch"] <= 1:
        bad("decay_per_epoch", "a number in (0, 1]")
    stats.seeds_of(config)          # raises on a bad seeds value


# -- data and model ----------------------------------------------------------------------------
def _subset(X: np.ndarray, y: np.ndarray, n: int, gen: np.random.Generator):
    """A seeded random subset of n samples (all when n is 0 or too large), in random order."""
    if n <= 0 or n >= len(X):
        return X, y
    idx = gen.permutation(len(X))[:n]
    return X[idx], y[idx]


def balanced_sample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a class-balanced random sample of ``y``: n // K per class (K classes; fewer
    where a class has fewer), in random order. Never a slice: the data may be class-sorted."""
    y = np.asarray(y)
    gen = np.random.default_rng([seed, 3])
    classes = np.unique(y)
    per = max(1, n // len(classes))
    idx = np.concatenate([gen.permutation(np.flatnonzero(y == c))[:per] for c in classes])
    return gen.permutation(idx)


def load_data(config: Dict[str, Any]) -> Dict[str, Any]:
    """Train / validation (held out of the training split) / test arrays (N, 1, 28, 28),
    standardized with the training mean and std, and a class-balanced sample of the training
    set for the train accuracy and the batch-size test."""
    gen = np.random.default_rng([config["seed"], 0])
    used, note = resolve_dataset(config["dataset"])      # on disk, else its embedded subset
    Xtr, ytr = load(used, "train")
    Xte, yte = load(used, "test")
    Xtr, ytr = _subset(Xtr, np.asarray(ytr), config["n_train"], gen)
    Xte, yte = _subset(Xte, np.asarray(yte), config["n_test"], gen)
    Xtr, ytr, Xva, yva = train_val_split(Xtr, ytr, config["val_fraction"], seed=config["seed"])
    mean, std = float(Xtr.mean()), float(Xtr.std())
    Xtr, Xva, Xte = (((X - mean) / std).astype(np.float32) for X in (Xtr, Xva, Xte))
    check = balanced_sample(ytr, config["n_check"], config["seed"])
    return {"X_train": Xtr, "y_train": np.asarray(ytr), "X_val": Xva, "y_val": np.asarray(yva),
            "X_test": Xte, "y_test": np.asarray(yte), "check": check, "used": used,
            "note": note}


def build_model(config: Dict[str, Any], seed: int = None):
    """MiniGoogLeNet for 1-channel 28x28 images, or a stand-in: LeNet-5 with batch norm, or
    the MLP 784 -> hidden -> 10, on ``config["device"]``. The initial weights depend on
    ``seed`` only."""
    gen = np.random.default_rng([config["seed"] if seed is None else seed, 1])
    device = config.get("device", "cpu")
    if config["model"] == "minigooglenet":
        return minigooglenet(num_classes=10, in_channels=1, rng=gen).to(device)
    if config["model"] == "lenet5":
        return lenet5(batchnorm=True, rng=gen).to(device)
    if config["model"] == "mlp":
        return mlp([784, config["mlp_hidden"], 10], rng=gen).to(device)
    raise ValueError(f"cyclical: model must be one of {MODELS}, got {config['model']!r}")


def make_optimizer(model, config: Dict[str, Any], lr: float) -> SGD:
    return SGD(model.parameters(), lr=lr, momentum=config["momentum"],
               weight_decay=config["weight_decay"], decay_mask=True)


# -- range tests -------------------------------------------------------------------------------
def run_lr_test(data, config) -> Dict[str, Any]:
    """LR range test; returns the curve and (lr_min, lr_max) by Smith (2017) Sec. 3.3."""
    model = build_model(config)
    opt = make_optimizer(model, config, lr=config["lr_test_min"])
    loader = EpochShuffledBatches(data["X_train"], data["y_train"], config["batch_size"],
                                  seed=config["seed"])
    res = lr_range_test(model, CrossEntropyLoss(), opt, loader, lr_min=config["lr_test_min"],
                        lr_max=config["lr_test_max"], num=config["lr_test_num"],
                        epochs=config["lr_test_epochs"])
    lo, hi = res.suggested
    rule = res.rule
    return {"lr_test_no_decrease": bool(rule["no_decrease"]),
            "lr_test": {"lr": res.lrs, "loss": res.losses, "smoothed": res.smoothed},
            "lr_min": float(lo), "lr_max": float(hi), "lr_ratio": float(hi / lo),
            "lr_at_min_loss": res.lr_at_min_loss, "lr_rule_of_thumb": bool(rule["rule_of_thumb"]),
            "lr_start_index": rule["start_index"], "lr_stop_index": rule["stop_index"],
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
    """Batch-size range test at learning rate ``lr``, every size from the same initial weights
    for the same number of steps; returns the curve and (b_min, b_max)."""
    lo, hi = bs_test_range(config["bs_min"], config["bs_max"], len(data["y_train"]))
    model = build_model(config)
    opt = make_optimizer(model, config, lr=lr)
    check = data["check"]
    try:
        res = batch_size_range_test(model, CrossEntropyLoss(), opt, data["X_train"],
                                    data["y_train"], min_size=lo, max_size=hi,
                                    max_micro_batch=config["micro_batch"],
                                    rng=np.random.default_rng([config["seed"], 2]), restart=True,
                                    steps_per_size=config["bs_steps"],
                                    eval_x=data["X_train"][check], eval_y=data["y_train"][check])
    except ValueError as err:               # diverged at every size: no range to read
        if "diverged at every batch size" not in str(err):
            raise
        sizes = [lo * 2 ** k for k in range(int(math.log2(hi // lo)) + 1)]
        return {"bs_test": {"batch_size": sizes, "loss": [float("inf")] * len(sizes),
                            "examples": [config["bs_steps"] * b for b in sizes]},
                "b_min": lo, "b_max": lo, "bs_ratio": 1.0, "bs_max_tested": hi,
                "bs_capped": hi < config["bs_max"], "bs_test_diverged": True,
                "bs_degenerate": True, "bs_no_decrease": True}
    b_min, b_max = (int(v) for v in res.suggested)
    return {"bs_test": {"batch_size": res.sizes, "loss": res.losses,
                        "examples": [config["bs_steps"] * int(b) for b in res.sizes]},
            "b_min": b_min, "b_max": b_max, "bs_ratio": b_max / b_min, "bs_max_tested": hi,
            "bs_capped": hi < config["bs_max"], "bs_test_diverged": bool(res.diverged),
            "bs_degenerate": b_min == b_max,
            "bs_no_decrease": bool(res.rule.get("no_decrease", False))}


# -- training policies --------------------------------------------------------------------------
class TrainAccuracy(Callback):
    """Adds ``train_acc`` (eval mode, on a fixed class-balanced sample of the training set) to
    each epoch record."""

    def __init__(self, X: np.ndarray, y: np.ndarray, batch: int):
        self.batches = list(array_batches(X, y, batch))

    def on_epoch_end(self, trainer, record):
        record["train_acc"] = evaluate(trainer.model, trainer.loss, self.batches)["acc"]


class BestWeights(Callback):
    """Keeps a copy of the weights of the epoch with the highest validation accuracy."""

    def __init__(self):
        self.best, self.state, self.epoch = -1.0, None, 0

    def on_epoch_end(self, trainer, record):
        if record["val_acc"] is not None and record["val_acc"] > self.best:
            self.best, self.epoch = record["val_acc"], record["epoch"]
            self.state = {k: np.array(v, copy=True) for k, v in
                          trainer.model.state_dict().items()}


def accumulating_step(micro_batch: int):
    """A Trainer step_fn: gradient accumulation in micro-batches, then one optimizer step."""

    def step(trainer, xb, yb):
        t0 = time.perf_counter()
        try:
            value = accumulate_gradients(trainer.model, trainer.loss, xb, yb, micro_batch)
        except ValueError as err:           # outputs not finite: let NaNGuard stop the run
            if "NaN or inf" not in str(err):
                raise
            return float("nan"), {}
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


def train_policy(policy: str, data, config, ranges, seed: int) -> Dict[str, Any]:
    """Train a fresh model of ``seed`` (the same initial weights and batch order for every
    policy of that seed); validation curves, the best epoch by validation accuracy, and the
    test accuracy of that epoch's weights (the one look at the test split)."""
    model = build_model(config, seed)
    opt = make_optimizer(model, config, lr=ranges["lr_max"])
    loader = EpochShuffledBatches(data["X_train"], data["y_train"], config["batch_size"],
                                  seed=seed)
    schedulers, settings = _schedules(policy, opt, loader, config, ranges)
    check = data["check"]
    best = BestWeights()
    trainer = Trainer(model, CrossEntropyLoss(), opt, schedulers=schedulers,
                      callbacks=[TrainAccuracy(data["X_train"][check], data["y_train"][check],
                                               256), best],
                      step_fn=accumulating_step(config["micro_batch"]))
    start, cpu_start = time.perf_counter(), time.process_time()
    diverged = None
    try:
        with np.errstate(over="ignore", invalid="ignore"):    # NaNGuard reports a divergence
            trainer.fit(loader, config["epochs"],
                        val_loader=list(array_batches(data["X_val"], data["y_val"], 256)))
    except FloatingPointError as err:       # NaNGuard: the loss became NaN or infinite
        diverged = str(err)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    history = trainer.history
    nan = float("nan")
    if best.state is None:                  # not one epoch finished: nothing to test
        return {"history": history.records, "settings": settings, "seed": seed,
                "diverged": diverged, "best_val_acc": nan, "best_epoch": 0,
                "final_val_acc": nan, "test_acc": nan, "test_loss": nan, "seconds": seconds,
                "cpu_seconds": cpu_seconds}
    model.load_state_dict(best.state)
    test = evaluate(model, CrossEntropyLoss(), array_batches(data["X_test"], data["y_test"], 256))
    return {"history": history.records, "settings": settings, "seed": seed,
            "diverged": diverged, "best_val_acc": float(best.best), "best_epoch": best.epoch,
            "final_val_acc": float(history.column("val_acc")[-1]),
            "test_acc": float(test["acc"]), "test_loss": float(test["loss"]),
            "seconds": seconds, "cpu_seconds": cpu_seconds}


# -- report ---------------------------------------------------------------------------------------
POLICY_COLORS = {"fixed": "C0", "clr": "C1", "cbs": "C2"}


def _range_figure(rep: Report, xs, ys, lo, hi, xlabel: str, name: str, title: str,
                  caption: str, label: str):
    fig, ax = new_figure(figsize=(6, 4))
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    ok = np.isfinite(ys)
    ax.plot(xs[ok], ys[ok], "o-", color="C0", label=label)
    if not ok.all():
        top = float(np.max(ys[ok])) if ok.any() else 1.0
        ax.plot(xs[~ok], np.full((~ok).sum(), top), "x", color="C3", ms=9,
                label="diverged (drawn at the top)")
    ax.axvline(lo, color="C2", ls=":", label=f"chosen lower bound ({lo:.3g})")
    ax.axvline(hi, color="C3", ls=":", label=f"chosen upper bound ({hi:.3g})")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("training loss (cross-entropy, nats)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    rep.figure(name, fig, caption)


def _curves_figure(rep: Report, results: Dict[str, Any]) -> None:
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = new_figure(ncols=2, figsize=(11, 4))
    for p in POLICIES:
        runs = [r for r in results["policy_runs"][p] if len(r["history"]) == results["epochs"]]
        if not runs:                        # every seed of this policy diverged
            continue
        ep = [r["epoch"] for r in runs[0]["history"]]
        color = POLICY_COLORS[p]
        for ax, key in ((ax1, "loss"), (ax2, "acc")):
            tr = np.mean([[r[f"train_{key}"] for r in run["history"]] for run in runs], axis=0)
            va = np.mean([[r[f"val_{key}"] for r in run["history"]] for run in runs], axis=0)
            ax.plot(ep, tr, "-", color=color, label=f"{POLICY_LABELS[p]}, train")
            ax.plot(ep, va, "--", color=color, label=f"{POLICY_LABELS[p]}, validation")
    for ax, label, title in ((ax1, "loss (cross-entropy, nats)", "Loss"),
                             (ax2, "accuracy (fraction correct)", "Accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("Training policies: mean over {} seed(s) (runs that diverged left out)"
                 .format(results["n_seeds"]))
    rep.figure("curves", fig, "Training (solid; train accuracy on a class-balanced sample of "
               "the training set) and validation (dashed; held out of the training data) loss "
               "and accuracy per policy, mean over seeds; one colour per policy.")


def _write_report(out_dir, config, results) -> None:
    rep = Report(out_dir, "Cyclical learning rates and batch sizes", results)
    if results["data_note"]:
        rep.note_substitution(results["dataset_wanted"], results["dataset_used"])
    if config["model"] == "mlp":
        rep.note(f"Model stand-in: this run trains an MLP 784-{config['mlp_hidden']}-10, not "
                 "MiniGoogLeNet (which has no width option to make it small enough for this "
                 "preset). Numbers are for the MLP.")
    elif config["model"] == "lenet5":
        rep.note("Model stand-in: this run trains LeNet-5 with batch norm, not MiniGoogLeNet "
                 "(too slow for this preset on 2 CPU cores). Numbers are for LeNet-5.")
    if results["lr_test_no_decrease"]:
        rep.note("The LR range test's smoothed loss never fell below its value at the lowest "
                 "rate, so the chosen lr range is not meaningful; rerun with more "
                 "lr_test_epochs or training data (more batches per rate).")
    if results["bs_no_decrease"]:
        rep.note("The batch-size range test's loss did not fall with the batch size (or it "
                 "diverged at every size), so the chosen batch-size range is not meaningful.")
    if results["bs_degenerate"]:
        rep.note("The batch-size range test gave b_min = b_max, so the cyclical batch size "
                 "does not cycle in this run.")
    if results["diverged_runs"]:
        rep.note("Runs that diverged (the loss became NaN or infinite): "
                 + "; ".join(results["diverged_runs"]) + ". A run that finished no epoch has "
                 "no test accuracy, and its policy is left out of the comparisons"
                 + (": " + ", ".join(results["left_out"]) if results["left_out"] else "")
                 + ".")
    rep.setup(config)
    rep.text("Data: {n_train:,} training and {n_val:,} validation images (the validation split "
             "held out of the training split, stratified, seed {seed}) and {n_test:,} test "
             "images of {dataset_used}, standardized with the training mean and std. The "
             "validation split gives the curves and each run's best epoch; the test split is "
             "evaluated once per run, with the best epoch's weights. Train accuracy is "
             "measured on a class-balanced sample of {n_check:,} training images "
             "({check_per_class}). Optimizer: SGD, momentum {momentum}, weight decay "
             "{weight_decay} on weights only. Seeds: {seeds} (for one seed, every policy "
             "starts from the same weights and sees the same batch order).")
    rep.section("LR range test")
    rep.text("The rule, quoted: " + SMITH_QUOTE.replace("{", "{{").replace("}", "}}"))
    rep.text("How this lab applies it (both range tests run once, with seed {seed}; their "
             "bounds serve every seed's runs): {lr_test_tried} learning rates from "
             "{lr_test_min:g} to {lr_test_max:g}, stepped geometrically (Smith raises the lr "
             "linearly; ten decades need geometric steps), {lr_test_epochs} epoch(s) in total "
             "at batch {batch_size}, "
             "read on the smoothed training loss instead of the accuracy (lower is better). With "
             "the total fall = the loss at the first rate minus the lowest loss: max_lr = the "
             "last rate, up to the one of the lowest loss, that still lowered the loss by at "
             "least {slow_fraction_pct:.0f}% of the total fall (after it the fall \"slows, "
             "becomes ragged, or\" turns into a rise): {lr_max:.3g}; base_lr = the first rate "
             "from which the loss stays at least {start_fraction_pct:.0f}% of the total fall "
             "below its starting level up to max_lr (where it \"starts to\" improve, not a dip "
             "in the noise of the flat start): {lr_min:.3g}. Where both are the same rate, "
             "base_lr = max_lr / 4 (Smith's rule of thumb); used here: {lr_rule_of_thumb}. "
             "The curve diverged before the last rate: "
             "{lr_test_diverged}; the lowest smoothed loss was at {lr_at_min_loss:.3g}.")
    rep.table("lr_range_test", results["lr_test_rows"], "Loss per learning rate")
    _range_figure(rep, results["lr_test"]["lr"], results["lr_test"]["smoothed"],
                  results["lr_min"], results["lr_max"], "learning rate (log scale)",
                  "lr_range_test", "LR range test",
                  "Smoothed training loss vs learning rate with the chosen bounds.",
                  "smoothed loss (EMA, at the last batch of each rate)")
    rep.section("Batch-size range test")
    rep.text("Batch sizes {bs_min} to {bs_max_tested} doubling, at lr {lr_max:.3g}. Every size "
             "restarts from the same initial weights and optimizer state, sees the same "
             "shuffled order and trains {bs_steps} steps; then its loss is measured on the same "
             "class-balanced sample of {n_check:,} training images. (Walking the sizes upwards "
             "while training continues would see the larger sizes later in training, where the "
             "loss is lower anyway, and so always favour the largest size.) Batches above "
             "{micro_batch} run by gradient accumulation (with batch norm the statistics are "
             "then per micro-batch). Requested up to {bs_max}; capped at the data: {bs_capped}. "
             "Rule (this lab's, read like the lr rule; the paper has no batch-size test): "
             "b_max = the last size that still lowered the loss by at least "
             "{slow_fraction_pct:.0f}% of its total fall over the sizes (beyond it the fall "
             "slows), b_min = b_max / 4 (clipped to the sizes tested): b_min = {b_min}, b_max = "
             "{b_max}.")
    rep.explanation("at equal steps a larger batch averages away more gradient noise per "
                    "step, so the loss falls with the batch size until the noise no longer "
                    "limits progress; beyond that size (a critical batch size, McCandlish et "
                    "al. 2018) more examples per step buy little, which makes it a natural "
                    "upper bound for a cyclical batch size.")
    rep.table("bs_range_test", results["bs_test_rows"], "Loss per batch size")
    _range_figure(rep, results["bs_test"]["batch_size"], results["bs_test"]["loss"],
                  results["b_min"], results["b_max"], "batch size (examples, log scale)",
                  "bs_range_test", "Batch-size range test (each size from the same weights)",
                  "Loss on a fixed class-balanced training sample after the same number of "
                  "steps at each batch size (each from the same initial weights), with the "
                  "chosen bounds.",
                  "loss after {} steps from the same weights".format(config["bs_steps"]))
    rep.section("Policies")
    rep.text("fixed: lr = max_lr, batch {batch_size}. clr: CyclicLR between base_lr and max_lr, "
             "mode exp_range (amplitude x gamma^t), half cycle {clr_step_epochs} epochs, gamma "
             "chosen so the amplitude shrinks by {decay_per_epoch} per epoch. cbs: "
             "CyclicBatchSize between b_min and b_max in mode exp (geometric), half cycle about "
             "{clr_step_epochs} epochs of data, starting at b_min; lr = max_lr decaying by "
             "{decay_per_epoch} per epoch (ExponentialDecay). {epochs} epochs each.")
    rep.explanation("with momentum SGD the gradient-noise scale is about lr/B, so cycling B "
                    "by b_max/b_min at a fixed lr cycles the noise by that factor, as CLR "
                    "cycles it by max_lr/base_lr; a geometric path spends equal steps on every "
                    "octave of noise (a linear one would spend most steps near b_max), and "
                    "starting small takes many cheap noisy steps while the loss is high.")
    rep.table("policies", results["policy_rows"], "Per policy: test accuracy at the best "
              "validation epoch, mean over seeds with a 95% t-interval")
    rep.table("policy_runs", results["policy_run_rows"], "Every run (policy x seed)")
    rep.text("Seconds are wall-clock time of each run's training and evaluation; CPU seconds "
             "are the process's CPU time over the same run (all its threads). On a shared "
             "machine only the CPU seconds compare runs; no conclusion here rests on time.")
    _curves_figure(rep, results)
    if results["speed_rows"]:
        rep.table("speed_to_fixed_best", results["speed_rows"],
                  "How long each cyclical policy took to first reach the fixed policy's best "
                  "validation accuracy of the same seed (Smith 2017's comparison), per seed; "
                  "read from per-epoch validation curves, so the resolution is one epoch")
    rep.comparisons(results["comparisons"], heading="Comparisons of policies (paired by seed)",
                    digits=3)
    rep.conclusions(["Test accuracy per policy (mean over {n_seeds} seed(s)): {ranking_text}."]
                    + [f"{{comparison_sentences[{i}]}}"
                       for i in range(len(results["comparison_sentences"]))]
                    + [f"Not compared (censored): {t}." for t in results["speed_censored"]])
    rep.write()


def speed_to_fixed_best(runs: Dict[str, List[Dict[str, Any]]], n_train: int,
                        batch_size: int) -> Dict[str, Any]:
    """Smith's (2017) claim measured: how long each policy took to first reach the *fixed*
    policy's best validation accuracy of the same seed (read from the per-epoch validation
    curves, so the resolution is one epoch).

    The cyclical learning rate keeps the batch size, so its speed is counted in iterations
    (``ceil(n_train / batch_size)`` an epoch); the cyclical batch size changes the number of
    iterations per epoch, so it is counted in epochs (the same examples seen). A pair in which
    some seed never reached the target is not compared (censored) and is listed instead.
    ``runs`` is ``results["policy_runs"]``, so the same function serves a finished run."""
    per_epoch = math.ceil(n_train / batch_size)
    units = {"clr": ("iterations", per_epoch), "cbs": ("epochs", 1)}
    targets = [r["best_val_acc"] for r in runs.get("fixed", [])]
    curves = {p: [[h["val_acc"] for h in r["history"]] for r in runs[p]] for p in runs}
    comps, censored, rows = [], [], []
    for p, (unit, scale) in units.items():
        if p not in runs or not targets:
            continue
        mine = [stats.steps_to_reach(c, t, scale) for c, t in zip(curves[p], targets)]
        fixed = [stats.steps_to_reach(c, t, scale) for c, t in zip(curves["fixed"], targets)]
        rows += [{"policy": POLICY_LABELS[q], "unit": unit, "seed": r["seed"],
                  "target (fixed's best val acc)": t,
                  "to reach it": "not reached" if v is None else v}
                 for q, vals in ((p, mine), ("fixed", fixed))
                 for r, t, v in zip(runs[q], targets, vals)]
        metric = (f"{unit} to the fixed policy's best validation accuracy (resolution: one "
                  f"epoch" + (f" = {per_epoch} iterations)" if unit == "iterations" else ")"))
        if any(v is None for v in mine + fixed) or len(mine) != len(fixed):
            censored.append(f"{POLICY_LABELS[p]} vs {POLICY_LABELS['fixed']}: {POLICY_LABELS[p]}"
                            f" reached the fixed policy's best validation accuracy in "
                            f"{sum(v is not None for v in mine)} of {len(mine)} seeds")
            continue
        comps.append(stats.compare(POLICY_LABELS[p], mine, POLICY_LABELS["fixed"], fixed,
                                   metric, higher_is_better=False))
    return {"speed_comparisons": comps, "speed_censored": censored, "speed_rows": rows}


def _rows(curve: Dict[str, list], key: str, cols: Tuple[str, ...]) -> List[dict]:
    return [{key: x, **{c: curve[c][i] for c in cols}} for i, x in enumerate(curve[key])]


def _ci(s: Dict[str, Any]) -> str:
    lo, hi = s["ci95"]
    if lo is None:
        return f"{s['mean']:.4f} (one seed, no interval)"
    return f"{s['mean']:.4f} (95% CI [{lo:.4f}, {hi:.4f}])"


@lab(name="cyclical",
     study="Smith (2017): LR range test, cyclical LR and batch size, MiniGoogLeNet on "
           "Fashion-MNIST",
     quick=_QUICK, standard=_STANDARD, full=_FULL,
     expected_seconds={"quick": 25, "standard": 1000, "full": 2_500_000,
                       "full_embedded": 110_000})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    """Range tests (once), then the three policies for every seed; every number in the report
    comes from this run."""
    check_config(config)
    seeds = stats.seeds_of(config)
    data = load_data(config)
    results: Dict[str, Any] = {"dataset_wanted": config["dataset"], "dataset_used": data["used"],
                               "data_note": data["note"], "n_train": len(data["y_train"]),
                               "n_val": len(data["y_val"]), "n_test": len(data["y_test"]),
                               "seeds": seeds, "n_seeds": len(seeds)}
    counts = np.bincount(data["y_train"][data["check"]], minlength=10)
    results["n_check"] = int(len(data["check"]))
    results["check_per_class"] = ("equal per class: " if len(set(counts.tolist())) == 1
                                  else "per class: ") + ", ".join(str(c) for c in counts)
    results["check_class_counts"] = counts.tolist()
    steps = ["lr range test", "batch-size range test"] + [(s, p) for s in seeds
                                                            for p in POLICIES]
    runs: Dict[str, List[Dict[str, Any]]] = {p: [] for p in POLICIES}
    for step in progress(steps, desc="cyclical"):
        if step == "lr range test":
            results.update(run_lr_test(data, config))
        elif step == "batch-size range test":
            results.update(run_bs_test(data, config, results["lr_max"]))
        else:
            seed, p = step
            runs[p].append(train_policy(p, data, config, results, seed))
    results["policy_runs"] = runs
    results["lr_test_rows"] = _rows(results["lr_test"], "lr", ("loss", "smoothed"))
    results["bs_test_rows"] = _rows(results["bs_test"], "batch_size", ("examples", "loss"))
    # a run that diverged before finishing one epoch has no test accuracy; its policy is left
    # out of the summaries and the comparisons (stated in the report)
    ok = [p for p in POLICIES if all(np.isfinite(r["test_acc"]) for r in runs[p])]
    results["diverged_runs"] = [
        f"{POLICY_LABELS[p]} (seed {r['seed']}, "
        + ("no epoch finished)" if not np.isfinite(r["test_acc"])
           else f"tested at its best epoch, {r['best_epoch']})")
        for p in POLICIES for r in runs[p] if r["diverged"]]
    results["left_out"] = [POLICY_LABELS[p] for p in POLICIES if p not in ok]
    summaries = {p: stats.summarize([r["test_acc"] for r in runs[p]]) for p in ok}
    results["policy_summary"] = summaries
    results["policy_rows"] = [
        {"policy": POLICY_LABELS[p], "seeds": s["n"], "mean test acc": s["mean"],
         "ci95 lo": s["ci95"][0] if s["ci95"][0] is not None else "n/a",
         "ci95 hi": s["ci95"][1] if s["ci95"][1] is not None else "n/a",
         "mean best val acc": float(np.mean([r["best_val_acc"] for r in runs[p]])),
         "mean CPU seconds": float(np.mean([r["cpu_seconds"] for r in runs[p]])),
         "mean seconds": float(np.mean([r["seconds"] for r in runs[p]]))}
        for p, s in summaries.items()] or [{"policy": "(every policy diverged)"}]
    results["policy_run_rows"] = [
        {"policy": POLICY_LABELS[p], "seed": r["seed"], "best epoch": r["best_epoch"],
         "best val acc": r["best_val_acc"], "final val acc": r["final_val_acc"],
         "test acc": r["test_acc"], "diverged": bool(r["diverged"]), "seconds": r["seconds"],
         "CPU seconds": r["cpu_seconds"]}
        for p in POLICIES for r in runs[p]]
    results["ranking_text"] = "; ".join(f"{POLICY_LABELS[p]} {_ci(summaries[p])}"
                                        for p in ok) or "none (every policy diverged)"
    acc = {p: [r["test_acc"] for r in runs[p]] for p in ok}
    metric = "test accuracy at the best validation epoch"
    results["comparisons"] = [
        stats.compare(POLICY_LABELS[a], acc[a], POLICY_LABELS[b], acc[b], metric,
                      higher_is_better=True)
        for a, b in (("clr", "fixed"), ("cbs", "fixed"), ("clr", "cbs")) if a in ok and b in ok]
    results.update(speed_to_fixed_best({p: runs[p] for p in ok}, results["n_train"],
                                       config["batch_size"]))
    results["comparisons"] += results["speed_comparisons"]
    results["comparison_sentences"] = [stats.sentence(c, 3) for c in results["comparisons"]]
    results.update(start_fraction_pct=100 * START_FRACTION, slow_fraction_pct=100 * SLOW_FRACTION)
    results.update({k: config[k] for k in ("lr_test_min", "lr_test_max", "lr_test_epochs",
                                           "batch_size", "momentum", "weight_decay", "bs_min",
                                           "bs_max", "bs_steps", "micro_batch", "epochs",
                                           "clr_step_epochs", "decay_per_epoch", "seed")})
    _write_report(out_dir, config, results)
    return results
