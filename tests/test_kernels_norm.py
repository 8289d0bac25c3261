"""Batch norm's CuPy kernels (minires_bn_affine, minires_bn_backward), checked without a GPU:
compiled by NVRTC, run on the CPU in every element order against their NumPy twins, and the
CuPy code path of BatchNormTrainFunction run on NumPy arrays (its kernels on the CPU) against
the NumPy path, in training (with and without ``reduce``) and evaluation."""
import numpy
import pytest

from minires import functional as F
from minires.autograd import Tensor
from minires.functional import normalization as N
from kernel_harness import ORDERS, compile_nvrtc, run_on_cpu

SHAPES = [(3, 5, 7, 9), (5, 3), (2, 3, 1, 5)]
TOL = {numpy.float32: dict(rtol=2e-6, atol=2e-6), numpy.float64: dict(rtol=1e-12, atol=1e-12)}


def affine_args(shape, dtype, seed=0):
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    c, hw = shape[1], int(numpy.prod(shape[2:]))
    scale, shift = rng.uniform(0.5, 2, c).astype(dtype), rng.standard_normal(c).astype(dtype)
    return x, scale, shift, numpy.int32(c), numpy.int32(hw), numpy.empty_like(x)


def backward_args(shape, dtype, seed=0):
    rng = numpy.random.default_rng(seed)
    gy, xc = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    c, hw = shape[1], int(numpy.prod(shape[2:]))
    gamma, inv_std = rng.uniform(0.5, 2, c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    sum_gy, sum_gy_xc = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    inv_m = dtype(1.0 / (gy.size // c))
    return gy, xc, gamma, inv_std, sum_gy, sum_gy_xc, inv_m, numpy.int32(c), numpy.int32(hw), numpy.empty_like(gy)


KERNELS = {"minires_bn_affine": (N._bn_affine_kernel, affine_args, N.bn_affine),
           "minires_bn_backward": (N._bn_backward_kernel, backward_args, N.bn_backward)}


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_nvrtc_compiles(name, arch, dtype):
    kernel, make_args, _ = KERNELS[name]
    assert bytes(compile_nvrtc(kernel, make_args((2, 3, 4, 5), dtype), arch)[:4]) == b"\x7fELF"


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("order", ORDERS)
def test_kernel_on_cpu_equals_its_numpy_twin(name, shape, dtype, order):
    kernel, make_args, twin = KERNELS[name]
    args = make_args(shape, dtype)
    out = run_on_cpu(kernel, args, order)
    want = twin(*args[:-3])  # the twin takes the arrays and inv_m, not C, HW and the output
    assert out.dtype == dtype
    numpy.testing.assert_allclose(out, want, **TOL[dtype])


def on_cpu(kernel, order):
    """A stand-in for the CuPy kernel: the same call, its generated source run on the CPU."""
    def call(*args):
        return run_on_cpu(kernel, args + (numpy.empty_like(args[0]),), order)
    return call


class DeviceOnly(numpy.ndarray):
    """An array that refuses to be read on the host, as a CuPy array should never be in a step:
    int(), float(), bool() and item() raise."""

    def _refuse(self, *args):
        raise AssertionError("a device array was read on the host (a hidden synchronisation)")

    __int__ = __float__ = __bool__ = __index__ = item = tolist = _refuse


def device_reduce(buf):
    """One process's allreduce (the identity), its result a DeviceOnly array."""
    return buf.view(DeviceOnly)


def numpy_batch_norm(x, gamma, beta, gy, reduce, momentum=0.3):
    rm, rv = numpy.full(x.shape[1], 0.2, x.dtype), numpy.full(x.shape[1], 1.5, x.dtype)
    xt, gt, bt = (Tensor(a, requires_grad=True) for a in (x, gamma, beta))
    y = F.batch_norm(xt, gt, bt, rm, rv, training=True, momentum=momentum, reduce=reduce)
    y.backward(gy)
    return y.data, xt.grad, gt.grad, bt.grad, rm, rv


def cupy_path_on_numpy(x, gamma, beta, gy, reduce, momentum=0.3):
    """BatchNormTrainFunction's CuPy code, with NumPy as its array module."""
    rm, rv = numpy.full(x.shape[1], 0.2, x.dtype), numpy.full(x.shape[1], 1.5, x.dtype)
    f = N.BatchNormTrainFunction(rm, rv, momentum, 1e-5, reduce)
    f.needs_input_grad = (True, True, True)
    y = f._forward_cupy(numpy, x, gamma, beta)
    gx, ggamma, gbeta = f._backward_cupy(numpy, gy)
    return y, gx, ggamma, gbeta, rm, rv


@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (7, 3)])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("with_reduce", [False, True])
@pytest.mark.parametrize("order", ORDERS)
def test_training_cupy_path_equals_numpy_path(monkeypatch, shape, dtype, with_reduce, order):
    monkeypatch.setattr(N, "_bn_affine_kernel", on_cpu(N._bn_affine_kernel, order))
    monkeypatch.setattr(N, "_bn_backward_kernel", on_cpu(N._bn_backward_kernel, order))
    rng = numpy.random.default_rng(3)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    # one process: its allreduce is the identity, but the count comes back as an array that
    # must not be read on the host
    got = cupy_path_on_numpy(x, gamma, beta, gy, device_reduce if with_reduce else None)
    want = numpy_batch_norm(x, gamma, beta, gy, (lambda buf: buf) if with_reduce else None)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == numpy.float32 else TOL[dtype]
    for name, g, w in zip(["y", "gx", "ggamma", "gbeta", "running_mean", "running_var"], got, want):
        assert g.dtype == dtype, name
        numpy.testing.assert_allclose(numpy.asarray(g), w, err_msg=name, **tol)


def test_an_empty_process_leaves_the_running_statistics_without_reading_the_count(monkeypatch):
    """M = 0 over all processes: the count stays an array (no int()), and nothing moves."""
    monkeypatch.setattr(N, "_bn_affine_kernel", on_cpu(N._bn_affine_kernel, "forward"))
    x = numpy.zeros((0, 3, 2, 2))
    rm, rv = numpy.full(3, 0.2), numpy.full(3, 1.5)
    f = N.BatchNormTrainFunction(rm, rv, 0.1, 1e-5, device_reduce)
    f.needs_input_grad = (False, False, False)
    f._forward_cupy(numpy, x, numpy.ones(3), numpy.zeros(3))
    numpy.testing.assert_array_equal(rm, 0.2)
    numpy.testing.assert_array_equal(rv, 1.5)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_evaluation_affine_equals_numpy_path(dtype):
    """Evaluation's CuPy path is minires_bn_affine with the folded scale and shift."""
    rng = numpy.random.default_rng(4)
    x = rng.standard_normal((3, 5, 7, 9)).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, 5).astype(dtype), rng.standard_normal(5).astype(dtype)
    rm, rv = rng.standard_normal(5).astype(dtype), rng.uniform(0.5, 2, 5).astype(dtype)
    want = F.batch_norm(Tensor(x), gamma, beta, rm, rv, training=False).data
    inv_std = 1.0 / numpy.sqrt(rv + dtype(1e-5))
    scale = gamma * inv_std
    shift = beta - rm * scale
    for order in ORDERS:
        got = run_on_cpu(N._bn_affine_kernel, (x, scale, shift, numpy.int32(5), numpy.int32(63), numpy.empty_like(x)),
                         order)
        numpy.testing.assert_allclose(got, want, **TOL[dtype])
