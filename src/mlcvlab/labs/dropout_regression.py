"""Lab ``dropout-regression``: dropout on a linear model is Tikhonov regularization.

The toy (the course's exercise): one training point x = (10, 1) with target y, a
linear model without bias, prediction x·w = 10 w1 + w2, squared loss. The first
feature has ten times the scale of the second. Least squares is underdetermined
(every w with 10 w1 + w2 = y fits exactly); gradient descent from w = 0 picks the
minimum-norm fit w = x y / ||x||², which puts almost all of the prediction on the
large feature. Dropout on the input changes that.

Dropout as regularization (Srivastava et al. 2014, Sec. 9.1; Wager, Wang & Liang
2013): with keep probability q and a Bernoulli(q) mask m on the input,

    E_m ||y - X (m ⊙ w)||²  =  ||y - q X w||² + q (1 - q) ||Γ w||²,   Γ = diag(||X_:j||),

the formula's *non-inverted* parameterization (train on m ⊙ x, predict with q w).
The library's ``Dropout(p)`` is *inverted* (train on m ⊙ x / q, predict with w), whose
expected loss is ||y - X w||² + ((1 - q)/q) ||Γ w||². Both describe the same
predictor: w_inverted = q · w_formula. This lab trains with the library (inverted)
and compares the trained w with the closed form

    w*(p) = (XᵀX + ε Γ²)⁻¹ Xᵀ y,   ε = p / (1 - p) = (1 - q)/q,

also listing w_formula = w*/q. For the single point this is
w*(p) = Γ⁻² x y / (xᵀ Γ⁻² x + ε) (Sherman-Morrison): every feature contributes equally
to the prediction. As p → 0+, w*(p) tends to the minimum-Γ-norm fit, not to the
minimum-norm fit that p = 0 trains to: the minimizer jumps at p = 0.

Everything trains with ``mlcvlab.nn`` (Dropout -> Linear(2, 1, bias=False)),
``MSELoss`` and ``mlcvlab.optim`` (SGD, Adam) in float64, starting from w = 0. A
mini-batch is B copies of the training point(s) drawn with replacement, each with its
own dropout mask ("small batch" B = 1, "large batch" B = 256). Trained weights are the
average of the iterates over the last ``tail`` fraction of the steps (Polyak
averaging), because a constant learning rate leaves SGD jittering around w*.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from mlcvlab.data.synthetic import dropout_regression
from mlcvlab.labs import stats
from mlcvlab.labs.checks import Checker
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure
from mlcvlab.nn import Dropout, Linear, MSELoss, Sequential
from mlcvlab.optim import SGD, Adam

_COMMON = {"x": [10.0, 1.0], "y": 11.0, "p": 0.5, "lr": 0.002, "adam_lr": 0.01,
           "batch_small": 1, "batch_large": 256, "tail": 0.5, "tolerance": 0.05,
           "sweep_grid": [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5,
                          0.6, 0.7, 0.8, 0.9],
           "full_rank_n": 50}


# -- closed forms -------------------------------------------------------------------------------
def gamma_sq(X: np.ndarray) -> np.ndarray:
    """Γ² as a vector: the squared column norms of X: (N, D) -> (D,)."""
    return np.sum(X * X, axis=0)


def dropout_minimizer(X: np.ndarray, y: np.ndarray, p: float) -> np.ndarray:
    """Minimizer of the expected inverted-dropout loss, w*(p) = (XᵀX + ε Γ²)⁻¹ Xᵀ y, ε = p/(1-p).

    X: (N, D), y: (N,), p in (0, 1) the drop probability. Multiply by 1/(1-p) for the
    non-inverted parameterization of ||y - qXw||² + q(1-q)||Γw||².
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout_minimizer: p must be in (0, 1) (p = 0 has no unique minimizer "
                         f"when X is rank deficient; use min_norm_fit), got p={p}")
    eps = p / (1.0 - p)
    return np.linalg.solve(X.T @ X + eps * np.diag(gamma_sq(X)), X.T @ y)


