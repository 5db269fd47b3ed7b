"""Gradient checking shared by every test: float64 central differences on a
random projection of the output, compared with the analytic backward.

The scalar checked is L = sum(R * f(x)) for a fixed random R, so dL/dy = R and
one backward call gives the analytic gradient of every input and parameter.
Randomness inside the function (dropout masks) is frozen by restoring every
module generator's state before each forward.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np


def _check_indices(size: int, max_checks: Optional[int], rng: np.random.Generator) -> np.ndarray:
    if max_checks is None or size <= max_checks:
        return np.arange(size)
    return rng.choice(size, max_checks, replace=False)


def numerical_gradient(f: Callable[[], float], x: np.ndarray, indices: Sequence[int],
                       eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f()`` w.r.t. ``x.flat[indices]`` (x perturbed in
    place).
    """
    flat = x.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError("numerical_gradient: x must be contiguous so it can be perturbed in place")
    out = np.empty(len(indices))
    for k, i in enumerate(indices):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        out[k] = (fp - fm) / (2 * eps)
    return out


def assert_close_grad(name: str, analytic: np.ndarray, numeric: np.ndarray, indices,
                      rtol: float, atol: float) -> None:
    """Raise AssertionError naming the array, the worst index and both values."""
    a = np.asarray(analytic, dtype=np.float64).reshape(-1)[indices]
    err = np.abs(a - numeric)
    tol = atol + rtol * np.abs(numeric)
    if np.any(err > tol):
        k = int(np.argmax(err - tol))
        raise AssertionError(
            f"gradient of {name} wrong at flat index {int(np.asarray(indices)[k])}: "
            f"analytic {a[k]:.10g}, numeric {numeric[k]:.10g} "
            f"(|diff| {err[k]:.3g}, tol {tol[k]:.3g})"
        )


def _frozen_generators(module) -> List:
    """Every random state of the module's layers with its current value, so that each forward
    of a check can draw the same masks: NumPy generators (``rng``) and integer buffers
    (a Dropout's ``mask_step``, the counter its masks are keyed by)."""
    states = []
    for m in module.modules():
        g = getattr(m, "rng", None)
        if isinstance(g, np.random.Generator):
            states.append((g, g.bit_generator.state))
        for name in m._buffers:
            b = getattr(m, name)
            if isinstance(b, np.ndarray) and np.issubdtype(b.dtype, np.integer):
                states.append((b, b.copy()))
    return states


def _restore(states: List) -> None:
    for obj, state in states:
        if isinstance(obj, np.ndarray):
            obj[...] = state
        else:
            obj.bit_generator.state = state


def gradcheck_module(module, x: np.ndarray, seed: int = 0, eps: float = 1e-6, rtol: float = 1e-5,
                     atol: float = 1e-7, max_checks: Optional[int] = 40,
                     check_input: bool = True) -> Dict[str, float]:
    """Check ``module.backward`` against central differences in float64 (train mode).

    x: the input batch (converted to float64). Checks dx (unless
    ``check_input=False``) and every parameter's gradient on up to
    ``max_checks`` random entries each. Returns the max abs error per array.
    """
    rng = np.random.default_rng(seed)
    module.astype(np.float64).train()
    x = np.array(x, dtype=np.float64)
    gens = _frozen_generators(module)

    def forward():
        _restore(gens)
        return module.forward(x)

    y = forward()
    R = rng.standard_normal(y.shape)
    module.zero_grad()
    y = forward()
    dx = module.backward(R.copy())

    def loss() -> float:
        return float(np.sum(R * forward()))

    worst = {}
    arrays = [("input", x, dx)] if check_input else []
    arrays += [(name, p.data, p.grad.copy()) for name, p in module.named_parameters()]
    for name, arr, analytic in arrays:
        idx = _check_indices(arr.size, max_checks, rng)
        numeric = numerical_gradient(loss, arr, idx, eps)
        assert_close_grad(f"{type(module).__name__} {name}", analytic, numeric, idx, rtol, atol)
        worst[name] = float(np.max(np.abs(np.asarray(analytic).reshape(-1)[idx] - numeric)))
    return worst


def gradcheck_function(forward: Callable, backward: Callable, inputs: Sequence[np.ndarray],
                       seed: int = 0, eps: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-7,
                       max_checks: Optional[int] = 40, names: Optional[Sequence[str]] = None):
    """Check a basis pair: ``forward(*inputs) -> (y, cache)``, ``backward(dy, cache) -> grads``.

    ``grads`` are in the order of ``inputs`` (a single array when there is one input).
    """
    rng = np.random.default_rng(seed)
    inputs = [np.array(a, dtype=np.float64) for a in inputs]
    names = list(names) if names else [f"input {i}" for i in range(len(inputs))]
    y, cache = forward(*inputs)
    R = rng.standard_normal(np.shape(y))
    grads = backward(R.copy(), cache)
    if not isinstance(grads, tuple):
        grads = (grads,)

    def loss() -> float:
        return float(np.sum(R * forward(*inputs)[0]))

    for name, arr, analytic in zip(names, inputs, grads):
        if analytic is None:
            continue
        idx = _check_indices(arr.size, max_checks, rng)
        numeric = numerical_gradient(loss, arr, idx, eps)
        assert_close_grad(f"{getattr(forward, '__name__', 'function')} {name}", analytic, numeric,
                          idx, rtol, atol)


def gradcheck_loss(loss_obj, pred: np.ndarray, target: np.ndarray, eps: float = 1e-6,
                   rtol: float = 1e-5, atol: float = 1e-8) -> None:
    """Check ``loss.backward()`` against central differences of ``loss(pred, target)``."""
    pred = np.array(pred, dtype=np.float64)
    loss_obj(pred, target)
    analytic = loss_obj.backward().copy()
    idx = np.arange(pred.size)
    numeric = numerical_gradient(lambda: loss_obj(pred, target), pred, idx, eps)
    assert_close_grad(type(loss_obj).__name__, analytic, numeric, idx, rtol, atol)
