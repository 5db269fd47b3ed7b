"""Lab ``inductive-bias``: what a convolution's built-in assumptions buy on edge detection.

Data: :func:`mlcvlab.data.synthetic.edge_images`, ``size`` x ``size`` grey images with no
edge, a vertical or a horizontal step edge (3 classes; 5 with the two diagonals). Training
images have their edge in the central band of positions (``margin = size // 4``).

Models: an MLP (pixels -> ``hidden`` ReLU units -> classes) and a one-layer CNN
(``n_kernels`` 3x3 kernels, no padding -> ReLU -> global max or average pool -> linear). The
CNN's assumptions: the same small detector everywhere (weight sharing) and position does not
matter (global pooling).

Studies, each run once per seed (``config["seeds"]``). One seed fixes the training images,
the test images of every domain, the initialization generator and the data order, the same for
every model, so the models are compared *paired by seed* (:func:`mlcvlab.labs.stats.compare`):

1. CNN vs MLP accuracy against the number of training images per class (a curve).
2. First-layer kernels: random and learned vs Sobel-initialized and learned vs Sobel and
   frozen. Freezing = the conv weight is left out of the parameter list given to Adam.
3. Domain shift: accuracy on test sets drawn differently from training (low contrast
   and more noise; inverted edge polarity; edges at every position, also near the border),
   with confusion matrices.
4. When is the CNN worse than the MLP: every (training size, domain) cell where the paired
   comparison says so.
5. Five classes (with diagonals), global max vs average pooling.

``device`` "cuda" (``--device cuda``) trains and evaluates every model on the GPU (the loss
there too; a batch crosses once per step, the predictions come back once per test set). The
models are tiny (8 kernels on 12x12 images, 64 hidden units), so a GPU is no faster here than
the CPU (each step is a few dozen launches of microseconds of work): the setting is for
checking that the CNNs and MLPs learn the same on either device, not for speed.

Every accuracy is also compared with chance (1 / classes). A domain where no model is above
chance is reported as degenerate (nothing learned transfers there, so there is nothing to
rank), never as "the worst domain". Nothing is selected on the test sets: every model trains
for the fixed number of epochs and is evaluated once on each test set.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mlcvlab.data import DataLoader
from mlcvlab.data.synthetic import EDGE_CLASSES, edge_images
from mlcvlab.labs import stats
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure
from mlcvlab.models import mlp
from mlcvlab.nn import (AvgPool2d, Conv2d, CrossEntropyLoss, Flatten, Linear, MaxPool2d, ReLU,
                        Sequential)
from mlcvlab.optim import Adam
from mlcvlab.train.trainer import _host, _model_input

SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])  # vertical edges
SOBEL_DIAG = np.array([[-2.0, -1.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 1.0, 2.0]])  # x - y = c edges
# The Sobel compass bank: each orientation with both signs, since ReLU keeps one polarity only.
SOBEL_BANK = np.stack([SOBEL_X, -SOBEL_X, SOBEL_X.T, -SOBEL_X.T,
                       SOBEL_DIAG, -SOBEL_DIAG, SOBEL_DIAG[:, ::-1], -SOBEL_DIAG[:, ::-1]])
KERNEL_VARIANTS = ("random", "sobel_init", "sobel_frozen")
KERNEL_LABELS = {"random": "random init, learned", "sobel_init": "Sobel init, learned",
                 "sobel_frozen": "Sobel, frozen"}

_FULL = {"size": 12, "n_kernels": 8, "hidden": 64, "n_per_class": [2, 5, 10, 20, 50, 100, 200],
         "n_test_per_class": 200, "seeds": 10, "epochs": 60, "batch_size": 32, "lr": 0.01,
         "more_classes": 5, "seed": 0, "device": "cpu"}
_STANDARD = {**_FULL, "n_per_class": [2, 5, 20, 100]}
_QUICK = {**_FULL, "size": 8, "n_per_class": [4, 30], "n_test_per_class": 40, "seeds": 2,
          "epochs": 25, "batch_size": 16, "lr": 0.02}


# -- data ---------------------------------------------------------------------------------------
def domains(size: int) -> Dict[str, Dict[str, Any]]:
    """Keyword arguments of ``edge_images`` for the training domain and the shifted ones."""
    train = {"contrast": (0.5, 1.0), "noise_std": 0.05, "margin": size // 4, "invert": False}
    return {"in-domain": train,
            "low contrast + noise": {**train, "contrast": (0.15, 0.35), "noise_std": 0.12},
            "inverted polarity": {**train, "invert": True},
            "all positions": {**train, "margin": 1}}


def make_sets(config: Dict[str, Any], n_classes: int, seed: int
              ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """One test set per domain for ``seed``, the same for every model and training size:
    X (n, 1, S, S), y (n,). Drawn afresh per seed, so the intervals over seeds include the
    test sample's own noise."""
    n = config["n_test_per_class"] * n_classes
    return {name: edge_images(n, np.random.default_rng([seed, 11, i, n_classes]),
                              size=config["size"], n_classes=n_classes, **kw)
            for i, (name, kw) in enumerate(domains(config["size"]).items())}


