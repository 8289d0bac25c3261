"""Data parallelism: every rank holds the whole model and works on its own part of each batch.

One step on N ranks does what one process does with the whole batch:

1. ``broadcast_state`` (once, at the start): rank 0's parameters and buffers are copied to
   every rank, so all ranks start identical.
2. Each rank runs forward and backward on its shard of the batch (see
   ``minires.data.shard_bounds``); its gradients are those of the mean loss over its own n_r
   samples.
3. ``GradientAllreducer``: the gradient of the mean loss over the whole batch of n samples is
   sum_r (n_r / n) grad_r, so each rank scales its gradients by its share w_r = n_r / n and the
   sum over ranks is all-reduced. With equal shards w_r = 1 / N: the sum divided by the world
   size. Where an optimizer holds the parameters in its flat buffer (``minires.nn.flat``), the
   gradients are already one flat array: ONE message, reduced in place. Otherwise they travel
   packed into a few flat buffers of at most ``bucket_mb`` MiB ("buckets", as in Horovod and
   ChainerMN), not one message per parameter: a message costs a latency whatever its size,
   and ResNet-20 has 65 parameter arrays.
4. Every rank takes the same optimizer step on the same gradients, so the parameters stay
   identical without being sent again.
"""
import numpy

from .. import backend


def _by_dtype(arrays):
    """Group arrays by dtype, keeping their order: {dtype: [array, ...]}."""
    groups = {}
    for a in arrays:
        groups.setdefault(numpy.dtype(a.dtype), []).append(a)
    return groups


def _broadcast_arrays(arrays, comm, root):
    """Overwrite ``arrays`` with rank ``root``'s, one flat message per dtype."""
    for group in _by_dtype(arrays).values():
        # host arrays (a NumPy batch counter beside CuPy weights) travel on the device too
        buf = comm.xp.concatenate([comm.xp.asarray(a).reshape(-1) for a in group])  # each (shape) -> (size,)
        comm.broadcast(buf, root)
        offset = 0
        for a in group:
            piece = buf[offset:offset + a.size].reshape(a.shape)  # (size,) -> the array's shape
            a[...] = backend.to_backend(piece, backend.backend_of(a))
            offset += a.size


def broadcast_state(model, comm, root=0):
    """Copy rank ``root``'s parameters and buffers into every rank's ``model``, in place (at the
    start of a run, so that all ranks start identical)."""
    _broadcast_arrays([p.data for p in model.parameters()] + list(model.buffers()), comm, root)


def broadcast_buffers(model, comm, root=0):
    """Copy rank ``root``'s buffers (BatchNorm's running statistics and batch counts) into every
    rank's ``model``. With per-rank BatchNorm each rank's statistics follow its own shard;
    after this every rank holds rank 0's, which are those a checkpoint saves and evaluation
    uses (DDP's ``broadcast_buffers``)."""
    _broadcast_arrays(list(model.buffers()), comm, root)


class GradientAllreducer:
    """Replace each parameter's gradient by the weighted sum over ranks, in size-capped buckets.

    ``params``: the parameters, in the same order on every rank (``model.parameters()``).
    Consecutive parameters of one dtype share a bucket until it would pass ``bucket_mb`` MiB; a
    parameter larger than that gets a bucket of its own. The buckets' buffers are allocated
    once and reused at every step. A parameter without a gradient on this rank contributes
    zeros (another rank may have one), and receives the reduced gradient like the others.
    """

    def __init__(self, params, comm, bucket_mb=25.0):
        if bucket_mb <= 0:
            raise ValueError(f"bucket_mb must be positive, got {bucket_mb}")
        self.params, self.comm = list(params), comm
        cap = bucket_mb * 2 ** 20
        self.buckets = []  # [(params, flat buffer)]
        current, nbytes = [], 0
        for p in self.params:
            size = p.size * p.data.dtype.itemsize
            if current and (p.data.dtype != current[0].data.dtype or nbytes + size > cap):
                self.buckets.append(current)
                current, nbytes = [], 0
            current.append(p)
            nbytes += size
        if current:
            self.buckets.append(current)
        self.buffers = [comm.xp.empty(sum(p.size for p in bucket), bucket[0].data.dtype) for bucket in self.buckets]

    def flat_buffers(self):
        """The optimizer's flat buffers holding exactly these parameters (each bound there, none
        besides, on the communicator's backend), or None: then the buckets are used."""
        flats = {}
        for p in self.params:
            flat = getattr(p, "_flat", None)
            if flat is None or backend.get_array_module(flat.grad) is not self.comm.xp:
                return None
            flats[id(flat)] = flat
        mine = {id(p) for p in self.params}
        if any(id(q) not in mine for flat in flats.values() for q in flat.bound_params()):
            return None
        return list(flats.values())

    def _reduce_flat(self, flat, weight):
        """One message: the whole flat gradient, scaled by ``weight`` and summed in place."""
        if weight == 0:  # a rank without images adds nothing, not 0 * nan
            flat.grad.fill(0)
        else:
            for k, p in enumerate(flat.params):
                if p.grad is None:  # its view holds a stale gradient: it adds zeros
                    flat.grad[flat.starts[k]:flat.stops[k]] = 0
            flat.grad *= flat.grad.dtype.type(weight)
        self.comm.allreduce(flat.grad)
        for p in flat.params:
            p._has_grad = True

    def __call__(self, weight):
        """All-reduce the gradients; ``weight``: this rank's share n_r / n of the batch."""
        flats = self.flat_buffers()
        if flats is not None:
            for flat in flats:
                self._reduce_flat(flat, weight)
            return
        xp = self.comm.xp
        for bucket, buf in zip(self.buckets, self.buffers):
            offset = 0
            for p in bucket:
                part = buf[offset:offset + p.size]
                if p.grad is None or weight == 0:  # a rank without images adds nothing, not 0 * nan
                    part[...] = 0
                else:
                    xp.multiply(p.grad.reshape(-1), weight, out=part)  # (shape) -> (size,)
                offset += p.size
            self.comm.allreduce(buf)
            offset = 0
            for p in bucket:
                p.grad = buf[offset:offset + p.size].reshape(p.shape).copy()  # (size,) -> p's shape
                offset += p.size
