"""Winograd F(2x2, 3x3) convolution (Lavin & Gray 2015) for 3x3 kernels, stride 1.

Each 2x2 block of outputs is computed from the 4x4 input tile d under it as
    Y = A^T [ sum_c (G g_c G^T) * (B^T d_c B) ] A        (* element-wise, 4x4)
with the fixed matrices
    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]],
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].
So the convolution becomes 16 matrix products, one per tile position (xi, nu):
    M[xi, nu] = U[xi, nu] @ V[xi, nu],  U = G W G^T as (16, O, C),  V = B^T d B as (16, C, P),
with P = N * ceil(Ho/2) * ceil(Wo/2) tiles: 16*O*C*P = 4*O*C*N*H*W multiplications, 2.25x
fewer than im2col's 9*O*C*N*H*W, paid for by the input and output transforms (passes over
4x the input and 4x the output). The transforms are written as sums of strided slices, as
im2col is. Backward runs the adjoints of the same linear maps:
    gM = A gY A^T,  gU[k] = gM[k] @ V[k]^T,  gV[k] = U[k]^T @ gM[k],
    gW = G^T gU G,  gd = B gV B^T, summed into gx where the 4x4 tiles overlap (they step by 2).
"""
import numpy

from .. import backend
from ..autograd import Function
from ..utils import threads
from .dtypes import check_floating

_G = numpy.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=numpy.float64)
# G g G^T for a 3x3 g flattened to 9 values is kron(G, G) @ g: (16, 9)
_GG = numpy.kron(_G, _G)


def _rows_bt(r):
    """B^T applied along a list of 4 arrays (the tile's rows or columns): 4 arrays out."""
    return [r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]]


def _rows_b(h):
    """B (the adjoint of ``_rows_bt``) along a list of 4 arrays."""
    return [h[0], h[1] - h[2] + h[3], h[2] + h[1] - h[0], -h[3]]


