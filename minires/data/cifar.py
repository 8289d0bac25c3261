"""CIFAR-10: find it on disk (or fetch it), unpickle it safely, return NumPy arrays.

The dataset is the official "python version": a folder ``cifar-10-batches-py`` holding
``data_batch_1`` .. ``data_batch_5`` (10,000 training images each), ``test_batch`` (10,000 test
images) and ``batches.meta`` (class names). Each batch is a Python-2 pickle of a dict with
``b"data"`` (uint8, (10000, 3072), channel-planar rows: 1024 R, 1024 G, 1024 B values) and
``b"labels"`` (10000 ints in 0..9).

A pickle can name any Python callable and have it run while loading, so the batches are read
with ``SafeUnpickler``, which only lets through what a NumPy array needs.
"""
import codecs
import gzip
import hashlib
import os
import pickle
import reprlib
import shutil
import tarfile
import urllib.request
import zlib
from pathlib import Path

import numpy
from tqdm import tqdm

from ..utils.io import atomic_write, remove_stale_temporaries, temporary_path

try:  # NumPy >= 2 moved the array internals to numpy._core
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core import multiarray as _multiarray

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_URL", "CIFAR10_MD5", "FOLDER_NAME", "ARCHIVE_NAME",
    "DatasetNotFoundError", "CorruptArchiveError", "UnsafePickleError", "SafeUnpickler",
    "find_cifar10", "download_url", "extract_archive", "open_url", "default_cache_dir",
    "load_batch", "load_class_names", "load_cifar10",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER_NAME = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
REQUIRED_FILES = TRAIN_FILES + (TEST_FILE,)

# The label names stored in batches.meta, in label order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


class DatasetNotFoundError(RuntimeError):
    """CIFAR-10 is in none of the places searched and could not be fetched."""


class CorruptArchiveError(DatasetNotFoundError):
    """An archive that is truncated, fails its checksum or holds unsafe member paths."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global that SafeUnpickler does not allow (it was not called)."""


# ----------------------------------------------------------------------------------------------
# Safe unpickling
# ----------------------------------------------------------------------------------------------

def _empty_bytes():
    """``bytes()`` as a pickle calls it for b"": no argument, so no size to allocate is accepted."""
    return b""


# Everything a CIFAR batch pickle may construct, keyed by (module, name) as written in the file.
# Old pickles say numpy.core, NumPy 2 writes numpy._core; both map to the same objects here, so
# nothing is imported by name while loading.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy", "ndarray"): numpy.ndarray,
    ("numpy", "dtype"): numpy.dtype,
    # Protocol-2 pickles written by Python 3 store raw array bytes as _codecs.encode(str, "latin1"),
    # and an empty bytes object (the data of an empty array) as a call of bytes().
    ("_codecs", "encode"): codecs.encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


_BYTE_ORDERS = ("<", ">", "|", "=", b"<", b">", b"|", b"=")


class SafeUnpickler(pickle._Unpickler):
    """An unpickler that can rebuild NumPy arrays, dicts, lists, strings and numbers, and nothing else.

    Any other global named in the stream (``os.system``, ``builtins.eval``, ...) raises
    ``UnsafePickleError`` (a ``pickle.UnpicklingError``) before it can be called.

    A dtype's pickled state carries NumPy's internal fields (flags, sizes, fields), which NumPy
    trusts: forged ones made it print tracebacks from its internals, or load a uint8 array it
    treats as holding Python objects. So the state a dtype is built with (BUILD) must be NumPy's
    own for its type, but for the byte order. That check needs the pure-Python unpickler (the C
    one has no hook there); a CIFAR batch is one long string and 10,000 small ints, which it reads
    as fast.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: a CIFAR-10 batch only needs NumPy arrays") from None

    def load_build(self):
        inst, state = self.stack[-2], self.stack[-1]
        if isinstance(inst, numpy.dtype):
            own = inst.__reduce__()[2]  # the state of a fresh dtype of this type
            if not (isinstance(state, tuple) and len(state) == len(own) and state[1] in _BYTE_ORDERS
                    and state[:1] + state[2:] == own[:1] + own[2:]):
                raise UnsafePickleError(f"refusing a forged NumPy dtype: the state {reprlib.repr(state)} is not "
                                        f"NumPy's own for {inst} ({own!r})")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def _safe_load(path):
    """Unpickle the file at ``path`` with SafeUnpickler; errors name the file."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"CIFAR-10 file not found: {path}") from None
    with f:
        try:
            return SafeUnpickler(f, encoding="bytes").load()
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: {e}") from None
        except Exception as e:  # EOFError, UnpicklingError ... from a truncated or foreign file
            raise ValueError(f"{path} is not a readable CIFAR-10 pickle (truncated or corrupt?): "
                             f"{type(e).__name__}: {e}") from None


