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
draws (uncorrelated samples with the same variance) and fits the slope.

Part 2. Max- vs average-pool backward (``mlcvlab.nn.MaxPool2d`` / ``AvgPool2d``):
max pooling routes each window's whole upstream gradient to the one position that
won the forward max; average pooling spreads 1/k² of it to every position.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from mlcvlab import nn
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


def growth_study(config: Dict[str, Any], rng: np.random.Generator, progress) -> Dict[str, Any]:
    k, sizes = config["kernel"], config["sizes"]
    rows: List[Dict[str, Any]] = []
    std_iid, std_corr = [], []
    for n in progress(sizes, desc="image sizes"):
        g_iid = weight_grad_samples(n, config, rng, correlated=False)
        g_corr = weight_grad_samples(n, config, rng, correlated=True)
        positions = (n - k + 1) ** 2
        predicted = np.sqrt(positions) * config["x_std"] * config["g_std"]
        std_iid.append(float(g_iid.std()))
        std_corr.append(float(g_corr.std()))
        rows.append({"n": n, "positions P": positions, "std dL/dW (i.i.d.)": std_iid[-1],
                     "predicted (n-k+1) s_x s_g": float(predicted),
                     "measured / predicted": std_iid[-1] / predicted,
                     "std dL/dW (correlated)": std_corr[-1],
                     "predicted P s_x s_g": positions * config["x_std"] * config["g_std"]})
    exact = [(n - k + 1) * config["x_std"] * config["g_std"] for n in sizes]
    return {"growth_rows": rows, "slope_iid": fit_slope(sizes, std_iid),
            "slope_corr": fit_slope(sizes, std_corr), "slope_derived_asymptotic": 1.0,
            "slope_derived_exact": fit_slope(sizes, exact),
            "slope_corr_derived_exact": fit_slope(sizes, np.square(exact)),
            "max_rel_err_iid": float(max(abs(r["measured / predicted"] - 1) for r in rows)),
            "samples_per_size": len(weight_grad_samples(k, config, rng, False))}


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
    fig, axes = new_figure(ncols=4, figsize=(15, 3.6))
    panels = (("pool_x", "input image x"), ("pool_dy", "upstream gradient dL/dy"),
              ("pool_dx_max", "max-pool dL/dx"), ("pool_dx_avg", "avg-pool dL/dx"))
    for ax, (key, title) in zip(axes, panels):
        im = ax.imshow(p[key], cmap="viridis")
        ax.set_title(title)
        ax.set_xlabel("column")
        ax.set_ylabel("row")
        fig.colorbar(im, ax=ax, fraction=0.046, label="value")
    fig.tight_layout()
    rep.figure("pool_gradients", fig, "Pooling backward with kernel = stride = {pool_kernel}: max "
               "pooling puts each window's gradient on its argmax, average pooling spreads it.")


def _growth_figure(rep: Report, r: Dict[str, Any], sizes) -> None:
    rows = r["growth_rows"]
    fig, ax = new_figure(figsize=(6, 4.2))
    ax.loglog(sizes, [x["std dL/dW (i.i.d.)"] for x in rows], "o", label="measured, i.i.d.")
    ax.loglog(sizes, [x["predicted (n-k+1) s_x s_g"] for x in rows], "-",
              label="(n-k+1) s_x s_g")
    ax.loglog(sizes, [x["std dL/dW (correlated)"] for x in rows], "s",
              label="measured, constant x and dy")
    ax.loglog(sizes, [x["predicted P s_x s_g"] for x in rows], "--", label="(n-k+1)^2 s_x s_g")
    ax.set_xlabel("image size n")
    ax.set_ylabel("std of dL/dW")
    ax.legend(fontsize=8)
    rep.figure("grad_std_vs_n", fig, "std of dL/dW vs n (log-log); fitted slope {slope_iid:.3f} "
               "(i.i.d.), {slope_corr:.3f} (correlated).")


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
             "upstream gradient) the sum grows like P: slope 2 ({slope_corr_derived_exact:.3f} "
             "for the exact formula here).")
    rep.section("Measured growth")
    rep.table("grad_std_vs_n", r["growth_rows"], "std of dL/dW per image size "
              "({samples_per_size} weight entries per size and case)")
    _growth_figure(rep, r, config["sizes"])
    rep.text("Fitted log-log slope (i.i.d.): {slope_iid:.3f}, derived {slope_derived_exact:.3f} "
             "(asymptotically {slope_derived_asymptotic:.0f}); largest deviation of the measured "
             "std from (n - k + 1) s_x s_g: {max_rel_err_iid:.1%}. Correlated case: "
             "{slope_corr:.3f}, derived {slope_corr_derived_exact:.3f}.")
    rep.section("Max vs average pooling backward")
    _pool_figure(rep, r)
    rows = [{"pool": name, "nonzero entries per window": r[f"{name}_nonzero_per_window"],
             "window sum / dy": r[f"{name}_window_sum_over_dy"],
             "largest entry / dy": r[f"{name}_max_share"],
             "gradient lands on the forward argmax":
                 str(r["max_grad_at_argmax"]) if name == "max" else "n/a (all entries)"}
            for name in ("max", "avg")]
    rep.table("pool_backward", rows, "Per-window statistics of dL/dx (means over the windows)")
    rep.conclusions(_conclusions(r))
    rep.write()


def _conclusions(r: Dict[str, Any]) -> List[str]:
    agree = abs(r["slope_iid"] - r["slope_derived_exact"]) <= r["slope_tol"]
    lines = ["With i.i.d. inputs and upstream gradients the std of dL/dW grows with a fitted "
             "log-log slope of {slope_iid:.3f}, "
             + ("within" if agree else "outside")
             + " {slope_tol} of the derived {slope_derived_exact:.3f}: weight sharing sums "
               "(n - k + 1)^2 uncorrelated terms, so the gradient scale grows like n.",
             "When all terms agree (constant image and upstream gradient) the slope is "
             "{slope_corr:.3f} (derived {slope_corr_derived_exact:.3f}): correlated positions "
             "make conv gradients grow like n^2."]
    lines.append("Max pooling puts {max_nonzero_per_window:.2f} nonzero entries in each "
                 "{pool_kernel}x{pool_kernel} window, carrying {max_max_share:.3f} of the "
                 "upstream gradient, on the forward argmax: "
                 + ("yes" if r["max_grad_at_argmax"] else "no")
                 + ". Average pooling gives all {avg_nonzero_per_window:.2f} entries "
                   "{avg_max_share:.3f} of it (1/k^2 = {avg_share_expected:.3f}); both pass the "
                   "whole gradient on (window sums / dy: {max_window_sum_over_dy:.3f} and "
                   "{avg_window_sum_over_dy:.3f}).")
    return lines


@lab(name="conv-gradients", study="Weight sharing: conv weight-gradient scale vs image size; "
                                  "max vs average pooling backward",
     quick=dict(_COMMON, sizes=[8, 16, 32, 64], repeats=4),
     full=dict(_COMMON, sizes=[8, 16, 32, 64, 128, 256], repeats=16),
     expected_seconds={"quick": 4, "full": 30})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    rng = np.random.default_rng(config["seed"])
    results: Dict[str, Any] = dict(config)
    results.update(growth_study(config, rng, progress))
    results.update(pooling_study(config, rng))     # the 8x8 maps go to results.json as lists
    _write_report(out_dir, config, results)
    return results
