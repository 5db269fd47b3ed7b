"""Layers: finite-difference gradient checks (float64, train mode), PyTorch parity
(forward, backward, batch-norm running statistics) and input validation."""
import re

import numpy as np
import pytest
import torch

from mlcvlab import nn
from mlcvlab.testing import gradcheck_module

torch.set_num_threads(1)


def _t(a, grad=False):
    return torch.tensor(np.asarray(a), requires_grad=grad)


@pytest.mark.parametrize("layer,shape", [
    (lambda: nn.Linear(4, 3), (5, 4)),
    (lambda: nn.Linear(4, 3, bias=False), (5, 4)),
    (lambda: nn.BatchNorm1d(3), (6, 3)),
    (lambda: nn.BatchNorm1d(3), (2, 3)),
    (lambda: nn.BatchNorm2d(2), (3, 2, 4, 5)),
    (lambda: nn.BatchNorm2d(2), (1, 2, 3, 2)),
    (lambda: nn.Dropout(0.4, rng=0), (6, 5)),
    (lambda: nn.ReLU(), (4, 5)),
    (lambda: nn.LeakyReLU(0.1), (4, 5)),
    (lambda: nn.Sigmoid(), (4, 5)),
    (lambda: nn.Tanh(), (4, 5)),
    (lambda: nn.Softmax(), (4, 5)),
    (lambda: nn.Flatten(), (2, 3, 2, 2)),
    (lambda: nn.GlobalAvgPool2d(), (2, 3, 4, 5)),
    (lambda: nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5, rng=1),
                           nn.Linear(6, 2)), (7, 4)),
])
def test_gradcheck(layer, shape, rng):
    x = rng.standard_normal(shape)
    gradcheck_module(layer(), x)


def test_linear_parity_with_torch(rng):
    for dtype, tol in ((np.float32, 1e-5), (np.float64, 1e-12)):
        layer = nn.Linear(6, 4).astype(dtype)
        x = rng.standard_normal((5, 6)).astype(dtype)
        dy = rng.standard_normal((5, 4)).astype(dtype)
        tl = torch.nn.Linear(6, 4).to(torch.float32 if dtype == np.float32 else torch.float64)
        with torch.no_grad():
            tl.weight.copy_(_t(layer.weight.data))
            tl.bias.copy_(_t(layer.bias.data))
        tx = _t(x, grad=True)
        ty = tl(tx)
        ty.backward(_t(dy))
        y = layer(x)
        dx = layer.backward(dy)
        assert y.dtype == dtype and dx.dtype == dtype
        np.testing.assert_allclose(y, ty.detach().numpy(), atol=tol)
        np.testing.assert_allclose(dx, tx.grad.numpy(), atol=tol)
        np.testing.assert_allclose(layer.weight.grad, tl.weight.grad.numpy(), atol=tol)
        np.testing.assert_allclose(layer.bias.grad, tl.bias.grad.numpy(), atol=tol)


@pytest.mark.parametrize("ours,theirs,shape", [
    (nn.BatchNorm1d, torch.nn.BatchNorm1d, (8, 3)),
    (nn.BatchNorm2d, torch.nn.BatchNorm2d, (4, 3, 5, 6)),
])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-4), (np.float64, 1e-10)])
def test_batchnorm_parity_running_stats_and_eval(ours, theirs, shape, dtype, tol, rng):
    bn = ours(shape[1], momentum=0.2).astype(dtype)
    tbn = theirs(shape[1], momentum=0.2).to(torch.float32 if dtype == np.float32 else torch.float64)
    gamma = rng.standard_normal(shape[1]).astype(dtype)
    beta = rng.standard_normal(shape[1]).astype(dtype)
    bn.weight.data[...] = gamma
    bn.bias.data[...] = beta
    with torch.no_grad():
        tbn.weight.copy_(_t(gamma))
        tbn.bias.copy_(_t(beta))
    for step in range(4):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        bn.zero_grad()
        tbn.zero_grad()
        tx = _t(x, grad=True)
        ty = tbn(tx)
        ty.backward(_t(dy))
        y = bn(x)
        dx = bn.backward(dy)
        np.testing.assert_allclose(y, ty.detach().numpy(), atol=tol)
        np.testing.assert_allclose(dx, tx.grad.numpy(), atol=tol * 10)
        np.testing.assert_allclose(bn.weight.grad, tbn.weight.grad.numpy(), atol=tol * 10)
        np.testing.assert_allclose(bn.bias.grad, tbn.bias.grad.numpy(), atol=tol * 10)
    np.testing.assert_allclose(bn.running_mean, tbn.running_mean.numpy(), atol=tol)
    np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), atol=tol)
    bn.eval()
    tbn.eval()
    x = rng.standard_normal(shape).astype(dtype)
    np.testing.assert_allclose(bn(x), tbn(_t(x)).detach().numpy(), atol=tol)


