"""Optimizers: 50-step parity with torch.optim (float64), flat-buffer sharing,
RMSProp+Nesterov against a transcription of Deep Learning Alg. 8.7, state-dict
resume, and hyperparameter validation."""
import numpy as np
import pytest
import torch

from mlcvlab import nn, optim
from mlcvlab.nn.parameter import Parameter
from optim_helpers import make_data, make_mlp, torch_flat, torch_twin, train_step

torch.set_num_threads(1)
STEPS = 50

# (our class, our kwargs, torch class, torch kwargs)
CASES = {
    "sgd": (optim.SGD, dict(lr=0.1), torch.optim.SGD, dict(lr=0.1)),
    "sgd_momentum": (optim.SGD, dict(lr=0.05, momentum=0.9),
                     torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    "sgd_nesterov": (optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True),
                     torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    "sgd_wd": (optim.SGD, dict(lr=0.05, momentum=0.5, weight_decay=1e-2),
               torch.optim.SGD, dict(lr=0.05, momentum=0.5, weight_decay=1e-2)),
    "adagrad": (optim.AdaGrad, dict(lr=0.05, weight_decay=1e-3, lr_decay=1e-3),
                torch.optim.Adagrad, dict(lr=0.05, weight_decay=1e-3, lr_decay=1e-3)),
    "rmsprop": (optim.RMSProp, dict(lr=1e-3), torch.optim.RMSprop, dict(lr=1e-3)),
    "rmsprop_momentum": (optim.RMSProp, dict(lr=1e-3, momentum=0.9, weight_decay=1e-3),
                         torch.optim.RMSprop, dict(lr=1e-3, momentum=0.9, weight_decay=1e-3)),
    "rmsprop_centered": (optim.RMSProp, dict(lr=1e-3, momentum=0.5, centered=True),
                         torch.optim.RMSprop, dict(lr=1e-3, momentum=0.5, centered=True)),
    "adadelta": (optim.AdaDelta, dict(lr=1.0, weight_decay=1e-3),
                 torch.optim.Adadelta, dict(lr=1.0, weight_decay=1e-3)),
    "adam": (optim.Adam, dict(lr=1e-2, weight_decay=1e-3),
             torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-3)),
    "adamw": (optim.AdamW, dict(lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99)),
              torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99))),
}


def _batches(steps=STEPS, n=128, batch=16):
    x, y = make_data(n=n)
    rng = np.random.default_rng(2)
    return [(x[i], y[i]) for i in (rng.choice(n, batch, replace=False) for _ in range(steps))]


