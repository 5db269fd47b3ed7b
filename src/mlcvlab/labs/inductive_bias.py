"""Lab ``inductive-bias``: what a convolution's built-in assumptions buy on edge detection.

Data: :func:`mlcvlab.data.synthetic.edge_images`, ``size`` x ``size`` grey images with no
edge, a vertical or a horizontal step edge (3 classes; 5 with the two diagonals). Training
images have their edge in the central band of positions (``margin = size // 4``).

Models: an MLP (pixels -> ``hidden`` ReLU units -> classes) and a one-layer CNN
(``n_kernels`` 3x3 kernels, no padding -> ReLU -> global max or average pool -> linear). The
CNN's assumptions: the same small detector everywhere (weight sharing) and position does not
matter (global pooling).

Studies, each repeated ``repeats`` times with fresh training data and weights:

1. CNN vs MLP accuracy against the number of training images per class (a curve).
2. First-layer kernels: random and learned vs Sobel-initialized and learned vs Sobel and
   frozen. Freezing = the conv weight is left out of the parameter list given to Adam.
3. Domain shift: accuracy on validation sets drawn differently from training (low contrast
   and more noise; inverted edge polarity; edges at every position, also near the border),
   with confusion matrices.
4. When is the CNN worse than the MLP: every (training size, domain) cell where it is.
5. Five classes (with diagonals), global max vs average pooling.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from mlcvlab.data import DataLoader
from mlcvlab.data.synthetic import EDGE_CLASSES, edge_images
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure
from mlcvlab.models import mlp
from mlcvlab.nn import (AvgPool2d, Conv2d, CrossEntropyLoss, Flatten, Linear, MaxPool2d, ReLU,
                        Sequential)
from mlcvlab.optim import Adam

SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])  # vertical edges
SOBEL_DIAG = np.array([[-2.0, -1.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 1.0, 2.0]])  # x - y = c edges
# The Sobel compass bank: each orientation with both signs, since ReLU keeps one polarity only.
SOBEL_BANK = np.stack([SOBEL_X, -SOBEL_X, SOBEL_X.T, -SOBEL_X.T,
                       SOBEL_DIAG, -SOBEL_DIAG, SOBEL_DIAG[:, ::-1], -SOBEL_DIAG[:, ::-1]])
KERNEL_VARIANTS = ("random", "sobel_init", "sobel_frozen")
KERNEL_LABELS = {"random": "random init, learned", "sobel_init": "Sobel init, learned",
                 "sobel_frozen": "Sobel, frozen"}

_FULL = {"size": 12, "n_kernels": 8, "hidden": 64, "n_per_class": [2, 5, 10, 20, 50, 100, 200],
         "n_val_per_class": 200, "repeats": 5, "epochs": 60, "batch_size": 32, "lr": 0.01,
         "more_classes": 5, "seed": 0}
_QUICK = {**_FULL, "size": 8, "n_per_class": [4, 30], "n_val_per_class": 40, "repeats": 1,
          "epochs": 25, "batch_size": 16, "lr": 0.02}


# -- data ---------------------------------------------------------------------------------------
def domains(size: int) -> Dict[str, Dict[str, Any]]:
    """Keyword arguments of ``edge_images`` for the training domain and the shifted ones."""
    train = {"contrast": (0.5, 1.0), "noise_std": 0.05, "margin": size // 4, "invert": False}
    return {"in-domain": train,
            "low contrast + noise": {**train, "contrast": (0.15, 0.35), "noise_std": 0.12},
            "inverted polarity": {**train, "invert": True},
            "all positions": {**train, "margin": 1}}


def make_sets(config: Dict[str, Any], n_classes: int) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """One validation set per domain, the same for every run: X (n, 1, S, S), y (n,)."""
    n = config["n_val_per_class"] * n_classes
    return {name: edge_images(n, np.random.default_rng([config["seed"], 11, i, n_classes]),
                              size=config["size"], n_classes=n_classes, **kw)
            for i, (name, kw) in enumerate(domains(config["size"]).items())}


def train_set(config, n_per_class: int, n_classes: int, repeat: int):
    """Training images of the in-domain distribution, exactly n_per_class per class."""
    gen = np.random.default_rng([config["seed"], 10, n_per_class, n_classes, repeat])
    return edge_images(n_per_class * n_classes, gen, size=config["size"], n_classes=n_classes,
                       **domains(config["size"])["in-domain"])


# -- models -------------------------------------------------------------------------------------
def edge_cnn(size: int, n_kernels: int, n_classes: int, pool: str = "max", rng=None
             ) -> Sequential:
    """x: (N, 1, size, size) -> conv 3x3 (n_kernels, no padding) -> ReLU -> global pool ->
    linear -> logits (N, n_classes). No padding, so the image border is never an edge."""
    if pool not in ("max", "avg"):
        raise ValueError(f"edge_cnn: pool must be 'max' or 'avg', got {pool!r}")
    if size < 4:
        raise ValueError(f"edge_cnn: size must be >= 4, got {size}")
    gen = np.random.default_rng(rng)
    side = size - 2
    pool_layer = MaxPool2d(side) if pool == "max" else AvgPool2d(side)
    return Sequential(Conv2d(1, n_kernels, 3, rng=gen), ReLU(), pool_layer, Flatten(),
                      Linear(n_kernels, n_classes, rng=gen))


def set_sobel(model: Sequential) -> np.ndarray:
    """Put the first kernels of :data:`SOBEL_BANK` (vertical, horizontal, diagonal,
    anti-diagonal Sobel, each with both signs) into the first conv, bias 0; kernels beyond
    the 8 of the bank keep their random values. Returns the kernels (K, 3, 3)."""
    conv = model[0]
    k = min(len(SOBEL_BANK), conv.out_channels)
    conv.weight.data[:k, 0] = SOBEL_BANK[:k]
    conv.bias.data[:k] = 0.0
    return conv.weight.data[:, 0].copy()


def build(kind: str, config, n_classes: int, rng) -> Tuple[Sequential, list]:
    """A model and the parameters to freeze: kind in mlp, cnn_max, cnn_avg, sobel_init,
    sobel_frozen (the last two are max-pool CNNs)."""
    size = config["size"]
    if kind == "mlp":
        return mlp([size * size, config["hidden"], n_classes], rng=rng), []
    pool = "avg" if kind == "cnn_avg" else "max"
    model = edge_cnn(size, config["n_kernels"], n_classes, pool, rng=rng)
    if kind in ("sobel_init", "sobel_frozen"):
        set_sobel(model)
    return model, ([model[0].weight] if kind == "sobel_frozen" else [])


def train(model, frozen: Sequence, X, y, config, gen: np.random.Generator) -> None:
    """Adam on the cross-entropy; parameters in ``frozen`` are excluded from the optimizer.

    Each step zeroes every gradient (the frozen ones too: they live outside Adam's flat
    buffer), runs forward and backward, and lets Adam update the others.
    """
    params = [p for p in model.parameters() if all(p is not f for f in frozen)]
    opt = Adam(params, lr=config["lr"])
    loss = CrossEntropyLoss()
    loader = DataLoader(X, y, config["batch_size"], seed=gen, prefetch=0)
    model.train()
    for _ in range(config["epochs"]):
        for xb, yb in loader:
            opt.zero_grad()
            for p in frozen:
                p.zero_grad()
            loss(model(xb), yb)
            model.backward(loss.backward())
            opt.step()
    model.eval()


def predict(model, X: np.ndarray) -> np.ndarray:
    """Class predictions (N,) in evaluation mode."""
    return model.eval()(X.astype(np.float32)).argmax(axis=1)


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = true class, column = predicted class."""
    return np.bincount(y * n_classes + pred, minlength=n_classes ** 2).reshape(n_classes,
                                                                               n_classes)


