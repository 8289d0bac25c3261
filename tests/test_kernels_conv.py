"""The convolution's CuPy kernels, minires_im2col and minires_col2im (minires/utils/conv.py), checked
without a GPU: compiled by NVRTC for sm_80 and sm_90, and their generated source run on the CPU in
every element order (kernel_harness) against their NumPy twins, the tap loops of im2col/col2im.

The CPU runs go through im2col/col2im themselves: their CuPy branch is taken with a stand-in
array module whose arrays are NumPy's, and the kernel call is replaced by the harness's CPU run of
that same kernel with the same arguments. So the arguments im2col/col2im pass (geometry, order,
dtypes, the ``out=`` buffer) are checked with the kernels, and so is the whole convolution,
forward and backward, through its public functions.
"""
import types

import numpy as np
import pytest
from kernel_harness import ORDERS, compile_nvrtc, run_on_cpu

from minires import Tensor
from minires import functional as F
from minires.utils import conv as conv_utils

# (x shape, kh, kw, stride, padding, dilation, groups): odd sizes, kh != kw, padding 0/1/2,
# strides 1/2, dilation 1/2, groups 1/2/4 and depthwise (groups = C)
CASES = [
    ((2, 3, 7, 5), 3, 3, (1, 1), (0, 0), (1, 1), 1),
    ((1, 4, 9, 8), 3, 2, (2, 2), (1, 1), (1, 1), 2),
    ((2, 8, 7, 9), 2, 3, (1, 2), (2, 1), (2, 1), 4),
    ((3, 5, 6, 7), 3, 3, (2, 1), (2, 2), (2, 2), 5),   # depthwise
    ((1, 6, 11, 5), 1, 3, (1, 1), (0, 2), (1, 2), 3),
    ((2, 4, 5, 6), 3, 1, (2, 2), (1, 0), (2, 1), 4),   # depthwise, strided and dilated
]
IDS = [f"k{c[1]}x{c[2]}-s{c[3][0]}{c[3][1]}-p{c[4][0]}{c[4][1]}-d{c[5][0]}{c[5][1]}-g{c[6]}" for c in CASES]
KERNELS = {"minires_im2col": conv_utils._im2col_kernel, "minires_col2im": conv_utils._col2im_kernel}
TOL = {np.float64: 1e-12, np.float32: 1e-6}


def geometry(case):
    """im2col's positional arguments after x: kh, kw, sy, sx, ph, pw, dy, dx, groups."""
    _, kh, kw, (sy, sx), (ph, pw), (dy, dx), groups = case
    return kh, kw, sy, sx, ph, pw, dy, dx, groups


@pytest.fixture
def on_kernels(monkeypatch):
    """A function order -> None that makes im2col/col2im take their CuPy branch, with NumPy
    arrays, the kernels run on the CPU by the harness with elements visited in ``order``; the
    arguments of every kernel call are recorded in the returned list."""
    calls = []
    stand_in = types.SimpleNamespace(__name__="cupy_stand_in", empty=np.empty, ascontiguousarray=np.ascontiguousarray)

    def use(order):
        def runner(kernel):
            def call(*args):
                calls.append((kernel.name, args))
                out = args[-1]
                out[...] = run_on_cpu(kernel, args, order)  # the output, filled as CuPy fills it
                return out
            return call

        monkeypatch.setattr(conv_utils, "backend", types.SimpleNamespace(get_array_module=lambda *a: stand_in))
        monkeypatch.setattr(conv_utils, "_im2col_kernel", runner(KERNELS["minires_im2col"]))
        monkeypatch.setattr(conv_utils, "_col2im_kernel", runner(KERNELS["minires_col2im"]))
        return calls

    return use


