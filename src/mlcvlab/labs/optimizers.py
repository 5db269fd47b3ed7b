"""Lab ``optimizers``: five adaptive optimizers on a 2x1000 ReLU MLP, without and with dropout.

AdaGrad, RMSProp, RMSProp with Nesterov momentum, AdaDelta and Adam train the MLP
784-1000-1000-10 (batch 128, coupled L2 weight decay on the weights) once without
dropout and once with dropout 0.2 on the input and 0.5 on the hidden units
(Srivastava et al. 2014). The report shows the training loss per epoch (one figure
per setting), the test accuracy of every run and the seconds per epoch with and
without dropout.

Inverted dropout (``mlcvlab.nn.Dropout``) scales the kept units by 1/q during
training (q = 1 - p, the keep probability), so the test-time network is the
trained one. The lab also trains a *non-inverted* variant (masks not scaled) and
checks the weight-scaling rule: multiplying the weights after each dropout by q at
test time gives the expected pre-activation over dropout masks. It measures the
mean pre-activation of every Linear layer over many masks next to the
scaled-weights pre-activation (exact in expectation for the first layer, an
approximation after a ReLU), and the test accuracy with and without the scaling.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Tuple

import numpy as np

from mlcvlab import backend
from mlcvlab.data.datasets import load, resolve_dataset
from mlcvlab.data.loader import DataLoader
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure
from mlcvlab.models import mlp
from mlcvlab.nn import CrossEntropyLoss, Flatten, Linear, Module, ReLU, Sequential, basis
from mlcvlab.optim import AdaDelta, AdaGrad, Adam, RMSProp
from mlcvlab.train import Trainer, array_batches

OPTIMIZERS = ("AdaGrad", "RMSProp", "RMSProp+Nesterov", "AdaDelta", "Adam")

_COMMON = {"batch_size": 128, "weight_decay": 1e-4, "lr_adagrad": 0.01, "lr_rmsprop": 1e-3,
           "lr_rmsprop_nesterov": 1e-4, "momentum": 0.9, "lr_adadelta": 1.0, "rho_adadelta": 0.95,
           "lr_adam": 1e-3, "p_input": 0.2, "p_hidden": 0.5, "seed": 0}
QUICK = {**_COMMON, "datasets": ["mnist"], "n_train": 2048, "n_test": 1000, "hidden": [100, 100],
         "epochs": 3, "probe_examples": 50, "probe_masks": 400, "mc_masks": 8}
FULL = {**_COMMON, "datasets": ["mnist", "cifar10"], "n_train": 0, "n_test": 0,
        "hidden": [1000, 1000], "epochs": 200, "probe_examples": 200, "probe_masks": 2000,
        "mc_masks": 50}

PAPER = ("the paper (Srivastava et al. 2014, Table 2) reports an MNIST test error of 1.60% for a "
         "standard neural net and 1.25% for a dropout net (ReLU, 0.2 input / 0.5 hidden dropout, "
         "60,000 training images)")


# -- data -----------------------------------------------------------------------------------
def subset(X: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator):
    """A random subset of n examples (all of them when n is 0 or too large)."""
    if n <= 0 or n >= len(X):
        return X, y
    idx = np.sort(rng.choice(len(X), size=n, replace=False))
    return X[idx], y[idx]


def load_study_data(wanted: str, n_train: int, n_test: int, rng: np.random.Generator
                    ) -> Dict[str, Any]:
    """Train/test arrays of ``wanted`` (or its embedded substitute; nothing is downloaded).

    Returns {"X_train": (N, C, H, W), "y_train": (N,), "X_test", "y_test", "used", "note"}.
    """
    used, note = resolve_dataset(wanted)
    X_train, y_train = subset(*load(used, "train"), n_train, rng)
    X_test, y_test = subset(*load(used, "test"), n_test, rng)
    return {"X_train": X_train, "y_train": y_train, "X_test": X_test, "y_test": y_test,
            "used": used, "note": note}


# -- non-inverted dropout ---------------------------------------------------------------------
class NonInvertedDropout(Module):
    """Dropout as in the original formulation: kept units are *not* rescaled in training.

    Training: y = x * m with m ~ Bernoulli(1 - p), a fresh mask per forward; evaluation:
    the identity, so the weights after this layer must be multiplied by the keep
    probability 1 - p at test time (see :func:`weights_scaled_by_keep`). x: any shape.
    """

    def __init__(self, p: float, rng=None):
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"NonInvertedDropout: p is the drop probability and must be in "
                             f"[0, 1), got {p!r}")
        self.p = float(p)
        self.rng = backend.rng(rng)
        self._mask = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        self._mask = (self.rng.random(x.shape, dtype=np.float32) >= self.p).astype(x.dtype)
        return x * self._mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask

    def extra_repr(self):
        return f"p={self.p}"


def noninverted_mlp(sizes: List[int], p_input: float, p_hidden: float, rng) -> Sequential:
    """The MLP of :func:`mlcvlab.models.mlp` with :class:`NonInvertedDropout` in place of Dropout.

    Flatten -> Drop(p_input) -> [Linear -> ReLU -> Drop(p_hidden)] per hidden layer -> Linear.
    """
    gen = backend.rng(rng)
    layers: List[Module] = [Flatten(), NonInvertedDropout(p_input, rng=gen)]
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [Linear(n_in, n_out, rng=gen), ReLU(), NonInvertedDropout(p_hidden, rng=gen)]
    layers.append(Linear(sizes[-2], sizes[-1], rng=gen))
    model = Sequential(*layers)
    model.flat()
    return model


@contextlib.contextmanager
def weights_scaled_by_keep(model: Sequential):
    """Temporarily multiply the weight of the Linear after each NonInvertedDropout by 1 - p."""
    layers, keeps = _linear_after_dropout(model)
    saved = [layer.weight.data.copy() for layer in layers]
    for layer, q in zip(layers, keeps):
        layer.weight.data *= layer.weight.data.dtype.type(q)   # in place: a view of the flat buffer
    try:
        yield model
    finally:
        for layer, original in zip(layers, saved):
            layer.weight.data[...] = original


def _linear_after_dropout(model: Sequential) -> Tuple[List[Linear], List[float]]:
    """The Linear layer after each NonInvertedDropout, and that dropout's keep probability."""
    layers, keeps, pending = [], [], None
    for layer in model:
        if isinstance(layer, NonInvertedDropout):
            pending = 1.0 - layer.p
        elif isinstance(layer, Linear) and pending is not None:
            layers.append(layer)
            keeps.append(pending)
            pending = None
    return layers, keeps


