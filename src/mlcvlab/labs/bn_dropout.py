"""Lab ``bn-dropout``: batch norm and dropout in LeNet-5 on MNIST.

Variants of LeNet-5 (``mlcvlab.models.lenet5``), trained the same way:

* ``plain``: standardized input, no batch norm, no dropout (the reference);
* ``bn``: (a) standardized input, batch norm in every hidden layer;
* ``bn_input``: (b) batch norm on the (raw) input too, which learns its own shift/scale;
* ``dropout``: (c) standardized input, dropout 0.2 on the input and 0.5 on the hidden FC
  inputs, no batch norm;
* ``bn_dropout``: (d) batch norm and dropout together.

The report gives each variant's train/test accuracy and loss (evaluated in evaluation
mode after the last epoch), the curves per epoch, and the learned batch-norm gamma
and beta of every BN layer (mean and std per layer, and a figure).
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from mlcvlab.data.datasets import load, resolve_dataset
from mlcvlab.data.loader import DataLoader
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure
from mlcvlab.models import lenet5
from mlcvlab.nn import BatchNorm1d, BatchNorm2d, Conv2d, CrossEntropyLoss, Linear, Sequential
from mlcvlab.optim import SGD
from mlcvlab.train import Trainer, array_batches, evaluate

# name -> (description, standardize input, batch norm, BN on input, dropout)
VARIANTS: Dict[str, Tuple[str, bool, bool, bool, bool]] = {
    "plain": ("standardized input, no BN, no dropout", True, False, False, False),
    "bn": ("(a) standardized input + BN in hidden layers", True, True, False, False),
    "bn_input": ("(b) BN on the input too (raw pixels in)", False, True, True, False),
    "dropout": ("(c) dropout only, 0.2 input / 0.5 hidden", True, False, False, True),
    "bn_dropout": ("(d) BN + dropout", True, True, False, True),
}

_COMMON = {"dataset": "mnist", "batch_size": 128, "lr": 0.02, "momentum": 0.9,
           "weight_decay": 5e-4, "p_input": 0.2, "p_hidden": 0.5, "seed": 0,
           "variants": list(VARIANTS)}
QUICK = {**_COMMON, "n_train": 1024, "n_test": 500, "epochs": 2}
FULL = {**_COMMON, "n_train": 0, "n_test": 0, "epochs": 20}

PAPER = ("the paper (LeCun et al. 1998) reports a test error of 0.95% for LeNet-5 on MNIST "
         "(60,000 training images, no distortions)")


# -- data and models --------------------------------------------------------------------------
def subset(X: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator):
    """A random subset of n examples (all of them when n is 0 or too large)."""
    if n <= 0 or n >= len(X):
        return X, y
    idx = np.sort(rng.choice(len(X), size=n, replace=False))
    return X[idx], y[idx]


def load_data(config: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
    """Train/test images (N, 1, 28, 28) in [0, 1] and the training pixel mean/std.

    The dataset is config["dataset"] if on disk, else its embedded substitute (no download).
    """
    used, note = resolve_dataset(config["dataset"])
    X_train, y_train = subset(*load(used, "train"), config["n_train"], rng)
    X_test, y_test = subset(*load(used, "test"), config["n_test"], rng)
    return {"X_train": X_train, "y_train": y_train, "X_test": X_test, "y_test": y_test,
            "used": used, "note": note, "mean": float(X_train.mean()), "std": float(X_train.std())}


def standardized(data: Dict[str, Any]) -> Dict[str, Any]:
    """The same data with pixels standardized by the *training* mean and std."""
    out = dict(data)
    for key in ("X_train", "X_test"):
        out[key] = ((data[key] - data["mean"]) / data["std"]).astype(np.float32)
    return out


def build_variant(name: str, config: Dict[str, Any], seed: int) -> Sequential:
    """LeNet-5 for variant ``name`` (see VARIANTS); BN on the input is a BatchNorm2d(1) first."""
    _, _, bn, bn_input, drop = VARIANTS[name]
    p_in, p_hid = (config["p_input"], config["p_hidden"]) if drop else (0.0, 0.0)
    model = lenet5(batchnorm=bn, p_input=p_in, p_hidden=p_hid, rng=seed)
    if bn_input:
        model = Sequential(BatchNorm2d(1), *model)
    model.flat()
    return model


def bn_layers(model: Sequential) -> List[Tuple[str, Any]]:
    """(label, BN layer) for every batch norm, labelled by the layer it normalizes."""
    out, previous = [], "input"
    for layer in model:
        if isinstance(layer, (Conv2d, Linear)):
            previous = f"{type(layer).__name__.lower()} {layer.weight.data.shape[0]}"
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            out.append((f"BN after {previous}" if previous != "input" else "BN on input", layer))
    return out


# -- training ----------------------------------------------------------------------------------
def train_variant(name: str, data: Dict[str, Any], config: Dict[str, Any], seed: int,
                  progress) -> Dict[str, Any]:
    """Train one variant with SGD + momentum; per-epoch curves, final metrics, BN parameters."""
    model = build_variant(name, config, seed)
    optimizer = SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
                    weight_decay=config["weight_decay"], decay_mask=True)
    trainer = Trainer(model, CrossEntropyLoss(), optimizer)
    loader = DataLoader(data["X_train"], data["y_train"], config["batch_size"], seed=seed,
                        prefetch=0)
    test = list(array_batches(data["X_test"], data["y_test"], 1000))
    for _ in progress(range(config["epochs"]), desc=name):
        trainer.fit(loader, 1, val_loader=test)
    loss = CrossEntropyLoss()
    train_m = evaluate(model, loss, array_batches(data["X_train"], data["y_train"], 1000))
    test_m = evaluate(model, loss, test)
    hist = trainer.history
    bn = [{"variant": name, "layer": label, "features": layer.num_features,
           "gamma mean": float(layer.gamma.mean()), "gamma std": float(layer.gamma.std()),
           "beta mean": float(layer.beta.mean()), "beta std": float(layer.beta.std())}
          for label, layer in bn_layers(model)]
    row = {"variant": name, "description": VARIANTS[name][0], "train loss": train_m["loss"],
           "train accuracy": train_m["acc"], "test loss": test_m["loss"],
           "test accuracy": test_m["acc"], "test error %": 100 * (1 - test_m["acc"]),
           "generalization gap": train_m["acc"] - test_m["acc"],
           "s/epoch": float(np.mean(hist.column("seconds")))}
    return {"row": row, "bn_rows": bn, "bn_values": _bn_values(model),
            "curves": {"train_loss": hist.column("train_loss"),
                       "test_loss": hist.column("val_loss"), "test_acc": hist.column("val_acc")}}


def _bn_values(model: Sequential) -> Dict[str, Dict[str, List[float]]]:
    return {label: {"gamma": layer.gamma.tolist(), "beta": layer.beta.tolist(),
                    "running_mean": layer.running_mean.tolist(),
                    "running_var": layer.running_var.tolist()}
            for label, layer in bn_layers(model)}


# -- summaries ---------------------------------------------------------------------------------
def _compare(a: float, b: float, up: str, down: str, same: str) -> str:
    """A word for going from a to b, from the sign of b - a."""
    return up if b > a else down if b < a else same


def _pair_effect(rows: Dict[str, Dict[str, Any]], base: str, other: str, key: str
                 ) -> Dict[str, Any]:
    """How variant ``other`` changes test accuracy and the train-test gap relative to ``base``."""
    a, b = rows[base], rows[other]
    return {f"{key}_acc_delta": b["test accuracy"] - a["test accuracy"],
            f"{key}_acc_points": 100 * abs(b["test accuracy"] - a["test accuracy"]),
            f"{key}_gap_points": 100 * abs(b["generalization gap"] - a["generalization gap"]),
            f"{key}_acc_word": _compare(a["test accuracy"], b["test accuracy"], "raised",
                                        "lowered", "did not change"),
            f"{key}_gap_delta": b["generalization gap"] - a["generalization gap"],
            f"{key}_gap_word": _compare(a["generalization gap"], b["generalization gap"],
                                        "widened", "narrowed", "did not change")}


PAIR_TEXT = {"bn_effect": "Batch norm in the hidden layers (bn vs plain)",
             "dropout_effect": "Dropout alone (dropout vs plain)",
             "bn_plus_dropout": "Adding dropout to batch norm (bn_dropout vs bn)",
             "input_bn_effect": "Batch norm on the raw input instead of standardization "
                                "(bn_input vs bn)"}
PAIRS = (("plain", "bn", "bn_effect"), ("plain", "dropout", "dropout_effect"),
         ("bn", "bn_dropout", "bn_plus_dropout"), ("bn", "bn_input", "input_bn_effect"))


def summarize(runs: Dict[str, Dict[str, Any]], data: Dict[str, Any]) -> Dict[str, Any]:
    rows = {name: run["row"] for name, run in runs.items()}
    best = max(rows.values(), key=lambda r: r["test accuracy"])
    out: Dict[str, Any] = {
        "rows": list(rows.values()),
        "bn_rows": [b for run in runs.values() for b in run["bn_rows"]],
        "bn_values": {name: run["bn_values"] for name, run in runs.items()},
        "curves": {name: run["curves"] for name, run in runs.items()},
        "best_variant": best["variant"], "best_description": best["description"],
        "best_test_acc": best["test accuracy"], "best_test_error": best["test error %"],
        "pairs": [key for base, other, key in PAIRS if base in rows and other in rows],
        "pixel_mean": data["mean"], "pixel_std": data["std"]}
    for base, other, key in PAIRS:
        if key in out["pairs"]:
            out.update(_pair_effect(rows, base, other, key))
    for name, run in runs.items():
        if run["bn_rows"]:
            gm = [b["gamma mean"] for b in run["bn_rows"]]
            bm = [b["beta mean"] for b in run["bn_rows"]]
            out[f"{name}_gamma_range"] = f"{min(gm):.3f} to {max(gm):.3f}"
            out[f"{name}_beta_range"] = f"{min(bm):.3f} to {max(bm):.3f}"
    if "bn_input" in runs:
        out.update(_input_bn_summary(runs["bn_input"]["bn_values"]["BN on input"]))
    return out


def _input_bn_summary(values: Dict[str, List[float]]) -> Dict[str, Any]:
    """The affine map the input BN applies at test time: y = a * x + c on raw pixels."""
    gamma, beta = values["gamma"][0], values["beta"][0]
    mean, std = values["running_mean"][0], float(np.sqrt(values["running_var"][0] + 1e-5))
    return {"input_bn_gamma": gamma, "input_bn_beta": beta, "input_bn_mean": mean,
            "input_bn_std": std, "input_bn_scale": gamma / std,
            "input_bn_shift": beta - gamma * mean / std}


# -- report ------------------------------------------------------------------------------------
def _curves_figure(rep: Report, results: Dict[str, Any]) -> None:
    fig, (ax1, ax2) = new_figure(ncols=2, figsize=(11, 4))
    for name, c in results["curves"].items():
        epochs = range(1, len(c["train_loss"]) + 1)
        ax1.plot(epochs, c["train_loss"], marker="o", label=name)
        ax2.plot(epochs, c["test_acc"], marker="o", label=name)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (mean over the epoch, training mode)")
    ax1.set_yscale("log")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test accuracy")
    ax1.legend()
    ax2.legend()
    rep.figure("curves", fig, "Training loss and test accuracy per epoch on {used}.")


def _bn_figure(rep: Report, results: Dict[str, Any]) -> None:
    """Mean ± std over features of gamma and beta per BN layer, one series per variant."""
    variants = sorted({b["variant"] for b in results["bn_rows"]}, key=list(VARIANTS).index)
    labels = max(([b["layer"] for b in results["bn_rows"] if b["variant"] == v] for v in variants),
                 key=len)   # bn_input has every layer the others have, plus "BN on input"
    fig, axes = new_figure(ncols=2, figsize=(11, 4))
    for i, name in enumerate(variants):
        rows = [b for b in results["bn_rows"] if b["variant"] == name]
        x = [labels.index(r["layer"]) + 0.1 * i for r in rows]
        for ax, p in zip(axes, ("gamma", "beta")):
            ax.errorbar(x, [r[f"{p} mean"] for r in rows], yerr=[r[f"{p} std"] for r in rows],
                        fmt="o", capsize=3, label=name)
    for ax, p, ref in zip(axes, ("gamma", "beta"), (1.0, 0.0)):
        ax.axhline(ref, color="0.6", lw=0.8, ls="--")
        ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        ax.set_xlabel("batch-norm layer")
        ax.set_ylabel(f"learned {p}: mean ± std over features")
        ax.legend()
    rep.figure("bn_parameters", fig, "Learned batch-norm gamma and beta per layer (dashed: the "
               "initial values 1 and 0).")


def _conclusions(results: Dict[str, Any]) -> List[str]:
    lines = ["The best test accuracy is {best_test_acc:.2%} (test error {best_test_error:.2f}%), "
             "variant {best_variant}: {best_description}."]
    effect = ("{K_acc_word} the test accuracy by {K_acc_points:.2f} percentage points and "
              "{K_gap_word} the train-test accuracy gap (by {K_gap_points:.2f} points).")
    lines += [PAIR_TEXT[key] + " " + effect.replace("{K_", "{" + key + "_")
              for key in PAIR_TEXT if key in results["pairs"]]
    if "input_bn_scale" in results:
        lines.append("The input BN learned gamma {input_bn_gamma:.3f}, beta {input_bn_beta:.3f}; "
                     "with its running mean {input_bn_mean:.3f} and std {input_bn_std:.3f} it maps "
                     "a raw pixel x to {input_bn_scale:.3f}·x {input_bn_shift:+.3f} at test time, "
                     "next to the standardization (x - {pixel_mean:.3f}) / {pixel_std:.3f} used by "
                     "the other variants.")
    for name in VARIANTS:
        if f"{name}_gamma_range" in results:
            lines.append(f"Variant {name}: per-layer mean gamma from {{{name}_gamma_range}}, "
                         f"mean beta from {{{name}_beta_range}}.")
    return lines + ["For comparison, " + PAPER + "; these numbers are from this run on {used}."]


def write_report(out_dir, config: Dict[str, Any], results: Dict[str, Any]) -> None:
    rep = Report(out_dir, "Batch norm and dropout in LeNet-5", results)
    if results["used"] != results["wanted"]:
        rep.note_substitution(results["wanted"], results["used"])
    rep.setup(config)
    rep.text("LeNet-5 (conv 6@5x5, pool, conv 16@5x5, pool, FC 120, FC 84, FC 10; ReLU) on "
             "{used}: {n_train:,} training and {n_test:,} test images, {epochs} epochs of SGD "
             "(lr {lr}, momentum {momentum}, batch {batch_size}, L2 {weight_decay:g} on weights). "
             "Standardization uses the training pixel mean {pixel_mean:.4f} and std "
             "{pixel_std:.4f}. Train and test metrics are measured in evaluation mode after the "
             "last epoch (BN running statistics, no dropout).")
    rep.table("variants", results["rows"], "Train/test accuracy and loss per variant")
    _curves_figure(rep, results)
    if results["bn_rows"]:
        rep.section("Learned batch-norm parameters")
        rep.table("bn_parameters", results["bn_rows"], "Learned gamma and beta per BN layer")
        _bn_figure(rep, results)
    rep.conclusions(_conclusions(results))
    rep.write()


# -- the lab -----------------------------------------------------------------------------------
@lab(name="bn-dropout",
     study="LeNet-5 on MNIST with batch norm (hidden, input) and dropout (Ioffe & Szegedy 2015; "
           "Srivastava et al. 2014)",
     quick=QUICK, full=FULL, expected_seconds={"quick": 10, "full": 900})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    unknown = [v for v in config["variants"] if v not in VARIANTS]
    if unknown or not config["variants"]:
        raise ValueError(f"bn-dropout lab: variants must be a non-empty subset of "
                         f"{list(VARIANTS)}, got {config['variants']}")
    rng = np.random.default_rng(config["seed"])
    data = load_data(config, rng)
    runs = {}
    for name in config["variants"]:
        seed = int(rng.integers(2**31))
        variant_data = standardized(data) if VARIANTS[name][1] else data
        runs[name] = train_variant(name, variant_data, config, seed, progress)
    results = summarize(runs, data)
    results.update({"wanted": config["dataset"], "used": data["used"],
                    "n_train": len(data["X_train"]), "n_test": len(data["X_test"]),
                    **{k: config[k] for k in ("epochs", "lr", "momentum", "batch_size",
                                              "weight_decay")}})
    write_report(out_dir, config, results)
    return results
