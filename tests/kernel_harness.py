"""Checking minires's CuPy kernels on a machine without a GPU.

A ``backend.ElementwiseKernel`` is only strings until CuPy turns it into CUDA source for the
argument types of a call. This module asks CuPy's own code generator for that source, exactly as a
call with the given arguments would (the same parameter types, the same ``reduce_dims``, the same
typedefs), and then

- ``compile_nvrtc``: compiles it with NVRTC for a given architecture, with CuPy's own header and
  compiler options (NVRTC needs no driver);
- ``run_on_cpu``: compiles it as plain C++ with g++ (the CUDA keywords defined away by a small
  header of stand-ins) and runs it through ctypes on NumPy arrays. Each "thread" is one call of the
  kernel with a grid of one-element blocks, so the elements can be visited in any order: in order,
  reversed and shuffled. A kernel whose thread writes another thread's element, or reads an element
  another thread writes, gives different results in different orders.

Kernels with shared memory, ``__syncthreads`` or atomics do not compile here, on purpose: minires's
kernels are elementwise, and reductions are left to CuPy's reduction machinery.

Everything skips (with the reason) where CuPy, the NVRTC wheel or g++ is missing; CI installs them.
"""
import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy
import pytest

ORDERS = ("forward", "reversed", "shuffled")

ARG_NDARRAY, ARG_INDEXER, ARG_SCALAR = 1, 2, 3  # CuPy's _ArgKind

# What the CUDA compiler knows and g++ does not. One thread at a time: threadIdx is 0, a block is
# one thread, and the grid has one block per element, so that CUPY_FOR runs once per call.
STAND_INS = r"""
#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <algorithm>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
struct minires_dim3 { unsigned int x, y, z; };
static minires_dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
static inline unsigned int __popc(unsigned int x) { return __builtin_popcount(x); }
static inline unsigned long long __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
static inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
static inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
using std::min; using std::max; using std::sqrt; using std::exp; using std::log; using std::abs;
using std::isnan; using std::isinf; using std::isfinite;
"""

_CTYPES = {"float32": "float", "float64": "double", "int8": "signed char", "uint8": "unsigned char",
           "int16": "short", "uint16": "unsigned short", "int32": "int", "uint32": "unsigned int",
           "int64": "long long", "uint64": "unsigned long long", "bool": "bool"}


def _cupy():
    cupy = pytest.importorskip("cupy", reason="kernel tests need CuPy (no GPU needed), which is not installed")
    from cupy._core import _kernel
    return cupy, _kernel


def _cupy_kernel(kernel):
    cupy, _ = _cupy()
    return kernel.build(cupy)


def _ctype(dtype):
    return _CTYPES[numpy.dtype(dtype).name]


