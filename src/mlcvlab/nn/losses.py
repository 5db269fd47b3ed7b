"""Losses: ``loss(pred, target)`` then ``loss.backward()``, as PyTorch's ``torch.nn`` losses.

``reduction`` (every loss, as torch):

* ``"mean"`` (default): ``loss(pred, target)`` returns a float, the mean of the per-element
  losses (for cross-entropy and NLL with class ``weight``: the weighted mean, divided by the
  summed weights of the targets that are not ``ignore_index``, as torch);
  ``loss.backward()`` returns dL/dpred, an array of pred's shape and dtype.
* ``"sum"``: a float, the sum; ``backward()`` as above.
* ``"none"``: an array of the per-element losses (cross-entropy and NLL: one per sample and
  position, pred's shape without the class axis; the others: pred's shape).
  ``backward(dy=None)`` returns the gradient of ``sum(dy * losses)`` with respect to pred;
  without ``dy``, of the plain sum (dy = 1 everywhere).

``backward(dy)`` also takes an upstream scalar for "mean" and "sum" (the gradient is scaled by
it; default 1). Inputs are validated (shape, dtype, label range, NaN) with errors that name the
loss and what was wrong.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import numpy as np

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(name: str, reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_weight(name: str, arg: str, weight) -> Optional[np.ndarray]:
    if weight is None:
        return None
    w = np.asarray(weight)
    if not np.issubdtype(w.dtype, np.floating) and not np.issubdtype(w.dtype, np.integer):
        raise TypeError(f"{name}: expected {arg} to be a numeric array, got dtype {w.dtype}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name}: {arg} contains NaN or inf")
    return w


class Loss:
    """Base class: keeps what backward needs from the last call.

    A loss implements ``_compute(pred, target) -> (losses, grad_of, denominator)``: the
    per-element losses (the "none" output), a function that maps an upstream gradient of the
    losses' shape to dL/dpred, and the denominator of the "mean" reduction.
    """

    def __init__(self, reduction: str = "mean"):
        self.reduction = _check_reduction(type(self).__name__, reduction)
        self._grad = None
        self._grad_of: Optional[Callable] = None
        self._shape = None
        self.device = "cpu"

    def to(self, device) -> "Loss":
        """Compute on ``device`` ("cpu" or "cuda", as the model), as torch's ``loss.to``:
        on "cuda" ``pred`` is a device array and the gradient stays on the device; only the
        loss value comes to the host (the step's one synchronisation). A loss or an option
        without a GPU twin is a NotImplementedError here, before training starts."""
        from mlcvlab.gpu.device import check_device
        device = check_device(device)
        if device == "cuda":
            from mlcvlab.gpu import losses as gpu_losses
            gpu_losses.check_loss(self)
        self.device = device
        return self

    def __call__(self, pred, target):
        name = type(self).__name__
        if getattr(self, "device", "cpu") != "cpu":
            return self._call_on_device(pred, target)
        if not isinstance(pred, np.ndarray) or pred.dtype.kind != "f":
            raise TypeError(f"{name}: expected pred to be a floating numpy array, got "
                            f"{getattr(pred, 'dtype', type(pred).__name__)}")
        if not np.all(np.isfinite(pred)):
            raise ValueError(f"{name}: pred contains NaN or inf (the model diverged or the input "
                             "has NaN); lower the learning rate or check the data")
        target = np.asarray(target)
        losses, grad_of, denominator = self._compute(pred, target)
        losses = np.asarray(losses)
        self._grad, self._grad_of, self._shape = None, grad_of, losses.shape
        self._dtype = pred.dtype
        if self.reduction == "none":
            return losses.astype(pred.dtype, copy=False)
        if self.reduction == "sum":
            self._grad = grad_of(np.ones(losses.shape, dtype=pred.dtype))
            return float(np.sum(losses))
        if denominator == 0:                # e.g. every target ignored: nan, as torch
            self._grad = np.zeros(pred.shape, dtype=pred.dtype)
            return float("nan")
        self._grad = grad_of(np.full(losses.shape, 1.0 / denominator, dtype=pred.dtype))
        return float(np.sum(losses) / denominator)

    def _call_on_device(self, pred, target) -> float:
        """The loss of device logits ``pred`` (N, C) and class indices ``target`` (N,) by the
        GPU twin (:func:`mlcvlab.gpu.losses.cross_entropy`); the labels are checked on the
        host first (they come from the host batch), the gradient kept for backward."""
        from mlcvlab.gpu import device as gpu_device
        from mlcvlab.gpu import losses as gpu_losses
        name = type(self).__name__
        if not hasattr(pred, "dtype") or pred.dtype != np.float32 or pred.ndim != 2:
            raise TypeError(f"{name} on cuda: expected float32 logits of shape (N, C) on the "
                            f"device, got {getattr(pred, 'dtype', type(pred).__name__)} "
                            f"{getattr(pred, 'shape', '')}")
        t = gpu_device.to_host(target) if not isinstance(target, np.ndarray) \
            and hasattr(target, "__cuda_array_interface__") else np.asarray(target)
        if not np.issubdtype(t.dtype, np.integer) or t.shape != pred.shape[:1]:
            raise ValueError(f"{name} on cuda: expected integer class labels of shape "
                             f"{pred.shape[:1]}, got dtype {t.dtype} and shape {t.shape}")
        ignore = getattr(self, "ignore_index", -100)
        kept = t[t != ignore]
        if kept.size and (kept.min() < 0 or kept.max() >= pred.shape[1]):
            raise ValueError(f"{name}: labels must be in [0, {pred.shape[1]}), got range "
                             f"[{kept.min()}, {kept.max()}]")
        loss, grad = gpu_losses.cross_entropy(pred, gpu_device.to_device(t.astype(np.int64)),
                                              self.reduction, ignore)
        value = float(loss)                 # the one device -> host transfer of the step
        if not math.isfinite(value) and kept.size:   # every label ignored: nan, as the CPU
            raise ValueError(f"{name}: the loss is {value}: pred contains NaN or inf (the model "
                             "diverged or the input has NaN); lower the learning rate or check "
                             "the data")
        self._grad, self._grad_of, self._shape = grad, (lambda g: g), ()
        self._dtype = pred.dtype
        return value

    def backward(self, dy=None) -> np.ndarray:
        """dL/dpred of the last call, same shape and dtype as pred (see the module docstring
        for ``dy``)."""
        name = type(self).__name__
        if self._grad_of is None:
            raise RuntimeError(f"{name}.backward called before the loss was computed")
        if self.reduction == "none":
            if dy is None:
                dy = np.ones(self._shape, dtype=self._dtype)
            if not isinstance(dy, np.ndarray) or dy.shape != self._shape:
                got = dy.shape if isinstance(dy, np.ndarray) else type(dy).__name__
                raise ValueError(f"{name}.backward: with reduction='none' expected dy of the "
                                 f"losses' shape {self._shape}, got {got}")
            return self._grad_of(dy).astype(self._dtype, copy=False)
        if dy is None:
            return self._grad
        if np.ndim(dy) != 0:
            raise ValueError(f"{name}.backward: with reduction={self.reduction!r} expected a "
                             f"scalar dy, got shape {np.shape(dy)}")
        return (self._grad * float(dy)).astype(self._dtype, copy=False)

    def _compute(self, pred, target):
        """(losses, grad_of, denominator) of a validated pred; Loss is abstract."""
        raise NotImplementedError(f"{type(self).__name__}._compute: Loss is abstract")

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def _check_same_shape(name, pred, target):
    if target.shape != pred.shape:
        raise ValueError(f"{name}: expected target of shape {pred.shape} (same as pred), "
                         f"got {target.shape}")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax over the last axis."""
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class _ClassLoss(Loss):
    """The shared core of CrossEntropyLoss and NLLLoss: a loss of log-probabilities ``logp``
    with the class axis at 1 (axis 0 for an unbatched (C,) input):

    per element i: l_i = -sum_c A[i, c] logp[i, c], with, for class-index targets t,
    A[i, c] = (1 - eps) w[t_i] [c = t_i] + (eps / C) w[c] (0 where t_i == ignore_index), the
    "mean" dividing by the summed w[t_i] of the targets not ignored; for class-probability
    targets P, A[i, c] = ((1 - eps) P[i, c] + eps / C) w[c], "mean" dividing by the number of
    elements (torch's cross_entropy, label smoothing eps, class weights w).
    """

    _probabilities_allowed = True
    _plain_logits = False           # CrossEntropyLoss on logits: the fast path of the common case

    def __init__(self, weight=None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0):
        super().__init__(reduction)
        name = type(self).__name__
        self.weight = _check_weight(name, "weight", weight)
        if self.weight is not None and self.weight.ndim != 1:
            raise ValueError(f"{name}: expected weight of shape (C,), one per class, "
                             f"got {self.weight.shape}")
        if not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, bool):
            raise TypeError(f"{name}: ignore_index must be an int, got {ignore_index!r}")
        self.ignore_index = int(ignore_index)
        if not isinstance(label_smoothing, (int, float, np.floating, np.integer)) \
                or not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"{name}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def _log_probs(self, pred):
        """(logp, chain): log-probabilities with the class axis last, and the map from
        dL/dlogp to dL/dpred (class axis last too)."""
        raise NotImplementedError

    def _compute(self, pred, target):
        if (self._plain_logits and not getattr(self, "_warned_probs", False)
                and _looks_like_probabilities(pred)):
            self._warned_probs = True
            warnings.warn("CrossEntropyLoss got inputs that look like probabilities (in [0, 1], "
                          "each row summing to 1): it expects logits and applies its own "
                          "softmax, so a model with a softmax head gets softmax twice. Remove "
                          "the head's softmax, or use CrossEntropyLoss(from_probs=True) (or the "
                          "model's own loss_fn())", stacklevel=3)
        name = type(self).__name__
        if pred.ndim < 1:
            raise ValueError(f"{name}: expected pred of shape (N, C, ...) or (C,), "
                             f"got {pred.shape}")
        axis = 1 if pred.ndim >= 2 else 0
        C = pred.shape[axis]
        w = self.weight
        if w is not None and w.shape != (C,):
            raise ValueError(f"{name}: weight has {w.shape[0]} entries but pred has {C} classes "
                             f"(pred {pred.shape})")
        w = np.ones(C, dtype=pred.dtype) if w is None else w.astype(pred.dtype)
        eps = self.label_smoothing
        x = np.moveaxis(pred, axis, -1)                  # (..., C)
        probabilities = (np.issubdtype(target.dtype, np.floating) and target.shape == pred.shape)
        if probabilities:
            if not self._probabilities_allowed:
                raise TypeError(f"{name}: expected integer class labels, got dtype {target.dtype}")
            if not np.all(np.isfinite(target)):
                raise ValueError(f"{name}: target probabilities contain NaN or inf")
            P = np.moveaxis(target.astype(pred.dtype), axis, -1)
            if eps:
                P = P * (1 - eps) + eps / C
            A = P * w
            denominator = x.size // C if C else 0
        else:
            want = pred.shape[:axis] + pred.shape[axis + 1:]
            if not np.issubdtype(target.dtype, np.integer):
                raise TypeError(f"{name}: expected integer class labels of shape {want} (or, for "
                                f"class probabilities, floats of pred's shape {pred.shape}), got "
                                f"dtype {target.dtype} and shape {target.shape}")
            if target.shape != want:
                raise ValueError(f"{name}: expected target of shape {want} with class indices "
                                 f"(pred {pred.shape}), got {target.shape}")
            keep = target != self.ignore_index
            t = np.where(keep, target, 0)
            if t.size and (t.min() < 0 or t.max() >= C):
                bad = target[keep]
                raise ValueError(f"{name}: labels must be in [0, {C}), got range "
                                 f"[{bad.min()}, {bad.max()}]")
            if self.weight is None and not eps and pred.ndim == 2 and self._plain_logits:
                return self._plain(pred, t, keep)
            A = np.zeros(x.shape, dtype=pred.dtype)
            np.put_along_axis(A, t[..., None], (w[t] * (1 - eps))[..., None], axis=-1)
            if eps:
                A += (eps / C) * w
            A *= keep[..., None]
            denominator = float(np.sum(w[t] * keep))
        logp, chain = self._log_probs(x)
        losses = -np.sum(A * logp, axis=-1)

        def grad_of(g):                                  # g: the losses' shape
            return np.moveaxis(chain(-g[..., None] * A), -1, axis)

        return losses, grad_of, denominator


