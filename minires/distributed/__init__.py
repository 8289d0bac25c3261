"""Data-parallel training on several processes: MPI (mpi4py) on CPUs, NCCL (CuPy) on GPUs.

Start the processes with MPI, one per CPU socket or GPU, and let each call ``init``::

    mpiexec -n 2 python -m minires.train --distributed            # 2 CPU processes
    mpiexec -n 4 python -m minires.train --distributed --backend cupy   # 4 GPUs, NCCL

What is exchanged and when (see ``data_parallel``): rank 0's parameters and buffers once at the
start; each rank's weighted gradients after every backward, summed; with ``nn.SyncBatchNorm``,
also the BatchNorm statistics in every forward and backward. Each rank draws the same shuffled
order of the data and takes its own slice of every batch (``minires.data.shard_bounds``), so N
ranks with batch B/N each do what one process does with batch B. At the start, ``check_agreement``
makes sure that every rank was given the same options and data.
"""
from .agreement import RanksDisagree, check_agreement, digest
from .communicator import Communicator, MPICommunicator, NCCLCommunicator
from .data_parallel import GradientAllreducer, broadcast_buffers, broadcast_state
from .hooks import DataParallelHooks

__all__ = ["Communicator", "MPICommunicator", "NCCLCommunicator", "GradientAllreducer", "broadcast_state",
           "broadcast_buffers", "DataParallelHooks",
           "RanksDisagree", "check_agreement", "digest", "init"]

_world = None


def init(backend="numpy", timeout=None):
    """The communicator of all the processes mpiexec started, for the array backend in use.

    ``backend``: "numpy" (MPI on host arrays) or "cupy" (NCCL on GPU arrays, one GPU per
    rank). ``timeout``: seconds one collective may wait before the job is ended (None: wait
    as long as it takes). Later calls return the same communicator. Pass it on explicitly
    (``nn.SyncBatchNorm(..., comm=)``, ``DataParallelHooks(model, comm)``): nothing looks it up.
    """
    global _world
    if _world is None:
        if backend not in ("numpy", "cupy"):
            raise ValueError(f"unknown backend {backend!r} for distributed training; use 'numpy' or 'cupy'")
        _world = NCCLCommunicator(timeout=timeout) if backend == "cupy" else MPICommunicator(timeout=timeout)
    return _world
