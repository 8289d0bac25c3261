"""2-D convolution as im2col + one matrix product (and its backward through col2im).

A convolution slides a (C, kh, kw) filter over the image. im2col (``minires.utils.conv``)
copies, for every kernel tap (i, j), the input pixels that tap sees into one block of a
matrix, so that the whole convolution becomes a single matrix product with the weights.

Read ``Conv2dSimpleFunction`` first: the idea in a dozen lines, with a plain backward.
``Conv2dFunction`` computes the same numbers faster (it is what ``conv2d`` and ``nn.Conv2d``
use): it works in cache-sized batch slices, reuses scratch buffers and computes the stride-1
input gradient as a convolution; the tests check each against the other and against loops.
Both take PyTorch's ``groups`` (G independent convolutions over C/G channels each, as G
products batched into one ``matmul``) and ``dilation`` (kernel taps d pixels apart).
"""
import numpy

from .. import backend
from ..autograd import Function
from ..utils import threads
from ..utils.conv import col2im, col_shape, im2col, output_size, pair, workspace
from .dtypes import check_floating
from .winograd import Conv2dWinogradFunction

# Winograd F(2x2, 3x3) (functional/winograd.py) for 3x3 stride-1 convolutions (ungrouped, undilated) with at
# least WINOGRAD_MIN_CHANNELS input and output channels, on NumPy, when WINOGRAD is True. Off: on the
# 2-core CPU of benchmarks/RESULTS.md it lost to im2col at every ResNet shape once both run on
# the thread pool (its transforms cost more than the 2.25x multiplications it saves); it won
# 15-20% from 256 channels only against single-threaded im2col.
WINOGRAD = False
WINOGRAD_MIN_CHANNELS = 256


class _Conv2dGeometry(Function):
    """What both convolution Functions are built with: stride, padding, dilation, groups."""

    def __init__(self, stride=1, padding=0, dilation=1, groups=1):
        self.sy, self.sx = pair(stride, "stride")
        self.ph, self.pw = pair(padding, "padding")
        self.dy, self.dx = pair(dilation, "dilation")
        self.groups = groups


