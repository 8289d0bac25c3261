"""Tests for minires.data: safe loading, finding/downloading/extracting, transforms, the loader."""
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minires.data import (CIFAR10_CLASSES, ArrayLoader, CorruptArchiveError, DatasetNotFoundError,
                          SafeUnpickler, UnsafePickleError, channel_stats, crop_flip, draw_crop_flip, find_cifar10,
                          load_batch, load_cifar10, make_cifar10_loaders, normalize, pixel_mean,
                          random_crop_flip)
from minires.data import cifar

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]


# ------------------------------------------------------------------------------------------------
# Helpers: small batches in the official format
# ------------------------------------------------------------------------------------------------

def write_batch(path, data, labels, label=b"training batch 1 of 5"):
    """A batch pickle like the originals: protocol 2, bytes keys."""
    d = {b"batch_label": label, b"labels": [int(v) for v in labels], b"data": data,
         b"filenames": [b"img_%05d.png" % i for i in range(len(labels))]}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def make_fake_cifar(folder, n=4, seed=0):
    """Write a complete small CIFAR-10 folder (n images per batch); return (x_train, y_train, x_test, y_test)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for name in TRAIN_FILES + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n)
        write_batch(folder / name, data, labels)
        xs.append(data.reshape(n, 3, 32, 32))
        ys.append(labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"num_cases_per_batch": n, b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                     b"num_vis": 3072}, f, protocol=2)
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def make_archive(archive, source_folder):
    """A tar.gz holding cifar-10-batches-py/ like the official one."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source_folder, arcname="cifar-10-batches-py")
    return archive


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """No MINIRES_DATA, and the user cache inside tmp_path."""
    monkeypatch.delenv("MINIRES_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


# ------------------------------------------------------------------------------------------------
# Safe unpickling and load_batch
# ------------------------------------------------------------------------------------------------

class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_safe_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil(marker)}, protocol=2))
    with pytest.raises(UnsafePickleError, match="system") as info:
        load_batch(path)
    assert isinstance(info.value, pickle.UnpicklingError)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_safe_unpickler_refuses_builtins_and_allows_arrays():
    with pytest.raises(pickle.UnpicklingError, match="eval"):
        SafeUnpickler(io.BytesIO(pickle.dumps(eval, protocol=2))).load()
    value = {"a": np.arange(5, dtype=np.uint8), "s": np.float32(1.5), "i": np.int64(7)}
    for protocol in (2, 4):  # 2 like the originals; 4 is Python 3's default
        out = SafeUnpickler(io.BytesIO(pickle.dumps(value, protocol=protocol)), encoding="bytes").load()
        assert np.array_equal(out["a"], value["a"]) and out["s"] == 1.5 and out["i"] == 7


def test_load_batch_layout_and_types(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    write_batch(tmp_path / "b", data, [0, 9, 4])
    x, y = load_batch(tmp_path / "b")
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y.tolist() == [0, 9, 4]
    # channel-planar rows: 1024 R, then G, then B, each 32x32 row-major
    i, c, r, col = 2, 1, 5, 7
    assert x[i, c, r, col] == data[i, c * 1024 + r * 32 + col]


def test_load_batch_accepts_str_keys(tmp_path):
    data = np.zeros((2, 3072), np.uint8)
    with open(tmp_path / "b", "wb") as f:
        pickle.dump({"data": data, "labels": [1, 2]}, f, protocol=2)
    x, y = load_batch(tmp_path / "b")
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [1, 2]


@pytest.mark.parametrize("data, labels, message", [
    (np.zeros((2, 3000), np.uint8), [0, 1], "shape"),
    (np.zeros((2, 3072), np.float32), [0, 1], "uint8"),
    (np.zeros((2, 3072), np.uint8), [0, 1, 2], "labels"),
    (np.zeros((2, 3072), np.uint8), [0, 10], "0..9"),
])
def test_load_batch_rejects_bad_contents(tmp_path, data, labels, message):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f, protocol=2)
    with pytest.raises(ValueError, match=message) as info:
        load_batch(path)
    assert str(path) in str(info.value)


