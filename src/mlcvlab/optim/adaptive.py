"""Adaptive learning-rate optimizers: AdaGrad, RMSProp (+ Nesterov), AdaDelta, Adam, AdamW.

Every rule works on the whole flat vector: w, g and the state arrays are all (P,).
Each update matches the corresponding ``torch.optim`` class (checked over 50-step
trajectories in ``tests/optim``), except RMSProp with ``nesterov=True``, which
``torch`` does not have (Goodfellow, Bengio & Courville, Deep Learning, Alg. 8.7).
Scratch buffers are allocated once, so a step allocates nothing. Every
hyperparameter may differ between parameter groups (``base.py``).

On the CPU, Adam's step is one numba pass (``optim/kernels.py``) and the others are the
NumPy passes below. On a model moved with ``to("cuda")`` every rule here is one pass of its
CUDA twin (``mlcvlab.gpu.optim``: the NumPy path's arithmetic in the same order), with or
without a decay mask.
"""
from __future__ import annotations

import math
from typing import Iterable, Tuple

import numpy as np

from mlcvlab.nn.parameter import Parameter
from mlcvlab.optim.base import Optimizer, _is_real, check_hyper


def _check_eps(where: str, eps) -> None:
    check_hyper(where, "eps", eps, _is_real(eps) and eps > 0, "a number > 0")


def _check_unit(where: str, arg: str, value) -> None:
    check_hyper(where, arg, value, _is_real(value) and 0 <= value < 1, "in [0, 1)")


class AdaGrad(Optimizer):
    """AdaGrad (Duchi et al. 2011), as ``torch.optim.Adagrad``.

    With g = grad + weight_decay * w, t the step number::

        s  <- s + g * g
        w  <- w - lr_t * g / (sqrt(s) + eps),   lr_t = lr / (1 + (t - 1) * lr_decay)

    Defaults as torch: lr=1e-2, lr_decay=0, eps=1e-10, initial_accumulator_value=0.
    A parameter group's own ``initial_accumulator_value`` fills its part of s (torch
    2.13 fills every group's with the constructor's value).
    """

    _state_names = ("sum",)
    _hyper_names = ("lr_decay", "eps", "initial_accumulator_value")

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, decay_mask: bool = False):
        super().__init__(params, lr, weight_decay, decay_mask, lr_decay=lr_decay, eps=eps,
                         initial_accumulator_value=initial_accumulator_value)

    def _check_group(self, h: dict, where: str) -> dict:
        lr_decay, iav = h["lr_decay"], h["initial_accumulator_value"]
        check_hyper(where, "lr_decay", lr_decay, _is_real(lr_decay) and lr_decay >= 0,
                    "a number >= 0")
        check_hyper(where, "initial_accumulator_value", iav, _is_real(iav) and iav >= 0,
                    "a number >= 0")
        _check_eps(where, h["eps"])
        return {**super()._check_group(h, where), "lr_decay": float(lr_decay),
                "initial_accumulator_value": float(iav), "eps": float(h["eps"])}

    def _init_state(self, name: str) -> np.ndarray:
        s = np.zeros_like(self.flat.data)
        for g, slices in zip(self.param_groups, self._slices):
            for sl in slices:
                s[sl] = g["initial_accumulator_value"]
        return s

    def _update(self, w, g, h, st) -> None:
        s = st["sum"]
        a, b = self._buffer("a", w.size), self._buffer("b", w.size)
        np.multiply(g, g, out=a)
        s += a
        np.sqrt(s, out=a)
        a += h["eps"]
        np.divide(g, a, out=b)
        b *= self._step_lr(h)
        w -= b

    def _step_lr(self, h: dict) -> float:
        return h["lr"] / (1 + (self.t - 1) * h["lr_decay"])

    def _fused_update(self, w, grad, h, st, wd) -> bool:
        if self.flat.device == "cpu":
            return False                # no CPU kernel: the NumPy path
        c = w.dtype.type
        self._kernel("adagrad")(w, grad, st["sum"], c(self._step_lr(h)), c(h["eps"]),
                                self._wd_arg(w, wd))
        return True


