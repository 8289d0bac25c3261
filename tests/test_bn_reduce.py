"""Batch norm's reduce hook: one BatchNormTrainFunction for plain and synchronised batch norm.

A job of several ranks is simulated in this process: each rank is a thread holding its part of
the batch and a ``ThreadRank`` communicator; the ranks take turns (one computes at a time, the
others wait in an exchange), so the real exchanges of ``F.batch_norm(..., reduce=)`` and
``nn.SyncBatchNorm`` happen in the real order without any thread racing another. (The same
over MPI processes: tests/test_distributed.py.)
"""
import ast
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from minires import functional as F
from minires import nn
from minires.autograd import Function, Tensor
from minires.gradcheck import gradcheck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ThreadGroup:
    """``size`` ranks in threads of this process, one computing at a time (``turn``)."""

    def __init__(self, size):
        self.size = size
        self.turn = threading.Lock()
        self.barrier = threading.Barrier(size, timeout=60)
        self.bufs = [None] * size

    def run(self, fn):
        """[fn(rank's communicator) for each rank], the ranks running side by side."""
        def main(r):
            with self.turn:
                try:
                    return fn(ThreadRank(self, r))
                except BaseException:
                    self.barrier.abort()  # the other ranks fail at once instead of waiting
                    raise

        with ThreadPoolExecutor(self.size) as pool:
            return [f.result() for f in [pool.submit(main, r) for r in range(self.size)]]


class ThreadRank:
    """One rank's communicator: ``allreduce(buf)``, the sum over the ranks in rank order (the
    same bits on every rank), is all that ``nn.SyncBatchNorm`` asks of a communicator."""

    def __init__(self, group, rank):
        self.group, self.rank = group, rank
        self.messages = 0

    def allreduce(self, buf):
        g = self.group
        g.bufs[self.rank] = buf.copy()
        self.messages += 1
        g.turn.release()  # the others may now compute up to this exchange
        try:
            g.barrier.wait()
            total = sum(g.bufs[1:], g.bufs[0])
            g.barrier.wait()  # every rank has read the buffers before any sends its next
        finally:
            g.turn.acquire()
        buf[...] = total
        return buf


def bounds(sizes):
    ends = np.cumsum([0] + list(sizes))
    return list(zip(ends[:-1], ends[1:]))


class ShardedBatchNorm(Function):
    """Training batch norm of x by len(sizes) ranks, rank r holding sizes[r] images, as data
    parallel training computes it: each rank calls F.batch_norm(reduce=its allreduce) on its
    shard with its own running statistics ``running[r]`` = (mean, var), changed in place;
    backward hands rank r the gradient of its own mean loss, gy_r / w_r with w_r = n_r / n,
    and takes back w_r gx_r and the w_r-weighted sums of the ranks' gamma and beta gradients
    (``distributed.GradientAllreducer``). The whole batch's batch norm, if the hook is right."""

    def __init__(self, sizes, running, momentum=0.1, eps=1e-5):
        self.sizes, self.running, self.momentum, self.eps = sizes, running, momentum, eps

    def forward(self, x, gamma, beta):
        n = x.shape[0]
        self.weights = [s / n for s in self.sizes]

        def rank(comm):
            lo, hi = bounds(self.sizes)[comm.rank]
            xr, g, b = (Tensor(a.copy(), requires_grad=True) for a in (x[lo:hi], gamma, beta))
            rm, rv = self.running[comm.rank]
            y = F.batch_norm(xr, g, b, rm, rv, training=True, momentum=self.momentum, eps=self.eps,
                             reduce=comm.allreduce)
            return xr, g, b, y

        self.group = ThreadGroup(len(self.sizes))  # the job, for backward's exchanges too
        self.ranks = self.group.run(rank)
        return np.concatenate([y.data for _, _, _, y in self.ranks])  # the shards -> (N, ...)

    def backward(self, gy):
        def rank(comm):
            lo, hi = bounds(self.sizes)[comm.rank]
            w = self.weights[comm.rank]
            _, _, _, y = self.ranks[comm.rank]
            y.backward(Tensor(gy[lo:hi] / w if w else gy[lo:hi]))  # the gradient of this rank's mean loss

        self.group.run(rank)
        gx = np.concatenate([w * xr.grad for w, (xr, _, _, _) in zip(self.weights, self.ranks)])
        ggamma = sum(w * g.grad for w, (_, g, _, _) in zip(self.weights, self.ranks))
        gbeta = sum(w * b.grad for w, (_, _, b, _) in zip(self.weights, self.ranks))
        return gx, ggamma, gbeta


def inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2 + 0.3
    gamma, beta = rng.uniform(0.5, 1.5, shape[1]) * [1, -1, 1][:shape[1]], rng.normal(0, 0.5, shape[1])
    gy = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    return x, gamma, beta, gy


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("shape,sizes", [((5, 3, 2, 2), (3, 2)), ((7, 3), (4, 3)), ((4, 2, 3, 3), (3, 1, 0))])
def test_gradcheck_of_batch_norm_sharded_over_simulated_ranks(shape, sizes):
    x, gamma, beta, _ = inputs(shape, seed=1)
    c = shape[1]
    tensors = [Tensor(a, requires_grad=True) for a in (x, gamma, beta)]
    running = [(np.zeros(c), np.ones(c)) for _ in sizes]
    assert gradcheck(lambda x, g, b: ShardedBatchNorm(sizes, running)(x, g, b), tensors, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("sizes", [(4, 4), (5, 3), (6, 1, 1), (7, 1, 0)])
def test_sharded_batch_norm_is_batch_norm_of_the_whole_batch(sizes):
    """Forward, every gradient and each rank's running statistics: plain batch norm of the whole
    batch to 1e-12, also with a rank of one image and a rank of none."""
    x, gamma, beta, gy = inputs((sum(sizes), 3, 4, 4))
    c = x.shape[1]
    plain_rm, plain_rv = np.full(c, 0.2), np.full(c, 1.5)
    running = [(plain_rm.copy(), plain_rv.copy()) for _ in sizes]
    sharded = ShardedBatchNorm(sizes, running, momentum=0.3)
    results = []
    for fn in (lambda x, g, b: F.batch_norm(x, g, b, plain_rm, plain_rv, training=True, momentum=0.3), sharded):
        xt, g, b = (Tensor(a.copy(), requires_grad=True) for a in (x, gamma, beta))
        y = fn(xt, g, b)
        y.backward(Tensor(gy))
        results.append([y.data, xt.grad, g.grad, b.grad])
    for name, a, b in zip(["y", "gx", "ggamma", "gbeta"], *results):
        assert rel_err(b, a) < 1e-12, name
    for rm, rv in running:
        assert rel_err(rm, plain_rm) < 1e-12 and rel_err(rv, plain_rv) < 1e-12


def test_reduce_hook_with_one_rank_is_plain_batch_norm_and_sends_three_messages():
    """An identity all-reduce goes through the hook's float64 messages and gives plain batch
    norm's numbers: sum(x) and M, then sum((x - mean)^2), then backward's two sums."""
    x, gamma, beta, gy = inputs((6, 3, 5, 5), seed=2)
    x32, gamma32, beta32, gy32 = (a.astype(np.float32) for a in (x, gamma, beta, gy))
    messages = []

    def identity(buf):
        messages.append((buf.shape, buf.dtype))
        return buf

    results = []
    for reduce in (None, identity):
        rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
        xt, g, b = (Tensor(a.copy(), requires_grad=True) for a in (x32, gamma32, beta32))
        y = F.batch_norm(xt, g, b, rm, rv, training=True, reduce=reduce)
        y.backward(Tensor(gy32))
        results.append([y.data, xt.grad, g.grad, b.grad, rm, rv])
    for a, b in zip(*results):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    assert messages == [((4,), np.float64), ((4,), np.float64), ((7,), np.float64)]


def test_sync_batchnorm_takes_any_object_with_allreduce():
    """nn.SyncBatchNorm on two ranks whose communicator is not minires.distributed's: the
    whole batch's BatchNorm2d, and three exchanges per training step (none in evaluation)."""
    x, gamma, beta, gy = inputs((6, 3, 4, 4), seed=3)
    plain = nn.BatchNorm2d(3).astype("float64")
    plain.weight.data[:], plain.bias.data[:] = gamma, beta
    xt = Tensor(x.copy(), requires_grad=True)
    plain(xt).backward(Tensor(gy))

    def rank(comm):
        lo, hi = bounds((3, 3))[comm.rank]
        sync = nn.SyncBatchNorm(3, comm=comm).astype("float64")
        sync.weight.data[:], sync.bias.data[:] = gamma, beta
        xr = Tensor(x[lo:hi].copy(), requires_grad=True)
        sync(xr).backward(Tensor(gy[lo:hi] * 2))  # the gradient of this rank's mean loss: gy_r / w_r, w_r = 1/2
        training_messages = comm.messages
        sync.eval()
        sync(Tensor(x[lo:hi]))
        return xr.grad, sync, training_messages, comm.messages

    for (lo, hi), (gx, sync, training_messages, messages) in zip(bounds((3, 3)), ThreadGroup(2).run(rank)):
        assert rel_err(gx / 2, xt.grad[lo:hi]) < 1e-12  # w_r gx_r: the batch's gradient
        for k in ("running_mean", "running_var"):
            assert rel_err(getattr(sync, k), getattr(plain, k)) < 1e-12
        assert training_messages == 3 and messages == 3


def imports_of(source, package):
    """The absolute names of the modules that ``source`` (a module of ``package``) imports."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names += [module] + [f"{module}.{a.name}" for a in node.names]
    return names


def test_nn_imports_nothing_from_distributed():
    assert "minires.distributed" in imports_of("def f():\n    from ..distributed import get_world\n", "minires.nn")
    assert "minires.distributed" in imports_of("from .. import distributed\n", "minires.nn")
    folder = os.path.join(ROOT, "minires", "nn")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as f:
                imported = imports_of(f.read(), "minires.nn")
            assert not [m for m in imported if m.split(".")[:2] == ["minires", "distributed"]], name
