"""Lab ``optimizers``: five adaptive optimizers on a 2x1000 ReLU MLP, without and with dropout.

AdaGrad, RMSProp, RMSProp with Nesterov momentum, AdaDelta and Adam train the MLP
784-1000-1000-10 (batch 128, coupled L2 weight decay on the weights) once without
dropout and once with dropout 0.2 on the input and 0.5 on the hidden units
(Srivastava et al. 2014), over ``seeds`` paired by seed: for one seed every run starts
from the same initial weights and sees the same batches in the same order. The report
gives every arm's mean with a 95% interval over the seeds and the paired comparisons
with their verdicts: with vs without dropout per optimizer (test accuracy, and CPU
seconds per epoch with the wall seconds beside them), optimizer vs optimizer on the final
training loss, and the non-inverted dropout checks below. Curves use a validation split
held out of the training images; the test split is evaluated once, after the last epoch.

``device`` "cuda" (``--device cuda``) trains every network on the GPU: the model, its
optimizer state (each optimizer's update is one fused kernel there, decay mask included) and
the loss live on the device, a batch crosses once per step, and the non-inverted dropout
draws its masks there (the same Philox masks as on the CPU). The evaluation passes of the
weight-scaling check run on the device too; their outputs come back to the host, where the
statistics are summed in float64 as on the CPU. The timing comparison is then on wall
seconds (device time), the CPU seconds being only the host's share.

Inverted dropout (``mlcvlab.nn.Dropout``) scales the kept units by 1/q during training (q =
1 - p, the keep probability), so the test-time network is the trained one. The lab also
trains a *non-inverted* variant (masks not scaled; for one seed the same initial weights,
batches and dropout masks as the Adam + dropout run, so the two differ only in the scaling)
and checks the weight-scaling rule: multiplying the weights after each dropout by q at test
time gives the expected pre-activation over dropout masks. It measures the mean
pre-activation of every Linear layer over many masks next to the scaled-weights
pre-activation (exact in expectation for the first layer, an approximation after a ReLU),
and the test accuracy with and without the scaling.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from typing import Any, Dict, List, Tuple

import numpy as np

from mlcvlab import backend
from mlcvlab.data.datasets import load, resolve_dataset
from mlcvlab.data.loader import DataLoader
from mlcvlab.labs import stats
from mlcvlab.optim.registry import build, canonical_name
from mlcvlab.labs.checks import Checker
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure, timing_clock
from mlcvlab.models import mlp
from mlcvlab.nn import (CrossEntropyLoss, Dropout, Flatten, Kept, Linear, Module, ReLU,
                        Sequential, basis)
from mlcvlab.nn.module import check_input
from mlcvlab.train import Trainer, array_batches, evaluate
from mlcvlab.train.trainer import _host, _model_input

OPTIMIZERS = ("AdaGrad", "RMSProp", "RMSProp+Nesterov", "AdaDelta", "Adam")

_COMMON = {"batch_size": 128, "weight_decay": 1e-4, "lr_adagrad": 0.01, "lr_rmsprop": 1e-3,
           "lr_rmsprop_nesterov": 1e-4, "momentum": 0.9, "lr_adadelta": 1.0, "rho_adadelta": 0.95,
           "lr_adam": 1e-3, "p_input": 0.2, "p_hidden": 0.5, "val_fraction": 0.1, "seed": 0,
           "device": "cpu"}
QUICK = {**_COMMON, "datasets": ["mnist"], "n_train": 2048, "n_test": 1000, "hidden": [100, 100],
         "epochs": 3, "probe_examples": 50, "probe_masks": 400, "mc_masks": 8, "seeds": 2}
STANDARD = {**_COMMON, "datasets": ["mnist"], "n_train": 0, "n_test": 0, "hidden": [512, 512],
            "epochs": 10, "probe_examples": 100, "probe_masks": 1000, "mc_masks": 20, "seeds": 3}
FULL = {**_COMMON, "datasets": ["mnist", "cifar10"], "n_train": 0, "n_test": 0,
        "hidden": [1000, 1000], "epochs": 200, "probe_examples": 200, "probe_masks": 2000,
        "mc_masks": 50, "seeds": 5}

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


def load_study_data(wanted: str, n_train: int, n_test: int, rng: np.random.Generator,
                    val_fraction: float = 0.1, split_seed: int = 0) -> Dict[str, Any]:
    """Train/validation/test arrays of ``wanted`` (or its embedded substitute; nothing is
    downloaded). The validation split is held out of the (sub-sampled) training images.

    Returns {"X_train": (N, C, H, W), "y_train": (N,), "X_val", "y_val", "X_test", "y_test",
    "used", "note"}.
    """
    from mlcvlab.data import train_val_split
    used, note = resolve_dataset(wanted)
    X_train, y_train = subset(*load(used, "train"), n_train, rng)
    X_test, y_test = subset(*load(used, "test"), n_test, rng)
    X_train, y_train, X_val, y_val = train_val_split(X_train, y_train, val_fraction, split_seed)
    return {"X_train": X_train, "y_train": y_train, "X_val": X_val, "y_val": y_val,
            "X_test": X_test, "y_test": y_test, "used": used, "note": note}


# -- non-inverted dropout ---------------------------------------------------------------------
class NonInvertedDropout(Dropout):
    """Dropout as in the original formulation: kept units are *not* rescaled in training.

    Training: y = x * m with m ~ Bernoulli(1 - p), a fresh mask per forward; evaluation:
    the identity, so the weights after this layer must be multiplied by the keep
    probability 1 - p at test time (see :func:`weights_scaled_by_keep`). x: any shape.

    The masks are the library Dropout's (a subclass of it): the counter-based Philox masks
    keyed by the layer's seed and forward count (buffers ``mask_seed`` and ``mask_step``),
    drawn on the model's device (:func:`keep_mask`), so a CPU run and a "cuda" run of the
    lab drop the same units, and a layer built with the generator and p of an
    ``nn.Dropout`` keeps where that one keeps. Its forward and backward use only the device's
    twin of the mask and array arithmetic, so it declares ``runs_on_gpu``.
    """

    runs_on_gpu = True          # read by mlcvlab.gpu.engine: model.to("cuda") may move it

    def __init__(self, p: float, rng=None):
        if not isinstance(p, (float, int, np.floating)) or not 0.0 <= float(p) < 1.0:
            raise ValueError(f"NonInvertedDropout: p is the drop probability and must be in "
                             f"[0, 1), got {p!r}")
        super().__init__(p, rng=rng)
        self._mask = None

    def forward(self, x):
        check_input("NonInvertedDropout", x)
        key = self.next_key() if self.training else None     # as nn.Dropout: one per forward
        if key is None or self.p == 0.0:
            self._mask = None
            return x
        self._mask = keep_mask(tuple(x.shape), self.p, key, self.device, x.dtype)
        return x * self._mask

    def backward(self, dy):
        return dy if self._mask is None else dy * self._mask

    def kept_for_backward(self, in_shape, out_shape) -> Kept:
        if self.p == 0:
            return Kept(alias=True)             # the identity: y is x
        return Kept(values=int(np.prod(in_shape)))      # the 0/1 mask

    def multiply_adds(self, in_shape, out_shape) -> int:
        return 0                                # element-wise: not counted

    def extra_repr(self):
        return f"p={self.p}"


def keep_mask(shape: Tuple[int, ...], p: float, key, device: str = "cpu", dtype=np.float32):
    """The 0/1 keep mask (``dtype``) of :class:`mlcvlab.nn.Dropout`'s draw for the
    :class:`mlcvlab.nn.philox.DropoutKey` ``key``: 1 where its scaled mask keeps a unit. On
    "cuda" the mask is drawn on the device (``gpu.basis.dropout_mask``, bit for bit the CPU's)
    and stays there."""
    if device == "cpu":
        scaled = basis.dropout_mask(shape, p, key, dtype)
    else:
        from mlcvlab.gpu import basis as gpu_basis
        scaled = gpu_basis.dropout_mask(shape, p, key)
    return (scaled != 0).astype(dtype)


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


def _forward(model: Module, x: np.ndarray) -> np.ndarray:
    """The model's output for host x, on the host (computed on the model's device)."""
    return _host(model(_model_input(model, x)))


def preactivations(model: Sequential, x: np.ndarray) -> List[np.ndarray]:
    """The output of every Linear layer for host x (N, ...), each (N, D_k) on the host, in
    the model's mode (computed on the model's device)."""
    out = []
    x = _model_input(model, x)
    for layer in model:
        x = layer(x)
        if isinstance(layer, Linear):
            out.append(_host(x))
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
    """One of OPTIMIZERS (``mlcvlab.optim.build``) with the lab's learning rate; L2 weight
    decay on weights only."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizers lab: unknown optimizer {name!r}; choose one of "
                         f"{OPTIMIZERS}")
    key = canonical_name(name)                       # "RMSProp+Nesterov" -> "rmsprop-nesterov"
    extra = {"rho": config["rho_adadelta"]} if key == "adadelta" else {}
    momentum = config["momentum"] if key == "rmsprop-nesterov" else None
    return build(key, params, lr=config[f"lr_{key.replace('-', '_')}"], momentum=momentum,
                 weight_decay=config["weight_decay"], decay_mask=True, **extra)


