"""Issue 15, items 1, 2, 3 and 8 and its list of unclear errors: no run ever destroys another,
no device node or symlink is replaced, export writes no unusable file, and bad input is one line.

- Item 1: a run refuses a folder that holds another run's files unless it resumes that run.
- Item 2: a run holds its folder (flock on OUT/.lock, with its pid); a second run into it is
  refused, and a live run's temporary file survives the second start. Tested with a second,
  real process that holds the folder.
- Item 3: atomic_write refuses a target that is not a regular file and writes through symlinks.
- Item 8: export accepts only the opsets whose rules are tested here, and refuses nan weights.
"""
import importlib
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minires
import minires.functional as F
import minires.training.loop as loop
from minires import models, nn, tracing
from minires.nn import init
from minires.optim import SGD, ConstantLR
from minires.training import RunFolder, RunFolderError, TrainState, evaluate
from minires.training.folder import RUN_FILES
from minires.utils.io import LOCK_NAME, FolderBusyError, atomic_write, lock_folder, remove_stale_temporaries
from conftest import run_main

pytestmark = pytest.mark.usefixtures("_leave_globals_alone")  # conftest.py

REPO = Path(__file__).resolve().parents[1]
TINY = ["--depth", "8", "--limit-train", "32", "--limit-test", "32", "--batch-size", "32", "--no-progress",
        "--epochs", "1"]
STALE = ".last.npz.0123456789ab.tmp"  # named as atomic_write names its temporary files


def error_line(capfd, prog="python -m minires.train"):
    """The one line on stderr (from Python or from C: capfd sees both), without a traceback."""
    err = capfd.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ")
    return lines[0]


# -- item 1: a new run never writes over another run -------------------------------------------------

@pytest.mark.parametrize("name", RUN_FILES)
def test_a_new_run_refuses_a_folder_holding_another_runs_file(tiny_cifar10_dir, tmp_path, capfd, name):
    """Before: the smoke run of README replaced the interrupted 164-epoch run's files, exit 0."""
    out = tmp_path / "resnet20"
    out.mkdir()
    (out / name).write_bytes(b"another run's " + name.encode())
    assert run_main(*TINY, "--data-dir", tiny_cifar10_dir, "--out", out) == 2
    line = error_line(capfd)
    assert str(out) in line and name in line and f"--resume {out}" in line and "new --out" in line
    assert (out / name).read_bytes() == b"another run's " + name.encode()
    assert sorted(os.listdir(out)) == sorted([name, LOCK_NAME])


def _tiny_state(folder):
    from minires.data import make_cifar10_loaders
    train_loader, test_loader, _ = make_cifar10_loaders(folder, 32, limit_train=32, limit_test=32)
    init.manual_seed(0)
    model = models.cifar_resnet(8)
    optimizer = SGD(model.parameters(), lr=0.1)
    return TrainState(model, optimizer, ConstantLR(optimizer), train_loader), test_loader


def test_fit_refuses_a_fresh_run_into_another_runs_folder_and_continues_its_own(tiny_cifar10_dir, tmp_path):
    out = tmp_path / "mine"
    state, test_loader = _tiny_state(tiny_cifar10_dir)
    loop.fit(state, test_loader, epochs=1, out=out, log=lambda line: None)
    last = (out / "last.npz").read_bytes()
    fresh, test_loader = _tiny_state(tiny_cifar10_dir)
    with pytest.raises(RunFolderError, match=r"holds the files of another run \(metrics.csv, last.npz, best.npz\)"):
        loop.fit(fresh, test_loader, epochs=1, out=out, log=lambda line: None)
    assert (out / "last.npz").read_bytes() == last
    # Resumed from its own last.npz, the run goes on in its folder.
    fresh.load_state_dict(minires.load(out / "last.npz"))
    history = loop.fit(fresh, test_loader, epochs=2, out=out, resumed_from=str(out / "last.npz"),
                       log=lambda line: None)
    assert [row["epoch"] for row in history] == [1, 2]


# -- item 2: one run per folder, held with a lock --------------------------------------------------------

