"""LR and batch-size range tests: the curve, the suggestion rule, and restoring the model."""
import numpy as np
import pytest

from mlcvlab import nn, optim
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
    assert res.suggested == pytest.approx((at_min / 40, at_min / 10))
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


def test_batch_size_range_test_with_accumulation_and_restore():
    x, y = _separable(n=512)
    model = make_mlp()
    w0 = model.flat().data.copy()
    opt = optim.Adam(model.parameters(), lr=0.01)
    res = optim.batch_size_range_test(model, nn.CrossEntropyLoss(), opt, x, y, min_size=16,
                                      max_size=256, steps_per_size=6, max_micro_batch=32, rng=0)
    np.testing.assert_array_equal(res.sizes, [16, 32, 64, 128, 256])
    assert res.smoothed[-1] < res.smoothed[0]
    best = int(res.sizes[np.argmin(res.smoothed)])
    assert res.suggested == (max(16, best // 4), best)
    np.testing.assert_array_equal(model.flat().data, w0)
    assert opt.t == 0
    with pytest.raises(ValueError, match="max_size=1024 exceeds the 512 training samples"):
        optim.batch_size_range_test(model, nn.CrossEntropyLoss(), opt, x, y, max_size=1024)


def test_range_test_argument_errors():
    model = make_mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    x, y = make_data()
    with pytest.raises(ValueError, match="0 < lr_min < lr_max"):
        optim.lr_range_test(model, nn.CrossEntropyLoss(), opt, ListLoader(x, y, 8),
                            lr_min=1.0, lr_max=0.1)
    with pytest.raises(ValueError, match="pass steps="):
        optim.lr_range_test(model, nn.CrossEntropyLoss(), opt, iter([(x, y)]))
