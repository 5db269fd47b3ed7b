"""One-pass numba kernels for the update rules where NumPy's several passes lose to torch.

A NumPy update of SGD-with-momentum or Adam is 6-10 element-wise passes over
the flat vector; these loops do the same arithmetic, in the same order and
dtype (scalars are cast to the array dtype by the caller), in one pass. They
are used when numba is importable and weight decay is a scalar (no decay
mask); ``tests/optim`` checks them against the NumPy path. numba is imported
lazily, on the first step, so importing mlcvlab stays fast.
"""
from __future__ import annotations

import numpy as np

_KERNELS = None


def _compile():
    from numba import njit

    # error_model="numpy": a float division by zero gives inf/nan as in NumPy instead of a
    # Python ZeroDivisionError check per element, which would also stop LLVM vectorizing the
    # loop (the Adam kernel is ~12x slower with the check).

    @njit(cache=True, nogil=True, error_model="numpy")
    def sgd_momentum(w, grad, buf, lr, momentum, wd, nesterov):  # pragma: no cover (jitted)
        for i in range(w.size):
            g = w[i] * wd + grad[i]
            b = buf[i] * momentum + g
            buf[i] = b
            if nesterov:
                w[i] -= (b * momentum + g) * lr
            else:
                w[i] -= b * lr

    @njit(cache=True, nogil=True, error_model="numpy")
    def adam(w, grad, m, v, step_size, beta1, one_m_beta1, beta2, one_m_beta2, eps,
             inv_bc2_sqrt, wd, shrink):  # pragma: no cover (jitted)
        for i in range(w.size):
            wi = w[i] * shrink
            g = wi * wd + grad[i]
            mi = m[i] * beta1 + g * one_m_beta1
            vi = v[i] * beta2 + (g * g) * one_m_beta2
            m[i] = mi
            v[i] = vi
            w[i] = wi - (mi / (np.sqrt(vi) * inv_bc2_sqrt + eps)) * step_size

    return {"sgd_momentum": sgd_momentum, "adam": adam}


def available() -> bool:
    """True when numba can be imported (the kernels compile on first use)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def get(name: str):
    """The compiled kernel ``name`` ("sgd_momentum" or "adam")."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _compile()
    return _KERNELS[name]
