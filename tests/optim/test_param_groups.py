"""Parameter groups as torch.optim has them: per-group hyperparameters match torch over 20
steps (float64, 1e-10), per-group lr set by hand or by a scheduler, the lr setter, state-dict
round trip, errors, and the single flat buffer kept."""
import json

import numpy as np
import pytest
import torch

from mlcvlab import nn, optim
from mlcvlab.nn.parameter import Parameter
from optim_helpers import make_data, make_mlp, torch_flat, torch_twin, train_step

torch.set_num_threads(1)
STEPS = 20


def _split(params):
    """(weights, biases): interleaved in the flat buffer, so each group is several slices."""
    return [p for p in params if p.data.ndim == 2], [p for p in params if p.data.ndim == 1]


def _torch_split(tmodel):
    ps = list(tmodel.parameters())
    return [p for p in ps if p.ndim == 2], [p for p in ps if p.ndim == 1]


# (our class, torch class, defaults, group-0 overrides, group-1 overrides); the same kwargs
# mean the same in both libraries.
CASES = {
    "sgd_momentum": (optim.SGD, torch.optim.SGD, dict(lr=0.01, momentum=0.9, weight_decay=1e-2),
                     dict(lr=0.1), dict(weight_decay=0.0, momentum=0.5)),
    "sgd_nesterov_plain": (optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True),
                           dict(weight_decay=1e-3), dict(momentum=0.0, nesterov=False, lr=0.2)),
    "adam": (optim.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-3),
             dict(betas=(0.8, 0.99)), dict(lr=3e-2, weight_decay=0.0, eps=1e-6)),
    "adamw": (optim.AdamW, torch.optim.AdamW, dict(lr=1e-2, betas=(0.85, 0.995)),
              dict(weight_decay=0.1), dict(weight_decay=0.0, lr=2e-2)),
    "rmsprop": (optim.RMSProp, torch.optim.RMSprop, dict(lr=1e-3, momentum=0.9),
                dict(centered=True, weight_decay=1e-3), dict(momentum=0.0, alpha=0.9, lr=1e-2)),
    # torch 2.13's Adagrad fills every group's "sum" with the constructor's
    # initial_accumulator_value (a group's own is ignored); ours uses the group's: see below
    "adagrad": (optim.AdaGrad, torch.optim.Adagrad,
                dict(lr=0.05, lr_decay=1e-3, initial_accumulator_value=0.1),
                dict(lr_decay=1e-2), dict(lr=0.1, weight_decay=1e-3, eps=1e-8)),
    "adadelta": (optim.AdaDelta, torch.optim.Adadelta, dict(lr=1.0, weight_decay=1e-3),
                 dict(rho=0.95), dict(lr=0.5, eps=1e-5)),
}


def _batches(steps=STEPS, n=128, batch=16):
    x, y = make_data(n=n)
    rng = np.random.default_rng(2)
    return [(x[i], y[i]) for i in (rng.choice(n, batch, replace=False) for _ in range(steps))]


def _pair(case):
    ours_cls, torch_cls, defaults, g0, g1 = CASES[case]
    model = make_mlp()
    tmodel = torch_twin(model)
    w, b = _split(model.parameters())
    tw, tb = _torch_split(tmodel)
    opt = ours_cls([{"params": w, **g0}, {"params": b, **g1}], **defaults)
    topt = torch_cls([{"params": tw, **g0}, {"params": tb, **g1}], **defaults)
    return model, tmodel, opt, topt


