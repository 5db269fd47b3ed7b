"""Range tests (Smith 2017): train briefly while the learning rate (or batch size) grows.

Both tests train the given model with the given optimizer using the usual loop::

    out = model(x); l = loss(out, y); model.zero_grad(); model.backward(loss.backward()); opt.step()

record the loss at each setting, suggest a range from the curve, and
restore the model's and the optimizer's initial state afterwards (also when
interrupted), so the same model can then be trained from its initial weights.

The lr range (:func:`smith_lr_bounds`) follows Smith (2017), "Cyclical Learning Rates for
Training Neural Networks", Sec. 3.3: "run your model for several epochs while letting the
learning rate increase linearly between low and high LR values. [...] Next, plot the accuracy
versus learning rate. Note the learning rate value when the accuracy starts to increase and
when the accuracy slows, becomes ragged, or starts to fall. These two learning rates are good
choices for bounds; that is, set base_lr to the first value and set max_lr to the latter
value. Alternatively, one can use the rule of thumb that the optimum learning rate is usually
within a factor of two of the largest one that converges [2] and set base_lr to 1/3 or 1/4 of
max_lr." Read on the (smoothed) training loss instead of the accuracy.

The batch-size test restarts from the same weights at every size (``restart=True``, the
default), so every size is measured from the same starting point; the older walk that trains
on through the sizes (``restart=False``) sees the larger sizes later in training, where the
loss is lower anyway, and so favours the largest size.
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
    suggested: (base_lr, max_lr) by :func:`smith_lr_bounds` (Smith 2017, Sec. 3.3);
    rule: that function's whole answer (the indices it read, whether it used the 1/4 rule).
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    step_lrs: np.ndarray
    step_losses: np.ndarray
    suggested: Tuple[float, float]
    lr_at_min_loss: float
    diverged: bool = False
    rule: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain lists and floats (JSON-ready)."""
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                for k, v in self.__dict__.items()}


@dataclass
class BatchSizeRangeResult:
    """Result of :func:`batch_size_range_test`: sizes (K,), losses (K,) (inf where the size
    diverged), smoothed (K,) (the same as losses when restarted), step_sizes / step_losses
    (T,), suggested (min_size, max_size), restarted (every size from the same weights), rule
    (:func:`smith_lr_bounds` read on the sizes, when restarted)."""

    sizes: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    step_sizes: np.ndarray
    step_losses: np.ndarray
    suggested: Tuple[int, int]
    diverged: bool = False
    restarted: bool = False
    rule: dict = field(default_factory=dict)

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
    from mlcvlab.train.trainer import _model_input, loss_and_grad   # the model's device
    out = model(_model_input(model, x))
    if not np.all(np.isfinite(out)):
        return float("nan")
    value, dout = loss_and_grad(loss, model, out, y)
    model.zero_grad()
    model.backward(dout)
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

    Suggested range: :func:`smith_lr_bounds` (Smith 2017, Sec. 3.3) on the smoothed
    curve. Smith raises the lr linearly; this test steps it geometrically, so that a range
    of many decades (1e-9 to 10) gets equal steps per decade. Model weights, buffers and the
    optimizer state are restored afterwards.
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


START_FRACTION = 0.25  # the loss "has started improving" once it is a quarter of its fall down
SLOW_FRACTION = 0.1    # a rate "still improves" while it lowers the loss by >= 10% of that fall


