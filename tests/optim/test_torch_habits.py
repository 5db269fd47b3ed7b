"""Parameter.numel(), np.asarray(param) and Module.apply, as a PyTorch user expects them."""
import numpy as np
import pytest
import torch

from mlcvlab import nn
from mlcvlab.nn.parameter import Parameter
from optim_helpers import make_mlp, torch_twin


def test_numel_is_torchs():
    model = make_mlp()
    tmodel = torch_twin(model)
    assert [p.numel() for p in model.parameters()] == [p.numel() for p in tmodel.parameters()]
    assert sum(p.numel() for p in model.parameters()) == model.num_parameters()


def test_asarray_is_the_data_not_an_object_array():
    model = make_mlp()
    w = model[0].weight
    a = np.asarray(w)
    assert a.dtype == np.float64 and a.shape == w.shape
    assert a is w.data                       # no copy: writes reach the parameter
    assert np.shares_memory(a, model.flat().data)
    np.testing.assert_array_equal(np.array(w), w.data)
    c = np.array(w, copy=True)
    c[...] = 0
    assert np.abs(w.data).max() > 0
    f = np.asarray(w, dtype=np.float32)
    assert f.dtype == np.float32 and not np.shares_memory(f, w.data)
    with pytest.raises(ValueError, match="needs a copy"):
        np.asarray(w, dtype=np.float32, copy=False)
    assert np.asarray(w, copy=False) is w.data
    assert np.sum(w) == pytest.approx(w.data.sum())   # NumPy functions take a Parameter
    assert np.asarray([Parameter(np.ones(2)), Parameter(np.ones(2))]).shape == (2, 2)


def test_apply_visits_children_first_then_self_as_torch():
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))
    seen = []
    assert model.apply(lambda m: seen.append(type(m).__name__)) is model
    tmodel = torch.nn.Sequential(torch.nn.Linear(3, 4),
                                 torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(4, 2)))
    tseen = []
    tmodel.apply(lambda m: tseen.append(type(m).__name__))
    assert seen == tseen == ["Linear", "ReLU", "Linear", "Sequential", "Sequential"]


def test_apply_reinitializes_weights_in_the_flat_buffer():
    model = make_mlp()
    flat = model.flat()

    def init(m):
        if isinstance(m, nn.Linear):
            m.weight.data[...] = 0.5
            m.bias.data[...] = 0.0
    model.apply(init)
    assert model.flat() is flat
    assert set(np.unique(flat.data)) == {0.0, 0.5}


def test_step_closure_and_zero_grad_set_to_none_as_torch():
    from mlcvlab import optim
    from optim_helpers import make_data
    model = make_mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    loss = nn.CrossEntropyLoss()
    x, y = make_data()

    def closure():
        opt.zero_grad(set_to_none=True)
        value = loss(model(x), y)
        model.backward(loss.backward())
        return value
    before = opt.flat.data.copy()
    first = opt.step(closure)
    assert isinstance(first, float) and np.abs(opt.flat.data - before).max() > 0
    assert opt.step(closure) < first
    assert opt.step() is None


def test_lr_scheduler_module_has_torchs_import_path():
    from mlcvlab import optim
    from mlcvlab.optim import lr_scheduler
    assert lr_scheduler.StepLR is optim.StepLR and lr_scheduler.OneCycleLR is optim.OneCycleLR
    opt = optim.SGD([Parameter(np.zeros(2))], lr=0.5)
    topt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.5)
    sched = lr_scheduler.ExponentialLR(opt, gamma=0.9)
    tsched = torch.optim.lr_scheduler.ExponentialLR(topt, gamma=0.9)
    for _ in range(20):
        sched.step()
        topt.step()
        tsched.step()
    assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)
