"""Grouped and dilated convolution: both conv paths against loops, gradcheck, PyTorch, errors, nn.Conv2d."""
import numpy as np
import pytest

import minires
from minires import Tensor, gradcheck, nn
from minires import backend as mb
from minires import functional as F
from minires.functional import conv as conv_module
from minires.utils import conv as conv_utils

CONVS = pytest.mark.parametrize("conv", [F.conv2d, F.conv2d_simple], ids=["fast", "simple"])

# (x shape, W shape, stride, padding, dilation, groups): groups 1/2/4 and depthwise, dilation 1/2,
# strides 1/2, odd sizes, rectangular kernels; stride 1 with padding > d*(k-1) takes the col2im backward
CASES = [
    ((2, 4, 7, 6), (6, 4, 3, 3), 1, 1, 1, 1),
    ((2, 4, 7, 9), (6, 2, 3, 3), 1, 1, 1, 2),
    ((2, 8, 9, 7), (8, 2, 3, 3), 2, 1, 1, 4),
    ((2, 6, 7, 7), (6, 1, 3, 3), 1, 1, 1, 6),          # depthwise
    ((2, 6, 9, 8), (12, 1, 3, 3), 2, 2, 2, 6),         # depthwise with a channel multiplier of 2, dilated
    ((1, 4, 11, 9), (4, 4, 3, 3), 1, 2, 2, 1),
    ((2, 4, 11, 10), (8, 1, 3, 2), (1, 2), (2, 1), (2, 3), 4),
    ((2, 4, 8, 7), (4, 2, 3, 3), 1, 3, 1, 2),          # padding 3 > d*(k-1): the col2im backward at stride 1
    ((2, 8, 5, 5), (4, 2, 1, 1), 2, 0, 1, 4),          # grouped 1x1, strided
]
IDS = [f"g{c[5]}-d{c[4]}-s{c[2]}" for c in CASES]


def leaf(backend, a, requires_grad=True):
    return Tensor(mb.to_backend(np.asarray(a, dtype=np.float64), backend), requires_grad=requires_grad)


def host(a):
    a = a.data if isinstance(a, Tensor) else a
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def naive_conv2d(x, W, b, stride, padding, dilation, groups):
    """y and the function (gy -> gx, gW) by explicit loops over every product."""
    (sy, sx), (ph, pw), (dy, dx) = (conv_utils.pair(v, "") for v in (stride, padding, dilation))
    n_, c_, h, w = x.shape
    o_, cg, kh, kw = W.shape
    og = o_ // groups
    ho, wo = (h + 2 * ph - dy * (kh - 1) - 1) // sy + 1, (w + 2 * pw - dx * (kw - 1) - 1) // sx + 1
    y = np.zeros((n_, o_, ho, wo)) + (0 if b is None else b.reshape(1, -1, 1, 1))

    def taps():
        for n in range(n_):
            for o in range(o_):
                g = o // og
                for yy in range(ho):
                    for xx in range(wo):
                        for c in range(cg):
                            for i in range(kh):
                                for j in range(kw):
                                    r, q = yy * sy + i * dy - ph, xx * sx + j * dx - pw
                                    if 0 <= r < h and 0 <= q < w:
                                        yield (n, o, yy, xx), (n, g * cg + c, r, q), (o, c, i, j)

    for yi, xi, wi in taps():
        y[yi] += W[wi] * x[xi]

    def backward(gy):
        gx, gW = np.zeros(x.shape), np.zeros(W.shape)
        for yi, xi, wi in taps():
            gx[xi] += gy[yi] * W[wi]
            gW[wi] += gy[yi] * x[xi]
        return gx, gW

    return y, backward