def numpy_im2col_col2im(case, dtype, seed=0):
    """x, col = im2col(x), a random gcol like col and col2im(gcol), all by the NumPy tap loops."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case[0]).astype(dtype)
    col = conv_utils.im2col(x, *geometry(case))
    gcol = rng.standard_normal(col.shape).astype(dtype)
    kh, kw, sy, sx, ph, pw, dy, dx, groups = geometry(case)
    gx = conv_utils.col2im(gcol, x.shape, sy, sx, ph, pw, dy, dx)
    return x, col, gcol, gx


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_conv_kernels_compile_with_nvrtc(on_kernels, name, dtype, arch):
    x, _, gcol, _ = numpy_im2col_col2im(CASES[2], dtype)
    calls = on_kernels("forward")
    kh, kw, sy, sx, ph, pw, dy, dx, groups = geometry(CASES[2])
    conv_utils.im2col(x, *geometry(CASES[2]))
    conv_utils.col2im(gcol, x.shape, sy, sx, ph, pw, dy, dx)
    args = dict(calls)[name]  # the arguments im2col/col2im pass
    compile_nvrtc(KERNELS[name], args, arch)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_im2col_kernel_equals_numpy_tap_loop(on_kernels, case, order, dtype):
    x, col, _, _ = numpy_im2col_col2im(case, dtype)
    on_kernels(order)
    # into a workspace-like buffer holding NaNs: every entry, padding zeros included, is written
    out = np.full(col.shape, np.nan, dtype)
    got = conv_utils.im2col(x, *geometry(case), out=out)
    assert got is out and got.dtype == dtype
    np.testing.assert_array_equal(got, col)  # a copy: exact


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_col2im_kernel_equals_numpy_tap_loop(on_kernels, case, order, dtype):
    x, _, gcol, gx = numpy_im2col_col2im(case, dtype)
    on_kernels(order)
    kh, kw, sy, sx, ph, pw, dy, dx, groups = geometry(case)
    got = conv_utils.col2im(gcol, x.shape, sy, sx, ph, pw, dy, dx)
    assert got.shape == x.shape and got.dtype == dtype
    np.testing.assert_allclose(got, gx, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_col2im_kernel_is_the_adjoint_of_im2col_kernel(on_kernels, case):
    """<im2col(x), c> == <x, col2im(c)>, both by the kernels (float64)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(case[0])
    on_kernels("shuffled")
    kh, kw, sy, sx, ph, pw, dy, dx, groups = geometry(case)
    col = conv_utils.im2col(x, *geometry(case))
    c = rng.standard_normal(col.shape)
    back = conv_utils.col2im(c, x.shape, sy, sx, ph, pw, dy, dx)
    assert np.sum(col * c) == pytest.approx(np.sum(x * back), rel=1e-12)


@pytest.mark.parametrize("conv", [F.conv2d, F.conv2d_simple], ids=["fast", "simple"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_conv2d_through_the_kernels_equals_numpy(on_kernels, case, conv):
    """Forward and backward of the convolution with every im2col/col2im run by the kernels:
    the stride-1 input gradient (an im2col of gy) and the strided one (col2im) included."""
    shape, kh, kw, stride, padding, dilation, groups = case
    rng = np.random.default_rng(2)
    x0 = rng.standard_normal(shape)
    W0 = rng.standard_normal((2 * groups, shape[1] // groups, kh, kw))
    b0 = rng.standard_normal(2 * groups)

    def run():
        x, W, b = (Tensor(a.copy(), requires_grad=True) for a in (x0, W0, b0))
        y = conv(x, W, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
        y.backward(np.random.default_rng(3).standard_normal(y.shape))  # a non-uniform upstream gradient
        return y.data, x.grad, W.grad, b.grad

    expected = run()
    calls = on_kernels("reversed")
    got = run()
    (sy, sx), (ph, pw), (dy, dx) = stride, padding, dilation
    gx_by_col2im = conv is F.conv2d_simple or (sy, sx) != (1, 1) or ph > dy * (kh - 1) or pw > dx * (kw - 1)
    assert {name for name, _ in calls} == {"minires_im2col"} | ({"minires_col2im"} if gx_by_col2im else set())
    for ours, theirs in zip(got, expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_kernels_refuse_sizes_beyond_their_32_bit_indices():
    """kh*kw*C*N must stay below 2^31 (the kernels' 32-bit unravelling); the message says what to do."""
    assert len(conv_utils._geometry(256, 2048, 7, 7, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1)) == 15
    with pytest.raises(ValueError, match="too large; use a smaller batch"):
        conv_utils._geometry(2 ** 16, 4096, 7, 7, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1)
