"""Range tests (Smith 2017): train briefly while the learning rate (or batch size) grows.

Both tests train the given model with the given optimizer using the usual loop::

    out = model(x); l = loss(out, y); model.zero_grad(); model.backward(loss.backward()); opt.step()

record the loss at each setting, suggest a range from the smoothed curve, and
restore the model's and the optimizer's initial state afterwards (also when
interrupted), so the same model can then be trained from its initial weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple

import numpy as np

from mlcvlab import backend
from mlcvlab.nn.module import Module
from mlcvlab.optim.accumulate import accumulate_gradients
from mlcvlab.optim.base import Optimizer


@dataclass
class LRRangeResult:
    """Result of :func:`lr_range_test`.

    lrs: (K,) learning rates tried, ascending (K < num when the loss diverged);
    losses: (K,) mean raw loss of the batches trained at each lr;
    smoothed: (K,) bias-corrected exponential moving average of the per-batch
    loss, read at the last batch of each lr; step_lrs / step_losses: (T,) per batch;
    suggested: (lr_min, lr_max) by the rule in :func:`lr_range_test`.
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    step_lrs: np.ndarray
    step_losses: np.ndarray
    suggested: Tuple[float, float]
    lr_at_min_loss: float
    diverged: bool = False

    def to_dict(self) -> dict:
        """Plain lists and floats (JSON-ready)."""
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                for k, v in self.__dict__.items()}


@dataclass
class BatchSizeRangeResult:
    """Result of :func:`batch_size_range_test`: sizes (K,), losses (K,), smoothed (K,),
    step_sizes / step_losses (T,), suggested (min_size, max_size)."""

    sizes: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    step_sizes: np.ndarray
    step_losses: np.ndarray
    suggested: Tuple[int, int]
    diverged: bool = False

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                for k, v in self.__dict__.items()}


@dataclass
class _Curve:
    """Per-batch losses and their bias-corrected EMA; per-setting summaries."""

    beta: float
    diverge: float
    avg: float = 0.0
    n: int = 0
    best: float = np.inf
    steps: List[float] = field(default_factory=list)
    step_settings: List[float] = field(default_factory=list)
    settings: List[float] = field(default_factory=list)
    raw: List[float] = field(default_factory=list)
    smooth: List[float] = field(default_factory=list)

    def add(self, value: float, setting: float) -> bool:
        """Record one batch loss; False when the run diverged (non-finite or > diverge * best)."""
        self.steps.append(value)
        self.step_settings.append(setting)
        if not np.isfinite(value):
            return False
        self.n += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * value
        smoothed = self.avg / (1 - self.beta ** self.n)
        self.best = min(self.best, smoothed)
        return smoothed <= self.diverge * self.best

    def close(self, setting: float, n_steps: int) -> None:
        """End the segment of ``setting`` (its last n_steps batch losses)."""
        self.settings.append(setting)
        self.raw.append(float(np.mean(self.steps[-n_steps:])))
        self.smooth.append(self.avg / (1 - self.beta ** max(self.n, 1)))


def _train_step(model, loss, optimizer, x, y) -> float:
    """One step of the standard loop; NaN when the output is not finite (diverged)."""
    out = model(x)
    if not np.all(np.isfinite(out)):
        return float("nan")
    value = loss(out, y)
    model.zero_grad()
    model.backward(loss.backward())
    optimizer.step()
    return value


