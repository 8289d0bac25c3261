"""Data-parallel training (minires.distributed, nn.SyncBatchNorm, sharded loaders).

The first tests run in this process with a one-rank communicator. The others start real jobs
with ``mpiexec`` (tests/distributed_worker.py is one rank) and compare what the ranks computed
with one process computing the same thing; they skip without mpi4py and mpiexec. Every job runs
under a timeout, so a hang fails the test instead of stalling the suite.
"""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minires import distributed, models, nn
from minires import functional as F
from minires.autograd import Tensor
from minires.data import ArrayLoader, shard_bounds
from minires.gradcheck import gradcheck
from minires.nn.init import manual_seed
from minires.optim import SGD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")
sys.path.insert(0, os.path.join(ROOT, "tests"))
import distributed_worker as worker  # noqa: E402  (the worker's batches and step count)


class Solo(distributed.Communicator):
    """A job of one rank: the sum over ranks is the buffer itself."""

    def _allreduce(self, buf):
        pass

    def _broadcast(self, buf, root):
        pass


class Recorder(Solo):
    """One rank that remembers the size and dtype of every all-reduced buffer."""

    def __init__(self):
        super().__init__()
        self.messages = []

    def _allreduce(self, buf):
        self.messages.append((buf.size, buf.dtype))


def rel_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-300))


# =================================================================================================
# In this process: SyncBatchNorm on one rank is BatchNorm; conversion; shards; buckets
# =================================================================================================

def test_sync_batchnorm_one_rank_is_batchnorm():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 5, 5)) * 3 + 1
    gy = rng.uniform(0.5, 1.5, x.shape) * rng.choice([-1.0, 1.0], x.shape)
    plain, sync = nn.BatchNorm2d(3).astype("float64"), nn.SyncBatchNorm(3, comm=Solo()).astype("float64")
    for m in (plain, sync):
        m.weight.data[:] = [1.5, -0.5, 0.8]
        m.bias.data[:] = [0.1, 0.0, -0.2]
    outs = []
    for m in (plain, sync):
        xt = Tensor(x.copy(), requires_grad=True)
        y = m(xt)
        y.backward(gy)
        outs.append([y.data, xt.grad, m.weight.grad, m.bias.grad, m.running_mean, m.running_var])
    for a, b in zip(*outs):
        assert rel_err(b, a) < 1e-12
    assert int(sync.num_batches_tracked) == 1
    # evaluation: the running statistics, no communicator needed
    sync.comm = None
    plain.eval(), sync.eval()
    np.testing.assert_allclose(sync(Tensor(x)).data, plain(Tensor(x)).data, rtol=1e-12)


@pytest.mark.parametrize("shape", [(3, 2, 3, 3), (5, 4)])
def test_sync_batchnorm_gradcheck_one_rank(shape):
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal(shape) * 2 + 0.3, requires_grad=True)
    gamma = Tensor(rng.uniform(0.5, 1.5, shape[1]), requires_grad=True)
    beta = Tensor(rng.normal(0, 0.5, shape[1]), requires_grad=True)
    assert gradcheck(lambda x, g, b: F.batch_norm(x, g, b, reduce=Solo().allreduce), [x, gamma, beta],
                     atol=1e-6, rtol=1e-5)


def test_sync_batchnorm_needs_a_communicator():
    with pytest.raises(RuntimeError, match="SyncBatchNorm in training needs a communicator: pass comm="):
        nn.SyncBatchNorm(2)(Tensor(np.ones((2, 2))))
    with pytest.raises(ValueError, match="2-D or 4-D"):
        nn.SyncBatchNorm(2, comm=Solo())(Tensor(np.ones((2, 2, 3))))


