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


def _row(spec: Dict[str, Any], w: np.ndarray, X, y, tol: float) -> Dict[str, Any]:
    star = _target(X, y, spec["p"])
    rel = float(np.linalg.norm(w - star) / np.linalg.norm(star))
    return {**spec, "w1": w[0], "w2": w[1], "prediction": float(X[0] @ w),
            "closed_w1": star[0], "closed_w2": star[1],
            "formula_w1": star[0] / (1 - spec["p"]), "formula_w2": star[1] / (1 - spec["p"]),
            "rel_error": rel, "within_tol": bool(rel <= tol),
            "expected_loss": float(expected_loss(X, y, w, spec["p"]))}


def train_runs(config: Dict[str, Any], X, y, progress) -> Tuple[List[Dict[str, Any]], Dict]:
    rows, paths = [], {}
    for i, spec in enumerate(progress(_runs(config), desc="train runs")):
        out = train(X, y, spec["p"], spec["batch"], int(config["steps"]), spec["lr"],
                    spec["optimizer"], config["seed"] + i, float(config["tail"]))
        rows.append(_row(spec, out["w"], X, y, float(config["tolerance"])))
        paths[spec["run"]] = out
    return rows, paths


def sweep(config: Dict[str, Any], X, y, progress) -> List[Dict[str, Any]]:
    """Closed form over the p grid, plus large-batch SGD at the ``sweep_train`` rates.

    The SGD step shrinks for p > 0.5 (lr · 2(1 - p)) because the inverted mask scales the
    input by 1/(1 - p) and a fixed step would diverge.
    """
    rows = []
    for p in config["sweep_grid"]:
        w = _target(X, y, p)
        rows.append({"p": p, "kind": "closed form" if p > 0 else "p = 0: GD from 0 (min-norm)",
                     "w1": w[0], "w2": w[1], "prediction": float(X[0] @ w),
                     "time_constant_steps": slowest_time_constant(X, p, float(config["lr"]))})
    for i, p in enumerate(progress(config["sweep_train"], desc="sweep")):
        lr = float(config["lr"]) * min(1.0, 2.0 * (1.0 - p))
        out = train(X, y, p, int(config["batch_large"]), int(config["steps"]), lr, "sgd",
                    config["seed"] + 100 + i, float(config["tail"]))
        rows.append({"p": p, "kind": "trained (SGD, large batch)", "w1": out["w"][0],
                     "w2": out["w"][1], "prediction": float(X[0] @ out["w"]),
                     "time_constant_steps": slowest_time_constant(X, p, lr)})
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
def _curves_figure(X, y, rows, paths):
    """Left: expected-dropout-loss gap to its minimum per run; right: the weight paths."""
    fig, (ax, bx) = new_figure(ncols=2, figsize=(11, 4.4))
    for i, r in enumerate(rows):
        path = paths[r["run"]]["path"]
        floor = expected_loss(X, y, _target(X, y, r["p"]), r["p"])
        gap = np.maximum(expected_loss(X, y, path, r["p"]) - floor, 1e-12)
        win = max(1, len(gap) // 100)                  # moving average: the SGD noise is large
        smooth = np.convolve(gap, np.ones(win) / win, mode="valid")
        ax.loglog(np.arange(1, len(smooth) + 1), smooth, color=f"C{i}", lw=1,
                  label=f"{r['run']} (p={r['p']:g})")
        bx.plot(path[:, 0], path[:, 1], color=f"C{i}", lw=0.8, alpha=0.8, label=r["run"])
    ax.set(xlabel="step", ylabel="expected loss - its minimum (own p), moving average")
    ax.legend(fontsize=7)
    w1 = np.linspace(-0.2, 1.3, 2)
    bx.plot(w1, (y[0] - X[0, 0] * w1) / X[0, 1], "k:", lw=1, label="exact fits 10 w1 + w2 = y")
    for r in rows[:2]:
        bx.scatter([r["closed_w1"]], [r["closed_w2"]], marker="*", s=140, color="k", zorder=5)
    bx.set(xlabel="w1 (feature of scale 10)", ylabel="w2 (feature of scale 1)",
           title="weight paths from w = 0; stars: closed forms")
    bx.legend(fontsize=7)
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
                    label=f"{key} trained (SGD)")
            ax.axhline(jump["minnorm_w"][j], color=c, ls="--", lw=1,
                       label=f"{key} at p = 0 (GD, min-norm)")
            if xscale == "linear":
                ax.plot([0.0], [jump["minnorm_w"][j]], "s", color=c, ms=8)
        ax.set(xscale=xscale, xlabel="dropout rate p (drop probability)", ylabel="weight",
               title=f"weights vs p ({xscale} p axis)")
        ax.legend(fontsize=7)
    return fig


