"""Lab ``bagging``: bootstrap ensembles of K small MLPs vs one MLP vs dropout.

Averaging K estimators whose errors e_k have second moment E[e_k²] = v and pairwise
E[e_k e_l] = c (k != l) gives an ensemble error with second moment

    E[(mean_k e_k)²] = v / K + (K - 1) c / K                       (Goodfellow et al. 2016,
                                                                     Sec. 7.11)

so the error falls from v (one model) towards c (infinitely many), and not at all when
the errors are perfectly correlated (c = v). Bagging (Breiman 1996) makes the models
differ by training each on a bootstrap resample; dropout (Srivastava et al. 2014) trains
one network that behaves like an average of exponentially many thinned networks.

Setup: a 1-D regression with an input x uniform in [-1, 1], target
f(x) = sin(3x) + 0.5 cos(7x) plus Gaussian noise (a generator written inside this lab
because ``mlcvlab.data.synthetic`` has no 1-D regression set), a small training set so
that single networks overfit, and the error e_k(x) = model_k(x) - f(x) measured on a
dense test grid against the noiseless f. Two pools of models are trained: pool A
measures v and c (averages over test points, over models for v and over pairs for c),
pool B gives the *measured* error of ensembles of K models (random K-subsets), which
is compared with the formula's prediction from pool A. Each pool is run twice: with
bootstrap resamples (bagging) and with the full training set (only the random
initialization differs). Dropout networks are trained with the library.

Thousands of steps of many tiny networks: the models carry a leading model axis
(W: (M, in, out)) and train at once by full-batch Adam in NumPy; a bootstrap resample is
a row of counts, the loss of model k is sum_i counts_ki (out_ki - y_i)² / N, equal to
MSELoss on the resampled rows. ``tests/labs/test_bagging.py`` checks one model of this
code against ``mlcvlab.models.mlp`` + ``MSELoss`` + ``mlcvlab.optim.Adam`` on its resample.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import numpy as np

from mlcvlab.labs import stats
from mlcvlab.labs.checks import Checker
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure
from mlcvlab.models import mlp
from mlcvlab.nn import MSELoss
from mlcvlab.optim import Adam

Params = List[np.ndarray]         # [W1 (M, 1, H), b1 (M, 1, H), W2 (M, H, H), b2, W3 (M, H, 1), b3]

_COMMON = {"n_train": 40, "n_test": 400, "noise_std": 0.3, "hidden": 32, "lr": 0.01,
           "p_dropout": 0.2, "subsets": 300, "ks": [1, 2, 4, 8, 16]}


# -- data (generated here: mlcvlab.data.synthetic has no 1-D regression set) -------------------
def target_fn(x: np.ndarray) -> np.ndarray:
    """The noiseless target f(x) = sin(3x) + 0.5 cos(7x), elementwise."""
    return np.sin(3.0 * x) + 0.5 * np.cos(7.0 * x)


def make_data(n_train: int, n_test: int, noise_std: float, gen: np.random.Generator
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training x: (n, 1) uniform in [-1, 1], y: (n,) = f(x) + noise; test grid x: (T, 1),
    f: (T,).
    """
    if n_train < 2 or n_test < 2 or noise_std < 0:
        raise ValueError(f"bagging make_data: need n_train >= 2, n_test >= 2, noise_std >= 0, got "
                         f"{n_train}, {n_test}, {noise_std}")
    x = gen.uniform(-1.0, 1.0, size=(n_train, 1))
    y = target_fn(x[:, 0]) + gen.normal(0.0, noise_std, size=n_train)
    xt = np.linspace(-1.0, 1.0, n_test)[:, None]
    return x, y, xt, target_fn(xt[:, 0])


