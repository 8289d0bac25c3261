"""2-D convolution as im2col + one matrix product (and its backward through col2im).

A convolution slides a (C, kh, kw) filter over the image. im2col (``minires.utils.conv``)
copies, for every kernel tap (i, j), the input pixels that tap sees into one block of a
matrix, so that the whole convolution becomes a single matrix product with the weights.

Read ``Conv2dSimpleFunction`` first: the idea in a dozen lines, with a plain backward.
``Conv2dFunction`` computes the same numbers faster (it is what ``conv2d`` and ``nn.Conv2d``
use): it works in cache-sized batch slices, reuses scratch buffers and computes the stride-1
input gradient as a convolution; the tests check each against the other and against loops.
"""
import numpy

from .. import backend
from ..autograd import Function
from ..utils import threads
from ..utils.conv import col2im, im2col, output_size, pair, workspace
from .dtypes import check_floating
from .winograd import Conv2dWinogradFunction

# Winograd F(2x2, 3x3) (functional/winograd.py) for 3x3 stride-1 convolutions with at least
# WINOGRAD_MIN_CHANNELS input and output channels, on NumPy, when WINOGRAD is True. Off: on the
# 2-core CPU of benchmarks/RESULTS.md it lost to im2col at every ResNet shape once both run on
# the thread pool (its transforms cost more than the 2.25x multiplications it saves); it won
# 15-20% from 256 channels only against single-threaded im2col.
WINOGRAD = False
WINOGRAD_MIN_CHANNELS = 256


class Conv2dSimpleFunction(Function):
    """y[n, o] = sum_{c, i, j} W[o, c, i, j] * xpad[n, c, y*s + i, x*s + j] + b[o], plainly.

    x (N, C, H, W), W (O, C, kh, kw), b (O,) -> y (N, O, Ho, Wo), Ho = (H + 2p - kh) // s + 1.
    Forward: col = im2col(x) (kh, kw, C, N, Ho, Wo), then one tensor product that sums over
    (C, kh, kw): y = W . col. Backward, from the same col:
      gW = gy . col (summed over N, Ho, Wo), gb = sum of gy over (N, Ho, Wo),
      gx = col2im(W^T . gy) (summed over O), the overlapping taps added up.
    The column matrix is kept for backward (kh*kw times the input: the price of simplicity).
    """

    def __init__(self, stride=1, padding=0):
        self.sy, self.sx = pair(stride, "stride")
        self.ph, self.pw = pair(padding, "padding")

    def forward(self, x, W, b=None):
        xp = backend.get_array_module(x)
        kh, kw = W.shape[2:]
        col = im2col(x, kh, kw, self.sy, self.sx, self.ph, self.pw)  # (kh, kw, C, N, Ho, Wo)
        # W axes (C, kh, kw) meet col axes (C, kh, kw) = (2, 0, 1): (O, N, Ho, Wo)
        y = xp.tensordot(W, col, axes=((1, 2, 3), (2, 0, 1)))
        y = xp.ascontiguousarray(y.transpose(1, 0, 2, 3))  # (N, O, Ho, Wo)
        self.has_bias = b is not None
        if self.has_bias:
            y += b.reshape(1, -1, 1, 1)
        self.x_shape, self.W, self.col = x.shape, W, col
        return y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        # gy axes (N, Ho, Wo) meet col axes (N, Ho, Wo) = (3, 4, 5): (O, kh, kw, C)
        gW = xp.tensordot(gy, self.col, axes=((0, 2, 3), (3, 4, 5))).transpose(0, 3, 1, 2)  # (O, C, kh, kw)
        # W axis O meets gy axis O: (C, kh, kw, N, Ho, Wo)
        gcol = xp.tensordot(self.W, gy, axes=(0, 1)).transpose(1, 2, 0, 3, 4, 5)  # (kh, kw, C, N, Ho, Wo)
        gx = col2im(gcol, self.x_shape, self.sy, self.sx, self.ph, self.pw)
        if not self.has_bias:
            return gx, gW
        return gx, gW, gy.sum(axis=(0, 2, 3))


