"""Lab ``bn-dropout``: batch norm and dropout in LeNet-5 on MNIST.

Variants of LeNet-5 (``mlcvlab.models.lenet5``), trained the same way:

* ``plain``: standardized input, no batch norm, no dropout (the reference);
* ``bn``: (a) standardized input, batch norm in every hidden layer;
* ``bn_input``: (b) batch norm on the (raw) input too, which learns its own shift/scale;
* ``dropout``: (c) standardized input, dropout 0.2 on the input and 0.5 on the hidden FC
  inputs, no batch norm;
* ``bn_dropout``: (d) batch norm and dropout together.

Every variant runs over the same seeds, paired by seed: for one seed every variant starts
from the same conv/FC weights (copied from the plain LeNet-5 of that seed, so the variants
without biases do not shift the random stream) and sees the same batch order. A validation
split held out of the training data (``val_fraction``, stratified) gives the curves; the
test split is evaluated once, after the last epoch. Each variant is compared with ``plain``
(and the BN pairs with ``bn``) by :func:`mlcvlab.labs.stats.compare`: the paired difference
of test error over seeds, its 95% interval and the verdict. The report also gives the learned
batch-norm gamma and beta of every BN layer (mean over seeds).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import numpy as np

from mlcvlab.data import train_val_split
from mlcvlab.data.datasets import load, resolve_dataset
from mlcvlab.data.loader import DataLoader
from mlcvlab.labs import stats
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
BASELINE = "plain"

_COMMON = {"dataset": "mnist", "batch_size": 128, "lr": 0.02, "momentum": 0.9,
           "weight_decay": 5e-4, "p_input": 0.2, "p_hidden": 0.5, "seed": 0,
           "val_fraction": 0.1, "target_val_acc": 0.985, "variants": list(VARIANTS),
           "device": "cpu"}
# quick: a smoke test (2 seeds so that an interval is computed, far too few epochs to measure)
QUICK = {**_COMMON, "n_train": 1024, "n_test": 500, "epochs": 2, "seeds": 2}
# standard: all five variants, 3 paired seeds, 20 epochs on the whole training split
# (estimated from one seed of 15 epochs on mnist10k: 1.1 CPU s per epoch of 7,200 images,
# i.e. ~5 min on mnist10k and ~45 min on MNIST's 54,000 training images on 2 cores)
STANDARD = {**_COMMON, "n_train": 0, "n_test": 0, "epochs": 20, "seeds": 3}
FULL = {**_COMMON, "n_train": 0, "n_test": 0, "epochs": 20, "seeds": 5}

PAPER = ("the paper (LeCun et al. 1998) reports a test error of 0.95% for LeNet-5 on MNIST "
         "(60,000 training images, no distortions)")
ERROR = "test error (%)"
GAP = "train-test accuracy gap (points)"
# Ioffe & Szegedy (2015): batch norm reaches a given accuracy in fewer training steps
SPEED_PAIRS = (("bn", "plain"), ("bn_input", "plain"))
# (a, b, metric, what the comparison measures); a - b is reported
PAIRS = (("bn", "plain", ERROR, "Batch norm in the hidden layers"),
         ("bn_input", "plain", ERROR, "Batch norm on the raw input and in the hidden layers"),
         ("dropout", "plain", ERROR, "Dropout alone"),
         ("bn_dropout", "plain", ERROR, "Batch norm and dropout together"),
         ("bn_dropout", "bn", ERROR, "Adding dropout to batch norm"),
         ("bn_input", "bn", ERROR, "Batch norm on the raw input instead of standardization"),
         ("dropout", "plain", GAP, "Dropout alone"),
         ("bn_dropout", "bn", GAP, "Adding dropout to batch norm"))


# -- config ------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
        and math.isfinite(float(v))


def validate_config(config: Dict[str, Any]) -> List[int]:
    """Raise a ValueError naming the key and its valid range; return the seeds."""
    def need(ok: bool, key: str, valid: str) -> None:
        if not ok:
            raise ValueError(f"bn-dropout lab: {key} must be {valid}, got {config[key]!r}")

    variants = config["variants"]
    unknown = [v for v in variants if v not in VARIANTS] if isinstance(variants, list) else []
    if not isinstance(variants, list) or unknown or not variants or \
            len(set(variants)) != len(variants):
        raise ValueError(f"bn-dropout lab: variants must be a non-empty subset of "
                         f"{list(VARIANTS)} without repeats, got {variants}")
    for key in ("epochs", "batch_size"):
        need(_is_int(config[key]) and config[key] >= 1, key, "an integer >= 1")
    for key in ("n_train", "n_test"):
        need(_is_int(config[key]) and config[key] >= 0, key, "an integer >= 0 (0: all images)")
    need(_is_num(config["lr"]) and config["lr"] > 0, "lr", "a finite number > 0")
    need(_is_num(config["momentum"]) and 0 <= config["momentum"] < 1, "momentum", "in [0, 1)")
    need(_is_num(config["weight_decay"]) and config["weight_decay"] >= 0, "weight_decay",
         "a finite number >= 0")
    for key in ("p_input", "p_hidden"):
        need(_is_num(config[key]) and 0 <= config[key] < 1, key,
             "a drop probability in [0, 1)")
    need(_is_num(config["val_fraction"]) and 0 < config["val_fraction"] < 1, "val_fraction",
         "in (0, 1)")
    need(_is_num(config["target_val_acc"]) and 0 < config["target_val_acc"] <= 1,
         "target_val_acc", "a validation accuracy in (0, 1]")
    need(isinstance(config["dataset"], str) and config["dataset"].lower() in
         ("mnist", "mnist10k", "fashion_mnist", "fashion-mnist", "fashion10k"), "dataset",
         "one of mnist, mnist10k, fashion_mnist, fashion10k (28x28 grey images)")
    try:
        seeds = stats.seeds_of(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bn-dropout lab: seeds must be a count >= 1 or a list of distinct "
                         f"integers, got {config.get('seeds')!r} ({err})") from None
    return seeds


# -- data and models --------------------------------------------------------------------------
def subset(X: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator):
    """A random subset of n examples (all of them when n is 0 or too large)."""
    if n <= 0 or n >= len(X):
        return X, y
    idx = np.sort(rng.choice(len(X), size=n, replace=False))
    return X[idx], y[idx]


def load_data(config: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
    """Train/validation/test images (N, 1, 28, 28) in [0, 1] and the training pixel mean/std.

    ``n_train`` images (0: all) are drawn at random from the training split, and
    ``val_fraction`` of them are held out (stratified, seeded) as the validation split; the
    test split (``n_test`` random images, 0: all) is only evaluated once, at the end.
    The dataset is config["dataset"] if on disk, else its embedded substitute (no download).
    """
    used, note = resolve_dataset(config["dataset"])
    X_pool, y_pool = subset(*load(used, "train"), config["n_train"], rng)
    X_train, y_train, X_val, y_val = train_val_split(X_pool, y_pool, config["val_fraction"],
                                                     seed=config["seed"])
    X_test, y_test = subset(*load(used, "test"), config["n_test"], rng)
    return {"X_train": X_train, "y_train": y_train, "X_val": X_val, "y_val": y_val,
            "X_test": X_test, "y_test": y_test, "used": used, "note": note,
            "mean": float(X_train.mean()), "std": float(X_train.std())}


def standardized(data: Dict[str, Any]) -> Dict[str, Any]:
    """The same data with pixels standardized by the *training* mean and std."""
    out = dict(data)
    for key in ("X_train", "X_val", "X_test"):
        if key in data:
            out[key] = ((data[key] - data["mean"]) / data["std"]).astype(np.float32)
    return out


def _weighted(model: Sequential) -> List[Any]:
    return [m for m in model if isinstance(m, (Conv2d, Linear))]


def build_variant(name: str, config: Dict[str, Any], seed: int) -> Sequential:
    """LeNet-5 for variant ``name`` (see VARIANTS); BN on the input is a BatchNorm2d(1) first.

    Every variant of one seed starts from the same conv/FC weights: those of the plain
    LeNet-5 built with ``seed`` (the BN variants have no conv/FC biases, which would otherwise
    shift the random stream and give later layers other weights).
    """
    _, _, bn, bn_input, drop = VARIANTS[name]
    p_in, p_hid = (config["p_input"], config["p_hidden"]) if drop else (0.0, 0.0)
    model = lenet5(batchnorm=bn, p_input=p_in, p_hidden=p_hid, rng=seed)
    reference = lenet5(rng=seed)
    for layer, ref in zip(_weighted(model), _weighted(reference)):
        layer.weight.data[...] = ref.weight.data
        if layer.bias is not None:
            layer.bias.data[...] = ref.bias.data
    if bn_input:
        model = Sequential(BatchNorm2d(1), *model)
    model.flat()
    model.to(config.get("device", "cpu"))        # --device cuda: every variant on the GPU
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
    """Train one variant for one seed with SGD + momentum: validation curves per epoch, then
    train and test metrics once after the last epoch (evaluation mode), and the BN parameters.

    The seed fixes the initial weights (see :func:`build_variant`) and the batch order, so
    the variants of one seed are paired.
    """
    model = build_variant(name, config, seed)
    optimizer = SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
                    weight_decay=config["weight_decay"], decay_mask=True)
    trainer = Trainer(model, CrossEntropyLoss(), optimizer)
    loader = DataLoader(data["X_train"], data["y_train"], config["batch_size"], seed=seed,
                        prefetch=0)
    val = list(array_batches(data["X_val"], data["y_val"], 1000))
    for _ in progress(range(config["epochs"]), desc=f"{name} seed {seed}"):
        trainer.fit(loader, 1, val_loader=val)
    loss = CrossEntropyLoss()
    train_m = evaluate(model, loss, array_batches(data["X_train"], data["y_train"], 1000))
    test_m = evaluate(model, loss, array_batches(data["X_test"], data["y_test"], 1000))
    hist = trainer.history
    bn = {label: {"features": layer.num_features,
                  "gamma mean": float(layer.gamma.mean()), "gamma std": float(layer.gamma.std()),
                  "beta mean": float(layer.beta.mean()), "beta std": float(layer.beta.std())}
          for label, layer in bn_layers(model)}
    return {"seed": seed, "train_loss": train_m["loss"], "train_acc": train_m["acc"],
            "test_loss": test_m["loss"], "test_acc": test_m["acc"],
            "test_error_pct": 100 * (1 - test_m["acc"]),
            "gap_points": 100 * (train_m["acc"] - test_m["acc"]),
            "cpu_seconds": float(np.sum(hist.column("cpu_seconds"))),
            "wall_seconds": float(np.sum(hist.column("seconds"))),
            "bn": bn, "bn_values": _bn_values(model),
            "curves": {"train_loss": hist.column("train_loss"), "val_loss": hist.column("val_loss"),
                       "val_acc": hist.column("val_acc")}}


def _bn_values(model: Sequential) -> Dict[str, Dict[str, List[float]]]:
    return {label: {"gamma": layer.gamma.tolist(), "beta": layer.beta.tolist(),
                    "running_mean": layer.running_mean.tolist(),
                    "running_var": layer.running_var.tolist()}
            for label, layer in bn_layers(model)}


def _warm_up(config: Dict[str, Any], data: Dict[str, Any]) -> None:
    """One untimed training step and one evaluation of every variant, so that one-time costs
    (compiling kernels, first allocations) are not charged to the first variant timed."""
    n = min(config["batch_size"], len(data["X_train"]))
    x, y = data["X_train"][:n], data["y_train"][:n]
    for name in config["variants"]:
        model = build_variant(name, config, 0)
        trainer = Trainer(model, CrossEntropyLoss(), SGD(model.parameters(), lr=0.0))
        trainer.train_step(x, y)
        evaluate(model, CrossEntropyLoss(), [(x, y)])


# -- summaries ---------------------------------------------------------------------------------
def _ci_text(s: Dict[str, Any], digits: int = 2) -> str:
    lo, hi = s["ci95"]
    return "n/a (1 seed)" if lo is None else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def variant_row(name: str, runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One table row: means over seeds, the 95% interval of the test error, per-seed errors."""
    err = stats.summarize([r["test_error_pct"] for r in runs])
    mean = lambda key: float(np.mean([r[key] for r in runs]))  # noqa: E731
    return {"variant": name, "description": VARIANTS[name][0], "seeds": len(runs),
            "train accuracy": mean("train_acc"), "test accuracy": mean("test_acc"),
            "test error %": err["mean"], "test error % 95% CI": _ci_text(err),
            "test error % per seed": ", ".join(f"{r['test_error_pct']:.2f}" for r in runs),
            "train-test gap (points)": mean("gap_points"), "test loss": mean("test_loss"),
            "CPU s per run": mean("cpu_seconds"), "wall s per run": mean("wall_seconds")}


