"""Lab ``perceptron``: the perceptron criterion vs the hinge loss on 20 random 2-D points.

The study (the course's linear-classifier exercise; Rosenblatt's perceptron vs the
SVM's hinge loss): draw 20 points uniformly in [-1, 1]^2, label them +1 where
x1 > x2 and -1 elsewhere, fit a linear classifier f(x) = w·x + b by full-batch
gradient descent on

* the perceptron criterion mean(max(0, -y f(x)))  (``HingeLoss(0)``), and
* the hinge loss          mean(max(0, 1 - y f(x)))  (``HingeLoss(1)``),

and test both on 1000 fresh points. Repeating this for many independent draws of
the 20 training points (one seed per draw: ``config["seeds"]``; both losses see the same
draw and start from the same initialization, so they are compared paired by draw)
shows the distribution of test accuracy and how much the
*predictions* move from draw to draw: for every test point, the fraction of draws
predicting +1 (p_i), and the Bernoulli variance p_i (1 - p_i) averaged over the
test points. The perceptron criterion stops at the first separating line it finds
(zero gradient), the hinge loss keeps pushing until every point has margin 1, which
tends to centre the line between the classes.

All draws train at once: the weights carry a leading draw axis (w: (R, 2), b: (R,)).
``tests/labs/test_perceptron.py`` checks that one draw of this vectorized code equals
``mlcvlab.nn.Linear`` + ``HingeLoss`` + ``mlcvlab.optim.SGD`` on the same data.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from mlcvlab.data.synthetic import perceptron_points
from mlcvlab.labs import stats
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure

LOSSES = {"perceptron": 0.0, "hinge": 1.0}          # name -> HingeLoss margin
COLORS = {"perceptron": "C0", "hinge": "C1"}         # one colour per loss in every figure

_COMMON = {"n_train": 20, "n_test": 1000, "lr": 1.0, "boundary_draws": 4}   # "seeds": one per draw


# -- data and training (vectorized over draws) -------------------------------------------------
def draw_training_sets(draws: int, n: int, gen: np.random.Generator
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """``draws`` independent training sets. Returns X: (R, n, 2), y: (R, n) in {-1, +1}."""
    X = gen.uniform(-1.0, 1.0, size=(draws, n, 2))
    y = np.where(X[..., 0] > X[..., 1], 1.0, -1.0)
    return X, y


def init_linear(draws: int, gen: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """The initialization of ``mlcvlab.nn.Linear(2, 1)``: U(-1/sqrt(2), 1/sqrt(2)) for w and b.

    Returns w: (R, 2), b: (R,) float64.
    """
    bound = 1.0 / np.sqrt(2.0)
    return gen.uniform(-bound, bound, (draws, 2)), gen.uniform(-bound, bound, draws)


def train_hinge(X: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: np.ndarray, margin: float,
                lr: float, epochs: int) -> Tuple[np.ndarray, np.ndarray]:
    """Full-batch gradient descent on mean(max(0, margin - y (X w + b))) for R problems at once.

    X: (R, N, 2), y: (R, N) in {-1, +1}, w0: (R, 2), b0: (R,). A point is active (has a
    nonzero subgradient -y) where y f <= 0 for margin 0 and where y f < margin otherwise,
    exactly as ``mlcvlab.nn.HingeLoss``. Returns the final w: (R, 2), b: (R,).
    """
    if X.ndim != 3 or X.shape[2] != 2 or y.shape != X.shape[:2]:
        raise ValueError(f"perceptron train_hinge: expected X (R, N, 2) and y (R, N), got "
                         f"{X.shape} and {y.shape}")
    if lr <= 0 or epochs < 0:
        raise ValueError(f"perceptron train_hinge: need lr > 0 and epochs >= 0, got lr={lr}, "
                         f"epochs={epochs}")
    w, b = w0.astype(np.float64).copy(), b0.astype(np.float64).copy()
    n = X.shape[1]
    for _ in range(epochs):
        yf = y * (np.einsum("rnd,rd->rn", X, w) + b[:, None])
        active = yf <= 0 if margin == 0 else yf < margin
        dscore = np.where(active, -y, 0.0) / n                       # dL/df: (R, N)
        w -= lr * np.einsum("rn,rnd->rd", dscore, X)
        b -= lr * dscore.sum(axis=1)
    return w, b


def predict(w: np.ndarray, b: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Labels in {-1, +1} (+1 where w·x + b > 0) of the test points X: (T, 2) -> (R, T)."""
    return np.where(X @ w.T + b > 0, 1, -1).T