@pytest.mark.parametrize("ours,theirs", [
    (nn.ReLU(), torch.nn.ReLU()), (nn.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)),
    (nn.Sigmoid(), torch.nn.Sigmoid()), (nn.Tanh(), torch.nn.Tanh()),
    (nn.Softmax(), torch.nn.Softmax(dim=-1)),
])
def test_activation_parity(ours, theirs, rng):
    x = rng.standard_normal((6, 5)).astype(np.float32)
    dy = rng.standard_normal((6, 5)).astype(np.float32)
    tx = _t(x, grad=True)
    theirs(tx).backward(_t(dy))
    np.testing.assert_allclose(ours(x), theirs(_t(x)).numpy(), atol=1e-6)
    np.testing.assert_allclose(ours.backward(dy), tx.grad.numpy(), atol=1e-6)


def test_dropout_module_fresh_masks_eval_identity_and_expectation():
    d = nn.Dropout(0.25, rng=0)
    x = np.ones((400, 400), dtype=np.float32)
    y1, y2 = d(x), d(x)
    assert not np.array_equal(y1, y2)
    assert abs(float(y1.mean()) - 1.0) < 0.01
    assert abs(float((y1 == 0).mean()) - 0.25) < 0.01
    d.eval()
    np.testing.assert_array_equal(d(x), x)


def test_flat_buffer_views_and_updates():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    flat = model.flat()
    assert flat.size == model.num_parameters() == 3 * 4 + 4 + 4 + 4 + 4 * 2 + 2
    for p in model.parameters():
        assert np.shares_memory(p.data, flat.data) and np.shares_memory(p.grad, flat.grad)
    assert model.flat() is flat                              # built once
    flat.data -= 1.0                                         # a step on the buffer...
    np.testing.assert_array_equal(model[0].weight.data.ravel(),
                                  flat.data[:12])            # ...is the model's
    # weight decay applies to weights only, not to biases or BN scale/shift
    expected = np.concatenate([np.ones(12), np.zeros(4), np.zeros(8), np.ones(8), np.zeros(2)])
    np.testing.assert_array_equal(flat.decay_mask, expected.astype(bool))
    x = np.ones((5, 3), dtype=np.float32)
    model(x)
    model.backward(np.ones((5, 2), dtype=np.float32))
    assert np.abs(flat.grad).sum() > 0
    model.zero_grad()
    assert not flat.grad.any()


def test_astype_state_dict_roundtrip(rng):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    model(rng.standard_normal((6, 3)).astype(np.float32))
    state = model.state_dict()
    assert set(state) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                          "1.running_var", "1.num_batches_tracked", "3.weight", "3.bias"}
    model.astype(np.float64)
    assert model.dtype == np.float64 and model[1].running_mean.dtype == np.float64
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    other.flat()
    other.load_state_dict(state)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    assert np.shares_memory(other[0].weight.data, other.flat().data)   # load keeps the buffer
    with pytest.raises(ValueError, match="missing keys"):
        other.load_state_dict({"0.weight": state["0.weight"]})
    bad = dict(state)
    bad["0.weight"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"'0.weight' expected shape \(4, 3\), got \(2, 2\)"):
        other.load_state_dict(bad)


