"""Lab ``init``: vanishing and exploding activations and gradients at initialization.

A 5-layer fully connected network (``depth`` hidden layers of ``width`` units, then
a linear 10-class head) is initialized with standard normal N(0, 1), a small normal
N(0, σ²) (σ = ``small_std``, 0.01 by default), Xavier (Glorot & Bengio 2010,
N(0, 2/(fan_in + fan_out))) or He (He et al. 2015, N(0, 2/fan_in)) weights, zero
biases, and each of tanh, sigmoid and ReLU. One forward pass of a random batch
x ~ N(0, I) records every hidden layer's activations (histograms, mean, std, RMS,
saturated and dead units); one backward pass of the cross-entropy against random labels
gives the back-propagated gradient dL/dz of every hidden layer and the norm of dL/dW.

Labels are computed from per-layer ratios (the criterion is stated in the report):
the activations *explode* (*vanish*) when their RMS grows (shrinks) by more than the
factor ``factor_explode`` (below ``factor_vanish``) per layer, as the geometric mean of
RMS_l / RMS_(l-1) over the hidden layers (layer 0 is the input); the gradients *explode*
(*vanish*) toward the input when the RMS of dL/dz grows (shrinks) by that factor per
layer from the last hidden layer to the first. Each probe is repeated over ``seeds``
(a fresh batch, labels and weights per seed; for one seed every arm sees the same batch
and labels and draws its weights from the same random stream), and the per-layer factors
are reported with their 95% t-interval over seeds.

For ReLU with zero biases and symmetric weights of variance s², the second
moment of the activations obeys E[h_l²] = fan_in·s²/2 · E[h_(l-1)²], so the
root-mean-square grows by sqrt(fan_in·s²/2) per layer: sqrt(width/2) for
N(0, 1), 0.01·sqrt(width/2) for N(0, 0.01²), sqrt(1/2) for Xavier (square layers) and
exactly 1 for He. The report puts that prediction next to the measured factor.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import numpy as np

from mlcvlab import nn
from mlcvlab.labs import stats
from mlcvlab.labs.checks import Checker
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure
from mlcvlab.nn import init as initializers

INITS = {"normal": "standard normal N(0, 1)", "normal_small": "small normal N(0, small_std²)",
         "xavier_normal": "Xavier N(0, 2/(fan_in+fan_out))", "he_normal": "He N(0, 2/fan_in)"}
ACTIVATIONS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}
# the initialization each activation was designed with: the reference arm of the comparisons
RECOMMENDED = {"tanh": "xavier_normal", "sigmoid": "xavier_normal", "relu": "he_normal"}
INIT_COLOURS = {"normal": "C3", "normal_small": "C0", "xavier_normal": "C2", "he_normal": "C1"}
_COMMON = {"depth": 5, "n_classes": 10, "inits": list(INITS), "activations": list(ACTIVATIONS),
           "small_std": 0.01, "factor_explode": 1.33, "factor_vanish": 0.75,
           "saturation_deriv": 0.01, "saturation_fraction": 0.5, "bins": 60}


def make_weights(init_name: str, shape, rng: np.random.Generator,
                 small_std: float = 0.01) -> np.ndarray:
    """Weights of ``shape`` from ``mlcvlab.nn.init`` (``normal_small``: N(0, small_std²))."""
    if init_name == "normal_small":
        return initializers.normal(shape, rng, std=small_std)
    return initializers.get(init_name)(shape, rng)


def build_net(width: int, depth: int, n_classes: int, activation: str, init_name: str,
              rng: np.random.Generator, small_std: float = 0.01) -> nn.Sequential:
    """[Linear(width, width), act] x depth, then Linear(width, n_classes); weights from
    ``mlcvlab.nn.init.<init_name>`` (or N(0, small_std²)), biases zero. Input x: (N, width)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"init lab: unknown activation {activation!r}; "
                         f"choose from {list(ACTIVATIONS)}")
    if init_name not in INITS:
        raise ValueError(f"init lab: unknown initializer {init_name!r}; choose from {list(INITS)}")
    layers: List[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width, rng=rng), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(width, n_classes, rng=rng))
    model = nn.Sequential(*layers)
    for m in model:
        if isinstance(m, nn.Linear):
            m.weight.data[...] = make_weights(init_name, m.weight.data.shape, rng, small_std)
            m.bias.data[...] = 0.0
    return model