class CrossEntropyLoss(_ClassLoss):
    """Softmax cross-entropy, as ``torch.nn.CrossEntropyLoss``.

    pred: logits (N, C), (N, C, d1, ...) or unbatched (C,) (probabilities instead with
    ``from_probs=True``, for models whose head is a softmax). target: class indices of pred's
    shape without the class axis (ints; ``ignore_index`` marks positions that count for
    nothing), or class probabilities of pred's shape (floats). ``weight``: (C,) class weights;
    ``label_smoothing`` in [0, 1] mixes the target with the uniform distribution.
    """

    def __init__(self, weight=None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0, from_probs: bool = False):
        super().__init__(weight, ignore_index, reduction, label_smoothing)
        self.from_probs = bool(from_probs)

    @property
    def _plain_logits(self):
        return not self.from_probs

    @staticmethod
    def _plain(pred, t, keep):
        """The common case (logits (N, C), class indices, no weight, no smoothing) without the
        (N, C) coefficient matrix: (losses, grad_of, denominator) as :meth:`_compute`."""
        rows = np.arange(pred.shape[0])
        z = pred - pred.max(axis=1, keepdims=True)
        logsumexp = np.log(np.exp(z).sum(axis=1))
        all_kept = bool(keep.all())
        losses = logsumexp - z[rows, t]
        if not all_kept:
            losses = losses * keep
        soft = np.exp(z - logsumexp[:, None])

        def grad_of(g):
            if not all_kept:
                g = g * keep
            grad = soft * g[:, None]
            grad[rows, t] -= g
            return grad.astype(pred.dtype, copy=False)

        return losses, grad_of, float(keep.sum())

    def _log_probs(self, x):
        if self.from_probs:
            p = np.maximum(x, np.finfo(x.dtype).tiny)
            return np.log(p), lambda G: G / p
        logp = _log_softmax(x)
        soft = np.exp(logp)
        return logp, lambda G: G - soft * G.sum(axis=-1, keepdims=True)