def test_bad_input_messages():
    with pytest.raises(ValueError,
                       match=r"Linear: expected size 4 on the last axis, got input shape \(2, 3\)"):
        nn.Linear(4, 2)(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="Linear: expected a floating input"):
        nn.Linear(4, 2)(np.ones((2, 4), dtype=np.int32))
    with pytest.raises(ValueError, match=r"BatchNorm2d: expected a 4-D input, got shape \(2, 3\)"):
        nn.BatchNorm2d(3)(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"Dropout: p is the drop probability and must be in "
                                         r"\[0, 1\], got 1.5"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="Linear: in_features must be a positive integer, got 0"):
        nn.Linear(0, 3)
    with pytest.raises(ValueError, match="Conv2d: stride must be >= 1"):
        nn.Conv2d(1, 2, 3, stride=0)
    with pytest.raises(RuntimeError, match="backward called without a forward"):
        nn.Linear(2, 2).backward(np.ones((1, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="batchnorm: needs more than one value per feature"):
        nn.BatchNorm1d(3)(np.ones((1, 3), dtype=np.float32))


def test_float32_stays_float32(rng):
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(4, 3), nn.Sigmoid())
    x = rng.standard_normal((8, 5)).astype(np.float32)
    y = model(x)
    assert y.dtype == np.float32
    assert model.backward(np.ones_like(y)).dtype == np.float32
    assert all(p.grad.dtype == np.float32 for p in model.parameters())


def _lenet_like(rng_seed=0):
    return nn.Sequential(nn.Dropout(0.2, rng=rng_seed), nn.Conv2d(1, 3, 3, padding=1, rng=rng_seed),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 4,
                                                                             rng=rng_seed))


@pytest.mark.parametrize("build, shape", [
    (lambda: _lenet_like(), (5, 1, 6, 6)),
    (lambda: nn.Sequential(nn.Linear(6, 5, rng=0), nn.ReLU(), nn.Linear(5, 3, rng=0)), (4, 6)),
])
def test_set_input_grad_false_skips_dx_and_keeps_every_parameter_gradient(build, shape, rng):
    x = rng.standard_normal(shape)
    grads = []
    for needed in (True, False):
        model = build().astype(np.float64).set_input_grad(needed)
        model.zero_grad()
        y = model(x)
        dx = model.backward(np.cos(y))
        assert (dx is None) == (not needed)
        if needed:
            assert dx.shape == x.shape
        grads.append([p.grad.copy() for p in model.parameters()])
    for full, skipped in zip(*grads):
        np.testing.assert_array_equal(full, skipped)


def test_sequential_set_input_grad_marks_the_layers_up_to_the_first_with_parameters():
    model = _lenet_like()
    model.set_input_grad(False)
    assert [m.input_grad for m in model] == [False, False, True, True, True, True]
    assert model.set_input_grad(True) is model
    assert all(m.input_grad for m in model.modules())


def test_grad_functions_skip_dx_only(rng):
    from mlcvlab.nn import basis, conv
    x, W, b = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3)), np.ones(4)
    y, cache = conv.conv2d(x, W, b, 1, 1)
    full, skipped = conv.conv2d_grad(np.sin(y), cache), conv.conv2d_grad(np.sin(y), cache,
                                                                         input_grad=False)
    assert skipped[0] is None
    np.testing.assert_array_equal(full[1], skipped[1])
    np.testing.assert_array_equal(full[2], skipped[2])
    y, cache = basis.linear(x.reshape(2, -1), rng.standard_normal((3, 75)))
    assert basis.linear_grad(y, cache, input_grad=False)[0] is None
    np.testing.assert_array_equal(basis.linear_grad(y, cache)[1],
                                  basis.linear_grad(y, cache, input_grad=False)[1])


def _mlp_with_grads(rng):
    model = nn.Sequential(nn.Linear(4, 5, rng=0), nn.ReLU(), nn.Linear(5, 3, rng=0))
    model = model.astype(np.float64)
    x = rng.standard_normal((6, 4))
    return model, x


def test_zero_grad_is_lazy_but_every_reader_sees_zeros(rng):
    """zero_grad only marks the gradients; p.grad, flat.grad and a layer that takes the
    zeroed array (grad_to_overwrite) all behave as if the zeros had been written."""
    model, x = _mlp_with_grads(rng)
    flat = model.flat()
    flat._grad[...] = 7.0                               # stale values under the mark
    model.zero_grad()
    w = model[0].weight
    assert not w.grad.any()                             # the getter writes the zeros
    assert w.grad_to_overwrite() is None                # read already: add, don't overwrite
    model.zero_grad()
    assert not flat.grad.any() and not any(p._zero_pending for p in model.parameters())
    flat._grad[...] = 7.0
    model.zero_grad()
    taken = w.grad_to_overwrite()
    assert taken is not None and np.shares_memory(taken, flat.grad)
    assert w.grad_to_overwrite() is None                # taken once: the next adds
    taken[...] = 1.0                                    # the taker writes the whole gradient
    g = flat.grad                                       # the others are written as zeros
    assert (g[:20] == 1.0).all() and not g[20:].any()


