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
    if name != "resnet20":
        raise ValueError(f"torch_reference: unknown model {name!r}")
    layers, c_in = [tnn.Conv2d(3, 16, 3, 1, 1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU()], 16
    for i, width in enumerate((16, 32, 64)):
        for j in range(3):
            layers.append(_Block(c_in, width, 2 if i > 0 and j == 0 else 1))
            c_in = width
    layers += [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, N_CLASSES)]
    return tnn.Sequential(*layers)


def steps(name: str, batch: int):
    """(train_step, eval_step) for the torch twin on the benchmark batch."""
    model = build(name)
    x, y = _data(name, batch)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    loss = tnn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

    def train_step():
        model.train()
        # torch's default (set_to_none=True): the next backward writes the gradients
        # instead of adding to zeros, as ours does after its lazy zero_grad
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()

    def eval_step():
        model.eval()
        with torch.no_grad():
            model(x)

    return train_step, eval_step
