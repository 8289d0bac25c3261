"""The training loop's hooks for data-parallel training.

``minires.train --distributed`` passes them to ``fit``. They are the loop's hook protocol
(``minires.training.LoopHooks`` documents it) met by duck typing: ``distributed`` does not import
``training``, both sit on top of the layers below. Each hook is one or two collectives:

- after every backward: the gradients become the share-weighted sum over the ranks (the
  gradient of the whole batch's mean loss), and rank 0's BatchNorm buffers are copied to all;
- ``any``: a Ctrl-C on any rank, or a loss that is not finite on any rank, stops every rank at
  the same batch;
- ``sum``: the metrics of a batch or an evaluation are summed over the ranks;
- ``is_main``: only rank 0 writes files and shows progress.
"""
from ..nn import SyncBatchNorm
from .data_parallel import GradientAllreducer, broadcast_buffers


class DataParallelHooks:
    """Hooks that keep ``model`` identical on every rank of ``comm`` through training."""

    def __init__(self, model, comm, bucket_mb=25.0):
        self.model, self.comm = model, comm
        self.is_main = comm.rank == 0
        self.reduce_gradients = GradientAllreducer(model.parameters(), comm, bucket_mb)
        # SyncBatchNorm exchanges in the forward and backward passes: every rank must run them
        self.forward_without_images = any(isinstance(m, SyncBatchNorm) for m in model.modules())

    def after_backward(self, model, optimizer, share):
        self.reduce_gradients(share)
        broadcast_buffers(model, self.comm)

    def any(self, flag):
        return self.comm.allreduce_values([1.0 if flag else 0.0])[0] > 0

    def sum(self, values):
        return self.comm.allreduce_values(values)