class Conv2dFunction(Function):
    """y[n, o] = sum_{c, i, j} W[o, c, i, j] * xpad[n, c, y*s + i, x*s + j] + b[o].

    x (N, C, H, W), W (O, C, kh, kw), b (O,) -> y (N, O, Ho, Wo), Ho = (H + 2p - kh) // s + 1.
    Forward: y2 = W2 @ col, with W2 = W as an (O, kh*kw*C) matrix and col = im2col(x).
    Backward, with gy2 = gy as an (O, N*Ho*Wo) matrix:
      gW = gy2 @ col^T, gb = sum of gy over (N, Ho, Wo), gx = col2im(W2^T @ gy2).
    For stride 1 gx is computed as what it equals, a convolution of gy with the flipped,
    transposed kernel W[o, c, kh-1-i, kw-1-j] and padding k-1-p: an im2col of gy and a product
    with K = kh*kw*O instead of a product with K = O and a 9-fold col2im.
    The work is done in batch slices that fit in cache, on every core (``utils.threads``: one
    contiguous share of the batch per thread, single-threaded BLAS inside), and the column
    matrix is recomputed in backward rather than kept (it is kh*kw times the input).
    """

    def __init__(self, stride=1, padding=0):
        self.sy, self.sx = pair(stride, "stride")
        self.ph, self.pw = pair(padding, "padding")

    def forward(self, x, W, b=None):
        xp = backend.get_array_module(x)
        n, c, h, w = x.shape
        o, _, kh, kw = W.shape
        ho, wo = output_size(h, kh, self.sy, self.ph), output_size(w, kw, self.sx, self.pw)
        W2 = W.transpose(0, 2, 3, 1).reshape(o, kh * kw * c)  # (O, kh*kw*C), tap-major like col
        y = xp.empty((n, o, ho, wo), x.dtype)

        def part(k, slices):
            for rows in slices:
                col = self._im2col(x[rows], kh, kw, self.sy, self.sx, self.ph, self.pw, k)
                y2 = (W2 @ col.reshape(kh * kw * c, -1)).reshape(o, -1, ho, wo)  # (O, nb, Ho, Wo)
                if b is None:
                    y[rows] = y2.transpose(1, 0, 2, 3)  # (nb, O, Ho, Wo)
                else:  # the bias added in the same pass, while y2 is in cache
                    xp.add(y2.transpose(1, 0, 2, 3), b.reshape(1, o, 1, 1), out=y[rows])

        threads.run(part, threads.batch_parts(xp, n, kh * kw * c * ho * wo * x.itemsize))
        self.has_bias = b is not None
        if any(self.needs_input_grad):
            self.x, self.W = x, W
        return y

    @staticmethod
    def _im2col(x, kh, kw, sy, sx, ph, pw, k):
        """im2col into the scratch buffer of thread share ``k``."""
        xp = backend.get_array_module(x)
        n, c, h, w = x.shape
        shape = (kh, kw, c, n, output_size(h, kh, sy, ph), output_size(w, kw, sx, pw))
        return im2col(x, kh, kw, sy, sx, ph, pw, out=workspace(xp, shape, x.dtype, f"col{k}"))

    def backward(self, gy):
        x, W = self.x, self.W
        xp = backend.get_array_module(gy)
        n, c, h, w = x.shape
        o, _, kh, kw = W.shape
        _, _, ho, wo = gy.shape
        need_gx, need_gW = self.needs_input_grad[0], self.needs_input_grad[1]
        need_gb = self.has_bias and self.needs_input_grad[2]
        W2 = W.transpose(0, 2, 3, 1).reshape(o, kh * kw * c)  # (O, kh*kw*C)
        # gx by a stride-1 convolution of gy needs padding k-1-p >= 0
        transposed = self.sy == 1 and self.sx == 1 and self.ph < kh and self.pw < kw
        if transposed:
            Wt = W[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(kh * kw * o, c).T  # (C, kh*kw*O)
        gx = xp.empty(x.shape, x.dtype) if need_gx else None

        def part(k, slices):
            """This share's sums of gW (O, kh*kw*C) and gb (O,) over its rows; its rows of gx."""
            gW = xp.zeros((o, kh * kw * c), W.dtype) if need_gW else None
            gb = xp.zeros(o, gy.dtype) if need_gb else None
            for rows in slices:
                gyc = gy[rows]
                gy2 = workspace(xp, (o,) + gyc.shape[:1] + gyc.shape[2:], gy.dtype, f"gy{k}")
                gy2[...] = gyc.transpose(1, 0, 2, 3)  # (O, nb, Ho, Wo)
                gy2 = gy2.reshape(o, -1)  # (O, nb*Ho*Wo)
                if need_gb:
                    gb += gy2.sum(axis=1)
                if need_gW:
                    col = self._im2col(x[rows], kh, kw, self.sy, self.sx, self.ph, self.pw, k)
                    gW += gy2 @ col.reshape(kh * kw * c, -1).T  # (O, kh*kw*C)
                if need_gx and transposed:
                    colg = self._im2col(gyc, kh, kw, 1, 1, kh - 1 - self.ph, kw - 1 - self.pw, k)
                    gx2 = Wt @ colg.reshape(kh * kw * o, -1)  # (C, nb*H*W)
                    gx[rows] = gx2.reshape(c, -1, h, w).transpose(1, 0, 2, 3)  # (nb, C, H, W)
                elif need_gx:
                    gcol = W2.T @ gy2  # (kh*kw*C, nb*Ho*Wo)
                    gx[rows] = col2im(gcol.reshape(kh, kw, c, -1, ho, wo), x[rows].shape,
                                      self.sy, self.sx, self.ph, self.pw)
            return gW, gb

        sums = threads.run(part, threads.batch_parts(xp, n, kh * kw * max(c, o) * ho * wo * x.itemsize))
        gW = gb = None
        if need_gW:
            gW = sum(s[0] for s in sums).reshape(o, kh, kw, c)  # the shares' sums added up
            gW = xp.ascontiguousarray(gW.transpose(0, 3, 1, 2))  # (O, C, kh, kw)
        if need_gb:
            gb = sum(s[1] for s in sums)
        if not self.has_bias:
            return gx, gW
        return gx, gW, gb


def _check_conv2d(name, x, W, b, stride, padding):
    """The (stride, padding) pairs of a valid convolution, or a one-line error saying what is wrong."""
    sy, sx = pair(stride, "stride")
    ph, pw = pair(padding, "padding")
    check_floating(name, x, W, b)
    if x.ndim != 4:
        raise ValueError(f"{name} expects x of shape (N, C, H, W), got {tuple(x.shape)}")
    if W.ndim != 4:
        raise ValueError(f"{name} expects W of shape (O, C, kh, kw), got {tuple(W.shape)}")
    if x.shape[1] != W.shape[1]:
        raise ValueError(f"{name}: x has {x.shape[1]} channels (shape {tuple(x.shape)}) but W expects "
                         f"{W.shape[1]} (shape {tuple(W.shape)})")
    if sy < 1 or sx < 1 or ph < 0 or pw < 0:
        raise ValueError(f"{name}: stride must be >= 1 and padding >= 0, got stride={stride}, padding={padding}")
    kh, kw = W.shape[2:]
    if kh > x.shape[2] + 2 * ph or kw > x.shape[3] + 2 * pw:
        raise ValueError(f"{name}: kernel {kh}x{kw} is larger than the padded input "
                         f"{x.shape[2] + 2 * ph}x{x.shape[3] + 2 * pw} (x {tuple(x.shape)}, padding {padding})")
    if b is not None and tuple(b.shape) != (W.shape[0],):
        raise ValueError(f"{name}: bias must have shape ({W.shape[0]},), got {tuple(b.shape)}")
    return (sy, sx), (ph, pw)


def conv2d_simple(x, W, b=None, stride=1, padding=0):
    """``conv2d`` computed the plain way (``Conv2dSimpleFunction``): for reading and as a test reference."""
    f = Conv2dSimpleFunction(*_check_conv2d("conv2d_simple", x, W, b, stride, padding))
    return f(x, W) if b is None else f(x, W, b)


def conv2d(x, W, b=None, stride=1, padding=0):
    """2-D convolution (cross-correlation, as in every framework) of NCHW ``x`` with ``W`` (O, C, kh, kw).

    ``stride`` and ``padding`` are ints or (vertical, horizontal) pairs; ``b`` is (O,) or None.
    """
    stride, padding = _check_conv2d("conv2d", x, W, b, stride, padding)
    o, c, kh, kw = W.shape
    if (WINOGRAD and stride == (1, 1) and (kh, kw) == (3, 3) and min(o, c) >= WINOGRAD_MIN_CHANNELS
            and backend.get_array_module(x) is numpy):
        f = Conv2dWinogradFunction(padding)
    else:
        f = Conv2dFunction(stride, padding)
    return f(x, W) if b is None else f(x, W, b)