def test_convert_sync_batchnorm_keeps_parameters_names_and_order():
    manual_seed(0)
    model = models.cifar_resnet(8).astype("float64")
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 8, 8)))
    before_params = list(model.named_parameters())
    before_keys = list(model.state_dict())
    model.eval()
    y_before = model(x).data
    comm = Solo()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model, comm)
    assert converted is model
    kinds = [type(m) for m in model.modules()]
    assert nn.BatchNorm2d not in kinds and kinds.count(nn.SyncBatchNorm) == 7
    assert all(m.comm is comm and not m.training for m in model.modules() if isinstance(m, nn.SyncBatchNorm))
    after = list(model.named_parameters())
    assert [k for k, _ in after] == [k for k, _ in before_params]
    assert all(p is q for (_, p), (_, q) in zip(after, before_params))
    assert list(model.state_dict()) == before_keys
    np.testing.assert_array_equal(model(x).data, y_before)
    bn = nn.BatchNorm1d(3)
    assert isinstance(nn.SyncBatchNorm.convert_sync_batchnorm(bn), nn.SyncBatchNorm)


@pytest.mark.parametrize("n", [1, 2, 5, 80, 128, 131])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shard_bounds_split_a_batch_exactly(n, world_size):
    bounds = [shard_bounds(n, r, world_size) for r in range(world_size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(hi == lo for (_, hi), (lo, _) in zip(bounds, bounds[1:]))  # consecutive, no gap or overlap
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_loader_shard_arguments_are_checked():
    x, y = np.zeros((10, 3, 4, 4), np.uint8), np.arange(10)
    with pytest.raises(ValueError, match="rank"):
        ArrayLoader(x, y, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="smaller than the 3 ranks"):
        ArrayLoader(x, y, 2, world_size=3)
    # 10 = 4 + 4 + 2 rows: the last batch of 2 is split between 2 ranks, and kept with 3 (rank 2 gets none)
    assert len(ArrayLoader(x, y, 4, world_size=2)) == 3
    assert len(ArrayLoader(x, y, 4, rank=1, world_size=3)) == 3


def test_gradient_allreducer_buckets_and_weights():
    manual_seed(0)
    model = models.cifar_resnet(8)
    params = list(model.parameters())
    for p in params:
        p.grad = np.random.default_rng(len(p.shape)).standard_normal(p.shape).astype(p.dtype)
    grads = [p.grad.copy() for p in params]
    params[3].grad = None  # no gradient on this rank: zeros go into the sum
    comm = Recorder()
    reducer = distributed.GradientAllreducer(params, comm, bucket_mb=0.05)
    cap = 0.05 * 2 ** 20
    for bucket in reducer.buckets:
        assert len(bucket) == 1 or sum(p.size * 4 for p in bucket) <= cap
    assert [p for b in reducer.buckets for p in b] == params  # every parameter once, in order
    assert 1 < len(reducer.buckets) < len(params)
    reducer(0.25)
    assert [size for size, _ in comm.messages] == [sum(p.size for p in b) for b in reducer.buckets]
    for i, (p, g) in enumerate(zip(params, grads)):
        np.testing.assert_array_equal(p.grad, np.zeros_like(g) if i == 3 else g * np.float32(0.25))
    one = distributed.GradientAllreducer(params, Recorder())  # the 25 MiB default: one fused buffer
    assert len(one.buckets) == 1


def test_broadcast_state_round_trip():
    manual_seed(0)
    model = models.cifar_resnet(8)
    state = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    arrays = [p.data for p in model.parameters()] + list(model.buffers())
    distributed.broadcast_state(model, Solo())  # with one rank: unpacked into the same arrays
    assert all(a is b for a, b in zip(arrays, [p.data for p in model.parameters()] + list(model.buffers())))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[k])


# =================================================================================================
# Real jobs under mpiexec
# =================================================================================================

MPIEXEC = shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason="distributed tests need mpi4py and mpiexec: pip install \"minires[mpi]\"")


