"""The PyTorch twins of the benchmarked models, for ``mlcvlab bench`` (benchmark only:
PyTorch never enters ``src/mlcvlab``).

``steps(name, batch)`` gives (train_step, eval_step) closures on the same random
batch, optimizer and learning rate as ``mlcvlab.bench.ours_steps``; ResNet-20
uses option-A (zero-padding) shortcuts like ``mlcvlab.models.resnet_cifar``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn as tnn

from mlcvlab import bench
from mlcvlab.bench import LR, MLP_SIZES, MOMENTUM, N_CLASSES, _data

version = torch.__version__


def set_threads(n: int) -> None:
    torch.set_num_threads(n)


def mlp_gemm_gflops(sizes, batch: int, repeats: int = 5) -> float:
    """The MLP step's GEMMs alone, as ``mlcvlab.bench.mlp_gemm_gflops``, with torch.matmul."""
    return bench.mlp_gemm_gflops(sizes, batch, repeats, matmul=torch.matmul,
                                 wrap=torch.from_numpy)


class _Block(tnn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.c1 = tnn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.b1 = tnn.BatchNorm2d(c_out)
        self.c2 = tnn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.b2 = tnn.BatchNorm2d(c_out)
        self.pad = (c_out - c_in) // 2 if stride != 1 or c_in != c_out else None

    def forward(self, x):
        out = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        if self.pad is not None:
            x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + x)


def _conv_bn_relu(c_in: int, c_out: int, k: int, stride: int = 1, padding: int = 0):
    return tnn.Sequential(tnn.Conv2d(c_in, c_out, k, stride, padding, bias=False),
                          tnn.BatchNorm2d(c_out), tnn.ReLU())