# issue 8, items 2 and 3: labels that were a traceback (None, a dict, beyond int64) or silently
# wrong (0.7 truncated to 0, "3" read as 3).
@pytest.mark.parametrize("labels, message", [
    (None, "'labels' must be a list of integers, found NoneType"),
    ({0: 1, 1: 2}, "'labels' must be a list of integers, found dict"),
    ([0, 2**70], "labels must lie in 0..9, found 1180591620717411303424"),
    ([0, -2**70], "labels must lie in 0..9"),
    ([0, 0.7], "must be integers in 0..9, found float values"),
    (["1", "2"], "must be integers in 0..9, found str values"),
    ([b"1", b"2"], "must be integers in 0..9, found bytes values"),
    ([True, False], "must be integers in 0..9, found bool values"),
    (np.array([0.0, 0.7]), "found an array of float64"),
    (np.array(["1", "2"]), "found an array of <U1"),
], ids=["None", "dict", "beyond-int64", "below-int64", "0.7", "str", "bytes", "bool", "float-array", "str-array"])
def test_load_batch_refuses_labels_that_are_not_integers(tmp_path, labels, message):
    path = tmp_path / "data_batch_2"
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, f, protocol=2)
    with pytest.raises(ValueError) as info:
        load_batch(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_an_empty_batch_pickled_with_protocol_2_loads(tmp_path):
    """issue 8, item 2: an empty array's data is pickled at protocol 2 as a call of bytes(),
    which the safe unpickler refused; the file is a valid (if useless) CIFAR-style batch."""
    path = tmp_path / "data_batch_1"
    write_batch(path, np.zeros((0, 3072), np.uint8), [])
    assert b"bytes" in path.read_bytes()  # the protocol-2 form this test is about
    x, y = load_batch(path)
    assert x.shape == (0, 3, 32, 32) and x.dtype == np.uint8
    assert y.shape == (0,) and y.dtype == np.int64


def test_bytes_with_an_argument_is_refused(tmp_path):
    """Only bytes() may be called (the empty array's data): bytes(n) would be an allocation of
    a size chosen by the file."""
    payload = b"\x80\x02c__builtin__\nbytes\nJ\x00\xe4\x0bT\x85R."  # bytes(1410065408): 1.4 GB
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match="data_batch_1"):
        load_batch(path)


