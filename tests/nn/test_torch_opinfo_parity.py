"""mlcvlab against PyTorch on PyTorch's own test inputs (issue #20).

Every sample input that torch's OpInfo database (``op_db``) and ModuleInfo database
(``module_db``) hold for the operators mlcvlab implements (linear, conv2d, max / average /
adaptive pooling, batch norm, the activations, softmax, dropout, flatten and the losses), on
the CPU in float64 and float32, is mapped onto mlcvlab's API and run through both libraries:
the outputs, the gradient of the input and of the parameters (weight, bias) under a random
upstream gradient, and batch norm's running statistics must agree. A sample that mlcvlab's API
cannot express is skipped with its reason; the table printed at the end counts, per operator,
the samples seen, run, matched and skipped by reason. The test fails on any mismatch and when
the skips pass ``SKIP_CEILING`` (so coverage cannot shrink without a word).

What is not compared: gradients with respect to loss targets (mlcvlab's losses give dL/dpred
only) and to batch norm's running statistics (torch gives none either). Dropout's mask is
random in both libraries: the mask is read off torch's output and given to mlcvlab's dropout,
which checks the scaling and the gradient, not the random draw.

Tolerances: float64 rtol = atol = 1e-12 (the largest relative difference seen: 7.5e-15, in
conv2d), float32 rtol = atol = 1e-4 (largest seen: 5.8e-6; float32 sums in another order).

When written (torch 2.13, CPU): 3,924 samples, 3,866 run and matched, 58 skipped: 46 whose
backward runs in evaluation mode (mlcvlab's layers keep no cache there; their outputs are
compared and matched), 8 batch norms of a 1-D input, 4 with a batch-norm momentum outside
[0, 1] in training.
"""
from __future__ import annotations

import collections
import sys
import types
import unittest
import warnings

import numpy as np
import pytest
import torch

from mlcvlab import nn
from mlcvlab.nn import basis

try:                              # torch's test helpers import expecttest only for its TestCase
    import expecttest  # noqa: F401
except ImportError:               # pragma: no cover (depends on the environment)
    _stub = types.ModuleType("expecttest")
    _stub.TestCase, _stub.ACCEPT = unittest.TestCase, False
    sys.modules["expecttest"] = _stub

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.common_modules import module_db

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

DTYPES = {torch.float64: np.float64, torch.float32: np.float32}
TOL = {np.float64: 1e-12, np.float32: 1e-4}
# At most this many samples may be skipped (58 of 3,924 when set; the table prints the reasons).
# Raise it only with a reason in the commit message.
SKIP_CEILING = 70


class Skip(Exception):
    """The sample uses something mlcvlab's API does not express; the message is the reason."""


def _np(t, dtype=None):
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        return t
    a = t.detach().cpu().numpy().copy()
    return a.astype(dtype) if dtype is not None and np.issubdtype(a.dtype, np.floating) else a


def _one(v):
    """torch accepts (v,) for v and () for the default; mlcvlab an int or a pair."""
    if isinstance(v, (tuple, list)):
        if len(v) == 0:
            return None
        if len(v) == 1:
            return v[0]
        return tuple(v)
    return v


def _set(param, value):
    param.data[...] = value


# --------------------------------------------------------------------------- ours, per operator
# Each adapter takes the sample as NumPy (x, args, kwargs) and returns (out, backward): out an
# array (or a tuple whose first item carries the gradient), backward(g) -> {name: gradient} for
# "input" and any of "weight", "bias".
def _module_run(layer, x):
    y = layer.forward(x)
    if not layer.training and layer.__dict__.get("_cache", "none") is None:
        return y, None                 # mlcvlab's layers keep no cache in evaluation

    def backward(g):
        layer.zero_grad()
        dx = layer.backward(g)
        grads = {"input": dx}
        for name in ("weight", "bias"):
            p = getattr(layer, name, None)
            if p is not None:
                grads[name] = p.grad
        return grads
    return y, backward


