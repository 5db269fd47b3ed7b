"""The optimizer base class: one flat parameter vector, flat state, whole-vector updates.

An optimizer takes a model's ``parameters()`` list (or any iterable of
:class:`~mlcvlab.nn.parameter.Parameter`), calls :func:`mlcvlab.nn.parameter.flatten`
once, and from then on updates ``flat.data`` (P,) in place from ``flat.grad`` (P,)
with a few whole-vector NumPy calls. Its state (momentum, Adam's m and v, ...)
is a dict of (P,) arrays, so ``step()`` never loops over parameter tensors.

Weight decay (L2) is "coupled" as in ``torch.optim``: the gradient used by the
update rule is ``g = grad + weight_decay * w``. Like torch, it applies to every
parameter by default; ``decay_mask=True`` restricts it to the entries where
``flat.decay_mask`` is True (weights only: no biases, no batch-norm gamma/beta).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List

import numpy as np

from mlcvlab.nn.parameter import FlatParameters, Parameter, flatten
from mlcvlab.optim import kernels


def check_hyper(optimizer: str, name: str, value, ok: bool, expected: str) -> None:
    """Raise a ValueError naming the optimizer, the argument and its value unless ``ok``."""
    if not ok:
        raise ValueError(f"{optimizer}: {name} must be {expected}, got {name}={value!r}")


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


class Optimizer:
    """Base class: flat buffer, lr, coupled weight decay, step counter, state dict.

    Subclasses list their state arrays in ``_state_names`` and their
    hyperparameters in ``_hyper_names``, and implement ``_update(w, g)`` where
    ``w`` is ``flat.data`` (P,) to change in place and ``g`` (P,) is the gradient
    with weight decay already added (do not modify ``g``). A subclass may also
    implement ``_fused_update(w)``: the whole update in one compiled pass
    (``kernels.py``), used when ``kernel == "numba"``; set ``opt.kernel = "numpy"``
    to force the NumPy path (the two agree; see tests/optim).
    """

    _state_names: tuple = ()
    _hyper_names: tuple = ()

    def __init__(self, params: Iterable[Parameter], lr: float, weight_decay: float = 0.0,
                 decay_mask: bool = False):
        name = type(self).__name__
        if hasattr(params, "parameters") and callable(params.parameters):
            raise TypeError(f"{name}: expected model.parameters() (a list of Parameter), "
                            f"got the {type(params).__name__} itself; pass model.parameters()")
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"{name}: expected an iterable of Parameter, got "
                            f"{type(params).__name__}") from None
        if not params:
            raise ValueError(f"{name}: got an empty parameter list; nothing to optimize")
        self.params: List[Parameter] = params
        self.flat: FlatParameters = flatten(params)
        self.lr = lr  # validated by the setter
        check_hyper(name, "weight_decay", weight_decay,
                    _is_real(weight_decay) and weight_decay >= 0, "a number >= 0")
        self.weight_decay = float(weight_decay)
        self.decay_mask = bool(decay_mask)
        self.t = 0  # number of steps taken
        self.kernel = "numba" if kernels.available() else "numpy"
        self._post_step: List[Callable[[], None]] = []
        self._gbuf = None  # scratch for grad + weight_decay * w
        self._wd = self._decay_vector()
        self.state: Dict[str, np.ndarray] = {s: np.zeros_like(self.flat.data)
                                             for s in self._state_names}

    # -- learning rate ----------------------------------------------------------
    @property
    def lr(self) -> float:
        """The learning rate used by the next ``step()``; schedules set it."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        check_hyper(type(self).__name__, "lr", value,
                    _is_real(value) and math.isfinite(value) and value >= 0, "a finite number >= 0")
        self._lr = float(value)

    # -- the update -------------------------------------------------------------
    def _decay_vector(self):
        """Scalar weight decay, or a (P,) vector that is zero where the mask says no decay."""
        if self.weight_decay == 0.0 or not self.decay_mask:
            return self.weight_decay
        return np.where(self.flat.decay_mask, self.weight_decay, 0.0).astype(self.flat.dtype)

    def _check_flat(self) -> None:
        if self.params[0]._flat is not self.flat:
            raise RuntimeError(
                f"{type(self).__name__}: the parameters were moved to a new flat buffer after the "
                f"optimizer was built (e.g. by model.astype); build the optimizer after astype()")

    def _coupled_grad(self, w: np.ndarray, wd) -> np.ndarray:
        """g = grad + wd * w (a scratch buffer), or ``flat.grad`` itself when wd is 0."""
        if np.isscalar(wd) and wd == 0.0:
            return self.flat.grad
        if self._gbuf is None:
            self._gbuf = np.empty_like(w)
        np.multiply(w, wd, out=self._gbuf)
        self._gbuf += self.flat.grad
        return self._gbuf

    def step(self) -> None:
        """Apply one update to every parameter (in place), then the post-step hooks."""
        self._check_flat()
        self.t += 1
        w = self.flat.data
        if not (self.kernel == "numba" and self._fused_update(w)):
            self._update(w, self._coupled_grad(w, self._wd))
        for hook in self._post_step:
            hook()

    def _fused_update(self, w: np.ndarray) -> bool:
        """Do the whole update in one compiled pass and return True, or return False."""
        return False

    def _update(self, w: np.ndarray, g: np.ndarray) -> None:
        raise NotImplementedError(f"{type(self).__name__}._update: Optimizer is abstract; "
                                  "subclasses implement _update(w, g) (or _fused_update)")

    def zero_grad(self) -> None:
        """Set every gradient to zero (lazily, as ``Module.zero_grad``: see nn.parameter)."""
        self.flat.zero_grad()

    def register_post_step(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` after every ``step()`` (used by the L1 and max-norm regularizers)."""
        if not callable(hook):
            raise TypeError(f"{type(self).__name__}.register_post_step: expected a callable, "
                            f"got {type(hook).__name__}")
        self._post_step.append(hook)

    # -- state --------------------------------------------------------------------
    def hyperparameters(self) -> dict:
        hyper = {"lr": self.lr, "weight_decay": self.weight_decay, "decay_mask": self.decay_mask}
        hyper.update({h: getattr(self, h) for h in self._hyper_names})
        return hyper

    def state_dict(self) -> dict:
        """Copies of everything needed to resume: type, hyperparameters, step count, state."""
        return {"optimizer": type(self).__name__, "hyper": self.hyperparameters(), "t": self.t,
                "state": {k: v.copy() for k, v in self.state.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``: state arrays are copied in place, lr and step count set."""
        name = type(self).__name__
        if not isinstance(state, dict) or "state" not in state or "t" not in state:
            raise ValueError(f"{name}.load_state_dict: expected a dict from state_dict(), "
                             f"got {type(state).__name__}")
        if state.get("optimizer") != name:
            raise ValueError(f"{name}.load_state_dict: the state dict is from "
                             f"{state.get('optimizer')!r}, expected {name!r}")
        arrays = state["state"]
        if set(arrays) != set(self.state):
            raise ValueError(f"{name}.load_state_dict: expected state {sorted(self.state)}, "
                             f"got {sorted(arrays)}")
        for k, v in arrays.items():
            v = np.asarray(v)
            if v.shape != self.state[k].shape:
                raise ValueError(f"{name}.load_state_dict: state '{k}' expected shape "
                                 f"{self.state[k].shape}, got {v.shape}; was it saved for "
                                 f"another model?")
        for k, v in arrays.items():
            self.state[k][...] = v
        hyper = state.get("hyper", {})
        for h in self._hyper_names:
            if h in hyper:
                setattr(self, h, hyper[h])
        if "lr" in hyper:
            self.lr = hyper["lr"]
        if "weight_decay" in hyper:
            self.weight_decay = float(hyper["weight_decay"])
            self.decay_mask = bool(hyper.get("decay_mask", self.decay_mask))
            self._wd = self._decay_vector()
        self.t = int(state["t"])

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({hyper}, n_params={self.flat.size})"
