"""SyncSGD and the local data-parallel step: K shards against the same weights."""
import numpy as np
import pytest

from mlcvlab.models import NN4, mlp
from mlcvlab.models.nn4 import emp_loss_grad
from mlcvlab.nn import CrossEntropyLoss
from mlcvlab.optim import SGD, Adam
from mlcvlab.optim.sync_sgd import SyncSGD
from mlcvlab.parallel import (DataParallelStep, LocalCommunicator, make_step_fn,
                              ring_allreduce_bandwidth)
from mlcvlab.train import Trainer


def _data(n=32, d=10, classes=3, seed=0):
    g = np.random.default_rng(seed)
    return g.normal(size=(n, d)), g.integers(0, classes, n)


def _mlp64(seed=0, **kw):
    return mlp([10, 16, 12, 3], rng=seed, **kw).astype(np.float64)


def test_one_step_k4_equals_whole_batch_step():
    X, y = _data()
    ref, par = _mlp64(), _mlp64()
    np.testing.assert_array_equal(ref.flat().data, par.flat().data)
    loss = CrossEntropyLoss()
    ref.zero_grad()
    value = loss(ref(X), y)
    ref.backward(loss.backward())
    SGD(ref.parameters(), lr=0.5).step()
    sync = SyncSGD(par, lr=0.5, workers=4, loss=CrossEntropyLoss())
    got = sync.step(X, y)
    assert abs(got - value) < 1e-12
    np.testing.assert_allclose(par.flat().data, ref.flat().data, rtol=0, atol=1e-10)
    assert not np.array_equal(par.flat().data, _mlp64().flat().data)   # it did move


def test_full_data_rounds_equal_full_batch_gradient_descent():
    X, y = _data(n=24)
    ref, par = _mlp64(1), _mlp64(1)
    loss = CrossEntropyLoss()
    for _ in range(5):
        ref.zero_grad()
        loss(ref(X), y)
        ref.backward(loss.backward())
        ref.flat().data[...] -= 0.3 * ref.flat().grad
    SyncSGD(par, lr=0.3, workers=3, loss=CrossEntropyLoss()).fit(X, y, rounds=5)
    np.testing.assert_allclose(par.flat().data, ref.flat().data, rtol=0, atol=1e-10)


def test_unequal_shards_are_weighted_to_the_whole_batch_gradient():
    X, y = _data(n=30)
    ref, par = _mlp64(5), _mlp64(5)
    loss = CrossEntropyLoss()
    ref.zero_grad()
    loss(ref(X), y)
    ref.backward(loss.backward())
    ref.flat().data[...] -= 0.5 * ref.flat().grad
    SyncSGD(par, lr=0.5, workers=4, loss=CrossEntropyLoss()).step(X, y)   # shards 7, 8, 7, 8
    np.testing.assert_allclose(par.flat().data, ref.flat().data, rtol=0, atol=1e-10)


def test_nn4_round_averages_per_worker_emp_loss_grads():
    """With BN each worker uses its own mini-batch statistics: the round's gradient is
    the mean of emp_loss_grad on each mini-batch, and BN running stats are averaged."""
    X, y = _data(n=40, d=12, classes=4, seed=3)
    model = NN4(12, hidden=(10, 8, 6), n_classes=4, p_input=0.0, p_hidden=0.0,
                rng=0).astype(np.float64)
    twin = NN4(12, hidden=(10, 8, 6), n_classes=4, p_input=0.0, p_hidden=0.0,
               rng=0).astype(np.float64)
    w0 = twin.flat().data.copy()
    grads, means = [], []
    for k in range(4):
        twin.load_state_dict(model.state_dict())
        _, g = emp_loss_grad(twin, X[10 * k:10 * (k + 1)], y[10 * k:10 * (k + 1)])
        grads.append(g)
        means.append(twin.layer1[3].running_mean.copy())
    SyncSGD(model, lr=0.2, workers=4).step(X, y)
    np.testing.assert_allclose(model.flat().data, w0 - 0.2 * np.mean(grads, axis=0), atol=1e-12)
    np.testing.assert_allclose(model.layer1[3].running_mean, np.mean(means, axis=0), atol=1e-12)