@pytest.mark.parametrize("kernel", ["numba", "numpy"])
@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_torch(case, kernel):
    ours_cls, ours_kw, torch_cls, torch_kw = CASES[case]
    model = make_mlp()
    tmodel = torch_twin(model)
    opt = ours_cls(model.parameters(), **ours_kw)
    opt.kernel = kernel
    topt = torch_cls(tmodel.parameters(), **torch_kw)
    loss, tloss = nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    start = opt.flat.data.copy()
    for x, y in _batches():
        train_step(model, loss, opt, x, y)
        topt.zero_grad()
        tloss(tmodel(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        topt.step()
    assert np.abs(opt.flat.data - start).max() > 1e-3  # it trained
    np.testing.assert_allclose(opt.flat.data, torch_flat(tmodel), rtol=0, atol=1e-9)


def test_flat_buffer_shared_and_seen_by_model():
    model = make_mlp()
    opt = optim.Adam(model.parameters(), lr=0.01)
    x, y = make_data()
    loss = nn.CrossEntropyLoss()
    before = model(x).copy()
    for _ in range(3):
        train_step(model, loss, opt, x, y)
    for p in model.parameters():
        assert np.shares_memory(p.data, opt.flat.data)
        assert np.shares_memory(p.grad, opt.flat.grad)
    assert np.abs(model(x) - before).max() > 1e-4
    np.testing.assert_array_equal(model[0].weight.data.ravel(),
                                  opt.flat.data[:model[0].weight.size])


def test_plain_parameters_quadratic():
    """Works on any iterable of Parameter: SGD on 0.5*||w||^2 shrinks w by (1 - lr) per step."""
    ps = [Parameter(np.ones((2, 3))), Parameter(np.full(4, 2.0))]
    opt = optim.SGD(iter(ps), lr=0.25)
    for _ in range(2):
        opt.zero_grad()
        for p in ps:
            p.grad += p.data
        opt.step()
    np.testing.assert_allclose(ps[0].data, 0.75 ** 2)
    np.testing.assert_allclose(ps[1].data, 2 * 0.75 ** 2)


def _book_rmsprop_nesterov(theta, grad_fn, lr, rho, alpha, eps, steps):
    """Deep Learning (Goodfellow et al.), Algorithm 8.7, line by line (eps added to sqrt(r))."""
    v = np.zeros_like(theta)
    r = np.zeros_like(theta)
    for _ in range(steps):
        theta_tilde = theta + alpha * v             # interim update
        g = grad_fn(theta_tilde)                    # gradient at the interim point
        r = rho * r + (1 - rho) * g * g             # accumulate gradient
        v = alpha * v - lr / (np.sqrt(r) + eps) * g  # velocity update
        theta = theta + v                           # apply update
    return theta, v


def test_rmsprop_nesterov_matches_algorithm_8_7():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((7, 7))
    hess = a @ a.T / 7 + np.eye(7) * 0.1
    target = rng.standard_normal(7)

    def grad_fn(w):  # gradient of 0.5 (w - target)^T H (w - target) + a cubic term
        return hess @ (w - target) + 0.1 * w ** 3

    w0 = rng.standard_normal(7)
    p = Parameter(w0.copy())
    opt = optim.RMSProp([p], lr=0.01, alpha=0.9, momentum=0.8, nesterov=True, eps=1e-8)
    for _ in range(STEPS):
        opt.zero_grad()
        p.grad += grad_fn(p.data)
        opt.step()
    theta, v = _book_rmsprop_nesterov(w0, grad_fn, 0.01, 0.9, 0.8, 1e-8, STEPS)
    v_ours = opt.state["momentum_buffer"]
    np.testing.assert_allclose(v_ours, v, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p.data - 0.8 * v_ours, theta, rtol=0, atol=1e-12)
    assert np.abs(theta - w0).max() > 0.1


def _all_optimizers(params):
    return [optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
            optim.AdaGrad(params, lr=0.05),
            optim.RMSProp(params, lr=1e-3, momentum=0.9, centered=True),
            optim.RMSProp(params, lr=1e-3, momentum=0.9, nesterov=True),
            optim.AdaDelta(params),
            optim.Adam(params, lr=1e-2),
            optim.AdamW(params, lr=1e-2)]


@pytest.mark.parametrize("index", range(7))
def test_state_dict_resume_gives_identical_trajectory(index):
    batches = _batches(steps=20)
    loss = nn.CrossEntropyLoss()
    model_a = make_mlp()
    opt_a = _all_optimizers(model_a.parameters())[index]
    for x, y in batches:
        train_step(model_a, loss, opt_a, x, y)

    model_b = make_mlp()
    opt_b = _all_optimizers(model_b.parameters())[index]
    for x, y in batches[:10]:
        train_step(model_b, loss, opt_b, x, y)
    saved_model, saved_opt = model_b.state_dict(), opt_b.state_dict()
    model_c = make_mlp(seed=99)  # different initial weights, overwritten by the load
    model_c.load_state_dict(saved_model)
    opt_c = _all_optimizers(model_c.parameters())[index]
    opt_c.lr = 123.0  # overwritten by the load too
    opt_c.load_state_dict(saved_opt)
    for x, y in batches[10:]:
        train_step(model_c, loss, opt_c, x, y)
    np.testing.assert_array_equal(opt_c.flat.data, opt_a.flat.data)
    assert opt_c.t == 20 and opt_c.lr == opt_a.lr


def test_state_dict_is_a_copy_and_checks_its_source():
    model = make_mlp()
    opt = optim.Adam(model.parameters(), lr=0.01)
    x, y = make_data()
    train_step(model, nn.CrossEntropyLoss(), opt, x, y)
    sd = opt.state_dict()
    sd["state"]["exp_avg"][:] = 0
    assert np.abs(opt.state["exp_avg"]).max() > 0
    with pytest.raises(ValueError, match="from 'Adam', expected 'SGD'"):
        optim.SGD(model.parameters(), lr=0.1, momentum=0.9).load_state_dict(sd)
    other = optim.Adam(make_mlp(sizes=(3, 2)).parameters())
    with pytest.raises(ValueError, match="expected shape"):
        other.load_state_dict(sd)


def test_lr_is_settable_and_used():
    p = Parameter(np.zeros(3))
    opt = optim.SGD([p], lr=1.0)
    opt.lr = 0.5
    p.grad[:] = 1.0
    opt.step()
    np.testing.assert_allclose(p.data, -0.5)
    with pytest.raises(ValueError, match=r"SGD: lr must be .*got lr=-1"):
        opt.lr = -1


def test_decay_mask_skips_biases():
    model = make_mlp()
    opt = optim.SGD(model.parameters(), lr=0.5, weight_decay=0.1, decay_mask=True)
    w0, b0 = model[0].weight.data.copy(), model[0].bias.data.copy()
    opt.step()  # zero gradient: only the decay acts
    np.testing.assert_allclose(model[0].weight.data, w0 * (1 - 0.05))
    np.testing.assert_array_equal(model[0].bias.data, b0)
    optw = optim.AdamW(model.parameters(), lr=0.5, weight_decay=0.1, decay_mask=True)
    w1 = model[0].weight.data.copy()
    optw.step()
    np.testing.assert_allclose(model[0].weight.data, w1 * (1 - 0.05))
    np.testing.assert_array_equal(model[0].bias.data, b0)


def test_optimizer_built_before_astype_raises_clearly():
    model = make_mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)
    model.astype(np.float32)
    with pytest.raises(RuntimeError, match="build the optimizer after astype"):
        opt.step()


@pytest.mark.parametrize("make,match", [
    (lambda ps: optim.SGD(ps, lr=-0.1), r"SGD: lr must be .*lr=-0.1"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=1.0), r"SGD: momentum must be in \[0, 1\).*1.0"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5), r"SGD: momentum .*-0.5"),
    (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), r"SGD: nesterov .*momentum is 0"),
    (lambda ps: optim.SGD(ps, lr=0.1, weight_decay=-1e-4), r"SGD: weight_decay .*-0.0001"),
    (lambda ps: optim.RMSProp(ps, nesterov=True), r"RMSProp: nesterov"),
    (lambda ps: optim.RMSProp(ps, alpha=1.0), r"RMSProp: alpha must be in \[0, 1\)"),
    (lambda ps: optim.RMSProp(ps, eps=0.0), r"RMSProp: eps must be a number > 0, got eps=0.0"),
    (lambda ps: optim.Adam(ps, betas=(0.9, 1.0)), r"Adam: betas\[1\] must be in \[0, 1\)"),
    (lambda ps: optim.Adam(ps, betas=(-0.1, 0.9)), r"Adam: betas\[0\] .*-0.1"),
    (lambda ps: optim.AdamW(ps, eps=-1e-8), r"AdamW: eps must be a number > 0"),
    (lambda ps: optim.AdamW(ps, weight_decay=-0.01), r"AdamW: weight_decay .*-0.01"),
    (lambda ps: optim.AdaGrad(ps, lr=float("nan")), r"AdaGrad: lr must be"),
    (lambda ps: optim.AdaDelta(ps, rho=1.5), r"AdaDelta: rho must be in \[0, 1\).*1.5"),
])
def test_bad_hyperparameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make([Parameter(np.zeros(3))])


def test_bad_params_argument():
    model = make_mlp()
    with pytest.raises(TypeError, match="pass model.parameters()"):
        optim.SGD(model, lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])
    with pytest.raises(TypeError, match="expected Parameter"):
        optim.Adam([np.zeros(3)])


KERNEL_CASES = [
    lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9),
    lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
    lambda ps: optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("index", range(len(KERNEL_CASES)))
def test_numba_kernel_equals_numpy_path(index, dtype):
    batches = _batches(steps=15)
    loss = nn.CrossEntropyLoss()
    results = []
    for kernel in ("numba", "numpy"):
        model = make_mlp().astype(dtype)
        opt = KERNEL_CASES[index](model.parameters())
        opt.kernel = kernel
        for x, y in batches:
            train_step(model, loss, opt, x.astype(dtype), y)
        results.append((opt.flat.data.copy(), {k: v.copy() for k, v in opt.state.items()}))
    (w_a, s_a), (w_b, s_b) = results
    assert w_a.dtype == dtype
    tol = 1e-14 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(w_a, w_b, rtol=tol, atol=tol)
    for k in s_a:
        np.testing.assert_allclose(s_a[k], s_b[k], rtol=tol, atol=tol)