def test_load_batch_missing_key_truncated_and_missing_file(tmp_path):
    path = tmp_path / "no_labels"
    with open(path, "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8)}, f, protocol=2)
    with pytest.raises(ValueError, match="labels"):
        load_batch(path)

    good = tmp_path / "good"
    write_batch(good, np.zeros((4, 3072), np.uint8), [0, 1, 2, 3])
    truncated = tmp_path / "truncated"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated") as info:
        load_batch(truncated)
    assert str(truncated) in str(info.value)

    with pytest.raises(FileNotFoundError, match="nothere"):
        load_batch(tmp_path / "nothere")


# ------------------------------------------------------------------------------------------------
# Finding the data
# ------------------------------------------------------------------------------------------------

def test_not_found_lists_places_and_fixes(isolated_env, monkeypatch):
    env_dir = isolated_env / "env"
    env_dir.mkdir()
    monkeypatch.setenv("MINIRES_DATA", str(env_dir))
    with pytest.raises(DatasetNotFoundError) as info:
        find_cifar10(isolated_env / "arg")
    message = str(info.value)
    for place in (isolated_env / "arg", env_dir, isolated_env / "xdg" / "minires"):
        assert str(place) in message
    for fix in ("--data-dir", "MINIRES_DATA", "download"):
        assert fix in message


def test_incomplete_folder_is_reported(isolated_env):
    folder = isolated_env / "d" / "cifar-10-batches-py"
    make_fake_cifar(folder)
    os.remove(folder / "data_batch_3")
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        find_cifar10(isolated_env / "d")
    with pytest.raises(DatasetNotFoundError, match="lacks data_batch_3"):
        find_cifar10(folder)


def test_incomplete_folder_blocks_archive_and_download(isolated_env, monkeypatch):
    place = isolated_env / "place"
    make_fake_cifar(isolated_env / "src", n=1)
    make_fake_cifar(place / "cifar-10-batches-py", n=1)
    os.remove(place / "cifar-10-batches-py" / "test_batch")
    make_archive(place / "cifar-10-python.tar.gz", isolated_env / "src")
    with pytest.raises(DatasetNotFoundError, match="remove the incomplete folder"):
        find_cifar10(place)
    os.remove(place / "cifar-10-python.tar.gz")
    monkeypatch.setattr(cifar, "open_url", lambda url, timeout=60: pytest.fail("downloaded"))
    with pytest.raises(DatasetNotFoundError, match="remove the incomplete folder"):
        find_cifar10(place, download=True)


def test_accepts_folder_itself_or_parent(isolated_env):
    folder = isolated_env / "d" / "cifar-10-batches-py"
    x_train, y_train, x_test, y_test = make_fake_cifar(folder, n=3)
    assert find_cifar10(folder) == folder
    assert find_cifar10(isolated_env / "d") == folder
    loaded = load_cifar10(isolated_env / "d")
    for a, b in zip(loaded, (x_train, y_train, x_test, y_test)):
        assert np.array_equal(a, b)
    assert loaded[0].shape == (15, 3, 32, 32) and loaded[1].dtype == np.int64


def test_search_order(isolated_env, monkeypatch):
    arg, env = isolated_env / "arg", isolated_env / "env"
    cache = isolated_env / "xdg" / "minires"
    for d in (arg, env, cache):
        make_fake_cifar(d / "cifar-10-batches-py", n=1)
    monkeypatch.setenv("MINIRES_DATA", str(env))
    assert find_cifar10(arg) == arg / "cifar-10-batches-py"
    assert find_cifar10() == env / "cifar-10-batches-py"
    monkeypatch.delenv("MINIRES_DATA")
    assert find_cifar10() == cache / "cifar-10-batches-py"
    # a data_dir without the data falls through to the next place
    monkeypatch.setenv("MINIRES_DATA", str(env))
    assert find_cifar10(isolated_env / "empty") == env / "cifar-10-batches-py"


def test_cache_without_xdg_is_home_dot_cache(isolated_env, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    folder = isolated_env / "home" / ".cache" / "minires" / "cifar-10-batches-py"
    make_fake_cifar(folder, n=1)
    assert find_cifar10() == folder


# ------------------------------------------------------------------------------------------------
# Archives
# ------------------------------------------------------------------------------------------------

def test_archive_is_extracted_once(isolated_env, monkeypatch):
    source = isolated_env / "src"
    x_train, *_ = make_fake_cifar(source, n=2)
    place = isolated_env / "place"
    place.mkdir()
    make_archive(place / "cifar-10-python.tar.gz", source)

    folder = find_cifar10(place)
    assert folder == place / "cifar-10-batches-py"
    assert sorted(os.listdir(place)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    assert np.array_equal(load_cifar10(place)[0], x_train)

    def fail(*args):
        raise AssertionError("extracted a second time")
    monkeypatch.setattr(cifar, "extract_archive", fail)
    assert find_cifar10(place) == folder


def test_corrupt_archive_raises_and_leaves_nothing(isolated_env):
    source = isolated_env / "src"
    make_fake_cifar(source, n=2)
    good = make_archive(isolated_env / "good.tar.gz", source)
    place = isolated_env / "place"
    place.mkdir()
    archive = place / "cifar-10-python.tar.gz"
    archive.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CorruptArchiveError, match="corrupt or truncated"):
        find_cifar10(place)
    assert os.listdir(place) == ["cifar-10-python.tar.gz"]


def test_archive_without_batches_is_refused(isolated_env):
    place = isolated_env / "place"
    place.mkdir()
    with tarfile.open(place / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(CorruptArchiveError, match="data_batch_1"):
        find_cifar10(place)
    assert os.listdir(place) == ["cifar-10-python.tar.gz"]


@pytest.mark.parametrize("name, kind", [("../escaped", tarfile.REGTYPE),
                                        ("cifar-10-batches-py/../../escaped", tarfile.REGTYPE),
                                        ("/tmp/minires-absolute-escape", tarfile.REGTYPE),
                                        ("cifar-10-batches-py/link", tarfile.SYMTYPE)])
def test_unsafe_member_is_refused(isolated_env, name, kind):
    place = isolated_env / "a" / "place"
    place.mkdir(parents=True)
    with tarfile.open(place / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(CorruptArchiveError, match="refusing"):
        find_cifar10(place)
    assert os.listdir(place) == ["cifar-10-python.tar.gz"]
    assert not (isolated_env / "a" / "escaped").exists()
    assert not (isolated_env / "escaped").exists()


# ------------------------------------------------------------------------------------------------
# Downloading (no network: open_url is replaced)
# ------------------------------------------------------------------------------------------------

class FakeResponse(io.BytesIO):
    def __init__(self, payload, fail_after=None):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}
        self.fail_after = fail_after

    def read(self, n=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(n)


def test_download_extracts_and_checks_md5(isolated_env, monkeypatch, capsys):
    source = isolated_env / "src"
    x_train, *_ = make_fake_cifar(source, n=2)
    payload = make_archive(isolated_env / "a.tar.gz", source).read_bytes()
    urls = []

    def fake_open(url, timeout=60):
        urls.append(url)
        return FakeResponse(payload)

    monkeypatch.setattr(cifar, "open_url", fake_open)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", hashlib.md5(payload).hexdigest())
    target = isolated_env / "target"
    folder = find_cifar10(target, download=True)
    assert urls == [cifar.CIFAR10_URL]
    assert folder == target / "cifar-10-batches-py"
    assert sorted(os.listdir(target)) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    assert np.array_equal(load_cifar10(target)[0], x_train)
    assert find_cifar10(target, download=True) == folder and len(urls) == 1  # found: no new download


def test_download_goes_to_cache_by_default(isolated_env, monkeypatch):
    source = isolated_env / "src"
    make_fake_cifar(source, n=1)
    payload = make_archive(isolated_env / "a.tar.gz", source).read_bytes()
    monkeypatch.setattr(cifar, "open_url", lambda url, timeout=60: FakeResponse(payload))
    monkeypatch.setattr(cifar, "CIFAR10_MD5", hashlib.md5(payload).hexdigest())
    assert find_cifar10(download=True) == isolated_env / "xdg" / "minires" / "cifar-10-batches-py"


def test_download_md5_mismatch_leaves_nothing(isolated_env, monkeypatch):
    monkeypatch.setattr(cifar, "open_url", lambda url, timeout=60: FakeResponse(b"not an archive" * 1000))
    target = isolated_env / "target"
    with pytest.raises(CorruptArchiveError, match="md5"):
        find_cifar10(target, download=True)
    assert os.listdir(target) == []


@pytest.mark.parametrize("failure", ["offline", "midway"])
def test_failed_download_is_clear_and_leaves_nothing(isolated_env, monkeypatch, failure):
    def fake_open(url, timeout=60):
        if failure == "offline":
            raise urllib.error.URLError("no route to host")
        return FakeResponse(b"x" * 5000, fail_after=1000)

    monkeypatch.setattr(cifar, "open_url", fake_open)
    target = isolated_env / "target"
    with pytest.raises(DatasetNotFoundError, match="could not download") as info:
        find_cifar10(target, download=True)
    assert isinstance(info.value, RuntimeError)
    assert str(target / "cifar-10-python.tar.gz") in str(info.value)  # says where to put it
    assert os.listdir(target) == []


def test_a_new_download_removes_what_an_interrupted_one_left(tmp_path):
    """issue 8, item 4: a download killed midway (kill -9, power loss) leaves its temporary file;
    the next download removes it instead of leaving 170 MB more litter each time."""
    stale = tmp_path / ".f.bin.0123456789ab.tmp"
    stale.write_bytes(b"x" * 1000)
    other = tmp_path / ".g.bin.0123456789ab.tmp"  # another file's: not this download's to remove
    other.write_bytes(b"y")
    payload = b"hello" * 100
    cifar.download_url("http://example.invalid/f", tmp_path / "f.bin", opener=lambda url: FakeResponse(payload))
    assert sorted(os.listdir(tmp_path)) == [".g.bin.0123456789ab.tmp", "f.bin"]


def test_download_url_with_injected_opener(tmp_path):
    payload = b"hello" * 100
    path = cifar.download_url("http://example.invalid/f", tmp_path / "f.bin",
                              md5=hashlib.md5(payload).hexdigest(), opener=lambda url: FakeResponse(payload),
                              chunk_size=64)
    assert path.read_bytes() == payload and os.listdir(tmp_path) == ["f.bin"]


# ------------------------------------------------------------------------------------------------
# Transforms
# ------------------------------------------------------------------------------------------------

def naive_crop_flip(x, offsets, flips, pad):
    """Reference: one image at a time with np.pad and slicing."""
    n, c, h, w = x.shape
    out = np.empty_like(x)
    for i in range(n):
        padded = np.pad(x[i], ((0, 0), (pad, pad), (pad, pad)))
        top, left = offsets[i]
        crop = padded[:, top:top + h, left:left + w]
        out[i] = crop[:, :, ::-1] if flips[i] else crop
    return out


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7),
       pad=st.integers(0, 4), seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["uint8", "float32"]))
def test_crop_flip_matches_naive_loop(n, c, h, w, pad, seed, dtype):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, size=(n, c, h, w)).astype(dtype)
    offsets, flips = draw_crop_flip(n, pad, rng)
    assert np.array_equal(crop_flip(x, offsets, flips, pad), naive_crop_flip(x, offsets, flips, pad))