class Conv2dSimpleFunction(_Conv2dGeometry):
    """y[n, o] = sum_{c, i, j} W[o, c, i, j] * xpad[n, g*C/G + c, y*s + i*d, x*s + j*d] + b[o], plainly.

    x (N, C, H, W), W (O, C/G, kh, kw), b (O,) -> y (N, O, Ho, Wo), Ho = (H + 2p - d*(kh-1) - 1) // s + 1,
    where output channel o belongs to group g = o // (O/G) of the G ``groups`` and d is the dilation.
    Forward: col = im2col(x) (G, kh*kw*C/G, N*Ho*Wo), then one batched matrix product over the
    groups: y = W3 @ col with W3 = W as (G, O/G, kh*kw*C/G). Backward, from the same col:
      gW = gy3 @ col^T, gb = sum of gy over (N, Ho, Wo),
      gx = col2im(W3^T @ gy3), the overlapping taps added up, with gy3 = gy as (G, O/G, N*Ho*Wo).
    The column matrix is kept for backward (kh*kw times the input: the price of simplicity).
    """

    def forward(self, x, W, b=None):
        xp = backend.get_array_module(x)
        n = x.shape[0]
        o, cg, kh, kw = W.shape
        g = self.groups
        col = im2col(x, kh, kw, self.sy, self.sx, self.ph, self.pw, self.dy, self.dx, g)
        ho, wo = col.shape[-2:]
        # W (G, O/G, C/G, kh, kw) -> (G, O/G, kh, kw, C/G), tap-major like col
        W3 = W.reshape(g, o // g, cg, kh, kw).transpose(0, 1, 3, 4, 2).reshape(g, o // g, kh * kw * cg)
        y = W3 @ col.reshape(g, kh * kw * cg, -1)  # (G, O/G, N*Ho*Wo)
        y = xp.ascontiguousarray(y.reshape(o, n, ho, wo).transpose(1, 0, 2, 3))  # (N, O, Ho, Wo)
        self.has_bias = b is not None
        if self.has_bias:
            y += b.reshape(1, -1, 1, 1)
        self.x_shape, self.W_shape, self.W3, self.col = x.shape, W.shape, W3, col
        return y

    def backward(self, gy):
        o, cg, kh, kw = self.W_shape
        g = self.groups
        col3 = self.col.reshape(g, kh * kw * cg, -1)  # (G, kh*kw*C/G, N*Ho*Wo)
        gy3 = gy.transpose(1, 0, 2, 3).reshape(g, o // g, -1)  # (G, O/G, N*Ho*Wo)
        gW = (gy3 @ col3.transpose(0, 2, 1)).reshape(o, kh, kw, cg).transpose(0, 3, 1, 2)  # (O, C/G, kh, kw)
        gcol = (self.W3.transpose(0, 2, 1) @ gy3).reshape(self.col.shape)  # (G, kh*kw*C/G, N*Ho*Wo) as col
        gx = col2im(gcol, self.x_shape, self.sy, self.sx, self.ph, self.pw, self.dy, self.dx)
        if not self.has_bias:
            return gx, gW
        return gx, gW, gy.sum(axis=(0, 2, 3))


class Conv2dFunction(_Conv2dGeometry):
    """y[n, o] = sum_{c, i, j} W[o, c, i, j] * xpad[n, g*C/G + c, y*s + i*d, x*s + j*d] + b[o].

    x (N, C, H, W), W (O, C/G, kh, kw), b (O,) -> y (N, O, Ho, Wo), Ho = (H + 2p - d*(kh-1) - 1) // s + 1,
    with G ``groups`` (output channel o in group g = o // (O/G)) and dilation d.
    Forward: y2 = W2 @ col, with W2 = W as G (O/G, kh*kw*C/G) matrices and col = im2col(x),
    the G products one batched matrix product (G = 1: one plain product).
    Backward, with gy2 = gy as G (O/G, N*Ho*Wo) matrices:
      gW = gy2 @ col^T, gb = sum of gy over (N, Ho, Wo), gx = col2im(W2^T @ gy2).
    For stride 1 gx is computed as what it equals, a convolution of gy with the flipped,
    transposed kernel W[o, c, kh-1-i, kw-1-j] (same groups and dilation) and padding d*(k-1)-p:
    an im2col of gy and a product with K = kh*kw*O/G instead of a product with K = O/G and a
    kh*kw-fold col2im.
    The work is done in batch slices that fit in cache, on every core (``utils.threads``: one
    contiguous share of the batch per thread, single-threaded BLAS inside), and the column
    matrix is recomputed in backward rather than kept (it is kh*kw times the input).
    """

    def forward(self, x, W, b=None):
        xp = backend.get_array_module(x)
        n, c, h, w = x.shape
        o, cg, kh, kw = W.shape
        g = self.groups
        ho, wo = output_size(h, kh, self.sy, self.ph, self.dy), output_size(w, kw, self.sx, self.pw, self.dx)
        # (G, O/G, kh, kw, C/G) as (G, O/G, kh*kw*C/G), tap-major like col
        W2 = W.reshape(g, o // g, cg, kh, kw).transpose(0, 1, 3, 4, 2).reshape(g, o // g, kh * kw * cg)
        y = xp.empty((n, o, ho, wo), x.dtype)

        def rows_of_y(k, rows):
            col = self._im2col(x[rows], kh, kw, k, (self.sy, self.sx), (self.ph, self.pw))
            y2 = (W2 @ col.reshape(g, kh * kw * cg, -1)).reshape(o, -1, ho, wo)  # (O, nb, Ho, Wo)
            if b is None:
                y[rows] = y2.transpose(1, 0, 2, 3)  # (nb, O, Ho, Wo)
            else:  # the bias added in the same pass, while y2 is in cache
                xp.add(y2.transpose(1, 0, 2, 3), b.reshape(1, o, 1, 1), out=y[rows])

        threads.over_slices(rows_of_y, xp, n, kh * kw * c * ho * wo * x.itemsize)
        self.has_bias = b is not None
        if any(self.needs_input_grad):
            self.x, self.W = x, W
        return y

    def _im2col(self, x, kh, kw, k, stride, padding):
        """im2col with this convolution's dilation and groups into the scratch buffer of thread share ``k``."""
        xp = backend.get_array_module(x)
        (sy, sx), (ph, pw) = stride, padding
        shape = col_shape(x.shape, kh, kw, sy, sx, ph, pw, self.dy, self.dx, self.groups)
        return im2col(x, kh, kw, sy, sx, ph, pw, self.dy, self.dx, self.groups,
                      out=workspace(xp, shape, x.dtype, f"col{k}"))

    def backward(self, gy):
        x, W = self.x, self.W
        xp = backend.get_array_module(gy)
        n, c, h, w = x.shape
        o, cg, kh, kw = W.shape
        _, _, ho, wo = gy.shape
        g, og = self.groups, o // self.groups
        dy, dx = self.dy, self.dx
        need_gx, need_gW = self.needs_input_grad[0], self.needs_input_grad[1]
        need_gb = self.has_bias and self.needs_input_grad[2]
        Wg = W.reshape(g, og, cg, kh, kw)
        W2 = Wg.transpose(0, 1, 3, 4, 2).reshape(g, og, kh * kw * cg)  # (G, O/G, kh*kw*C/G)
        # gx by a stride-1 convolution of gy needs padding d*(k-1)-p >= 0
        transposed = self.sy == 1 and self.sx == 1 and self.ph <= dy * (kh - 1) and self.pw <= dx * (kw - 1)
        if transposed:
            # flipped W (G, O/G, C/G, kh, kw) -> (G, C/G, kh, kw, O/G): (G, C/G, kh*kw*O/G)
            Wt = Wg[:, :, :, ::-1, ::-1].transpose(0, 2, 3, 4, 1).reshape(g, cg, kh * kw * og)
        gx = xp.empty(x.shape, x.dtype) if need_gx else None

        def grads(k, rows):
            """gx's rows; these rows' parts of gW (G, O/G, kh*kw*C/G) and gb (O,)."""
            gyc = gy[rows]
            nb = gyc.shape[0]
            gy2 = workspace(xp, (o, nb, ho, wo), gy.dtype, f"gy{k}")
            gy2[...] = gyc.transpose(1, 0, 2, 3)  # (O, nb, Ho, Wo)
            gy2 = gy2.reshape(g, og, -1)  # (G, O/G, nb*Ho*Wo)
            gb = gy2.reshape(o, -1).sum(axis=1) if need_gb else None
            gW = None
            if need_gW:
                col = self._im2col(x[rows], kh, kw, k, (self.sy, self.sx), (self.ph, self.pw))
                gW = gy2 @ col.reshape(g, kh * kw * cg, -1).transpose(0, 2, 1)  # (G, O/G, kh*kw*C/G)
            if need_gx and transposed:
                colg = self._im2col(gyc, kh, kw, k, (1, 1), (dy * (kh - 1) - self.ph, dx * (kw - 1) - self.pw))
                gx2 = Wt @ colg.reshape(g, kh * kw * og, -1)  # (G, C/G, nb*H*W)
                gx[rows] = gx2.reshape(c, nb, h, w).transpose(1, 0, 2, 3)  # (nb, C, H, W)
            elif need_gx:
                gcol = W2.transpose(0, 2, 1) @ gy2  # (G, kh*kw*C/G, nb*Ho*Wo)
                gx[rows] = col2im(gcol.reshape(g, kh, kw, cg, nb, ho, wo), x[rows].shape,
                                  self.sy, self.sx, self.ph, self.pw, dy, dx)
            return gW, gb

        gW, gb = threads.over_slices(grads, xp, n, kh * kw * max(c, o) * ho * wo * x.itemsize)
        if need_gW:
            gW = xp.ascontiguousarray(gW.reshape(o, kh, kw, cg).transpose(0, 3, 1, 2))  # (O, C/G, kh, kw)
        if not self.has_bias:
            return gx, gW
        return gx, gW, gb


def _check_conv2d(name, x, W, b, stride, padding, dilation, groups):
    """The (stride, padding, dilation) pairs of a valid convolution, or a one-line error saying what is wrong."""
    sy, sx = pair(stride, "stride")
    ph, pw = pair(padding, "padding")
    dy, dx = pair(dilation, "dilation")
    check_floating(name, x, W, b)
    if x.ndim != 4:
        raise ValueError(f"{name} expects x of shape (N, C, H, W), got {tuple(x.shape)}")
    if W.ndim != 4:
        raise ValueError(f"{name} expects W of shape (O, C/groups, kh, kw), got {tuple(W.shape)}")
    if not isinstance(groups, (int, numpy.integer)) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{name}: groups must be a positive int, got {groups!r}")
    if x.shape[1] % groups or W.shape[0] % groups:
        raise ValueError(f"{name}: groups={groups} must divide the input channels ({x.shape[1]}) and the "
                         f"output channels ({W.shape[0]}), x {tuple(x.shape)}, W {tuple(W.shape)}")
    if x.shape[1] != W.shape[1] * groups:
        raise ValueError(f"{name}: x has {x.shape[1]} channels (shape {tuple(x.shape)}) but W (shape "
                         f"{tuple(W.shape)}) with groups={groups} expects {W.shape[1] * groups}")
    if sy < 1 or sx < 1 or ph < 0 or pw < 0 or dy < 1 or dx < 1:
        raise ValueError(f"{name}: stride and dilation must be >= 1 and padding >= 0, got stride={stride}, "
                         f"padding={padding}, dilation={dilation}")
    kh, kw = W.shape[2:]
    eh, ew = dy * (kh - 1) + 1, dx * (kw - 1) + 1  # the span of the dilated kernel
    if eh > x.shape[2] + 2 * ph or ew > x.shape[3] + 2 * pw:
        raise ValueError(f"{name}: kernel {kh}x{kw} (spanning {eh}x{ew} with dilation {dilation}) is larger than "
                         f"the padded input {x.shape[2] + 2 * ph}x{x.shape[3] + 2 * pw} (x {tuple(x.shape)}, "
                         f"padding {padding})")
    if b is not None and tuple(b.shape) != (W.shape[0],):
        raise ValueError(f"{name}: bias must have shape ({W.shape[0]},), got {tuple(b.shape)}")
    return (sy, sx), (ph, pw), (dy, dx), int(groups)


def conv2d_simple(x, W, b=None, stride=1, padding=0, dilation=1, groups=1):
    """``conv2d`` computed the plain way (``Conv2dSimpleFunction``): for reading and as a test reference."""
    f = Conv2dSimpleFunction(*_check_conv2d("conv2d_simple", x, W, b, stride, padding, dilation, groups))
    return f(x, W) if b is None else f(x, W, b)


def conv2d(x, W, b=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation, as in every framework) of NCHW ``x`` with ``W`` (O, C/groups, kh, kw).

    ``stride``, ``padding`` and ``dilation`` are ints or (vertical, horizontal) pairs; ``b`` is (O,)
    or None. ``groups`` G splits the C input and O output channels into G groups, group g's
    outputs seeing only group g's inputs (G = C: a depthwise convolution), as in PyTorch.
    """
    stride, padding, dilation, groups = _check_conv2d("conv2d", x, W, b, stride, padding, dilation, groups)
    o, c, kh, kw = W.shape
    if (WINOGRAD and stride == (1, 1) and dilation == (1, 1) and groups == 1 and (kh, kw) == (3, 3)
            and min(o, c) >= WINOGRAD_MIN_CHANNELS and backend.get_array_module(x) is numpy):
        f = Conv2dWinogradFunction(padding)
    else:  # also every grouped or dilated convolution, which Winograd F(2x2, 3x3) does not cover
        f = Conv2dFunction(stride, padding, dilation, groups)
    return f(x, W) if b is None else f(x, W, b)
