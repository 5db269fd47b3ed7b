"""Losses: ``loss(pred, target) -> float`` then ``loss.backward() -> dpred``.

All reduce by the mean over the batch. Inputs are validated (shape, dtype,
label range, NaN) with errors that name the loss and what was wrong.
"""
from __future__ import annotations

import numpy as np


class Loss:
    """Base class: keeps what backward needs from the last call."""

    def __init__(self):
        self._grad = None

    def __call__(self, pred, target) -> float:
        name = type(self).__name__
        if not isinstance(pred, np.ndarray) or not np.issubdtype(pred.dtype, np.floating):
            raise TypeError(f"{name}: expected pred to be a floating numpy array, got "
                            f"{getattr(pred, 'dtype', type(pred).__name__)}")
        if not np.all(np.isfinite(pred)):
            raise ValueError(f"{name}: pred contains NaN or inf (the model diverged or the input "
                             "has NaN); lower the learning rate or check the data")
        target = np.asarray(target)
        value, self._grad = self._compute(pred, target)
        return float(value)

    def backward(self) -> np.ndarray:
        """dL/dpred of the last call, same shape and dtype as pred."""
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward called "
                               "before the loss was computed")
        return self._grad

    def _compute(self, pred, target):
        """(value, dL/dpred) of a validated pred; Loss is abstract, each loss implements it."""
        raise NotImplementedError(f"{type(self).__name__}._compute: Loss is abstract")


def _check_same_shape(name, pred, target):
    if target.shape != pred.shape:
        raise ValueError(f"{name}: expected target of shape {pred.shape} (same as pred), "
                         f"got {target.shape}")


def _check_labels(name, pred, target, n_classes):
    if target.ndim != 1 or target.shape[0] != pred.shape[0]:
        raise ValueError(f"{name}: expected target of shape ({pred.shape[0]},) with class indices, "
                         f"got {target.shape}")
    if not np.issubdtype(target.dtype, np.integer):
        raise TypeError(f"{name}: expected integer class labels, got dtype {target.dtype}")
    if target.size and (target.min() < 0 or target.max() >= n_classes):
        raise ValueError(f"{name}: labels must be in [0, {n_classes}), got range "
                         f"[{target.min()}, {target.max()}]")


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy. pred: (N, C) logits (or probabilities with
    ``from_probs=True``, for models whose head is a softmax); target: (N,) int labels.
    """

    def __init__(self, from_probs: bool = False):
        super().__init__()
        self.from_probs = from_probs

    def _compute(self, pred, target):
        if pred.ndim != 2:
            raise ValueError(f"CrossEntropyLoss: expected pred of shape (N, C), got {pred.shape}")
        _check_labels("CrossEntropyLoss", pred, target, pred.shape[1])
        n = pred.shape[0]
        rows = np.arange(n)
        if self.from_probs:
            tiny = np.finfo(pred.dtype).tiny
            p = np.maximum(pred[rows, target], tiny)
            grad = np.zeros_like(pred)
            grad[rows, target] = -1.0 / (n * p)
            return -np.mean(np.log(p)), grad
        z = pred - pred.max(axis=1, keepdims=True)
        logsumexp = np.log(np.exp(z).sum(axis=1))
        value = np.mean(logsumexp - z[rows, target])
        grad = np.exp(z - logsumexp[:, None])
        grad[rows, target] -= 1
        grad /= n
        return value, grad.astype(pred.dtype, copy=False)


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy on logits. pred: any shape; target: same shape, values in [0, 1]."""

    def _compute(self, pred, target):
        _check_same_shape("BCEWithLogitsLoss", pred, target)
        t = target.astype(pred.dtype)
        if t.size and (t.min() < 0 or t.max() > 1):
            raise ValueError("BCEWithLogitsLoss: target values must be in [0, 1], got range "
                             f"[{t.min()}, {t.max()}]")
        # log(1 + exp(-|x|)) + max(x, 0) - x t: stable for large |x|
        value = np.mean(np.maximum(pred, 0) - pred * t + np.log1p(np.exp(-np.abs(pred))))
        e = np.exp(-np.abs(pred))
        sig = np.where(pred >= 0, 1 / (1 + e), e / (1 + e))
        return value, ((sig - t) / pred.size).astype(pred.dtype, copy=False)


class BCELoss(Loss):
    """Binary cross-entropy on probabilities (a sigmoid head, as NN4's).

    pred, target: same shape.
    """

    def _compute(self, pred, target):
        _check_same_shape("BCELoss", pred, target)
        if pred.size and (pred.min() < 0 or pred.max() > 1):
            raise ValueError(f"BCELoss: pred must be probabilities in [0, 1], got range "
                             f"[{pred.min()}, {pred.max()}]")
        t = target.astype(pred.dtype)
        eps = np.finfo(pred.dtype).eps
        p = np.clip(pred, eps, 1 - eps)
        value = -np.mean(t * np.log(p) + (1 - t) * np.log1p(-p))
        grad = (p - t) / (p * (1 - p) * pred.size)
        return value, grad.astype(pred.dtype, copy=False)


class MSELoss(Loss):
    """Mean squared error over all elements. pred, target: same shape."""

    def _compute(self, pred, target):
        _check_same_shape("MSELoss", pred, target)
        diff = pred - target.astype(pred.dtype)
        return np.mean(diff * diff), (2.0 / pred.size) * diff


class HingeLoss(Loss):
    """mean(max(0, margin - y·f)) with labels y in {-1, +1}.

    margin = 0 is the perceptron criterion (a point on the boundary counts as a
    mistake, so training can leave w = 0), margin = 1 the SVM hinge loss.
    pred: (N,) or (N, 1) scores; target: same number of labels.
    """

    def __init__(self, margin: float = 1.0):
        super().__init__()
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
        value = np.mean(np.maximum(0, self.margin - yf))
        grad = np.where(active, -y, 0).astype(pred.dtype) / scores.size
        return value, grad.reshape(pred.shape)


__all__ = ["Loss", "CrossEntropyLoss", "BCEWithLogitsLoss", "BCELoss", "MSELoss", "HingeLoss"]
