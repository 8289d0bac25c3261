"""One rank of a test in tests/test_distributed.py, started by it as

    mpiexec -n N python tests/distributed_worker.py CASE OUT_DIR [ARG]

Each case does its part on every rank and writes what the test checks to OUT_DIR/rank<r>.npz;
the checks themselves (against one process, across ranks) live in the test. A rank that raises
ends the whole job through ``comm.abort`` (see ``main``), as minires.train does.
"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy  # noqa: E402

from minires import backend, distributed, models, nn  # noqa: E402
from minires import functional as F  # noqa: E402
from minires.autograd import Tensor  # noqa: E402
from minires.data import ArrayLoader, shard_bounds  # noqa: E402
from minires.nn.init import manual_seed  # noqa: E402
from minires.optim import SGD  # noqa: E402

STEPS = 3


def batch(step, size, dtype):
    """The whole batch of a step, the same on every rank: images (size, 3, 8, 8) and labels."""
    rng = numpy.random.default_rng([7, step])
    return rng.standard_normal((size, 3, 8, 8)).astype(dtype), rng.integers(0, 10, size)


def train_steps(comm, batch_size, dtype, sync_bn):
    """ResNet-8 on each rank's shard of STEPS batches of ``batch_size``; rank-specific initial
    weights, so that only the broadcast can make them agree."""
    manual_seed(100 + comm.rank)
    model = models.cifar_resnet(8).astype(dtype)
    distributed.broadcast_state(model, comm)
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model, comm)
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    reduce_gradients = distributed.GradientAllreducer(model.parameters(), comm, bucket_mb=0.01)
    out = {}
    for step in range(STEPS):
        x, y = batch(step, batch_size, dtype)
        lo, hi = shard_bounds(batch_size, comm.rank, comm.size)
        model.zero_grad()
        xp = backend.default_module()  # NumPy, or CuPy in case_nccl
        loss = F.cross_entropy(model(Tensor(xp.asarray(x[lo:hi]))), xp.asarray(y[lo:hi]))
        loss.backward()
        reduce_gradients((hi - lo) / batch_size)
        if step == 0:
            out.update({f"grad.{k}": p.grad.copy() for k, p in model.named_parameters()})  # a view, reused next step
        optimizer.step()
    out.update({f"state.{k}": v for k, v in model.state_dict().items()})
    out["buckets"] = numpy.array(len(reduce_gradients.buckets))
    return out


def case_sync(comm, batch_size):
    return train_steps(comm, int(batch_size), numpy.float64, sync_bn=True)


def case_plain(comm, batch_size):
    return train_steps(comm, int(batch_size), numpy.float32, sync_bn=False)


def case_gradcheck(comm, _):
    """Finite differences of the whole job's loss through batch norm reduced over the ranks, every rank
    stepping through every element of every rank's input together."""
    rng = numpy.random.default_rng(comm.rank)
    x = Tensor(rng.standard_normal((2 + comm.rank, 3, 2, 2)) * 2 + 0.5, requires_grad=True)
    gamma = Tensor(numpy.array([1.5, -0.7, 0.9]), requires_grad=True)
    beta = Tensor(numpy.array([0.1, 0.2, -0.3]), requires_grad=True)
    m_local = x.size // 3
    m = comm.allreduce_values([m_local])[0]
    upstream = rng.uniform(0.5, 1.5, x.shape) * rng.choice([-1.0, 1.0], x.shape)

    def local_loss():
        # this rank's mean-style loss: its part of the job's loss divided by its share m_local / m
        y = F.batch_norm(x, gamma, beta, reduce=comm.allreduce)
        return y, float((y.data * upstream).sum())

    def job_loss():
        return comm.allreduce_values([local_loss()[1] * m_local / m])[0]

    y, _ = local_loss()
    y.backward(Tensor(upstream))
    analytic = x.grad * m_local / m  # this rank's units -> the job's
    sizes = [int(v) for v in comm.allreduce_values([x.size if r == comm.rank else 0 for r in range(comm.size)])]
    eps, worst = 1e-6, 0.0
    for owner in range(comm.size):
        for i in range(sizes[owner]):
            flat = x.data.reshape(-1)  # (n, 3, 2, 2) -> a view of n * 12 values
            if owner == comm.rank:
                flat[i] += eps
            plus = job_loss()
            if owner == comm.rank:
                flat[i] -= 2 * eps
            minus = job_loss()
            if owner == comm.rank:
                flat[i] += eps
                numeric = (plus - minus) / (2 * eps)
                worst = max(worst, abs(numeric - analytic.reshape(-1)[i]) / max(1.0, abs(numeric)))  # (n * 12,)
    # gamma and beta: their job gradients are the weighted sums of the ranks' gradients
    ggamma = comm.allreduce(gamma.grad * m_local / m)
    gbeta = comm.allreduce(beta.grad * m_local / m)
    for p, g in ((gamma, ggamma), (beta, gbeta)):
        for i in range(3):
            p.data[i] += eps
            plus = job_loss()
            p.data[i] -= 2 * eps
            minus = job_loss()
            p.data[i] += eps
            numeric = (plus - minus) / (2 * eps)
            worst = max(worst, abs(numeric - g[i]) / max(1.0, abs(numeric)))
    return {"worst": numpy.array(worst)}


def case_shards(comm, batch_size):
    """The sample ids (labels) each rank sees in two epochs of a shuffled, augmented loader."""
    n = 37
    x = numpy.zeros((n, 3, 8, 8), numpy.uint8)
    loader = ArrayLoader(x, numpy.arange(n), int(batch_size), shuffle=True, augment=True, seed=3,
                         rank=comm.rank, world_size=comm.size)
    seen = [numpy.concatenate([yb for _, yb in loader]) for _ in range(2)]
    return {"epoch0": seen[0], "epoch1": seen[1], "batches": numpy.array(len(loader))}


def case_kill(comm, how):
    """Rank 1 dies (``kill``), raises (``raise``) or stops answering (``hang``) after a few
    all-reduces while the others keep calling them."""
    buf = numpy.zeros(4)
    for step in range(100000):
        if comm.rank == 1 and step == 5:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif how == "raise":
                raise RuntimeError("rank 1 failed on purpose")
            else:
                time.sleep(3600)
        comm.allreduce(buf)
    return {}


def case_nccl(comm, _):
    """On GPUs through NCCL: the collectives, and train_steps' SyncBN run, on CuPy arrays."""
    cupy = backend.get_module("cupy")
    buf = cupy.arange(4, dtype=cupy.float64) + comm.rank
    comm.allreduce(buf)
    root = cupy.full(3, float(comm.rank))
    comm.broadcast(root, 0)
    backend.set_backend("cupy")
    out = {k: backend.to_numpy(v) for k, v in train_steps(comm, 8, numpy.float64, sync_bn=True).items()}
    out.update(sum=backend.to_numpy(buf), root=backend.to_numpy(root))
    return out


def main():
    case, out, arg = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else None)
    comm = distributed.init("cupy" if case == "nccl" else "numpy",
                            timeout=float(os.environ.get("WORKER_TIMEOUT", 0)) or None)
    try:
        result = globals()[f"case_{case}"](comm, arg)
    except BaseException as e:
        print(f"rank {comm.rank}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        comm.abort(1)
    numpy.savez(os.path.join(out, f"rank{comm.rank}.npz"), **result)


if __name__ == "__main__":
    main()
