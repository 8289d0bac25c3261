"""The convolution's thread pool: the same numbers as one thread, gradients, BLAS kept to one
thread inside the pool, and the thread count taken from set_num_threads or the environment."""
import numpy as np
import pytest

import minires
from minires import Tensor, gradcheck
from minires.utils import threads

threadpoolctl = pytest.importorskip("threadpoolctl", reason="the thread pool needs threadpoolctl")


@pytest.fixture
def pool(monkeypatch):
    """Parallel even for tiny test layers; the thread count restored afterwards."""
    monkeypatch.setattr(threads, "PARALLEL_MIN_BYTES", 0)
    before = threads.get_num_threads()
    yield
    threads.set_num_threads(before)


def conv_outputs(n_threads, x, W, b, stride, padding, gy):
    threads.set_num_threads(n_threads)
    xt, Wt = Tensor(x, requires_grad=True), Tensor(W, requires_grad=True)
    bt = None if b is None else Tensor(b, requires_grad=True)
    y = minires.functional.conv2d(xt, Wt, bt, stride=stride, padding=padding)
    y.backward(gy)
    return [y.data, xt.grad, Wt.grad] + ([] if b is None else [bt.grad])


CASES = [((7, 3, 8, 8), (4, 3, 3, 3), 1, 1, True), ((5, 2, 9, 7), (3, 2, 3, 2), 2, (1, 0), False),
         ((6, 4, 5, 5), (5, 4, 1, 1), 1, 0, True), ((3, 2, 6, 6), (2, 2, 3, 3), 1, 1, False)]


@pytest.mark.parametrize("x_shape, W_shape, stride, padding, bias", CASES)
@pytest.mark.parametrize("n_threads", [2, 3])
def test_threaded_convolution_matches_one_thread(pool, x_shape, W_shape, stride, padding, bias, n_threads):
    rng = np.random.default_rng(sum(x_shape))
    x, W, b = rng.standard_normal(x_shape), rng.standard_normal(W_shape), rng.standard_normal(W_shape[0])
    y_shape = minires.functional.conv2d(Tensor(x), Tensor(W), stride=stride, padding=padding).shape
    gy = rng.standard_normal(y_shape)
    args = (x, W, b if bias else None, stride, padding, gy)
    parallel = conv_outputs(n_threads, *args)
    serial = conv_outputs(1, *args)
    assert len(threads.batch_parts(np, x_shape[0], 1)) == 1  # serial really ran serially
    for got, expected in zip(parallel, serial):
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-13)


def test_threaded_convolution_gradcheck(pool):
    threads.set_num_threads(2)
    assert len(threads.batch_parts(np, 4, 1)) == 2
    rng = np.random.default_rng(1)
    inputs = [Tensor(rng.standard_normal(s), requires_grad=True) for s in ((4, 2, 5, 5), (3, 2, 3, 3), (3,))]
    assert gradcheck(lambda x, W, b: minires.functional.conv2d(x, W, b, padding=1), inputs)
    assert gradcheck(lambda x, W, b: minires.functional.conv2d(x, W, b, stride=2), inputs)


def test_blas_runs_single_threaded_inside_the_pool(pool):
    threads.set_num_threads(2)

    def blas_threads(k, part):
        return max(i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas")

    assert threads.run(blas_threads, [0, 1]) == [1, 1]
    threads.set_num_threads(1)  # one thread means one BLAS thread too
    assert threads.run(blas_threads, [0]) == [1]


def test_thread_count_from_the_environment(pool, monkeypatch):
    for var in threads._ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.setattr(threads, "_num_threads", None)
    assert threads.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3,1")  # OMP_NUM_THREADS comes first; nested levels allowed
    monkeypatch.setattr(threads, "_num_threads", None)
    assert threads.get_num_threads() == 3
    monkeypatch.setenv("MINIRES_NUM_THREADS", "2")
    monkeypatch.setattr(threads, "_num_threads", None)
    assert threads.get_num_threads() == 2
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delenv("MINIRES_NUM_THREADS")
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")  # mpiexec -n 2 on this machine: half the cores each
    monkeypatch.setattr(threads, "_num_threads", None)
    assert threads.get_num_threads() == 2
    monkeypatch.setenv("MPI_LOCALNRANKS", "8")
    monkeypatch.setattr(threads, "_num_threads", None)
    assert threads.get_num_threads() == 1
    monkeypatch.setenv("MINIRES_NUM_THREADS", "many")
    monkeypatch.setattr(threads, "_num_threads", None)
    with pytest.raises(ValueError, match="MINIRES_NUM_THREADS='many' is not a thread count"):
        threads.get_num_threads()
    monkeypatch.setattr(threads, "_num_threads", 2)


def test_set_num_threads(pool):
    minires.set_num_threads(3)
    assert minires.get_num_threads() == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="set_num_threads needs a positive int"):
            minires.set_num_threads(bad)