def _get(d, key, path):
    """d[b"key"] (how the originals store it) or d["key"] (a pickle written by Python 3)."""
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise ValueError(f"{path}: no {key!r} entry; the keys are {sorted(map(repr, d))}")


def load_batch(path):
    """Load one CIFAR-10 batch file.

    Returns ``(x, y)``: x uint8 of shape (N, 3, 32, 32) (NCHW), y int64 of shape (N,) with
    values in 0..9. Raises FileNotFoundError, ValueError or pickle.UnpicklingError naming the
    file when it is missing or malformed, UnsafePickleError (a pickle.UnpicklingError) when it
    names a global other than NumPy's array internals.
    """
    d = _safe_load(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a dict, found {type(d).__name__}")
    data = _get(d, "data", path)
    labels = _get(d, "labels", path)
    if not isinstance(data, numpy.ndarray) or data.dtype != numpy.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise ValueError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), "
                         f"found {dtype} with shape {shape}")
    y = _labels(labels, data.shape[0], path)
    # Rows are channel-planar, row-major: a reshape gives NCHW without copying.
    x = data.reshape(-1, 3, 32, 32)
    return x, y


def _labels(labels, n, path):
    """``labels`` as int64 of shape (n,), or a ValueError naming the file: a list or array of
    integers in 0..9, nothing else (no floats, which would be truncated, no strings, no None)."""
    if not isinstance(labels, (list, numpy.ndarray)):
        raise ValueError(f"{path}: 'labels' must be a list of integers, found {type(labels).__name__}")
    kinds = {type(v).__name__ for v in labels if not isinstance(v, (int, numpy.integer)) or isinstance(v, bool)} \
        if isinstance(labels, list) else set()
    if kinds:
        raise ValueError(f"{path}: 'labels' must be integers in 0..9, found {', '.join(sorted(kinds))} values")
    if isinstance(labels, numpy.ndarray) and labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: 'labels' must be integers in 0..9, found an array of {labels.dtype}")
    if len(labels) != n:
        raise ValueError(f"{path}: {n} images but {len(labels)} labels")
    # Python ints of any size: compare before converting, so 2**70 is reported, not an OverflowError.
    bad = [v for v in labels if not 0 <= v <= 9]
    if bad:
        raise ValueError(f"{path}: labels must lie in 0..9, found {bad[0]}")
    y = numpy.array(labels, dtype=numpy.int64)
    return y.reshape(n)


