"""Losses: gradient checks, PyTorch parity and input validation."""
import numpy as np
import pytest
import torch

from mlcvlab import nn
from mlcvlab.testing import gradcheck_loss


def test_cross_entropy(rng):
    logits = rng.standard_normal((6, 4)) * 3
    y = rng.integers(0, 4, 6)
    gradcheck_loss(nn.CrossEntropyLoss(), logits, y)
    t = torch.tensor(logits, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(t, torch.tensor(y))
    tl.backward()
    loss = nn.CrossEntropyLoss()
    assert abs(loss(logits, y) - tl.item()) < 1e-12
    np.testing.assert_allclose(loss.backward(), t.grad.numpy(), atol=1e-12)


def test_cross_entropy_from_probs_matches_logits(rng):
    logits = rng.standard_normal((5, 3))
    y = rng.integers(0, 3, 5)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    a, b = nn.CrossEntropyLoss(), nn.CrossEntropyLoss(from_probs=True)
    assert abs(a(logits, y) - b(p, y)) < 1e-12
    gradcheck_loss(nn.CrossEntropyLoss(from_probs=True), p, y)


def test_bce_with_logits(rng):
    z = rng.standard_normal((5, 2)) * 4
    t = (rng.random((5, 2)) > 0.5).astype(float)
    gradcheck_loss(nn.BCEWithLogitsLoss(), z, t)
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.functional.binary_cross_entropy_with_logits(tz, torch.tensor(t))
    tl.backward()
    loss = nn.BCEWithLogitsLoss()
    assert abs(loss(z, t) - tl.item()) < 1e-12
    np.testing.assert_allclose(loss.backward(), tz.grad.numpy(), atol=1e-12)


def test_bce_probabilities(rng):
    p = rng.uniform(0.05, 0.95, (6, 1))
    t = (rng.random((6, 1)) > 0.5).astype(float)
    gradcheck_loss(nn.BCELoss(), p, t)
    tl = torch.nn.functional.binary_cross_entropy(torch.tensor(p), torch.tensor(t))
    assert abs(nn.BCELoss()(p, t) - tl.item()) < 1e-12


def test_mse(rng):
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    gradcheck_loss(nn.MSELoss(), a, b)
    assert abs(nn.MSELoss()(a, b)
               - torch.nn.functional.mse_loss(torch.tensor(a), torch.tensor(b)).item()) < 1e-12


@pytest.mark.parametrize("margin", [0.0, 1.0])
def test_hinge(margin, rng):
    f = rng.standard_normal(8) * 2
    y = np.where(rng.random(8) > 0.5, 1, -1)
    f[np.abs(np.abs(f) - margin) < 1e-3] += 0.1
    loss = nn.HingeLoss(margin)
    expected = np.mean(np.maximum(0, margin - y * f))
    assert abs(loss(f, y) - expected) < 1e-12
    gradcheck_loss(nn.HingeLoss(margin), f, y)


def test_perceptron_criterion_moves_from_zero():
    loss = nn.HingeLoss(0.0)
    assert loss(np.zeros(3), np.array([1, -1, 1])) == 0.0
    np.testing.assert_allclose(loss.backward(), [-1 / 3, 1 / 3, -1 / 3])   # boundary = mistake


def test_loss_errors():
    with pytest.raises(ValueError, match="CrossEntropyLoss: pred contains NaN"):
        nn.CrossEntropyLoss()(np.array([[np.nan, 1.0]]), np.array([0]))
    with pytest.raises(ValueError,
                       match=r"CrossEntropyLoss: labels must be in \[0, 2\), got range \[0, 5\]"):
        nn.CrossEntropyLoss()(np.zeros((2, 2)), np.array([0, 5]))
    with pytest.raises(TypeError, match="CrossEntropyLoss: expected integer class labels"):
        nn.CrossEntropyLoss()(np.zeros((2, 2)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"MSELoss: expected target of shape \(2, 2\)"):
        nn.MSELoss()(np.zeros((2, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="HingeLoss: labels must be -1 or \\+1"):
        nn.HingeLoss()(np.zeros(2), np.array([0, 1]))
    with pytest.raises(RuntimeError, match="backward called before"):
        nn.MSELoss().backward()


# --------------------------------------------------------------------------- torch's options
def _torch_loss(cls, **kw):
    kw = {k: (torch.tensor(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    return cls(**kw)


def _check_against_torch(ours, theirs, pred, target, rng, tol=1e-12):
    """value and gradient (with a random upstream gradient for 'none') against torch."""
    tp = torch.tensor(pred, requires_grad=True)
    tt = torch.tensor(target)
    expected = theirs(tp, tt)
    got = ours(pred, target)
    if ours.reduction == "none":
        assert isinstance(got, np.ndarray) and got.shape == tuple(expected.shape)
        g = rng.standard_normal(got.shape)
        expected.backward(torch.tensor(g))
        dpred = ours.backward(g)
        np.testing.assert_allclose(got, expected.detach().numpy(), rtol=tol, atol=tol)
    else:
        assert isinstance(got, float)
        expected.backward()
        dpred = ours.backward()
        np.testing.assert_allclose(got, expected.item(), rtol=tol, atol=tol)
    assert dpred.shape == pred.shape and dpred.dtype == pred.dtype
    np.testing.assert_allclose(dpred, tp.grad.numpy(), rtol=1e-10, atol=tol)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5), (2, 4, 3, 2), (4,)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_options_match_torch(reduction, shape, weighted, smoothing, rng):
    pred = rng.standard_normal(shape) * 2
    C = shape[1] if len(shape) > 1 else shape[0]
    tshape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    target = rng.integers(0, C, tshape)
    if target.size > 1:
        target.flat[0] = -100                              # ignored
    w = rng.uniform(0.5, 2.0, C) if weighted else None
    kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
    _check_against_torch(nn.CrossEntropyLoss(**kw), _torch_loss(torch.nn.CrossEntropyLoss, **kw),
                         pred, target, rng)
    gradcheck_loss(nn.CrossEntropyLoss(weight=w, label_smoothing=smoothing, reduction="sum"),
                   pred, target)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_with_class_probabilities_matches_torch(reduction, shape, weighted,
                                                              smoothing, rng):
    pred = rng.standard_normal(shape)
    target = rng.random(shape)
    target /= target.sum(axis=1, keepdims=True)
    w = rng.uniform(0.5, 2.0, shape[1]) if weighted else None
    kw = dict(weight=w, reduction=reduction, label_smoothing=smoothing)
    _check_against_torch(nn.CrossEntropyLoss(**kw), _torch_loss(torch.nn.CrossEntropyLoss, **kw),
                         pred, target, rng)
    gradcheck_loss(nn.CrossEntropyLoss(**kw) if reduction != "none"
                   else nn.CrossEntropyLoss(weight=w, label_smoothing=smoothing), pred, target)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_nll_matches_torch(reduction, weighted, ignore_index, rng):
    pred = np.ascontiguousarray(np.log(rng.dirichlet(np.ones(4), size=(5, 3)).transpose(0, 2, 1)))
    target = rng.integers(0, 4, (5, 3))
    w = rng.uniform(0.5, 2.0, 4) if weighted else None
    kw = dict(weight=w, reduction=reduction, ignore_index=ignore_index)
    _check_against_torch(nn.NLLLoss(**kw), _torch_loss(torch.nn.NLLLoss, **kw), pred, target, rng)
    gradcheck_loss(nn.NLLLoss(weight=w, ignore_index=ignore_index), pred, target)


def test_cross_entropy_all_ignored_is_nan_with_a_zero_gradient_as_torch():
    loss = nn.CrossEntropyLoss()
    value = loss(np.zeros((2, 3)), np.array([-100, -100]))
    assert np.isnan(value)
    assert np.isnan(torch.nn.functional.cross_entropy(torch.zeros(2, 3),
                                                      torch.tensor([-100, -100])).item())
    np.testing.assert_array_equal(loss.backward(), np.zeros((2, 3)))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [None, "elem", "row"])
@pytest.mark.parametrize("pos_weight", [None, "class"])
def test_bce_with_logits_options_match_torch(reduction, weight, pos_weight, rng):
    z = rng.standard_normal((5, 3)) * 3
    t = rng.random((5, 3))
    w = {None: None, "elem": rng.uniform(0.5, 2, (5, 3)), "row": rng.uniform(0.5, 2, (3,))}[weight]
    pw = None if pos_weight is None else rng.uniform(0.5, 3, 3)
    kw = dict(weight=w, reduction=reduction, pos_weight=pw)
    _check_against_torch(nn.BCEWithLogitsLoss(**kw),
                         _torch_loss(torch.nn.BCEWithLogitsLoss, **kw), z, t, rng)
    gradcheck_loss(nn.BCEWithLogitsLoss(weight=w, pos_weight=pw), z, t)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_bce_reductions_match_torch(reduction, rng):
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    _check_against_torch(nn.MSELoss(reduction=reduction), torch.nn.MSELoss(reduction=reduction),
                         a, b, rng)
    p, t = rng.uniform(0.05, 0.95, (4, 3)), rng.random((4, 3))
    w = rng.uniform(0.5, 2, (3,))
    _check_against_torch(nn.BCELoss(weight=w, reduction=reduction),
                         torch.nn.BCELoss(weight=torch.tensor(w), reduction=reduction), p, t, rng,
                         tol=1e-10)


def test_reduction_none_backward_takes_an_upstream_gradient_of_the_losses_shape(rng):
    pred, target = rng.standard_normal((4, 3)), rng.integers(0, 3, 4)
    loss = nn.CrossEntropyLoss(reduction="none")
    losses = loss(pred, target)
    assert losses.shape == (4,)
    g = rng.standard_normal(4)
    total = nn.CrossEntropyLoss(reduction="sum")
    total(pred, target)
    np.testing.assert_allclose(loss.backward(), total.backward())      # dy=None: of the sum
    scaled = loss.backward(g)
    for i in range(4):                                  # row i scaled by g[i]
        np.testing.assert_allclose(scaled[i], g[i] * total.backward()[i])
    with pytest.raises(ValueError, match=r"CrossEntropyLoss.backward: with reduction='none' "
                                         r"expected dy of the losses' shape \(4,\)"):
        loss.backward(np.ones(3))
    mean = nn.CrossEntropyLoss()
    mean(pred, target)
    np.testing.assert_allclose(mean.backward(2.0), 2 * mean.backward())
    with pytest.raises(ValueError, match="expected a scalar dy"):
        mean.backward(np.ones(4))


def test_loss_option_errors():
    with pytest.raises(ValueError, match="MSELoss: reduction must be one of"):
        nn.MSELoss(reduction="avg")
    with pytest.raises(ValueError, match="CrossEntropyLoss: label_smoothing must be in"):
        nn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="CrossEntropyLoss: weight has 2 entries but pred has 3"):
        nn.CrossEntropyLoss(weight=np.ones(2))(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: expected target of shape \(2, 4\)"):
        nn.CrossEntropyLoss()(np.zeros((2, 3, 4)), np.zeros((2, 5), dtype=int))
    with pytest.raises(TypeError, match="NLLLoss: expected integer class labels"):
        nn.NLLLoss()(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="BCEWithLogitsLoss: pos_weight of shape"):
        nn.BCEWithLogitsLoss(pos_weight=np.ones(4))(np.zeros((2, 3)), np.zeros((2, 3)))
