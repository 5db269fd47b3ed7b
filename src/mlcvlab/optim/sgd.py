"""Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from mlcvlab.nn.parameter import Parameter
from mlcvlab.optim import kernels
from mlcvlab.optim.base import Optimizer, _is_real, check_hyper


class SGD(Optimizer):
    """SGD, the same update as ``torch.optim.SGD`` (dampening 0).

    With g = grad + weight_decay * w and momentum mu (buffer b, zero at start)::

        b <- mu * b + g                      (skipped when mu == 0: b = g)
        d <- g + mu * b   if nesterov else b
        w <- w - lr * d

    Nesterov momentum in this form (Sutskever et al. 2013) evaluates the gradient
    at the current weights, so it needs no extra forward pass.

    params: a model's ``parameters()``; lr >= 0; momentum in [0, 1);
    nesterov requires momentum > 0; weight_decay >= 0 (L2, coupled);
    decay_mask=True skips biases and batch-norm parameters (default False: all,
    like torch).
    """

    _state_names = ("momentum_buffer",)
    _hyper_names = ("momentum", "nesterov")

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, decay_mask: bool = False):
        check_hyper("SGD", "momentum", momentum, _is_real(momentum) and 0 <= momentum < 1,
                    "in [0, 1)")
        check_hyper("SGD", "nesterov", nesterov, not (nesterov and momentum == 0),
                    "False when momentum is 0 (Nesterov needs momentum > 0)")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        if self.momentum == 0:
            self._state_names = ()  # plain SGD keeps no state
        super().__init__(params, lr, weight_decay, decay_mask)
        self._dbuf = None

    def _fused_update(self, w: np.ndarray) -> bool:
        if self.momentum == 0 or not np.isscalar(self._wd):
            return False  # plain SGD is 2 passes in NumPy already; masks stay on NumPy
        c = w.dtype.type
        kernels.get("sgd_momentum")(w, self.flat.grad, self.state["momentum_buffer"],
                                    c(self.lr), c(self.momentum), c(self._wd), self.nesterov)
        return True

    def _update(self, w: np.ndarray, g: np.ndarray) -> None:
        if self.momentum == 0:
            if self._dbuf is None:
                self._dbuf = np.empty_like(w)
            np.multiply(g, self.lr, out=self._dbuf)
            w -= self._dbuf
            return
        b = self.state["momentum_buffer"]
        b *= self.momentum
        b += g
        if self._dbuf is None:
            self._dbuf = np.empty_like(w)
        d = self._dbuf
        if self.nesterov:
            np.multiply(b, self.momentum, out=d)
            d += g
            d *= self.lr
        else:
            np.multiply(b, self.lr, out=d)
        w -= d