def _activation(fwd, bwd):
    def adapter(x, args, kwargs, dtype):
        if args or kwargs:
            raise Skip(f"arguments {sorted(kwargs)}")
        y, cache = fwd(x)
        return y, lambda g: {"input": bwd(g, cache)}
    return adapter


def _leaky_relu(x, args, kwargs, dtype):
    slope = kwargs.get("negative_slope", args[0] if args else 0.01)
    y, cache = basis.leaky_relu(x, slope)
    return y, lambda g: {"input": basis.leaky_relu_grad(g, cache)}


def _softmax(x, args, kwargs, dtype):
    dim = kwargs.get("dim", args[0] if args else None)
    if kwargs.get("dtype") is not None:
        x = x.astype(DTYPES[kwargs["dtype"]])
    layer = nn.Softmax(dim)
    return _module_run(layer, x)


def _flatten(x, args, kwargs, dtype):
    start = kwargs.get("start_dim", args[0] if args else 0)
    end = kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
    return _module_run(nn.Flatten(start, end), x)


def _dropout(x, args, kwargs, dtype, torch_out=None):
    p = kwargs.get("p", args[0] if args else 0.5)
    train = kwargs.get("training", args[1] if len(args) > 1 else True)
    mask = None
    if train and 0 < p < 1:
        mask = (torch_out != 0) | (x == 0)           # the mask torch drew, read off its output
    y, cache = basis.dropout(x, p, train=train, mask=mask)
    return y, lambda g: {"input": basis.dropout_grad(g, cache)}


def _linear(x, args, kwargs, dtype):
    W = args[0] if args else kwargs["weight"]
    b = args[1] if len(args) > 1 else kwargs.get("bias")
    layer = nn.Linear(W.shape[1], W.shape[0], bias=b is not None).astype(dtype)
    _set(layer.weight, W)
    if b is not None:
        _set(layer.bias, b)
    return _module_run(layer, x)


def _conv2d(x, args, kwargs, dtype):
    W = args[0]
    b = args[1] if len(args) > 1 else kwargs.get("bias")
    names = ("stride", "padding", "dilation", "groups")
    opts = dict(zip(names, args[2:]))
    opts.update({k: v for k, v in kwargs.items() if k in names})
    groups = opts.get("groups", 1)
    layer = nn.Conv2d(W.shape[1] * groups, W.shape[0], W.shape[2:],
                      stride=_one(opts.get("stride", 1)), padding=_one(opts.get("padding", 0)),
                      dilation=_one(opts.get("dilation", 1)), groups=groups,
                      bias=b is not None).astype(dtype)
    _set(layer.weight, W)
    if b is not None:
        _set(layer.bias, b)
    return _module_run(layer, x)


def _max_pool2d(x, args, kwargs, dtype):
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    opts = dict(zip(names, args))
    opts.update(kwargs)
    layer = nn.MaxPool2d(_one(opts["kernel_size"]), _one(opts.get("stride")),
                         _one(opts.get("padding", 0)), _one(opts.get("dilation", 1)),
                         bool(opts.get("return_indices", False)),
                         bool(opts.get("ceil_mode", False)))
    return _module_run(layer, x)


def _avg_pool2d(x, args, kwargs, dtype):
    names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
             "divisor_override")
    opts = dict(zip(names, args))
    opts.update(kwargs)
    layer = nn.AvgPool2d(_one(opts["kernel_size"]), _one(opts.get("stride")),
                         _one(opts.get("padding", 0)), bool(opts.get("ceil_mode", False)),
                         bool(opts.get("count_include_pad", True)), opts.get("divisor_override"))
    return _module_run(layer, x)


