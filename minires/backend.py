"""Array backends: NumPy on the CPU, CuPy on an NVIDIA GPU, behind one code path.

Every op asks its inputs which module they live in (``xp = get_array_module(x)``) and then
calls ``xp.matmul``, ``xp.exp`` ... so the same lines run on either device. CuPy is imported
lazily: a machine without it never pays for the import and never sees an ImportError unless
it asks for the ``cupy`` backend.
"""
import os

import numpy

_BACKENDS = ("numpy", "cupy")
_default = None  # resolved lazily from MINIRES_BACKEND on first use
_cupy = None


class BackendError(RuntimeError):
    """Raised when a backend is asked for that this machine cannot provide."""


def _import_cupy():
    global _cupy
    if _cupy is None:
        try:
            import cupy
        except ImportError as e:  # pragma: no cover - depends on the machine
            raise BackendError(
                "the 'cupy' backend needs CuPy and an NVIDIA GPU; install it with "
                "pip install \"minires[cuda12]\" (CUDA 12) or \"minires[cuda13]\" (CUDA 13) "
                f"[{e}]") from None
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise BackendError("CuPy is installed but no CUDA GPU is visible")
        except BackendError:
            raise
        except Exception as e:  # pragma: no cover - depends on the machine
            raise BackendError(f"CuPy is installed but cannot reach a CUDA GPU: {e}") from None
        _cupy = cupy
    return _cupy


def import_cupy_for_codegen():
    """CuPy itself, without asking for a GPU: enough to generate and compile kernel source
    (NVRTC needs no driver), which the kernel tests do on machines without a GPU."""
    import cupy
    return cupy


KERNELS = []  # every ElementwiseKernel defined, in definition order, for the kernel tests


class ElementwiseKernel:
    """A CuPy ``ElementwiseKernel`` written in minires and built on its first call.

    The arguments are CuPy's (``in_params``, ``out_params``, ``operation``, ``name``,
    ``preamble``...). Only strings are kept until the first call, so ``import minires`` never
    imports CuPy. Each kernel sits beside its NumPy twin in the op that uses it; every instance
    is listed in ``KERNELS``, which the kernel tests walk: each one is compiled with NVRTC and
    its generated source run on the CPU against the twin.
    """

    def __init__(self, in_params, out_params, operation, name, preamble="", loop_prep="",
                 after_loop="", reduce_dims=True):
        self.in_params, self.out_params, self.operation, self.name = in_params, out_params, operation, name
        self.preamble, self.loop_prep, self.after_loop = preamble, loop_prep, after_loop
        self.reduce_dims = reduce_dims
        self._kernel = None
        KERNELS.append(self)

    def build(self, cupy):
        """The ``cupy.ElementwiseKernel`` (constructing one compiles nothing: CuPy compiles per
        argument dtypes at the first launch)."""
        return cupy.ElementwiseKernel(
            self.in_params, self.out_params, self.operation, self.name, reduce_dims=self.reduce_dims,
            preamble=self.preamble, loop_prep=self.loop_prep, after_loop=self.after_loop)

    def __call__(self, *args, **kwargs):
        if self._kernel is None:
            self._kernel = self.build(_import_cupy())
        return self._kernel(*args, **kwargs)

    def __repr__(self):
        return f"ElementwiseKernel({self.name!r})"


def set_tf32(enabled):
    """Let CuPy's float32 matrix products (the cuBLAS GEMMs behind every convolution and linear
    layer) use TF32 tensor cores (Ampere and newer): several times faster, with inputs rounded to
    a 10-bit mantissa. Off by default, as CuPy has it (``CUPY_TF32`` unset): float32 products are
    then float32, as on NumPy. CuPy reads ``CUPY_TF32`` at its first float32 matrix product, so
    this acts only before that; NumPy ignores it."""
    os.environ["CUPY_TF32"] = "1" if enabled else "0"


def cupy_available():
    """True when CuPy imports and sees at least one GPU."""
    try:
        _import_cupy()
        return True
    except BackendError:
        return False


def get_module(name):
    """The array module for a backend name: ``numpy`` or ``cupy``."""
    if name == "numpy":
        return numpy
    if name == "cupy":
        return _import_cupy()
    raise ValueError(f"unknown backend {name!r}; valid backends are {', '.join(_BACKENDS)}")


def set_backend(name):
    """Set the default backend for new tensors and parameters (``numpy`` or ``cupy``)."""
    global _default
    get_module(name)  # fail now, with the install hint, not at first use
    _default = name


def get_backend():
    """Name of the default backend (``MINIRES_BACKEND`` sets it at start-up)."""
    global _default
    if _default is None:
        name = os.environ.get("MINIRES_BACKEND", "numpy").strip().lower() or "numpy"
        if name not in _BACKENDS:
            raise ValueError(f"MINIRES_BACKEND={name!r} is not a backend; use one of {', '.join(_BACKENDS)}")
        _default = name
    return _default


def default_module():
    return get_module(get_backend())


class HoldsArray:
    """Base of the classes whose ``.data`` is an array (``autograd.Tensor``), which the functions
    here look through. A base class rather than Tensor itself: autograd sits above this module."""

    __slots__ = ()


def unwrap(a):
    """The array inside a Tensor; anything else as it is (a CuPy array's ``.data`` is a pointer)."""
    return a.data if isinstance(a, HoldsArray) else a


def get_array_module(*arrays):
    """NumPy or CuPy, whichever the arrays belong to (NumPy when none is a CuPy array).

    Tensors are looked through to their ``.data``.
    """
    for a in arrays:
        a = unwrap(a)
        if type(a).__module__.startswith("cupy"):
            return _import_cupy()
    return numpy


def backend_of(a):
    """'cupy' or 'numpy' for one array."""
    return "cupy" if get_array_module(a) is not numpy else "numpy"


def to_numpy(a):
    """A NumPy copy (or view) of a NumPy or CuPy array, or of a Tensor."""
    a = unwrap(a)
    if isinstance(a, numpy.ndarray):
        return a
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return numpy.asarray(a)


def to_backend(a, name):
    """Move an array to backend ``name``; returns the array itself when it is already there."""
    xp = get_module(name)
    if backend_of(a) == name:
        return a
    if xp is numpy:
        return to_numpy(a)
    return xp.asarray(a)
