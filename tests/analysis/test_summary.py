"""summarize() on our own Modules."""
import numpy as np
import pytest

from mlcvlab.analysis import format_summary, summarize, totals
from mlcvlab.nn.module import Sequential
from mlcvlab.nn.modules import Conv2d, Flatten, Linear, MaxPool2d, ReLU


def test_summarize_mlp():
    model = Sequential(Linear(4, 8), ReLU(), Linear(8, 3))
    rows = summarize(model, (4,))
    assert [r.kind for r in rows] == ["Linear", "ReLU", "Linear"]
    assert [r.out_shape for r in rows] == [(8,), (8,), (3,)]
    assert [(r.weights, r.biases) for r in rows] == [(32, 8), (0, 0), (24, 3)]
    assert [r.macs for r in rows] == [32, 0, 24]
    assert totals(rows)["params"] == model.num_parameters() == 67
    assert totals(rows)["activations"] == 19
    text = format_summary(rows)
    assert "Linear" in text and "total" in text and "67" in text


def test_summarize_cnn_restores_mode_and_forward():
    model = Sequential(Conv2d(1, 4, 3, padding=1), ReLU(), MaxPool2d(2), Flatten(),
                       Linear(4 * 7 * 7, 5))
    model.train()
    rows = summarize(model, (1, 14, 14))
    assert rows[0].out_shape == (4, 14, 14)
    assert rows[0].macs == 4 * 14 * 14 * 1 * 3 * 3
    assert rows[3].out_shape == (196,)
    assert rows[4].macs == 196 * 5
    assert model.training and all(m.training for m in model.modules())
    assert all("forward" not in m.__dict__ for m in model.modules())
    y = model(np.zeros((2, 1, 14, 14), dtype=model.dtype))
    assert y.shape == (2, 5)


def test_summarize_rejects_bad_shape():
    with pytest.raises(ValueError, match="summarize"):
        summarize(Sequential(Linear(4, 2)), ())


def test_grouped_conv_multiply_adds_count_in_channels_per_group():
    from mlcvlab import nn
    from mlcvlab.analysis import summarize
    plain = summarize(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1)), (8, 10, 10))
    grouped = summarize(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=4)), (8, 10, 10))
    assert grouped[0].macs * 4 == plain[0].macs == 16 * 10 * 10 * 8 * 3 * 3
    assert grouped[0].weights * 4 == plain[0].weights


def test_a_layer_that_declares_no_multiply_adds_is_refused_before_the_forward():
    from mlcvlab import nn
    from mlcvlab.nn.parameter import Parameter

    calls = []

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = Parameter(np.ones(3, dtype=np.float32))

        def forward(self, x):
            calls.append(x.shape)
            return x * self.gain.data

    class Square(nn.Module):                   # no parameters: still not counted as 0
        def forward(self, x):
            calls.append(x.shape)
            return x * x

    for layer in (Scale(), Square()):
        name = type(layer).__name__
        with pytest.raises(NotImplementedError,
                           match=f"{name} declares no multiply_adds .*'Adding a layer'"):
            summarize(nn.Sequential(nn.Linear(3, 3), layer), (3,))
    assert calls == []


def test_a_subclass_that_overrides_forward_must_declare_again():
    from mlcvlab import nn

    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(NotImplementedError, match="Doubled overrides forward but inherits "
                                                  "multiply_adds from Linear"):
        summarize(nn.Sequential(Doubled(3, 3)), (3,))

    class Renamed(nn.Linear):                  # same forward: Linear's facts hold
        pass
    assert summarize(nn.Sequential(Renamed(3, 4)), (3,))[0].macs == 12


def test_a_batch_norm_without_running_statistics_is_summarized():
    from mlcvlab import nn
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, track_running_stats=False))
    rows = summarize(model, (4,))
    assert [r.out_shape for r in rows] == [(6,), (6,)] and rows[0].macs == 24