def train_set(config, n_per_class: int, n_classes: int, seed: int):
    """Training images of the in-domain distribution, exactly n_per_class per class."""
    gen = np.random.default_rng([seed, 10, n_per_class, n_classes])
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
    buffer), runs forward and backward, and lets Adam update the others. The model's device
    is where it trains: each host batch goes there, and the loss computes there.
    """
    params = [p for p in model.parameters() if all(p is not f for f in frozen)]
    opt = Adam(params, lr=config["lr"])
    loss = CrossEntropyLoss().to(model.device)
    loader = DataLoader(X, y, config["batch_size"], seed=gen, prefetch=0)
    model.train()
    for _ in range(config["epochs"]):
        for xb, yb in loader:
            opt.zero_grad()
            for p in frozen:
                p.zero_grad()
            loss(model(_model_input(model, xb)), yb)
            model.backward(loss.backward())
            opt.step()
    model.eval()


def predict(model, X: np.ndarray) -> np.ndarray:
    """Class predictions (N,) on the host, in evaluation mode (computed on the model's
    device)."""
    return _host(model.eval()(_model_input(model, X))).argmax(axis=1)


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = true class, column = predicted class."""
    return np.bincount(y * n_classes + pred, minlength=n_classes ** 2).reshape(n_classes,
                                                                               n_classes)


# -- one run ------------------------------------------------------------------------------------
def run_one(kind: str, config, n_per_class: int, n_classes: int, seed: int, test_sets
            ) -> Dict[str, Any]:
    """Train one model; accuracy and confusion matrix on every test domain, evaluated once."""
    X, y = train_set(config, n_per_class, n_classes, seed)
    model, frozen = build(kind, config, n_classes, np.random.default_rng([seed, 20]))
    model.to(config.get("device", "cpu"))
    before = [_host(f.data.copy()) for f in frozen]
    train(model, frozen, X, y, config, np.random.default_rng([seed, 21]))
    out = {"acc": {}, "confusion": {}}
    for name, (Xt, yt) in test_sets.items():
        pred = predict(model, Xt)
        out["acc"][name] = float(np.mean(pred == yt))
        out["confusion"][name] = confusion(yt, pred, n_classes)
    out["train_acc"] = float(np.mean(predict(model, X) == y))
    out["frozen_unchanged"] = all(np.array_equal(b, _host(f.data))
                                  for b, f in zip(before, frozen))
    if kind != "mlp":
        out["kernels"] = _host(model[0].weight.data[:, 0].copy())
    return out


def run_grid(kinds, config, sizes, n_classes: int, seeds, progress, desc: str
             ) -> Dict[str, Dict[int, List[Dict[str, Any]]]]:
    """{kind: {n_per_class: [run per seed, in seed order]}} for every kind, size and seed."""
    tests = {s: make_sets(config, n_classes, s) for s in seeds}
    jobs = [(k, n, s) for s in seeds for n in sizes for k in kinds]
    grid: Dict[str, Dict[int, List[Dict[str, Any]]]] = {k: {n: [] for n in sizes} for k in kinds}
    for kind, n, s in progress(jobs, desc=desc):
        grid[kind][n].append(run_one(kind, config, n, n_classes, s, tests[s]))
    return grid


def accs(runs: List[Dict[str, Any]], domain: str) -> List[float]:
    """Per-seed test accuracies of one (kind, size) on one domain, in seed order."""
    return [r["acc"][domain] for r in runs]


def mean_ci(runs: List[Dict[str, Any]], domain: str) -> Tuple[float, float, float]:
    """Mean and 95% t-interval over seeds (the interval is (nan, nan) for one seed)."""
    s = stats.summarize(accs(runs, domain))
    lo, hi = s["ci95"]
    return s["mean"], (float("nan") if lo is None else lo), (float("nan") if hi is None else hi)