def min_norm_fit(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The minimum Euclidean-norm least-squares fit pinv(X) y: where GD from w = 0 ends."""
    return np.linalg.pinv(X) @ y


def min_gamma_norm_fit(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The least-squares fit of minimum ||Γ w||: the limit of w*(p) as p -> 0+."""
    g = np.sqrt(gamma_sq(X))
    return np.linalg.pinv(X / g) @ y / g


def expected_loss(X: np.ndarray, y: np.ndarray, w: np.ndarray, p: float) -> np.ndarray:
    """Mean over the N points of the expected inverted-dropout squared loss;
    w: (..., D) -> (...).
    """
    eps = p / (1.0 - p)
    resid = y[:, None] - X @ np.atleast_2d(w).T                           # (N, S)
    value = (np.mean(resid ** 2, axis=0) + eps * (np.atleast_2d(w) ** 2) @ gamma_sq(X) / len(y))
    return value if np.ndim(w) > 1 else value[0]


def slowest_time_constant(X: np.ndarray, p: float, lr: float) -> float:
    """Steps for GD on the expected loss to shrink the slowest error direction by e:
    1/(lr λ_min).
    """
    eps = p / (1.0 - p)
    hess = 2.0 * (X.T @ X + eps * np.diag(gamma_sq(X))) / X.shape[0]
    lam = float(np.linalg.eigvalsh(hess)[0])
    return float("inf") if lam <= 1e-300 else 1.0 / (lr * lam)


# -- training with the library --------------------------------------------------------------------
def train(X: np.ndarray, y: np.ndarray, p: float, batch: int, steps: int, lr: float,
          optimizer: str, seed: int, tail: float) -> Dict[str, Any]:
    """Train Dropout(p) -> Linear(2, 1, bias=False) from w = 0 with MSELoss, float64.

    Each step: ``batch`` rows of X drawn with replacement, each with its own dropout mask.
    Returns {"w": tail-averaged weights (D,), "path": iterates (steps + 1, D),
    "batch_loss": (steps,) training loss of each mini-batch (with dropout)}.
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"dropout-regression train: optimizer must be 'sgd' or 'adam', "
                         f"got {optimizer!r}")
    if batch < 1 or steps < 1 or not 0.0 < tail <= 1.0:
        raise ValueError(f"dropout-regression train: need batch >= 1, steps >= 1, 0 < tail <= 1, "
                         f"got batch={batch}, steps={steps}, tail={tail}")
    gen = np.random.default_rng(seed)
    lin = Linear(X.shape[1], 1, bias=False, rng=gen)
    model = Sequential(Dropout(p, rng=gen), lin).astype(np.float64)
    lin.weight.data[...] = 0.0
    opt = (SGD if optimizer == "sgd" else Adam)(model.parameters(), lr=lr)
    loss = MSELoss()
    path, losses = np.empty((steps + 1, X.shape[1])), np.empty(steps)
    path[0] = lin.weight.data[0]
    for t in range(steps):
        idx = gen.integers(0, X.shape[0], size=batch)
        opt.zero_grad()
        losses[t] = loss(model(X[idx]), y[idx, None])
        model.backward(loss.backward())
        opt.step()
        path[t + 1] = lin.weight.data[0]
    start = steps + 1 - max(1, int(round(tail * steps)))
    return {"w": path[start:].mean(axis=0), "path": path, "batch_loss": losses}


# -- the study ------------------------------------------------------------------------------------
def _data(config: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    x = np.asarray(config["x"], dtype=np.float64)
    if x.shape != (2,) or np.any(x == 0):
        raise ValueError(f"dropout-regression: x must be two nonzero numbers, got {config['x']}")
    return x[None, :], np.array([float(config["y"])])


def _runs(config: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The trained configurations: name, p, batch, optimizer, lr."""
    p, bs, bl = float(config["p"]), int(config["batch_small"]), int(config["batch_large"])
    lr, alr = float(config["lr"]), float(config["adam_lr"])
    return [{"run": "GD, no dropout", "p": 0.0, "batch": bl, "optimizer": "sgd", "lr": lr},
            {"run": "dropout SGD, small batch", "p": p, "batch": bs, "optimizer": "sgd", "lr": lr},
            {"run": "dropout SGD, large batch", "p": p, "batch": bl, "optimizer": "sgd", "lr": lr},
            {"run": "dropout Adam, small batch", "p": p, "batch": bs, "optimizer": "adam",
             "lr": alr},
            {"run": "dropout Adam, large batch", "p": p, "batch": bl, "optimizer": "adam",
             "lr": alr}]


def _target(X, y, p: float) -> np.ndarray:
    """What training should reach: w*(p) for p > 0, the minimum-norm fit for p = 0 (GD from 0)."""
    return dropout_minimizer(X, y, p) if p > 0 else min_norm_fit(X, y)


def _row(spec: Dict[str, Any], w: np.ndarray, X, y, tol: float, p_config: float,
         seed: int) -> Dict[str, Any]:
    star = _target(X, y, spec["p"])
    rel = float(np.linalg.norm(w - star) / np.linalg.norm(star))
    star_cfg, ols = dropout_minimizer(X, y, p_config), min_norm_fit(X, y)
    return {**spec, "seed": seed, "w1": w[0], "w2": w[1], "prediction": float(X[0] @ w),
            "closed_w1": star[0], "closed_w2": star[1],
            "formula_w1": star[0] / (1 - spec["p"]), "formula_w2": star[1] / (1 - spec["p"]),
            "rel_error": rel, "within_tol": bool(rel <= tol),
            "rel_to_dropout_star": float(np.linalg.norm(w - star_cfg) / np.linalg.norm(star_cfg)),
            "rel_to_ols": float(np.linalg.norm(w - ols) / np.linalg.norm(ols)),
            "share1": float(X[0, 0] * w[0] / (X[0] @ w)),
            "expected_loss": float(expected_loss(X, y, w, spec["p"]))}


def train_runs(config: Dict[str, Any], X, y, progress) -> Tuple[List[Dict[str, Any]], Dict]:
    """Every run of :func:`_runs` for every seed. For one seed every run draws its batches
    and masks from the same seeded stream (paired by seed); all start from w = 0.
    Returns the per-(seed, run) rows and the paths of the first seed."""
    rows, paths = [], {}
    seeds = stats.seeds_of(config)
    jobs = [(s, spec) for s in seeds for spec in _runs(config)]
    for seed, spec in progress(jobs, desc="train runs"):
        out = train(X, y, spec["p"], spec["batch"], int(config["steps"]), spec["lr"],
                    spec["optimizer"], seed, float(config["tail"]))
        rows.append(_row(spec, out["w"], X, y, float(config["tolerance"]), float(config["p"]),
                         seed))
        if seed == seeds[0]:
            paths[spec["run"]] = out
    return rows, paths


def tolerance_verdict(ci95, mean: float, tol: float) -> str:
    """"within" / "not within" the tolerance when the 95% interval of the relative distance
    lies below / above it; "not separable from" when it contains it (one seed: the mean)."""
    lo, hi = ci95
    if lo is None:
        return "within" if mean <= tol else "not within"
    if hi <= tol:
        return "within"
    if lo > tol:
        return "not within"
    return "not separable from"


def sweep(config: Dict[str, Any], X, y, progress) -> List[Dict[str, Any]]:
    """Closed form over the p grid, plus large-batch SGD at the ``sweep_train`` rates over
    the seeds (mean weights and the relative distance to w*(p) with its 95% interval).

    The SGD step shrinks for p > 0.5 (lr · 2(1 - p)) because the inverted mask scales the
    input by 1/(1 - p) and a fixed step would diverge.
    """
    rows = []
    for p in config["sweep_grid"]:
        w = _target(X, y, p)
        rows.append({"p": p, "kind": "closed form" if p > 0 else "p = 0: GD from 0 (min-norm)",
                     "w1": w[0], "w2": w[1], "prediction": float(X[0] @ w),
                     "time_constant_steps": slowest_time_constant(X, p, float(config["lr"]))})
    seeds = stats.seeds_of(config)
    for p in progress(config["sweep_train"], desc="sweep"):
        lr = float(config["lr"]) * min(1.0, 2.0 * (1.0 - p))
        star = dropout_minimizer(X, y, p)
        ws = [train(X, y, p, int(config["batch_large"]), int(config["steps"]), lr, "sgd",
                    s + 100, float(config["tail"]))["w"] for s in seeds]
        rel = stats.summarize([np.linalg.norm(w - star) / np.linalg.norm(star) for w in ws])
        w = np.mean(ws, axis=0)
        rows.append({"p": p, "kind": f"trained (SGD, large batch, mean of {len(seeds)} seeds)",
                     "w1": w[0], "w2": w[1], "prediction": float(X[0] @ w),
                     "time_constant_steps": slowest_time_constant(X, p, lr),
                     "rel_error": rel["mean"], "rel_error_ci_low": rel["ci95"][0],
                     "rel_error_ci_high": rel["ci95"][1],
                     "tolerance": tolerance_verdict(rel["ci95"], rel["mean"],
                                                    float(config["tolerance"]))})
    return rows


def jump_numbers(X, y, config: Dict[str, Any]) -> Dict[str, Any]:
    """The discontinuity at p = 0 on the toy, and its absence on full-rank data."""
    w0, wlim = min_norm_fit(X, y), min_gamma_norm_fit(X, y)
    tiny = min(p for p in config["sweep_grid"] if p > 0)
    w_tiny = dropout_minimizer(X, y, tiny)
    Xf, yf = dropout_regression(int(config["full_rank_n"]), seed=config["seed"],
                                scales=(abs(X[0, 0]), abs(X[0, 1])))
    w_ols = np.linalg.lstsq(Xf, yf, rcond=None)[0]
    return {"minnorm_w": w0, "limit_w": wlim, "tiny_p": tiny, "tiny_w": w_tiny,
            "tiny_vs_limit": float(np.linalg.norm(w_tiny - wlim)),
            "jump_size": float(np.linalg.norm(wlim - w0)),
            "minnorm_share1": float(X[0, 0] * w0[0] / (X[0] @ w0)),
            "limit_share1": float(X[0, 0] * wlim[0] / (X[0] @ wlim)),
            "tiny_time_constant": slowest_time_constant(X, tiny, float(config["lr"])),
            "full_rank_gap": float(np.linalg.norm(dropout_minimizer(Xf, yf, tiny) - w_ols)),
            "full_rank_ols": w_ols}


# -- figures and report ---------------------------------------------------------------------------
RUN_COLOURS = {"GD, no dropout": "C0", "dropout SGD, small batch": "C1",
               "dropout SGD, large batch": "C2", "dropout Adam, small batch": "C3",
               "dropout Adam, large batch": "C4"}


def _curves_figure(X, y, specs, paths):
    """Left: expected-dropout-loss gap to its minimum per run; right: the weight paths
    (first seed)."""
    fig, (ax, bx) = new_figure(ncols=2, figsize=(11, 4.4))
    for r in specs:
        path = paths[r["run"]]["path"]
        colour = RUN_COLOURS.get(r["run"])
        floor = expected_loss(X, y, _target(X, y, r["p"]), r["p"])
        gap = np.maximum(expected_loss(X, y, path, r["p"]) - floor, 1e-12)
        win = max(1, len(gap) // 100)                  # moving average: the SGD noise is large
        smooth = np.convolve(gap, np.ones(win) / win, mode="valid")
        ax.loglog(np.arange(1, len(smooth) + 1), smooth, color=colour, lw=1,
                  label=f"{r['run']} (p={r['p']:g})")
        bx.plot(path[:, 0], path[:, 1], color=colour, lw=0.8, alpha=0.8, label=r["run"])
    ax.set(xlabel="step (optimizer updates)",
           ylabel="expected loss - its minimum (squared target units)",
           title="expected loss gap (own p), moving average")
    ax.legend(fontsize=7)
    w1 = np.linspace(-0.2, 1.3, 2)
    bx.plot(w1, (y[0] - X[0, 0] * w1) / X[0, 1], "k:", lw=1, label="exact fits 10 w1 + w2 = y")
    for p in sorted({r["p"] for r in specs}):
        star = _target(X, y, p)
        bx.scatter([star[0]], [star[1]], marker="*", s=140, color="k", zorder=5)
    bx.set(xlabel="w1 (weight of the feature of scale 10; unitless)",
           ylabel="w2 (weight of the feature of scale 1; unitless)",
           title="weight paths from w = 0 (first seed); stars: closed forms")
    bx.legend(fontsize=7)
    fig.suptitle("Training runs: loss gap and weight paths")
    return fig


def _sweep_figure(rows, jump):
    """w1 and w2 vs p: closed form (line), trained (dots), the p = 0 value (squares)."""
    fig, axes = new_figure(ncols=2, figsize=(11, 4.4))
    closed = [r for r in rows if r["kind"] == "closed form"]
    trained = [r for r in rows if r["kind"].startswith("trained")]
    for ax, xscale in zip(axes, ("linear", "log")):
        for j, c in ((0, "C0"), (1, "C1")):
            key = f"w{j + 1}"
            ax.plot([r["p"] for r in closed], [r[key] for r in closed], "-", color=c,
                    label=f"{key} closed form w*(p)")
            ax.plot([r["p"] for r in trained], [r[key] for r in trained], "o", color=c,
                    label=f"{key} trained (SGD, mean over seeds)")
            ax.axhline(jump["minnorm_w"][j], color=c, ls="--", lw=1,
                       label=f"{key} at p = 0 (GD, min-norm)")
            if xscale == "linear":
                ax.plot([0.0], [jump["minnorm_w"][j]], "s", color=c, ms=8)
        ax.set(xscale=xscale, xlabel="dropout rate p (drop probability, 0-1)",
               ylabel="weight (unitless)", title=f"weights vs p ({xscale} p axis)")
        ax.legend(fontsize=7)
    fig.suptitle("Dropout minimizer w*(p) and trained weights")
    return fig


_SWEEP_COLUMNS = ["p", "kind", "w1", "w2", "prediction", "time_constant_steps", "rel_error",
                  "rel_error_ci_low", "rel_error_ci_high", "tolerance"]
_RUN_COLUMNS = ["run", "p", "batch", "optimizer", "lr", "seeds", "w1", "w2", "closed_w1",
                "closed_w2", "formula_w1", "formula_w2", "rel_error", "rel_error_ci_low",
                "rel_error_ci_high", "tolerance", "share1"]


def _write_report(out_dir, config, res, X, y, paths) -> None:
    rep = Report(out_dir, "Dropout as Tikhonov regularization on a two-feature regression", res)
    rep.setup(config)
    rep.text("Toy: one training point x = {x}, target y = {y}; model x.w = {x[0]:g} w1 + "
             "{x[1]:g} w2 (no bias), MSELoss, training from w = 0 in float64 with `mlcvlab.nn` "
             "(Dropout -> Linear) and `mlcvlab.optim`, {steps} steps; trained weights are the "
             "mean of the iterates over the last {tail:.0%} of the steps. Γ = diag{gamma}. "
             "Every run is repeated over seeds {seeds_used}; for one seed all runs draw their "
             "batches and dropout masks from the same seeded stream.")
    rep.text("Parameterization: the library's Dropout(p) is inverted (keep probability q = 1 - p, "
             "kept inputs scaled by 1/q, prediction with w). Its expected loss is "
             "||y - Xw||² + (p/(1-p)) ||Γw||², minimized by w*(p) = (XᵀX + (p/(1-p))Γ²)⁻¹Xᵀy, "
             "the column `closed_w`. The formula ||y - qXw||² + q(1-q)||Γw||² is the "
             "non-inverted parameterization (train on m⊙x, predict with q·w); its minimizer is "
             "w*(p)/q, the column `formula_w`. We compare trained weights with `closed_w`.")
    rep.section("Closed-form OLS, GD, dropout GD (small and large batch), SGD vs Adam")
    rep.text("Least squares is not unique here (every w with {x[0]:g} w1 + {x[1]:g} w2 = y fits). "
             "Closed-form OLS (pseudo-inverse, minimum norm): w = {ols_w_r}; GD from 0 reaches "
             "{gd_w_r}. The dropout closed form at p = {p}: w* = {star_w_r} (formula "
             "parameterization {formula_w_r}).")
    rep.table("runs", res["runs"], "Trained weights (mean over {n_seeds} seeds) vs closed form; "
              "rel_error = ||w - w*|| / ||w*|| with its 95% t-interval over seeds; tolerance: "
              "the interval below / above / containing {tolerance}", columns=_RUN_COLUMNS)
    rep.table("runs_per_seed", res["runs_per_seed"], "Every run and seed",
              columns=["run", "seed", "w1", "w2", "rel_error", "rel_to_dropout_star",
                       "rel_to_ols", "share1"])
    rep.figure("loss_curves", _curves_figure(X, y, _runs(config), paths),
               "Loss curves (expected loss of each run's own p minus its minimum) and weight "
               "paths, first seed")
    rep.comparisons(res["comparisons"], heading="Comparisons (paired by seed)")
    rep.section("Sweep over the dropout rate, and the jump at p = 0")
    rep.table("sweep", res["sweep"], "w*(p) in closed form, and trained with large-batch SGD "
              "(mean over seeds; rel_error with its 95% interval); time_constant_steps = "
              "1/(lr λ_min) of the expected loss's Hessian", columns=_SWEEP_COLUMNS)
    rep.figure("sweep", _sweep_figure(res["sweep"], res["jump"]),
               "Dropout weights vs p; dashed: the weights at p = 0 exactly")
    rep.text("As p -> 0+, w*(p) -> {limit_w_r} (the fit of minimum ||Γw||; at p = {tiny_p:g} "
             "w* = {tiny_w_r}, {tiny_vs_limit:.2e} from the limit), but at p = 0 exactly GD "
             "trains to {ols_w_r}: a jump of {jump_size:.3f} in w. At the limit the large "
             "feature carries {limit_share1:.1%} of the prediction, at p = 0 {minnorm_share1:.1%}. "
             "These numbers are closed forms (no seed). The slowest direction of GD on the "
             "expected loss at p = {tiny_p:g} (lr {lr}) has a time constant of "
             "{tiny_time_constant:.3g} steps.")
    rep.explanation("any p > 0 adds ε||Γw||² with ε = p/(1-p), which selects, among the exact "
                    "fits, the one of smallest Γ-norm however small ε is; at p = 0 nothing "
                    "selects and GD keeps the min-Euclidean-norm fit its start w = 0 implies. "
                    "The curvature along the exact-fit line is of order ε, hence the long time "
                    "constant above.")
    rep.text("On full-rank data ({full_rank_n} points from `mlcvlab.data.synthetic."
             "dropout_regression`, feature scales {x[0]:g} and {x[1]:g}) there is no jump: "
             "||w*({tiny_p:g}) - w_OLS|| = {full_rank_gap:.2e} (closed forms).")
    rep.explanation("OLS is unique on full-rank data, so w*(p) tends to it as p -> 0.")
    rep.conclusions(_CONCLUSIONS)
    rep.write()


def _fmt_w(w) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in w) + ")"


def _aggregate(config, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per run: mean weights over seeds, rel_error with its 95% interval and the
    tolerance verdict."""
    out, tol = [], float(config["tolerance"])
    for spec in _runs(config):
        mine = [r for r in rows if r["run"] == spec["run"]]
        rel = stats.summarize([r["rel_error"] for r in mine])
        first = mine[0]
        out.append({**spec, "seeds": len(mine),
                    "w1": float(np.mean([r["w1"] for r in mine])),
                    "w2": float(np.mean([r["w2"] for r in mine])),
                    "closed_w1": first["closed_w1"], "closed_w2": first["closed_w2"],
                    "formula_w1": first["formula_w1"], "formula_w2": first["formula_w2"],
                    "rel_error": rel["mean"], "rel_error_ci_low": rel["ci95"][0],
                    "rel_error_ci_high": rel["ci95"][1],
                    "tolerance": tolerance_verdict(rel["ci95"], rel["mean"], tol),
                    "share1": float(np.mean([r["share1"] for r in mine]))})
    return out


def _comparisons(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The paired-by-seed comparisons of the runs."""
    def vals(run, key):
        return [r[key] for r in rows if r["run"] == run]

    d = "relative distance to the dropout minimizer w*(p)"
    pairs = [("dropout Adam, small batch", "dropout SGD, small batch", "rel_error", d),
             ("dropout Adam, large batch", "dropout SGD, large batch", "rel_error", d),
             ("dropout SGD, large batch", "dropout SGD, small batch", "rel_error", d),
             ("dropout SGD, large batch", "GD, no dropout", "rel_to_dropout_star", d),
             ("GD, no dropout", "dropout SGD, large batch", "rel_to_ols",
              "relative distance to the OLS (minimum-norm) weights")]
    return [stats.compare(a, vals(a, key), b, vals(b, key), metric, higher_is_better=False)
            for a, b, key, metric in pairs]


def _summary(config, X, y, runs, rows, sweep_rows, jump, comps) -> Dict[str, Any]:
    """The headline numbers and the computed words of the report."""
    by = {r["run"]: r for r in runs}
    gd, large = by["GD, no dropout"], by["dropout SGD, large batch"]
    star = dropout_minimizer(X, y, float(config["p"]))
    trained = [r for r in sweep_rows if r["kind"].startswith("trained")]
    share = stats.summarize([r["share1"] for r in rows if r["run"] == large["run"]])
    s = {"gd_rel": gd["rel_error"], "large_rel": large["rel_error"],
         "large_rel_ci": _fmt_ci(large["rel_error_ci_low"], large["rel_error_ci_high"]),
         "large_tolerance": large["tolerance"],
         "gd_pred": float(X[0] @ [gd["w1"], gd["w2"]]), "drop_pred": float(X[0] @ star),
         "drop_share1": float(X[0, 0] * star[0] / (X[0] @ star)),
         "large_share1": share["mean"], "large_share1_ci": _fmt_ci(*share["ci95"]),
         "ols_w_r": _fmt_w(min_norm_fit(X, y)), "gd_w_r": _fmt_w([gd["w1"], gd["w2"]]),
         "star_w_r": _fmt_w(star), "formula_w_r": _fmt_w(star / (1 - float(config["p"]))),
         "large_w_r": _fmt_w([large["w1"], large["w2"]]),
         "limit_w_r": _fmt_w(jump["limit_w"]), "tiny_w_r": _fmt_w(jump["tiny_w"]),
         "sweep_max_rel": max(r["rel_error"] for r in trained) if trained else float("nan"),
         "sweep_verdicts": ", ".join(f"p = {r['p']:g}: {r['tolerance']}" for r in trained)
                           or "none trained",
         "sweep_all_within": bool(all(r["tolerance"] == "within" for r in trained))}
    gd_ws = {(r["w1"], r["w2"]) for r in rows if r["run"] == gd["run"]}
    s["gd_seed_word"] = ("are identical for every seed" if len(gd_ws) == 1
                         else "vary by seed; the mean is shown")
    for i, c in enumerate(comps):
        s[f"comparison_{i}"] = stats.sentence(c)
    return s


def _fmt_ci(lo, hi) -> str:
    return "no interval (1 seed)" if lo is None else f"95% CI [{lo:.2%}, {hi:.2%}]"


_CONCLUSIONS = [
    "Without dropout GD from 0 ends at {gd_w_r} (the minimum-norm exact fit, relative distance "
    "{gd_rel:.1e}); it predicts {gd_pred:.3f} and puts {minnorm_share1:.1%} of the prediction on "
    "the large feature (its weights {gd_seed_word}).",
    "With dropout p = {p}, large-batch SGD ends at {large_w_r} (mean over {n_seeds} seeds), "
    "{large_rel:.2%} from the closed form {star_w_r} ({large_rel_ci}): {large_tolerance} the "
    "tolerance of {tolerance:.0%}. It puts {large_share1:.1%} ({large_share1_ci}) of the "
    "prediction on the large feature; the closed form puts {drop_share1:.1%} and predicts "
    "{drop_pred:.3f}.",
    "SGD vs Adam, small batch: {comparison_0}",
    "SGD vs Adam, large batch: {comparison_1}",
    "Batch size: {comparison_2}",
    "Dropout vs no dropout: {comparison_3} {comparison_4}",
    "Across the sweep, the trained weights vs the tolerance of the closed form: "
    "{sweep_verdicts} (largest mean relative distance {sweep_max_rel:.2%}).",
    "The jump at p = 0 (closed forms): w*(p) -> {limit_w_r} as p -> 0+, but p = 0 gives "
    "{ols_w_r}.",
]


def _check_config(config: Dict[str, Any]) -> None:
    """Every user-settable value, checked before any work; errors name the key."""
    check = Checker("dropout-regression", config)
    check.number("p", 0, 1, lo_open=True, hi_open=True)
    check.number("lr", 0, lo_open=True)
    check.number("adam_lr", 0, lo_open=True)
    check.number("tail", 0, 1, lo_open=True)
    check.number("tolerance", 0, lo_open=True)
    check.number("y")
    for key in ("batch_small", "batch_large", "steps"):
        check.integer(key, 1)
    check.integer("full_rank_n", 2)

    def fin(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)

    x = config["x"]
    if len(x) != 2 or not all(fin(v) and v != 0 for v in x):
        raise ValueError(f"dropout-regression: config key 'x' must be two finite nonzero "
                         f"numbers, got {x!r}")
    for key, lo_ok in (("sweep_grid", True), ("sweep_train", False)):
        vals = config[key]
        if not all(fin(v) and (0 <= v < 1 if lo_ok else 0 < v < 1) for v in vals) or (
                lo_ok and not any(v > 0 for v in vals)):
            raise ValueError(f"dropout-regression: config key {key!r} must hold numbers in "
                             f"{'[0, 1) with at least one > 0' if lo_ok else '(0, 1)'}, "
                             f"got {vals!r}")
    stats.seeds_of(config)


@lab(name="dropout-regression",
     study="Dropout as Tikhonov regularization (Srivastava et al. 2014 Sec. 9.1; Wager et al. "
           "2013): OLS vs dropout on the regression 10 w1 + w2",
     quick={**_COMMON, "steps": 3000, "sweep_train": [0.3, 0.5, 0.7], "seeds": 2},
     standard={**_COMMON, "steps": 20000, "sweep_train": [0.1, 0.3, 0.5, 0.7, 0.9],
               "seeds": 5},
     full={**_COMMON, "steps": 50000, "sweep_train": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8,
                                                      0.9], "seeds": 10},
     expected_seconds={"quick": 15, "standard": 360, "full": 2400})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    """Train the runs and the sweep over seeds, compute the closed forms, write the report."""
    _check_config(config)
    X, y = _data(config)
    rows, paths = train_runs(config, X, y, progress)
    runs = _aggregate(config, rows)
    comps = _comparisons(rows)
    sweep_rows = sweep(config, X, y, progress)
    jump = jump_numbers(X, y, config)
    res: Dict[str, Any] = {k: config[k] for k in ("x", "y", "p", "lr", "steps", "tail",
                                                   "tolerance", "full_rank_n")}
    seeds = stats.seeds_of(config)
    res.update({"gamma": _fmt_w(np.sqrt(gamma_sq(X))), "runs": runs, "runs_per_seed": rows,
                "sweep": sweep_rows, "seeds_used": seeds, "n_seeds": len(seeds),
                "comparisons": comps,
                "jump": jump, **{k: v for k, v in jump.items() if not k.endswith("_w")
                                  and k != "full_rank_ols"}})
    res.update(_summary(config, X, y, runs, rows, sweep_rows, jump, comps))
    res["conclusions"] = [t.format(**res) for t in _CONCLUSIONS]
    _write_report(out_dir, config, res, X, y, paths)
    return res
