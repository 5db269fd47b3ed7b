"""LeNet-5 (LeCun et al. 1998) for 1 x 28 x 28 images, in its modern form."""
from __future__ import annotations

from typing import List

from mlcvlab import backend
from mlcvlab.nn import (BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d,
                        Module, ReLU, Sequential)


def _check_p(name: str, p: float) -> float:
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"lenet5: {name} is a drop probability and must be in [0, 1), got {p!r}")
    return float(p)


def lenet5(batchnorm: bool = False, p_input: float = 0.0, p_hidden: float = 0.0,
           num_classes: int = 10, rng=None) -> Sequential:
    """LeNet-5 for x: (N, 1, 28, 28) -> logits (N, num_classes).

    conv 6@5x5 (padding 2, so 28x28 stays 28x28, like the 32x32 input of the
    original) -> max pool 2 -> conv 16@5x5 -> max pool 2 -> FC 120 -> FC 84 -> FC
    num_classes. Modern variant: ReLU instead of scaled tanh, max pooling instead
    of trainable subsampling, and a plain FC output instead of RBF units; conv2
    sees all 6 maps (no sparse connection table).

    batchnorm=True puts a batch norm (Ioffe & Szegedy 2015) between each hidden
    conv/FC and its ReLU, and drops those layers' biases (the BN shift replaces
    them). p_input is the dropout probability on the input image; p_hidden the
    dropout probability on the inputs of the two hidden FC layers (the 400
    flattened conv features and the 120 units). Probabilities are of *dropping*.
    ``rng``: seed or Generator for the weights and the dropout masks.
    """
    p_input, p_hidden = _check_p("p_input", p_input), _check_p("p_hidden", p_hidden)
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"lenet5: num_classes must be a positive integer, got {num_classes!r}")
    gen = backend.rng(rng)
    bias = not batchnorm

    def hidden(layer: Module, width: int, norm) -> List[Module]:
        return [layer] + ([norm(width)] if batchnorm else []) + [ReLU()]

    layers: List[Module] = [Dropout(p_input, rng=gen)] if p_input > 0 else []
    layers += hidden(Conv2d(1, 6, 5, padding=2, bias=bias, rng=gen), 6, BatchNorm2d)
    layers += [MaxPool2d(2)]
    layers += hidden(Conv2d(6, 16, 5, bias=bias, rng=gen), 16, BatchNorm2d)
    layers += [MaxPool2d(2), Flatten()]
    for n_in, n_out in ((16 * 5 * 5, 120), (120, 84)):
        layers += [Dropout(p_hidden, rng=gen)] if p_hidden > 0 else []
        layers += hidden(Linear(n_in, n_out, bias=bias, rng=gen), n_out, BatchNorm1d)
    layers.append(Linear(84, int(num_classes), rng=gen))
    return Sequential(*layers)


__all__ = ["lenet5"]
