"""Schedules: CyclicLR and ExponentialDecay equal torch's schedulers; batch-size cycles;
warm-up; state-dict resume; validation."""
import numpy as np
import pytest
import torch

from mlcvlab import optim
from mlcvlab.nn.parameter import Parameter


def _opt(lr=0.1):
    return optim.SGD([Parameter(np.zeros(3))], lr=lr, momentum=0.9)


def _torch_opt(lr=0.1):
    return torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=lr, momentum=0.9)


def _run(opt, sched, steps):
    lrs = [opt.lr]
    for _ in range(steps):
        sched.step()
        lrs.append(opt.lr)
    return np.array(lrs)


def _run_torch(topt, tsched, steps):
    lrs = [topt.param_groups[0]["lr"]]
    for _ in range(steps):
        topt.step()
        tsched.step()
        lrs.append(topt.param_groups[0]["lr"])
    return np.array(lrs)


@pytest.mark.parametrize("mode,gamma", [("triangular", 1.0), ("triangular2", 1.0),
                                        ("exp_range", 0.99)])
def test_cyclic_lr_equals_torch_over_three_cycles(mode, gamma):
    step_size, steps = 7, 3 * 2 * 7
    opt = _opt()
    ours = _run(opt, optim.CyclicLR(opt, 1e-3, 0.1, step_size, mode=mode, gamma=gamma), steps)
    topt = _torch_opt()
    tsched = torch.optim.lr_scheduler.CyclicLR(topt, 1e-3, 0.1, step_size_up=step_size,
                                               mode=mode, gamma=gamma, cycle_momentum=False)
    theirs = _run_torch(topt, tsched, steps)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
    assert ours[0] == pytest.approx(1e-3) and ours[step_size] == pytest.approx(
        1e-3 + (0.1 - 1e-3) * (gamma ** step_size if mode == "exp_range" else 1.0))


def test_cyclic_lr_triangular2_halves_amplitude():
    opt = _opt()
    lrs = _run(opt, optim.CyclicLR(opt, 0.0, 1.0, 4, mode="triangular2"), 24)
    np.testing.assert_allclose(lrs[[4, 12, 20]], [1.0, 0.5, 0.25])
    np.testing.assert_allclose(lrs[[0, 8, 16, 24]], 0.0, atol=1e-15)
    np.testing.assert_allclose(lrs[:5], [0, 0.25, 0.5, 0.75, 1.0])


def test_exponential_decay_equals_torch():
    opt = _opt(0.5)
    ours = _run(opt, optim.ExponentialDecay(opt, 0.97), 100)
    topt = _torch_opt(0.5)
    theirs = _run_torch(topt, torch.optim.lr_scheduler.ExponentialLR(topt, 0.97), 100)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert ours[10] == 0.5 * 0.97 ** 10


def test_linear_warmup_equals_torch_linear_lr():
    opt = _opt(0.4)
    ours = _run(opt, optim.LinearWarmup(opt, 10, start_factor=0.1), 15)
    topt = _torch_opt(0.4)
    theirs = _run_torch(topt, torch.optim.lr_scheduler.LinearLR(
        topt, start_factor=0.1, total_iters=10), 15)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert ours[-1] == pytest.approx(0.4)


class FakeLoader:
    """Stands in for mlcvlab.data.DataLoader: only the int batch_size attribute matters."""

    def __init__(self):
        self.batch_size = 32


@pytest.mark.parametrize("mode,expected", [
    ("triangular", [64, 80, 96, 112, 128, 112, 96, 80, 64, 80]),
    ("exp", [64, 76, 91, 108, 128, 108, 91, 76, 64, 76]),
])
def test_cyclic_batch_size(mode, expected):
    loader = FakeLoader()
    sched = optim.CyclicBatchSize(loader, 64, 128, 4, mode=mode)
    sizes = [loader.batch_size]
    for _ in range(9):
        sched.step()
        sizes.append(loader.batch_size)
    assert sizes == expected
    assert all(type(s) is int for s in sizes)


def test_schedule_state_dict_resume():
    opt = _opt()
    sched = optim.CyclicLR(opt, 1e-3, 0.1, 5, mode="exp_range", gamma=0.95)
    full = _run(opt, sched, 30)
    opt2 = _opt()
    sched2 = optim.CyclicLR(opt2, 1e-3, 0.1, 5, mode="exp_range", gamma=0.95)
    _run(opt2, sched2, 12)
    state = sched2.state_dict()
    opt3 = _opt()
    sched3 = optim.CyclicLR(opt3, 0.5, 0.6, 2)  # other config, overwritten by the load
    sched3.load_state_dict(state)
    assert opt3.lr == full[12]
    np.testing.assert_array_equal(_run(opt3, sched3, 18)[1:], full[13:])
    loader = FakeLoader()
    bs = optim.CyclicBatchSize(loader, 8, 64, 3)
    for _ in range(4):
        bs.step()
    other = optim.CyclicBatchSize(FakeLoader(), 8, 64, 3)
    other.load_state_dict(bs.state_dict())
    assert other.loader.batch_size == loader.batch_size
    with pytest.raises(ValueError, match="expected a state dict of CyclicBatchSize"):
        other.load_state_dict(state)


@pytest.mark.parametrize("make,match", [
    (lambda o: optim.CyclicLR(o, 0.1, 0.01, 5), r"CyclicLR: max_lr must be >= base_lr"),
    (lambda o: optim.CyclicLR(o, 0.01, 0.1, 0), r"CyclicLR: step_size must be an int >= 1"),
    (lambda o: optim.CyclicLR(o, 0.01, 0.1, 5, mode="cosine"), r"CyclicLR: mode must be one of"),
    (lambda o: optim.ExponentialDecay(o, 1.5), r"ExponentialDecay: gamma must be in \(0, 1\]"),
    (lambda o: optim.LinearWarmup(o, 0), r"LinearWarmup: warmup_steps"),
    (lambda o: optim.CyclicBatchSize(FakeLoader(), 64, 32, 5), r"CyclicBatchSize: max_size"),
    (lambda o: optim.CyclicBatchSize(FakeLoader(), 8, 32, 5, mode="tri"), r"mode must be one"),
])
def test_bad_schedule_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make(_opt())


def test_cyclic_batch_size_needs_batch_size_attribute():
    with pytest.raises(TypeError, match="batch_size attribute"):
        optim.CyclicBatchSize(object(), 8, 16, 2)
