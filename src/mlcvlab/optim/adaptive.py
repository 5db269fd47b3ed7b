"""Adaptive learning-rate optimizers: AdaGrad, RMSProp (+ Nesterov), AdaDelta, Adam, AdamW.

Every rule works on the whole flat vector: w, g and the state arrays are all (P,).
Each update matches the corresponding ``torch.optim`` class (checked over 50-step
trajectories in ``tests/optim``), except RMSProp with ``nesterov=True``, which
``torch`` does not have (Goodfellow, Bengio & Courville, Deep Learning, Alg. 8.7).
Scratch buffers are allocated once, so a step allocates nothing.
"""
from __future__ import annotations

import math
from typing import Iterable, Tuple

import numpy as np

from mlcvlab.nn.parameter import Parameter
from mlcvlab.optim import kernels
from mlcvlab.optim.base import Optimizer, _is_real, check_hyper


def _check_eps(name: str, eps) -> None:
    check_hyper(name, "eps", eps, _is_real(eps) and eps > 0, "a number > 0")


def _check_unit(name: str, arg: str, value) -> None:
    check_hyper(name, arg, value, _is_real(value) and 0 <= value < 1, "in [0, 1)")


class _Scratch:
    """Two lazily allocated (P,) scratch vectors shared by a step's temporaries."""

    def _scratch(self, w: np.ndarray):
        if getattr(self, "_tmp", None) is None or self._tmp[0].shape != w.shape:
            self._tmp = (np.empty_like(w), np.empty_like(w))
        return self._tmp


class AdaGrad(Optimizer, _Scratch):
    """AdaGrad (Duchi et al. 2011), as ``torch.optim.Adagrad``.

    With g = grad + weight_decay * w, t the step number::

        s  <- s + g * g
        w  <- w - lr_t * g / (sqrt(s) + eps),   lr_t = lr / (1 + (t - 1) * lr_decay)

    Defaults as torch: lr=1e-2, lr_decay=0, eps=1e-10, initial_accumulator_value=0.
    """

    _state_names = ("sum",)
    _hyper_names = ("lr_decay", "eps")

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, decay_mask: bool = False):
        check_hyper("AdaGrad", "lr_decay", lr_decay, _is_real(lr_decay) and lr_decay >= 0,
                    "a number >= 0")
        check_hyper("AdaGrad", "initial_accumulator_value", initial_accumulator_value,
                    _is_real(initial_accumulator_value) and initial_accumulator_value >= 0,
                    "a number >= 0")
        _check_eps("AdaGrad", eps)
        self.lr_decay, self.eps = float(lr_decay), float(eps)
        super().__init__(params, lr, weight_decay, decay_mask)
        self.state["sum"].fill(initial_accumulator_value)

    def _update(self, w: np.ndarray, g: np.ndarray) -> None:
        s = self.state["sum"]
        a, b = self._scratch(w)
        np.multiply(g, g, out=a)
        s += a
        np.sqrt(s, out=a)
        a += self.eps
        np.divide(g, a, out=b)
        b *= self.lr / (1 + (self.t - 1) * self.lr_decay)
        w -= b