# -- one run ------------------------------------------------------------------------------------
def run_one(kind: str, config, n_per_class: int, n_classes: int, repeat: int, val_sets
            ) -> Dict[str, Any]:
    """Train one model; accuracy and confusion matrix on every validation domain."""
    X, y = train_set(config, n_per_class, n_classes, repeat)
    model, frozen = build(kind, config, n_classes,
                          np.random.default_rng([config["seed"], 20, repeat]))
    before = [f.data.copy() for f in frozen]
    train(model, frozen, X, y, config, np.random.default_rng([config["seed"], 21, repeat]))
    out = {"acc": {}, "confusion": {}}
    for name, (Xv, yv) in val_sets.items():
        pred = predict(model, Xv)
        out["acc"][name] = float(np.mean(pred == yv))
        out["confusion"][name] = confusion(yv, pred, n_classes)
    out["train_acc"] = float(np.mean(predict(model, X) == y))
    out["frozen_unchanged"] = all(np.array_equal(b, f.data) for b, f in zip(before, frozen))
    if kind != "mlp":
        out["kernels"] = model[0].weight.data[:, 0].copy()
    return out


def run_grid(kinds, config, sizes, n_classes: int, val_sets, progress, desc: str
             ) -> Dict[str, Dict[int, List[Dict[str, Any]]]]:
    """{kind: {n_per_class: [run per repeat]}} for every kind, training size and repeat."""
    jobs = [(k, n, r) for n in sizes for k in kinds for r in range(config["repeats"])]
    grid: Dict[str, Dict[int, List[Dict[str, Any]]]] = {k: {n: [] for n in sizes} for k in kinds}
    for kind, n, r in progress(jobs, desc=desc):
        grid[kind][n].append(run_one(kind, config, n, n_classes, r, val_sets))
    return grid