HOLDER = """
import os, sys
from minires.training import RunFolder
folder = RunFolder(sys.argv[1])
with open(os.path.join(sys.argv[1], sys.argv[2]), "wb") as f:  # an atomic write under way
    f.write(b"half a checkpoint")
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """Another process that holds tmp_path/"held" (as a live run does) with a temporary file in it."""
    out = tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), STALE], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield out, proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_into_a_held_folder_is_refused_and_the_live_runs_temporary_survives(
        tiny_cifar10_dir, holder, capfd):
    """Before: every start deleted the temporaries in --out, a live run's in-flight one included."""
    out, proc = holder
    assert run_main(*TINY, "--data-dir", tiny_cifar10_dir, "--out", out) == 2
    line = error_line(capfd)
    assert f"{out} is in use by process {proc.pid}" in line and "another output folder" in line
    assert (out / STALE).read_bytes() == b"half a checkpoint"
    assert (out / LOCK_NAME).read_text().strip() == str(proc.pid)
    # kill -9: the kernel lets go of the lock, and the next run removes what the dead one left.
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_main(*TINY, "--data-dir", tiny_cifar10_dir, "--out", out) == 0
    assert not (out / STALE).exists() and (out / "last.npz").is_file()


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec (pip install 'minires[mpi]')")
def test_mpiexec_without_distributed_starts_one_run_per_folder(tiny_cifar10_dir, tmp_path):
    """The issue's case: two copies of one run, started together into one folder. One trains; the
    other finds the folder held (or, if it comes late, holding the first run's files) and says so."""
    out = tmp_path / "run"
    cmd = ["mpiexec", "-n", "2", sys.executable, "-m", "minires.train", *TINY, "--data-dir", str(tiny_cifar10_dir),
           "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    output = done.stdout + done.stderr
    assert output.count("done: final test accuracy") == 1, output
    errors = [line for line in output.splitlines() if "error" in line]
    assert len(errors) == 1 and str(out) in errors[0], output
    assert "is in use by process" in errors[0] or "holds the files of another run" in errors[0]
    assert "Traceback" not in output and int(minires.load(out / "last.npz")["epoch"]) == 1


def test_fit_into_a_held_folder_is_refused(tiny_cifar10_dir, holder):
    out, proc = holder
    state, test_loader = _tiny_state(tiny_cifar10_dir)
    with pytest.raises(RunFolderError, match=f"is in use by process {proc.pid}"):
        loop.fit(state, test_loader, epochs=1, out=out, log=lambda line: None)
    assert (out / STALE).exists() and state.schedule.step_count == 0


def test_lock_folder_between_two_processes(holder):
    out, proc = holder
    with pytest.raises(FolderBusyError) as e:
        lock_folder(out)
    assert e.value.pid == proc.pid
    proc.stdin.close()  # the holder ends normally
    proc.wait()
    fd = lock_folder(out)
    try:
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())
    finally:
        os.close(fd)


def test_a_process_holding_its_folder_holds_it_again():
    """The command line holds --out and its fit takes it again: no conflict with itself."""
    with RunFolder("out") as outer:
        with RunFolder("out", resuming=True):
            pass
        assert outer.held
        with pytest.raises(FolderBusyError):  # still held, by the outer one
            os.close(lock_folder("out"))
    os.close(lock_folder("out"))


def test_clean_up_removes_only_regular_files_named_as_temporaries(tmp_path):
    """Before: a folder named like a temporary was deleted with everything in it, and a link."""
    out = tmp_path / "run"
    out.mkdir()
    (out / STALE).write_bytes(b"x")
    folder = out / ".data.0123456789ab.tmp"
    folder.mkdir()
    (folder / "precious").write_bytes(b"keep")
    target = tmp_path / "elsewhere.npz"
    target.write_bytes(b"keep")
    (out / ".best.npz.0123456789ab.tmp").symlink_to(target)
    os.mkfifo(out / ".metrics.csv.0123456789ab.tmp")
    assert remove_stale_temporaries(out) == [str(out / STALE)]
    assert (folder / "precious").read_bytes() == b"keep" and target.read_bytes() == b"keep"
    assert (out / ".best.npz.0123456789ab.tmp").is_symlink()
    assert stat.S_ISFIFO(os.lstat(out / ".metrics.csv.0123456789ab.tmp").st_mode)


# -- item 3: no device node, FIFO or symlink is replaced ---------------------------------------------------

