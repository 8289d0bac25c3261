"""The op options of issue 19 (pooling ceil_mode / count_include_pad / dilation / return_indices,
flatten's dims, cross_entropy's weight / ignore_index / reduction, nll_loss) and the new ops
(softmax, log_softmax, sigmoid, tanh, leaky_relu, dropout) with their nn modules: float64
gradient checks, naive loop references written here, PyTorch where installed, ONNX export."""
import math
import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minires
from minires import Tensor, gradcheck, nn
from minires import backend as mb
from minires import functional as F

MODES = ["full", "directional"]


def leaf(backend, a, requires_grad=True, dtype=np.float64):
    return Tensor(mb.to_backend(np.asarray(a, dtype=dtype), backend), requires_grad=requires_grad)


def host(a):
    """A NumPy copy of a NumPy or CuPy array (or Tensor)."""
    a = a.data if isinstance(a, Tensor) else a
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def distinct(rng, shape, spacing=0.05):
    """Values without ties (spaced far more than the checker's eps), in random order, never 0."""
    n = int(np.prod(shape))
    return (rng.permutation(n) - n // 2 + 0.5).reshape(shape) * spacing


def upstream(rng, shape):
    """A non-uniform upstream gradient."""
    return rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def torch_or_skip():
    return pytest.importorskip("torch")


# =================================================================================================
# Pooling: naive references with PyTorch's geometry
# =================================================================================================

def ref_out_size(size, k, s, p, d, ceil_mode):
    """PyTorch's pooling_output_shape, written out."""
    span = d * (k - 1) + 1
    if ceil_mode:
        n = math.ceil((size + 2 * p - span) / s) + 1
        if (n - 1) * s >= size + p:
            n -= 1
    else:
        n = (size + 2 * p - span) // s + 1
    return n


def naive_max_pool(x, k, s, p, d, ceil_mode):
    """(y, flat indices h * W + w of each maximum, first one on ties)."""
    (kh, kw), (sy, sx), (ph, pw), (dy, dx) = k, s, p, d
    n_, c_, h, w = x.shape
    ho, wo = ref_out_size(h, kh, sy, ph, dy, ceil_mode), ref_out_size(w, kw, sx, pw, dx, ceil_mode)
    y, idx = np.zeros((n_, c_, ho, wo)), np.zeros((n_, c_, ho, wo), np.int64)
    for n in range(n_):
        for c in range(c_):
            for yy in range(ho):
                for xx in range(wo):
                    best, where = -np.inf, -1
                    for i in range(kh):
                        for j in range(kw):
                            r, q = yy * sy + i * dy - ph, xx * sx + j * dx - pw
                            if 0 <= r < h and 0 <= q < w and x[n, c, r, q] > best:
                                best, where = x[n, c, r, q], r * w + q
                    y[n, c, yy, xx], idx[n, c, yy, xx] = best, where
    return y, idx


def naive_avg_pool(x, k, s, p, ceil_mode, count_include_pad):
    """The mean of each window; divided by the window's size clipped to the padded input (or by
    the number of its real pixels without count_include_pad), as PyTorch's avg_pool2d."""
    (kh, kw), (sy, sx), (ph, pw) = k, s, p
    n_, c_, h, w = x.shape
    ho, wo = ref_out_size(h, kh, sy, ph, 1, ceil_mode), ref_out_size(w, kw, sx, pw, 1, ceil_mode)
    y = np.zeros((n_, c_, ho, wo))
    for n in range(n_):
        for c in range(c_):
            for yy in range(ho):
                for xx in range(wo):
                    total, real, padded = 0.0, 0, 0
                    for i in range(kh):
                        for j in range(kw):
                            r, q = yy * sy + i - ph, xx * sx + j - pw
                            if -ph <= r < h + ph and -pw <= q < w + pw:
                                padded += 1
                            if 0 <= r < h and 0 <= q < w:
                                total += x[n, c, r, q]
                                real += 1
                    y[n, c, yy, xx] = total / (padded if count_include_pad else real)
    return y


@st.composite
def pool_case(draw, kind, small):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sy, sx = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    dy, dx = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if kind == "max" else (1, 1)
    extra = 3 if small else 7
    lo_h, lo_w = max(1, dy * (kh - 1) + 1 - 2 * ph), max(1, dx * (kw - 1) + 1 - 2 * pw)
    h, w = draw(st.integers(lo_h, lo_h + extra)), draw(st.integers(lo_w, lo_w + extra))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    case = dict(shape=(n, c, h, w), k=(kh, kw), s=(sy, sx), p=(ph, pw), d=(dy, dx),
                ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()))
    # a dilated window can fall wholly into the padding (-inf in PyTorch too): not a case to check
    assume(np.all(np.isfinite(naive_max_pool(np.zeros((1, 1, h, w)), **{k: case[k] for k in "kspd"},
                                             ceil_mode=case["ceil_mode"])[0])))
    return case