# -- summaries ----------------------------------------------------------------------------------
KIND_LABELS = {"mlp": "MLP", "cnn_max": "CNN (max pool, random init)",
               "cnn_avg": "CNN (avg pool, random init)", "sobel_init": "CNN (Sobel init, learned)",
               "sobel_frozen": "CNN (Sobel, frozen)"}
KIND_COLORS = {"mlp": "C0", "cnn_max": "C1", "sobel_init": "C2", "sobel_frozen": "C3",
               "cnn_avg": "C4"}               # one colour per model in every figure
MAIN_KINDS = ("mlp", "cnn_max", "sobel_init", "sobel_frozen")
MORE_KINDS = ("mlp", "cnn_max", "cnn_avg")
DEGENERATE = "every model at chance: the domain is degenerate, not a ranking"
DEGENERATE_BELOW = ("no model above chance (some below it): the domain is degenerate, not a "
                    "ranking")


def vs_chance(label: str, runs: List[Dict[str, Any]], domain: str, chance: float,
              n_test: int, metric: str) -> Tuple[str, Dict[str, Any]]:
    """One model's accuracy against chance: the comparison (paired t-interval of accuracy -
    chance over seeds; with one seed, the Wilson interval of its n_test answers minus chance)
    and its word: "above", "at" or "below"."""
    a = accs(runs, domain)
    c = stats.compare(label, a, f"chance ({chance:.3f})", [chance] * len(a), metric,
                      higher_is_better=True)
    if len(a) < 2:
        lo, hi = stats.binomial_interval(int(round(a[0] * n_test)), n_test)["ci95"]
        c["ci95"] = [lo - chance, hi - chance]
        c["interval"] = f"Wilson interval of one run's {n_test} test answers"
        c["verdict"] = ("a better" if c["ci95"][0] > 0 else "b better" if c["ci95"][1] < 0
                        else "not separable")
    word = {"a better": "above", "b better": "below", "not separable": "at"}[c["verdict"]]
    return word, c


def chance_table(grid, n: int, names, n_classes: int, n_test: int
                 ) -> Tuple[List[Dict[str, Any]], Dict[str, str], List[Dict[str, Any]]]:
    """Accuracy vs chance for every model and domain at training size n.

    Returns (rows, {domain: "" or the degenerate wording}, the comparisons vs chance). A
    domain is degenerate when no model is above chance: there is nothing to rank there.
    """
    chance = 1.0 / n_classes
    rows, status, comps = [], {}, []
    for d in names:
        words = {}
        for kind in grid:
            word, c = vs_chance(KIND_LABELS[kind], grid[kind][n], d, chance, n_test,
                                f"test accuracy, {d}, {n_classes} classes, {n} images/class")
            comps.append(c)
            words[kind] = word
            m, lo, hi = mean_ci(grid[kind][n], d)
            rows.append({"classes": n_classes, "domain": d, "model": KIND_LABELS[kind],
                         "mean acc": m, "ci95 lo": lo, "ci95 hi": hi, "chance": chance,
                         "vs chance": word})
        if all(w != "above" for w in words.values()):
            status[d] = DEGENERATE if all(w == "at" for w in words.values()) else DEGENERATE_BELOW
        else:
            status[d] = ""
    return rows, status, comps


def degenerate_status(grid, n: int, names, n_classes: int, n_test: int) -> Dict[str, str]:
    """{domain: "" or the degenerate wording} at training size n."""
    return chance_table(grid, n, names, n_classes, n_test)[1]


def curve_rows(grid, sizes) -> List[Dict[str, Any]]:
    rows = []
    for n in sizes:
        row: Dict[str, Any] = {"images per class": n}
        for kind in grid:
            m, lo, hi = mean_ci(grid[kind][n], "in-domain")
            row[f"{KIND_LABELS[kind]} acc"] = m
            row[f"{KIND_LABELS[kind]} ci95 lo"] = lo
            row[f"{KIND_LABELS[kind]} ci95 hi"] = hi
        rows.append(row)
    return rows


def domain_rows(grid, n: int, domain_names) -> List[Dict[str, Any]]:
    rows = []
    for kind in grid:
        row: Dict[str, Any] = {"model": KIND_LABELS[kind]}
        for d in domain_names:
            row[d] = mean_ci(grid[kind][n], d)[0]
        row["train acc"] = float(np.mean([r["train_acc"] for r in grid[kind][n]]))
        rows.append(row)
    return rows


