"""``summarize(model, input_shape)``: per-layer arithmetic of an :class:`mlcvlab.nn.Module`.

One forward pass on a zero batch of 2 in eval mode (2: a batch norm without running
statistics normalizes with batch statistics even in eval); each leaf module (one
without children) has its ``forward`` temporarily wrapped to record its input
and output shapes. Per leaf: output shape (without the batch axis), weights,
biases, activations (output values per sample) and multiply-adds per sample, which
each layer declares itself (``Module.multiply_adds``: Linear in·out, Conv2d
out_c·H_out·W_out·(in_c/groups)·kh·kw; pooling, batch norm, activations, dropout and
flatten count 0). A leaf that declares nothing is refused, not counted as 0.

    >>> from mlcvlab.nn.modules import Linear, ReLU
    >>> from mlcvlab.nn.module import Sequential
    >>> print(format_summary(summarize(Sequential(Linear(4, 8), ReLU(), Linear(8, 2)), (4,))))
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from mlcvlab.analysis.layers import LayerStats, totals
from mlcvlab.nn.module import declared


def _param_counts(module) -> Tuple[int, int]:
    """(weights, biases): biases are parameters named 'bias', the rest are weights."""
    weights = biases = 0
    for name, p in module._parameters.items():
        if p is None:
            continue
        if name == "bias":
            biases += p.size
        else:
            weights += p.size
    return weights, biases


def summarize(model, input_shape: Sequence[int]) -> List[LayerStats]:
    """Per-leaf-module stats of ``model`` for one sample of ``input_shape`` (no batch axis).

    input_shape: e.g. (784,) for an MLP or (1, 28, 28) for a CNN. The model is
    run once on ``zeros((2, *input_shape))`` of its dtype in eval mode; its
    training mode is restored afterwards. Leaves the forward pass never
    reached get out_shape () and 0 multiply-adds. A leaf without ``multiply_adds`` raises
    NotImplementedError (see ``mlcvlab.nn.module.declared``).
    """
    input_shape = tuple(int(n) for n in input_shape)
    if not input_shape or min(input_shape) < 1:
        raise ValueError(f"summarize: input_shape must be positive sizes without the batch axis, "
                         f"got {input_shape}")
    leaves = [(name, m) for name, m in model.named_modules() if not m._modules]
    macs = {id(m): declared(m, "multiply_adds") for _, m in leaves}   # refuses undeclared ones
    shapes: Dict[int, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {}    # (input, output)
    modes = {id(m): m.training for m in model.modules()}

    def wrap(module):
        original = module.forward

        def forward(x):
            y = original(x)
            shapes[id(module)] = tuple(np.shape(x))[1:], tuple(np.shape(y))[1:]
            return y
        return forward

    for _, m in leaves:
        object.__setattr__(m, "forward", wrap(m))
    try:
        model.eval()
        model(np.zeros((2,) + input_shape, dtype=model.dtype))
    finally:
        for _, m in leaves:
            m.__dict__.pop("forward", None)
        for m in model.modules():
            object.__setattr__(m, "training", modes[id(m)])
    rows = []
    for name, m in leaves:
        inp, out = shapes.get(id(m), ((), ()))
        weights, biases = _param_counts(m)
        acts = int(np.prod(out)) if out else 0
        rows.append(LayerStats(name or type(m).__name__, type(m).__name__, out, weights, biases,
                               acts, int(macs[id(m)](inp, out)) if out else 0))
    return rows


def _human(n: int) -> str:
    return f"{n:,}"


def format_summary(rows: Sequence[LayerStats], title: str = "") -> str:
    """An aligned text table of the rows with a totals line (memory: float32 bytes)."""
    header = ("layer", "type", "output", "weights", "biases", "activations", "mult-adds", "memory")
    body = [(r.name, r.kind, "x".join(map(str, r.out_shape)) or "-", _human(r.weights),
             _human(r.biases), _human(r.activations), _human(r.macs), _mem(r.memory_bytes))
            for r in rows]
    t = totals(rows)
    foot = ("total", "", "", _human(t["weights"]), _human(t["biases"]), _human(t["activations"]),
            _human(t["macs"]), _mem(t["memory_bytes"]))
    widths = [max(len(line[i]) for line in [header, *body, foot]) for i in range(len(header))]

    def fmt(line):
        left = [line[i].ljust(widths[i]) for i in range(3)]
        right = [line[i].rjust(widths[i]) for i in range(3, len(line))]
        return "  ".join(left + right).rstrip()

    rule = "-" * len(fmt(header))
    lines = ([title] if title else []) + [fmt(header), rule]
    lines += [fmt(b) for b in body] + [rule, fmt(foot)]
    lines.append(f"parameters: {t['params']:,}   multiply-adds per sample: {t['macs']:,}")
    return "\n".join(lines)


def _mem(n_bytes: int) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{n_bytes} B"