def test_threaded_winograd_matches_one_thread(pool):
    from minires.functional.winograd import conv2d_winograd
    rng = np.random.default_rng(2)
    x, W, b = rng.standard_normal((5, 3, 6, 7)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    gy = rng.standard_normal((5, 4, 6, 7))
    results = []
    for n_threads in (2, 1):
        threads.set_num_threads(n_threads)
        xt, Wt, bt = (Tensor(a, requires_grad=True) for a in (x, W, b))
        y = conv2d_winograd(xt, Wt, bt, padding=1)
        y.backward(gy)
        results.append([y.data, xt.grad, Wt.grad, bt.grad])
    for got, expected in zip(*results):
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-13)
    threads.set_num_threads(2)
    inputs = [Tensor(a, requires_grad=True) for a in (x[:4], W, b)]
    assert gradcheck(lambda x, W, b: conv2d_winograd(x, W, b, padding=1), inputs)


@pytest.mark.parametrize("op", ["batch_norm", "relu"])
def test_threaded_batch_norm_and_relu_match_one_thread(pool, op):
    import minires.functional as F
    rng = np.random.default_rng(3)
    x0 = rng.uniform(0.1, 2.0, (6, 3, 4, 5)) * rng.choice([-1.0, 1.0], (6, 3, 4, 5))  # away from relu's kink
    gamma, beta, gy = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3), rng.standard_normal(x0.shape)
    results = []
    for n_threads in (3, 1):
        threads.set_num_threads(n_threads)
        x, g, b = (Tensor(a, requires_grad=True) for a in (x0, gamma, beta))
        rm, rv = np.zeros(3), np.ones(3)
        y = F.batch_norm(x, g, b, rm, rv, training=True) if op == "batch_norm" else F.relu(x)
        y.backward(gy)
        results.append([y.data, x.grad, rm, rv] + ([g.grad, b.grad] if op == "batch_norm" else []))
    for got, expected in zip(*results):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    threads.set_num_threads(2)
    if op == "batch_norm":
        inputs = [Tensor(a, requires_grad=True) for a in (x0, gamma, beta)]
        assert gradcheck(lambda x, g, b: F.batch_norm(x, g, b, training=True), inputs)
    else:
        assert gradcheck(F.relu, [Tensor(x0, requires_grad=True)])


@pytest.mark.parametrize("n, bytes_per_image, n_threads", [(128, 9 * 64 * 64 * 4, 2), (7, 1 << 20, 3), (5, 1 << 20, 2),
                                                             (1, 1 << 22, 2), (64, 100, 2), (9, 1 << 21, 1)])
def test_batch_parts_cover_the_batch_in_even_cache_sized_slices(pool, n, bytes_per_image, n_threads):
    threads.set_num_threads(n_threads)
    parts = threads.batch_parts(np, n, bytes_per_image)
    assert len(parts) == min(n_threads, n)
    rows = [i for part in parts for s in part for i in range(s.start, s.stop)]
    assert rows == list(range(n))  # every image once, in order, each share contiguous
    per_slice = max(1, threads.CHUNK_BYTES // bytes_per_image)
    for part in parts:  # as few slices as fit the cache, of sizes differing by at most 1
        sizes = [s.stop - s.start for s in part]
        assert max(sizes) <= per_slice and max(sizes) - min(sizes) <= 1
        assert len(part) == -(-sum(sizes) // per_slice)