# -- statistics -----------------------------------------------------------------------------------
def prediction_spread(pred: np.ndarray) -> Dict[str, Any]:
    """Spread of the predictions across draws. pred: (R, T) in {-1, +1}.

    p_plus (T,): fraction of draws predicting +1 at each test point; its Bernoulli
    variance p(1 - p) averaged over the test points; the fraction of test points on
    which the draws disagree at all.
    """
    p_plus = (pred > 0).mean(axis=0)
    var = p_plus * (1.0 - p_plus)
    return {"p_plus": p_plus, "mean_var": float(var.mean()), "max_var": float(var.max()),
            "frac_unstable": float(np.mean((p_plus > 0) & (p_plus < 1)))}


def _angle_deg(w: np.ndarray) -> np.ndarray:
    """Angle (degrees) between the learned normal w: (R, 2) and the true normal (1, -1)/sqrt 2."""
    cos = (w @ np.array([1.0, -1.0]) / np.sqrt(2.0)) / np.maximum(np.linalg.norm(w, axis=1), 1e-300)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def check_config(config: Dict[str, Any]) -> None:
    """Raise a ValueError naming the first bad config value, before any work."""
    def bad(key, rule):
        raise ValueError(f"perceptron lab: {key} must be {rule}, got {config[key]!r}")

    for key, low in (("n_train", 2), ("n_test", 1), ("epochs", 1), ("boundary_draws", 0)):
        if int(config[key]) < low:
            bad(key, f"an integer >= {low}")
    lr = float(config["lr"])
    if not (np.isfinite(lr) and lr > 0):
        bad("lr", "a finite number > 0")
    if len(stats.seeds_of(config)) < 2:
        bad("seeds", "at least 2 draws (a count >= 2 or a list of >= 2 seeds)")