class _GlobalAvgPool(tnn.Module):
    """(N, C, H, W) -> (N, C), as ``mlcvlab.nn.GlobalAvgPool2d`` (one layer, like ours, so
    the per-layer tables line up)."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


class _Concat(tnn.Module):
    """Run the branches on one input; concatenate their outputs along the channels."""

    def __init__(self, *branches: tnn.Module):
        super().__init__()
        self.branches = tnn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], dim=1)


def minigooglenet() -> tnn.Module:
    """The twin of ``mlcvlab.models.minigooglenet()`` (no dropout)."""
    inc = lambda c, k1, k3: _Concat(_conv_bn_relu(c, k1, 1),  # noqa: E731
                                    _conv_bn_relu(c, k3, 3, padding=1))
    down = lambda c, k: _Concat(_conv_bn_relu(c, k, 3, stride=2),  # noqa: E731
                                tnn.MaxPool2d(3, stride=2))
    return tnn.Sequential(
        *_conv_bn_relu(3, 96, 3, padding=1), inc(96, 32, 32), inc(64, 32, 48), down(80, 80),
        inc(160, 112, 48), inc(160, 96, 64), inc(160, 80, 80), inc(160, 48, 96), down(144, 96),
        inc(240, 176, 160), inc(336, 176, 160), _GlobalAvgPool(), tnn.Linear(336, N_CLASSES))


def build(name: str) -> tnn.Module:
    """The PyTorch twin of our model ``name``."""
    if name == "mlp":
        layers = []
        for i, (a, b) in enumerate(zip(MLP_SIZES[:-1], MLP_SIZES[1:])):
            layers += [tnn.Linear(a, b)] + ([tnn.ReLU()] if i < len(MLP_SIZES) - 2 else [])
        return tnn.Sequential(*layers)
    if name == "lenet5":
        return tnn.Sequential(
            tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
            tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(),
            tnn.Linear(84, N_CLASSES))
    if name == "minigooglenet":
        return minigooglenet()
    if name not in ("resnet20", "resnet44"):
        raise ValueError(f"torch_reference: unknown model {name!r}")
    n = (int(name[6:]) - 2) // 6
    layers, c_in = [tnn.Conv2d(3, 16, 3, 1, 1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU()], 16
    for i, width in enumerate((16, 32, 64)):
        for j in range(n):
            layers.append(_Block(c_in, width, 2 if i > 0 and j == 0 else 1))
            c_in = width
    layers += [_GlobalAvgPool(), tnn.Linear(64, N_CLASSES)]
    return tnn.Sequential(*layers)


def cuda_available() -> bool:
    """True when this torch build sees a CUDA GPU (what ``mlcvlab bench --device cuda``
    compares against)."""
    return torch.cuda.is_available()


def steps(name: str, batch: int, device: str = "cpu"):
    """(train_step, eval_step) for the torch twin on the benchmark batch, on ``device``.
    On "cuda" each step ends with ``torch.cuda.synchronize()``, as ours ends by reading its
    loss (train) or waiting for its stream (eval): both time finished device work."""
    model = build(name).to(device)
    x, y = _data(name, batch)
    x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    loss = tnn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def train_step():
        model.train()
        # torch's default (set_to_none=True): the next backward writes the gradients
        # instead of adding to zeros, as ours does after its lazy zero_grad
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
        sync()

    def eval_step():
        model.eval()
        with torch.no_grad():
            model(x)
        sync()

    return train_step, eval_step


def layer_times(name: str, batch: int):
    """A closure timing one training step of the torch twin layer by layer: it returns
    ``(forward_seconds, backward_seconds)``, one entry per top-level module, so the numbers
    line up with ``mlcvlab.bench.ours_layer_times``. Forward: from a module's forward
    pre-hook to its forward hook. Backward: from a module's full-backward pre-hook (its
    output gradient is ready) to the next module's down (or, for the first module, to the end
    of ``backward()``), so a layer's weight-gradient work is inside its own entry even when
    its input needs no gradient."""
    import time
    import warnings
    model = build(name)
    x, y = _data(name, batch)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    loss = tnn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    layers = list(model)
    n = len(layers)
    fwd, f_start, b_start = [0.0] * n, [0.0] * n, [None] * n

    def hooks(i):
        def pre(*_):
            f_start[i] = time.perf_counter()

        def post(*_):
            fwd[i] = time.perf_counter() - f_start[i]

        def bpre(*_):
            b_start[i] = time.perf_counter()
        return pre, post, bpre

    for i, m in enumerate(layers):
        pre, post, bpre = hooks(i)
        m.register_forward_pre_hook(pre)
        m.register_forward_hook(post)
        m.register_full_backward_pre_hook(bpre)

    def step():
        model.train()
        opt.zero_grad()
        b_start[:] = [None] * n
        with warnings.catch_warnings():   # the first module's input needs no gradient: its
            warnings.simplefilter("ignore", UserWarning)   # hook fires on the output's (wanted)
            loss(model(x), y).backward()
        end = time.perf_counter()
        opt.step()
        bwd = [0.0] * n
        for i in range(n):       # layer i's backward ends where layer i-1's begins
            nxt = next((b_start[j] for j in range(i - 1, -1, -1) if b_start[j] is not None),
                       end)
            bwd[i] = 0.0 if b_start[i] is None else nxt - b_start[i]
        return list(fwd), bwd

    return step


def conv_times(spec: dict, batch: int):
    """A closure timing one convolution of ``mlcvlab.bench.conv_specs`` alone in torch:
    ``F.conv2d`` forward (autograd recording, as in training), then the backward of the
    output (dW, db if the layer has a bias, and dx unless ``spec["input_grad"]`` is False),
    returning ``(forward_seconds, backward_seconds)``; the same random data as ours
    (``mlcvlab.bench.conv_data``)."""
    import time
    x, W, b, dy = (None if a is None else torch.from_numpy(a)
                   for a in bench.conv_data(spec, batch))
    x.requires_grad_(spec["input_grad"])
    W.requires_grad_(True)
    if b is not None:
        b.requires_grad_(True)

    def step():
        x.grad = W.grad = None
        if b is not None:
            b.grad = None
        t0 = time.perf_counter()
        out = F.conv2d(x, W, b, spec["stride"], spec["padding"], spec["dilation"],
                       spec["groups"])
        t1 = time.perf_counter()
        out.backward(dy)
        return t1 - t0, time.perf_counter() - t1

    return step
