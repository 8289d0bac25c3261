"""Weights to and from PyTorch: same weights, same eval-mode logits (float64), both directions."""
import re
from pathlib import Path

import numpy as np
import pytest

import minires
from minires import Tensor, models
from minires import functional as F
from minires.optim import SGD

README = Path(__file__).resolve().parents[1] / "README.md"


def torch_twins():
    """torch and benchmarks.torch_models (PyTorch ResNets with torchvision's names); skips without torch."""
    torch = pytest.importorskip("torch", reason="PyTorch exchange tests need torch (pip install torch)")
    from benchmarks import torch_models
    return torch, torch_models


def randomize_torch_batch_norm(torch, net, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.fixture
def one_torch_thread():
    torch, _ = torch_twins()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torch's threads and NumPy's BLAS threads on 2 cores slow each other down
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name, stem, size", [
    ("resnet20", None, 32), ("resnet18", "cifar", 16), ("resnet18", "imagenet", 32),
    ("resnet50", "cifar", 16), ("resnet50", "imagenet", 32)])
def test_torch_weights_give_the_same_logits(name, stem, size, tmp_path, one_torch_thread):
    torch, torch_models = torch_twins()
    kwargs = {} if stem is None else {"stem": stem}
    torch.manual_seed(0)
    net = torch_models.create(name, num_classes=10, **kwargs)
    randomize_torch_batch_norm(torch, net)
    net = net.double().eval()
    path = tmp_path / f"{name}.pth"
    torch.save(net.state_dict(), path)

    model = models.create(name, num_classes=10, **kwargs).astype("float64")
    assert minires.load_torch_state_dict(model, path) is model
    x = np.random.default_rng(1).normal(size=(2, 3, size, size))
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    model.eval()
    with minires.no_grad():
        y = model(Tensor(x)).numpy()
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())


def readme_block(marker):
    """The ```python block of README.md that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"README should have one python block with {marker!r}"
    return found[0]


def test_readme_snippet_loads_minires_weights_in_pytorch(tmp_path, monkeypatch, one_torch_thread):
    torch, torch_models = torch_twins()
    model = models.resnet18(stem="imagenet").astype("float64")
    rng = np.random.default_rng(0)
    for bn in (m for m in model.modules() if isinstance(m, minires.nn.BatchNorm2d)):
        bn.running_mean[...] = rng.normal(0, 0.1, bn.num_features)
        bn.running_var[...] = rng.uniform(0.5, 1.5, bn.num_features)
    monkeypatch.chdir(tmp_path)
    minires.save(model.state_dict(), "r18.npz")
    net = torch_models.create("resnet18", stem="imagenet", num_classes=1000).double().eval()
    exec(readme_block("torch.from_numpy"), {"net": net})  # the snippet, as README prints it

    x = np.random.default_rng(1).normal(size=(1, 3, 32, 32))
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    model.eval()
    with minires.no_grad():
        y = model(Tensor(x)).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())
    for key, value in net.state_dict().items():  # every buffer too (num_batches_tracked included)
        np.testing.assert_array_equal(value.numpy(), model.state_dict()[key], err_msg=key)


def test_fine_tuning_from_torch_weights_trains(tmp_path, one_torch_thread):
    torch, torch_models = torch_twins()
    torch.manual_seed(0)
    net = torch_models.create("resnet20")
    torch.save(net.state_dict(), tmp_path / "r20.pth")
    model = minires.load_torch_state_dict(models.resnet20(), tmp_path / "r20.pth")
    np.testing.assert_array_equal(model.conv1.weight.numpy(), net.conv1.weight.detach().numpy())

    rng = np.random.default_rng(0)
    x = Tensor(rng.normal(size=(16, 3, 8, 8)).astype(np.float32))
    labels = rng.integers(0, 10, 16)
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x), labels)
        model.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


class Payload:
    """An object whose unpickling would run code (writes a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_objects_are_refused(tmp_path):
    torch, _ = torch_twins()
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload(str(marker))}, path)
    with pytest.raises(ValueError, match=r"evil\.pth.*weights_only=True"):
        minires.load_torch_state_dict(models.resnet20(), path)
    assert not marker.exists()


def test_wrapped_and_data_parallel_state_dicts(one_torch_thread):
    torch, torch_models = torch_twins()
    net = torch_models.create("resnet20")
    wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in net.state_dict().items()}}
    model = minires.load_torch_state_dict(models.resnet20(), wrapped)
    np.testing.assert_array_equal(model.fc.weight.numpy(), net.fc.weight.detach().numpy())


def test_numpy_state_dict_needs_no_torch():
    source = models.resnet20()
    state = {k: np.array(v) for k, v in source.state_dict().items()}
    model = minires.load_torch_state_dict(models.resnet20(), state)
    np.testing.assert_array_equal(model.layer3[2].conv2.weight.numpy(), source.layer3[2].conv2.weight.numpy())


def test_clear_errors(tmp_path):
    state = {k: np.array(v) for k, v in models.resnet20().state_dict().items()}
    del state["fc.bias"]
    with pytest.raises(ValueError, match="missing keys: fc.bias"):
        minires.load_torch_state_dict(models.resnet20(), state)
    with pytest.raises(TypeError, match="'fc.weight' is a str"):
        minires.load_torch_state_dict(models.resnet20(), {"fc.weight": "oops"})


def test_clear_errors_for_files(tmp_path):
    torch_twins()
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        minires.load_torch_state_dict(models.resnet20(), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.pth"):
        minires.load_torch_state_dict(models.resnet20(), tmp_path / "junk.pth")
