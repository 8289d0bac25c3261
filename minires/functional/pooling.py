"""Max, average and global-average pooling over the spatial axes of NCHW tensors.

Windowed pooling reuses the im2col idea: a loop over the kh x kw window taps, each a strided
slice of the (padded) input, reduced with max or sum; backward is the same loop with ``+=``.
"""
from .. import backend
from ..autograd import Function
from ..utils.conv import output_size, pad2d, pair
from .dtypes import check_floating


def _taps(x_pad, kh, kw, sy, sx, ho, wo):
    """Yield (i, j, view) with view[n, c, y, x] = x_pad[n, c, y*sy + i, x*sx + j]."""
    for i in range(kh):
        for j in range(kw):
            yield i, j, x_pad[:, :, i:i + sy * ho:sy, j:j + sx * wo:sx]


def _check(x, name, kh, kw, sy, sx, ph, pw):
    if x.ndim != 4:
        raise ValueError(f"{name} expects x of shape (N, C, H, W), got {tuple(x.shape)}")
    if min(kh, kw, sy, sx) < 1 or min(ph, pw) < 0:
        raise ValueError(f"{name}: kernel and stride must be >= 1 and padding >= 0")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{name}: padding {ph, pw} must be at most half the kernel {kh, kw}")
    if kh > x.shape[2] + 2 * ph or kw > x.shape[3] + 2 * pw:
        raise ValueError(f"{name}: kernel {kh}x{kw} is larger than the padded input "
                         f"{x.shape[2] + 2 * ph}x{x.shape[3] + 2 * pw} (x {tuple(x.shape)})")


class _Pool2dFunction(Function):
    """What max and average pooling share: the window geometry and the padded gradient buffer."""

    def __init__(self, kernel_size, stride, padding):
        (self.kh, self.kw), (self.sy, self.sx), (self.ph, self.pw) = kernel_size, stride, padding

    def output_shape(self, x):
        n, c, h, w = x.shape
        return n, c, output_size(h, self.kh, self.sy, self.ph), output_size(w, self.kw, self.sx, self.pw)

    def taps(self, a, gy_shape):
        """The window taps over the padded array ``a``, for outputs of shape ``gy_shape``."""
        return _taps(a, self.kh, self.kw, self.sy, self.sx, gy_shape[2], gy_shape[3])

    def padded_zeros(self, gy):
        n, c, h, w = self.x_shape
        return backend.get_array_module(gy).zeros((n, c, h + 2 * self.ph, w + 2 * self.pw), gy.dtype)

    def unpad(self, gx):
        h, w = self.x_shape[2:]
        return gx[:, :, self.ph:self.ph + h, self.pw:self.pw + w]


class MaxPool2dFunction(_Pool2dFunction):
    """y[n, c, y, x] = max over the window of xpad (padding is -inf, or the smallest integer of
    the dtype, so it never wins).

    Backward routes gy to the first position in the window that holds the maximum.
    """

    def forward(self, x):
        xp = backend.get_array_module(x)
        shape = self.output_shape(x)
        low = -xp.inf if x.dtype.kind == "f" else xp.iinfo(x.dtype).min  # -inf cast to an integer is 0
        y = xp.full(shape, low, dtype=x.dtype)
        argmax = xp.zeros(shape, xp.int8 if self.kh * self.kw < 128 else xp.int32)
        for i, j, view in self.taps(pad2d(x, self.ph, self.pw, value=low), shape):
            better = view > y  # strict: ties keep the earlier tap
            xp.copyto(y, view, where=better)
            xp.copyto(argmax, i * self.kw + j, where=better, casting="unsafe")
        self.x_shape = x.shape
        if self.needs_input_grad[0]:
            self.argmax = argmax
        return y

    def backward(self, gy):
        gx = self.padded_zeros(gy)
        for i, j, view in self.taps(gx, gy.shape):
            view += gy * (self.argmax == i * self.kw + j)
        return self.unpad(gx)


class AvgPool2dFunction(_Pool2dFunction):
    """y = mean of the kh*kw window of the zero-padded input (padding counts, as PyTorch's default).

    Backward spreads gy / (kh*kw) over each window.
    """

    def forward(self, x):
        xp = backend.get_array_module(x)
        shape = self.output_shape(x)
        y = xp.zeros(shape, x.dtype)
        for _, _, view in self.taps(pad2d(x, self.ph, self.pw), shape):
            y += view
        y *= 1.0 / (self.kh * self.kw)
        self.x_shape = x.shape
        return y

    def backward(self, gy):
        gx = self.padded_zeros(gy)
        g = gy * (1.0 / (self.kh * self.kw))
        for _, _, view in self.taps(gx, gy.shape):
            view += g
        return self.unpad(gx)


class GlobalAvgPool2dFunction(Function):
    """y[n, c] = mean over (H, W) of x[n, c]; gx = gy / (H*W) broadcast over (H, W)."""

    def forward(self, x):
        self.x_shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        n, c, h, w = self.x_shape
        return xp.broadcast_to((gy * (1.0 / (h * w))).reshape(n, c, 1, 1), self.x_shape)


def _window(x, name, kernel_size, stride, padding):
    kh, kw = pair(kernel_size, "kernel_size")
    sy, sx = pair(kernel_size if stride is None else stride, "stride")
    ph, pw = pair(padding, "padding")
    _check(x, name, kh, kw, sy, sx, ph, pw)
    return (kh, kw), (sy, sx), (ph, pw)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max pooling of NCHW ``x``; ``stride`` defaults to ``kernel_size``. Integers are pooled exactly."""
    check_floating("max_pool2d", x, kinds="fiu")
    return MaxPool2dFunction(*_window(x, "max_pool2d", kernel_size, stride, padding))(x)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Average pooling of NCHW ``x`` (zero padding counted in the mean); ``stride`` defaults to ``kernel_size``."""
    check_floating("avg_pool2d", x)
    return AvgPool2dFunction(*_window(x, "avg_pool2d", kernel_size, stride, padding))(x)


def global_avg_pool2d(x):
    """(N, C, H, W) -> (N, C): the mean of each feature map."""
    check_floating("global_avg_pool2d", x)
    if x.ndim != 4:
        raise ValueError(f"global_avg_pool2d expects x of shape (N, C, H, W), got {tuple(x.shape)}")
    return GlobalAvgPool2dFunction()(x)
