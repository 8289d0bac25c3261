"""2-D convolution as im2col + one matrix product (and its backward through col2im).

A convolution slides a (C, kh, kw) filter over the image. im2col copies, for every kernel
tap (i, j), the input pixels that tap sees into one row block of a matrix, so that the whole
convolution becomes a single matrix product with the (O, kh*kw*C) weight matrix. The copies are
a loop over the kh x kw taps, each one strided slice of the padded input; col2im, its adjoint,
is the same loop with ``+=``.

Layout: the column matrix is (kh, kw, C, N, Ho, Wo), so that ``W2 @ col`` with
W2 = (O, kh*kw*C) gives (O, N*Ho*Wo) in one product whose long side is contiguous.
"""
import numpy

from .. import backend
from ..autograd import Function

_workspace = {}


def workspace(xp, shape, dtype, role):
    """A scratch array of ``shape`` (contents undefined), carved from one buffer per role.

    The column matrices are the largest arrays of a training step (kh*kw times their input).
    Reusing one buffer, grown to the largest request, saves the page faults of fresh
    allocations (on NumPy they cost more than filling the matrix) and keeps the memory that is
    written next already in cache.
    """
    size = int(numpy.prod(shape))
    key = (xp.__name__, numpy.dtype(dtype).str, role)
    buf = _workspace.get(key)
    if buf is None or buf.size < size:
        buf = _workspace[key] = xp.empty(size, dtype)
    return buf[:size].reshape(shape)


def clear_workspace():
    """Free the cached scratch buffers."""
    _workspace.clear()


def output_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _pair(v, name):
    if isinstance(v, int):
        return v, v
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(n, int) for n in v):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return v


def pad2d(x, ph, pw, value=0):
    """x (N, C, H, W) -> (N, C, H + 2ph, W + 2pw), borders filled with ``value``."""
    if ph == 0 and pw == 0:
        return x
    xp = backend.get_array_module(x)
    n, c, h, w = x.shape
    out = xp.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def im2col(x, kh, kw, sy, sx, ph, pw, out=None):
    """x (N, C, H, W) -> col (kh, kw, C, N, Ho, Wo) with col[i, j, c, n, y, x] = xpad[n, c, y*sy + i, x*sx + j]."""
    xp = backend.get_array_module(x)
    n, c, h, w = x.shape
    ho, wo = output_size(h, kh, sy, ph), output_size(w, kw, sx, pw)
    xt = pad2d(x, ph, pw).transpose(1, 0, 2, 3)  # (C, N, Hp, Wp) view
    col = xp.empty((kh, kw, c, n, ho, wo), x.dtype) if out is None else out
    for i in range(kh):
        for j in range(kw):
            col[i, j] = xt[:, :, i:i + sy * ho:sy, j:j + sx * wo:sx]
    return col


def col2im(col, x_shape, sy, sx, ph, pw):
    """The adjoint of im2col: col (kh, kw, C, N, Ho, Wo) -> x (N, C, H, W), overlapping taps summed."""
    xp = backend.get_array_module(col)
    kh, kw, c, n, ho, wo = col.shape
    _, _, h, w = x_shape
    xt = xp.zeros((c, n, h + 2 * ph, w + 2 * pw), col.dtype)
    for i in range(kh):
        for j in range(kw):
            xt[:, :, i:i + sy * ho:sy, j:j + sx * wo:sx] += col[i, j]
    return xp.ascontiguousarray(xt[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3))  # (N, C, H, W)


