"""Reverse-mode automatic differentiation on a graph of NumPy arrays.

Each :class:`Tensor` is one node of the computational graph: it holds an array
``data``, its gradient ``grad`` (same shape, filled by :meth:`Tensor.backward`),
its parent nodes and a *local gradient rule* ``grad_fn(g) -> (g_parent, ...)``
that maps the gradient of the output to the gradients of each parent. One node
holds a whole array (not one node per scalar, as in micrograd), so the graph
of a layer is a handful of nodes.

Broadcasting: an op may broadcast its inputs (e.g. (N, D) + (D,)). The
gradient that flows back to a broadcast input is summed over the broadcast
axes (:func:`unbroadcast`), in one place, :meth:`Tensor.backward`.

Example::

    x1, x2 = Tensor(0.5, label="x1"), Tensor(0.75, label="x2")
    z = (x1 * x2).log() * x2.sin()
    z.backward()
    x1.grad, x2.grad          # 1.3633, 0.1912 (= sin(x2)/x1, sin(x2)/x2 + log(x1 x2) cos(x2))
"""
from __future__ import annotations

import itertools
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

ArrayLike = Union[np.ndarray, float, int, Sequence]
GradFn = Callable[[np.ndarray], Tuple[Optional[np.ndarray], ...]]

_ids = itertools.count()