def test_crop_flip_cifar_size_and_special_cases():
    rng = np.random.default_rng(0)
    x = rng.random((16, 3, 32, 32), dtype=np.float32)
    offsets, flips = draw_crop_flip(16, 4, rng)
    assert np.array_equal(crop_flip(x, offsets, flips), naive_crop_flip(x, offsets, flips, 4))
    centre = np.full((16, 2), 4)
    assert np.array_equal(crop_flip(x, centre, np.zeros(16, bool)), x)
    assert np.array_equal(crop_flip(x, centre, np.ones(16, bool)), x[..., ::-1])
    shifted = crop_flip(x, np.zeros((16, 2), int), np.zeros(16, bool))  # 4 rows/cols of padding
    assert np.all(shifted[:, :, :4] == 0) and np.all(shifted[:, :, :, :4] == 0)
    assert np.array_equal(shifted[:, :, 4:, 4:], x[:, :, :28, :28])
    with pytest.raises(ValueError, match="offsets"):
        crop_flip(x, np.full((16, 2), 9), flips)
    with pytest.raises(ValueError, match="shape"):
        crop_flip(x, offsets[:3], flips)


def test_random_crop_flip_is_seeded():
    x = np.random.default_rng(0).integers(0, 256, size=(64, 3, 32, 32), dtype=np.uint8)
    a = random_crop_flip(x, rng=np.random.default_rng(5))
    b = random_crop_flip(x, rng=np.random.default_rng(5))
    offsets, flips = draw_crop_flip(64, 4, np.random.default_rng(5))
    assert np.array_equal(a, b) and np.array_equal(a, crop_flip(x, offsets, flips))
    assert 10 < flips.sum() < 54 and offsets.min() == 0 and offsets.max() == 8


