"""NN4: structure as the handout defines it, hand-written gradient == module backward,
finite differences, and the MLP builder."""
import numpy as np
import pytest

from mlcvlab import nn
from mlcvlab.models.mlp import mlp
from mlcvlab.models.nn4 import NN4, emp_loss_grad, nn4_forward
from mlcvlab.testing import gradcheck_module


def _dropout_states(model):
    return [(d, d.mask_step.copy()) for d in model.modules() if isinstance(d, nn.Dropout)]


def _restore(states):
    for d, step in states:
        d.mask_step[...] = step


def test_structure():
    m = NN4(10, hidden=(8, 6, 4), n_classes=1, p_input=0.1, p_hidden=0.3)
    kinds = [[type(l).__name__ for l in layer]
             for layer in (m.layer1, m.layer2, m.layer3, m.layer4)]
    assert kinds[:3] == [["Dropout", "Linear", "ReLU", "BatchNorm1d"]] * 3
    assert kinds[3] == ["Dropout", "Linear", "Sigmoid"]
    assert m.layer1[0].p == 0.1 and m.layer2[0].p == 0.3 and m.layer4[0].p == 0.3
    assert type(NN4(10, hidden=(8, 6, 4), n_classes=5).layer4[2]).__name__ == "Softmax"
    assert m.num_parameters() == (10 * 8 + 8 + 16) + (8 * 6 + 6 + 12) + (6 * 4 + 4 + 8) + (4 + 1)


@pytest.mark.parametrize("n_classes", [1, 5])
def test_hand_written_gradient_equals_module_backward(n_classes, rng):
    m = NN4(12, hidden=(9, 7, 5), n_classes=n_classes, p_input=0.2, p_hidden=0.5, rng=3)
    m.astype(np.float64)
    X = rng.standard_normal((16, 12))
    y = rng.integers(0, max(n_classes, 2), 16)
    states = _dropout_states(m)
    loss_hand, grad_hand = emp_loss_grad(m, X, y)
    _restore(states)
    m.zero_grad()
    p = m(X)
    loss = m.loss_fn()
    value = loss(p, y.reshape(-1, 1).astype(float) if n_classes == 1 else y)
    m.backward(loss.backward())
    assert abs(value - loss_hand) < 1e-12
    np.testing.assert_allclose(grad_hand, m.flat().grad, atol=1e-12)


def test_hand_written_gradient_by_finite_differences(rng):
    m = NN4(5, hidden=(4, 4, 3), n_classes=3, p_input=0.0, p_hidden=0.0, rng=0).astype(np.float64)
    X = rng.standard_normal((8, 5))
    y = rng.integers(0, 3, 8)
    _, g = emp_loss_grad(m, X, y)
    flat = m.flat()
    eps = 1e-6
    for i in rng.choice(flat.size, 25, replace=False):
        old = flat.data[i]
        flat.data[i] = old + eps
        lp = emp_loss_grad(m, X, y)[0]
        flat.data[i] = old - eps
        lm = emp_loss_grad(m, X, y)[0]
        flat.data[i] = old
        assert abs((lp - lm) / (2 * eps) - g[i]) < 1e-6, i


def test_nn4_gradcheck_module_with_dropout(rng):
    m = NN4(6, hidden=(5, 4, 3), n_classes=4, p_input=0.2, p_hidden=0.3, rng=1)
    gradcheck_module(m, rng.standard_normal((7, 6)))


def test_image_input_is_flattened_and_eval_forward_matches(rng):
    m = NN4(64, hidden=(8, 8, 8), n_classes=10, rng=0)
    x = rng.random((4, 1, 8, 8)).astype(np.float32)
    out = m(x)
    assert out.shape == (4, 10) and np.allclose(out.sum(1), 1, atol=1e-5)
    assert m.backward(np.ones_like(out)).shape == x.shape
    m.eval()
    p_mod = m(x)
    p_hand, _ = nn4_forward(m, x, train=False)
    np.testing.assert_array_equal(p_mod, p_hand)        # one eval formula: basis.batchnorm_eval


def test_written_out_forward_updates_running_statistics_as_the_module(rng):
    """nn4_forward and the module forward share BatchNorm1d.update_running: the same running
    statistics, bit for bit, and the same count of batches."""
    hand, module = (NN4(6, hidden=(5, 4, 3), n_classes=3, p_input=0.0, p_hidden=0.0, rng=0)
                    for _ in range(2))
    module.train()
    for _ in range(3):
        x = rng.standard_normal((7, 6)).astype(np.float32)
        p_hand, _ = nn4_forward(hand, x, train=True)
        np.testing.assert_array_equal(p_hand, module(x))
    for name, value in module.state_dict().items():
        np.testing.assert_array_equal(hand.state_dict()[name], value, err_msg=name)
    assert int(hand.layer1[3].num_batches_tracked) == 3


def test_mlp_builder(rng):
    model = mlp([6, 5, 4, 3], activation="tanh", p_input=0.2, p_hidden=0.5, batchnorm=True, rng=0)
    names = [type(m).__name__ for m in model]
    assert names == ["Flatten", "Dropout", "Linear", "BatchNorm1d", "Tanh", "Dropout", "Linear",
                     "BatchNorm1d", "Tanh", "Dropout", "Linear"]
    gradcheck_module(model, rng.standard_normal((6, 6)))
    with pytest.raises(ValueError, match="mlp: unknown activation 'swish'"):
        mlp([2, 2], activation="swish")


def test_bad_arguments():
    with pytest.raises(ValueError, match="NN4: expected three hidden sizes"):
        NN4(4, hidden=(3, 3))
    with pytest.raises(ValueError, match="Dropout: p is the drop probability"):
        NN4(4, p_input=1.2)
