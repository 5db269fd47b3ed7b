"""Lab ``init``: vanishing and exploding activations and gradients at initialization.

A 5-layer fully connected network (``depth`` hidden layers of ``width`` units, then
a linear 10-class head) is initialized with standard normal N(0, 1), Xavier
(Glorot & Bengio 2010, N(0, 2/(fan_in + fan_out))) or He (He et al. 2015,
N(0, 2/fan_in)) weights from :mod:`mlcvlab.nn.init`, zero biases, and each of
tanh, sigmoid and ReLU. One forward pass of a random batch x ~ N(0, I) records
every hidden layer's activations (histograms, mean, std, saturated and dead
units); one backward pass of the cross-entropy against random labels gives the
norm of dL/dW per layer.

For ReLU with zero biases and symmetric weights of variance s², the second
moment of the activations obeys E[h_l²] = fan_in·s²/2 · E[h_(l-1)²], so the
root-mean-square grows by sqrt(fan_in·s²/2) per layer: sqrt(width/2) for
N(0, 1), sqrt(1/2) for Xavier (square layers) and exactly 1 for He. The report
puts that prediction next to the measured factor.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np

from mlcvlab import nn
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report, new_figure
from mlcvlab.nn import init as initializers

INITS = {"normal": "standard normal N(0, 1)", "xavier_normal": "Xavier N(0, 2/(fan_in+fan_out))",
         "he_normal": "He N(0, 2/fan_in)"}
ACTIVATIONS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}
_COMMON = {"depth": 5, "n_classes": 10, "inits": list(INITS), "activations": list(ACTIVATIONS),
           "act_explode": 10.0, "act_vanish": 0.1, "saturation_deriv": 0.01,
           "saturation_fraction": 0.5, "grad_ratio_vanish": 0.1, "grad_ratio_explode": 10.0,
           "grad_explode": 1000.0, "bins": 60}


def build_net(width: int, depth: int, n_classes: int, activation: str, init_name: str,
              rng: np.random.Generator) -> nn.Sequential:
    """[Linear(width, width), act] x depth, then Linear(width, n_classes); weights from
    ``mlcvlab.nn.init.<init_name>``, biases zero. Input x: (N, width)."""
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
    make = initializers.get(init_name)
    for m in model:
        if isinstance(m, nn.Linear):
            m.weight.data[...] = make(m.weight.data.shape, rng)
            m.bias.data[...] = 0.0
    return model


def _derivative(activation: str, h: np.ndarray) -> np.ndarray:
    """d act / d z from the activation's output h (same shape)."""
    if activation == "tanh":
        return 1.0 - h * h
    if activation == "sigmoid":
        return h * (1.0 - h)
    return (h > 0).astype(h.dtype)