def pool_fn(kind, case):
    if kind == "max":
        return lambda t: F.max_pool2d(t, case["k"], case["s"], case["p"], case["d"], case["ceil_mode"])
    return lambda t: F.avg_pool2d(t, case["k"], case["s"], case["p"], case["ceil_mode"], case["count_include_pad"])


@pytest.mark.parametrize("kind", ["max", "avg"])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_pool_options_forward_matches_loops(backend, kind, data):
    case = data.draw(pool_case(kind, small=False))
    x0 = distinct(np.random.default_rng(data.draw(st.integers(0, 2**31))), case["shape"])
    y = pool_fn(kind, case)(leaf(backend, x0))
    if kind == "max":
        ref, ref_idx = naive_max_pool(x0, case["k"], case["s"], case["p"], case["d"], case["ceil_mode"])
        _, idx = F.max_pool2d(leaf(backend, x0), case["k"], case["s"], case["p"], case["d"], case["ceil_mode"],
                              return_indices=True)
        np.testing.assert_array_equal(host(idx), ref_idx)
        assert host(idx).dtype == np.int64
    else:
        ref = naive_avg_pool(x0, case["k"], case["s"], case["p"], case["ceil_mode"], case["count_include_pad"])
    assert y.shape == ref.shape
    np.testing.assert_allclose(host(y), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["max", "avg"])
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_pool_options_gradcheck(backend, mode, kind, data):
    case = data.draw(pool_case(kind, small=mode == "full"))
    x = leaf(backend, distinct(np.random.default_rng(data.draw(st.integers(0, 2**31))), case["shape"]))
    assert gradcheck(pool_fn(kind, case), [x], mode=mode)