def _adaptive(kind):
    def adapter(x, args, kwargs, dtype):
        size = kwargs.get("output_size", args[0] if args else None)
        if kind == "Max":
            ri = kwargs.get("return_indices", args[1] if len(args) > 1 else False)
            layer = nn.AdaptiveMaxPool2d(size, return_indices=bool(ri))
        else:
            layer = nn.AdaptiveAvgPool2d(size)
        return _module_run(layer, x)
    return adapter


def _batch_norm_module(x, running_mean, running_var, weight, bias, training, momentum, eps,
                       dtype):
    if x.ndim not in (2, 3, 4):
        raise Skip(f"batch norm of a {x.ndim}-D input (mlcvlab: (N, C), (N, C, L), (N, C, H, W))")
    track = running_mean is not None
    if not track and not training:
        raise Skip("batch norm in evaluation without running statistics")
    if training and track and not 0 <= momentum <= 1:
        raise Skip(f"batch norm momentum {momentum} outside [0, 1]")
    cls = nn.BatchNorm2d if x.ndim == 4 else nn.BatchNorm1d
    layer = cls(x.shape[1], eps=eps, momentum=momentum if 0 <= momentum <= 1 else 0.1,
                affine=weight is not None or bias is not None, track_running_stats=track,
                bias=bias is not None or weight is None).astype(dtype)
    if track:
        layer.running_mean[...] = running_mean
        layer.running_var[...] = running_var
    if layer.affine:
        _set(layer.weight, 1 if weight is None else weight)
    if layer.bias is not None:
        _set(layer.bias, 0 if bias is None else bias)
    layer.train(bool(training))
    y, backward = _module_run(layer, x)
    if backward is None:
        return y, None, layer

    def backward_bn(g):
        grads = backward(g)
        if weight is None:
            grads.pop("weight", None)
        if bias is None:
            grads.pop("bias", None)
        return grads
    return y, backward_bn, layer


def _batch_norm(x, args, kwargs, dtype):
    names = ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    opts = dict(zip(names, args))
    opts.update(kwargs)
    y, backward, layer = _batch_norm_module(
        x, opts.get("running_mean"), opts.get("running_var"), opts.get("weight"),
        opts.get("bias"), opts.get("training", False), opts.get("momentum", 0.1),
        opts.get("eps", 1e-5), dtype)
    stats = {"running_mean": layer.running_mean, "running_var": layer.running_var}
    return y, backward, stats


def _loss(cls, allowed):
    def adapter(x, args, kwargs, dtype):
        target = args[0] if args else kwargs["target"]
        extra = set(kwargs) - set(allowed) - {"target"}
        if extra:
            raise Skip(f"loss arguments {sorted(extra)}")
        loss = cls(**{k: v for k, v in kwargs.items() if k in allowed})
        value = loss(x, target)
        out = np.asarray(value, dtype=x.dtype)
        return out, lambda g: {"input": loss.backward(
            g if loss.reduction == "none" else float(g))}
    return adapter


OPS = {
    "nn.functional.relu": _activation(basis.relu, basis.relu_grad),
    "nn.functional.leaky_relu": _leaky_relu,
    "sigmoid": _activation(basis.sigmoid, basis.sigmoid_grad),
    "tanh": _activation(basis.tanh, basis.tanh_grad),
    "softmax": _softmax,
    "softmax.with_dtype": _softmax,
    "flatten": _flatten,
    "nn.functional.dropout": _dropout,
    "nn.functional.linear": _linear,
    "nn.functional.conv2d": _conv2d,
    "nn.functional.max_pool2d": _max_pool2d,
    "nn.functional.avg_pool2d": _avg_pool2d,
    "nn.functional.adaptive_avg_pool2d": _adaptive("Avg"),
    "nn.functional.adaptive_max_pool2d": _adaptive("Max"),
    "nn.functional.batch_norm": _batch_norm,
    "nn.functional.batch_norm.without_cudnn": _batch_norm,
    "nn.functional.cross_entropy": _loss(nn.CrossEntropyLoss, ("weight", "ignore_index",
                                                               "reduction", "label_smoothing")),
    "nn.functional.nll_loss": _loss(nn.NLLLoss, ("weight", "ignore_index", "reduction")),
    "nn.functional.binary_cross_entropy_with_logits": _loss(
        nn.BCEWithLogitsLoss, ("weight", "pos_weight", "reduction")),
    "nn.functional.binary_cross_entropy": _loss(nn.BCELoss, ("weight", "reduction")),
    "nn.functional.mse_loss": _loss(nn.MSELoss, ("reduction",)),
}