def _looks_like_probabilities(x: np.ndarray) -> bool:
    """(N, C) with C > 1 and N > 1, every value in [0, 1], every row summing to 1."""
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        return False
    if x.min() < 0 or x.max() > 1:
        return False
    return bool(np.allclose(x.sum(axis=1), 1.0, atol=1e-4))


class NLLLoss(_ClassLoss):
    """Negative log-likelihood of log-probabilities, as ``torch.nn.NLLLoss``: pred (N, C),
    (N, C, d1, ...) or (C,) log-probabilities (e.g. a log-softmax); target class indices.
    ``weight`` and ``ignore_index`` as in :class:`CrossEntropyLoss`."""

    _probabilities_allowed = False

    def __init__(self, weight=None, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(weight, ignore_index, reduction, 0.0)

    def _log_probs(self, x):
        return x, lambda G: G


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy on logits, as ``torch.nn.BCEWithLogitsLoss``.

    pred: any shape; target: same shape, values in [0, 1]. ``weight``: broadcast to pred's
    shape, multiplies each element's loss; ``pos_weight``: broadcast along the last axis (one per
    class), multiplies the positive term: l = -w [pw t log s(x) + (1 - t) log(1 - s(x))].
    """

    def __init__(self, weight=None, reduction: str = "mean", pos_weight=None):
        super().__init__(reduction)
        self.weight = _check_weight("BCEWithLogitsLoss", "weight", weight)
        self.pos_weight = _check_weight("BCEWithLogitsLoss", "pos_weight", pos_weight)

    def _compute(self, pred, target):
        _check_same_shape("BCEWithLogitsLoss", pred, target)
        t = target.astype(pred.dtype)
        if t.size and not (t.min() >= 0 and t.max() <= 1):
            raise ValueError("BCEWithLogitsLoss: target values must be in [0, 1], got range "
                             f"[{t.min()}, {t.max()}]")
        for arg, w in (("weight", self.weight), ("pos_weight", self.pos_weight)):
            if w is None:
                continue
            try:
                fits = np.broadcast_shapes(w.shape, pred.shape) == pred.shape
            except ValueError:
                fits = False
            if not fits:
                raise ValueError(f"BCEWithLogitsLoss: {arg} of shape {w.shape} does not "
                                 f"broadcast to pred's shape {pred.shape}")
        e = np.exp(-np.abs(pred))
        softplus_neg = np.log1p(e) + np.maximum(-pred, 0)         # log(1 + exp(-x)), stable
        sig = np.where(pred >= 0, 1 / (1 + e), e / (1 + e))
        if self.pos_weight is None:
            losses = (1 - t) * pred + softplus_neg
            local = sig - t
        else:
            lw = 1 + (self.pos_weight.astype(pred.dtype) - 1) * t
            losses = (1 - t) * pred + lw * softplus_neg
            local = (1 - t) + lw * (sig - 1)
        if self.weight is not None:
            w = self.weight.astype(pred.dtype)
            losses, local = losses * w, local * w
        return losses, lambda g: (g * local).astype(pred.dtype, copy=False), pred.size


class BCELoss(Loss):
    """Binary cross-entropy on probabilities (a sigmoid head, as NN4's), as
    ``torch.nn.BCELoss``: pred, target: same shape; ``weight`` broadcast to pred's shape."""

    def __init__(self, weight=None, reduction: str = "mean"):
        super().__init__(reduction)
        self.weight = _check_weight("BCELoss", "weight", weight)

    def _compute(self, pred, target):
        _check_same_shape("BCELoss", pred, target)
        if pred.size and (pred.min() < 0 or pred.max() > 1):
            raise ValueError(f"BCELoss: pred must be probabilities in [0, 1], got range "
                             f"[{pred.min()}, {pred.max()}]")
        if target.size and (target.min() < 0 or target.max() > 1):
            raise ValueError(f"BCELoss: targets must be in [0, 1] (binary labels or "
                             f"probabilities), got range [{target.min()}, {target.max()}]: a "
                             "model with one sigmoid output was given multi-class labels? Use "
                             "a softmax head (e.g. NN4(..., n_classes=K)) with its cross-entropy")
        t = target.astype(pred.dtype)
        eps = np.finfo(pred.dtype).eps
        p = np.clip(pred, eps, 1 - eps)
        losses = -(t * np.log(p) + (1 - t) * np.log1p(-p))
        local = (p - t) / (p * (1 - p))
        if self.weight is not None:
            w = self.weight.astype(pred.dtype)
            losses, local = losses * w, local * w
        return losses, lambda g: (g * local).astype(pred.dtype, copy=False), pred.size


class MSELoss(Loss):
    """Squared error per element, as ``torch.nn.MSELoss``. pred, target: same shape."""

    def _compute(self, pred, target):
        _check_same_shape("MSELoss", pred, target)
        diff = pred - target.astype(pred.dtype)
        return diff * diff, lambda g: (2 * g * diff).astype(pred.dtype, copy=False), pred.size


class HingeLoss(Loss):
    """max(0, margin - y·f) per sample with labels y in {-1, +1}; "mean" by default.

    margin = 0 is the perceptron criterion (a point on the boundary counts as a
    mistake, so training can leave w = 0), margin = 1 the SVM hinge loss.
    pred: (N,) or (N, 1) scores; target: same number of labels. "none" gives (N,) losses.
    """

    def __init__(self, margin: float = 1.0, reduction: str = "mean"):
        super().__init__(reduction)
        if margin < 0:
            raise ValueError(f"HingeLoss: margin must be >= 0, got {margin}")
        self.margin = float(margin)

    def _compute(self, pred, target):
        scores = pred.reshape(-1)
        if pred.ndim > 2 or (pred.ndim == 2 and pred.shape[1] != 1):
            raise ValueError(f"HingeLoss: expected pred of shape (N,) or (N, 1), got {pred.shape}")
        y = target.reshape(-1).astype(pred.dtype)
        if y.shape != scores.shape:
            raise ValueError(f"HingeLoss: expected {scores.size} labels, "
                             f"got target shape {target.shape}")
        if not np.all(np.abs(y) == 1):
            raise ValueError("HingeLoss: labels must be -1 or +1")
        yf = y * scores
        active = yf <= 0 if self.margin == 0 else yf < self.margin
        losses = np.maximum(0, self.margin - yf)
        local = np.where(active, -y, 0).astype(pred.dtype)
        return (losses, lambda g: (g * local).reshape(pred.shape).astype(pred.dtype, copy=False),
                scores.size)


__all__ = ["Loss", "CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "BCELoss", "MSELoss",
           "HingeLoss", "REDUCTIONS"]
