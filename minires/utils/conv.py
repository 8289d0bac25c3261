"""Convolution geometry shared by convolution and pooling (as ``chainer/utils/conv.py``).

- ``pair``: an int or a pair of ints as a (vertical, horizontal) pair;
- ``output_size``: how many positions a window of size k takes along an axis;
- ``pad2d``: pad the two spatial axes of an NCHW array;
- ``im2col`` / ``col2im``: the copies that turn a convolution into one matrix product, and
  their adjoint;
- ``workspace`` / ``clear_workspace``: reused scratch buffers for the column matrices.

im2col copies, for every kernel tap (i, j), the input pixels that tap sees into one block of
a matrix: a loop over the kh x kw taps, each one strided slice of the padded input. col2im,
its adjoint, is the same loop with ``+=``. The column layout is (kh, kw, C, N, Ho, Wo), so that
a weight matrix W2 = (O, kh*kw*C) multiplies it in one product whose long side is contiguous.
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


def output_size(size, k, s, p):
    """Positions of a window of size ``k`` with stride ``s`` over ``size`` padded by ``p`` on each side."""
    return (size + 2 * p - k) // s + 1


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
    """x (N, C, H, W) -> col (kh, kw, C, N, Ho, Wo) with col[i, j, c, n, y, x] = xpad[n, c, y*sy + i, x*sx + j].

    ``out``, if given, is the array to fill (e.g. a ``workspace``) instead of a new one.
    """
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