def load_class_names(folder):
    """The ten class names from ``folder/batches.meta``, or CIFAR10_CLASSES when it is absent."""
    path = Path(folder) / META_FILE
    if not path.exists():
        return CIFAR10_CLASSES
    d = _safe_load(path)
    names = _get(d, "label_names", path) if isinstance(d, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise ValueError(f"{path}: 'label_names' must be a list of 10 names")
    try:
        return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: the label names must be text (UTF-8), found {e.object!r}") from None


def load_cifar10(data_dir=None, download=False):
    """Load the whole of CIFAR-10 as NumPy arrays.

    Returns ``(x_train, y_train, x_test, y_test)``: uint8 images (N, 3, 32, 32) and int64 labels
    (N,), with N = 50000 and 10000 for the official data. ``data_dir`` and ``download`` are
    passed to ``find_cifar10``.
    """
    folder = find_cifar10(data_dir, download=download)
    train = [load_batch(folder / name) for name in TRAIN_FILES]
    x_train = numpy.concatenate([x for x, _ in train])
    y_train = numpy.concatenate([y for _, y in train])
    del train
    x_test, y_test = load_batch(folder / TEST_FILE)
    return x_train, y_train, x_test, y_test


# ----------------------------------------------------------------------------------------------
# Finding the data
# ----------------------------------------------------------------------------------------------

def default_cache_dir():
    """``$XDG_CACHE_HOME/minires``, or ``~/.cache/minires`` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "minires"


def _missing_files(folder):
    """The required batch files that ``folder`` lacks (all of them when it is not a folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return list(REQUIRED_FILES)
    return [name for name in REQUIRED_FILES if not (folder / name).is_file()]


def _candidates(data_dir):
    """(folder, why it is searched) in search order."""
    places = []
    if data_dir is not None:
        places.append((Path(data_dir).expanduser(), "data_dir argument"))
    if os.environ.get("MINIRES_DATA"):
        places.append((Path(os.environ["MINIRES_DATA"]).expanduser(), "$MINIRES_DATA"))
    places.append((default_cache_dir(), "user cache"))
    return places


def _look_in(place):
    """The CIFAR-10 folder found in ``place``, or None, and a note on what was seen there.

    ``place`` may be the batches folder itself, hold it, or hold the .tar.gz archive (which is
    then extracted beside it, once).
    """
    if not place.exists():
        return None, "does not exist"
    if not place.is_dir():
        return None, "is not a folder"
    missing_here = _missing_files(place)
    if not missing_here:
        return place, "found"
    folder = place / FOLDER_NAME
    missing = _missing_files(folder)
    if not missing:
        return folder, "found"
    archive = place / ARCHIVE_NAME
    if archive.is_file():
        return extract_archive(archive, place), "extracted"
    if folder.exists():
        return None, f"{folder} lacks {', '.join(missing)}"
    if len(missing_here) < len(REQUIRED_FILES):  # place is itself a partial batches folder
        return None, f"lacks {', '.join(missing_here)}"
    return None, f"no {FOLDER_NAME}/ or {ARCHIVE_NAME} inside"


def find_cifar10(data_dir=None, download=False):
    """Path of the ``cifar-10-batches-py`` folder.

    Searched in order: ``data_dir``, ``$MINIRES_DATA``, then the user cache
    (``$XDG_CACHE_HOME/minires`` or ``~/.cache/minires``). Each place may be the batches folder
    itself, a folder holding ``cifar-10-batches-py/``, or a folder holding
    ``cifar-10-python.tar.gz`` (extracted there on first use). When nothing is found and
    ``download`` is true, the official archive is fetched into the first of those places
    (md5-checked) and extracted; otherwise DatasetNotFoundError lists where it looked.
    """
    places = _candidates(data_dir)
    notes = []
    for place, why in places:
        folder, note = _look_in(place)
        if folder is not None:
            return folder
        notes.append(f"  - {place} ({why}): {note}")

    target = places[0][0]
    if not download:
        raise DatasetNotFoundError(
            "CIFAR-10 not found. Looked in:\n" + "\n".join(notes) + "\n"
            f"Fix: put the {FOLDER_NAME}/ folder or {ARCHIVE_NAME} in one of these places and "
            "point to it with --data-dir PATH (data_dir=PATH) or MINIRES_DATA=PATH, or pass "
            f"--download (download=True) to fetch it from {CIFAR10_URL} into {target}.")
    _refuse_incomplete(target / FOLDER_NAME)  # before spending a 170 MB download on it
    download_url(CIFAR10_URL, target / ARCHIVE_NAME, md5=CIFAR10_MD5)
    return extract_archive(target / ARCHIVE_NAME, target)


# ----------------------------------------------------------------------------------------------
# Downloading and extracting
# ----------------------------------------------------------------------------------------------

def open_url(url, timeout=60):
    """Open ``url`` for reading. Tests replace this function to download without a network."""
    return urllib.request.urlopen(url, timeout=timeout)


def download_url(url, path, md5=None, opener=None, chunk_size=1 << 20):
    """Download ``url`` to ``path`` and return the path.

    The bytes go to a temporary file beside ``path``; only when the download is complete (and
    its md5 equals ``md5``, if given) is it renamed into place, so ``path`` is never left half
    written. ``opener(url)`` returns a file-like response (default: ``open_url``). Network errors
    raise DatasetNotFoundError, a wrong checksum CorruptArchiveError; no partial file remains.
    """
    path = Path(path)
    opener = opener or open_url
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)  # what an interrupted download left
    how_to_fix = (f"Download {url} by hand and put it at {path} (or put the extracted "
                  f"{FOLDER_NAME}/ folder in {path.parent}).")
    with atomic_write(path) as f:
        digest = hashlib.md5()
        try:
            with opener(url) as response:
                headers = getattr(response, "headers", None) or {}
                total = int(headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=path.name) as bar:
                    while True:
                        chunk = response.read(chunk_size)
                        if not chunk:
                            break
                        f.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except OSError as e:  # URLError, timeouts and connection resets are all OSErrors
            raise DatasetNotFoundError(f"could not download {url}: {e}. {how_to_fix}") from None
        if md5 is not None and digest.hexdigest() != md5:
            raise CorruptArchiveError(
                f"the download of {url} is corrupt or truncated (md5 {digest.hexdigest()}, "
                f"expected {md5}). Try again, or: {how_to_fix}")
    return path


def _check_member(member, archive):
    """Refuse archive members that could write outside the extraction folder."""
    name = member.name
    parts = Path(name).parts
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts:
        raise CorruptArchiveError(f"{archive}: refusing unsafe member path {name!r}")
    if not (member.isfile() or member.isdir()):
        raise CorruptArchiveError(f"{archive}: refusing member {name!r}: only plain files and "
                                  f"folders are allowed (no links or devices)")


def _refuse_incomplete(folder):
    """An incomplete batches folder would block the extraction: say so instead of overwriting it."""
    missing = _missing_files(folder)
    if folder.exists() and missing:
        raise DatasetNotFoundError(
            f"{folder} exists but lacks {', '.join(missing)}; remove the incomplete folder so the "
            f"archive can be extracted there, and try again")


def extract_archive(archive, dest_dir):
    """Extract ``cifar-10-python.tar.gz`` into ``dest_dir`` and return ``dest_dir/cifar-10-batches-py``.

    Members with absolute paths, ``..`` or links are refused. Everything is unpacked into a
    temporary folder inside ``dest_dir`` and the finished batches folder is renamed into place,
    so an interrupted or corrupt extraction leaves nothing behind. Raises CorruptArchiveError.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    target = dest_dir / FOLDER_NAME
    _refuse_incomplete(target)
    remove_stale_temporaries(dest_dir, FOLDER_NAME, folders=True)  # what an interrupted extraction left
    tmp = Path(temporary_path(target))
    try:
        tmp.mkdir()
    except OSError as e:
        raise DatasetNotFoundError(f"cannot extract {archive}: {dest_dir} is not writable ({e}); "
                                   f"extract it by hand or copy it to a writable folder") from None
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                # One streaming pass: each member is checked before it is written.
                for member in tar:
                    _check_member(member, archive)
                    if hasattr(tarfile, "data_filter"):  # Python >= 3.12 and recent 3.10/3.11
                        tar.extract(member, tmp, filter="data")
                    else:  # pragma: no cover - older Pythons; _check_member already vetted it
                        tar.extract(member, tmp)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise CorruptArchiveError(f"{archive} is corrupt or truncated ({type(e).__name__}: {e}); "
                                      f"delete it and download it again") from None
        missing = _missing_files(tmp / FOLDER_NAME)
        if missing:
            raise CorruptArchiveError(f"{archive} does not hold {FOLDER_NAME}/ with "
                                      f"{', '.join(missing)}")
        try:
            os.rename(tmp / FOLDER_NAME, target)
        except OSError as e:
            # Another process may have finished the same extraction first: then use its result.
            if _missing_files(target):
                raise DatasetNotFoundError(f"cannot move the extracted files to {target}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