class RMSProp(Optimizer, _Scratch):
    """RMSProp (Tieleman & Hinton 2012), optionally centered, with momentum or Nesterov momentum.

    With g = grad + weight_decay * w (on the weights the model holds)::

        r    <- alpha * r + (1 - alpha) * g * g
        mean <- alpha * mean + (1 - alpha) * g             (centered only)
        den  =  sqrt(r - mean**2 if centered else r) + eps

    then, as ``torch.optim.RMSprop``:

        momentum == 0:  w <- w - lr * g / den
        momentum  > 0:  v <- momentum * v + g / den;   w <- w - lr * v

    ``nesterov=True`` is RMSProp with Nesterov momentum, Goodfellow, Bengio &
    Courville, Deep Learning (2016), Algorithm 8.7, with eps added to sqrt(r)
    for coordinates whose gradient has always been 0::

        theta_tilde = theta + momentum * v          (interim point)
        g           = gradient at theta_tilde
        r          <- alpha * r + (1 - alpha) * g * g
        v          <- momentum * v - lr * g / den
        theta      <- theta + v

    The gradient must be taken at the interim point, so the model holds
    theta_tilde, not theta (the same change of variables as torch's Nesterov SGD).
    Substituting theta = theta_tilde - momentum * v gives the update actually applied:
    theta_tilde <- theta_tilde + (1 + momentum) * v_new - momentum * v_old.
    The book's theta is ``w - momentum * state['momentum_buffer']``; it differs from
    the model's weights by momentum * v, which goes to 0 as training converges.

    Defaults as torch: lr=1e-2, alpha=0.99, eps=1e-8, momentum=0, centered=False.
    """

    _state_names = ("square_avg", "momentum_buffer", "grad_avg")
    _hyper_names = ("alpha", "eps", "momentum", "centered", "nesterov")

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
                 centered: bool = False, nesterov: bool = False, decay_mask: bool = False):
        _check_unit("RMSProp", "alpha", alpha)
        _check_eps("RMSProp", eps)
        _check_unit("RMSProp", "momentum", momentum)
        check_hyper("RMSProp", "nesterov", nesterov, not (nesterov and momentum == 0),
                    "False when momentum is 0 (Nesterov needs momentum > 0)")
        self.alpha, self.eps, self.momentum = float(alpha), float(eps), float(momentum)
        self.centered, self.nesterov = bool(centered), bool(nesterov)
        self._state_names = ("square_avg",) + (("momentum_buffer",) if momentum > 0 else ()) \
            + (("grad_avg",) if centered else ())
        super().__init__(params, lr, weight_decay, decay_mask)

    def _denominator(self, g: np.ndarray, out: np.ndarray) -> np.ndarray:
        """den = sqrt(r - mean^2 or r) + eps, after updating r (and mean) with g."""
        r = self.state["square_avg"]
        r *= self.alpha
        np.multiply(g, g, out=out)
        out *= 1 - self.alpha
        r += out
        if self.centered:
            mean = self.state["grad_avg"]
            mean *= self.alpha
            np.multiply(g, 1 - self.alpha, out=out)
            mean += out
            np.multiply(mean, mean, out=out)
            np.subtract(r, out, out=out)
            np.sqrt(out, out=out)
        else:
            np.sqrt(r, out=out)
        out += self.eps
        return out

    def _update(self, w: np.ndarray, g: np.ndarray) -> None:
        a, b = self._scratch(w)
        den = self._denominator(g, a)
        np.divide(g, den, out=b)  # b = g / den
        if self.momentum == 0:
            b *= self.lr
            w -= b
            return
        v = self.state["momentum_buffer"]
        if not self.nesterov:
            v *= self.momentum
            v += b
            np.multiply(v, self.lr, out=b)
            w -= b
            return
        # Nesterov (Alg. 8.7): v_new = mu v - lr g/den; w += (1 + mu) v_new - mu v_old
        b *= -self.lr
        np.multiply(v, -self.momentum, out=a)  # a = -mu * v_old
        v *= self.momentum
        v += b                                 # v = v_new
        w += a
        np.multiply(v, 1 + self.momentum, out=b)
        w += b


class AdaDelta(Optimizer, _Scratch):
    """AdaDelta (Zeiler 2012), as ``torch.optim.Adadelta``.

    With g = grad + weight_decay * w::

        r     <- rho * r + (1 - rho) * g * g
        delta =  sqrt(u + eps) / sqrt(r + eps) * g
        u     <- rho * u + (1 - rho) * delta * delta
        w     <- w - lr * delta

    Defaults as torch: lr=1.0, rho=0.9, eps=1e-6.
    """

    _state_names = ("square_avg", "acc_delta")
    _hyper_names = ("rho", "eps")

    def __init__(self, params: Iterable[Parameter], lr: float = 1.0, rho: float = 0.9,
                 eps: float = 1e-6, weight_decay: float = 0.0, decay_mask: bool = False):
        _check_unit("AdaDelta", "rho", rho)
        _check_eps("AdaDelta", eps)
        self.rho, self.eps = float(rho), float(eps)
        super().__init__(params, lr, weight_decay, decay_mask)

    def _update(self, w: np.ndarray, g: np.ndarray) -> None:
        r, u = self.state["square_avg"], self.state["acc_delta"]
        a, b = self._scratch(w)
        r *= self.rho
        np.multiply(g, g, out=a)
        a *= 1 - self.rho
        r += a
        np.add(r, self.eps, out=a)
        np.sqrt(a, out=a)            # a = sqrt(r + eps)
        np.add(u, self.eps, out=b)
        np.sqrt(b, out=b)
        b /= a
        b *= g                       # b = delta
        u *= self.rho
        np.multiply(b, b, out=a)
        a *= 1 - self.rho
        u += a
        b *= self.lr
        w -= b


