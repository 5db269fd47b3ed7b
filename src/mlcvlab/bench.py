"""``mlcvlab bench``: training and evaluation throughput of mlcvlab against PyTorch on the CPU.

For each model (by default the MLP 784-1000-1000-10, LeNet-5 on 1x28x28 and ResNet-20 on
3x32x32; ``--models all`` adds ResNet-44, the cutout study's network, and MiniGoogLeNet, the
cyclical study's, both on 3x32x32) it times, in one process, on the same random batch and
with the same thread count (``threadpoolctl`` for NumPy's BLAS, ``torch.set_num_threads``):

* a training step: forward, cross-entropy, backward, SGD-with-momentum step;
* an evaluation forward pass (eval mode; ``torch.no_grad`` for torch).

Ours and torch are timed interleaved (ours, torch, ours, torch, ...) so that
load from other processes hits both alike, and the median over ``repeats`` is
reported; each timed sample starts after a short pause and one untimed step,
so that the other framework's still-spinning BLAS / OpenMP threads do not
compete with it (``SETTLE_SECONDS``). It also measures this machine's SGEMM
peak (a large float32 ``np.matmul``) and the fraction of it the MLP training step reaches, and the
peak memory of one training step of each framework, each in a fresh
subprocess (see :func:`measure_memory` for the method).

PyTorch is a benchmark dependency only and never imported by the package: the
PyTorch twins of the models live in ``benchmarks/torch_reference.py`` (in the
source tree), which this command loads from ``--reference``, from
``$MLCVLAB_BENCH_REFERENCE``, or from ``benchmarks/`` next to the working
directory or the source checkout. Without it, or without torch, the table shows
ours alone.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

MODEL_NAMES = ("mlp", "lenet5", "resnet20", "resnet44", "minigooglenet")
DEFAULT_MODELS = ("mlp", "lenet5", "resnet20")
INPUT_SHAPES = {"mlp": (784,), "lenet5": (1, 28, 28), "resnet20": (3, 32, 32),
                "resnet44": (3, 32, 32), "minigooglenet": (3, 32, 32)}
MLP_SIZES = (784, 1000, 1000, 10)
N_CLASSES = 10
LR, MOMENTUM = 0.01, 0.9
MEMORY_METHOD = (
    "fresh subprocess per framework and model; peak RSS (VmHWM, reset just before) over 3 "
    "training steps minus the RSS just before the first step (model, optimizer and data built, "
    "one warm-up step on a batch of 2 already run to load kernels and thread pools); for ours "
    "also tracemalloc's peak of the traced NumPy allocations during a 4th step"
)


# --------------------------------------------------------------------------- machine facts
def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (``lscpu``'s "Model name"), or platform's guess."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _vector_bytes() -> int:
    """The width of the explicit vectors in our numba kernels (``nn/simd.py``)."""
    from mlcvlab.nn import simd
    return simd.BYTES


def cpu_simd() -> str:
    """The CPU family/model and widest vector extension from /proc/cpuinfo, e.g. "family 25
    model 1, AVX2+FMA (no AVX-512)". It matters for the ratios: torch's oneDNN kernels use
    AVX-512 where the CPU has it, NumPy's OpenBLAS build here does not. "" when unknown."""
    info = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("cpu family", "model", "flags") and key not in info:
                    info[key] = value.strip()
                if len(info) == 3:
                    break
    except OSError:
        return ""
    flags = set(info.get("flags", "").split())
    if "avx512f" in flags:
        simd = "AVX-512"
    elif "avx2" in flags:
        simd = "AVX2" + ("+FMA" if "fma" in flags else "") + " (no AVX-512)"
    else:
        simd = "no AVX2"
    where = (f"family {info['cpu family']} model {info['model']}, "
             if "cpu family" in info and "model" in info else "")
    return where + simd if flags else ""


def blas_kernels() -> str:
    """NumPy's BLAS and the kernel set it runs, e.g. "openblas 0.3.31 (Haswell kernels)": on
    an AVX-512 CPU that OpenBLAS does not know (or with OPENBLAS_CORETYPE set) it may run its
    AVX2 kernels, which caps the SGEMM peak below while our numba kernels use AVX-512."""
    try:
        from threadpoolctl import threadpool_info
        for lib in threadpool_info():
            if lib.get("user_api") == "blas":
                arch = lib.get("architecture")
                return (f"{lib.get('internal_api')} {lib.get('version')}"
                        + (f" ({arch} kernels)" if arch else ""))
    except Exception:                    # threadpoolctl unable to inspect the process
        pass
    return "unknown"


def conv_train_flops(name: str) -> float:
    """FLOPs per sample of one training step of the model ``name`` counted as direct
    convolution and dense GEMMs: 2 x (the forward's multiply-adds of its convolutions and
    linear layers, once each for the forward, dx and dW, less dx of the first layer: its input
    is the data). Winograd's saving then shows as a rate above what the arithmetic ran at."""
    from mlcvlab.analysis.summary import summarize
    rows = [r for r in summarize(build_ours(name), INPUT_SHAPES[name])
            if r.kind in ("Conv2d", "Linear")]
    return 2.0 * (3 * sum(r.macs for r in rows) - rows[0].macs)


REFERENCE_FILE = "torch_reference.py"


