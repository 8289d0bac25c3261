"""Max, average and global-average pooling over the spatial axes of NCHW tensors.

Windowed pooling reuses the im2col idea: a loop over the kh x kw window taps, each a strided
slice of the (padded) input, reduced with max or sum; backward is the same loop with ``+=``.

The options are PyTorch's: ``dilation`` spreads max pooling's taps ``d`` pixels apart;
``ceil_mode`` rounds the output size up, so a last window may hang over the bottom/right edge
(it is padded further there: -inf for max, not counted in the mean); ``count_include_pad=False``
divides each average by the number of real input pixels in its window.
"""
import functools

import numpy

from .. import backend
from ..autograd import Function, Tensor
from ..utils.conv import pair
from .dtypes import check_floating


def _taps(x_pad, kh, kw, sy, sx, ho, wo, dy=1, dx=1):
    """Yield (i, j, view) with view[n, c, y, x] = x_pad[n, c, y*sy + i*dy, x*sx + j*dx]."""
    for i in range(kh):
        for j in range(kw):
            yield i, j, x_pad[:, :, i * dy:i * dy + sy * (ho - 1) + 1:sy, j * dx:j * dx + sx * (wo - 1) + 1:sx]


def _out_size(size, k, s, p, d, ceil_mode):
    """PyTorch's pooling output size: floor (or ceil) of (size + 2p - d(k-1) - 1) / s, plus 1."""
    n = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (n - 1) * s >= size + p:
        n -= 1  # the last window must start inside the input or its left padding
    return n


def _check(x, name, kh, kw, sy, sx, ph, pw, dy=1, dx=1):
    if x.ndim != 4:
        raise ValueError(f"{name} expects x of shape (N, C, H, W), got {tuple(x.shape)}")
    if min(kh, kw, sy, sx, dy, dx) < 1 or min(ph, pw) < 0:
        raise ValueError(f"{name}: kernel, stride and dilation must be >= 1 and padding >= 0")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{name}: padding {ph, pw} must be at most half the kernel {kh, kw}")
    eh, ew = dy * (kh - 1) + 1, dx * (kw - 1) + 1  # the window's extent with dilation
    if eh > x.shape[2] + 2 * ph or ew > x.shape[3] + 2 * pw:
        raise ValueError(f"{name}: kernel {kh}x{kw} (extent {eh}x{ew} with dilation) is larger than the padded "
                         f"input {x.shape[2] + 2 * ph}x{x.shape[3] + 2 * pw} (x {tuple(x.shape)})")


class _Pool2dFunction(Function):
    """What max and average pooling share: the window geometry and the padded gradient buffer."""

    def __init__(self, kernel_size, stride, padding, dilation=(1, 1), ceil_mode=False):
        (self.kh, self.kw), (self.sy, self.sx), (self.ph, self.pw) = kernel_size, stride, padding
        (self.dy, self.dx), self.ceil_mode = dilation, ceil_mode

    def output_shape(self, x):
        n, c, h, w = x.shape
        return (n, c, _out_size(h, self.kh, self.sy, self.ph, self.dy, self.ceil_mode),
                _out_size(w, self.kw, self.sx, self.pw, self.dx, self.ceil_mode))

    def padded_size(self, out_shape):
        """(Hp, Wp): the input padded by (ph, pw) on the top/left and as far as the last window
        reaches on the bottom/right (beyond ph, pw only in ceil mode)."""
        h, w = self.x_shape[2:]
        hp = max(h + 2 * self.ph, (out_shape[2] - 1) * self.sy + self.dy * (self.kh - 1) + 1)
        wp = max(w + 2 * self.pw, (out_shape[3] - 1) * self.sx + self.dx * (self.kw - 1) + 1)
        return hp, wp

    def pad(self, x, out_shape, value):
        """x (N, C, H, W) -> (N, C, Hp, Wp), the border filled with ``value``."""
        h, w = x.shape[2:]
        hp, wp = self.padded_size(out_shape)
        if (hp, wp) == (h, w):
            return x
        out = backend.get_array_module(x).full(x.shape[:2] + (hp, wp), value, dtype=x.dtype)
        out[:, :, self.ph:self.ph + h, self.pw:self.pw + w] = x
        return out

    def taps(self, a, gy_shape):
        """The window taps over the padded array ``a``, for outputs of shape ``gy_shape``."""
        return _taps(a, self.kh, self.kw, self.sy, self.sx, gy_shape[2], gy_shape[3], self.dy, self.dx)

    def padded_zeros(self, gy):
        return backend.get_array_module(gy).zeros(self.x_shape[:2] + self.padded_size(gy.shape), gy.dtype)

    def unpad(self, gx):
        h, w = self.x_shape[2:]
        return gx[:, :, self.ph:self.ph + h, self.pw:self.pw + w]


