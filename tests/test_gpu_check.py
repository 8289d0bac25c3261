"""The GPU check's machinery on the CPU: phases with budgets, reports after every phase, the data
subset that travels with it, and train_step's GPU options (benchmarks/gpu_check.py, gpu_data.py,
train_step.py)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import gpu_check, gpu_data, train_step
from minires import backend as mb
from minires.data import load_cifar10
from minires.train import build_parser, parse_args

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def subset_dir(tmp_path_factory):
    """A small subset (100 training, 50 test images) written by gpu_data from a generated CIFAR-10."""
    from conftest import write_tiny_cifar10
    source = write_tiny_cifar10(tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py", per_batch=64, n_test=64)
    out = tmp_path_factory.mktemp("subset")
    assert gpu_data.main(["--data-dir", str(source), "--out", str(out), "--train", "100", "--test", "50"]) == 0
    return out


# -- the data subset ---------------------------------------------------------------------------------

def test_gpu_data_writes_the_stated_subset_of_real_cifar10(cifar10_dir, tmp_path):
    assert gpu_data.main(["--data-dir", str(cifar10_dir), "--out", str(tmp_path)]) == 0
    x_train, y_train, x_test, y_test = gpu_data.load_subset(tmp_path)
    assert x_train.shape == (15000, 3, 32, 32) and x_test.shape == (5000, 3, 32, 32)
    assert np.bincount(y_train, minlength=10).tolist() == [1500] * 10
    info = json.loads((tmp_path / "subset.json").read_text())
    total = sum((tmp_path / name).stat().st_size for name in gpu_data.FILES)
    assert info["total_bytes"] == total and 61_000_000 < total < 62_000_000  # "about 61 MB"
    assert total + (tmp_path / "subset.json").stat().st_size < gpu_data.CARRY_LIMIT - 2 * 2 ** 20  # room for the tree
    full = load_cifar10(cifar10_dir)
    np.testing.assert_array_equal(x_test, full[2][:5000])
    first_cats = np.flatnonzero(full[1] == 3)[:1500]  # the first 1,500 cats, in order
    np.testing.assert_array_equal(x_train[y_train == 3], full[0][first_cats])


def test_subset_turns_into_a_cifar_folder_the_training_cli_reads(subset_dir, tmp_path):
    x_train, y_train, x_test, y_test = gpu_data.load_subset(subset_dir)
    assert x_train.shape == (100, 3, 32, 32) and np.bincount(y_train).tolist() == [10] * 10
    folder = gpu_data.write_cifar_folder(subset_dir, tmp_path / "cifar-10-batches-py")
    loaded = load_cifar10(folder)
    for a, b in zip(loaded, (x_train, y_train, x_test, y_test)):
        np.testing.assert_array_equal(a, b)


def test_gpu_data_refuses_what_it_cannot_use(subset_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MINIRES_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no CIFAR-10 found elsewhere
    assert gpu_data.main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("gpu_data: CIFAR-10 not found")
    assert gpu_data.main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--train", "15"]) == 2
    assert "--train must be a multiple of 10" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in gpu_data.FILES:
        (bad / name).write_bytes((subset_dir / name).read_bytes())
    np.save(bad / "train_x.npy", np.zeros((100, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="train_x.npy: expected uint8"):
        gpu_data.load_subset(bad)


# -- phases, budgets, reports ------------------------------------------------------------------------

def test_a_phase_past_its_budget_is_stopped_and_the_next_still_runs(subset_dir, tmp_path, monkeypatch):
    written = []  # the phases each report held when it was written
    real_write = gpu_check.write_reports

    def spy(report, out):
        real_write(report, out)
        saved = json.loads((out / gpu_check.REPORT_JSON).read_text())
        written.append([(p["name"], p["status"]) for p in saved["phases"]])

    monkeypatch.setattr(gpu_check, "write_reports", spy)
    out = tmp_path / "report"
    rc = gpu_check.main(["--backend", "numpy", "--quick", "--data-dir", str(subset_dir), "--out", str(out),
                         "--phases", "equivalence,train", "--budget", "equivalence=0.5",
                         "--total", "3600", "--budget", "train=1200"])  # train cannot overrun on a busy machine
    assert rc == 1  # a phase did not pass
    assert written[0] == []  # before the first phase
    assert written[1] == [("equivalence", "timed out")]
    assert written[2] == [("equivalence", "timed out"), ("train", "ok")]
    report = json.loads((out / gpu_check.REPORT_JSON).read_text())
    assert report["finished"] and report["pending"] == []
    train = report["phases"][1]
    assert train["result"]["epoch"] == 1 and 0 <= train["result"]["test_acc"] <= 1
    assert "stopped after 0 s" in report["phases"][0]["summary"]
    md = (out / gpu_check.REPORT_MD).read_text()
    assert "| equivalence | timed out |" in md and "| train | ok |" in md
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md", "tests.log", "train.log"]
    assert "===== equivalence" in (out / "tests.log").read_text()


def test_phases_past_the_total_budget_are_skipped_and_reported(tmp_path):
    out = tmp_path / "report"
    # equivalence starts with 1.5 s left and stops at 0.6 s; less than the 1 s a phase needs remains
    assert gpu_check.main(["--backend", "numpy", "--quick", "--out", str(out), "--total", "1.5",
                           "--budget", "equivalence=0.6", "--phases", "equivalence,bench-resnet20"]) == 1
    report = json.loads((out / gpu_check.REPORT_JSON).read_text())
    assert [(p["name"], p["status"]) for p in report["phases"]] == [("equivalence", "timed out"),
                                                                    ("bench-resnet20", "skipped")]
    assert len(list(out.iterdir())) <= 8


def _processes_with(marker):
    """Pids of the processes whose environment holds ``marker`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            pass
    return pids


def test_stopping_gpu_check_stops_the_running_phase_and_keeps_the_report(tmp_path):
    out, marker = tmp_path / "report", f"GPU_CHECK_TEST={os.getpid()}-{tmp_path.name}"
    env = dict(os.environ, GPU_CHECK_TEST=marker.split("=")[1])
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.gpu_check", "--backend", "numpy", "--quick",
                             "--out", str(out), "--phases", "equivalence"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "tests.log").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # pytest has started
    assert len(_processes_with(marker)) >= 2  # gpu_check and its phase
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 1 and "stopped by signal" in proc.stderr.read()
    time.sleep(0.5)
    assert _processes_with(marker) == []
    report = json.loads((out / gpu_check.REPORT_JSON).read_text())
    assert report["finished"] is False and [(p["name"], p["status"]) for p in report["phases"]] == [
        ("equivalence", "stopped")]


def test_the_gpu_plan_runs_the_stated_commands_within_eight_minutes(tmp_path):
    args = argparse_namespace(backend="cupy", quick=False, data_dir=str(tmp_path), phases=None)
    phases = {p.name: p for p in gpu_check.plan(args, str(tmp_path))}
    assert list(phases) == list(gpu_check.BUDGETS) and sum(gpu_check.BUDGETS.values()) <= gpu_check.TOTAL == 480
    assert list(phases)[:2] == ["env", "equivalence"] and list(phases)[-1] == "tests"
    for name in ("equivalence", "tests"):
        assert phases[name].env == {"MINIRES_BACKEND": "cupy"}
        assert phases[name].argv[phases[name].argv.index("-k") + 1] == "cupy and not [numpy"
    assert "tests/test_cupy_equivalence.py" in phases["equivalence"].argv
    for name in ("bench-resnet20", "bench-resnet56", "bench-resnet18"):
        bench = train_step._parser().parse_args(phases[name].argv[3:])  # after python -m benchmarks.train_step
        assert (bench.backend, bench.compare, bench.tf32, bench.batch_size, bench.dtype) == \
            ("cupy", "torch", "both", 128, "float32")
    assert train_step._parser().parse_args(phases["bench-resnet18"].argv[3:]).stem == "cifar"
    train = parse_args(build_parser(), phases["train"].argv[3:])  # after python -m minires.train
    assert (train.backend, train.epochs, train.depth) == ("cupy", 1, 20)


def test_test_results_are_read_from_plain_and_parallel_pytest_output():
    text = """tests/test_a.py::test_x[cupy] PASSED                                   [ 10%]
tests/test_a.py::test_y[cupy] FAILED                                   [ 20%]
tests/test_b.py::test_z SKIPPED (no GPU)                               [ 30%]
[gw0] [ 40%] PASSED tests/test_c.py::test_w[cupy]
[gw3] [ 50%] ERROR tests/test_c.py::test_v[cupy-float64]
FAILED tests/test_a.py::test_y[cupy] - AssertionError
"""
    result, summary = gpu_check._read_tests(None, text, None)
    assert result == {"counts": {"passed": 2, "failed": 1, "skipped": 1, "error": 1},
                      "failed": ["tests/test_a.py::test_y[cupy]", "tests/test_c.py::test_v[cupy-float64]"]}
    assert summary == "1 error, 1 failed, 2 passed, 1 skipped"


def test_gpu_check_refuses_bad_arguments_before_starting(tmp_path, capsys):
    for argv, message in ((["--phases", "tests,nonsense"], "no phase 'nonsense'"),
                          (["--budget", "tests=soon"], "must be a number"),
                          (["--phases", "train"], "--data-dir is needed"),
                          (["--phases", "train", "--data-dir", str(tmp_path)], "train_x.npy not found")):
        with pytest.raises(SystemExit) as e:
            gpu_check.main(["--backend", "numpy", "--out", str(tmp_path / "o")] + argv)
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_gpu_check_on_a_machine_without_a_gpu_says_so_in_one_line(tmp_path, capsys):
    if mb.cupy_available():
        pytest.skip("CuPy sees a GPU here")
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--out", str(tmp_path / "o"), "--phases", "env"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "--backend cupy: " in err and "CuPy" in err
    assert not (tmp_path / "o").exists()


def argparse_namespace(**kwargs):
    import argparse
    return argparse.Namespace(**kwargs)


# -- train_step's GPU options ------------------------------------------------------------------------

def test_train_step_tf32_needs_the_gpu_backend(capsys):
    with pytest.raises(SystemExit) as e:
        train_step.main(["--tf32", "both"])
    assert e.value.code == 2 and "--tf32 both needs --backend cupy" in capsys.readouterr().err
    assert train_step._parser().parse_args(["--backend", "cupy", "--tf32", "on"]).tf32 == "on"


@pytest.mark.slow  # two processes that import PyTorch and minires: ~20 s on a busy 2-core machine
def test_train_step_compares_with_torch_on_the_cpu(tmp_path):
    pytest.importorskip("torch")
    summary = train_step.main(["--model", "resnet20", "--batch-size", "2", "--size", "8", "--rounds", "1",
                               "--block", "1", "--warmup", "0", "--threads", "1", "--compare", "torch",
                               "--no-memory", "--json", str(tmp_path / "r.json")])
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [(r["phase"], r["tf32"]) for r in rows] == [("train", False), ("infer", False)]
    for r in rows:
        assert r["minires_img_s"] > 0 and r["torch_img_s"] > 0
        assert r["ratio"] == pytest.approx(r["minires_img_s"] / r["torch_img_s"])
    assert summary["ratio_train"] == rows[0]["ratio"]  # the old keys stay


# -- the GPU plan end to end, on a stand-in for CuPy ---------------------------------------------------

FAKE_CUPY = '''"""A stand-in for CuPy that is NumPy underneath (arrays stay NumPy arrays, so minires runs its
NumPy code), with the few device calls train_step and gpu_check make: it checks their plumbing."""
import time

import numpy

__version__ = "0+stand-in"


def __getattr__(name):
    return getattr(numpy, name)


class _Runtime:
    getDeviceCount = staticmethod(lambda: 1)
    driverGetVersion = staticmethod(lambda: 13000)
    runtimeGetVersion = staticmethod(lambda: 13000)
    getDeviceProperties = staticmethod(lambda i: {"name": b"Stand-in GPU", "major": 9, "minor": 0,
                                                  "totalGlobalMem": 2 ** 30})


class _Event:
    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


class _Device:
    def synchronize(self):
        pass


class _MemoryHook:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Pool:
    used_bytes = staticmethod(lambda: 1000)
    total_bytes = staticmethod(lambda: 2000)


class cuda:
    runtime = _Runtime
    Event = _Event
    Device = _Device
    MemoryHook = _MemoryHook
    get_elapsed_time = staticmethod(lambda a, b: 1e3 * (b.t - a.t))


get_default_memory_pool = _Pool
'''


@pytest.fixture
def stand_in_cupy(tmp_path, monkeypatch):
    """PYTHONPATH for subprocesses that find the stand-in as ``cupy`` (this process never imports it)."""
    (tmp_path / "fake" / "cupy").mkdir(parents=True)
    (tmp_path / "fake" / "cupy" / "__init__.py").write_text(FAKE_CUPY)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "fake"), str(REPO)]))


@pytest.mark.slow  # three phases' processes, PyTorch imported in four: ~60 s on a busy 2-core machine
def test_the_gpu_plan_runs_end_to_end_on_a_stand_in_for_cupy(subset_dir, tmp_path, stand_in_cupy):
    pytest.importorskip("torch")  # on a GPU the benchmark phase compares with PyTorch, so it needs it
    out = tmp_path / "report"
    run = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--backend", "cupy", "--quick",
                          "--data-dir", str(subset_dir), "--out", str(out), "--phases", "equivalence,bench-resnet20,train",
                          # budgets that a busy CI machine cannot overrun: this checks the machinery
                          "--total", "3600", "--budget", "equivalence=1200", "--budget", "bench-resnet20=1200",
                          "--budget", "train=1200"],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 1  # the equivalence phase fails, below
    report = json.loads((out / gpu_check.REPORT_JSON).read_text())
    phases = {p["name"]: p for p in report["phases"]}
    # The stand-in's arrays are NumPy's, so the test that the logits live on CuPy fails, and is named
    tests = phases["equivalence"]
    assert tests["status"] == "failed" and tests["result"]["counts"] == {"failed": 1}
    assert tests["result"]["failed"] == [
        "tests/test_cupy_equivalence.py::test_model_forward_backward_and_sgd_equal_numpy[cupy-resnet20-float32]"]
    assert phases["train"]["status"] == "ok" and phases["train"]["result"]["epoch"] == 1
    bench = phases["bench-resnet20"]
    assert bench["status"] == "ok", (out / "bench.log").read_text()[-3000:]
    # CPU PyTorch has no CUDA: its processes fail to start and minires is timed alone, TF32 off and on
    assert bench["result"]["lost"] == ["the torch benchmark process exited (code 1)",
                                       "the torch_tf32 benchmark process exited (code 1)"]
    assert "2 process(es) died" in bench["summary"]
    rows = bench["result"]["rows"]
    assert [(r["phase"], r["tf32"]) for r in rows] == [("train", False), ("train", True),
                                                       ("infer", False), ("infer", True)]
    for r in rows:
        assert r["minires_img_s"] > 0 and r["minires_host_ms"] > 0 and "torch_img_s" not in r
        assert r["minires_peak_bytes"] == 1000 and r["minires_launches"] is None
    md = (out / gpu_check.REPORT_MD).read_text()
    assert "| resnet20 | train | on |" in md and "CUDA events" in md and "test_model_forward_backward" in md
    assert sorted(p.name for p in out.iterdir()) == ["bench.log", "gpu_check.json", "gpu_check.md", "tests.log",
                                                     "train.log"]
