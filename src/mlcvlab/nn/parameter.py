"""Parameters and the flat buffer that holds all of a model's parameters.

A model's parameters live in one contiguous data vector and its gradients in one
grad vector; each :class:`Parameter` holds views into them. An optimizer step is
then a few whole-vector NumPy calls, and an all-reduce is one call on one buffer.

Rule for layer code: always read ``param.data`` / ``param.grad`` at call time and
update gradients in place (``param.grad += dW``); never keep the arrays
themselves, because flattening rebinds them to views of a new buffer.

``zero_grad`` is lazy: it only marks the gradients zero, and the zeros are written
when a gradient is next read. A layer that computes a whole gradient at once asks
:meth:`Parameter.grad_to_overwrite` first and writes the gradient straight into the
array it gets, e.g. with ``np.matmul(dy.T, x, out=...)``. That saves a fill and an
add over every weight matrix per step: 7-8 % of the MLP's training step
(BENCHMARKS.md). Whoever reads ``grad`` sees the same values as with eager zeroing.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import numpy as np


class Parameter:
    """A trainable array with its gradient.

    data: the values, any shape. grad: same shape and dtype, accumulated by
    ``Module.backward`` and reset by ``zero_grad``. ``decay`` says whether L2/L1
    weight decay applies (False for biases and batch-norm scale and shift).
    """

    __slots__ = ("data", "_grad", "_zero_pending", "decay", "_flat", "name")

    def __init__(self, data: np.ndarray, decay: bool = True, name: str = ""):
        data = np.asarray(data)
        if not np.issubdtype(data.dtype, np.floating):
            raise TypeError(f"Parameter: expected a floating array, got dtype {data.dtype}")
        self.data = data
        self.grad = np.zeros_like(data)
        self.decay = decay
        self._flat: Optional[FlatParameters] = None
        self.name = name

    @property
    def shape(self):
        return self.data.shape

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def dtype(self):
        return self.data.dtype

    def numel(self) -> int:
        """The number of values, as ``torch.Tensor.numel()`` (the same as ``size``)."""
        return self.data.size

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(param)`` is ``param.data`` (the same memory, not a copy), as for a
        tensor; a dtype or ``copy=True`` gives a converted copy."""
        if copy:
            return np.array(self.data, dtype=dtype, copy=True)
        if dtype is None or np.dtype(dtype) == self.data.dtype:
            return self.data
        if copy is False:
            raise ValueError(f"Parameter.__array__: converting {self.data.dtype} to "
                             f"{np.dtype(dtype)} needs a copy, but copy=False")
        return self.data.astype(dtype)

    @property
    def grad(self) -> np.ndarray:
        """dL/d(data), same shape and dtype as ``data``."""
        if self._zero_pending:
            self._grad.fill(0)
            self._zero_pending = False
        return self._grad

    @grad.setter
    def grad(self, value: np.ndarray) -> None:
        self._grad = value
        self._zero_pending = False

    def zero_grad(self) -> None:
        """Make the gradient zero (written when it is next read or overwritten)."""
        self._zero_pending = True

    def grad_to_overwrite(self) -> Optional[np.ndarray]:
        """The gradient array if it is zero since ``zero_grad`` and nobody has read it yet,
        else None.

        A layer that gets the array writes its whole gradient into it, in place of
        adding to zeros; with None it adds to ``grad`` as usual (gradients accumulate
        over several backward calls).
        """
        if self._zero_pending:
            self._zero_pending = False
            return self._grad
        return None

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class FlatParameters:
    """One data vector and one grad vector for an ordered list of parameters.

    ``data`` and ``grad`` have shape (P,), P the total number of parameter
    values; ``decay_mask`` is a (P,) boolean, True where weight decay applies;
    ``slices[i]`` is where parameter i lives. Building it copies the current
    values in and rebinds every ``Parameter.data`` / ``.grad`` to views.
    """

    def __init__(self, params: Sequence[Parameter], dtype=None):
        params = list(params)
        if not params:
            raise ValueError("FlatParameters: got an empty parameter list; "
                             "the model has no parameters")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("FlatParameters: the same Parameter appears twice in the list")
        if dtype is None:
            dtype = params[0].data.dtype
        dtype = np.dtype(dtype)
        total = sum(p.data.size for p in params)
        self.params: List[Parameter] = params
        self.data = np.empty(total, dtype=dtype)
        self._grad = np.zeros(total, dtype=dtype)
        self.decay_mask = np.empty(total, dtype=bool)
        self.slices: List[slice] = []
        offset = 0
        for p in params:
            sl = slice(offset, offset + p.data.size)
            self.data[sl] = p.data.ravel()
            self._grad[sl] = p.grad.ravel()
            self.decay_mask[sl] = p.decay
            shape = p.data.shape
            p.data = self.data[sl].reshape(shape)
            p.grad = self._grad[sl].reshape(shape)
            p._flat = self
            self.slices.append(sl)
            offset += p.data.size

    @property
    def device(self) -> str:
        """"cpu", or "cuda" once :meth:`moved` there."""
        return getattr(self, "_device", "cpu")

    def moved(self, device: str) -> "FlatParameters":
        """A new flat buffer on ``device`` ("cpu" or "cuda") holding these values and
        gradients (self when already there); every parameter is rebound to views of it.

        One copy of each vector (data, grad, decay mask) crosses the bus. An optimizer
        built on the old buffer then refuses to step (its state lives on the old device).
        """
        if device == self.device:
            return self
        from mlcvlab.gpu import device as gpu_device
        move = gpu_device.to_host if device == "cpu" else gpu_device.to_device
        grad = self.grad                       # pending zeros written first
        new = object.__new__(FlatParameters)
        new.params, new.slices = self.params, self.slices
        new.data, new._grad = move(self.data), move(grad)
        new.decay_mask = move(self.decay_mask)
        new._device = device
        for p, sl in zip(new.params, new.slices):
            shape = p.data.shape
            p.data = new.data[sl].reshape(shape)
            p.grad = new._grad[sl].reshape(shape)
            p._flat = new
        return new

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def grad(self) -> np.ndarray:
        """All the parameters' gradients, (P,); the pending zeros written first."""
        pending = [p for p in self.params if p._zero_pending]
        if len(pending) == len(self.params):
            self._grad.fill(0)                 # one fill rather than one per parameter
        else:
            for p in pending:
                p._grad.fill(0)
        for p in pending:
            p._zero_pending = False
        return self._grad

    def zero_grad(self) -> None:
        """Make every gradient zero (lazily: see the module docstring)."""
        for p in self.params:
            p._zero_pending = True

    def covers(self, params: Sequence[Parameter]) -> bool:
        """True when ``params`` are exactly this buffer's parameters, in order."""
        params = list(params)
        return len(params) == len(self.params) and all(a is b for a, b in zip(params, self.params))

    def __repr__(self) -> str:
        return f"FlatParameters(n_params={len(self.params)}, size={self.size}, dtype={self.dtype})"


def flatten(params: Iterable[Parameter], dtype=None) -> FlatParameters:
    """The flat buffer of ``params``: the existing one when they already share it."""
    params = list(params)
    for p in params:
        if not isinstance(p, Parameter):
            raise TypeError(f"flatten: expected Parameter objects, got {type(p).__name__}")
    if params:
        flat = params[0]._flat
        if (flat is not None and flat.covers(params)
                and (dtype is None or flat.dtype == np.dtype(dtype))):
            return flat
    return FlatParameters(params, dtype=dtype)
