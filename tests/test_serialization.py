"""save/load: round trips of state dicts and checkpoints, atomic writes, clear errors."""
import io
import os
import random
import zipfile

import numpy as np
import pytest

import minires
import minires.functional as F
from minires import Tensor, models, serialization
from minires.serialization import load, save
from minires.utils.io import atomic_write, remove_stale_temporaries, temporary_path


def images(shape, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def train_step(model, seed=0):
    """One forward/backward in train mode and a plain gradient step, so that weights and running
    statistics move away from their initial values."""
    model.train()
    loss = F.cross_entropy(model(images((4, 3, 32, 32), seed)), np.array([0, 1, 2, 3]))
    loss.backward()
    with minires.no_grad():
        for p in model.parameters():
            p.data -= 0.1 * p.grad
    model.zero_grad()


def test_state_dict_round_trip_gives_identical_outputs(tmp_path):
    minires.manual_seed(0)
    model = models.resnet20()
    train_step(model)
    save(model.state_dict(), tmp_path / "resnet20.npz")
    minires.manual_seed(1)
    other = models.resnet20()
    other.load_state_dict(load(tmp_path / "resnet20.npz"))
    x = images((3, 3, 32, 32), seed=5)
    model.eval()
    other.eval()
    with minires.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), other(x).numpy())
    loaded = load(tmp_path / "resnet20.npz")
    assert list(loaded) == list(model.state_dict())
    assert loaded["bn1.num_batches_tracked"].dtype == np.int64 and loaded["bn1.num_batches_tracked"] == 1
    assert loaded["conv1.weight"].dtype == np.float32


def test_plain_numpy_can_read_a_state_dict(tmp_path):
    model = models.resnet20()
    save(model.state_dict(), tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        np.testing.assert_array_equal(f["layer1.0.conv1.weight"], model.layer1[0].conv1.weight.numpy())


def test_plain_npz_loads_as_a_flat_dict(tmp_path):
    np.savez(tmp_path / "plain.npz", a=np.arange(3), b=np.ones((2, 2)))
    loaded = load(tmp_path / "plain.npz")
    assert set(loaded) == {"a", "b"}
    np.testing.assert_array_equal(loaded["a"], np.arange(3))


def test_checkpoint_round_trip(tmp_path):
    minires.manual_seed(0)
    model = models.resnet20()
    train_step(model)
    momentum = {i: {"momentum_buffer": np.full(p.shape, i, np.float32)} for i, p in enumerate(model.parameters())}
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": {"state": momentum, "param_groups": [{"lr": 0.1, "momentum": 0.9, "nesterov": False,
                                                          "params": list(range(len(momentum)))}]},
        "epoch": 3,
        "best": None,
        "history": {"loss": [2.3, 1.9, float("nan")], "note": "ok"},
        "rng": {"numpy": np.random.default_rng(7).bit_generator.state, "python": random.Random(7).getstate()},
        "scale": np.float32(0.5),
        "shape": (3, 32, 32),
        "weights": Tensor(np.arange(4.0)),
    }
    save(checkpoint, tmp_path / "ckpt.npz")
    loaded = load(tmp_path / "ckpt.npz")
    assert set(loaded) == set(checkpoint)
    assert loaded["epoch"] == 3 and loaded["best"] is None and loaded["shape"] == (3, 32, 32)
    assert loaded["history"]["loss"][:2] == [2.3, 1.9] and np.isnan(loaded["history"]["loss"][2])
    assert loaded["history"]["note"] == "ok"
    assert loaded["optimizer"]["param_groups"] == checkpoint["optimizer"]["param_groups"]
    assert list(loaded["optimizer"]["state"]) == list(momentum)  # int keys stay ints
    np.testing.assert_array_equal(loaded["optimizer"]["state"][5]["momentum_buffer"], momentum[5]["momentum_buffer"])
    assert loaded["rng"]["numpy"] == checkpoint["rng"]["numpy"]  # 128-bit ints survive JSON
    python_rng = random.Random()
    python_rng.setstate(loaded["rng"]["python"])  # tuples come back as tuples
    assert python_rng.random() == random.Random(7).random()
    assert type(loaded["scale"]) is np.float32 and loaded["scale"] == 0.5
    np.testing.assert_array_equal(loaded["weights"], np.arange(4.0))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded["model"][key], value, err_msg=key)
    with np.load(tmp_path / "ckpt.npz") as f:
        assert "model/layer1.0.conv1.weight" in f.files and "optimizer/state/5/momentum_buffer" in f.files