def mean_std(runs: List[Dict[str, Any]], domain: str) -> Tuple[float, float]:
    accs = np.array([r["acc"][domain] for r in runs])
    return float(accs.mean()), float(accs.std())


# -- summaries ----------------------------------------------------------------------------------
KIND_LABELS = {"mlp": "MLP", "cnn_max": "CNN (max pool, random init)",
               "cnn_avg": "CNN (avg pool, random init)", "sobel_init": "CNN (Sobel init, learned)",
               "sobel_frozen": "CNN (Sobel, frozen)"}
MAIN_KINDS = ("mlp", "cnn_max", "sobel_init", "sobel_frozen")


def _word(diff: float, more: str, less: str) -> str:
    return more if diff > 0 else less if diff < 0 else "the same as"


def curve_rows(grid, sizes) -> List[Dict[str, Any]]:
    rows = []
    for n in sizes:
        row: Dict[str, Any] = {"images per class": n}
        for kind in grid:
            m, s = mean_std(grid[kind][n], "in-domain")
            row[f"{KIND_LABELS[kind]} acc"] = m
            row[f"{KIND_LABELS[kind]} std"] = s
        rows.append(row)
    return rows


def domain_rows(grid, n: int, domain_names) -> List[Dict[str, Any]]:
    rows = []
    for kind in grid:
        row: Dict[str, Any] = {"model": KIND_LABELS[kind]}
        for d in domain_names:
            row[d] = mean_std(grid[kind][n], d)[0]
        row["train acc"] = float(np.mean([r["train_acc"] for r in grid[kind][n]]))
        rows.append(row)
    return rows


def cnn_worse_cells(grid, sizes, domain_names, cnn: str = "cnn_max") -> List[Dict[str, Any]]:
    """Every (training size, domain) where the CNN's mean accuracy is below the MLP's."""
    cells = []
    for n in sizes:
        for d in domain_names:
            c, m = mean_std(grid[cnn][n], d)[0], mean_std(grid["mlp"][n], d)[0]
            if c < m:
                cells.append({"images per class": n, "domain": d, "CNN acc": c, "MLP acc": m,
                              "CNN - MLP": c - m})
    return cells


def first_reaching(rows, key: str, level: float):
    """Smallest training size whose mean accuracy reaches ``level``, else a phrase."""
    for row in rows:
        if row[key] >= level:
            return row["images per class"]
    return "not reached"