def comparisons(runs: Dict[str, List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """Every pair of PAIRS whose two variants ran, compared paired by seed."""
    key = {ERROR: ("test_error_pct", False), GAP: ("gap_points", False)}
    out = []
    for a, b, metric, _ in PAIRS:
        if a in runs and b in runs:
            field, higher = key[metric]
            out.append(stats.compare(a, [r[field] for r in runs[a]], b,
                                     [r[field] for r in runs[b]], metric,
                                     higher_is_better=higher))
    return out


def steps_metric(target: float, steps_per_epoch: int) -> str:
    """The name of the steps-to-target metric (its resolution is one epoch)."""
    return (f"steps to {100 * target:g}% validation accuracy (resolution: one epoch = "
            f"{steps_per_epoch} steps)")


def steps_to_target(curves: Dict[str, Dict[str, List[List[float]]]], target: float,
                    steps_per_epoch: int) -> Dict[str, Any]:
    """Ioffe & Szegedy's claim measured: the training steps each variant needed to first
    reach ``target`` validation accuracy, per seed (read from the per-epoch validation
    curves, so the resolution is one epoch), and the SPEED_PAIRS compared paired by seed.

    ``curves`` is ``results["curves"]`` (variant -> {"val_acc": [curve per seed]}), so the
    same function serves a finished run's saved results. A pair in which some seed never
    reached the target is not compared (its steps are censored); it is listed in
    ``"censored"`` with the seeds that did reach it."""
    steps = {name: [stats.steps_to_reach(c, target, steps_per_epoch) for c in cur["val_acc"]]
             for name, cur in curves.items()}
    metric = steps_metric(target, steps_per_epoch)
    comps, censored = [], []
    for a, b in SPEED_PAIRS:
        if a not in steps or b not in steps:
            continue
        if any(v is None for v in steps[a] + steps[b]):
            censored.append(f"{a} vs {b}: {a} reached {100 * target:g}% in "
                            f"{sum(v is not None for v in steps[a])} of {len(steps[a])} seeds, "
                            f"{b} in {sum(v is not None for v in steps[b])} of {len(steps[b])}")
            continue
        comps.append(stats.compare(a, steps[a], b, steps[b], metric, higher_is_better=False))
    rows = [{"variant": name, "seeds": len(v),
             "reached": sum(x is not None for x in v),
             "steps per seed": ", ".join("not reached" if x is None else f"{x:.0f}" for x in v)}
            for name, v in steps.items()]
    return {"steps_to_target": steps, "steps_rows": rows, "speed_comparisons": comps,
            "speed_censored": censored, "steps_metric": metric}


def bn_rows(runs: Dict[str, List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """Learned gamma/beta per variant and BN layer: the per-layer statistics, mean over seeds."""
    rows = []
    for name, seed_runs in runs.items():
        for label in seed_runs[0]["bn"]:
            per = [r["bn"][label] for r in seed_runs]
            row = {"variant": name, "layer": label, "features": per[0]["features"],
                   "seeds": len(per)}
            for k in ("gamma mean", "gamma std", "beta mean", "beta std"):
                row[k] = float(np.mean([p[k] for p in per]))
            row["gamma mean: sd over seeds"] = (float(np.std([p["gamma mean"] for p in per],
                                                             ddof=1)) if len(per) > 1 else None)
            rows.append(row)
    return rows


def summarize(runs: Dict[str, List[Dict[str, Any]]], data: Dict[str, Any],
              config: Dict[str, Any]) -> Dict[str, Any]:
    comps = comparisons(runs)
    out: Dict[str, Any] = {
        "rows": [variant_row(name, r) for name, r in runs.items()],
        "bn_rows": bn_rows(runs),
        "bn_values": {name: [r["bn_values"] for r in seed_runs]
                      for name, seed_runs in runs.items()},
        "curves": {name: {k: [r["curves"][k] for r in seed_runs]
                          for k in ("train_loss", "val_loss", "val_acc")}
                   for name, seed_runs in runs.items()},
        "per_seed": {name: [{k: v for k, v in r.items()
                             if k not in ("bn", "bn_values", "curves")} for r in seed_runs]
                     for name, seed_runs in runs.items()},
        "comparisons": comps,
        "pixel_mean": data["mean"], "pixel_std": data["std"]}
    for name, seed_runs in runs.items():
        if seed_runs[0]["bn"]:
            gm = [float(np.mean([r["bn"][lab_]["gamma mean"] for r in seed_runs]))
                  for lab_ in seed_runs[0]["bn"]]
            bm = [float(np.mean([r["bn"][lab_]["beta mean"] for r in seed_runs]))
                  for lab_ in seed_runs[0]["bn"]]
            out[f"{name}_gamma_range"] = f"{min(gm):.3f} to {max(gm):.3f}"
            out[f"{name}_beta_range"] = f"{min(bm):.3f} to {max(bm):.3f}"
    if "bn_input" in runs:
        maps = [_input_bn_summary(r["bn_values"]["BN on input"]) for r in runs["bn_input"]]
        out.update({k: float(np.mean([m[k] for m in maps])) for k in maps[0]})
    speed = steps_to_target(out["curves"], config["target_val_acc"],
                            math.ceil(len(data["X_train"]) / config["batch_size"]))
    out.update(speed)
    out["comparisons"] = comps + speed["speed_comparisons"]
    return out


def _input_bn_summary(values: Dict[str, List[float]]) -> Dict[str, Any]:
    """The affine map the input BN applies at test time: y = a * x + c on raw pixels."""
    gamma, beta = values["gamma"][0], values["beta"][0]
    mean, std = values["running_mean"][0], float(np.sqrt(values["running_var"][0] + 1e-5))
    return {"input_bn_gamma": gamma, "input_bn_beta": beta, "input_bn_mean": mean,
            "input_bn_std": std, "input_bn_scale": gamma / std,
            "input_bn_shift": beta - gamma * mean / std}


# -- report ------------------------------------------------------------------------------------
def colour(name: str) -> str:
    """One colour per variant, the same in every figure."""
    return f"C{list(VARIANTS).index(name)}"


# marker and line style per variant: curves that coincide (bn and bn_input) stay visible
STYLE = {"plain": ("o", "-"), "bn": ("s", "-"), "bn_input": ("^", "--"), "dropout": ("v", "-"),
         "bn_dropout": ("D", ":")}


def _seeds_words(n: int) -> str:
    return "1 seed" if n == 1 else f"mean of {n} seeds"


def _curves_figure(rep: Report, results: Dict[str, Any]) -> None:
    """Training loss and validation accuracy per epoch: mean over seeds, band = min..max."""
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = new_figure(ncols=2, figsize=(11, 4.2))
    for name, c in results["curves"].items():
        for ax, key in ((ax1, "train_loss"), (ax2, "val_acc")):
            vals = np.asarray(c[key], dtype=np.float64)
            if key == "val_acc":
                vals = 100 * vals
            epochs = np.arange(1, vals.shape[1] + 1)
            ax.plot(epochs, vals.mean(axis=0), marker=STYLE[name][0], ls=STYLE[name][1],
                    ms=4, color=colour(name), label=f"{name} ({_seeds_words(len(vals))})")
            if len(vals) > 1:
                ax.fill_between(epochs, vals.min(axis=0), vals.max(axis=0), color=colour(name),
                                alpha=0.15, lw=0)
    ax1.set_title("Training loss")
    ax1.set_ylabel("training cross-entropy (mean over the epoch, training mode)")
    ax1.set_yscale("log")
    ax2.set_title("Validation accuracy")
    ax2.set_ylabel("validation accuracy (%)")
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("LeNet-5 variants on {}: curves over seeds (band: min to max)".format(
        rep.results["used"]))
    rep.figure("curves", fig, "Training loss and validation accuracy per epoch on {used} "
               "(validation split held out of the training data; lines: mean over seeds, "
               "bands: min to max over seeds).")


def _bn_figure(rep: Report, results: Dict[str, Any]) -> None:
    """Mean ± std over features of gamma and beta per BN layer (mean over seeds), per variant."""
    variants = [v for v in VARIANTS if any(b["variant"] == v for b in results["bn_rows"])]
    labels = max(([b["layer"] for b in results["bn_rows"] if b["variant"] == v] for v in variants),
                 key=len)   # bn_input has every layer the others have, plus "BN on input"
    fig, axes = new_figure(ncols=2, figsize=(12, 4.5))
    for i, name in enumerate(variants):
        rows = [b for b in results["bn_rows"] if b["variant"] == name]
        x = [labels.index(r["layer"]) + 0.1 * i for r in rows]
        for ax, p in zip(axes, ("gamma", "beta")):
            ax.errorbar(x, [r[f"{p} mean"] for r in rows], yerr=[r[f"{p} std"] for r in rows],
                        fmt=STYLE[name][0], capsize=3, color=colour(name), label=name)
    for ax, p, ref in zip(axes, ("gamma", "beta"), (1.0, 0.0)):
        ax.axhline(ref, color="0.6", lw=0.8, ls="--")
        ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        ax.set_xlabel("batch-norm layer")
        ax.set_ylabel(f"{p} (unitless), mean ± std over features")
        ax.set_title(f"Learned {p}")
        ax.legend(fontsize=8)
    fig.suptitle("Batch-norm parameters after training (mean over seeds)")
    fig.tight_layout()
    rep.figure("bn_parameters", fig, "Learned batch-norm gamma and beta per layer, averaged "
               "over seeds (error bars: std over the layer's features; dashed: the initial "
               "values 1 and 0).")


def _conclusions(results: Dict[str, Any]) -> List[str]:
    """One line per comparison, its words from the computed verdict (stats.sentence)."""
    lines = []
    what = {(a, b, m): text for a, b, m, text in PAIRS}
    for c in results["comparisons"]:
        label = what.get((c["a"], c["b"], c["metric"]), "Training speed (Ioffe & Szegedy 2015)")
        lines.append(f"{label}: " + stats.sentence(c))
    lines += [f"Not compared (censored): {t}." for t in results.get("speed_censored", [])]
    if "input_bn_scale" in results:
        lines.append("The input BN learned gamma {input_bn_gamma:.3f}, beta {input_bn_beta:.3f} "
                     "(mean over seeds); with its running mean {input_bn_mean:.3f} and std "
                     "{input_bn_std:.3f} it maps a raw pixel x to {input_bn_scale:.3f}·x "
                     "{input_bn_shift:+.3f} at test time; the other variants use the "
                     "standardization (x - {pixel_mean:.3f}) / {pixel_std:.3f}.")
    for name in VARIANTS:
        if f"{name}_gamma_range" in results:
            lines.append(f"Variant {name}: per-layer mean gamma from {{{name}_gamma_range}}, "
                         f"mean beta from {{{name}_beta_range}} (mean over seeds).")
    return lines + ["For reference, " + PAPER + "; this run's numbers are on {used} with "
                    "{n_train:,} training images and {epochs} epochs."]


def write_report(out_dir, config: Dict[str, Any], results: Dict[str, Any]) -> None:
    rep = Report(out_dir, "Batch norm and dropout in LeNet-5", results)
    if results["used"] != results["wanted"]:
        rep.note_substitution(results["wanted"], results["used"])
    rep.setup(config)
    rep.text("LeNet-5 (conv 6@5x5, pool, conv 16@5x5, pool, FC 120, FC 84, FC 10; ReLU) on "
             "{used}: {n_train:,} training images, {n_val:,} validation images held out of "
             "the training split (stratified, {val_fraction:g} of it) and {n_test:,} test "
             "images; {epochs} epochs of SGD (lr {lr}, momentum {momentum}, batch "
             "{batch_size}, L2 {weight_decay:g} on weights). Every variant runs over the "
             "{n_seeds} seeds {seeds}, paired by seed: for one seed all variants start from the "
             "same conv/FC weights and see the same batch order. Standardization uses the "
             "training pixel mean {pixel_mean:.4f} and std {pixel_std:.4f}. Curves are on the "
             "validation split; the test split is evaluated once, after the last epoch "
             "(evaluation mode: BN running statistics, no dropout), and nothing is selected "
             "on it.")
    rep.table("variants", results["rows"], "Train/test metrics per variant (mean over seeds; "
              "test error with its 95% t-interval over seeds)")
    rep.table("steps_to_target", results["steps_rows"],
              "Training steps to first reach {target_pct:g}% validation accuracy, per seed "
              "(read from the per-epoch validation curves: the resolution is one epoch)")
    rep.comparisons(results["comparisons"], heading="Comparisons (paired by seed, 95% intervals)")
    _curves_figure(rep, results)
    if results["bn_rows"]:
        rep.section("Learned batch-norm parameters")
        rep.table("bn_parameters", results["bn_rows"],
                  "Learned gamma and beta per BN layer (statistics over the layer's features, "
                  "mean over seeds)")
        _bn_figure(rep, results)
    rep.conclusions(_conclusions(results))
    rep.explanation("Ioffe & Szegedy (2015) attribute batch norm's faster training to "
                    "normalizing each layer's inputs during training (their 'internal "
                    "covariate shift'), which also allows larger learning rates; Srivastava et "
                    "al. (2014) describe dropout as a regularizer against co-adapted units, "
                    "which typically needs more epochs to pay off and mainly narrows the "
                    "train-test gap. This run tests only the differences listed above.")
    rep.write()


# -- the lab -----------------------------------------------------------------------------------
@lab(name="bn-dropout",
     study="LeNet-5 on MNIST with batch norm (hidden, input) and dropout (Ioffe & Szegedy 2015; "
           "Srivastava et al. 2014)",
     quick=QUICK, standard=STANDARD, full=FULL,
     expected_seconds={"quick": 25, "standard": 2700, "full": 5400, "full_embedded": 700})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    seeds = validate_config(config)
    rng = np.random.default_rng(config["seed"])
    data = load_data(config, rng)
    std_data = standardized(data)
    _warm_up(config, std_data)
    runs: Dict[str, List[Dict[str, Any]]] = {name: [] for name in config["variants"]}
    for seed in seeds:
        for name in config["variants"]:
            variant_data = std_data if VARIANTS[name][1] else data
            runs[name].append(train_variant(name, variant_data, config, seed, progress))
    results = summarize(runs, data, config)
    results.update({"target_pct": 100 * config["target_val_acc"],
                    "wanted": config["dataset"], "used": data["used"],
                    "n_train": len(data["X_train"]), "n_val": len(data["X_val"]),
                    "n_test": len(data["X_test"]), "seeds": seeds, "n_seeds": len(seeds),
                    **{k: config[k] for k in ("epochs", "lr", "momentum", "batch_size",
                                              "weight_decay", "val_fraction")}})
    write_report(out_dir, config, results)
    return results