def train_model(model: Module, optimizer_name: str, data: Dict[str, Any], config: Dict[str, Any],
                seed: int, progress, desc: str) -> Dict[str, Any]:
    """Train for config["epochs"] epochs; per-epoch train loss, validation accuracy, wall and
    CPU seconds; the test split once, at the end.

    A run whose loss becomes NaN/inf stops there and is marked ``diverged``. The model moves
    to config["device"] first (in place: the caller's model is the trained one).
    """
    device = config.get("device", "cpu")
    model.to(device)
    optimizer = make_optimizer(optimizer_name, model.parameters(), config)
    trainer = Trainer(model, CrossEntropyLoss().to(device), optimizer)
    loader = DataLoader(data["X_train"], data["y_train"], config["batch_size"], seed=seed,
                        prefetch=0)
    val = list(array_batches(data["X_val"], data["y_val"], 1000))
    diverged = False
    for _ in progress(range(config["epochs"]), desc=desc):
        try:
            trainer.fit(loader, 1, val_loader=val)
        except FloatingPointError:
            diverged = True
            break
    hist = trainer.history
    test = evaluate(model, CrossEntropyLoss().to(device),
                    array_batches(data["X_test"], data["y_test"], 1000))
    losses = hist.column("train_loss")
    return {"train_loss": losses, "val_acc": hist.column("val_acc"),
            "val_loss": hist.column("val_loss"), "seconds": hist.column("seconds"),
            "cpu_seconds": hist.column("cpu_seconds"), "diverged": diverged or not losses
            or not all(math.isfinite(v) for v in losses),
            "test_acc": float(test["acc"]), "test_loss": float(test["loss"]), "model": model}


