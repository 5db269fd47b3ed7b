"""Optimizers, learning-rate and batch-size schedules, regularizers and range tests.

Every optimizer keeps the model's parameters in one flat buffer and updates it
with a few whole-vector NumPy calls (see ``base.py``), and takes torch-style
parameter groups. ``OPTIMIZERS`` / ``build(name, params)`` give them by name
(``registry.py``); ``StepLR``, ``MultiStepLR``, ``CosineAnnealingLR`` and
``OneCycleLR`` are torch's schedulers (``schedules.py``).
"""
from mlcvlab.optim.accumulate import GradientAccumulator, accumulate_gradients
from mlcvlab.optim.adaptive import AdaDelta, AdaGrad, Adam, AdamW, RMSProp
from mlcvlab.optim.base import Optimizer
from mlcvlab.optim.lr_finder import (BatchSizeRangeResult, LRRangeResult, batch_size_range_test,
                                     lr_range_test)
from mlcvlab.optim.registry import OPTIMIZERS, build, canonical_name, default_lr
from mlcvlab.optim.regularizers import L1, MaxNorm, max_norm_, soft_threshold_
from mlcvlab.optim.schedules import (CosineAnnealingLR, CyclicBatchSize, CyclicLR, ExponentialDecay,
                                      LinearWarmup, MultiStepLR, OneCycleLR, StepLR)
from mlcvlab.optim.sgd import SGD

__all__ = [
    "OPTIMIZERS", "build", "canonical_name", "default_lr",
    "Optimizer", "SGD", "AdaGrad", "RMSProp", "AdaDelta", "Adam", "AdamW",
    "ExponentialDecay", "CyclicLR", "CyclicBatchSize", "LinearWarmup",
    "StepLR", "MultiStepLR", "CosineAnnealingLR", "OneCycleLR",
    "L1", "MaxNorm", "max_norm_", "soft_threshold_",
    "accumulate_gradients", "GradientAccumulator",
    "lr_range_test", "batch_size_range_test", "LRRangeResult", "BatchSizeRangeResult",
]
