"""Autograd: Tensor operators (gradchecked, with broadcasting) and the mechanics of backward."""
import sys
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import minires
from minires import Tensor, gradcheck, no_grad
from minires import backend as mb
from minires import functional as F

MODES = ["full", "directional"]
FEW = settings(max_examples=20, deadline=None)


def leaf(backend, a, requires_grad=True):
    return Tensor(mb.to_backend(np.asarray(a, dtype=np.float64), backend), requires_grad=requires_grad)


def host(a):
    """A NumPy copy of a NumPy or CuPy array (or Tensor), independent of minires.backend.to_numpy."""
    a = a.data if isinstance(a, Tensor) else a
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def away_from_zero(rng, shape, lo=0.5, hi=2.0):
    return rng.uniform(lo, hi, shape) * rng.choice([-1.0, 1.0], shape)


def max_side(mode):
    return 3 if mode == "full" else 6


# =================================================================================================
# Operators, gradchecked in float64 in both modes
# =================================================================================================

BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", list(BINARY))
@FEW
@given(data=st.data())
def test_binary_operator_broadcasting_gradcheck(backend, mode, op, data):
    shapes = data.draw(mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3,
                                                     max_side=max_side(mode)))
    sa, sb = shapes.input_shapes
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    a = leaf(backend, rng.standard_normal(sa))
    b = leaf(backend, away_from_zero(rng, sb))
    fn = BINARY[op]
    y = fn(a, b)
    assert y.shape == shapes.result_shape
    np.testing.assert_allclose(host(y), fn(host(a), host(b)), rtol=1e-12)
    assert gradcheck(fn, [a, b], mode=mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sa, sb", [((3, 1, 4), (2, 4)), ((2, 4), (3, 1, 4)), ((3, 4), (4,)),
                                    ((3, 4), (3, 1)), ((2, 3, 4), ()), ((1, 1), (3, 5))])
def test_unbroadcasting_fixed_cases(backend, mode, sa, sb):
    rng = np.random.default_rng(0)
    a = leaf(backend, rng.standard_normal(sa))
    b = leaf(backend, away_from_zero(rng, sb))
    for fn in BINARY.values():
        assert gradcheck(fn, [a, b], mode=mode)
    # The gradient of a broadcast operand is the sum over its copies.
    a.grad = b.grad = None
    out = a + b
    g = rng.standard_normal(out.shape)
    out.backward(mb.to_backend(g, backend))
    extra = g.ndim - len(sb)
    gb = g.sum(axis=tuple(range(extra))) if extra else g
    gb = gb.sum(axis=tuple(i for i, n in enumerate(sb) if n == 1), keepdims=True) if sb else gb
    np.testing.assert_allclose(host(b.grad), gb.reshape(sb), rtol=1e-12)
    assert b.grad.shape == sb and a.grad.shape == sa


@pytest.mark.parametrize("mode", MODES)
def test_operators_with_constants_gradcheck(backend, mode):
    rng = np.random.default_rng(1)
    x = leaf(backend, away_from_zero(rng, (3, 4)))
    c = mb.to_backend(rng.standard_normal((4,)), backend)  # a raw array constant
    fns = [lambda t: t + 2.0, lambda t: 2.0 + t, lambda t: t - 3.0, lambda t: 3.0 - t,
           lambda t: t * 1.5, lambda t: 1.5 * t, lambda t: t / 4.0, lambda t: 4.0 / t,
           lambda t: -t, lambda t: t * c, lambda t: c * t, lambda t: c - t, lambda t: t / (c * c + 1)]
    for fn in fns:
        assert gradcheck(fn, [x], mode=mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("p", [2, 3, -1, 0.5, 1.5, -2.5])
def test_pow_constant_gradcheck(backend, mode, p):
    rng = np.random.default_rng(2)
    shape = (2, 3) if mode == "full" else (5, 7)
    x = leaf(backend, rng.uniform(0.5, 2.0, shape) if p != int(p) else away_from_zero(rng, shape))
    y = x ** p
    np.testing.assert_allclose(host(y), host(x) ** p, rtol=1e-12)
    assert gradcheck(lambda t: t ** p, [x], mode=mode)


def test_pow_rejects_tensor_exponent():
    with pytest.raises(TypeError):
        Tensor(np.ones(2)) ** Tensor(np.ones(2))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sa, sb", [((3, 4), (4, 5)), ((1, 1), (1, 1)), ((2, 3, 4), (4, 2)),
                                    ((2, 3, 4), (2, 4, 5)), ((3, 4), (2, 4, 3))])
