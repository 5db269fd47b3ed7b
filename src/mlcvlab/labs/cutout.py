"""Lab ``cutout``: cutout (DeVries & Taylor 2017) and batch augmentation (Hoffer et al. 2019).

1. Cutout examples: two images before and after a random ``cutout_size`` x ``cutout_size``
   square is zeroed (CIFAR-10 training images when on disk, else two of scikit-learn's sample
   photographs, area-averaged down to 32 x 32).
2. A CIFAR ResNet (He et al. 2016; ResNet-44 in the full preset) trained with the standard
   augmentation (random crop 32 with padding 4, horizontal flip) at batch ``batch_size``.
3. Batch augmentation with cutout: every image of a batch appears M times, each copy with its
   own crop + flip + cutout draw (``BatchAugment(M, ...)``), so a step sees M x batch_size
   images and an epoch has the same number of steps as the baseline, for each M in ``Ms``
   (M = 1 is cutout alone, the control that separates cutout from batch augmentation).

For every run: validation error per epoch, the first epoch (and training seconds) at which
validation accuracy reaches ``target_acc`` (94% in the study), or the best accuracy reached.
Without CIFAR-10 on disk the lab runs a stated, smaller substitute: the embedded
``fashion10k`` set padded to 3 x 32 x 32, a ResNet of depth ``sub_depth`` and width
``sub_width``, ``sub_epochs`` epochs and M only up to ``sub_max_M``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from mlcvlab.data import (BatchAugment, Compose, Cutout, DataLoader, RandomCrop,
                          RandomHorizontalFlip, load_or_substitute)
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure
from mlcvlab.models import resnet_cifar
from mlcvlab.models.blocks import conv_bn_relu, init_conv_weights
from mlcvlab.models.resnet import CIFAR_DEPTHS, basic_block
from mlcvlab.nn import CrossEntropyLoss, GlobalAvgPool2d, Linear, Sequential, init
from mlcvlab.optim import SGD
from mlcvlab.train import Callback, Trainer, array_batches

PAPER = ("The papers report: ResNet-44 on CIFAR-10 with the standard augmentation, 7.17% test "
         "error (He et al. 2016, Table 6); cutout on ResNet-18, 4.72% -> 3.99% test error "
         "(DeVries & Taylor 2017, Table 1).")

_FULL = {"dataset": "cifar10", "depth": 44, "width": 16, "epochs": 100, "batch_size": 64,
         "Ms": [1, 2, 4, 8, 16, 32], "cutout_size": 16, "lr": 0.1, "momentum": 0.9,
         "weight_decay": 5e-4, "lr_milestones": [0.5, 0.75], "target_acc": 0.94,
         "n_train": 0, "n_val": 0, "sub_depth": 8, "sub_width": 16, "sub_epochs": 20,
         "sub_max_M": 8, "seed": 0}
_QUICK = {**_FULL, "depth": 8, "width": 4, "epochs": 2, "batch_size": 16, "Ms": [2, 4],
          "lr": 0.05, "n_train": 256, "n_val": 256, "sub_depth": 8, "sub_width": 4,
          "sub_epochs": 2, "sub_max_M": 4}


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
    if n <= 0 or n >= len(X):
        return X, y
    idx = np.sort(gen.permutation(len(X))[:n])
    return X[idx], y[idx]


def load_data(config: Dict[str, Any]) -> Dict[str, Any]:
    """Train/validation images (N, 3, 32, 32), standardized per channel by the training set.

    The validation set is the test split. Returns the arrays, the name used and the note
    (empty unless the dataset was substituted).
    """
    gen = np.random.default_rng([config["seed"], 0])
    Xtr, ytr, used, note = load_or_substitute(config["dataset"], "train")
    Xva, yva, _, _ = load_or_substitute(config["dataset"], "test")
    raw_train, raw_labels = np.asarray(Xtr[:64], dtype=np.float32), np.asarray(ytr[:64])
    Xtr, ytr = _subset(Xtr, ytr, config["n_train"], gen)
    Xva, yva = _subset(Xva, yva, config["n_val"], gen)
    mean = Xtr.mean(axis=(0, 2, 3), keepdims=True)
    std = Xtr.std(axis=(0, 2, 3), keepdims=True) + 1e-8
    standard = [((X - mean) / std).astype(np.float32) for X in (Xtr, Xva)]
    return {"X_train": standard[0], "y_train": np.asarray(ytr, dtype=np.int64),
            "X_val": standard[1], "y_val": np.asarray(yva, dtype=np.int64),
            "used": used, "note": note, "raw_train": raw_train,
            "raw_labels": raw_labels}


def effective_settings(config: Dict[str, Any], substituted: bool) -> Dict[str, Any]:
    """Depth, width, epochs and Ms actually run: the study's, or the substitute's."""
    if not substituted:
        return {"depth": config["depth"], "width": config["width"], "epochs": config["epochs"],
                "Ms": list(config["Ms"])}
    Ms = [m for m in config["Ms"] if m <= config["sub_max_M"]]
    return {"depth": config["sub_depth"], "width": config["sub_width"],
            "epochs": config["sub_epochs"], "Ms": Ms}


# -- cutout examples ----------------------------------------------------------------------------
def sample_images_32() -> Tuple[np.ndarray, List[str]]:
    """scikit-learn's two sample photographs as (2, 3, 32, 32) float32 in [0, 1].

    Each (427, 640, 3) photo is centre-cropped to 416 x 416 and averaged over 13 x 13 blocks
    (area downsampling, one reshape, no loop over pixels).
    """
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    imgs = np.stack(data.images).astype(np.float32) / 255.0          # (2, 427, 640, 3)
    side, block = 416, 13
    top, left = (imgs.shape[1] - side) // 2, (imgs.shape[2] - side) // 2
    crop = imgs[:, top:top + side, left:left + side]                 # (2, 416, 416, 3)
    small = crop.reshape(2, 32, block, 32, block, 3).mean(axis=(2, 4))
    names = [str(f).rsplit("/", 1)[-1] for f in data.filenames]
    return np.ascontiguousarray(small.transpose(0, 3, 1, 2)), names


def example_images(data: Dict[str, Any]) -> Tuple[np.ndarray, List[str], str]:
    """Two images for the cutout figure: CIFAR-10 ones when on disk, else sklearn's photos."""
    if not data["note"]:
        y = data["raw_labels"]
        first = 0
        second = int(np.argmax(y != y[0])) if np.any(y != y[0]) else 1
        imgs = data["raw_train"][[first, second]]
        return imgs, [f"CIFAR-10 train #{first}", f"CIFAR-10 train #{second}"], "CIFAR-10"
    imgs, names = sample_images_32()
    return imgs, names, "scikit-learn sample images (CIFAR-10 not on disk)"


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