def draw_sets(seeds: List[int], n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One training set and one initialization per seed, each from its own generator
    ``default_rng([seed, 0])``: draw r is reproducible from its seed alone, whatever the other
    seeds are. Returns X: (R, n, 2), y: (R, n), w0: (R, 2), b0: (R,)."""
    parts = []
    for s in seeds:
        gen = np.random.default_rng([int(s), 0])
        X, y = draw_training_sets(1, n, gen)
        w0, b0 = init_linear(1, gen)
        parts.append((X, y, w0, b0))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))


def deviation_per_draw(pred: np.ndarray) -> np.ndarray:
    """Per draw: the mean over test points of (its prediction - the mean prediction over
    draws)^2, predictions as 0/1. Its mean over draws is exactly mean_i p_i (1 - p_i), the
    spread of :func:`prediction_spread`, so two losses can be compared draw by draw."""
    b = (pred > 0).astype(np.float64)
    return ((b - b.mean(axis=0)) ** 2).mean(axis=1)


def run_study(config: Dict[str, Any], progress) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Train both losses on the same training sets (one per seed) from the same initializations.

    Returns (results, arrays) where arrays holds what the figures need.
    """
    check_config(config)
    seeds = stats.seeds_of(config)
    draws, n_train = len(seeds), int(config["n_train"])
    X_test, y_test = perceptron_points(int(config["n_test"]),
                                       seed=np.random.default_rng([int(config["seed"]), 1]))
    X, y, w0, b0 = draw_sets(seeds, n_train)
    res: Dict[str, Any] = {"draws": draws, "seed_range": _seed_text(seeds), "n_train": n_train,
                           "n_test": int(config["n_test"]), "epochs": int(config["epochs"]),
                           "lr": float(config["lr"])}
    arrays: Dict[str, Any] = {"X": X, "y": y, "X_test": X_test}
    for name in progress(list(LOSSES), desc="perceptron vs hinge"):
        w, b = train_hinge(X, y, w0, b0, LOSSES[name], float(config["lr"]), int(config["epochs"]))
        pred = predict(w, b, X_test)
        acc = (pred == y_test).mean(axis=1)
        train_pred = np.where(np.einsum("rnd,rd->rn", X, w) + b[:, None] > 0, 1.0, -1.0)
        train_acc = (train_pred == y).mean(axis=1)
        spread = prediction_spread(pred)
        angle = _angle_deg(w)
        arrays[name] = {"w": w, "b": b, "acc": acc, "p_plus": spread.pop("p_plus"),
                        "angle": angle, "deviation": deviation_per_draw(pred)}
        summary = stats.summarize(acc)
        res.update({f"{name}_acc_mean": summary["mean"],
                    f"{name}_acc_ci_lo": summary["ci95"][0],
                    f"{name}_acc_ci_hi": summary["ci95"][1],
                    f"{name}_acc_std": float(acc.std(ddof=1)),
                    f"{name}_acc_min": float(acc.min()),
                    f"{name}_acc_median": float(np.median(acc)),
                    f"{name}_train_acc_mean": float(train_acc.mean()),
                    f"{name}_separated_frac": float(np.mean(train_acc == 1.0)),
                    f"{name}_angle_mean_deg": float(angle.mean())})
        res.update({f"{name}_{k}": v for k, v in spread.items()})
    h, p = arrays["hinge"], arrays["perceptron"]
    res["comparisons"] = [        # paired by draw: same training set and initialization
        stats.compare("hinge loss", h["acc"], "perceptron criterion", p["acc"],
                      f"test accuracy ({res['n_test']} points)", higher_is_better=True),
        stats.compare("hinge loss", h["angle"], "perceptron criterion", p["angle"],
                      "angle between learned and true normal (degrees)", higher_is_better=False),
        stats.compare("hinge loss", h["deviation"], "perceptron criterion", p["deviation"],
                      "deviation of a draw's predictions from the mean prediction over draws "
                      "(mean squared, 0/1 labels)", higher_is_better=False)]
    diff = h["acc"] - p["acc"]
    res["hinge_better_frac"] = float(np.mean(diff > 0))
    res["perceptron_better_frac"] = float(np.mean(diff < 0))
    return res, arrays


def _seed_text(seeds: List[int]) -> str:
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"seeds {seeds[0]}..{seeds[-1]}"
    return "seeds " + ", ".join(map(str, seeds))


# -- figures and report ---------------------------------------------------------------------------
def _boundary_figure(arrays: Dict[str, Any], k: int):
    """Decision boundaries of the first k draws, perceptron left, hinge right."""
    fig, axes = new_figure(ncols=2, figsize=(10, 4.6))
    grid = np.linspace(-1.0, 1.0, 2)
    colors = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8"]
    for ax, name in zip(axes, LOSSES):
        for r in range(k):
            X, y, c = arrays["X"][r], arrays["y"][r], colors[r % len(colors)]
            w, b = arrays[name]["w"][r], arrays[name]["b"][r]
            ax.scatter(X[y > 0, 0], X[y > 0, 1], marker="+", color=c, s=30)
            ax.scatter(X[y < 0, 0], X[y < 0, 1], marker="o", facecolors="none", color=c, s=20)
            if abs(w[1]) > 1e-12:                           # w1 x1 + w2 x2 + b = 0
                ax.plot(grid, -(w[0] * grid + b) / w[1], color=c, label=f"draw {r}")
        ax.plot(grid, grid, "k--", lw=1, label="true boundary x1 = x2")
        ax.set(xlim=(-1, 1), ylim=(-1, 1), xlabel="x1", ylabel="x2",
               title=f"{name} (margin {LOSSES[name]:g})")
    handles, labels = axes[0].get_legend_handles_labels()    # outside the axes: hides nothing
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.subplots_adjust(bottom=0.2, wspace=0.25)
    fig.suptitle(f"Decision boundaries of the first {k} draws (one colour per draw, same in "
                 "both panels)")
    return fig


def _histogram_figure(arrays: Dict[str, Any]):
    fig, ax = new_figure(figsize=(6, 4))
    bins = np.linspace(min(arrays[n]["acc"].min() for n in LOSSES), 1.0, 30)
    for name in LOSSES:
        ax.hist(arrays[name]["acc"], bins=bins, alpha=0.55, label=name, color=COLORS[name])
    ax.set(xlabel=f"test accuracy (fraction of {len(arrays['X_test'])} points)",
           ylabel="number of draws",
           title=f"Test accuracy over {len(arrays['X'])} draws")
    ax.legend()
    return fig


def _spread_figure(arrays: Dict[str, Any]):
    """Per test point: the fraction of draws predicting +1, for each loss."""
    fig, axes = new_figure(ncols=2, figsize=(11.5, 4.8))
    fig.subplots_adjust(wspace=0.3)
    Xt = arrays["X_test"]
    for ax, name in zip(axes, LOSSES):
        sc = ax.scatter(Xt[:, 0], Xt[:, 1], c=arrays[name]["p_plus"], cmap="coolwarm", s=8,
                        vmin=0, vmax=1)
        ax.plot([-1, 1], [-1, 1], "k--", lw=1, label="true boundary x1 = x2")
        ax.set(xlabel="x1", ylabel="x2", title=f"{name} (margin {LOSSES[name]:g})")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    fig.colorbar(sc, ax=list(axes), label="fraction of draws predicting +1")
    fig.suptitle(f"Fraction of {len(arrays['X'])} draws predicting +1, per test point")
    return fig


def _rows(res: Dict[str, Any]) -> List[Dict[str, Any]]:
    keys = ["acc_mean", "acc_std", "acc_median", "acc_min", "train_acc_mean", "separated_frac",
            "mean_var", "frac_unstable", "angle_mean_deg"]
    return [{"loss": name, "margin": LOSSES[name], **{k: res[f"{name}_{k}"] for k in keys}}
            for name in LOSSES]


def _conclusions(res: Dict[str, Any]) -> List[str]:
    """Conclusion lines; each comparison's words come from its computed verdict."""
    acc, angle, dev = res["comparisons"]
    lines = ["Mean test accuracy over {draws} draws: perceptron criterion "
             "{perceptron_acc_mean:.4f} "
             "(95% CI [{perceptron_acc_ci_lo:.4f}, {perceptron_acc_ci_hi:.4f}]), hinge loss "
             "{hinge_acc_mean:.4f} (95% CI [{hinge_acc_ci_lo:.4f}, {hinge_acc_ci_hi:.4f}])."]
    words = {"a better": "the hinge loss's test accuracy is higher than the perceptron "
                         "criterion's",
             "b better": "the perceptron criterion's test accuracy is higher than the hinge "
                         "loss's",
             "not separable": "the two losses' test accuracies are not separable"}
    lines.append("Paired by draw, " + words[acc["verdict"]] + " " + _cite(acc)
                 + ". The hinge loss is ahead on {hinge_better_frac:.1%} of the draws, the "
                   "perceptron criterion on {perceptron_better_frac:.1%}.")
    spread = {"a better": "the hinge loss's predictions move less from draw to draw",
              "b better": "the perceptron criterion's predictions move less from draw to draw",
              "not separable": "how much the predictions move from draw to draw is not "
                               "separable between the two losses"}
    lines.append("Spread (mean p(1-p) over the test points: {hinge_mean_var:.4f} hinge, "
                 "{perceptron_mean_var:.4f} perceptron): " + spread[dev["verdict"]] + " "
                 + _cite(dev) + ".")
    direction = {"a better": "the hinge loss's line is closer in direction to the true boundary",
                 "b better": "the perceptron criterion's line is closer in direction to the true "
                             "boundary",
                 "not separable": "the angle to the true boundary is not separable between the "
                                  "two losses"}
    lines.append("Direction of the learned line: " + direction[angle["verdict"]] + " "
                 + _cite(angle) + ".")
    lines.append("Training data separated at the end: {perceptron_separated_frac:.1%} of draws "
                 "for the perceptron criterion, {hinge_separated_frac:.1%} for the hinge loss.")
    return lines


def _cite(c: Dict[str, Any]) -> str:
    """The numbers behind a verdict, for a conclusion that cites a comparison."""
    lo, hi = c["ci95"]
    interval = "no interval" if lo is None else f"95% CI [{lo:+.3g}, {hi:+.3g}]"
    return _escape(f"(difference {c['diff']:+.3g}, {interval}, {c['n_seeds']} draws; "
                   "see Comparisons)")


def _escape(text: str) -> str:
    """A computed sentence used inside a Report template: braces doubled."""
    return text.replace("{", "{{").replace("}", "}}")


def _write_report(out_dir, config: Dict[str, Any], res: Dict[str, Any], arrays) -> None:
    rep = Report(out_dir, "Perceptron criterion vs hinge loss on 20 random points", res)
    rep.setup(config)
    rep.text("Each of {draws} draws ({seed_range}; one seed per draw): {n_train} training points "
             "uniform in [-1, 1]^2 labelled +1 where x1 > x2; a linear classifier w.x + b "
             "(initialized like `mlcvlab.nn.Linear`) trained by full-batch gradient descent for "
             "{epochs} epochs at lr {lr} on the perceptron criterion (HingeLoss(0)) and, from the "
             "same initialization, on the hinge loss (HingeLoss(1)); tested on the same {n_test} "
             "fresh points for every draw. The two losses are compared paired by draw, with "
             "t-intervals over the draws.")
    rep.table("accuracy", _rows(res), "Test accuracy and spread of the predictions over "
              "{draws} draws (mean_var: mean over test points of p(1-p), p = fraction of draws "
              "predicting +1; frac_unstable: test points where the draws disagree; "
              "angle_mean_deg: mean angle between learned and true normal)")
    k = min(int(config["boundary_draws"]), res["draws"])
    if k > 0:
        rep.figure("boundaries", _boundary_figure(arrays, k),
                   "Decision boundaries of the first few draws (+: label +1, o: label -1)")
    rep.figure("accuracy_hist", _histogram_figure(arrays),
               "Test accuracy over {draws} draws of the {n_train} training points")
    rep.figure("prediction_spread", _spread_figure(arrays),
               "Per test point, the fraction of draws predicting +1")
    rep.comparisons(res["comparisons"], heading="Comparisons (paired by draw)")
    rep.conclusions(_conclusions(res))
    rep.explanation("the perceptron criterion has zero gradient once every training point is "
                    "on the right side, so it stops at the first separating line it reaches; "
                    "the hinge loss keeps pushing until every point has margin 1, which tends to "
                    "centre the line between the two classes and so to move it less from one "
                    "draw of 20 points to the next.")
    rep.write()


_STANDARD = {**_COMMON, "seeds": 1000, "epochs": 10000}


@lab(name="perceptron",
     study="Perceptron criterion vs hinge loss: 20 random 2-D points labelled by x1 > x2, "
           "tested on 1000, many draws",
     quick={**_COMMON, "seeds": 300, "epochs": 1000},
     standard=_STANDARD, full=_STANDARD,
     expected_seconds={"quick": 3, "standard": 25, "full": 25})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    """Train both losses on every draw, measure accuracy and spread, write the report."""
    res, arrays = run_study(config, progress)
    res["table"] = _rows(res)
    _write_report(out_dir, config, res, arrays)
    return res
