"""Lab ``conv-gradients``: weight sharing makes conv weight gradients grow with image size.

Part 1. A k×k convolution (``mlcvlab.nn.Conv2d``, stride 1, no padding) on an n×n
image has P = (n - k + 1)² output positions, and every weight is used at each of
them, so its gradient is a sum over positions::

    dL/dW[f, c, i, j] = sum_p dy[f, p] · x[c, p + (i, j)]

With inputs x and upstream gradients dy i.i.d., zero mean, stds s_x and s_g, and
independent of each other, the P terms are uncorrelated (E[dy_p dy_q] = 0 for
p != q), so Var(dL/dW) = P·s_x²·s_g² and

    std(dL/dW) = (n - k + 1)·s_x·s_g ~ n,

a log-log slope of 1 in n (the slope of log(n - k + 1) over the measured sizes is a
bit above 1). If instead the terms are perfectly correlated (a constant image and a
constant upstream gradient), the sum grows like P and the slope is 2. The lab
measures std(dL/dW) over the F·C·k² weight entries of ``repeats`` independent
draws (uncorrelated samples with the same variance) and fits the slope, once per seed
(``config["seeds"]``: a fresh layer and fresh draws per seed). Both cases get the same
check against their derivation: the fitted slope's mean and 95% t-interval over the seeds,
whether the derived slope lies inside that interval, and whether the mean is within
``slope_tol`` of it; per image size, the ratio measured / predicted std with its interval.

Part 2. Max- vs average-pool backward (``mlcvlab.nn.MaxPool2d`` / ``AvgPool2d``):
max pooling routes each window's whole upstream gradient to the one position that
won the forward max; average pooling spreads 1/k² of it to every position.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from mlcvlab import nn
from mlcvlab.labs import stats
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure

_COMMON = {"kernel": 3, "channels": 8, "filters": 8, "x_std": 1.0, "g_std": 1.0,
           "pool_kernel": 2, "pool_image": 8, "slope_tol": 0.1}


def weight_grad_samples(n: int, config: Dict[str, Any], rng: np.random.Generator,
                        correlated: bool) -> np.ndarray:
    """dL/dW entries of a Conv2d(C, F, k, bias=False) on n×n images: (repeats·F·C·k²,).

    i.i.d.: x ~ N(0, x_std²) per pixel, dy ~ N(0, g_std²) per output position.
    correlated: one N(0, x_std²) value fills each image channel and one N(0, g_std²)
    value fills each upstream-gradient map, so all P terms of the sum agree.
    """
    k, C, F, R = config["kernel"], config["channels"], config["filters"], config["repeats"]
    if n < k:
        raise ValueError(f"conv-gradients: image size n={n} is smaller than the kernel k={k}; "
                         f"use sizes >= {k}")
    conv = nn.Conv2d(C, F, k, bias=False, rng=rng)
    samples = []
    for _ in range(R):      # R independent draws; all pixels and channels in one call each
        if correlated:
            x = np.broadcast_to(rng.normal(0, config["x_std"], (1, C, 1, 1)), (1, C, n, n))
        else:
            x = rng.normal(0, config["x_std"], (1, C, n, n))
        conv.zero_grad()
        y = conv(np.ascontiguousarray(x, dtype=conv.weight.data.dtype))
        shape = (1, F, 1, 1) if correlated else y.shape
        dy = np.broadcast_to(rng.normal(0, config["g_std"], shape), y.shape)
        conv.backward(np.ascontiguousarray(dy, dtype=y.dtype))
        samples.append(conv.weight.grad.astype(np.float64).ravel().copy())
    return np.concatenate(samples)


def fit_slope(sizes, stds) -> float:
    """Least-squares slope of log(std) against log(n)."""
    return float(np.polyfit(np.log(sizes), np.log(stds), 1)[0])


CASES = {"iid": "i.i.d. x and dy", "corr": "correlated (constant x and dy)"}
CASE_COLORS = {"iid": "C0", "corr": "C1"}          # one colour per case in every figure


def predicted_std(n: int, config: Dict[str, Any], case: str) -> float:
    """The derived std of dL/dW: (n - k + 1) s_x s_g (i.i.d.), (n - k + 1)^2 s_x s_g
    (correlated)."""
    side = n - config["kernel"] + 1
    return float((side if case == "iid" else side ** 2) * config["x_std"] * config["g_std"])


def growth_one_seed(config: Dict[str, Any], seed: int) -> Dict[str, Dict[str, List[float]]]:
    """{case: {"std": [per size], "ratio": [measured / predicted per size]}} for one seed
    (``default_rng([seed, 1])``: a fresh layer and fresh draws per size and case)."""
    rng = np.random.default_rng([seed, 1])
    out: Dict[str, Dict[str, List[float]]] = {c: {"std": [], "ratio": []} for c in CASES}
    for n in config["sizes"]:
        for case in CASES:
            std = float(weight_grad_samples(n, config, rng, correlated=case == "corr").std())
            out[case]["std"].append(std)
            out[case]["ratio"].append(std / predicted_std(n, config, case))
    return out


def prediction_check(name: str, values: List[float], predicted: float, tol: float
                     ) -> Dict[str, Any]:
    """A measured quantity (one value per seed) against its derived value: mean, 95% interval
    over the seeds, whether the derived value lies inside the interval, and whether the mean
    is within ``tol`` of it."""
    s = stats.summarize(values)
    lo, hi = s["ci95"]
    inside = None if lo is None else bool(lo <= predicted <= hi)
    return {"quantity": name, "measured_mean": s["mean"], "ci95": [lo, hi], "n_seeds": s["n"],
            "predicted": float(predicted), "inside": inside,
            "verdict": ("no interval (one seed)" if inside is None else
                        "prediction inside the 95% interval" if inside else
                        "prediction outside the 95% interval"),
            "tolerance": float(tol), "within_tolerance": bool(abs(s["mean"] - predicted) <= tol)}


def growth_study(config: Dict[str, Any], seeds: List[int], progress) -> Dict[str, Any]:
    sizes = config["sizes"]
    runs = [growth_one_seed(config, s) for s in progress(seeds, desc="seeds")]
    exact = [predicted_std(n, config, "iid") for n in sizes]
    derived = {"iid": fit_slope(sizes, exact), "corr": fit_slope(sizes, np.square(exact))}
    res: Dict[str, Any] = {"slope_derived_asymptotic": 1.0, "slope_derived_exact": derived["iid"],
                           "slope_corr_derived_exact": derived["corr"]}
    checks, rows = [], []
    for case, label in CASES.items():
        slopes = [fit_slope(sizes, r[case]["std"]) for r in runs]
        c = prediction_check(f"fitted log-log slope, {label}", slopes, derived[case],
                             config["slope_tol"])
        c["case"], c["values"] = case, slopes
        checks.append(c)
        key = "slope_iid" if case == "iid" else "slope_corr"
        res[key], res[f"{key}_ci"] = c["measured_mean"], c["ci95"]
        res[f"{key}_verdict"], res[f"{key}_within_tol"] = c["verdict"], c["within_tolerance"]
        ratio_checks = []
        for i, n in enumerate(sizes):
            rc = prediction_check(f"measured / predicted std at n = {n}, {label}",
                                  [r[case]["ratio"][i] for r in runs], 1.0, config["slope_tol"])
            ratio_checks.append(rc)
            rows.append({"case": label, "n": n, "positions P": (n - config["kernel"] + 1) ** 2,
                         "std dL/dW (mean over seeds)":
                             float(np.mean([r[case]["std"][i] for r in runs])),
                         "predicted std": predicted_std(n, config, case),
                         "measured / predicted": rc["measured_mean"],
                         "ci95 lo": rc["ci95"][0], "ci95 hi": rc["ci95"][1],
                         "1 inside interval": rc["inside"]})
        res[f"max_rel_err_{case}"] = float(max(abs(rc["measured_mean"] - 1)
                                               for rc in ratio_checks))
        res[f"ratio_outside_{case}"] = sum(rc["inside"] is False for rc in ratio_checks)
    res.update({"growth_rows": rows, "prediction_checks": checks, "n_seeds": len(seeds),
                "seed_text": ", ".join(map(str, seeds)), "n_sizes": len(sizes),
                "samples_per_size": config["repeats"] * config["filters"]
                * config["channels"] * config["kernel"] ** 2,
                "per_seed_std": {case: [r[case]["std"] for r in runs] for case in CASES}})
    return res


def pooling_study(config: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
    """Backward of MaxPool2d and AvgPool2d (kernel = stride = pool_kernel) on one image."""
    k, n = config["pool_kernel"], config["pool_image"]
    if n % k:
        raise ValueError(f"conv-gradients: pool_image={n} must be a multiple of pool_kernel={k}")
    x = rng.normal(size=(1, 1, n, n)).astype(np.float32)
    dy = rng.uniform(0.5, 1.5, size=(1, 1, n // k, n // k)).astype(np.float32)
    out: Dict[str, Any] = {"pool_x": x[0, 0], "pool_dy": dy[0, 0]}
    for name, layer in (("max", nn.MaxPool2d(k)), ("avg", nn.AvgPool2d(k))):
        layer.train()
        layer(x)
        dx = layer.backward(dy)[0, 0]
        win = dx.reshape(n // k, k, n // k, k).transpose(0, 2, 1, 3).reshape(-1, k * k)
        xwin = x[0, 0].reshape(n // k, k, n // k, k).transpose(0, 2, 1, 3).reshape(-1, k * k)
        d = dy[0, 0].ravel()
        out[f"pool_dx_{name}"] = dx
        out[f"{name}_nonzero_per_window"] = float(np.mean((win != 0).sum(axis=1)))
        out[f"{name}_window_sum_over_dy"] = float(np.mean(win.sum(axis=1) / d))
        out[f"{name}_max_share"] = float(np.mean(np.abs(win).max(axis=1) / d))
        if name == "max":
            out["max_grad_at_argmax"] = bool(np.all(win.argmax(axis=1) == xwin.argmax(axis=1)))
    out["avg_share_expected"] = 1.0 / (k * k)
    return out


def _pool_figure(rep: Report, p: Dict[str, Any]) -> None:
    fig, axes = new_figure(ncols=4, figsize=(15, 3.9))
    panels = (("pool_x", "input image x"), ("pool_dy", "upstream gradient dL/dy"),
              ("pool_dx_max", "max-pool dL/dx"), ("pool_dx_avg", "avg-pool dL/dx"))
    for ax, (key, title) in zip(axes, panels):
        im = ax.imshow(p[key], cmap="viridis")
        ax.set_title(title)
        ax.set_xlabel("column (pixels)")
        ax.set_ylabel("row (pixels)")
        fig.colorbar(im, ax=ax, fraction=0.046, label="value")
    fig.suptitle(f"Pooling backward, kernel = stride = {p['pool_kernel']}, one "
                 f"{p['pool_image']}x{p['pool_image']} image")
    fig.tight_layout()
    rep.figure("pool_gradients", fig, "Pooling backward with kernel = stride = {pool_kernel}: max "
               "pooling puts each window's gradient on its argmax, average pooling spreads it.")


def _growth_figure(rep: Report, r: Dict[str, Any], sizes) -> None:
    rows = r["growth_rows"]
    fig, ax = new_figure(figsize=(6.4, 4.4))
    for case, label in CASES.items():
        mine = [x for x in rows if x["case"] == label]
        per_seed = np.array(r["per_seed_std"][case])              # (seeds, sizes)
        mean = per_seed.mean(axis=0)
        if per_seed.shape[0] >= 2:
            s = [stats.summarize(per_seed[:, i])["ci95"] for i in range(len(sizes))]
            yerr = np.array([[m - lo for m, (lo, _) in zip(mean, s)],
                             [hi - m for m, (_, hi) in zip(mean, s)]])
        else:
            yerr = None
        ax.errorbar(sizes, mean, yerr=yerr, fmt="o" if case == "iid" else "s",
                    color=CASE_COLORS[case], capsize=3,
                    label=f"measured, {label} (mean, 95% CI over seeds)")
        ax.plot(sizes, [x["predicted std"] for x in mine], "-" if case == "iid" else "--",
                color=CASE_COLORS[case],
                label="predicted (n-k+1) s_x s_g" if case == "iid"
                else "predicted (n-k+1)^2 s_x s_g")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(list(sizes), [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("image size n (pixels, log scale)")
    ax.set_ylabel("std of dL/dW (units of s_x s_g, log scale)")
    ax.set_title("Conv weight-gradient scale vs image size")
    ax.legend(fontsize=7, loc="lower right")
    rep.figure("grad_std_vs_n", fig, "std of dL/dW vs n (log-log); fitted slope {slope_iid:.3f} "
               "(i.i.d.), {slope_corr:.3f} (correlated), means over {n_seeds} seeds.")


def _check_rows(r: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [{"case": CASES[c["case"]], "fitted slope (mean)": c["measured_mean"],
             "ci95 lo": c["ci95"][0], "ci95 hi": c["ci95"][1], "derived slope": c["predicted"],
             "verdict": c["verdict"],
             f"within {c['tolerance']:g} of derived": c["within_tolerance"]}
            for c in r["prediction_checks"]]


def _write_report(out_dir, config: Dict[str, Any], r: Dict[str, Any]) -> None:
    rep = Report(out_dir, "Weight sharing and conv gradients; max vs average pool backward", r)
    rep.setup(config)
    rep.section("Derivation")
    rep.text("A {kernel}x{kernel} conv (stride 1, no padding) on an n x n image has "
             "P = (n - k + 1)^2 output positions and uses each weight at all of them, so "
             "dL/dW[f,c,i,j] = sum_p dy[f,p] x[c,p+(i,j)]. For i.i.d. zero-mean x (std s_x = "
             "{x_std}) and dy (std s_g = {g_std}), independent of each other, the P terms are "
             "uncorrelated, Var = P s_x^2 s_g^2 and std(dL/dW) = (n - k + 1) s_x s_g: it grows "
             "like n, log-log slope 1 (over these sizes the exact formula's fitted slope is "
             "{slope_derived_exact:.3f}). With perfectly correlated terms (constant image and "
             "upstream gradient) the sum is P dy x, std P s_x s_g: slope 2 "
             "({slope_corr_derived_exact:.3f} for the exact formula here).")
    rep.section("Measured growth")
    rep.text("{n_seeds} seeds ({seed_text}); per seed, a fresh Conv2d and fresh draws at each "
             "size: {samples_per_size} weight-gradient entries per size and case, from "
             "{repeats} independent draws. Both cases get the same check: the fitted slope's "
             "mean and 95% t-interval over the seeds against the derived slope, and the mean's "
             "distance to it against the tolerance slope_tol = {slope_tol}.")
    rep.table("slope_checks", _check_rows(r), "Fitted growth rate (log-log slope of std(dL/dW) "
              "vs n) against the derived one, per case")
    rep.table("grad_std_vs_n", r["growth_rows"], "std of dL/dW per image size and case: "
              "measured / predicted with its 95% interval over seeds")
    _growth_figure(rep, r, config["sizes"])
    rep.section("Max vs average pooling backward")
    _pool_figure(rep, r)
    rows = [{"pool": name, "nonzero entries per window": r[f"{name}_nonzero_per_window"],
             "window sum / dy": r[f"{name}_window_sum_over_dy"],
             "largest entry / dy": r[f"{name}_max_share"],
             "gradient lands on the forward argmax":
                 str(r["max_grad_at_argmax"]) if name == "max" else "n/a (all entries)"}
            for name in ("max", "avg")]
    rep.table("pool_backward", rows, "Per-window statistics of dL/dx (means over the windows; "
              "one image, first seed)")
    rep.conclusions(_conclusions(r))
    rep.explanation("weight sharing makes each weight's gradient a sum over all (n - k + 1)^2 "
                    "positions; uncorrelated terms add in variance (std ~ n), agreeing terms add "
                    "in value (std ~ n^2). Inputs with partly correlated neighbouring pixels "
                    "fall between the two cases (not measured here).")
    rep.write()


def _ci_text(ci) -> str:
    lo, hi = ci
    return "no interval" if lo is None else f"95% CI [{lo:.3f}, {hi:.3f}]"


def _conclusions(r: Dict[str, Any]) -> List[str]:
    lines = []
    for c in r["prediction_checks"]:
        label = CASES[c["case"]]
        lines.append(
            f"{label}: fitted log-log slope {c['measured_mean']:.3f} ({_ci_text(c['ci95'])}, "
            f"{c['n_seeds']} seeds) against the derived {c['predicted']:.3f}: {c['verdict']}; "
            f"the mean is {'within' if c['within_tolerance'] else 'outside'} the tolerance "
            f"{c['tolerance']:g} of it.")
    for case, label in CASES.items():
        lines.append(f"{label}: per image size, measured / predicted std is at most "
                     f"{r[f'max_rel_err_{case}']:.1%} from 1 (mean over seeds); 1 lies outside "
                     f"the 95% interval at {r[f'ratio_outside_{case}']} of {r['n_sizes']} sizes.")
    lines.append("Max pooling puts {max_nonzero_per_window:.2f} nonzero entries in each "
                 "{pool_kernel}x{pool_kernel} window, carrying {max_max_share:.3f} of the "
                 "upstream gradient, on the forward argmax: "
                 + ("yes" if r["max_grad_at_argmax"] else "no")
                 + ". Average pooling gives all {avg_nonzero_per_window:.2f} entries "
                   "{avg_max_share:.3f} of it (1/k^2 = {avg_share_expected:.3f}); both pass the "
                   "whole gradient on (window sums / dy: {max_window_sum_over_dy:.3f} and "
                   "{avg_window_sum_over_dy:.3f}).")
    return lines


def check_config(config: Dict[str, Any]) -> None:
    """Raise a ValueError naming the first bad config value, before any work."""
    def bad(key, rule):
        raise ValueError(f"conv-gradients: {key} must be {rule}, got {config[key]!r}")

    for key in ("kernel", "channels", "filters", "repeats", "pool_kernel", "pool_image"):
        if int(config[key]) < 1:
            bad(key, "an integer >= 1")
    for key in ("x_std", "g_std", "slope_tol"):
        v = float(config[key])
        if not (np.isfinite(v) and v > 0):
            bad(key, "a finite number > 0")
    sizes = config["sizes"]
    if (not isinstance(sizes, (list, tuple)) or len(set(int(n) for n in sizes)) < 2
            or any(int(n) < int(config["kernel"]) for n in sizes)):
        bad("sizes", f"a list of at least 2 distinct image sizes >= kernel ({config['kernel']})")
    if int(config["pool_image"]) % int(config["pool_kernel"]):
        bad("pool_image", f"a multiple of pool_kernel ({config['pool_kernel']})")
    try:
        seeds = stats.seeds_of(config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"conv-gradients: seeds: {err}") from None
    if len(seeds) < 2:
        bad("seeds", "at least 2 (the slope's interval is over seeds)")


_STANDARD = dict(_COMMON, sizes=[8, 16, 32, 64, 128], repeats=64, seeds=10)


@lab(name="conv-gradients", study="Weight sharing: conv weight-gradient scale vs image size; "
                                  "max vs average pooling backward",
     quick=dict(_COMMON, sizes=[8, 16, 32, 64], repeats=32, seeds=3),
     standard=_STANDARD,
     full=dict(_COMMON, sizes=[8, 16, 32, 64, 128, 256], repeats=64, seeds=20),
     expected_seconds={"quick": 5, "standard": 30, "full": 180})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    check_config(config)
    seeds = stats.seeds_of(config)
    results: Dict[str, Any] = dict(config)
    results.update(growth_study(config, seeds, progress))
    results.update(pooling_study(config, np.random.default_rng([seeds[0], 2])))
    results["comparisons"] = []     # measured vs derived, not two arms: see prediction_checks
    _write_report(out_dir, config, results)
    return results
