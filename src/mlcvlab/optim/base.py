"""The optimizer base class: one flat parameter vector, flat state, whole-vector updates.

An optimizer takes a model's ``parameters()`` list (or any iterable of
:class:`~mlcvlab.nn.parameter.Parameter`), calls :func:`mlcvlab.nn.parameter.flatten`
once, and from then on updates ``flat.data`` (P,) in place from ``flat.grad`` (P,)
with a few whole-vector NumPy calls. Its state (momentum, Adam's m and v, ...)
is a dict of (P,) arrays, so ``step()`` never loops over parameter tensors.

Some of a model's parameters (``SGD(model[-1].parameters(), ...)``, torch's way of
freezing the rest) stay in the model's buffer too: the optimizer updates only their
slices (its state arrays are still (P,), zero elsewhere).

Parameter groups, as ``torch.optim``: ``params`` may instead be a list of dicts,
``[{"params": [...], "lr": 0.1}, {"params": [...], "weight_decay": 0}]``, each
group's missing hyperparameters taken from the constructor's arguments.
``optimizer.param_groups`` is that list of dicts (with every hyperparameter filled
in); a user or a scheduler may set any group's "lr" (or momentum, betas, ...)
between steps. The parameters stay in the one flat buffer: a group is a set of
slices of it (one per run of consecutive parameters), and with several groups
``step()`` runs the same whole-vector update on each slice with that group's
hyperparameters, and on the whole vector when there is one group (no slower than
without groups). ``optimizer.lr = x`` sets every group's lr; reading ``optimizer.lr``
(or ``.momentum``, ``.betas``, ...) gives the first group's.

Weight decay (L2) is "coupled" as in ``torch.optim``: the gradient used by the
update rule is ``g = grad + weight_decay * w``. Like torch, it applies to every
parameter by default; ``decay_mask=True`` restricts it to the entries where
``flat.decay_mask`` is True (weights only: no biases, no batch-norm gamma/beta).
Per group, ``{"params": biases, "weight_decay": 0}`` does the same the torch way.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from mlcvlab.nn.parameter import FlatParameters, Parameter, flatten
from mlcvlab.optim import kernels


def check_hyper(optimizer: str, name: str, value, ok: bool, expected: str) -> None:
    """Raise a ValueError naming the optimizer, the argument and its value unless ``ok``."""
    if not ok:
        raise ValueError(f"{optimizer}: {name} must be {expected}, got {name}={value!r}")


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _group_property(name: str, doc: str = "") -> property:
    def get(self):
        return self.param_groups[0][name]

    def set_(self, value):
        self._set_in_every_group(name, value)

    return property(get, set_, doc=doc or f"The first parameter group's {name}; setting it "
                    f"sets every group's (use param_groups[i][{name!r}] for one).")


def _merge_slices(slices: List[slice]) -> List[slice]:
    """Sorted, with adjacent slices joined: the fewest runs of the flat vector."""
    runs: List[slice] = []
    for sl in sorted(slices, key=lambda s: s.start):
        if runs and runs[-1].stop == sl.start:
            runs[-1] = slice(runs[-1].start, sl.stop)
        elif sl.stop > sl.start:
            runs.append(sl)
    return runs


def _host_copy(a) -> np.ndarray:
    """A NumPy copy of a state array (a CuPy one comes to the host)."""
    return a.copy() if isinstance(a, np.ndarray) else a.get()


def _on_device_of(like, a: np.ndarray):
    """Host array ``a`` on the device of ``like`` (as is when ``like`` is a NumPy array)."""
    if isinstance(like, np.ndarray):
        return a
    from mlcvlab.gpu import device as gpu_device
    return gpu_device.to_device(a)


class Optimizer:
    """Base class: flat buffer, parameter groups, coupled weight decay, step counter, state.

    Subclasses list every state array they may keep in ``_state_names`` (and say which
    a group needs in ``_states_for(group)``), their hyperparameters in
    ``_hyper_names`` (passed to ``__init__`` as keyword arguments, checked and
    normalized by ``_check_group``), and implement ``_update(w, g, h, st)``: ``w`` is
    (a slice of) ``flat.data`` to change in place, ``g`` the gradient with weight decay
    already added (do not modify it), ``h`` the group's hyperparameters and ``st`` its
    state arrays (views of ``self.state``). A subclass may also implement
    ``_fused_update(w, grad, h, st, wd)``: the whole update in one compiled pass
    (``kernels.py`` on the CPU, its twin in ``mlcvlab.gpu.optim`` on the device; a rule
    with no CPU kernel fuses on the device only), used when ``kernel == "numba"``; set
    ``opt.kernel = "numpy"`` to force the NumPy path (the two agree; see tests/optim and,
    for the device, tests/gpu/basis_sim_checks.py).
    """

    _state_names: tuple = ()
    _hyper_names: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for h in cls._hyper_names:
            if not isinstance(getattr(cls, h, None), property):
                setattr(cls, h, _group_property(h))

    def __init__(self, params: Iterable[Parameter], lr: float, weight_decay: float = 0.0,
                 decay_mask: bool = False, **hyper):
        name = type(self).__name__
        if hasattr(params, "parameters") and callable(params.parameters):
            raise TypeError(f"{name}: expected model.parameters() (a list of Parameter), "
                            f"got the {type(params).__name__} itself; pass model.parameters()")
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"{name}: expected an iterable of Parameter or of parameter-group "
                            f"dicts, got {type(params).__name__}") from None
        if not params:
            raise ValueError(f"{name}: got an empty parameter list; nothing to optimize")
        self.defaults = self._check_group(dict(lr=lr, weight_decay=weight_decay,
                                               decay_mask=decay_mask, **hyper), name)
        self.param_groups: List[dict] = self._make_groups(params)
        self.params: List[Parameter] = [p for g in self.param_groups for p in g["params"]]
        if not self.params:
            raise ValueError(f"{name}: got an empty parameter list; nothing to optimize")
        first = self.params[0]._flat
        if first is not None and all(p._flat is first for p in self.params):
            # the model's buffer, for all its parameters in any order or for some of them
            self.flat: FlatParameters = first
        else:
            self.flat = flatten(self.params)
        where = {id(p): sl for p, sl in zip(self.flat.params, self.flat.slices)}
        self._slices: List[List[slice]] = [_merge_slices([where[id(p)] for p in g["params"]])
                                           for g in self.param_groups]
        # one group over the whole buffer: every step is a few whole-vector calls
        self._whole = (len(self.param_groups) == 1
                       and self._slices[0] == [slice(0, self.flat.size)])
        self.t = 0  # number of steps taken
        self.kernel = "numba" if kernels.available() else "numpy"
        self._post_step: List[Callable[[], None]] = []
        self._buffers: Dict[str, np.ndarray] = {}  # (P,) scratch vectors, by name
        self._wd_cache: Dict[int, tuple] = {}
        self.state: Dict[str, np.ndarray] = {}
        self._ensure_state()

    # -- groups -----------------------------------------------------------------
    def _make_groups(self, params: list) -> List[dict]:
        name = type(self).__name__
        is_dict = [isinstance(p, dict) for p in params]
        if any(is_dict) and not all(is_dict):
            raise TypeError(f"{name}: params must be all Parameters or all parameter-group "
                            f"dicts, not a mix")
        raw = params if all(is_dict) else [{"params": params}]
        groups, seen = [], set()
        for i, g in enumerate(raw):
            where = f"{name} param_groups[{i}]" if all(is_dict) else name
            if "params" not in g:
                raise ValueError(f"{where}: a parameter group needs a 'params' entry, got keys "
                                 f"{sorted(g)}")
            ps = g["params"]
            ps = [ps] if isinstance(ps, Parameter) else list(ps)
            for p in ps:
                if not isinstance(p, Parameter):
                    raise TypeError(f"{where}: expected Parameter objects, got "
                                    f"{type(p).__name__}")
                if id(p) in seen:
                    raise ValueError(f"{where}: a parameter appears in more than one "
                                     f"parameter group")
                seen.add(id(p))
            group = self._check_group({**self.defaults, **{k: v for k, v in g.items()
                                                           if k != "params"}}, where)
            groups.append({"params": ps, **group})
        return groups

    def _check_group(self, h: dict, where: str) -> dict:
        """Check a group's hyperparameters (raise ValueError naming the bad one) and return
        them normalized; subclasses check theirs and call this."""
        lr, wd = h["lr"], h["weight_decay"]
        check_hyper(where, "lr", lr, _is_real(lr) and math.isfinite(lr) and lr >= 0,
                    "a finite number >= 0")
        check_hyper(where, "weight_decay", wd, _is_real(wd) and math.isfinite(wd) and wd >= 0,
                    "a number >= 0")
        return {**h, "lr": float(lr), "weight_decay": float(wd),
                "decay_mask": bool(h["decay_mask"])}

    def _set_in_every_group(self, key: str, value) -> None:
        """Set one hyperparameter in every group, checked first (the ``opt.lr = x`` setters)."""
        checked = [self._check_group({**{k: v for k, v in g.items() if k != "params"},
                                      key: value}, type(self).__name__)
                   for g in self.param_groups]
        for g, c in zip(self.param_groups, checked):
            g[key] = c[key]

    def add_param_group(self, group: dict) -> None:
        """Not supported: the parameters live in one flat buffer fixed at construction."""
        raise NotImplementedError(
            f"{type(self).__name__}.add_param_group: every parameter lives in one flat buffer "
            f"built with the optimizer; pass all the groups to the constructor instead")

    lr = _group_property("lr", "The learning rate of the next ``step()`` (the first group's); "
                               "setting it sets every group's lr.")
    weight_decay = _group_property("weight_decay")
    decay_mask = _group_property("decay_mask")

    # -- state --------------------------------------------------------------------
    def _states_for(self, h: dict) -> tuple:
        """The state arrays a group with hyperparameters ``h`` needs (default: all)."""
        return self._state_names

    def _ensure_state(self) -> None:
        """Allocate (zeros) the state arrays the groups need now and do not have yet (e.g.
        momentum turned on by a schedule)."""
        for g in self.param_groups:
            for s in self._states_for(g):
                if s not in self.state:
                    self.state[s] = self._init_state(s)

    def _init_state(self, name: str) -> np.ndarray:
        return np.zeros_like(self.flat.data)

    # -- the update -------------------------------------------------------------
    def _buffer(self, name: str, n: int) -> np.ndarray:
        """The first n entries of the (P,) scratch vector ``name`` (allocated once)."""
        buf = self._buffers.get(name)
        if buf is None:
            buf = self._buffers[name] = np.empty_like(self.flat.data)
        return buf if n == buf.size else buf[:n]

    def _decay(self, i: int, h: dict, j: int):
        """Group i's weight decay for its j-th slice: a scalar, or a vector that is zero where
        the decay mask says no decay (cached while the group's weight_decay is unchanged)."""
        wd = h["weight_decay"]
        if wd == 0.0 or not h["decay_mask"]:
            return wd
        cached = self._wd_cache.get(i)
        if cached is None or cached[0] != wd:
            mask, dtype = self.flat.decay_mask, self.flat.dtype
            cached = (wd, [np.where(mask[sl], wd, 0.0).astype(dtype) for sl in self._slices[i]])
            self._wd_cache[i] = cached
        return cached[1][j]

    def _check_flat(self) -> None:
        if self.params[0]._flat is not self.flat:
            raise RuntimeError(
                f"{type(self).__name__}: the parameters were moved to a new flat buffer after the "
                f"optimizer was built (e.g. by model.astype); build the optimizer after astype()")

    def _coupled_grad(self, w: np.ndarray, grad: np.ndarray, wd) -> np.ndarray:
        """g = grad + wd * w (a scratch buffer), or ``grad`` itself when wd is 0."""
        if np.isscalar(wd) and wd == 0.0:
            return grad
        g = self._buffer("coupled", w.size)
        np.multiply(w, wd, out=g)
        g += grad
        return g

    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """Apply one update to every parameter (in place), then the post-step hooks.

        closure: as torch, an optional function that computes the loss and the gradients
        (zero_grad, forward, backward) and returns the loss; it is called first and its
        loss returned.
        """
        loss = closure() if closure is not None else None
        self._check_flat()
        self.t += 1
        w, grad, groups = self.flat.data, self.flat.grad, self.param_groups
        if self._whole:  # the whole vector at once
            h = groups[0]
            for s in self._states_for(h):
                if s not in self.state:
                    self._ensure_state()
            wd = h["weight_decay"]
            if wd != 0.0 and h["decay_mask"]:
                wd = self._decay(0, h, 0)
            self._step_part(w, grad, h, self.state, wd)
        else:
            self._ensure_state()
            for i, h in enumerate(groups):
                for j, sl in enumerate(self._slices[i]):
                    st = {k: v[sl] for k, v in self.state.items()}
                    self._step_part(w[sl], grad[sl], h, st, self._decay(i, h, j))
        for hook in self._post_step:
            hook()
        return loss

    def _step_part(self, w: np.ndarray, grad: np.ndarray, h: dict, st: dict, wd) -> None:
        """The update of one slice (or the whole vector) with group hyperparameters h."""
        if not (self.kernel == "numba" and self._fused_update(w, grad, h, st, wd)):
            self._update(w, self._coupled_grad(w, grad, wd), h, st)

    def _fused_update(self, w: np.ndarray, grad: np.ndarray, h: dict, st: dict, wd) -> bool:
        """Do the whole update in one compiled pass and return True, or return False."""
        return False

    def _fusable(self, wd) -> bool:
        """Whether the fused update can take ``wd``: a scalar anywhere; the decay mask's
        vector only on the device (the GPU twins take it; the CPU kernels leave masked decay
        to the NumPy path)."""
        return np.isscalar(wd) or self.flat.device != "cpu"

    @staticmethod
    def _wd_arg(w, wd):
        """``wd`` as a fused update takes it: a scalar cast to w's dtype, or the vector."""
        return w.dtype.type(wd) if np.isscalar(wd) else wd

    def _kernel(self, name: str):
        """The fused update ``name`` for where the parameters live: the numba CPU kernel of
        :mod:`mlcvlab.optim.kernels`, or its CUDA twin in :mod:`mlcvlab.gpu.optim` (same
        arguments, same arithmetic) when the model was moved with ``to("cuda")``."""
        if self.flat.device == "cpu":
            return kernels.get(name)
        from mlcvlab.gpu import optim as gpu_optim
        return gpu_optim.get(name)

    def _update(self, w: np.ndarray, g: np.ndarray, h: dict, st: dict) -> None:
        raise NotImplementedError(f"{type(self).__name__}._update: Optimizer is abstract; "
                                  "subclasses implement _update(w, g, h, st) (or _fused_update)")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Set every gradient to zero (lazily, as ``Module.zero_grad``: see nn.parameter).

        ``set_to_none`` is accepted for torch's signature; gradients are arrays that are
        never None here, and either way the next backward starts from zero.
        """
        self.flat.zero_grad()

    def register_post_step(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` after every ``step()`` (used by the L1 and max-norm regularizers)."""
        if not callable(hook):
            raise TypeError(f"{type(self).__name__}.register_post_step: expected a callable, "
                            f"got {type(hook).__name__}")
        self._post_step.append(hook)

    # -- state dict -------------------------------------------------------------------
    def hyperparameters(self) -> dict:
        """The first group's hyperparameters (all of them with a single group)."""
        g = self.param_groups[0]
        return {h: g[h] for h in ("lr", "weight_decay", "decay_mask") + self._hyper_names}

    def state_dict(self) -> dict:
        """Copies of everything needed to resume: type, hyperparameters, step count, state.

        ``param_groups`` holds every group's settings and, as torch, the indices of its
        parameters, here their positions in the flat buffer (the model's order, so a
        load into groups holding other parameters is refused); ``hyper`` is the first
        group's hyperparameters.
        """
        index = {id(p): i for i, p in enumerate(self.flat.params)}
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]
        return {"optimizer": type(self).__name__, "hyper": self.hyperparameters(), "t": self.t,
                "state": {k: _host_copy(v) for k, v in self.state.items()},
                "param_groups": groups}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``: state arrays copied in, groups' settings and step set."""
        name = type(self).__name__
        if not isinstance(state, dict) or "state" not in state or "t" not in state:
            raise ValueError(f"{name}.load_state_dict: expected a dict from state_dict(), "
                             f"got {type(state).__name__}")
        if state.get("optimizer") != name:
            raise ValueError(f"{name}.load_state_dict: the state dict is from "
                             f"{state.get('optimizer')!r}, expected {name!r}")
        arrays = state["state"]
        unknown = set(arrays) - set(self._state_names)
        if unknown:
            raise ValueError(f"{name}.load_state_dict: expected state among "
                             f"{sorted(self._state_names)}, got {sorted(arrays)}")
        for k, v in arrays.items():
            v = np.asarray(v)
            if v.shape != self.flat.data.shape:
                raise ValueError(f"{name}.load_state_dict: state '{k}' expected shape "
                                 f"{self.flat.data.shape}, got {v.shape}; was it saved for "
                                 f"another model?")
        saved_groups = state.get("param_groups")
        if saved_groups is not None:
            if len(saved_groups) != len(self.param_groups):
                raise ValueError(f"{name}.load_state_dict: the state dict has "
                                 f"{len(saved_groups)} parameter groups, the optimizer "
                                 f"{len(self.param_groups)}")
            index = {id(p): i for i, p in enumerate(self.flat.params)}
            checked = []
            for i, (g, sg) in enumerate(zip(self.param_groups, saved_groups)):
                if list(sg.get("params", [])) != [index[id(p)] for p in g["params"]]:
                    raise ValueError(f"{name}.load_state_dict: parameter group {i} holds other "
                                     f"parameters than when it was saved")
                merged = {**{k: v for k, v in g.items() if k != "params"},
                          **{k: v for k, v in sg.items() if k != "params"}}
                checked.append(self._check_group(merged, f"{name} param_groups[{i}]"))
            for g, c in zip(self.param_groups, checked):
                g.update(c)
        else:  # a state dict from before parameter groups: one set of hyperparameters
            hyper = state.get("hyper", {})
            for h in ("lr", "weight_decay", "decay_mask") + self._hyper_names:
                if h in hyper:
                    self._set_in_every_group(h, hyper[h])
        for k in list(self.state):
            if k not in arrays:
                del self.state[k]
        for k, v in arrays.items():
            if k not in self.state:
                self.state[k] = self._init_state(k)
            self.state[k][...] = _on_device_of(self.flat.data, np.asarray(v, self.flat.dtype))
        self._ensure_state()
        self._wd_cache.clear()
        self.t = int(state["t"])

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())
        groups = f", groups={len(self.param_groups)}" if len(self.param_groups) > 1 else ""
        return f"{type(self).__name__}({hyper}{groups}, n_params={self.flat.size})"