# --------------------------------------------------------------------------- modules
def _module_from_torch(m, dtype):
    """mlcvlab's twin of the torch module m (its parameters copied), or Skip."""
    name = type(m).__name__
    if name == "Linear":
        ours = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    elif name == "Conv2d":
        ours = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                         m.dilation, m.groups, m.bias is not None, m.padding_mode)
    elif name == "MaxPool2d":
        ours = nn.MaxPool2d(_one(m.kernel_size), _one(m.stride), _one(m.padding),
                            _one(m.dilation), m.return_indices, m.ceil_mode)
    elif name == "AvgPool2d":
        ours = nn.AvgPool2d(_one(m.kernel_size), _one(m.stride), _one(m.padding), m.ceil_mode,
                            m.count_include_pad, m.divisor_override)
    elif name == "AdaptiveAvgPool2d":
        ours = nn.AdaptiveAvgPool2d(m.output_size)
    elif name == "AdaptiveMaxPool2d":
        ours = nn.AdaptiveMaxPool2d(m.output_size, m.return_indices)
    elif name in ("BatchNorm1d", "BatchNorm2d"):
        ours = getattr(nn, name)(m.num_features, m.eps, m.momentum, m.affine,
                                 m.track_running_stats, bias=m.bias is not None or not m.affine)
    elif name == "ReLU":
        ours = nn.ReLU()
    elif name == "LeakyReLU":
        ours = nn.LeakyReLU(m.negative_slope)
    elif name == "Sigmoid":
        ours = nn.Sigmoid()
    elif name == "Tanh":
        ours = nn.Tanh()
    elif name == "Softmax":
        if m.dim is None:
            raise Skip("Softmax without dim (torch's legacy implicit choice)")
        ours = nn.Softmax(m.dim)
    else:
        raise AssertionError(name)
    ours.astype(dtype)
    for pname in ("weight", "bias"):
        p = getattr(ours, pname, None)
        if p is not None:
            _set(p, _np(getattr(m, pname), dtype))
    for bname in ("running_mean", "running_var"):
        if getattr(ours, bname, None) is not None:
            getattr(ours, bname)[...] = _np(getattr(m, bname), dtype)
    return ours


LOSS_MODULES = {
    "CrossEntropyLoss": (nn.CrossEntropyLoss, ("weight", "ignore_index", "reduction",
                                               "label_smoothing")),
    "NLLLoss": (nn.NLLLoss, ("weight", "ignore_index", "reduction")),
    "BCEWithLogitsLoss": (nn.BCEWithLogitsLoss, ("weight", "pos_weight", "reduction")),
    "BCELoss": (nn.BCELoss, ("weight", "reduction")),
    "MSELoss": (nn.MSELoss, ("reduction",)),
}
LAYER_MODULES = ("Linear", "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
                 "AdaptiveMaxPool2d", "BatchNorm1d", "BatchNorm2d", "ReLU", "LeakyReLU",
                 "Sigmoid", "Tanh", "Softmax")


# --------------------------------------------------------------------------- the comparison
class Counts:
    def __init__(self):
        self.table = collections.defaultdict(lambda: {"seen": 0, "run": 0, "matched": 0,
                                                      "skipped": collections.Counter()})
        self.failures = []
        self.worst = collections.defaultdict(float)

    def skip(self, op, reason):
        self.table[op]["skipped"][reason] += 1


