"""The batch split over threads (mlcvlab.nn.threadsplit): a split pass computes what the
unsplit pass computes (float64: to rounding), leaves nothing half-done, and splits only where
the rule allows."""
import threading

import numpy as np
import pytest

from mlcvlab import models, nn
from mlcvlab.nn import kernels, threadsplit
from mlcvlab.nn.module import Sequential
from mlcvlab.nn.modules import (BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear,
                                MaxPool2d, ReLU)
from mlcvlab.optim import SGD


@pytest.fixture
def parts(monkeypatch):
    """Split into ``parts.n`` parts whatever the machine's thread count, from tiny batches."""
    class Parts:
        n = 3
    monkeypatch.setattr(threadsplit.kernels, "num_threads", lambda: Parts.n)
    monkeypatch.setattr(threadsplit, "MIN_VALUES", 1)
    monkeypatch.setattr(threadsplit, "MIN_PART_SAMPLES", 2)
    return Parts


def _pass(model, x, y, split: bool, steps: int = 1, lr: float = 0.1):
    """steps of SGD (momentum) on x, y; returns losses, dx of the last step, the flat
    parameters, the floating buffers and the eval output."""
    loss = nn.CrossEntropyLoss()
    opt = SGD(model.parameters(), lr=lr, momentum=0.9)
    previous = threadsplit.set_enabled(split)
    try:
        losses = []
        for _ in range(steps):
            model.train()
            model.zero_grad()
            losses.append(loss(model.forward(x), y))
            dx = model.backward(loss.backward())
            opt.step()
        buffers = [b.copy() for _, b in model.named_buffers()]
        model.eval()
        out = model.forward(x)
    finally:
        threadsplit.set_enabled(previous)
    return np.array(losses), dx, model.flat().data.copy(), buffers, out


def _resnet(seed=0):
    return models.resnet_cifar(20, rng=seed).astype(np.float64)


def _lenet(seed=0):
    return models.lenet5(rng=seed).astype(np.float64)


@pytest.mark.parametrize("build, shape", [(_lenet, (7, 1, 28, 28)), (_resnet, (7, 3, 8, 8))])
def test_split_pass_equals_whole_batch_float64(parts, build, shape):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(shape), rng.integers(0, 10, shape[0])
    whole = _pass(build(), x, y, split=False, steps=3)
    model = build()
    split = _pass(model, x, y, split=True, steps=3)
    assert len(model.__dict__["_replicas"]) == 2          # 3 parts: the model + 2 replicas
    np.testing.assert_allclose(split[0], whole[0], rtol=1e-12)        # losses
    np.testing.assert_allclose(split[1], whole[1], rtol=1e-9, atol=1e-14)  # dx
    np.testing.assert_allclose(split[2], whole[2], rtol=1e-11, atol=1e-14)  # weights
    for a, b in zip(split[3], whole[3]):          # running statistics, batches tracked, once
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(split[4], whole[4], rtol=1e-10, atol=1e-13)  # eval output


def test_resnet_float32_split_close_to_whole_batch(parts):
    parts.n = 2
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((6, 3, 8, 8)).astype(np.float32), rng.integers(0, 10, 6)
    whole = _pass(models.resnet_cifar(20, rng=0), x, y, split=False)
    split = _pass(models.resnet_cifar(20, rng=0), x, y, split=True)
    np.testing.assert_allclose(split[0], whole[0], rtol=1e-5)
    np.testing.assert_allclose(split[2], whole[2], rtol=1e-4, atol=1e-6)


def test_gradients_accumulate_over_split_backwards(parts):
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((5, 1, 28, 28)), rng.integers(0, 10, 5)
    model, loss = _lenet(), nn.CrossEntropyLoss()
    model.zero_grad()
    loss(model.forward(x), y)
    model.backward(loss.backward())
    once = model.flat().grad.copy()
    loss(model.forward(x), y)
    model.backward(loss.backward())
    np.testing.assert_allclose(model.flat().grad, 2 * once, rtol=1e-12)
    assert np.abs(once).max() > 0


