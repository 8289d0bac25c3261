"""Fully connected layer, flatten, residual add and the CIFAR option-A shortcut."""
from .. import backend
from ..autograd import Function, as_tensor


class Linear(Function):
    """y = x W^T + b, x (N, in), W (out, in), b (out,) -> y (N, out).

    gx = gy W, gW = gy^T x, gb = sum of gy over the batch.
    """

    def forward(self, x, W, b=None):
        y = x @ W.T
        if b is not None:
            y += b
        if any(self.needs_input_grad):
            self.x, self.W = x, W
        return y

    def backward(self, gy):
        gx = gy @ self.W if self.needs_input_grad[0] else None
        gW = gy.T @ self.x if self.needs_input_grad[1] else None
        gb = gy.sum(axis=0) if len(self.needs_input_grad) > 2 and self.needs_input_grad[2] else None
        return (gx, gW, gb) if len(self.needs_input_grad) > 2 else (gx, gW)


def linear(x, W, b=None):
    """Affine map y = x W^T + b with x (N, in), W (out, in), b (out,) or None."""
    if x.ndim != 2 or W.ndim != 2:
        raise ValueError(f"linear expects x (N, in) and W (out, in), got x {tuple(x.shape)} and W {tuple(W.shape)}")
    if x.shape[1] != W.shape[1]:
        raise ValueError(f"linear: x has {x.shape[1]} features (shape {tuple(x.shape)}) but W expects "
                         f"{W.shape[1]} (shape {tuple(W.shape)})")
    if b is not None and tuple(b.shape) != (W.shape[0],):
        raise ValueError(f"linear: bias must have shape ({W.shape[0]},), got {tuple(b.shape)}")
    return Linear()(x, W) if b is None else Linear()(x, W, b)


def flatten(x):
    """(N, ...) -> (N, prod(...))."""
    x = as_tensor(x)
    return x.reshape(x.shape[0], -1)


def add(a, b):
    """Residual addition a + b (same shapes); the gradient reaches both branches unchanged."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"add: residual branches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return as_tensor(a) + b


class PadChannels(Function):
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
    return PadChannels(out_channels, stride)(x)
