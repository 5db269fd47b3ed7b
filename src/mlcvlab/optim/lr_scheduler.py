"""torch's spelling: ``mlcvlab.optim.lr_scheduler.StepLR`` is ``mlcvlab.optim.StepLR``, etc.

The schedules live in ``schedules.py``; this module only gives them the import path a
PyTorch user types (``from mlcvlab.optim import lr_scheduler``). ``ExponentialLR`` is
:class:`ExponentialDecay` and ``LinearLR(opt, start_factor, total_iters)`` is
:class:`LinearWarmup` (same sequences, see their docstrings).
"""
from mlcvlab.optim.schedules import (CosineAnnealingLR, CyclicLR, ExponentialDecay, LinearWarmup,
                                      MultiStepLR, OneCycleLR, StepLR)

__all__ = ["StepLR", "MultiStepLR", "CosineAnnealingLR", "OneCycleLR", "CyclicLR",
           "ExponentialDecay", "LinearWarmup"]