def _cmp(grid, a: str, b: str, n: int, d: str, n_classes: int) -> Dict[str, Any]:
    return stats.compare(KIND_LABELS[a], accs(grid[a][n], d), KIND_LABELS[b],
                         accs(grid[b][n], d),
                         f"test accuracy, {d}, {n_classes} classes, {n} images/class",
                         higher_is_better=True)


def cnn_vs_mlp(grid, sizes, names, n_test: int) -> Tuple[List[Dict[str, Any]], List[Dict]]:
    """The paired CNN-vs-MLP comparison in every (training size, domain) cell that is not
    degenerate; returns (comparisons, cells with their verdict or the degenerate note)."""
    comps, cells = [], []
    for n in sizes:
        status = degenerate_status(grid, n, names, 3, n_test)
        for d in names:
            if status[d]:
                cells.append({"images per class": n, "domain": d, "verdict": status[d]})
                continue
            c = _cmp(grid, "cnn_max", "mlp", n, d, 3)
            comps.append(c)
            cells.append({"images per class": n, "domain": d, "CNN acc": c["a_mean"],
                          "MLP acc": c["b_mean"], "CNN - MLP": c["diff"],
                          "ci95 lo": c["ci95"][0], "ci95 hi": c["ci95"][1],
                          "verdict": c["verdict"].replace("a better", "CNN better")
                                                 .replace("b better", "MLP better")})
    return comps, cells


def first_reaching(rows, key: str, level: float):
    """Smallest training size whose mean accuracy reaches ``level``, else a phrase."""
    for row in rows:
        if row[key] >= level:
            return row["images per class"]
    return "not reached"


VERDICT_WORDS = {"a better": "higher than", "b better": "lower than",
                 "not separable": "not separable from"}


def _cite(c: Dict[str, Any]) -> str:
    lo, hi = c["ci95"]
    interval = "no interval" if lo is None else f"95% CI [{lo:+.3f}, {hi:+.3f}]"
    return f"(difference {c['diff']:+.3f}, {interval}, {c['n_seeds']} seeds)"


def lowest_domain(grid, kind: str, n: int, shifted, status
                  ) -> Tuple[str, Optional[Dict[str, Any]]]:
    """The shifted domain with the lowest mean accuracy among the non-degenerate ones, and
    whether it is separable from the next lowest (paired by seed): (a sentence, the
    comparison or None)."""
    usable = [d for d in shifted if not status[d]]
    if not usable:
        return (f"{KIND_LABELS[kind]}: every shifted domain is degenerate, so none is ranked "
                "lowest"), None
    means = {d: mean_ci(grid[kind][n], d)[0] for d in usable}
    order = sorted(usable, key=means.get)
    text = f"{KIND_LABELS[kind]}: lowest mean on {order[0]} ({means[order[0]]:.3f})"
    if len(order) == 1:
        return text + " (the only shifted domain that is not degenerate)", None
    c = stats.compare(order[0], accs(grid[kind][n], order[0]), order[1],
                      accs(grid[kind][n], order[1]),
                      f"{KIND_LABELS[kind]} test accuracy, 3 classes, {n} images/class",
                      higher_is_better=True)
    verdict = {"b better": f"below {order[1]} ({means[order[1]]:.3f})",
               "a better": f"above {order[1]}",
               "not separable": f"not separable from the next lowest, {order[1]} "
                                f"({means[order[1]]:.3f}), so no single worst domain"}
    return f"{text}, {verdict[c['verdict']]} {_cite(c)}", c


