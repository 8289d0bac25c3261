"""The residual connection: the addition of the two branches and the CIFAR option-A shortcut."""
from .. import backend
from ..autograd import Function, as_tensor
from .dtypes import check_floating


def add(a, b):
    """Residual addition a + b (same shapes); the gradient reaches both branches unchanged."""
    check_floating("add", a, b)
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"add: residual branches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return as_tensor(a) + b


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
