"""Lab ``cutout``: cutout (DeVries & Taylor 2017) and batch augmentation (Hoffer et al. 2019).

1. Cutout examples: two training images (of two classes) before and after a random
   ``cutout_size`` x ``cutout_size`` square is zeroed: CIFAR-10 when on disk, else the
   substitute's own images.
2. A CIFAR ResNet (He et al. 2016; ResNet-44 in the full preset) trained with the standard
   augmentation (random crop 32 with padding 4, horizontal flip) at batch ``batch_size``.
3. Batch augmentation with cutout: every image of a batch appears M times, each copy with its
   own crop + flip + cutout draw (``BatchAugment(M, ...)``), so a step sees M x batch_size
   images and an epoch has the same number of steps as the baseline, for each M in ``Ms``
   (M = 1 is cutout alone, the control that separates cutout from batch augmentation).

Every arm runs over the same seeds, paired by seed (one seed: the same initial weights and the
same batch order in every arm). ``val_fraction`` of the training images are held out
(stratified) as the validation split: the curves, the best epoch and the epochs / CPU
seconds to ``target_acc`` are read on it (on ``device`` "cuda": wall seconds, the device's
time, since the CPU seconds there are only the host's share; ``report.timing_clock``). The
test split is evaluated once per run, after the last epoch. Each cutout arm is compared with
the baseline, and each M > 1 with M = 1, by :func:`mlcvlab.labs.stats.compare` (paired
difference over seeds, 95% interval, verdict). Without CIFAR-10 on disk the lab runs a
stated, smaller substitute: the embedded ``fashion10k`` set padded to 3 x 32 x 32, a ResNet
of depth ``sub_depth`` and width ``sub_width``, ``sub_epochs`` epochs, M only up to
``sub_max_M`` and the target ``sub_target_acc``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from mlcvlab.data import (BatchAugment, Compose, Cutout, DataLoader, RandomCrop,
                          RandomHorizontalFlip, load_or_substitute, train_val_split)
from mlcvlab.labs import stats
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure, timing_clock
from mlcvlab.models import resnet_cifar
from mlcvlab.models.blocks import conv_bn_relu, init_conv_weights
from mlcvlab.models.resnet import CIFAR_DEPTHS, basic_block
from mlcvlab.nn import CrossEntropyLoss, GlobalAvgPool2d, Linear, Sequential, init
from mlcvlab.optim import SGD
from mlcvlab.train import Callback, Trainer, array_batches, evaluate

PAPER = ("The papers report: ResNet-44 on CIFAR-10 with the standard augmentation, 7.17% test "
         "error (He et al. 2016, Table 6); cutout on ResNet-18, 4.72% -> 3.99% test error "
         "(DeVries & Taylor 2017, Table 1).")

# full: the studies' protocol (one seed per arm there; 5 here), for a GPU or a cluster
_FULL = {"dataset": "cifar10", "depth": 44, "width": 16, "epochs": 100, "batch_size": 64,
         "device": "cpu",
         "Ms": [1, 2, 4, 8, 16, 32], "cutout_size": 16, "lr": 0.1, "momentum": 0.9,
         "weight_decay": 5e-4, "lr_milestones": [0.5, 0.75], "target_acc": 0.94,
         "n_train": 0, "n_test": 0, "val_fraction": 0.1, "sub_depth": 8, "sub_width": 16,
         "sub_epochs": 20, "sub_max_M": 8, "sub_target_acc": 0.9, "seed": 0, "seeds": 5}
# standard: <= 60 min on 2 cores, on CIFAR-10 (an 8,000-image subset) or its substitute
# (fashion10k, 8,000 training images): ResNet-8 of width 8, 15 epochs, baseline + M in {1, 4},
# 3 paired seeds. The same model and epochs either way (sub_* = the main settings).
# Estimated from one epoch per arm (10.1 / 8.0 / 32.7 CPU s for baseline / M=1 / M=4):
# 3 seeds x 15 epochs x ~51 CPU s ~ 40 min. The substitute's target (78%) is below the
# validation accuracy a one-seed check of cutout M=1 reached after the first lr decay (81%
# at epoch 9, 83% at epoch 12); the CIFAR subset's (55%) is a guess.
_STANDARD = {**_FULL, "depth": 8, "width": 8, "epochs": 15, "Ms": [1, 4], "n_train": 8000,
             "n_test": 0, "target_acc": 0.55, "sub_depth": 8, "sub_width": 8, "sub_epochs": 15,
             "sub_max_M": 4, "sub_target_acc": 0.78, "seeds": 3}
# quick: a smoke test (2 seeds so that intervals are computed; nothing is measured)
_QUICK = {**_FULL, "depth": 8, "width": 4, "epochs": 2, "batch_size": 16, "Ms": [1, 2],
          "lr": 0.05, "n_train": 320, "n_test": 256, "sub_depth": 8, "sub_width": 4,
          "sub_epochs": 2, "sub_max_M": 2, "seeds": 2}

BASELINE = "baseline"
ERROR = "test error (%)"


def arm_label(M: int) -> str:
    return f"cutout M={M}"


# -- config -------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            and math.isfinite(float(v)))


def validate_config(config: Dict[str, Any]) -> List[int]:
    """Raise a ValueError naming the key and its valid range, before any work; return seeds."""
    def need(ok: bool, key: str, valid: str) -> None:
        if not ok:
            raise ValueError(f"cutout lab: {key} must be {valid}, got {config[key]!r}")

    for key in ("depth", "sub_depth"):
        need(_is_int(config[key]) and config[key] >= 8 and (config[key] - 2) % 6 == 0, key,
             "6n + 2 with n >= 1 (8, 14, 20, 32, 44, ...)")
    for key in ("width", "sub_width", "epochs", "sub_epochs", "batch_size", "sub_max_M"):
        need(_is_int(config[key]) and config[key] >= 1, key, "an integer >= 1")
    for key in ("n_train", "n_test"):
        need(_is_int(config[key]) and config[key] >= 0, key, "an integer >= 0 (0: all images)")
    Ms = config["Ms"]
    need(isinstance(Ms, list) and all(_is_int(m) and m >= 1 for m in Ms)
         and len(set(Ms)) == len(Ms), "Ms", "a list of distinct integers >= 1 (may be empty)")
    need(_is_int(config["cutout_size"]) and 1 <= config["cutout_size"] <= 32, "cutout_size",
         "an integer in [1, 32] (pixels)")
    need(_is_num(config["lr"]) and config["lr"] > 0, "lr", "a finite number > 0")
    need(_is_num(config["momentum"]) and 0 <= config["momentum"] < 1, "momentum", "in [0, 1)")
    need(_is_num(config["weight_decay"]) and config["weight_decay"] >= 0, "weight_decay",
         "a finite number >= 0")
    ms = config["lr_milestones"]
    need(isinstance(ms, list) and all(_is_num(f) and 0 < f < 1 for f in ms)
         and list(ms) == sorted(ms), "lr_milestones",
         "an ascending list of epoch fractions in (0, 1)")
    for key in ("target_acc", "sub_target_acc"):
        need(_is_num(config[key]) and 0 < config[key] <= 1, key, "an accuracy in (0, 1]")
    need(_is_num(config["val_fraction"]) and 0 < config["val_fraction"] < 1, "val_fraction",
         "in (0, 1)")
    try:
        return stats.seeds_of(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cutout lab: seeds must be a count >= 1 or a list of distinct "
                         f"integers, got {config.get('seeds')!r} ({err})") from None


# -- model -------------------------------------------------------------------------------------
def cifar_resnet(depth: int, width: int = 16, num_classes: int = 10, in_channels: int = 3,
                 rng=None) -> Sequential:
    """The CIFAR ResNet of He et al. (2016), depth 6n + 2, stage widths (w, 2w, 4w).

    x: (N, in_channels, 32, 32) -> logits (N, num_classes). Width 16 and depth 20/32/44/56 is
    exactly :func:`mlcvlab.models.resnet_cifar`; other depths/widths (e.g. the 8-layer
    substitute) are built the same way from :func:`~mlcvlab.models.resnet.basic_block`.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"cutout: depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, ...), "
                         f"got {depth!r}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"cutout: width must be a positive int, got {width!r}")
    if width == 16 and depth in CIFAR_DEPTHS:
        return resnet_cifar(depth, num_classes, in_channels, rng=rng)
    n = (depth - 2) // 6
    layers = list(conv_bn_relu(in_channels, width, 3, 1, 1, rng=rng))
    channels = width
    for stage, w in enumerate((width, 2 * width, 4 * width)):
        for j in range(n):
            layers.append(basic_block(channels, w, 2 if stage > 0 and j == 0 else 1, "A", rng))
            channels = w
    model = Sequential(*layers, GlobalAvgPool2d(), Linear(channels, num_classes, rng=rng))
    return init_conv_weights(model, init.he_normal, rng)


