"""Softmax cross-entropy's CuPy kernels (minires_softmax_exp, minires_ce_rows,
minires_ce_backward), checked without a GPU: compiled by NVRTC, run on the CPU in every element
order against their NumPy twins, and CrossEntropyFunction's CuPy code path run on NumPy arrays
(its kernels on the CPU) against the NumPy path, with every combination of label smoothing,
weight=, ignore_index and reduction."""
import itertools

import numpy
import pytest

from minires import functional as F
from minires.autograd import Tensor
from minires.functional import loss as L
from kernel_harness import ORDERS, compile_nvrtc, run_on_cpu

TOL = {numpy.float32: dict(rtol=2e-6, atol=2e-6), numpy.float64: dict(rtol=1e-12, atol=1e-12)}


def problem(n, k, dtype, weighted=True, seed=0):
    """Logits, labels (one ignored with -100, one in [0, K) for each other row, one outside [0, K)
    when n > 3), class weights."""
    rng = numpy.random.default_rng(seed)
    x = (rng.standard_normal((n, k)) * 3).astype(dtype)
    y = rng.integers(0, k, n)
    if n > 3:
        y[1], y[3] = -100, k + 2
    w = rng.uniform(0.5, 2, k).astype(dtype) if weighted else numpy.ones(k, dtype)
    return x, y.astype(numpy.int64), w


def exp_args(n, k, dtype):
    x, _, _ = problem(n, k, dtype)
    return (x, x.max(axis=1), numpy.int32(k), numpy.empty_like(x)), (x, x.max(axis=1))


def rows_args(n, k, dtype, eps=0.1, ignore_index=-100):
    x, y, w = problem(n, k, dtype)
    mx = x.max(axis=1)
    s = L.softmax_exp(x, mx).sum(axis=1)
    wsum = w.sum().reshape(1)
    eps = dtype(eps)
    outs = tuple(numpy.empty(n, dtype) for _ in range(3))
    args = (y, mx, s, x @ w, x, w, wsum, numpy.int32(k), numpy.int64(ignore_index), eps) + outs
    return args, (y, mx, s, x @ w, x, w, wsum, ignore_index, eps)


def backward_args(n, k, dtype, eps=0.1, ignore_index=-100, per_row=True):
    x, y, w = problem(n, k, dtype)
    rng = numpy.random.default_rng(1)
    lse = (x.max(axis=1) + numpy.log(L.softmax_exp(x, x.max(axis=1)).sum(axis=1))).astype(dtype)
    g = rng.uniform(0.5, 1.5, n if per_row else 1).astype(dtype)
    wsum = w.sum().reshape(1)
    eps = dtype(eps)
    args = (x, lse, y, w, wsum, g, numpy.int32(k), numpy.int64(ignore_index), eps, numpy.int32(per_row),
            numpy.empty_like(x))
    return args, (x, lse, y, w, wsum, g, ignore_index, eps, per_row)


KERNELS = {"minires_softmax_exp": (L._softmax_exp_kernel, exp_args, L.softmax_exp),
           "minires_ce_rows": (L._ce_rows_kernel, rows_args, L.ce_rows),
           "minires_ce_backward": (L._ce_backward_kernel, backward_args, L.ce_backward)}


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_nvrtc_compiles(name, arch, dtype):
    kernel, make_args, _ = KERNELS[name]
    args, _ = make_args(5, 7, dtype)
    assert bytes(compile_nvrtc(kernel, args, arch)[:4]) == b"\x7fELF"


def check(out, want, dtype):
    for o, w in zip(out if isinstance(out, tuple) else (out,), want if isinstance(want, tuple) else (want,)):
        assert o.dtype == dtype
        numpy.testing.assert_allclose(o, w, **TOL[dtype])  # NaN where NaN


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("shape", [(7, 5), (1, 3), (13, 10)])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("order", ORDERS)
def test_kernel_on_cpu_equals_its_numpy_twin(name, shape, dtype, order):
    kernel, make_args, twin = KERNELS[name]
    args, twin_args = make_args(*shape, dtype)
    check(run_on_cpu(kernel, args, order), twin(*twin_args), dtype)


@pytest.mark.parametrize("eps,ignore_index,per_row", [(0.0, -100, True), (0.0, 2, False), (0.3, 2, True),
                                                      (1.0, -100, False)])