def train_run(label: str, M: int, cutout: bool, data, config, settings, progress
              ) -> Dict[str, Any]:
    """Train one model (same initial weights and batch order for every run); per-epoch history."""
    seed = config["seed"]
    model = cifar_resnet(settings["depth"], settings["width"],
                         rng=np.random.default_rng([seed, 1]))
    opt = SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
              weight_decay=config["weight_decay"], decay_mask=True)
    loader = DataLoader(data["X_train"], data["y_train"], config["batch_size"], seed=seed + 2,
                        transform=make_transform(M, cutout, config,
                                                 np.random.default_rng([seed, 7, M])))
    epochs = settings["epochs"]
    trainer = Trainer(model, CrossEntropyLoss(), opt,
                      callbacks=[StepDecay(config["lr"], config["lr_milestones"], epochs)])
    val = list(array_batches(data["X_val"], data["y_val"], 256))
    for _ in progress(range(epochs), desc=label):
        trainer.fit(loader, 1, val_loader=val)
    return summarize_run(label, M, cutout, trainer.history.records, config["target_acc"])


def summarize_run(label: str, M: int, cutout: bool, history: List[Dict[str, Any]],
                  target: float) -> Dict[str, Any]:
    """Best accuracy, first epoch at ``target`` and the training seconds spent until then."""
    acc = np.array([r["val_acc"] for r in history], dtype=np.float64)
    seconds = np.cumsum([r["seconds"] for r in history])
    best = int(np.argmax(acc))
    hit = np.flatnonzero(acc >= target)
    reached = bool(hit.size)
    stop = int(hit[0]) if reached else best
    return {"label": label, "M": M, "cutout": cutout,
            "val_error": (1.0 - acc).tolist(), "train_loss": [r["train_loss"] for r in history],
            "lr": [r["lr"] for r in history], "epoch_seconds": [r["seconds"] for r in history],
            "best_acc": float(acc[best]), "best_error": float(1.0 - acc[best]),
            "best_epoch": best + 1, "final_error": float(1.0 - acc[-1]), "reached": reached,
            "epochs_to_target": stop + 1 if reached else None,
            "seconds_to_target_or_best": float(seconds[stop]),
            "seconds_total": float(seconds[-1])}


