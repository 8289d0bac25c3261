"""More of a training step that must not wait for the device (issue 17, section 1).

Without a GPU, waiting cannot be seen, so these tests watch for what makes a GPU wait: a
conversion of a device array to a host number (``Device`` records ``item``, ``float``, ``int``,
``bool`` ... as ``tests/test_loop_nosync.py``'s Spy does) and a copy of host data to the device
(the fake CuPy module ``FAKE`` records ``asarray`` of anything that is not a ``Device`` array).
``Device`` arrays are NumPy arrays whose class claims to come from CuPy, so ``minires.backend``
takes them for CuPy arrays and the ops take their CuPy paths, with ``FAKE`` (NumPy's functions)
as their ``xp``.
"""
import types

import numpy as np
import pytest

import minires
import minires.functional as F
import minires.training.loop as loop
from minires import backend, distributed, nn
from minires.autograd import Tensor
from minires.data.loader import ArrayLoader, shard_bounds
from minires.functional import pooling
from minires.optim import SGD, ConstantLR
from minires.training import TrainState, evaluate, fit
from host_reads import HostReads

EVENTS = []  # what made the host wait: ("int", ...), ("asarray", shape), ...


class Device(HostReads):
    """A "device" array: minires takes it for CuPy's; every conversion to a host number is recorded."""

    def record(self, what):
        EVENTS.append((what,))


Device.__module__ = "cupy._fake"  # what backend.get_array_module looks at


class FakeCupy(types.ModuleType):
    """NumPy's functions as the array module of ``Device`` arrays: arrays it makes are ``Device``
    arrays, and ``asarray`` of host data (anything not yet a ``Device`` array) is recorded."""

    def __getattr__(self, name):
        return getattr(np, name)

    def asarray(self, a, dtype=None):
        if not isinstance(a, Device):
            EVENTS.append(("asarray", np.shape(a)))
        return np.asarray(a, dtype).view(Device)

    def zeros(self, *args, **kwargs):
        return np.zeros(*args, **kwargs).view(Device)

    def full(self, *args, **kwargs):
        return np.full(*args, **kwargs).view(Device)

    def arange(self, *args, **kwargs):
        return np.arange(*args, **kwargs).view(Device)


FAKE = FakeCupy("cupy")


@pytest.fixture
def device(monkeypatch):
    """``Device`` arrays become CuPy arrays to minires, with ``FAKE`` as their module."""
    monkeypatch.setattr(backend, "_import_cupy", lambda: FAKE)
    EVENTS.clear()
    return lambda a: np.asarray(a).view(Device)


# -------------------------------------------------------------------------------------------------
# 1. The share of a data-parallel batch: known from the loader, not asked of the other ranks
# -------------------------------------------------------------------------------------------------


def test_the_loader_knows_the_whole_batch_on_every_rank():
    x, y = np.zeros((10, 1, 2, 2), np.uint8), np.arange(10)
    for world in (1, 2, 3, 4):
        totals = []
        for rank in range(world):
            loader = ArrayLoader(x, y, batch_size=4, rank=rank, world_size=world)
            mine = []
            for xb, _ in loader:
                mine.append(loader.batch_total)
                lo, hi = shard_bounds(loader.batch_total, rank, world)
                assert len(xb) == hi - lo
            totals.append(mine)
        assert totals == [[4, 4, 2]] * world


class Solo(distributed.Communicator):
    """A job of one rank that records, with the iteration, every sum of host numbers it is asked for."""

    def __init__(self, state):
        super().__init__()
        self.state, self.sums = state, []

    def allreduce_values(self, values):
        self.sums.append((self.state["now"], len(values)))
        return super().allreduce_values(values)

    def _allreduce(self, buf):
        pass

    def _broadcast(self, buf, root):
        pass


def _distributed_run(read_every, monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (40, 3, 6, 6), dtype=np.uint8), rng.integers(0, 10, 40)
    minires.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.GlobalAvgPool2d(),
                          nn.Linear(4, 10))
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)
    train = ArrayLoader(x, y, batch_size=6, shuffle=True, augment=True, seed=1)  # 7 batches, the last of 4
    state = TrainState(model, optimizer, ConstantLR(optimizer), train)
    now = {"now": "batch"}
    comm = Solo(now)
    original_read, original_evaluate = loop.UnreadSums.read, loop.evaluate

    def read(self, sums, hooks):
        now["now"] = "read"
        try:
            return original_read(self, sums, hooks)
        finally:
            now["now"] = "batch"

    def evaluate_(*args, **kwargs):
        now["now"] = "evaluate"
        try:
            return original_evaluate(*args, **kwargs)
        finally:
            now["now"] = "batch"

    monkeypatch.setattr(loop.UnreadSums, "read", read)
    monkeypatch.setattr(loop, "evaluate", evaluate_)
    test = ArrayLoader(x[:8], y[:8], batch_size=6)
    history = fit(state, test, epochs=2, progress=False, extensions=[],
                  hooks=distributed.DataParallelHooks(model, comm), read_every=read_every)
    return comm.sums, history, {k: v.copy() for k, v in model.state_dict().items()}


