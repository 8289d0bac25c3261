"""Every core on one convolution: a small thread pool over batch slices.

NumPy releases the GIL inside its copies and matrix products, so Python threads that each run
the im2col copies and the product of their own batch slice keep every core busy, also during
the copies, which NumPy runs on one core. Inside the pool BLAS runs single-threaded (through
threadpoolctl); otherwise each slice's product would start its own BLAS threads, n x n threads
on n cores. Work too small to share runs on the calling thread with n BLAS threads.

The thread count n is, in order: ``set_num_threads(n)``; else MINIRES_NUM_THREADS,
OMP_NUM_THREADS or OPENBLAS_NUM_THREADS from the environment; else the cores this process may
run on, divided among the processes an MPI launcher started on this machine (MPI_LOCALNRANKS
from MPICH, OMPI_COMM_WORLD_LOCAL_SIZE from Open MPI), so that ``mpiexec -n 2`` on 2 cores gives
each process one thread rather than two. Without threadpoolctl BLAS keeps its own threads and
minires never starts more.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy

from .. import backend

try:
    from threadpoolctl import ThreadpoolController
except ImportError:  # pragma: no cover - threadpoolctl is a dependency; this guards a broken install
    ThreadpoolController = None

_ENV = ("MINIRES_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_LOCAL_RANKS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")
_num_threads = None  # resolved on first use
_executor = None
_controller = None
_lock = threading.Lock()


def _from_environment():
    for var in _ENV:
        value = os.environ.get(var, "").strip()
        if value:
            try:
                n = int(value.split(",")[0])  # OMP_NUM_THREADS may list nested levels: "2,1"
            except ValueError:
                raise ValueError(f"{var}={value!r} is not a thread count") from None
            if n >= 1:
                return n
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for var in _LOCAL_RANKS:
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) >= 1:
            return max(1, cores // int(value))
    return cores


def get_num_threads():
    """How many threads minires computes on (its pool, or BLAS when one thread does the work)."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _from_environment()
    return _num_threads


def set_num_threads(n):
    """Compute on ``n`` threads: convolutions, batch norm and ReLU in batch slices on a pool of n
    threads (1: everything on the calling thread, BLAS included)."""
    global _num_threads, _executor
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads needs a positive int, got {n!r}")
    with _lock:
        _num_threads = n
        if _executor is not None:
            _executor.shutdown()
            _executor = None


def _blas():
    """The threadpoolctl controller of the BLAS libraries loaded in this process."""
    global _controller
    with _lock:
        if _controller is None:
            _controller = ThreadpoolController()
        return _controller


def _workers():
    """The pool's n - 1 worker threads (the calling thread does a share too)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(get_num_threads() - 1, thread_name_prefix="minires")
        return _executor


def parallel(n_items):
    """How many threads a job of ``n_items`` independent pieces would use (1: run it serially)."""
    if ThreadpoolController is None:
        return 1
    return max(1, min(get_num_threads(), n_items))


# Below this much scratch (bytes) for the whole batch a convolution runs on one thread: handing
# work to another thread costs more than it saves on small layers.
PARALLEL_MIN_BYTES = 1 << 20
# The scratch of one batch slice: about what the CPU's caches hold (benchmarks/RESULTS.md).
CHUNK_BYTES = 4 << 20


def batch_parts(xp, n, bytes_per_image):
    """The batch as one contiguous range per thread, each cut into slices whose scratch (a column
    matrix, ``bytes_per_image`` per image) fits in the CPU's cache (``CHUNK_BYTES``): a list (one
    per thread) of lists of slices.

    Filling a cache-sized column block and multiplying it at once saves a round trip to main
    memory for each of the kh*kw copies; on the GPU one launch over the whole batch is better.
    """
    if xp is not numpy:
        return [[slice(0, n)]]
    k = parallel(n) if n * bytes_per_image >= PARALLEL_MIN_BYTES else 1
    per_slice = max(1, CHUNK_BYTES // max(1, bytes_per_image))
    parts = []
    for t in range(k):
        start, end = n * t // k, n * (t + 1) // k
        m = -(-(end - start) // per_slice)  # slices in this share, all of about the same size
        parts.append([slice(start + (end - start) * i // m, start + (end - start) * (i + 1) // m) for i in range(m)])
    return parts


def run(fn, parts):
    """[fn(k, part) for k, part in enumerate(parts)], the parts shared among the pool's threads.

    Meanwhile BLAS runs one thread per pool thread, or n threads when there is one part. ``fn``
    must be thread-safe: in minires part k works on its own batch rows and its own scratch
    buffers (roles named with k, see ``utils.conv.workspace``).
    """
    if ThreadpoolController is None:
        return [fn(k, p) for k, p in enumerate(parts)]
    if len(parts) == 1 or get_num_threads() == 1:
        with _blas().limit(limits=get_num_threads(), user_api="blas"):
            return [fn(k, p) for k, p in enumerate(parts)]
    executor = _workers()
    with _blas().limit(limits=1, user_api="blas"):
        futures = [executor.submit(fn, k, p) for k, p in enumerate(parts) if k > 0]
        first = fn(0, parts[0])  # the calling thread takes the first part itself
        return [first] + [f.result() for f in futures]


def over_slices(fn, xp, n, bytes_per_image):
    """fn(k, rows) for the cache-sized slices ``rows`` of a batch of ``n`` (``batch_parts``), on
    every core, k the thread's share (which names its scratch roles); returns the sum of fn's
    results: None when fn returns None, else a tuple added up place by place (Nones stay None).

    The skeleton of the convolutions: forward fills its output rows (fn returns None), backward
    also returns its rows' part of the weight and bias gradients. fn must return new arrays: the
    sums are taken in place into the first ones. On CuPy fn runs once, on the whole batch, and so
    it does for an empty batch (a rank whose share is empty), whose sums are zeros.
    """
    if xp is not numpy or n == 0:
        return fn(0, slice(0, n))

    def part(k, slices):
        total = None
        for rows in slices:
            total = _add_into(total, fn(k, rows))
        return total

    total = None
    for r in run(part, batch_parts(xp, n, bytes_per_image)):
        total = _add_into(total, r)
    return total


def _add_into(total, r):
    """total + r for tuples of arrays (or Nones), added into total's arrays; r if total is None."""
    if total is None or r is None:
        return r if total is None else total
    for t, a in zip(total, r):
        if t is not None:
            t += a
    return total


def over_batch(fn, x):
    """fn(rows) for cache-sized slices ``rows`` of x's batch axis, on every core; returns the sum
    of fn's results (None if fn returns nothing).

    For the passes of batch norm and ReLU: each slice is read and written while in cache, and
    the per-slice partial sums (per-channel statistics) are added up at the end.
    """
    xp = backend.get_array_module(x)

    def part(k, slices):
        total = None
        for rows in slices:
            r = fn(rows)
            if r is not None:
                total = r if total is None else total + r
        return total

    results = [r for r in run(part, batch_parts(xp, x.shape[0], x[:1].nbytes)) if r is not None]
    return sum(results[1:], results[0]) if results else None