@pytest.mark.parametrize("kind", ["max", "avg"])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_pool_options_match_torch(kind, data):
    torch = torch_or_skip()
    case = data.draw(pool_case(kind, small=False))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    x0 = distinct(rng, case["shape"])
    x = leaf("numpy", x0)
    y = pool_fn(kind, case)(x)
    gy = upstream(rng, y.shape)
    y.backward(gy)
    tx = torch.tensor(x0, requires_grad=True)
    if kind == "max":
        ty, tidx = torch.nn.functional.max_pool2d(tx, case["k"], case["s"], case["p"], case["d"], case["ceil_mode"],
                                                  return_indices=True)
        _, idx = F.max_pool2d(x, case["k"], case["s"], case["p"], case["d"], case["ceil_mode"], return_indices=True)
        np.testing.assert_array_equal(idx.numpy(), tidx.numpy())
    else:
        ty = torch.nn.functional.avg_pool2d(tx, case["k"], case["s"], case["p"], case["ceil_mode"],
                                            case["count_include_pad"])
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_ceil_mode_adds_the_overhanging_window(backend):
    x0 = np.arange(25.0).reshape(1, 1, 5, 5)
    y = F.max_pool2d(leaf(backend, x0), 2, ceil_mode=True)
    np.testing.assert_array_equal(host(y)[0, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    assert F.max_pool2d(leaf(backend, x0), 2).shape == (1, 1, 2, 2)
    # the overhang is not counted in the mean: the corner window holds x[4, 4] alone
    a = F.avg_pool2d(leaf(backend, x0), 2, ceil_mode=True)
    assert host(a)[0, 0, 2, 2] == 24.0 and host(a)[0, 0, 0, 2] == (4 + 9) / 2
    # without count_include_pad, a padded corner averages its real pixels only
    b = F.avg_pool2d(leaf(backend, x0), 3, stride=2, padding=1, count_include_pad=False)
    assert host(b)[0, 0, 0, 0] == np.mean([0, 1, 5, 6])
    c = F.avg_pool2d(leaf(backend, x0), 3, stride=2, padding=1)
    assert host(c)[0, 0, 0, 0] == (0 + 1 + 5 + 6) / 9


def test_dilated_max_pool_skips_pixels(backend):
    x0 = np.array([[[[9.0, 1.0, 2.0, 3.0, 4.0]] * 5]])  # (1, 1, 5, 5); with dilation 2 a 2x2 window sees columns 0, 2
    x0[0, 0, 1, 1] = 100.0  # between the taps of window (0, 0): never seen
    y = F.max_pool2d(leaf(backend, x0), 2, stride=1, dilation=2)
    assert y.shape == (1, 1, 3, 3)
    assert host(y)[0, 0, 0, 0] == 9.0 and host(y)[0, 0, 0, 1] == 3.0


def test_pool_options_bad_input():
    x = Tensor(np.zeros((1, 1, 5, 5)))
    with pytest.raises(ValueError, match="dilation"):
        F.max_pool2d(x, 2, dilation=0)
    with pytest.raises(ValueError, match=r"extent 5x5 with dilation"):
        F.max_pool2d(Tensor(np.zeros((1, 1, 4, 4))), 3, dilation=2)
    with pytest.raises(ValueError, match="dilation"):
        F.max_pool2d(x, 2, dilation=(1, 2, 3))
    F.max_pool2d(x, 3, dilation=2)  # extent 5 exactly fits


# =================================================================================================
# flatten
# =================================================================================================

@pytest.mark.parametrize("start, end, shape", [
    (1, -1, (2, 60)), (0, -1, (120,)), (2, 3, (2, 3, 20)), (0, 1, (6, 4, 5)), (1, 2, (2, 12, 5)),
    (-2, -1, (2, 3, 20)), (3, 3, (2, 3, 4, 5))])
def test_flatten_dims(backend, start, end, shape):
    x0 = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    x = leaf(backend, x0)
    y = F.flatten(x, start, end)
    assert y.shape == shape
    np.testing.assert_array_equal(host(y), x0.reshape(shape))
    assert nn.Flatten(start, end)(x).shape == shape
    assert gradcheck(lambda t: F.flatten(t, start, end), [x], mode="directional")


def test_flatten_matches_torch_and_edge_cases():
    torch = torch_or_skip()
    x0 = np.random.default_rng(1).standard_normal((2, 3, 4))
    for start in range(-3, 3):
        for end in range(-3, 3):
            if start % 3 <= end % 3:
                expected = tuple(torch.flatten(torch.tensor(x0), start, end).shape)
                assert F.flatten(Tensor(x0), start, end).shape == expected
    assert F.flatten(Tensor(np.zeros((0, 3, 4)))).shape == (0, 12)
    assert F.flatten(Tensor(np.float64(3.0)), 0).shape == (1,)
    with pytest.raises(ValueError, match=re.escape("start_dim 3")):
        F.flatten(Tensor(x0), 3)
    with pytest.raises(ValueError, match="comes after"):
        F.flatten(Tensor(x0), 2, 1)


# =================================================================================================
# softmax, log_softmax
# =================================================================================================

def naive_softmax(x, dim):
    x = np.moveaxis(x, dim, -1)
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        row = [float(v) for v in x[idx]]
        m = max(row)
        e = [math.exp(v - m) for v in row]
        out[idx] = [v / sum(e) for v in e]
    return np.moveaxis(out, -1, dim)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape, dim", [((4, 5), -1), ((4, 5), 0), ((2, 3, 4), 1), ((3,), 0), ((2, 3, 2, 2), 1)])
def test_softmax_and_log_softmax(backend, mode, shape, dim):
    rng = np.random.default_rng(2)
    x0 = rng.standard_normal(shape) * 3
    x = leaf(backend, x0)
    p = F.softmax(x, dim)
    np.testing.assert_allclose(host(p), naive_softmax(x0, dim), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(host(p).sum(axis=dim), 1.0, rtol=1e-12)
    np.testing.assert_allclose(host(F.log_softmax(x, dim)), np.log(naive_softmax(x0, dim)), rtol=1e-12, atol=1e-12)
    assert gradcheck(lambda t: F.softmax(t, dim), [x], mode=mode)
    assert gradcheck(lambda t: F.log_softmax(t, dim), [x], mode=mode)
    np.testing.assert_allclose(host(nn.Softmax(dim)(x)), host(p))
    np.testing.assert_allclose(host(nn.LogSoftmax(dim)(x)), host(F.log_softmax(x, dim)))


def test_softmax_is_stable_and_keeps_float32(backend):
    x0 = np.array([[1000.0, 0.0, -1000.0], [800.0, 799.0, -5.0]])
    p, logp = F.softmax(leaf(backend, x0), 1), F.log_softmax(leaf(backend, x0), 1)
    assert np.all(np.isfinite(host(p))) and np.all(np.isfinite(host(logp)))
    np.testing.assert_allclose(host(logp)[0], [0.0, -1000.0, -2000.0])
    np.testing.assert_allclose(host(p)[1], naive_softmax(x0, 1)[1], rtol=1e-12)
    x32 = leaf(backend, x0, dtype=np.float32)
    assert F.softmax(x32).dtype == np.float32 and F.log_softmax(x32).dtype == np.float32
    with pytest.raises(ValueError, match=re.escape("dim 2 is out of range for a tensor of shape (2, 3)")):
        F.softmax(leaf(backend, x0), 2)


def test_softmax_matches_torch():
    torch = torch_or_skip()
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((3, 4, 5))
    gy = upstream(rng, x0.shape)
    for fn, tfn in [(F.softmax, torch.softmax), (F.log_softmax, torch.log_softmax)]:
        for dim in (0, 1, 2, -1):
            x, tx = leaf("numpy", x0), torch.tensor(x0, requires_grad=True)
            y, ty = fn(x, dim), tfn(tx, dim)
            y.backward(gy)
            ty.backward(torch.tensor(gy))
            np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-10, atol=1e-14)


# =================================================================================================
# cross_entropy and nll_loss with weight, ignore_index, reduction
# =================================================================================================

def naive_loss(z, labels, smoothing=0.0, weight=None, ignore_index=-100, reduction="mean", log_probs=False):
    """PyTorch's documented formula, a row and a class at a time: row n (unless labelled
    ignore_index) costs -sum_k t[n, k] logp[n, k] with t = (1 - eps) w[y] onehot(y) + eps w / K;
    "mean" divides the sum by sum_n w[y_n] over the counted rows."""
    n_, k_ = z.shape
    w = np.ones(k_) if weight is None else np.asarray(weight, np.float64)
    losses, total_w = [], 0.0
    for n in range(n_):
        row = [float(v) for v in z[n]]
        if log_probs:
            logp = row
        else:
            m = max(row)
            lse = m + math.log(sum(math.exp(v - m) for v in row))
            logp = [v - lse for v in row]
        y = int(labels[n])
        if y == ignore_index:
            losses.append(0.0)
            continue
        total_w += w[y]
        loss = 0.0
        for k in range(k_):
            loss -= ((1 - smoothing) * w[y] * (k == y) + smoothing * w[k] / k_) * logp[k]
        losses.append(loss)
    if reduction == "none":
        return np.array(losses)
    if reduction == "sum":
        return sum(losses)
    return sum(losses) / total_w if total_w else math.nan


@st.composite
def loss_case(draw, small):
    n, k = draw(st.integers(1, 4 if small else 12)), draw(st.integers(2, 4 if small else 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    labels = rng.integers(0, k, n)
    ignore_index = draw(st.sampled_from([-100, 1]))
    if draw(st.booleans()):
        labels[rng.random(n) < 0.3] = ignore_index  # some rows ignored (maybe none, maybe all)
    if labels.min() < 0 and ignore_index != labels.min():
        labels[labels < 0] = 0
    weight = rng.uniform(0.2, 3.0, k) if draw(st.booleans()) else None
    return dict(z=rng.standard_normal((n, k)) * 3, labels=labels, weight=weight, ignore_index=ignore_index,
                smoothing=draw(st.sampled_from([0.0, 0.25, 0.5])),  # exact in float32, as PyTorch holds it
                reduction=draw(st.sampled_from(["mean", "sum", "none"])),
                gy=upstream(rng, (n,)))


def counted(case):
    return bool((case["labels"] != case["ignore_index"]).any())


def ce(case, backend):
    lab = mb.to_backend(case["labels"], backend)
    w = None if case["weight"] is None else mb.to_backend(case["weight"], backend)
    return lambda t: F.cross_entropy(t, lab, case["smoothing"], weight=w, ignore_index=case["ignore_index"],
                                     reduction=case["reduction"])


@settings(max_examples=40, deadline=None)
@given(case=loss_case(small=False))
def test_cross_entropy_options_match_the_formula(backend, case):
    loss = ce(case, backend)(leaf(backend, case["z"]))
    ref = naive_loss(case["z"], case["labels"], case["smoothing"], case["weight"], case["ignore_index"],
                     case["reduction"])
    assert loss.shape == (() if case["reduction"] != "none" else case["labels"].shape)
    if case["reduction"] == "mean" and not counted(case):
        assert np.isnan(host(loss))  # nothing counted: 0 / 0, as in PyTorch
    else:
        np.testing.assert_allclose(host(loss), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=25, deadline=None)
@given(case=loss_case(small=True))
def test_cross_entropy_options_gradcheck(backend, mode, case):
    if case["reduction"] == "mean" and not counted(case):
        return  # a NaN loss: the zero gradient is checked against PyTorch below
    assert gradcheck(ce(case, backend), [leaf(backend, case["z"])], mode=mode)


@settings(max_examples=25, deadline=None)
@given(case=loss_case(small=False))
def test_cross_entropy_and_nll_loss_match_torch(case):
    torch = torch_or_skip()
    tf = torch.nn.functional
    x, tx = leaf("numpy", case["z"]), torch.tensor(case["z"], requires_grad=True)
    tw = None if case["weight"] is None else torch.tensor(case["weight"])
    kw = dict(ignore_index=case["ignore_index"], reduction=case["reduction"])
    loss = F.cross_entropy(x, case["labels"], case["smoothing"], weight=case["weight"], **kw)
    tloss = tf.cross_entropy(tx, torch.tensor(case["labels"]), weight=tw, label_smoothing=case["smoothing"], **kw)
    gy = case["gy"] if case["reduction"] == "none" else np.array(-1.7)
    loss.backward(gy)
    tloss.backward(torch.tensor(gy))
    np.testing.assert_allclose(loss.numpy(), tloss.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-10, atol=1e-12)

    x, tx = leaf("numpy", case["z"]), torch.tensor(case["z"], requires_grad=True)
    loss = F.nll_loss(F.log_softmax(x, 1), case["labels"], weight=case["weight"], **kw)
    tloss = tf.nll_loss(tf.log_softmax(tx, 1), torch.tensor(case["labels"]), weight=tw, **kw)
    loss.backward(gy)
    tloss.backward(torch.tensor(gy))
    np.testing.assert_allclose(loss.numpy(), tloss.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=20, deadline=None)
@given(case=loss_case(small=True))
def test_nll_loss_gradcheck_and_two_step_form(backend, mode, case):
    lab = mb.to_backend(case["labels"], backend)
    w = None if case["weight"] is None else mb.to_backend(case["weight"], backend)
    kw = dict(weight=w, ignore_index=case["ignore_index"], reduction=case["reduction"])
    x = leaf(backend, case["z"])
    two_step = F.nll_loss(F.log_softmax(x, 1), lab, **kw)
    one_step = F.cross_entropy(x, lab, **kw)
    np.testing.assert_allclose(host(two_step), host(one_step), rtol=1e-12, atol=1e-12)
    if case["reduction"] == "mean" and not counted(case):
        return
    np.testing.assert_allclose(
        host(F.nll_loss(x, lab, **kw)),
        naive_loss(case["z"], case["labels"], 0.0, case["weight"], case["ignore_index"], case["reduction"],
                   log_probs=True),
        rtol=1e-12, atol=1e-12)
    assert gradcheck(lambda t: F.nll_loss(t, lab, **kw), [x], mode=mode)
    assert gradcheck(lambda t: F.nll_loss(F.log_softmax(t, 1), lab, **kw), [x], mode=mode)


def test_cross_entropy_denominators_when_everything_combines():
    """PyTorch's mean with weight, smoothing and ignore_index together, found by experiment:
    sum over counted rows of [(1 - eps) w[y] nll + (eps / K) sum_k w[k] (-logp[k])], divided by
    sum over counted rows of w[y]; neither the smoothing term's weights nor N enter the divisor."""
    torch = torch_or_skip()
    rng = np.random.default_rng(15)
    z0, w = rng.standard_normal((6, 4)), np.array([0.5, 2.0, 1.0, 3.0])
    labels, eps = np.array([0, 3, -100, 1, 2, 3]), 0.25  # 0.25: PyTorch holds label_smoothing in float32
    logp = z0 - np.log(np.exp(z0).sum(axis=1, keepdims=True))
    rows = labels != -100
    per_row = (1 - eps) * w[labels[rows]] * -logp[rows, labels[rows]] + eps / 4 * -(logp[rows] * w).sum(axis=1)
    expected = per_row.sum() / w[labels[rows]].sum()
    loss = F.cross_entropy(Tensor(z0), labels, eps, weight=w)
    assert loss.item() == pytest.approx(expected, rel=1e-13)
    torch_loss = torch.nn.functional.cross_entropy(torch.tensor(z0), torch.tensor(labels), weight=torch.tensor(w),
                                                   label_smoothing=eps)
    assert torch_loss.item() == pytest.approx(expected, rel=1e-13)
    assert expected != pytest.approx(per_row.sum() / rows.sum(), rel=1e-3)  # the weighted divisor matters here


def test_all_ignored_mean_is_nan_with_zero_gradient(backend):
    x = leaf(backend, np.random.default_rng(4).standard_normal((3, 4)))
    labels = np.full(3, -100)
    for fn in (lambda t: F.cross_entropy(t, labels, 0.1), lambda t: F.nll_loss(F.log_softmax(t, 1), labels)):
        x.grad = None
        loss = fn(x)
        assert np.isnan(loss.item())
        loss.backward()
        np.testing.assert_array_equal(host(x.grad), np.zeros((3, 4)))
        assert F.cross_entropy(x, labels, reduction="sum").item() == 0.0


def test_ignore_index_inside_the_class_range():
    z0 = np.random.default_rng(5).standard_normal((4, 3))
    labels = np.array([0, 1, 2, 1])
    loss = F.cross_entropy(Tensor(z0), labels, ignore_index=1)
    assert loss.item() == pytest.approx(naive_loss(z0[[0, 2]], labels[[0, 2]]), rel=1e-12)


def test_class_loss_bad_input():
    z = Tensor(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="reduction must be one of mean, sum, none, got 'avg'"):
        F.cross_entropy(z, [0, 1, 2], reduction="avg")
    with pytest.raises(ValueError, match=re.escape("weight must have shape (4,) (one per class), got (3,)")):
        F.cross_entropy(z, [0, 1, 2], weight=np.ones(3))
    with pytest.raises(ValueError, match=r"\[0, 4\) or equal ignore_index \(-1\), found \[-2\]"):
        F.cross_entropy(z, [0, -1, -2], ignore_index=-1)
    with pytest.raises(ValueError, match=re.escape("nll_loss expects log_probs of shape (N, K), got (12,)")):
        F.nll_loss(Tensor(np.zeros(12)), np.zeros(12, np.int64))
    with pytest.raises(ValueError, match="nll_loss: labels must lie in"):
        F.nll_loss(z, [0, 4, 1])
    F.cross_entropy(z, [0, -1, 3], ignore_index=-1)  # the ignored label may lie outside [0, K)


# =================================================================================================
# sigmoid, tanh, leaky_relu
# =================================================================================================

def naive_sigmoid(x):
    return np.vectorize(lambda v: 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v)))(x)


ACTIVATIONS = {
    "sigmoid": (F.sigmoid, naive_sigmoid, nn.Sigmoid()),
    "tanh": (F.tanh, np.vectorize(math.tanh), nn.Tanh()),
    "leaky_relu": (F.leaky_relu, lambda x: np.where(x > 0, x, 0.01 * x), nn.LeakyReLU()),
    "leaky_relu_0.2": (lambda t: F.leaky_relu(t, 0.2), lambda x: np.where(x > 0, x, 0.2 * x), nn.LeakyReLU(0.2)),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activations_forward_and_gradcheck(backend, mode, name):
    fn, ref, module = ACTIVATIONS[name]
    rng = np.random.default_rng(6)
    shape = (3, 4) if mode == "full" else (2, 3, 5, 5)
    x0 = rng.uniform(0.1, 4.0, shape) * rng.choice([-1.0, 1.0], shape)  # away from leaky_relu's kink
    x = leaf(backend, x0)
    np.testing.assert_allclose(host(fn(x)), ref(x0), rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(host(module(x)), host(fn(x)))
    assert gradcheck(fn, [x], mode=mode)
    x32 = leaf(backend, x0, dtype=np.float32)
    assert fn(x32).dtype == np.float32
    x32.grad = None
    fn(x32).backward(mb.to_backend(np.ones(shape, np.float32), backend))
    assert x32.grad.dtype == np.float32


def test_sigmoid_does_not_overflow(backend):
    x0 = np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        y = host(F.sigmoid(leaf(backend, x0)))
    np.testing.assert_allclose(y, [0.0, math.exp(-40) / (1 + math.exp(-40)), 0.5, 1 / (1 + math.exp(-40)), 1.0],
                               rtol=1e-15, atol=0)


def test_activations_match_torch():
    torch = torch_or_skip()
    rng = np.random.default_rng(7)
    x0 = rng.standard_normal((4, 6)) * 5
    x0[0, 0] = 0.0  # torch takes the negative slope at 0; so does minires
    gy = upstream(rng, x0.shape)
    pairs = [(F.sigmoid, torch.sigmoid), (F.tanh, torch.tanh),
             (lambda t: F.leaky_relu(t, 0.3), lambda t: torch.nn.functional.leaky_relu(t, 0.3))]
    for fn, tfn in pairs:
        x, tx = leaf("numpy", x0), torch.tensor(x0, requires_grad=True)
        y, ty = fn(x), tfn(tx)
        y.backward(gy)
        ty.backward(torch.tensor(gy))
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-14, atol=1e-16)
        np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-13, atol=1e-15)  # 1 - y near 0: rounding


# =================================================================================================
# dropout
# =================================================================================================

def test_dropout_identity_cases(backend):
    x = leaf(backend, np.random.default_rng(8).standard_normal((4, 5)))
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    layer = nn.Dropout(0.5)
    layer.eval()
    assert layer(x) is x
    y = F.dropout(x, 1.0)
    np.testing.assert_array_equal(host(y), np.zeros((4, 5)))
    y.backward(mb.to_backend(np.ones((4, 5)), backend))
    np.testing.assert_array_equal(host(x.grad), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="p must lie in"):
        F.dropout(x, 1.5)
    with pytest.raises(ValueError, match="p must lie in"):
        nn.Dropout(-0.1)


def test_dropout_scales_kept_elements_and_drops_about_p(backend):
    x0 = np.random.default_rng(9).uniform(1.0, 2.0, (200, 500))
    x = leaf(backend, x0)
    y = host(F.dropout(x, 0.3, rng=1))
    kept = y != 0
    np.testing.assert_allclose(y[kept], x0[kept] / 0.7, rtol=1e-15)
    assert abs(1 - kept.mean() - 0.3) < 0.005  # 100,000 draws: the std of the fraction is 0.0014
    np.testing.assert_array_equal(host(F.dropout(x, 0.3, rng=1)), y)
    assert F.dropout(leaf(backend, x0, dtype=np.float32), 0.3).dtype == np.float32


@pytest.mark.parametrize("mode", MODES)
def test_dropout_gradcheck(backend, mode):
    rng = np.random.default_rng(10)
    x = leaf(backend, rng.standard_normal((3, 4) if mode == "full" else (4, 3, 5, 5)))
    # a fixed seed: every evaluation of the checker draws the same mask
    assert gradcheck(lambda t: F.dropout(t, 0.4, rng=123), [x], mode=mode)
    y = F.dropout(x, 0.4, rng=123)
    gy = upstream(rng, x.shape)
    x.grad = None
    y.backward(mb.to_backend(gy, backend))
    np.testing.assert_allclose(host(x.grad), gy * (host(y) != 0) / 0.6, rtol=1e-15)


def test_dropout_is_seeded_by_manual_seed_and_same_on_every_backend(backend):
    x = leaf(backend, np.ones((6, 7)))
    minires.manual_seed(5)
    a = host(F.dropout(x, 0.5))
    b = host(F.dropout(x, 0.5))
    minires.manual_seed(5)
    np.testing.assert_array_equal(host(F.dropout(x, 0.5)), a)
    np.testing.assert_array_equal(host(F.dropout(x, 0.5)), b)
    assert not np.array_equal(a, b)
    # the mask comes from the host generator: the NumPy mask for the same seed
    expected = np.random.default_rng(7).random((6, 7), dtype=np.float32) >= 0.5
    np.testing.assert_array_equal(host(F.dropout(x, 0.5, rng=7)) != 0, expected)
    layer = nn.Dropout(0.5, seed=11)
    first = host(layer(x))
    assert (first == 0).any() and (first == 2).any()
    np.testing.assert_array_equal(host(nn.Dropout(0.5, seed=11)(x)), first)
    assert repr(layer) == "Dropout(p=0.5)"


# =================================================================================================
# nn modules
# =================================================================================================

def test_pool_modules_take_the_options(backend):
    x = leaf(backend, distinct(np.random.default_rng(11), (2, 3, 7, 7)))
    m = nn.MaxPool2d(3, stride=2, padding=1, dilation=2, ceil_mode=True)
    np.testing.assert_array_equal(host(m(x)), host(F.max_pool2d(x, 3, 2, 1, 2, True)))
    assert "dilation=2" in repr(m) and "ceil_mode=True" in repr(m)
    y, idx = nn.MaxPool2d(2, return_indices=True)(x)
    assert y.shape == idx.shape == (2, 3, 3, 3)
    a = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    np.testing.assert_array_equal(host(a(x)), host(F.avg_pool2d(x, 3, 2, 1, True, False)))
    assert "count_include_pad=False" in repr(a)
    assert repr(nn.AvgPool2d(2)) == "AvgPool2d(kernel_size=2, stride=2, padding=0)"
    assert repr(nn.Flatten(2)) == "Flatten(start_dim=2, end_dim=-1)"
    assert repr(nn.LeakyReLU(0.2)) == "LeakyReLU(negative_slope=0.2)"


def test_pool_modules_match_torch_modules():
    torch = torch_or_skip()
    x0 = distinct(np.random.default_rng(12), (2, 3, 9, 8))
    pairs = [(nn.MaxPool2d(3, 2, 1, 2, ceil_mode=True), torch.nn.MaxPool2d(3, 2, 1, 2, ceil_mode=True)),
             (nn.AvgPool2d(3, 2, 1, True, False), torch.nn.AvgPool2d(3, 2, 1, True, False)),
             (nn.Flatten(1, 2), torch.nn.Flatten(1, 2)), (nn.LeakyReLU(0.1), torch.nn.LeakyReLU(0.1)),
             (nn.Softmax(1), torch.nn.Softmax(1)), (nn.LogSoftmax(2), torch.nn.LogSoftmax(2))]
    for m, tm in pairs:
        np.testing.assert_allclose(m(Tensor(x0)).numpy(), tm(torch.tensor(x0)).numpy(), rtol=1e-12, atol=1e-14)


# =================================================================================================
# ONNX export
# =================================================================================================

class OptionsNet(nn.Module):
    def __init__(self, final):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.max = nn.MaxPool2d(3, stride=2, padding=1, dilation=2, ceil_mode=True)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
        self.sig, self.tanh = nn.Sigmoid(), nn.Tanh()
        self.drop = nn.Dropout(0.5)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4 * 3 * 3, 5)
        self.final = final

    def forward(self, x):
        y = self.avg(self.max(self.act(self.conv(x))))  # (N, 4, 3, 3) from 9x9
        y = self.tanh(y) + self.sig(y)
        return self.final(self.fc(self.flat(self.drop(y))))


@pytest.mark.parametrize("final", [nn.Softmax(1), nn.LogSoftmax(-1), nn.Identity()])
def test_onnx_export_of_the_new_ops(final):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import minires.onnx
    model = OptionsNet(final)
    proto = minires.onnx.to_onnx(model, (1, 3, 9, 9))
    ops = [n.op_type for n in proto.graph.node]
    for op in ("LeakyRelu", "MaxPool", "AveragePool", "Sigmoid", "Tanh", "Flatten"):
        assert op in ops
    assert "Dropout" not in ops and (type(final).__name__ in ops or isinstance(final, nn.Identity))
    x = np.random.default_rng(13).normal(size=(3, 3, 9, 9)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    model.eval()
    with minires.no_grad():
        expected = model(Tensor(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, rtol=1e-4, atol=1e-5)


POOLS = [nn.MaxPool2d(2, ceil_mode=True), nn.MaxPool2d(3, 2, 1, dilation=2), nn.MaxPool2d(2, 1, 1, dilation=(2, 1)),
         nn.MaxPool2d(3, 2, 1, 2, ceil_mode=True), nn.AvgPool2d(2, ceil_mode=True),
         nn.AvgPool2d(3, 2, 1, ceil_mode=True), nn.AvgPool2d(3, 2, 1, count_include_pad=False),
         nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), nn.Flatten(2), nn.Flatten(0, 1)]


@pytest.mark.parametrize("layer", POOLS, ids=repr)
def test_onnx_export_of_pooling_options_and_flatten(layer):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import minires.onnx

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)
            self.layer = layer

        def forward(self, x):
            return self.layer(self.conv(x))

    model = Net()
    proto = minires.onnx.to_onnx(model, (1, 3, 7, 6))
    x = np.random.default_rng(14).normal(size=(2, 3, 7, 6)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    model.eval()
    with minires.no_grad():
        expected = model(Tensor(x)).numpy()
    y = session.run(None, {"input": x})[0]
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
