"""The optimizer registry: the CLI's names, default lrs and hyperparameters; AdamW's default
weight decay; momentum only where the name has it; spellings."""
import numpy as np
import pytest

from mlcvlab import optim
from mlcvlab.nn.parameter import Parameter
from mlcvlab.train import cli


def _ps():
    return [Parameter(np.zeros(3))]


def test_names_and_default_lrs_are_the_clis():
    assert list(optim.OPTIMIZERS) == list(cli.OPTIMIZERS)
    assert {n: optim.default_lr(n) for n in optim.OPTIMIZERS} == cli.DEFAULT_LR


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_build_equals_the_clis_build_optimizer(name):
    """Same class and hyperparameters as the CLI's chain of ifs, for its own defaults."""
    wd = 0.01 if name == "adamw" else 0.0
    momentum = 0.9 if name in cli.USES_MOMENTUM else 0.0
    theirs = cli.build_optimizer(name, _ps(), cli.DEFAULT_LR[name], wd, momentum)
    ours = optim.build(name, _ps())
    assert type(ours) is type(theirs)
    assert ours.hyperparameters() == theirs.hyperparameters()
    cls, lr, kwargs = optim.OPTIMIZERS[name]
    assert type(ours) is cls and ours.lr == lr
    for k, v in kwargs.items():
        assert getattr(ours, k) == v


def test_adamw_weight_decay_default_is_in_the_signature():
    assert optim.build("adamw", _ps()).weight_decay == 0.01
    assert optim.AdamW(_ps()).weight_decay == 0.01
    assert optim.build("adamw", _ps(), weight_decay=0).weight_decay == 0.0
    assert optim.build("adam", _ps()).weight_decay == 0.0
    assert optim.build("sgd", _ps(), weight_decay=1e-4).weight_decay == 1e-4


def test_momentum_only_where_the_name_has_it():
    assert optim.build("momentum", _ps(), momentum=0.5).momentum == 0.5
    assert optim.build("rmsprop-nesterov", _ps(), momentum=0.8).momentum == 0.8
    assert optim.build("sgd", _ps(), momentum=0.0).momentum == 0.0  # 0 is consistent
    with pytest.raises(ValueError, match=r"optimizer 'sgd' has no momentum, got momentum=0.9; "
                                         r"use one of momentum, nesterov, rmsprop-nesterov"):
        optim.build("sgd", _ps(), momentum=0.9)
    with pytest.raises(ValueError, match=r"SGD: momentum must be in \[0, 1\)"):
        optim.build("nesterov", _ps(), momentum=1.2)


def test_spellings_kwargs_and_groups():
    assert type(optim.build("RMSProp+Nesterov", _ps())) is optim.RMSProp
    assert optim.build("rmsprop_nesterov", _ps()).nesterov
    assert optim.canonical_name(" AdamW ") == "adamw"
    with pytest.raises(ValueError, match=r"unknown optimizer 'lion'; choose one of sgd, momentum"):
        optim.build("lion", _ps())
    opt = optim.build("adam", _ps(), lr=0.1, decay_mask=True, betas=(0.8, 0.9))
    assert opt.decay_mask and opt.betas == (0.8, 0.9) and opt.lr == 0.1
    with pytest.raises(TypeError, match="nesterov is set by the name 'nesterov'"):
        optim.build("nesterov", _ps(), nesterov=False)
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(2))
    opt = optim.build("nesterov", [{"params": [a]}, {"params": [b], "lr": 0.5}])
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.5]
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