# -- data ---------------------------------------------------------------------------------------
def _subset(X, y, n: int, gen: np.random.Generator):
    """n random examples (all of them when n is 0 or too large)."""
    if n <= 0 or n >= len(X):
        return X, y
    idx = np.sort(gen.permutation(len(X))[:n])
    return X[idx], y[idx]


def load_data(config: Dict[str, Any]) -> Dict[str, Any]:
    """Train / validation / test images (N, 3, 32, 32), standardized per channel by the
    training part.

    ``n_train`` random images of the training split (0: all) are split into training and a
    stratified validation part (``val_fraction``); the test split (``n_test`` random images,
    0: all) is only evaluated once per run, at the end. Returns the arrays, the name used and
    the note (empty unless the dataset was substituted).
    """
    gen = np.random.default_rng([config["seed"], 0])
    Xtr, ytr, used, note = load_or_substitute(config["dataset"], "train")
    Xte, yte, _, _ = load_or_substitute(config["dataset"], "test")
    Xtr, ytr = _subset(Xtr, np.asarray(ytr), config["n_train"], gen)
    Xtr, ytr, Xva, yva = train_val_split(Xtr, ytr, config["val_fraction"], seed=config["seed"])
    raw_train, raw_labels = np.asarray(Xtr[:64], dtype=np.float32), np.asarray(ytr[:64])
    Xte, yte = _subset(Xte, np.asarray(yte), config["n_test"], gen)
    mean = Xtr.mean(axis=(0, 2, 3), keepdims=True)
    std = Xtr.std(axis=(0, 2, 3), keepdims=True) + 1e-8
    standard = [((X - mean) / std).astype(np.float32) for X in (Xtr, Xva, Xte)]
    return {"X_train": standard[0], "y_train": np.asarray(ytr, dtype=np.int64),
            "X_val": standard[1], "y_val": np.asarray(yva, dtype=np.int64),
            "X_test": standard[2], "y_test": np.asarray(yte, dtype=np.int64),
            "used": used, "note": note, "raw_train": raw_train, "raw_labels": raw_labels}


