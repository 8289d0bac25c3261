"""ResNeXt, torchvision's Wide ResNet and the CIFAR WRN-d-k: exact parameter counts, keys, summary,
gradients, dropout, and the same numbers as PyTorch and onnxruntime with the same weights."""
import numpy as np
import pytest

import minires
from minires import Tensor, gradcheck, models, nn
from minires.models.blocks import Bottleneck, projection
from minires.models.resnet import ResNet
from minires.models.wide import WideBasicBlock
from minires.model_summary import summary

# REFERENCE.md, "ResNeXt and Wide ResNet": imagenet stem, 1000 classes
TORCHVISION = {
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
}
WRN = {"wrn16_8": 10_961_370, "wrn28_10": 36_479_194, "wrn40_4": 8_949_210}  # 10 classes
# the cifar stem's 3x3 conv has 3*64*(9 - 49) parameters fewer than the 7x7 one; 990 classes fewer
# remove 990 rows (2048 weights and a bias each) of fc
CIFAR_STEM_10_CLASSES = {name: n - 64 * 3 * 40 - 990 * 2049 for name, n in TORCHVISION.items()}


def count(model):
    return sum(p.size for p in model.parameters())


@pytest.fixture
def no_init(monkeypatch):
    """Build without drawing random weights (zeros): the counts and shapes of the 100M-parameter
    models in a fraction of a second."""
    monkeypatch.setattr(nn.init, "kaiming_normal_", lambda p, mode="fan_in": p)
    monkeypatch.setattr(nn.init, "uniform_", lambda p, bound: p)


