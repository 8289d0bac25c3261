"""Array backends: choosing NumPy or CuPy, moving arrays and tensors between them, error messages."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minires
from minires import Tensor, nn
from minires import backend as mb

INSTALL_HINT = 'pip install "minires[cuda12]"'


def unavailable_message():
    """What the cupy backend says on this machine without a GPU: how to install CuPy where it is
    missing, and that it cannot reach a GPU where it is installed (as in CI, for the kernel tests)."""
    import importlib.util
    return INSTALL_HINT if importlib.util.find_spec("cupy") is None else "CuPy is installed but "


@pytest.fixture
def fresh_default(monkeypatch):
    """Forget the resolved default backend (restored after the test) so MINIRES_BACKEND is re-read."""
    monkeypatch.setattr(mb, "_default", None)
    monkeypatch.delenv("MINIRES_BACKEND", raising=False)
    return monkeypatch


def host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


# --- names and modules ----------------------------------------------------------------------------

def test_get_module():
    assert mb.get_module("numpy") is np
    with pytest.raises(ValueError, match="nonsense.*numpy.*cupy"):
        mb.get_module("nonsense")


def test_set_backend_rejects_unknown_name(fresh_default):
    with pytest.raises(ValueError, match="nonsense"):
        minires.set_backend("nonsense")
    assert mb._default is None  # unchanged by the failed call


def test_set_backend_cupy_without_cupy_gives_install_hint(fresh_default):
    if mb.cupy_available():
        pytest.skip("CuPy is available on this machine")
    with pytest.raises(mb.BackendError) as info:
        minires.set_backend("cupy")
    assert unavailable_message() in str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert minires.get_backend() == "numpy"  # the failed call left the default alone
    with pytest.raises(mb.BackendError) as info:
        mb.get_module("cupy")
    assert unavailable_message() in str(info.value)


def test_set_and_get_backend(fresh_default, backend):
    minires.set_backend(backend)
    assert minires.get_backend() == backend
    assert mb.default_module() is mb.get_module(backend)
    t = Tensor([1.0, 2.0])
    assert t.backend == backend and t.dtype == np.float32
    lin = nn.Linear(3, 2)
    assert all(p.backend == backend for p in lin.parameters())
    minires.set_backend("numpy")
    assert Tensor([1.0]).backend == "numpy"


def test_cupy_available_is_bool():
    assert isinstance(mb.cupy_available(), bool)


# --- MINIRES_BACKEND ------------------------------------------------------------------------------

def test_env_var_unset_means_numpy(fresh_default):
    assert minires.get_backend() == "numpy"
    assert Tensor([1.0]).backend == "numpy"


@pytest.mark.parametrize("value", ["numpy", " NumPy ", ""])
def test_env_var_numpy(fresh_default, value):
    fresh_default.setenv("MINIRES_BACKEND", value)
    assert minires.get_backend() == "numpy"


def test_env_var_cupy(fresh_default, backend):
    fresh_default.setenv("MINIRES_BACKEND", backend.upper())
    assert minires.get_backend() == backend
    assert Tensor([1.0]).backend == backend


def test_env_var_is_read_once(fresh_default):
    fresh_default.setenv("MINIRES_BACKEND", "numpy")
    assert minires.get_backend() == "numpy"
    fresh_default.setenv("MINIRES_BACKEND", "nonsense")
    assert minires.get_backend() == "numpy"  # already resolved


def test_env_var_unknown_value(fresh_default):
    fresh_default.setenv("MINIRES_BACKEND", "tpu")
    with pytest.raises(ValueError, match="tpu"):
        minires.get_backend()


def test_env_var_cupy_without_cupy_fails_at_first_use_with_hint(fresh_default):
    if mb.cupy_available():
        pytest.skip("CuPy is available on this machine")
    fresh_default.setenv("MINIRES_BACKEND", "cupy")
    with pytest.raises(mb.BackendError) as info:
        Tensor([1.0])
    assert unavailable_message() in str(info.value)


# --- arrays and tensors across backends -----------------------------------------------------------

def test_get_array_module_and_backend_of(backend):
    xp = mb.get_module(backend)
    a = xp.ones((2, 3))
    assert minires.get_array_module(a) is xp
    assert mb.get_array_module(Tensor(a)) is xp
    assert mb.get_array_module(np.ones(2), a) is xp  # any CuPy array makes it CuPy
    assert mb.get_array_module(np.ones(2), 3.0, [1, 2]) is np
    assert mb.get_array_module() is np
    assert mb.backend_of(a) == backend and mb.backend_of(np.ones(1)) == "numpy"
    assert Tensor(a).backend == backend


def test_to_backend(backend):
    xp = mb.get_module(backend)
    a = np.arange(6.0).reshape(2, 3)
    moved = mb.to_backend(a, backend)
    assert mb.backend_of(moved) == backend
    np.testing.assert_array_equal(host(moved), a)
    assert mb.to_backend(moved, backend) is moved  # already there: no copy
    with pytest.raises(ValueError):
        mb.to_backend(a, "nonsense")
    assert isinstance(xp.asarray(moved), type(moved))


def test_to_numpy(backend, request):
    xp = mb.get_module(backend)
    a = np.arange(12.0).reshape(3, 4)
    on = xp.asarray(a)
    for src in (on, Tensor(on), on.T):
        r = minires.to_numpy(src)
        assert isinstance(r, np.ndarray)
        np.testing.assert_array_equal(r, host(getattr(src, "data", src)) if isinstance(src, Tensor) else host(src))
    assert minires.to_numpy(xp.asarray(np.float32(2.5))).dtype == np.float32
    np.testing.assert_array_equal(mb.to_numpy([1, 2, 3]), [1, 2, 3])


def test_tensor_numpy_and_to_numpy(backend, request):
    xp = mb.get_module(backend)
    t = Tensor(xp.asarray(np.arange(4.0)), requires_grad=True)
    (t * t).sum().backward()
    n = t.numpy()
    assert isinstance(n, np.ndarray)
    np.testing.assert_array_equal(n, np.arange(4.0))
    moved = t.to("numpy")
    assert moved is not t and moved.backend == "numpy"
    assert moved.requires_grad and moved.creator is None
    assert isinstance(moved.data, np.ndarray) and isinstance(moved.grad, np.ndarray)
    np.testing.assert_array_equal(moved.grad, 2 * np.arange(4.0))
    back = moved.to(backend)
    assert back.backend == backend
    np.testing.assert_array_equal(host(back.data), np.arange(4.0))
    with pytest.raises(ValueError):
        t.to("nonsense")


def test_to_numpy_numpy_inputs_keep_values_and_dtype():
    for a in (np.arange(6, dtype=np.int64).reshape(2, 3), np.ones(3, np.float16), np.array(3.5),
              np.arange(10.0)[::3], np.ones((2, 2), np.float32).T):
        r = mb.to_numpy(a)
        assert isinstance(r, np.ndarray) and r.dtype == a.dtype and r.shape == a.shape
        np.testing.assert_array_equal(r, a)
    t = Tensor(np.ones((2, 2)))
    assert mb.to_numpy(t).shape == (2, 2)


class _FakeDevicePointer:
    """Stands in for cupy.cuda.MemoryPointer: what a CuPy array's ``.data`` attribute is."""