def test_a_data_parallel_batch_asks_the_ranks_only_for_its_stop_flag(monkeypatch):
    sums, history, weights = _distributed_run(3, monkeypatch)
    # Outside the reads and evaluations only the Ctrl-C flag (one value), before each of the
    # 2 x 7 batches and after each epoch; each batch's image count comes from the loader.
    assert [s for s in sums if s[0] == "batch"] == [("batch", 1)] * (2 * 7 + 2)
    assert {s[0] for s in sums} == {"batch", "read", "evaluate"}
    # The same steps as when every batch is read (and its image count summed over the ranks).
    _, every, weights_every = _distributed_run(1, monkeypatch)
    timeless = lambda rows: [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in rows]
    assert timeless(history) == timeless(every)
    for name, value in weights_every.items():
        np.testing.assert_array_equal(weights[name], value, err_msg=name)


def test_the_nccl_communicator_sums_host_numbers_on_the_host():
    """Under NCCL, the loop's per-batch flag travels through MPI on the host, not through a
    device buffer (NCCLCommunicator cannot be made without GPUs: its instance is put together)."""
    calls = []

    class MPI:
        IN_PLACE, SUM = "in place", "sum"

    class World:
        def Allreduce(self, send, recv, op):
            calls.append((send, recv.dtype, op))
            recv *= 2  # two ranks holding the same values

    class NoDevice:
        def __getattr__(self, name):
            raise AssertionError(f"the device was used: xp.{name}")

    comm = object.__new__(distributed.NCCLCommunicator)
    comm.MPI, comm.comm, comm.xp, comm.watchdog, comm.rank, comm.size = MPI, World(), NoDevice(), None, 0, 2
    assert comm.allreduce_values([1.0, 3]) == [2.0, 6.0]
    assert calls == [("in place", np.float64, "sum")]


def test_nccl_collectives_leave_the_host_free():
    """The gradients' all-reduce, the buffers' broadcast and SyncBatchNorm's sums are queued on the
    stream; the host does not wait for them (NCCL and the stream are stand-ins here)."""
    calls = []

    class Stream:
        ptr = 77

        def synchronize(self):
            calls.append("synchronize")

    class NCCL:
        NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_INT32, NCCL_INT64 = "f16", "f32", "f64", "i32", "i64"
        NCCL_SUM = "sum"

    class NcclComm:
        def allReduce(self, send, recv, count, dtype, op, stream):
            calls.append(("allReduce", send, recv, count, dtype, op, stream))

        def bcast(self, buf, count, dtype, root, stream):
            calls.append(("bcast", buf, count, dtype, root, stream))

    class Buffer:
        """What the communicator reads of a CuPy buffer."""
        ndim, size, dtype = 1, 5, np.dtype(np.float32)
        flags = types.SimpleNamespace(c_contiguous=True)
        data = types.SimpleNamespace(ptr=1234)

    Buffer.__module__ = "cupy._fake"
    comm = object.__new__(distributed.NCCLCommunicator)
    comm.xp = types.SimpleNamespace(__name__="cupy", cuda=types.SimpleNamespace(get_current_stream=Stream))
    comm.nccl, comm.nccl_comm, comm.watchdog, comm.rank, comm.size = NCCL, NcclComm(), None, 0, 2
    buf = Buffer()
    assert comm.allreduce(buf) is buf and comm.broadcast(buf, 1) is buf
    assert calls == [("allReduce", 1234, 1234, 5, "f32", "sum", 77), ("bcast", 1234, 5, "f32", 1, 77)]


# -------------------------------------------------------------------------------------------------
# 2. evaluate(confusion=...): the counts stay on the device until the last batch
# -------------------------------------------------------------------------------------------------