def summarize(config, grid3, grid5, sizes, names) -> Dict[str, Any]:
    """Every number, comparison and phrase the report uses."""
    small, big = sizes[0], sizes[-1]
    n_test3 = config["n_test_per_class"] * 3
    n_test5 = config["n_test_per_class"] * config["more_classes"]
    curve = curve_rows(grid3, sizes)
    res: Dict[str, Any] = {"sizes": list(sizes), "n_small": small, "n_main": big,
                           "domains": list(names), "curve_rows": curve,
                           "domain_rows": domain_rows(grid3, big, names),
                           "more_rows": domain_rows(grid5, big, names)}
    chance3, status3, vs_chance3 = chance_table(grid3, big, names, 3, n_test3)
    chance5, status5, vs_chance5 = chance_table(grid5, big, names, config["more_classes"],
                                                n_test5)
    res.update({"chance_rows": chance3 + chance5, "degenerate": status3,
                "degenerate_more": status5})
    # 1. CNN vs MLP in every cell (in-domain cells are the training-size curve)
    cell_comps, cells = cnn_vs_mlp(grid3, sizes, names, n_test3)
    res["cnn_mlp_cells"] = cells
    # 2. first-layer kernels, in-domain, smallest and largest training size
    kernel_comps = [_cmp(grid3, k, "cnn_max", n, "in-domain", 3)
                    for n in dict.fromkeys((small, big)) for k in ("sobel_frozen", "sobel_init")]
    # 5. max vs average pooling with more classes, every non-degenerate domain
    pool_comps = [_cmp(grid5, "cnn_max", "cnn_avg", big, d, config["more_classes"])
                  for d in names if not status5[d]]
    for tag, n in (("small", small), ("main", big)):
        for kind in MAIN_KINDS:
            res[f"{kind}_{tag}"] = mean_ci(grid3[kind][n], "in-domain")[0]
    res["domain_comparisons"] = []           # filled by the lowest-domain conclusions
    res["conclusion_lines"] = _conclusion_lines(res, grid3, grid5, cell_comps, kernel_comps,
                                                pool_comps, status3, status5, names, sizes,
                                                config)
    domain_comps = res.pop("domain_comparisons")
    res["comparisons"] = (cell_comps + kernel_comps + pool_comps + domain_comps + vs_chance3
                          + vs_chance5)
    res["comparison_groups"] = {"cnn_vs_mlp": len(cell_comps), "kernels": len(kernel_comps),
                                "max_vs_avg": len(pool_comps),
                                "lowest_domain": len(domain_comps),
                                "vs_chance": len(vs_chance3) + len(vs_chance5)}
    for kind in ("cnn_max", "mlp"):
        res[f"{kind}_n90"] = first_reaching(curve, f"{KIND_LABELS[kind]} acc", 0.9)
    res["frozen_unchanged"] = all(r["frozen_unchanged"] for n in sizes
                                  for r in grid3["sobel_frozen"][n])
    for kind in MORE_KINDS:
        res[f"more_{kind}"] = mean_ci(grid5[kind][big], "in-domain")[0]
    res["more_classes_names"] = ", ".join(EDGE_CLASSES[:config["more_classes"]])
    res["n_cells_mlp_better"] = sum(c["verdict"] == "MLP better" for c in cells)
    res["n_cells_cnn_better"] = sum(c["verdict"] == "CNN better" for c in cells)
    res["n_cells_not_separable"] = sum(c["verdict"] == "not separable" for c in cells)
    res["n_cells_degenerate"] = sum(c["verdict"] in (DEGENERATE, DEGENERATE_BELOW)
                                    for c in cells)
    res["cells_total"] = len(cells)
    return res


def _conclusion_lines(res, grid3, grid5, cell_comps, kernel_comps, pool_comps, status3, status5,
                      names, sizes, config) -> List[str]:
    """Conclusions, each comparison's words taken from its computed verdict."""
    lines = []
    by_metric = {c["metric"]: c for c in cell_comps}
    for n in dict.fromkeys((sizes[0], sizes[-1])):
        c = by_metric.get(f"test accuracy, in-domain, 3 classes, {n} images/class")
        if c is None:
            lines.append(f"With {n} training images per class, in-domain: {DEGENERATE}.")
            continue
        lines.append(f"With {n} training images per class the CNN's in-domain test accuracy "
                     f"({c['a_mean']:.3f}) is {VERDICT_WORDS[c['verdict']]} the MLP's "
                     f"({c['b_mean']:.3f}) {_cite(c)}.")
    for c in kernel_comps:
        n = c["metric"].split(", ")[-1]
        lines.append(f"In-domain, {n}: {c['a']} ({c['a_mean']:.3f}) is "
                     f"{VERDICT_WORDS[c['verdict']]} the random-init CNN ({c['b_mean']:.3f}) "
                     f"{_cite(c)}.")
    for d in names:
        if status3[d]:
            lines.append(f"{d} (3 classes, {sizes[-1]} images/class): {status3[d]} (no model's "
                         f"95% interval lies above chance, {1 / 3:.3f}).")
    shifted = [d for d in names if d != "in-domain"]
    for kind in ("cnn_max", "mlp"):
        text, c = lowest_domain(grid3, kind, sizes[-1], shifted, status3)
        lines.append(f"Lowest shifted domain at {sizes[-1]} images/class, {text}.")
        if c is not None:
            res["domain_comparisons"].append(c)
    worse = [c for c in res["cnn_mlp_cells"] if c["verdict"] == "MLP better"]
    where = ("; ".join(f"{c['images per class']} images/class on {c['domain']}" for c in worse)
             if worse else "in none of the cells")
    lines.append(f"The paired comparison puts the MLP above the CNN (max pool, random init) "
                 f"{where} ({len(worse)} of {len(res['cnn_mlp_cells'])} (training size, domain) "
                 f"cells; {res_count(res, 'CNN better')} CNN better, "
                 f"{res_count(res, 'not separable')} not separable, "
                 f"{res_count(res, 'degenerate')} degenerate).")
    k = config["more_classes"]
    for c in pool_comps:
        d = c["metric"].split(", ")[1]
        lines.append(f"{k} classes, {d}: max pooling ({c['a_mean']:.3f}) is "
                     f"{VERDICT_WORDS[c['verdict']]} average pooling ({c['b_mean']:.3f}) "
                     f"{_cite(c)}.")
    for d in names:
        if status5[d]:
            lines.append(f"{d} ({k} classes, {sizes[-1]} images/class): {status5[d]} (no "
                         f"model's 95% interval lies above chance, {1 / k:.3f}).")
    return lines