def _train(model, tmodel, opt, topt, batches, hook=None):
    loss, tloss = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    for i, (x, y) in enumerate(batches):
        if hook:
            hook(i, opt, topt)
        train_step(model, loss, opt, x, y)
        topt.zero_grad()
        tloss(tmodel(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        topt.step()


@pytest.mark.parametrize("kernel", ["numba", "numpy"])
@pytest.mark.parametrize("case", list(CASES))
def test_two_groups_match_torch(case, kernel):
    model, tmodel, opt, topt = _pair(case)
    opt.kernel = kernel
    assert len(opt._slices[0]) == 2 and len(opt._slices[1]) == 2  # interleaved in the buffer
    start = opt.flat.data.copy()
    _train(model, tmodel, opt, topt, _batches())
    assert np.abs(opt.flat.data - start).max() > 1e-3  # it trained
    np.testing.assert_allclose(opt.flat.data, torch_flat(tmodel), rtol=0, atol=1e-10)
    for g, tg in zip(opt.param_groups, topt.param_groups):
        for k in CASES[case][2]:
            assert g[k] == pytest.approx(tg[k])


def test_groups_differ_from_one_group():
    """The group settings are used: the same run with one group ends elsewhere."""
    model, tmodel, opt, topt = _pair("sgd_momentum")
    _train(model, tmodel, opt, topt, _batches())
    single = make_mlp()
    opt1 = optim.SGD(single.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-2)
    for x, y in _batches():
        train_step(single, nn.CrossEntropyLoss(), opt1, x, y)
    assert np.abs(opt1.flat.data - opt.flat.data).max() > 1e-3


@pytest.mark.parametrize("case", ["sgd_momentum", "adamw"])
def test_group_lr_set_by_hand_mid_run(case):
    def hook(i, opt, topt):
        if i == 8:
            opt.param_groups[1]["lr"] = topt.param_groups[1]["lr"] = 0.3
        if i == 12:
            opt.param_groups[0]["weight_decay"] = topt.param_groups[0]["weight_decay"] = 0.05
    model, tmodel, opt, topt = _pair(case)
    _train(model, tmodel, opt, topt, _batches(), hook)
    np.testing.assert_allclose(opt.flat.data, torch_flat(tmodel), rtol=0, atol=1e-10)


@pytest.mark.parametrize("make,tmake", [
    (lambda o: optim.StepLR(o, 4, gamma=0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 4, 0.5)),
    (lambda o: optim.CosineAnnealingLR(o, 15, eta_min=1e-4),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 15, eta_min=1e-4)),
    (lambda o: optim.MultiStepLR(o, [5, 11]),
     lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [5, 11])),
    (lambda o: optim.OneCycleLR(o, [0.2, 0.05], total_steps=STEPS),
     lambda o: torch.optim.lr_scheduler.OneCycleLR(o, [0.2, 0.05], total_steps=STEPS)),
])
def test_scheduler_sets_each_group_from_its_initial_lr(make, tmake):
    model, tmodel, opt, topt = _pair("sgd_momentum")
    sched, tsched = make(opt), tmake(topt)
    lrs, tlrs = [], []

    def hook(i, opt, topt):
        if i:
            sched.step()
            tsched.step()
        lrs.append([(g["lr"], g["momentum"]) for g in opt.param_groups])
        tlrs.append([(g["lr"], g["momentum"]) for g in topt.param_groups])
    _train(model, tmodel, opt, topt, _batches(), hook)
    np.testing.assert_allclose(lrs, tlrs, rtol=1e-12, atol=0)
    assert lrs[1][0][0] != lrs[1][1][0]  # two groups, own lrs
    np.testing.assert_allclose(opt.flat.data, torch_flat(tmodel), rtol=0, atol=1e-10)
    assert sched.get_last_lr() == [g["lr"] for g in opt.param_groups]


def test_onecycle_turns_on_momentum_of_plain_sgd_as_torch():
    model = make_mlp()
    tmodel = torch_twin(model)
    opt = optim.SGD(model.parameters(), lr=0.1)
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.1)
    assert opt.state == {}
    sched = optim.OneCycleLR(opt, 0.5, total_steps=STEPS)
    tsched = torch.optim.lr_scheduler.OneCycleLR(topt, 0.5, total_steps=STEPS)

    def hook(i, opt, topt):
        if i:
            sched.step()
            tsched.step()
    _train(model, tmodel, opt, topt, _batches(), hook)
    assert "momentum_buffer" in opt.state
    np.testing.assert_allclose(opt.flat.data, torch_flat(tmodel), rtol=0, atol=1e-10)


def test_lr_setter_sets_every_group_and_getter_reads_the_first():
    model, _, opt, _ = _pair("sgd_momentum")
    assert opt.lr == 0.1 and opt.param_groups[1]["lr"] == 0.01
    opt.lr = 0.02
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.02]
    opt.momentum = 0.3
    assert [g["momentum"] for g in opt.param_groups] == [0.3, 0.3]
    with pytest.raises(ValueError, match=r"SGD: lr must be .*got lr=-1"):
        opt.lr = -1
    assert opt.lr == 0.02


def test_param_groups_are_torch_shaped():
    model = make_mlp()
    w, b = _split(model.parameters())
    opt = optim.AdamW([{"params": w}, {"params": b, "weight_decay": 0.0, "name": "biases"}],
                      lr=3e-3)
    g0, g1 = opt.param_groups
    assert g0["params"] == w and g1["params"] == b
    assert g0 == {"params": w, "lr": 3e-3, "betas": (0.9, 0.999), "eps": 1e-8,
                  "weight_decay": 0.01, "decay_mask": False}
    assert g1["weight_decay"] == 0.0 and g1["name"] == "biases"  # extra keys kept, as torch
    assert opt.defaults["weight_decay"] == 0.01
    assert opt.flat is model.flat()  # still the model's one buffer
    assert "groups=2" in repr(opt)


