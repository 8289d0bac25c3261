"""Functional ops: gradient checks (both modes, float64, hypothesis-drawn geometry), forward values
against naive loop implementations written here, im2col/col2im adjointness, BN running statistics
and the errors raised on bad input."""
import math
import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minires import Tensor, gradcheck
from minires import backend as mb
from minires import functional as F
from minires.utils import conv as conv_utils

MODES = ["full", "directional"]
FEW = settings(max_examples=20, deadline=None)


def leaf(backend, a, requires_grad=True, dtype=np.float64):
    return Tensor(mb.to_backend(np.asarray(a, dtype=dtype), backend), requires_grad=requires_grad)


def raw(backend, a, dtype=np.float64):
    return mb.to_backend(np.asarray(a, dtype=dtype), backend)


def host(a):
    """A NumPy copy of a NumPy or CuPy array (or Tensor), independent of minires.backend.to_numpy."""
    a = a.data if isinstance(a, Tensor) else a
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def seed_of(data):
    return np.random.default_rng(data.draw(st.integers(0, 2**31), label="seed"))


def distinct(rng, shape, spacing=0.05):
    """Values without ties (spaced far more than the checker's eps), in random order."""
    n = int(np.prod(shape))
    return (rng.permutation(n) - n // 2 + 0.5).reshape(shape) * spacing  # half-integers: never 0


def signed_magnitudes(rng, shape):
    """Values in +-[0.1, 2]: never within eps of relu's kink at 0."""
    return rng.uniform(0.1, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


# =================================================================================================
# Naive references (explicit loops)
# =================================================================================================

def naive_conv2d(x, W, b, stride, padding):
    sy, sx = stride
    ph, pw = padding
    n_, c_, h, w = x.shape
    o_, _, kh, kw = W.shape
    ho, wo = (h + 2 * ph - kh) // sy + 1, (w + 2 * pw - kw) // sx + 1
    y = np.zeros((n_, o_, ho, wo))
    for n in range(n_):
        for o in range(o_):
            for yy in range(ho):
                for xx in range(wo):
                    s = 0.0 if b is None else b[o]
                    for c in range(c_):
                        for i in range(kh):
                            for j in range(kw):
                                r, q = yy * sy + i - ph, xx * sx + j - pw
                                if 0 <= r < h and 0 <= q < w:
                                    s += W[o, c, i, j] * x[n, c, r, q]
                    y[n, o, yy, xx] = s
    return y


def naive_conv2d_backward(x, W, gy, stride, padding):
    """gx and gW of the convolution by the chain rule, one product at a time."""
    sy, sx = stride
    ph, pw = padding
    n_, c_, h, w = x.shape
    o_, _, kh, kw = W.shape
    gx, gW = np.zeros(x.shape), np.zeros(W.shape)
    for n in range(n_):
        for o in range(o_):
            for yy in range(gy.shape[2]):
                for xx in range(gy.shape[3]):
                    for c in range(c_):
                        for i in range(kh):
                            for j in range(kw):
                                r, q = yy * sy + i - ph, xx * sx + j - pw
                                if 0 <= r < h and 0 <= q < w:
                                    gW[o, c, i, j] += gy[n, o, yy, xx] * x[n, c, r, q]
                                    gx[n, c, r, q] += gy[n, o, yy, xx] * W[o, c, i, j]
    return gx, gW


def naive_pool(x, k, s, p, kind):
    kh, kw = k
    sy, sx = s
    ph, pw = p
    n_, c_, h, w = x.shape
    ho, wo = (h + 2 * ph - kh) // sy + 1, (w + 2 * pw - kw) // sx + 1
    y = np.zeros((n_, c_, ho, wo))
    for n in range(n_):
        for c in range(c_):
            for yy in range(ho):
                for xx in range(wo):
                    vals = []
                    for i in range(kh):
                        for j in range(kw):
                            r, q = yy * sy + i - ph, xx * sx + j - pw
                            inside = 0 <= r < h and 0 <= q < w
                            if kind == "max":
                                if inside:
                                    vals.append(x[n, c, r, q])
                            else:
                                vals.append(x[n, c, r, q] if inside else 0.0)  # zero padding counts
                    y[n, c, yy, xx] = max(vals) if kind == "max" else sum(vals) / (kh * kw)
    return y


def naive_batch_norm(x, gamma, beta, mean=None, var=None, eps=1e-5):
    """Per channel: y = gamma (x - mean) / sqrt(var + eps) + beta (batch stats, biased var, if not given)."""
    y = np.empty_like(x)
    for c in range(x.shape[1]):
        v = x[:, c].ravel()
        m = v.mean() if mean is None else mean[c]
        s2 = ((v - v.mean()) ** 2).sum() / v.size if var is None else var[c]
        y[:, c] = gamma[c] * (x[:, c] - m) / math.sqrt(s2 + eps) + beta[c]
    return y


def naive_linear(x, W, b):
    n_, i_ = x.shape
    o_ = W.shape[0]
    y = np.zeros((n_, o_))
    for n in range(n_):
        for o in range(o_):
            s = 0.0 if b is None else b[o]
            for i in range(i_):
                s += x[n, i] * W[o, i]
            y[n, o] = s
    return y


def naive_cross_entropy(z, labels, smoothing=0.0):
    total = 0.0
    n_, k_ = z.shape
    for n in range(n_):
        row = [float(v) for v in z[n]]
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        for k in range(k_):
            t = (1 - smoothing) * (k == labels[n]) + smoothing / k_
            total -= t * (row[k] - lse)
    return total / n_


# =================================================================================================
# conv2d
# =================================================================================================

@st.composite
def conv_case(draw, full):
    if draw(st.booleans()):
        kh = kw = draw(st.sampled_from([1, 3, 7]))
    else:
        kh, kw = draw(st.sampled_from([1, 2, 3, 5, 7])), draw(st.sampled_from([1, 2, 3, 5, 7]))
    sy, sx = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    extra = 3 if full else 9
    h0, w0 = max(1, kh - 2 * ph), max(1, kw - 2 * pw)
    h, w = draw(st.integers(h0, h0 + extra)), draw(st.integers(w0, w0 + extra))
    small = 2 if full else 4
    n, c, o = draw(st.integers(1, small)), draw(st.integers(1, small)), draw(st.integers(1, small + 1))
    stride = (sy, sx) if sy != sx or draw(st.booleans()) else sy
    padding = (ph, pw) if ph != pw or draw(st.booleans()) else ph
    bias = draw(st.booleans())
    return dict(x=(n, c, h, w), W=(o, c, kh, kw), stride=stride, padding=padding, bias=bias,
                s=(sy, sx), p=(ph, pw))


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_conv2d_gradcheck(backend, mode, data):
    case = data.draw(conv_case(full=mode == "full"))
    rng = seed_of(data)
    x = leaf(backend, rng.standard_normal(case["x"]))
    W = leaf(backend, rng.standard_normal(case["W"]))
    inputs = [x, W]
    if case["bias"]:
        inputs.append(leaf(backend, rng.standard_normal(case["W"][0])))
    fn = lambda *t: F.conv2d(*t, stride=case["stride"], padding=case["padding"])
    assert gradcheck(fn, inputs, mode=mode)


def test_conv2d_gradcheck_explicit_grad_output_and_frozen_weight(backend):
    rng = np.random.default_rng(0)
    x = leaf(backend, rng.standard_normal((2, 3, 7, 6)))
    W = leaf(backend, rng.standard_normal((4, 3, 3, 2)), requires_grad=False)
    b = leaf(backend, rng.standard_normal(4))
    fn = lambda p, q, r: F.conv2d(p, q, r, stride=(2, 1), padding=(1, 0))
    g = raw(backend, rng.uniform(-2, 2, fn(x, W, b).shape))
    for mode in MODES:
        assert gradcheck(fn, [x, W, b], mode=mode, grad_output=g)
    assert W.grad is None


@pytest.mark.parametrize("conv", [F.conv2d, F.conv2d_simple], ids=["fast", "simple"])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_conv2d_forward_and_backward_match_direct_loops(backend, conv, data):
    case = data.draw(conv_case(full=True))
    rng = seed_of(data)
    x0, W0 = rng.standard_normal(case["x"]), rng.standard_normal(case["W"])
    b0 = rng.standard_normal(case["W"][0]) if case["bias"] else None
    x, W = leaf(backend, x0), leaf(backend, W0)
    b = None if b0 is None else leaf(backend, b0)
    y = conv(x, W, b, stride=case["stride"], padding=case["padding"])
    ref = naive_conv2d(x0, W0, b0, case["s"], case["p"])
    assert y.shape == ref.shape
    np.testing.assert_allclose(host(y), ref, rtol=1e-10, atol=1e-10)
    gy = rng.uniform(-2, 2, ref.shape)
    y.backward(raw(backend, gy))
    gx_ref, gW_ref = naive_conv2d_backward(x0, W0, gy, case["s"], case["p"])
    np.testing.assert_allclose(host(x.grad), gx_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(host(W.grad), gW_ref, rtol=1e-10, atol=1e-10)
    if b is not None:
        np.testing.assert_allclose(host(b.grad), gy.sum(axis=(0, 2, 3)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_conv2d_simple_gradcheck(backend, mode, data):
    case = data.draw(conv_case(full=mode == "full"))
    rng = seed_of(data)
    inputs = [leaf(backend, rng.standard_normal(case["x"])), leaf(backend, rng.standard_normal(case["W"]))]
    if case["bias"]:
        inputs.append(leaf(backend, rng.standard_normal(case["W"][0])))
    fn = lambda *t: F.conv2d_simple(*t, stride=case["stride"], padding=case["padding"])
    assert gradcheck(fn, inputs, mode=mode)


@pytest.mark.parametrize("shape, W_shape, stride, padding", [
    ((8, 16, 16, 16), (16, 16, 3, 3), 1, 1),   # ResNet's 3x3: the stride-1 transposed-conv backward
    ((8, 16, 16, 16), (32, 16, 3, 3), 2, 1),   # downsampling: the col2im backward
    ((4, 8, 9, 7), (4, 8, 1, 1), 2, 0),        # 1x1 projection shortcut
    ((2, 3, 12, 11), (5, 3, 7, 5), (2, 3), (3, 1)),
    ((64, 4, 12, 12), (6, 4, 3, 3), 1, 1),     # a batch larger than one cache-sized slice
])
def test_conv2d_fast_matches_simple(backend, shape, W_shape, stride, padding):
    """The fast convolution (batch slices, workspace, transposed-conv backward) gives the plain one's numbers."""
    rng = np.random.default_rng(7)
    x0, W0, b0 = rng.standard_normal(shape), rng.standard_normal(W_shape), rng.standard_normal(W_shape[0])
    results = []
    for conv in (F.conv2d, F.conv2d_simple):
        x, W, b = leaf(backend, x0), leaf(backend, W0), leaf(backend, b0)
        y = conv(x, W, b, stride=stride, padding=padding)
        y.backward(raw(backend, np.random.default_rng(8).uniform(-2, 2, y.shape)))
        results.append([host(a) for a in (y.data, x.grad, W.grad, b.grad)])
    for fast, simple in zip(*results):
        np.testing.assert_allclose(fast, simple, rtol=1e-10, atol=1e-10)


def test_conv2d_fast_matches_simple_in_float32(backend):
    rng = np.random.default_rng(3)
    x0, W0 = rng.standard_normal((16, 8, 10, 10)), rng.standard_normal((8, 8, 3, 3))
    ys = [host(conv(leaf(backend, x0, dtype=np.float32), leaf(backend, W0, dtype=np.float32), padding=1))
          for conv in (F.conv2d, F.conv2d_simple)]
    assert ys[0].dtype == ys[1].dtype == np.float32
    np.testing.assert_allclose(ys[0], ys[1], rtol=1e-4, atol=1e-4)


def test_conv2d_float32_forward_matches_loops(backend):
    rng = np.random.default_rng(1)
    x0, W0, b0 = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((5, 3, 3, 3)), rng.standard_normal(5)
    y = F.conv2d(leaf(backend, x0, dtype=np.float32), leaf(backend, W0, dtype=np.float32),
                 leaf(backend, b0, dtype=np.float32), stride=2, padding=1)
    assert y.dtype == np.float32
    np.testing.assert_allclose(host(y), naive_conv2d(x0, W0, b0, (2, 2), (1, 1)), rtol=1e-4, atol=1e-4)


@st.composite
def im2col_case(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sy, sx = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 8))
    w = draw(st.integers(max(1, kw - 2 * pw), 8))
    return (draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w), (kh, kw), (sy, sx), (ph, pw)


@settings(max_examples=40, deadline=None)
@given(case=im2col_case(), seed=st.integers(0, 2**31))
def test_im2col_col2im_adjoint(backend, case, seed):
    shape, (kh, kw), (sy, sx), (ph, pw) = case
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal(shape)
    col = conv_utils.im2col(raw(backend, x0), kh, kw, sy, sx, ph, pw)
    c0 = rng.standard_normal(col.shape)
    back = conv_utils.col2im(raw(backend, c0), shape, sy, sx, ph, pw)
    assert back.shape == shape
    lhs = float((host(col) * c0).sum())
    rhs = float((x0 * host(back)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)
    # and im2col picks exactly xpad[n, c, y*sy + i, x*sx + j]
    xpad = np.pad(x0, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ref = np.empty(col.shape)
    for i in range(kh):
        for j in range(kw):
            for yy in range(col.shape[4]):
                for xx in range(col.shape[5]):
                    ref[i, j, :, :, yy, xx] = xpad[:, :, yy * sy + i, xx * sx + j].T
    np.testing.assert_array_equal(host(col), ref)


def test_conv_utils_pair_output_size_and_workspace():
    assert conv_utils.pair(3, "stride") == (3, 3)
    assert conv_utils.pair((2, 1), "stride") == (2, 1)
    for bad in [(1, 2, 3), "ab", 1.5, (1.0, 2), None]:
        with pytest.raises(ValueError, match="stride must be an int or a pair of ints"):
            conv_utils.pair(bad, "stride")
    assert conv_utils.output_size(32, 3, 2, 1) == 16 and conv_utils.output_size(7, 7, 1, 0) == 1
    a = conv_utils.workspace(np, (4, 5), np.float32, "test")
    b = conv_utils.workspace(np, (2, 3), np.float32, "test")
    assert a.shape == (4, 5) and b.shape == (2, 3) and np.shares_memory(a, b)  # one buffer per role
    assert not np.shares_memory(b, conv_utils.workspace(np, (2, 3), np.float32, "other"))
    conv_utils.clear_workspace()
    assert not np.shares_memory(b, conv_utils.workspace(np, (2, 3), np.float32, "test"))


# =================================================================================================
# batch_norm
# =================================================================================================

@st.composite
def bn_case(draw, full):
    c = draw(st.integers(1, 3 if full else 6))
    if draw(st.booleans()):
        shape = (draw(st.integers(3, 5 if full else 16)), c)
    else:
        side = 3 if full else 6
        shape = (draw(st.integers(1, 2 if full else 4)), c, draw(st.integers(1, side)), draw(st.integers(2, side)))
    return shape


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_batch_norm_gradcheck(backend, mode, training, data):
    shape = data.draw(bn_case(full=mode == "full"))
    rng = seed_of(data)
    c = shape[1]
    x0 = rng.standard_normal(shape) * rng.uniform(0.5, 2) + rng.uniform(-1, 1)
    if training:  # well-conditioned batch statistics
        assume(min(x0[:, k].var() for k in range(c)) > 0.05)
    x = leaf(backend, x0)
    gamma = leaf(backend, rng.uniform(0.5, 1.5, c))
    beta = leaf(backend, rng.standard_normal(c))
    rm, rv = raw(backend, rng.standard_normal(c)), raw(backend, rng.uniform(0.5, 2.0, c))
    fn = lambda p, g, b: F.batch_norm(p, g, b, rm, rv, training=training)
    assert gradcheck(fn, [x, gamma, beta], mode=mode)


@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 4, 5)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_forward_matches_formula(backend, shape, training):
    rng = np.random.default_rng(2)
    c = shape[1]
    x0 = rng.standard_normal(shape) * 3 + 1
    g0, b0 = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    rm0, rv0 = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    rm, rv = raw(backend, rm0), raw(backend, rv0)
    y = F.batch_norm(leaf(backend, x0), leaf(backend, g0), leaf(backend, b0), rm, rv, training=training)
    ref = naive_batch_norm(x0, g0, b0) if training else naive_batch_norm(x0, g0, b0, rm0, rv0)
    np.testing.assert_allclose(host(y), ref, rtol=1e-10, atol=1e-10)
    if training:  # normalised batch: per channel mean beta, std gamma (up to eps)
        axes = (0,) if len(shape) == 2 else (0, 2, 3)
        np.testing.assert_allclose(host(y).mean(axis=axes), b0, atol=1e-10)
    else:  # eval leaves the running statistics alone
        np.testing.assert_array_equal(host(rm), rm0)
        np.testing.assert_array_equal(host(rv), rv0)


def test_batch_norm_without_affine_parameters(backend):
    x0 = np.random.default_rng(3).standard_normal((5, 2, 3, 3))
    y = F.batch_norm(leaf(backend, x0), None, None, training=True)
    np.testing.assert_allclose(host(y), naive_batch_norm(x0, np.ones(2), np.zeros(2)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_keeps_float32_for_large_batches(backend, training):
    # M = N*H*W = 71,680 > 65,535: NumPy 1.x promoted float32 / M (an int32-sized int) to float64,
    # which made every later layer of a training step run in float64 at half speed
    rng = np.random.default_rng(5)
    x = leaf(backend, rng.standard_normal((70, 2, 32, 32)), dtype=np.float32)
    gamma, beta = leaf(backend, [1.5, 0.5], dtype=np.float32), leaf(backend, [0.1, -0.2], dtype=np.float32)
    rm, rv = raw(backend, np.zeros(2), np.float32), raw(backend, np.ones(2), np.float32)
    y = F.batch_norm(x, gamma, beta, rm, rv, training=training)
    y.backward(raw(backend, rng.standard_normal(x.shape), np.float32))
    assert y.dtype == x.grad.dtype == gamma.grad.dtype == beta.grad.dtype == rm.dtype == rv.dtype == np.float32


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5, 2)])
def test_batch_norm_running_statistics_update(backend, shape):
    rng = np.random.default_rng(4)
    c = shape[1]
    rm0, rv0 = np.zeros(c), np.ones(c)
    rm, rv = raw(backend, rm0), raw(backend, rv0)
    expected_m, expected_v = rm0.copy(), rv0.copy()
    for step in range(3):
        x0 = rng.standard_normal(shape) * (step + 1) + step
        F.batch_norm(leaf(backend, x0), None, None, rm, rv, training=True, momentum=0.1)
        for k in range(c):
            v = x0[:, k].ravel()
            unbiased = ((v - v.mean()) ** 2).sum() / (v.size - 1)
            expected_m[k] = 0.9 * expected_m[k] + 0.1 * v.mean()
            expected_v[k] = 0.9 * expected_v[k] + 0.1 * unbiased
        np.testing.assert_allclose(host(rm), expected_m, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(host(rv), expected_v, rtol=1e-12)
    # another momentum is honoured
    rm2, rv2 = raw(backend, np.zeros(c)), raw(backend, np.ones(c))
    x0 = rng.standard_normal(shape)
    F.batch_norm(leaf(backend, x0), None, None, rm2, rv2, training=True, momentum=0.5)
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    np.testing.assert_allclose(host(rm2), 0.5 * x0.mean(axis=axes), rtol=1e-12)
    np.testing.assert_allclose(host(rv2), 0.5 + 0.5 * x0.var(axis=axes, ddof=1), rtol=1e-12)


# =================================================================================================
# relu, pools
# =================================================================================================

@pytest.mark.parametrize("mode", MODES)
@FEW
@given(data=st.data())
def test_relu_gradcheck(backend, mode, data):
    side = 3 if mode == "full" else 8
    shape = tuple(data.draw(st.lists(st.integers(1, side), min_size=1, max_size=4)))
    x0 = signed_magnitudes(seed_of(data), shape)
    x = leaf(backend, x0)
    np.testing.assert_array_equal(host(F.relu(x)), np.maximum(x0, 0))
    assert gradcheck(F.relu, [x], mode=mode)


@st.composite
def pool_case(draw, full):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(st.none() | st.integers(1, 3) | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    extra = 3 if full else 8
    h = draw(st.integers(max(1, kh - 2 * ph), max(1, kh - 2 * ph) + extra))
    w = draw(st.integers(max(1, kw - 2 * pw), max(1, kw - 2 * pw) + extra))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 2 if full else 4))
    kernel = (kh, kw) if kh != kw or draw(st.booleans()) else kh
    padding = (ph, pw) if ph != pw or draw(st.booleans()) else ph
    if stride is None:
        s = (kh, kw)
    elif isinstance(stride, int):
        s = (stride, stride)
    else:
        s = stride
    return dict(shape=(n, c, h, w), kernel=kernel, stride=stride, padding=padding,
                k=(kh, kw), s=s, p=(ph, pw))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["max", "avg"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_pool_gradcheck(backend, mode, kind, data):
    case = data.draw(pool_case(full=mode == "full"))
    x = leaf(backend, distinct(seed_of(data), case["shape"]))
    pool = F.max_pool2d if kind == "max" else F.avg_pool2d
    fn = lambda t: pool(t, case["kernel"], case["stride"], case["padding"])
    assert gradcheck(fn, [x], mode=mode)


@pytest.mark.parametrize("kind", ["max", "avg"])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_pool_forward_matches_loops(backend, kind, data):
    case = data.draw(pool_case(full=False))
    x0 = seed_of(data).standard_normal(case["shape"])
    pool = F.max_pool2d if kind == "max" else F.avg_pool2d
    y = pool(leaf(backend, x0), case["kernel"], case["stride"], case["padding"])
    ref = naive_pool(x0, case["k"], case["s"], case["p"], kind)
    assert y.shape == ref.shape
    np.testing.assert_allclose(host(y), ref, rtol=1e-12, atol=1e-12)


def test_max_pool_routes_gradient_to_the_maximum(backend):
    x0 = np.array([[[[1.0, 5.0, 2.0, 0.0],
                     [3.0, 4.0, 9.0, 1.0],
                     [0.5, 0.2, 7.0, 8.0],
                     [6.0, 0.1, 0.3, 0.4]]]])
    x = leaf(backend, x0)
    y = F.max_pool2d(x, 2)
    np.testing.assert_array_equal(host(y), [[[[5.0, 9.0], [6.0, 8.0]]]])
    y.backward(raw(backend, [[[[1.0, 2.0], [3.0, 4.0]]]]))
    expected = np.zeros((1, 1, 4, 4))
    expected[0, 0, 0, 1], expected[0, 0, 1, 2], expected[0, 0, 3, 0], expected[0, 0, 2, 3] = 1, 2, 3, 4
    np.testing.assert_array_equal(host(x.grad), expected)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 2, 3), (3, 5, 7, 4)])
def test_global_avg_pool_gradcheck(backend, mode, shape):
    if mode == "full" and np.prod(shape) > 100:
        pytest.skip("full mode on small shapes only")
    x0 = np.random.default_rng(5).standard_normal(shape)
    x = leaf(backend, x0)
    y = F.global_avg_pool2d(x)
    ref = np.array([[x0[n, c].sum() / (shape[2] * shape[3]) for c in range(shape[1])] for n in range(shape[0])])
    np.testing.assert_allclose(host(y), ref, rtol=1e-12)
    assert gradcheck(F.global_avg_pool2d, [x], mode=mode)


# =================================================================================================
# linear, flatten, add, pad_channels, cross_entropy
# =================================================================================================

@pytest.mark.parametrize("mode", MODES)
@FEW
@given(data=st.data())
def test_linear_gradcheck(backend, mode, data):
    side = 4 if mode == "full" else 20
    n, i, o = (data.draw(st.integers(1, side)) for _ in range(3))
    bias = data.draw(st.booleans())
    rng = seed_of(data)
    inputs = [leaf(backend, rng.standard_normal((n, i))), leaf(backend, rng.standard_normal((o, i)))]
    if bias:
        inputs.append(leaf(backend, rng.standard_normal(o)))
    y = F.linear(*inputs)
    ref = naive_linear(*(host(t) for t in inputs), *([None] if not bias else []))
    np.testing.assert_allclose(host(y), ref, rtol=1e-10, atol=1e-12)
    assert gradcheck(F.linear, inputs, mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_flatten_and_add_gradcheck(backend, mode):
    rng = np.random.default_rng(6)
    shape = (2, 2, 2, 3) if mode == "full" else (3, 4, 5, 6)
    x = leaf(backend, rng.standard_normal(shape))
    y = leaf(backend, rng.standard_normal(shape))
    flat = F.flatten(x)
    assert flat.shape == (shape[0], int(np.prod(shape[1:])))
    np.testing.assert_array_equal(host(flat), host(x).reshape(shape[0], -1))
    np.testing.assert_array_equal(host(F.add(x, y)), host(x) + host(y))
    assert gradcheck(F.flatten, [x], mode=mode)
    assert gradcheck(F.add, [x, y], mode=mode)
    assert gradcheck(lambda p: F.add(p, p * 2.0), [x], mode=mode)


@pytest.mark.parametrize("mode", MODES)
@FEW
@given(data=st.data())
def test_pad_channels_gradcheck_and_forward(backend, mode, data):
    side = 4 if mode == "full" else 9
    c = data.draw(st.integers(1, 3))
    out = c + data.draw(st.integers(0, 5))
    stride = data.draw(st.integers(1, 3))
    shape = (data.draw(st.integers(1, 2)), c, data.draw(st.integers(1, side)), data.draw(st.integers(1, side)))
    x0 = seed_of(data).standard_normal(shape)
    x = leaf(backend, x0)
    y = F.pad_channels(x, out, stride)
    ho, wo = -(-shape[2] // stride), -(-shape[3] // stride)
    assert y.shape == (shape[0], out, ho, wo)
    before = (out - c) // 2
    ref = np.zeros(y.shape)
    for n in range(shape[0]):
        for k in range(c):
            for yy in range(ho):
                for xx in range(wo):
                    ref[n, before + k, yy, xx] = x0[n, k, yy * stride, xx * stride]
    np.testing.assert_array_equal(host(y), ref)
    assert gradcheck(lambda t: F.pad_channels(t, out, stride), [x], mode=mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
@FEW
@given(data=st.data())
def test_cross_entropy_gradcheck_and_forward(backend, mode, smoothing, data):
    side = 4 if mode == "full" else 16
    n, k = data.draw(st.integers(1, side)), data.draw(st.integers(2, side))
    rng = seed_of(data)
    z0 = rng.standard_normal((n, k)) * 3
    labels = rng.integers(0, k, n)
    z = leaf(backend, z0)
    lab = mb.to_backend(labels, backend)
    loss = F.cross_entropy(z, lab, label_smoothing=smoothing)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(naive_cross_entropy(z0, labels, smoothing), rel=1e-10, abs=1e-12)
    assert gradcheck(lambda t: F.cross_entropy(t, lab, label_smoothing=smoothing), [z], mode=mode)
    # explicit non-uniform upstream gradient (a 0-d scale)
    assert gradcheck(lambda t: F.cross_entropy(t, lab, smoothing), [z], mode=mode,
                     grad_output=raw(backend, np.array(-2.5)))


def test_cross_entropy_is_stable_for_large_logits(backend):
    z0 = np.array([[1000.0, 0.0, -1000.0], [5.0, 800.0, 799.0]])
    labels = np.array([0, 2])
    loss = F.cross_entropy(leaf(backend, z0), mb.to_backend(labels, backend))
    assert np.isfinite(loss.item())
    assert loss.item() == pytest.approx(naive_cross_entropy(z0, labels), rel=1e-12)


def test_cross_entropy_accepts_label_list_and_tensor(backend):
    z0 = np.random.default_rng(7).standard_normal((3, 4))
    ref = naive_cross_entropy(z0, [1, 0, 3])
    assert F.cross_entropy(leaf(backend, z0), [1, 0, 3]).item() == pytest.approx(ref, rel=1e-12)
    lab = Tensor(mb.to_backend(np.array([1, 0, 3]), backend))
    assert F.cross_entropy(leaf(backend, z0), lab).item() == pytest.approx(ref, rel=1e-12)


# =================================================================================================
# Bad input: ValueError naming the shapes
# =================================================================================================

def shape_re(*shapes):
    return ".*".join(re.escape(str(tuple(s))) for s in shapes)


def t(shape, dtype=np.float64):
    return Tensor(np.zeros(shape, dtype))


def test_conv2d_bad_input():
    with pytest.raises(ValueError, match=shape_re((2, 3, 8))):
        F.conv2d(t((2, 3, 8)), t((4, 3, 3, 3)))
    with pytest.raises(ValueError, match=shape_re((4, 3, 3))):
        F.conv2d(t((2, 3, 8, 8)), t((4, 3, 3)))
    with pytest.raises(ValueError, match=shape_re((2, 3, 8, 8), (4, 2, 3, 3))):
        F.conv2d(t((2, 3, 8, 8)), t((4, 2, 3, 3)))
    with pytest.raises(ValueError, match="larger"):
        F.conv2d(t((1, 1, 4, 4)), t((1, 1, 7, 7)), padding=1)
    with pytest.raises(ValueError, match=shape_re((1, 1, 4, 9))):
        F.conv2d(t((1, 1, 4, 9)), t((1, 1, 5, 3)))
    F.conv2d(t((1, 1, 4, 4)), t((1, 1, 6, 6)), padding=1)  # exactly fits: fine
    with pytest.raises(ValueError, match=shape_re((5,))):
        F.conv2d(t((1, 3, 4, 4)), t((4, 3, 3, 3)), t((5,)))
    with pytest.raises(ValueError):
        F.conv2d(t((1, 1, 4, 4)), t((1, 1, 3, 3)), stride=0)
    with pytest.raises(ValueError):
        F.conv2d(t((1, 1, 4, 4)), t((1, 1, 3, 3)), padding=-1)
    with pytest.raises(ValueError):
        F.conv2d(t((1, 1, 4, 4)), t((1, 1, 3, 3)), stride=(1, 2, 3))


@pytest.mark.parametrize("pool", [F.max_pool2d, F.avg_pool2d])
def test_pool_bad_input(pool):
    with pytest.raises(ValueError, match=shape_re((3, 8, 8))):
        pool(t((3, 8, 8)), 2)
    with pytest.raises(ValueError, match=shape_re((1, 1, 2, 2))):
        pool(t((1, 1, 2, 2)), 3)
    with pytest.raises(ValueError, match="padding"):
        pool(t((1, 1, 8, 8)), 2, padding=2)
    with pytest.raises(ValueError):
        pool(t((1, 1, 8, 8)), 0)


def test_global_avg_pool_bad_input():
    with pytest.raises(ValueError, match=shape_re((2, 3))):
        F.global_avg_pool2d(t((2, 3)))


def test_batch_norm_bad_input():
    c = np.ones(3)
    with pytest.raises(ValueError, match=shape_re((2, 3, 4))):
        F.batch_norm(t((2, 3, 4)), t((3,)), t((3,)))
    with pytest.raises(ValueError, match=shape_re((2, 3, 4, 4), (4,))):
        F.batch_norm(t((2, 3, 4, 4)), t((4,)), t((3,)))
    with pytest.raises(ValueError, match="running_var"):
        F.batch_norm(t((2, 3)), t((3,)), t((3,)), c, np.ones(2), training=False)
    with pytest.raises(ValueError, match=shape_re((1, 3))):
        F.batch_norm(t((1, 3)), t((3,)), t((3,)), training=True)
    with pytest.raises(ValueError, match="running"):
        F.batch_norm(t((2, 3)), t((3,)), t((3,)), training=False)


def test_linear_bad_input():
    with pytest.raises(ValueError, match=shape_re((2, 3, 4), (5, 4))):
        F.linear(t((2, 3, 4)), t((5, 4)))
    with pytest.raises(ValueError, match=shape_re((2, 4), (4,))):
        F.linear(t((2, 4)), t((4,)))
    with pytest.raises(ValueError, match=shape_re((2, 4), (5, 3))):
        F.linear(t((2, 4)), t((5, 3)))
    with pytest.raises(ValueError, match=shape_re((4,))):
        F.linear(t((2, 3)), t((5, 3)), t((4,)))


def test_cross_entropy_bad_input():
    z = t((3, 4))
    with pytest.raises(ValueError, match=shape_re((12,))):
        F.cross_entropy(t((12,)), np.zeros(12, np.int64))
    with pytest.raises(ValueError, match=r"\[0, 4\).*4"):
        F.cross_entropy(z, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"-1"):
        F.cross_entropy(z, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match=shape_re((3,), (3, 4), (4,))):
        F.cross_entropy(z, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=shape_re((3, 1))):
        F.cross_entropy(z, np.zeros((3, 1), np.int64))
    with pytest.raises(ValueError, match="integer"):
        F.cross_entropy(z, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(z, np.array([0, 1, 2]), label_smoothing=1.5)


def test_add_and_pad_channels_bad_input():
    with pytest.raises(ValueError, match=shape_re((2, 3), (2, 4))):
        F.add(t((2, 3)), t((2, 4)))
    with pytest.raises(ValueError, match=shape_re((2, 3, 4))):
        F.pad_channels(t((2, 3, 4)), 6)
    with pytest.raises(ValueError, match="fewer"):
        F.pad_channels(t((1, 4, 2, 2)), 2)


@pytest.mark.parametrize("op", ["conv2d", "conv2d_simple", "linear"])
def test_frozen_or_absent_bias(backend, op):
    """The Function knows whether it was given a bias from its inputs, not from how many need grads."""
    rng = np.random.default_rng(5)
    if op == "linear":
        x0, W0, fn = rng.standard_normal((3, 4)), rng.standard_normal((2, 4)), F.linear
    else:
        x0, W0 = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((2, 3, 3, 3))
        fn = lambda x, W, b=None: getattr(F, op)(x, W, b, padding=1)
    x, W = leaf(backend, x0), leaf(backend, W0)
    b = leaf(backend, rng.standard_normal(2), requires_grad=False)
    assert gradcheck(lambda x, W: fn(x, W, b), [x, W])
    assert b.grad is None
    y = fn(x, W)
    y.backward(raw(backend, np.ones(y.shape)))
    assert x.grad is not None and W.grad is not None