def test_parameters_without_flat_buffer_and_after_astype(parts):
    """Replicas follow the model when its parameters are rebound (astype) and add their
    gradients parameter by parameter when there is no flat buffer."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((4, 1, 28, 28)), rng.integers(0, 10, 4)
    model, loss = models.lenet5(rng=0), nn.CrossEntropyLoss()
    model.forward(x.astype(np.float32))                   # replicas of the float32 model
    model.astype(np.float64)
    ref = _lenet()
    for m, split in ((ref, False), (model, True)):
        threadsplit.set_enabled(split)
        try:
            m.zero_grad()
            loss(m.forward(x), y)
            m.backward(loss.backward())
        finally:
            threadsplit.set_enabled(True)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert p.grad.dtype == np.float64
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-10, atol=1e-15)


def _conv_net(*extra):
    return Sequential(Conv2d(1, 2, 3, rng=0), *extra, Flatten(), Linear(2 * 4 * 4, 3, rng=0))


@pytest.mark.parametrize("model, training, splits", [
    (_conv_net(ReLU()), True, True),
    (_conv_net(BatchNorm2d(2)), True, True),               # batch statistics added up
    (_conv_net(Dropout(0.5)), True, False),                # a training mask: not split
    (_conv_net(Dropout(0.5)), False, True),                # identity in evaluation
    (_conv_net(MaxPool2d(1, return_indices=True)), False, False),
    (Sequential(Flatten(), Linear(36, 3, rng=0)), True, False),    # no convolution
    (Sequential(Conv2d(1, 2, 3, rng=0), Flatten(), BatchNorm1d(32), Linear(32, 3, rng=0)),
     True, False),                                         # 1-D batch statistics
])
def test_the_rule(parts, model, training, splits):
    model.train(training)
    x = np.zeros((6, 1, 6, 6), dtype=np.float32)
    assert (threadsplit.parts_for(model, x) is not None) == splits


def test_no_split_when_small_disabled_or_patched(parts, monkeypatch):
    model = _conv_net(ReLU())
    x = np.zeros((6, 1, 6, 6), dtype=np.float32)
    assert threadsplit.parts_for(model, x) is not None
    assert threadsplit.parts_for(model, x[:5]) is None            # fewer than 2 per part
    assert threadsplit.parts_for(model, x[0]) is None             # not a 4-D batch
    with threadsplit.disabled():
        assert threadsplit.parts_for(model, x) is None
    monkeypatch.setattr(threadsplit, "MIN_VALUES", x.size + 1)
    assert threadsplit.parts_for(model, x) is None
    monkeypatch.setattr(threadsplit, "MIN_VALUES", 1)
    layer = model[1]
    object.__setattr__(layer, "forward", layer.forward)          # a trace wraps a layer
    assert threadsplit.parts_for(model, x) is None
    parts.n = 1
    del layer.__dict__["forward"]
    assert threadsplit.parts_for(model, x) is None                # one thread


def test_subclass_rewriting_forward_does_not_split(parts):
    class Mine(ReLU):
        def forward(self, x):                                     # couples the samples
            return x - x.mean(axis=0)
    model = _conv_net(Mine())
    assert threadsplit.parts_for(model, np.zeros((6, 1, 6, 6))) is None


def test_wrong_dy_is_refused(parts):
    model = _conv_net(ReLU())
    model.forward(np.ones((6, 1, 6, 6), np.float32))
    with pytest.raises(ValueError, match="batch of 6"):
        model.backward(np.ones((5, 3), np.float32))


def test_a_failing_part_raises_its_own_error_and_nobody_hangs(parts):
    """A part that fails after its batch norm waits for the others breaks the barrier: the
    other parts stop, and the user sees the failed part's error."""
    class Fails(ReLU):
        def splits_over_batch(self):
            return True

        def forward(self, x):
            if threadsplit.rank() == 1:
                raise RuntimeError("part 1 failed")
            return super().forward(x)

    model = Sequential(Conv2d(1, 2, 3, rng=0), Fails(), BatchNorm2d(2), Flatten(),
                       Linear(32, 3, rng=0))
    done = []
    worker = threading.Thread(target=lambda: done.append(_raises(model)))
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "a split pass hung after one part failed"
    assert done == ["part 1 failed"]


def _raises(model):
    try:
        model.forward(np.ones((6, 1, 6, 6), np.float32))
    except RuntimeError as err:
        return str(err)
    return None