def _write_report(out_dir, config, res, X, y, paths) -> None:
    rep = Report(out_dir, "Dropout as Tikhonov regularization on a two-feature regression", res)
    rep.setup(config)
    rep.text("Toy: one training point x = {x}, target y = {y}; model x.w = {x[0]:g} w1 + "
             "{x[1]:g} w2 (no bias), MSELoss, training from w = 0 in float64 with `mlcvlab.nn` "
             "(Dropout -> Linear) and `mlcvlab.optim`, {steps} steps; trained weights are the "
             "mean of the iterates over the last {tail:.0%} of the steps. Γ = diag{gamma}.")
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
    rep.table("runs", res["runs"], "Trained weights vs closed form; within_tol: "
              "||w - w*|| / ||w*|| <= {tolerance}")
    rep.figure("loss_curves", _curves_figure(X, y, res["runs"], paths),
               "Loss curves (expected loss of each run's own p minus its minimum) and weight paths")
    rep.section("Sweep over the dropout rate, and the jump at p = 0")
    rep.table("sweep", res["sweep"], "w*(p) in closed form, and trained with large-batch SGD; "
              "time_constant_steps = 1/(lr λ_min) of the expected loss's Hessian")
    rep.figure("sweep", _sweep_figure(res["sweep"], res["jump"]),
               "Dropout weights vs p; dashed: the weights at p = 0 exactly")
    rep.text("As p -> 0+, w*(p) -> {limit_w_r} (the fit of minimum ||Γw||; at p = {tiny_p:g} "
             "w* = {tiny_w_r}, {tiny_vs_limit:.2e} from the limit), but at p = 0 exactly GD "
             "trains to {ols_w_r}: a jump of {jump_size:.3f} in w. At the limit the large "
             "feature carries {limit_share1:.1%} of the prediction, at p = 0 {minnorm_share1:.1%}. "
             "Why: any p > 0 adds ε||Γw||² with ε = p/(1-p), which selects, among the exact "
             "fits, the one of smallest Γ-norm however small ε is; at p = 0 nothing selects and "
             "GD keeps the min-Euclidean-norm fit its start w = 0 implies. The selection is slow: "
             "the curvature along the exact-fit line is of order ε, so GD needs about "
             "{tiny_time_constant:.3g} steps at p = {tiny_p:g} (lr {lr}) to move along it.")
    rep.text("On full-rank data ({full_rank_n} points from `mlcvlab.data.synthetic."
             "dropout_regression`, feature scales {x[0]:g} and {x[1]:g}) there is no jump: "
             "||w*({tiny_p:g}) - w_OLS|| = {full_rank_gap:.2e}, because OLS is unique.")
    rep.conclusions(_CONCLUSIONS)
    rep.write()


def _fmt_w(w) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in w) + ")"


