"""Data-parallel training gives the same numbers on any number of processes, and processes
started with different options or data refuse to run together (issue 15, items 6 and 7).

The first tests run in this process; the others start ``mpiexec`` jobs of
``python -m minires.train --distributed`` (skipped without mpi4py and mpiexec), each under a
timeout so that a hang fails the test.
"""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest

from minires import distributed, load, manual_seed, models, nn, save
from minires.autograd import Tensor
from minires.data import ArrayLoader, shard_bounds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Solo(distributed.Communicator):
    """A job of one rank: the sum over ranks is the buffer itself."""

    def _allreduce(self, buf):
        pass

    def _broadcast(self, buf, root):
        pass


# =================================================================================================
# In this process
# =================================================================================================

@pytest.mark.parametrize("n, batches", [(65, 3), (33, 2)])
def test_a_last_batch_smaller_than_the_ranks_is_kept_on_every_rank(n, batches):
    x = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 3, 4, 4), np.uint8)  # image i is all i
    single = [yb for _, yb in ArrayLoader(x, np.arange(n), 32, shuffle=True, augment=True, seed=5)]
    assert len(single) == batches and len(single[-1]) == n - 32 * (batches - 1)
    for world_size in (2, 3):
        shards = []
        for rank in range(world_size):
            loader = ArrayLoader(x, np.arange(n), 32, shuffle=True, augment=True, seed=5, rank=rank,
                                 world_size=world_size)
            assert len(loader) == batches, f"rank {rank} of {world_size}"
            shards.append(list(loader))
        for k, whole in enumerate(single):
            np.testing.assert_array_equal(np.concatenate([s[k][1] for s in shards]), whole)
        # the last batch of 1 image: rank 0 has it, the others an empty batch of the same layout
        assert len(shards[0][-1][1]) == 1
        for xb, yb in (s[-1] for s in shards[1:]):
            assert xb.shape == (0, 3, 4, 4) and xb.dtype == np.float32 and yb.shape == (0,) and yb.dtype == np.int64
    # a checkpoint of one process taken before that last batch resumes on 2 ranks
    loader = ArrayLoader(x, np.arange(n), 32, rank=1, world_size=2)
    loader.load_state_dict({"seed": 0, "epoch": 0, "batch": batches - 1})
    assert [len(yb) for _, yb in loader] == [0]


def test_shards_put_the_larger_ones_first_so_rank_0_always_has_images():
    assert [shard_bounds(80, r, 3) for r in range(3)] == [(0, 27), (27, 54), (54, 80)]
    assert [shard_bounds(1, r, 3) for r in range(3)] == [(0, 1), (1, 1), (1, 1)]


def test_sync_batchnorm_and_the_gradient_sum_take_a_rank_without_images():
    """The parts of a step on a rank whose share is empty: ResNet-8 with SyncBatchNorm runs
    forward and backward on (0, 3, 32, 32) without a warning (with no images anywhere: zero
    statistics, running statistics unchanged), and its gradients enter the sum as zeros."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(models.cifar_resnet(8).astype("float64"), Solo())
    running = {k: v.copy() for k, v in model.state_dict().items() if "running" in k}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logits = model(Tensor(np.zeros((0, 3, 32, 32))))
        logits.sum().backward()
    assert logits.shape == (0, 10)
    for k, v in running.items():
        np.testing.assert_array_equal(model.state_dict()[k], v, err_msg=k)
    params = list(model.parameters())
    assert all(p.grad is not None and not p.grad.any() for p in params)
    params[0].grad[...] = np.nan  # whatever an empty share left, it adds nothing
    distributed.GradientAllreducer(params, Solo())(0.0)
    assert not any(p.grad.any() for p in params)


# =================================================================================================
# mpiexec jobs of the command line
# =================================================================================================

MPIEXEC = shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason="distributed tests need mpi4py and mpiexec: pip install \"minires[mpi]\"")

# 65 = 32 + 32 + 1 images: the last batch has fewer images than 2 or 3 processes. float64 and
# --sync-bn, so that N processes compute what one does, to rounding; a constant lr, so that runs
# of different --epochs share a schedule.
CLI = ["--depth", "8", "--limit-train", "65", "--batch-size", "32", "--dtype", "float64", "--sync-bn",
       "--schedule", "constant", "--limit-test", "40", "--no-progress"]


def run_cli(*ranks, timeout=180):
    """Run ``python -m minires.train`` with the arguments of each rank (one list per rank;
    several lists: an mpiexec job, one list: a plain process). Returns (returncode, output)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "minires.train", *map(str, ranks[0])]
    if len(ranks) > 1:
        cmd = [MPIEXEC]
        for i, args in enumerate(ranks):
            cmd += ([":"] if i else []) + ["-n", "1", sys.executable, "-m", "minires.train", "--distributed",
                                            *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} still running after {timeout} s:\n{output[-3000:]}")
    return proc.returncode, output


def run_ok(*ranks):
    code, output = run_cli(*ranks)
    assert code == 0, output[-3000:]
    return output


def assert_same_run(got, want):
    """Two last.npz: the same weights, statistics and momentum to 1e-6, the same position,
    iteration count and metrics."""
    a, b = load(got), load(want)
    for key, value in b["model"].items():
        err = np.abs(a["model"][key] - value).max() / max(np.abs(value).max(), 1e-300)
        assert err < 1e-6, f"{key}: relative error {err:.2e}"
    for i, entry in b["optimizer"]["state"].items():
        np.testing.assert_allclose(a["optimizer"]["state"][i]["momentum_buffer"], entry["momentum_buffer"],
                                   rtol=1e-6, atol=1e-12)
    assert a["loader"] == b["loader"] and a["schedule"]["step"] == b["schedule"]["step"]
    for row_a, row_b in zip(a["history"], b["history"], strict=True):
        for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert row_a[k] == pytest.approx(row_b[k], rel=1e-9), k