class MaxPool2dFunction(_Pool2dFunction):
    """y[n, c, y, x] = max over i < kh, j < kw of xpad[n, c, y*sy + i*dy, x*sx + j*dx]
    (padding is -inf, or the smallest integer of the dtype, so it never wins).

    Backward routes gy to the first position in the window that holds the maximum.
    """

    def __init__(self, kernel_size, stride, padding, dilation=(1, 1), ceil_mode=False, keep_argmax=False):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        self.keep_argmax = keep_argmax  # for return_indices, even when no gradient is needed

    def forward(self, x):
        xp = backend.get_array_module(x)
        self.x_shape = x.shape
        shape = self.output_shape(x)
        low = -xp.inf if x.dtype.kind == "f" else xp.iinfo(x.dtype).min  # -inf cast to an integer is 0
        y = xp.full(shape, low, dtype=x.dtype)
        argmax = xp.zeros(shape, xp.int8 if self.kh * self.kw < 128 else xp.int32)
        for i, j, view in self.taps(self.pad(x, shape, low), shape):
            better = view > y  # strict: ties keep the earlier tap
            xp.copyto(y, view, where=better)
            xp.copyto(argmax, i * self.kw + j, where=better, casting="unsafe")
        if self.needs_input_grad[0] or self.keep_argmax:
            self.argmax = argmax
        return y

    def indices(self):
        """PyTorch's ``return_indices``: for each output, the flat index h * W + w of its maximum
        in its (unpadded) input feature map; int64 (N, C, Ho, Wo)."""
        xp = backend.get_array_module(self.argmax)
        ho, wo = self.argmax.shape[2:]
        i, j = self.argmax // self.kw, self.argmax % self.kw
        rows = xp.arange(ho).reshape(ho, 1) * self.sy - self.ph + i.astype(xp.int64) * self.dy
        cols = xp.arange(wo).reshape(1, wo) * self.sx - self.pw + j.astype(xp.int64) * self.dx
        return rows * self.x_shape[3] + cols

    def backward(self, gy):
        gx = self.padded_zeros(gy)
        for i, j, view in self.taps(gx, gy.shape):
            view += gy * (self.argmax == i * self.kw + j)
        return self.unpad(gx)


def _device(x):
    """The id of the CuPy device that holds x; None for a NumPy array."""
    return getattr(getattr(x, "device", None), "id", None)


@functools.lru_cache(maxsize=64)
def _inverse_count(size, out_size, kernel, stride, padding, count_include_pad, dtype, xp, device):
    """``AvgPool2dFunction``'s 1 / count, (Ho, Wo): computed on the host (it is small) and copied
    to the device once per geometry, dtype and device, not in every forward and backward (a
    copy from the host waits for the device). The cached array is only read, never written."""
    def counts(n_out, size, k, s, p):
        start = numpy.arange(n_out) * s - p  # in input coordinates
        end = numpy.minimum(start + k, size + p)
        if count_include_pad:
            return end - start
        return numpy.minimum(end, size) - numpy.maximum(start, 0)

    (h, w), (ho, wo), (kh, kw), (sy, sx), (ph, pw) = size, out_size, kernel, stride, padding
    count = numpy.outer(counts(ho, h, kh, sy, ph), counts(wo, w, kw, sx, pw))
    return xp.asarray(1.0 / count, dtype=dtype)  # on the current device, which holds the input