class RMSProp(Optimizer):
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
        super().__init__(params, lr, weight_decay, decay_mask, alpha=alpha, eps=eps,
                         momentum=momentum, centered=centered, nesterov=nesterov)

    def _check_group(self, h: dict, where: str) -> dict:
        _check_unit(where, "alpha", h["alpha"])
        _check_eps(where, h["eps"])
        _check_unit(where, "momentum", h["momentum"])
        check_hyper(where, "nesterov", h["nesterov"], not (h["nesterov"] and h["momentum"] == 0),
                    "False when momentum is 0 (Nesterov needs momentum > 0)")
        return {**super()._check_group(h, where), "alpha": float(h["alpha"]),
                "eps": float(h["eps"]), "momentum": float(h["momentum"]),
                "centered": bool(h["centered"]), "nesterov": bool(h["nesterov"])}

    def _states_for(self, h: dict) -> tuple:
        return ("square_avg",) + (("momentum_buffer",) if h["momentum"] > 0 else ()) \
            + (("grad_avg",) if h["centered"] else ())

    def _denominator(self, g, h, st, out):
        """den = sqrt(r - mean^2 or r) + eps, after updating r (and mean) with g."""
        alpha = h["alpha"]
        r = st["square_avg"]
        r *= alpha
        np.multiply(g, g, out=out)
        out *= 1 - alpha
        r += out
        if h["centered"]:
            mean = st["grad_avg"]
            mean *= alpha
            np.multiply(g, 1 - alpha, out=out)
            mean += out
            np.multiply(mean, mean, out=out)
            np.subtract(r, out, out=out)
            np.sqrt(out, out=out)
        else:
            np.sqrt(r, out=out)
        out += h["eps"]
        return out

    def _update(self, w, g, h, st) -> None:
        a, b = self._buffer("a", w.size), self._buffer("b", w.size)
        lr, momentum = h["lr"], h["momentum"]
        den = self._denominator(g, h, st, a)
        np.divide(g, den, out=b)  # b = g / den
        if momentum == 0:
            b *= lr
            w -= b
            return
        v = st["momentum_buffer"]
        if not h["nesterov"]:
            v *= momentum
            v += b
            np.multiply(v, lr, out=b)
            w -= b
            return
        # Nesterov (Alg. 8.7): v_new = mu v - lr g/den; w += (1 + mu) v_new - mu v_old
        b *= -lr
        np.multiply(v, -momentum, out=a)  # a = -mu * v_old
        v *= momentum
        v += b                            # v = v_new
        w += a
        np.multiply(v, 1 + momentum, out=b)
        w += b

    def _fused_update(self, w, grad, h, st, wd) -> bool:
        if self.flat.device == "cpu":
            return False                # no CPU kernel: the NumPy path
        c, momentum, alpha = w.dtype.type, h["momentum"], h["alpha"]
        self._kernel("rmsprop")(
            w, grad, st["square_avg"], st["momentum_buffer"] if momentum > 0 else None,
            st["grad_avg"] if h["centered"] else None, c(h["lr"]), c(alpha), c(1 - alpha),
            c(h["eps"]), c(momentum), c(1 + momentum), self._wd_arg(w, wd), h["centered"],
            h["nesterov"])
        return True


