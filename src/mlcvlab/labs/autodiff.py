"""Lab ``autodiff``: reverse-mode differentiation on a computational graph, step by step.

Two graphs built with :mod:`mlcvlab.autograd`:

1. z = log(x1·x2)·sin(x2) at (x1, x2) (the lecture example, (0.5, 0.75)).
2. One neuron with a squared loss: y = σ(w·x + b), L = (y − t)².

For each: the graph drawn (graphviz when ``dot`` is installed, else
matplotlib), the table of nodes in evaluation order with value and gradient
(read forward top to bottom, backward bottom to top), and the gradients
checked against float64 central finite differences and the closed form.

The run is deterministic (no seeds): the standard and full presets are the whole
computation and take seconds. Nothing is a measured comparison of two arms, so
``results["comparisons"]`` is empty; the finite-difference check reports its largest
absolute difference, a numerical error, not a verdict.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import numpy as np

from mlcvlab.autograd import Tensor, draw, log, sigmoid, sin, trace
from mlcvlab.labs.registry import lab
from mlcvlab.labs.report import Report

_PRESET = {"x1": 0.5, "x2": 0.75, "neuron_x": [1.5, -0.5], "neuron_w": [0.8, -1.2], "neuron_b": 0.1,
           "target": 1.0, "fd_eps": 1e-6, "graph_engine": "auto"}


def central_differences(f: Callable[[List[np.ndarray]], float], args: List[np.ndarray],
                        eps: float) -> List[np.ndarray]:
    """d f / d args by (f(a + eps) − f(a − eps)) / (2 eps), one coordinate at a time (float64)."""
    grads = []
    for i, a in enumerate(args):
        g = np.zeros_like(a, dtype=np.float64)
        for idx in np.ndindex(a.shape):
            hi = [np.array(x, dtype=np.float64) for x in args]
            lo = [np.array(x, dtype=np.float64) for x in args]
            hi[i][idx] += eps
            lo[i][idx] -= eps
            g[idx] = (f(hi) - f(lo)) / (2 * eps)
        grads.append(g)
    return grads


def example_graph(x1: float, x2: float):
    """Nodes of z = log(x1·x2)·sin(x2), labelled as in the lecture (v1 = x1·x2, ...)."""
    a, b = Tensor(x1, label="x1"), Tensor(x2, label="x2")
    v1 = a * b
    v1.label = "v1=x1*x2"
    v2 = log(v1)
    v2.label = "v2=log(v1)"
    v3 = sin(b)
    v3.label = "v3=sin(x2)"
    z = v2 * v3
    z.label = "z=v2*v3"
    return z, (a, b)


def neuron_graph(x, w, b: float, t: float):
    """Nodes of L = (σ(w·x + b) − t)² for one input x: (D,), weights w: (D,)."""
    xs = Tensor(np.asarray(x, dtype=np.float64), requires_grad=False, label="x")
    ws, bs = Tensor(np.asarray(w, dtype=np.float64), label="w"), Tensor(b, label="b")
    v = ws * xs
    v.label = "v=w*x"
    u = v.sum()
    u.label = "u=sum(w*x)"
    s = u + bs
    s.label = "s=u+b"
    y = sigmoid(s)
    y.label = "y=sigmoid(s)"
    e = y - t
    e.label = "e=y-t"
    loss = e ** 2
    loss.label = "L=e^2"
    return loss, (ws, bs), y


def _example(config: Dict[str, Any], out_dir) -> Dict[str, Any]:
    x1, x2 = float(config["x1"]), float(config["x2"])
    z, (a, b) = example_graph(x1, x2)
    z.backward()
    fd = central_differences(lambda p: float(np.log(p[0] * p[1]) * np.sin(p[1])),
                             [np.array(x1), np.array(x2)], config["fd_eps"])
    closed = [np.sin(x2) / x1, np.sin(x2) / x2 + np.log(x1 * x2) * np.cos(x2)]
    grads = [a.grad.item(), b.grad.item()]
    engine = draw(z, out_dir / "graph_example.png", "z = log(x1*x2) * sin(x2)",
                  config["graph_engine"])
    return {"example_z": z.item(), "example_grad": grads, "example_fd": [g.item() for g in fd],
            "example_closed_form": closed, "example_trace": trace(z),
            "example_max_err_fd": max(abs(g - f.item()) for g, f in zip(grads, fd)),
            "example_grad_rounded": [round(g, 4) for g in grads], "graph_engine": engine}


def _neuron(config: Dict[str, Any], out_dir) -> Dict[str, Any]:
    x, w = np.asarray(config["neuron_x"], float), np.asarray(config["neuron_w"], float)
    if x.shape != w.shape or x.ndim != 1:
        raise ValueError(f"autodiff lab: neuron_x and neuron_w must be equal-length lists, "
                         f"got {x.shape} and {w.shape}")
    b, t = float(config["neuron_b"]), float(config["target"])
    loss, (ws, bs), y = neuron_graph(x, w, b, t)
    loss.backward()

    def f(p):
        return float((1.0 / (1.0 + np.exp(-(p[0] @ x + p[1]))) - t) ** 2)

    fd_w, fd_b = central_differences(f, [w, np.array(b)], config["fd_eps"])
    yv = y.item()
    closed_b = 2 * (yv - t) * yv * (1 - yv)               # dL/db = 2(y - t) σ'(s)
    closed_w = closed_b * x                                # dL/dw = dL/db · x
    draw(loss, out_dir / "graph_neuron.png", "L = (sigmoid(w.x + b) - t)^2", config["graph_engine"])
    err = max(np.abs(ws.grad - fd_w).max(), abs(bs.grad.item() - fd_b.item()))
    return {"neuron_loss": loss.item(), "neuron_y": yv, "neuron_grad_w": ws.grad.tolist(),
            "neuron_grad_b": bs.grad.item(), "neuron_fd_w": fd_w.tolist(),
            "neuron_fd_b": fd_b.item(),
            "neuron_closed_w": closed_w.tolist(), "neuron_closed_b": closed_b,
            "neuron_grad_w_rounded": [round(g, 6) for g in ws.grad.tolist()],
            "neuron_trace": trace(loss), "neuron_max_err_fd": float(err),
            "neuron_max_err_closed": float(np.abs(ws.grad - closed_w).max())}


def _check_rows(names: List[str], grads, fds, closed) -> List[Dict[str, Any]]:
    return [{"variable": n, "reverse mode": g, "finite differences": f, "closed form": c,
             "abs difference (fd)": abs(g - f)} for n, g, f, c in zip(names, grads, fds, closed)]


def _write_report(out_dir, config: Dict[str, Any], r: Dict[str, Any]) -> None:
    rep = Report(out_dir, "Reverse-mode autodiff on a computational graph", r)
    rep.setup(config)
    rep.text("Deterministic: every number is computed once, in float64; the finite-difference "
             "columns are a numerical check (their largest absolute difference to reverse mode "
             "is stated), not a measured comparison.")
    rep.text("Graphs drawn with {graph_engine}. Each table lists the nodes in evaluation order: "
             "the forward pass fills `value` top to bottom; the backward pass fills `grad` (the "
             "derivative of the output with respect to that node) bottom to top, each node adding "
             "(local derivative) x (its output's grad) into its inputs.")
    rep.section("z = log(x1 x2) sin(x2)")
    rep.image("graph_example", "Computational graph of z at x1={x1}, x2={x2}; z = {example_z:.4f}.")
    rep.table("example_steps", r["example_trace"], "Reverse mode step by step")
    rep.table("example_check", _check_rows(["x1", "x2"], r["example_grad"], r["example_fd"],
                                           r["example_closed_form"]),
              "Gradient: reverse mode vs central differences vs closed form")
    rep.text("Gradient (4 decimals): {example_grad_rounded}; largest difference to finite "
             "differences {example_max_err_fd:.2e}.")
    rep.section("One neuron: L = (sigmoid(w.x + b) - t)^2")
    rep.image("graph_neuron",
              "Graph of the one-neuron loss; y = {neuron_y:.4f}, L = {neuron_loss:.4f}.")
    rep.table("neuron_steps", r["neuron_trace"], "Reverse mode step by step")
    names = [f"w{i + 1}" for i in range(len(r["neuron_grad_w"]))] + ["b"]
    rep.table("neuron_check", _check_rows(names, r["neuron_grad_w"] + [r["neuron_grad_b"]],
                                          r["neuron_fd_w"] + [r["neuron_fd_b"]],
                                          r["neuron_closed_w"] + [r["neuron_closed_b"]]),
              "dL/dw and dL/db: reverse mode vs central differences vs 2(y-t)y(1-y)x")
    rep.conclusions([
        "Reverse mode gives dz/dx1 = {example_grad[0]:.4f}, dz/dx2 = {example_grad[1]:.4f} at "
        "({x1}, {x2}); the largest absolute difference to central finite differences "
        "(eps {fd_eps:g}) is {example_max_err_fd:.1e}.",
        "For the neuron, dL/dw = {neuron_grad_w_rounded} and dL/db = {neuron_grad_b:.6f}; the "
        "largest absolute difference to finite differences is {neuron_max_err_fd:.1e}, to the "
        "closed form {neuron_max_err_closed:.1e}.",
    ])
    rep.write()


def check_config(config: Dict[str, Any]) -> None:
    """Raise a ValueError naming the first bad config value, before any work."""
    def bad(key, rule):
        raise ValueError(f"autodiff lab: {key} must be {rule}, got {config[key]!r}")

    def finite(key):
        try:
            return bool(np.all(np.isfinite(np.asarray(config[key], dtype=np.float64))))
        except (TypeError, ValueError):
            return False

    for key in ("x1", "x2", "neuron_b", "target", "fd_eps"):
        if not finite(key):
            bad(key, "a finite number")
    x1, x2, eps = float(config["x1"]), float(config["x2"]), float(config["fd_eps"])
    if not x1 * x2 > 0:
        bad("x2" if x1 > 0 else "x1", "of the same sign as the other input, both nonzero "
            "(z takes log(x1*x2))")
    if not 0 < eps < min(abs(x1), abs(x2)):
        bad("fd_eps", f"> 0 and below min(|x1|, |x2|) = {min(abs(x1), abs(x2)):g} (the "
            "central differences evaluate log(x1*x2) at x +- fd_eps)")
    for key in ("neuron_x", "neuron_w"):
        v = config[key]
        if not isinstance(v, (list, tuple)) or not v or not finite(key):
            bad(key, "a non-empty list of finite numbers")
    if len(config["neuron_x"]) != len(config["neuron_w"]):
        bad("neuron_w", f"as long as neuron_x ({len(config['neuron_x'])} values)")
    if config["graph_engine"] not in ("auto", "graphviz", "matplotlib"):
        bad("graph_engine", "'auto', 'graphviz' or 'matplotlib'")


@lab(name="autodiff",
     study="Computational graphs and reverse-mode autodiff: z = log(x1 x2) sin(x2), one neuron",
     quick=_PRESET, standard=_PRESET, full=_PRESET,
     expected_seconds={"quick": 3, "standard": 3, "full": 3})
def run(config: Dict[str, Any], out_dir, progress) -> Dict[str, Any]:
    """Build both graphs, differentiate, check, draw and write the report."""
    check_config(config)
    results: Dict[str, Any] = {"x1": config["x1"], "x2": config["x2"],
                               "fd_eps": float(config["fd_eps"]),
                               "comparisons": []}     # deterministic: no arms to compare
    for part in progress([_example, _neuron], desc="autodiff"):
        results.update(part(config, out_dir))
    _write_report(out_dir, config, results)
    return results