def _derivative(activation: str, h: np.ndarray) -> np.ndarray:
    """d act / d z from the activation's output h (same shape)."""
    if activation == "tanh":
        return 1.0 - h * h
    if activation == "sigmoid":
        return h * (1.0 - h)
    return (h > 0).astype(h.dtype)


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(a, dtype=np.float64) ** 2)))


def geometric_factor(values: Sequence[float]) -> float:
    """The geometric mean of values[l] / values[l - 1]: the mean per-layer growth factor
    (0 when a value is 0, inf when the first is 0)."""
    v = np.asarray(values, dtype=np.float64)
    if v[0] == 0:
        return float("inf")
    if np.any(v == 0):
        return 0.0
    return float(np.exp(np.mean(np.diff(np.log(v)))))


def probe(model: nn.Sequential, activation: str, x: np.ndarray, labels: np.ndarray,
          saturation_deriv: float) -> Dict[str, Any]:
    """One forward pass (keeping each hidden activation) and one backward pass.

    x: (N, width), labels: (N,). Returns per hidden layer: activations (N, width),
    mean, std, rms, fraction of saturated units (derivative < saturation_deriv) and
    of dead units (zero for the whole batch), the RMS of the back-propagated gradient
    dL/dz at each hidden layer's pre-activation, and the norm of dL/dW for every Linear.
    """
    model.train()
    model.zero_grad()
    acts, h = [], x
    for m in model:
        h = m(h)
        if isinstance(m, tuple(ACTIVATIONS.values())):
            acts.append(h)
    loss_fn = nn.CrossEntropyLoss()
    loss = loss_fn(h, labels)
    dy, delta = loss_fn.backward(), []
    for m in reversed(list(model)):
        dy = m.backward(dy)
        if isinstance(m, tuple(ACTIVATIONS.values())):
            delta.append(_rms(dy))              # dL/dz of this hidden layer
        if dy is None:
            break
    delta = delta[::-1]
    grads = [float(np.linalg.norm(m.weight.grad)) for m in model if isinstance(m, nn.Linear)]
    deriv = [_derivative(activation, a) for a in acts]
    return {"acts": acts, "loss": float(loss), "grad_norms": grads, "delta_rms": delta,
            "mean": [float(a.mean()) for a in acts], "std": [float(a.std()) for a in acts],
            "rms": [_rms(a) for a in acts],
            "saturated": [float(np.mean(d < saturation_deriv)) for d in deriv],
            "dead": [float(np.mean(np.all(d == 0, axis=0))) for d in deriv]}


def relu_predicted_factor(init_name: str, width: int, small_std: float = 0.01) -> float:
    """sqrt(fan_in·s²/2): the per-layer RMS growth of a ReLU layer with weight variance s²."""
    var = {"normal": 1.0, "normal_small": small_std ** 2, "xavier_normal": 2.0 / (2 * width),
           "he_normal": 2.0 / width}[init_name]
    return float(np.sqrt(width * var / 2.0))


def label(factor: float, config: Dict[str, Any], grow: str = "exploding",
          shrink: str = "vanishing") -> str:
    """"exploding" when a per-layer factor exceeds factor_explode, "vanishing" when it is below
    factor_vanish, else "stable"."""
    if factor > config["factor_explode"]:
        return grow
    if factor < config["factor_vanish"]:
        return shrink
    return "stable"


def factors(p: Dict[str, Any], input_rms: float, input_std: float) -> Dict[str, float]:
    """Per-layer factors of one probe: the activations' std (from the input through the hidden
    layers: the spread, which a sigmoid's mean of 0.5 does not hide), their RMS (the quantity
    of the ReLU derivation) and the back-propagated gradients' RMS (from the last hidden layer
    toward the first)."""
    return {"act_factor": geometric_factor([input_std] + p["std"]),
            "rms_factor": geometric_factor([input_rms] + p["rms"]),
            "grad_factor": geometric_factor(p["delta_rms"][::-1]),
            "last_std": p["std"][-1], "saturated_last": p["saturated"][-1],
            "dead_last": p["dead"][-1]}