def test_stats_and_normalize():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 3, 8, 8), dtype=np.uint8)
    mean, std = channel_stats(x, chunk=7)
    xf = x.astype(np.float64)
    assert np.allclose(mean, xf.mean(axis=(0, 2, 3)), rtol=1e-12)
    assert np.allclose(std, xf.std(axis=(0, 2, 3)), rtol=1e-12)
    image = pixel_mean(x)
    assert image.shape == (3, 8, 8) and image.dtype == np.float64
    assert np.allclose(image, xf.mean(axis=0))

    out = normalize(x, mean, std)
    assert out.dtype == np.float32
    assert np.allclose(out, (xf - mean[:, None, None]) / std[:, None, None], atol=1e-5)
    out = normalize(x, image)  # the paper: per-pixel mean only, on our [0, 1] scale
    assert np.allclose(out, (xf - image) / 255, atol=1e-6)
    assert np.allclose(normalize(x, None, dtype="float64"), xf / 255)
    with pytest.raises(ValueError, match="mean must have shape"):
        normalize(x, np.zeros(4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        normalize(x[0], mean)


# ------------------------------------------------------------------------------------------------
# Loader
# ------------------------------------------------------------------------------------------------

def tagged_data(n, seed=0):
    """Images whose first pixel encodes the sample index (labels = index too)."""
    x = np.random.default_rng(seed).integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    return x, np.arange(n)


def collect(loader, batches=None):
    out = []
    for k, (xb, yb) in enumerate(loader):
        out.append((xb.copy(), yb.copy()))
        if batches is not None and k + 1 == batches:
            break
    return out


def test_loader_batches_length_and_partial_last():
    x, y = tagged_data(10)
    loader = ArrayLoader(x, y, batch_size=4)
    batches = collect(loader)
    assert len(loader) == 3 and [len(b[1]) for b in batches] == [4, 4, 2]
    assert np.concatenate([b[1] for b in batches]).tolist() == list(range(10))
    xb, yb = batches[0]
    assert xb.dtype == np.float32 and yb.dtype == np.int64 and isinstance(xb, np.ndarray)
    assert np.allclose(xb, x[:4] / 255.0)  # no statistics: scaled to [0, 1]
    dropped = ArrayLoader(x, y, batch_size=4, drop_last=True)
    assert len(dropped) == 2 and [len(b[1]) for b in collect(dropped)] == [4, 4]


def test_loader_normalises_with_given_stats():
    x, y = tagged_data(6)
    mean, std = channel_stats(x)
    xb, _ = next(iter(ArrayLoader(x, y, 6, mean=mean, std=std, dtype="float64")))
    assert np.allclose(xb, (x - mean[:, None, None]) / std[:, None, None])


def test_loader_shuffle_is_seeded_and_visits_every_sample_once():
    x, y = tagged_data(50)
    a = ArrayLoader(x, y, 8, shuffle=True, augment=True, seed=3)
    b = ArrayLoader(x, y, 8, shuffle=True, augment=True, seed=3)
    c = ArrayLoader(x, y, 8, shuffle=True, augment=True, seed=4)
    epochs_a = [collect(a) for _ in range(2)]
    epochs_b = [collect(b) for _ in range(2)]
    for ea, eb in zip(epochs_a, epochs_b):
        for (xa, ya), (xb, yb) in zip(ea, eb):
            assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    orders = [np.concatenate([yb for _, yb in epoch]) for epoch in epochs_a]
    for order in orders:
        assert sorted(order.tolist()) == list(range(50))  # each sample exactly once
    assert orders[0].tolist() != orders[1].tolist()  # a new order every epoch
    assert orders[0].tolist() != list(range(50))
    assert np.concatenate([yb for _, yb in collect(c)]).tolist() != orders[0].tolist()
    assert a.state_dict() == {"seed": 3, "epoch": 2, "batch": 0}


def test_loader_augments_each_sample_with_its_planned_crop():
    x, y = tagged_data(20)
    loader = ArrayLoader(x, y, 7, shuffle=True, augment=True, seed=1)
    order, offsets, flips = loader.epoch_plan(0)
    got = np.concatenate([xb for xb, _ in collect(loader)])
    expected = naive_crop_flip(x[order] / np.float32(255), offsets, flips, 4)
    assert np.allclose(got, expected)


def test_loader_state_dict_round_trip_mid_epoch():
    x, y = tagged_data(30)
    reference = ArrayLoader(x, y, 4, shuffle=True, augment=True, seed=9)
    full = collect(reference) + collect(reference)  # 2 epochs of 8 batches

    loader = ArrayLoader(x, y, 4, shuffle=True, augment=True, seed=9)
    collect(loader)
    collect(loader, batches=3)  # stop after 3 batches of epoch 1
    state = loader.state_dict()
    assert state == {"seed": 9, "epoch": 1, "batch": 3}

    resumed = ArrayLoader(x, y, 4, shuffle=True, augment=True, seed=0)
    resumed.load_state_dict(state)
    rest = collect(resumed)
    assert len(rest) == 5
    for (xa, ya), (xb, yb) in zip(rest, full[8 + 3:]):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert resumed.state_dict() == {"seed": 9, "epoch": 2, "batch": 0}


def test_loader_rejects_bad_arguments():
    x, y = tagged_data(5)
    with pytest.raises(ValueError, match="shape"):
        ArrayLoader(x[0], y, 2)
    with pytest.raises(ValueError, match="y must have shape"):
        ArrayLoader(x, y[:3], 2)
    with pytest.raises(ValueError, match="batch_size"):
        ArrayLoader(x, y, 0)
    with pytest.raises(ValueError, match="no batch"):
        ArrayLoader(x, y, 8, drop_last=True)
    with pytest.raises(ValueError, match="invalid loader state"):
        ArrayLoader(x, y, 2).load_state_dict({"seed": 0, "epoch": 0, "batch": 3})


def test_make_cifar10_loaders_on_fake_data(isolated_env):
    x_train, y_train, x_test, y_test = make_fake_cifar(isolated_env / "d" / "cifar-10-batches-py", n=8)
    train, test, info = make_cifar10_loaders(isolated_env / "d", batch_size=16, seed=0, limit_train=30)
    assert info["n_train"] == 30 and info["n_test"] == 8 and info["classes"] == CIFAR10_CLASSES
    assert np.allclose(info["mean"], x_train[:30].mean(axis=0)) and info["std"] is None
    assert len(train) == 2 and len(test) == 1
    ys = np.concatenate([yb for _, yb in train])
    assert sorted(ys.tolist()) == sorted(y_train[:30].tolist())
    xb, yb = next(iter(test))
    assert np.array_equal(yb, y_test)
    assert np.allclose(xb, (x_test - info["mean"]) / 255, atol=1e-5)  # test: no augmentation

    _, _, info = make_cifar10_loaders(isolated_env / "d", 16, 0, normalization="channel")
    mean, std = channel_stats(x_train)
    assert np.allclose(info["mean"], mean) and np.allclose(info["std"], std)
    with pytest.raises(ValueError, match="normalization"):
        make_cifar10_loaders(isolated_env / "d", 16, 0, normalization="zca")


# ------------------------------------------------------------------------------------------------
# The real data set (skipped where it is not available)
# ------------------------------------------------------------------------------------------------

def test_real_cifar10(cifar10_arrays):
    x_train, y_train, x_test, y_test = cifar10_arrays
    assert x_train.shape == (50000, 3, 32, 32) and x_train.dtype == np.uint8
    assert x_test.shape == (10000, 3, 32, 32) and x_test.dtype == np.uint8
    assert y_train.shape == (50000,) and y_test.shape == (10000,) and y_train.dtype == np.int64
    assert y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert np.bincount(y_train).tolist() == [5000] * 10
    mean, std = channel_stats(x_train)
    assert np.allclose(mean, [125.307, 122.950, 113.865], atol=1e-3)
    assert np.allclose(std, [62.993, 62.089, 66.705], atol=1e-3)


def test_real_cifar10_class_names(cifar10_dir):
    assert cifar.load_class_names(cifar10_dir) == CIFAR10_CLASSES