class _Call:
    """What a CuPy call of ``kernel`` with ``args`` would launch: the arguments after broadcasting
    and ``reduce_dims``, their types, and CuPy's generated source."""

    def __init__(self, kernel, args, size=None):
        cupy, K = _cupy()
        from cupy._core import _carray, _scalar
        ck = _cupy_kernel(kernel)
        params = ck.in_params + ck.out_params
        if len(args) != len(params):
            raise TypeError(f"{kernel.name}: give every input and output ({len(params)} arguments), "
                            f"got {len(args)}")
        is_array = [isinstance(a, numpy.ndarray) for a in args]
        for p, a, arr in zip(params, args, is_array):
            if not arr and p in ck.out_params:
                raise TypeError(f"{kernel.name}: output {p.name} must be a NumPy array")
        in_dtypes = tuple(a.dtype if arr else None for a, arr in zip(args[:ck.nin], is_array))
        out_dtypes = tuple(a.dtype for a in args[ck.nin:])
        in_types, out_types, type_map = K._decide_params_type(ck.in_params, ck.out_params, in_dtypes, out_dtypes)
        types = in_types + out_types

        elementwise = [a for p, a, arr in zip(params, args, is_array) if arr and not p.raw]
        if size is None:
            if not elementwise:
                raise ValueError(f"{kernel.name}: every array is raw, so give size=")
            shape = elementwise[0].shape
            for a in elementwise:
                if a.shape != shape or not a.flags.c_contiguous:
                    raise ValueError(f"{kernel.name}: minires's kernels take non-raw arrays of one shape, "
                                     f"C-contiguous; got {a.shape} beside {shape}")
        else:
            if elementwise:
                raise ValueError(f"{kernel.name}: size= only when every array is raw")
            shape = (int(size),)
        if kernel.reduce_dims and len(shape) > 1:
            shape = (int(numpy.prod(shape)),)  # CuPy views same-shape contiguous arrays as 1-D
        self.size = int(numpy.prod(shape))

        self.values, arginfos = [], []
        for p, a, arr, t in zip(params, args, is_array, types):
            if arr:
                if not p.raw:
                    a = a.reshape(shape)
                idx32 = a.size * a.itemsize < 2 ** 31
                arginfos.append(K._ArgInfo(ARG_NDARRAY, cupy.ndarray, a.dtype, a.ndim, bool(a.flags.c_contiguous), idx32))
            else:
                a = numpy.asarray(a).astype(t)  # CuPy casts a scalar to its parameter's type
                arginfos.append(K._ArgInfo(ARG_SCALAR, _scalar.CScalar, numpy.dtype(t), 0, True, True))
            self.values.append(a)
        arginfos.append(K._ArgInfo(ARG_INDEXER, _carray.Indexer, None, len(shape), True, self.size < 2 ** 31))
        self.shape, self.params, self.arginfos, self.kernel = shape, params, tuple(arginfos), kernel
        self.source = K._get_elementwise_kernel_code(
            self.arginfos, type_map, ck.params, ck.operation, ck.name, kernel.preamble,
            kernel.loop_prep, kernel.after_loop)

    def c_types(self):
        """The C++ type of each kernel parameter, as CuPy writes it."""
        out = []
        for info in self.arginfos[:-1]:
            if info.arg_kind == ARG_NDARRAY:
                out.append(f"CArray<{_ctype(info.dtype)}, {info.ndim}, {int(info.c_contiguous)}, {int(info.index_32_bits)}>")
            else:
                out.append(_ctype(info.dtype))
        ind = self.arginfos[-1]
        out.append(f"CIndexer<{ind.ndim}, {int(ind.index_32_bits)}>")
        return out


def generated_source(kernel, args, size=None):
    """CuPy's CUDA source for ``kernel`` called with ``args`` (NumPy stand-ins for the arrays)."""
    return _Call(kernel, args, size).source


def compile_nvrtc(kernel, args, arch="sm_90", size=None):
    """Compile CuPy's generated source for this call with NVRTC for ``arch``, as CuPy would
    (its header, its options); returns the cubin. A compile error raises CuPy's CompileException,
    which carries the compiler's message."""
    _cupy()
    from cupy._core import core
    from cupy.cuda import compiler
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
    except Exception as e:  # the NVRTC wheel is missing
        pytest.skip(f"kernel tests need NVRTC, which is not available: {e}")
    header = "".join(f"#include <{h}>\n" for h in core._cupy_header_list)  # as compile_with_cache does
    source = header + _Call(kernel, args, size).source
    options = core.assemble_cupy_compiler_options(()) + (f"-arch={arch}", "--device-as-default-execution-space")
    program = compiler._NVRTCProgram(source, "kern.cu", method="cubin")
    cubin, _ = program.compile(options)
    return cubin


_LIBRARIES = {}


