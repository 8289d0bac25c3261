"""``Module``: the container of parameters, buffers and sub-modules, with PyTorch's names."""
from collections import OrderedDict
from collections.abc import Mapping

import numpy

from .. import backend
from ..autograd import Tensor
from ..utils.hooks import RemovableHandle


class Parameter(Tensor):
    """A Tensor that a Module learns: it requires grad and is listed by ``parameters()``.

    An optimizer puts its parameters into flat buffers (``minires.nn.flat.FlatBuffer``): then
    ``data`` and ``grad`` are views into them, and assigning to either writes into the view
    (same shape; cast to the buffer's dtype and backend) instead of replacing it, so every path
    that sets them (``load_state_dict``, initialisers, autograd, the all-reduce) keeps the
    buffer whole. ``grad`` is None while the parameter has no gradient (after ``zero_grad``):
    its view stays, flagged empty. A copy (``copy.deepcopy``, pickle) is outside any buffer.
    """

    _flat = None  # the FlatBuffer holding data and grad, or None
    _has_grad = False  # in a flat buffer: whether the grad view holds a gradient

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        if self._flat is None:
            self._data = value
        else:
            self._write(self._data, value, "data")

    @property
    def grad(self):
        return self._grad if self._flat is None or self._has_grad else None

    @grad.setter
    def grad(self, value):
        if self._flat is None:
            self._grad = value
        elif value is None:
            self._has_grad = False
        else:
            self._write(self._grad, value, "grad")
            self._has_grad = True

    def _write(self, view, value, name):
        shape = tuple(getattr(value, "shape", ()))
        if shape != view.shape:
            raise ValueError(f"cannot set the {name} of a parameter of shape {view.shape} in an optimizer's flat "
                             f"buffer to an array of shape {shape}")
        view[...] = backend.to_backend(value, backend.backend_of(view))

    def accumulate_grad(self, g):
        if self._flat is None:
            super().accumulate_grad(g)
        elif self._has_grad:
            self._grad += g
        else:
            self._grad[...] = g
            self._has_grad = True

    def __getstate__(self):
        state = dict(self.__dict__)
        if self._flat is not None:  # the copy owns its arrays (deepcopy and pickle copy the views)
            state.update(_flat=None, _grad=self.grad, _has_grad=False)
        return state

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, backend={self.backend})"


def _join(prefix, name):
    """The dotted path of ``name`` inside the module at ``prefix`` ("" for the root): "layer1.0" + "conv1"."""
    return f"{prefix}.{name}" if prefix else name


