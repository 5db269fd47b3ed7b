"""Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from mlcvlab.nn.parameter import Parameter
from mlcvlab.optim.base import Optimizer, _is_real, check_hyper


class SGD(Optimizer):
    """SGD, the same update as ``torch.optim.SGD`` (dampening 0).

    With g = grad + weight_decay * w and momentum mu (buffer b, zero at start)::

        b <- mu * b + g                      (skipped when mu == 0: b = g)
        d <- g + mu * b   if nesterov else b
        w <- w - lr * d

    Nesterov momentum in this form (Sutskever et al. 2013) evaluates the gradient
    at the current weights, so it needs no extra forward pass.

    params: a model's ``parameters()``, or parameter-group dicts as torch
    (``[{"params": ..., "lr": ...}, ...]``; see ``base.py``); lr >= 0; momentum in
    [0, 1); nesterov requires momentum > 0; weight_decay >= 0 (L2, coupled);
    decay_mask=True skips biases and batch-norm parameters (default False: all,
    like torch). Every one of these can differ between groups.
    """

    _state_names = ("momentum_buffer",)
    _hyper_names = ("momentum", "nesterov")

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, decay_mask: bool = False):
        super().__init__(params, lr, weight_decay, decay_mask, momentum=momentum,
                         nesterov=nesterov)

    def _check_group(self, h: dict, where: str) -> dict:
        momentum, nesterov = h["momentum"], h["nesterov"]
        check_hyper(where, "momentum", momentum, _is_real(momentum) and 0 <= momentum < 1,
                    "in [0, 1)")
        check_hyper(where, "nesterov", nesterov, not (nesterov and momentum == 0),
                    "False when momentum is 0 (Nesterov needs momentum > 0)")
        return {**super()._check_group(h, where), "momentum": float(momentum),
                "nesterov": bool(nesterov)}

    def _states_for(self, h: dict) -> tuple:
        return ("momentum_buffer",) if h["momentum"] != 0 else ()  # plain SGD keeps no state

    def _fused_update(self, w, grad, h, st, wd) -> bool:
        if not self._fusable(wd):
            return False  # a decay mask on the CPU: the NumPy path
        c = w.dtype.type
        if h["momentum"] == 0:
            if self.flat.device == "cpu":
                return False  # plain SGD is 2 passes in NumPy already
            self._kernel("sgd")(w, grad, c(h["lr"]), self._wd_arg(w, wd))
            return True
        self._kernel("sgd_momentum")(w, grad, st["momentum_buffer"], c(h["lr"]),
                                    c(h["momentum"]), self._wd_arg(w, wd), h["nesterov"])
        return True

    def _update(self, w, g, h, st) -> None:
        lr, momentum = h["lr"], h["momentum"]
        d = self._buffer("d", w.size)
        if momentum == 0:
            np.multiply(g, lr, out=d)
            w -= d
            return
        b = st["momentum_buffer"]
        b *= momentum
        b += g
        if h["nesterov"]:
            np.multiply(b, momentum, out=d)
            d += g
            d *= lr
        else:
            np.multiply(b, lr, out=d)
        w -= d