def test_loading_a_mismatched_state_dict_lists_the_keys(tmp_path):
    save(models.resnet20(shortcut="A").state_dict(), tmp_path / "a.npz")
    state = load(tmp_path / "a.npz")
    with pytest.raises(ValueError, match="missing keys") as e:
        models.resnet20(shortcut="B").load_state_dict(state)
    assert "layer2.0.downsample.0.weight" in str(e.value)
    with pytest.raises(ValueError, match="unexpected keys") as e:
        models.resnet20(shortcut="A").load_state_dict(dict(state, extra=np.zeros(3)))
    assert "extra" in str(e.value)
    with pytest.raises(ValueError, match="shape mismatch") as e:
        models.resnet20(num_classes=100).load_state_dict(state)
    assert "fc.weight" in str(e.value) and "fc.bias" in str(e.value)


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "ckpt.npz"
    save({"epoch": 1, "w": np.zeros(3)}, path)
    save({"epoch": 2, "w": np.ones(3)}, path)  # replaces the old file
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    assert load(path)["epoch"] == 2


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save({"epoch": 1}, path)

    def crash(f, arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(serialization, "_write_npz", crash)
    with pytest.raises(OSError, match="disk full"):
        save({"epoch": 2}, path)
    assert os.listdir(tmp_path) == ["ckpt.npz"]
    assert load(path)["epoch"] == 1


def test_unsupported_values_are_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match="set"):
        save({"a": {1, 2}}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="object array"):
        save({"a": np.array([None, 1], dtype=object)}, tmp_path / "x.npz")
    with pytest.raises(ValueError, match="a/b"):
        save({"a/b": np.zeros(1), "a": {"b": np.zeros(1)}}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="dict"):
        save([np.zeros(1)], tmp_path / "x.npz")
    assert os.listdir(tmp_path) == []


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.npz"
    with pytest.raises(FileNotFoundError, match="nowhere.npz") as e:
        load(path)
    assert e.value.filename == str(path)


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"\x93NUMPY garbage"], ids=["empty", "text", "npy"])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="bad.npz"):
        load(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.npz"
    save(models.resnet20().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.npz"):
        load(path)


def test_flipped_byte_is_caught_by_the_checksum(tmp_path):
    path = tmp_path / "flip.npz"
    save({"w": np.arange(1000.0), "epoch": 1}, path)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF  # inside the array's data
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="flip.npz.*CRC"):
        load(path)


def test_single_npy_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match="one.npy"):
        load(path)


def test_cupy_arrays_are_saved_as_numpy(tmp_path):
    if not minires.backend.cupy_available():
        pytest.skip("CuPy with a GPU is not available")
    model = models.resnet20().to("cupy")
    save(model.state_dict(), tmp_path / "gpu.npz")
    loaded = load(tmp_path / "gpu.npz")
    assert isinstance(loaded["conv1.weight"], np.ndarray)
    models.resnet20().load_state_dict(loaded)


# --- hostile files (issue 8, item 2) -----------------------------------------------------------

def _archive(path, members):
    """A zip archive of raw members: name -> bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array)
    return buffer.getvalue()


def test_metadata_nested_thousands_deep_is_refused(tmp_path):
    """json.loads and the decoder used to die with a RecursionError traceback."""
    path = tmp_path / "deep.npz"
    meta = '{"format": "minires", "version": 1, "tree": ' + "[" * 100_000 + "]" * 100_000 + "}"
    _archive(path, {"__meta__.json.npy": _npy_bytes(np.array(meta))})
    with pytest.raises(ValueError, match="deep.npz.*nested more than"):
        load(path)
    # Deep enough for the decoder's own limit, shallow enough for json.
    meta = '{"format": "minires", "version": 1, "tree": {"a": ' + "[" * 500 + "]" * 500 + "}}"
    _archive(path, {"__meta__.json.npy": _npy_bytes(np.array(meta))})
    with pytest.raises(ValueError, match="deep.npz.*nested more than"):
        load(path)


def test_an_npy_header_claiming_terabytes_is_refused_before_allocating(tmp_path):
    """The header is the file's word for the array's size: an 8 TB claim in a member of a few
    bytes used to end in a MemoryError traceback (or an 8 TB allocation)."""
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    path = tmp_path / "huge.npz"
    _archive(path, {"w.npy": buffer.getvalue() + b"\0" * 64})
    with pytest.raises(ValueError, match=r"huge.npz.*'w.npy' claims an array of shape \(1000000000000,\)"):
        load(path)


def test_object_arrays_in_a_file_are_refused(tmp_path):
    path = tmp_path / "obj.npz"
    header = {"descr": "|O", "fortran_order": False, "shape": (1,)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    _archive(path, {"w.npy": buffer.getvalue() + b"\0" * 8})
    with pytest.raises(ValueError, match="obj.npz.*Python objects"):
        load(path)


def test_a_compressed_npz_from_numpy_still_loads(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, w=np.arange(6.0).reshape(2, 3), b=np.int64(4))
    loaded = load(path)
    assert np.array_equal(loaded["w"], np.arange(6.0).reshape(2, 3)) and loaded["b"] == 4


# --- minires.utils.io: the one atomic write (issue 8, item 4) ----------------------------------

def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "notes.txt"
    with atomic_write(path, "w") as f:
        f.write("first")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_write(path, "w") as f:
            f.write("second, half")
            raise RuntimeError("midway")
    assert path.read_text() == "first"
    assert os.listdir(tmp_path) == ["notes.txt"]  # the temporary file is gone
    with pytest.raises(FileNotFoundError, match="no such directory"):
        with atomic_write(tmp_path / "nowhere" / "x", "w"):
            pass


def test_stale_temporaries_are_recognised_and_only_they_are_removed(tmp_path):
    stale = [temporary_path(tmp_path / "last.npz"), temporary_path(tmp_path / "metrics.csv")]
    for name in stale:
        open(name, "w").close()
    os.mkdir(temporary_path(tmp_path / "cifar-10-batches-py"))  # an extraction's folder
    keep = [".last.npz.tmp", "last.npz", ".hidden", ".x.0123456789ab.tmp.bak", ".y.XYZ456789abc.tmp"]
    for name in keep:
        (tmp_path / name).write_text("mine")
    removed = remove_stale_temporaries(tmp_path, "last.npz")
    assert removed == [stale[0]]
    assert len(remove_stale_temporaries(tmp_path, folders=True)) == 2
    assert sorted(os.listdir(tmp_path)) == sorted(keep)