@pytest.fixture(scope="module")
def one_process(tiny_cifar10_dir, tmp_path_factory):
    """One process: 1 epoch (3 iterations), then resumed to 2; their folders."""
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    run_ok([*CLI, "--data-dir", tiny_cifar10_dir, "--out", first, "--epochs", 1])
    run_ok([*CLI, "--data-dir", tiny_cifar10_dir, "--out", second, "--epochs", 2, "--resume", first / "last.npz"])
    assert load(second / "last.npz")["schedule"]["step"] == 6
    return first, second


@needs_mpi
@pytest.mark.slow
def test_any_number_of_processes_trains_every_image_as_one_does(tiny_cifar10_dir, one_process, tmp_path):
    first, second = one_process
    # 3 processes from the start; the options each may set for itself (its folder, data
    # location, progress bar and timeout) differ
    copy = tmp_path / "copy" / "cifar-10-batches-py"
    shutil.copytree(tiny_cifar10_dir, copy)
    common = [*CLI, "--epochs", 2]
    with_bar = [a for a in common if a != "--no-progress"]
    output = run_ok([*common, "--data-dir", tiny_cifar10_dir, "--out", tmp_path / "three"],
                    [*common, "--data-dir", copy, "--out", tmp_path / "elsewhere", "--dist-timeout", 300],
                    [*with_bar, "--data-dir", copy, "--out", tmp_path / "elsewhere"])
    assert "10-11 images per process" in output
    assert_same_run(tmp_path / "three" / "last.npz", second / "last.npz")
    # 2 processes going on from the 1-process checkpoint (only rank 0 reads it)
    resume = [*CLI, "--data-dir", tiny_cifar10_dir, "--epochs", 2, "--out", tmp_path / "two"]
    run_ok([*resume, "--resume", first / "last.npz"], [*resume, "--resume", tmp_path / "not-here.npz"])
    assert_same_run(tmp_path / "two" / "last.npz", second / "last.npz")
    # per-process BatchNorm: rank 1 skips the model on its empty share, yet the run takes the
    # same 3 iterations over the same 65 images (its numbers differ: BatchNorm saw 16, not 32)
    plain = [a for a in CLI if a != "--sync-bn"] + ["--data-dir", tiny_cifar10_dir, "--epochs", 1,
                                                    "--out", tmp_path / "plain"]
    run_ok(plain, plain)
    got, want = load(tmp_path / "plain" / "last.npz"), load(first / "last.npz")
    assert got["schedule"]["step"] == 3 and got["loader"] == want["loader"]
    row = got["history"][0]
    assert row["images_per_s"] * row["seconds"] == pytest.approx(65)  # the images it counted


@needs_mpi
def test_evaluation_counts_every_image_on_any_number_of_processes(tiny_cifar10_dir, tmp_path):
    manual_seed(3)
    save({"model": models.cifar_resnet(8).state_dict()}, tmp_path / "weights.npz")
    args = ["--eval-only", "--resume", tmp_path / "weights.npz", "--depth", 8, "--batch-size", 32,
            "--limit-test", 33, "--data-dir", tiny_cifar10_dir]
    lines = [[line for line in run_ok(*[args] * n).splitlines() if line.startswith("test loss")] for n in (1, 2, 3)]
    assert lines[0][0].endswith("(33 images)"), lines
    assert lines[1] == lines[0] and lines[2] == lines[0]  # 33 = 32 + 1 images: 3 processes have 11, 11, 10 + 1, 0, 0


@needs_mpi
@pytest.mark.parametrize("other, message", [
    (["--lr", "0.05"], "--lr: rank 0 has 0.1, rank 1 has 0.05"),
    (["--seed", "1"], "--seed: rank 0 has 0, rank 1 has 1"),
    (["--depth", "14"], "--depth: rank 0 has 8, rank 1 has 14"),
    (["--dtype", "float32"], "--dtype: rank 0 has float64, rank 1 has float32"),
    (["--no-sync-bn"], "--sync-bn: rank 0 has True, rank 1 has False"),
    (["--other-data"], "the normalisation statistics: rank 0 has "),
])
def test_processes_with_other_options_or_data_refuse_to_start(tiny_cifar10_dir, tmp_path, other, message):
    from conftest import write_tiny_cifar10
    data = tiny_cifar10_dir
    mine = [*CLI, "--epochs", 1, "--out", tmp_path]
    theirs = list(mine)
    if other == ["--no-sync-bn"]:
        theirs.remove("--sync-bn")
    elif other == ["--other-data"]:  # images of the same sizes, other pixels
        data = write_tiny_cifar10(tmp_path / "other" / "cifar-10-batches-py", seed=1)
    else:
        theirs += other
    code, output = run_cli([*mine, "--data-dir", tiny_cifar10_dir], [*theirs, "--data-dir", data], timeout=120)
    assert code == 2, output[-3000:]
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output[-3000:]  # from rank 0 only; no traceback, no MPI abort
    assert lines[0].startswith(f"python -m minires.train: error: the processes disagree on {message}"), lines
    assert lines[0].endswith("every process must be started with the same options and data"), lines
    assert not os.path.exists(tmp_path / "last.npz")