def test_state_dict_round_trip_with_groups():
    batches = _batches()
    model, tmodel, opt, topt = _pair("rmsprop")
    _train(model, tmodel, opt, topt, batches)
    # the same run, interrupted after 9 steps and resumed in a fresh optimizer
    model2 = make_mlp()
    w, b = _split(model2.parameters())
    _, _, defaults, g0, g1 = CASES["rmsprop"]
    opt2 = optim.RMSProp([{"params": w, **g0}, {"params": b, **g1}], **defaults)
    loss = nn.CrossEntropyLoss()
    for x, y in batches[:9]:
        train_step(model2, loss, opt2, x, y)
    opt2.param_groups[1]["lr"] = opt2.param_groups[1]["lr"]  # nothing changes
    sd = opt2.state_dict()
    json.dumps({k: v for k, v in sd.items() if k != "state"})  # all but the arrays is JSON
    # torch-like indices, of the parameters in the flat buffer (the model's order)
    assert [g["params"] for g in sd["param_groups"]] == [[0, 2], [1, 3]]
    weights = opt2.flat.data.copy()
    model3 = make_mlp()
    model3.flat().data[...] = weights
    w3, b3 = _split(model3.parameters())
    opt3 = optim.RMSProp([{"params": w3, "lr": 0.5}, {"params": b3, "alpha": 0.5}], lr=0.3,
                         momentum=0.9, centered=True)
    opt3.load_state_dict(sd)
    assert [g["lr"] for g in opt3.param_groups] == [1e-3, 1e-2]
    assert opt3.param_groups[0]["centered"] and not opt3.param_groups[1]["momentum"]
    for x, y in batches[9:]:
        train_step(model3, loss, opt3, x, y)
    np.testing.assert_array_equal(opt3.flat.data, opt.flat.data)
    one = optim.RMSProp(make_mlp().parameters(), lr=0.3, momentum=0.9, centered=True)
    with pytest.raises(ValueError, match="state dict has 2 parameter groups, the optimizer 1"):
        one.load_state_dict(sd)
    m4 = make_mlp()
    w4, b4 = _split(m4.parameters())
    swapped = optim.RMSProp([{"params": b4}, {"params": w4}], momentum=0.9, centered=True)
    with pytest.raises(ValueError, match="parameter group 0 holds other parameters"):
        swapped.load_state_dict(sd)


def test_old_state_dict_without_groups_still_loads():
    model = make_mlp()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sd = opt.state_dict()
    del sd["param_groups"]
    sd["hyper"]["lr"] = 0.05
    other = optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    other.load_state_dict(sd)
    assert other.lr == 0.05


@pytest.mark.parametrize("make,err,match", [
    (lambda w, b: optim.SGD([{"params": w}, {"params": w + b}], lr=0.1), ValueError,
     r"SGD param_groups\[1\]: a parameter appears in more than one parameter group"),
    (lambda w, b: optim.SGD([{"params": w}, {"lr": 0.1}], lr=0.1), ValueError,
     r"SGD param_groups\[1\]: a parameter group needs a 'params' entry"),
    (lambda w, b: optim.SGD([{"params": w}] + b, lr=0.1), TypeError, "not a mix"),
    (lambda w, b: optim.SGD([{"params": w}, {"params": b, "momentum": 1.5}], lr=0.1),
     ValueError, r"SGD param_groups\[1\]: momentum must be in \[0, 1\), got momentum=1.5"),
    (lambda w, b: optim.Adam([{"params": w, "lr": -1.0}, {"params": b}]), ValueError,
     r"Adam param_groups\[0\]: lr must be"),
    (lambda w, b: optim.SGD([{"params": w}, {"params": b, "nesterov": True}], lr=0.1),
     ValueError, r"SGD param_groups\[1\]: nesterov must be False when momentum is 0"),
    (lambda w, b: optim.SGD([{"params": [np.zeros(2)]}], lr=0.1), TypeError,
     r"expected Parameter objects, got ndarray"),
    (lambda w, b: optim.SGD([{"params": []}], lr=0.1), ValueError, "empty parameter list"),
])
def test_bad_groups(make, err, match):
    w, b = _split(make_mlp().parameters())
    with pytest.raises(err, match=match):
        make(w, b)


def test_adagrad_initial_accumulator_value_per_group():
    model = make_mlp()
    w, b = _split(model.parameters())
    opt = optim.AdaGrad([{"params": w, "initial_accumulator_value": 0.5}, {"params": b}])
    for p in w:
        np.testing.assert_array_equal(opt.state["sum"][opt.flat.slices[opt.flat.params.index(p)]],
                                      0.5)
    for p in b:
        np.testing.assert_array_equal(opt.state["sum"][opt.flat.slices[opt.flat.params.index(p)]],
                                      0.0)


def test_add_param_group_says_why_not():
    opt = optim.SGD([Parameter(np.zeros(2))], lr=0.1)
    with pytest.raises(NotImplementedError, match="pass all the groups to the constructor"):
        opt.add_param_group({"params": [Parameter(np.zeros(2))]})


