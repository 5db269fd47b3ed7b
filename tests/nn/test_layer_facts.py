"""Each layer's declared facts (``kept_for_backward``, ``multiply_adds``, next to its forward)
against what the layer really does: the bytes its training forward leaves in its cache, and
the rule that every layer of the library declares both."""
import numpy as np
import pytest

from mlcvlab import nn
from mlcvlab.labs.memory import activation_bytes, cached_bytes
from mlcvlab.nn.module import declared

# (layer, one sample's input shape): every layer and the variants whose cache differs
LAYERS = [
    (lambda: nn.Linear(6, 3), (6,)),
    (lambda: nn.Linear(6, 3, bias=False), (6,)),
    (lambda: nn.Conv2d(2, 3, 3), (2, 6, 6)),
    (lambda: nn.Conv2d(2, 4, 3, padding=1, groups=2), (2, 6, 6)),
    (lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 6, 6)),
    (lambda: nn.Conv2d(2, 3, 4, padding="same"), (2, 6, 6)),         # asymmetric padding
    (lambda: nn.Conv2d(2, 3, 3, padding=2, dilation=2), (2, 6, 6)),  # sub-grids, stride 1
    (lambda: nn.Conv2d(2, 3, 3, stride=2, dilation=2), (2, 9, 9)),   # the general path
    (lambda: nn.MaxPool2d(2), (2, 6, 6)),
    (lambda: nn.MaxPool2d(3, stride=2), (2, 7, 7)),
    (lambda: nn.MaxPool2d(2, ceil_mode=True), (2, 7, 7)),
    (lambda: nn.MaxPool2d(2, dilation=2), (2, 7, 7)),
    (lambda: nn.AvgPool2d(2), (2, 6, 6)),
    (lambda: nn.AvgPool2d(2, ceil_mode=True), (2, 7, 7)),
    (lambda: nn.AvgPool2d(3, padding=1, count_include_pad=False), (2, 6, 6)),
    (lambda: nn.AvgPool2d(2, divisor_override=3), (2, 6, 6)),
    (lambda: nn.AdaptiveAvgPool2d((2, 3)), (2, 7, 7)),
    (lambda: nn.AdaptiveMaxPool2d(3), (2, 7, 7)),
    (lambda: nn.GlobalAvgPool2d(), (2, 3, 3)),
    (lambda: nn.Flatten(), (2, 3, 3)),
    (lambda: nn.BatchNorm1d(6), (6,)),
    (lambda: nn.BatchNorm1d(3), (3, 4)),
    (lambda: nn.BatchNorm2d(2), (2, 5, 5)),
    (lambda: nn.BatchNorm2d(2, affine=False), (2, 5, 5)),
    (lambda: nn.BatchNorm1d(6, track_running_stats=False, bias=False), (6,)),
    (lambda: nn.Dropout(0.5, rng=0), (6,)),
    (lambda: nn.Dropout(0.0), (6,)),
    (lambda: nn.ReLU(), (2, 5, 5)),
    (lambda: nn.LeakyReLU(0.1), (6,)),
    (lambda: nn.Sigmoid(), (6,)),
    (lambda: nn.Tanh(), (6,)),
    (lambda: nn.Softmax(), (6,)),
    (lambda: nn.Identity(), (6,)),
]


def _name(case):
    layer = case[0]()
    return f"{layer!r}-{case[1]}"


@pytest.mark.parametrize("case", LAYERS, ids=[_name(c) for c in LAYERS])
def test_declared_cache_equals_the_real_cache(case):
    """The memory model of a layer between a kept input (a Linear before it) and the loss,
    against the bytes its training forward really leaves in the caches."""
    make, shape = case
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), int(np.prod(shape)),
                                                  rng=rng), _Unflatten(shape), make())
    batch = 5
    x = rng.standard_normal((batch,) + shape).astype(np.float32)
    model.train()
    y = model(x)
    loss = nn.MSELoss()
    loss(y, np.zeros_like(y))
    assert cached_bytes(model, loss) == activation_bytes(model, shape, batch)


class _Unflatten(nn.Module):
    """(N, prod(shape)) -> (N, *shape): a view, as Flatten."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape((x.shape[0],) + self.shape)

    def backward(self, dy):
        return dy.reshape(dy.shape[0], -1)

    def kept_for_backward(self, in_shape, out_shape):
        return nn.Kept(alias=True)

    def multiply_adds(self, in_shape, out_shape):
        return 0


CONTAINERS = {"Sequential", "Residual", "Concat", "NN4"}     # their leaves hold the cost


def _library_modules():
    import mlcvlab.labs.optimizers  # noqa: F401  (NonInvertedDropout)
    import mlcvlab.models  # noqa: F401
    found, todo = [], [nn.Module]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if (cls.__module__.startswith("mlcvlab.") and not cls.__name__.startswith("_")
                and cls is not nn.Module):
            found.append(cls)
    return sorted(found, key=lambda c: c.__name__)


def test_every_module_of_the_library_declares_its_facts():
    """Layers declare both facts; containers what they keep of their own (the memory model
    walks them), while summarize counts the multiply-adds of their leaves."""
    modules = _library_modules()
    names = {c.__name__ for c in modules}
    assert {"Linear", "Conv2d", "BatchNorm2d", "ZeroPadShortcut", "NonInvertedDropout"} | \
        CONTAINERS <= names
    for cls in modules:
        module = object.__new__(cls)        # declared() reads the class only
        facts = ("kept_for_backward",) + (() if cls.__name__ in CONTAINERS
                                          else ("multiply_adds",))
        for fact in facts:
            assert callable(declared(module, fact)), (cls, fact)


def test_multiply_adds_of_linear_and_conv():
    assert nn.Linear(6, 3).multiply_adds((6,), (3,)) == 18
    assert nn.Linear(6, 3).multiply_adds((4, 6), (4, 3)) == 72       # per position, as torch
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    assert conv.multiply_adds((4, 5, 5), (8, 5, 5)) == 8 * 25 * 2 * 9


# Library modules that never take part in a batch split, and why.
NEVER_SPLIT = {"NN4": "its own written-out forward, not a Sequential's layers",
               "NonInvertedDropout": "a training mask per call (the optimizers lab's layer)"}


def test_every_module_of_the_library_says_whether_it_splits_over_the_batch():
    """The class that defines ``forward`` also defines ``splits_over_batch`` (what
    ``nn.threadsplit`` trusts), so a new layer is not left out of the split by omission."""
    for cls in _library_modules():
        owner = next(c for c in cls.__mro__ if "forward" in c.__dict__)
        if cls.__name__ in NEVER_SPLIT:
            assert "splits_over_batch" not in owner.__dict__, cls
            continue
        assert "splits_over_batch" in owner.__dict__, (cls, owner)
