"""The start-up check that every rank of a job runs the same configuration on the same data.

Ranks given different options or data would otherwise train on silently (another --lr or
--seed on one rank, another data set: each rank a different run, the checkpoint rank 0's), or
die in their first exchange with an MPI error about message sizes (another depth or dtype).
``check_agreement`` compares a list of named values (a broadcast and an all-reduce) and names the
first that differs.
"""
import hashlib

import numpy


class RanksDisagree(Exception):
    """Raised on every rank, with the same message, when the ranks' values differ; every rank
    knows it after the same exchange, so they can all stop without waiting for one another."""


def digest(*arrays):
    """A short hex checksum of arrays' shapes, dtypes and contents (host or device arrays)."""
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        a = numpy.ascontiguousarray(a.get() if hasattr(a, "get") else a)  # CuPy -> NumPy
        h.update(f"{a.shape}{a.dtype.str}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def check_agreement(comm, fields):
    """Raise ``RanksDisagree`` on every rank of ``comm`` unless all hold equal ``fields``: a
    list of (name, value) pairs, the values numbers or strings, in the same order everywhere.

    Rank 0's list goes to every rank (one broadcast), each finds its first field that differs
    from rank 0's, and one all-reduce tells every rank where each one's is. The message names
    the first such field and the lowest rank with it: "--lr: rank 0 has 0.1, rank 1 has 0.05".
    """
    if comm.size == 1:
        return
    fields = [(str(name), value) for name, value in fields]
    reference = comm.broadcast_object(fields, 0)
    first = next((i for i, (mine, ref) in enumerate(zip(fields, reference)) if mine != ref),
                 min(len(fields), len(reference)) if len(fields) != len(reference) else -1)
    # every rank's first difference (or -1) in one message: rank r writes slot r
    firsts = comm.allreduce_values([first if r == comm.rank else 0 for r in range(comm.size)])
    differing = [(int(i), r) for r, i in enumerate(firsts) if i >= 0]
    if not differing:
        return
    index, culprit = min(differing)
    message = None
    if comm.rank == culprit:
        name = (fields if index < len(fields) else reference)[index][0]
        theirs = reference[index][1] if index < len(reference) else "nothing"
        mine = fields[index][1] if index < len(fields) else "nothing"
        message = (f"the processes disagree on {name}: rank 0 has {theirs}, rank {culprit} has {mine}; "
                   "every process must be started with the same options and data")
    raise RanksDisagree(comm.broadcast_object(message, culprit))
