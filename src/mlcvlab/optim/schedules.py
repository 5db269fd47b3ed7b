"""Learning-rate and batch-size schedules; call ``step()`` after every batch.

Each schedule counts its steps ``t`` (0 at construction) and sets the value for
the next batch from ``t`` alone, so ``state_dict()`` is just ``t`` plus the
configuration, and resuming gives the same sequence.
"""
from __future__ import annotations

import math
from typing import Optional

from mlcvlab.optim.base import Optimizer, _is_real


def _check(schedule: str, name: str, value, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{schedule}: {name} must be {expected}, got {name}={value!r}")


def _check_optimizer(schedule: str, optimizer) -> None:
    if not hasattr(optimizer, "lr"):
        raise TypeError(f"{schedule}: expected an optimizer with a settable lr, got "
                        f"{type(optimizer).__name__}")


def cyclic_scale(t: int, step_size_up: int, step_size_down: int) -> tuple:
    """Position in the cycle at step t: (cycle number from 1, height in [0, 1]).

    The height rises linearly from 0 to 1 over ``step_size_up`` steps and falls
    back to 0 over ``step_size_down`` steps (Smith 2017, Eq. in Sec. 3.1;
    the same arithmetic as ``torch.optim.lr_scheduler.CyclicLR``).
    """
    total = step_size_up + step_size_down
    ratio = step_size_up / total
    cycle = math.floor(1 + t / total)
    x = 1.0 + t / total - cycle
    height = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
    return cycle, height


class _Schedule:
    """Step counter + state dict; subclasses implement ``_apply()`` from ``self.t``."""

    _config: tuple = ()

    def step(self) -> None:
        """Advance one batch and set the value for the next one."""
        self.t += 1
        self._apply()

    def _apply(self) -> None:
        raise NotImplementedError(f"{type(self).__name__}._apply: the schedule base class is "
                                  "abstract; subclasses implement _apply()")

    def state_dict(self) -> dict:
        state = {"schedule": type(self).__name__, "t": self.t}
        state.update({k: getattr(self, k) for k in self._config})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore ``t`` and the configuration, then set the value for step ``t``."""
        name = type(self).__name__
        if not isinstance(state, dict) or state.get("schedule") != name:
            got = state.get("schedule") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{name}.load_state_dict: expected a state dict of {name}, "
                             f"got {got!r}")
        for k in self._config:
            if k in state:
                setattr(self, k, state[k])
        self.t = int(state["t"])
        self._apply()


class ExponentialDecay(_Schedule):
    """lr = lr0 * gamma**t after t steps (lr0 is the optimizer's lr at construction).

    The same sequence as ``torch.optim.lr_scheduler.ExponentialLR`` stepped per batch.
    """

    _config = ("lr0", "gamma")

    def __init__(self, optimizer: Optimizer, gamma: float):
        _check_optimizer("ExponentialDecay", optimizer)
        _check("ExponentialDecay", "gamma", gamma, _is_real(gamma) and 0 < gamma <= 1, "in (0, 1]")
        self.optimizer, self.gamma = optimizer, float(gamma)
        self.lr0 = optimizer.lr
        self.t = 0

    def _apply(self) -> None:
        self.optimizer.lr = self.lr0 * self.gamma ** self.t


class CyclicLR(_Schedule):
    """Cyclical learning rate (Smith 2017, "Cyclical Learning Rates for Training Neural Networks").

    The lr moves linearly from ``base_lr`` up to ``max_lr`` in ``step_size`` steps
    and back down in ``step_size_down`` (default ``step_size``) steps; the
    amplitude (max_lr - base_lr) is scaled by

    * ``"triangular"``: 1 (constant amplitude);
    * ``"triangular2"``: 1 / 2**(cycle - 1) (halved every cycle);
    * ``"exp_range"``: gamma**t (t = steps taken), decaying every step.

    The sequence equals ``torch.optim.lr_scheduler.CyclicLR`` with
    ``cycle_momentum=False``. At construction the optimizer's lr is set to base_lr.
    """

    _config = ("base_lr", "max_lr", "step_size", "step_size_down", "mode", "gamma")
    _modes = ("triangular", "triangular2", "exp_range")

    def __init__(self, optimizer: Optimizer, base_lr: float, max_lr: float, step_size: int,
                 mode: str = "triangular", gamma: float = 1.0,
                 step_size_down: Optional[int] = None):
        name = "CyclicLR"
        _check_optimizer(name, optimizer)
        _check(name, "base_lr", base_lr, _is_real(base_lr) and base_lr >= 0, "a number >= 0")
        _check(name, "max_lr", max_lr, _is_real(max_lr) and max_lr >= base_lr,
               f">= base_lr={base_lr}")
        _check(name, "step_size", step_size, isinstance(step_size, int) and step_size >= 1,
               "an int >= 1")
        step_size_down = step_size if step_size_down is None else step_size_down
        _check(name, "step_size_down", step_size_down,
               isinstance(step_size_down, int) and step_size_down >= 1, "an int >= 1")
        _check(name, "mode", mode, mode in self._modes, f"one of {self._modes}")
        _check(name, "gamma", gamma, _is_real(gamma) and 0 < gamma <= 1, "in (0, 1]")
        self.optimizer = optimizer
        self.base_lr, self.max_lr = float(base_lr), float(max_lr)
        self.step_size, self.step_size_down = step_size, step_size_down
        self.mode, self.gamma = mode, float(gamma)
        self.t = 0
        self._apply()

    def lr_at(self, t: int) -> float:
        """The learning rate after t steps."""
        cycle, height = cyclic_scale(t, self.step_size, self.step_size_down)
        if self.mode == "triangular":
            scale = 1.0
        elif self.mode == "triangular2":
            scale = 1 / 2.0 ** (cycle - 1)
        else:
            scale = self.gamma ** t
        return self.base_lr + (self.max_lr - self.base_lr) * height * scale

    def _apply(self) -> None:
        self.optimizer.lr = self.lr_at(self.t)


class CyclicBatchSize(_Schedule):
    """Cyclical batch size: ``loader.batch_size`` cycles between min_size and max_size.

    The position in the cycle is that of :class:`CyclicLR` (up over ``step_size``
    steps, down over ``step_size`` steps). ``mode="triangular"`` interpolates the
    batch size linearly, ``mode="exp"`` geometrically (min * (max/min)**h, even
    steps on a log scale, so 64 -> 128 -> 256 take equal time); the result is
    rounded to the nearest int. At construction the loader gets ``min_size``.

    loader: any object with an int attribute ``batch_size`` read at each batch
    (``mlcvlab.data.DataLoader``).
    """

    _config = ("min_size", "max_size", "step_size", "mode")
    _modes = ("triangular", "exp")

    def __init__(self, loader, min_size: int, max_size: int, step_size: int,
                 mode: str = "triangular"):
        name = "CyclicBatchSize"
        if not hasattr(loader, "batch_size"):
            raise TypeError(f"{name}: expected a loader with a batch_size attribute, got "
                            f"{type(loader).__name__}")
        _check(name, "min_size", min_size, isinstance(min_size, int) and min_size >= 1,
               "an int >= 1")
        _check(name, "max_size", max_size, isinstance(max_size, int) and max_size >= min_size,
               f"an int >= min_size={min_size}")
        _check(name, "step_size", step_size, isinstance(step_size, int) and step_size >= 1,
               "an int >= 1")
        _check(name, "mode", mode, mode in self._modes, f"one of {self._modes}")
        self.loader, self.min_size, self.max_size = loader, min_size, max_size
        self.step_size, self.mode = step_size, mode
        self.t = 0
        self._apply()

    def size_at(self, t: int) -> int:
        """The batch size after t steps."""
        _, h = cyclic_scale(t, self.step_size, self.step_size)
        if self.mode == "triangular":
            size = self.min_size + (self.max_size - self.min_size) * h
        else:
            size = self.min_size * (self.max_size / self.min_size) ** h
        return int(round(size))

    def _apply(self) -> None:
        self.loader.batch_size = self.size_at(self.t)


class LinearWarmup(_Schedule):
    """Linear warm-up (Goyal et al. 2017): lr rises linearly to the target over warmup_steps.

    lr(t) = target_lr * (f + (1 - f) * min(t, warmup_steps) / warmup_steps), f =
    ``start_factor``; the target is the optimizer's lr at construction unless
    given. After the warm-up the lr stays at the target (the same sequence as
    ``torch.optim.lr_scheduler.LinearLR(start_factor=f, total_iters=warmup_steps)``).
    """

    _config = ("target_lr", "warmup_steps", "start_factor")

    def __init__(self, optimizer: Optimizer, warmup_steps: int, start_factor: float = 0.1,
                 target_lr: Optional[float] = None):
        name = "LinearWarmup"
        _check_optimizer(name, optimizer)
        _check(name, "warmup_steps", warmup_steps,
               isinstance(warmup_steps, int) and warmup_steps >= 1, "an int >= 1")
        _check(name, "start_factor", start_factor,
               _is_real(start_factor) and 0 <= start_factor <= 1, "in [0, 1]")
        target_lr = optimizer.lr if target_lr is None else target_lr
        _check(name, "target_lr", target_lr, _is_real(target_lr) and target_lr >= 0,
               "a number >= 0")
        self.optimizer, self.warmup_steps = optimizer, warmup_steps
        self.start_factor, self.target_lr = float(start_factor), float(target_lr)
        self.t = 0
        self._apply()

    @property
    def done(self) -> bool:
        """True once the lr has reached the target."""
        return self.t >= self.warmup_steps

    def _apply(self) -> None:
        frac = min(self.t, self.warmup_steps) / self.warmup_steps
        f = self.start_factor
        self.optimizer.lr = self.target_lr * (f + (1 - f) * frac)
