"""Layer specs and the walk that turns them into per-layer arithmetic.

A network is described by a list of small spec objects (:class:`Conv`,
:class:`Pool`, :class:`FC`, ...) and walked from an input shape with
:func:`analyze`, which returns one :class:`LayerStats` per layer: output
shape, weights and biases (counted separately), activations (number of output
values), multiply-adds, and float32 memory. Shapes are per sample: images
(C, H, W), vectors (D,).

Conventions (stated once, used everywhere):

* Conv multiply-adds = out_c · H_out · W_out · (in_c / groups) · k · k; FC = in · out.
* Pooling, ReLU, batch norm and the residual addition count 0 multiply-adds
  (their cost is comparisons/additions, small next to the convolutions).
* Memory is 4 bytes (float32) per activation and per parameter.
* Output size of a conv/pool: floor((H + 2·pad − k) / stride) + 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence, Tuple, Union

import numpy as np

Shape = Tuple[int, ...]
BYTES_PER_VALUE = 4  # float32


@dataclass(frozen=True)
class Conv:
    """k×k convolution: in_c -> out_c channels. ``groups`` splits channels (AlexNet's 2 GPUs)."""

    in_c: int
    out_c: int
    k: int
    stride: int = 1
    pad: int = 0
    groups: int = 1
    bias: bool = True
    name: str = ""


@dataclass(frozen=True)
class Pool:
    """k×k max or average pooling (no parameters)."""

    k: int
    stride: int = 0  # 0 means stride = k
    pad: int = 0
    kind: str = "max"
    name: str = ""


@dataclass(frozen=True)
class GlobalAvgPool:
    """Average over H and W: (C, H, W) -> (C,)."""

    name: str = "gap"


@dataclass(frozen=True)
class FC:
    """Fully connected in_f -> out_f; an image input is flattened (in_f must be C·H·W)."""

    in_f: int
    out_f: int
    bias: bool = True
    name: str = ""


@dataclass(frozen=True)
class BatchNorm:
    """Batch norm over c channels: 2·c parameters (gamma, beta); running stats are not
    parameters.
    """

    c: int
    name: str = ""


@dataclass(frozen=True)
class Concat:
    """Parallel branches on the same input, outputs concatenated on channels (Inception)."""

    branches: Tuple[Tuple["Spec", ...], ...]
    name: str = ""


@dataclass(frozen=True)
class Residual:
    """y = main(x) + shortcut(x) (ResNet); an empty shortcut is the identity."""

    main: Tuple["Spec", ...]
    shortcut: Tuple["Spec", ...] = ()
    name: str = ""


Spec = Union[Conv, Pool, GlobalAvgPool, FC, BatchNorm, Concat, Residual]


@dataclass
class LayerStats:
    """One layer's arithmetic. out_shape per sample; macs = multiply-adds per sample."""

    name: str
    kind: str
    out_shape: Shape
    weights: int = 0
    biases: int = 0
    activations: int = 0
    macs: int = 0
    note: str = field(default="")

    @property
    def params(self) -> int:
        return self.weights + self.biases

    @property
    def memory_bytes(self) -> int:
        """float32 bytes of this layer's output values plus its parameters."""
        return BYTES_PER_VALUE * (self.activations + self.params)


def conv_out(size: int, k: int, stride: int, pad: int) -> int:
    """Output length of a k-wide window with ``stride`` and ``pad`` over ``size`` inputs."""
    out = (size + 2 * pad - k) // stride + 1
    if out < 1:
        raise ValueError(f"conv_out: a {k}-wide window (stride {stride}, pad {pad}) does not fit "
                         f"an input of size {size}; use a larger input or smaller kernel")
    return out


def _image(shape: Shape, layer: str) -> Shape:
    if len(shape) != 3:
        raise ValueError(f"analyze: layer {layer} expects an image shape (C, H, W), got {shape}")
    return shape


def _conv(s: Conv, shape: Shape, name: str) -> LayerStats:
    c, h, w = _image(shape, name)
    if c != s.in_c:
        raise ValueError(f"analyze: {name} expects {s.in_c} input channels, got shape {shape}")
    if s.in_c % s.groups or s.out_c % s.groups:
        raise ValueError(f"analyze: {name} groups={s.groups} must divide in_c={s.in_c} "
                         f"and out_c={s.out_c}")
    ho, wo = conv_out(h, s.k, s.stride, s.pad), conv_out(w, s.k, s.stride, s.pad)
    per_filter = (s.in_c // s.groups) * s.k * s.k
    out = (s.out_c, ho, wo)
    note = f"groups={s.groups}" if s.groups > 1 else ""
    return LayerStats(name, f"conv{s.k}x{s.k}/{s.stride}", out, s.out_c * per_filter,
                      s.out_c if s.bias else 0, int(np.prod(out)), s.out_c * ho * wo * per_filter,
                      note)


def _leaf(s, shape: Shape, name: str) -> LayerStats:
    """Stats of a non-composite spec at input ``shape``."""
    if isinstance(s, Conv):
        return _conv(s, shape, name)
    if isinstance(s, Pool):
        c, h, w = _image(shape, name)
        stride = s.stride or s.k
        out = (c, conv_out(h, s.k, stride, s.pad), conv_out(w, s.k, stride, s.pad))
        return LayerStats(name, f"{s.kind}pool{s.k}x{s.k}/{stride}", out,
                          activations=int(np.prod(out)))
    if isinstance(s, GlobalAvgPool):
        c = _image(shape, name)[0]
        return LayerStats(name, "global-avg-pool", (c,), activations=c)
    if isinstance(s, FC):
        n_in = int(np.prod(shape))
        if n_in != s.in_f:
            raise ValueError(f"analyze: {name} expects {s.in_f} inputs, "
                             f"got shape {shape} ({n_in} values)")
        return LayerStats(name, "fc", (s.out_f,), s.in_f * s.out_f, s.out_f if s.bias else 0,
                          s.out_f, s.in_f * s.out_f)
    if isinstance(s, BatchNorm):
        if shape[0] != s.c:
            raise ValueError(f"analyze: {name} expects {s.c} channels, got shape {shape}")
        return LayerStats(name, "batchnorm", shape, s.c, s.c, int(np.prod(shape)))
    raise TypeError(f"analyze: unknown layer spec {type(s).__name__} at {name}")


def _walk(specs: Sequence[Spec], shape: Shape, prefix: str) -> Tuple[List[LayerStats], Shape]:
    rows: List[LayerStats] = []
    for i, s in enumerate(specs):
        name = s.name or f"{prefix}{i}"
        if isinstance(s, Concat):
            outs = []
            for b, branch in enumerate(s.branches):
                sub, out = _walk(branch, shape, f"{name}.b{b}.")
                rows += sub
                outs.append(out)
            if any(o[1:] != outs[0][1:] for o in outs):
                raise ValueError(f"analyze: {name} branches disagree on spatial size: {outs}")
            shape = (sum(o[0] for o in outs),) + outs[0][1:]
            rows.append(LayerStats(f"{name}.concat", "concat", shape,
                                   activations=int(np.prod(shape))))
        elif isinstance(s, Residual):
            sub, out = _walk(s.main, shape, f"{name}.")
            short, sc_out = _walk(s.shortcut, shape, f"{name}.down.")
            if out != sc_out:
                raise ValueError(f"analyze: {name} main output {out} != shortcut output {sc_out}")
            rows += sub + short
            rows.append(LayerStats(f"{name}.add", "add", out, activations=int(np.prod(out))))
            shape = out
        else:
            row = _leaf(s, shape, name)
            rows.append(row)
            shape = row.out_shape
    return rows, shape


def analyze(specs: Sequence[Spec], input_shape: Shape) -> List[LayerStats]:
    """Per-layer stats of ``specs`` applied to one sample of ``input_shape`` ((C, H, W) or (D,))."""
    input_shape = tuple(int(n) for n in input_shape)
    return _walk(specs, input_shape, "layer")[0]


def totals(rows: Sequence[LayerStats]) -> dict:
    """Sums over the rows: weights, biases, params, activations, macs, memory_bytes."""
    keys = ("weights", "biases", "params", "activations", "macs", "memory_bytes")
    return {k: int(sum(getattr(r, k) for r in rows)) for k in keys}
