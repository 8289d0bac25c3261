"""The activations' and the residual add + ReLU's CuPy kernels (minires_relu_backward,
minires_sigmoid, minires_sigmoid_backward, minires_tanh_backward, minires_add_relu), checked
without a GPU: compiled by NVRTC, run on the CPU in every element order against their NumPy
twins; and F.add_relu on NumPy against relu(add) and by gradcheck."""
import numpy
import pytest

from minires import functional as F
from minires.autograd import Tensor
from minires.functional import activation as A
from minires.functional import residual as R
from minires.gradcheck import gradcheck
from kernel_harness import ORDERS, compile_nvrtc, run_on_cpu

TOL = {numpy.float32: dict(rtol=2e-6, atol=1e-7), numpy.float64: dict(rtol=1e-12, atol=1e-15)}


def away_from_zero(rng, shape, dtype):
    """Values of both signs, none within 0.1 of 0 (ReLU's kink)."""
    v = rng.uniform(0.1, 3, shape) * rng.choice([-1.0, 1.0], shape)
    return v.astype(dtype)


def two(shape, dtype, seed=0):
    rng = numpy.random.default_rng(seed)
    return away_from_zero(rng, shape, dtype), away_from_zero(rng, shape, dtype)


def relu_backward_case(shape, dtype):
    gy, x = two(shape, dtype)
    y = numpy.maximum(x, 0)
    return (gy, y), A.relu_backward(gy, y)


def sigmoid_case(shape, dtype):
    x = two(shape, dtype)[0] * 10  # large |x|: the exp(-|x|) form must not overflow
    return (x,), A.sigmoid_forward(x)


def sigmoid_backward_case(shape, dtype):
    gy, x = two(shape, dtype)
    y = A.sigmoid_forward(x)
    return (gy, y), A.sigmoid_backward(gy, y)


def tanh_backward_case(shape, dtype):
    gy, x = two(shape, dtype)
    y = numpy.tanh(x)
    return (gy, y), A.tanh_backward(gy, y)


def add_relu_case(shape, dtype):
    a, b = two(shape, dtype)
    return (a, b), R.add_relu_forward(a, b)


KERNELS = {"minires_relu_backward": (A._relu_backward_kernel, relu_backward_case),
           "minires_sigmoid": (A._sigmoid_kernel, sigmoid_case),
           "minires_sigmoid_backward": (A._sigmoid_backward_kernel, sigmoid_backward_case),
           "minires_tanh_backward": (A._tanh_backward_kernel, tanh_backward_case),
           "minires_add_relu": (R._add_relu_kernel, add_relu_case)}
SHAPES = [(3, 5, 7, 9), (5, 3), (7,)]


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_nvrtc_compiles(name, arch, dtype):
    kernel, case = KERNELS[name]
    ins, want = case((2, 3, 4, 5), dtype)
    assert bytes(compile_nvrtc(kernel, ins + (numpy.empty_like(want),), arch)[:4]) == b"\x7fELF"


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("order", ORDERS)
def test_kernel_on_cpu_equals_its_numpy_twin(name, shape, dtype, order):
    kernel, case = KERNELS[name]
    ins, want = case(shape, dtype)
    out = run_on_cpu(kernel, ins + (numpy.empty_like(want),), order)
    assert out.dtype == dtype
    numpy.testing.assert_allclose(out, want, **TOL[dtype])


@pytest.mark.parametrize("shape", SHAPES)
def test_add_relu_is_relu_of_add_forward_and_backward(shape):
    a, b = two(shape, numpy.float64)
    gy = two(shape, numpy.float64, seed=1)[0]
    ta, tb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    y = F.add_relu(ta, tb)
    y.backward(gy)
    ra, rb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    r = F.relu(F.add(ra, rb))
    r.backward(gy)
    numpy.testing.assert_array_equal(y.data, r.data)
    numpy.testing.assert_array_equal(ta.grad, ra.grad)
    numpy.testing.assert_array_equal(tb.grad, rb.grad)


def test_gradcheck_add_relu():
    rng = numpy.random.default_rng(2)
    a = away_from_zero(rng, (3, 2, 3, 5), numpy.float64)
    b = a * rng.uniform(-0.4, 0.4, a.shape)  # |b| < |a|: a + b keeps a's sign, away from the kink
    gradcheck(F.add_relu, [Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)])


def test_add_relu_refuses_branches_of_different_shapes():
    with pytest.raises(ValueError, match=r"add_relu: residual branches differ in shape: \(2, 3\) vs \(3, 2\)"):
        F.add_relu(Tensor(numpy.zeros((2, 3))), Tensor(numpy.zeros((3, 2))))