@pytest.mark.parametrize("order", ORDERS)
def test_cross_entropy_kernels_with_every_option(eps, ignore_index, per_row, order):
    """Smoothing 0, some and all; ignore_index outside and inside [0, K); a gradient per row or one."""
    rargs, rtwin = rows_args(9, 4, numpy.float64, eps, ignore_index)
    check(run_on_cpu(L._ce_rows_kernel, rargs, order), L.ce_rows(*rtwin), numpy.float64)
    bargs, btwin = backward_args(9, 4, numpy.float64, eps, ignore_index, per_row)
    check(run_on_cpu(L._ce_backward_kernel, bargs, order), L.ce_backward(*btwin), numpy.float64)


def test_a_label_outside_the_classes_gives_nan_not_a_read_past_the_row():
    args, _ = rows_args(5, 3, numpy.float64)  # rows_args puts label K + 2 in row 3, -100 in row 1
    loss, lse, wt = run_on_cpu(L._ce_rows_kernel, args)
    assert numpy.isnan(loss[3]) and numpy.isnan(wt[3]) and loss[1] == 0 and wt[1] == 0
    assert numpy.isfinite(numpy.delete(loss, 3)).all()
    bargs, _ = backward_args(5, 3, numpy.float64)
    gx = run_on_cpu(L._ce_backward_kernel, bargs)
    assert numpy.isnan(gx[3]).all() and (gx[1] == 0).all() and numpy.isfinite(numpy.delete(gx, 3, axis=0)).all()


def on_cpu(kernel, order):
    """A stand-in for the CuPy kernel: the same call, its generated source run on the CPU, the
    outputs allocated as CuPy would (the shape and dtype of the first array argument)."""
    nout = len(kernel.out_params.split(","))

    def call(*args):
        first = args[0]
        return run_on_cpu(kernel, args + tuple(numpy.empty(first.shape, args[1].dtype) for _ in range(nout)), order)
    return call


COMBOS = list(itertools.product([0.0, 0.2], [False, True], [-100, 1], ["mean", "sum", "none"]))


@pytest.mark.parametrize("smoothing,weighted,ignore_index,reduction", COMBOS)
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_cupy_path_equals_numpy_path(monkeypatch, smoothing, weighted, ignore_index, reduction, dtype):
    order = ORDERS[COMBOS.index((smoothing, weighted, ignore_index, reduction)) % 3]  # each order in turn
    for name in ("_softmax_exp_kernel", "_ce_rows_kernel", "_ce_backward_kernel"):
        monkeypatch.setattr(L, name, on_cpu(getattr(L, name), order))
    rng = numpy.random.default_rng(5)
    n, k = 11, 5
    x = (rng.standard_normal((n, k)) * 2).astype(dtype)
    y = rng.integers(0, k, n)
    y[[2, 7]] = ignore_index  # some rows ignored (label 1 also occurs as a class when it is not)
    weight = rng.uniform(0.5, 2, k).astype(dtype) if weighted else None
    gy = rng.uniform(0.5, 1.5, n).astype(dtype) if reduction == "none" else numpy.array(0.7, dtype)

    xt = Tensor(x, requires_grad=True)
    want = F.cross_entropy(xt, y, label_smoothing=smoothing, weight=weight, ignore_index=ignore_index,
                           reduction=reduction)
    want.backward(gy)

    f = L.CrossEntropyFunction(y.astype(numpy.int64), smoothing, weight, ignore_index, reduction)
    f.needs_input_grad = (True,)
    got = f._forward_cupy(numpy, x)
    gx = f._backward_cupy(numpy, gy)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == numpy.float32 else TOL[dtype]
    assert got.shape == want.shape and got.dtype == dtype and gx.dtype == dtype
    numpy.testing.assert_allclose(got, want.data, **tol)
    numpy.testing.assert_allclose(gx, xt.grad, **tol)


def test_cupy_path_of_a_batch_with_nothing_counted_is_nan_with_zero_gradients(monkeypatch):
    for name in ("_softmax_exp_kernel", "_ce_rows_kernel", "_ce_backward_kernel"):
        monkeypatch.setattr(L, name, on_cpu(getattr(L, name), "forward"))
    x = numpy.random.default_rng(0).standard_normal((3, 4))
    f = L.CrossEntropyFunction(numpy.full(3, -100, numpy.int64), 0.1)
    f.needs_input_grad = (True,)
    with numpy.errstate(invalid="ignore"):
        assert numpy.isnan(f._forward_cupy(numpy, x))
    numpy.testing.assert_array_equal(f._backward_cupy(numpy, numpy.array(1.0)), 0)


def test_labels_are_checked_on_numpy():
    """The host check stays on NumPy (it costs nothing there and names the bad label)."""
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*\[7\]"):
        F.cross_entropy(Tensor(numpy.zeros((2, 3))), numpy.array([0, 7]))