def _summ(values: Sequence[float]) -> Dict[str, Any]:
    """Mean and 95% interval over seeds; a factor of 0 or inf (underflow/overflow) stays as is."""
    v = [float(x) for x in values]
    if not all(math.isfinite(x) for x in v):
        return {"mean": float(np.mean(v)), "ci95": [None, None], "n": len(v), "values": v}
    return stats.summarize(v)


def _interval_word(s: Dict[str, Any], config: Dict[str, Any]) -> str:
    lo, hi = s["ci95"]
    if lo is None:
        return ""
    thresholds = (config["factor_vanish"], config["factor_explode"])
    return " (borderline: the 95% CI contains a threshold)" if any(
        lo <= t <= hi for t in thresholds) else ""


def verdict(agg: Dict[str, Dict[str, Any]], activation: str, config: Dict[str, Any]
            ) -> Dict[str, Any]:
    """Labels of one (init, activation) from its per-layer factors averaged over seeds."""
    act_word = label(agg["act_factor"]["mean"], config)
    grad_word = label(agg["grad_factor"]["mean"], config)
    flags = [f"activations {act_word}{_interval_word(agg['act_factor'], config)}",
             f"gradients {grad_word} toward the input"
             f"{_interval_word(agg['grad_factor'], config)}"]
    if activation == "relu":
        if agg["dead_last"]["mean"] > config["saturation_fraction"]:
            flags.append("most units dead")
    elif agg["saturated_last"]["mean"] > config["saturation_fraction"]:
        flags.append("saturated")
    return {"act_label": act_word, "grad_label": grad_word, "flags": flags,
            "verdict": "; ".join(flags)}


# -- figures ---------------------------------------------------------------------------------
def _histograms(rep: Report, probes: Dict[str, Dict[str, Any]], config: Dict[str, Any]) -> None:
    inits, acts = config["inits"], config["activations"]
    fig, axes = new_figure(nrows=len(inits), ncols=len(acts), squeeze=False,
                           figsize=(4 * len(acts), 3 * len(inits)))
    for i, init_name in enumerate(inits):
        for j, act in enumerate(acts):
            ax, p = axes[i][j], probes[f"{init_name}/{act}"]
            # when the layers' scales differ by > 100x one linear axis hides all but the last
            log_scale = max(p["std"]) > 100 * max(min(p["std"]), 1e-30)
            values = [np.log10(np.abs(a.ravel()[a.ravel() != 0])) if log_scale else a.ravel()
                      for a in p["acts"]]
            nonempty = [v for v in values if v.size]
            if not nonempty:
                ax.set_title(f"{init_name} / {act}: all activations 0", fontsize=9)
                continue
            lo, hi = np.percentile(np.concatenate(nonempty), [0.5, 99.5])
            for layer, v in enumerate(values, start=1):
                if v.size:
                    ax.hist(v, bins=config["bins"], range=(lo, hi if hi > lo else lo + 1),
                            histtype="step", density=True, color=f"C{layer - 1}",
                            label=f"layer {layer}")
            ax.set_title(f"{init_name} / {act}", fontsize=9)
            ax.set_xlabel("log10 |activation| (nonzero; unitless)" if log_scale
                          else "activation value (unitless)")
            ax.set_ylabel("density (per unit of x)")
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Hidden-layer activations at initialization (first seed)")
    fig.tight_layout()
    rep.figure("activation_histograms", fig,
               "Histograms of each hidden layer's activations (rows: init, columns: activation; "
               "first seed).")


def _per_layer_plot(rep: Report, per_layer: Dict[str, Dict[str, Any]], config, key: str,
                    ylabel: str, name: str, title: str, caption: str, n_points: int) -> None:
    acts = config["activations"]
    fig, axes = new_figure(ncols=len(acts), squeeze=False, figsize=(4.5 * len(acts), 3.8))
    for j, act in enumerate(acts):
        ax = axes[0][j]
        for init_name in config["inits"]:
            rows = per_layer[f"{init_name}/{act}"][key]      # (seeds, layers)
            arr = np.asarray(rows, dtype=np.float64)
            layers = np.arange(1, arr.shape[1] + 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                logs = np.log10(np.where(arr > 0, arr, np.nan))
            mean = np.nanmean(logs, axis=0)
            ax.plot(layers, 10 ** mean, marker="o", color=INIT_COLOURS[init_name],
                    label=init_name)
            if arr.shape[0] > 1:
                ax.fill_between(layers, 10 ** np.nanmin(logs, axis=0),
                                10 ** np.nanmax(logs, axis=0), color=INIT_COLOURS[init_name],
                                alpha=0.2, lw=0)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(1, n_points + 1))
        ax.set_title(act)
        ax.set_xlabel("layer (last = output head)" if key == "grad_norms" else "hidden layer")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    rep.figure(name, fig, caption)


