"""Gradient accumulation: one optimizer step on a batch too big to run at once.

A batch of N samples is split into micro-batches of at most B samples; each is
run forward and backward with its loss gradient scaled by n_i / N (n_i its size,
1/k for k equal micro-batches), so the gradients that accumulate in ``flat.grad``
add up to exactly the gradient of the mean loss over all N samples.

Batch-norm caveat: batch norm normalizes with the statistics of the batch it
sees, i.e. of each micro-batch, and updates its running statistics once per
micro-batch. A model with batch norm therefore computes a different function
(and gradient) than on the full batch, and is not exactly equivalent; models
without batch norm (dropout aside) are equivalent up to float rounding.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from mlcvlab.nn.module import Module
from mlcvlab.optim.base import Optimizer


def accumulate_gradients(model: Module, loss, x: np.ndarray, y: np.ndarray,
                         micro_batch: int) -> float:
    """Zero the gradients, then accumulate the mean-loss gradient of (x, y) in micro-batches.

    x: (N, ...) inputs, y: (N, ...) targets; micro_batch: the largest number of
    samples run at once. Returns the mean loss over the N samples. Micro-batches
    are consecutive slices, so equal-size splits need N divisible by micro_batch
    (otherwise the last one is smaller and weighted by its size).
    """
    if not isinstance(micro_batch, (int, np.integer)) or micro_batch < 1:
        raise ValueError(f"accumulate_gradients: micro_batch must be an int >= 1, got "
                         f"{micro_batch!r}")
    n = len(x)
    if n == 0 or len(y) != n:
        raise ValueError(f"accumulate_gradients: expected x and y with the same number of "
                         f"samples > 0, got {len(x)} and {len(y)}")
    from mlcvlab.train.trainer import _model_input, loss_and_grad   # the model's device
    model.zero_grad()
    total = 0.0
    for start in range(0, n, micro_batch):
        xb, yb = x[start:start + micro_batch], y[start:start + micro_batch]
        weight = len(xb) / n
        out = model(_model_input(model, xb))
        value, dy = loss_and_grad(loss, model, out, yb)
        total += weight * value
        model.backward(dy * dy.dtype.type(weight))
    return total


class GradientAccumulator:
    """One optimizer step per (x, y) batch, computed in micro-batches of at most ``micro_batch``.

    ``acc.step(x, y)`` = ``accumulate_gradients(...)`` then ``optimizer.step()``;
    returns the batch's mean loss. With micro_batch >= N it is the ordinary step.
    """

    def __init__(self, model: Module, loss, optimizer: Optimizer,
                 micro_batch: Optional[int] = None):
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.micro_batch = micro_batch

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        micro = len(x) if self.micro_batch is None else self.micro_batch
        value = accumulate_gradients(self.model, self.loss, x, y, micro)
        self.optimizer.step()
        return value