def images(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- parameter counts, keys, summary ---------------------------------------------------------------------

@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_family_parameter_counts_with_both_stems(no_init, name):
    assert count(models.create(name, stem="imagenet")) == TORCHVISION[name]
    assert count(models.create(name)) == CIFAR_STEM_10_CLASSES[name]  # the default: cifar stem, 10 classes
    assert count(models.create(name, stem="cifar", num_classes=1000)) == TORCHVISION[name] - 64 * 3 * 40


@pytest.mark.parametrize("name", WRN)
def test_wrn_parameter_counts(no_init, name):
    assert count(models.create(name)) == WRN[name]
    assert count(models.create(name, dropout=0.3)) == WRN[name]  # dropout has no parameters


def test_wide_resnet_family_by_depth_and_width(no_init):
    assert count(models.create("wide_resnet", depth=28, k=10)) == WRN["wrn28_10"]
    with pytest.raises(ValueError, match="6n\\+4 with n >= 1 \\(10, 16, 22, 28"):
        models.wide_resnet(20, 2)
    with pytest.raises(ValueError, match="width k must be a positive int"):
        models.wide_resnet(16, 0)
    with pytest.raises(ValueError, match="dropout must be in \\[0, 1\\)"):
        models.wrn16_8(dropout=1.0)
    with pytest.raises(ValueError, match="BasicBlock supports only groups=1"):
        ResNet(models.BasicBlock, [1, 1, 1, 1], groups=2)


def test_names_and_stems():
    assert models.names()[-8:] == list(TORCHVISION) + list(WRN)
    assert "groups=32, width_per_group=4" in repr(ResNet(Bottleneck, [1, 1, 1, 1], 10, "cifar", 32, 4))


def test_torchvision_state_dict_keys_and_shapes(no_init):
    state = models.resnext50_32x4d(stem="imagenet").state_dict()
    assert len(state) == 320  # as torchvision's resnext50_32x4d().state_dict(), ResNet-50's keys
    assert state["layer1.0.conv1.weight"].shape == (128, 64, 1, 1)  # inner width 4 * 32
    assert state["layer1.0.conv2.weight"].shape == (128, 4, 3, 3)  # 32 groups of 4 channels
    assert state["layer4.2.conv2.weight"].shape == (1024, 32, 3, 3)
    assert state["layer4.2.conv3.weight"].shape == (2048, 1024, 1, 1)
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    state = models.resnext101_64x4d(stem="imagenet").state_dict()
    assert len(state) == 626 and state["layer3.22.conv2.weight"].shape == (1024, 16, 3, 3)
    state = models.wide_resnet50_2().state_dict()
    assert state["layer1.0.conv2.weight"].shape == (128, 128, 3, 3)  # twice ResNet-50's 64
    assert state["layer1.0.conv3.weight"].shape == (256, 128, 1, 1)
    assert state["conv1.weight"].shape == (64, 3, 3, 3)
    assert state["fc.weight"].shape == (10, 2048)


def test_wrn_state_dict_keys(no_init):
    state = models.wrn28_10().state_dict()
    assert list(state)[:8] == ["conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias", "layer1.0.bn1.running_mean",
                               "layer1.0.bn1.running_var", "layer1.0.bn1.num_batches_tracked",
                               "layer1.0.conv1.weight", "layer1.0.bn2.weight"]
    assert state["layer1.0.downsample.0.weight"].shape == (160, 16, 1, 1)
    assert state["layer2.0.conv1.weight"].shape == (320, 160, 3, 3)
    assert state["layer3.3.conv2.weight"].shape == (640, 640, 3, 3)
    assert "layer1.1.downsample.0.weight" not in state
    assert not any(k.endswith("conv1.bias") or k.endswith("conv2.bias") for k in state)  # convs without bias
    assert state["bn_final.running_var"].shape == (640,) and state["fc.weight"].shape == (10, 640)


def test_summary_counts_and_grouped_mult_adds(no_init):
    s = summary(models.resnext50_32x4d(), (3, 8, 8), print_fn=None)
    assert s.total_params == CIFAR_STEM_10_CLASSES["resnext50_32x4d"]
    conv = next(r for r in s.rows if r.name == "layer1.0.conv2")
    assert conv.params == 128 * 4 * 9
    assert conv.mult_adds == 8 * 8 * 128 * 4 * 9  # Ho*Wo*O*(C/G)*kh*kw: a grouped conv does 1/G of the work
    s = summary(models.wrn40_4(), (3, 8, 8), print_fn=None)
    assert s.total_params == WRN["wrn40_4"]
    assert [r.output_shape for r in s.rows if r.name in ("layer1", "layer2", "layer3")] == [
        [1, 64, 8, 8], [1, 128, 4, 4], [1, 256, 2, 2]]


# -- gradients and dropout -------------------------------------------------------------------------------

def test_grouped_bottleneck_block_gradients():
    minires.manual_seed(0)
    block = Bottleneck(16, 8, stride=2, downsample=projection(16, 32, 2), groups=4, base_width=16)
    assert block.conv2.weight.shape == (8, 2, 3, 3)  # width int(8 * 16 / 64) * 4 = 8, in 4 groups
    block = block.astype("float64").train()
    x = Tensor(np.random.default_rng(4).standard_normal((2, 16, 5, 5)), requires_grad=True)
    assert gradcheck(lambda x, *ps: block(x), [x] + list(block.parameters()), mode="directional", n_directions=4)


def test_wide_block_gradients():
    minires.manual_seed(0)
    block = WideBasicBlock(4, 8, stride=2).astype("float64").train()
    x = Tensor(np.random.default_rng(5).standard_normal((2, 4, 5, 5)), requires_grad=True)
    assert gradcheck(lambda x, *ps: block(x), [x] + list(block.parameters()), mode="directional", n_directions=4)


def test_dropout_between_the_convs_only_in_training():
    minires.manual_seed(0)
    plain = WideBasicBlock(4, 4)
    minires.manual_seed(0)
    dropped = WideBasicBlock(4, 4, dropout=0.5)
    x = Tensor(images((4, 4, 6, 6)))
    with minires.no_grad():
        np.testing.assert_array_equal(plain.eval()(x).numpy(), dropped.eval()(x).numpy())
        a, b, c = plain.train()(x).numpy(), dropped.train()(x).numpy(), dropped(x).numpy()
        assert not np.allclose(a, b) and not np.allclose(b, c)  # a new mask each call
    # the gradient reaches conv1 through the kept activations only
    dropped.train()
    dropped(x).sum().backward()
    assert dropped.conv1.weight.grad is not None and np.abs(dropped.conv1.weight.grad).sum() > 0
    assert "Dropout(p=0.5)" in repr(dropped)


# -- against PyTorch and onnxruntime ----------------------------------------------------------------------

def torch_nets():
    """PyTorch definitions: torchvision's bottleneck ResNet with groups and width from
    benchmarks/torch_models.py (torchvision is not installed), and Zagoruyko's WRN."""
    torch = pytest.importorskip("torch")
    from benchmarks import torch_models
    tnn = torch.nn

    def ResNeXt(layers, groups, base_width, num_classes, stem):
        return torch_models.ResNet(torch_models.Bottleneck, layers, stem, num_classes, groups=groups,
                                   width_per_group=base_width)

    class WideBlock(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1 = tnn.BatchNorm2d(cin)
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False))

        def forward(self, x):
            r = tnn.functional.relu
            o = r(self.bn1(x))
            out = self.conv2(r(self.bn2(self.conv1(o))))
            return out + (x if self.downsample is None else self.downsample(o))

    class WRN(tnn.Module):
        def __init__(self, n, k, num_classes=10):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
            cin = 16
            for i, w in enumerate([16 * k, 32 * k, 64 * k]):
                blocks = [WideBlock(cin if j == 0 else w, w, 2 if j == 0 and i > 0 else 1) for j in range(n)]
                cin = w
                setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
            self.bn_final = tnn.BatchNorm2d(cin)
            self.fc = tnn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
            return self.fc(tnn.functional.relu(self.bn_final(x)).mean(dim=(2, 3)))

    return torch, ResNeXt, WRN


