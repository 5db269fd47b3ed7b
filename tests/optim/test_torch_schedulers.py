"""StepLR, MultiStepLR, CosineAnnealingLR, OneCycleLR: the lr (and momentum) sequences of
torch.optim.lr_scheduler over 100 steps to 1e-12 in float64; state-dict resume; bad arguments."""
import json

import numpy as np
import pytest
import torch

from mlcvlab import optim
from mlcvlab.nn.parameter import Parameter

LRS = torch.optim.lr_scheduler
STEPS = 100


def _ours(kind, lr=0.1):
    p = [Parameter(np.zeros(3))]
    if kind == "sgd":
        return optim.SGD(p, lr=lr, momentum=0.9)
    if kind == "adam":
        return optim.Adam(p, lr=lr)
    return optim.AdaGrad(p, lr=lr)


def _theirs(kind, lr=0.1):
    p = [torch.zeros(3, dtype=torch.float64, requires_grad=True)]
    if kind == "sgd":
        return torch.optim.SGD(p, lr=lr, momentum=0.9)
    if kind == "adam":
        return torch.optim.Adam(p, lr=lr)
    return torch.optim.Adagrad(p, lr=lr)


def _momentum(group):
    if "betas" in group:
        return group["betas"][0]
    return group.get("momentum", np.nan)


def _trace_ours(opt, sched, steps):
    def rec():
        groups = getattr(opt, "param_groups", None)
        if groups is None:  # before param groups: the optimizer's attributes
            return [opt.lr], [opt.betas[0] if hasattr(opt, "betas")
                              else getattr(opt, "momentum", np.nan)]
        return [g["lr"] for g in groups], [_momentum(g) for g in groups]
    lrs, moms = [], []
    for i in range(steps + 1):
        if i:
            sched.step()
        a, b = rec()
        lrs.append(a)
        moms.append(b)
    return np.array(lrs), np.array(moms)


def _trace_torch(opt, sched, steps):
    lrs, moms = [], []
    for i in range(steps + 1):
        if i:
            opt.step()
            sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
        moms.append([_momentum(g) for g in opt.param_groups])
    return np.array(lrs), np.array(moms)


CASES = {
    "step": (lambda o: optim.StepLR(o, 7, gamma=0.5), lambda o: LRS.StepLR(o, 7, gamma=0.5)),
    "step-default-gamma": (lambda o: optim.StepLR(o, 30), lambda o: LRS.StepLR(o, 30)),
    "multistep": (lambda o: optim.MultiStepLR(o, [10, 30, 31, 80], gamma=0.3),
                  lambda o: LRS.MultiStepLR(o, [10, 30, 31, 80], gamma=0.3)),
    "cosine": (lambda o: optim.CosineAnnealingLR(o, 100), lambda o: LRS.CosineAnnealingLR(o, 100)),
    "cosine-eta-restart": (lambda o: optim.CosineAnnealingLR(o, 30, eta_min=1e-3),
                           lambda o: LRS.CosineAnnealingLR(o, 30, eta_min=1e-3)),
    "onecycle": (lambda o: optim.OneCycleLR(o, max_lr=0.5, total_steps=STEPS),
                 lambda o: LRS.OneCycleLR(o, max_lr=0.5, total_steps=STEPS)),
    "onecycle-linear-3phase": (
        lambda o: optim.OneCycleLR(o, 0.5, total_steps=STEPS, pct_start=0.25,
                                   anneal_strategy="linear", div_factor=10.0,
                                   final_div_factor=100.0, three_phase=True),
        lambda o: LRS.OneCycleLR(o, 0.5, total_steps=STEPS, pct_start=0.25,
                                 anneal_strategy="linear", div_factor=10.0,
                                 final_div_factor=100.0, three_phase=True)),
    "onecycle-epochs": (lambda o: optim.OneCycleLR(o, 0.3, epochs=10, steps_per_epoch=10,
                                                   pct_start=0.4, three_phase=True),
                        lambda o: LRS.OneCycleLR(o, 0.3, epochs=10, steps_per_epoch=10,
                                                 pct_start=0.4, three_phase=True)),
    "onecycle-no-momentum": (
        lambda o: optim.OneCycleLR(o, 0.5, total_steps=STEPS, cycle_momentum=False),
        lambda o: LRS.OneCycleLR(o, 0.5, total_steps=STEPS, cycle_momentum=False)),
}


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_sequence_equals_torch(case, kind):
    ours_f, theirs_f = CASES[case]
    opt, topt = _ours(kind), _theirs(kind)
    lr, mom = _trace_ours(opt, ours_f(opt), STEPS)
    tlr, tmom = _trace_torch(topt, theirs_f(topt), STEPS)
    if "linear" in case:  # torch's value one step past the end of the schedule can be < 0
        assert tlr[-1, 0] < 0 and lr[-1, 0] == 0
        tlr = np.maximum(tlr, 0)
    np.testing.assert_allclose(lr, tlr, rtol=1e-12, atol=0)
    np.testing.assert_allclose(mom, tmom, rtol=1e-12, atol=0)
    if case.startswith("onecycle") and "no-momentum" not in case:
        assert np.ptp(mom) > 0.05  # the momentum (or beta1) did cycle


def test_onecycle_values():
    opt = _ours("sgd")
    sched = optim.OneCycleLR(opt, max_lr=1.0, total_steps=100, div_factor=10.0,
                             final_div_factor=100.0)
    lr, mom = _trace_ours(opt, sched, 100)
    assert lr[0, 0] == pytest.approx(0.1) and mom[0, 0] == pytest.approx(0.95)
    assert lr[29, 0] == pytest.approx(1.0) and mom[29, 0] == pytest.approx(0.85)
    assert lr[99, 0] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="OneCycleLR: tried to step 101 times"):
        sched.step()


