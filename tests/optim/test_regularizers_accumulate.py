"""L1 proximal step and max-norm (exact small numbers); gradient accumulation equals the
full batch for a model without batch norm."""
import numpy as np
import pytest

from mlcvlab import nn, optim
from mlcvlab.nn.parameter import Parameter
from optim_helpers import make_data, make_mlp, train_step


class Tiny(nn.Module):
    """One weight matrix (decayed) and one bias (not decayed)."""

    def __init__(self, w, b):
        super().__init__()
        self.weight = Parameter(np.array(w, dtype=np.float64))
        self.bias = Parameter(np.array(b, dtype=np.float64), decay=False)


def test_soft_threshold_exact():
    x = np.array([-3.0, -0.5, 0.0, 0.2, 1.0, 4.0])
    optim.soft_threshold_(x, 1.0)
    np.testing.assert_array_equal(x, [-2.0, 0.0, 0.0, 0.0, 0.0, 3.0])


def test_l1_proximal_step_respects_decay_mask():
    model = Tiny([[1.0, -0.3], [0.05, -2.0]], [0.3, -0.01])
    opt = optim.SGD(model.parameters(), lr=0.5)
    optim.L1(opt, lam=0.2)  # threshold lam * lr = 0.1
    model.weight.grad[...] = [[0.2, 0.0], [0.0, -0.2]]
    opt.step()  # SGD: w = [[0.9, -0.3], [0.05, -1.9]], then soft threshold by 0.1
    np.testing.assert_allclose(model.weight.data, [[0.8, -0.2], [0.0, -1.8]], atol=1e-15)
    np.testing.assert_array_equal(model.bias.data, [0.3, -0.01])  # biases untouched
    opt.lr = 0.05
    opt.zero_grad()
    opt.step()  # no gradient; threshold now 0.01
    np.testing.assert_allclose(model.weight.data, [[0.79, -0.19], [0.0, -1.79]], atol=1e-15)


def test_l1_without_mask_touches_all():
    model = Tiny([[1.0]], [0.3])
    opt = optim.SGD(model.parameters(), lr=1.0)
    optim.L1(opt, lam=0.1, use_decay_mask=False)
    opt.step()
    np.testing.assert_allclose(model.bias.data, [0.2])
    np.testing.assert_allclose(model.weight.data, [[0.9]])
    with pytest.raises(ValueError, match="L1: lam must be a number >= 0, got lam=-1"):
        optim.L1(opt, lam=-1)


def test_max_norm_renormalizes_rows_over_c():
    model = Tiny([[3.0, 4.0], [0.6, 0.8], [0.0, -10.0]], [100.0, 0.0, 0.0])
    n = optim.max_norm_(model, 2.0)
    assert n == 2
    np.testing.assert_allclose(model.weight.data, [[1.2, 1.6], [0.6, 0.8], [0.0, -2.0]])
    np.testing.assert_array_equal(model.bias.data, [100.0, 0.0, 0.0])  # 1-D: not a unit


def test_max_norm_conv_rows_are_filters():
    conv = nn.Conv2d(2, 3, 2).astype(np.float64)
    conv.weight.data[...] = 1.0  # each filter: 8 ones, norm sqrt(8)
    conv.weight.data[1] *= 0.1   # norm 0.283 < 1: untouched
    hook = optim.MaxNorm(conv, 1.0, optimizer=optim.SGD(conv.parameters(), lr=0.0))
    assert hook() == 2
    np.testing.assert_allclose(conv.weight.data[0], 1 / np.sqrt(8))
    np.testing.assert_allclose(conv.weight.data[1], 0.1)
    norms = np.linalg.norm(conv.weight.data.reshape(3, -1), axis=1)
    np.testing.assert_allclose(norms, [1.0, np.sqrt(0.08), 1.0])


def test_max_norm_as_post_step_hook():
    model = Tiny([[3.0, 4.0]], [0.0])
    opt = optim.SGD(model.parameters(), lr=1.0)
    optim.MaxNorm(model, 1.0, optimizer=opt)
    opt.step()
    np.testing.assert_allclose(model.weight.data, [[0.6, 0.8]])
    with pytest.raises(ValueError, match="c must be a number > 0"):
        optim.max_norm_(model, 0)


@pytest.mark.parametrize("micro", [8, 16, 10])
def test_accumulation_equals_full_batch(micro):
    x, y = make_data(n=32)
    loss = nn.CrossEntropyLoss()
    full = make_mlp()
    value = loss(full(x), y)
    full.zero_grad()
    full.backward(loss.backward())
    acc = make_mlp()
    acc_value = optim.accumulate_gradients(acc, loss, x, y, micro)
    assert acc_value == pytest.approx(value, abs=1e-12)
    np.testing.assert_allclose(acc.flat().grad, full.flat().grad, rtol=0, atol=1e-10)
    assert np.abs(full.flat().grad).max() > 1e-3


def test_gradient_accumulator_step_equals_big_batch_step():
    x, y = make_data(n=64)
    loss = nn.CrossEntropyLoss()
    big = make_mlp()
    opt_big = optim.SGD(big.parameters(), lr=0.1, momentum=0.9)
    small = make_mlp()
    acc = optim.GradientAccumulator(small, loss, optim.SGD(small.parameters(), lr=0.1,
                                                           momentum=0.9), micro_batch=16)
    for _ in range(5):
        train_step(big, loss, opt_big, x, y)
        acc.step(x, y)
    np.testing.assert_allclose(small.flat().data, big.flat().data, rtol=0, atol=1e-10)


def test_accumulation_bad_micro_batch():
    with pytest.raises(ValueError, match="micro_batch must be an int >= 1"):
        optim.accumulate_gradients(make_mlp(), nn.CrossEntropyLoss(), *make_data(), 0)