def probe(model: nn.Sequential, activation: str, x: np.ndarray, labels: np.ndarray,
          saturation_deriv: float) -> Dict[str, Any]:
    """One forward pass (keeping each hidden activation) and one backward pass.

    x: (N, width), labels: (N,). Returns per hidden layer: activations (N, width),
    mean, std, rms, fraction of saturated units (derivative < saturation_deriv) and
    of dead units (zero for the whole batch), and the norm of dL/dW for every Linear.
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
    model.backward(loss_fn.backward())
    grads = [float(np.linalg.norm(m.weight.grad)) for m in model if isinstance(m, nn.Linear)]
    deriv = [_derivative(activation, a) for a in acts]
    return {"acts": acts, "loss": loss, "grad_norms": grads,
            "mean": [float(a.mean()) for a in acts], "std": [float(a.std()) for a in acts],
            "rms": [float(np.sqrt(np.mean(a.astype(np.float64) ** 2))) for a in acts],
            "saturated": [float(np.mean(d < saturation_deriv)) for d in deriv],
            "dead": [float(np.mean(np.all(d == 0, axis=0))) for d in deriv]}


def relu_predicted_factor(init_name: str, width: int) -> float:
    """sqrt(fan_in·s²/2): the per-layer RMS growth of a ReLU layer with weight variance s²."""
    var = {"normal": 1.0, "xavier_normal": 2.0 / (2 * width), "he_normal": 2.0 / width}[init_name]
    return float(np.sqrt(width * var / 2.0))


def verdict(p: Dict[str, Any], activation: str, config: Dict[str, Any]) -> Dict[str, Any]:
    """Classify one (init, activation) probe by the thresholds in ``config``."""
    last_std, g = p["std"][-1], p["grad_norms"]
    ratio = g[0] / g[config["depth"] - 1] if g[config["depth"] - 1] > 0 else float("inf")
    flags = []
    if last_std > config["act_explode"]:
        flags.append("activations explode")
    if last_std < config["act_vanish"]:
        flags.append("activations vanish")
    if activation == "relu":
        if p["dead"][-1] > config["saturation_fraction"]:
            flags.append("most units dead")
    elif p["saturated"][-1] > config["saturation_fraction"]:
        flags.append("saturated")
    if ratio < config["grad_ratio_vanish"]:
        flags.append("gradients vanish toward the input")
    if ratio > config["grad_ratio_explode"]:
        flags.append("gradients explode toward the input")
    if max(g) > config["grad_explode"]:
        flags.append("gradient norms explode")
    return {"grad_ratio": float(ratio), "flags": flags,
            "verdict": "; ".join(flags) if flags else "healthy"}


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
            lo, hi = np.percentile(np.concatenate(values), [0.5, 99.5])
            for layer, v in enumerate(values, start=1):
                ax.hist(v, bins=config["bins"], range=(lo, hi if hi > lo else lo + 1),
                        histtype="step", density=True, label=f"layer {layer}")
            ax.set_title(f"{init_name} / {act}", fontsize=9)
            ax.set_xlabel("log10 |activation| (nonzero)" if log_scale else "activation value")
            ax.set_ylabel("density")
            ax.set_yscale("log")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    rep.figure("activation_histograms", fig,
               "Histograms of each hidden layer's activations (rows: init, columns: activation).")


def _per_layer_plot(rep: Report, probes, config, key: str, ylabel: str, name: str,
                    caption: str) -> None:
    acts = config["activations"]
    fig, axes = new_figure(ncols=len(acts), squeeze=False, figsize=(4.5 * len(acts), 3.5))
    for j, act in enumerate(acts):
        ax = axes[0][j]
        for init_name in config["inits"]:
            values = probes[f"{init_name}/{act}"][key]
            ax.semilogy(range(1, len(values) + 1), values, marker="o", label=init_name)
        ax.set_title(act)
        ax.set_xlabel("layer (last = output head)" if key == "grad_norms" else "hidden layer")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    fig.tight_layout()
    rep.figure(name, fig, caption)


# -- the lab ---------------------------------------------------------------------------------------
def _rows(probes, verdicts, config) -> Dict[str, List[Dict[str, Any]]]:
    layers, summary = [], []
    for key, p in probes.items():
        init_name, act = key.split("/")
        for k in range(config["depth"]):
            layers.append({"init": init_name, "activation": act, "layer": k + 1,
                           "mean": p["mean"][k], "std": p["std"][k],
                           "saturated fraction": p["saturated"][k],
                           "dead fraction": p["dead"][k], "|dL/dW|": p["grad_norms"][k]})
        v = verdicts[key]
        summary.append({"init": init_name, "activation": act, "std layer 1": p["std"][0],
                        f"std layer {config['depth']}": p["std"][-1],
                        "|dL/dW1|": p["grad_norms"][0],
                        f"|dL/dW{config['depth']}|": p["grad_norms"][config["depth"] - 1],
                        "grad ratio first/last": v["grad_ratio"], "loss": p["loss"],
                        "verdict": v["verdict"]})
    return {"layers": layers, "summary": summary}


def _relu_growth(probes, config) -> List[Dict[str, Any]]:
    rows = []
    for init_name in config["inits"]:
        key = f"{init_name}/relu"
        if key not in probes:
            continue
        rms = np.array(probes[key]["rms"])
        rows.append({"init": init_name,
                     "predicted factor": relu_predicted_factor(init_name, config["width"]),
                     "measured factor": float(np.exp(np.mean(np.diff(np.log(rms)))))})
    return rows


def _conclusions(summary: Sequence[Dict[str, Any]], growth: Sequence[Dict[str, Any]]) -> List[str]:
    lines = []
    for i, s in enumerate(summary):
        lines.append(f"{s['init']} + {s['activation']}: {{summary[{i}][verdict]}} (last-layer "
                     f"std {{summary[{i}][std_last]:.3g}}, gradient ratio first/last "
                     f"{{summary[{i}][grad_ratio]:.3g}}).")
    for i, g in enumerate(growth):
        lines.append(f"ReLU with {g['init']}: RMS grows by "
                     f"{{relu_growth[{i}][measured factor]:.3f}} per layer, the derivation "
                     f"predicts {{relu_growth[{i}][predicted factor]:.3f}}.")
    return lines


@lab(name="init", study="Glorot & Bengio (2010), He et al. (2015): initialization vs depth",
     quick=dict(_COMMON, width=256, batch_size=256), full=dict(_COMMON, width=500, batch_size=1000),
     expected_seconds={"quick": 5, "full": 25})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    rng = np.random.default_rng(config["seed"])
    width, depth = config["width"], config["depth"]
    x = rng.standard_normal((config["batch_size"], width)).astype(np.float32)
    labels = rng.integers(0, config["n_classes"], config["batch_size"])
    probes, verdicts = {}, {}
    pairs = [(i, a) for i in config["inits"] for a in config["activations"]]
    for init_name, act in progress(pairs, desc="probe"):
        model = build_net(width, depth, config["n_classes"], act, init_name, rng)
        key = f"{init_name}/{act}"
        probes[key] = probe(model, act, x, labels, config["saturation_deriv"])
        verdicts[key] = verdict(probes[key], act, config)
    tables = _rows(probes, verdicts, config)
    growth = _relu_growth(probes, config)
    summary = [{"init": s["init"], "activation": s["activation"], "verdict": s["verdict"],
                "std_last": s[f"std layer {depth}"], "grad_ratio": s["grad ratio first/last"]}
               for s in tables["summary"]]
    results = {k: v for k, v in config.items()}
    results.update({"summary": summary, "relu_growth": growth, "layers": tables["layers"],
                    "input_std": float(x.std()),
                    "healthy": ", ".join(f"{s['init']}+{s['activation']}" for s in summary
                                         if s["verdict"] == "healthy") or "none",
                    "unhealthy": ", ".join(f"{s['init']}+{s['activation']}" for s in summary
                                           if s["verdict"] != "healthy") or "none"})
    _write_report(out_dir, config, results, probes, tables, growth)
    return results


def _write_report(out_dir, config, results, probes, tables, growth) -> None:
    rep = Report(out_dir, "Initialization: vanishing and exploding activations and gradients",
                 results)
    rep.setup(config)
    rep.text("Network: {depth} hidden layers Linear({width}, {width}) + activation, then "
             "Linear({width}, {n_classes}); zero biases; weights from mlcvlab.nn.init. One batch "
             "of {batch_size} inputs x ~ N(0, I) (measured std {input_std:.3f}); loss: "
             "cross-entropy against random labels; one backward pass.")
    rep.text("**Thresholds.** Activations explode when the last hidden layer's std exceeds "
             "{act_explode} (the input std is 1) and vanish when it is below {act_vanish}. "
             "A tanh/sigmoid layer is saturated when more than {saturation_fraction} of its "
             "units have a derivative below {saturation_deriv}; a ReLU layer is 'most units "
             "dead' when more than {saturation_fraction} of its units are zero for the whole "
             "batch. Gradients vanish (explode) toward the input when |dL/dW1| / |dL/dW{depth}| "
             "is below {grad_ratio_vanish} (above {grad_ratio_explode}); gradient norms explode "
             "when any layer's |dL/dW| exceeds {grad_explode}.")
    rep.table("summary", tables["summary"], "Verdict per initialization and activation")
    rep.table("per_layer", tables["layers"], "Per-layer activation statistics and gradient norms")
    if growth:
        rep.table("relu_growth", growth, "ReLU: per-layer RMS growth, sqrt(fan_in s^2 / 2) vs "
                                         "measured (geometric mean over layers)")
    _histograms(rep, probes, config)
    _per_layer_plot(rep, probes, config, "std", "activation std", "activation_std",
                    "Std of each hidden layer's activations.")
    _per_layer_plot(rep, probes, config, "grad_norms", "|dL/dW|", "gradient_norms",
                    "Norm of dL/dW per Linear layer after one backward pass.")
    rep.conclusions(_conclusions(results["summary"], growth)
                    + ["Healthy by these thresholds: {healthy}; not healthy: {unhealthy}."])
    rep.write()
