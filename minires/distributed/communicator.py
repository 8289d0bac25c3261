"""Communicators: the few collective operations data-parallel training needs.

Every process (a *rank*) of a job holds one communicator. All of them call the same collective
in the same order; ``allreduce(buf)`` then leaves the element-wise sum over the ranks in every
rank's ``buf``, and ``broadcast(buf, root)`` leaves the root's ``buf`` in every rank's. Buffers
are contiguous 1-D arrays of the communicator's array module ``xp``, changed in place, so a
whole model's gradients travel as one message instead of one per parameter.

- ``MPICommunicator``: MPI through mpi4py, on NumPy buffers (CPU processes, one or several
  machines; ``mpiexec`` starts the processes).
- ``NCCLCommunicator``: NVIDIA's NCCL through CuPy, on CuPy buffers (one GPU per process). MPI
  still starts the processes and carries NCCL's unique id from rank 0 to the others.

A collective waits for every rank. If one rank dies (a crash, ``kill -9``), ``mpiexec`` ends
the others; if one raises, ``abort()`` (which ``minires.train`` calls) ends the job; and if one
merely stops answering, the watchdog ends the job once a collective has waited ``timeout``
seconds, with a message that names the rank and the operation, instead of hanging forever.
"""
import os
import sys
import threading
import time

import numpy


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("distributed training needs mpi4py and an MPI library: "
                          f"pip install \"minires[mpi]\" (mpi4py and the mpich wheel) [{e}]") from None
    return MPI


class Watchdog:
    """Ends the job when one collective has waited longer than ``timeout`` seconds.

    One daemon thread looks once a second at when the current collective began; the main thread
    only writes two attributes per collective, so the check costs nothing measurable.
    """

    def __init__(self, timeout, on_timeout):
        self.timeout, self.on_timeout = timeout, on_timeout
        self.operation, self.since = None, None
        thread = threading.Thread(target=self._watch, name="minires-collective-watchdog", daemon=True)
        thread.start()

    def start(self, operation):
        self.operation, self.since = operation, time.monotonic()

    def stop(self):
        self.since = None

    def _watch(self):
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            since = self.since
            if since is not None and time.monotonic() - since > self.timeout:
                self.on_timeout(f"{self.operation} waited more than {self.timeout:g} s for the other ranks")
                return


class Communicator:
    """The interface: ``rank``, ``size``, ``xp``, and the collectives.

    Subclasses define ``_allreduce``, ``_broadcast``, ``barrier``, ``broadcast_object`` and
    ``abort``; this class adds the checks and the watchdog around the first two.
    """

    rank = 0
    size = 1
    xp = numpy

    def __init__(self, timeout=None):
        self.watchdog = Watchdog(timeout, self._timed_out) if timeout else None

    def allreduce(self, buf):
        """Sum ``buf`` (a contiguous 1-D array of ``xp``) over all ranks, in place; returns buf."""
        self._check(buf, "allreduce")
        self._guarded("allreduce", self._allreduce, buf)
        return buf

    def broadcast(self, buf, root=0):
        """Overwrite ``buf`` on every rank with rank ``root``'s ``buf``, in place; returns buf."""
        self._check(buf, "broadcast")
        self._guarded("broadcast", self._broadcast, buf, root)
        return buf

    def allreduce_values(self, values):
        """Sums of a few Python numbers over the ranks (metrics, stop flags), as float64 values."""
        buf = self.xp.asarray(numpy.asarray(values, dtype=numpy.float64))
        return [float(v) for v in self.allreduce(buf).tolist()]

    def _check(self, buf, name):
        if type(buf).__module__.split(".")[0] != self.xp.__name__:
            raise TypeError(f"{type(self).__name__}.{name} needs a {self.xp.__name__} array, "
                            f"got {type(buf).__module__}.{type(buf).__name__}")
        if buf.ndim != 1 or not buf.flags.c_contiguous:
            raise ValueError(f"{type(self).__name__}.{name} needs a contiguous 1-D buffer, got shape {buf.shape}")

    def _guarded(self, name, fn, *args):
        if self.watchdog is None:
            return fn(*args)
        self.watchdog.start(f"rank {self.rank}: {name}")
        try:
            return fn(*args)
        finally:
            self.watchdog.stop()

    def _timed_out(self, message):
        print(f"minires.distributed: {message}; a rank has stopped or hangs, ending the job",
              file=sys.stderr, flush=True)
        self.abort(3)


