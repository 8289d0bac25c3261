"""Convolution geometry shared by convolution and pooling (as ``chainer/utils/conv.py``).

- ``pair``: an int or a pair of ints as a (vertical, horizontal) pair;
- ``output_size``: how many positions a window of size k takes along an axis;
- ``col_shape``: the shape of im2col's result;
- ``pad2d``: pad the two spatial axes of an NCHW array;
- ``im2col`` / ``col2im``: the copies that turn a convolution into one matrix product, and
  their adjoint;
- ``workspace`` / ``clear_workspace``: reused scratch buffers for the column matrices.

im2col copies, for every kernel tap (i, j), the input pixels that tap sees into one block of
a matrix: a loop over the kh x kw taps, each one strided slice of the padded input (tap (i, j)
of a kernel dilated by d starts at (d*i, d*j)). col2im, its adjoint, is the same loop with
``+=``. The column layout is (kh, kw, C, N, Ho, Wo), so that a weight matrix W2 = (O, kh*kw*C)
multiplies it in one product whose long side is contiguous. A grouped convolution gets
(G, kh, kw, C/G, N, Ho, Wo): each group's channels a block of their own, so that the G
per-group products are one batched matrix product.

On CuPy both are one elementwise kernel each, beside their NumPy loops and tested against
them: ``minires_im2col`` has one thread per element of the column matrix, which unravels its
index into (group, tap, channel, image, output pixel) and reads the one input pixel it copies
(a zero where that falls in the padding); ``minires_col2im`` is a gather, one thread per input
pixel summing the column entries that copied it (in im2col's tap order, so deterministic and
without atomics): tap (i, j) of output (y, x) read padded pixel (y*sy + i*dy, x*sx + j*dx), so
pixel row r was read by output row (r - i*dy) / sy where that divides and lies in [0, Ho).
"""
import numpy

from .. import backend


def pair(v, name):
    """``v`` as a (vertical, horizontal) pair: 3 -> (3, 3), (2, 1) -> (2, 1).

    ``name`` (e.g. "stride") is used in the error for anything else.
    """
    if isinstance(v, (int, numpy.integer)) and not isinstance(v, bool):
        return int(v), int(v)
    try:
        v = tuple(v)
    except TypeError:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}") from None
    if len(v) != 2 or not all(isinstance(n, (int, numpy.integer)) and not isinstance(n, bool) for n in v):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return int(v[0]), int(v[1])