class Module:
    """Base class of every layer and model.

    Assigning a Parameter or a Module to an attribute registers it (in assignment order);
    ``register_buffer`` registers a raw array that is state but not learned (running statistics).
    Calling a module runs its forward between its forward pre-hooks and forward hooks
    (``register_forward_pre_hook``, ``register_forward_hook``, as in PyTorch).
    """

    training = True

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() before assigning attributes")
        if isinstance(value, (Parameter, Module)):
            for registry in (self._parameters, self._buffers, self._modules):
                registry.pop(name, None)
            self.__dict__.pop(name, None)
            (self._parameters if isinstance(value, Parameter) else self._modules)[name] = value
        elif name in self._buffers:
            self._buffers[name] = value  # assigning to a buffer keeps it a buffer
        elif name in self._parameters or name in self._modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to {name!r}: it holds a "
                                f"{'Parameter' if name in self._parameters else 'Module'} (or None)")
            (self._parameters if name in self._parameters else self._modules)[name] = None
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        for d in ("_parameters", "_buffers", "_modules"):
            registry = self.__dict__.get(d)
            if registry is not None and name in registry:
                return registry[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for d in (self._parameters, self._buffers, self._modules):
            if name in d:
                del d[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name, array):
        """Register ``array`` (or None) as state that is saved and moved but not learned."""
        self.__dict__.pop(name, None)
        self._buffers[name] = array

    def register_parameter(self, name, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter({name!r}) needs a Parameter, got {type(param).__name__}")
        self.__dict__.pop(name, None)
        self._parameters[name] = param

    # -- running it -------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward")

    def __call__(self, *args, **kwargs):
        for hook in tuple(self._forward_pre_hooks.values()):
            result = hook(self, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
        out = self.forward(*args, **kwargs)
        for hook in tuple(self._forward_hooks.values()):
            result = hook(self, args, out)
            if result is not None:
                out = result
        return out

    def register_forward_pre_hook(self, hook):
        """Call ``hook(module, args)`` before every forward of this module (``args``: the tuple of
        positional arguments). If it returns something, that replaces the arguments (a tuple,
        or a single argument). Returns a handle whose ``remove()`` unregisters the hook."""
        handle = RemovableHandle(self._forward_pre_hooks)
        self._forward_pre_hooks[handle.id] = hook
        return handle

    def register_forward_hook(self, hook):
        """Call ``hook(module, args, output)`` after every forward of this module. If it returns
        something, that replaces the output. Returns a handle whose ``remove()`` unregisters it."""
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = hook
        return handle

    # -- walking the tree ---------------------------------------------------------------------
    def named_modules(self, prefix=""):
        """(dotted name, module) for this module and every descendant, depth first."""
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            yield name, m
            children = [(_join(name, k), c) for k, c in m._modules.items() if c is not None]
            stack.extend(reversed(children))

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        return ((k, m) for k, m in self._modules.items() if m is not None)

    def children(self):
        return (m for _, m in self.named_children())

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) in registration order, e.g. ``layer1.0.conv1.weight``.

        A parameter shared by two modules is listed once, so an optimizer updates it once."""
        seen = set()
        for name, m in self.named_modules(prefix):
            for k, p in m._parameters.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield _join(name, k), p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix=""):
        for name, m in self.named_modules(prefix):
            for k, b in m._buffers.items():
                if b is not None:
                    yield _join(name, k), b

    def buffers(self):
        for _, b in self.named_buffers():
            yield b

    def apply(self, fn):
        for m in self.modules():
            fn(m)
        return self

    # -- modes and gradients ------------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (batch statistics in BatchNorm); returns self."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        """Evaluation mode (running statistics in BatchNorm); returns self."""
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        """Forget every gradient (None), or with ``set_to_none=False`` zero the existing ones in place."""
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    def to(self, name):
        """Move every parameter, gradient and buffer to backend ``name`` in place; returns self.

        Parameters in an optimizer's flat buffer move with the whole buffer (their optimizer
        state too), and stay views into it."""
        backend.get_module(name)
        for flat in self._flat_buffers("to"):
            flat.to(name)
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None and p._flat is None:
                    p.data = backend.to_backend(p.data, name)
                    if p.grad is not None:
                        p.grad = backend.to_backend(p.grad, name)
            for k, b in m._buffers.items():
                if b is not None:
                    m._buffers[k] = backend.to_backend(b, name)
        return self

    def astype(self, dtype):
        """Cast floating parameters and buffers to ``dtype`` (e.g. float64 for gradient checks);
        gradients are dropped. Parameters in an optimizer's flat buffer are cast with the whole
        buffer (their optimizer state too), and stay views into it."""
        for flat in self._flat_buffers("astype"):
            flat.astype(dtype)
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None and p._flat is None:
                    p.data = p.data.astype(dtype)
                    p.grad = None
            for k, b in m._buffers.items():
                if b is not None and b.dtype.kind == "f":
                    m._buffers[k] = b.astype(dtype)
        return self

    def _flat_buffers(self, what):
        """The optimizers' flat buffers that hold this module's parameters. ``to`` and ``astype``
        change a buffer as a whole, so each must hold no parameter from outside this module."""
        mine = {id(p) for p in self.parameters()}
        flats = {id(p._flat): p._flat for p in self.parameters() if p._flat is not None}
        for flat in flats.values():
            if not all(id(q) in mine for q in flat.bound_params()):
                raise ValueError(f"{type(self).__name__}.{what}: its parameters share an optimizer's flat buffer "
                                 f"with parameters of another module; call {what} on the whole model")
        return list(flats.values())

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self):
        """Parameters and buffers by dotted name, as raw arrays (module by module: own
        parameters, own buffers, then children, the order PyTorch uses)."""
        state = OrderedDict()
        for name, m in self.named_modules():
            for k, p in m._parameters.items():
                if p is not None:
                    state[_join(name, k)] = p.data
            for k, b in m._buffers.items():
                if b is not None:
                    state[_join(name, k)] = b
        return state

    def load_state_dict(self, state, strict=True):
        """Copy arrays from ``state`` into this module's parameters and buffers.

        Arrays may come from NumPy or CuPy; they are moved to each target's backend and dtype.
        With ``strict``, missing or unexpected keys raise; mis-shaped arrays always raise.
        Returns (missing_keys, unexpected_keys).
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"load_state_dict into {type(self).__name__}: expected a state dict (a dict of "
                            f"names to arrays), got {type(state).__name__}")
        names = [k for k in state if not isinstance(k, str)]
        if names:
            raise ValueError(f"load_state_dict into {type(self).__name__} failed: key {names[0]!r} "
                             f"({type(names[0]).__name__}) is not a parameter name (a string such as 'fc.weight')")
        targets = OrderedDict()
        for name, m in self.named_modules():
            for registry in (m._parameters, m._buffers):
                for k, v in registry.items():
                    if v is not None:
                        targets[_join(name, k)] = (m, registry, k)
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        mismatched, wrong_kind = [], []
        for key, (m, registry, k) in targets.items():
            if key in state:
                current = registry[k].data if isinstance(registry[k], Parameter) else registry[k]
                shape = tuple(numpy.shape(state[key]))
                if shape != tuple(current.shape):
                    mismatched.append(f"{key}: checkpoint {shape} vs model {tuple(current.shape)}")
                # Casting complex, bool, string or object arrays to the model's dtype would drop
                # information silently (or fail deep inside NumPy): only real numbers load.
                dtype = state[key].dtype if hasattr(state[key], "dtype") else numpy.asarray(state[key]).dtype
                if dtype.kind not in "fiu":
                    wrong_kind.append(f"{key}: {dtype}")
        problems = []
        if mismatched:
            problems.append("shape mismatch for " + "; ".join(mismatched))
        if wrong_kind:
            problems.append("not real numbers: " + "; ".join(wrong_kind))
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__} failed: " + " | ".join(problems))
        for key, (m, registry, k) in targets.items():
            if key not in state:
                continue
            current = registry[k]
            value = state[key] if hasattr(state[key], "dtype") else numpy.asarray(state[key])
            if isinstance(current, Parameter):
                # in an optimizer's flat buffer, Parameter.data writes this into its view
                current.data = backend.to_backend(value, current.backend).astype(current.dtype, copy=True)
            else:
                registry[k] = backend.to_backend(value, backend.backend_of(current)).astype(current.dtype, copy=True)
        return missing, unexpected

    # -- printing --------------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        children = list(self.named_children())
        if not children:
            return lines[0] + ")"
        for name, m in children:
            child = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child}")
        return "\n".join(lines) + "\n)"
