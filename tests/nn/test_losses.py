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
