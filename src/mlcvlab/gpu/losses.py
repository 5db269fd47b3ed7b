"""GPU twin of the common case of :class:`mlcvlab.nn.losses.CrossEntropyLoss`: logits (N, K),
integer class labels (N,), no class weights, no label smoothing, reduction "mean" or "sum".

The definition is the CPU's (``CrossEntropyLoss._plain``): per row, with z = logits - max,
loss_i = log(sum exp(z)) - z[t_i]; "mean" divides the summed losses by the number of rows whose
label is not ``ignore_index`` (nan when there is none, with a zero gradient, as torch), "sum"
does not divide; dlogits = softmax·g - onehot·g with g = 1/count ("mean") or 1 ("sum"), 0 on
ignored rows. Three launches: a row kernel (loss, softmax, kept flag), a one-block reduction
(the loss and the gradient's factor, both left on the device), an element-wise gradient.
No host round trip: the loss comes back as a 0-d device array.

What the CPU loss checks on values (NaN or inf logits, labels out of range) would need a host
round trip here; the kernels make such rows nan instead (a label outside [0, K) gives a nan
loss and a nan gradient row), and the caller checks labels on the host before upload.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from mlcvlab.gpu import basis_kernels as K
from mlcvlab.gpu import device

F32 = np.float32
USE_CPU = "use device 'cpu' for this loss"
REDUCTIONS = ("mean", "sum")


def cross_entropy(logits, target, reduction: str = "mean", ignore_index: int = -100):
    """(loss, dlogits): the softmax cross-entropy of ``logits`` (N, K) float32 against the
    class indices ``target`` (N,) (integer device array), as the CPU CrossEntropyLoss with
    ``reduction`` "mean" or "sum" and ``ignore_index``. loss: a 0-d float32 device array;
    dlogits: (N, K) float32, the gradient of that loss (dy = 1)."""
    xp = device.array_module()
    if reduction == "none":
        raise NotImplementedError("cross_entropy: reduction='none' is not on the GPU (the "
                                  f"per-sample losses need a backward with dy); {USE_CPU}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be one of {REDUCTIONS + ('none',)}, "
                         f"got {reduction!r}")
    if getattr(logits, "dtype", None) != F32:
        raise TypeError(f"cross_entropy: expected float32 logits (N, K) on the device, got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)}")
    if logits.ndim != 2:
        raise NotImplementedError(f"cross_entropy: the GPU takes logits (N, K), got shape "
                                  f"{tuple(logits.shape)} ((C,) and (N, C, d1, ...) are "
                                  f"CPU-only); {USE_CPU}")
    N, C = logits.shape
    tdtype = getattr(target, "dtype", None)
    if tdtype is None or not np.issubdtype(np.dtype(tdtype), np.integer):
        raise NotImplementedError(f"cross_entropy: the GPU takes integer class labels (N,), got "
                                  f"{tdtype if tdtype is not None else type(target).__name__} "
                                  f"(class probabilities are CPU-only); {USE_CPU}")
    if tuple(target.shape) != (N,):
        raise ValueError(f"cross_entropy: expected target of shape ({N},) with class indices "
                         f"(logits {tuple(logits.shape)}), got {tuple(target.shape)}")
    if C == 0:
        raise ValueError(f"cross_entropy: logits have no classes (shape {tuple(logits.shape)})")
    t = xp.ascontiguousarray(target).astype(np.int64, copy=False)
    z = xp.ascontiguousarray(logits)
    dlogits = xp.empty((N, C), dtype=F32)
    losses, kept = xp.empty(N, dtype=F32), xp.empty(N, dtype=F32)
    out, scale = xp.empty(1, dtype=F32), xp.empty(1, dtype=F32)
    if N:
        K.ce_rows_kernel[K.grid(N)](z, t, np.int64(ignore_index), dlogits, losses, kept)
    K.ce_reduce_kernel[1, K.BLOCK](losses, kept, reduction == "mean", out, scale)
    if N:
        K.ce_grad_kernel[K.grid(N * C)](dlogits, t, kept, scale)
    return out.reshape(()), dlogits


def unsupported(loss) -> Optional[str]:
    """Why ``loss`` cannot run on the GPU (one line), or None for a CrossEntropyLoss that
    :func:`cross_entropy` computes. The shapes (logits (N, K), labels (N,)) are checked at the
    call."""
    name = type(loss).__name__
    if name != "CrossEntropyLoss":
        return f"{name}: no GPU twin (mlcvlab.gpu.losses has CrossEntropyLoss only)"
    if getattr(loss, "weight", None) is not None:
        return "CrossEntropyLoss: class weights are not on the GPU"
    if getattr(loss, "label_smoothing", 0.0):
        return "CrossEntropyLoss: label_smoothing is not on the GPU"
    if getattr(loss, "from_probs", False):
        return "CrossEntropyLoss: from_probs=True is not on the GPU"
    if getattr(loss, "reduction", "mean") not in REDUCTIONS:
        return f"CrossEntropyLoss: reduction={loss.reduction!r} is not on the GPU"
    return None


def check_loss(loss) -> None:
    """NotImplementedError naming the option when ``unsupported(loss)`` has a reason."""
    why = unsupported(loss)
    if why is not None:
        raise NotImplementedError(f"{why}; {USE_CPU}")


__all__ = ["cross_entropy", "unsupported", "check_loss"]
