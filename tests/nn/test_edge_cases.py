"""Edge cases that behave as torch does (issue #20): ReLU's gradient at nan, empty inputs,
Flatten's start_dim / end_dim."""
import numpy as np
import pytest
import torch

from mlcvlab import nn
from mlcvlab.nn import basis, kernels


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_passes_the_gradient_at_a_nan_input_as_torch(numba, dtype, monkeypatch):
    if not numba:
        monkeypatch.setattr(kernels, "available", lambda: False)
    x = np.array([[np.nan, 1.0, -1.0, 0.0, -0.0, np.inf, -np.inf]], dtype=dtype)
    dy = np.full(x.shape, 2.0, dtype=dtype)
    layer = nn.ReLU()
    y = layer.forward(x)
    got = layer.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.relu(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(got, xt.grad.numpy())
    assert got[0, 0] == 2.0


@pytest.mark.parametrize("shape,axis", [((3, 0), 1), ((0, 3), 1), ((0, 3), 0), ((2, 0, 4), 1)])
def test_softmax_of_an_empty_axis_or_batch_is_empty(shape, axis):
    x = np.zeros(shape)
    y, cache = basis.softmax(x, axis=axis)
    assert y.shape == tuple(torch.softmax(torch.zeros(shape), dim=axis).shape)
    assert basis.softmax_grad(np.zeros(shape), cache).shape == shape
    layer = nn.Softmax()
    assert layer.forward(np.zeros((0, 5))).shape == (0, 5)


def test_flatten_of_an_empty_batch_is_empty():
    layer = nn.Flatten()
    y = layer.forward(np.zeros((0, 3, 4)))
    assert y.shape == tuple(torch.nn.Flatten()(torch.zeros(0, 3, 4)).shape) == (0, 12)
    assert layer.backward(np.zeros((0, 12))).shape == (0, 3, 4)


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize("layer,shape", [(nn.BatchNorm2d, (0, 3, 2, 2)), (nn.BatchNorm1d, (0, 3)),
                                         (nn.BatchNorm1d, (0, 3, 5))])
def test_eval_batchnorm_of_an_empty_batch_is_empty(layer, shape, numba, monkeypatch):
    if not numba:
        monkeypatch.setattr(kernels, "available", lambda: False)
    bn = layer(3).eval()
    assert bn.forward(np.zeros(shape, dtype=np.float32)).shape == shape


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (0, 3, 4), (2, 0, 4), (3,), ()])
@pytest.mark.parametrize("start,end", [(1, -1), (0, -1), (0, 0), (-2, -1), (1, 2), (-1, -1)])
def test_flatten_start_and_end_dims_match_torch(shape, start, end):
    x = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    try:
        expected = torch.nn.Flatten(start, end)(torch.tensor(x))
    except (IndexError, RuntimeError):
        with pytest.raises(ValueError, match="Flatten"):
            nn.Flatten(start, end).forward(x)
        return
    layer = nn.Flatten(start, end)
    y = layer.forward(x)
    np.testing.assert_array_equal(y, expected.numpy())
    assert layer.backward(np.ones(y.shape)).shape == shape


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (0, 3, 2, 2)])
def test_training_batchnorm_of_an_empty_batch_is_empty_and_keeps_its_statistics(shape):
    """as torch: an empty output, running statistics untouched, num_batches_tracked counts it,
    zero parameter gradients."""
    bn = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(3).astype(np.float64)
    y = bn.forward(np.zeros(shape))
    assert y.shape == shape
    assert bn.backward(np.zeros(shape)).shape == shape
    np.testing.assert_array_equal(bn.running_mean, np.zeros(3))
    np.testing.assert_array_equal(bn.running_var, np.ones(3))
    assert bn.num_batches_tracked == 1
    np.testing.assert_array_equal(bn.weight.grad, np.zeros(3))


def test_dropout_with_p_1_drops_everything_in_training_as_torch():
    x = np.ones((3, 4))
    layer = nn.Dropout(1.0)
    np.testing.assert_array_equal(layer.forward(x), np.zeros((3, 4)))
    np.testing.assert_array_equal(layer.backward(np.ones((3, 4))), np.zeros((3, 4)))
    layer.eval()
    np.testing.assert_array_equal(layer.forward(x), x)
