"""Gradients of every autograd op against float64 central finite differences."""
import zlib

import numpy as np
import pytest

from mlcvlab.autograd import Tensor, grad, log, maximum, sin, topological_order, trace, unbroadcast
from mlcvlab.autograd import cos, exp, matmul, relu, sigmoid


def numerical_grads(f, arrays, eps=1e-6):
    """Central differences of the scalar sum(f(*arrays) * projection) w.r.t. each array."""
    grads = []
    for i, a in enumerate(arrays):
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            plus = [x.copy() for x in arrays]
            minus = [x.copy() for x in arrays]
            plus[i][idx] += eps
            minus[i][idx] -= eps
            g[idx] = (f(*plus) - f(*minus)) / (2 * eps)
        grads.append(g)
    return grads


def check_op(op, shapes, rng, positive=False, away_from_zero=False):
    """Compare autograd's gradient of sum(op(*xs) * P) with finite differences."""
    arrays = [np.asarray(rng.standard_normal(s), dtype=np.float64) for s in shapes]
    if positive:
        arrays = [np.abs(a) + 0.5 for a in arrays]
    if away_from_zero:
        arrays = [a + np.sign(a) * 0.3 for a in arrays]
    arrays = [np.array(a, dtype=np.float64) for a in arrays]   # 0-D stays an array
    out_shape = np.asarray(op(*[Tensor(a) for a in arrays]).data).shape
    proj = np.asarray(rng.standard_normal(out_shape))

    def scalar(*xs):
        return float((np.asarray(op(*[Tensor(x) for x in xs]).data) * proj).sum())

    tensors = [Tensor(a) for a in arrays]
    (op(*tensors) * proj).sum().backward()
    expected = numerical_grads(scalar, arrays)
    for k, (t, e) in enumerate(zip(tensors, expected)):
        assert t.grad.shape == arrays[k].shape
        np.testing.assert_allclose(t.grad, e, rtol=1e-5, atol=1e-7, err_msg=f"input {k} of {op}")


BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "maximum": maximum,
}
# shape pairs including broadcasting in both directions and a scalar operand
BROADCAST_SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (2, 3)),
                    ((5, 1), (1, 5))]


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES)
def test_binary_op_gradients_with_broadcasting(name, shapes):
    rng = np.random.default_rng(zlib.crc32(repr((name, shapes)).encode()))
    check_op(BINARY[name], shapes, rng, away_from_zero=name in ("div", "maximum"))


UNARY = {
    "neg": lambda a: -a,
    "exp": exp,
    "sin": sin,
    "cos": cos,
    "sigmoid": sigmoid,
    "relu": relu,
    "square": lambda a: a ** 2,
    "pow-2.5": lambda a: a ** 2.5,
    "sum": lambda a: a.sum(),
    "sum-axis": lambda a: a.sum(axis=1),
    "sum-keepdims": lambda a: a.sum(axis=(0, 2), keepdims=True),
    "mean": lambda a: a.mean(),
    "mean-axis": lambda a: a.mean(axis=-1),
    "rdiv": lambda a: 2.0 / a,
    "rsub": lambda a: 1.0 - a,
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_op_gradients(name):
    rng = np.random.default_rng(sorted(UNARY).index(name))
    positive = name in ("pow-2.5", "rdiv")
    check_op(UNARY[name], [(2, 3, 4)], rng, positive=positive, away_from_zero=name == "relu")


def test_log_and_tensor_exponent_gradients():
    rng = np.random.default_rng(1)
    check_op(log, [(3, 4)], rng, positive=True)
    check_op(lambda a, b: a ** b, [(3, 4), (4,)], rng, positive=True)


@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((4,), (4, 2)), ((3, 4), (4,)), ((4,), (4,)),
                                    ((2, 3, 4), (4, 5)), ((2, 3, 4), (1, 4, 2))])
def test_matmul_gradients(shapes):
    check_op(matmul, shapes, np.random.default_rng(len(shapes[0]) * 10 + len(shapes[1])))


def test_composite_network_gradient():
    """A 2-layer net with a bias broadcast over the batch: W1 (4, 3), x (5, 4)."""
    rng = np.random.default_rng(3)
    check_op(lambda x, W, b, v: sigmoid(relu(x @ W + b) @ v).mean(),
             [(5, 4), (4, 3), (3,), (3,)], rng)


def test_lecture_example_gradient():
    g1, g2 = grad(lambda x1, x2: log(x1 * x2) * sin(x2))(0.5, 0.75)
    assert round(float(g1), 4) == 1.3633
    assert round(float(g2), 4) == 0.1912
    # and the closed form
    assert np.isclose(g1, np.sin(0.75) / 0.5)
    assert np.isclose(g2, np.sin(0.75) / 0.75 + np.log(0.375) * np.cos(0.75))


def test_grad_argnums_and_reused_node():
    f = lambda x, y: x * x * y + x   # x used three times
    gx = grad(f, argnums=0)(3.0, 2.0)
    gxy = grad(f, argnums=(1, 0))(3.0, 2.0)
    assert float(gx) == pytest.approx(2 * 3 * 2 + 1)
    assert float(gxy[0]) == pytest.approx(9.0) and float(gxy[1]) == pytest.approx(13.0)


def test_backward_twice_gives_same_gradient():
    x = Tensor(np.array([1.0, 2.0]))
    y = (x * x).sum()
    y.backward()
    first = x.grad.copy()
    y.backward()
    np.testing.assert_array_equal(x.grad, first)


def test_backward_needs_scalar_or_grad():
    x = Tensor(np.ones((2, 2)))
    with pytest.raises(ValueError, match="backward"):
        (x * 2).backward()
    with pytest.raises(ValueError, match="shape"):
        (x * 2).backward(np.ones(3))


def test_unbroadcast_shapes():
    g = np.ones((2, 3, 4))
    assert unbroadcast(g, (4,)).tolist() == [6.0] * 4
    assert unbroadcast(g, (3, 1)).shape == (3, 1)
    assert unbroadcast(g, ()).item() == 24.0


def test_topological_order_and_trace_of_deep_graph():
    x = Tensor(1.0, label="x")
    y = x
    for _ in range(3000):          # deeper than Python's recursion limit
        y = y + 1.0
    y.backward()
    assert x.grad.item() == 1.0
    order = topological_order(y)
    assert order[-1] is y and len(order) == 1 + 2 * 3000


def test_trace_lists_ops_values_and_grads():
    x1, x2 = Tensor(0.5, label="x1"), Tensor(0.75, label="x2")
    z = log(x1 * x2) * sin(x2)
    z.backward()
    rows = trace(z)
    assert [r["op"] for r in rows] == ["input", "input", "mul", "log", "sin", "mul"]
    assert rows[0]["grad"] == "1.3633" and rows[1]["grad"] == "0.1912"
    assert rows[-1]["grad"] == "1.0000"