def test_nested_sequentials_do_not_split_again(parts, monkeypatch):
    calls = []
    original = threadsplit.forward
    monkeypatch.setattr(threadsplit, "forward",
                        lambda m, x, p: calls.append(m) or original(m, x, p))
    inner = Sequential(Conv2d(1, 2, 3, rng=0), ReLU())
    model = Sequential(inner, Flatten(), Linear(32, 3, rng=0))
    model.forward(np.ones((6, 1, 6, 6), np.float32))
    assert calls == [model]
    with threadsplit.nested():                     # inside another module's forward
        inner.forward(np.ones((6, 1, 6, 6), np.float32))
    assert calls == [model]


def test_the_parts_of_a_team_get_the_same_sum():
    crew, out = threadsplit.Team(3, batch=9), [None] * 3

    def part(i):
        threadsplit._state.team, threadsplit._state.rank = crew, i
        out[i] = crew.allreduce(np.full(4, float(i + 1)))

    threads = [threading.Thread(target=part, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for got in out:
        np.testing.assert_array_equal(got, np.full(4, 6.0))


def _in_team(size, fn):
    """fn(i) on part i of a fresh team of ``size`` threads; the results in part order."""
    crew, out = threadsplit.Team(size, batch=size), [None] * size

    def part(i):
        threadsplit._state.team, threadsplit._state.rank = crew, i
        out[i] = fn(i)

    threads = [threading.Thread(target=part, args=(i,)) for i in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def test_allgather_gives_every_part_every_array_in_part_order():
    for got in _in_team(3, lambda i: threadsplit.team().allgather(np.full(2, float(i)))):
        np.testing.assert_array_equal(got, [[0, 0], [1, 1], [2, 2]])


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_split_batch_statistics_equal_the_whole_batch_two_pass_ones(offset):
    """One meeting per batch norm: the parts' means and squared deviations combine (Chan et
    al.) to the whole batch's two-pass statistics, even far from zero (no cancellation), on
    parts of unequal size."""
    from mlcvlab.nn import basis
    rng = np.random.default_rng(5)
    x = offset + rng.standard_normal((7, 3, 10))
    pieces = [x[:2], x[2:4], x[4:]]
    got = _in_team(3, lambda i: basis._batch_statistics(pieces[i], threadsplit.team(), 1e-5))
    mean = x.mean(axis=(0, 2))
    var = ((x - mean[None, :, None]) ** 2).mean(axis=(0, 2))
    for g_mean, g_var, g_inv in got:
        np.testing.assert_allclose(g_mean, mean, rtol=1e-15)
        np.testing.assert_allclose(g_var, var, rtol=1e-12)
        np.testing.assert_allclose(g_inv, 1 / np.sqrt(var + 1e-5), rtol=1e-12)
        np.testing.assert_array_equal(g_var, got[0][1])      # the same bits on every part


def test_memory_lab_counts_every_part_cache(parts):
    from mlcvlab.labs.memory import cached_bytes
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 1, 28, 28)), rng.integers(0, 10, 6)
    counts = []
    for split in (False, True):
        model, loss = _lenet(), nn.CrossEntropyLoss()
        model.set_input_grad(False)
        with (threadsplit.disabled() if not split else _nothing()):
            loss(model.forward(x), y)
            counts.append(cached_bytes(model, loss))
    assert counts[0] == counts[1] > 0


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_default_rule_splits_lenet_batches_on_two_threads(monkeypatch):
    """Without the fixture: on two threads LeNet-5's batch of 96 splits, 64 does not
    (MIN_PART_SAMPLES), tiny images never (MIN_VALUES), and one thread never splits."""
    model = models.lenet5(rng=0)
    monkeypatch.setattr(threadsplit.kernels, "num_threads", lambda: 2)
    assert threadsplit.parts_for(model, np.zeros((96, 1, 28, 28), np.float32)) is not None
    assert threadsplit.parts_for(model, np.zeros((64, 1, 28, 28), np.float32)) is None
    tiny = Sequential(Conv2d(1, 2, 3, rng=0), Flatten(), Linear(2 * 4 * 4, 3, rng=0))
    assert threadsplit.parts_for(tiny, np.zeros((512, 1, 6, 6), np.float32)) is None
    monkeypatch.setattr(threadsplit.kernels, "num_threads", lambda: 1)
    assert threadsplit.parts_for(model, np.zeros((128, 1, 28, 28), np.float32)) is None
    assert kernels.split(96, 2) == [slice(0, 48), slice(48, 96)]