# -- the lab ---------------------------------------------------------------------------------------
def _check_config(config: Dict[str, Any]) -> None:
    """Every user-settable value, checked before any work; errors name the key."""
    check = Checker("init", config)
    for key, lo in (("depth", 2), ("width", 1), ("n_classes", 2), ("batch_size", 1),
                    ("bins", 2)):
        check.integer(key, lo)
    check.number("small_std", 0, lo_open=True)
    check.number("factor_explode", 1, lo_open=True)
    check.number("factor_vanish", 0, 1, lo_open=True, hi_open=True)
    check.number("saturation_deriv", 0, lo_open=True)
    check.number("saturation_fraction", 0, 1, hi_open=True)
    for key, known in (("inits", INITS), ("activations", ACTIVATIONS)):
        bad = [v for v in config[key] if v not in known]
        if bad or not config[key]:
            raise ValueError(f"init lab: config key {key!r} must be a non-empty list from "
                             f"{list(known)}, got {config[key]!r}")
    stats.seeds_of(config)


def _seed_probe(config, seed: int, pairs) -> Dict[str, Dict[str, Any]]:
    """All (init, activation) probes of one seed: the same batch and labels for every arm,
    and the weights of every arm drawn from the same random stream."""
    rng = np.random.default_rng(seed)
    width = config["width"]
    x = rng.standard_normal((config["batch_size"], width)).astype(np.float32)
    labels = rng.integers(0, config["n_classes"], config["batch_size"])
    out = {}
    for init_name, act in pairs:
        wrng = np.random.default_rng([seed, 1])
        model = build_net(width, config["depth"], config["n_classes"], act, init_name, wrng,
                          config["small_std"])
        p = probe(model, act, x, labels, config["saturation_deriv"])
        p["input_rms"], p["input_std"] = _rms(x), float(x.std())
        out[f"{init_name}/{act}"] = p
    return out


def _comparisons(fac: Dict[str, Dict[str, List[float]]], config) -> List[Dict[str, Any]]:
    """Per activation: its recommended init against N(0, 1) and N(0, small_std²), on the
    distance of the per-layer activation and gradient factors from 1, |log10 factor| (lower is
    better: 0 keeps the scale from layer to layer), paired by seed."""
    def dist(values):
        # a factor of 0 or inf (underflow, overflow) is as far from 1 as float64 goes
        return [abs(math.log10(f)) if 0 < f < float("inf") else 308.0 for f in values]

    out = []
    for act in config["activations"]:
        ref = RECOMMENDED[act]
        if ref not in config["inits"]:
            continue
        for other in ("normal", "normal_small"):
            if other not in config["inits"]:
                continue
            for key, words in (("act_factor", "activation std"),
                               ("grad_factor", "back-propagated gradient RMS")):
                out.append(stats.compare(f"{ref} + {act}", dist(fac[f"{ref}/{act}"][key]),
                                         f"{other} + {act}", dist(fac[f"{other}/{act}"][key]),
                                         f"|log10 per-layer {words} factor| (0 = scale kept)",
                                         higher_is_better=False))
    return out