def test_matmul_gradcheck(backend, mode, sa, sb):
    rng = np.random.default_rng(3)
    a = leaf(backend, rng.standard_normal(sa))
    b = leaf(backend, rng.standard_normal(sb))
    y = a @ b
    np.testing.assert_allclose(host(y), host(a) @ host(b), rtol=1e-12)
    assert gradcheck(lambda p, q: p @ q, [a, b], mode=mode)
    # ndarray @ Tensor goes through __rmatmul__
    assert gradcheck(lambda q: a.data @ q, [b], mode=mode)


def test_matmul_rejects_mismatched_and_1d_operands():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 2\)"):
        Tensor(np.ones((3, 4))) @ Tensor(np.ones((5, 2)))
    with pytest.raises(ValueError):
        Tensor(np.ones((3, 4))) @ Tensor(np.ones(4))


@st.composite
def reduction_case(draw, max_side):
    shape = tuple(draw(st.lists(st.integers(1, max_side), min_size=1, max_size=4)))
    nd = len(shape)
    kind = draw(st.sampled_from(["none", "int", "neg", "tuple"]))
    if kind == "none":
        axis = None
    elif kind == "int":
        axis = draw(st.integers(0, nd - 1))
    elif kind == "neg":
        axis = draw(st.integers(-nd, -1))
    else:
        axis = tuple(sorted(draw(st.sets(st.integers(0, nd - 1), min_size=1))))
    return shape, axis, draw(st.booleans())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@FEW