def _rows_at(m):
    """A^T along a list of 4 arrays: 2 arrays out."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def _rows_a(g):
    """A (the adjoint of ``_rows_at``) along a list of 2 arrays: 4 arrays out."""
    return [g[0], g[0] + g[1], g[0] - g[1], -g[1]]


def _tiles(h, w):
    return (h + 1) // 2, (w + 1) // 2


def input_transform(x, ph, pw):
    """x (N, C, H, W) -> V (16, C, N*th*tw): B^T d B for every 4x4 tile d of the padded input."""
    xp = backend.get_array_module(x)
    n, c, h, w = x.shape
    th, tw = _tiles(h + 2 * ph - 2, w + 2 * pw - 2)
    # pad to 2*th + 2 rows and 2*tw + 2 columns (an odd output size gets one more zero row/column)
    xpad = xp.zeros((c, n, 2 * th + 2, 2 * tw + 2), x.dtype)  # (C, N, Hp, Wp), channel-major like V
    xpad[:, :, ph:ph + h, pw:pw + w] = x.transpose(1, 0, 2, 3)
    r = [xpad[:, :, i:i + 2 * th:2, :] for i in range(4)]  # the 4 tile rows: (C, N, th, Wp) views
    rows = _rows_bt(r)  # B^T along the rows
    V = xp.empty((4, 4, c, n, th, tw), x.dtype)
    for xi, t in enumerate(rows):  # B along the columns (as in _rows_bt), written straight into V
        col = [t[..., j:j + 2 * tw:2] for j in range(4)]  # (C, N, th, tw) views
        xp.subtract(col[0], col[2], out=V[xi, 0])
        xp.add(col[1], col[2], out=V[xi, 1])
        xp.subtract(col[2], col[1], out=V[xi, 2])
        xp.subtract(col[1], col[3], out=V[xi, 3])
    return V.reshape(16, c, n * th * tw)


def input_transform_adjoint(gV, x_shape, ph, pw):
    """gV (16, C, N*th*tw) -> gx (N, C, H, W): the adjoint of ``input_transform``."""
    xp = backend.get_array_module(gV)
    n, c, h, w = x_shape
    th, tw = _tiles(h + 2 * ph - 2, w + 2 * pw - 2)
    gV = gV.reshape(4, 4, c, n, th, tw)
    gpad = xp.zeros((c, n, 2 * th + 2, 2 * tw + 2), gV.dtype)  # (C, N, Hp, Wp)
    # B along nu then along xi: d[i, j] = sum_xi BT[xi, i] sum_nu BT[nu, j] gV[xi, nu]
    rows = [_rows_b([gV[xi, nu] for nu in range(4)]) for xi in range(4)]  # rows[xi][j]: (C, N, th, tw)
    for j in range(4):
        for i, d in enumerate(_rows_b([rows[xi][j] for xi in range(4)])):
            gpad[:, :, i:i + 2 * th:2, j:j + 2 * tw:2] += d  # the tiles overlap by 2: sum
    return xp.ascontiguousarray(gpad[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3))  # (N, C, H, W)


def weight_transform(W):
    """W (O, C, 3, 3) -> U (16, O, C) = G W G^T for every (o, c)."""
    xp = backend.get_array_module(W)
    o, c = W.shape[:2]
    U = W.reshape(o * c, 9) @ xp.asarray(_GG.T, W.dtype)  # (O*C, 16): one product for all (o, c)
    return xp.ascontiguousarray(U.T.reshape(16, o, c))  # (16, O, C)


def output_transform(M, n, o, th, tw, out):
    """M (16, O, N*th*tw) -> out (N, O, Ho, Wo): A^T m A for every tile, cropped to Ho x Wo."""
    xp = backend.get_array_module(M)
    M = M.reshape(4, 4, o, n, th, tw)
    ho, wo = out.shape[2:]
    y = out if (ho, wo) == (2 * th, 2 * tw) else xp.empty((n, o, 2 * th, 2 * tw), M.dtype)
    rows = _rows_at([M[xi] for xi in range(4)])  # 2 x (4, O, N, th, tw)
    for a, r in enumerate(rows):
        for b, v in enumerate(_rows_at([r[nu] for nu in range(4)])):  # (O, N, th, tw)
            y[:, :, a::2, b::2] = v.transpose(1, 0, 2, 3)
    if y is not out:  # an odd output size: the last tile row or column is cut off
        out[...] = y[:, :, :ho, :wo]
    return out


def output_transform_adjoint(gy, th, tw):
    """gy (N, O, Ho, Wo) -> gM (16, O, N*th*tw): the adjoint of ``output_transform``."""
    xp = backend.get_array_module(gy)
    n, o, ho, wo = gy.shape
    g = xp.zeros((o, n, 2 * th, 2 * tw), gy.dtype)  # (O, N, 2th, 2tw), zero beyond the crop
    g[:, :, :ho, :wo] = gy.transpose(1, 0, 2, 3)
    gM = xp.empty((4, 4, o, n, th, tw), gy.dtype)
    rows = _rows_a([g[:, :, a::2, :] for a in range(2)])  # 4 x (O, N, th, 2tw)
    for xi, r in enumerate(rows):
        for nu, v in enumerate(_rows_a([r[..., b::2] for b in range(2)])):
            gM[xi, nu] = v
    return gM.reshape(16, o, n * th * tw)


class Conv2dWinogradFunction(Function):
    """y = conv2d(x, W, b, stride=1, padding=p) for W (O, C, 3, 3) by Winograd F(2x2, 3x3).

    x (N, C, H, W) -> y (N, O, H + 2ph - 2, W + 2pw - 2). See the module docstring for the maths.
    As in ``Conv2dFunction`` the work runs in cache-sized batch slices on every core, and V (the
    transformed input, 4x the input) is recomputed in backward rather than kept.
    """

    # stride, dilation and groups, always 1 (named as in Conv2dFunction, for the ONNX exporter):
    # conv2d falls back to im2col for every other convolution
    sy = sx = dy = dx = groups = 1

    def __init__(self, padding=(1, 1)):
        self.ph, self.pw = padding

    def forward(self, x, W, b=None):
        xp = backend.get_array_module(x)
        n, c, h, w = x.shape
        o = W.shape[0]
        ho, wo = h + 2 * self.ph - 2, w + 2 * self.pw - 2
        th, tw = _tiles(ho, wo)
        U = weight_transform(W)  # (16, O, C)
        y = xp.empty((n, o, ho, wo), x.dtype)

        def rows_of_y(k, rows):
            M = U @ input_transform(x[rows], self.ph, self.pw)  # (16, O, nb*th*tw)
            output_transform(M, rows.stop - rows.start, o, th, tw, out=y[rows])

        threads.over_slices(rows_of_y, xp, n, 16 * max(c, o) * th * tw * x.itemsize)
        self.has_bias = b is not None
        if self.has_bias:
            y += b.reshape(1, o, 1, 1)
        if any(self.needs_input_grad):
            self.x, self.W = x, W
        return y

    def backward(self, gy):
        x, W = self.x, self.W
        xp = backend.get_array_module(gy)
        n, c, h, w = x.shape
        o = W.shape[0]
        th, tw = _tiles(*gy.shape[2:])
        need_gx, need_gW = self.needs_input_grad[0], self.needs_input_grad[1]
        U = weight_transform(W)  # (16, O, C)
        gx = xp.empty(x.shape, x.dtype) if need_gx else None

        def grads(k, rows):
            """gx's rows; these rows' part of gU (16, O, C)."""
            gM = output_transform_adjoint(gy[rows], th, tw)  # (16, O, nb*th*tw)
            if need_gx:
                gx[rows] = input_transform_adjoint(U.transpose(0, 2, 1) @ gM, x[rows].shape, self.ph, self.pw)
            if not need_gW:
                return None
            return (gM @ input_transform(x[rows], self.ph, self.pw).transpose(0, 2, 1),)  # (16, O, C)

        sums = threads.over_slices(grads, xp, n, 16 * max(c, o) * th * tw * x.itemsize)
        gW = None
        if need_gW:
            gU = sums[0]
            gW = (gU.reshape(16, o * c).T @ xp.asarray(_GG, W.dtype)).reshape(o, c, 3, 3)  # G^T gU G
        if not self.has_bias:
            return gx, gW
        gb = gy.sum(axis=(0, 2, 3)) if self.needs_input_grad[2] else None
        return gx, gW, gb


def conv2d_winograd(x, W, b=None, padding=1):
    """3x3, stride-1 convolution of x (N, C, H, W) with W (O, C, 3, 3) by Winograd F(2x2, 3x3)."""
    check_floating("conv2d_winograd", x, W, b)
    if W.shape[2:] != (3, 3):
        raise ValueError(f"conv2d_winograd needs a 3x3 kernel, got W of shape {tuple(W.shape)}")
    ph, pw = (padding, padding) if isinstance(padding, int) else tuple(padding)
    f = Conv2dWinogradFunction((ph, pw))
    return f(x, W) if b is None else f(x, W, b)
