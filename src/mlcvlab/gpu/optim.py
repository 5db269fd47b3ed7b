"""GPU twins of the fused updates of :mod:`mlcvlab.optim.kernels` (same names, arguments and
arithmetic, in place on flat float32 device vectors), so an optimizer picks
``gpu.optim.get(name)`` instead of ``kernels.get(name)`` and keeps the rest of its step.

* ``sgd_momentum`` launches ``sgd_update_kernel`` of :mod:`mlcvlab.parallel.cuda_kernels`: it
  does the CPU kernel's arithmetic in the same order (d = g + wd·w, b = μ·b + d,
  w -= lr·(d + μ·b if nesterov else b); IEEE addition and multiplication commute, so
  ``w*wd + g`` and ``g + wd*w`` round alike). It skips the buffer when μ = 0, where the CPU
  kernel writes buf = d; SGD calls the fused kernel only for μ > 0, and so does this twin
  (μ = 0 is a ValueError).
* ``sgd`` (momentum 0, no CPU kernel: the NumPy path's w -= lr·(grad + wd·w)) launches the
  same kernel with μ = 0. With a decay mask's vector as wd, both launch ``sgd_kernel`` of
  :mod:`mlcvlab.gpu.basis_kernels` (the NumPy path's arithmetic, which the CPU optimizer runs
  for a mask).
* ``adam`` launches ``adam_kernel`` of :mod:`mlcvlab.gpu.basis_kernels`.
* ``adagrad``, ``rmsprop`` (plain, momentum, Nesterov, centered) and ``adadelta`` have no CPU
  kernel (their CPU step is the NumPy path of :mod:`mlcvlab.optim.adaptive`, a few passes);
  here each is one pass of ``adagrad_kernel`` / ``rmsprop_kernel`` / ``adadelta_kernel``,
  the NumPy path's arithmetic in its order.

``wd`` of every twin is a scalar (what the CPU
kernels take) or the flat float32 device vector of a decay mask (wd where the mask applies
decay, 0 elsewhere: the optimizer's ``_decay``), which on the CPU only the NumPy path takes:
on the device a ``decay_mask=True`` step is one pass too. Scalars are cast to float32 here
(the CPU optimizer casts them to the array dtype, which is float32 on the GPU) so that no
float64 reaches a kernel.
"""
from __future__ import annotations

import numpy as np

from mlcvlab.gpu import basis_kernels as K
from mlcvlab.parallel import cuda_kernels as PK

F32 = np.float32


def _check(fn: str, **arrays) -> int:
    n = None
    for name, a in arrays.items():
        if getattr(a, "dtype", None) != F32 or getattr(a, "ndim", None) != 1:
            raise TypeError(f"{fn}: expected {name} to be a flat float32 device vector, got "
                            f"{getattr(a, 'dtype', type(a).__name__)} "
                            f"{getattr(a, 'shape', '')}")
        if n is not None and a.shape[0] != n:
            raise ValueError(f"{fn}: {name} has {a.shape[0]} elements, expected {n}")
        n = a.shape[0]
    return n


def _decay(fn: str, wd, like):
    """(scalar wd, per-element wd vector, masked) for a kernel: a scalar wd with ``like`` (a
    vector of the launch, never read) standing in for the vector, or the decay mask's
    vector (a flat float32 device vector of like's length) with wd 0."""
    if getattr(wd, "ndim", 0) == 0:
        return F32(wd), like, False
    _check(fn, w=like, wd=wd)
    return F32(0.0), wd, True


def _state(fn: str, n: int, like, **arrays):
    """The state vectors of a launch: each checked, or ``like`` (never read or written by the
    kernel) for one the step does not keep (None)."""
    out = []
    for name, a in arrays.items():
        if a is None:
            out.append(like)
        else:
            _check(fn, w=like, **{name: a})
            out.append(a)
    return out


def sgd_momentum(w, grad, buf, lr, momentum, wd, nesterov) -> None:
    """One SGD-with-momentum step in place on w and buf (as ``optim.kernels.sgd_momentum``;
    with a decay mask's vector as wd, as the CPU optimizer's NumPy path)."""
    n = _check("sgd_momentum", w=w, grad=grad, buf=buf)
    if not momentum > 0:
        raise ValueError(f"sgd_momentum: the fused kernel is for momentum > 0, got {momentum} "
                         f"(plain SGD is w -= lr·(g + wd·w) without a buffer)")
    wd, wdv, masked = _decay("sgd_momentum", wd, grad)
    if masked:
        K.sgd_kernel[K.grid(n)](w, grad, buf, F32(lr), F32(momentum), wd, wdv, True,
                                bool(nesterov))
        return
    PK.sgd_update_kernel[K.grid(n)](w, grad, buf, F32(lr), F32(momentum), wd, bool(nesterov))


