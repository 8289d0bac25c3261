"""Shared pytest fixtures."""
import os
import pickle
from pathlib import Path

import numpy
import pytest


# --- real CIFAR-10 data (minires.data tests) ---------------------------------------------------

def _real_cifar10_dir():
    """The real cifar-10-batches-py folder: $MINIRES_DATA, else ../shared/data beside the repo."""
    root = Path(__file__).resolve().parents[1]
    places = []
    if os.environ.get("MINIRES_DATA"):
        env = Path(os.environ["MINIRES_DATA"]).expanduser()
        places += [env, env / "cifar-10-batches-py"]
    places.append(root.parent / "shared" / "data" / "cifar-10-batches-py")
    for place in places:
        if (place / "data_batch_1").is_file() and (place / "test_batch").is_file():
            return place
    return None


@pytest.fixture(scope="session")
def cifar10_dir():
    """Path of the real CIFAR-10 batches folder; skips the test when it is not on this machine."""
    folder = _real_cifar10_dir()
    if folder is None:
        pytest.skip("real CIFAR-10 not found (set MINIRES_DATA or put it in ../shared/data)")
    return folder


@pytest.fixture(scope="session")
def cifar10_arrays(cifar10_dir):
    """(x_train, y_train, x_test, y_test) of the real data set, loaded once per session."""
    from minires.data import load_cifar10
    return load_cifar10(cifar10_dir)


# --- a tiny CIFAR-10 in the official format, generated (training tests on any machine) -------

TINY_PER_BATCH = 64  # 5 x 64 = 320 training images, 128 test images
TINY_TEST = 128
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_cifar_batch(path, data, labels, label=b"training batch 1 of 5", protocol=2):
    """A batch file as the originals are: a protocol-2 pickle of a dict with bytes keys,
    b"data" uint8 (N, 3072) channel-planar, b"labels" a list of ints, b"batch_label", b"filenames"."""
    d = {b"batch_label": label, b"labels": [int(v) for v in labels], b"data": data,
         b"filenames": [b"img_%05d.png" % i for i in range(len(labels))]}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=protocol)


def write_tiny_cifar10(folder, per_batch=TINY_PER_BATCH, n_test=TINY_TEST, seed=0):
    """data_batch_1..5, test_batch and batches.meta in ``folder``. Each image is noise around a
    colour that depends on its class, so a network can learn something from a few hundred."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = numpy.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(10, 3))
    names = [(f"data_batch_{i}", per_batch, f"training batch {i} of 5") for i in range(1, 6)]
    for name, n, label in names + [("test_batch", n_test, "testing batch 1 of 1")]:
        labels = rng.integers(0, 10, size=n)
        images = colours[labels][:, :, None] + rng.normal(0, 40, size=(n, 3, 1024))
        data = numpy.clip(images, 0, 255).astype(numpy.uint8).reshape(n, 3072)
        write_cifar_batch(folder / name, data, labels, label.encode())
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CLASSES],
                     b"num_vis": 3072}, f, protocol=2)
    return folder


@pytest.fixture(scope="session")
def tiny_cifar10_dir(tmp_path_factory):
    """A generated CIFAR-10 folder of 320 training and 128 test images in the real file format."""
    return write_tiny_cifar10(tmp_path_factory.mktemp("tiny") / "cifar-10-batches-py")


# --- runs of the training command line (train.main) ------------------------------------------

@pytest.fixture
def _leave_globals_alone(monkeypatch, tmp_path):
    """run() seeds the weight initialiser and may set the backend: restore both afterwards, so
    the rest of the suite sees what it would have seen without these tests. A run without --out
    writes to runs/ under the working directory: make that a temporary one."""
    from minires import backend as mb
    from minires import rng as minires_rng
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(minires_rng, "_rng", minires_rng.get_rng())
    previous = mb.get_backend()
    yield
    mb.set_backend(previous)


def has_matplotlib():
    """Whether matplotlib imports (runs then also write their pictures)."""
    import importlib.util
    return importlib.util.find_spec("matplotlib") is not None


def run_main(*argv):
    """``train.main(argv)``'s exit code, also when it leaves through SystemExit (argparse, Ctrl-C)."""
    import minires.train as train
    try:
        return train.main([str(a) for a in argv])
    except SystemExit as e:
        return 0 if e.code is None else e.code


# --- array backends (core tests: autograd, functional, nn, gradcheck, backend) ------------------

@pytest.fixture(scope="session", params=["numpy", "cupy"])
def backend(request):
    """Name of an array backend ('numpy' or 'cupy'); the cupy case skips without CuPy and a GPU.

    Tests build their inputs with ``minires.backend.get_module(backend)`` / ``to_backend``, so the
    same suite checks the GPU code path on a machine that has one.
    """
    from minires import backend as mb
    if request.param == "cupy" and not mb.cupy_available():
        pytest.skip("cupy backend unavailable: CuPy with a CUDA GPU is not installed on this machine")
    return request.param


# --- why tests skipped: one line per reason, with a count ----------------------------------------

# What brings the part of the suite that a reason's skips stand for.
INSTALL_HINTS = (
    ("kernel tests", 'pip install -e ".[kernels]" (CuPy and NVRTC; no GPU needed)'),
    ("cupy", 'a CUDA GPU with pip install -e ".[cuda13]" (see README: GPU)'),
    ("torch", "pip install torch==2.13.0 (CPU wheel)"),
    ("onnx", 'pip install -e ".[onnx]"'),
    ("mpi", 'pip install -e ".[mpi]"'),
    ("matplotlib", 'pip install -e ".[plot]"'),
    ("graphviz", 'pip install -e ".[viz]" and Graphviz\'s dot'),
    ("pil", 'pip install -e ".[image]"'),
    ("cifar-10", "put CIFAR-10 in ../shared/data or set MINIRES_DATA"),
)


def _skip_reason(report):
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter):
    """After the run, say why tests were skipped (grouped by reason) and what would run them."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons = {}
    for report in skipped:
        reason = _skip_reason(report)
        reasons[reason] = reasons.get(reason, 0) + 1
    terminalreporter.section(f"{len(skipped)} skipped, by reason")
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
        hint = next((h for key, h in INSTALL_HINTS if key in reason.lower()), None)
        terminalreporter.line(f"{count:5d}  {reason}" + (f"  [to run them: {hint}]" if hint else ""))
