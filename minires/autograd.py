"""Reverse-mode automatic differentiation: ``Tensor`` and ``Function``.

A ``Function`` maps raw arrays to raw arrays twice: ``forward`` computes outputs from inputs
and keeps what its backward needs; ``backward`` maps the gradients of the outputs to one
gradient per input. Calling a Function on Tensors records it as the ``creator`` of its
outputs, so the graph is a chain of creators leading back to the leaves (parameters and
inputs). ``Tensor.backward`` walks that graph in reverse topological order, without
recursion, adding (``+=``) gradients where one tensor feeds several functions (a residual
connection does), and unlinks every function once it has run, so that its saved arrays are
freed as soon as they are no longer needed.

A ``FunctionHook`` sees every Function's forward and backward while it is active (``with
hook: ...``); the profiler is one.
"""
import contextlib

import numpy

from . import backend

_grad_enabled = True
_function_hooks = []  # the active FunctionHooks, in the order they were added


def is_grad_enabled():
    return _grad_enabled


@contextlib.contextmanager
def no_grad():
    """Inside this block no graph is recorded (inference, evaluation, optimizer updates)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def _as_array(data, dtype=None):
    """An array of the default backend for Python numbers and lists; arrays are kept as they are."""
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, numpy.generic):  # a NumPy scalar keeps its dtype, as an array would
        data = numpy.asarray(data)
    xp = backend.get_array_module(data)
    if isinstance(data, numpy.ndarray) or xp is not numpy:
        return data if dtype is None else data.astype(dtype, copy=False)
    xp = backend.default_module()
    a = numpy.asarray(data)
    if dtype is None:
        dtype = numpy.float32 if a.dtype.kind in "fb" or a.dtype == object else a.dtype
        if a.dtype.kind in "iu" and a.ndim == 0:
            dtype = numpy.float32  # a bare Python int in arithmetic is a constant, not a label
    return xp.asarray(a, dtype=dtype)


class Tensor(backend.HoldsArray):
    """An n-dimensional array (NumPy or CuPy) that remembers how it was computed.

    ``data``: the array; ``grad``: the gradient of the last ``backward`` (same backend and
    shape), or None; ``requires_grad``: whether gradients flow to this tensor; ``creator``:
    the Function that produced it (None for leaves).
    """

    __array_priority__ = 1000  # so that ndarray + Tensor calls Tensor.__radd__

    def __init__(self, data, requires_grad=False, dtype=None):
        self.data = _as_array(data, dtype)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.creator = None
        self.creator_index = 0  # which output of the creator this tensor is

    # -- the array behind it --------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def backend(self):
        return backend.backend_of(self.data)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({backend.to_numpy(self.data)!r}{grad})"

    def numpy(self):
        """The data as a NumPy array (copied from the GPU when it lives there)."""
        return backend.to_numpy(self.data)

    def item(self):
        return self.data.item()

    def detach(self):
        """The same data as a new leaf that is cut off from the graph."""
        return Tensor(self.data, requires_grad=False)

    def to(self, name):
        """This tensor on backend ``name`` ('numpy' or 'cupy'), as a new leaf."""
        out = Tensor(backend.to_backend(self.data, name), requires_grad=self.requires_grad)
        if self.grad is not None:
            out.grad = backend.to_backend(self.grad, name)
        return out

    def astype(self, dtype):
        return Tensor(self.data.astype(dtype), requires_grad=self.requires_grad)

    # -- backpropagation ----------------------------------------------------------------
    def accumulate_grad(self, g):
        """Add ``g`` to ``grad`` (a Parameter in a flat buffer does it in place, in its view)."""
        # A copy on first store: backward may hand out read-only broadcast views, or one array to two inputs.
        self.grad = g.copy() if self.grad is None else self.grad + g

    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) * grad into ``leaf.grad`` for every leaf that requires it.

        ``grad`` defaults to 1 for a tensor of one element. The graph is freed afterwards.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(was it computed under no_grad(), or from constants only?)")
        xp = backend.get_array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise ValueError(f"backward() without a gradient needs a single-element tensor, "
                                 f"got shape {self.shape}; pass grad= of that shape")
            grad = xp.ones_like(self.data)
        else:
            try:
                grad = _as_array(grad)
            except (TypeError, ValueError) as e:
                raise TypeError(f"backward() grad must be an array of real numbers: {e}") from None
            if grad.dtype.kind not in "fiu":
                raise TypeError(f"backward() grad must be an array of real numbers, got dtype {grad.dtype}")
            if grad.shape != self.shape:
                raise ValueError(f"backward() grad has shape {grad.shape}, tensor has shape {self.shape}")
            # in the output's dtype: a float64 seed would make every gradient of a float32 graph float64
            grad = grad.astype(self.dtype, copy=False)
        if self.creator is None:
            _accumulate(self, grad)
            return
        order = post_order(self.creator)[::-1]  # consumers first; raises if a backward freed the graph
        self.creator.grad_outputs[self.creator_index] = grad

        hooks = tuple(_function_hooks)
        for f in order:
            gys = tuple(gy if gy is not None else f.zeros_output(i) for i, gy in enumerate(f.grad_outputs))
            for hook in hooks:
                hook.backward_preprocess(f, gys)
            gxs = f.backward(*gys)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            for hook in hooks:
                hook.backward_postprocess(f, gys, gxs)
            if len(gxs) != len(f.inputs):
                raise RuntimeError(f"{type(f).__name__}.backward returned {len(gxs)} gradients "
                                   f"for {len(f.inputs)} inputs")
            for i, (x, gx) in enumerate(zip(f.inputs, gxs)):
                if gx is None or not x.requires_grad:
                    continue
                if gx.shape != x.shape:
                    raise RuntimeError(f"{type(f).__name__}.backward returned a gradient of shape {gx.shape} "
                                       f"for input {i} of shape {x.shape}")
                if x.creator is None:
                    _accumulate(x, gx)
                else:
                    slot, k = x.creator.grad_outputs, x.creator_index
                    # out of place: a backward may hand the same array to two inputs
                    slot[k] = gx if slot[k] is None else slot[k] + gx
            f.release()

    # -- operators ----------------------------------------------------------------------
    def __add__(self, other):
        return Add()(self, other)

    def __radd__(self, other):
        return Add()(other, self)

    def __sub__(self, other):
        return Sub()(self, other)

    def __rsub__(self, other):
        return Sub()(other, self)

    def __mul__(self, other):
        return Mul()(self, other)

    def __rmul__(self, other):
        return Mul()(other, self)

    def __truediv__(self, other):
        return Div()(self, other)

    def __rtruediv__(self, other):
        return Div()(other, self)

    def __matmul__(self, other):
        return MatMul()(self, other)

    def __rmatmul__(self, other):
        return MatMul()(other, self)

    def __neg__(self):
        return Neg()(self)

    def __pow__(self, p):
        if isinstance(p, Tensor):
            raise TypeError("Tensor ** Tensor is not supported; the exponent must be a constant")
        return Pow(p)(self)

    def __getitem__(self, index):
        return GetItem(index)(self)

    def sum(self, axis=None, keepdims=False):
        return Sum(axis, keepdims)(self)

    def mean(self, axis=None, keepdims=False):
        n = self.size if axis is None else int(numpy.prod([self.shape[a] for a in numpy.atleast_1d(axis)]))
        return Sum(axis, keepdims)(self) * (1.0 / n)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Reshape(shape)(self)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return Transpose(axes or None)(self)

    @property
    def T(self):
        return Transpose(None)(self)

    def exp(self):
        return Exp()(self)

    def log(self):
        return Log()(self)


def _accumulate(x, g):
    if g.shape != x.shape:
        raise RuntimeError(f"gradient of shape {g.shape} for a tensor of shape {x.shape}")
    x.accumulate_grad(g)


def post_order(root):
    """The Functions reachable from the Function ``root``, each after every Function it reads
    from (producers first): the order of a forward pass. Backward walks it reversed.

    An explicit stack instead of recursion: a ResNet-152 graph is deeper than Python's limit.
    Raises RuntimeError when a backward has freed the graph.
    """
    # A function is marked when it is expanded, not when it is pushed: marked at push, a producer
    # reached first through a long path could be finished before a consumer met later (x + f(x)).
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        f, expanded = stack.pop()
        if expanded:
            order.append(f)
            continue
        if id(f) in visited:
            continue
        if f.released:
            raise RuntimeError("this graph was freed by an earlier backward(); recompute the forward pass "
                               "to back-propagate again")
        visited.add(id(f))
        stack.append((f, True))
        for x in reversed(f.inputs):
            c = x.creator
            if c is not None and id(c) not in visited:
                stack.append((c, False))
    return order


class _Edge:
    """Where the gradient of a computed (non-leaf) input goes: its creator's output slot.

    Holding this instead of the Tensor lets the input's array be freed as soon as nothing else
    uses it: a graph keeps only what each backward saved, as PyTorch's does.
    """

    __slots__ = ("creator", "creator_index", "requires_grad", "shape")

    def __init__(self, x):
        self.creator, self.creator_index = x.creator, x.creator_index
        self.requires_grad, self.shape = x.requires_grad, x.shape


def as_tensor(x):
    return x if isinstance(x, Tensor) else Tensor(x)


def _constant(c, ref):
    """A non-Tensor operand as a Tensor: a Python number takes the dtype and backend of the
    Tensor it meets (so ``x * 0.1`` stays float64 for a float64 x and float32 for a float32 x)."""
    if ref is not None and isinstance(c, (int, float)) and not isinstance(c, bool) and ref.dtype.kind == "f":
        return Tensor(backend.get_array_module(ref.data).asarray(c, dtype=ref.dtype))
    return Tensor(c)


class Function:
    """One differentiable operation on raw arrays.

    Subclasses write ``forward(self, *arrays)`` returning an array or a tuple of arrays, and
    ``backward(self, *grad_outputs)`` returning one gradient per input (None where an input
    needs none). ``self.needs_input_grad`` tells forward which gradients will be asked for, so
    it can skip saving what no backward will read.
    """

    def __call__(self, *inputs):
        ref = next((x for x in inputs if isinstance(x, Tensor)), None)
        inputs = [x if isinstance(x, Tensor) else _constant(x, ref) for x in inputs]
        self.needs_input_grad = tuple(x.requires_grad for x in inputs) if _grad_enabled else (False,) * len(inputs)
        record = any(self.needs_input_grad)
        arrays = tuple(x.data for x in inputs)
        hooks = tuple(_function_hooks)
        for hook in hooks:
            hook.forward_preprocess(self, arrays)
        ys = self.forward(*arrays)
        single = not isinstance(ys, tuple)
        ys = (ys,) if single else ys
        for hook in hooks:
            hook.forward_postprocess(self, arrays, ys)
        outputs = [Tensor(y, requires_grad=record) for y in ys]
        if record:
            # Leaves are kept (their .grad is filled in); for computed inputs only the way back
            # to their creator is, so that their arrays are freed unless forward saved them.
            self.inputs = [x if x.creator is None else _Edge(x) for x in inputs]
            self.output_meta = [(y.shape, y.dtype, backend.get_array_module(y)) for y in ys]
            self.grad_outputs = [None] * len(ys)
            for i, out in enumerate(outputs):
                out.creator, out.creator_index = self, i
        return outputs[0] if single else tuple(outputs)

    def forward(self, *arrays):
        raise NotImplementedError(f"{type(self).__name__} must define forward")

    def backward(self, *grad_outputs):
        raise NotImplementedError(f"{type(self).__name__} must define backward")

    def zeros_output(self, i):
        shape, dtype, xp = self.output_meta[i]
        return xp.zeros(shape, dtype)

    released = False  # set by release(): the graph behind this Function is gone

    def release(self):
        """Drop the saved arrays and the links to the inputs once backward has run."""
        self.__dict__.clear()
        self.released = True


class FunctionHook:
    """Code run around every Function's forward and backward while the hook is active
    (Chainer's ``FunctionHook``; ``minires.profiler.Profiler`` is one).

    Override any of the four methods; each gets the Function and tuples of raw arrays:
      forward_preprocess(function, inputs)                        before ``forward``
      forward_postprocess(function, inputs, outputs)              after it
      backward_preprocess(function, grad_outputs)                 before ``backward``
      backward_postprocess(function, grad_outputs, grad_inputs)   after it (None for an input
                                                                  that needs no gradient)
    ``with hook: ...`` makes it active inside the block (``add()`` and ``remove()`` do the same
    by hand). Active hooks run in the order they were added; ``function_hooks()`` lists them.
    A backward runs the hooks that were active when it started.
    """

    def forward_preprocess(self, function, inputs):
        pass

    def forward_postprocess(self, function, inputs, outputs):
        pass

    def backward_preprocess(self, function, grad_outputs):
        pass

    def backward_postprocess(self, function, grad_outputs, grad_inputs):
        pass

    def add(self):
        """Make this hook active (once); returns it."""
        if self in _function_hooks:
            raise RuntimeError(f"{type(self).__name__} is already active")
        _function_hooks.append(self)
        return self

    def remove(self):
        """Make this hook inactive."""
        if self not in _function_hooks:
            raise RuntimeError(f"{type(self).__name__} is not active")
        _function_hooks.remove(self)

    def __enter__(self):
        return self.add()

    def __exit__(self, *exc_info):
        self.remove()


def function_hooks():
    """The active FunctionHooks, in the order they were added."""
    return tuple(_function_hooks)


def _unbroadcast(g, shape):
    """Sum ``g`` down to ``shape``: the backward of NumPy broadcasting."""
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g


class Add(Function):
    """y = a + b (broadcasting); ga = gy, gb = gy, each summed back to its input's shape."""

    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, gy):
        sa, sb = self.shapes
        return _unbroadcast(gy, sa), _unbroadcast(gy, sb)


