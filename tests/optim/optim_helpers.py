"""Shared helpers for the optimizer tests: a small float64 MLP, its torch twin, data."""
import numpy as np
import torch

from mlcvlab import nn


def make_mlp(seed: int = 0, sizes=(6, 16, 4)) -> nn.Sequential:
    """Linear -> ReLU -> Linear in float64, flat buffer built."""
    rng = np.random.default_rng(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b, rng=rng))
    return nn.Sequential(*layers).astype(np.float64)


def make_data(seed: int = 1, n: int = 32, d: int = 6, c: int = 4):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, c, n)


def train_step(model, loss, opt, x, y) -> float:
    """The standard loop of the brief."""
    out = model(x)
    value = loss(out, y)
    model.zero_grad()
    model.backward(loss.backward())
    opt.step()
    return value


def torch_twin(model: nn.Sequential) -> torch.nn.Sequential:
    """The same MLP in torch (float64) with our weights copied in."""
    layers = []
    for m in model:
        if isinstance(m, nn.Linear):
            lin = torch.nn.Linear(m.in_features, m.out_features).double()
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(m.weight.data.copy()))
                lin.bias.copy_(torch.from_numpy(m.bias.data.copy()))
            layers.append(lin)
        else:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def torch_flat(tmodel) -> np.ndarray:
    """All torch parameters in order, as one float64 vector (matches our flat.data order)."""
    return np.concatenate([p.detach().numpy().ravel() for p in tmodel.parameters()])
