"""Synchronised batch normalisation: the statistics of the whole batch, spread over all ranks.

Plain BatchNorm in data-parallel training normalises each rank's shard with that shard's own
mean and variance (DDP's default, and what the CIFAR ResNet paper's two-GPU runs did).
``SyncBatchNorm`` all-reduces them, so N ranks with B/N samples each compute exactly what one
process with batch B computes, forward and backward.
"""
from .. import backend
from ..autograd import Function
from ..functional.normalization import batch_norm, channel_dot, channel_sum, per_channel, update_running_stats
from .layers import BatchNorm1d, BatchNorm2d, _BatchNorm


class SyncBatchNormFunction(Function):
    """Batch normalisation with statistics over every rank's part of the batch.

    With M_r values per channel on rank r and M = sum_r M_r:
      mean = sum_r sum(x_r) / M, var = sum_r sum((x_r - mean)^2) / M  (two all-reduces: the
      variance from the centred values, as in BatchNorm's one-process path, not E[x^2] - mean^2,
      which loses float32's digits to cancellation); y = gamma (x - mean) / sqrt(var + eps) + beta.

    Backward. Each rank's gy is the gradient of its own mean loss; the whole batch's loss is
    sum_r w_r loss_r with w_r = M_r / M (the weighting of ``GradientAllreducer``). The two
    reductions of BatchNorm's backward are therefore all-reduced with those weights:
      gbeta_all = sum_r w_r sum(gy_r), ggamma_all = sum_r w_r sum(gy_r * xhat_r),
    and the input gradient, in this rank's units (divided by w_r), is
      gx_r = gamma / sqrt(var + eps) * (gy_r - (gbeta_all + xhat_r * ggamma_all) / M_r).
    The parameter gradients returned are this rank's own sums (sum(gy_r), sum(gy_r * xhat_r)):
    the gradient all-reduce weights and adds them like every other parameter's.
    With one rank this is BatchNorm exactly.
    """

    def __init__(self, comm, running_mean=None, running_var=None, momentum=0.1, eps=1e-5):
        self.comm, self.running_mean, self.running_var = comm, running_mean, running_var
        self.momentum, self.eps = momentum, eps

    def forward(self, x, gamma, beta):
        xp = backend.get_array_module(x)
        c = x.shape[1]
        m_local = x.size // c
        # The statistics travel in float64 whatever x's dtype: C + 1 numbers, and sums of
        # float32 over many ranks keep their digits.
        stats = xp.empty(c + 1, xp.float64)
        stats[:c] = channel_sum(x)
        stats[c] = m_local
        self.comm.allreduce(stats)
        m = int(stats[c])
        # A rank without images (a last batch smaller than the ranks) joins both exchanges with
        # zeros. Should no rank have any (M = 0), the statistics are 0 and the running ones stay.
        mean = (stats[:c] / max(m, 1)).astype(x.dtype)
        xc = x - per_channel(mean, x)
        sq = channel_dot(xc, xc).astype(xp.float64) if m_local else xp.zeros(c, xp.float64)
        self.comm.allreduce(sq)
        var = (sq / max(m, 1)).astype(x.dtype)
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        y = xc * per_channel(gamma * inv_std, x)
        y += per_channel(beta, x)
        if self.running_mean is not None and m:
            update_running_stats(self.running_mean, self.running_var, mean, var, m, self.momentum)
        self.running_mean = self.running_var = None
        if any(self.needs_input_grad):
            self.xc, self.inv_std, self.gamma, self.m, self.m_local = xc, inv_std, gamma, m, m_local
        return y

    def backward(self, gy):
        xp = backend.get_array_module(gy)
        xc, inv_std, gamma, m_local = self.xc, self.inv_std, self.gamma, self.m_local
        c = gy.shape[1]
        gbeta = channel_sum(gy)
        ggamma = channel_dot(gy, xc) * inv_std if m_local else xp.zeros(c, gy.dtype)
        gx = None
        if self.needs_input_grad[0]:
            w = m_local / max(self.m, 1)
            sums = xp.empty(2 * c, xp.float64)
            sums[:c] = gbeta
            sums[c:] = ggamma
            sums *= w
            self.comm.allreduce(sums)
            gbeta_all, ggamma_all = sums[:c].astype(gy.dtype), sums[c:].astype(gy.dtype)
            if m_local == 0:  # no images on this rank: an empty gradient, after the exchange
                return xp.zeros_like(gy), ggamma, gbeta
            # gx = a * gy + k * xc + b per channel, with a = gamma * inv_std,
            # k = -a * inv_std * ggamma_all / M_r, b = -a * gbeta_all / M_r
            a = gamma * inv_std
            gx = gy * per_channel(a, gy)
            t = xc * per_channel(-a * inv_std * ggamma_all / m_local, gy)
            t += per_channel(-a * gbeta_all / m_local, gy)
            gx += t
        return gx, ggamma, gbeta


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics span all ranks of ``comm`` (PyTorch's name).

    Takes (N, C) or (N, C, H, W). ``comm``: a ``minires.distributed`` communicator; None uses
    the one ``minires.distributed.init()`` made. In evaluation mode it is plain BatchNorm on
    the running statistics (identical on every rank), with no communication. Its parameters and
    buffers carry BatchNorm's names, so checkpoints move between the two.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, comm=None):
        super().__init__(num_features, eps, momentum)
        self.comm = comm

    def forward(self, x):
        if x.ndim not in (2, 4):
            raise ValueError(f"SyncBatchNorm expects a 2-D or 4-D input, got shape {tuple(x.shape)}")
        if not self.training:
            return batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                              training=False, eps=self.eps)
        comm = self.comm
        if comm is None:
            from ..distributed import get_world  # late: distributed is optional (mpi4py)
            comm = get_world()
            if comm is None:
                raise RuntimeError("SyncBatchNorm in training needs a communicator: call "
                                   "minires.distributed.init() first, or pass comm=")
        if x.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm({self.num_features}) got {x.shape[1]} channels, input shape {tuple(x.shape)}")
        self.num_batches_tracked += 1
        return SyncBatchNormFunction(comm, self.running_mean, self.running_var, self.momentum, self.eps)(
            x, self.weight, self.bias)

    @classmethod
    def convert_sync_batchnorm(cls, module, comm=None):
        """``module`` with every BatchNorm1d/2d replaced by a SyncBatchNorm that takes over its
        parameters, buffers and settings (the same arrays, not copies). Changes ``module`` in
        place and returns it (or the replacement, when ``module`` itself is a BatchNorm).
        Each replacement keeps its place, so parameter order and names are unchanged."""
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
