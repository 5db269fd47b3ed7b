"""Regularizers applied after the optimizer step: L1 (proximal) and the max-norm constraint.

L2 is the optimizers' ``weight_decay``. Both classes here register themselves as
post-step hooks of an optimizer, so a training loop calling ``optimizer.step()``
applies them with no other change; the functions can also be called directly.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from mlcvlab.nn.module import Module
from mlcvlab.optim.base import Optimizer, _is_real


def soft_threshold_(x: np.ndarray, threshold) -> np.ndarray:
    """In place: x <- sign(x) * max(|x| - threshold, 0). threshold: scalar or x's shape, >= 0."""
    mag = np.abs(x)
    mag -= threshold
    np.maximum(mag, 0, out=mag)
    np.copysign(mag, x, out=x)
    return x


class L1:
    """L1 penalty lam * sum|w| applied as a proximal (soft-threshold) step.

    After each ``optimizer.step()``:  w <- sign(w) * max(|w| - lam * lr, 0),
    which is the exact proximal operator of lr * lam * |w| (ISTA), so weights
    become exactly zero instead of oscillating around it as with a subgradient.
    With adaptive optimizers lr is only the nominal step, so the threshold
    lam * lr is a heuristic there. ``use_decay_mask=True`` (default) touches only
    the entries where ``flat.decay_mask`` is True (not biases, not batch norm).
    """

    def __init__(self, optimizer: Optimizer, lam: float, use_decay_mask: bool = True):
        if not (_is_real(lam) and lam >= 0):
            raise ValueError(f"L1: lam must be a number >= 0, got lam={lam!r}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"L1: expected an mlcvlab optimizer, got {type(optimizer).__name__}")
        self.optimizer, self.lam = optimizer, float(lam)
        flat = optimizer.flat
        self._mask = flat.decay_mask.astype(flat.dtype) if use_decay_mask else None
        optimizer.register_post_step(self)

    def __call__(self) -> None:
        """Apply the soft-threshold step with the optimizer's current lr (each parameter
        group's own lr when there are several; none on parameters it does not optimize)."""
        opt = self.optimizer
        if not getattr(opt, "_whole", True):  # several groups, or not all of the buffer
            thr = np.zeros_like(opt.flat.data)
            groups = opt.param_groups
            for g, slices in zip(groups, opt._slices):
                for sl in slices:
                    thr[sl] = self.lam * g["lr"]
        else:
            thr = self.lam * opt.lr
        if self._mask is not None:
            thr = self._mask * thr
        soft_threshold_(opt.flat.data, thr)


def max_norm_(model: Module, c: float) -> int:
    """Renormalize every unit's incoming weight vector whose L2 norm exceeds c to norm c.

    Srivastava et al. 2014 (dropout paper, Sec. 5.1): ||w_unit|| <= c. A weight
    parameter (ndim >= 2) is viewed as (units, fan_in): Linear W (out, in) as is,
    conv W (F, C, kh, kw) as (F, C*kh*kw). Biases and batch-norm parameters
    (ndim 1) are left alone. Returns the number of rows rescaled.
    """
    if not (_is_real(c) and c > 0):
        raise ValueError(f"max_norm_: c must be a number > 0, got c={c!r}")
    if not isinstance(model, Module):
        raise TypeError(f"max_norm_: expected a Module, got {type(model).__name__}")
    rescaled = 0
    for _, p in model.named_parameters():
        if p.data.ndim < 2:
            continue
        rows = p.data.reshape(p.data.shape[0], -1)  # a view of the flat buffer
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
        over = norms > c
        if over.any():
            rows[over] *= (c / norms[over])[:, None].astype(rows.dtype)
            rescaled += int(over.sum())
    return rescaled


class MaxNorm:
    """The max-norm constraint as a post-step hook: ``max_norm_(model, c)`` after each step."""

    def __init__(self, model: Module, c: float, optimizer: Optional[Optimizer] = None):
        if not (_is_real(c) and c > 0):
            raise ValueError(f"MaxNorm: c must be a number > 0, got c={c!r}")
        self.model, self.c = model, float(c)
        if optimizer is not None:
            optimizer.register_post_step(self)

    def __call__(self) -> int:
        return max_norm_(self.model, self.c)