def test_atomic_write_refuses_a_target_that_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(FileExistsError, match="it exists and is a FIFO, not a regular file"):
        with atomic_write(fifo) as f:
            f.write(b"x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path) == ["pipe"]
    with pytest.raises(FileExistsError, match="is a folder"):
        with atomic_write(tmp_path, "w") as f:
            f.write("x")


def test_atomic_write_writes_through_a_symlink(tmp_path, monkeypatch):
    real = tmp_path / "disk"
    real.mkdir()
    (tmp_path / "links").mkdir()
    target, link = real / "r20.onnx", tmp_path / "links" / "r20.onnx"
    target.write_bytes(b"old")
    link.symlink_to(os.path.relpath(target, link.parent))
    renamed = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append((src, dst)), replace(src, dst)))
    with atomic_write(link) as f:
        f.write(b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert [(os.path.dirname(src), dst) for src, dst in renamed] == [(str(real), str(target))]
    dangling = tmp_path / "links" / "new.csv"
    dangling.symlink_to(real / "new.csv")
    with atomic_write(dangling, "w") as f:
        f.write("a,b\n")
    assert dangling.is_symlink() and (real / "new.csv").read_text() == "a,b\n"


@pytest.fixture
def r8_checkpoint(tmp_path):
    path = tmp_path / "r8.npz"
    minires.save({"model": models.cifar_resnet(8).state_dict(), "config": {"depth": 8}}, path)
    return path


def test_export_and_summary_refuse_a_fifo(r8_checkpoint, tmp_path, capfd):
    pytest.importorskip("onnx")
    export_cli = importlib.import_module("minires.export")
    summary_cli = importlib.import_module("minires.model_summary")
    fifo, dot = tmp_path / "out.onnx", tmp_path / "graph.dot"
    os.mkfifo(fifo)
    os.mkfifo(dot)
    assert export_cli.main([str(r8_checkpoint), str(fifo), "--input-shape", "3", "8", "8"]) == 2
    assert "is a FIFO, not a regular file" in error_line(capfd, "minires.export")
    assert summary_cli.main(["--model", "resnet20", "--input-shape", "3", "8", "8", "--graph", str(dot)]) == 2
    assert "is a FIFO, not a regular file" in error_line(capfd, "minires.summary")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and stat.S_ISFIFO(os.lstat(dot).st_mode)


# -- item 8: export writes only usable files ------------------------------------------------------------------

class EveryRule(nn.Module):
    """With a ResNet-8 (option-A shortcut: Slice + Pad), every export rule: grouped and dilated convs,
    pools with their options, activations, (log-)softmax, reshapes, arithmetic."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=2, dilation=2)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(4)
        self.max = nn.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True)
        self.avg = nn.AvgPool2d(2, padding=1, count_include_pad=False)
        self.fc = nn.Linear(4 * 3 * 3, 6)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        y = F.leaky_relu(self.grouped(y), 0.1) + F.sigmoid(y) * F.tanh(y) + F.softmax(y, dim=1)
        y = self.avg(self.max(y))  # (N, 4, 3, 3)
        y = y.reshape(y.shape[0], 4, 9)  # (N, 4, 9): a Reshape
        y = self.fc(y.reshape(y.shape[0], -1))  # (N, 36) -> (N, 6): a Flatten
        return F.log_softmax((y * 0.5 - 1.0) / 2.0 + y, dim=1)


def test_every_accepted_opset_is_checked_and_runs_in_onnxruntime():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import minires.onnx as mo
    nets = [models.cifar_resnet(8).eval(), EveryRule().eval()]
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    seen = set()
    for net in nets:
        _, y = tracing.trace(net, x[:1])
        seen |= {type(f) for f in tracing.functions(y)}
    assert {mo.RULES[f] for f in seen} == set(mo.RULES.values())  # the three convolutions share one rule
    expected = []
    with minires.no_grad():
        expected = [net(minires.Tensor(x)).numpy() for net in nets]
    high = min(mo.MAX_OPSET, onnx.defs.onnx_opset_version())
    for opset in range(mo.MIN_OPSET, high + 1):
        for net, want in zip(nets, expected):
            proto = mo.to_onnx(net, (1, 3, 8, 8), opset=opset)
            onnx.checker.check_model(proto, full_check=True)
            session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
            got = session.run(None, {"input": x})[0]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"opset {opset}")


@pytest.mark.parametrize("opset", ["0", "1", "-3", "7", "10", "29", "99999"])
def test_export_refuses_an_untested_opset(r8_checkpoint, tmp_path, capfd, opset):
    """Before: 0, 1, -3 and 7 were onnx ValidationError tracebacks, 99999 was written with exit 0."""
    pytest.importorskip("onnx")
    import minires.onnx as mo
    export_cli = importlib.import_module("minires.export")
    assert export_cli.main([str(r8_checkpoint), str(tmp_path / "x.onnx"), "--opset", opset]) == 2
    line = error_line(capfd, "minires.export")
    assert f"--opset {opset} is not one of {mo.MIN_OPSET}.." in line
    assert not (tmp_path / "x.onnx").exists()


def test_export_refuses_nan_weights(tmp_path, capfd):
    pytest.importorskip("onnx")
    import minires.onnx as mo
    export_cli = importlib.import_module("minires.export")
    model = models.cifar_resnet(8)
    model.layer1[0].bn1.running_var[1] = np.inf
    model.fc.weight.data[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"nan or inf in layer1.0.bn1.running_var, fc.weight"):
        mo.to_onnx(model, (1, 3, 8, 8))
    minires.save({"model": model.state_dict(), "config": {"depth": 8}}, tmp_path / "nan.npz")
    assert export_cli.main([str(tmp_path / "nan.npz"), str(tmp_path / "x.onnx")]) == 2
    assert "nan or inf in" in error_line(capfd, "minires.export")
    assert not (tmp_path / "x.onnx").exists()


# -- tracebacks and unclear errors ------------------------------------------------------------------------------

def _export_error(checkpoint, capfd, *extra, output="x.onnx"):
    pytest.importorskip("onnx")  # export checks its --opset against the installed onnx first
    export_cli = importlib.import_module("minires.export")
    assert export_cli.main([str(checkpoint), output, *extra]) == 2
    return error_line(capfd, "minires.export")


@pytest.mark.parametrize("config, message", [
    (5, "entry 'config' must be a dict (the options of its run), found int"),
    ([1, 2], "entry 'config' must be a dict (the options of its run), found list"),
    ("resnet20", "entry 'config' must be a dict (the options of its run), found str"),
    ({"model": 20}, "config entry 'model' must be a string, found int"),
    ({"depth": "20"}, "config entry 'depth' must be a positive integer, found '20'"),
])
def test_export_names_a_bad_config_entry(tmp_path, capfd, config, message):
    path = tmp_path / "bad.npz"
    minires.save({"model": models.cifar_resnet(8).state_dict(), "config": config}, path)
    assert f"{path}: {message}" in _export_error(path, capfd)


@pytest.mark.parametrize("value, found", [(np.float32(3.0), "shape ()"), ([1, 2], "a list")])
def test_export_names_a_bad_fc_weight(tmp_path, capfd, value, found):
    state = dict(models.cifar_resnet(8).state_dict(), **{"fc.weight": value})
    path = tmp_path / "bad.npz"
    minires.save({"model": state, "config": {"depth": 8}}, path)
    assert f"entry 'fc.weight' must be a 2-d array (classes, features), found {found}" in _export_error(path, capfd)


def test_export_refuses_a_huge_depth_before_building_it(tmp_path, capfd, monkeypatch):
    """Before: depth 600000002 built for minutes. The estimate refuses it; nothing is built."""
    def create(name, **kwargs):
        raise AssertionError(f"built {name} {kwargs}")

    monkeypatch.setattr(models, "create", create)
    path = tmp_path / "deep.npz"
    minires.save({"model": {}, "config": {"depth": 600000002}}, path)
    line = _export_error(path, capfd)
    assert "its config has depth 600000002" in line and "GiB" in line


def test_a_huge_input_shape_is_one_line(r8_checkpoint, capfd):
    """Before: a MemoryError traceback from export and from summary."""
    line = _export_error(r8_checkpoint, capfd, "--input-shape", "3", "60000", "60000")
    assert "--input-shape 3 60000 60000" in line
    assert "--input-shape 3 0 32: every size must be at least 1" in _export_error(
        r8_checkpoint, capfd, "--input-shape", "3", "0", "32")
    summary_cli = importlib.import_module("minires.model_summary")
    assert summary_cli.main(["--model", "resnet20", "--input-shape", "3", "60000", "60000"]) == 2
    assert "--input-shape 3 60000 60000" in error_line(capfd, "minires.summary")


def test_torch_state_dicts_bfloat16_loads_and_unusable_tensors_are_named():
    torch = pytest.importorskip("torch")
    from minires.interop import load_torch_state_dict
    model = nn.Linear(3, 2)
    weight = torch.tensor([[0.1, -2.5, 3.3], [1e-3, 7.0, -0.7]])
    bias = torch.tensor([0.25, -1.5])
    load_torch_state_dict(model, {"weight": weight.to(torch.bfloat16), "bias": bias.to(torch.bfloat16)})
    np.testing.assert_array_equal(model.weight.data, weight.to(torch.bfloat16).float().numpy())
    assert model.weight.data.dtype == np.float32
    with pytest.warns(UserWarning):  # quantized tensors are deprecated in PyTorch
        quantized = torch.quantize_per_tensor(weight, 0.1, 0, torch.qint8)
    bad = [(weight.to("meta"), "is a meta tensor"),
           (weight.to_sparse(), r"is a torch.sparse_coo tensor; convert it with .to_dense\(\)"),
           (quantized, r"is a quantized tensor \(torch.qint8\); convert it with .dequantize\(\)"),
           (weight.to(torch.float8_e4m3fn), "is a tensor of torch.float8_e4m3fn, which NumPy cannot hold")]
    for tensor, message in bad:
        with pytest.raises(TypeError, match="state dict entry 'weight' " + message):
            load_torch_state_dict(model, {"weight": tensor, "bias": bias})
    with pytest.raises(TypeError, match=r"key 0 \(int\) is not a parameter name"):
        load_torch_state_dict(model, {"weight": weight, "bias": bias, 0: bias})


def _forged_batch(path, flags):
    """A batch whose uint8 dtype is pickled with other internal flags than NumPy's own (0)."""
    class Forger(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, np.dtype) and obj == np.uint8:
                return np.dtype, ("u1", False, True), (3, "|", None, None, None, -1, -1, flags)
            return NotImplemented

    with open(path, "wb") as f:
        Forger(f, protocol=2).dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]})


