"""The kernel harness itself (tests/kernel_harness.py), and that every kernel minires defines is
checked by some tests/test_kernels_*.py file. The kernels' own tests live beside their areas."""
from pathlib import Path

import numpy
import pytest

from minires import backend
from kernel_harness import ORDERS, compile_nvrtc, generated_source, import_everything, run_on_cpu


@pytest.fixture
def scratch_kernel():
    """Make kernels for these tests only, and take them off minires's list afterwards."""
    made = []

    def make(*args, **kwargs):
        k = backend.ElementwiseKernel(*args, **kwargs)
        made.append(k)
        return k

    yield make
    for k in made:
        backend.KERNELS.remove(k)


def test_every_kernel_has_tests():
    """A kernel no tests/test_kernels_*.py file names was never compiled nor run against its twin."""
    names = import_everything()["kernels"]
    assert len(names) >= 17, f"the kernels were not found: {names}"
    assert len(names) == len(set(names)), f"two kernels share a name: {sorted(names)}"
    text = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_kernels_*.py"))
    missing = [n for n in names if n not in text]
    assert not missing, f"kernels without tests in tests/test_kernels_*.py: {missing}"


def test_import_minires_does_not_import_cupy():
    """Kernels are strings until their first call: importing every module of minires leaves CuPy
    unimported."""
    assert import_everything()["cupy_imported"] is False


# --- the harness against kernels made here ------------------------------------------------------

GATHER = ("raw T x, int32 h, int32 w", "T y",
          # y (w, h) is the transpose of x (h, w): each thread reads its own source element
          "int r = i / h; int c = i % h; y = x[c * w + r]")


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("order", ORDERS)
def test_a_gather_kernel_equals_numpy(scratch_kernel, dtype, order):
    k = scratch_kernel(*GATHER, "minires_test_transpose")
    x = numpy.random.default_rng(0).standard_normal((5, 7)).astype(dtype)
    y = run_on_cpu(k, (x, numpy.int32(5), numpy.int32(7), numpy.empty((7, 5), dtype)), order)
    numpy.testing.assert_array_equal(y, x.T)


def test_an_index_swapped_is_caught(scratch_kernel):
    k = scratch_kernel("raw T x, int32 h, int32 w", "T y", "int r = i / h; int c = i % h; y = x[r * w + c]",
                       "minires_test_transpose_wrong")
    x = numpy.random.default_rng(0).standard_normal((5, 7))
    y = run_on_cpu(k, (x, numpy.int32(5), numpy.int32(7), numpy.empty((7, 5))))
    assert not numpy.array_equal(y, x.T)


def test_a_thread_writing_its_neighbour_depends_on_the_order(scratch_kernel):
    """In order, thread i+1 overwrites what thread i wrote into it; reversed, it does not."""
    k = scratch_kernel("raw T x, int32 n", "raw T y", "y[i] = x[i]; if (i + 1 < n) y[i + 1] = 0",
                       "minires_test_race")
    x = numpy.arange(1, 9, dtype=numpy.float64)
    forward = run_on_cpu(k, (x, numpy.int32(8), numpy.zeros(8)), "forward", size=8)
    backward = run_on_cpu(k, (x, numpy.int32(8), numpy.zeros(8)), "reversed", size=8)
    numpy.testing.assert_array_equal(forward, x)
    assert not numpy.array_equal(forward, backward)


def test_elementwise_arguments_of_any_shape_are_seen_as_cupy_sees_them(scratch_kernel):
    """Same-shape contiguous arguments are one flat index (reduce_dims); several outputs come back."""
    k = scratch_kernel("T a, T b, T s", "T y, T z", "y = a * s + b; z = a - b", "minires_test_axpy")
    rng = numpy.random.default_rng(1)
    a, b = rng.standard_normal((2, 3, 5, 7)), rng.standard_normal((2, 3, 5, 7))
    assert "CArray<double, 1, 1, 1>" in generated_source(k, (a, b, 0.5, numpy.empty_like(a), numpy.empty_like(a)))
    for order in ORDERS:
        y, z = run_on_cpu(k, (a, b, 0.5, numpy.empty_like(a), numpy.empty_like(a)), order)
        numpy.testing.assert_allclose(y, a * 0.5 + b, rtol=1e-15)
        numpy.testing.assert_array_equal(z, a - b)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvrtc_compiles_a_kernel(scratch_kernel, arch):
    k = scratch_kernel(*GATHER, "minires_test_transpose_nvrtc")
    x = numpy.zeros((5, 7), numpy.float32)
    cubin = compile_nvrtc(k, (x, numpy.int32(5), numpy.int32(7), numpy.empty((7, 5), numpy.float32)), arch)
    assert bytes(cubin[:4]) == b"\x7fELF"


def test_nvrtc_reports_the_compilers_message(scratch_kernel):
    k = scratch_kernel("raw T x", "T y", "y = x[i] * undefined_name", "minires_test_broken")
    x = numpy.zeros(4, numpy.float32)
    with pytest.raises(Exception, match="undefined_name"):
        compile_nvrtc(k, (x, numpy.empty(4, numpy.float32)))


def test_a_wrong_dtype_is_refused_as_cupy_would(scratch_kernel):
    k = scratch_kernel("float32 x", "float32 y", "y = x", "minires_test_dtype")
    with pytest.raises(TypeError, match="mismatched"):
        generated_source(k, (numpy.zeros(4), numpy.zeros(4, numpy.float32)))