class Logits(nn.Module):
    """Fixed logits per image, chosen so that the predictions hold every kind of pair."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        rows = np.rint(x.data[:, 0, 0, 0] * 255).astype(np.int64)  # each image holds its index / 255
        return Tensor(self.logits[rows])


def test_evaluate_reads_the_confusion_counts_once_at_the_end(monkeypatch):
    rng = np.random.default_rng(3)
    n, k = 23, 4
    x = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 1, 2, 2)).copy()
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    reads, finished = [], {"all": False}

    class Loader(ArrayLoader):
        def __iter__(self):
            yield from super().__iter__()
            finished["all"] = True

    original = loop.to_numpy
    monkeypatch.setattr(loop, "to_numpy", lambda a: reads.append(finished["all"]) or original(a))
    confusion = np.full((k, k), 7, np.int64)  # added to
    loss, acc = evaluate(Logits(logits), Loader(x, y, batch_size=5, dtype="float64"), confusion=confusion)
    assert reads and all(reads), "a host copy before the last batch"
    want = np.full((k, k), 7, np.int64)
    np.add.at(want, (y, logits.argmax(axis=1)), 1)
    np.testing.assert_array_equal(confusion, want)
    assert acc == np.mean(logits.argmax(axis=1) == y)


def test_the_confusion_counts_on_the_device_need_no_host_number(device):
    y = np.array([0, 2, 2, 1, 2, 0, 1])
    predicted = np.array([0, 1, 2, 1, 2, 2, 0])
    counts = loop._add_confusion(None, device(y), device(predicted), 3)
    counts = loop._add_confusion(counts, device(y[:3]), device(predicted[:3]), 3)
    assert isinstance(counts, Device) and counts.dtype == np.int64 and not EVENTS
    want = np.zeros((3, 3), np.int64)
    np.add.at(want, (y, predicted), 1)
    np.add.at(want, (y[:3], predicted[:3]), 1)
    np.testing.assert_array_equal(counts, want)


# -------------------------------------------------------------------------------------------------
# 3. Average pooling's 1 / count goes to the device once per geometry, not in every call
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_copies_its_counts_to_the_device_once(device, count_include_pad):
    rng = np.random.default_rng(1)
    x, gy = rng.normal(size=(2, 3, 7, 6)), rng.normal(size=(2, 3, 4, 4))
    want = Tensor(x, requires_grad=True)
    F.avg_pool2d(want, 3, 2, padding=1, ceil_mode=True, count_include_pad=count_include_pad).backward(gy)
    assert not EVENTS  # NumPy arrays: no device
    for step in range(3):
        EVENTS.clear()
        xt = Tensor(device(x), requires_grad=True)
        out = F.avg_pool2d(xt, 3, 2, padding=1, ceil_mode=True, count_include_pad=count_include_pad)
        out.backward(device(gy))
        # the first call may copy them (unless cached already), the next ones find them there
        assert EVENTS in ([("asarray", (4, 4))], []) if step == 0 else EVENTS == [], (step, EVENTS)
        np.testing.assert_array_equal(out.data, F.avg_pool2d(Tensor(x), 3, 2, padding=1, ceil_mode=True,
                                                             count_include_pad=count_include_pad).data)
        np.testing.assert_array_equal(xt.grad, want.grad)


def test_the_cached_counts_are_per_dtype_and_geometry():
    pooling._inverse_count.cache_clear()
    for dtype in (np.float32, np.float64):
        for size in (5, 6):
            x = np.ones((1, 1, size, size), dtype)
            y = F.avg_pool2d(Tensor(x), 2, 2, ceil_mode=True, count_include_pad=False)
            assert y.dtype == dtype
            np.testing.assert_array_equal(y.data, 1)  # the mean of ones, also over a cut window
    assert pooling._inverse_count.cache_info().currsize == 4


# -------------------------------------------------------------------------------------------------
# 4. nll_loss on CuPy: no host check of the labels; a bad label gives NaN for its row
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_on_the_device_reads_no_label_and_a_bad_one_gives_nan(device, reduction):
    rng = np.random.default_rng(2)
    logp = np.log(rng.dirichlet(np.ones(4), size=6))
    weight = rng.uniform(0.5, 2, 4)
    y = np.array([1, 3, 9, 0, -100, 2])  # row 2: outside the classes; row 4: ignored
    gy = rng.uniform(0.5, 1.5, 6) if reduction == "none" else np.array(0.7)
    xt = Tensor(device(logp), requires_grad=True)
    with np.errstate(invalid="ignore"):
        loss = F.nll_loss(xt, device(y), weight=device(weight), reduction=reduction)
        loss.backward(device(gy))
    assert not EVENTS, EVENTS
    good = [0, 1, 3, 4, 5]
    ref = Tensor(logp[good], requires_grad=True)
    want = F.nll_loss(ref, y[good], weight=weight, reduction=reduction)
    want.backward(gy[good] if reduction == "none" else gy)
    if reduction == "none":
        assert np.isnan(loss.data[2]) and np.isnan(xt.grad[2]).all()
        np.testing.assert_allclose(loss.data[good], want.data, rtol=1e-15)
        np.testing.assert_allclose(xt.grad[good], ref.grad, rtol=1e-15)
    elif reduction == "sum":  # the NaN row spoils the sum, not the other rows' gradients
        assert np.isnan(loss.data) and np.isnan(xt.grad[2]).all()
        np.testing.assert_allclose(xt.grad[good], ref.grad, rtol=1e-15)
    else:  # the mean's denominator is NaN: all of it
        assert np.isnan(loss.data) and np.isnan(xt.grad).all()


def test_nll_loss_on_numpy_still_checks_its_labels():
    with pytest.raises(ValueError, match=r"nll_loss: labels must lie in \[0, 3\).*\[5\]"):
        F.nll_loss(Tensor(np.zeros((2, 3))), np.array([0, 5]))
