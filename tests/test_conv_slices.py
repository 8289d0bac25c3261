"""threads.over_slices, the skeleton both convolutions (im2col and Winograd) run on: every slice of
the batch visited once, the per-slice gradient parts summed, across slices and threads."""
import numpy as np
import pytest

import minires
from minires import Tensor
from minires.functional.winograd import conv2d_winograd
from minires.utils import threads

pytest.importorskip("threadpoolctl", reason="the thread pool needs threadpoolctl")


@pytest.fixture
def one_image_slices(monkeypatch):
    """Every image its own slice, shared among 2 threads; the thread count restored afterwards."""
    monkeypatch.setattr(threads, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(threads, "CHUNK_BYTES", 1)
    before = threads.get_num_threads()
    yield
    threads.set_num_threads(before)


def test_over_slices_sums_tuples_over_every_slice(one_image_slices):
    threads.set_num_threads(2)
    seen = []

    def fn(k, rows):
        seen.append((k, rows.start, rows.stop))
        return np.full(3, float(rows.start)), None

    total, nothing = threads.over_slices(fn, np, 5, 8)
    assert sorted(s[1:] for s in seen) == [(i, i + 1) for i in range(5)]  # each image once
    assert {k for k, _, _ in seen} == {0, 1}
    np.testing.assert_array_equal(total, np.full(3, 0.0 + 1 + 2 + 3 + 4))
    assert nothing is None
    assert threads.over_slices(lambda k, rows: None, np, 5, 8) is None


@pytest.mark.parametrize("conv", ["im2col", "winograd"])
def test_convolution_gradients_over_many_slices_equal_one_slice(one_image_slices, monkeypatch, conv):
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((5, 3, 7, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    gy = rng.standard_normal((5, 4, 7, 6))
    f = conv2d_winograd if conv == "winograd" else minires.functional.conv2d

    def grads(n_threads):
        threads.set_num_threads(n_threads)
        xt, Wt, bt = (Tensor(a, requires_grad=True) for a in (x, W, b))
        y = f(xt, Wt, bt, padding=1)
        y.backward(gy)
        return y.data, xt.grad, Wt.grad, bt.grad

    sliced = grads(2)
    monkeypatch.setattr(threads, "CHUNK_BYTES", 1 << 30)  # the whole batch one slice
    whole = grads(1)
    for got, expected in zip(sliced, whole):
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-13)