class MPICommunicator(Communicator):
    """MPI through mpi4py on NumPy buffers. ``comm``: an mpi4py communicator (COMM_WORLD)."""

    def __init__(self, comm=None, timeout=None):
        self.MPI = _import_mpi()
        self.comm = self.MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        super().__init__(timeout)

    def _allreduce(self, buf):
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def _broadcast(self, buf, root):
        self.comm.Bcast(buf, root=root)

    def allreduce_values(self, values):
        """Sums of a few Python numbers over the ranks, as float64 values, through MPI on the
        host, also under NCCL: the loop calls this every batch (the Ctrl-C flag), and a device
        buffer would copy to the device and wait for it there and back."""
        buf = numpy.asarray(values, dtype=numpy.float64)
        self._guarded("allreduce", self.comm.Allreduce, self.MPI.IN_PLACE, buf, self.MPI.SUM)
        return buf.tolist()

    def barrier(self):
        self._guarded("barrier", self.comm.Barrier)

    def broadcast_object(self, obj, root=0):
        """Rank ``root``'s ``obj`` (any picklable value: a checkpoint read on one machine, an
        error) on every rank. Pickled, so only for values this job's own ranks made."""
        return self._guarded("broadcast_object", self.comm.bcast, obj, root)

    def abort(self, code=1):
        """End every rank of the job now (MPI_Abort): what a rank that cannot go on calls, so
        that no other rank is left waiting in a collective."""
        sys.stdout.flush(), sys.stderr.flush()
        self.comm.Abort(code)
        # MPICH's Abort can return in a rank whose job another rank is already ending; this
        # rank must not go on either.
        os._exit(code)


class NCCLCommunicator(MPICommunicator):
    """NCCL through CuPy on CuPy buffers, one GPU per process.

    MPI starts the processes and bootstraps: each rank takes the GPU ``local rank % GPUs``
    (ranks are counted per machine), rank 0 makes NCCL's unique id and MPI broadcasts it, then
    every rank joins the NCCL communicator. Collectives run on CuPy's current stream, and the host
    does not wait for them (a training step has one per gradient buffer and three per
    SyncBatchNorm layer): the watchdog times their launch only. A rank whose device hangs in one
    still stops the job: the other ranks' hosts meet it in the next ``allreduce_values`` (the
    loop's per-batch stop flag), which goes through MPI on the host, and time out there.
    ``barrier``, ``broadcast_object`` and ``abort`` go through MPI too.
    """

    def __init__(self, comm=None, timeout=None):
        super().__init__(comm, timeout)
        from .. import backend
        cupy = backend.get_module("cupy")
        try:
            from cupy.cuda import nccl
        except ImportError as e:
            raise ImportError("NCCL is not available to this CuPy (install NCCL as CuPy's installation "
                              f"guide says under 'optional libraries') [{e}]") from None
        self.xp, self.nccl = cupy, nccl
        # Ranks that share a machine: their order there picks the GPU.
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        self.local_rank = local.Get_rank()
        local.Free()
        cupy.cuda.Device(self.local_rank % cupy.cuda.runtime.getDeviceCount()).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self.comm.bcast(uid, root=0)
        self.nccl_comm = nccl.NcclCommunicator(self.size, uid, self.rank)

    def _nccl_type(self, dtype):
        types = {"float16": self.nccl.NCCL_FLOAT16, "float32": self.nccl.NCCL_FLOAT32,
                 "float64": self.nccl.NCCL_FLOAT64, "int32": self.nccl.NCCL_INT32,
                 "int64": self.nccl.NCCL_INT64}
        if dtype.name not in types:
            raise TypeError(f"NCCLCommunicator cannot reduce {dtype.name} buffers; use one of {', '.join(types)}")
        return types[dtype.name]

    def _allreduce(self, buf):
        stream = self.xp.cuda.get_current_stream()
        self.nccl_comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._nccl_type(buf.dtype),
                                 self.nccl.NCCL_SUM, stream.ptr)

    def _broadcast(self, buf, root):
        stream = self.xp.cuda.get_current_stream()
        self.nccl_comm.bcast(buf.data.ptr, buf.size, self._nccl_type(buf.dtype), root, stream.ptr)

    def abort(self, code=1):
        self.nccl_comm.abort()
        super().abort(code)