def sgd(w, grad, lr, wd) -> None:
    """Plain SGD (no momentum) in place on w: w -= lr·(grad + wd·w), the arithmetic of the CPU
    optimizer's NumPy path for momentum 0 (g = w·wd + grad, w -= g·lr), which has no fused
    kernel on the CPU; ``sgd_update_kernel`` with μ = 0 never reads or writes its buffer."""
    n = _check("sgd", w=w, grad=grad)
    # grad stands in for the buffer (never touched with μ = 0); not w: an argument passed
    # twice is two copies under the simulator, and the second would be copied back last
    wd, wdv, masked = _decay("sgd", wd, grad)
    if masked:
        K.sgd_kernel[K.grid(n)](w, grad, grad, F32(lr), F32(0.0), wd, wdv, True, False)
        return
    PK.sgd_update_kernel[K.grid(n)](w, grad, grad, F32(lr), F32(0.0), wd, False)


def adam(w, grad, m, v, step_size, beta1, one_m_beta1, beta2, one_m_beta2, eps,
         inv_bc2_sqrt, wd, shrink) -> None:
    """One Adam/AdamW step in place on w, m, v (as ``optim.kernels.adam``)."""
    n = _check("adam", w=w, grad=grad, m=m, v=v)
    wd, wdv, masked = _decay("adam", wd, grad)
    K.adam_kernel[K.grid(n)](w, grad, m, v, F32(step_size), F32(beta1), F32(one_m_beta1),
                             F32(beta2), F32(one_m_beta2), F32(eps), F32(inv_bc2_sqrt),
                             wd, F32(shrink), wdv, masked)


def adagrad(w, grad, s, clr, eps, wd) -> None:
    """One AdaGrad step in place on w and s (the sum of squares); clr is the step's learning
    rate lr/(1 + (t-1)·lr_decay)."""
    n = _check("adagrad", w=w, grad=grad, s=s)
    wd, wdv, masked = _decay("adagrad", wd, grad)
    K.adagrad_kernel[K.grid(n)](w, grad, s, F32(clr), F32(eps), wd, wdv, masked)


def rmsprop(w, grad, square_avg, momentum_buffer, grad_avg, lr, alpha, one_m_alpha, eps,
            momentum, one_p_momentum, wd, centered, nesterov) -> None:
    """One RMSProp step in place on w and the state: ``momentum_buffer`` None when momentum
    is 0, ``grad_avg`` None unless centered (the optimizer keeps neither then)."""
    n = _check("rmsprop", w=w, grad=grad, square_avg=square_avg)
    if (momentum_buffer is None) != (not momentum > 0) or (grad_avg is None) == bool(centered):
        raise ValueError(f"rmsprop: momentum_buffer is needed exactly when momentum > 0 (got "
                         f"momentum {momentum}) and grad_avg exactly when centered (got "
                         f"{centered})")
    if nesterov and not momentum > 0:
        raise ValueError("rmsprop: Nesterov needs momentum > 0")
    v, mean = _state("rmsprop", n, grad, momentum_buffer=momentum_buffer, grad_avg=grad_avg)
    wd, wdv, masked = _decay("rmsprop", wd, grad)
    K.rmsprop_kernel[K.grid(n)](w, grad, square_avg, v, mean, F32(lr), F32(alpha),
                                F32(one_m_alpha), F32(eps), F32(momentum),
                                F32(one_p_momentum), wd, wdv, masked, bool(centered),
                                bool(nesterov))


def adadelta(w, grad, square_avg, acc_delta, lr, rho, one_m_rho, eps, wd) -> None:
    """One AdaDelta step in place on w, square_avg (r) and acc_delta (u)."""
    n = _check("adadelta", w=w, grad=grad, square_avg=square_avg, acc_delta=acc_delta)
    wd, wdv, masked = _decay("adadelta", wd, grad)
    K.adadelta_kernel[K.grid(n)](w, grad, square_avg, acc_delta, F32(lr), F32(rho),
                                 F32(one_m_rho), F32(eps), wd, wdv, masked)


_KERNELS = {"sgd_momentum": sgd_momentum, "sgd": sgd, "adam": adam, "adagrad": adagrad,
            "rmsprop": rmsprop, "adadelta": adadelta}


def available() -> bool:
    """True: the twins need only numba.cuda, which the GPU path has already checked."""
    return True


def get(name: str):
    """The GPU update ``name``: "sgd_momentum" or "adam" (the names of optim.kernels), or
    "sgd", "adagrad", "rmsprop", "adadelta" (on the CPU a NumPy path, here one kernel too)."""
    try:
        return _KERNELS[name]
    except KeyError:
        raise ValueError(f"gpu.optim.get: no GPU update {name!r}; choose from "
                         f"{sorted(_KERNELS)}") from None