def bootstrap_counts(models: int, n: int,
                     gen: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Bootstrap resamples: indices (M, n) drawn with replacement and their counts (M, n)."""
    idx = gen.integers(0, n, size=(models, n))
    counts = np.zeros((models, n))
    np.add.at(counts, (np.arange(models)[:, None], idx), 1.0)
    return idx, counts


# -- the vectorized MLPs 1 -> H -> H -> 1 (tanh) --------------------------------------------------
def init_mlps(models: int, hidden: int, gen: np.random.Generator) -> Params:
    """``mlcvlab.nn.Linear``'s initialization, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), per model."""
    params = []
    for fan_in, fan_out in ((1, hidden), (hidden, hidden), (hidden, 1)):
        bound = 1.0 / math.sqrt(fan_in)
        params.append(gen.uniform(-bound, bound, (models, fan_in, fan_out)))   # W: x @ W
        params.append(gen.uniform(-bound, bound, (models, 1, fan_out)))
    return params


def forward(params: Params, x: np.ndarray) -> Tuple[np.ndarray, Tuple]:
    """Outputs (M, N) of all models on x: (N, 1), and the activations backward needs."""
    W1, b1, W2, b2, W3, b3 = params
    h1 = np.tanh(x[None] @ W1 + b1)                                       # (M, N, H)
    h2 = np.tanh(h1 @ W2 + b2)
    return (h2 @ W3 + b3)[..., 0], (h1, h2)


def loss_and_grads(params: Params, x: np.ndarray, y: np.ndarray, weights: np.ndarray
                   ) -> Tuple[np.ndarray, Params]:
    """Per-model loss sum_i weights_ki (out_ki - y_i)² / N: (M,) and its gradients (as params)."""
    W1, b1, W2, b2, W3, b3 = params
    out, (h1, h2) = forward(params, x)
    resid = out - y[None]
    n = x.shape[0]
    dout = (2.0 / n) * weights * resid                                    # (M, N)
    dW3 = np.einsum("mnh,mn->mh", h2, dout)[..., None]
    db3 = dout.sum(axis=1)[:, None, None]
    dz2 = dout[..., None] * W3.transpose(0, 2, 1) * (1.0 - h2 * h2)      # (M, N, H)
    dW2 = h1.transpose(0, 2, 1) @ dz2
    dz1 = (dz2 @ W2.transpose(0, 2, 1)) * (1.0 - h1 * h1)
    dW1 = np.einsum("nd,mnh->mdh", x, dz1)
    grads = [dW1, dz1.sum(axis=1, keepdims=True), dW2, dz2.sum(axis=1, keepdims=True), dW3, db3]
    return (weights * resid * resid).sum(axis=1) / n, grads


def train_mlps(params: Params, x: np.ndarray, y: np.ndarray, weights: np.ndarray, steps: int,
               lr: float, betas=(0.9, 0.999), eps: float = 1e-8, progress=None) -> Params:
    """Full-batch Adam (as ``mlcvlab.optim.Adam`` / torch) on every model at once; returns
    params.
    """
    params = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    steps_iter = range(1, steps + 1) if progress is None else progress(range(1, steps + 1),
                                                                        desc="train MLPs")
    for t in steps_iter:
        _, grads = loss_and_grads(params, x, y, weights)
        for p, g, mi, vi in zip(params, grads, m, v):
            mi *= betas[0]
            mi += (1 - betas[0]) * g
            vi *= betas[1]
            vi += (1 - betas[1]) * g * g
            denom = np.sqrt(vi) / math.sqrt(1 - betas[1] ** t) + eps
            p -= (lr / (1 - betas[0] ** t)) * mi / denom
    return params


# -- the error moments and ensembles ---------------------------------------------------------------
def error_moments(errors: np.ndarray) -> Tuple[float, float]:
    """v = mean of e_k(x)² over models and test points; c = mean of e_k(x) e_l(x) over pairs
    k != l and test points. errors: (M, T), M >= 2."""
    M, T = errors.shape
    if M < 2:
        raise ValueError(f"bagging error_moments: need at least 2 models, got {M}")
    total = errors.sum(axis=0)
    sq = float(np.sum(errors * errors))
    return sq / (M * T), float((np.sum(total * total) - sq) / (M * (M - 1) * T))


def formula(v: float, c: float, k: int) -> float:
    """Second moment of the mean of k errors: v / k + (k - 1) c / k."""
    return v / k + (k - 1) * c / k


def ensemble_errors(errors: np.ndarray, k: int, subsets: int, gen: np.random.Generator
                    ) -> np.ndarray:
    """Mean squared error (over test points) of the averages of ``subsets`` random k-subsets
    of the models. errors: (M, T) -> (subsets,)."""
    M = errors.shape[0]
    if not 1 <= k <= M:
        raise ValueError(f"bagging ensemble_errors: need 1 <= K <= {M} models, got K={k}")
    idx = np.argsort(gen.random((subsets, M)), axis=1)[:, :k]             # k distinct per subset
    return np.mean(errors[idx].mean(axis=1) ** 2, axis=1)


def pool_study(errors: np.ndarray, ks: List[int], subsets: int, gen: np.random.Generator
               ) -> Dict[str, Any]:
    """v, c from pool A (first half), measured K-ensemble errors on pool B (second half)."""
    half = errors.shape[0] // 2
    A, B = errors[:half], errors[half:]
    v, c = error_moments(A)
    vb, cb = error_moments(B)
    rows = []
    for k in ks:
        e = ensemble_errors(B, k, subsets, gen)
        rows.append({"K": k, "measured": float(e.mean()),
                     "measured_se": float(e.std(ddof=1) / np.sqrt(len(e))) if len(e) > 1 else 0.0,
                     "formula_poolA": formula(v, c, k), "formula_poolB": formula(vb, cb, k)})
        rows[-1]["rel_diff"] = rows[-1]["measured"] / rows[-1]["formula_poolA"] - 1.0
    return {"v": v, "c": c, "v_B": vb, "c_B": cb, "rho": c / v, "rows": rows,
            "single_mse_mean": float(np.mean(errors ** 2)),
            "single_mse_std": float(np.mean(errors ** 2, axis=1).std(ddof=1))}


# -- dropout with the library ----------------------------------------------------------------------
def train_dropout_mlp(x, y, xt, hidden: int, p: float, steps: int, lr: float,
                      gen: np.random.Generator) -> np.ndarray:
    """``mlp([1, H, H, 1], tanh, p_hidden=p)`` by full-batch Adam + MSELoss; test outputs (T,)."""
    model = mlp([1, hidden, hidden, 1], activation="tanh", p_hidden=p, rng=gen).astype(np.float64)
    opt, loss = Adam(model.parameters(), lr=lr), MSELoss()
    for _ in range(steps):
        opt.zero_grad()
        loss(model(x), y[:, None])
        model.backward(loss.backward())
        opt.step()
    model.eval()
    return model(xt)[:, 0]


# -- the study -------------------------------------------------------------------------------------
VARIANTS = {"bagging": True, "init_only": False}          # name -> bootstrap resampling?
VARIANT_COLOURS = {"bagging": "C0", "init_only": "C1", "dropout": "C2"}


def train_pools(config: Dict[str, Any], data, seed: int, progress) -> Dict[str, Any]:
    """Train 2 x models_per_pool MLPs per variant; return the test-grid errors (M, T) and
    outputs. Both variants start from the same initial weights (drawn from ``seed``): only the
    bootstrap resampling differs."""
    x, y, xt, ft = data
    M = 2 * int(config["models_per_pool"])
    params = init_mlps(M, int(config["hidden"]), np.random.default_rng([seed, 1]))
    counts = bootstrap_counts(M, len(y), np.random.default_rng([seed, 2]))[1]
    out = {}
    for name, boot in VARIANTS.items():
        weights = counts if boot else np.ones((M, len(y)))
        trained = train_mlps(params, x, y, weights, int(config["steps"]), float(config["lr"]),
                             progress=lambda it, desc, n=name: progress(it, desc=f"{n} MLPs"))
        pred = forward(trained, xt)[0]
        out[name] = {"pred": pred, "errors": pred - ft[None]}
    return out


def run_seed(config: Dict[str, Any], seed: int, ks: List[int], progress) -> Dict[str, Any]:
    """One seed: data, both pools, the pool studies and the dropout networks."""
    gen = np.random.default_rng(seed)
    data = make_data(int(config["n_train"]), int(config["n_test"]), float(config["noise_std"]),
                     gen)
    pools = train_pools(config, data, seed, progress)
    out: Dict[str, Any] = {"data": data, "pools": pools}
    sub_gen = np.random.default_rng([seed, 3])
    for name in VARIANTS:
        out[name] = pool_study(pools[name]["errors"], ks, int(config["subsets"]), sub_gen)
    x, y, xt, ft = data
    dgen = np.random.default_rng([seed, 4])
    preds = [train_dropout_mlp(x, y, xt, int(config["hidden"]), float(config["p_dropout"]),
                               int(config["steps"]), float(config["lr"]), dgen)
             for _ in range(int(config["dropout_runs"]))]
    out["dropout_pred"] = preds[0]
    out["dropout_mse"] = float(np.mean([np.mean((p - ft) ** 2) for p in preds]))
    return out


def _ci_text(s: Dict[str, Any], digits: int = 4) -> str:
    lo, hi = s["ci95"]
    return "no interval (1 seed)" if lo is None else f"95% CI [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _aggregate(per_seed: List[Dict[str, Any]], ks: List[int]) -> Dict[str, Any]:
    """Over seeds: the K-rows (measured, predicted, gap with its interval), the moments, and
    the per-seed values the comparisons pair."""
    res: Dict[str, Any] = {}
    for name in VARIANTS:
        rows = []
        for i, k in enumerate(ks):
            meas = [ps[name]["rows"][i]["measured"] for ps in per_seed]
            pred = [ps[name]["rows"][i]["formula_poolA"] for ps in per_seed]
            predb = [ps[name]["rows"][i]["formula_poolB"] for ps in per_seed]
            gap = stats.summarize(np.subtract(meas, pred))
            rel = stats.summarize(np.divide(meas, pred) - 1.0)
            rows.append({"variant": name, "K": k, "measured": float(np.mean(meas)),
                         "measured_ci_low": stats.summarize(meas)["ci95"][0],
                         "measured_ci_high": stats.summarize(meas)["ci95"][1],
                         "formula_poolA": float(np.mean(pred)),
                         "formula_poolB": float(np.mean(predb)),
                         "gap": gap["mean"], "gap_ci_low": gap["ci95"][0],
                         "gap_ci_high": gap["ci95"][1], "rel_gap": rel["mean"],
                         "rel_gap_ci_low": rel["ci95"][0], "rel_gap_ci_high": rel["ci95"][1],
                         "measured_per_seed": meas, "formula_per_seed": pred})
        res[name] = {"rows": rows}
        for m in ("v", "c", "rho", "v_B", "c_B"):
            res[name][m] = stats.summarize([ps[name][m] for ps in per_seed])
    res["dropout"] = stats.summarize([ps["dropout_mse"] for ps in per_seed])
    return res


def _comparisons(agg: Dict[str, Any], per_seed, kmax: int) -> List[Dict[str, Any]]:
    """The paired-by-seed comparisons of the study (ensemble MSE vs the noiseless f)."""
    bag, init = agg["bagging"]["rows"], agg["init_only"]["rows"]
    m = "test MSE vs noiseless f"
    drop = [ps["dropout_mse"] for ps in per_seed]
    out = [stats.compare(f"bagged ensemble of {kmax}", bag[-1]["measured_per_seed"],
                         "one bagged model (K = 1)", bag[0]["measured_per_seed"], m, False),
           stats.compare(f"init-only ensemble of {kmax}", init[-1]["measured_per_seed"],
                         "one model (K = 1)", init[0]["measured_per_seed"], m, False),
           stats.compare(f"bagged ensemble of {kmax}", bag[-1]["measured_per_seed"],
                         f"init-only ensemble of {kmax}", init[-1]["measured_per_seed"], m, False),
           stats.compare(f"bagged ensemble of {kmax}", bag[-1]["measured_per_seed"],
                         "one dropout network", drop, m, False),
           stats.compare("bagging", [ps["bagging"]["rho"] for ps in per_seed], "init_only",
                         [ps["init_only"]["rho"] for ps in per_seed],
                         "error correlation c/v between models (lower helps averaging)", False)]
    for name, rows in (("bagging", bag), ("init_only", init)):
        out.append(stats.compare(f"{name}: measured (pool B)", rows[-1]["measured_per_seed"],
                                 f"{name}: predicted v/K + (K-1)c/K (pool A)",
                                 rows[-1]["formula_per_seed"], f"ensemble MSE at K = {kmax}",
                                 False))
    return out


def _headline(res: Dict[str, Any], agg: Dict[str, Any], kmax: int) -> None:
    """Numbers the report's text uses, computed from the aggregates."""
    for name in VARIANTS:
        rows = agg[name]["rows"]
        res[f"{name}_v"], res[f"{name}_c"] = agg[name]["v"]["mean"], agg[name]["c"]["mean"]
        res[f"{name}_rho"] = agg[name]["rho"]["mean"]
        res[f"{name}_rho_ci"] = _ci_text(agg[name]["rho"], 3)
        res[f"{name}_k1"], res[f"{name}_kmax"] = rows[0]["measured"], rows[-1]["measured"]
        res[f"{name}_kmax_formula"] = rows[-1]["formula_poolA"]
        res[f"{name}_gap"] = rows[-1]["gap"]
        res[f"{name}_gap_ci"] = _ci_text({"ci95": [rows[-1]["gap_ci_low"],
                                                    rows[-1]["gap_ci_high"]]})
        res[f"{name}_rel_gap"] = rows[-1]["rel_gap"]
        res[f"{name}_gain"] = rows[0]["measured"] / rows[-1]["measured"]
    res["kmax"] = kmax
    res["dropout_mse_mean"] = agg["dropout"]["mean"]
    res["dropout_mse_ci"] = _ci_text(agg["dropout"])


def _curve_figure(agg: Dict[str, Any], n_seeds: int):
    fig, ax = new_figure(figsize=(7.5, 4.8))
    for name in VARIANTS:
        rows = agg[name]["rows"]
        ks = [r["K"] for r in rows]
        col = VARIANT_COLOURS[name]
        meas = np.array([r["measured"] for r in rows])
        if rows[0]["measured_ci_low"] is not None:
            err = np.array([[m - r["measured_ci_low"], r["measured_ci_high"] - m]
                            for m, r in zip(meas, rows)]).T.clip(min=0)
        else:
            err = None
        ax.errorbar(ks, meas, yerr=err, fmt="o-", color=col, capsize=3,
                    label=f"{name}: measured (pool B), 95% CI")
        ax.plot(ks, [r["formula_poolA"] for r in rows], "s--", color=col, mfc="none",
                label=f"{name}: v/K + (K-1)c/K (v, c from pool A)")
        ax.axhline(agg[name]["c"]["mean"], color=col, ls=":", lw=1, label=f"{name}: c (K -> inf)")
    ax.axhline(agg["dropout"]["mean"], color=VARIANT_COLOURS["dropout"], lw=1.5,
               label="one dropout network (mean)")
    ax.set(xscale="log", yscale="log", xlabel="ensemble size K (models)",
           ylabel="mean squared error vs noiseless f (target units²)",
           title=f"Ensemble error vs K, mean over {n_seeds} seeds")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.minorticks_off()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _fits_figure(data, pools, dropout_pred, kmax: int):
    x, y, xt, ft = data
    fig, axes = new_figure(ncols=2, figsize=(11, 4.2), sharey=True)
    for ax, name in zip(axes, VARIANTS):
        pred = pools[name]["pred"]
        for k in range(3):
            ax.plot(xt[:, 0], pred[k], color="0.6", lw=0.8,
                    label="single models" if k == 0 else None)
        ax.plot(xt[:, 0], pred[-kmax:].mean(axis=0), color=VARIANT_COLOURS[name], lw=2,
                label=f"{name}: ensemble of {kmax}")
        ax.plot(xt[:, 0], dropout_pred, color=VARIANT_COLOURS["dropout"], lw=1.5,
                label="dropout network")
        ax.plot(xt[:, 0], ft, "k--", lw=1, label="noiseless f")
        ax.scatter(x[:, 0], y, s=12, color="C3", label="training points", zorder=5)
        ax.set(xlabel="x (input, unitless)", ylabel="prediction (target units)", title=name,
               ylim=(-3, 3))
        ax.legend(fontsize=7)
    fig.suptitle("Fits on the first seed")
    return fig


_TABLE_COLUMNS = ["variant", "K", "measured", "measured_ci_low", "measured_ci_high",
                  "formula_poolA", "formula_poolB", "gap", "gap_ci_low", "gap_ci_high",
                  "rel_gap", "rel_gap_ci_low", "rel_gap_ci_high"]


def _table_rows(agg: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [{k: r[k] for k in _TABLE_COLUMNS} for name in VARIANTS for r in agg[name]["rows"]]


def _write_report(out_dir, config, res, agg, first) -> None:
    rep = Report(out_dir, "Bagging vs one model vs dropout, and the ensemble-error formula", res)
    rep.setup(config)
    rep.note("Data: the 1-D regression f(x) = sin(3x) + 0.5 cos(7x) + noise is generated inside "
             "this lab (mlcvlab.data.synthetic has no such generator).")
    rep.text("{n_train} noisy training points (noise std {noise_std}), errors measured against the "
             "noiseless f on {n_test} grid points in [-1, 1]. Models: MLP 1-{hidden}-{hidden}-1 "
             "with tanh, full-batch Adam (lr {lr}) for {steps} steps; {models_per_pool} models per "
             "pool, two pools per variant. `bagging`: each model on its own bootstrap resample; "
             "`init_only`: each model on the full set (only the initialization differs); both "
             "variants start from the same initial weights. v = "
             "mean e_k(x)² and c = mean e_k(x) e_l(x) (k != l) are measured on pool A; the "
             "measured ensemble error is the mean over {subsets} random K-subsets of pool B. "
             "Dropout: {dropout_runs} library networks per seed (`mlcvlab.models.mlp`, p_hidden "
             "= {p_dropout}), same optimizer and steps, evaluated with the weight-scaling rule. "
             "Everything is repeated over seeds {seeds_used} (a fresh training set, initial "
             "weights and resamples per seed); intervals are 95% t-intervals over seeds.")
    rep.table("ensemble_error", _table_rows(agg), "Ensemble error vs K, mean over seeds: measured "
              "(pool B) and predicted by v/K + (K-1)c/K from pool A (formula_poolA) and from pool "
              "B itself (formula_poolB); gap = measured - formula_poolA and rel_gap = measured / "
              "formula_poolA - 1, each with its 95% interval over seeds", columns=_TABLE_COLUMNS)
    rep.table("moments", [{"variant": n, "v": agg[n]["v"]["mean"], "c": agg[n]["c"]["mean"],
                           "rho = c/v": agg[n]["rho"]["mean"],
                           "rho CI low": agg[n]["rho"]["ci95"][0],
                           "rho CI high": agg[n]["rho"]["ci95"][1],
                           "v (pool B)": agg[n]["v_B"]["mean"],
                           "c (pool B)": agg[n]["c_B"]["mean"]} for n in VARIANTS],
              "Per-model error second moment v and pairwise covariance c (mean over seeds)")
    rep.figure("ensemble_error", _curve_figure(agg, len(res["seeds_used"])),
               "Ensemble error vs K, measured next to the formula; dropout for reference")
    rep.figure("fits", _fits_figure(first["data"], first["pools"], first["dropout_pred"],
                                    res["kmax"]),
               "Three single models, the ensemble of {kmax} and a dropout network (first seed)")
    rep.text("Predicted vs measured at K = {kmax}: bagging {bagging_kmax:.4f} measured vs "
             "{bagging_kmax_formula:.4f} predicted, gap {bagging_gap:+.4f} ({bagging_gap_ci}); "
             "init-only {init_only_kmax:.4f} vs {init_only_kmax_formula:.4f}, gap "
             "{init_only_gap:+.4f} ({init_only_gap_ci}). The gap for every K is in "
             "`ensemble_error.csv`. With pool B's own v and c the formula is exact up to the "
             "K-subset sampling (column formula_poolB): it is an identity for the mean over all "
             "K-subsets.")
    rep.comparisons(res["comparisons"], heading="Comparisons (paired by seed)")
    rep.explanation("a gap between pool A's prediction and pool B's measurement comes from "
                    "estimating v and c on a finite pool of {models_per_pool} models; bootstrap "
                    "models that extrapolate badly near the ends of [-1, 1] make those estimates "
                    "heavy-tailed. Averaging helps in proportion to 1 - c/v, which bootstrap "
                    "resampling lowers (Breiman 1996; Goodfellow et al. 2016, Sec. 7.11)."
                    .replace("{models_per_pool}", str(config["models_per_pool"])))
    rep.conclusions([
        "Bagging: v = {bagging_v:.4f}, c = {bagging_c:.4f} (c/v = {bagging_rho:.3f}, "
        "{bagging_rho_ci}); the measured error goes from {bagging_k1:.4f} (K = 1) to "
        "{bagging_kmax:.4f} (K = {kmax}), means over seeds. {comparison_0}",
        "Init-only ensembles: c/v = {init_only_rho:.3f} ({init_only_rho_ci}); {init_only_k1:.4f} "
        "-> {init_only_kmax:.4f}. {comparison_1}",
        "Bagging vs init-only: {comparison_2} Correlation: {comparison_4}",
        "Bagging vs dropout (one dropout network, {dropout_mse_mean:.4f}, "
        "{dropout_mse_ci}): {comparison_3}",
        "Formula vs measurement at K = {kmax}: {comparison_5} {comparison_6}",
    ])
    rep.write()


def _check_config(config: Dict[str, Any]) -> List[int]:
    """Every user-settable value, checked before any work; errors name the key. Returns ks."""
    check = Checker("bagging", config)
    for key, lo in (("n_train", 2), ("n_test", 2), ("hidden", 1), ("subsets", 1),
                    ("models_per_pool", 2), ("steps", 1), ("dropout_runs", 1)):
        check.integer(key, lo)
    check.number("noise_std", 0)
    check.number("lr", 0, lo_open=True)
    check.probability("p_dropout")
    ks = config["ks"]
    if (not ks or not all(isinstance(k, int) and not isinstance(k, bool) for k in ks)
            or min(ks) < 1 or max(ks) > int(config["models_per_pool"])):
        raise ValueError(f"bagging: every K in config key 'ks' must be an integer in [1, "
                         f"models_per_pool = {config['models_per_pool']}], got ks={ks}")
    stats.seeds_of(config)
    return sorted(set(int(k) for k in ks))


@lab(name="bagging",
     study="Bootstrap ensembles (Breiman 1996) vs one model vs dropout (Srivastava et al. 2014); "
           "ensemble error v/K + (K-1)c/K (Goodfellow et al. 2016, Sec. 7.11)",
     quick={**_COMMON, "models_per_pool": 16, "steps": 600, "dropout_runs": 2, "seeds": 2},
     standard={**_COMMON, "models_per_pool": 64, "steps": 3000, "dropout_runs": 4, "seeds": 5,
               "ks": [1, 2, 4, 8, 16, 32, 64]},
     full={**_COMMON, "models_per_pool": 128, "steps": 3000, "dropout_runs": 8, "seeds": 10,
           "ks": [1, 2, 4, 8, 16, 32, 64, 128]},
     expected_seconds={"quick": 15, "standard": 900, "full": 3000})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    """Train the pools and the dropout networks over seeds, compare with the formula, write the
    report."""
    ks = _check_config(config)
    seeds = stats.seeds_of(config)
    per_seed = [run_seed(config, s, ks, progress) for s in progress(seeds, desc="seeds")]
    agg = _aggregate(per_seed, ks)
    res: Dict[str, Any] = {k: config[k] for k in ("n_train", "n_test", "noise_std", "hidden", "lr",
                                                   "steps", "models_per_pool", "subsets",
                                                   "dropout_runs", "p_dropout")}
    res["seeds_used"] = seeds
    for name in VARIANTS:
        res[name] = {"rows": agg[name]["rows"],
                     **{m: agg[name][m] for m in ("v", "c", "rho", "v_B", "c_B")}}
    res["dropout"] = agg["dropout"]
    _headline(res, agg, max(ks))
    res["comparisons"] = _comparisons(agg, per_seed, max(ks))
    for i, c in enumerate(res["comparisons"]):
        res[f"comparison_{i}"] = stats.sentence(c)
    res["table"] = _table_rows(agg)
    _write_report(out_dir, config, res, agg, per_seed[0])
    return res
