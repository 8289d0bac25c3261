"""Shared pytest fixtures."""
import os
from pathlib import Path

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