def run_job(n, case, out, arg="", timeout=120, env=None):
    """Start ``mpiexec -n n`` workers; returns (returncode, output, seconds). Kills the whole job
    and fails the test if it outlives ``timeout``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **(env or {})}
    cmd = [MPIEXEC, "-n", str(n), sys.executable, WORKER, case, str(out)] + ([str(arg)] if arg else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    return finish(proc, timeout)


def run_ok(n, case, out, arg=""):
    code, output, _ = run_job(n, case, out, arg)
    assert code == 0, output[-3000:]
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(n)]


def one_process(batch_size, dtype, sync_bn=False):
    """What the worker's train_steps does, in one process with the whole batch: rank 0's
    initial weights (the ones broadcast), plain BatchNorm."""
    manual_seed(100)
    model = models.cifar_resnet(8).astype(dtype)
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    out = {}
    for step in range(worker.STEPS):
        x, y = worker.batch(step, batch_size, dtype)
        model.zero_grad()
        F.cross_entropy(model(Tensor(x)), y).backward()
        if step == 0:
            out.update({f"grad.{k}": p.grad.copy() for k, p in model.named_parameters()})
        optimizer.step()
    out.update({f"state.{k}": v for k, v in model.state_dict().items()})
    return out


@needs_mpi
@pytest.mark.parametrize("n, batch_size", [(2, 8), (3, 10)])  # 3 ranks: shards of 4, 3 and 3
def test_sync_batchnorm_ranks_match_one_process(tmp_path, n, batch_size):
    ranks = run_ok(n, "sync", tmp_path, batch_size)
    reference = one_process(batch_size, np.float64)
    assert ranks[0]["buckets"] > 1  # the worker's small cap: several buckets
    for key, want in reference.items():
        assert want.dtype != np.float64 or np.abs(want).max() > 0, key
        for r, got in enumerate(ranks):
            if want.dtype == np.int64:
                np.testing.assert_array_equal(got[key], want, err_msg=f"rank {r} {key}")
            else:
                assert rel_err(got[key], want) < 1e-10, f"rank {r} {key}: relative error {rel_err(got[key], want):.2e}"
    # the steps did move the weights away from rank 0's start
    manual_seed(100)
    start = models.cifar_resnet(8).state_dict()["conv1.weight"]
    assert rel_err(ranks[0]["state.conv1.weight"], start) > 1e-3


@needs_mpi
def test_plain_batchnorm_ranks_stay_bit_identical(tmp_path):
    ranks = run_ok(2, "plain", tmp_path, 8)
    reference = one_process(8, np.float32)
    params = [k for k in reference if k.startswith("grad.")]
    for key in params + [f"state.{k[5:]}" for k in params]:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)
    # per-rank BN: each rank's running statistics are its own shard's, unlike one process's
    assert not np.array_equal(ranks[0]["state.bn1.running_mean"], ranks[1]["state.bn1.running_mean"])
    assert rel_err(ranks[0]["grad.conv1.weight"], reference["grad.conv1.weight"]) > 1e-4


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_sync_batchnorm_gradcheck_across_ranks(tmp_path, n):
    for r, result in enumerate(run_ok(n, "gradcheck", tmp_path)):
        assert result["worst"] < 1e-6, f"rank {r}: finite differences disagree by {result['worst']:.2e}"


@needs_mpi
@pytest.mark.parametrize("n, batch_size", [(2, 8), (3, 8)])
def test_shards_are_disjoint_cover_the_epoch_and_form_one_process_batches(tmp_path, n, batch_size):
    ranks = run_ok(n, "shards", tmp_path, batch_size)
    single = ArrayLoader(np.zeros((37, 3, 8, 8), np.uint8), np.arange(37), batch_size, shuffle=True,
                         augment=True, seed=3)
    for epoch in ("epoch0", "epoch1"):
        seen = np.concatenate([rank[epoch] for rank in ranks])
        assert sorted(seen.tolist()) == list(range(37)), f"{epoch}: shards overlap or miss samples"
        batches = [yb for _, yb in single]
        for r, rank in enumerate(ranks):
            want = np.concatenate([b[slice(*shard_bounds(len(b), r, n))] for b in batches])
            np.testing.assert_array_equal(rank[epoch], want)
    assert all(int(rank["batches"]) == len(single) for rank in ranks)


@needs_mpi
def test_nccl_on_one_gpu(tmp_path):
    """NCCL on CuPy arrays. One GPU hosts a world of one rank only (NCCL refuses two ranks on
    one device); the code path for N GPUs is the same."""
    from minires import backend
    if not backend.cupy_available():
        pytest.skip("NCCL test needs CuPy and a CUDA GPU")
    result = run_ok(1, "nccl", tmp_path)[0]
    np.testing.assert_array_equal(result["sum"], np.arange(4.0))
    np.testing.assert_array_equal(result["root"], np.zeros(3))
    reference = one_process(8, np.float64)
    for key, want in reference.items():
        assert rel_err(result[key], want) < 1e-10, key


@needs_mpi
@pytest.mark.parametrize("how, message", [("kill", "Killed"), ("raise", "rank 1 failed on purpose"),
                                          ("hang", "waited more than 2 s")])
def test_a_failing_rank_ends_the_job(tmp_path, how, message):
    # Only the hanging rank needs the watchdog's short timeout; a 2 s watchdog in the other cases
    # could fire first on a loaded machine (ranks starting seconds apart) and hide their message.
    watchdog = "2" if how == "hang" else "30"
    code, output, seconds = run_job(2, "kill", tmp_path, how, timeout=90, env={"WORKER_TIMEOUT": watchdog})
    assert code != 0, output[-2000:]
    assert message in output, output[-2000:]
    assert seconds < 60


# =================================================================================================
# The command line: mpiexec -n 2 python -m minires.train --distributed
# =================================================================================================

# float64 and --sync-bn: 2 processes then compute what 1 does, to rounding; a constant lr, so
# that runs of different --epochs share a schedule
CLI = ["--depth", "8", "--limit-train", "128", "--limit-test", "64", "--batch-size", "32", "--dtype", "float64",
       "--schedule", "constant", "--no-progress"]


def start_cli(n, args, env=None):
    """``mpiexec -n n python -m minires.train --distributed ARGS`` (n=0: plain python), as a Popen
    in its own session; ``args`` may hold a ":" for MPMD (several executables, each with its own
    -env)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "minires.train", *map(str, args)]
    if n:
        cmd = [MPIEXEC, "-n", str(n)] + cmd[:3] + ["--distributed"] + cmd[3:]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)