def run_optimizer_grid(data: Dict[str, Any], config: Dict[str, Any], seed: int,
                       progress, tag: str) -> List[Dict[str, Any]]:
    """Every optimizer without and with (inverted) dropout, from seed ``seed``: the same
    initial weights (the Linear layers draw from the seed's generator, dropout draws nothing
    at construction) and the same batch order for every run.

    The two settings of one optimizer run back to back, so a change in machine load during
    the study biases the with/without-dropout timing comparison as little as possible.
    """
    sizes = [int(np.prod(data["X_train"].shape[1:]))] + list(config["hidden"]) + [10]
    runs = []
    for name in OPTIMIZERS:
        for dropout in (False, True):
            p_in, p_hid = (config["p_input"], config["p_hidden"]) if dropout else (0.0, 0.0)
            model = mlp(sizes, p_input=p_in, p_hidden=p_hid, rng=seed)
            label = f"{tag} seed {seed} {name}{' +dropout' if dropout else ''}"
            run = train_model(model, name, data, config, seed, progress, label)
            run.pop("model")
            run.update(optimizer=name, dropout=dropout, seed=seed)
            runs.append(run)
    return runs


# -- measurements ---------------------------------------------------------------------------------
def accuracy(model: Module, X: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    pred = np.concatenate([_forward(model, xb).argmax(axis=1)
                           for xb, _ in array_batches(X, y, 1000)])
    return float(np.mean(pred == y))


def mc_accuracy(model: Sequential, X: np.ndarray, y: np.ndarray, n_masks: int) -> float:
    """Accuracy of the softmax averaged over ``n_masks`` dropout masks (Monte Carlo)."""
    masks_only(model)
    probs = np.zeros((len(X), 10))
    for _ in range(n_masks):
        for i, (xb, _) in enumerate(array_batches(X, y, 1000)):
            probs[i * 1000:i * 1000 + len(xb)] += basis.softmax(_forward(model, xb))[0]
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


def noninverted_study(data: Dict[str, Any], config: Dict[str, Any], seed: int, progress,
                      tag: str, check: bool = True) -> Dict[str, Any]:
    """Train the non-inverted-dropout MLP with Adam from ``seed``; its test accuracy with and
    without the weight scaling and averaged over masks; with ``check``, the weight-scaling
    check of the pre-activations."""
    sizes = [int(np.prod(data["X_train"].shape[1:]))] + list(config["hidden"]) + [10]
    model = noninverted_mlp(sizes, config["p_input"], config["p_hidden"], seed)
    run = train_model(model, "Adam", data, config, seed, progress,
                      f"{tag} seed {seed} Adam non-inverted")
    out = {"seed": seed, "train_loss": run["train_loss"], "diverged": run["diverged"]}
    if check:
        result = scaling_check(model, data, config, np.random.default_rng([seed, 2]))
        out.update(check_rows=result["rows"], probe_examples=result["examples"])
    X, y = data["X_test"], data["y_test"]
    with weights_scaled_by_keep(model):
        out["acc_scaled"] = accuracy(model, X, y)
    out.update(acc_unscaled=accuracy(model, X, y),
               acc_mc=mc_accuracy(model, X, y, config["mc_masks"]))
    return out


# -- summaries ------------------------------------------------------------------------------------
def _label(run: Dict[str, Any]) -> str:
    return run["optimizer"] + (" + dropout" if run["dropout"] else "")


def _names(items: List[str]) -> str:
    return ", ".join(items) or "none"


# the time comparison per clock (report.timing_clock): its metric, and the run key it reads
TIME_METRIC = {"cpu": "CPU seconds per training epoch",
               "wall": "wall seconds per training epoch (device time)"}
TIME_KEY = {"cpu": "cpu_seconds", "wall": "seconds"}


def summarize_grid(runs: List[Dict[str, Any]], seeds: List[int], tag: str, clock: str = "cpu"
                   ) -> Dict[str, Any]:
    """Tables, comparisons and the numbers of the conclusions, keys prefixed by ``tag``.

    The with/without-dropout time comparison is on ``clock`` ("cpu", or "wall" on a device
    run: see :func:`mlcvlab.labs.report.timing_clock`); both clocks stay in the table.
    Arms with a diverged run are left out of the comparisons (and named)."""
    arms = {(n, d): [r for r in runs if r["optimizer"] == n and r["dropout"] == d]
            for n in OPTIMIZERS for d in (False, True)}       # each in seed order
    rows, run_rows = [], []
    for (n, d), rs in arms.items():
        acc = stats.summarize([r["test_acc"] for r in rs])
        rows.append({"optimizer": n, "dropout": d, "seeds": len(rs),
                     "test accuracy": acc["mean"], "test acc CI lo": acc["ci95"][0],
                     "test acc CI hi": acc["ci95"][1], "test error %": 100 * (1 - acc["mean"]),
                     "final train loss": float(np.mean([r["train_loss"][-1] for r in rs])),
                     "CPU s/epoch": float(np.mean([np.mean(r["cpu_seconds"]) for r in rs])),
                     "s/epoch": float(np.mean([np.mean(r["seconds"]) for r in rs])),
                     "diverged": sum(r["diverged"] for r in rs)})
        run_rows += [{"seed": r["seed"], "optimizer": n, "dropout": d,
                      "final train loss": r["train_loss"][-1],
                      "final val accuracy": r["val_acc"][-1], "test accuracy": r["test_acc"],
                      "CPU s/epoch": float(np.mean(r["cpu_seconds"])),
                      "s/epoch": float(np.mean(r["seconds"])), "diverged": r["diverged"]}
                     for r in rs]
    ok = {a for a, rs in arms.items() if not any(r["diverged"] for r in rs)}
    comps, timing = [], []
    helped, hurt, acc_unsep, slower, faster, time_unsep = [], [], [], [], [], []
    for n in OPTIMIZERS:
        plain, drop = arms[n, False], arms[n, True]
        cpu_p = [float(np.mean(r["cpu_seconds"])) for r in plain]
        cpu_d = [float(np.mean(r["cpu_seconds"])) for r in drop]
        wall_p = [float(np.mean(r["seconds"])) for r in plain]
        wall_d = [float(np.mean(r["seconds"])) for r in drop]
        ratio = stats.summarize([d / p for d, p in zip(cpu_d, cpu_p)])
        timing.append({"optimizer": n, "CPU s/epoch without dropout": float(np.mean(cpu_p)),
                       "CPU s/epoch with dropout": float(np.mean(cpu_d)),
                       "CPU ratio (with / without)": ratio["mean"],
                       "CPU ratio CI lo": ratio["ci95"][0], "CPU ratio CI hi": ratio["ci95"][1],
                       "wall s/epoch without dropout": float(np.mean(wall_p)),
                       "wall s/epoch with dropout": float(np.mean(wall_d)),
                       "wall ratio (with / without)": float(np.mean(
                           [d / p for d, p in zip(wall_d, wall_p)]))})
        t_d, t_p = (cpu_d, cpu_p) if clock == "cpu" else (wall_d, wall_p)
        c = stats.compare(f"{n} + dropout", t_d, n, t_p, TIME_METRIC[clock],
                          higher_is_better=False)
        c.update(kind="time", optimizer=n)
        comps.append(c)
        {"a better": faster, "b better": slower}.get(c["verdict"], time_unsep).append(n)
        if (n, False) in ok and (n, True) in ok:
            c = stats.compare(f"{n} + dropout", [r["test_acc"] for r in drop], n,
                              [r["test_acc"] for r in plain], "test accuracy",
                              higher_is_better=True)
            c.update(kind="dropout", optimizer=n)
            comps.append(c)
            {"a better": helped, "b better": hurt}.get(c["verdict"], acc_unsep).append(n)
    loss_comps = []
    for a, b in itertools.combinations(OPTIMIZERS, 2):
        if (a, False) in ok and (b, False) in ok:
            c = stats.compare(a, [r["train_loss"][-1] for r in arms[a, False]], b,
                              [r["train_loss"][-1] for r in arms[b, False]],
                              "final training loss (no dropout)", higher_is_better=False)
            c.update(kind="loss")
            loss_comps.append(c)
    comps += loss_comps
    plain_rows = {r["optimizer"]: r for r in rows if not r["dropout"]}
    candidates = [n for n in OPTIMIZERS if (n, False) in ok]
    out = {"runs": rows, "run_rows": run_rows, "timing_rows": timing, "comparisons": comps,
           "curves": {_label(rs[0]): np.mean([r["train_loss"] for r in rs], axis=0).tolist()
                      for rs in arms.values() if all(len(r["train_loss"]) == len(
                          rs[0]["train_loss"]) for r in rs)},
           "val_acc_curves": {_label(rs[0]): np.mean([r["val_acc"] for r in rs], axis=0).tolist()
                              for rs in arms.values() if all(len(r["val_acc"]) == len(
                                  rs[0]["val_acc"]) for r in rs)},
           "dropout_helped": helped, "dropout_helped_text": _names(helped),
           "dropout_hurt_text": _names(hurt), "dropout_unsep_text": _names(acc_unsep),
           "dropout_helped_count": len(helped), "dropout_hurt_count": len(hurt),
           "dropout_unsep_count": len(acc_unsep),
           "time_slower_text": _names(slower), "time_faster_text": _names(faster),
           "time_unsep_text": _names(time_unsep), "time_slower_count": len(slower),
           "time_faster_count": len(faster), "time_unsep_count": len(time_unsep),
           "cpu_ratio_mean": float(np.mean([t["CPU ratio (with / without)"] for t in timing])),
           "wall_ratio_mean": float(np.mean([t["wall ratio (with / without)"] for t in timing])),
           "clock": clock, "time_metric": TIME_METRIC[clock],
           "diverged_runs": sorted({f"{_label(r)} (seed {r['seed']})" for r in runs
                                    if r["diverged"]}),
           "n_seeds": len(seeds)}
    if candidates:
        low = min(candidates, key=lambda n: plain_rows[n]["final train loss"])
        mine = [c for c in loss_comps if low in (c["a"], c["b"])]

        def low_wins(c):
            return c["verdict"] == ("a better" if c["a"] == low else "b better")
        beaten = [c["b"] if c["a"] == low else c["a"] for c in mine if low_wins(c)]
        tied = [c["b"] if c["a"] == low else c["a"] for c in mine
                if c["verdict"] == "not separable"]
        out.update(lowest_loss_plain=low,
                   lowest_loss_plain_value=plain_rows[low]["final train loss"],
                   lowest_beats_text=_names(beaten), lowest_ties_text=_names(tied),
                   loss_separable=sum(c["verdict"] != "not separable" for c in loss_comps),
                   loss_pairs=len(loss_comps))
    out["diverged_text"] = _names(out["diverged_runs"])
    return {f"{tag}_{k}": v for k, v in out.items()}


def summarize_noninverted(studies: List[Dict[str, Any]], inverted_accs: List[float], tag: str
                          ) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The weight-scaling check (first seed) and the paired accuracy comparisons (all seeds)."""
    first_study = studies[0]
    first = first_study["check_rows"][0]
    gap = first["rel. gap: mean over masks vs scaled weights"]
    noise = first["rel. Monte Carlo std error"]
    comps = [stats.compare("non-inverted, weights scaled by q",
                           [s["acc_scaled"] for s in studies],
                           "non-inverted, weights not scaled",
                           [s["acc_unscaled"] for s in studies], "test accuracy",
                           higher_is_better=True),
             stats.compare("inverted dropout (Adam)", inverted_accs,
                           "non-inverted, weights scaled by q", [s["acc_scaled"] for s in studies],
                           "test accuracy", higher_is_better=True)]
    for c in comps:
        c["kind"] = "noninverted"
    out = {"scaling_rows": first_study["check_rows"],
           "probe_examples": first_study["probe_examples"], "probe_seed": first_study["seed"],
           "layer1_gap": gap, "layer1_noise": noise,
           "layer1_unscaled_gap": first["rel. gap: mean over masks vs unscaled weights"],
           "layer1_within_noise": bool(gap <= 3 * noise),
           "deep_gaps": [float(r["rel. gap: mean over masks vs scaled weights"])
                         for r in first_study["check_rows"][1:]],
           "acc_scaled": float(np.mean([s["acc_scaled"] for s in studies])),
           "acc_unscaled": float(np.mean([s["acc_unscaled"] for s in studies])),
           "acc_mc": float(np.mean([s["acc_mc"] for s in studies])),
           "acc_inverted": float(np.mean(inverted_accs)),
           "noninv_diverged": any(s["diverged"] for s in studies),
           "scaling_sentence": stats.sentence(comps[0]),
           "inverted_sentence": stats.sentence(comps[1])}
    out["deep_gaps_text"] = ", ".join(f"{g:.2%}" for g in out["deep_gaps"])
    out["within_noise_word"] = "within" if out["layer1_within_noise"] else "outside"
    return {f"{tag}_{k}": v for k, v in out.items()}, comps


# -- report ----------------------------------------------------------------------------------------
def _t(template: str, tag: str) -> str:
    """Point a template's ``{T_...}`` keys at dataset ``tag``'s results."""
    return template.replace("{T_", "{" + tag + "_")


def _loss_figure(rep: Report, results: Dict[str, Any], tag: str, dropout: bool) -> None:
    fig, ax = new_figure(figsize=(6, 4))
    n_epochs = 1
    for i, name in enumerate(OPTIMIZERS):
        label = name + (" + dropout" if dropout else "")
        losses = results[f"{tag}_curves"].get(label)
        if losses is None:          # a diverged seed stopped early: no mean curve
            continue
        n_epochs = max(n_epochs, len(losses))
        ax.plot(range(1, len(losses) + 1), losses, marker="o" if len(losses) < 20 else None,
                color=f"C{i}", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    if n_epochs <= 20:
        ax.set_xticks(range(1, n_epochs + 1))
    ax.set_ylabel("training loss (cross-entropy, log scale)")
    setting = "with dropout 0.2 input / 0.5 hidden" if dropout else "without dropout"
    ax.set_title(f"{results[f'{tag}_used']}: {setting} (mean of {results['n_seeds']} seeds)")
    ax.legend()
    name = f"{tag}_loss_{'dropout' if dropout else 'no_dropout'}"
    rep.figure(name, fig, _t("Training loss per epoch on {T_used}, " + setting +
                             " (mean over seeds).", tag))


def _acc_figure(rep: Report, results: Dict[str, Any], tag: str) -> None:
    fig, ax = new_figure(figsize=(6, 4))
    n_epochs = 1
    for i, name in enumerate(OPTIMIZERS):
        for dropout, style in ((False, "-"), (True, "--")):
            label = name + (" + dropout" if dropout else "")
            acc = results[f"{tag}_val_acc_curves"].get(label)
            if acc is None:
                continue
            n_epochs = max(n_epochs, len(acc))
            ax.plot(range(1, len(acc) + 1), acc, style, color=f"C{i}", label=label)
    ax.set_xlabel("epoch")
    if n_epochs <= 20:
        ax.set_xticks(range(1, n_epochs + 1))
    ax.set_ylabel("validation accuracy (fraction)")
    ax.set_title(f"{results[f'{tag}_used']}: validation accuracy (mean of {results['n_seeds']} "
                 "seeds)")
    ax.legend(fontsize=7, ncol=2)
    rep.figure(f"{tag}_val_accuracy", fig,
               _t("Validation accuracy per epoch on {T_used} (held out of the training images; "
                  "dashed: with dropout; mean over seeds).", tag))


def report_dataset(rep: Report, results: Dict[str, Any], tag: str) -> None:
    t = lambda s: _t(s, tag)  # noqa: E731
    rep.section(rep.fmt(t("{T_wanted} (run on {T_used}: {T_n_train:,} training, {T_n_val:,} "
                          "validation, {T_n_test:,} test images)")))
    _loss_figure(rep, results, tag, dropout=False)
    _loss_figure(rep, results, tag, dropout=True)
    _acc_figure(rep, results, tag)
    rep.table(f"{tag}_test_accuracy", results[f"{tag}_runs"],
              t("Test accuracy after {T_epochs} epochs (the test split evaluated once, at the "
                "end), per optimizer and setting: mean and 95% CI over {n_seeds} seeds"))
    rep.table(f"{tag}_runs", results[f"{tag}_run_rows"], t("Every run (one row per seed)"))
    rep.table(f"{tag}_timing", results[f"{tag}_timing_rows"],
              t("Training seconds per epoch (mean over {T_epochs} epochs and {n_seeds} seeds), "
                "without vs with dropout: CPU seconds, wall seconds beside"))
    if results[f"{tag}_clock"] == "cpu":
        rep.text("CPU seconds are the process's CPU time over the training epochs (all its "
                 "threads; evaluation excluded): they do not grow while the process waits for a "
                 "core, so on a machine shared with other jobs they, not the wall seconds, "
                 "decide the timing comparisons. The two settings of each optimizer ran back to "
                 "back.")
    else:
        rep.text("The networks trained on the device named under Setup, so the timing "
                 "comparisons are on wall seconds over the training epochs (evaluation "
                 "excluded): device time, since every step waits for its loss. The CPU seconds "
                 "beside them are only the host's share (launching kernels, waiting). The two "
                 "settings of each optimizer ran back to back.")
    rep.section(rep.fmt(t("Non-inverted dropout and the weight-scaling rule ({T_used})")))
    rep.text(t("An MLP with the same sizes and dropout rates, but masks *not* scaled by 1/q in "
               "training, was trained with Adam for every seed (from the initial weights, with "
               "the batches and the dropout masks of that seed's Adam + dropout run: the two "
               "differ only in the scaling). For {T_probe_examples} test "
               "images (seed {T_probe_seed}'s net) the output of every Linear layer was averaged "
               "over {T_probe_masks:,} dropout masks and compared with one pass whose weights "
               "after each dropout are multiplied by the keep probability q (relative Frobenius "
               "gaps)."))
    rep.table(f"{tag}_weight_scaling", results[f"{tag}_scaling_rows"],
              t("Mean pre-activation over masks vs scaled-weights pre-activation"))
    rep.table(f"{tag}_noninverted_accuracy", [
        {"model": "inverted dropout (Adam), no test-time change",
         "test accuracy (mean over seeds)": results[f"{tag}_acc_inverted"]},
        {"model": "non-inverted dropout, weights scaled by q",
         "test accuracy (mean over seeds)": results[f"{tag}_acc_scaled"]},
        {"model": "non-inverted dropout, weights not scaled",
         "test accuracy (mean over seeds)": results[f"{tag}_acc_unscaled"]},
        {"model": f"non-inverted dropout, softmax averaged over {results['mc_masks']} masks",
         "test accuracy (mean over seeds)": results[f"{tag}_acc_mc"]}],
        t("Test accuracy, {T_used}"))
    rep.comparisons([c for c in results["comparisons"] if c["dataset"] == tag],
                    rep.fmt(t("Comparisons on {T_used} (paired by seed)")))


def conclusions(tag: str, results: Dict[str, Any]) -> List[str]:
    t = lambda s: _t(s, tag)  # noqa: E731
    out = [t("{T_used}, dropout vs no dropout, test accuracy over {n_seeds} seeds: dropout was "
             "better for {T_dropout_helped_count} of the 5 optimizers ({T_dropout_helped_text}), "
             "worse for {T_dropout_hurt_count} ({T_dropout_hurt_text}) and not separable for "
             "{T_dropout_unsep_count} ({T_dropout_unsep_text})."),
           t("{T_used}, {T_time_metric} with vs without dropout: dropout was "
             "slower for {T_time_slower_count} of the 5 optimizers ({T_time_slower_text}), "
             "faster for {T_time_faster_count} ({T_time_faster_text}) and not separable for "
             "{T_time_unsep_count} ({T_time_unsep_text}); " + (
                 "mean CPU ratio {T_cpu_ratio_mean:.2f}x (wall seconds: {T_wall_ratio_mean:.2f}x)."
                 if results[f"{tag}_clock"] == "cpu" else
                 "mean wall ratio {T_wall_ratio_mean:.2f}x (CPU seconds, the host's share: "
                 "{T_cpu_ratio_mean:.2f}x)."))]
    if f"{tag}_lowest_loss_plain" in results:
        out.append(t("{T_used}, final training loss without dropout: the lowest mean is "
                     "{T_lowest_loss_plain} ({T_lowest_loss_plain_value:.4f}); it is separably "
                     "lower than {T_lowest_beats_text} and not separable from "
                     "{T_lowest_ties_text}. {T_loss_separable} of the {T_loss_pairs} optimizer "
                     "pairs are separable."))
    out += [t("Weight scaling, first layer: the mean pre-activation over {T_probe_masks:,} masks "
              "differs from the scaled-weights one by {T_layer1_gap:.2%}, {T_within_noise_word} 3x "
              "the Monte Carlo standard error ({T_layer1_noise:.2%}); without the scaling the gap "
              "is {T_layer1_unscaled_gap:.2%}. Deeper layers (after a ReLU, where the rule is only "
              "an approximation): gaps {T_deep_gaps_text}."),
            t("Non-inverted dropout: {T_scaling_sentence}"),
            t("Inverted vs non-inverted dropout: {T_inverted_sentence}"),
            t("Diverged runs (loss NaN/inf; left out of the comparisons): {T_diverged_text}.")]
    return out


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
             "input, {p_hidden} on each hidden layer (inverted dropout). Seeds {seeds}: for one "
             "seed every run starts from the same initial weights and sees the same batches.")
    for tag in results["datasets_run"]:
        report_dataset(rep, results, tag)
    rep.section("Published result")
    rep.text("For comparison, " + PAPER + ". Numbers above are from this run only.")
    rep.conclusions([c for tag in results["datasets_run"] for c in conclusions(tag, results)])
    rep.write()


# -- the lab ------------------------------------------------------------------------------------
def run_dataset(wanted: str, config: Dict[str, Any], seeds: List[int], progress
                ) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The whole study on one dataset over the seeds: the optimizer grid and the non-inverted
    variant. Returns the tagged results and the comparisons."""
    tag = wanted
    data = load_study_data(wanted, config["n_train"], config["n_test"],
                           np.random.default_rng([config["seed"], 0]), config["val_fraction"],
                           config["seed"])
    _warm_up(data, config)
    runs, studies, inverted = [], [], []
    for seed in seeds:
        grid = run_optimizer_grid(data, config, seed, progress, tag)
        runs += grid
        inverted.append(next(r for r in grid if r["optimizer"] == "Adam" and r["dropout"])
                        ["test_acc"])
        studies.append(noninverted_study(data, config, seed, progress, tag,
                                         check=seed == seeds[0]))
    out = {f"{tag}_wanted": wanted, f"{tag}_used": data["used"],
           f"{tag}_n_train": len(data["X_train"]), f"{tag}_n_val": len(data["X_val"]),
           f"{tag}_n_test": len(data["X_test"]),
           f"{tag}_epochs": config["epochs"], f"{tag}_probe_masks": config["probe_masks"]}
    grid = summarize_grid(runs, seeds, tag, timing_clock(config))
    comps = grid.pop(f"{tag}_comparisons")
    out.update(grid)
    noninv, more = summarize_noninverted(studies, inverted, tag)
    out.update(noninv)
    comps += more
    for c in comps:
        c["dataset"] = tag
    return out, comps


def _warm_up(data: Dict[str, Any], config: Dict[str, Any]) -> None:
    """A few untimed, unreported steps of every optimizer with and without dropout, so that
    one-time costs (first calls, allocations, compiling each update's kernel: on "cuda" every
    optimizer has its own) do not land in a timed run."""
    n = min(len(data["X_train"]), 4 * config["batch_size"])
    small = {**data, "X_train": data["X_train"][:n], "y_train": data["y_train"][:n],
             "X_val": data["X_val"][:8], "y_val": data["y_val"][:8],
             "X_test": data["X_test"][:8], "y_test": data["y_test"][:8]}
    sizes = [int(np.prod(data["X_train"].shape[1:]))] + list(config["hidden"]) + [10]
    for name, (p_in, p_hid) in itertools.product(
            OPTIMIZERS, ((0.0, 0.0), (config["p_input"], config["p_hidden"]))):
        model = mlp(sizes, p_input=p_in, p_hidden=p_hid, rng=0)
        train_model(model, name, small, {**config, "epochs": 1}, 0, lambda it, **_: it,
                    "warm-up")


def _validate(config: Dict[str, Any]) -> None:
    """A clear ValueError for every bad config value, before any work."""
    check = Checker("optimizers", config)
    for key, lo in (("epochs", 1), ("batch_size", 1), ("n_train", 0), ("n_test", 0),
                    ("probe_examples", 1), ("probe_masks", 2), ("mc_masks", 1)):
        check.integer(key, lo)
    for key in ("lr_adagrad", "lr_rmsprop", "lr_rmsprop_nesterov", "lr_adadelta", "lr_adam"):
        check.number(key, 0, lo_open=True)
    check.number("weight_decay", 0)
    check.number("momentum", 0, 1, hi_open=True)
    check.number("rho_adadelta", 0, 1, hi_open=True)
    check.probability("p_input")
    check.probability("p_hidden")
    check.number("val_fraction", 0, 1, lo_open=True, hi_open=True)
    check.integers("hidden", 1)
    bad = [d for d in config["datasets"] if d not in ("mnist", "cifar10")]
    if not config["datasets"] or bad:
        raise ValueError(f"optimizers lab: datasets must be a non-empty list of mnist, cifar10; "
                         f"got {config['datasets']!r}")
    stats.seeds_of(config)


@lab(name="optimizers",
     study="AdaGrad, RMSProp, RMSProp+Nesterov, AdaDelta, Adam on a 2x1000 ReLU MLP, without and "
           "with dropout (Srivastava et al. 2014)",
     quick=QUICK, standard=STANDARD, full=FULL,
     expected_seconds={"quick": 20, "standard": 1900, "full": 40 * 3600,
                       "full_embedded": 5 * 3600})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    _validate(config)
    seeds = stats.seeds_of(config)
    results: Dict[str, Any] = {"datasets_run": [], "substitutions": [], "skipped": [],
                               "mc_masks": config["mc_masks"], "seeds": seeds,
                               "n_seeds": len(seeds), "comparisons": []}
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
        out, comps = run_dataset(wanted, config, seeds, progress)
        results.update(out)
        results["comparisons"] += comps
        results["datasets_run"].append(wanted)
    sizes = ["in"] + [str(h) for h in config["hidden"]] + ["10"]
    results.update({"sizes_text": "-".join(sizes), **{k: config[k] for k in (
        "batch_size", "weight_decay", "epochs", "p_input", "p_hidden")}})
    write_report(out_dir, config, results, notes)
    return results
