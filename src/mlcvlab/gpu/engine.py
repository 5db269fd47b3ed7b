"""Which models run on the GPU: the check :meth:`mlcvlab.nn.Module.to` makes before moving.

A layer runs on "cuda" when the class that defines its ``forward`` is one whose math has a
GPU twin (:mod:`mlcvlab.gpu.basis`, :mod:`mlcvlab.gpu.conv`) and its options are ones the
twin supports (each twin module's ``unsupported(layer)`` says why not), or when it is a
container whose own forward only routes arrays (Sequential, Residual, Concat,
ZeroPadShortcut, NN4). A subclass that overrides ``forward`` has no twin until it declares
one: it is refused by name, not run on the CPU half-way. It declares one by setting
``runs_on_gpu = True`` in the body of the class that defines its ``forward``, which says that
its forward and backward compute through the GPU twins and device-array arithmetic only (the
optimizers lab's non-inverted dropout draws the library's masks with
``gpu.basis.dropout_mask``). Every reason is collected, so one error lists all that stops a
model.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np


def _forward_owner(layer) -> type:
    return next(c for c in type(layer).__mro__ if "forward" in c.__dict__)


def _twins():
    """{class that defines forward: the twin module (or None for a pure container)}."""
    from mlcvlab import nn
    from mlcvlab.models import NN4, blocks
    from mlcvlab.nn import modules
    basis_layers = (nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Flatten,
                    nn.Identity, nn.LeakyReLU, nn.Softmax, modules._Activation,
                    modules._BatchNorm)
    conv_layers = (nn.Conv2d, modules._Pool2d, modules._AdaptivePool2d, nn.GlobalAvgPool2d)
    containers = (nn.Sequential, blocks.Residual, blocks.Concat, blocks.ZeroPadShortcut, NN4)
    twins = {c: "basis" for c in basis_layers}
    twins.update({c: "conv" for c in conv_layers})
    twins.update({c: None for c in containers})
    return twins


def reason(layer) -> Optional[str]:
    """Why ``layer`` (its own forward, not its children) cannot run on "cuda", or None."""
    owner = _forward_owner(layer)
    twins = _twins()
    if owner.__dict__.get("runs_on_gpu") is True:
        return None                     # declared by the class whose forward runs
    if owner not in twins:
        return (f"{type(layer).__name__} has no GPU twin (its forward is "
                f"{owner.__module__}.{owner.__name__}.forward)")
    if twins[owner] is None:
        return None
    from mlcvlab.gpu import basis, conv
    return (basis if twins[owner] == "basis" else conv).unsupported(layer)


def check_model(model) -> None:
    """Raise, before anything moves, when ``model`` cannot run on "cuda": a RuntimeError
    without a GPU (or the simulator), a TypeError for a float64 model (the kernels are
    float32), a NotImplementedError listing every layer without a GPU twin."""
    from mlcvlab.gpu import device
    device.array_module()                   # no GPU, no CuPy: the clear error, first
    params = model.parameters()
    if params and params[0].dtype != np.float32:
        raise TypeError(f"{type(model).__name__}.to('cuda'): the GPU kernels compute in "
                        f"float32, the model is {params[0].dtype}; use model.astype(np.float32) "
                        f"first (float64 gradient checks run on the CPU)")
    problems: List[str] = []
    for name, m in model.named_modules():
        why = reason(m)
        if why:
            problems.append(f"{name or type(m).__name__}: {why}")
    if problems:
        raise NotImplementedError(
            f"{type(model).__name__}.to('cuda'): {len(problems)} layer(s) cannot run on the "
            f"GPU: " + "; ".join(problems) + ". Use device 'cpu' for this model")