def preactivations(model: Sequential, x: np.ndarray) -> List[np.ndarray]:
    """The output of every Linear layer for x (N, ...), each (N, D_k), in the model's mode."""
    out = []
    for layer in model:
        x = layer(x)
        if isinstance(layer, Linear):
            out.append(x)
    return out


def masks_only(model: Sequential) -> Sequential:
    """Evaluation mode everywhere except the NonInvertedDropout layers (masks drawn)."""
    model.eval()
    for layer in model:
        if isinstance(layer, NonInvertedDropout):
            layer.train()
    return model


def mc_preactivations(model: Sequential, x: np.ndarray, n_masks: int, chunk: int = 50
                      ) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """Mean and standard error over ``n_masks`` dropout masks of each Linear's output.

    x: (n, ...). The masks are processed ``chunk`` at a time as one (chunk * n, ...) batch.
    Returns (means, standard errors), each a list of (n, D_k) arrays.
    """
    masks_only(model)
    n = len(x)
    sums, squares, done = None, None, 0
    while done < n_masks:
        k = min(chunk, n_masks - done)
        pre = [p.astype(np.float64).reshape(k, n, -1)
               for p in preactivations(model, np.concatenate([x] * k))]
        if sums is None:
            sums = [np.zeros(p.shape[1:]) for p in pre]
            squares = [np.zeros(p.shape[1:]) for p in pre]
        for s, q, p in zip(sums, squares, pre):
            s += p.sum(axis=0)
            q += (p * p).sum(axis=0)
        done += k
    model.eval()
    means = [s / n_masks for s in sums]
    var = [np.maximum(q / n_masks - m * m, 0.0) for q, m in zip(squares, means)]
    return means, [np.sqrt(v / max(n_masks - 1, 1)) for v in var]


