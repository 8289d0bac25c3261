"""2-D convolution as im2col + one matrix product (and its backward through col2im).

A convolution slides a (C, kh, kw) filter over the image. im2col copies, for every kernel
tap (i, j), the input pixels that tap sees into one row block of a matrix, so that the whole
convolution becomes a single matrix product with the (O, kh*kw*C) weight matrix. The copies are
a loop over the kh x kw taps, each one strided slice of the padded input; col2im, its adjoint,
is the same loop with ``+=``.

Layout: the column matrix is (kh, kw, C, N, Ho, Wo), so that ``W2 @ col`` with
W2 = (O, kh*kw*C) gives (O, N*Ho*Wo) in one product whose long side is contiguous.
"""
from .. import backend
from ..autograd import Function

_workspace = {}


def workspace(xp, shape, dtype, role):
    """A scratch array reused from call to call (contents undefined).

    The column matrices are the largest arrays of a training step (9x the input); handing out
    the same buffer every time saves the page faults of a fresh allocation, which on NumPy cost
    more than filling the matrix itself.
    """
    key = (xp.__name__, shape, str(dtype), role)
    buf = _workspace.get(key)
    if buf is None:
        buf = _workspace[key] = xp.empty(shape, dtype)
    return buf


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


class Conv2d(Function):
    """y[n, o] = sum_{c, i, j} W[o, c, i, j] * xpad[n, c, y*s + i, x*s + j] + b[o].

    x (N, C, H, W), W (O, C, kh, kw), b (O,) -> y (N, O, Ho, Wo), Ho = (H + 2p - kh) // s + 1.
    Backward: gW = gy2 @ col^T, gb = sum of gy over (N, Ho, Wo), gx = col2im(W2^T @ gy2), where
    gy2 is gy as an (O, N*Ho*Wo) matrix. The column matrix is recomputed in backward rather than
    kept: it is 9x the input, and keeping one per layer would dominate a step's memory.
    """

    def __init__(self, stride=1, padding=0):
        self.sy, self.sx = _pair(stride, "stride")
        self.ph, self.pw = _pair(padding, "padding")

    def forward(self, x, W, b=None):
        xp = backend.get_array_module(x)
        n, c, h, w = x.shape
        o, _, kh, kw = W.shape
        ho, wo = output_size(h, kh, self.sy, self.ph), output_size(w, kw, self.sx, self.pw)
        col = im2col(x, kh, kw, self.sy, self.sx, self.ph, self.pw,
                     out=workspace(xp, (kh, kw, c, n, ho, wo), x.dtype, "col"))
        W2 = W.transpose(0, 2, 3, 1).reshape(o, kh * kw * c)  # (O, kh*kw*C), tap-major like col
        y = W2 @ col.reshape(kh * kw * c, n * ho * wo)  # (O, N*Ho*Wo)
        y = xp.ascontiguousarray(y.reshape(o, n, ho, wo).transpose(1, 0, 2, 3))  # (N, O, Ho, Wo)
        if b is not None:
            y += b.reshape(1, o, 1, 1)
        if any(self.needs_input_grad):
            self.x, self.W = x, W
        return y

    def backward(self, gy):
        x, W = self.x, self.W
        xp = backend.get_array_module(gy)
        n, c, h, w = x.shape
        o, _, kh, kw = W.shape
        _, _, ho, wo = gy.shape
        gy2 = xp.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(o, n * ho * wo)  # (O, N*Ho*Wo)
        gx = gW = gb = None
        if self.needs_input_grad[1]:
            col = im2col(x, kh, kw, self.sy, self.sx, self.ph, self.pw,
                         out=workspace(xp, (kh, kw, c, n, ho, wo), x.dtype, "col"))
            gW = gy2 @ col.reshape(kh * kw * c, n * ho * wo).T  # (O, kh*kw*C)
            gW = xp.ascontiguousarray(gW.reshape(o, kh, kw, c).transpose(0, 3, 1, 2))  # (O, C, kh, kw)
        if len(self.needs_input_grad) > 2 and self.needs_input_grad[2]:
            gb = gy2.sum(axis=1)
        if self.needs_input_grad[0]:
            W2 = W.transpose(0, 2, 3, 1).reshape(o, kh * kw * c)  # (O, kh*kw*C)
            gcol = xp.matmul(W2.T, gy2, out=workspace(xp, (kh * kw * c, n * ho * wo), gy.dtype, "gcol"))
            gx = col2im(gcol.reshape(kh, kw, c, n, ho, wo), x.shape, self.sy, self.sx, self.ph, self.pw)
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