_FakeDevicePointer.__module__ = "cupy.cuda.memory"


class _FakeCupyArray:
    """The two things to_numpy relies on from a CuPy array: its module name and ``.get()``;
    like a real cupy.ndarray it also has a ``.data`` attribute holding a device pointer."""

    def __init__(self, a):
        self._host = np.asarray(a)
        self.data = _FakeDevicePointer()
        self.shape, self.dtype = self._host.shape, self._host.dtype

    def get(self):
        return self._host.copy()


_FakeCupyArray.__module__ = "cupy._core.core"


def test_to_numpy_of_a_cupy_like_array_uses_its_get():
    a = _FakeCupyArray(np.arange(3.0))
    np.testing.assert_array_equal(mb.to_numpy(a), np.arange(3.0))


def test_import_minires_reaches_the_subpackages_without_importing_cupy():
    """In a fresh interpreter, as a user would: ``import minires`` alone gives minires.optim.SGD,
    minires.data, minires.nn, minires.functional ..., and imports neither CuPy nor the CLI."""
    code = """
import sys
import minires
m = minires.nn.Linear(2, 1)
opt = minires.optim.SGD(m.parameters(), lr=0.1)
assert callable(minires.data.load_cifar10) and callable(minires.functional.conv2d)
assert minires.models.create("resnet20") is not None and minires.profiler.profile and minires.summary
assert minires.autograd.FunctionHook is minires.FunctionHook and minires.utils.conv.im2col
print(type(opt).__name__, sorted(k for k in ("cupy", "minires.train", "torch") if k in sys.modules))
"""
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["SGD", "[]"]