def _batch_chunks(xp, n, bytes_per_image):
    """Slices of the batch whose column matrix fits in the CPU's cache (about 4 MB).

    Filling a cache-sized column block and multiplying it at once saves a round trip to main
    memory for each of the kh*kw copies; on the GPU one launch over the whole batch is better.
    """
    if xp is not numpy:
        return [slice(0, n)]
    nb = max(1, min(n, (4 << 20) // max(1, bytes_per_image)))
    return [slice(n0, min(n0 + nb, n)) for n0 in range(0, n, nb)]


class Conv2d(Function):
    """y[n, o] = sum_{c, i, j} W[o, c, i, j] * xpad[n, c, y*s + i, x*s + j] + b[o].

    x (N, C, H, W), W (O, C, kh, kw), b (O,) -> y (N, O, Ho, Wo), Ho = (H + 2p - kh) // s + 1.
    Forward: y2 = W2 @ col, with W2 = W as an (O, kh*kw*C) matrix and col = im2col(x).
    Backward, with gy2 = gy as an (O, N*Ho*Wo) matrix:
      gW = gy2 @ col^T, gb = sum of gy over (N, Ho, Wo), gx = col2im(W2^T @ gy2).
    For stride 1 gx is computed as what it equals, a convolution of gy with the flipped,
    transposed kernel W[o, c, kh-1-i, kw-1-j] and padding k-1-p: an im2col of gy and a product
    with K = kh*kw*O instead of a product with K = O and a 9-fold col2im.
    The work is done in batch slices that fit in cache, and the column matrix is recomputed in
    backward rather than kept (it is kh*kw times the input).
    """

    def __init__(self, stride=1, padding=0):
        self.sy, self.sx = _pair(stride, "stride")
        self.ph, self.pw = _pair(padding, "padding")

    def forward(self, x, W, b=None):
        xp = backend.get_array_module(x)
        n, c, h, w = x.shape
        o, _, kh, kw = W.shape
        ho, wo = output_size(h, kh, self.sy, self.ph), output_size(w, kw, self.sx, self.pw)
        W2 = W.transpose(0, 2, 3, 1).reshape(o, kh * kw * c)  # (O, kh*kw*C), tap-major like col
        y = xp.empty((n, o, ho, wo), x.dtype)
        for rows in _batch_chunks(xp, n, kh * kw * c * ho * wo * x.itemsize):
            col = self._im2col(x[rows], kh, kw, self.sy, self.sx, self.ph, self.pw)
            y2 = W2 @ col.reshape(kh * kw * c, -1)  # (O, nb*Ho*Wo)
            y[rows] = y2.reshape(o, -1, ho, wo).transpose(1, 0, 2, 3)  # (nb, O, Ho, Wo)
        if b is not None:
            y += b.reshape(1, o, 1, 1)
        if any(self.needs_input_grad):
            self.x, self.W = x, W
        return y

    @staticmethod
    def _im2col(x, kh, kw, sy, sx, ph, pw):
        xp = backend.get_array_module(x)
        n, c, h, w = x.shape
        shape = (kh, kw, c, n, output_size(h, kh, sy, ph), output_size(w, kw, sx, pw))
        return im2col(x, kh, kw, sy, sx, ph, pw, out=workspace(xp, shape, x.dtype, "col"))

    def backward(self, gy):
        x, W = self.x, self.W
        xp = backend.get_array_module(gy)
        n, c, h, w = x.shape
        o, _, kh, kw = W.shape
        _, _, ho, wo = gy.shape
        need_gx, need_gW = self.needs_input_grad[0], self.needs_input_grad[1]
        W2 = W.transpose(0, 2, 3, 1).reshape(o, kh * kw * c)  # (O, kh*kw*C)
        # gx by a stride-1 convolution of gy needs padding k-1-p >= 0
        transposed = self.sy == 1 and self.sx == 1 and self.ph < kh and self.pw < kw
        if transposed:
            Wt = W[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(kh * kw * o, c).T  # (C, kh*kw*O)
        gx = xp.empty(x.shape, x.dtype) if need_gx else None
        gW = xp.zeros((o, kh * kw * c), W.dtype) if need_gW else None
        for rows in _batch_chunks(xp, n, kh * kw * max(c, o) * ho * wo * x.itemsize):
            gyc = gy[rows]
            gy2 = xp.ascontiguousarray(gyc.transpose(1, 0, 2, 3)).reshape(o, -1)  # (O, nb*Ho*Wo)
            if need_gW:
                col = self._im2col(x[rows], kh, kw, self.sy, self.sx, self.ph, self.pw)
                gW += gy2 @ col.reshape(kh * kw * c, -1).T  # (O, kh*kw*C)
            if need_gx and transposed:
                colg = self._im2col(gyc, kh, kw, 1, 1, kh - 1 - self.ph, kw - 1 - self.pw)
                gx2 = Wt @ colg.reshape(kh * kw * o, -1)  # (C, nb*H*W)
                gx[rows] = gx2.reshape(c, -1, h, w).transpose(1, 0, 2, 3)  # (nb, C, H, W)
            elif need_gx:
                gcol = W2.T @ gy2  # (kh*kw*C, nb*Ho*Wo)
                gx[rows] = col2im(gcol.reshape(kh, kw, c, -1, ho, wo), x[rows].shape,
                                  self.sy, self.sx, self.ph, self.pw)
        if need_gW:
            gW = xp.ascontiguousarray(gW.reshape(o, kh, kw, c).transpose(0, 3, 1, 2))  # (O, C, kh, kw)
        gb = None
        if len(self.needs_input_grad) > 2 and self.needs_input_grad[2]:
            gb = gy.sum(axis=(0, 2, 3))
        return (gx, gW, gb) if len(self.needs_input_grad) > 2 else (gx, gW)


def conv2d(x, W, b=None, stride=1, padding=0):
    """2-D convolution (cross-correlation, as in every framework) of NCHW ``x`` with ``W`` (O, C, kh, kw).

    ``stride`` and ``padding`` are ints or (vertical, horizontal) pairs; ``b`` is (O,) or None.
    """
    sy, sx = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if x.ndim != 4:
        raise ValueError(f"conv2d expects x of shape (N, C, H, W), got {tuple(x.shape)}")
    if W.ndim != 4:
        raise ValueError(f"conv2d expects W of shape (O, C, kh, kw), got {tuple(W.shape)}")
    if x.shape[1] != W.shape[1]:
        raise ValueError(f"conv2d: x has {x.shape[1]} channels (shape {tuple(x.shape)}) but W expects "
                         f"{W.shape[1]} (shape {tuple(W.shape)})")
    if sy < 1 or sx < 1 or ph < 0 or pw < 0:
        raise ValueError(f"conv2d: stride must be >= 1 and padding >= 0, got stride={stride}, padding={padding}")
    kh, kw = W.shape[2:]
    if kh > x.shape[2] + 2 * ph or kw > x.shape[3] + 2 * pw:
        raise ValueError(f"conv2d: kernel {kh}x{kw} is larger than the padded input "
                         f"{x.shape[2] + 2 * ph}x{x.shape[3] + 2 * pw} (x {tuple(x.shape)}, padding {padding})")
    if b is not None and tuple(b.shape) != (W.shape[0],):
        raise ValueError(f"conv2d: bias must have shape ({W.shape[0]},), got {tuple(b.shape)}")
    f = Conv2d((sy, sx), (ph, pw))
    return f(x, W) if b is None else f(x, W, b)