def _summary(config, X, y, rows, sweep_rows, jump) -> Dict[str, Any]:
    """The headline numbers and the computed comparison words of the report."""
    by = {r["run"]: r for r in rows}
    gd, small, large = (by["GD, no dropout"], by["dropout SGD, small batch"],
                        by["dropout SGD, large batch"])
    adam_s, adam_l = by["dropout Adam, small batch"], by["dropout Adam, large batch"]
    star = dropout_minimizer(X, y, float(config["p"]))
    tol = float(config["tolerance"])
    trained = [r for r in sweep_rows if r["kind"].startswith("trained")]
    sweep_err = [float(np.linalg.norm([r["w1"], r["w2"]] - dropout_minimizer(X, y, r["p"]))
                       / np.linalg.norm(dropout_minimizer(X, y, r["p"]))) for r in trained]
    s = {"gd_rel": gd["rel_error"], "small_rel": small["rel_error"],
         "large_rel": large["rel_error"],
         "adam_small_rel": adam_s["rel_error"], "adam_large_rel": adam_l["rel_error"],
         "gd_pred": gd["prediction"], "drop_pred": float(X[0] @ star),
         "drop_share1": float(X[0, 0] * star[0] / (X[0] @ star)),
         "ols_w_r": _fmt_w(min_norm_fit(X, y)), "gd_w_r": _fmt_w([gd["w1"], gd["w2"]]),
         "star_w_r": _fmt_w(star), "formula_w_r": _fmt_w(star / (1 - float(config["p"]))),
         "large_w_r": _fmt_w([large["w1"], large["w2"]]),
         "limit_w_r": _fmt_w(jump["limit_w"]), "tiny_w_r": _fmt_w(jump["tiny_w"]),
         "sweep_max_rel": max(sweep_err) if sweep_err else float("nan"),
         "sweep_all_within": bool(all(e <= tol for e in sweep_err))}
    s["large_verdict"] = ("within the tolerance" if large["within_tol"]
                          else "NOT within the tolerance")
    s["batch_word"] = "closer to" if s["large_rel"] < s["small_rel"] else "further from"
    s["adam_word"] = "Adam" if s["adam_small_rel"] < s["small_rel"] else "SGD"
    s["sweep_word"] = "all within" if s["sweep_all_within"] else "not all within"
    return s


_CONCLUSIONS = [
    "Without dropout GD from 0 ends at {gd_w_r} (the minimum-norm exact fit, relative distance "
    "{gd_rel:.1e}); it predicts {gd_pred:.3f} and puts {minnorm_share1:.1%} of the prediction on "
    "the large feature.",
    "With dropout p = {p}, large-batch SGD ends at {large_w_r}, {large_rel:.2%} from the closed "
    "form {star_w_r}: {large_verdict} of {tolerance:.0%}. Dropout shrinks the prediction to "
    "{drop_pred:.3f} and splits it evenly ({drop_share1:.1%} on the large feature).",
    "The large batch ends {batch_word} the closed form than the small batch ({large_rel:.2%} vs "
    "{small_rel:.2%}).",
    "SGD vs Adam at small batch: {adam_small_rel:.2%} (Adam) vs {small_rel:.2%} (SGD) from w*; "
    "{adam_word} ends closer. Large batch Adam: {adam_large_rel:.2%}.",
    "Across the sweep, the trained weights are {sweep_word} the tolerance of the closed form "
    "(largest relative distance {sweep_max_rel:.2%}).",
    "The jump at p = 0: w*(p) -> {limit_w_r} as p -> 0+, but p = 0 gives {ols_w_r}.",
]


@lab(name="dropout-regression",
     study="Dropout as Tikhonov regularization (Srivastava et al. 2014 Sec. 9.1; Wager et al. "
           "2013): OLS vs dropout on the regression 10 w1 + w2",
     quick={**_COMMON, "steps": 3000, "sweep_train": [0.3, 0.5, 0.7]},
     full={**_COMMON, "steps": 20000, "sweep_train": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8,
                                                      0.9]},
     expected_seconds={"quick": 10, "full": 60})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    """Train the runs and the sweep, compute the closed forms, write the report."""
    X, y = _data(config)
    if not 0.0 < float(config["p"]) < 1.0:
        raise ValueError(f"dropout-regression: p must be in (0, 1), got {config['p']}")
    rows, paths = train_runs(config, X, y, progress)
    sweep_rows = sweep(config, X, y, progress)
    jump = jump_numbers(X, y, config)
    res: Dict[str, Any] = {k: config[k] for k in ("x", "y", "p", "lr", "steps", "tail",
                                                   "tolerance", "full_rank_n")}
    res.update({"gamma": _fmt_w(np.sqrt(gamma_sq(X))), "runs": rows, "sweep": sweep_rows,
                "jump": jump, **{k: v for k, v in jump.items() if not k.endswith("_w")
                                  and k != "full_rank_ols"}})
    res.update(_summary(config, X, y, rows, sweep_rows, jump))
    res["conclusions"] = [t.format(**res) for t in _CONCLUSIONS]
    _write_report(out_dir, config, res, X, y, paths)
    return res