@lab(name="init", study="Glorot & Bengio (2010), He et al. (2015): initialization vs depth",
     quick=dict(_COMMON, width=256, batch_size=256, seeds=2),
     standard=dict(_COMMON, width=500, batch_size=1000, seeds=5),
     full=dict(_COMMON, width=500, batch_size=1000, seeds=10),
     expected_seconds={"quick": 15, "standard": 90, "full": 150})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    _check_config(config)
    seeds = stats.seeds_of(config)
    depth = config["depth"]
    pairs = [(i, a) for i in config["inits"] for a in config["activations"]]
    per_seed = [_seed_probe(config, s, pairs) for s in progress(seeds, desc="seeds")]
    first = per_seed[0]
    fac: Dict[str, Dict[str, List[float]]] = {}
    per_layer: Dict[str, Dict[str, List[List[float]]]] = {}
    for key in first:
        fs = [factors(ps[key], ps[key]["input_rms"], ps[key]["input_std"]) for ps in per_seed]
        fac[key] = {k: [f[k] for f in fs] for k in fs[0]}
        per_layer[key] = {k: [ps[key][k] for ps in per_seed]
                          for k in ("std", "rms", "delta_rms", "grad_norms")}
    summary, layers = [], []
    for key in first:
        init_name, act = key.split("/")
        agg = {k: _summ(v) for k, v in fac[key].items()}
        v = verdict(agg, act, config)
        summary.append({"init": init_name, "activation": act, "verdict": v["verdict"],
                        "act_label": v["act_label"], "grad_label": v["grad_label"],
                        "act_factor": agg["act_factor"]["mean"],
                        "act_factor_ci": agg["act_factor"]["ci95"],
                        "grad_factor": agg["grad_factor"]["mean"],
                        "grad_factor_ci": agg["grad_factor"]["ci95"],
                        "std_last": agg["last_std"]["mean"],
                        "saturated_last": agg["saturated_last"]["mean"],
                        "dead_last": agg["dead_last"]["mean"]})
        for k in range(depth):
            layers.append({"init": init_name, "activation": act, "layer": k + 1,
                           "mean": first[key]["mean"][k], "std": first[key]["std"][k],
                           "saturated fraction": first[key]["saturated"][k],
                           "dead fraction": first[key]["dead"][k],
                           "rms dL/dz": first[key]["delta_rms"][k],
                           "|dL/dW|": first[key]["grad_norms"][k]})
    growth = []
    for init_name in config["inits"]:
        key = f"{init_name}/relu"
        if key in fac:
            s = _summ(fac[key]["rms_factor"])
            growth.append({"init": init_name,
                           "predicted factor": relu_predicted_factor(init_name, config["width"],
                                                                     config["small_std"]),
                           "measured factor": s["mean"],
                           "ci95 low": s["ci95"][0], "ci95 high": s["ci95"][1]})
    results = dict(config)
    results.update({"seeds_used": seeds, "summary": summary, "relu_growth": growth,
                    "layers": layers, "input_std": float(np.mean([ps[next(iter(ps))]["input_rms"]
                                                                  for ps in per_seed])),
                    "comparisons": _comparisons(fac, config),
                    "factors": fac})
    for lab_name, word in (("exploding", "exploding"), ("vanishing", "vanishing")):
        results[f"act_{lab_name}"] = ", ".join(f"{s['init']}+{s['activation']}" for s in summary
                                               if s["act_label"] == word) or "none"
        results[f"grad_{lab_name}"] = ", ".join(f"{s['init']}+{s['activation']}" for s in summary
                                                if s["grad_label"] == word) or "none"
    results["saturated_arms"] = ", ".join(f"{s['init']}+{s['activation']}" for s in summary
                                          if "saturated" in s["verdict"]
                                          or "most units dead" in s["verdict"]) or "none"
    _write_report(out_dir, config, results, first, per_layer, growth)
    return results


def _fmt_ci(mean: float, ci) -> str:
    if ci[0] is None:
        return f"{mean:.3g}"
    return f"{mean:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"


