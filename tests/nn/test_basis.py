"""Gradient checks of the functional basis, and the batch-norm step-by-step
formulas against the closed form."""
import numpy as np
import pytest

from mlcvlab.nn import basis
from mlcvlab.testing import gradcheck_function


def test_linear_grad(rng):
    x, W, b = rng.standard_normal((5, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    gradcheck_function(basis.linear, basis.linear_grad, [x, W, b], names=["x", "W", "b"])


def test_linear_without_bias(rng):
    x, W = rng.standard_normal((5, 4)), rng.standard_normal((3, 4))
    y, cache = basis.linear(x, W)
    assert np.allclose(y, x @ W.T)
    dx, dW, db = basis.linear_grad(np.ones_like(y), cache)
    assert db is None and dx.shape == x.shape and dW.shape == W.shape


@pytest.mark.parametrize("shape", [(6, 3), (2, 3), (4, 3, 5, 2), (3, 2, 1, 1)])
def test_batchnorm_grad(rng, shape):
    x = rng.standard_normal(shape) * 2 + 1
    c = shape[1]
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    gradcheck_function(basis.batchnorm, basis.batchnorm_grad, [x, gamma, beta],
                       names=["x", "gamma", "beta"])
    gradcheck_function(basis.batchnorm, basis.batchnorm_grad_fused, [x, gamma, beta],
                       names=["x", "gamma", "beta"])


@pytest.mark.parametrize("shape", [(7, 4), (3, 4, 2, 5)])
def test_batchnorm_stepwise_equals_closed_form(rng, shape):
    x = rng.standard_normal(shape)
    gamma, beta = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    dy = rng.standard_normal(shape)
    _, cache = basis.batchnorm(x, gamma, beta)
    for a, b in zip(basis.batchnorm_grad(dy, cache), basis.batchnorm_grad_fused(dy, cache)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_batchnorm_normalizes(rng):
    x = rng.standard_normal((50, 3)) * 5 + 3
    y, cache = basis.batchnorm(x, np.ones(3), np.zeros(3))
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=0), 1, rtol=1e-4)
    np.testing.assert_allclose(cache.var, x.var(axis=0))   # biased variance


def test_dropout_mask_and_grad(rng):
    x = rng.standard_normal((4, 6))
    mask = (rng.random((4, 6)) > 0.3).astype(float)
    y, cache = basis.dropout(x, 0.3, mask=mask)
    np.testing.assert_allclose(y, x * mask / 0.7)
    np.testing.assert_allclose(basis.dropout_grad(np.ones_like(x), cache), mask / 0.7)
    y_eval, _ = basis.dropout(x, 0.3, train=False)
    assert y_eval is x


def test_dropout_fresh_mask_each_call_and_expectation():
    gen = np.random.default_rng(0)
    x = np.ones((200, 500))
    y1, _ = basis.dropout(x, 0.5, rng=gen)
    y2, _ = basis.dropout(x, 0.5, rng=gen)
    assert not np.array_equal(y1, y2)
    assert abs(y1.mean() - 1.0) < 0.01                      # inverted scaling keeps E[y] = x
    assert abs((y1 == 0).mean() - 0.5) < 0.01               # p is the drop probability


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_bad_p(p):
    with pytest.raises(ValueError, match="dropout: p"):
        basis.dropout(np.ones((2, 2)), p)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "sigmoid", "tanh", "softmax"])
def test_activation_grads(rng, name):
    x = rng.standard_normal((4, 5))
    x[np.abs(x) < 1e-3] = 0.5          # keep away from the ReLU kink
    gradcheck_function(getattr(basis, name), getattr(basis, name + "_grad"), [x], names=["x"])


def test_sigmoid_is_stable_for_large_inputs():
    y, _ = basis.sigmoid(np.array([-1000.0, 0.0, 1000.0], dtype=np.float32))
    assert np.all(np.isfinite(y)) and y.dtype == np.float32
    np.testing.assert_allclose(y, [0.0, 0.5, 1.0])