def find_reference(path: Optional[str] = None) -> Optional[Path]:
    """Where the PyTorch reference module is: ``path``, $MLCVLAB_BENCH_REFERENCE, or
    ``benchmarks/torch_reference.py`` under the working directory or the source checkout."""
    if path:
        if not os.path.exists(path):
            raise FileNotFoundError(f"mlcvlab bench: --reference {path} does not exist")
        return Path(path)
    candidates = [os.environ.get("MLCVLAB_BENCH_REFERENCE"),
                  Path.cwd() / "benchmarks" / REFERENCE_FILE,
                  Path(__file__).resolve().parents[2] / "benchmarks" / REFERENCE_FILE]
    for c in candidates:
        if c and os.path.exists(c):
            return Path(c)
    return None


def load_reference(path: Optional[Path]):
    """The reference module (``steps(name, batch)``, ``set_threads(n)``, ``version``), or
    None when there is no reference file or torch is not installed."""
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("mlcvlab_torch_reference", str(path))
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError:
        return None
    return module


def sgemm_gflops(size: int = 2048, repeats: int = 5, warmup_seconds: float = 0.5) -> float:
    """Best GFLOP/s of a (size, size) @ (size, size) float32 np.matmul: 2*size^3 flops.

    GEMMs run for ``warmup_seconds`` first: a single warm-up call left the BLAS threads and
    the cores' clocks cold often enough that one run measured 108 GFLOP/s on a machine
    that gives 150-178 warm, and flattered the MLP's fraction of it (81 % instead of 55 %).
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty_like(a)
    t_end = time.perf_counter() + warmup_seconds
    np.matmul(a, b, out=out)
    while time.perf_counter() < t_end:
        np.matmul(a, b, out=out)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size ** 3 / best / 1e9


def mlp_gemm_gflops(sizes: Sequence[int], batch: int, repeats: int = 5,
                    matmul: Callable = np.matmul, wrap: Callable = lambda a: a) -> float:
    """GFLOP/s of the MLP training step's GEMMs alone (per layer: y = x @ W.T, dx = dy @ W
    but for the first layer, dW = dy.T @ x; float32, outputs preallocated), best of
    ``repeats``: the ceiling a step made of these GEMMs and nothing else would reach at
    the current thread count. ``matmul(a, b, out=c)`` and ``wrap`` (NumPy array -> the
    framework's array) time another framework's GEMMs on the same arrays (the torch
    reference passes torch.matmul and torch.from_numpy)."""
    rng = np.random.default_rng(0)
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        arrays = (rng.standard_normal((batch, n_in), dtype=np.float32),     # x
                  rng.standard_normal((n_out, n_in), dtype=np.float32),     # W
                  rng.standard_normal((batch, n_out), dtype=np.float32),    # dy
                  np.empty((batch, n_out), np.float32),                     # y
                  np.empty((batch, n_in), np.float32),                      # dx
                  np.empty((n_out, n_in), np.float32))                      # dW
        layers.append(tuple(wrap(a) for a in arrays))

    def gemms():
        for i, (x, W, dy, y, dx, dW) in enumerate(layers):
            matmul(x, W.T, out=y)
            if i > 0:                   # as in the step: no dx for the data
                matmul(dy, W, out=dx)
            matmul(dy.T, x, out=dW)

    gemms()
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(10):
            gemms()
        best = min(best, (time.perf_counter() - t0) / 10)
    return mlp_step_flops(sizes, batch) / best / 1e9


def mlp_step_flops(sizes: Sequence[int], batch: int) -> float:
    """FLOPs of one MLP training step as both frameworks run it: per layer the forward GEMM
    and dW (2*N*in*out each), and dx for every layer but the first (its input is the data,
    which needs no gradient: torch skips it, and so does ours after set_input_grad(False))."""
    layers = list(zip(sizes[:-1], sizes[1:]))
    return float(sum((2 if i == 0 else 3) * 2 * batch * n_in * n_out
                     for i, (n_in, n_out) in enumerate(layers)))


# --------------------------------------------------------------------------- the two frameworks
def _data(name: str, batch: int):
    """The same random batch for both frameworks: x (batch, *shape) float32, y (batch,) int64."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + INPUT_SHAPES[name], dtype=np.float32)
    y = rng.integers(0, N_CLASSES, batch).astype(np.int64)
    return x, y


def build_ours(name: str):
    """Our model ``name`` in float32, with a fixed seed."""
    from mlcvlab import models
    if name == "mlp":
        return models.mlp(MLP_SIZES, flatten=False, rng=0)
    if name == "lenet5":
        return models.lenet5(rng=0)
    if name in ("resnet20", "resnet44"):
        return models.resnet_cifar(int(name[6:]), rng=0)
    if name == "minigooglenet":
        return models.minigooglenet(rng=0)
    raise ValueError(f"mlcvlab bench: unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def ours_steps(name: str, batch: int, device: str = "cpu"):
    """(train_step, eval_step) closures for our model on the benchmark batch, on ``device``
    (on "cuda" the batch is copied there once; a train step ends by reading its loss, an
    eval step by waiting for the device, so both time finished work)."""
    from mlcvlab import nn, optim
    model = build_ours(name).set_input_grad(False)     # as torch: x does not require grad
    model.to(device)
    x, y = _data(name, batch)
    sync = lambda: None                                 # noqa: E731
    if device == "cuda":
        from mlcvlab.gpu.device import array_module, to_device
        xp = array_module()
        x = to_device(x)
        if xp is not np:
            sync = xp.cuda.get_current_stream().synchronize
    loss = nn.CrossEntropyLoss().to(device)
    opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

    def train_step():
        model.train()
        model.zero_grad()
        loss(model.forward(x), y)
        model.backward(loss.backward())
        opt.step()
        sync()

    def eval_step():
        model.eval()
        model.forward(x)
        sync()

    return train_step, eval_step


def ours_layer_times(name: str, batch: int):
    """A closure running one training step of our model ``name`` layer by layer (the top-level
    modules, as ``Sequential.forward`` / ``backward`` do) and returning
    ``(forward_seconds, backward_seconds)``, one entry per top-level module (a backward entry
    is 0 for the layers before the first one with parameters: they need no gradient)."""
    from mlcvlab import nn, optim
    model = build_ours(name).set_input_grad(False)
    x, y = _data(name, batch)
    loss = nn.CrossEntropyLoss()
    opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    layers = list(model)

    def step():
        model.train()
        model.zero_grad()
        fwd, bwd = [0.0] * len(layers), [0.0] * len(layers)
        h = x
        for i, m in enumerate(layers):
            t = time.perf_counter()
            h = m.forward(h)
            fwd[i] = time.perf_counter() - t
        loss(h, y)
        dy = loss.backward()
        for i in reversed(range(len(layers))):
            t = time.perf_counter()
            dy = layers[i].backward(dy)
            bwd[i] = time.perf_counter() - t
            if dy is None:
                break
        opt.step()
        return fwd, bwd

    return step


def layer_labels(name: str) -> List[str]:
    """'<index> <type> -> <output shape>' for each top-level module of our model ``name``."""
    model = build_ours(name)
    x, _ = _data(name, 2)
    labels = []
    for i, m in enumerate(model):
        x = m.forward(x)
        kind = type(m).__name__
        if kind == "Sequential":
            kind = "block"
        labels.append(f"{i} {kind} -> {tuple(x.shape[1:])}")
    return labels


def per_layer(name: str, batch: int, repeats: int, ref) -> dict:
    """Per-layer forward and backward time of one training step, ours and (if available)
    torch's, alternating ours / torch ``repeats`` times after one untimed step each; medians
    and the ratio torch / ours per layer (> 1: ours is faster), so each remaining gap is
    named. Hook overhead is included on torch's side (a few microseconds per layer)."""
    ours = ours_layer_times(name, batch)
    theirs = ref.layer_times(name, batch) if ref is not None else None
    ours()
    if theirs is not None:
        theirs()
    samples = {"ours": [], "torch": []}
    for _ in range(repeats):
        samples["ours"].append(ours())
        if theirs is not None:
            samples["torch"].append(theirs())
    labels = layer_labels(name)
    rows = []
    for i, label in enumerate(labels):
        row = {"layer": label}
        for who in ("ours", "torch"):
            if samples[who]:
                if len(samples[who][0][0]) != len(labels):
                    raise RuntimeError(f"bench --per-layer: torch's {name} has "
                                       f"{len(samples[who][0][0])} top-level modules, ours "
                                       f"{len(labels)}; the twins must line up")
        rows.append(_medians_into(row, samples, lambda sample, k: sample[k][i]))
    return {"batch_size": batch, "repeats": repeats, "layers": rows}


def _medians_into(row: dict, samples: Dict[str, list], pick: Callable) -> dict:
    """Into ``row``: each framework's median forward and backward time in ms
    (``pick(sample, 0)`` and ``pick(sample, 1)`` of its samples, in seconds) and, with
    torch's, the ratios torch / ours (> 1: ours is faster)."""
    for who, got in samples.items():
        if got:
            row[f"{who}_forward_ms"] = 1e3 * float(np.median([pick(t, 0) for t in got]))
            row[f"{who}_backward_ms"] = 1e3 * float(np.median([pick(t, 1) for t in got]))
    if samples.get("torch"):
        for phase in ("forward", "backward"):
            o, t = row[f"ours_{phase}_ms"], row[f"torch_{phase}_ms"]
            row[f"{phase}_ratio"] = t / o if o > 0 else None
    return row


def format_per_layer(name: str, result: dict) -> str:
    """The per-layer result as a Markdown table."""
    rows = result["layers"]
    has_torch = "torch_forward_ms" in rows[0]
    head = ["layer", "ours fwd ms", "torch fwd ms", "fwd ratio", "ours bwd ms",
            "torch bwd ms", "bwd ratio"] if has_torch else ["layer", "ours fwd ms",
                                                             "ours bwd ms"]
    lines = [f"Per layer, {name}, batch {result['batch_size']} (medians of "
             f"{result['repeats']}; ratio = torch / ours, > 1: ours is faster):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["layer"], _fmt(r["ours_forward_ms"], ".2f")]
        if has_torch:
            cells += [_fmt(r["torch_forward_ms"], ".2f"), _fmt(r["forward_ratio"], ".2f"),
                      _fmt(r["ours_backward_ms"], ".2f"), _fmt(r["torch_backward_ms"], ".2f"),
                      _fmt(r["backward_ratio"], ".2f")]
        else:
            cells += [_fmt(r["ours_backward_ms"], ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- per convolution
CONV_CALLS = 2        # calls per timed sample of one convolution (after the untimed one)


def conv_specs(name: str) -> List[dict]:
    """The distinct convolutions of our model ``name``, in the order of their first use: for
    each, the input shape of one sample, the layer's settings (out_channels, kernel, stride,
    padding, dilation, groups, bias), whether its backward computes dx (``input_grad``: not
    for a first layer on the data) and how many of the model's layers share it (``layers``).
    Found by one forward of a batch of 2 in evaluation mode with every Conv2d's forward
    wrapped on the instance (as ``mlcvlab.analysis.summarize`` does)."""
    from mlcvlab.nn.modules import Conv2d
    model = build_ours(name).set_input_grad(False)
    x, _ = _data(name, 2)
    specs: Dict[tuple, dict] = {}

    def wrap(m):
        original = m.forward

        def forward(inp):
            spec = {"in_shape": tuple(int(n) for n in inp.shape[1:]),
                    "out_channels": m.out_channels, "kernel": tuple(m.kernel_size),
                    "stride": tuple(m.stride), "padding": m.padding,
                    "dilation": tuple(m.dilation), "groups": m.groups,
                    "bias": m.bias is not None, "input_grad": bool(m.input_grad)}
            key = tuple(map(str, spec.values()))
            specs.setdefault(key, dict(spec, layers=0))["layers"] += 1
            return original(inp)
        return forward

    convs = [m for m in model.modules() if isinstance(m, Conv2d)]
    for m in convs:
        object.__setattr__(m, "forward", wrap(m))
    model.eval()
    model(x)
    return list(specs.values())


def conv_data(spec: dict, batch: int):
    """(x, W, b or None, dy): float32 random data of one convolution of :func:`conv_specs`
    at this batch, the same for both frameworks."""
    from mlcvlab.nn import conv
    rng = np.random.default_rng(0)
    C, H, W_ = spec["in_shape"]
    kh, kw = spec["kernel"]
    F = spec["out_channels"]
    x = rng.standard_normal((batch, C, H, W_), dtype=np.float32)
    W = (rng.standard_normal((F, C // spec["groups"], kh, kw)) * 0.1).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32) if spec["bias"] else None
    y, _ = conv.conv2d(x[:1], W, b, spec["stride"], spec["padding"], spec["dilation"],
                       spec["groups"])
    dy = rng.standard_normal((batch,) + y.shape[1:], dtype=np.float32)
    return x, W, b, dy


def ours_conv_times(spec: dict, batch: int):
    """A closure timing one convolution of :func:`conv_specs` alone: ``conv.conv2d``, then
    ``conv.conv2d_grad`` (dW, db, and dx if ``spec["input_grad"]``); returns
    ``(forward_seconds, backward_seconds)``."""
    from mlcvlab.nn import conv
    x, W, b, dy = conv_data(spec, batch)
    args = (spec["stride"], spec["padding"], spec["dilation"], spec["groups"])

    def step():
        t0 = time.perf_counter()
        _, cache = conv.conv2d(x, W, b, *args)
        t1 = time.perf_counter()
        conv.conv2d_grad(dy, cache, spec["input_grad"])
        return t1 - t0, time.perf_counter() - t1

    return step


def conv_label(spec: dict) -> str:
    """'C->F kh x kw, stride, padding, on H x W', e.g. '16->32 3x3 s2 p1 on 32x32' (a pair
    when its two values differ; groups g and dilation d when not 1)."""
    def pair(v) -> str:
        if isinstance(v, str):
            return v
        v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
        return str(v[0]) if v[0] == v[1] else f"{v[0]},{v[1]}"

    C, H, W = spec["in_shape"]
    kh, kw = spec["kernel"]
    label = (f"{C}->{spec['out_channels']} {kh}x{kw} s{pair(spec['stride'])} "
             f"p{pair(spec['padding'])}")
    if spec["groups"] != 1:
        label += f" g{spec['groups']}"
    if tuple(spec["dilation"]) != (1, 1):
        label += f" d{pair(spec['dilation'])}"
    return label + f" on {H}x{W}"


def per_conv(name: str, batch: int, repeats: int, ref,
             settle_seconds: Optional[float] = None) -> dict:
    """Each distinct convolution of model ``name`` timed alone, forward and backward, ours
    and (if available) torch's, so that each remaining gap is named with the algorithm our
    rule runs in each direction (``conv.algorithm``).

    ``repeats`` samples each, interleaved; each sample after ``settle_seconds`` (default
    ``SETTLE_SECONDS``) of sleep and one untimed call, as in :func:`time_interleaved` (the
    other framework's spinning threads go idle, our own wake up), the mean of
    ``CONV_CALLS`` calls. Reports medians and the ratio torch / ours (> 1: ours is faster).
    Each call has the whole batch and the bench's threads: ours splits the batch per call,
    where in a model step it is split once for the whole pass (``nn.threadsplit``), so a
    model's step can beat the sum of its convolutions' times here."""
    from mlcvlab.nn import conv
    settle_seconds = SETTLE_SECONDS if settle_seconds is None else settle_seconds
    rows = []
    for spec in conv_specs(name):
        fns = {"ours": ours_conv_times(spec, batch)}
        if ref is not None and hasattr(ref, "conv_times"):
            fns["torch"] = ref.conv_times(spec, batch)
        samples: Dict[str, list] = {who: [] for who in fns}
        for _ in range(repeats):
            for who, fn in fns.items():
                time.sleep(settle_seconds)
                fn()
                samples[who].append(np.mean([fn() for _ in range(CONV_CALLS)], axis=0))
        x_shape = (batch,) + spec["in_shape"]
        w_shape = (spec["out_channels"], spec["in_shape"][0] // spec["groups"]) + spec["kernel"]
        fwd_alg, bwd_alg = conv.algorithm(x_shape, w_shape, spec["stride"], spec["padding"],
                                          spec["dilation"], spec["groups"])
        row = {"conv": conv_label(spec), "layers": spec["layers"],
               "input_grad": spec["input_grad"],
               "forward_algorithm": fwd_alg, "backward_algorithm": bwd_alg}
        rows.append(_medians_into(row, samples, lambda sample, k: sample[k]))
    return {"batch_size": batch, "repeats": repeats, "convolutions": rows}


def format_per_conv(name: str, result: dict) -> str:
    """The per-convolution result as a Markdown table."""
    rows = result["convolutions"]
    has_torch = bool(rows) and "torch_forward_ms" in rows[0]
    head = ["convolution", "layers", "ours: forward / backward", "ours fwd ms"]
    head += ["torch fwd ms", "fwd ratio"] if has_torch else []
    head += ["ours bwd ms"] + (["torch bwd ms", "bwd ratio"] if has_torch else [])
    lines = [f"Per convolution, {name}, batch {result['batch_size']} (each alone, medians of "
             f"{result['repeats']}; backward: dW, db and dx, no dx for a layer on the data"
             + ("; ratio = torch / ours, > 1: ours is faster" if has_torch else "") + "):", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["conv"] + ("" if r["input_grad"] else " (no dx)"), str(r["layers"]),
                 f"{r['forward_algorithm']} / {r['backward_algorithm']}",
                 f"{r['ours_forward_ms']:.2f}"]
        if has_torch:
            cells += [f"{r['torch_forward_ms']:.2f}", _fmt(r.get("forward_ratio"), ".2f")]
        cells.append(f"{r['ours_backward_ms']:.2f}")
        if has_torch:
            cells += [f"{r['torch_backward_ms']:.2f}", _fmt(r.get("backward_ratio"), ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- timing
def _steps_for(fn: Callable[[], None], target_seconds: float, max_steps: int) -> int:
    """How many calls of fn make about ``target_seconds`` (after one timed call)."""
    t0 = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t0, 1e-6)
    return int(min(max_steps, max(1, round(target_seconds / dt))))


# Pause before every timed sample. After a call, OpenBLAS's worker threads keep spinning
# for ~0.1 s (2^28 cycles) and OpenMP's for a while too; without the pause they ran into the
# next sample of the *other* framework (torch's MLP step measured 17-18 ms right after ours,
# 12.8 ms after half a second of quiet).
SETTLE_SECONDS = 0.3


def time_interleaved(fns: Dict[str, Callable[[], None]], repeats: int, target_seconds: float,
                     max_steps: int = 200, warmup: int = 2,
                     settle_seconds: float = SETTLE_SECONDS) -> Dict[str, List[float]]:
    """Seconds per call of every fn, measured round-robin: ``repeats`` samples each.

    Each sample is the mean over ``steps`` calls (about ``target_seconds`` long);
    alternating the frameworks inside every repeat shares out background load.
    Every sample starts after ``settle_seconds`` of sleep (the other framework's
    spinning threads go idle) and one untimed call (its own threads wake up).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    steps = {k: _steps_for(fn, target_seconds, max_steps) for k, fn in fns.items()}
    samples: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            time.sleep(settle_seconds)
            fn()
            t0 = time.perf_counter()
            for _ in range(steps[key]):
                fn()
            samples[key].append((time.perf_counter() - t0) / steps[key])
    return samples


# --------------------------------------------------------------------------- memory
def _status_bytes(field: str) -> int:
    """A memory line of /proc/self/status (VmRSS: current RSS, VmHWM: peak RSS), in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"mlcvlab bench: no {field} in /proc/self/status (Linux only)")


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _memory_child(framework: str, name: str, batch: int, threads: int,
                  reference: str = "") -> dict:
    """Runs in a fresh subprocess: peak memory of 3 training steps of one framework/model."""
    from threadpoolctl import threadpool_limits
    from mlcvlab import backend
    backend.keep_freed_memory()                     # as in the parent (run): both frameworks
    with threadpool_limits(threads):
        # one step on a batch of 2 first loads what a first step loads once (numba's compiled
        # kernels, BLAS and torch thread pools) so that it is not counted as step memory
        if framework == "torch":
            ref = load_reference(Path(reference))
            ref.set_threads(threads)
            ref.steps(name, 2)[0]()
            train, _ = ref.steps(name, batch)
        else:
            ours_steps(name, 2)[0]()
            train, _ = ours_steps(name, batch)
        _reset_peak_rss()
        base = _status_bytes("VmRSS")
        for _ in range(3):
            train()
        out = {"rss_mb": (_status_bytes("VmHWM") - base) / 2**20}
        if framework == "ours":
            import tracemalloc
            tracemalloc.start()
            train()
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            out["tracemalloc_mb"] = peak / 2**20
    return out


def measure_memory(framework: str, name: str, batch: int, threads: int,
                   reference: Optional[Path] = None) -> Optional[dict]:
    """Peak memory (MiB) of a training step of ``framework`` ("ours"/"torch"), in a subprocess.

    RSS is used for both frameworks because tracemalloc cannot see torch's allocator.
    Returns None when the subprocess fails (e.g. torch missing).
    """
    code = ("import json, sys; from mlcvlab.bench import _memory_child; "
            "print(json.dumps(_memory_child(*sys.argv[1:3], int(sys.argv[3]), int(sys.argv[4]), "
            "sys.argv[5])))")
    proc = subprocess.run([sys.executable, "-c", code, framework, name, str(batch), str(threads),
                           str(reference or "")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the run
def _summary(ours: List[float], theirs: Optional[List[float]], batch: int) -> dict:
    """Samples/s (median) of both frameworks and the ratio ours / torch.

    ``ratio_range`` is the lowest and highest ratio of the interleaved sample pairs (ours
    and torch's i-th samples, taken one right after the other): how far the machine's
    noise moves the ratio in this run. The ratio of the medians always lies within it.
    """
    row = {"ours_samples_per_s": batch / float(np.median(ours)), "ours_seconds": ours}
    if theirs is not None:
        row["torch_samples_per_s"] = batch / float(np.median(theirs))
        row["torch_seconds"] = theirs
        row["ratio"] = row["ours_samples_per_s"] / row["torch_samples_per_s"]
        pairs = [t / o for o, t in zip(ours, theirs)]
        row["ratio_range"] = [min(pairs), max(pairs)]
    return row


def _baseline_steps(name: str, batch: int, ref, device: str):
    """The steps ours are compared with: torch's on the same device; on "cuda" without a CUDA
    torch, our own CPU path (so the ratio is then device / CPU); None without torch on the
    CPU."""
    if device == "cuda" and (ref is None or not ref.cuda_available()):
        return ours_steps(name, batch, "cpu")
    if ref is None:
        return None
    return ref.steps(name, batch, device) if device == "cuda" else ref.steps(name, batch)


def bench_model(name: str, batch: int, repeats: int, target_seconds: float, ref,
                settle_seconds: float = SETTLE_SECONDS, device: str = "cpu") -> dict:
    """Train and eval throughput of one model, ours and (if available) the baseline's
    (:func:`_baseline_steps`), interleaved."""
    our_train, our_eval = ours_steps(name, batch, device)
    fns = {"ours_train": our_train, "ours_eval": our_eval}
    base = _baseline_steps(name, batch, ref, device)
    if base is not None:
        t_train, t_eval = base
        fns = {"ours_train": our_train, "torch_train": t_train,
               "ours_eval": our_eval, "torch_eval": t_eval}
    s = time_interleaved(fns, repeats, target_seconds, settle_seconds=settle_seconds)
    return {"train": _summary(s["ours_train"], s.get("torch_train"), batch),
            "eval": _summary(s["ours_eval"], s.get("torch_eval"), batch)}


def run(models: Sequence[str] = DEFAULT_MODELS, batch_size: int = 128, threads: int = 2,
        repeats: int = 5, quick: bool = False, memory: bool = True, use_torch: bool = True,
        reference: Optional[str] = None, layers: bool = False, device: str = "cpu",
        conv_algorithm: str = "auto", convs: bool = False) -> dict:
    """Run the whole benchmark and return the result dictionary (what ``--out`` writes).

    Both frameworks run in this process under ``backend.keep_freed_memory()``, which both
    use (torch allocates CPU tensors with glibc's malloc too). ``conv_algorithm``: our 3x3
    convolutions' choice during the timings (``mlcvlab.nn.conv.set_algorithm``; the memory
    subprocesses run the default). ``layers``: also :func:`per_layer`; ``convs``: also
    :func:`per_conv` (models with convolutions)."""
    from mlcvlab.nn import conv
    previous = conv.set_algorithm(conv_algorithm)      # rejects an unknown name first
    try:
        return _run(models, batch_size, threads, repeats, quick, memory, use_torch, reference,
                    layers, device, conv_algorithm, convs)
    finally:
        conv.set_algorithm(previous)


def _run(models, batch_size, threads, repeats, quick, memory, use_torch, reference, layers,
         device, conv_algorithm, convs=False) -> dict:
    from threadpoolctl import threadpool_limits
    from mlcvlab import backend
    kept = backend.keep_freed_memory()
    for m in models:
        if m not in MODEL_NAMES:
            raise ValueError(f"mlcvlab bench: unknown model {m!r}; "
                             f"choose from {', '.join(MODEL_NAMES)}")
    if batch_size < 2 or threads < 1 or repeats < 1:
        raise ValueError(f"mlcvlab bench: expected batch_size >= 2, threads >= 1, repeats >= 1; "
                         f"got {batch_size}, {threads}, {repeats}")
    ref_path = find_reference(reference) if use_torch else None
    ref = load_reference(ref_path)
    if ref is not None:
        ref.set_threads(threads)
    if device == "cuda":
        from mlcvlab.gpu.device import array_module
        array_module()                      # no GPU: the clear error, before any timing
        if layers or convs or memory:
            raise ValueError("mlcvlab bench --device cuda: --per-layer, --per-conv and the "
                             "memory measurement are CPU-only; add --no-memory, drop "
                             "--per-layer and --per-conv")
    baseline = ("torch CUDA" if device == "cuda" and ref is not None and ref.cuda_available()
                else "ours on the CPU" if device == "cuda"
                else "torch CPU" if ref is not None else None)
    target = 0.05 if quick else 0.4
    result = {
        "machine": {"cpu": cpu_model(), "simd": cpu_simd(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "blas": blas_kernels(), "numba_vector_bytes": _vector_bytes(),
                    "torch": getattr(ref, "version", None)},
        "config": {"models": list(models), "batch_size": batch_size, "threads": threads,
                   "repeats": repeats, "quick": quick, "dtype": "float32",
                   "optimizer": f"SGD(lr={LR}, momentum={MOMENTUM})",
                   "malloc_keeps_freed_memory": kept, "device": device,
                   "baseline": baseline, "conv_algorithm": conv_algorithm},
        "models": {},
    }
    with threadpool_limits(threads):
        size = 512 if quick else 2048
        warmup = 0.0 if quick else 0.5
        peaks = [sgemm_gflops(size, 3 if quick else 5, warmup)]
        result["sgemm_size"] = size
        if "mlp" in models:
            result["mlp_gemms_gflops"] = mlp_gemm_gflops(MLP_SIZES, batch_size, 3 if quick else 5)
            if ref is not None and hasattr(ref, "mlp_gemm_gflops"):
                result["torch_mlp_gemms_gflops"] = ref.mlp_gemm_gflops(
                    MLP_SIZES, batch_size, 3 if quick else 5)
        for name in models:
            result["models"][name] = bench_model(name, batch_size, repeats, target, ref,
                                                 settle_seconds=0.0 if quick else SETTLE_SECONDS,
                                                 device=device)
            if layers:
                result["models"][name]["per_layer"] = per_layer(name, batch_size, repeats, ref)
            if convs:                               # (the MLP has none: no table)
                timed = per_conv(name, batch_size, repeats, ref,
                                 settle_seconds=0.0 if quick else SETTLE_SECONDS)
                if timed["convolutions"]:
                    result["models"][name]["per_conv"] = timed
        # The peak is measured again after the models: the machine's load drifts during a
        # run, and the fraction of the peak should be taken of the best it showed.
        peaks.append(sgemm_gflops(size, 3 if quick else 5, warmup))
        result["sgemm_gflops_samples"] = peaks
        result["sgemm_gflops"] = max(peaks)
    if "mlp" in result["models"]:
        sps = result["models"]["mlp"]["train"]["ours_samples_per_s"]
        gflops = mlp_step_flops(MLP_SIZES, batch_size) / (batch_size / sps) / 1e9
        result["mlp_train_gflops"] = gflops
        result["mlp_fraction_of_sgemm_peak"] = gflops / result["sgemm_gflops"]
        result["mlp_gemms_fraction_of_sgemm_peak"] = (result["mlp_gemms_gflops"]
                                                      / result["sgemm_gflops"])
        torch_sps = result["models"]["mlp"]["train"].get("torch_samples_per_s")
        if torch_sps is not None and "torch_mlp_gemms_gflops" in result:
            torch_gflops = mlp_step_flops(MLP_SIZES, batch_size) / (batch_size / torch_sps) / 1e9
            result["torch_mlp_fraction_of_sgemm_peak"] = torch_gflops / result["sgemm_gflops"]
            result["torch_mlp_gemms_fraction_of_sgemm_peak"] = (
                result["torch_mlp_gemms_gflops"] / result["sgemm_gflops"])
    for name in result["models"]:
        if name == "mlp" or "train" not in result["models"][name] or "sgemm_gflops" not in result:
            continue
        train = result["models"][name]["train"]
        flops = conv_train_flops(name)
        for who in ("ours", "torch"):
            if f"{who}_samples_per_s" in train:
                gflops = flops * train[f"{who}_samples_per_s"] / 1e9
                train[f"{who}_gflops"] = gflops
                train[f"{who}_fraction_of_sgemm_peak"] = gflops / result["sgemm_gflops"]
    if memory:
        result["memory_method"] = MEMORY_METHOD
        for name in models:
            mem = {"ours": measure_memory("ours", name, batch_size, threads)}
            if ref is not None:
                mem["torch"] = measure_memory("torch", name, batch_size, threads, ref_path)
                if mem["ours"] and mem["torch"] and mem["torch"]["rss_mb"] > 0:
                    mem["ratio"] = mem["ours"]["rss_mb"] / mem["torch"]["rss_mb"]
            result["models"][name]["memory"] = mem
    return result


# --------------------------------------------------------------------------- output
def _fmt(v, spec=".0f") -> str:
    return "-" if v is None else format(v, spec)


def format_table(result: dict) -> str:
    """The result as a Markdown table (one row per model and phase) plus the GEMM line."""
    m = result["machine"]
    device = result["config"].get("device", "cpu")
    base = result["config"].get("baseline") or "torch"
    lines = [f"Machine: {m['cpu']}" + (f" ({m['simd']})" if m.get("simd") else "")
             + (f"; NumPy's BLAS {m['blas']}, our kernels' vectors {m['numba_vector_bytes']} "
                "bytes" if m.get("blas") else "")
             + f", {m['cores']} cores; {result['config']['threads']} threads"
             + (f"; our convolutions: set_algorithm({result['config']['conv_algorithm']!r})"
                if result["config"].get("conv_algorithm", "auto") != "auto" else "")
             + (f"; ours on the GPU, against {base}" if device == "cuda" else ""), "",
             f"| model | phase | ours (samples/s) | {base} (samples/s) | ours / {base} "
             "| range over the sample pairs |",
             "|---|---|---:|---:|---:|---:|"]
    for name, r in result["models"].items():
        for phase in ("train", "eval"):
            row = r[phase]
            lo_hi = row.get("ratio_range")
            spread = f"{lo_hi[0]:.2f}-{lo_hi[1]:.2f}" if lo_hi else "-"
            lines.append(f"| {name} | {phase} | {_fmt(row['ours_samples_per_s'])} | "
                         f"{_fmt(row.get('torch_samples_per_s'))} | "
                         f"{_fmt(row.get('ratio'), '.2f')} | {spread} |")
    mem_rows = [(n, r["memory"]) for n, r in result["models"].items() if "memory" in r]
    if mem_rows:
        lines += ["", "| model | peak step memory ours (MiB RSS) | ours (MiB tracemalloc) | "
                      "torch (MiB RSS) | ours / torch |", "|---|---:|---:|---:|---:|"]
        for name, m in mem_rows:
            ours, theirs = m.get("ours") or {}, m.get("torch") or {}
            lines.append(f"| {name} | {_fmt(ours.get('rss_mb'), '.1f')} | "
                         f"{_fmt(ours.get('tracemalloc_mb'), '.1f')} | "
                         f"{_fmt(theirs.get('rss_mb'), '.1f')} | {_fmt(m.get('ratio'), '.2f')} |")
    lines += ["", f"SGEMM peak ({result['sgemm_size']}^2 float32 np.matmul, "
                  f"{result['config']['threads']} threads, best of before and after the "
                  f"models: {' and '.join(f'{g:.1f}' for g in result['sgemm_gflops_samples'])})"
                  f": {result['sgemm_gflops']:.1f} GFLOP/s"]
    if "mlp_train_gflops" in result:
        lines.append(f"MLP training step: {result['mlp_train_gflops']:.1f} GFLOP/s = "
                     f"{100 * result['mlp_fraction_of_sgemm_peak']:.0f}% of the SGEMM peak "
                     f"(its GEMMs alone: {result['mlp_gemms_gflops']:.1f} GFLOP/s = "
                     f"{100 * result['mlp_gemms_fraction_of_sgemm_peak']:.0f}%)")
    for name, r in result["models"].items():
        train = r.get("train", {})
        if "ours_fraction_of_sgemm_peak" in train:
            theirs = train.get("torch_fraction_of_sgemm_peak")
            lines.append(f"{name} training step, counted as direct convolution: "
                         f"{train['ours_gflops']:.1f} GFLOP/s = "
                         f"{100 * train['ours_fraction_of_sgemm_peak']:.0f}% of the SGEMM peak"
                         + (f" (torch {100 * theirs:.0f}%)" if theirs is not None else ""))
    if "torch_mlp_fraction_of_sgemm_peak" in result:
        lines.append(f"PyTorch's MLP training step: "
                     f"{100 * result['torch_mlp_fraction_of_sgemm_peak']:.0f}% of the same peak "
                     f"(its GEMMs alone: {result['torch_mlp_gemms_gflops']:.1f} GFLOP/s = "
                     f"{100 * result['torch_mlp_gemms_fraction_of_sgemm_peak']:.0f}%)")
    if result["machine"]["torch"] is None and device == "cpu":
        lines.append("(no PyTorch reference: torch not installed or benchmarks/torch_reference.py "
                     "not found; ours alone)")
    return "\n".join(lines)


def _main(args) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if models == ["all"]:
        models = list(MODEL_NAMES)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    result = run(models, args.batch_size, args.threads, repeats, args.quick,
                 memory=not args.no_memory, use_torch=not args.no_torch, reference=args.reference,
                 layers=args.per_layer, device=args.device,
                 conv_algorithm=args.conv_algorithm, convs=args.per_conv)
    print(format_table(result))
    for name, r in result["models"].items():
        if "per_layer" in r:
            print()
            print(format_per_layer(name, r["per_layer"]))
        if "per_conv" in r:
            print()
            print(format_per_conv(name, r["per_conv"]))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"wrote {args.out}")
    return 0


def register(subparsers) -> None:
    """Add the ``bench`` sub-command."""
    from mlcvlab.nn import conv
    p = subparsers.add_parser("bench", help="training/eval throughput and memory vs PyTorch "
                                            "(CPU; --device cuda: GPU)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma-separated subset of {','.join(MODEL_NAMES)}, or 'all' "
                        f"(default: {','.join(DEFAULT_MODELS)})")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="BLAS / torch threads for both frameworks")
    p.add_argument("--repeats", type=int, default=None, help="timed samples per measurement "
                   "(median reported; default 5, 1 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="short timings and a small GEMM (for tests)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--per-layer", action="store_true",
                   help="also time each top-level layer's forward and backward, ours vs torch")
    p.add_argument("--per-conv", action="store_true",
                   help="also time each distinct convolution alone, forward and backward, ours "
                        "(naming the algorithm our rule picks) vs torch")
    p.add_argument("--no-torch", action="store_true", help="time ours alone even if torch exists")
    p.add_argument("--reference", default=None, metavar="FILE",
                   help="the PyTorch reference module (default benchmarks/torch_reference.py)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cuda: our models on the GPU (model.to('cuda')), against torch on the "
                        "same GPU when a CUDA torch is importable, else against our CPU path "
                        "(needs --no-memory)")
    p.add_argument("--conv-algorithm", default="auto",
                   choices=conv.ALGORITHMS,
                   help="our 3x3 convolutions (mlcvlab.nn.conv.set_algorithm): auto (default: "
                        "im2col, Winograd F(2x2) or the direct kernel), fast (also F(4x4), "
                        "~10x the float32 rounding), or one forced")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.set_defaults(func=_main)


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m mlcvlab.bench")
    register(_parser.add_subparsers(dest="command"))
    sys.exit(_main(_parser.parse_args(["bench"] + sys.argv[1:])))