def summarize(config, grid3, grid5, sizes, names) -> Dict[str, Any]:
    """Every number and phrase the report uses."""
    small, big = sizes[0], sizes[-1]
    curve = curve_rows(grid3, sizes)
    res: Dict[str, Any] = {"sizes": list(sizes), "n_small": small, "n_main": big,
                           "domains": list(names), "curve_rows": curve,
                           "domain_rows": domain_rows(grid3, big, names),
                           "more_rows": domain_rows(grid5, big, names)}
    for tag, n in (("small", small), ("main", big)):
        for kind in MAIN_KINDS:
            res[f"{kind}_{tag}"] = mean_std(grid3[kind][n], "in-domain")[0]
        diff = res[f"cnn_max_{tag}"] - res[f"mlp_{tag}"]
        res[f"cnn_vs_mlp_{tag}"] = diff
        res[f"cnn_vs_mlp_{tag}_word"] = _word(diff, "higher than", "lower than")
        fro = res[f"sobel_frozen_{tag}"] - res[f"cnn_max_{tag}"]
        res[f"frozen_vs_random_{tag}"] = fro
        res[f"frozen_vs_random_{tag}_word"] = _word(fro, "higher than", "lower than")
    for kind in ("cnn_max", "mlp"):
        key = f"{KIND_LABELS[kind]} acc"
        res[f"{kind}_n90"] = first_reaching(curve, key, 0.9)
        accs = {d: mean_std(grid3[kind][big], d)[0] for d in names[1:]}
        worst = min(accs, key=accs.get)
        res[f"{kind}_worst_domain"], res[f"{kind}_worst_acc"] = worst, accs[worst]
    cells = cnn_worse_cells(grid3, sizes, names)
    res["cnn_worse_rows"] = cells
    cell_text = "; ".join(f"{c['images per class']} images/class on {c['domain']} "
                          f"({c['CNN acc']:.4f} vs {c['MLP acc']:.4f})" for c in cells)
    res["cnn_worse_text"] = "at " + cell_text if cells else "in none of the settings tried"
    res["cnn_worse_count"], res["cells_total"] = len(cells), len(sizes) * len(names)
    res["frozen_unchanged"] = all(r["frozen_unchanged"] for n in sizes
                                  for r in grid3["sobel_frozen"][n])
    for kind in ("cnn_max", "cnn_avg", "mlp"):
        res[f"more_{kind}"] = mean_std(grid5[kind][big], "in-domain")[0]
    diff = res["more_cnn_max"] - res["more_cnn_avg"]
    res["max_vs_avg"], res["max_vs_avg_word"] = diff, _word(diff, "higher than", "lower than")
    res["more_classes_names"] = ", ".join(EDGE_CLASSES[:config["more_classes"]])
    return res


# -- figures ------------------------------------------------------------------------------------
def curve_figure(rep: Report, grid, sizes) -> None:
    fig, ax = new_figure(figsize=(7, 4.5))
    for i, kind in enumerate(grid):
        stats = np.array([mean_std(grid[kind][n], "in-domain") for n in sizes])
        ax.errorbar(sizes, stats[:, 0], yerr=stats[:, 1], marker="o", capsize=3,
                    color=f"C{i}", label=KIND_LABELS[kind])
    ax.set_xscale("log")
    ax.set_xlabel("training images per class")
    ax.set_ylabel("validation accuracy (in-domain)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    rep.figure("accuracy_vs_training_size", fig, "In-domain validation accuracy vs training "
               "images per class (mean and std over {repeats} repeats), 3 classes.")


def _draw_confusion(ax, mat: np.ndarray, labels: Sequence[str], title: str) -> None:
    ax.imshow(mat, cmap="Blues")
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > mat.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=8)


def confusion_figure(rep: Report, grid, n: int, names, n_classes: int, name: str,
                     kinds: Sequence[str], caption: str) -> None:
    labels = EDGE_CLASSES[:n_classes]
    fig, axes = new_figure(nrows=len(kinds), ncols=len(names),
                           figsize=(3.2 * len(names), 3.2 * len(kinds)), squeeze=False)
    for r, kind in enumerate(kinds):
        for c, d in enumerate(names):
            mat = grid[kind][n][0]["confusion"][d]
            acc = np.trace(mat) / mat.sum()
            _draw_confusion(axes[r, c], mat, labels, f"{KIND_LABELS[kind]}\n{d} (acc {acc:.2f})")
    fig.tight_layout()
    rep.figure(name, fig, caption)


