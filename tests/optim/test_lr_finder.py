"""LR and batch-size range tests: the curve, Smith (2017) Sec. 3.3's rule, the batch-size test
restarting from the same weights at every size, and restoring the model."""
import numpy as np
import pytest

from mlcvlab import nn, optim
from mlcvlab.optim.lr_finder import smith_lr_bounds
from optim_helpers import make_data, make_mlp


class ListLoader:
    """A minimal loader: fixed batches of a dataset."""

    def __init__(self, x, y, batch_size):
        self.x, self.y, self.batch_size = x, y, batch_size

    def __iter__(self):
        for i in range(0, len(self.x), self.batch_size):
            yield self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]

    def __len__(self):
        return -(-len(self.x) // self.batch_size)


def _separable(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6))
    y = (x[:, :4].argmax(axis=1)).astype(np.int64)
    return x, y


def test_lr_range_test_curve_suggestion_and_restore():
    x, y = _separable()
    model = make_mlp()
    w0 = model.state_dict()
    opt = optim.SGD(model.parameters(), lr=0.123, momentum=0.9)
    res = optim.lr_range_test(model, nn.CrossEntropyLoss(), opt, ListLoader(x, y, 32),
                              lr_min=1e-5, lr_max=100.0, num=8, epochs=8)
    assert len(res.lrs) >= 5
    np.testing.assert_allclose(res.lrs, np.geomspace(1e-5, 100.0, 8)[:len(res.lrs)])
    # Tiny lrs do not change the loss; useful ones lower it; the rule follows the minimum.
    assert res.smoothed.min() < res.smoothed[0] - 0.1
    at_min = res.lrs[np.argmin(res.smoothed)]
    assert res.lr_at_min_loss == at_min
    rule = smith_lr_bounds(res.lrs, res.smoothed)
    assert res.suggested == pytest.approx((rule["base_lr"], rule["max_lr"])) and res.rule == rule
    assert res.suggested[0] < res.suggested[1] <= at_min and not rule["no_decrease"]
    assert len(res.step_losses) == len(res.step_lrs) >= 8 * len(res.lrs)
    # Model and optimizer are back where they started.
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, w0[k])
    assert opt.lr == 0.123 and opt.t == 0 and not opt.state["momentum_buffer"].any()
    assert set(res.to_dict()) >= {"lrs", "losses", "smoothed", "suggested"}


def test_lr_range_test_stops_when_diverging():
    x, y = _separable()
    model = make_mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    res = optim.lr_range_test(model, nn.CrossEntropyLoss(), opt, ListLoader(x, y, 32),
                              lr_min=1e-3, lr_max=1e6, num=10, steps=100)
    assert res.diverged and len(res.lrs) < 10
    assert np.all(np.isfinite(model.flat().data))


def test_smith_rule_on_a_typical_curve():
    # flat and noisy (a dip at 1e-7 that does not last), a fall over 1e-4..1e-2 that slows at
    # 1e-2, the minimum at 1e-1, then a rise
    lrs = 10.0 ** np.arange(-9, 1)
    loss = np.array([2.30, 2.31, 2.20, 2.31, 2.29, 1.90, 1.40, 0.90, 0.85, 1.50])
    rule = smith_lr_bounds(lrs, loss)
    drop = 2.30 - 0.85
    assert drop * 0.1 > 0.90 - 0.85           # the step to 1e-1 improves too little: slowed
    assert rule["max_lr"] == pytest.approx(1e-2) and rule["stop_index"] == 7
    assert rule["base_lr"] == pytest.approx(1e-4) and rule["start_index"] == 5
    assert not rule["rule_of_thumb"] and not rule["no_decrease"]