@pytest.mark.parametrize("flags", [1, 63, -1])
def test_a_cifar_batch_with_forged_dtype_flags_is_refused_without_a_traceback(tmp_path, capfd, flags):
    """Before: 63 and -1 printed NumPy's internal traceback above the error; 1 (an item that holds
    Python objects) loaded a uint8 array NumPy would later treat as holding objects."""
    from minires.data import UnsafePickleError, load_batch
    _forged_batch(tmp_path / "data_batch_1", flags)
    with pytest.raises(UnsafePickleError, match="refusing a forged NumPy dtype"):
        load_batch(tmp_path / "data_batch_1")
    assert capfd.readouterr().err == ""


def test_batches_meta_names_are_utf8_and_a_bad_one_names_the_file(tmp_path):
    from minires.data import load_class_names
    names = [b"airplane", "caf\u00e9".encode(), *[f"c{i}".encode() for i in range(8)]]
    with open(tmp_path / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names}, f, protocol=2)
    assert load_class_names(tmp_path)[:2] == ("airplane", "caf\u00e9")
    with open(tmp_path / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"\xff\xfe"] + names[1:]}, f, protocol=2)
    with pytest.raises(ValueError, match=f"{tmp_path / 'batches.meta'}: the label names must be text"):
        load_class_names(tmp_path)


def test_a_negative_seed_names_the_flag(tiny_cifar10_dir, capfd):
    assert run_main(*TINY, "--data-dir", tiny_cifar10_dir, "--seed", "-1", "--out", "x") == 2
    assert "--seed must be a non-negative integer, got -1" in error_line(capfd)


def test_evaluate_skips_a_batch_of_no_images_and_refuses_no_images_at_all():
    """Before: a bare IndexError from inside a layer."""
    model = models.cifar_resnet(8)
    x = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    y = np.array([1, 2, 3])
    empty = (x[:0], y[:0])
    assert evaluate(model, [empty, (x, y), empty]) == evaluate(model, [(x, y)])
    with pytest.raises(ValueError, match="no images to evaluate"):
        evaluate(model, [empty])


def test_load_state_dict_of_a_list_or_a_non_string_key_says_so():
    """Before: "sequence item 0: expected str instance, int found"."""
    model = nn.Linear(3, 2)
    with pytest.raises(TypeError, match="expected a state dict .*, got list"):
        model.load_state_dict([1, 2])
    with pytest.raises(ValueError, match=r"key 0 \(int\) is not a parameter name"):
        model.load_state_dict({0: np.zeros(2), **model.state_dict()})
