"""Synchronised batch normalisation: the statistics of the whole batch, spread over all ranks.

Plain BatchNorm in data-parallel training normalises each rank's shard with that shard's own
mean and variance (DDP's default, and what the CIFAR ResNet paper's two-GPU runs did).
``SyncBatchNorm`` sums the statistics over the ranks, so N ranks with B/N samples each compute
exactly what one process with batch B computes, forward and backward. The maths is batch norm's
own (``functional.batch_norm`` with ``reduce=comm.allreduce``); this module only holds the
communicator.
"""
from .. import functional as F
from .layers import BatchNorm1d, BatchNorm2d, _BatchNorm


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics span all ranks of ``comm`` (PyTorch's name).

    Takes (N, C) or (N, C, H, W); a rank's N may be 0 (it still joins every exchange).
    ``comm``: any object with ``allreduce(buf)`` that sums a contiguous 1-D float64 array of the
    input's array module over all ranks, in place or not, and returns the sum: a
    ``minires.distributed`` communicator (``distributed.init()``), or your own. Every rank must
    run the same layers in the same order, since each training forward exchanges twice and each
    backward once. In evaluation mode it is plain BatchNorm on the running statistics (identical
    on every rank) and needs no communicator. Its parameters and buffers carry BatchNorm's
    names, so checkpoints move between the two.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, comm=None):
        super().__init__(num_features, eps, momentum)
        self.comm = comm

    def forward(self, x):
        if x.ndim not in (2, 4):
            raise ValueError(f"SyncBatchNorm expects a 2-D or 4-D input, got shape {tuple(x.shape)}")
        reduce = None
        if self.training:
            if self.comm is None:
                raise RuntimeError("SyncBatchNorm in training needs a communicator: pass comm= (for instance "
                                   "minires.distributed.init()) or use BatchNorm2d")
            reduce = self.comm.allreduce
            self.num_batches_tracked += 1
        return F.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                            training=self.training, momentum=self.momentum, eps=self.eps, reduce=reduce)

    @classmethod
    def convert_sync_batchnorm(cls, module, comm=None):
        """``module`` with every BatchNorm1d/2d replaced by a SyncBatchNorm on ``comm`` that takes
        over its parameters, buffers and settings (the same arrays, not copies). Changes
        ``module`` in place and returns it (or the replacement, when ``module`` itself is a
        BatchNorm). Each replacement keeps its place, so parameter order and names are unchanged."""
        if isinstance(module, (BatchNorm1d, BatchNorm2d)):
            sync = cls(module.num_features, module.eps, module.momentum, comm)
            sync.weight, sync.bias = module.weight, module.bias
            for name, buf in module._buffers.items():
                sync.register_buffer(name, buf)
            sync.train(module.training)
            return sync
        for name, child in list(module._modules.items()):
            if child is not None:
                module._modules[name] = cls.convert_sync_batchnorm(child, comm)
        return module