# -- training -----------------------------------------------------------------------------------
def make_optimizer(name: str, params, config: Dict[str, Any]):
    """One of OPTIMIZERS with the lab's learning rate; L2 weight decay on weights only."""
    wd = dict(weight_decay=config["weight_decay"], decay_mask=True)
    if name == "AdaGrad":
        return AdaGrad(params, lr=config["lr_adagrad"], **wd)
    if name == "RMSProp":
        return RMSProp(params, lr=config["lr_rmsprop"], **wd)
    if name == "RMSProp+Nesterov":
        return RMSProp(params, lr=config["lr_rmsprop_nesterov"], momentum=config["momentum"],
                       nesterov=True, **wd)
    if name == "AdaDelta":
        return AdaDelta(params, lr=config["lr_adadelta"], rho=config["rho_adadelta"], **wd)
    if name == "Adam":
        return Adam(params, lr=config["lr_adam"], **wd)
    raise ValueError(f"optimizers lab: unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def train_model(model: Module, optimizer_name: str, data: Dict[str, Any], config: Dict[str, Any],
                seed: int, progress, desc: str) -> Dict[str, Any]:
    """Train for config["epochs"] epochs; per-epoch train loss, test accuracy and seconds.

    A run whose loss becomes NaN/inf stops there and is marked ``diverged``.
    """
    optimizer = make_optimizer(optimizer_name, model.parameters(), config)
    trainer = Trainer(model, CrossEntropyLoss(), optimizer)
    loader = DataLoader(data["X_train"], data["y_train"], config["batch_size"], seed=seed,
                        prefetch=0)
    test = list(array_batches(data["X_test"], data["y_test"], 1000))
    diverged = False
    for _ in progress(range(config["epochs"]), desc=desc):
        try:
            trainer.fit(loader, 1, val_loader=test)
        except FloatingPointError:
            diverged = True
            break
    hist = trainer.history
    return {"train_loss": hist.column("train_loss"), "test_acc": hist.column("val_acc"),
            "test_loss": hist.column("val_loss"), "seconds": hist.column("seconds"),
            "cpu_seconds": hist.column("cpu_seconds"), "diverged": diverged, "model": model}


def run_optimizer_grid(data: Dict[str, Any], config: Dict[str, Any], rng: np.random.Generator,
                       progress, tag: str) -> List[Dict[str, Any]]:
    """Every optimizer without and with (inverted) dropout.

    The two settings of one optimizer run back to back, so a change in machine load during
    the study biases the with/without-dropout timing comparison as little as possible.
    """
    sizes = [int(np.prod(data["X_train"].shape[1:]))] + list(config["hidden"]) + [10]
    runs = []
    for name in OPTIMIZERS:
        for dropout in (False, True):
            p_in, p_hid = (config["p_input"], config["p_hidden"]) if dropout else (0.0, 0.0)
            seed = int(rng.integers(2**31))
            model = mlp(sizes, p_input=p_in, p_hidden=p_hid, rng=seed)
            label = f"{tag} {name}{' +dropout' if dropout else ''}"
            run = train_model(model, name, data, config, seed, progress, label)
            run.update(optimizer=name, dropout=dropout)
            runs.append(run)
    return runs