def unbroadcast(g: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """Sum ``g`` over the axes along which an array of ``shape`` was broadcast.

    g: the gradient of a broadcast result, e.g. (N, D); shape: the input's
    shape, e.g. (D,) or (1, D). Returns an array of exactly ``shape``.
    """
    extra = g.ndim - len(shape)
    if extra > 0:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _as_tensor(x) -> "Tensor":
    """A constant node for plain numbers/arrays; Tensors pass through."""
    if isinstance(x, Tensor):
        return x
    return Tensor(x, requires_grad=False, label=_const_label(x))


def _const_label(x) -> str:
    arr = np.asarray(x)
    return f"{arr.item():g}" if arr.size == 1 else f"const{arr.shape}"


class Tensor:
    """A node of the computational graph: an array value and its gradient.

    data: float64 array (any shape; scalars are 0-D). grad: same shape, None
    until :meth:`backward` reaches the node. ``op`` names the operation that
    made the node ("input" for leaves, "const" for constants); ``label`` is a
    display name for graph drawings and step-by-step tables.
    """

    __array_priority__ = 100  # so ndarray + Tensor calls Tensor.__radd__

    def __init__(
        self,
        data: ArrayLike,
        requires_grad: bool = True,
        label: str = "",
        op: Optional[str] = None,
        parents: Tuple["Tensor", ...] = (),
        grad_fn: Optional[GradFn] = None,
    ):
        arr = np.asarray(data)
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise TypeError(f"Tensor: expected real numbers, got dtype {arr.dtype}")
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
        self.data: np.ndarray = arr
        self.grad: Optional[np.ndarray] = None
        self.requires_grad = bool(requires_grad) or any(p.requires_grad for p in parents)
        self.parents = parents
        self.grad_fn = grad_fn
        self.op = op or ("input" if requires_grad else "const")
        self.label = label
        self.id = next(_ids)

    # -- basic properties ----------------------------------------------------------
    @property
    def shape(self) -> Tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def item(self) -> float:
        return float(self.data.item())

    def __repr__(self) -> str:
        name = f" {self.label!r}" if self.label else ""
        data = np.array2string(self.data, precision=4)
        return f"Tensor{name}(op={self.op}, shape={self.shape}, data={data})"

    # -- building nodes -------------------------------------------------------------
    @staticmethod
    def _make(data: np.ndarray, op: str, parents: Tuple["Tensor", ...],
              grad_fn: GradFn) -> "Tensor":
        needs = any(p.requires_grad for p in parents)
        return Tensor(data, requires_grad=needs, op=op, parents=parents,
                      grad_fn=grad_fn if needs else None)

    # -- arithmetic ----------------------------------------------------------------
    def __add__(self, other) -> "Tensor":
        other = _as_tensor(other)
        return Tensor._make(self.data + other.data, "add", (self, other), lambda g: (g, g))

    def __sub__(self, other) -> "Tensor":
        other = _as_tensor(other)
        return Tensor._make(self.data - other.data, "sub", (self, other), lambda g: (g, -g))

    def __mul__(self, other) -> "Tensor":
        other = _as_tensor(other)
        a, b = self.data, other.data
        return Tensor._make(a * b, "mul", (self, other), lambda g: (g * b, g * a))

    def __truediv__(self, other) -> "Tensor":
        other = _as_tensor(other)
        a, b = self.data, other.data
        return Tensor._make(a / b, "div", (self, other), lambda g: (g / b, -g * a / (b * b)))

    def __neg__(self) -> "Tensor":
        return Tensor._make(-self.data, "neg", (self,), lambda g: (-g,))

    def __pow__(self, exponent) -> "Tensor":
        """x ** p. The gradient for a Tensor exponent, x**p·log(x), needs x > 0."""
        exponent = _as_tensor(exponent)
        x, p = self.data, exponent.data
        out = x ** p

        def grad_fn(g):
            dp = g * out * np.log(x) if exponent.requires_grad else None
            return g * p * x ** (p - 1), dp

        return Tensor._make(out, "pow", (self, exponent), grad_fn)

    __radd__ = __add__
    __rmul__ = __mul__

    def __rsub__(self, other) -> "Tensor":
        return _as_tensor(other) - self

    def __rtruediv__(self, other) -> "Tensor":
        return _as_tensor(other) / self

    def __rpow__(self, other) -> "Tensor":
        return _as_tensor(other) ** self

    def __matmul__(self, other) -> "Tensor":
        return matmul(self, other)

    def __rmatmul__(self, other) -> "Tensor":
        return matmul(_as_tensor(other), self)

    # -- elementwise functions -------------------------------------------------------
    def exp(self) -> "Tensor":
        out = np.exp(self.data)
        return Tensor._make(out, "exp", (self,), lambda g: (g * out,))

    def log(self) -> "Tensor":
        x = self.data
        return Tensor._make(np.log(x), "log", (self,), lambda g: (g / x,))

    def sin(self) -> "Tensor":
        x = self.data
        return Tensor._make(np.sin(x), "sin", (self,), lambda g: (g * np.cos(x),))

    def cos(self) -> "Tensor":
        x = self.data
        return Tensor._make(np.cos(x), "cos", (self,), lambda g: (-g * np.sin(x),))

    def sigmoid(self) -> "Tensor":
        out = 1.0 / (1.0 + np.exp(-self.data))
        return Tensor._make(out, "sigmoid", (self,), lambda g: (g * out * (1.0 - out),))

    def relu(self) -> "Tensor":
        mask = self.data > 0
        return Tensor._make(self.data * mask, "relu", (self,), lambda g: (g * mask,))

    def maximum(self, other) -> "Tensor":
        return maximum(self, other)

    # -- reductions ------------------------------------------------------------------
    def sum(self, axis=None, keepdims: bool = False) -> "Tensor":
        """Sum over ``axis`` (None: all). The gradient is g broadcast back to x's shape."""
        shape = self.shape
        out = self.data.sum(axis=axis, keepdims=keepdims)
        return Tensor._make(out, "sum", (self,),
                            lambda g: (_expand_to(g, shape, axis, keepdims),))

    def mean(self, axis=None, keepdims: bool = False) -> "Tensor":
        """Mean over ``axis`` (None: all). The gradient is g / count broadcast back."""
        shape = self.shape
        out = np.asarray(self.data.mean(axis=axis, keepdims=keepdims))
        count = self.data.size / max(out.size, 1)
        return Tensor._make(out, "mean", (self,),
                            lambda g: (_expand_to(g, shape, axis, keepdims) / count,))

    # -- backward ------------------------------------------------------------------
    def backward(self, grad: Optional[ArrayLike] = None) -> None:
        """Fill ``.grad`` of every node this one depends on (reverse topological order).

        grad: dL/d(self), same shape as ``self.data``; may be omitted only when
        self is a scalar (a one-element array), where it is 1. Gradients of the
        graph's nodes are reset first, so calling backward twice gives the same result.
        """
        if grad is None:
            if self.data.size != 1:
                raise ValueError(
                    f"Tensor.backward: output has shape {self.shape}; pass grad= of that shape "
                    "or reduce to a scalar first (e.g. .sum())"
                )
            grad = np.ones_like(self.data, dtype=np.float64)
        grad = np.asarray(grad, dtype=np.float64)
        if grad.shape != self.shape:
            raise ValueError(f"Tensor.backward: expected grad of shape {self.shape}, "
                             f"got {grad.shape}")
        order = topological_order(self)
        for node in order:
            node.grad = None
        self.grad = grad.copy()
        for node in reversed(order):
            if node.grad_fn is None or node.grad is None:
                continue
            for parent, g in zip(node.parents, node.grad_fn(node.grad)):
                if g is None or not parent.requires_grad:
                    continue
                g = unbroadcast(np.asarray(g, dtype=np.float64), parent.shape)
                parent.grad = g.copy() if parent.grad is None else parent.grad + g


def _expand_to(g: np.ndarray, shape: Tuple[int, ...], axis, keepdims: bool) -> np.ndarray:
    """Broadcast the gradient of a reduction over ``axis`` back to the input ``shape``."""
    if axis is not None and not keepdims:
        axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
        g = np.expand_dims(g, tuple(sorted(a % len(shape) for a in axes)))
    return np.broadcast_to(g, shape)


# -- functional forms -------------------------------------------------------------------
def exp(x) -> Tensor:
    return _as_tensor(x).exp()


def log(x) -> Tensor:
    return _as_tensor(x).log()


def sin(x) -> Tensor:
    return _as_tensor(x).sin()


def cos(x) -> Tensor:
    return _as_tensor(x).cos()


def sigmoid(x) -> Tensor:
    return _as_tensor(x).sigmoid()


def relu(x) -> Tensor:
    return _as_tensor(x).relu()


def maximum(a, b) -> Tensor:
    """Elementwise max. At ties the gradient is split evenly between a and b."""
    a, b = _as_tensor(a), _as_tensor(b)
    x, y = a.data, b.data
    wa = (x > y) + 0.5 * (x == y)
    return Tensor._make(np.maximum(x, y), "maximum", (a, b), lambda g: (g * wa, g * (1.0 - wa)))


def matmul(a, b) -> Tensor:
    """a @ b with NumPy semantics (1-D operands, batched leading dims broadcast).

    a: (..., n, k) or (k,); b: (..., k, m) or (k,).
    """
    a, b = _as_tensor(a), _as_tensor(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: operands must be at least 1-D, "
                         f"got shapes {a.shape} and {b.shape}")
    x, y = a.data, b.data

    def grad_fn(g):
        x2 = x[None, :] if x.ndim == 1 else x          # (..., n, k)
        y2 = y[:, None] if y.ndim == 1 else y          # (..., k, m)
        g2 = g[..., None] if y.ndim == 1 else g        # restore the m axis first
        g2 = g2[..., None, :] if x.ndim == 1 else g2    # then the n axis
        dx = g2 @ np.swapaxes(y2, -1, -2)
        dy = np.swapaxes(x2, -1, -2) @ g2
        dx = dx[..., 0, :] if x.ndim == 1 else dx
        dy = dy[..., 0] if y.ndim == 1 else dy
        return dx, dy

    return Tensor._make(x @ y, "matmul", (a, b), grad_fn)


def topological_order(root: Tensor) -> List[Tensor]:
    """The nodes ``root`` depends on, each after all of its parents (root last).

    Iterative depth-first search, so deep graphs do not hit Python's recursion limit.
    """
    order: List[Tensor] = []
    seen = set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for p in reversed(node.parents):
            if id(p) not in seen:
                stack.append((p, False))
    return order


def grad(f: Callable[..., Tensor], argnums: Union[int, Sequence[int], None] = None):
    """``grad(f)(x1, x2, ...)``: the gradient(s) of the scalar ``f`` at the given point.

    Each argument is wrapped in a float64 :class:`Tensor`. Returns one array
    per argument (a tuple; a single array when f has one argument or
    ``argnums`` is an int), each of the argument's shape.
    """

    def grad_f(*args):
        inputs = [Tensor(np.asarray(a, dtype=np.float64), label=f"x{i + 1}")
                  for i, a in enumerate(args)]
        out = f(*inputs)
        if not isinstance(out, Tensor):
            raise TypeError(f"grad: f must return a Tensor, got {type(out).__name__}")
        out.backward()
        grads = [np.zeros_like(t.data) if t.grad is None else t.grad for t in inputs]
        if argnums is None:
            return grads[0] if len(grads) == 1 else tuple(grads)
        if isinstance(argnums, int):
            return grads[argnums]
        return tuple(grads[i] for i in argnums)

    return grad_f