def _batches(loader: Iterable):
    """Batches from ``loader`` forever (a new pass when one ends)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("lr_range_test: the loader yielded no batches")


class _Restore:
    """Context manager: snapshot model + optimizer state and training mode, restore on exit."""

    def __init__(self, model: Module, optimizer: Optimizer):
        self.model, self.optimizer = model, optimizer

    def __enter__(self):
        self.weights = self.model.state_dict()
        self.opt_state = self.optimizer.state_dict()
        self.training = self.model.training
        self.model.train()
        return self

    def __exit__(self, *exc):
        self.model.load_state_dict(self.weights)
        self.optimizer.load_state_dict(self.opt_state)
        self.model.train(self.training)
        self.optimizer.zero_grad()
        return False


def _check_range(fn: str, lo, hi, what: str) -> None:
    if not (lo > 0 and hi > lo):
        raise ValueError(f"{fn}: expected 0 < {what}_min < {what}_max, got {lo!r} and {hi!r}")


def lr_range_test(model: Module, loss, optimizer: Optimizer, loader: Iterable,
                  lr_min: float = 1e-9, lr_max: float = 10.0, num: int = 10,
                  steps: Optional[int] = None, epochs: float = 1, beta: float = 0.9,
                  diverge: float = 4.0) -> LRRangeResult:
    """LR range test: train with ``num`` learning rates growing geometrically from lr_min to lr_max.

    loader: an iterable of (x, y) batches, reused when exhausted. The run has
    ``steps`` batches (default ``epochs * len(loader)``), ``steps // num`` (at least
    1) at each lr. It stops early once the smoothed loss exceeds ``diverge`` times
    its minimum or the output is not finite (Smith 2017; fast.ai's lr_find).

    Suggested range (rule): lr_max is one decade below the lr of the minimum
    smoothed loss (at the minimum, training is already at the edge of
    stability), lr_min = lr_max / 4 (Smith 2017, Sec. 3.3: base_lr 1/3 to 1/4 of
    max_lr). Model weights, buffers and the optimizer state are restored afterwards.
    """
    _check_range("lr_range_test", lr_min, lr_max, "lr")
    if not isinstance(num, int) or num < 2:
        raise ValueError(f"lr_range_test: num must be an int >= 2, got num={num!r}")
    if steps is None:
        if not hasattr(loader, "__len__"):
            raise ValueError("lr_range_test: the loader has no len(); pass steps=")
        steps = int(round(epochs * len(loader)))
    per_lr = max(1, steps // num)
    lrs = np.geomspace(lr_min, lr_max, num)
    curve, diverged = _Curve(beta, diverge), False
    batches = _batches(loader)
    with _Restore(model, optimizer), np.errstate(over="ignore", invalid="ignore"):
        for lr in lrs:
            optimizer.lr = float(lr)
            for _ in range(per_lr):
                x, y = next(batches)
                if not curve.add(_train_step(model, loss, optimizer, x, y), float(lr)):
                    diverged = True
                    break
            if diverged:
                break
            curve.close(float(lr), per_lr)
    return _lr_result(curve, diverged)


def _lr_result(curve: _Curve, diverged: bool) -> LRRangeResult:
    tried = np.array(curve.settings)
    smoothed = np.array(curve.smooth)
    if len(tried) == 0:
        raise ValueError("lr_range_test: the loss diverged at the first learning rate; "
                         "lower lr_min")
    at_min = float(tried[np.argmin(smoothed)])
    hi = at_min / 10
    return LRRangeResult(tried, np.array(curve.raw), smoothed, np.array(curve.step_settings),
                         np.array(curve.steps),
                         (hi / 4, hi), at_min, diverged)


def batch_size_range_test(model: Module, loss, optimizer: Optimizer, x: np.ndarray,
                          y: np.ndarray, min_size: int = 64, max_size: int = 8192,
                          steps_per_size: int = 5, max_micro_batch: int = 1024,
                          beta: float = 0.9, diverge: float = 4.0,
                          rng=None) -> BatchSizeRangeResult:
    """Batch-size range test: train at batch sizes min_size, 2*min_size, ..., max_size.

    x: (N, ...), y: (N, ...) the training set; batches are drawn without
    replacement from a shuffled order (reshuffled when used up) with ``rng``.
    Each size trains ``steps_per_size`` steps at the optimizer's lr; a batch
    larger than ``max_micro_batch`` is run by gradient accumulation (exact for
    models without batch norm, see ``accumulate.py``).

    Suggested range (rule): max_size is the size with the minimum smoothed
    loss, min_size = max_size / 4 (clipped to the tested range), the same
    two-octave spread as the lr rule. Model and optimizer are restored afterwards.
    """
    _check_range("batch_size_range_test", min_size, max_size, "size")
    n = len(x)
    if max_size > n:
        raise ValueError(f"batch_size_range_test: max_size={max_size} exceeds the "
                         f"{n} training samples; lower max_size or pass more data")
    sizes = [min_size]
    while sizes[-1] * 2 <= max_size:
        sizes.append(sizes[-1] * 2)
    gen = backend.rng(rng)
    order, pos = gen.permutation(n), 0
    curve, diverged = _Curve(beta, diverge), False
    with _Restore(model, optimizer), np.errstate(over="ignore", invalid="ignore"):
        for size in sizes:
            for _ in range(steps_per_size):
                if pos + size > n:
                    order, pos = gen.permutation(n), 0
                idx = order[pos:pos + size]
                pos += size
                value = _accumulated_step(model, loss, optimizer, x[idx], y[idx],
                                          min(size, max_micro_batch))
                if not curve.add(value, size):
                    diverged = True
                    break
            if diverged:
                break
            curve.close(size, steps_per_size)
    return _bs_result(curve, sizes, diverged)


def _accumulated_step(model, loss, optimizer, x, y, micro: int) -> float:
    """accumulate_gradients + step; NaN when the weights are no longer finite (diverged)."""
    try:
        value = accumulate_gradients(model, loss, x, y, micro)
    except ValueError:
        if np.all(np.isfinite(optimizer.flat.data)):
            raise
        return float("nan")
    optimizer.step()
    return value


def _bs_result(curve: _Curve, sizes: list, diverged: bool):
    tried = np.array(curve.settings, dtype=np.int64)
    if len(tried) == 0:
        raise ValueError("batch_size_range_test: the loss diverged at the first batch size; "
                         "lower the optimizer's lr")
    smoothed = np.array(curve.smooth)
    best = int(tried[np.argmin(smoothed)])
    return BatchSizeRangeResult(tried, np.array(curve.raw), smoothed,
                                np.array(curve.step_settings, dtype=np.int64),
                                np.array(curve.steps), (max(sizes[0], best // 4), best), diverged)
