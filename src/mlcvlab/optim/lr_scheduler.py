"""torch's spelling: ``mlcvlab.optim.lr_scheduler.StepLR`` is ``mlcvlab.optim.StepLR``, etc.

The schedules live in ``schedules.py``; this module only gives them the import path a
PyTorch user types (``from mlcvlab.optim import lr_scheduler``). ``ExponentialLR(opt,
gamma)`` is :class:`ExponentialDecay` (same arguments, same sequence); torch's
``LinearLR(opt, start_factor, total_iters=n)`` with end_factor 1 is
:class:`LinearWarmup` ``(opt, n, start_factor)``.
"""
from mlcvlab.optim.schedules import (CosineAnnealingLR, CyclicLR, ExponentialDecay, LinearWarmup,
                                      MultiStepLR, OneCycleLR, StepLR)

ExponentialLR = ExponentialDecay

__all__ = ["StepLR", "MultiStepLR", "CosineAnnealingLR", "OneCycleLR", "CyclicLR",
           "ExponentialLR", "ExponentialDecay", "LinearWarmup"]