def test_k1_step_equals_trainer_step_and_timings_recorded():
    X, y = _data(n=16)
    a, b = _mlp64(2), _mlp64(2)
    ta = Trainer(a, CrossEntropyLoss(), Adam(a.parameters(), lr=0.01))
    tb = Trainer(b, CrossEntropyLoss(), Adam(b.parameters(), lr=0.01),
                 step_fn=make_step_fn("local", 1, b))
    for _ in range(3):
        la, _ = ta.train_step(X, y)
        lb, t = tb.train_step(X, y)
    assert la == pytest.approx(lb, abs=1e-12)
    np.testing.assert_allclose(a.flat().data, b.flat().data, atol=1e-12)
    assert set(t) == {"compute_seconds", "communication_seconds", "update_seconds",
                      "bytes_communicated"}
    assert t["bytes_communicated"] == 0


def test_dropout_masks_differ_per_worker_and_are_reproducible():
    X, y = _data(n=32)
    runs = []
    for _ in range(2):
        model = _mlp64(4, p_hidden=0.5)
        step = DataParallelStep(model, LocalCommunicator(2), seed=7)
        opt = SGD(model.parameters(), lr=0.1)
        tr = Trainer(model, CrossEntropyLoss(), opt, step_fn=step)
        for _ in range(3):
            _, t = tr.train_step(X, y)
        runs.append(model.flat().data.copy())
        assert t["bytes_communicated"] == step.packed[0].nbytes
    np.testing.assert_array_equal(runs[0], runs[1])
    other = _mlp64(4, p_hidden=0.5)
    step = DataParallelStep(other, LocalCommunicator(2), seed=8)
    step(Trainer(other, CrossEntropyLoss(), SGD(other.parameters(), lr=0.1)), X, y)
    assert not np.array_equal(other.flat().data, _mlp64(4, p_hidden=0.5).flat().data)


def test_local_allreduce_mean_is_rank_ordered_mean():
    buf = np.arange(12, dtype=np.float64).reshape(3, 4)
    want = buf.mean(axis=0)
    LocalCommunicator(3).allreduce_mean(buf)
    np.testing.assert_allclose(buf, np.tile(want, (3, 1)))


def test_errors_are_clear():
    model = _mlp64()
    with pytest.raises(ValueError, match="workers"):
        SyncSGD(model, lr=0.1, workers=0, loss=CrossEntropyLoss())
    with pytest.raises(ValueError, match="emp_loss_grad"):
        SyncSGD(model, lr=0.1, workers=2)
    with pytest.raises(ValueError, match="comm='cuda' runs the handout's CUDA workers"):
        SyncSGD(model, lr=0.1, workers=2, comm="cuda", loss=CrossEntropyLoss())
    sync = SyncSGD(model, lr=0.1, workers=3, loss=CrossEntropyLoss())
    with pytest.raises(ValueError, match="at least 3"):
        sync.step(*_data(n=2))
    with pytest.raises(ValueError, match="shape"):
        LocalCommunicator(2).allreduce_mean(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="unknown dist"):
        make_step_fn("gloo", 2, model)
    with pytest.raises(ValueError, match="size"):
        LocalCommunicator(0)


def test_ring_bandwidth_formula():
    assert ring_allreduce_bandwidth(1000, 0.5, 2) == pytest.approx(2 * 1 / 2 * 1000 / 0.5)
    assert ring_allreduce_bandwidth(1000, 0.5, 4) == pytest.approx(1.5 * 1000 / 0.5)
    assert ring_allreduce_bandwidth(1000, 0.5, 1) == 0.0