def output_size(size, k, s, p, d=1):
    """Positions of a window of size ``k`` dilated by ``d`` (spanning d*(k-1) + 1), with stride ``s``,
    over ``size`` padded by ``p`` on each side."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def pad2d(x, ph, pw, value=0):
    """x (N, C, H, W) -> (N, C, H + 2ph, W + 2pw), borders filled with ``value``."""
    if ph == 0 and pw == 0:
        return x
    xp = backend.get_array_module(x)
    n, c, h, w = x.shape
    out = xp.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def col_shape(x_shape, kh, kw, sy, sx, ph, pw, dy=1, dx=1, groups=1):
    """The shape of ``im2col``'s result for an input of ``x_shape`` (N, C, H, W)."""
    n, c, h, w = x_shape
    ho, wo = output_size(h, kh, sy, ph, dy), output_size(w, kw, sx, pw, dx)
    if groups == 1:
        return (kh, kw, c, n, ho, wo)
    return (groups, kh, kw, c // groups, n, ho, wo)


# The geometry both kernels take, as int32 scalars in this order: x (N, C, H, W), output (Ho, Wo),
# kernel (kh, kw), stride, padding, dilation, groups (C = groups * C/G).
_GEOMETRY = ("int32 n, int32 c, int32 h, int32 w, int32 ho, int32 wo, int32 kh, int32 kw, "
             "int32 sy, int32 sx, int32 ph, int32 pw, int32 dy, int32 dx, int32 groups")

_im2col_kernel = backend.ElementwiseKernel(
    "raw T x, " + _GEOMETRY, "T col",
    """
    // i indexes col (G, kh, kw, C/G, N, Ho, Wo), C order: i = q * Ho*Wo + r, one 64-bit
    // division, then 32-bit ones (q < kh*kw*C*N < 2^31, checked on the host)
    const int cg = c / groups;
    const int q = (int)(i / (ho * wo));
    const int r = (int)(i - (ptrdiff_t)q * (ho * wo));
    const int ox = r % wo;
    const int oy = r / wo;
    int t = q;
    const int b = t % n; t /= n;
    const int ch = t % cg; t /= cg;
    const int j = t % kw; t /= kw;
    const int k = t % kh;
    const int g = t / kh;
    const int yy = oy * sy + k * dy - ph;  // in the unpadded input
    const int xx = ox * sx + j * dx - pw;
    if (0 <= yy && yy < h && 0 <= xx && xx < w) {
        col = x[(((ptrdiff_t)b * c + g * cg + ch) * h + yy) * w + xx];
    } else {
        col = (T)0;
    }
    """,
    "minires_im2col")

_col2im_kernel = backend.ElementwiseKernel(
    "raw T col, " + _GEOMETRY, "T x",
    """
    // i indexes x (N, C, H, W), C order: i = q * H*W + r, q = b*C + ch < 2^31 (checked on the
    // host); (yy, xx) is the pixel in the padded input
    const int cg = c / groups;
    const int q = (int)(i / (h * w));
    const int r = (int)(i - (ptrdiff_t)q * (h * w));
    const int xx = r % w + pw;
    const int yy = r / w + ph;
    const int ch = q % c;
    const int b = q / c;
    const int g = ch / cg;
    T acc = (T)0;
    for (int k = 0; k < kh; ++k) {
        const int ty = yy - k * dy;  // oy * sy for the output row whose tap k read this pixel
        if (ty < 0) break;
        if (ty % sy != 0 || ty / sy >= ho) continue;
        for (int j = 0; j < kw; ++j) {
            const int tx = xx - j * dx;
            if (tx < 0) break;
            if (tx % sx != 0 || tx / sx >= wo) continue;
            acc += col[(((((ptrdiff_t)(g * kh + k) * kw + j) * cg + ch % cg) * n + b) * ho + ty / sy) * wo + tx / sx];
        }
    }
    x = acc;
    """,
    "minires_col2im")


def _geometry(n, c, h, w, ho, wo, kh, kw, sy, sx, ph, pw, dy, dx, groups):
    """The kernels' scalar arguments (``_GEOMETRY``), typed int32."""
    if kh * kw * c * n >= 2 ** 31 or max(h * w, ho * wo) >= 2 ** 31:
        raise ValueError(f"im2col/col2im on CuPy index with 32-bit integers: {n} images of {c} channels with "
                         f"a {kh}x{kw} kernel ({h}x{w} -> {ho}x{wo}) is too large; use a smaller batch")
    return tuple(numpy.int32(v) for v in (n, c, h, w, ho, wo, kh, kw, sy, sx, ph, pw, dy, dx, groups))


def im2col(x, kh, kw, sy, sx, ph, pw, dy=1, dx=1, groups=1, out=None):
    """x (N, C, H, W) -> col (kh, kw, C, N, Ho, Wo), col[i, j, c, n, y, x] = xpad[n, c, y*sy + i*dy, x*sx + j*dx].

    (dy, dx) is the dilation. With ``groups`` G > 1, col is (G, kh, kw, C/G, N, Ho, Wo) with
    col[g, i, j, c] the tap (i, j) of channel g*C/G + c. ``out``, if given, is the array to fill
    (e.g. a ``workspace``) instead of a new one.
    """
    xp = backend.get_array_module(x)
    n, c, h, w = x.shape
    shape = col_shape(x.shape, kh, kw, sy, sx, ph, pw, dy, dx, groups)
    ho, wo = shape[-2:]
    col = xp.empty(shape, x.dtype) if out is None else out
    if xp is not numpy:  # one thread per entry of col, padding included
        _im2col_kernel(xp.ascontiguousarray(x), *_geometry(n, c, h, w, ho, wo, kh, kw, sy, sx, ph, pw, dy, dx, groups),
                       col)
        return col
    xpad = pad2d(x, ph, pw)
    xt = xpad.reshape(n, groups, c // groups, *xpad.shape[2:]).transpose(1, 2, 0, 3, 4)  # (G, C/G, N, Hp, Wp) view
    colg = col.reshape(groups, kh, kw, c // groups, n, ho, wo)  # a view, G = 1 included
    for i in range(kh):
        for j in range(kw):
            colg[:, i, j] = xt[..., i * dy:i * dy + sy * ho:sy, j * dx:j * dx + sx * wo:sx]
    return col


def col2im(col, x_shape, sy, sx, ph, pw, dy=1, dx=1):
    """The adjoint of im2col: col (kh, kw, C, N, Ho, Wo) or grouped (G, kh, kw, C/G, N, Ho, Wo)
    -> x (N, C, H, W), overlapping taps summed."""
    xp = backend.get_array_module(col)
    if col.ndim == 6:
        col = col[None]  # one group
    groups, kh, kw, cg, n, ho, wo = col.shape
    _, _, h, w = x_shape
    if xp is not numpy:  # one thread per pixel of x, gathering its taps
        x = xp.empty((n, groups * cg, h, w), col.dtype)
        _col2im_kernel(xp.ascontiguousarray(col),
                       *_geometry(n, groups * cg, h, w, ho, wo, kh, kw, sy, sx, ph, pw, dy, dx, groups), x)
        return x
    xt = xp.zeros((groups, cg, n, h + 2 * ph, w + 2 * pw), col.dtype)  # (G, C/G, N, Hp, Wp)
    for i in range(kh):
        for j in range(kw):
            xt[..., i * dy:i * dy + sy * ho:sy, j * dx:j * dx + sx * wo:sx] += col[:, i, j]
    x = xt.reshape(groups * cg, n, h + 2 * ph, w + 2 * pw)[:, :, ph:ph + h, pw:pw + w]  # (C, N, H, W)
    return xp.ascontiguousarray(x.transpose(1, 0, 2, 3))  # (N, C, H, W)


_workspace = {}


def workspace(xp, shape, dtype, role):
    """A scratch array of ``shape`` (contents undefined), carved from one buffer per ``role``.

    The column matrices are the largest arrays of a training step (kh*kw times their input).
    Reusing one buffer, grown to the largest request, saves the page faults of fresh
    allocations (on NumPy they cost more than filling the matrix) and keeps the memory that is
    written next already in cache. Two arrays alive at once need two roles.
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