def _write_report(out_dir, config, results, first, per_layer, growth) -> None:
    rep = Report(out_dir, "Initialization: vanishing and exploding activations and gradients",
                 results)
    rep.setup(config)
    rep.text("Network: {depth} hidden layers Linear({width}, {width}) + activation, then "
             "Linear({width}, {n_classes}); zero biases; weights from mlcvlab.nn.init "
             "(`normal_small` is N(0, {small_std}²)). Per seed (seeds {seeds_used}): one batch "
             "of {batch_size} inputs x ~ N(0, I) (mean input RMS {input_std:.3f}), random labels, "
             "cross-entropy loss, one forward and one backward pass; every arm of a seed sees "
             "the same batch and labels.")
    rep.text("**Criterion.** The activation factor is the geometric mean over the hidden layers "
             "of std(h_l) / std(h_(l-1)) (h_0 = the input; the std over the batch and units, so "
             "that a sigmoid's mean of 0.5 does not hide a collapsing spread); the gradient "
             "factor is the geometric mean of RMS(dL/dz_l) / RMS(dL/dz_(l+1)) from the last "
             "hidden layer toward the first (z_l: layer l's pre-activation). A factor above "
             "{factor_explode} per layer is labelled *exploding*, below {factor_vanish} "
             "*vanishing*, otherwise *stable*; the label uses the mean over seeds, and "
             "'borderline' marks a 95% interval over seeds that contains a threshold. A "
             "tanh/sigmoid network is 'saturated' when more than {saturation_fraction} of the "
             "last hidden layer's units have a derivative below {saturation_deriv}; a ReLU "
             "network has 'most units dead' when more than {saturation_fraction} of the last "
             "hidden layer's units are zero for the whole batch.")
    rows = [{"init": s["init"], "activation": s["activation"],
             "activation std factor/layer [95% CI]":
                 _fmt_ci(s["act_factor"], s["act_factor_ci"]),
             "gradient RMS factor/layer toward input [95% CI]":
                 _fmt_ci(s["grad_factor"], s["grad_factor_ci"]),
             f"std layer {config['depth']}": s["std_last"], "label": s["verdict"]}
            for s in results["summary"]]
    rep.table("summary", rows, "Labels per initialization and activation (mean over "
              "{seeds} seeds, 95% t-interval)")
    rep.table("per_layer", results["layers"], "Per-layer activation statistics and gradients "
              "(first seed)")
    if growth:
        rep.table("relu_growth", growth, "ReLU: per-layer RMS factor, sqrt(fan_in s^2 / 2) "
                  "predicted vs measured (mean over seeds, 95% CI)")
    _histograms(rep, first, config)
    n_hidden = config["depth"]
    _per_layer_plot(rep, per_layer, config, "std", "activation std (unitless)",
                    "activation_std", "Activation std per hidden layer",
                    "Std of each hidden layer's activations (line: geometric mean over seeds, "
                    "band: min-max over seeds).", n_hidden)
    _per_layer_plot(rep, per_layer, config, "delta_rms", "RMS of dL/dz (loss units per unit z)",
                    "backprop_gradients", "Back-propagated gradient per hidden layer",
                    "RMS of dL/dz at each hidden layer (line: geometric mean over seeds, band: "
                    "min-max over seeds).", n_hidden)
    _per_layer_plot(rep, per_layer, config, "grad_norms", "|dL/dW| (loss units per weight unit)",
                    "gradient_norms", "Weight-gradient norm per Linear layer",
                    "Norm of dL/dW per Linear layer after one backward pass.", n_hidden + 1)
    rep.comparisons(results["comparisons"], heading="Recommended init vs the others, per "
                    "activation (paired by seed)")
    rep.text("The factors measure scale, not saturation: saturated (or mostly dead) by the "
             "criterion above: {saturated_arms}. A saturated tanh or sigmoid layer can keep its "
             "activation std near 1 while its derivatives are near 0, so a comparison on the "
             "activation factor alone can favour it; read it with the gradient factor and the "
             "labels.")
    lines = []
    for i, s in enumerate(results["summary"]):
        lines.append(f"{s['init']} + {s['activation']}: {{summary[{i}][verdict]}} (activation "
                     f"std factor {{summary[{i}][act_factor]:.3g}}/layer, gradient factor "
                     f"{{summary[{i}][grad_factor]:.3g}}/layer toward the input).")
    for i, g in enumerate(growth):
        lines.append(f"ReLU with {g['init']}: RMS factor {{relu_growth[{i}][measured factor]:.3f}} "
                     f"per layer, the derivation predicts "
                     f"{{relu_growth[{i}][predicted factor]:.3f}}.")
    lines += ["Activations exploding: {act_exploding}; vanishing: {act_vanishing}.",
              "Gradients exploding toward the input: {grad_exploding}; vanishing: "
              "{grad_vanishing}."]
    rep.explanation("a layer multiplies the activation variance by fan_in · Var(w) · "
                    "E[act'(z)²]-like factors (Glorot & Bengio 2010; He et al. 2015), so "
                    "weights that are too large make the signal grow geometrically with depth "
                    "(or saturate tanh/sigmoid) and weights that are too small make it shrink; "
                    "Xavier and He choose Var(w) to keep the factor near 1.")
    rep.conclusions(lines)
    rep.write()
