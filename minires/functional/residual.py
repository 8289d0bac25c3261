"""The residual connection: the addition of the two branches (alone, or with the ReLU after it
fused) and the CIFAR option-A shortcut."""
import numpy

from .. import backend
from ..autograd import Function, as_tensor
from ..utils import threads
from .activation import relu_backward
from .dtypes import check_floating


def add(a, b):
    """Residual addition a + b (same shapes); the gradient reaches both branches unchanged."""
    check_floating("add", a, b)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"add: residual branches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return as_tensor(a) + b


_add_relu_kernel = backend.ElementwiseKernel(
    "T a, T b", "T y", "const T s = a + b; y = s > (T)0 ? s : (T)0", "minires_add_relu")


def add_relu_forward(a, b):
    """max(a + b, 0) on NumPy, the twin of ``minires_add_relu``: batches in slices on every core,
    each slice added and rectified while in cache."""
    y = numpy.empty_like(a)

    def rows(r):
        numpy.add(a[r], b[r], out=y[r])
        numpy.maximum(y[r], 0, out=y[r])

    if a.ndim < 2:
        rows(slice(None))
    else:
        threads.over_batch(rows, a)
    return y


class AddReLUFunction(Function):
    """y = max(a + b, 0) for a, b of one shape: a residual block's two branches added and
    rectified in one pass (one kernel on CuPy, ``minires_add_relu``) instead of two ops;
    ga = gb = gy where y > 0, else 0 (ReLU's backward from the saved output)."""

    def forward(self, a, b):
        xp = backend.get_array_module(a)
        if xp is numpy:
            y = add_relu_forward(a, b)
        else:
            # b in a's dtype, as the NumPy path writes into an array like a
            y = _add_relu_kernel(xp.ascontiguousarray(a), xp.ascontiguousarray(b, dtype=a.dtype))
        if any(self.needs_input_grad):
            self.y = y
        return y

    def backward(self, gy):
        g = relu_backward(gy, self.y)
        return g, g


def add_relu(a, b):
    """relu(a + b) for same-shape a, b as one op: the end of a ResNet's basic and bottleneck
    blocks. Its gradient reaches both branches."""
    check_floating("add_relu", a, b)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"add_relu: residual branches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return AddReLUFunction()(a, b)


class PadChannelsFunction(Function):
    """The parameter-free CIFAR shortcut (option A of He et al. 2015).

    y = x[:, :, ::s, ::s] with (out - C) zero channels added, split evenly before and after,
    so (N, C, H, W) -> (N, out, ceil(H/s), ceil(W/s)). Backward picks the matching channels of gy
    and scatters them back to the subsampled positions.
    """

    def __init__(self, out_channels, stride):
        self.out_channels, self.stride = out_channels, stride

    def forward(self, x):
        xp = backend.get_array_module(x)
        n, c, h, w = x.shape
        s = self.stride
        sub = x[:, :, ::s, ::s]
        self.before = (self.out_channels - c) // 2
        y = xp.zeros((n, self.out_channels) + sub.shape[2:], x.dtype)
        y[:, self.before:self.before + c] = sub
        self.x_shape = x.shape
        return y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        n, c, h, w = self.x_shape
        s = self.stride
        gx = xp.zeros(self.x_shape, gy.dtype)
        gx[:, :, ::s, ::s] = gy[:, self.before:self.before + c]
        return gx


def pad_channels(x, out_channels, stride=1):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the channels up to ``out_channels``."""
    if x.ndim != 4:
        raise ValueError(f"pad_channels expects x of shape (N, C, H, W), got {tuple(x.shape)}")
    if out_channels < x.shape[1]:
        raise ValueError(f"pad_channels: out_channels {out_channels} is fewer than the input's {x.shape[1]}")
    return PadChannelsFunction(out_channels, stride)(x)