def kernels_figure(rep: Report, grid3, grid5, n: int) -> None:
    rows = [(KIND_LABELS[k] + ", 3 classes", grid3[k][n][0]["kernels"])
            for k in ("cnn_max", "sobel_init", "sobel_frozen")]
    rows += [(KIND_LABELS[k] + ", 5 classes", grid5[k][n][0]["kernels"])
             for k in ("cnn_max", "cnn_avg")]
    n_k = rows[0][1].shape[0]
    fig, axes = new_figure(nrows=len(rows), ncols=n_k, figsize=(1.6 * n_k + 2, 1.6 * len(rows)),
                           squeeze=False)
    for r, (label, ks) in enumerate(rows):
        lim = float(np.abs(ks).max()) or 1.0
        for k in range(n_k):
            ax = axes[r, k]
            ax.imshow(ks[k], cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"kernel {k}", fontsize=7)
            if k == 0:
                ax.set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
    rep.figure("kernels", fig, "First-layer 3x3 kernels after training ({n_main} images per "
               "class, first repeat); red positive, blue negative, each row on its own scale.")


# -- report -------------------------------------------------------------------------------------
def write_report(out_dir, config, results, grid3, grid5) -> None:
    rep = Report(out_dir, "Inductive bias of convolutions: edge detection", results)
    rep.setup(config)
    rep.text("Data: synthetic {size}x{size} edge images (mlcvlab.data.synthetic.edge_images), "
             "classes none / vertical / horizontal; training edges at positions {train_margin} "
             "to {train_last} only, contrast 0.5-1, noise std 0.05. Validation: "
             "{n_val_per_class} images per class for each domain: {domains_text}. Models: MLP "
             "{size}x{size}-{hidden}-classes ({mlp_params:,} parameters) and CNN: {n_kernels} "
             "3x3 kernels, no padding, ReLU, global pooling, linear ({cnn_params:,} "
             "parameters). Adam, lr {lr}, batch {batch_size}, {epochs} epochs; {repeats} "
             "repeats with fresh data and weights (mean and std given).")
    rep.text("Freezing: the frozen CNN's first-layer weight (the Sobel compass bank: "
             "vertical, horizontal, diagonal and anti-diagonal Sobel kernels, each with both "
             "signs since ReLU keeps one polarity; {n_random_kernels} extra kernel(s) random) "
             "is left out of the parameter "
             "list given to Adam, so Adam neither moves it nor keeps moments for it; its "
             "gradient is still computed by backward and zeroed before every step. Checked "
             "after training: frozen kernels bit-identical to Sobel in every run: "
             "{frozen_unchanged}. (Zeroing the gradient after backward instead would leave "
             "Adam's step at zero here too, but not with weight decay or momentum history.)")
    rep.section("CNN vs MLP against the number of training images")
    rep.table("accuracy_vs_training_size", results["curve_rows"],
              "In-domain validation accuracy per training size (3 classes)")
    curve_figure(rep, grid3, results["sizes"])
    rep.section("Domain shift and first-layer kernels")
    rep.table("domain_shift", results["domain_rows"], "Accuracy per validation domain at "
              "{n_main} training images per class (mean over repeats)")
    confusion_figure(rep, grid3, results["n_main"], results["domains"], 3, "confusion_3class",
                     ("mlp", "cnn_max", "sobel_frozen"), "Confusion matrices (first repeat, "
                     "{n_main} images per class): rows true class, columns predicted.")
    kernels_figure(rep, grid3, grid5, results["n_main"])
    rep.section("When is the CNN worse than the MLP?")
    if results["cnn_worse_rows"]:
        rep.table("cnn_worse_than_mlp", results["cnn_worse_rows"], "Settings where the CNN "
                  "(max pool, random init) has lower mean accuracy than the MLP")
    rep.text("The CNN (max pool, random init) is below the MLP in {cnn_worse_count} of the "
             "{cells_total} (training size, domain) settings: {cnn_worse_text}.")
    rep.section("More classes: max vs average pooling")
    rep.table("more_classes", results["more_rows"], "{more_classes} classes ({more_classes_names})"
              ", {n_main} images per class: accuracy per domain")
    confusion_figure(rep, grid5, results["n_main"], results["domains"][:1], config["more_classes"],
                     "confusion_more_classes", ("mlp", "cnn_max", "cnn_avg"),
                     "{more_classes}-class confusion matrices, in-domain (first repeat).")
    rep.conclusions([
        "With {n_small} training images per class the CNN reaches {cnn_max_small:.3f} "
        "in-domain accuracy, {cnn_vs_mlp_small_word} the MLP's {mlp_small:.3f}; with {n_main} "
        "per class {cnn_max_main:.3f} vs {mlp_main:.3f} ({cnn_vs_mlp_main_word}).",
        "Smallest training size reaching 90% in-domain accuracy: CNN {cnn_max_n90}, MLP "
        "{mlp_n90} (images per class).",
        "Frozen Sobel kernels vs random learned ones: {sobel_frozen_small:.3f} vs "
        "{cnn_max_small:.3f} at {n_small} per class ({frozen_vs_random_small_word}), "
        "{sobel_frozen_main:.3f} vs {cnn_max_main:.3f} at {n_main} per class "
        "({frozen_vs_random_main_word}); Sobel init then learned: {sobel_init_small:.3f} and "
        "{sobel_init_main:.3f}.",
        "Worst shifted domain at {n_main} per class: CNN {cnn_max_worst_domain} "
        "({cnn_max_worst_acc:.3f}), MLP {mlp_worst_domain} ({mlp_worst_acc:.3f}).",
        "The CNN (max pool, random init) is worse than the MLP (mean over {repeats} repeats) "
        "{cnn_worse_text}.",
        "{more_classes} classes: max pooling {more_cnn_max:.4f} is {max_vs_avg_word} average "
        "pooling {more_cnn_avg:.4f} (MLP {more_mlp:.4f})."])
    rep.write()