def _close(a, b, dtype):
    tol = TOL[dtype]
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False, f"shape {a.shape} vs torch {b.shape}"
    if a.size == 0:
        return True, 0.0
    if np.issubdtype(b.dtype, np.integer) or b.dtype == bool:
        return bool(np.array_equal(a, b)), "integer values differ"
    ok = np.allclose(a, b, rtol=tol, atol=tol, equal_nan=True)
    finite = np.isfinite(a) & np.isfinite(b)
    err = float(np.max(np.abs(a - b)[finite] / (1 + np.abs(b)[finite]))) if finite.any() else 0.0
    return bool(ok), err


def _compare(counts, op, label, ours, theirs, dtype):
    ok, err = _close(ours, theirs, dtype)
    if not ok:
        counts.failures.append(f"{op} {label}: {err}")
        return False
    if isinstance(err, float):
        counts.worst[(op, np.dtype(dtype).name)] = max(counts.worst[(op, np.dtype(dtype).name)],
                                                       err)
    return True


def _run_sample(counts, op, run_ours, run_torch, leaves, dtype, rng, extra=None):
    """run_torch() -> torch output (tensor or tuple); run_ours(torch_out) -> (out, backward[,
    stats]); leaves: {name: torch tensor} whose gradients are compared."""
    counts.table[op]["seen"] += 1
    t_out = run_torch()
    t_main = t_out[0] if isinstance(t_out, tuple) else t_out
    try:
        with np.errstate(all="ignore"):
            result = run_ours(t_main)
    except Skip as reason:
        counts.skip(op, str(reason))
        return
    except Exception as error:                      # torch ran it, mlcvlab refused: a failure
        counts.table[op]["run"] += 1
        counts.failures.append(f"{op}: mlcvlab raised {type(error).__name__}: {error}")
        return
    counts.table[op]["run"] += 1
    out, backward = result[0], result[1]
    stats = result[2] if len(result) > 2 else None
    o_main = out[0] if isinstance(out, tuple) else out
    ok = _compare(counts, op, "output", o_main, _np(t_main), dtype)
    if isinstance(out, tuple):
        ok &= _compare(counts, op, "indices", out[1], _np(t_out[1]), dtype)
    if stats:
        for name, value in stats.items():
            if value is not None and extra and extra.get(name) is not None:
                ok &= _compare(counts, op, name, value, _np(extra[name]), dtype)
    names = [n for n, t in leaves.items() if t is not None and t.requires_grad]
    if backward is None:       # evaluation mode: outputs compared, no backward in mlcvlab
        counts.table[op]["run"] -= 1
        if ok:
            counts.skip(op, "backward in evaluation mode (mlcvlab keeps no cache; output "
                            "matched)")
        return
    if ok and names and t_main.requires_grad and t_main.is_floating_point():
        g = rng.standard_normal(tuple(t_main.shape)).astype(dtype)
        t_grads = torch.autograd.grad(t_main, [leaves[n] for n in names], torch.tensor(g),
                                      allow_unused=True)
        try:
            with np.errstate(all="ignore"):
                o_grads = backward(g)
        except Exception as error:
            counts.failures.append(f"{op}: mlcvlab's backward raised {type(error).__name__}: "
                                   f"{error}")
            return
        for n, tg in zip(names, t_grads):
            if tg is None:
                continue
            if n not in o_grads or o_grads[n] is None:
                counts.failures.append(f"{op} d{n}: mlcvlab gives no gradient")
                ok = False
                continue
            ok &= _compare(counts, op, f"d{n}", o_grads[n], _np(tg), dtype)
    counts.table[op]["matched"] += int(ok)


def _clone(v):
    if isinstance(v, torch.Tensor):
        return v.detach().clone().requires_grad_(v.requires_grad)
    if isinstance(v, (list, tuple)):
        return type(v)(_clone(a) for a in v)
    return v