# -- report -------------------------------------------------------------------------------------
def _rows(runs: Dict[str, Dict[str, Any]], target: float) -> List[Dict[str, Any]]:
    rows = []
    for r in runs.values():
        rows.append({"run": r["label"], "M": r["M"], "images per step": r["images_per_step"],
                     "best val error %": 100 * r["best_error"], "best epoch": r["best_epoch"],
                     "final val error %": 100 * r["final_error"],
                     f"reached {100 * target:g}%": r["reached"],
                     "epochs to target (or best)": r["epochs_to_target"] or r["best_epoch"],
                     "train seconds to target (or best)": r["seconds_to_target_or_best"],
                     "train seconds total": r["seconds_total"]})
    return rows


def _comparison_text(runs: Dict[str, Dict[str, Any]]) -> str:
    """One clause per cutout run: best error vs the baseline's, worded from the sign."""
    base = runs["baseline"]["best_error"]
    parts = []
    for key, r in runs.items():
        if key == "baseline":
            continue
        diff = 100 * (r["best_error"] - base)
        word = "lower" if diff < 0 else "higher" if diff > 0 else "equal"
        parts.append(f"{r['label']}: {abs(diff):.2f} points {word}" if diff else
                     f"{r['label']}: equal")
    return "; ".join(parts) if parts else "no cutout runs were made"