def smith_lr_bounds(lrs, smoothed, start_fraction: float = START_FRACTION,
                    slow_fraction: float = SLOW_FRACTION) -> dict:
    """(base_lr, max_lr) from an lr range curve by Smith (2017), Sec. 3.3 (see the module
    docstring), read on the smoothed loss (lower is better) instead of the accuracy. With
    ``drop`` = the loss at the first lr minus the lowest loss:

    * max_lr ("when the accuracy slows, becomes ragged, or starts to fall"): the last lr, up to
      the one of the lowest loss, that still lowered the loss by at least
      ``slow_fraction * drop`` from the lr before it; every later lr improves less (slows),
      raises the loss (ragged, falls) or diverged;
    * base_lr ("when the accuracy starts to increase"): the first lr from which the loss stays
      at least ``start_fraction * drop`` below its starting level up to max_lr (a fall that
      lasts, not a dip in the noise of the flat start);
    * when both are the same lr, base_lr = max_lr / 4 (Smith's rule of thumb: "set base_lr to
      1/3 or 1/4 of max_lr").

    Returns {"base_lr", "max_lr", "start_index", "stop_index", "rule_of_thumb",
    "no_decrease"}; no_decrease is True when the loss never fell below its first value
    (the bounds are then not meaningful).
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    L = np.asarray(smoothed, dtype=np.float64)
    if len(lrs) == 0 or len(lrs) != len(L):
        raise ValueError(f"smith_lr_bounds: need one smoothed loss per lr, got {len(lrs)} lrs "
                         f"and {len(L)} losses")
    L = np.where(np.isfinite(L), L, np.inf)
    drop = float(L[0] - np.min(L)) if np.isfinite(L[0]) else 0.0
    if drop <= 0:
        return {"base_lr": float(lrs[0]) / 4, "max_lr": float(lrs[0]), "start_index": 0,
                "stop_index": 0, "rule_of_thumb": True, "no_decrease": True}
    lowest = int(np.argmin(L))
    stop = lowest
    while stop > 0 and L[stop - 1] - L[stop] < slow_fraction * drop:
        stop -= 1
    below = L <= L[0] - start_fraction * drop
    start = stop
    while start > 0 and below[start - 1]:
        start -= 1
    max_lr = float(lrs[stop])
    thumb = stop == start
    base_lr = max_lr / 4 if thumb else float(lrs[start])
    return {"base_lr": base_lr, "max_lr": max_lr, "start_index": int(start),
            "stop_index": int(stop), "rule_of_thumb": bool(thumb), "no_decrease": False}


def _lr_result(curve: _Curve, diverged: bool) -> LRRangeResult:
    tried = np.array(curve.settings)
    smoothed = np.array(curve.smooth)
    if len(tried) == 0:
        raise ValueError("lr_range_test: the loss diverged at the first learning rate; "
                         "lower lr_min")
    at_min = float(tried[np.argmin(smoothed)])
    bounds = smith_lr_bounds(tried, smoothed)
    return LRRangeResult(tried, np.array(curve.raw), smoothed, np.array(curve.step_settings),
                         np.array(curve.steps), (bounds["base_lr"], bounds["max_lr"]), at_min,
                         diverged, bounds)


def batch_size_range_test(model: Module, loss, optimizer: Optimizer, x: np.ndarray,
                          y: np.ndarray, min_size: int = 64, max_size: int = 8192,
                          steps_per_size: int = 5, max_micro_batch: int = 1024,
                          beta: float = 0.9, diverge: float = 4.0,
                          rng=None, restart: bool = True,
                          eval_x: Optional[np.ndarray] = None,
                          eval_y: Optional[np.ndarray] = None) -> BatchSizeRangeResult:
    """Batch-size range test: train at batch sizes min_size, 2*min_size, ..., max_size.

    x: (N, ...), y: (N, ...) the training set; batches are drawn without
    replacement from a shuffled order (reshuffled when used up) with ``rng``.
    A batch larger than ``max_micro_batch`` is run by gradient accumulation (exact for
    models without batch norm, see ``accumulate.py``).

    restart=True (default): every size starts from the model's and optimizer's initial
    state, sees the same shuffled order and trains ``steps_per_size`` steps (equal steps, so
    a larger size sees more examples with less gradient noise per step). Its loss is the loss
    on (eval_x, eval_y) after those steps (forward passes in training mode, in chunks of
    max_micro_batch), or without them the mean loss of its last steps' batches (inf where
    the size diverged). The loss then falls with the size and flattens out once more
    examples per step stop helping; read like the lr curve (:func:`smith_lr_bounds` on
    sizes and losses): max_size = the last size that still lowered the loss by at least 10%
    of the total fall (where the fall "slows"), min_size = max(smallest size, max_size / 4)
    (Smith's 1/4 rule of thumb, applied to the batch size). Sizes that diverged below the
    first finite one are skipped; where the loss never falls, both are the smallest size.

    restart=False: the older walk that trains on through the sizes (EMA-smoothed loss,
    ``steps_per_size`` steps each); larger sizes come later in training, so its minimum is
    biased towards them; suggested (max(min_size, best // 4), best).

    Model and optimizer are restored afterwards.
    """
    _check_range("batch_size_range_test", min_size, max_size, "size")
    n = len(x)
    if max_size > n:
        raise ValueError(f"batch_size_range_test: max_size={max_size} exceeds the "
                         f"{n} training samples; lower max_size or pass more data")
    if not isinstance(steps_per_size, (int, np.integer)) or steps_per_size < 1:
        raise ValueError(f"batch_size_range_test: steps_per_size must be an int >= 1, got "
                         f"{steps_per_size!r}")
    if (eval_x is None) != (eval_y is None):
        raise ValueError("batch_size_range_test: pass both eval_x and eval_y, or neither")
    sizes = [min_size]
    while sizes[-1] * 2 <= max_size:
        sizes.append(sizes[-1] * 2)
    gen = backend.rng(rng)
    if not restart:
        return _bs_walk(model, loss, optimizer, x, y, sizes, steps_per_size, max_micro_batch,
                        beta, diverge, gen)
    first_order = gen.permutation(n)
    step_sizes: List[int] = []
    step_losses: List[float] = []
    per_size, tried, diverged_any = [], [], False
    with _Restore(model, optimizer) as saved, np.errstate(over="ignore", invalid="ignore"):
        for size in sizes:
            model.load_state_dict(saved.weights)
            optimizer.load_state_dict(saved.opt_state)
            optimizer.zero_grad()
            model.train()
            steps = steps_per_size
            order, pos, own, ok = first_order, 0, [], True
            reshuffle = np.random.default_rng([size, n])     # only used past the first pass
            for _ in range(steps):
                if pos + size > n:
                    order, pos = reshuffle.permutation(n), 0
                idx = order[pos:pos + size]
                pos += size
                value = _accumulated_step(model, loss, optimizer, x[idx], y[idx],
                                          min(size, max_micro_batch))
                step_sizes.append(size)
                step_losses.append(value)
                own.append(value)
                if not np.isfinite(value):
                    ok = False
                    break
            if ok and eval_x is not None:
                value = _eval_loss(model, loss, eval_x, eval_y, max_micro_batch)
                ok = np.isfinite(value)
            elif ok:
                value = float(np.mean(own[-min(len(own), 5):]))
            per_size.append(float(value) if ok else float("inf"))
            tried.append(size)
            diverged_any |= not ok
    losses = np.array(per_size)
    if not np.any(np.isfinite(losses)):
        raise ValueError("batch_size_range_test: the loss diverged at every batch size; "
                         "lower the optimizer's lr")
    first = int(np.argmax(np.isfinite(losses)))       # sizes below it diverged
    rule = smith_lr_bounds(tried[first:], losses[first:])
    rule.update(start_index=rule["start_index"] + first, stop_index=rule["stop_index"] + first)
    b_max = int(tried[rule["stop_index"]])
    return BatchSizeRangeResult(np.array(tried, dtype=np.int64), losses, losses.copy(),
                                np.array(step_sizes, dtype=np.int64), np.array(step_losses),
                                (max(sizes[0], b_max // 4), b_max), diverged_any, True, rule)


def _eval_loss(model, loss, x, y, chunk: int) -> float:
    """Mean loss over (x, y) in chunks (training mode: batch statistics, no update)."""
    from mlcvlab.train.trainer import _model_input, loss_and_grad   # the model's device
    total = 0.0
    for i in range(0, len(x), chunk):
        out = model(_model_input(model, x[i:i + chunk]))
        if not np.all(np.isfinite(out)):
            return float("nan")
        total += float(loss_and_grad(loss, model, out, y[i:i + chunk])[0]) * len(out)
    return total / len(x)


def _bs_walk(model, loss, optimizer, x, y, sizes, steps_per_size, max_micro_batch, beta,
             diverge, gen) -> BatchSizeRangeResult:
    """The walk through the sizes without restarting (biased towards the largest size)."""
    n = len(x)
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
    """accumulate_gradients + step; NaN when the model diverged (weights or outputs no longer
    finite)."""
    try:
        value = accumulate_gradients(model, loss, x, y, micro)
    except ValueError as err:
        if np.all(np.isfinite(optimizer.flat.data)) and "NaN or inf" not in str(err):
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