def _shared_library(call):
    """The call's kernel compiled with g++ into a shared library with one entry point, ``run``."""
    cupy, _ = _cupy()
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("kernel tests need g++, which is not installed")
    include = Path(cupy.__file__).parent / "_core" / "include"
    c_types = call.c_types()
    lines = []
    for k, (ctype, info) in enumerate(zip(c_types[:-1], call.arginfos)):
        if info.arg_kind == ARG_NDARRAY:
            lines.append(f"  {ctype} a{k}(({ctype.split('<')[1].split(',')[0]}*)ptrs[{k}], shapes[{k}], strides[{k}]);")
        else:
            lines.append(f"  {ctype} a{k} = *({ctype}*)ptrs[{k}];")
    names = ", ".join(f"a{k}" for k in range(len(c_types) - 1))
    wrapper = f"""
extern "C" void run(void** ptrs, const long long** shapes, const long long** strides,
                    const long long* ind_shape, const long long* order, long long n) {{
{chr(10).join(lines)}
  {c_types[-1]} ind(ind_shape);
  gridDim.x = (unsigned int)n;
  for (long long k = 0; k < n; ++k) {{
    blockIdx.x = (unsigned int)order[k];
    {call.kernel.name}({names}, ind);
  }}
}}
"""
    source = STAND_INS + '#include "cupy/carray.cuh"\n' + call.source + wrapper
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    if key not in _LIBRARIES:
        folder = Path(tempfile.mkdtemp(prefix="minires-kernel-"))
        cpp, lib = folder / "kernel.cpp", folder / "kernel.so"
        cpp.write_text(source)
        done = subprocess.run([gxx, "-std=c++17", "-O1", "-ffp-contract=off", "-fPIC", "-shared", "-w",
                               f"-I{include}", str(cpp), "-o", str(lib)], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"g++ could not compile {call.kernel.name}'s generated source:\n"
                               + done.stderr[-4000:])
        _LIBRARIES[key] = ctypes.CDLL(str(lib))
    return _LIBRARIES[key]


def run_on_cpu(kernel, args, order="forward", size=None, seed=0):
    """Run ``kernel`` on NumPy arrays through CuPy's generated source compiled by g++.

    ``args`` are the inputs then the outputs, as in a CuPy call (scalars typed, outputs given).
    Elements are visited ``order``-ly ("forward", "reversed" or "shuffled" with ``seed``). Inputs
    are not changed; the outputs are returned as new arrays (a tuple when there are several).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    args = [a.copy() if isinstance(a, numpy.ndarray) else a for a in args]  # outputs are written
    call = _Call(kernel, args, size)
    lib = _shared_library(call)
    n = call.size
    visit = numpy.arange(n, dtype=numpy.int64)
    if order == "reversed":
        visit = visit[::-1].copy()
    elif order == "shuffled":
        numpy.random.default_rng(seed).shuffle(visit)
    keep = []  # the ctypes buffers must outlive the call
    ptrs = (ctypes.c_void_p * len(call.values))()
    shapes = (ctypes.POINTER(ctypes.c_longlong) * len(call.values))()
    strides = (ctypes.POINTER(ctypes.c_longlong) * len(call.values))()
    for k, v in enumerate(call.values):
        if not isinstance(v, numpy.ndarray) or v.ndim == 0:
            v = numpy.ascontiguousarray(v)
            call.values[k] = v
        ptrs[k] = v.ctypes.data
        shape = numpy.array(v.shape or (1,), dtype=numpy.int64)
        stride = numpy.array(v.strides or (v.itemsize,), dtype=numpy.int64)
        keep += [shape, stride]
        shapes[k] = shape.ctypes.data_as(ctypes.POINTER(ctypes.c_longlong))
        strides[k] = stride.ctypes.data_as(ctypes.POINTER(ctypes.c_longlong))
    ind_shape = numpy.array(call.shape, dtype=numpy.int64)
    lib.run(ptrs, shapes, strides, ind_shape.ctypes.data_as(ctypes.POINTER(ctypes.c_longlong)),
            visit.ctypes.data_as(ctypes.POINTER(ctypes.c_longlong)), ctypes.c_longlong(n))
    nin = len(call.params) - len(_cupy_kernel(kernel).out_params)
    outs = tuple(args[nin:])  # the reshaped views in call.values write into these arrays
    return outs[0] if len(outs) == 1 else outs


# Imports every module of minires (optional dependencies may be missing) and prints what it is
# asked for. In a child process: importing every submodule binds the package's attributes to them
# (minires.predict becomes the command-line module) for the rest of the interpreter's life.
IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
import minires
from minires import backend
for info in pkgutil.walk_packages(minires.__path__, "minires."):
    if info.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(info.name)
    except ImportError:
        pass
print(json.dumps({"kernels": [k.name for k in backend.KERNELS], "cupy_imported": "cupy" in sys.modules}))
"""


def import_everything():
    """{"kernels": the names of every kernel minires defines, "cupy_imported": whether importing
    every module of minires imported CuPy}, from a fresh interpreter."""
    import json
    import sys
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    if done.returncode:
        raise RuntimeError(f"importing every module of minires failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
