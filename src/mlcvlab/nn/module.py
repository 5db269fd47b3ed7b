"""The Module contract: forward caches what backward needs; backward returns dx and
accumulates parameter gradients in place.

Contract for every layer:

* ``forward(x)`` computes the output; in training mode it keeps a cache for
  ``backward``. ``__call__`` is ``forward``.
* ``backward(dy)`` takes dL/d(output) and returns dL/d(input); it *adds* the
  parameter gradients into ``Parameter.grad`` (so gradients of several
  micro-batches accumulate until ``zero_grad``).
* Parameters are attributes of type :class:`Parameter`; child modules are
  attributes of type :class:`Module`; non-trainable state (batch-norm running
  statistics) is registered with :meth:`register_buffer`. Registration order
  fixes the order of ``parameters()`` and of the flat buffer.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np

from mlcvlab.nn import threadsplit
from mlcvlab.nn.basis import is_array
from mlcvlab.nn.parameter import FlatParameters, Parameter, flatten


class Kept(NamedTuple):
    """What a layer's training forward keeps until its backward, per sample unless said so:
    the memory lab's analytic model adds these up (and checks them against the real caches).

    Arrays are counted in the model's dtype, except the ``*_bytes`` fields (integer indices,
    float64 divisors). A tensor kept by two layers (ReLU's output is the next Linear's input)
    is counted once.
    """

    input: bool = False         # its input array, by reference
    output: bool = False        # its output array, by reference
    alias: bool = False         # its output is a view of its input: no new tensor
    values: int = 0             # values of arrays of its own (BN's x_hat, a dropout mask)
    fixed_values: int = 0       # values that do not grow with the batch (BN's mean, var, 1/std)
    index_bytes: int = 0        # bytes of other arrays (max pooling's argmax indices)
    fixed_bytes: int = 0        # bytes of other arrays that do not grow with the batch


class Module:
    """Base class of all layers and models.

    Besides ``forward``/``backward``, a layer declares its facts next to them:
    :meth:`kept_for_backward` (what it caches) and :meth:`multiply_adds` (what its forward
    costs). Only ``mlcvlab.analysis`` and the memory lab call these, through :func:`declared`,
    which refuses a layer that declares nothing.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "input_grad", True)
        object.__setattr__(self, "_flat", None)
        object.__setattr__(self, "device", "cpu")

    # -- registration -----------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(
                f"{type(self).__name__}: call super().__init__() before assigning attributes"
            )
        params, modules, buffers = self._parameters, self._modules, self._buffers
        if name in buffers and is_array(value):
            object.__setattr__(self, name, value)    # a buffer updated in place or replaced
            return
        if name in params or name in modules or name in buffers:
            for d in (params, modules, buffers):
                d.pop(name, None)
        if isinstance(value, Parameter):
            params[name] = value
        elif isinstance(value, Module):
            modules[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, value: np.ndarray) -> None:
        """Non-trainable state saved in ``state_dict`` (e.g. running mean)."""
        object.__setattr__(self, name, value)
        self._buffers[name] = True

    def add_module(self, name: str, module: "Module") -> None:
        setattr(self, name, module)

    # -- traversal --------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[Tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator["Module"]:
        return iter(self._modules.values())

    def apply(self, fn: Callable[["Module"], None]) -> "Module":
        """Call ``fn(m)`` on every submodule (children first, recursively) and then on self,
        as ``torch.nn.Module.apply`` (e.g. to re-initialize weights); returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def named_parameters(self, prefix: str = "") -> Iterator[Tuple[str, Parameter]]:
        seen = set()
        for mname, m in self.named_modules(prefix):
            for pname, p in m._parameters.items():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self) -> List[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = "") -> Iterator[Tuple[str, np.ndarray]]:
        for mname, m in self.named_modules(prefix):
            for bname in m._buffers:
                yield (f"{mname}.{bname}" if mname else bname), getattr(m, bname)

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # -- flat buffer --------------------------------------------------------
    def flat(self, dtype=None) -> FlatParameters:
        """The model's single flat parameter/gradient buffer (built once, then reused)."""
        params = self.parameters()
        fp = flatten(params, dtype=dtype)
        object.__setattr__(self, "_flat", fp)
        return fp

    def zero_grad(self) -> None:
        params = self.parameters()
        if params and params[0]._flat is not None and params[0]._flat.covers(params):
            params[0]._flat.zero_grad()
        else:
            for p in params:
                p.zero_grad()

    # -- modes and dtype ------------------------------------------------------
    def set_input_grad(self, needed: bool = True) -> "Module":
        """Say whether ``backward`` must return dL/d(input) (default True).

        Training loops call ``model.set_input_grad(False)``: the model's input is data,
        so nobody needs its gradient, and the first layer with parameters (Linear,
        Conv2d) then computes only its parameter gradients and ``backward`` returns
        None (PyTorch likewise skips the gradient of an input that does not require
        grad). Layers with nothing to skip ignore the setting.
        """
        object.__setattr__(self, "input_grad", bool(needed))
        return self

    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def astype(self, dtype) -> "Module":
        """Convert parameters and floating buffers to ``dtype`` (e.g. np.float64 for
        gradient checks).
        """
        dtype = np.dtype(dtype)
        if not np.issubdtype(dtype, np.floating):
            raise TypeError(f"{type(self).__name__}.astype: expected a floating dtype, got {dtype}")
        if self.device != "cpu":
            if self.parameters() and self.dtype == dtype:
                return self                     # nothing to convert
            raise TypeError(f"{type(self).__name__}.astype({dtype}): the model is on "
                            f"{self.device!r}, whose kernels compute in float32; move it back "
                            f"first (model.cpu().astype(...)), e.g. for a float64 gradient check")
        for m in self.modules():
            for p in m._parameters.values():
                p.data = p.data.astype(dtype)
                p.grad = p.grad.astype(dtype)
                p._flat = None
            for b in m._buffers:
                arr = getattr(m, b)
                if isinstance(arr, np.ndarray) and np.issubdtype(arr.dtype, np.floating):
                    object.__setattr__(m, b, arr.astype(dtype))
        if self.parameters():
            self.flat()
        return self

    # -- device -------------------------------------------------------------------
    def to(self, device) -> "Module":
        """Move the parameters, their gradients and the floating buffers to ``device``
        ("cpu" or "cuda"), as ``torch.nn.Module.to``; every layer then runs its GPU twin
        (:mod:`mlcvlab.gpu`). Returns self.

        Build the optimizer after the move (as in torch): the parameters get a new flat
        buffer on the device, and an optimizer built before refuses to step. Before
        anything moves, every layer is checked: a layer or option without a GPU twin is a
        NotImplementedError naming it, and no GPU (nor the simulator) a RuntimeError.
        Integer buffers (batch counts, dropout seeds and steps) stay on the host: they are
        read as Python ints every step.
        """
        from mlcvlab.gpu.device import check_device
        device = check_device(device)
        if device == "cuda":
            from mlcvlab.gpu import engine
            engine.check_model(self)
        params = self.parameters()
        if params:
            flat = self.flat().moved(device)
            object.__setattr__(self, "_flat", flat)
        for m in self.modules():
            for b in m._buffers:
                arr = getattr(m, b)
                if is_array(arr) and np.issubdtype(arr.dtype, np.floating):
                    object.__setattr__(m, b, _moved(arr, device))
            object.__setattr__(m, "device", device)
        return self

    def cuda(self) -> "Module":
        """``to("cuda")``."""
        return self.to("cuda")

    def cpu(self) -> "Module":
        """``to("cpu")``."""
        return self.to("cpu")

    @property
    def xp(self):
        """The array module of this layer's arrays: NumPy, or on "cuda" CuPy (NumPy under
        the simulator). For the few array ops a layer does itself (zeros, concatenate)."""
        if self.device == "cpu":
            return np
        from mlcvlab.gpu.device import array_module
        return array_module()

    @property
    def dtype(self) -> np.dtype:
        params = self.parameters()
        return params[0].dtype if params else np.dtype(np.float32)

    # -- state ------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of every parameter and buffer, by dotted name (NumPy arrays, on the host,
        whatever the model's device)."""
        state = OrderedDict()
        for name, p in self.named_parameters():
            state[name] = _host_copy(p.data)
        for name, b in self.named_buffers():
            state[name] = _host_copy(b)
        return state

    def load_state_dict(self, state: Dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy values in place (the flat buffer is kept). A buffer a module lists in
        ``_optional_buffers`` may be missing (a state saved before it existed): it keeps
        its value."""
        own = dict(self.named_parameters())
        buffers = {}
        for mname, m in self.named_modules():
            for bname in m._buffers:
                buffers[f"{mname}.{bname}" if mname else bname] = (m, bname)
        if strict:
            optional = {k for k, (m, b) in buffers.items()
                        if b in getattr(m, "_optional_buffers", ())}
            missing = [k for k in list(own) + list(buffers) if k not in state
                       and k not in optional]
            unexpected = [k for k in state if k not in own and k not in buffers]
            if missing or unexpected:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                    f"unexpected keys {unexpected}"
                )
        for key, value in state.items():
            value = np.asarray(value)
            if key in own:
                p = own[key]
                if value.shape != p.data.shape:
                    raise ValueError(
                        f"{type(self).__name__}.load_state_dict: '{key}' expected shape "
                        f"{p.data.shape}, got {value.shape}"
                    )
                p.data[...] = _moved(value, self.device)
            elif key in buffers:
                m, bname = buffers[key]
                cur = getattr(m, bname)
                if is_array(cur):
                    if value.shape != cur.shape:
                        raise ValueError(
                            f"{type(self).__name__}.load_state_dict: buffer '{key}' expected "
                            f"shape {cur.shape}, got {value.shape}"
                        )
                    cur[...] = value if isinstance(cur, np.ndarray) else _moved(value, "cuda")
                else:
                    object.__setattr__(m, bname, type(cur)(value))

    # -- compute ----------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError(
            f"{type(self).__name__}.forward: Module is abstract; subclasses implement forward")

    def backward(self, dy):
        raise NotImplementedError(
            f"{type(self).__name__}.backward: Module is abstract; subclasses implement backward")

    def __call__(self, x):
        return self.forward(x)

    # -- fusion (an execution detail of Sequential) ------------------------------------------
    def fuses_with(self, nxt: "Module") -> bool:
        """Whether :class:`Sequential` may run this layer and the one after it, ``nxt``, as one
        call, :meth:`forward_fused`, instead of ``self.forward`` then ``nxt.forward``. A fused
        call computes what the two layers compute apart (to float rounding) and fills both
        layers' caches as their own forwards would, so the backward runs layer by layer as
        ever. False unless a layer says otherwise (batch norm followed by a ReLU, on the CPU)."""
        return False

    def forward_fused(self, nxt: "Module", x):
        """``nxt.forward(self.forward(x))`` (see :meth:`fuses_with`)."""
        return nxt.forward(self.forward(x))

    def fuses_with_two(self, nxt: "Module", after: "Module") -> bool:
        """As :meth:`fuses_with` for the two layers after this one, ``nxt`` and ``after``, run
        as one call, :meth:`forward_fused_two`; :class:`Sequential` asks this first. False
        unless a layer says otherwise (a convolution, an evaluation-mode batch norm and a
        ReLU, on the CPU)."""
        return False

    def forward_fused_two(self, nxt: "Module", after: "Module", x):
        """``after.forward(nxt.forward(self.forward(x)))`` (see :meth:`fuses_with_two`)."""
        return after.forward(nxt.forward(self.forward(x)))

    def splits_over_batch(self) -> bool:
        """Whether this module's own computation (not its children's) treats every sample of
        a batch on its own in the current mode, so that the batch may be cut into parts that
        run apart (:mod:`mlcvlab.nn.threadsplit`). False unless the class that defines
        ``forward`` says otherwise: batch norm in training couples the samples."""
        return False

    # -- facts (read by mlcvlab.analysis and the memory lab, never by forward/backward) ------
    def kept_for_backward(self, in_shape: Tuple[int, ...], out_shape: Tuple[int, ...]) -> Kept:
        """What a training forward on one sample of ``in_shape`` (no batch axis) keeps for the
        backward, given the output shape it gave."""
        raise NotImplementedError(_undeclared(type(self), "kept_for_backward"))

    def multiply_adds(self, in_shape: Tuple[int, ...], out_shape: Tuple[int, ...]) -> int:
        """Multiply-adds of the forward on one sample of ``in_shape`` (no batch axis), given the
        output shape it gave. Element-wise layers count 0 (see mlcvlab.analysis.layers)."""
        raise NotImplementedError(_undeclared(type(self), "multiply_adds"))

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        if len(lines) == 1:
            return lines[0] + ")"
        return "\n".join(lines) + "\n)"


_FACTS = {"kept_for_backward": "what its forward keeps for backward",
          "multiply_adds": "the multiply-adds of its forward"}


def _undeclared(cls: type, fact: str) -> str:
    return (f"{cls.__name__} declares no {fact} ({_FACTS[fact]}); add the method next to its "
            f"forward (see CONTRIBUTING 'Adding a layer') instead of letting it count as 0")


def declared(module: Module, fact: str) -> Callable:
    """``module.<fact>``, for a fact the layer really declares: a NotImplementedError naming the
    layer when no class from Module down to the one that defines its ``forward`` declares it
    (a subclass that overrides ``forward`` must declare its facts again: it may keep or cost
    something else). fact: "kept_for_backward" or "multiply_adds"."""
    mro = type(module).__mro__
    owner = next(c for c in mro if fact in c.__dict__)
    forward = next(c for c in mro if "forward" in c.__dict__)
    if owner is Module:
        raise NotImplementedError(_undeclared(type(module), fact))
    if not issubclass(owner, forward):
        raise NotImplementedError(
            f"{type(module).__name__} overrides forward but inherits {fact} from "
            f"{owner.__name__}; declare it in {type(module).__name__} next to its forward "
            "(see CONTRIBUTING 'Adding a layer')")
    return getattr(module, fact)




def _host_copy(a) -> np.ndarray:
    return np.array(a, copy=True) if isinstance(a, np.ndarray) else a.get()


def _moved(a, device: str):
    """``a`` as an array of ``device`` (a copy when it changes device)."""
    from mlcvlab.gpu import device as gpu_device
    if device == "cpu":
        return gpu_device.to_host(a)
    if not isinstance(a, np.ndarray) and hasattr(a, "__cuda_array_interface__"):
        return a
    return gpu_device.to_device(a)


class Sequential(Module):
    """Modules applied in order; backward runs them in reverse."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: item {i} is a {type(m).__name__}, expected a Module")
            self.add_module(str(i), m)

    def __len__(self) -> int:
        return len(self._modules)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module: Module) -> "Sequential":
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x):
        """The layers in order. The outermost Sequential of a convolutional model may run the
        whole pass with its batch split over the threads (:mod:`mlcvlab.nn.threadsplit`)."""
        parts = threadsplit.parts_for(self, x)
        if parts is not None:
            return threadsplit.forward(self, x, parts)
        if self.__dict__.get("_split") is not None:
            object.__setattr__(self, "_split", None)
        with threadsplit.nested():
            return self._forward_layers(x)

    def _forward_layers(self, x):
        layers = list(self._modules.values())
        i = 0
        while i < len(layers):
            m = layers[i]
            if i + 2 < len(layers) and m.fuses_with_two(layers[i + 1], layers[i + 2]):
                x = m.forward_fused_two(layers[i + 1], layers[i + 2], x)  # conv + BN + ReLU
                i += 3
            elif i + 1 < len(layers) and m.fuses_with(layers[i + 1]):
                x = m.forward_fused(layers[i + 1], x)       # e.g. BatchNorm2d + ReLU
                i += 2
            else:
                x = m.forward(x)
                i += 1
        return x

    def backward(self, dy):
        if self.__dict__.get("_split") is not None:       # the forward split the batch
            return threadsplit.backward(self, dy)
        return self._backward_layers(dy)

    def _backward_layers(self, dy):
        for m in reversed(self._modules.values()):
            dy = m.backward(dy)
            if dy is None:       # set_input_grad(False): no layer before this one has parameters
                return None
        return dy

    def kept_for_backward(self, in_shape, out_shape) -> Kept:
        return Kept()            # nothing of its own: its layers keep what they need

    def splits_over_batch(self) -> bool:
        return True              # nothing of its own: its layers answer for themselves

    def set_input_grad(self, needed: bool = True) -> "Sequential":
        """As :meth:`Module.set_input_grad`; with False, the layers up to and including the
        first one with parameters need no input gradient (nothing before them learns)."""
        super().set_input_grad(needed)
        for m in self._modules.values():
            m.set_input_grad(True)
        if not needed:
            for m in self._modules.values():
                m.set_input_grad(False)
                if m.parameters():
                    break
        return self


def check_input(layer: str, x, ndim: Optional[Tuple[int, ...]] = None,
                dim: Optional[Dict[int, int]] = None):
    """Validate a layer input: a floating ndarray (or a device array) with the expected rank
    and sizes."""
    if not is_array(x):
        raise TypeError(f"{layer}: expected a numpy.ndarray input, got {type(x).__name__}")
    if x.dtype.kind != "f":          # np.issubdtype(.., np.floating), 20x cheaper
        raise TypeError(f"{layer}: expected a floating input (float32/float64), "
                        f"got dtype {x.dtype}")
    if ndim is not None and x.ndim not in ndim:
        want = " or ".join(f"{n}-D" for n in ndim)
        raise ValueError(f"{layer}: expected a {want} input, got shape {x.shape}")
    if dim:
        for axis, size in dim.items():
            if x.shape[axis] != size:
                raise ValueError(
                    f"{layer}: expected size {size} on axis {axis}, got input shape {x.shape}"
                )
    return x
