"""Learning-rate and batch-size schedules; call ``step()`` after every batch (or epoch).

Each schedule counts its steps ``t`` (0 at construction) and sets the value for
the next batch from ``t`` alone, so ``state_dict()`` is just ``t`` plus the
configuration, and resuming gives the same sequence.

``StepLR``, ``MultiStepLR``, ``CosineAnnealingLR`` and ``OneCycleLR`` are the
``torch.optim.lr_scheduler`` classes of the same names: same arguments, same
sequence (tests/optim compares 100 steps with torch's to 1e-12), and ``step()``
counts whatever you call it after, as in torch. ``Trainer`` calls ``step()``
after every batch, so there ``step_size``, ``milestones`` and ``T_max`` count
batches (multiply epochs by ``len(train_loader)``); in a hand-written loop call
``step()`` once per epoch to count epochs. They set every parameter group's lr
from that group's ``initial_lr`` (its lr when the first scheduler was built),
as torch does.
"""
from __future__ import annotations

import bisect
import math
from typing import List, Optional, Sequence, Union

from mlcvlab.optim.base import Optimizer, _is_real


def _check(schedule: str, name: str, value, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{schedule}: {name} must be {expected}, got {name}={value!r}")


def _check_optimizer(schedule: str, optimizer) -> None:
    if not hasattr(optimizer, "lr"):
        raise TypeError(f"{schedule}: expected an optimizer with a settable lr, got "
                        f"{type(optimizer).__name__}")


_FORWARDED = ("lr", "momentum", "betas")


class _OptimizerAsGroup:
    """An optimizer without ``param_groups`` (anything with a settable ``lr``) seen as one
    group dict: "lr", "momentum" and "betas" are its attributes, other keys kept here."""

    def __init__(self, optimizer):
        self._opt, self._extra = optimizer, {}

    def _forwards(self, key) -> bool:
        return key in _FORWARDED and hasattr(self._opt, key)

    def __contains__(self, key) -> bool:
        return key in self._extra or self._forwards(key)

    def __getitem__(self, key):
        return getattr(self._opt, key) if self._forwards(key) else self._extra[key]

    def __setitem__(self, key, value) -> None:
        if self._forwards(key):
            setattr(self._opt, key, value)
        else:
            self._extra[key] = value

    def setdefault(self, key, value):
        if key not in self:
            self[key] = value
        return self[key]


def param_groups(optimizer) -> list:
    """The optimizer's parameter groups (dicts with "lr", ...), or the optimizer as one group."""
    groups = getattr(optimizer, "param_groups", None)
    return list(groups) if groups is not None else [_OptimizerAsGroup(optimizer)]


def _per_group(schedule: str, name: str, value, n_groups: int) -> list:
    """A per-group list from a number or a list with one number per group."""
    if isinstance(value, (list, tuple)):
        if len(value) != n_groups:
            raise ValueError(f"{schedule}: {name} has {len(value)} values but the optimizer "
                             f"has {n_groups} parameter groups, got {name}={value!r}")
        return list(value)
    return [value] * n_groups


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

    @property
    def last_epoch(self) -> int:
        """torch's name for the number of ``step()`` calls so far (``t``)."""
        return self.t

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
    With parameter groups each group decays from its own lr (``base_lrs``; ``lr0`` is
    the first group's).
    """

    _config = ("lr0", "gamma", "base_lrs")

    def __init__(self, optimizer: Optimizer, gamma: float):
        _check_optimizer("ExponentialDecay", optimizer)
        _check("ExponentialDecay", "gamma", gamma, _is_real(gamma) and 0 < gamma <= 1, "in (0, 1]")
        self.optimizer, self.gamma = optimizer, float(gamma)
        self.base_lrs = [float(g["lr"]) for g in param_groups(optimizer)]
        self.lr0 = self.base_lrs[0]
        self.t = 0

    def load_state_dict(self, state: dict) -> None:
        if isinstance(state, dict) and "base_lrs" not in state and "lr0" in state:
            state = {**state, "base_lrs": [state["lr0"]] * len(self.base_lrs)}  # older dicts
        super().load_state_dict(state)

    def _apply(self) -> None:
        factor = self.gamma ** self.t
        for group, base in zip(param_groups(self.optimizer), self.base_lrs):
            group["lr"] = base * factor


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
    given (with parameter groups: each group's own lr, ``target_lrs``). After the
    warm-up the lr stays at the target (the same sequence as
    ``torch.optim.lr_scheduler.LinearLR(start_factor=f, total_iters=warmup_steps)``).
    """

    _config = ("target_lr", "warmup_steps", "start_factor", "target_lrs")

    def __init__(self, optimizer: Optimizer, warmup_steps: int, start_factor: float = 0.1,
                 target_lr: Optional[float] = None):
        name = "LinearWarmup"
        _check_optimizer(name, optimizer)
        _check(name, "warmup_steps", warmup_steps,
               isinstance(warmup_steps, int) and warmup_steps >= 1, "an int >= 1")
        _check(name, "start_factor", start_factor,
               _is_real(start_factor) and 0 <= start_factor <= 1, "in [0, 1]")
        groups = param_groups(optimizer)
        targets = [g["lr"] for g in groups] if target_lr is None else [target_lr] * len(groups)
        _check(name, "target_lr", target_lr, all(_is_real(t) and t >= 0 for t in targets),
               "a number >= 0")
        self.optimizer, self.warmup_steps = optimizer, warmup_steps
        self.target_lrs = [float(t) for t in targets]
        self.start_factor, self.target_lr = float(start_factor), self.target_lrs[0]
        self.t = 0
        self._apply()

    def load_state_dict(self, state: dict) -> None:
        if isinstance(state, dict) and "target_lrs" not in state and "target_lr" in state:
            state = {**state, "target_lrs": [state["target_lr"]] * len(self.target_lrs)}
        super().load_state_dict(state)

    @property
    def done(self) -> bool:
        """True once the lr has reached the target."""
        return self.t >= self.warmup_steps

    def _apply(self) -> None:
        frac = min(self.t, self.warmup_steps) / self.warmup_steps
        f = self.start_factor
        for group, target in zip(param_groups(self.optimizer), self.target_lrs):
            group["lr"] = target * (f + (1 - f) * frac)


class _LRScheduler(_Schedule):
    """A torch-style lr scheduler: one lr per parameter group, from the group's initial lr.

    ``base_lrs[i]`` is group i's ``initial_lr`` (set to its lr when the first scheduler
    is built, as torch does); ``_apply()`` sets every group's lr to ``lr_at(t, base)``.
    """

    def _setup(self, optimizer) -> None:
        _check_optimizer(type(self).__name__, optimizer)
        self.optimizer = optimizer
        self.base_lrs: List[float] = [float(g.setdefault("initial_lr", g["lr"]))
                                      for g in param_groups(optimizer)]
        self.t = 0

    def _factor(self, t: int) -> float:
        raise NotImplementedError

    def lr_at(self, t: int, base_lr: float) -> float:
        """The lr after t steps of a group whose initial lr is ``base_lr``."""
        return base_lr * self._factor(t)

    def _apply(self) -> None:
        groups = param_groups(self.optimizer)
        if len(groups) != len(self.base_lrs):
            raise ValueError(f"{type(self).__name__}: the optimizer has {len(groups)} parameter "
                             f"groups but the scheduler {len(self.base_lrs)}")
        for group, base in zip(groups, self.base_lrs):
            group["lr"] = self.lr_at(self.t, base)

    def get_last_lr(self) -> List[float]:
        """The lr of every parameter group, as set by the last step (torch's name)."""
        return [g["lr"] for g in param_groups(self.optimizer)]


def _check_gamma(name: str, gamma) -> None:
    _check(name, "gamma", gamma, _is_real(gamma) and gamma > 0 and math.isfinite(gamma),
           "a finite number > 0")


class StepLR(_LRScheduler):
    """lr = initial_lr * gamma ** (t // step_size): decay by gamma every step_size steps.

    As ``torch.optim.lr_scheduler.StepLR``; ``step()`` after every epoch to count epochs.
    """

    _config = ("step_size", "gamma", "base_lrs")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        name = "StepLR"
        _check(name, "step_size", step_size, isinstance(step_size, int)
               and not isinstance(step_size, bool) and step_size >= 1, "an int >= 1")
        _check_gamma(name, gamma)
        self.step_size, self.gamma = step_size, float(gamma)
        self._setup(optimizer)
        self._apply()

    def _factor(self, t: int) -> float:
        return self.gamma ** (t // self.step_size)


class MultiStepLR(_LRScheduler):
    """lr = initial_lr * gamma ** (number of milestones <= t): decay by gamma at each milestone.

    milestones: strictly increasing step counts (ints >= 1). As
    ``torch.optim.lr_scheduler.MultiStepLR``.
    """

    _config = ("milestones", "gamma", "base_lrs")

    def __init__(self, optimizer: Optimizer, milestones: Sequence[int], gamma: float = 0.1):
        name = "MultiStepLR"
        try:
            ms = list(milestones)
        except TypeError:
            ms = None
        ok = ms is not None and all(isinstance(m, int) and not isinstance(m, bool) and m >= 1
                                    for m in ms)
        _check(name, "milestones", milestones, ok, "a list of ints >= 1")
        _check(name, "milestones", milestones, all(a < b for a, b in zip(ms, ms[1:])),
               "strictly increasing")
        _check_gamma(name, gamma)
        self.milestones, self.gamma = ms, float(gamma)
        self._setup(optimizer)
        self._apply()

    def _factor(self, t: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, t)


class CosineAnnealingLR(_LRScheduler):
    """lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2 (SGDR without
    restarts, Loshchilov & Hutter 2017).

    Reaches eta_min after T_max steps; stepping on, the lr rises again along the same
    cosine, as torch's. As ``torch.optim.lr_scheduler.CosineAnnealingLR`` (which computes
    the same values recursively; they agree to ~1e-14).
    """

    _config = ("T_max", "eta_min", "base_lrs")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):
        name = "CosineAnnealingLR"
        _check(name, "T_max", T_max, isinstance(T_max, int) and not isinstance(T_max, bool)
               and T_max >= 1, "an int >= 1")
        _check(name, "eta_min", eta_min, _is_real(eta_min) and eta_min >= 0
               and math.isfinite(eta_min), "a finite number >= 0")
        self.T_max, self.eta_min = T_max, float(eta_min)
        self._setup(optimizer)
        self._apply()

    def lr_at(self, t: int, base_lr: float) -> float:
        cos = math.cos(math.pi * t / self.T_max)
        return self.eta_min + (base_lr - self.eta_min) * (1 + cos) / 2


class OneCycleLR(_LRScheduler):
    """The 1cycle policy (Smith & Topin 2019), as ``torch.optim.lr_scheduler.OneCycleLR``.

    The lr goes from ``max_lr / div_factor`` up to ``max_lr`` over the first
    ``pct_start`` of ``total_steps`` steps, then down to ``max_lr / div_factor /
    final_div_factor`` (``anneal_strategy`` "cos" or "linear"); with ``three_phase``
    it comes back to the initial lr over as many steps before the final descent.
    With ``cycle_momentum`` (default, as torch) the momentum moves the other way,
    from ``max_momentum`` down to ``base_momentum`` and back: the group's
    "momentum" (SGD, RMSProp) or beta1 (Adam, AdamW). An optimizer with neither
    (AdaGrad, AdaDelta) needs ``cycle_momentum=False``. Like torch, SGD or RMSProp
    built with momentum 0 gets momentum (max_momentum at the start).

    The lr set at construction is the initial one; ``step()`` may be called
    ``total_steps`` times (``epochs * steps_per_epoch`` can be given instead), and one
    more call raises. The last call sets the lr one step past the end of the final
    phase (as torch; no batch uses it): with ``anneal_strategy="linear"`` torch's value
    there can be negative, ours is clipped at 0, the only difference. ``max_lr``,
    ``base_momentum`` and ``max_momentum`` may be lists with one value per parameter
    group. Unlike the other schedulers, the base lr comes from ``max_lr`` and not from
    the optimizer.
    """

    _config = ("total_steps", "pct_start", "anneal_strategy", "div_factor", "final_div_factor",
               "three_phase", "cycle_momentum", "max_lrs", "base_momentums", "max_momentums",
               "use_beta1", "base_lrs")

    def __init__(self, optimizer: Optimizer, max_lr: Union[float, List[float]],
                 total_steps: Optional[int] = None, epochs: Optional[int] = None,
                 steps_per_epoch: Optional[int] = None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", cycle_momentum: bool = True,
                 base_momentum: Union[float, List[float]] = 0.85,
                 max_momentum: Union[float, List[float]] = 0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False):
        name = "OneCycleLR"
        _check_optimizer(name, optimizer)

        def is_count(v):
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        if total_steps is None:
            _check(name, "total_steps", total_steps, epochs is not None
                   and steps_per_epoch is not None, "given (or epochs and steps_per_epoch)")
            _check(name, "epochs", epochs, is_count(epochs), "an int >= 1")
            _check(name, "steps_per_epoch", steps_per_epoch, is_count(steps_per_epoch),
                   "an int >= 1")
            total_steps = epochs * steps_per_epoch
        _check(name, "total_steps", total_steps, is_count(total_steps), "an int >= 1")
        _check(name, "pct_start", pct_start, _is_real(pct_start) and 0 <= pct_start <= 1,
               "in [0, 1]")
        _check(name, "anneal_strategy", anneal_strategy, anneal_strategy in ("cos", "linear"),
               "'cos' or 'linear'")
        for arg, v in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
            _check(name, arg, v, _is_real(v) and v > 0 and math.isfinite(v),
                   "a finite number > 0")
        groups = param_groups(optimizer)
        max_lrs = _per_group(name, "max_lr", max_lr, len(groups))
        for v in max_lrs:
            _check(name, "max_lr", max_lr, _is_real(v) and v > 0 and math.isfinite(v),
                   "a finite number > 0 (or one per parameter group)")
        self.total_steps, self.pct_start = total_steps, float(pct_start)
        self.anneal_strategy, self.three_phase = anneal_strategy, bool(three_phase)
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)
        self.max_lrs = [float(v) for v in max_lrs]
        ends = [e for e, *_ in self._phases()]
        _check(name, "pct_start", pct_start, all(b != a for a, b in zip([0.0] + ends, ends)),
               f"such that no phase has length 0 (pct_start * total_steps = "
               f"{pct_start * total_steps:g} gives a division by zero)")
        self.cycle_momentum = bool(cycle_momentum)
        self.use_beta1 = False
        self.base_momentums: List[float] = []
        self.max_momentums: List[float] = []
        if self.cycle_momentum:
            has_betas = all("betas" in g for g in groups)
            _check(name, "cycle_momentum", cycle_momentum,
                   has_betas or all("momentum" in g for g in groups),
                   f"False for {type(optimizer).__name__}, which has no momentum or betas")
            self.use_beta1 = has_betas
            self.base_momentums = [float(v) for v in _per_group(name, "base_momentum",
                                                                base_momentum, len(groups))]
            self.max_momentums = [float(v) for v in _per_group(name, "max_momentum",
                                                               max_momentum, len(groups))]
            for lo, hi in zip(self.base_momentums, self.max_momentums):
                _check(name, "base_momentum", base_momentum, _is_real(lo) and 0 <= lo <= hi,
                       "in [0, max_momentum]")
                _check(name, "max_momentum", max_momentum, _is_real(hi) and hi < 1, "< 1")
        self.optimizer = optimizer
        for group, m in zip(groups, self.max_lrs):  # torch's group keys, for its habits
            group["initial_lr"] = m / self.div_factor
            group["max_lr"] = m
            group["min_lr"] = group["initial_lr"] / self.final_div_factor
        self.base_lrs = [m / self.div_factor for m in self.max_lrs]
        self.t = 0
        self._apply()

    def _phases(self):
        """(end_step, start, end) per phase; start/end name lr levels ("initial", "max",
        "min") and the momentum moves the other way. As torch's _schedule_phases."""
        n, p = self.total_steps, self.pct_start
        if self.three_phase:
            return [(float(p * n) - 1, "initial", "max"), (float(2 * p * n) - 2, "max", "initial"),
                    (n - 1, "initial", "min")]
        return [(float(p * n) - 1, "initial", "max"), (n - 1, "max", "min")]

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def step(self) -> None:
        """Advance one step; raises after ``total_steps`` steps, as torch."""
        if self.t + 1 > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {self.t + 1} times; the schedule has "
                             f"total_steps={self.total_steps}")
        super().step()

    def _at(self, t: int, levels: dict, momenta: Optional[dict]):
        start_step = 0.0
        phases = self._phases()
        for i, (end_step, a, b) in enumerate(phases):
            if t <= end_step or i == len(phases) - 1:
                pct = (t - start_step) / (end_step - start_step)
                lr = self._anneal(levels[a], levels[b], pct)
                mom = None
                if momenta is not None:
                    mom = self._anneal(momenta[a], momenta[b], pct)
                return lr, mom
            start_step = end_step

    def lr_at(self, t: int, group: int = 0) -> float:
        """The lr of parameter group ``group`` after t steps."""
        m = self.max_lrs[group]
        initial = m / self.div_factor
        return self._at(t, {"initial": initial, "max": m,
                            "min": initial / self.final_div_factor}, None)[0]

    def _apply(self) -> None:
        groups = param_groups(self.optimizer)
        if len(groups) != len(self.max_lrs):
            raise ValueError(f"OneCycleLR: the optimizer has {len(groups)} parameter groups but "
                             f"the scheduler {len(self.max_lrs)}")
        for i, group in enumerate(groups):
            m = self.max_lrs[i]
            initial = m / self.div_factor
            levels = {"initial": initial, "max": m, "min": initial / self.final_div_factor}
            momenta = None
            if self.cycle_momentum:
                lo, hi = self.base_momentums[i], self.max_momentums[i]
                momenta = {"initial": hi, "max": lo, "min": hi}
            lr, mom = self._at(self.t, levels, momenta)
            group["lr"] = max(lr, 0.0)
            if mom is not None:
                if self.use_beta1:
                    group["betas"] = (mom, *tuple(group["betas"])[1:])
                else:
                    group["momentum"] = mom