@given(data=st.data())
def test_sum_mean_gradcheck(backend, mode, reduce, data):
    shape, axis, keepdims = data.draw(reduction_case(max_side(mode)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    x = leaf(backend, rng.standard_normal(shape))
    fn = (lambda t: t.sum(axis=axis, keepdims=keepdims)) if reduce == "sum" else \
         (lambda t: t.mean(axis=axis, keepdims=keepdims))
    y = fn(x)
    ref = getattr(host(x), reduce)(axis=axis, keepdims=keepdims)
    assert y.shape == ref.shape
    np.testing.assert_allclose(host(y), ref, rtol=1e-6, atol=1e-12)
    assert gradcheck(fn, [x], mode=mode)


@pytest.mark.parametrize("mode", MODES)
@FEW
@given(data=st.data())
def test_reshape_gradcheck(backend, mode, data):
    shape = tuple(data.draw(st.lists(st.integers(1, max_side(mode)), min_size=1, max_size=4)))
    n = int(np.prod(shape))
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    d = data.draw(st.sampled_from(divisors))
    target = data.draw(st.sampled_from([(d, -1), (-1, d), (n,), (d, n // d, 1)]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    x = leaf(backend, rng.standard_normal(shape))
    np.testing.assert_array_equal(host(x.reshape(target)), host(x).reshape(target))
    assert gradcheck(lambda t: t.reshape(target), [x], mode=mode)
    assert gradcheck(lambda t: t.reshape(*target), [x], mode=mode)


def test_reshape_to_incompatible_shape_raises():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 2\)"):
        Tensor(np.ones((2, 3))).reshape(4, 2)


@pytest.mark.parametrize("mode", MODES)
@FEW
@given(data=st.data())
def test_transpose_gradcheck(backend, mode, data):
    shape = tuple(data.draw(st.lists(st.integers(1, max_side(mode)), min_size=1, max_size=4)))
    axes = tuple(data.draw(st.permutations(range(len(shape)))))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    x = leaf(backend, rng.standard_normal(shape))
    np.testing.assert_array_equal(host(x.transpose(axes)), host(x).transpose(axes))
    assert gradcheck(lambda t: t.transpose(axes), [x], mode=mode)
    assert gradcheck(lambda t: t.transpose(*axes), [x], mode=mode)
    assert gradcheck(lambda t: t.T, [x], mode=mode)
    assert gradcheck(lambda t: t.transpose(), [x], mode=mode)


@pytest.mark.parametrize("axes", [(-1, 0, 1), (0, -1, 1), (-2, 0, 2)])
def test_transpose_negative_axes_gradcheck(axes):
    x = leaf("numpy", np.random.default_rng(4).standard_normal((3, 3, 3)))
    np.testing.assert_array_equal(x.transpose(axes).data, x.data.transpose(axes))
    assert gradcheck(lambda t: t.transpose(axes), [x])


@pytest.mark.parametrize("mode", MODES)
def test_exp_log_gradcheck(backend, mode):
    rng = np.random.default_rng(5)
    shape = (2, 3) if mode == "full" else (6, 7)
    x = leaf(backend, rng.uniform(-2, 2, shape))
    p = leaf(backend, rng.uniform(0.2, 3.0, shape))
    np.testing.assert_allclose(host(x.exp()), np.exp(host(x)), rtol=1e-12)
    np.testing.assert_allclose(host(p.log()), np.log(host(p)), rtol=1e-12)
    assert gradcheck(lambda t: t.exp(), [x], mode=mode)
    assert gradcheck(lambda t: t.log(), [p], mode=mode)
    assert gradcheck(lambda t: (t * t + 1.0).log().exp(), [x], mode=mode)


@st.composite
def slice_index(draw, shape):
    index = []
    for n in shape:
        kind = draw(st.sampled_from(["slice", "int", "all"]))
        if kind == "int":
            index.append(draw(st.integers(-n, n - 1)))
        elif kind == "all":
            index.append(slice(None))
        else:
            start = draw(st.none() | st.integers(-n, n))
            stop = draw(st.none() | st.integers(-n, n))
            step = draw(st.sampled_from([None, 1, 2, 3, -1, -2]))
            index.append(slice(start, stop, step))
    return tuple(index)


@pytest.mark.parametrize("mode", MODES)
@FEW
@given(data=st.data())
def test_getitem_slices_gradcheck(backend, mode, data):
    shape = tuple(data.draw(st.lists(st.integers(1, max_side(mode) + 1), min_size=1, max_size=3)))
    index = data.draw(slice_index(shape))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    x = leaf(backend, rng.standard_normal(shape))
    ref = host(x)[index]
    y = x[index]
    np.testing.assert_array_equal(host(y), ref)
    if ref.size == 0:
        return
    assert gradcheck(lambda t: t[index], [x], mode=mode)
    # Picking elements: the gradient is zero where nothing was picked.
    x.grad = None
    y = x[index]
    y.backward(mb.to_backend(np.ones(y.shape), backend))
    expected = np.zeros(shape)
    expected[index] = 1.0
    np.testing.assert_array_equal(host(x.grad), expected)


def test_getitem_repeated_integer_index_accumulates():
    x = leaf("numpy", np.arange(4.0))
    assert gradcheck(lambda t: t[np.array([0, 2, 0, 0])], [x])
    x.grad = None
    x[np.array([1, 1, 3])].sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 2, 0, 1])


@pytest.mark.parametrize("mode", MODES)
def test_composite_expression_with_explicit_grad_output(backend, mode):
    rng = np.random.default_rng(6)
    a = leaf(backend, rng.standard_normal((3, 1, 4)))
    b = leaf(backend, rng.uniform(0.5, 2, (2, 4)))
    fn = lambda p, q: (((p * q - q / (p * p + 1.0)) ** 2).sum(axis=1, keepdims=True) * 0.2).exp() - p.mean()
    out_shape = fn(a, b).shape
    g = mb.to_backend(rng.uniform(-3, 3, out_shape), backend)
    assert gradcheck(fn, [a, b], mode=mode, grad_output=g)


# =================================================================================================
# Mechanics
# =================================================================================================

def test_gradient_accumulates_when_a_tensor_is_used_twice(backend):
    x0 = np.array([-1.5, 0.25, 2.0])
    x = leaf(backend, x0)
    y = x * x + x
    y.backward(mb.to_backend(np.ones(3), backend))
    np.testing.assert_allclose(host(x.grad), 2 * x0 + 1, rtol=1e-12)


def test_gradient_accumulates_through_residual_fan_out(backend):
    rng = np.random.default_rng(7)
    x0, w0 = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    x, w = leaf(backend, x0), leaf(backend, w0)
    h = x * w                          # one intermediate feeding three consumers
    out = F.add(F.relu(h), h) + h.exp()
    g = rng.standard_normal((2, 3))
    out.backward(mb.to_backend(g, backend))
    h0 = x0 * w0
    dh = g * ((h0 > 0) + 1 + np.exp(h0))
    np.testing.assert_allclose(host(x.grad), dh * w0, rtol=1e-12)
    np.testing.assert_allclose(host(w.grad), dh * x0, rtol=1e-12)
    for mode in MODES:
        assert gradcheck(lambda p, q: F.add(F.relu(p * q), p * q) + (p * q).exp(),
                         [leaf(backend, x0 + 0.05), leaf(backend, w0)], mode=mode)


def test_backward_twice_accumulates_into_grad(backend):
    x0 = np.array([[1.0, -2.0], [0.5, 3.0]])
    x = leaf(backend, x0)
    (x * x).sum().backward()
    first = host(x.grad).copy()
    np.testing.assert_allclose(first, 2 * x0)
    (x * x).sum().backward()
    np.testing.assert_allclose(host(x.grad), 4 * x0)
    # a leaf's own backward accumulates too
    z = leaf(backend, np.zeros(2))
    z.backward(mb.to_backend(np.array([1.0, 2.0]), backend))
    z.backward(mb.to_backend(np.array([1.0, 2.0]), backend))
    np.testing.assert_allclose(host(z.grad), [2.0, 4.0])


def test_leaf_grads_are_independent_writable_arrays(backend):
    """A backward may hand one array to two inputs (add) or a read-only broadcast view (sum):
    each leaf must still get its own writable .grad, separate from the caller's grad array."""
    a, b = leaf(backend, np.ones(3)), leaf(backend, np.ones(3))
    g = mb.to_backend(np.arange(3.0), backend)
    (a + b).backward(g)
    assert a.grad is not b.grad and a.grad is not g
    a.grad *= 2  # in-place edits (clipping, weight decay) touch only a.grad
    np.testing.assert_array_equal(host(b.grad), [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(host(g), [0.0, 1.0, 2.0])
    x = leaf(backend, np.ones((2, 3)))
    x.sum().backward()
    x.grad += 1.0
    np.testing.assert_array_equal(host(x.grad), np.full((2, 3), 2.0))


@pytest.mark.parametrize("kind", ["add", "reshape"])
def test_chain_deeper_than_recursion_limit(backend, kind):
    depth = 5000
    assert depth > sys.getrecursionlimit()
    x = leaf(backend, np.ones((2, 3)))
    y = x
    for i in range(depth):
        if kind == "add":
            y = y + 1.0
        else:
            y = y.reshape((3, 2) if i % 2 == 0 else (2, 3))
    y.sum().backward()
    np.testing.assert_array_equal(host(x.grad), np.ones((2, 3)))


def test_graph_is_freed_after_backward(backend):
    x = leaf(backend, np.random.default_rng(8).standard_normal((4, 3)))
    h = x * 2.0
    mul_fn = weakref.ref(h.creator)
    bn_out = F.batch_norm(h, None, None, training=True)
    bn_fn = bn_out.creator
    saved = weakref.ref(bn_fn.xc)  # an array only the BN Function holds
    loss = bn_out.exp().sum()
    del h, bn_out
    assert mul_fn() is not None and saved() is not None
    loss.backward()
    assert mul_fn() is None, "an intermediate Function outlived backward"
    assert saved() is None, "an array saved for backward outlived backward"
    assert getattr(loss.creator, "inputs", None) is None
    assert x.grad is not None


def test_no_grad_records_nothing(backend):
    x = leaf(backend, np.ones((2, 2)))
    assert minires.is_grad_enabled()
    with no_grad():
        assert not minires.is_grad_enabled()
        y = (x * 3.0).exp().sum()
        z = F.relu(x)
        with no_grad():
            pass
        assert not minires.is_grad_enabled()
    assert minires.is_grad_enabled()
    for t in (y, z):
        assert t.requires_grad is False and t.creator is None
    with pytest.raises(RuntimeError):
        y.backward()
    # restored after an exception too
    with pytest.raises(KeyError):
        with no_grad():
            raise KeyError("boom")
    assert minires.is_grad_enabled()
    w = x * 3.0
    assert w.requires_grad and w.creator is not None


def test_constants_only_do_not_require_grad():
    a = Tensor(np.ones(3))
    y = a * 2.0 + a
    assert not y.requires_grad and y.creator is None


def test_detach(backend):
    x0 = np.array([1.0, -2.0, 3.0])
    x = leaf(backend, x0)
    h = x * 2.0
    d = h.detach()
    assert d.requires_grad is False and d.creator is None
    np.testing.assert_array_equal(host(d), 2 * x0)
    assert d.data is h.data  # same data, no copy
    (x * x.detach()).sum().backward()
    np.testing.assert_allclose(host(x.grad), x0)  # not 2 x: no gradient through the detached copy


def test_item_and_numpy(backend):
    t = leaf(backend, np.array([[3.5]]), requires_grad=False)
    v = t.item()
    assert isinstance(v, float) and v == 3.5
    a = np.arange(6.0).reshape(2, 3)
    n = leaf(backend, a, requires_grad=False).numpy()
    assert isinstance(n, np.ndarray)
    np.testing.assert_array_equal(n, a)
    assert Tensor(np.arange(3)).shape == (3,) and len(Tensor(np.zeros((4, 2)))) == 4


def test_backward_argument_errors(backend):
    x = leaf(backend, np.ones((2, 3)))
    y = x * 2.0
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)|\(2, 3\).*\(3, 2\)"):
        y.backward(mb.to_backend(np.ones((3, 2)), backend))
    with pytest.raises(RuntimeError):
        Tensor(np.ones(1)).backward()
    # a one-element non-scalar is fine without grad
    z = leaf(backend, np.array([[2.0]]))
    (z * z).backward()
    np.testing.assert_allclose(host(z.grad), [[4.0]])


def test_default_dtypes():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor([[1.5], [2]]).dtype == np.float32
    assert Tensor(2.5).dtype == np.float32
    assert Tensor(np.ones(3, np.float64)).dtype == np.float64
    assert Tensor(np.ones(3, np.float32)).dtype == np.float32
    assert Tensor(np.float64(1.0)).dtype == np.float64
    assert Tensor([1, 2], dtype=np.float64).dtype == np.float64
    x64 = Tensor(np.ones(3), requires_grad=True)
    assert (x64 * 2.0).dtype == np.float64 and (x64 + 1).dtype == np.float64
    assert (2.0 / x64).dtype == np.float64 and x64.mean().dtype == np.float64
    x32 = Tensor(np.ones(3, np.float32), requires_grad=True)
    assert (x32 * 2.0).dtype == np.float32 and x32.sum().dtype == np.float32
    (x32 * 2.0).sum().backward()
    assert x32.grad.dtype == np.float32
    assert Tensor(np.ones(2)).astype(np.float32).dtype == np.float32


def test_float64_arithmetic_with_python_constants_is_float64_accurate():
    a = np.array([1.0, 2.0, 3.0])
    assert Tensor(a).mean().item() == pytest.approx(2.0, rel=1e-14)
    np.testing.assert_allclose((Tensor(a) * 0.1).data, a * 0.1, rtol=1e-14)
    np.testing.assert_allclose((Tensor(a) / 3.0).data, a / 3.0, rtol=1e-14)


def test_graph_keeps_only_saved_arrays():
    # Exp saves its output, not its input: the input's array must not be held by the graph,
    # which is what keeps a training step's memory near PyTorch's.
    x = Tensor(np.random.default_rng(9).standard_normal((4, 3)), requires_grad=True)
    h = x * 2.0
    h_data = weakref.ref(h.data)
    loss = h.exp().sum()
    del h
    assert h_data() is None, "the graph kept an intermediate array that no backward needs"
    loss.backward()
    np.testing.assert_allclose(x.grad, 2.0 * np.exp(2.0 * x.data))


def test_second_backward_on_a_freed_graph_says_so():
    x = Tensor(np.ones(3), requires_grad=True)
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="freed by an earlier backward"):
        loss.backward()


# -- function hooks ----------------------------------------------------------------------------------

class Recorder(minires.autograd.FunctionHook):
    def __init__(self):
        self.events = []

    def forward_preprocess(self, function, inputs):
        self.events.append(("forward_pre", type(function).__name__, [a.shape for a in inputs]))

    def forward_postprocess(self, function, inputs, outputs):
        self.events.append(("forward_post", type(function).__name__, [a.shape for a in outputs]))

    def backward_preprocess(self, function, grad_outputs):
        self.events.append(("backward_pre", type(function).__name__, [g.shape for g in grad_outputs]))

    def backward_postprocess(self, function, grad_outputs, grad_inputs):
        self.events.append(("backward_post", type(function).__name__,
                            [None if g is None else g.shape for g in grad_inputs]))


def test_function_hook_sees_every_forward_and_backward_with_arrays():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    W = Tensor(np.ones((4, 3)))  # no gradient wanted
    with Recorder() as rec:
        assert minires.autograd.function_hooks() == (rec,)
        y = F.linear(x, W)
        loss = F.relu(y).sum()
        loss.backward()
    assert minires.autograd.function_hooks() == ()
    assert rec.events == [
        ("forward_pre", "LinearFunction", [(2, 3), (4, 3)]), ("forward_post", "LinearFunction", [(2, 4)]),
        ("forward_pre", "ReLUFunction", [(2, 4)]), ("forward_post", "ReLUFunction", [(2, 4)]),
        ("forward_pre", "Sum", [(2, 4)]), ("forward_post", "Sum", [()]),
        ("backward_pre", "Sum", [()]), ("backward_post", "Sum", [(2, 4)]),
        ("backward_pre", "ReLUFunction", [(2, 4)]), ("backward_post", "ReLUFunction", [(2, 4)]),
        ("backward_pre", "LinearFunction", [(2, 4)]), ("backward_post", "LinearFunction", [(2, 3), None]),
    ]
    F.relu(x)  # no longer recorded
    assert len(rec.events) == 12


def test_function_hooks_nest_run_in_order_and_are_removed_on_error():
    outer, inner = Recorder(), Recorder()
    order = []
    outer.forward_preprocess = lambda f, inputs: order.append("outer")
    inner.forward_preprocess = lambda f, inputs: order.append("inner")
    with outer:
        F.relu(Tensor(np.ones(3)))
        with pytest.raises(ValueError, match="cannot reshape"):
            with inner:
                F.relu(Tensor(np.ones(3)))
                Tensor(np.ones(3)).reshape(2, 2)
        assert minires.autograd.function_hooks() == (outer,)
    assert order == ["outer", "outer", "inner", "outer", "inner"]
    assert minires.autograd.function_hooks() == ()
    hook = Recorder().add()
    with pytest.raises(RuntimeError, match="already active"):
        hook.add()
    hook.remove()
    with pytest.raises(RuntimeError, match="not active"):
        hook.remove()


@pytest.mark.parametrize("expr", [lambda A: A + A * A, lambda A: A * A + A, lambda A: A + (A * A + A) * A])
def test_backward_orders_a_producer_before_every_consumer(expr):
    """An op whose first input is an ancestor of its second (A + A*A) once crashed backward: the
    producer of A was ordered after one of its consumers."""
    a = Tensor(np.array(2.0), requires_grad=True)
    expr(a * 3.0).backward()
    eps = 1e-6
    numeric = (expr(Tensor(np.array(6.0 + 3 * eps))).data - expr(Tensor(np.array(6.0 - 3 * eps))).data) / (2 * eps)
    np.testing.assert_allclose(a.grad, numeric, rtol=1e-6)


def test_gradcheck_x_plus_relu_of_x():
    x = Tensor(np.random.default_rng(0).standard_normal((3, 4)) + 0.5, requires_grad=True)
    gradcheck(lambda x: (lambda h: h + F.relu(h * 2.0))(x * 1.5), [x])  # h computed: h + f(h)