def _run_op_db(counts, rng):
    for info in op_db:
        full = info.name + ("." + info.variant_test_name if info.variant_test_name else "")
        adapter = OPS.get(full)
        if adapter is None:
            continue
        for tdtype, dtype in DTYPES.items():
            for sample in info.sample_inputs("cpu", tdtype, requires_grad=True):
                x_t = _clone(sample.input)
                args_t, kwargs_t = _clone(tuple(sample.args)), _clone(dict(sample.kwargs))
                # NumPy copies before torch runs (batch norm updates its running stats in place)
                x = _np(x_t)
                args = tuple(_np(a) for a in args_t)
                kwargs = {k: _np(v) for k, v in kwargs_t.items()}
                kwargs.pop("inplace", None)
                leaves = {"input": x_t}
                if full.startswith(("nn.functional.linear", "nn.functional.conv2d")):
                    leaves["weight"] = args_t[0]
                    leaves["bias"] = args_t[1] if len(args_t) > 1 else kwargs_t.get("bias")
                elif full.startswith("nn.functional.batch_norm"):
                    names = ("running_mean", "running_var", "weight", "bias")
                    opts = dict(zip(names, args_t))
                    opts.update({k: v for k, v in kwargs_t.items() if k in names})
                    leaves["weight"], leaves["bias"] = opts.get("weight"), opts.get("bias")

                def run_torch(info=info, x_t=x_t, args_t=args_t, kwargs_t=kwargs_t):
                    return info.op(x_t, *args_t, **kwargs_t)

                def run_ours(t_out, adapter=adapter, x=x, args=args, kwargs=kwargs,
                             dtype=dtype):
                    if adapter is _dropout:
                        return adapter(x, args, kwargs, dtype, torch_out=_np(t_out))
                    return adapter(x, args, kwargs, dtype)

                extra = None
                if full.startswith("nn.functional.batch_norm"):
                    extra = {"running_mean": args_t[0] if args_t else None,
                             "running_var": args_t[1] if len(args_t) > 1 else None}
                _run_sample(counts, full, run_ours, run_torch, leaves, dtype, rng, extra)


def _run_module_db(counts, rng):
    for info in module_db:
        name = info.module_cls.__name__
        if name not in LAYER_MODULES and name not in LOSS_MODULES:
            continue
        op = f"module {name}"
        for tdtype, dtype in DTYPES.items():
            for training in (True, False):
                if not training and not info.train_and_eval_differ:
                    continue
                inputs = info.module_inputs_func(info, device="cpu", dtype=tdtype,
                                                 requires_grad=True, training=training)
                for mi in inputs:
                    cargs, ckw = mi.constructor_input.args, mi.constructor_input.kwargs
                    fargs, fkw = mi.forward_input.args, mi.forward_input.kwargs
                    with torch.no_grad():
                        m = info.module_cls(*cargs, **ckw).to(tdtype)
                    m.train(training)
                    if set(fkw) == {"input"} and not fargs:
                        fargs, fkw = (fkw["input"],), {}
                    if fkw:
                        counts.table[op]["seen"] += 1
                        counts.skip(op, f"forward keyword arguments {sorted(fkw)}")
                        continue
                    fargs_t = _clone(tuple(fargs))
                    np_args = [_np(a) for a in fargs_t]
                    if name in LOSS_MODULES:
                        cls, allowed = LOSS_MODULES[name]
                        ckw_np = {k: _np(v) for k, v in ckw.items()}

                        def run_ours(t_out, cls=cls, allowed=allowed, ckw_np=ckw_np,
                                     np_args=np_args, cargs=cargs):
                            if cargs:
                                raise Skip("positional loss constructor arguments")
                            extra = set(ckw_np) - set(allowed)
                            if extra:
                                raise Skip(f"loss arguments {sorted(extra)}")
                            if len(np_args) != 2:
                                raise Skip(f"{len(np_args)} forward arguments")
                            loss = cls(**ckw_np)
                            value = np.asarray(loss(*np_args), dtype=np_args[0].dtype)
                            return value, lambda g: {"input": loss.backward(
                                g if loss.reduction == "none" else float(g))}
                        leaves = {"input": fargs_t[0]}
                        extra = None
                    else:
                        try:            # built before torch runs (and updates its statistics)
                            built = _module_from_torch(m, dtype)
                        except Skip as reason:
                            built = reason

                        def run_ours(t_out, built=built, np_args=np_args, training=training):
                            if len(np_args) != 1:
                                raise Skip(f"{len(np_args)} forward arguments")
                            if isinstance(built, Skip):
                                raise built
                            ours = built
                            ours.train(training)
                            y, backward = _module_run(ours, np_args[0])
                            stats = {k: getattr(ours, k, None)
                                     for k in ("running_mean", "running_var")}
                            return y, backward, stats
                        leaves = {"input": fargs_t[0], "weight": getattr(m, "weight", None),
                                  "bias": getattr(m, "bias", None)}
                        extra = {k: getattr(m, k, None) for k in ("running_mean", "running_var")}

                    def run_torch(m=m, fargs_t=fargs_t):
                        return m(*fargs_t)

                    _run_sample(counts, op, run_ours, run_torch, leaves, dtype, rng, extra)


