"""``save(obj, path)`` and ``load(path)``: state dicts and checkpoints as ``.npz`` files.

``obj`` is a dict whose values are arrays (NumPy or CuPy), Tensors, numbers, strings, None,
and lists, tuples and dicts of those, e.g. a training checkpoint

    {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3, "rng": {...}}

File layout: every array is one member of the .npz, named by its path in ``obj`` with "/"
between the levels (``model/layer1.0.conv1.weight``, ``optimizer/state/0/momentum_buffer``;
a flat state dict keeps its own keys), so ``numpy.load`` reads the arrays with no help from
minires. Everything else goes into one JSON document, member ``__meta__.json``, that records
the nesting and points at the arrays by name. Loading uses ``allow_pickle=False``: opening a
file runs no code from it.

The file is written atomically (``minires.utils.io.atomic_write``), so a crash mid-write leaves
either the old file or the new one, never half of one. A file is read with bounds: an array
whose header claims more bytes than its archive member holds, or metadata nested deeper than
``MAX_DEPTH``, is refused with a ValueError before anything is allocated for it.
"""
import errno
import json
import math
import os
import zipfile
import zlib

import numpy

from . import backend
from .utils.io import atomic_write

META_KEY = "__meta__.json"
FORMAT_VERSION = 1
# A checkpoint nests about six levels deep (optimizer/state/<i>/momentum_buffer); far deeper
# metadata is not a minires file, and decoding it would exhaust Python's recursion limit.
MAX_DEPTH = 100

# Markers in the JSON tree for what JSON has no type for. A dict whose keys are not all strings,
# or that uses one of these names as a key, is written as {"__items__": [[key, value], ...]}.
ARRAY, SCALAR, TUPLE, ITEMS = "__array__", "__scalar__", "__tuple__", "__items__"
MARKERS = (ARRAY, SCALAR, TUPLE, ITEMS)


def _is_array(value):
    return isinstance(value, numpy.ndarray) or type(value).__module__.startswith("cupy")


def _encode(value, path, arrays):
    """``value`` as JSON-compatible data; arrays are moved to ``arrays`` under their path name."""
    where = "/".join(path) or "<root>"
    value = backend.unwrap(value)
    if _is_array(value) or isinstance(value, numpy.generic):
        array = numpy.asarray(backend.to_numpy(value))
        if array.dtype.hasobject:
            raise TypeError(f"save: object array at {where!r} cannot be stored without pickle")
        name = "/".join(path)
        if name in arrays or name == META_KEY:
            raise ValueError(f"save: two entries map to the archive name {name!r}; rename a key")
        arrays[name] = array
        return {SCALAR if isinstance(value, numpy.generic) else ARRAY: name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        if all(isinstance(k, str) and k not in MARKERS for k in value):
            return {k: _encode(v, path + [k], arrays) for k, v in value.items()}
        items = []
        for k, v in value.items():
            k = k.item() if isinstance(k, numpy.generic) else k  # a NumPy int key is stored as an int
            items.append([_encode(k, path, {}), _encode(v, path + [str(k)], arrays)])
        return {ITEMS: items}
    if isinstance(value, list):
        return [_encode(v, path + [str(i)], arrays) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {TUPLE: [_encode(v, path + [str(i)], arrays) for i, v in enumerate(value)]}
    raise TypeError(f"save: cannot store a {type(value).__name__} at {where!r}; use arrays, numbers, "
                    f"strings, None, and lists, tuples or dicts of them")


def _decode(data, arrays, depth=0):
    """The inverse of ``_encode``."""
    if depth > MAX_DEPTH:
        raise ValueError(f"the metadata is nested more than {MAX_DEPTH} levels deep")
    depth += 1
    if isinstance(data, list):
        return [_decode(v, arrays, depth) for v in data]
    if not isinstance(data, dict):
        return data
    if len(data) == 1:
        (marker, content), = data.items()
        if marker == ARRAY:
            return arrays[content]
        if marker == SCALAR:
            return arrays[content][()]
        if marker == TUPLE:
            return tuple(_decode(v, arrays, depth) for v in content)
        if marker == ITEMS:
            return {_hashable(_decode(k, arrays, depth)): _decode(v, arrays, depth) for k, v in content}
    return {k: _decode(v, arrays, depth) for k, v in data.items()}


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


def _write_npz(f, arrays):
    """An .npz archive (what ``numpy.savez`` writes) of the named arrays, into the open file ``f``."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(name + ".npy", "w", force_zip64=True) as member:
                numpy.lib.format.write_array(member, array, allow_pickle=False)


def save(obj, path):
    """Write the dict ``obj`` (a state dict, or a checkpoint of nested dicts) to ``path`` as .npz.

    CuPy arrays are copied to the host. ``path`` is used as given (no ".npz" is appended).
    """
    if not isinstance(obj, dict):
        raise TypeError(f"save expects a dict (a state dict or a checkpoint), got {type(obj).__name__}")
    path = os.fspath(path)
    arrays = {}
    tree = _encode(obj, [], arrays)
    meta = json.dumps({"format": "minires", "version": FORMAT_VERSION, "tree": tree})
    arrays[META_KEY] = numpy.array(meta)

    with atomic_write(path) as f:
        _write_npz(f, arrays)


def _read_member(archive, info):
    """One .npy member of an open zip archive, refused if its header claims more than it holds."""
    with archive.open(info) as f:
        version = numpy.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = numpy.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = numpy.lib.format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise ValueError(f"member {info.filename!r} holds Python objects, which only pickle can read")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > info.file_size:
        raise ValueError(f"member {info.filename!r} claims an array of shape {shape} ({claimed:,} bytes) "
                         f"but holds {info.file_size:,} bytes")
    with archive.open(info) as f:
        return numpy.lib.format.read_array(f, allow_pickle=False)


def _read_npz(path):
    """The arrays of an .npz archive by name (without ".npy"), each checked by ``_read_member``."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            magic = f.read(6)
        raise ValueError("it holds a single .npy array, not an .npz archive" if magic == b"\x93NUMPY"
                         else "it is not a zip archive")
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            arrays[name] = _read_member(archive, info)
    return arrays


def load(path):
    """Read what ``save`` wrote: the same nesting, with NumPy arrays.

    A plain .npz without minires' metadata loads as a flat dict of its arrays. A missing file
    raises FileNotFoundError; a file that is not a readable archive raises ValueError; both name
    the path.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such checkpoint file", path)
    try:
        arrays = _read_npz(path)
        if META_KEY not in arrays:
            return arrays
        meta = json.loads(str(arrays.pop(META_KEY)))
        if not isinstance(meta, dict):
            raise ValueError(f"the metadata is a {type(meta).__name__}, not a dict")
        if meta.get("format") != "minires" or meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"unknown format {meta.get('format')!r} version {meta.get('version')!r}")
        return _decode(meta["tree"], arrays)
    except RecursionError:  # json.loads of metadata nested thousands deep
        raise ValueError(f"cannot load {path!r}: not a valid minires .npz file (its metadata is nested "
                         f"more than {MAX_DEPTH} levels deep)") from None
    except (ValueError, EOFError, KeyError, TypeError, AttributeError, IndexError, zipfile.BadZipFile,
            zipfile.LargeZipFile, NotImplementedError, zlib.error) as e:
        raise ValueError(f"cannot load {path!r}: not a valid minires .npz file "
                         f"({type(e).__name__}: {e})") from e