def res_count(res, what: str) -> int:
    cells = res["cnn_mlp_cells"]
    if what == "degenerate":
        return sum(c["verdict"] in (DEGENERATE, DEGENERATE_BELOW) for c in cells)
    return sum(c["verdict"] == what for c in cells)


# -- figures ------------------------------------------------------------------------------------
def curve_figure(rep: Report, grid, sizes) -> None:
    fig, ax = new_figure(figsize=(7, 4.5))
    kinds = list(grid)
    for i, kind in enumerate(kinds):
        st = np.array([mean_ci(grid[kind][n], "in-domain") for n in sizes])
        yerr = None
        if np.all(np.isfinite(st[:, 1:])):     # the interval, drawn clipped to [0, 1]
            yerr = np.vstack([st[:, 0] - np.clip(st[:, 1], 0, 1),
                              np.clip(st[:, 2], 0, 1) - st[:, 0]])
        dodge = 1.0 + 0.03 * (i - (len(kinds) - 1) / 2)    # side by side, none hidden
        ax.errorbar(np.asarray(sizes, float) * dodge, st[:, 0], yerr=yerr,
                    marker="osD^v"[i % 5], capsize=3, color=KIND_COLORS[kind],
                    label=KIND_LABELS[kind], alpha=0.85)
    ax.axhline(1 / 3, color="0.5", ls=":", lw=1, label="chance (1/3)")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("training images per class (log scale; markers nudged apart)")
    ax.set_ylabel("test accuracy, in-domain (fraction)")
    ax.set_title("CNN vs MLP: in-domain test accuracy vs training size (3 classes)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    rep.figure("accuracy_vs_training_size", fig, "In-domain test accuracy vs training images "
               "per class (mean and 95% interval over {n_seeds} seeds, the interval drawn "
               "clipped to [0, 1]), 3 classes.")


def _draw_confusion(ax, mat: np.ndarray, labels: Sequence[str], title: str) -> None:
    ax.imshow(mat, cmap="Blues")
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > mat.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=8)


def confusion_figure(rep: Report, grid, n: int, names, n_classes: int, name: str,
                     kinds: Sequence[str], caption: str) -> None:
    labels = EDGE_CLASSES[:n_classes]
    fig, axes = new_figure(nrows=len(kinds), ncols=len(names),
                           figsize=(3.2 * len(names), 3.2 * len(kinds) + 0.4), squeeze=False)
    for r, kind in enumerate(kinds):
        for c, d in enumerate(names):
            mat = grid[kind][n][0]["confusion"][d]
            acc = np.trace(mat) / mat.sum()
            _draw_confusion(axes[r, c], mat, labels, f"{KIND_LABELS[kind]}\n{d} (acc {acc:.2f})")
    fig.suptitle(f"Confusion matrices, {n_classes} classes,\n{n} images/class (first seed; "
                 "counts of test images)", fontsize=10)
    fig.tight_layout()
    rep.figure(name, fig, caption)