@CONVS
@pytest.mark.parametrize("shape, W_shape, stride, padding, dilation, groups", CASES, ids=IDS)
def test_forward_and_backward_match_loops(backend, conv, shape, W_shape, stride, padding, dilation, groups):
    rng = np.random.default_rng(sum(shape) + sum(W_shape))
    x0, W0, b0 = rng.standard_normal(shape), rng.standard_normal(W_shape), rng.standard_normal(W_shape[0])
    x, W, b = leaf(backend, x0), leaf(backend, W0), leaf(backend, b0)
    y = conv(x, W, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    ref, backward = naive_conv2d(x0, W0, b0, stride, padding, dilation, groups)
    assert y.shape == ref.shape
    np.testing.assert_allclose(host(y), ref, rtol=1e-10, atol=1e-10)
    gy = rng.uniform(-2, 2, ref.shape)
    y.backward(mb.to_backend(gy, backend))
    gx_ref, gW_ref = backward(gy)
    np.testing.assert_allclose(host(x.grad), gx_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(host(W.grad), gW_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(host(b.grad), gy.sum(axis=(0, 2, 3)), rtol=1e-10, atol=1e-10)


@CONVS
@pytest.mark.parametrize("shape, W_shape, stride, padding, dilation, groups", CASES[1:6], ids=IDS[1:6])
def test_gradcheck(backend, conv, shape, W_shape, stride, padding, dilation, groups):
    rng = np.random.default_rng(5)
    inputs = [leaf(backend, rng.standard_normal(shape)), leaf(backend, rng.standard_normal(W_shape)),
              leaf(backend, rng.standard_normal(W_shape[0]))]
    fn = lambda *t: conv(*t, stride=stride, padding=padding, dilation=dilation, groups=groups)
    assert gradcheck(fn, inputs, mode="full")


def test_fast_matches_simple_over_several_batch_slices(backend):
    """A batch larger than one cache-sized slice: the grouped sums of gW over the slices and threads."""
    rng = np.random.default_rng(2)
    x0, W0 = rng.standard_normal((48, 8, 12, 12)), rng.standard_normal((16, 2, 3, 3))
    results = []
    for conv in (F.conv2d, F.conv2d_simple):
        x, W = leaf(backend, x0), leaf(backend, W0)
        for stride in (1, 2):
            y = conv(x, W, stride=stride, padding=2, dilation=2, groups=4)
            y.backward(mb.to_backend(np.random.default_rng(3).uniform(-2, 2, y.shape), backend))
            results.append(host(y))
        results += [host(x.grad), host(W.grad)]
    half = len(results) // 2
    for fast, simple in zip(results[:half], results[half:]):
        np.testing.assert_allclose(fast, simple, rtol=1e-10, atol=1e-10)


@CONVS
@pytest.mark.parametrize("shape, W_shape, stride, padding, dilation, groups", CASES, ids=IDS)
def test_matches_pytorch(conv, shape, W_shape, stride, padding, dilation, groups):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    x0, W0, b0 = rng.standard_normal(shape), rng.standard_normal(W_shape), rng.standard_normal(W_shape[0])
    tx, tW, tb = (torch.tensor(a, requires_grad=True) for a in (x0, W0, b0))
    ty = torch.nn.functional.conv2d(tx, tW, tb, stride, padding, dilation, groups)
    gy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.from_numpy(gy))
    x, W, b = Tensor(x0, requires_grad=True), Tensor(W0, requires_grad=True), Tensor(b0, requires_grad=True)
    y = conv(x, W, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    y.backward(gy)
    for ours, theirs in ((y.data, ty), (x.grad, tx.grad), (W.grad, tW.grad), (b.grad, tb.grad)):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("groups, dilation", [(1, 2), (2, 1), (3, 2)])
def test_im2col_col2im_adjoint_with_groups_and_dilation(groups, dilation):
    rng = np.random.default_rng(groups + dilation)
    shape, (kh, kw), (sy, sx), (ph, pw), (dy, dx) = (2, 6, 9, 8), (3, 2), (2, 1), (1, 2), (dilation, 1)
    x0 = rng.standard_normal(shape)
    col = conv_utils.im2col(x0, kh, kw, sy, sx, ph, pw, dy, dx, groups)
    assert col.shape == conv_utils.col_shape(shape, kh, kw, sy, sx, ph, pw, dy, dx, groups)
    c0 = rng.standard_normal(col.shape)
    back = conv_utils.col2im(c0, shape, sy, sx, ph, pw, dy, dx)
    assert float((col * c0).sum()) == pytest.approx(float((x0 * back).sum()), rel=1e-10)
    # col[g, i, j, c, n, y, x] = xpad[n, g*C/G + c, y*sy + i*dy, x*sx + j*dx]
    col7 = col.reshape((groups,) + col.shape[-6:]) if groups == 1 else col
    xpad = np.pad(x0, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cg = shape[1] // groups
    for g, i, j, c, yy, xx in [(groups - 1, 2, 1, cg - 1, 1, 3), (0, 1, 0, 0, 0, 0)]:
        expected = xpad[:, g * cg + c, yy * sy + i * dy, xx * sx + j * dx]
        np.testing.assert_array_equal(col7[g, i, j, c, :, yy, xx], expected)


def test_output_size_with_dilation():
    assert conv_utils.output_size(7, 3, 1, 0, 2) == 3  # the dilated kernel spans 5
    assert conv_utils.output_size(32, 3, 2, 2, 2) == 16
    assert conv_utils.output_size(32, 3, 1, 1) == 32


@pytest.mark.parametrize("x_shape, W_shape, kwargs, message", [
    ((1, 6, 5, 5), (4, 3, 3, 3), {"groups": 4}, "groups=4 must divide the input channels \\(6\\)"),
    ((1, 8, 5, 5), (6, 2, 3, 3), {"groups": 4}, "output channels \\(6\\)"),
    ((1, 8, 5, 5), (8, 4, 3, 3), {"groups": 4}, "with groups=4 expects 16"),
    ((1, 8, 5, 5), (8, 8, 3, 3), {"groups": 0}, "groups must be a positive int, got 0"),
    ((1, 8, 5, 5), (8, 8, 3, 3), {"groups": 2.0}, "groups must be a positive int"),
    ((1, 4, 5, 5), (4, 4, 3, 3), {"dilation": 0}, "dilation must be >= 1"),
    ((1, 4, 5, 5), (4, 4, 3, 3), {"dilation": 3}, "spanning 7x7 with dilation 3\\) is larger than the padded input"),
    ((1, 4, 5, 5), (4, 4, 3, 3), {"dilation": (1, 2, 3)}, "dilation must be an int or a pair"),
])
@pytest.mark.parametrize("conv", [F.conv2d, F.conv2d_simple], ids=["fast", "simple"])
def test_bad_arguments_raise_one_clear_line(conv, x_shape, W_shape, kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        conv(Tensor(np.zeros(x_shape)), Tensor(np.zeros(W_shape)), **kwargs)
    assert "\n" not in str(e.value)


def test_winograd_is_taken_only_without_groups_and_dilation(monkeypatch):
    from minires import profiler
    monkeypatch.setattr(conv_module, "WINOGRAD", True)
    monkeypatch.setattr(conv_module, "WINOGRAD_MIN_CHANNELS", 4)
    rng = np.random.default_rng(4)
    x0 = rng.standard_normal((1, 8, 6, 6))

    def run(W_shape, padding=1, **kwargs):
        W0 = np.random.default_rng(5).standard_normal(W_shape)
        with profiler.profile() as prof, minires.no_grad():
            y = F.conv2d(Tensor(x0), Tensor(W0), padding=padding, **kwargs)
        ref = F.conv2d_simple(Tensor(x0), Tensor(W0), padding=padding, **kwargs)
        np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-10, atol=1e-10)
        return {op for op, *_ in prof.rows()}

    assert run((8, 8, 3, 3)) == {"Conv2dWinogradFunction"}
    assert run((8, 4, 3, 3), groups=2) == {"Conv2dFunction"}
    assert run((8, 8, 3, 3), dilation=2, padding=2) == {"Conv2dFunction"}


# -- nn.Conv2d --------------------------------------------------------------------------------------------------

def test_module_weight_shape_init_and_forward():
    conv = nn.Conv2d(8, 12, 3, stride=2, padding=2, dilation=2, groups=4, bias=True)
    assert conv.weight.shape == (12, 2, 3, 3)
    assert (conv.dilation, conv.groups) == ((2, 2), 4)
    # He-normal with fan_in = C/G * kh * kw, as PyTorch counts it
    assert conv.weight.data.std() == pytest.approx(np.sqrt(2 / 18), rel=0.35)
    assert "dilation=(2, 2), groups=4" in repr(conv)
    assert "groups" not in repr(nn.Conv2d(8, 12, 3))
    x = np.random.default_rng(0).standard_normal((2, 8, 9, 9)).astype(np.float32)
    y = conv(Tensor(x))
    ref = F.conv2d_simple(Tensor(x), conv.weight, conv.bias, stride=2, padding=2, dilation=2, groups=4)
    assert y.shape == (2, 12, 5, 5)
    np.testing.assert_allclose(y.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_module_positional_arguments_follow_pytorch():
    conv = nn.Conv2d(4, 4, 3, 1, 2, 2, 4, False)  # in, out, kernel, stride, padding, dilation, groups, bias
    assert (conv.padding, conv.dilation, conv.groups, conv.bias) == ((2, 2), (2, 2), 4, None)


@pytest.mark.parametrize("kwargs, message", [
    ({"groups": 3}, "groups=3 must divide in_channels=8 and out_channels=12"),
    ({"groups": 0}, "groups must be a positive int"),
])
def test_module_bad_groups(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nn.Conv2d(8, 12, 3, **kwargs)


def test_fused_grouped_conv_matches_unfused():
    """Folding a batch norm into a grouped, dilated conv (per output channel) gives the same numbers."""
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2, bias=False), nn.BatchNorm2d(8))
    rng = np.random.default_rng(1)
    bn = net[1]
    bn.running_mean[...] = rng.normal(0, 0.1, 8)
    bn.running_var[...] = rng.uniform(0.5, 1.5, 8)
    bn.weight.data[...] = rng.uniform(0.5, 1.5, 8)
    x = Tensor(rng.standard_normal((2, 4, 7, 7)).astype(np.float32))
    net.eval()
    fused = nn.fuse_conv_bn(net)
    with minires.no_grad():
        expected = net(x).numpy()
        y = fused(x).numpy()
    assert isinstance(fused[1], nn.Identity) and fused[0].groups == 2 and fused[0].bias is not None
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_module_matches_pytorch_module():
    torch = pytest.importorskip("torch")
    conv = nn.Conv2d(6, 9, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=3)
    ref = torch.nn.Conv2d(6, 9, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=3)
    assert tuple(ref.weight.shape) == conv.weight.shape
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(np.asarray(conv.weight.data)))
        ref.bias.copy_(torch.from_numpy(np.asarray(conv.bias.data)) + 0.5)
    conv.bias.data += 0.5
    x = np.random.default_rng(3).standard_normal((2, 6, 8, 7)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(conv(Tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-5)
