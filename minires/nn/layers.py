"""Layers: Modules that hold parameters (and buffers) and call the stateless functional ops."""
import numpy

from .. import backend, functional as F
from ..utils.conv import pair
from . import init
from .module import Module, Parameter


def _empty(shape, dtype="float32"):
    return backend.default_module().zeros(shape, dtype)


class Conv2d(Module):
    """2-D convolution, weight (out, in / groups, kh, kw) with He-normal init; bias (out,) if ``bias``.

    ``dilation`` and ``groups`` as in PyTorch (``F.conv2d``).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"Conv2d needs positive channel counts, got in={in_channels}, out={out_channels}")
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise ValueError(f"Conv2d: groups must be a positive int, got {groups!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride, self.padding = pair(stride, "stride"), pair(padding, "padding")
        self.dilation, self.groups = pair(dilation, "dilation"), groups
        shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = init.kaiming_normal_(Parameter(_empty(shape)))
        if bias:
            self.bias = init.constant_(Parameter(_empty((out_channels,))), 0.0)
        else:
            self.bias = None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.bias is not None else ", bias=False")


class Linear(Module):
    """y = x W^T + b with W (out, in); init U(-1/sqrt(in), 1/sqrt(in)) as in PyTorch."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / numpy.sqrt(in_features)
        self.weight = init.uniform_(Parameter(_empty((out_features, in_features))), bound)
        self.bias = init.uniform_(Parameter(_empty((out_features,))), bound) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class _BatchNorm(Module):
    """Batch normalisation with learned gamma (``weight``) and beta (``bias``) and running statistics."""

    expected_ndim = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = init.constant_(Parameter(_empty((num_features,))), 1.0)
        self.bias = init.constant_(Parameter(_empty((num_features,))), 0.0)
        self.register_buffer("running_mean", _empty((num_features,)))
        self.register_buffer("running_var", _empty((num_features,)) + 1)
        self.register_buffer("num_batches_tracked", numpy.zeros((), numpy.int64))

    def forward(self, x):
        if x.ndim != self.expected_ndim:
            raise ValueError(f"{type(self).__name__} expects a {self.expected_ndim}-D input, got shape {tuple(x.shape)}")
        if self.training:
            self.num_batches_tracked += 1
        return F.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                            training=self.training, momentum=self.momentum, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) over (N, H, W) per channel."""

    expected_ndim = 4


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) over N per channel."""

    expected_ndim = 2


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class MaxPool2d(Module):
    """Max pooling; the arguments are ``F.max_pool2d``'s (PyTorch's, in PyTorch's order)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.return_indices, self.ceil_mode = dilation, return_indices, ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                            self.return_indices)

    def extra_repr(self):
        s = f"kernel_size={self.kernel_size}, stride={self.stride or self.kernel_size}, padding={self.padding}"
        if self.dilation != 1:
            s += f", dilation={self.dilation}"
        return s + (", ceil_mode=True" if self.ceil_mode else "") + (
            ", return_indices=True" if self.return_indices else "")


class AvgPool2d(Module):
    """Average pooling; the arguments are ``F.avg_pool2d``'s (PyTorch's, in PyTorch's order)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    def extra_repr(self):
        s = f"kernel_size={self.kernel_size}, stride={self.stride or self.kernel_size}, padding={self.padding}"
        return s + (", ceil_mode=True" if self.ceil_mode else "") + (
            ", count_include_pad=False" if not self.count_include_pad else "")


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C), the mean of each feature map."""

    def forward(self, x):
        return F.global_avg_pool2d(x)


class Flatten(Module):
    """Merges dimensions start_dim..end_dim (by default all but the batch), as ``F.flatten``."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Softmax(Module):
    def __init__(self, dim=-1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, self.dim)

    def extra_repr(self):
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    def forward(self, x):
        return F.log_softmax(x, self.dim)


class Dropout(Module):
    """Inverted dropout with probability ``p`` in training mode, the identity in eval mode.

    Masks come from the generator ``minires.manual_seed`` seeds, unless ``seed`` gives this
    layer a generator of its own.
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must lie in [0, 1], got {p}")
        self.p = p
        self.rng = None if seed is None else numpy.random.default_rng(seed)

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.rng)

    def extra_repr(self):
        return f"p={self.p}"


class Identity(Module):
    def forward(self, x):
        return x


class Sequential(Module):
    """Modules applied in order; sub-modules are named "0", "1", ... as in PyTorch."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x