class Sub(Function):
    """y = a - b; ga = gy, gb = -gy."""

    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a - b

    def backward(self, gy):
        sa, sb = self.shapes
        return _unbroadcast(gy, sa), _unbroadcast(-gy, sb)


class Mul(Function):
    """y = a * b; ga = gy * b, gb = gy * a."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        a, b = self.a, self.b
        ga = _unbroadcast(gy * b, a.shape) if self.needs_input_grad[0] else None
        gb = _unbroadcast(gy * a, b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    """y = a / b; ga = gy / b, gb = -gy * a / b^2."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        a, b = self.a, self.b
        ga = _unbroadcast(gy / b, a.shape) if self.needs_input_grad[0] else None
        gb = _unbroadcast(-gy * a / (b * b), b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    """y = -x."""

    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Pow(Function):
    """y = x ** p for a constant p; gx = gy * p * x ** (p - 1)."""

    def __init__(self, p):
        self.p = p

    def forward(self, x):
        self.x = x
        return x ** self.p

    def backward(self, gy):
        return gy * self.p * self.x ** (self.p - 1)


class Exp(Function):
    """y = exp(x); gx = gy * y."""

    def forward(self, x):
        self.y = backend.get_array_module(x).exp(x)
        return self.y

    def backward(self, gy):
        return gy * self.y


class Log(Function):
    """y = log(x); gx = gy / x."""

    def forward(self, x):
        self.x = x
        return backend.get_array_module(x).log(x)

    def backward(self, gy):
        return gy / self.x


class MatMul(Function):
    """y = a @ b for 2-D (or batched) operands; ga = gy @ b^T, gb = a^T @ gy."""

    def forward(self, a, b):
        if a.ndim < 1 or b.ndim < 1 or a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not line up")
        if a.ndim == 1 or b.ndim == 1:
            raise ValueError("matmul: use 2-D operands (reshape vectors to (1, n) or (n, 1))")
        self.a, self.b = a, b
        return a @ b

    def backward(self, gy):
        a, b = self.a, self.b
        xp = backend.get_array_module(gy)
        ga = _unbroadcast(gy @ xp.swapaxes(b, -1, -2), a.shape) if self.needs_input_grad[0] else None
        gb = _unbroadcast(xp.swapaxes(a, -1, -2) @ gy, b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Sum(Function):
    """y = sum of x over ``axis``; gx = gy broadcast back to x's shape."""

    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.shape = x.shape
        return x.sum(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        if self.axis is not None and not self.keepdims:
            axes = [a % len(self.shape) for a in numpy.atleast_1d(self.axis)]
            gy = xp.expand_dims(gy, tuple(sorted(axes)))
        return xp.broadcast_to(gy, self.shape)


class Reshape(Function):
    """y = x viewed with another shape; gx = gy viewed with x's shape."""

    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.in_shape = x.shape
        try:
            return x.reshape(self.shape)
        except ValueError:
            raise ValueError(f"cannot reshape a tensor of shape {x.shape} to {self.shape}") from None

    def backward(self, gy):
        return gy.reshape(self.in_shape)


class Transpose(Function):
    """y = x with its axes permuted; gx = gy with the inverse permutation."""

    def __init__(self, axes=None):
        self.axes = axes

    def forward(self, x):
        if self.axes is not None:
            self.axes = tuple(a % x.ndim for a in self.axes)  # argsort below needs axes >= 0
        return x.transpose(self.axes)

    def backward(self, gy):
        if self.axes is None:
            return gy.transpose()
        return gy.transpose(numpy.argsort(self.axes))


class GetItem(Function):
    """y = x[index] (slices and integers); gx = zeros with gy placed at index."""

    def __init__(self, index):
        self.index = index

    def forward(self, x):
        self.shape, self.dtype = x.shape, x.dtype
        return x[self.index]

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        gx = xp.zeros(self.shape, self.dtype)
        index = self.index if isinstance(self.index, tuple) else (self.index,)
        if all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in index):
            gx[self.index] = gy  # basic indexing: every element is picked at most once
        else:
            xp.add.at(gx, self.index, gy)  # repeated integer indices must add up
        return gx