@lab(name="inductive-bias",
     study="CNN vs MLP on synthetic edge images: training size, Sobel kernels, domain shift, "
           "more classes, max vs average pooling",
     quick=_QUICK, full=_FULL, expected_seconds={"quick": 10, "full": 900})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    """All studies on one set of validation domains; every report number comes from here."""
    sizes = sorted(int(n) for n in config["n_per_class"])
    if not sizes or sizes[0] < 1 or config["repeats"] < 1:
        raise ValueError(f"inductive-bias: n_per_class needs positive sizes and repeats >= 1, "
                         f"got {config['n_per_class']} and {config['repeats']}")
    if not 3 <= config["more_classes"] <= len(EDGE_CLASSES):
        raise ValueError(f"inductive-bias: more_classes must be in 3..{len(EDGE_CLASSES)}, "
                         f"got {config['more_classes']}")
    val3 = make_sets(config, 3)
    val5 = make_sets(config, config["more_classes"])
    grid3 = run_grid(MAIN_KINDS, config, sizes, 3, val3, progress, "3 classes")
    grid5 = run_grid(("mlp", "cnn_max", "cnn_avg"), config, sizes[-1:], config["more_classes"],
                     val5, progress, f"{config['more_classes']} classes")
    names = list(val3)
    results = summarize(config, grid3, grid5, sizes, names)
    size, margin = config["size"], config["size"] // 4
    results.update({k: config[k] for k in ("size", "hidden", "n_kernels", "lr", "batch_size",
                                           "epochs", "repeats", "n_val_per_class",
                                           "more_classes")})
    results.update({"train_margin": margin, "train_last": size - margin - 1,
                    "n_random_kernels": max(0, config["n_kernels"] - len(SOBEL_BANK)),
                    "domains_text": _domains_text(size),
                    "mlp_params": build("mlp", config, 3, 0)[0].num_parameters(),
                    "cnn_params": build("cnn_max", config, 3, 0)[0].num_parameters(),
                    "runs": _raw_runs(grid3, grid5)})
    write_report(out_dir, config, results, grid3, grid5)
    return results


def _domains_text(size: int) -> str:
    d = domains(size)
    return (f"in-domain (as training); low contrast + noise (contrast "
            f"{d['low contrast + noise']['contrast']}, noise std "
            f"{d['low contrast + noise']['noise_std']}); inverted polarity (bright and dark "
            f"sides swapped); all positions (edges at positions 1 to {size - 2}, also outside "
            f"the training band)")


def _raw_runs(grid3, grid5) -> Dict[str, Any]:
    """Per-run accuracies (JSON-able) for results.json."""
    out = {}
    for classes, grid in (("3", grid3), ("more", grid5)):
        for kind, by_n in grid.items():
            out[f"{classes}/{kind}"] = {str(n): [{"acc": r["acc"], "train_acc": r["train_acc"]}
                                                 for r in runs] for n, runs in by_n.items()}
    return out