def test_single_group_keeps_whole_vector_state():
    model = make_mlp()
    assert optim.SGD(model.parameters(), lr=0.1).state == {}
    opt = optim.RMSProp(model.parameters(), momentum=0.9)
    assert sorted(opt.state) == ["momentum_buffer", "square_avg"]
    assert opt.state["square_avg"].shape == (model.num_parameters(),)
    assert opt._slices == [[slice(0, model.num_parameters())]]


def test_decay_mask_per_group():
    model = make_mlp()
    w, b = _split(model.parameters())
    opt = optim.SGD([{"params": w[:1] + b[:1], "decay_mask": True}, {"params": w[1:] + b[1:]}],
                    lr=0.5, weight_decay=0.1)
    before = [p.data.copy() for p in model.parameters()]
    opt.step()  # zero gradient: only the decay acts
    after = [p.data for p in model.parameters()]
    np.testing.assert_allclose(after[0], before[0] * 0.95)   # W1, masked group: decayed
    np.testing.assert_array_equal(after[1], before[1])        # b1, masked group: not
    np.testing.assert_allclose(after[2], before[2] * 0.95)   # W2
    np.testing.assert_allclose(after[3], before[3] * 0.95)   # b2: no mask in group 1


@pytest.mark.parametrize("make,tmake", [
    (lambda o: optim.ExponentialDecay(o, 0.9),
     lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9)),
    (lambda o: optim.LinearWarmup(o, 6, start_factor=0.2),
     lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=6)),
])
def test_older_schedules_decay_each_group_from_its_own_lr(make, tmake):
    _, _, opt, topt = _pair("sgd_momentum")
    sched, tsched = make(opt), tmake(topt)
    lrs, tlrs = [], []
    for i in range(12):
        if i:
            sched.step()
            topt.step()
            tsched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
        tlrs.append([g["lr"] for g in topt.param_groups])
    np.testing.assert_allclose(lrs, tlrs, rtol=1e-12, atol=0)
    state = sched.state_dict()
    for key in ("base_lrs", "target_lrs"):  # a state dict from before groups still loads
        state.pop(key, None)
    _, _, opt2, _ = _pair("sgd_momentum")
    make(opt2).load_state_dict(state)
    assert opt2.lr == pytest.approx(lrs[-1][0])


def test_l1_threshold_uses_each_groups_lr():
    a, b = Parameter(np.full(3, 1.0)), Parameter(np.full(2, 1.0))
    opt = optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.4}], lr=0.1)
    optim.L1(opt, lam=1.0, use_decay_mask=False)
    opt.step()  # zero gradient: only the soft threshold acts
    np.testing.assert_allclose(a.data, 0.9)
    np.testing.assert_allclose(b.data, 0.6)


def test_sync_sgd_has_param_groups_for_schedulers():
    model = make_mlp()
    from mlcvlab.optim.sync_sgd import SyncSGD
    sync = SyncSGD(model, lr=0.2, workers=2, loss=nn.CrossEntropyLoss())
    sched = optim.StepLR(sync, 2, gamma=0.5)
    x, y = make_data()
    for _ in range(4):
        sync.step(x, y)
        sched.step()
    assert sync.lr == pytest.approx(0.05) and sync.param_groups[0]["initial_lr"] == 0.2


@pytest.mark.parametrize("kernel", ["numba", "numpy"])
def test_some_parameters_only_freezes_the_rest_in_the_models_buffer(kernel):
    """torch's freezing habit: an optimizer of the last layer only. The model keeps one
    buffer (model.flat() is the optimizer's), the first layer does not move, and the last
    layer follows torch."""
    model = make_mlp()
    tmodel = torch_twin(model)
    flat = model.flat()
    opt = optim.Adam(model[2].parameters(), lr=1e-2, weight_decay=1e-3)
    opt.kernel = kernel
    topt = torch.optim.Adam(tmodel[2].parameters(), lr=1e-2, weight_decay=1e-3)
    assert opt.flat is flat and not opt._whole
    first = model[0].weight.data.copy()
    optim.L1(opt, lam=1e-3)  # thresholds the last layer's weight only
    loss, tloss = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    for x, y in _batches():
        train_step(model, loss, opt, x, y)
        topt.zero_grad()
        tloss(tmodel(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        topt.step()
        with torch.no_grad():  # the same proximal L1 step on the optimized weights only
            w = tmodel[2].weight
            w.copy_(torch.sign(w) * torch.clamp(w.abs() - 1e-3 * 1e-2, min=0))
    assert model.flat() is flat
    np.testing.assert_array_equal(model[0].weight.data, first)
    np.testing.assert_allclose(opt.flat.data, torch_flat(tmodel), rtol=0, atol=1e-10)