def test_gradients_accumulate_over_backward_calls_after_a_lazy_zero(rng):
    """Two backward calls give twice the gradient of one: the first writes into the zeroed
    arrays, the second adds (Linear, with and without a flat buffer)."""
    for flat in (True, False):
        model, x = _mlp_with_grads(rng)
        if flat:
            model.flat()
        dy = np.cos(model(x))
        model.zero_grad()
        model.backward(dy)
        once = [p.grad.copy() for p in model.parameters()]
        model.zero_grad()
        model(x)
        model.backward(dy)
        model(x)
        model.backward(dy)
        for p, g in zip(model.parameters(), once):
            np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-12)
        x2 = x @ model[0].weight.data.T
        np.testing.assert_allclose(once[2], (dy.T @ np.maximum(x2 + model[0].bias.data, 0)),
                                   rtol=1e-12)


def test_linear_backward_with_a_wrong_dy_leaves_the_gradients_zero(rng):
    model, x = _mlp_with_grads(rng)
    model.flat()._grad[...] = 7.0
    model.zero_grad()
    model(x)
    with pytest.raises(ValueError, match=r"linear_grad: expected dy of the forward output's "
                                         r"shape \(6, 3\), got \(6, 2\)"):
        model.backward(np.ones((6, 2)))
    assert not model.flat().grad.any()


def test_optimizer_zero_grad_is_lazy_too(rng):
    from mlcvlab import optim
    model, x = _mlp_with_grads(rng)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.backward(np.cos(model(x)))
    assert opt.flat.grad.any()
    opt.zero_grad()
    assert all(p._zero_pending for p in model.parameters())
    before = opt.flat.data.copy()
    opt.step()                                          # reads zeros: no change at all
    np.testing.assert_array_equal(opt.flat.data, before)


EVERY_LAYER = [
    (lambda: nn.Linear(6, 3), (4, 6)),
    (lambda: nn.Conv2d(2, 3, 3), (4, 2, 5, 5)),
    (lambda: nn.MaxPool2d(2), (4, 2, 6, 6)),
    (lambda: nn.AvgPool2d(2), (4, 2, 6, 6)),
    (lambda: nn.GlobalAvgPool2d(), (4, 2, 3, 3)),
    (lambda: nn.Flatten(), (4, 2, 3, 3)),
    (lambda: nn.BatchNorm1d(6), (4, 6)),
    (lambda: nn.BatchNorm2d(2), (4, 2, 5, 5)),
    (lambda: nn.Dropout(0.5, rng=0), (4, 6)),
    (lambda: nn.ReLU(), (4, 6)),
    (lambda: nn.ReLU(), (4, 2, 5, 5)),
    (lambda: nn.LeakyReLU(0.1), (4, 6)),
    (lambda: nn.Sigmoid(), (4, 6)),
    (lambda: nn.Tanh(), (4, 6)),
    (lambda: nn.Softmax(), (4, 6)),
]


@pytest.mark.parametrize("layer,shape", EVERY_LAYER)
def test_backward_rejects_a_dy_of_another_shape_by_name(layer, shape, rng):
    """A dy that would broadcast (one column) or not (one row more) is refused with a message
    naming the function and the expected shape, never turned into a gradient of the wrong
    values."""
    m = layer().train()
    y = m(rng.standard_normal(shape).astype(np.float32))
    for bad in (np.ones(y.shape[:-1] + (1,), np.float32),
                np.ones((y.shape[0] + 1,) + y.shape[1:], np.float32)):
        with pytest.raises(ValueError, match=r"expected dy of the forward output's shape "
                                             + re.escape(str(y.shape))):
            m.backward(bad)


@pytest.mark.parametrize("layer,shape", EVERY_LAYER)
def test_backward_before_forward_says_what_to_do(layer, shape):
    with pytest.raises(RuntimeError, match="backward called without a forward pass"):
        layer().train().backward(np.ones(shape, np.float32))


def test_astype_refuses_a_model_on_the_gpu_before_touching_it():
    """On "cuda" the kernels are float32: astype(float64) there names the way out instead of
    failing half-way in a host/device copy; astype to the dtype it has is a no-op."""
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    for m in model.modules():               # as model.to("cuda") marks them (no GPU needed)
        object.__setattr__(m, "device", "cuda")
    weight = model[0].weight.data
    assert model.astype(np.float32) is model and model[0].weight.data is weight
    with pytest.raises(TypeError, match=r"model.cpu\(\).astype"):
        model.astype(np.float64)
    assert model[0].weight.data is weight and weight.dtype == np.float32
