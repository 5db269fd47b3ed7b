"""The optimizers by name: ``OPTIMIZERS`` and ``build``, for the CLI, the labs and scripts.

``OPTIMIZERS[name] = (class, default_lr, kwargs)``: the names are the CLI's
(``mlcvlab train --optimizer NAME``), ``default_lr`` the learning rate used when
none is given, and ``kwargs`` what the name fixes beyond the class (momentum 0.9
for "momentum", "nesterov" and "rmsprop-nesterov"). Like ``models.MODELS``::

    opt = optim.build("nesterov", model.parameters())              # SGD, lr 0.05, mu 0.9
    opt = optim.build("adamw", model.parameters(), lr=3e-4)         # weight decay 0.01
    opt = optim.build("adamw", model.parameters(), weight_decay=0)  # really 0

Default weight decay is each class's own (0, and 0.01 for AdamW as torch's
signature has it); ``opt.hyperparameters()`` gives the values actually used, for a
run's config.json.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

from mlcvlab.optim.adaptive import AdaDelta, AdaGrad, Adam, AdamW, RMSProp
from mlcvlab.optim.base import Optimizer
from mlcvlab.optim.sgd import SGD

OPTIMIZERS: Dict[str, Tuple[type, float, dict]] = {
    "sgd": (SGD, 0.1, {}),
    "momentum": (SGD, 0.05, {"momentum": 0.9}),
    "nesterov": (SGD, 0.05, {"momentum": 0.9, "nesterov": True}),
    "adagrad": (AdaGrad, 0.01, {}),
    "rmsprop": (RMSProp, 0.001, {}),
    "rmsprop-nesterov": (RMSProp, 0.001, {"momentum": 0.9, "nesterov": True}),
    "adadelta": (AdaDelta, 1.0, {}),
    "adam": (Adam, 0.001, {}),
    "adamw": (AdamW, 0.001, {}),
}


def canonical_name(name: str) -> str:
    """The registry's spelling of ``name``: case, "_" for "-" and "+" for "-" are accepted
    ("RMSProp+Nesterov", "rmsprop_nesterov" -> "rmsprop-nesterov"); ValueError if unknown."""
    if not isinstance(name, str):
        raise TypeError(f"optimizer name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-").replace("+", "-")
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return key


def default_lr(name: str) -> float:
    """The learning rate ``build(name, ...)`` uses when none is given."""
    return OPTIMIZERS[canonical_name(name)][1]


def build(name: str, params: Iterable, lr: Optional[float] = None,
          weight_decay: Optional[float] = None, momentum: Optional[float] = None,
          **kwargs) -> Optimizer:
    """The optimizer ``name`` (a key of ``OPTIMIZERS``) on ``params``.

    lr: None for the name's default lr. weight_decay: None for the class's default
    (0; AdamW 0.01); coupled L2 except for AdamW (decoupled). momentum: None for the
    name's (0.9 for "momentum", "nesterov", "rmsprop-nesterov"); a nonzero momentum
    for a name without momentum raises ValueError (use "momentum" rather than "sgd").
    Other keyword arguments go to the class (e.g. ``decay_mask=True``, ``betas``);
    ``params`` may be parameter-group dicts.
    """
    key = canonical_name(name)
    cls, lr0, fixed = OPTIMIZERS[key]
    args = dict(fixed)
    if momentum is not None:
        if "momentum" in fixed:
            args["momentum"] = momentum
        elif momentum != 0:
            with_momentum = [n for n, (_, _, kw) in OPTIMIZERS.items() if "momentum" in kw]
            raise ValueError(f"optimizer {key!r} has no momentum, got momentum={momentum!r}; "
                             f"use one of {', '.join(with_momentum)}")
    if weight_decay is not None:
        args["weight_decay"] = weight_decay
    clash = sorted(set(kwargs) & set(args))
    if clash:
        raise TypeError(f"build: {', '.join(clash)} is set by the name {key!r} or by an argument "
                        f"of build; do not pass it again")
    args.update(kwargs)
    return cls(params, lr=lr0 if lr is None else lr, **args)