class AvgPool2dFunction(_Pool2dFunction):
    """y = (sum of the kh*kw window of the zero-padded input) / count.

    count is kh*kw in the plain case. As in PyTorch, it is the window's pixels inside the input
    and its padding (``count_include_pad``, the default), or inside the input only (``False``);
    a ceil-mode window hanging over the padded edge never counts the overhang.
    Backward spreads gy / count over each window.
    """

    def __init__(self, kernel_size, stride, padding, ceil_mode=False, count_include_pad=True):
        super().__init__(kernel_size, stride, padding, (1, 1), ceil_mode)
        self.count_include_pad = count_include_pad

    def inverse_count(self, out_shape, dtype, xp, device):
        """1 / count for every output position, (Ho, Wo), an array of ``xp`` on ``device``."""
        return _inverse_count(self.x_shape[2:], out_shape[2:], (self.kh, self.kw), (self.sy, self.sx),
                              (self.ph, self.pw), self.count_include_pad, numpy.dtype(dtype), xp, device)

    def forward(self, x):
        xp = backend.get_array_module(x)
        self.x_shape = x.shape
        shape = self.output_shape(x)
        y = xp.zeros(shape, x.dtype)
        for _, _, view in self.taps(self.pad(x, shape, 0), shape):
            y += view
        y *= self.inverse_count(shape, x.dtype, xp, _device(x))
        return y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        gx = self.padded_zeros(gy)
        g = gy * self.inverse_count(gy.shape, gy.dtype, xp, _device(gy))
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


def _window(x, name, kernel_size, stride, padding, dilation=1):
    kh, kw = pair(kernel_size, "kernel_size")
    sy, sx = pair(kernel_size if stride is None else stride, "stride")
    ph, pw = pair(padding, "padding")
    dy, dx = pair(dilation, "dilation")
    _check(x, name, kh, kw, sy, sx, ph, pw, dy, dx)
    return (kh, kw), (sy, sx), (ph, pw), (dy, dx)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max pooling of NCHW ``x``; ``stride`` defaults to ``kernel_size``.

    With ``return_indices``, returns (y, indices): indices an int64 Tensor (N, C, Ho, Wo) of the
    flat position h * W + w of each maximum in its input feature map, as PyTorch's.
    """
    check_floating("max_pool2d", x, kinds="fiu")  # a max is exact in integers
    kernel, stride, padding, dilation = _window(x, "max_pool2d", kernel_size, stride, padding, dilation)
    f = MaxPool2dFunction(kernel, stride, padding, dilation, bool(ceil_mode), keep_argmax=return_indices)
    y = f(x)
    return (y, Tensor(f.indices())) if return_indices else y


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Average pooling of NCHW ``x``; ``stride`` defaults to ``kernel_size``; zero padding is
    counted in the mean unless ``count_include_pad=False``."""
    check_floating("avg_pool2d", x)
    kernel, stride, padding, _ = _window(x, "avg_pool2d", kernel_size, stride, padding)
    return AvgPool2dFunction(kernel, stride, padding, bool(ceil_mode), bool(count_include_pad))(x)


def global_avg_pool2d(x):
    """(N, C, H, W) -> (N, C): the mean of each feature map."""
    check_floating("global_avg_pool2d", x)
    if x.ndim != 4:
        raise ValueError(f"global_avg_pool2d expects x of shape (N, C, H, W), got {tuple(x.shape)}")
    return GlobalAvgPool2dFunction()(x)