def finish(proc, timeout=180):
    """(returncode, output, seconds to finish) of a started job; kills it and fails past ``timeout``."""
    start = time.monotonic()
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{' '.join(proc.args)} still running after {timeout} s:\n{output[-3000:]}")
    return proc.returncode, output, time.monotonic() - start


def train_cli(n, data, out, *extra):
    code, output, _ = finish(start_cli(n, [*CLI, "--data-dir", data, "--out", out, *extra]))
    assert code == 0, output[-3000:]
    return output


def assert_same_run(got, want):
    """Two last.npz: the same weights, statistics and momentum (float64 rounding apart), position
    and metrics."""
    from minires import load
    a, b = load(got), load(want)
    for key, value in b["model"].items():
        assert rel_err(a["model"][key], value) < 1e-10, key
    for i, entry in b["optimizer"]["state"].items():
        assert rel_err(a["optimizer"]["state"][i]["momentum_buffer"], entry["momentum_buffer"]) < 1e-10
    assert a["loader"] == b["loader"] and a["schedule"]["step"] == b["schedule"]["step"]
    for row_a, row_b in zip(a["history"], b["history"], strict=True):
        for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert row_a[k] == pytest.approx(row_b[k], rel=1e-9), k


@pytest.fixture(scope="module")
def straight(tiny_cifar10_dir, tmp_path_factory):
    """One process, 3 epochs: {epochs: its last.npz after that many} for 1, 2, 3."""
    runs = {}
    for epochs in (1, 2, 3):
        out = tmp_path_factory.mktemp(f"one{epochs}")
        resume = ["--resume", runs[epochs - 1]] if epochs > 1 else []
        train_cli(0, tiny_cifar10_dir, out, "--epochs", epochs, *resume)
        runs[epochs] = out / "last.npz"
    return runs


@needs_mpi
def test_two_processes_train_as_one_and_only_rank_0_speaks(tiny_cifar10_dir, straight, tmp_path):
    output = train_cli(2, tiny_cifar10_dir, tmp_path, "--epochs", 2, "--sync-bn")
    assert output.count("parameters on numpy") == 1 and output.count("epoch   2/2") == 1, output
    assert "data parallel on 2 processes" in output and "16 images per process, SyncBatchNorm" in output
    assert_same_run(tmp_path / "last.npz", straight[2])
    written = set(os.listdir(tmp_path)) - {"curves.png", ".lock"}  # curves.png with matplotlib only
    assert written == {"best.npz", "config.json", "last.npz", "metrics.csv"}


