"""``FlatBuffer``: the parameters of one backend and dtype in one flat array, their gradients in
another, as Chainer's and apex's optimizers keep them.

An optimizer builds one buffer per (backend, dtype) over its parameter groups, group after group,
so that each group's parameters are one contiguous slice. Every ``Parameter``'s ``data`` and
``grad`` become views into the two arrays, so that the optimizer's update is one fused operation
over a slice (``minires.optim``), the data-parallel all-reduce one message
(``distributed.GradientAllreducer``) and ``zero_grad(set_to_none=False)`` one fill. The
optimizer's per-element state (momentum, Adam's moments) lives in flat arrays of the same layout,
``state[name]``; the optimizer's ``state[id(p)]`` holds views into them.

Any other object with ``.data`` and ``.grad`` (and a Parameter that a later optimizer's buffer has
taken over) is *staged*: ``gather`` copies it into the buffer before an update and ``scatter``
writes it back, in place, after it.
"""
import numpy

from .. import backend
from .module import Parameter


class FlatBuffer:
    """``params[k]`` lies at ``data[starts[k]:stops[k]]`` (and ``grad[...]``, ``state[name][...]``),
    in shape ``shapes[k]``. ``owner``: the optimizer, whose ``state[id(p)]`` views are re-sliced
    when the buffer moves (``to``) or is cast (``astype``)."""

    def __init__(self, params, owner=None):
        self.params, self.owner = list(params), owner
        self.shapes = [tuple(p.data.shape) for p in self.params]
        sizes = [int(numpy.prod(s, dtype=numpy.int64)) for s in self.shapes]
        self.stops = numpy.cumsum(sizes).tolist()
        self.starts = [stop - size for stop, size in zip(self.stops, sizes)]
        first = self.params[0].data
        xp = backend.get_array_module(first)
        self.data = xp.empty(self.stops[-1], dtype=first.dtype)
        self.grad = xp.zeros(self.stops[-1], dtype=first.dtype)
        self.state = {}
        for k, p in enumerate(self.params):
            self.data[self.starts[k]:self.stops[k]] = p.data.reshape(-1)  # (shape) -> (size,)
            if isinstance(p, Parameter):
                grad = p.grad  # read before binding: p may come from another buffer
                if grad is not None:
                    self.grad[self.starts[k]:self.stops[k]] = grad.reshape(-1)  # (shape) -> (size,)
                p._flat, p._has_grad = self, grad is not None
        self._rebind()

    @property
    def xp(self):
        return backend.get_array_module(self.data)

    def view(self, array, k):
        """Parameter k's part of a flat ``array``, in its shape."""
        return array[self.starts[k]:self.stops[k]].reshape(self.shapes[k])  # (size,) -> k's shape

    def holds(self, k):
        """Whether parameter k's data and grad are views into this buffer (else it is staged)."""
        return getattr(self.params[k], "_flat", None) is self

    def bound_params(self):
        return [p for k, p in enumerate(self.params) if self.holds(k)]

    def has_grad(self, k):
        """Whether parameter k has a gradient in this step."""
        return self.params[k]._has_grad if self.holds(k) else self.params[k].grad is not None

    def state_array(self, name):
        """The flat state ``name``, made (zeros) on first use."""
        if name not in self.state:
            self.state[name] = self.xp.zeros(self.data.shape, dtype=self.data.dtype)
        return self.state[name]

    def gather(self, first, last):
        """Copy the staged parameters among ``first:last`` (data, and the gradient where there is
        one) into the buffer; returns whether each of them has a gradient."""
        has = []
        for k in range(first, last):
            if not self.holds(k):
                p, part = self.params[k], slice(self.starts[k], self.stops[k])
                if p.grad is not None:
                    self.grad[part] = backend.to_backend(p.grad, backend.backend_of(self.grad)).reshape(-1)
                self.data[part] = backend.to_backend(p.data, backend.backend_of(self.data)).reshape(-1)
            has.append(self.has_grad(k))
        return has

    def scatter(self, first, last, has):
        """Write the updated data of the staged parameters among ``first:last`` back, in place."""
        for k, moved in zip(range(first, last), has):
            if moved and not self.holds(k):
                p = self.params[k]
                p.data[...] = backend.to_backend(self.view(self.data, k), backend.backend_of(p.data))

    def to(self, name):
        """Move the buffer, its gradients and state to backend ``name``; the views follow."""
        self.data, self.grad = backend.to_backend(self.data, name), backend.to_backend(self.grad, name)
        self.state = {k: backend.to_backend(v, name) for k, v in self.state.items()}
        self._rebind()

    def astype(self, dtype):
        """Cast the buffer and its state to ``dtype``; gradients are dropped (as ``Module.astype``)."""
        self.data = self.data.astype(dtype)
        self.grad = self.xp.zeros(self.data.shape, dtype=self.data.dtype)
        self.state = {k: v.astype(dtype) for k, v in self.state.items()}
        for k in range(len(self.params)):
            if self.holds(k):
                self.params[k]._has_grad = False
        self._rebind()

    def _rebind(self):
        """Point every bound parameter's data and grad, and the owner's state, at the arrays."""
        states = getattr(self.owner, "state", {})
        for k, p in enumerate(self.params):
            if self.holds(k):
                p._data, p._grad = self.view(self.data, k), self.view(self.grad, k)
            entry = states.get(id(p))
            if entry is not None:
                for name in entry:
                    if name in self.state:
                        entry[name] = self.view(self.state[name], k)