def test_linear_shape_errors():
    with pytest.raises(ValueError, match=r"linear: x has 3 features but W expects 4"):
        basis.linear(np.ones((2, 3)), np.ones((5, 4)))
    with pytest.raises(TypeError, match="linear: expected x to be float32 or float64"):
        basis.linear(np.ones((2, 4), dtype=np.int64), np.ones((5, 4)))
    with pytest.raises(ValueError, match=r"batchnorm: expected gamma"):
        basis.batchnorm(np.ones((4, 3)), np.ones(2), np.zeros(3))


@pytest.mark.parametrize("forward,backward,shape", [
    (lambda x: basis.batchnorm(x, np.ones(3, x.dtype), np.zeros(3, x.dtype)),
     basis.batchnorm_grad, (4, 3)),
    (lambda x: basis.batchnorm(x, np.ones(3, x.dtype), np.zeros(3, x.dtype)),
     basis.batchnorm_grad_fused, (4, 3, 2, 2)),
    (lambda x: basis.dropout(x, 0.5, rng=0), basis.dropout_grad, (4, 3)),
    (basis.relu, basis.relu_grad, (4, 3)),
    (basis.leaky_relu, basis.leaky_relu_grad, (4, 3)),
    (basis.sigmoid, basis.sigmoid_grad, (4, 3)),
    (basis.tanh, basis.tanh_grad, (4, 3)),
    (basis.softmax, basis.softmax_grad, (4, 3)),
])
def test_grad_functions_refuse_a_dy_that_would_broadcast(forward, backward, shape, rng):
    y, cache = forward(rng.standard_normal(shape))
    name = backward.__name__
    with pytest.raises(ValueError, match=f"{name}: expected dy of the forward output's shape"):
        backward(np.ones(shape[:-1] + (1,)), cache)
    dx = backward(np.ones(shape), cache)
    assert (dx[0] if isinstance(dx, tuple) else dx).shape == shape     # the right dy still works


def test_dropout_mask_is_the_one_dropout_draws():
    """dropout_mask is the mask dropout applies (the GPU workers draw theirs there too)."""
    x = np.ones((4, 5), np.float32)
    y, cache = basis.dropout(x, 0.3, rng=np.random.default_rng(7))
    mask = basis.dropout_mask(x.shape, 0.3, np.random.default_rng(7), np.float32)
    np.testing.assert_array_equal(cache.mask, mask)
    np.testing.assert_array_equal(y, mask)
    assert set(np.unique(mask)) <= {np.float32(0), np.float32(1 / 0.7)} and mask.dtype == np.float32
    assert not basis.dropout_mask((3,), 1.0, 0).any()                  # p = 1 drops every unit
    np.testing.assert_array_equal(basis.dropout_mask((3,), 0.5, keep=np.array([1, 0, 1]),
                                                     dtype=np.float64), [2.0, 0.0, 2.0])


def test_batchnorm_running_update_and_eval_formulas(rng):
    mean, var = rng.standard_normal(3), rng.random(3) + 0.5
    running_mean, running_var = np.zeros(3), np.ones(3)
    basis.batchnorm_update_running(running_mean, running_var, mean, var, 10, 0.1)
    np.testing.assert_allclose(running_mean, 0.1 * mean, rtol=1e-15)
    np.testing.assert_allclose(running_var, 0.9 + 0.1 * var * 10 / 9, rtol=1e-15)
    x, gamma, beta = rng.standard_normal((4, 3, 2, 2)), rng.random(3), rng.standard_normal(3)
    y = basis.batchnorm_eval(x, gamma, beta, running_mean, running_var, 1e-5)
    c = (1, 3, 1, 1)
    expect = ((x - running_mean.reshape(c)) / np.sqrt(running_var.reshape(c) + 1e-5)
              * gamma.reshape(c) + beta.reshape(c))
    np.testing.assert_allclose(y, expect, rtol=1e-12, atol=1e-12)