class AdaDelta(Optimizer):
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
        super().__init__(params, lr, weight_decay, decay_mask, rho=rho, eps=eps)

    def _check_group(self, h: dict, where: str) -> dict:
        _check_unit(where, "rho", h["rho"])
        _check_eps(where, h["eps"])
        return {**super()._check_group(h, where), "rho": float(h["rho"]),
                "eps": float(h["eps"])}

    def _update(self, w, g, h, st) -> None:
        r, u = st["square_avg"], st["acc_delta"]
        rho, eps = h["rho"], h["eps"]
        a, b = self._buffer("a", w.size), self._buffer("b", w.size)
        r *= rho
        np.multiply(g, g, out=a)
        a *= 1 - rho
        r += a
        np.add(r, eps, out=a)
        np.sqrt(a, out=a)            # a = sqrt(r + eps)
        np.add(u, eps, out=b)
        np.sqrt(b, out=b)
        b /= a
        b *= g                       # b = delta
        u *= rho
        np.multiply(b, b, out=a)
        a *= 1 - rho
        u += a
        b *= h["lr"]
        w -= b

    def _fused_update(self, w, grad, h, st, wd) -> bool:
        if self.flat.device == "cpu":
            return False                # no CPU kernel: the NumPy path
        c, rho = w.dtype.type, h["rho"]
        self._kernel("adadelta")(w, grad, st["square_avg"], st["acc_delta"], c(h["lr"]),
                                 c(rho), c(1 - rho), c(h["eps"]), self._wd_arg(w, wd))
        return True


class Adam(Optimizer):
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
        super().__init__(params, lr, weight_decay, decay_mask, betas=betas, eps=eps)

    def _check_group(self, h: dict, where: str) -> dict:
        betas = h["betas"]
        check_hyper(where, "betas", betas, isinstance(betas, (tuple, list)) and len(betas) == 2,
                    "a pair (beta1, beta2)")
        _check_unit(where, "betas[0]", betas[0])
        _check_unit(where, "betas[1]", betas[1])
        _check_eps(where, h["eps"])
        return {**super()._check_group(h, where), "betas": (float(betas[0]), float(betas[1])),
                "eps": float(h["eps"])}

    def _adam_update(self, w, g, h, st) -> None:
        m, v = st["exp_avg"], st["exp_avg_sq"]
        beta1, beta2 = h["betas"]
        a, b = self._buffer("a", w.size), self._buffer("b", w.size)
        m *= beta1
        np.multiply(g, 1 - beta1, out=a)
        m += a
        v *= beta2
        np.multiply(g, g, out=a)
        a *= 1 - beta2
        v += a
        np.sqrt(v, out=a)
        a *= 1 / math.sqrt(1 - beta2 ** self.t)
        a += h["eps"]
        np.divide(m, a, out=b)
        b *= h["lr"] / (1 - beta1 ** self.t)
        w -= b

    _update = _adam_update

    def _adam_kernel(self, w, grad, h, st, wd: float, shrink: float) -> None:
        beta1, beta2 = h["betas"]
        c = w.dtype.type
        self._kernel("adam")(w, grad, st["exp_avg"], st["exp_avg_sq"],
                            c(h["lr"] / (1 - beta1 ** self.t)), c(beta1), c(1 - beta1), c(beta2),
                            c(1 - beta2), c(h["eps"]), c(1 / math.sqrt(1 - beta2 ** self.t)),
                            self._wd_arg(w, wd), c(shrink))

    def _fused_update(self, w, grad, h, st, wd) -> bool:
        if not self._fusable(wd):
            return False                # a decay mask on the CPU: the NumPy path
        self._adam_kernel(w, grad, h, st, wd, 1.0)
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

    def _step_part(self, w, grad, h, st, wd) -> None:
        """Shrink the weights (decoupled decay), then an Adam step on the raw gradient."""
        if np.isscalar(wd) and self.kernel == "numba":
            self._adam_kernel(w, grad, h, st, 0.0, 1 - h["lr"] * wd)  # shrink fused in the pass
        else:
            self._shrink(w, h["lr"], wd)
            self._adam_update(w, grad, h, st)

    def _shrink(self, w, lr: float, wd) -> None:
        """w <- w * (1 - lr * wd), wd a scalar or the masked vector."""
        if np.isscalar(wd):
            if wd != 0.0:
                w *= 1 - lr * wd
            return
        a = self._buffer("a", w.size)
        np.multiply(wd, -lr, out=a)
        a += 1
        w *= a
