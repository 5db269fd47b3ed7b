"""Multi-layer perceptrons built from the layers of ``mlcvlab.nn``."""
from __future__ import annotations

from typing import Sequence

from mlcvlab import backend
from mlcvlab.nn.module import Sequential
from mlcvlab.nn.modules import (BatchNorm1d, Dropout, Flatten, LeakyReLU, Linear, ReLU, Sigmoid,
                                Tanh)

ACTIVATIONS = {"relu": ReLU, "leaky_relu": LeakyReLU, "sigmoid": Sigmoid, "tanh": Tanh}


def mlp(sizes: Sequence[int], activation: str = "relu", p_input: float = 0.0, p_hidden: float = 0.0,
        batchnorm: bool = False, flatten: bool = True, rng=None) -> Sequential:
    """An MLP with layer sizes ``sizes`` = (in, hidden..., out); the output is logits.

    Each hidden layer is Linear -> [BatchNorm1d] -> activation -> [Dropout(p_hidden)];
    ``p_input > 0`` puts a Dropout on the input (Srivastava et al. use 0.2 input,
    0.5 hidden). With ``flatten`` an image batch (N, C, H, W) is flattened first.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"mlp: sizes must be at least (in, out) positive integers, got {sizes}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"mlp: unknown activation {activation!r}; "
                         f"choose one of {sorted(ACTIVATIONS)}")
    gen = backend.rng(rng)
    layers = [Flatten()] if flatten else []
    if p_input > 0:
        layers.append(Dropout(p_input, rng=gen))
    for i in range(len(sizes) - 2):
        layers.append(Linear(sizes[i], sizes[i + 1], rng=gen))
        if batchnorm:
            layers.append(BatchNorm1d(sizes[i + 1]))
        layers.append(ACTIVATIONS[activation]())
        if p_hidden > 0:
            layers.append(Dropout(p_hidden, rng=gen))
    layers.append(Linear(sizes[-2], sizes[-1], rng=gen))
    model = Sequential(*layers)
    model.flat()
    return model
