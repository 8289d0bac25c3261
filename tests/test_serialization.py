"""save/load: round trips of state dicts and checkpoints, atomic writes, clear errors."""
import os
import random

import numpy as np
import pytest

import minires
import minires.functional as F
from minires import Tensor, models, serialization
from minires.serialization import load, save


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