def randomize_batch_norm(model, seed=0):
    rng = np.random.default_rng(seed)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean[...] = rng.normal(0, 0.1, bn.num_features)
        bn.running_var[...] = rng.uniform(0.5, 1.5, bn.num_features)
        bn.weight.data[...] = rng.uniform(0.5, 1.5, bn.num_features)
        bn.bias.data[...] = rng.normal(0, 0.1, bn.num_features)
    return model


def small_resnext(stem="cifar"):
    """ResNeXt with one block per stage (the registered ones differ only in depth and width)."""
    minires.manual_seed(0)
    return randomize_batch_norm(ResNet(Bottleneck, [1, 1, 1, 1], 10, stem, groups=8, width_per_group=4))


def small_wrn():
    minires.manual_seed(0)
    return randomize_batch_norm(models.wide_resnet(10, k=2))  # WRN-10-2: one block per stage


def compare(torch, net, model, size):
    """Same keys in the same order; ``model``'s weights into ``net``, scaled there and carried back
    with ``load_torch_state_dict``; then the eval and train outputs compared."""
    state = model.state_dict()
    assert list(net.state_dict()) == list(state)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)
    minires.load_torch_state_dict(model, net.state_dict())
    x = images((2, 3, size, size), seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torch's threads and NumPy's BLAS threads on 2 cores slow each other 10x
    try:
        for train in (False, True):
            net.train(train)
            model.train(train)
            with torch.no_grad(), minires.no_grad():
                expected = net(torch.from_numpy(x)).numpy()
                y = model(Tensor(x)).numpy()
            np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-4)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("stem, size", [("cifar", 8), ("imagenet", 32)])
def test_resnext_matches_pytorch(stem, size):
    torch, ResNeXt, _ = torch_nets()
    torch.manual_seed(0)
    compare(torch, ResNeXt([1, 1, 1, 1], 8, 4, 10, stem), small_resnext(stem), size)


def test_wrn_matches_pytorch():
    torch, _, WRN = torch_nets()
    compare(torch, WRN(1, 2), small_wrn(), 8)


@pytest.mark.parametrize("build", [small_resnext, small_wrn], ids=["resnext", "wrn"])
def test_onnx_export_runs_in_onnxruntime(build):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import minires.onnx
    model = build().eval()
    proto = minires.onnx.to_onnx(model, (1, 3, 8, 8))
    onnx.checker.check_model(proto, full_check=True)
    groups = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}.get("group")
              for n in proto.graph.node if n.op_type == "Conv"}
    if build is small_resnext:
        assert groups["layer1.0.conv2"] == 8 and groups["layer1.0.conv1"] == 1
    x = images((3, 3, 8, 8), seed=2)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"input": x})[0]
    with minires.no_grad():
        expected = model(Tensor(x)).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_onnx_conv_dilations():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import minires.onnx
    minires.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), nn.ReLU()).eval()
    proto = minires.onnx.to_onnx(model, (1, 4, 9, 9))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
    assert attributes["dilations"] == [2, 2] and attributes["group"] == 2
    x = images((2, 4, 9, 9), seed=3)
    y = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with minires.no_grad():
        np.testing.assert_allclose(y, model(Tensor(x)).numpy(), rtol=1e-5, atol=1e-5)
