"""Element-wise non-linearities (ReLU, leaky ReLU, sigmoid, tanh) and dropout.

On CuPy, where a backward (or sigmoid's forward) would be several launches and temporaries as
array expressions, it is one kernel, beside its NumPy twin: ``minires_relu_backward``,
``minires_sigmoid``, ``minires_sigmoid_backward``, ``minires_tanh_backward``. ReLU's forward and
tanh's are one ufunc; leaky ReLU and dropout stay array expressions (a where() or a product).
"""
import numpy

from .. import backend
from ..autograd import Function
from ..rng import get_rng
from ..utils import threads
from .dtypes import check_floating


# gx = gy where y > 0, else 0: one pass, where gy * (y > 0) would be two and a boolean temporary
_relu_backward_kernel = backend.ElementwiseKernel(
    "T gy, T y", "T gx", "gx = y > (T)0 ? gy : (T)0", "minires_relu_backward")


def relu_backward(gy, y):
    """ReLU's gradient from its output: gy where y > 0, else 0 (also the fused residual
    add + ReLU's, ``residual.add_relu``). On NumPy in batch slices on every core (this is the
    kernel's twin); on CuPy ``minires_relu_backward``."""
    xp = backend.get_array_module(gy)
    if xp is not numpy:
        return _relu_backward_kernel(xp.ascontiguousarray(gy), xp.ascontiguousarray(y))
    if gy.ndim < 2:
        return gy * (y > 0)
    gx = xp.empty_like(gy)

    def rows(r):
        xp.multiply(gy[r], y[r] > 0, out=gx[r])  # a boolean factor: several times faster than where()

    threads.over_batch(rows, gy)
    return gx


class ReLUFunction(Function):
    """y = max(x, 0); gx = gy where y > 0, else 0 (the subgradient 0 is taken at x = 0).

    Batches (2 dimensions or more) are done in batch slices on every core (``utils.threads``).
    """

    def forward(self, x):
        xp = backend.get_array_module(x)
        if x.ndim < 2:
            y = xp.maximum(x, 0)
        else:
            y = xp.empty_like(x)

            def rows(r):
                xp.maximum(x[r], 0, out=y[r])

            threads.over_batch(rows, x)
        if self.needs_input_grad[0]:
            self.y = y
        return y

    def backward(self, gy):
        return relu_backward(gy, self.y)


def relu(x):
    """Rectified linear unit, element-wise: max(x, 0)."""
    check_floating("relu", x)
    return ReLUFunction()(x)


_sigmoid_kernel = backend.ElementwiseKernel(
    "T x", "T y", "const T e = exp(x >= (T)0 ? -x : x); const T r = (T)1 / ((T)1 + e); y = x >= (T)0 ? r : e * r",
    "minires_sigmoid")


def sigmoid_forward(x):
    """The sigmoid's NumPy path, twin of ``minires_sigmoid`` (see SigmoidFunction)."""
    xp = backend.get_array_module(x)
    e = xp.exp(-xp.abs(x))
    y = 1 / (1 + e)  # x's dtype: Python numbers do not promote
    return xp.where(x >= 0, y, e * y)


_sigmoid_backward_kernel = backend.ElementwiseKernel(
    "T gy, T y", "T gx", "gx = gy * y * ((T)1 - y)", "minires_sigmoid_backward")


def sigmoid_backward(gy, y):
    """The NumPy twin of ``minires_sigmoid_backward``."""
    return gy * y * (1 - y)


class SigmoidFunction(Function):
    """y = 1 / (1 + exp(-x)); gx = gy * y * (1 - y).

    Computed from e = exp(-|x|) <= 1 as 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0, so
    no exp overflows for large |x|.
    """

    def forward(self, x):
        xp = backend.get_array_module(x)
        y = sigmoid_forward(x) if xp is numpy else _sigmoid_kernel(xp.ascontiguousarray(x))
        if self.needs_input_grad[0]:
            self.y = y
        return y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        if xp is numpy:
            return sigmoid_backward(gy, self.y)
        return _sigmoid_backward_kernel(xp.ascontiguousarray(gy), self.y)


_tanh_backward_kernel = backend.ElementwiseKernel(
    "T gy, T y", "T gx", "gx = gy * ((T)1 - y * y)", "minires_tanh_backward")


def tanh_backward(gy, y):
    """The NumPy twin of ``minires_tanh_backward``."""
    return gy * (1 - y * y)


class TanhFunction(Function):
    """y = tanh(x); gx = gy * (1 - y^2)."""

    def forward(self, x):
        y = backend.get_array_module(x).tanh(x)
        if self.needs_input_grad[0]:
            self.y = y
        return y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        if xp is numpy:
            return tanh_backward(gy, self.y)
        return _tanh_backward_kernel(xp.ascontiguousarray(gy), xp.ascontiguousarray(self.y))


class LeakyReLUFunction(Function):
    """y = x where x > 0, else negative_slope * x; gx = gy where x > 0, else negative_slope * gy
    (the slope is taken at x = 0, as in PyTorch)."""

    def __init__(self, negative_slope):
        self.negative_slope = negative_slope

    def forward(self, x):
        xp = backend.get_array_module(x)
        positive = x > 0
        if self.needs_input_grad[0]:
            self.positive = positive
        return xp.where(positive, x, x * self.negative_slope)

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        return xp.where(self.positive, gy, gy * self.negative_slope)


class DropoutFunction(Function):
    """Inverted dropout: y = x * mask / (1 - p), mask[i] = 1 with probability 1 - p, else 0;
    gx = gy * mask / (1 - p). The scaling keeps E[y] = x, so evaluation needs no rescaling.

    ``keep`` is the boolean mask, drawn by ``dropout`` (on the host, so that a seed gives the
    same mask on every backend).
    """

    def __init__(self, keep, p):
        self.keep, self.scale = keep, (1.0 / (1.0 - p) if p < 1 else 0.0)

    def forward(self, x):
        y = x * self.keep
        y *= self.scale  # a Python float: x's dtype is kept
        return y

    def backward(self, gy):
        gx = gy * self.keep
        gx *= self.scale
        return gx


def sigmoid(x):
    """Logistic sigmoid, element-wise: 1 / (1 + exp(-x))."""
    check_floating("sigmoid", x)
    return SigmoidFunction()(x)


def tanh(x):
    """Hyperbolic tangent, element-wise."""
    check_floating("tanh", x)
    return TanhFunction()(x)


def leaky_relu(x, negative_slope=0.01):
    """x where x > 0, else negative_slope * x, element-wise."""
    check_floating("leaky_relu", x)
    return LeakyReLUFunction(float(negative_slope))(x)


def dropout(x, p=0.5, training=True, rng=None):
    """Zero each element with probability ``p`` and scale the rest by 1 / (1 - p) while
    ``training``; the identity when not training or p = 0 (``nn.Dropout`` passes its mode).

    ``rng`` is a ``numpy.random.Generator`` or an int seed; by default the generator that
    ``minires.manual_seed`` seeds (``nn.init``), so a seeded run draws the same masks again.
    """
    check_floating("dropout", x)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must lie in [0, 1], got {p}")
    if not training or p == 0:
        return x
    rng = get_rng() if rng is None else numpy.random.default_rng(rng)
    xp = backend.get_array_module(x)
    keep = xp.asarray(rng.random(x.shape, dtype=numpy.float32) >= p)
    return DropoutFunction(keep, float(p))(x)