def _error_figure(rep: Report, runs: Dict[str, Dict[str, Any]], x_key: str) -> None:
    fig, ax = new_figure(figsize=(7, 4.5))
    for i, r in enumerate(runs.values()):
        ep = np.arange(1, len(r["val_error"]) + 1)
        x = ep if x_key == "epoch" else np.cumsum(r["epoch_seconds"])
        ax.plot(x, 100 * np.asarray(r["val_error"]), "o-", ms=3, color=f"C{i}", label=r["label"])
    ax.set_xlabel("epoch" if x_key == "epoch" else "training seconds (cumulative)")
    ax.set_ylabel("validation error (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    name = "val_error_vs_epoch" if x_key == "epoch" else "val_error_vs_seconds"
    rep.figure(name, fig, f"Validation error vs {x_key} for every run ({{dataset_used}}).")


def write_report(out_dir, config, results, data, images) -> None:
    rep = Report(out_dir, "Cutout and batch augmentation", results)
    if results["substituted"]:
        rep.note_substitution("CIFAR-10", "the embedded fashion10k subset (Fashion-MNIST, "
                              "zero-padded to 32x32, repeated over 3 channels)")
        rep.note(f"Small substitute run: {results['model_name']} (study: ResNet-"
                 f"{config['depth']}, width {config['width']}); {results['epochs']} epochs "
                 f"(study: {config['epochs']}); M in {results['Ms']}, i.e. M <= "
                 f"{config['sub_max_M']} (study: {config['Ms']}). The cutout examples use "
                 "scikit-learn's sample images. Numbers are for this substitute, not CIFAR-10.")
    rep.setup(config)
    rep.text("Data: {n_train:,} training and {n_val:,} validation images of {dataset_used} "
             "(validation = the test split), standardized per channel with the training mean "
             "and std, so a cutout square (value 0) is set to the mean. Model: {model_name} "
             "({n_params:,} parameters). SGD, momentum {momentum}, weight decay "
             "{weight_decay} on weights only, lr {lr} divided by 10 at epochs {milestone_epochs}; "
             "{epochs} epochs at batch {batch_size}. All runs start from the same weights.")
    rep.section("Cutout examples")
    cutout_figure(rep, images[0], images[1], config, config["seed"])
    rep.section("Standard augmentation vs batch augmentation with cutout")
    rep.text("baseline: random crop 32 (padding 4) + horizontal flip. 'cutout M=m': each image "
             "of the batch of {batch_size} repeated m times, each copy with its own crop, flip "
             "and {cutout_size}x{cutout_size} cutout (Hoffer et al. 2019), so a step sees "
             "m x {batch_size} images and an epoch has the same {steps_per_epoch} steps; M=1 is "
             "cutout alone. Target: {target_pct:g}% validation accuracy; when not reached the "
             "table gives the best epoch. Seconds are training time only (no evaluation).")
    rep.table("runs", results["rows"], "Validation error per run")
    _error_figure(rep, results["runs"], "epoch")
    _error_figure(rep, results["runs"], "seconds")
    rep.conclusions([
        "Best validation error: {best_run} with {best_run_error_pct:.2f}%; the baseline "
        "reached {baseline_error_pct:.2f}%.",
        "Best error of each cutout run relative to the baseline: {comparison_text}.",
        "Runs reaching {target_pct:g}% accuracy: {reached_text}.",
        "Cost: the largest M ({largest_M}) took {largest_M_seconds_ratio:.2f}x the baseline's "
        "training seconds for the same number of epochs.",
        PAPER])
    rep.write()


@lab(name="cutout",
     study="DeVries & Taylor (2017) cutout; Hoffer et al. (2019) batch augmentation; "
           "ResNet-44 on CIFAR-10",
     quick=_QUICK, full=_FULL,
     expected_seconds={"quick": 15, "full": 3_000_000, "full_embedded": 4800})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    """Cutout figure, then the baseline and the batch-augmentation runs; returns the results."""
    data = load_data(config)
    substituted = bool(data["note"])
    settings = effective_settings(config, substituted)
    images = example_images(data)
    plan = [("baseline", 1, False)] + [(f"cutout M={m}", m, True) for m in settings["Ms"]]
    runs: Dict[str, Dict[str, Any]] = {}
    for label, M, cut in plan:
        runs[label] = train_run(label, M, cut, data, config, settings, progress)
        runs[label]["images_per_step"] = M * config["batch_size"]
    results = summarize(runs, config, settings, data, substituted)
    results["examples_source"] = images[2]
    write_report(out_dir, config, results, data, images)
    return results


def summarize(runs, config, settings, data, substituted) -> Dict[str, Any]:
    """The results dict: settings, runs, table rows and the numbers the conclusions use."""
    n_train = len(data["y_train"])
    best = min(runs.values(), key=lambda r: r["best_error"])
    largest = max(runs.values(), key=lambda r: (r["cutout"], r["M"]))
    reached = [f"{r['label']} at epoch {r['epochs_to_target']} "
               f"({r['seconds_to_target_or_best']:.1f} s)" for r in runs.values() if r["reached"]]
    model = cifar_resnet(settings["depth"], settings["width"], rng=0)
    return {
        "dataset_wanted": config["dataset"], "dataset_used": data["used"],
        "data_note": data["note"], "substituted": substituted, **settings,
        "model_name": f"ResNet-{settings['depth']} (widths {settings['width']}, "
                      f"{2 * settings['width']}, {4 * settings['width']})",
        "n_params": model.num_parameters(), "n_train": n_train, "n_val": len(data["y_val"]),
        "batch_size": config["batch_size"], "cutout_size": config["cutout_size"],
        "lr": config["lr"], "momentum": config["momentum"],
        "weight_decay": config["weight_decay"],
        "milestone_epochs": [int(round(f * settings["epochs"])) for f in config["lr_milestones"]],
        "steps_per_epoch": -(-n_train // config["batch_size"]),
        "target_acc": config["target_acc"], "target_pct": 100 * config["target_acc"],
        "runs": runs, "rows": _rows(runs, config["target_acc"]),
        "best_run": best["label"], "best_run_error_pct": 100 * best["best_error"],
        "baseline_error_pct": 100 * runs["baseline"]["best_error"],
        "comparison_text": _comparison_text(runs),
        "reached_text": ", ".join(reached) if reached else "none within the epochs run",
        "largest_M": largest["M"],
        "largest_M_seconds_ratio": largest["seconds_total"] / runs["baseline"]["seconds_total"],
        "paper": PAPER}