class Adam(Optimizer, _Scratch):
    """Adam (Kingma & Ba 2015), as ``torch.optim.Adam`` (amsgrad=False).

    With g = grad + weight_decay * w (coupled L2; see :class:`AdamW` for decoupled)::

        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g * g
        w <- w - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Defaults as torch: lr=1e-3, betas=(0.9, 0.999), eps=1e-8.
    """

    _state_names = ("exp_avg", "exp_avg_sq")
    _hyper_names = ("betas", "eps")

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decay_mask: bool = False):
        name = type(self).__name__
        check_hyper(name, "betas", betas, isinstance(betas, (tuple, list)) and len(betas) == 2,
                    "a pair (beta1, beta2)")
        _check_unit(name, "betas[0]", betas[0])
        _check_unit(name, "betas[1]", betas[1])
        _check_eps(name, eps)
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)
        super().__init__(params, lr, weight_decay, decay_mask)

    def _adam_update(self, w: np.ndarray, g: np.ndarray) -> None:
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        beta1, beta2 = self.betas
        a, b = self._scratch(w)
        m *= beta1
        np.multiply(g, 1 - beta1, out=a)
        m += a
        v *= beta2
        np.multiply(g, g, out=a)
        a *= 1 - beta2
        v += a
        np.sqrt(v, out=a)
        a *= 1 / math.sqrt(1 - beta2 ** self.t)
        a += self.eps
        np.divide(m, a, out=b)
        b *= self.lr / (1 - beta1 ** self.t)
        w -= b

    _update = _adam_update

    def _adam_kernel(self, w: np.ndarray, wd: float, shrink: float) -> None:
        beta1, beta2 = self.betas
        c = w.dtype.type
        kernels.get("adam")(w, self.flat.grad, self.state["exp_avg"], self.state["exp_avg_sq"],
                            c(self.lr / (1 - beta1 ** self.t)), c(beta1), c(1 - beta1), c(beta2),
                            c(1 - beta2), c(self.eps), c(1 / math.sqrt(1 - beta2 ** self.t)),
                            c(wd), c(shrink))

    def _fused_update(self, w: np.ndarray) -> bool:
        if not np.isscalar(self._wd):
            return False
        self._adam_kernel(w, self._wd, 1.0)
        return True


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019), as ``torch.optim.AdamW``: decoupled weight decay.

    w <- w * (1 - lr * weight_decay), then the Adam update with the raw gradient.
    With ``decay_mask=True`` the shrink skips biases and batch-norm parameters.
    Defaults as torch: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2.
    """

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, decay_mask: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, decay_mask)

    def step(self) -> None:
        """Shrink the weights (decoupled decay), then an Adam step on the raw gradient."""
        self._check_flat()
        self.t += 1
        w = self.flat.data
        if np.isscalar(self._wd) and self.kernel == "numba":
            self._adam_kernel(w, 0.0, 1 - self.lr * self._wd)  # shrink fused into the pass
        else:
            self._shrink(w)
            self._adam_update(w, self.flat.grad)
        for hook in self._post_step:
            hook()

    def _shrink(self, w: np.ndarray) -> None:
        """w <- w * (1 - lr * wd), wd a scalar or the masked (P,) vector."""
        if np.isscalar(self._wd):
            if self._wd != 0.0:
                w *= 1 - self.lr * self._wd
            return
        a, _ = self._scratch(w)
        np.multiply(self._wd, -self.lr, out=a)
        a += 1
        w *= a