@needs_mpi
def test_a_checkpoint_moves_from_two_processes_to_one_and_back(tiny_cifar10_dir, straight, tmp_path):
    two, one, two_again = tmp_path / "two", tmp_path / "one", tmp_path / "two_again"
    train_cli(2, tiny_cifar10_dir, two, "--epochs", 1, "--sync-bn")
    train_cli(0, tiny_cifar10_dir, one, "--epochs", 2, "--resume", two / "last.npz")  # 2 -> 1
    assert_same_run(one / "last.npz", straight[2])
    train_cli(2, tiny_cifar10_dir, two_again, "--epochs", 3, "--resume", one / "last.npz")  # 1 -> 2
    assert_same_run(two_again / "last.npz", straight[3])


@needs_mpi
def test_ctrl_c_stops_every_rank_after_the_same_batch_and_saves_once(tiny_cifar10_dir, straight, tmp_path):
    from minires import load
    run = tmp_path / "run"
    proc = start_cli(2, [*CLI, "--data-dir", tiny_cifar10_dir, "--out", run, "--epochs", 40, "--sync-bn"])
    deadline = time.monotonic() + 120
    while not (run / "metrics.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends mpiexec
    code, output, seconds = finish(proc, timeout=120)
    assert code == 130, output[-3000:]
    assert output.count("interrupted: saved") == 1, output[-3000:]
    assert seconds < 60
    saved = load(run / "last.npz")
    epochs = int(saved["epoch"]) + 1  # it stopped in this epoch (or at its start)
    assert 1 <= epochs <= 3, f"the run went on for {epochs} epochs after Ctrl-C"
    # the stopped run, finished in one process, is the uninterrupted run
    train_cli(0, tiny_cifar10_dir, tmp_path / "rest", "--epochs", epochs, "--resume", run / "last.npz")
    assert_same_run(tmp_path / "rest" / "last.npz", straight[epochs])


def descendants_with_rank(pid, rank):
    """PIDs of the processes below ``pid`` that MPI started as rank ``rank`` (Linux /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            stack.append(child)
            try:
                with open(f"/proc/{child}/environ", "rb") as f:
                    names = f.read().split(b"\0")
                    if any(f"{var}={rank}".encode() in names for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK")):
                        found.append(child)
            except OSError:
                pass
    return found


@needs_mpi
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the rank's process through /proc (Linux)")
def test_a_killed_rank_ends_the_training_job(tiny_cifar10_dir, tmp_path):
    proc = start_cli(2, [*CLI, "--data-dir", tiny_cifar10_dir, "--out", tmp_path, "--epochs", 40])
    deadline = time.monotonic() + 120
    while not (tmp_path / "metrics.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victims = descendants_with_rank(proc.pid, 1)
    assert len(victims) == 1, victims
    os.kill(victims[0], signal.SIGKILL)
    code, output, seconds = finish(proc, timeout=60)
    assert code != 0 and seconds < 30, output[-3000:]


@needs_mpi
def test_a_rank_that_fails_ends_the_job_with_its_message(tiny_cifar10_dir, tmp_path):
    version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True).stdout
    if "HYDRA" not in version:
        pytest.skip("gives each rank its own environment with MPICH's mpiexec -env")
    # rank 1 finds no data (no --data-dir; its $MINIRES_DATA and $HOME lead nowhere) while rank 0
    # goes on to its first exchange and would wait there for ever
    args = [*CLI, "--out", tmp_path, "--epochs", 1]
    nowhere = tmp_path / "nowhere"
    cmd = [MPIEXEC, "-n", "1", "-env", "MINIRES_DATA", str(tiny_cifar10_dir), sys.executable, "-m", "minires.train",
           "--distributed", *map(str, args), ":", "-n", "1", "-env", "MINIRES_DATA", str(nowhere), "-env", "HOME",
           str(nowhere), sys.executable, "-m", "minires.train", "--distributed", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    code, output, seconds = finish(proc, timeout=120)
    assert code == 2, output[-3000:]
    assert "error (rank 1): CIFAR-10 not found" in output, output[-3000:]
    assert seconds < 60