def _format(counts):
    lines = [f"{'operator':52s} {'seen':>5s} {'run':>5s} {'match':>5s} {'skip':>5s}  "
             "worst rel. diff (f64 / f32)  skipped by reason"]
    total = collections.Counter()
    reasons = collections.Counter()
    for op in sorted(counts.table):
        row = counts.table[op]
        skipped = sum(row["skipped"].values())
        w64 = counts.worst.get((op, "float64"), 0.0)
        w32 = counts.worst.get((op, "float32"), 0.0)
        why = "; ".join(f"{r}: {n}" for r, n in row["skipped"].most_common())
        lines.append(f"{op:52s} {row['seen']:5d} {row['run']:5d} {row['matched']:5d} "
                     f"{skipped:5d}  {w64:9.1e} / {w32:9.1e}  {why}")
        total.update({"seen": row["seen"], "run": row["run"], "matched": row["matched"],
                      "skipped": skipped})
        reasons.update(row["skipped"])
    lines.append(f"{'TOTAL':52s} {total['seen']:5d} {total['run']:5d} {total['matched']:5d} "
                 f"{total['skipped']:5d}")
    lines.append("skipped by reason: " + "; ".join(f"{r}: {n}" for r, n in
                                                   reasons.most_common()))
    return "\n".join(lines), total


@pytest.fixture(scope="module")
def parity():
    counts = Counts()
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # tiny tensors: waking torch's threads costs more than
    #                                   it saves
    try:
        _run_op_db(counts, rng)
        _run_module_db(counts, rng)
    finally:
        torch.set_num_threads(threads)
    table, total = _format(counts)
    print("\n" + table)
    return counts, total, table


def test_every_expressible_torch_sample_matches(parity):
    counts, total, table = parity
    assert total["run"] > 0
    assert not counts.failures, (f"{len(counts.failures)} mismatches:\n"
                                 + "\n".join(counts.failures[:40]) + "\n" + table)
    assert total["matched"] == total["run"]


def test_skipped_samples_stay_below_the_ceiling(parity):
    counts, total, table = parity
    expected_ops = set(OPS) | {f"module {n}" for n in LAYER_MODULES + tuple(LOSS_MODULES)}
    missing = sorted(op for op in expected_ops
                     if op not in counts.table and op not in ("softmax.with_dtype",))
    assert not missing, f"torch holds no samples for {missing}: update OPS / the module lists"
    assert total["skipped"] <= SKIP_CEILING, (
        f"{total['skipped']} samples skipped (ceiling {SKIP_CEILING}):\n{table}")
    assert total["run"] >= 0.9 * total["seen"], table