def effective_settings(config: Dict[str, Any], substituted: bool) -> Dict[str, Any]:
    """Depth, width, epochs, Ms and target actually run: the study's, or the substitute's."""
    if not substituted:
        return {"depth": config["depth"], "width": config["width"], "epochs": config["epochs"],
                "Ms": list(config["Ms"]), "target_acc": config["target_acc"]}
    Ms = [m for m in config["Ms"] if m <= config["sub_max_M"]]
    return {"depth": config["sub_depth"], "width": config["sub_width"],
            "epochs": config["sub_epochs"], "Ms": Ms, "target_acc": config["sub_target_acc"]}


# -- cutout examples ----------------------------------------------------------------------------
def example_images(data: Dict[str, Any]) -> Tuple[np.ndarray, List[str], str]:
    """Two training images of two different classes for the cutout figure, from the data the
    lab trains on: CIFAR-10 when on disk, else its labelled substitute."""
    y = data["raw_labels"]
    first = 0
    second = int(np.argmax(y != y[0])) if np.any(y != y[0]) else 1
    imgs = data["raw_train"][[first, second]]
    source = "CIFAR-10" if not data["note"] else f"{data['used']} (CIFAR-10 not on disk)"
    name = "CIFAR-10" if not data["note"] else data["used"]
    return imgs, [f"{name} train #{first}", f"{name} train #{second}"], source


