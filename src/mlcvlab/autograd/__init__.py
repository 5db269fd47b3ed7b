"""A small reverse-mode autodiff engine: the computational-graph view of backprop.

Nodes are whole NumPy arrays (:class:`Tensor`); ``backward()`` walks the graph
in reverse topological order and un-broadcasts gradients by summing. It is a
teaching tool and an independent gradient oracle for tests, separate from the
hand-written layer backward passes in :mod:`mlcvlab.nn`.

    >>> from mlcvlab.autograd import grad, log, sin
    >>> g1, g2 = grad(lambda x1, x2: log(x1 * x2) * sin(x2))(0.5, 0.75)
    >>> round(float(g1), 4), round(float(g2), 4)
    (1.3633, 0.1912)
"""
from mlcvlab.autograd.graph import draw, layered_layout, to_dot, trace
from mlcvlab.autograd.tensor import (
    Tensor,
    cos,
    exp,
    grad,
    log,
    matmul,
    maximum,
    relu,
    sigmoid,
    sin,
    topological_order,
    unbroadcast,
)

__all__ = [
    "Tensor", "grad", "exp", "log", "sin", "cos", "sigmoid", "relu", "maximum", "matmul",
    "topological_order", "unbroadcast", "trace", "to_dot", "draw", "layered_layout",
]