def test_smith_rule_of_thumb_and_no_decrease():
    lrs = 10.0 ** np.arange(-5, 0)
    rule = smith_lr_bounds(lrs, [2.3, 2.3, 2.29, 1.0, np.inf])       # one fall, then diverged
    assert rule["max_lr"] == pytest.approx(1e-2) and rule["base_lr"] == pytest.approx(1e-2 / 4)
    assert rule["rule_of_thumb"]
    flat = smith_lr_bounds(lrs, [2.3, 2.31, 2.32, 2.4, 2.5])
    assert flat["no_decrease"]


def test_batch_size_range_test_with_accumulation_and_restore():
    x, y = _separable(n=512)
    model = make_mlp()
    w0 = model.flat().data.copy()
    opt = optim.Adam(model.parameters(), lr=0.01)
    res = optim.batch_size_range_test(model, nn.CrossEntropyLoss(), opt, x, y, min_size=16,
                                      max_size=256, steps_per_size=6, max_micro_batch=32,
                                      rng=0, eval_x=x[:128], eval_y=y[:128])
    np.testing.assert_array_equal(res.sizes, [16, 32, 64, 128, 256])
    assert res.restarted and np.all(np.isfinite(res.losses))
    assert [int(np.sum(res.step_sizes == s)) for s in res.sizes] == [6] * 5
    # equal steps from the same weights: more examples per step, lower loss
    assert res.losses[-1] < res.losses[0]
    rule = smith_lr_bounds(res.sizes, res.losses)
    b_max = int(res.sizes[rule["stop_index"]])
    assert res.suggested == (max(16, b_max // 4), b_max) and res.rule == rule
    np.testing.assert_array_equal(model.flat().data, w0)
    assert opt.t == 0
    with pytest.raises(ValueError, match="max_size=1024 exceeds the 512 training samples"):
        optim.batch_size_range_test(model, nn.CrossEntropyLoss(), opt, x, y, max_size=1024)


def test_batch_size_rule_reads_where_the_fall_slows():
    """Loss falls steeply up to 64, then flattens: b_max = 64, b_min = 16."""
    class Fixed:                       # a stand-in result curve through smith_lr_bounds
        sizes = np.array([16, 32, 64, 128, 256])
        losses = np.array([2.0, 1.4, 1.0, 0.98, 0.97])
    rule = smith_lr_bounds(Fixed.sizes, Fixed.losses)
    assert int(Fixed.sizes[rule["stop_index"]]) == 64


def test_batch_size_range_test_restarts_every_size_from_the_same_weights():
    """A size's loss does not depend on which sizes were tried before it (the walk without
    restarts trains on through them, so its larger sizes start from better weights)."""
    x, y = _separable(n=512)

    def losses(min_size, restart=True):
        model = make_mlp()
        opt = optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        extra = dict(eval_x=x[:128], eval_y=y[:128]) if restart else {}
        res = optim.batch_size_range_test(model, nn.CrossEntropyLoss(), opt, x, y,
                                          min_size=min_size, max_size=128, restart=restart,
                                          steps_per_size=8, max_micro_batch=64, rng=0, **extra)
        return dict(zip(res.sizes.tolist(), res.losses.tolist())), res

    all_sizes, _ = losses(8)
    late_start, _ = losses(64)
    for size in (64, 128):
        assert all_sizes[size] == pytest.approx(late_start[size], rel=1e-12)
    walk, res = losses(8, restart=False)
    assert not res.restarted
    # the walk's curve keeps falling as training continues: its minimum is at a late size
    assert int(res.sizes[np.argmin(res.smoothed)]) >= 64


def test_range_test_argument_errors():
    model = make_mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    x, y = make_data()
    with pytest.raises(ValueError, match="0 < lr_min < lr_max"):
        optim.lr_range_test(model, nn.CrossEntropyLoss(), opt, ListLoader(x, y, 8),
                            lr_min=1.0, lr_max=0.1)
    with pytest.raises(ValueError, match="pass steps="):
        optim.lr_range_test(model, nn.CrossEntropyLoss(), opt, iter([(x, y)]))