def cutout_figure(rep: Report, imgs: np.ndarray, names: List[str], config, seed: int) -> None:
    """Rows: the images; columns: original, two cutout draws, crop + flip + cutout."""
    size = config["cutout_size"]
    cut = Cutout(size, rng=np.random.default_rng([seed, 3]))
    full = Compose([RandomCrop(32, 4, rng=np.random.default_rng([seed, 4])),
                    RandomHorizontalFlip(0.5, rng=np.random.default_rng([seed, 5])),
                    Cutout(size, rng=np.random.default_rng([seed, 6]))])
    columns = [("original", imgs), (f"cutout {size}x{size} (draw 1)", cut(imgs)),
               (f"cutout {size}x{size} (draw 2)", cut(imgs)), ("crop + flip + cutout", full(imgs))]
    fig, axes = new_figure(nrows=len(imgs), ncols=len(columns), figsize=(9, 2.4 * len(imgs)))
    for c, (title, batch) in enumerate(columns):
        for r in range(len(imgs)):
            ax = axes[r, c]
            ax.imshow(np.clip(batch[r].transpose(1, 2, 0), 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(names[r], fontsize=8)
    fig.suptitle(f"Cutout examples: {size}x{size} squares zeroed at random positions")
    rep.figure("cutout_examples", fig, "Cutout examples ({examples_source}): the zeroed square "
               "is centred at a uniformly random pixel and may be clipped by the border.")


# -- training -----------------------------------------------------------------------------------
class StepDecay(Callback):
    """lr = lr0 * 0.1 ** (number of milestones passed); milestones are epoch fractions."""

    def __init__(self, lr0: float, milestones: List[float], epochs: int):
        self.lr0 = lr0
        self.epochs_at = [int(round(f * epochs)) for f in milestones]

    def on_epoch_begin(self, trainer, epoch):
        trainer.optimizer.lr = self.lr0 * 0.1 ** sum(epoch > m for m in self.epochs_at)


def make_transform(M: int, cutout: bool, config: Dict[str, Any], gen: np.random.Generator):
    """crop 32 pad 4 + flip (+ cutout), wrapped in BatchAugment(M) when cutout runs are made."""
    steps = [RandomCrop(32, 4, rng=gen), RandomHorizontalFlip(0.5, rng=gen)]
    if not cutout:
        return Compose(steps)
    return BatchAugment(M, Compose(steps + [Cutout(config["cutout_size"], rng=gen)]))


def train_run(label: str, M: int, cutout: bool, data, config, settings, seed: int, progress
              ) -> Dict[str, Any]:
    """Train one arm for one seed: the seed fixes the initial weights, the batch order and the
    augmentation stream, so the arms of one seed are paired. Validation curves per epoch; the
    test split once, after the last epoch."""
    model = cifar_resnet(settings["depth"], settings["width"],
                         rng=np.random.default_rng([seed, 1])).to(config["device"])
    opt = SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
              weight_decay=config["weight_decay"], decay_mask=True)
    loader = DataLoader(data["X_train"], data["y_train"], config["batch_size"], seed=seed + 2,
                        transform=make_transform(M, cutout, config,
                                                 np.random.default_rng([seed, 7])))
    epochs = settings["epochs"]
    trainer = Trainer(model, CrossEntropyLoss(), opt,
                      callbacks=[StepDecay(config["lr"], config["lr_milestones"], epochs)])
    val = list(array_batches(data["X_val"], data["y_val"], 256))
    for _ in progress(range(epochs), desc=f"{label} seed {seed}"):
        trainer.fit(loader, 1, val_loader=val)
    test = evaluate(model, CrossEntropyLoss(), array_batches(data["X_test"], data["y_test"], 256))
    out = summarize_run(label, M, cutout, trainer.history.records, settings["target_acc"])
    out.update({"seed": seed, "test_acc": test["acc"], "test_loss": test["loss"],
                "test_error": 1.0 - test["acc"], "n_test_evaluated": len(data["y_test"]),
                "images_per_step": M * config["batch_size"] if cutout else config["batch_size"]})
    return out


def _warm_up(plan, data, config, settings) -> None:
    """One untimed training step and one evaluation of every arm's shape, so that one-time
    costs (compiling kernels, first allocations) are not charged to the first arm timed."""
    model = cifar_resnet(settings["depth"], settings["width"],
                         rng=np.random.default_rng(0)).to(config["device"])
    trainer = Trainer(model, CrossEntropyLoss(), SGD(model.parameters(), lr=0.0))
    n = min(config["batch_size"], len(data["X_train"]))
    for _, M, cut in plan:
        transform = make_transform(M, cut, config, np.random.default_rng(0))
        xb, yb = transform(data["X_train"][:n], data["y_train"][:n])
        trainer.train_step(xb, yb)
    evaluate(model, CrossEntropyLoss(), [(data["X_val"][:n], data["y_val"][:n])])


def summarize_run(label: str, M: int, cutout: bool, history: List[Dict[str, Any]],
                  target: float) -> Dict[str, Any]:
    """Validation curve, best validation accuracy, first epoch at ``target`` on the validation
    split and the training CPU (and wall) seconds spent until then."""
    acc = np.array([r["val_acc"] for r in history], dtype=np.float64)
    wall = np.cumsum([r["seconds"] for r in history])
    cpu = np.cumsum([r.get("cpu_seconds", r["seconds"]) for r in history])
    best = int(np.argmax(acc))
    hit = np.flatnonzero(acc >= target)
    reached = bool(hit.size)
    first = int(hit[0]) if reached else None
    return {"label": label, "M": M, "cutout": cutout,
            "val_error": (1.0 - acc).tolist(), "train_loss": [r["train_loss"] for r in history],
            "lr": [r["lr"] for r in history], "epoch_seconds": [r["seconds"] for r in history],
            "epoch_cpu_seconds": [r.get("cpu_seconds", r["seconds"]) for r in history],
            "best_val_acc": float(acc[best]), "best_val_error": float(1.0 - acc[best]),
            "best_epoch": best + 1, "final_val_error": float(1.0 - acc[-1]), "reached": reached,
            "epochs_to_target": first + 1 if reached else None,
            "cpu_seconds_to_target": float(cpu[first]) if reached else None,
            "wall_seconds_to_target": float(wall[first]) if reached else None,
            "cpu_seconds_total": float(cpu[-1]), "wall_seconds_total": float(wall[-1])}


# -- summaries ---------------------------------------------------------------------------------
def _mean(values: List[Optional[float]]) -> Optional[float]:
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


# the training-time words of each clock (report.timing_clock): "cpu" on the CPU, "wall" (device
# time) on "cuda"
CLOCK_UNIT = {"cpu": "CPU seconds", "wall": "wall seconds (device time)"}
CLOCK_COLUMN = {"cpu": "CPU s", "wall": "wall s"}


def arm_row(runs: List[Dict[str, Any]], base: float, clock: str = "cpu") -> Dict[str, Any]:
    """One table row: means over seeds, the test error's 95% interval, per-seed test errors;
    the total training time relative to the baseline's (``base``) on ``clock``."""
    err = stats.summarize([100 * r["test_error"] for r in runs])
    lo, hi = err["ci95"]
    reached = sum(r["reached"] for r in runs)
    return {"run": runs[0]["label"], "M": runs[0]["M"] if runs[0]["cutout"] else 1,
            "images per step": runs[0]["images_per_step"], "seeds": len(runs),
            "test error %": err["mean"],
            "test error % 95% CI": "n/a (1 seed)" if lo is None else f"[{lo:.2f}, {hi:.2f}]",
            "test error % per seed": ", ".join(f"{100 * r['test_error']:.2f}" for r in runs),
            "best val error %": 100 * float(np.mean([r["best_val_error"] for r in runs])),
            "best epoch (val)": float(np.mean([r["best_epoch"] for r in runs])),
            "final val error %": 100 * float(np.mean([r["final_val_error"] for r in runs])),
            "seeds reaching target": f"{reached}/{len(runs)}",
            "epochs to target": _mean([r["epochs_to_target"] for r in runs]) or "n/a",
            "CPU s to target": _mean([r["cpu_seconds_to_target"] for r in runs]) or "n/a",
            "wall s to target": _mean([r["wall_seconds_to_target"] for r in runs]) or "n/a",
            "CPU s total": float(np.mean([r["cpu_seconds_total"] for r in runs])),
            "wall s total": float(np.mean([r["wall_seconds_total"] for r in runs])),
            f"{CLOCK_COLUMN[clock]} total / baseline":
                float(np.mean([r[f"{clock}_seconds_total"] for r in runs])) / base}


def time_metrics(clock: str = "cpu") -> Tuple[str, str]:
    """The names of the two time comparisons on ``clock``: (to the target, all epochs)."""
    unit = CLOCK_UNIT[clock]
    return (f"training {unit} to the validation target", f"training {unit} (all epochs)")


def comparisons(arms: Dict[str, List[Dict[str, Any]]], clock: str = "cpu"
                ) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Each cutout arm vs the baseline and each M > 1 vs M = 1 on the test error; M > 1 vs
    M = 1 on epochs and training seconds (on ``clock``: "cpu", or "wall" on a device run) to
    the validation target when every seed of both reached it, and on the total training
    seconds. Also the sentences saying which target comparisons could not be made."""
    out, skipped = [], []

    def add(a: str, b: str, field: str, metric: str, scale: float = 1.0) -> None:
        out.append(stats.compare(a, [scale * r[field] for r in arms[a]], b,
                                 [scale * r[field] for r in arms[b]], metric,
                                 higher_is_better=False))

    cut = [k for k in arms if k != BASELINE]
    one = arm_label(1)
    to_target, total = time_metrics(clock)
    for k in cut:
        add(k, BASELINE, "test_error", ERROR, 100.0)
    if one in arms:
        for k in cut:
            if k != one:
                add(k, one, "test_error", ERROR, 100.0)
        for k in cut:
            if k == one:
                continue
            if all(r["reached"] for r in arms[k] + arms[one]):
                add(k, one, "epochs_to_target", "epochs to the validation target")
                add(k, one, f"{clock}_seconds_to_target", to_target)
            else:
                skipped.append(f"{k} vs {one}: not every seed of both reached the validation "
                               f"target, so epochs and {CLOCK_UNIT[clock]} to it are not "
                               "compared.")
            add(k, one, f"{clock}_seconds_total", total)
    return out, skipped


# -- report -------------------------------------------------------------------------------------
MARKERS = ("o", "s", "^", "v", "D", "P", "X")


def _colours(labels: List[str]) -> Dict[str, str]:
    return {label: f"C{i}" for i, label in enumerate(labels)}


def _error_figure(rep: Report, arms: Dict[str, List[Dict[str, Any]]], clock: str = "cpu"
                  ) -> None:
    """Validation error vs epoch and vs cumulative training seconds on ``clock``: mean over
    seeds, band min..max; one colour per arm in both panels."""
    from matplotlib.ticker import MaxNLocator

    colours = _colours(list(arms))
    fig, (ax1, ax2) = new_figure(ncols=2, figsize=(12, 4.5))
    for label, runs in arms.items():
        err = 100 * np.asarray([r["val_error"] for r in runs])
        ep = np.arange(1, err.shape[1] + 1)
        key = "epoch_cpu_seconds" if clock == "cpu" else "epoch_seconds"
        cpu = np.mean([np.cumsum(r[key]) for r in runs], axis=0)
        marker = MARKERS[list(arms).index(label) % len(MARKERS)]
        seeds = f"{len(runs)} seed{'s' if len(runs) != 1 else ''}"
        for ax, x in ((ax1, ep), (ax2, cpu)):
            ax.plot(x, err.mean(axis=0), marker=marker, ls="-", ms=4, color=colours[label],
                    label=f"{label} ({seeds})")
            if len(runs) > 1:
                ax.fill_between(x, err.min(axis=0), err.max(axis=0), color=colours[label],
                                alpha=0.15, lw=0)
    ax1.set_xlabel("epoch")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_title("Validation error per epoch")
    ax2.set_xlabel(f"training {CLOCK_UNIT[clock]} (cumulative, mean over seeds)")
    ax2.set_title("Validation error vs training " + ("CPU time" if clock == "cpu" else
                                                     "wall time (device)"))
    for ax in (ax1, ax2):
        ax.set_ylabel("validation error (%)")
        ax.axhline(100 * (1 - rep.results["target_acc"]), color="0.5", ls=":", lw=1,
                   label="target")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Cutout and batch augmentation on {rep.results['dataset_used']}: "
                 "mean over seeds (band: min to max)")
    rep.figure("val_error", fig, "Validation error (split held out of the training data) vs "
               f"epoch and vs cumulative training {CLOCK_UNIT[clock]}, per arm "
               "({dataset_used}); dotted: the target error.")


def _differences(config: Dict[str, Any], results: Dict[str, Any]) -> List[str]:
    """How this run differs from the papers' protocol (ResNet-44, CIFAR-10, 50,000 images)."""
    diffs = []
    if results["substituted"]:
        diffs.append("data: the fashion10k substitute, not CIFAR-10")
    if (results["depth"], results["width"]) != (_FULL["depth"], _FULL["width"]):
        diffs.append(f"model: {results['model_name']} (study: ResNet-{_FULL['depth']}, "
                     f"widths {_FULL['width']}, {2 * _FULL['width']}, {4 * _FULL['width']})")
    if results["epochs"] != _FULL["epochs"]:
        diffs.append(f"{results['epochs']} epochs (study: {_FULL['epochs']})")
    if results["Ms"] != _FULL["Ms"]:
        diffs.append(f"M in {results['Ms']} (study: {_FULL['Ms']})")
    if not results["substituted"] and config["n_train"]:
        diffs.append(f"{results['n_train']:,} training images (study: 50,000)")
    if results["target_acc"] != _FULL["target_acc"]:
        diffs.append(f"target {100 * results['target_acc']:g}% validation accuracy (study: "
                     f"{100 * _FULL['target_acc']:g}%)")
    return diffs


def write_report(out_dir, config, results, images) -> None:
    rep = Report(out_dir, "Cutout and batch augmentation", results)
    if results["substituted"]:
        rep.note_substitution("CIFAR-10", "the embedded fashion10k subset (Fashion-MNIST, "
                              "zero-padded to 32x32, repeated over 3 channels)")
    diffs = _differences(config, results)
    if diffs:
        rep.note("This run differs from the papers' protocol: " + "; ".join(diffs) + ". Its "
                 "numbers are for this smaller setting, not the papers'.")
    rep.setup(config)
    rep.text("Data: {n_train:,} training and {n_val:,} validation images (the validation split "
             "is held out of the training images, stratified) and {n_test:,} test images of "
             "{dataset_used}, standardized per channel with the training mean and std, so a "
             "cutout square (value 0) is set to the mean. Model: {model_name} "
             "({n_params:,} parameters). SGD, momentum {momentum}, weight decay "
             "{weight_decay} on weights only, lr {lr} divided by 10 at epochs {milestone_epochs}; "
             "{epochs} epochs at batch {batch_size}. Every arm runs over the {n_seeds} seeds "
             "{seeds}, paired by seed: for one seed every arm starts from the same weights and "
             "sees the same batch order. Curves, the best epoch and the time to the target are "
             "read on the validation split; the test split is evaluated once per run, after the "
             "last epoch, and nothing is selected on it.")
    rep.section("Cutout examples")
    cutout_figure(rep, images[0], images[1], config, config["seed"])
    rep.section("Standard augmentation vs batch augmentation with cutout")
    rep.text("baseline: random crop 32 (padding 4) + horizontal flip. 'cutout M=m': each image "
             "of the batch of {batch_size} repeated m times, each copy with its own crop, flip "
             "and {cutout_size}x{cutout_size} cutout (Hoffer et al. 2019), so a step sees "
             "m x {batch_size} images and an epoch has the same {steps_per_epoch} steps; M=1 is "
             "cutout alone. Target: {target_pct:g}% validation accuracy. Times are training "
             "time only (no evaluation): " + (
                 "CPU seconds of the process (all its threads), with wall seconds beside them."
                 if results["clock"] == "cpu" else
                 "on the device named under Setup the time comparisons read wall seconds (device "
                 "time: every step waits for its loss); the CPU seconds beside them are the "
                 "host's share."))
    rep.table("runs", results["rows"], "Per arm: test error (mean over seeds, 95% t-interval), "
              "validation error, time to the validation target (mean over seeds, given when "
              "every seed reached it)")
    rep.comparisons(results["comparisons"], heading="Comparisons (paired by seed, 95% intervals)")
    _error_figure(rep, results["arms"], results["clock"])
    lines = [f"{_WHAT.get(c['metric'], c['metric'])}: " + stats.sentence(c)
             for c in results["comparisons"]]
    lines += results["skipped_comparisons"]
    lines.append(PAPER + " This run's numbers are for {dataset_used} with {model_name}.")
    rep.conclusions(lines)
    rep.explanation("DeVries & Taylor (2017) argue that cutout makes the network use the whole "
                    "image rather than one discriminative part; Hoffer et al. (2019) argue that "
                    "M augmented copies of each image in a batch reduce the variance of the "
                    "gradient from the augmentation and improve generalization, so the target "
                    "is reached in fewer epochs at M times the compute per step. This run tests "
                    "only the comparisons listed above.")
    rep.write()


_WHAT = {ERROR: "Test error after the last epoch",
         "epochs to the validation target": "Epochs to the target",
         time_metrics("cpu")[0]: "CPU time to the target",
         time_metrics("cpu")[1]: "Training cost",
         time_metrics("wall")[0]: "Wall time (device) to the target",
         time_metrics("wall")[1]: "Training cost (device wall time)"}


@lab(name="cutout",
     study="DeVries & Taylor (2017) cutout; Hoffer et al. (2019) batch augmentation; "
           "ResNet-44 on CIFAR-10",
     quick=_QUICK, standard=_STANDARD, full=_FULL,
     expected_seconds={"quick": 30, "standard": 3000, "full": 15_000_000,
                       "full_embedded": 30_000})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    """Cutout figure, then the baseline and the batch-augmentation arms over the seeds."""
    seeds = validate_config(config)
    data = load_data(config)
    substituted = bool(data["note"])
    settings = effective_settings(config, substituted)
    images = example_images(data)
    plan = [(BASELINE, 1, False)] + [(arm_label(m), m, True) for m in settings["Ms"]]
    _warm_up(plan, data, config, settings)
    arms: Dict[str, List[Dict[str, Any]]] = {label: [] for label, _, _ in plan}
    for seed in seeds:
        for label, M, cut in plan:
            arms[label].append(train_run(label, M, cut, data, config, settings, seed, progress))
    results = summarize(arms, config, settings, data, substituted, seeds)
    results["examples_source"] = images[2]
    write_report(out_dir, config, results, images)
    return results


def summarize(arms, config, settings, data, substituted, seeds) -> Dict[str, Any]:
    """The results dict: settings, per-seed runs, table rows and the comparisons."""
    n_train = len(data["y_train"])
    model = cifar_resnet(settings["depth"], settings["width"], rng=0)
    clock = timing_clock(config)
    base = float(np.mean([r[f"{clock}_seconds_total"] for r in arms[BASELINE]]))
    comps, skipped = comparisons(arms, clock)
    return {
        "dataset_wanted": config["dataset"], "dataset_used": data["used"],
        "data_note": data["note"], "substituted": substituted, **settings,
        "model_name": f"ResNet-{settings['depth']} (widths {settings['width']}, "
                      f"{2 * settings['width']}, {4 * settings['width']})",
        "n_params": model.num_parameters(), "n_train": n_train, "n_val": len(data["y_val"]),
        "n_test": len(data["y_test"]), "seeds": seeds, "n_seeds": len(seeds),
        "batch_size": config["batch_size"], "cutout_size": config["cutout_size"],
        "lr": config["lr"], "momentum": config["momentum"],
        "weight_decay": config["weight_decay"],
        "milestone_epochs": [int(round(f * settings["epochs"])) for f in config["lr_milestones"]],
        "steps_per_epoch": -(-n_train // config["batch_size"]),
        "target_pct": 100 * settings["target_acc"],
        "arms": arms, "rows": [arm_row(runs, base, clock) for runs in arms.values()],
        "clock": clock,
        "comparisons": comps, "skipped_comparisons": skipped, "paper": PAPER}