def test_onecycle_needs_momentum_or_cycle_momentum_false():
    with pytest.raises(ValueError, match="OneCycleLR: cycle_momentum must be False for AdaGrad"):
        optim.OneCycleLR(_ours("adagrad"), 0.1, total_steps=10)
    opt, topt = _ours("adagrad"), _theirs("adagrad")
    lr, _ = _trace_ours(opt, optim.OneCycleLR(opt, 0.1, total_steps=50, cycle_momentum=False), 50)
    tlr, _ = _trace_torch(topt, LRS.OneCycleLR(topt, 0.1, total_steps=50, cycle_momentum=False),
                          50)
    np.testing.assert_allclose(lr, tlr, rtol=1e-12, atol=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_state_dict_resume_continues_the_sequence(case):
    make = CASES[case][0]
    opt = _ours("sgd")
    full, fmom = _trace_ours(opt, make(opt), STEPS)
    opt2 = _ours("sgd")
    sched2 = make(opt2)
    for _ in range(37):
        sched2.step()
    state = json.loads(json.dumps(sched2.state_dict()))  # JSON-able, as checkpoints need
    opt3 = _ours("sgd", lr=0.7)
    sched3 = make(opt3)
    sched3.step()
    sched3.load_state_dict(state)
    assert sched3.t == 37 and sched3.last_epoch == 37
    rest, rmom = _trace_ours(opt3, sched3, STEPS - 37)
    np.testing.assert_array_equal(rest, full[37:])
    np.testing.assert_array_equal(rmom, fmom[37:])


def test_get_last_lr_and_epoch_stepping():
    opt = _ours("sgd", lr=1.0)
    sched = optim.StepLR(opt, step_size=2, gamma=0.1)
    got = []
    for epoch in range(5):  # a hand-written loop: step once per epoch
        got.append(sched.get_last_lr()[0])
        sched.step()
    np.testing.assert_allclose(got, [1, 1, 0.1, 0.1, 0.01])


def test_chained_schedulers_share_initial_lr():
    """A second scheduler on the same optimizer starts from the group's initial_lr (torch)."""
    opt = _ours("sgd", lr=0.2)
    optim.StepLR(opt, 5)
    cos = optim.CosineAnnealingLR(opt, 10)
    assert cos.base_lrs == [0.2]


@pytest.mark.parametrize("make,match", [
    (lambda o: optim.StepLR(o, 0), r"StepLR: step_size must be an int >= 1, got step_size=0"),
    (lambda o: optim.StepLR(o, 2.5), r"StepLR: step_size must be an int"),
    (lambda o: optim.StepLR(o, 3, gamma=0), r"StepLR: gamma must be"),
    (lambda o: optim.MultiStepLR(o, [5, 3]), r"MultiStepLR: milestones must be strictly "
                                             r"increasing, got milestones=\[5, 3\]"),
    (lambda o: optim.MultiStepLR(o, [5, 5]), r"MultiStepLR: milestones must be strictly"),
    (lambda o: optim.MultiStepLR(o, [0, 5]), r"MultiStepLR: milestones must be a list of ints"),
    (lambda o: optim.MultiStepLR(o, 5), r"MultiStepLR: milestones must be a list of ints"),
    (lambda o: optim.CosineAnnealingLR(o, 0), r"CosineAnnealingLR: T_max must be an int >= 1, "
                                              r"got T_max=0"),
    (lambda o: optim.CosineAnnealingLR(o, 10, eta_min=-1), r"CosineAnnealingLR: eta_min"),
    (lambda o: optim.OneCycleLR(o, 0.0, total_steps=10), r"OneCycleLR: max_lr must be a finite "
                                                         r"number > 0"),
    (lambda o: optim.OneCycleLR(o, -0.1, total_steps=10), r"OneCycleLR: max_lr must be"),
    (lambda o: optim.OneCycleLR(o, [0.1, 0.2], total_steps=10), r"OneCycleLR: max_lr has 2 "
                                                                r"values but the optimizer has 1"),
    (lambda o: optim.OneCycleLR(o, 0.1), r"OneCycleLR: total_steps must be given"),
    (lambda o: optim.OneCycleLR(o, 0.1, total_steps=0), r"OneCycleLR: total_steps must be an "
                                                        r"int >= 1"),
    (lambda o: optim.OneCycleLR(o, 0.1, total_steps=10, pct_start=1.5), r"OneCycleLR: pct_start "
                                                                        r"must be in \[0, 1\]"),
    (lambda o: optim.OneCycleLR(o, 0.1, total_steps=10, pct_start=0.1),
     r"OneCycleLR: pct_start must be such that no phase has length 0"),
    (lambda o: optim.OneCycleLR(o, 0.1, total_steps=10, anneal_strategy="exp"),
     r"OneCycleLR: anneal_strategy"),
    (lambda o: optim.OneCycleLR(o, 0.1, total_steps=10, div_factor=0), r"OneCycleLR: div_factor"),
    (lambda o: optim.OneCycleLR(o, 0.1, total_steps=10, base_momentum=0.99),
     r"OneCycleLR: base_momentum must be in \[0, max_momentum\]"),
])
def test_bad_arguments_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make(_ours("sgd"))


def test_load_state_dict_of_another_scheduler_is_refused():
    opt = _ours("sgd")
    with pytest.raises(ValueError, match="expected a state dict of StepLR"):
        optim.StepLR(opt, 3).load_state_dict(optim.CosineAnnealingLR(opt, 5).state_dict())