def kernels_figure(rep: Report, grid3, grid5, n: int, more: int) -> None:
    rows = [(KIND_LABELS[k] + ", 3 classes", grid3[k][n][0]["kernels"])
            for k in ("cnn_max", "sobel_init", "sobel_frozen")]
    rows += [(KIND_LABELS[k] + f", {more} classes", grid5[k][n][0]["kernels"])
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
    fig.suptitle(f"First-layer 3x3 kernels after training ({n} images/class, first seed)")
    rep.figure("kernels", fig, "First-layer 3x3 kernels after training ({n_main} images per "
               "class, first seed); red positive, blue negative, each row on its own scale.")


# -- report -------------------------------------------------------------------------------------
def _esc(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def write_report(out_dir, config, results, grid3, grid5) -> None:
    rep = Report(out_dir, "Inductive bias of convolutions: edge detection", results)
    rep.setup(config)
    rep.text("Data: synthetic {size}x{size} edge images (mlcvlab.data.synthetic.edge_images), "
             "classes none / vertical / horizontal; training edges at positions {train_margin} "
             "to {train_last} only, contrast 0.5-1, noise std 0.05. Test: "
             "{n_test_per_class} fresh images per class for each domain, drawn per seed: "
             "{domains_text}. Models: MLP "
             "{size}x{size}-{hidden}-classes ({mlp_params:,} parameters) and CNN: {n_kernels} "
             "3x3 kernels, no padding, ReLU, global pooling, linear ({cnn_params:,} "
             "parameters). Adam, lr {lr}, batch {batch_size}, {epochs} epochs, no early stopping "
             "and no selection on the test sets. {n_seeds} seeds ({seed_text}); one seed fixes "
             "the training images, the test images, the initialization generator and the data "
             "order for every model, so models are compared paired by seed (mean and 95% "
             "t-interval over seeds).")
    rep.text("Freezing: the frozen CNN's first-layer weight (the Sobel compass bank: "
             "vertical, horizontal, diagonal and anti-diagonal Sobel kernels, each with both "
             "signs since ReLU keeps one polarity; {n_random_kernels} extra kernel(s) random) "
             "is left out of the parameter "
             "list given to Adam, so Adam neither moves it nor keeps moments for it; its "
             "gradient is still computed by backward and zeroed before every step. Checked "
             "after training: frozen kernels bit-identical to Sobel in every run: "
             "{frozen_unchanged}.")
    rep.section("CNN vs MLP against the number of training images")
    rep.table("accuracy_vs_training_size", results["curve_rows"],
              "In-domain test accuracy per training size (3 classes; mean and 95% interval over "
              "seeds)")
    curve_figure(rep, grid3, results["sizes"])
    rep.section("Domain shift and first-layer kernels")
    rep.table("domain_shift", results["domain_rows"], "Mean test accuracy per domain at "
              "{n_main} training images per class")
    rep.table("accuracy_vs_chance", results["chance_rows"], "Accuracy vs chance at {n_main} "
              "images per class (\"vs chance\": above / at / below, from the 95% interval of "
              "accuracy - chance over seeds). A domain where no model is above chance is "
              "degenerate: it is reported so, not ranked.")
    confusion_figure(rep, grid3, results["n_main"], results["domains"], 3, "confusion_3class",
                     ("mlp", "cnn_max", "sobel_frozen"), "Confusion matrices (first seed, "
                     "{n_main} images per class): rows true class, columns predicted.")
    kernels_figure(rep, grid3, grid5, results["n_main"], config["more_classes"])
    rep.section("When is the CNN worse than the MLP?")
    rep.table("cnn_vs_mlp_cells", results["cnn_mlp_cells"], "CNN (max pool, random init) vs "
              "MLP in every (training size, domain) cell, paired by seed: verdict from the 95% "
              "interval of the difference, or the degenerate note")
    rep.section("More classes: max vs average pooling")
    rep.table("more_classes", results["more_rows"], "{more_classes} classes ({more_classes_names})"
              ", {n_main} images per class: mean test accuracy per domain")
    confusion_figure(rep, grid5, results["n_main"], results["domains"][:1], config["more_classes"],
                     "confusion_more_classes", MORE_KINDS,
                     "{more_classes}-class confusion matrices, in-domain (first seed).")
    rep.comparisons(results["comparisons"],
                    heading="Comparisons (paired by seed; {} of them at 95% each, so about 1 "
                            "in 20 verdicts between equal arms is wrong by chance)".format(
                                len(results["comparisons"])))
    rep.conclusions([_esc(line) for line in results["conclusion_lines"]]
                    + ["Smallest training size whose mean in-domain accuracy reaches 0.9: CNN "
                       "{cnn_max_n90}, MLP {mlp_n90} images per class (means; see the "
                       "intervals in the table)."])
    rep.explanation("the CNN applies one small detector at every position (weight sharing) and "
                    "then pools over positions, so an edge detector learned in the central band "
                    "also fires near the border, and few images suffice to learn it; the MLP "
                    "must learn every position separately. Frozen Sobel kernels already are "
                    "edge detectors of both polarities, leaving only a linear read-out to learn; "
                    "that read-out is trained on one polarity only, so it may give no weight to "
                    "the kernels an inverted edge excites.")
    rep.write()


@lab(name="inductive-bias",
     study="CNN vs MLP on synthetic edge images: training size, Sobel kernels, domain shift, "
           "more classes, max vs average pooling",
     quick=_QUICK, standard=_STANDARD, full=_FULL,
     expected_seconds={"quick": 10, "standard": 120, "full": 300})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    """All studies; every report number and comparison comes from here."""
    check_config(config)
    sizes = sorted(int(n) for n in config["n_per_class"])
    seeds = stats.seeds_of(config)
    grid3 = run_grid(MAIN_KINDS, config, sizes, 3, seeds, progress, "3 classes")
    grid5 = run_grid(MORE_KINDS, config, sizes[-1:], config["more_classes"], seeds, progress,
                     f"{config['more_classes']} classes")
    names = list(domains(config["size"]))
    results = summarize(config, grid3, grid5, sizes, names)
    size, margin = config["size"], config["size"] // 4
    results.update({k: config[k] for k in ("size", "hidden", "n_kernels", "lr", "batch_size",
                                           "epochs", "n_test_per_class", "more_classes")})
    results.update({"n_seeds": len(seeds), "seeds": seeds,
                    "seed_text": ", ".join(map(str, seeds)),
                    "train_margin": margin, "train_last": size - margin - 1,
                    "n_random_kernels": max(0, config["n_kernels"] - len(SOBEL_BANK)),
                    "domains_text": _domains_text(size),
                    "mlp_params": build("mlp", config, 3, 0)[0].num_parameters(),
                    "cnn_params": build("cnn_max", config, 3, 0)[0].num_parameters(),
                    "runs": _raw_runs(grid3, grid5, seeds)})
    write_report(out_dir, config, results, grid3, grid5)
    return results


def check_config(config: Dict[str, Any]) -> None:
    """Raise a ValueError naming the first bad config value, before any work."""
    def bad(key, rule):
        raise ValueError(f"inductive-bias: {key} must be {rule}, got {config[key]!r}")

    sizes = config["n_per_class"]
    if not isinstance(sizes, (list, tuple)) or not sizes or any(int(n) < 1 for n in sizes):
        bad("n_per_class", "a non-empty list of integers >= 1")
    if len(set(int(n) for n in sizes)) != len(sizes):
        bad("n_per_class", "a list of distinct sizes")
    for key, low in (("size", 4), ("n_kernels", 1), ("hidden", 1), ("n_test_per_class", 1),
                     ("epochs", 1), ("batch_size", 1)):
        if int(config[key]) < low:
            bad(key, f"an integer >= {low}")
    lr = float(config["lr"])
    if not (np.isfinite(lr) and lr > 0):
        bad("lr", "a finite number > 0")
    if not 3 <= int(config["more_classes"]) <= len(EDGE_CLASSES):
        bad("more_classes", f"an integer in 3..{len(EDGE_CLASSES)}")
    try:
        stats.seeds_of(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"inductive-bias: seeds: {err}") from None


def _domains_text(size: int) -> str:
    d = domains(size)
    return (f"in-domain (as training); low contrast + noise (contrast "
            f"{d['low contrast + noise']['contrast']}, noise std "
            f"{d['low contrast + noise']['noise_std']}); inverted polarity (bright and dark "
            f"sides swapped); all positions (edges at positions 1 to {size - 2}, also outside "
            f"the training band)")


def _raw_runs(grid3, grid5, seeds) -> Dict[str, Any]:
    """Per-run accuracies (JSON-able) for results.json, with their seeds."""
    out = {}
    for classes, grid in (("3", grid3), ("more", grid5)):
        for kind, by_n in grid.items():
            out[f"{classes}/{kind}"] = {str(n): [{"seed": s, "acc": r["acc"],
                                                  "train_acc": r["train_acc"]}
                                                 for s, r in zip(seeds, runs)]
                                        for n, runs in by_n.items()}
    return out