# -- measurements ---------------------------------------------------------------------------------
def accuracy(model: Module, X: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = np.concatenate([model(xb).argmax(axis=1) for xb, _ in array_batches(X, y, 1000)])
    return float(np.mean(pred == y))


def mc_accuracy(model: Sequential, X: np.ndarray, y: np.ndarray, n_masks: int) -> float:
    """Accuracy of the softmax averaged over ``n_masks`` dropout masks (Monte Carlo)."""
    masks_only(model)
    probs = np.zeros((len(X), 10))
    for _ in range(n_masks):
        for i, (xb, _) in enumerate(array_batches(X, y, 1000)):
            probs[i * 1000:i * 1000 + len(xb)] += basis.softmax(model(xb))[0]
    model.eval()
    return float(np.mean(probs.argmax(axis=1) == y))


def scaling_check(model: Sequential, data: Dict[str, Any], config: Dict[str, Any],
                  rng: np.random.Generator) -> Dict[str, Any]:
    """Mean pre-activation over masks vs scaled-weights (and unscaled) pre-activation."""
    idx = rng.choice(len(data["X_test"]), size=min(config["probe_examples"], len(data["X_test"])),
                     replace=False)
    x = data["X_test"][idx]
    means, errors = mc_preactivations(model, x, config["probe_masks"])
    model.eval()
    unscaled = preactivations(model, x)
    with weights_scaled_by_keep(model):
        scaled = preactivations(model, x)
    rows = []
    for k, (m, se, s, u) in enumerate(zip(means, errors, scaled, unscaled)):
        norm = np.linalg.norm(s)
        rows.append({"layer": f"Linear {k + 1}", "exact in expectation": k == 0,
                     "rel. gap: mean over masks vs scaled weights": np.linalg.norm(m - s) / norm,
                     "rel. Monte Carlo std error": np.linalg.norm(se) / norm,
                     "rel. gap: mean over masks vs unscaled weights": np.linalg.norm(m - u) / norm})
    return {"rows": rows, "examples": len(x)}


def noninverted_study(data: Dict[str, Any], config: Dict[str, Any], rng: np.random.Generator,
                      progress, tag: str) -> Dict[str, Any]:
    """Train the non-inverted-dropout MLP with Adam; check the weight-scaling rule."""
    sizes = [int(np.prod(data["X_train"].shape[1:]))] + list(config["hidden"]) + [10]
    seed = int(rng.integers(2**31))
    model = noninverted_mlp(sizes, config["p_input"], config["p_hidden"], seed)
    run = train_model(model, "Adam", data, config, seed, progress, f"{tag} Adam non-inverted")
    check = scaling_check(model, data, config, rng)
    X, y = data["X_test"], data["y_test"]
    with weights_scaled_by_keep(model):
        acc_scaled = accuracy(model, X, y)
    return {"check_rows": check["rows"], "probe_examples": check["examples"],
            "acc_scaled": acc_scaled, "acc_unscaled": accuracy(model, X, y),
            "acc_mc": mc_accuracy(model, X, y, config["mc_masks"]),
            "train_loss": run["train_loss"], "diverged": run["diverged"]}


# -- summaries ------------------------------------------------------------------------------------
def _label(run: Dict[str, Any]) -> str:
    return run["optimizer"] + (" + dropout" if run["dropout"] else "")


def _compare(a: float, b: float, up: str, down: str, same: str = "left unchanged") -> str:
    """A verb for a -> b worded from the sign of the difference."""
    return up if b > a else down if b < a else same


def summarize_grid(runs: List[Dict[str, Any]], tag: str) -> Dict[str, Any]:
    """Tables and headline numbers of the optimizer grid, keys prefixed by ``tag``."""
    rows = [{"optimizer": r["optimizer"], "dropout": r["dropout"],
             "final train loss": r["train_loss"][-1], "test accuracy": r["test_acc"][-1],
             "test error %": 100 * (1 - r["test_acc"][-1]),
             "best test accuracy": max(r["test_acc"]),
             "s/epoch": float(np.mean(r["seconds"])),
             "CPU s/epoch": float(np.mean(r["cpu_seconds"])), "diverged": r["diverged"]}
            for r in runs]
    plain = {r["optimizer"]: r for r in rows if not r["dropout"]}
    drop = {r["optimizer"]: r for r in rows if r["dropout"]}
    timing = [{"optimizer": n, "s/epoch without dropout": plain[n]["s/epoch"],
               "s/epoch with dropout": drop[n]["s/epoch"],
               "ratio (with / without)": drop[n]["s/epoch"] / plain[n]["s/epoch"],
               "CPU s/epoch without dropout": plain[n]["CPU s/epoch"],
               "CPU s/epoch with dropout": drop[n]["CPU s/epoch"],
               "CPU ratio (with / without)": drop[n]["CPU s/epoch"] / plain[n]["CPU s/epoch"]}
              for n in OPTIMIZERS]
    best_p = max(plain.values(), key=lambda r: r["test accuracy"])
    best_d = max(drop.values(), key=lambda r: r["test accuracy"])
    helped = [n for n in OPTIMIZERS if drop[n]["test accuracy"] > plain[n]["test accuracy"]]
    lowest = min(plain.values(), key=lambda r: r["final train loss"])
    out = {"runs": rows, "timing_rows": timing,
           "curves": {_label(r): r["train_loss"] for r in runs},
           "test_acc_curves": {_label(r): r["test_acc"] for r in runs},
           "best_plain": best_p["optimizer"], "best_plain_acc": best_p["test accuracy"],
           "best_dropout": best_d["optimizer"], "best_dropout_acc": best_d["test accuracy"],
           "best_effect": _compare(best_p["test accuracy"], best_d["test accuracy"],
                                   "raised", "lowered"),
           "dropout_helped": helped, "dropout_helped_count": len(helped),
           "dropout_helped_text": ", ".join(helped) or "none",
           "lowest_loss_plain": lowest["optimizer"],
           "lowest_loss_plain_value": lowest["final train loss"],
           "time_ratio_mean": float(np.mean([t["ratio (with / without)"] for t in timing])),
           "diverged_runs": [_label(r) for r in runs if r["diverged"]]}
    out["diverged_text"] = ", ".join(out["diverged_runs"]) or "none"
    out["time_effect"] = "slower" if out["time_ratio_mean"] > 1 else "faster"
    return {f"{tag}_{k}": v for k, v in out.items()}


def summarize_noninverted(study: Dict[str, Any], inverted_acc: float, tag: str) -> Dict[str, Any]:
    first = study["check_rows"][0]
    gap = first["rel. gap: mean over masks vs scaled weights"]
    noise = first["rel. Monte Carlo std error"]
    out = {"scaling_rows": study["check_rows"], "probe_examples": study["probe_examples"],
           "layer1_gap": gap, "layer1_noise": noise,
           "layer1_unscaled_gap": first["rel. gap: mean over masks vs unscaled weights"],
           "layer1_within_noise": bool(gap <= 3 * noise),
           "deep_gaps": [float(r["rel. gap: mean over masks vs scaled weights"])
                         for r in study["check_rows"][1:]],
           "acc_scaled": study["acc_scaled"], "acc_unscaled": study["acc_unscaled"],
           "acc_mc": study["acc_mc"], "acc_inverted": inverted_acc,
           "noninv_train_loss": study["train_loss"], "noninv_diverged": study["diverged"]}
    out["scaling_effect"] = _compare(out["acc_unscaled"], out["acc_scaled"], "higher", "lower",
                                     "the same")
    out["inverted_vs_scaled"] = _compare(out["acc_scaled"], inverted_acc, "higher", "lower",
                                         "the same")
    out["deep_gaps_text"] = ", ".join(f"{g:.2%}" for g in out["deep_gaps"])
    out["within_noise_word"] = "within" if out["layer1_within_noise"] else "outside"
    return {f"{tag}_{k}": v for k, v in out.items()}


# -- report ----------------------------------------------------------------------------------------
def _t(template: str, tag: str) -> str:
    """Point a template's ``{T_...}`` keys at dataset ``tag``'s results."""
    return template.replace("{T_", "{" + tag + "_")


def _loss_figure(rep: Report, results: Dict[str, Any], tag: str, dropout: bool) -> None:
    fig, ax = new_figure(figsize=(6, 4))
    for name in OPTIMIZERS:
        label = name + (" + dropout" if dropout else "")
        losses = results[f"{tag}_curves"][label]
        ax.plot(range(1, len(losses) + 1), losses, marker="o" if len(losses) < 20 else None,
                label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (cross-entropy, log scale)")
    setting = "with dropout 0.2 input / 0.5 hidden" if dropout else "without dropout"
    ax.set_title(f"{results[f'{tag}_used']}: {setting}")
    ax.legend()
    name = f"{tag}_loss_{'dropout' if dropout else 'no_dropout'}"
    rep.figure(name, fig, _t("Training loss per epoch on {T_used}, " + setting + ".", tag))


def _acc_figure(rep: Report, results: Dict[str, Any], tag: str) -> None:
    fig, ax = new_figure(figsize=(6, 4))
    for i, name in enumerate(OPTIMIZERS):
        for dropout, style in ((False, "-"), (True, "--")):
            acc = results[f"{tag}_test_acc_curves"][name + (" + dropout" if dropout else "")]
            ax.plot(range(1, len(acc) + 1), acc, style, color=f"C{i}",
                    label=name + (" + dropout" if dropout else ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7, ncol=2)
    rep.figure(f"{tag}_test_accuracy", fig,
               _t("Test accuracy per epoch on {T_used} (dashed: with dropout).", tag))


def report_dataset(rep: Report, results: Dict[str, Any], tag: str) -> None:
    t = lambda s: _t(s, tag)  # noqa: E731
    rep.section(rep.fmt(t("{T_wanted} (run on {T_used}: {T_n_train:,} training, "
                          "{T_n_test:,} test images)")))
    _loss_figure(rep, results, tag, dropout=False)
    _loss_figure(rep, results, tag, dropout=True)
    _acc_figure(rep, results, tag)
    rep.table(f"{tag}_test_accuracy", results[f"{tag}_runs"],
              t("Test accuracy after {T_epochs} epochs, per optimizer and setting"))
    rep.table(f"{tag}_timing", results[f"{tag}_timing_rows"],
              t("Training seconds per epoch (mean over {T_epochs} epochs), without vs with "
                "dropout"))
    rep.text("Seconds are wall-clock time of the training epochs (evaluation excluded); the two "
             "settings of each optimizer ran back to back, but on a machine shared with other "
             "jobs the wall-clock ratio also reflects changes in load. CPU seconds are the "
             "process's CPU time over the same epochs (all its threads): they do not grow "
             "while the process waits for a core, so where wall seconds are well above them "
             "the machine was shared, and the CPU ratio is the one to read.")
    rep.section(rep.fmt(t("Non-inverted dropout and the weight-scaling rule ({T_used})")))
    rep.text(t("An MLP with the same sizes and dropout rates, but masks *not* scaled by 1/q in "
               "training, was trained with Adam. For {T_probe_examples} test images the output of "
               "every Linear layer was averaged over {T_probe_masks:,} dropout masks and compared "
               "with one pass whose weights after each dropout are multiplied by the keep "
               "probability q (relative Frobenius gaps)."))
    rep.table(f"{tag}_weight_scaling", results[f"{tag}_scaling_rows"],
              t("Mean pre-activation over masks vs scaled-weights pre-activation"))
    rep.table(f"{tag}_noninverted_accuracy", [
        {"model": "inverted dropout (Adam), no test-time change",
         "test accuracy": results[f"{tag}_acc_inverted"]},
        {"model": "non-inverted dropout, weights scaled by q", "test accuracy":
            results[f"{tag}_acc_scaled"]},
        {"model": "non-inverted dropout, weights not scaled", "test accuracy":
            results[f"{tag}_acc_unscaled"]},
        {"model": f"non-inverted dropout, softmax averaged over {results['mc_masks']} masks",
         "test accuracy": results[f"{tag}_acc_mc"]}], t("Test accuracy, {T_used}"))


def conclusions(tag: str) -> List[str]:
    t = lambda s: _t(s, tag)  # noqa: E731
    return [t("{T_used}, without dropout: the best test accuracy is {T_best_plain_acc:.2%} "
              "({T_best_plain}); the lowest final training loss is {T_lowest_loss_plain_value:.4f} "
              "({T_lowest_loss_plain})."),
            t("{T_used}, with dropout: the best test accuracy is {T_best_dropout_acc:.2%} "
              "({T_best_dropout}); dropout {T_best_effect} the best accuracy, and raised the test "
              "accuracy for {T_dropout_helped_count} of the 5 optimizers "
              "({T_dropout_helped_text})."),
            t("{T_used}: an epoch with dropout took {T_time_ratio_mean:.2f}x the time of one "
              "without (mean over the optimizers), i.e. dropout made epochs {T_time_effect}."),
            t("Weight scaling, first layer: the mean pre-activation over {T_probe_masks:,} masks "
              "differs from the scaled-weights one by {T_layer1_gap:.2%}, {T_within_noise_word} 3x "
              "the Monte Carlo standard error ({T_layer1_noise:.2%}); without the scaling the gap "
              "is {T_layer1_unscaled_gap:.2%}. Deeper layers (after a ReLU, where the rule is only "
              "an approximation): gaps {T_deep_gaps_text}."),
            t("Non-inverted dropout: test accuracy {T_acc_scaled:.2%} with the weights scaled by "
              "q, {T_acc_unscaled:.2%} without ({T_scaling_effect} with the scaling); inverted "
              "dropout reached {T_acc_inverted:.2%} ({T_inverted_vs_scaled} than the scaled "
              "non-inverted net)."),
            t("Diverged runs (loss NaN/inf): {T_diverged_text}.")]


def write_report(out_dir, config: Dict[str, Any], results: Dict[str, Any], notes: List[str]
                 ) -> None:
    rep = Report(out_dir, "Adaptive optimizers with and without dropout", results)
    for wanted, used in results["substitutions"]:
        rep.note_substitution(wanted, used)
    for message in notes:
        rep.note(message)
    rep.setup(config)
    rep.text("MLP {sizes_text} with ReLU, batch {batch_size}, L2 weight decay {weight_decay:g} on "
             "the weights (not biases), {epochs} epochs; dropout setting: p = {p_input} on the "
             "input, {p_hidden} on each hidden layer (inverted dropout).")
    for tag in results["datasets_run"]:
        report_dataset(rep, results, tag)
    rep.section("Published result")
    rep.text("For comparison, " + PAPER + ". Numbers above are from this run only.")
    rep.conclusions([c for tag in results["datasets_run"] for c in conclusions(tag)])
    rep.write()


# -- the lab ------------------------------------------------------------------------------------
def run_dataset(wanted: str, config: Dict[str, Any], rng: np.random.Generator, progress
                ) -> Dict[str, Any]:
    """The whole study on one dataset: the optimizer grid and the non-inverted variant."""
    tag = wanted
    data = load_study_data(wanted, config["n_train"], config["n_test"], rng)
    runs = run_optimizer_grid(data, config, rng, progress, tag)
    inverted_adam = next(r for r in runs if r["optimizer"] == "Adam" and r["dropout"])
    study = noninverted_study(data, config, rng, progress, tag)
    out = {f"{tag}_wanted": wanted, f"{tag}_used": data["used"],
           f"{tag}_n_train": len(data["X_train"]), f"{tag}_n_test": len(data["X_test"]),
           f"{tag}_epochs": config["epochs"], f"{tag}_probe_masks": config["probe_masks"]}
    out.update(summarize_grid(runs, tag))
    out.update(summarize_noninverted(study, inverted_adam["test_acc"][-1], tag))
    return out


@lab(name="optimizers",
     study="AdaGrad, RMSProp, RMSProp+Nesterov, AdaDelta, Adam on a 2x1000 ReLU MLP, without and "
           "with dropout (Srivastava et al. 2014)",
     quick=QUICK, full=FULL,
     expected_seconds={"quick": 15, "full": 8 * 3600, "full_embedded": 3600})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    rng = np.random.default_rng(config["seed"])
    results: Dict[str, Any] = {"datasets_run": [], "substitutions": [], "skipped": [],
                               "mc_masks": config["mc_masks"]}
    notes = []
    for wanted in config["datasets"]:
        used, _ = resolve_dataset(wanted)
        if wanted == "cifar10" and used != "cifar10":
            notes.append("CIFAR-10 is not on disk; its part of the study runs only when the "
                         "dataset is present, so it was skipped (`mlcvlab data info cifar10`).")
            results["skipped"].append(wanted)
            continue
        if used != wanted:
            results["substitutions"].append([wanted, used])
        results.update(run_dataset(wanted, config, rng, progress))
        results["datasets_run"].append(wanted)
    sizes = ["in"] + [str(h) for h in config["hidden"]] + ["10"]
    results.update({"sizes_text": "-".join(sizes), **{k: config[k] for k in (
        "batch_size", "weight_decay", "epochs", "p_input", "p_hidden")}})
    write_report(out_dir, config, results, notes)
    return results
