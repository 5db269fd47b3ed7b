"""Looking at a computational graph: step-by-step tables and drawings.

* :func:`trace` lists the nodes in evaluation order with value and gradient
  (the reverse-mode table of a lecture: forward top to bottom, backward
  bottom to top).
* :func:`to_dot` gives Graphviz source; :func:`draw` writes a PNG with the
  ``dot`` binary when it is installed, else with matplotlib using
  :func:`layered_layout` (each node one layer right of its deepest parent).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from mlcvlab.autograd.tensor import Tensor, topological_order

_SYMBOL = {"add": "+", "sub": "−", "mul": "×", "div": "÷", "neg": "−x", "pow": "^", "matmul": "@"}


def _fmt(a) -> str:
    if a is None:
        return "-"
    a = np.asarray(a)
    if a.size == 1:
        return f"{a.item():.4f}"
    return np.array2string(a, precision=4, separator=", ", max_line_width=60)


def node_names(root: Tensor) -> Dict[int, str]:
    """A display name per node id: its label, else v1, v2, ... in evaluation order."""
    names, k = {}, 0
    for node in topological_order(root):
        if node.label:
            names[id(node)] = node.label
        else:
            k += 1
            names[id(node)] = f"v{k}"
    return names


def trace(root: Tensor) -> List[dict]:
    """One row per node in evaluation order: step, node, op, inputs, value, grad.

    Call ``root.backward()`` first to fill the gradient column (d root / d node).
    Values and gradients are formatted to 4 decimals.
    """
    names = node_names(root)
    rows = []
    for step, node in enumerate(topological_order(root), start=1):
        rows.append({
            "step": step,
            "node": names[id(node)],
            "op": node.op,
            "inputs": ", ".join(names[id(p)] for p in node.parents),
            "value": _fmt(node.data),
            "grad": _fmt(node.grad),
        })
    return rows


def _node_text(node: Tensor, name: str) -> str:
    grad = "" if node.grad is None else f"\n∂={_fmt(node.grad)}"
    if node.op in ("input", "const"):
        return f"{name}\n= {_fmt(node.data)}{grad}"
    return f"{name}: {_SYMBOL.get(node.op, node.op)}\n= {_fmt(node.data)}{grad}"


def to_dot(root: Tensor) -> str:
    """Graphviz source of the graph, edges parent -> child, left to right."""
    names = node_names(root)
    lines = ["digraph G {", "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];']
    for node in topological_order(root):
        text = _node_text(node, names[id(node)]).replace('"', "'").replace("\n", "\\n")
        shape = "ellipse" if node.op in ("input", "const") else "box"
        lines.append(f'  n{node.id} [label="{text}", shape={shape}];')
        for p in node.parents:
            lines.append(f"  n{p.id} -> n{node.id};")
    lines.append("}")
    return "\n".join(lines)


def layered_layout(root: Tensor) -> Dict[int, Tuple[float, float]]:
    """(x, y) per node id for drawing the DAG left to right.

    x of an op node is the longest path from an input; a leaf (input or
    constant) sits one layer before its earliest consumer, so its edges stay
    short. y spreads the nodes of each layer evenly around 0.
    """
    order = topological_order(root)
    depth: Dict[int, int] = {}
    for node in order:
        depth[id(node)] = 1 + max((depth[id(p)] for p in node.parents), default=-1)
    first_use: Dict[int, int] = {}         # leaf id -> depth of its earliest consumer
    for node in order:
        for p in node.parents:
            if not p.parents:
                first_use[id(p)] = min(first_use.get(id(p), depth[id(node)]), depth[id(node)])
    for key, d in first_use.items():
        depth[key] = d - 1
    layers: Dict[int, List[int]] = {}
    for node in order:
        layers.setdefault(depth[id(node)], []).append(id(node))
    pos = {}
    for d, keys in layers.items():
        for i, key in enumerate(keys):
            pos[key] = (float(d), (len(keys) - 1) / 2.0 - i)
    return pos


def draw(root: Tensor, path, title: str = "", engine: str = "auto") -> str:
    """Write the graph to ``path`` (PNG). Returns the engine used: "graphviz" or "matplotlib".

    engine: "auto" (graphviz when the ``dot`` binary is on PATH), "graphviz" or "matplotlib".
    """
    if engine not in ("auto", "graphviz", "matplotlib"):
        raise ValueError(f"draw: engine must be 'auto', 'graphviz' or 'matplotlib', got {engine!r}")
    path = Path(path)
    dot = shutil.which("dot")
    if engine == "graphviz" and dot is None:
        raise FileNotFoundError("draw: engine='graphviz' needs the Graphviz 'dot' binary on PATH")
    if dot is not None and engine != "matplotlib":
        subprocess.run([dot, "-Tpng", "-o", str(path)], input=to_dot(root).encode(), check=True)
        return "graphviz"
    _draw_matplotlib(root, path, title)
    return "matplotlib"


def _draw_matplotlib(root: Tensor, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos, names = layered_layout(root), node_names(root)
    order = topological_order(root)
    width = 2.6 * (1 + max(x for x, _ in pos.values()))
    height = 1.6 * (1 + max(abs(y) for _, y in pos.values()) * 2)
    fig, ax = plt.subplots(figsize=(max(width, 5), max(height, 3)))
    for node in order:
        x1, y1 = pos[id(node)]
        for p in node.parents:
            x0, y0 = pos[id(p)]
            ax.annotate("", xy=(x1 - 0.28, y1), xytext=(x0 + 0.28, y0),
                        arrowprops=dict(arrowstyle="->", color="0.4"))
    for node in order:
        x, y = pos[id(node)]
        leaf = node.op in ("input", "const")
        ax.text(x, y, _node_text(node, names[id(node)]), ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round" if leaf else "square",
                          fc="#dbe9f6" if leaf else "#fdf2d0", ec="0.3"))
    ax.set_xlim(-0.6, max(x for x, _ in pos.values()) + 0.6)
    ax.set_ylim(min(y for _, y in pos.values()) - 0.8, max(y for _, y in pos.values()) + 0.8)
    ax.set_xlabel("depth in the graph (inputs left, output right)")
    ax.set_yticks([])
    ax.set_title(title or "computational graph (arrows: forward; ∂ = gradient of the output)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
