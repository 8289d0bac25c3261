"""The ResNet family: exact parameter counts, shapes, torchvision key names, gradients, BN modes."""
import numpy as np
import pytest

import minires
from minires import Tensor, gradcheck, models, nn
from minires import functional as F
from minires.models import registry
from minires.models.blocks import Bottleneck, projection
from minires.models.preact import PreActBottleneck

# REFERENCE.md, "Architectures and exact parameter counts".
CIFAR_V1 = {  # name: (option A, option B)
    "resnet20": (269_722, 272_474),
    "resnet32": (464_154, 466_906),
    "resnet44": (658_586, 661_338),
    "resnet56": (853_018, 855_770),
    "resnet110": (1_727_962, 1_730_714),
    "resnet1202": (19_421_274, 19_424_026),
}
CIFAR_V2 = {
    "resnet56v2": 1_663_338,
    "resnet110v2": 3_302_442,
    "resnet164v2": 4_941_546,
    "resnet1001v2": 30_347_658,
}
IMAGENET_FAMILY = {  # name: (cifar stem 10 classes, cifar stem 1000 classes, imagenet stem 1000 classes)
    "resnet18": (11_173_962, 11_681_832, 11_689_512),
    "resnet34": (21_282_122, 21_789_992, 21_797_672),
    "resnet50": (23_520_842, 25_549_352, 25_557_032),
    "resnet101": (42_512_970, 44_541_480, 44_549_160),
    "resnet152": (58_156_618, 60_185_128, 60_192_808),
}


def count(model):
    return sum(p.size for p in model.parameters())


def images(shape, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


# -- parameter counts (building only: the deep ones are too slow to run here) ----------------------

@pytest.mark.parametrize("name", list(CIFAR_V1))
@pytest.mark.parametrize("option", [0, 1], ids=["A", "B"])
def test_cifar_v1_parameter_count(name, option):
    assert count(models.create(name, shortcut="AB"[option])) == CIFAR_V1[name][option]


@pytest.mark.parametrize("name", list(CIFAR_V2))
def test_cifar_v2_parameter_count(name):
    assert count(models.create(name)) == CIFAR_V2[name]


@pytest.mark.parametrize("name", list(IMAGENET_FAMILY))
@pytest.mark.parametrize("column, kwargs", [
    (0, {"stem": "cifar"}),
    (1, {"stem": "cifar", "num_classes": 1000}),
    (2, {"stem": "imagenet"}),
], ids=["cifar-10", "cifar-1000", "imagenet-1000"])
def test_imagenet_family_parameter_count(name, column, kwargs):
    assert count(models.create(name, **kwargs)) == IMAGENET_FAMILY[name][column]


def test_default_num_classes_follow_the_stem():
    assert models.resnet18().fc.out_features == 10
    assert models.resnet18(stem="imagenet").fc.out_features == 1000
    assert models.resnet18(stem="imagenet", num_classes=7).fc.out_features == 7


def test_any_depth_of_the_form():
    assert count(models.cifar_resnet(20)) == CIFAR_V1["resnet20"][0]
    assert count(models.create("cifar_resnet", depth=56, shortcut="B")) == CIFAR_V1["resnet56"][1]
    assert count(models.create("preact_resnet", depth=56)) == CIFAR_V2["resnet56v2"]
    assert len(models.cifar_resnet(8).layer1) == 1
    assert len(models.preact_resnet(11).layer3) == 1


# -- forward shapes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs", [
    ("resnet20", {}), ("resnet20", {"shortcut": "B"}), ("resnet32", {}), ("resnet56v2", {}),
    ("resnet18", {}), ("resnet20", {"num_classes": 100}),
])
def test_cifar_output_shape(name, kwargs):
    model = models.create(name, **kwargs).eval()
    with minires.no_grad():
        y = model(images((2, 3, 32, 32)))
    assert y.shape == (2, kwargs.get("num_classes", 10))
    assert np.isfinite(y.numpy()).all()


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_stem_output_shape(name):
    model = models.create(name, stem="imagenet").eval()
    with minires.no_grad():
        y = model(images((2, 3, 224, 224)))
    assert y.shape == (2, 1000)


def test_stage_shapes_of_resnet20():
    model = models.resnet20().eval()
    with minires.no_grad():
        x = model.relu(model.bn1(model.conv1(images((2, 3, 32, 32)))))
        x1 = model.layer1(x)
        x2 = model.layer2(x1)
        x3 = model.layer3(x2)
    assert (x1.shape, x2.shape, x3.shape) == ((2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8))


# -- torchvision key names -----------------------------------------------------------------------------

def test_resnet18_state_dict_keys():
    state = models.resnet18().state_dict()
    for key in ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                "bn1.num_batches_tracked", "layer1.0.conv1.weight", "layer1.0.bn1.weight",
                "layer1.1.conv2.weight", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight",
                "layer2.0.downsample.1.running_mean", "layer4.1.bn2.running_var", "fc.weight", "fc.bias"]:
        assert key in state, key
    assert "layer1.0.downsample.0.weight" not in state
    assert "conv1.bias" not in state and "layer1.0.conv1.bias" not in state
    assert len(state) == 122  # as torchvision's resnet18().state_dict()
    assert list(state)[:6] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                               "bn1.running_var", "bn1.num_batches_tracked"]


def test_resnet50_bottleneck_keys():
    state = models.resnet50(stem="imagenet").state_dict()
    assert state["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)  # widening, stride 1
    assert state["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert state["fc.weight"].shape == (1000, 2048)
    assert "layer1.1.downsample.0.weight" not in state


def test_cifar_shortcut_options_in_the_state_dict():
    a = models.resnet20(shortcut="A").state_dict()
    b = models.resnet20(shortcut="B").state_dict()
    assert not any("downsample" in k for k in a)
    for stage in (2, 3):
        assert f"layer{stage}.0.downsample.0.weight" in b
        assert f"layer{stage}.0.downsample.1.running_mean" in b
    assert "layer1.0.downsample.0.weight" not in b
    assert b["layer2.0.downsample.0.weight"].shape == (32, 16, 1, 1)
    assert set(a) < set(b)


def test_preact_state_dict_keys():
    state = models.resnet56v2().state_dict()
    assert "layer1.0.bn1.weight" not in state  # the stem's BN-ReLU pre-activates the first unit
    for key in ["conv1.weight", "conv1.bias", "bn1.running_mean", "layer1.0.conv1.bias",
                "layer1.0.downsample.0.weight", "layer1.0.downsample.0.bias", "layer1.1.bn1.weight",
                "layer2.0.bn1.weight", "layer3.0.downsample.0.weight", "bn_final.weight", "fc.weight"]:
        assert key in state, key
    assert state["layer1.0.conv3.weight"].shape == (64, 16, 1, 1)
    assert state["layer2.0.conv1.weight"].shape == (64, 64, 1, 1)
    assert state["layer3.5.conv3.weight"].shape == (256, 128, 1, 1)


def test_init():
    model = models.resnet20()
    assert np.all(model.bn1.weight.numpy() == 1) and np.all(model.bn1.bias.numpy() == 0)
    w = models.resnet18().layer3[0].conv2.weight.numpy()
    assert abs(w.std() - np.sqrt(2 / (256 * 9))) < 0.05 * np.sqrt(2 / (256 * 9))  # He normal, fan in


# -- gradients ---------------------------------------------------------------------------------------------

def check_model_gradients(model, x):
    """Directional gradcheck of ``model`` in train mode w.r.t. ``x`` and every parameter.

    eps is tiny because the random direction moves all parameters at once: with eps = 1e-6 a few
    of the ~20k ReLU inputs cross zero between the two evaluations and the finite difference
    sees the kink. BN updates its running statistics on every evaluation; in train mode the
    output does not read them, so that is harmless.
    """
    model.astype("float64").train()
    params = list(model.parameters())
    assert gradcheck(lambda x, *ps: model(x), [x] + params, mode="directional", n_directions=3, eps=1e-8)


def test_resnet20_gradients():
    minires.manual_seed(0)
    x = Tensor(np.random.default_rng(1).standard_normal((2, 3, 8, 8)), requires_grad=True)
    check_model_gradients(models.resnet20(), x)


def test_resnet20_option_b_gradients():
    minires.manual_seed(1)
    x = Tensor(np.random.default_rng(2).standard_normal((2, 3, 8, 8)), requires_grad=True)
    check_model_gradients(models.resnet20(shortcut="B"), x)


def test_preact_gradients():
    minires.manual_seed(0)
    x = Tensor(np.random.default_rng(3).standard_normal((2, 3, 8, 8)), requires_grad=True)
    check_model_gradients(models.preact_resnet(11), x)


def test_bottleneck_block_gradients_elementwise():
    minires.manual_seed(0)
    block = Bottleneck(8, 4, stride=2, downsample=projection(8, 16, 2)).astype("float64").train()
    x = Tensor(np.random.default_rng(4).standard_normal((2, 8, 4, 4)), requires_grad=True)
    assert gradcheck(lambda x, *ps: block(x), [x] + list(block.parameters()), mode="full")


def test_preact_block_gradients():
    minires.manual_seed(0)
    block = PreActBottleneck(8, 4, 16, stride=2).astype("float64").train()
    x = Tensor(np.random.default_rng(5).standard_normal((2, 8, 6, 6)), requires_grad=True)
    assert gradcheck(lambda x, *ps: block(x), [x] + list(block.parameters()), mode="directional")


def test_resnet18_backward_reaches_every_parameter():
    model = models.resnet18()
    y = model(images((2, 3, 16, 16)))
    minires.functional.cross_entropy(y, np.array([1, 2])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name


# -- train and eval mode -------------------------------------------------------------------------------

def test_eval_uses_running_statistics():
    model = models.resnet20()
    x = images((4, 3, 32, 32))
    before = model.bn1.running_mean.copy()
    model.train()
    y_train = model(x).numpy()  # updates every BN's running statistics
    assert not np.allclose(model.bn1.running_mean, before)
    assert model.bn1.num_batches_tracked == 1
    model.eval()
    with minires.no_grad():
        y_eval = model(x).numpy()
        y_one = model(x[1:2]).numpy()
    assert model.bn1.num_batches_tracked == 1  # eval does not count batches
    assert not np.allclose(y_train, y_eval, atol=1e-3)
    np.testing.assert_allclose(y_one, y_eval[1:2], rtol=1e-5, atol=1e-5)  # no batch dependence


def test_train_mode_depends_on_the_batch():
    model = models.resnet20().train()
    x = images((4, 3, 32, 32))
    with minires.no_grad():
        assert not np.allclose(model(x).numpy()[:2], model(x[:2]).numpy(), atol=1e-4)


# -- registry ------------------------------------------------------------------------------------------------

def test_names():
    assert models.names() == ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202",
                              "resnet56v2", "resnet110v2", "resnet164v2", "resnet1001v2",
                              "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                              "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2",
                              "wide_resnet101_2", "wrn16_8", "wrn28_10", "wrn40_4"]


def test_a_model_registers_itself_where_it_is_defined(monkeypatch):
    # a copy of the registry, so that the model made up here leaves names() as it was
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    class TinyNet(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.fc = nn.Linear(3 * 4 * 4, width)

        def forward(self, x):
            return self.fc(F.flatten(x))

    @models.register_model("tinynet_for_test")
    def tinynet(width=5):
        return TinyNet(width)

    assert tinynet(width=2).fc.out_features == 2  # the decorator returns the function unchanged
    assert models.names()[-1] == "tinynet_for_test"
    model = models.create("TinyNet_for_test", width=7)
    assert isinstance(model, TinyNet) and model(images((2, 3, 4, 4))).shape == (2, 7)


def test_a_name_is_registered_once(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    before = models.names()
    with pytest.raises(ValueError, match=r"'resnet20' is already taken by minires\.models\.cifar\.resnet20"):
        models.register_model("resnet20")(lambda: None)
    with pytest.raises(ValueError, match="'cifar_resnet' is already taken"):
        models.register_model("cifar_resnet")(lambda: None)
    for bad in ["", "ResNet7", None]:
        with pytest.raises(ValueError, match="lower-case"):
            models.register_model(bad)
    assert models.names() == before
    assert isinstance(models.create("resnet20"), models.CifarResNet)


def test_bad_v1_depth_lists_valid_depths():
    with pytest.raises(ValueError, match=r"6n\+2") as e:
        models.cifar_resnet(21)
    assert "20" in str(e.value) and "21" in str(e.value)
    with pytest.raises(ValueError, match=r"6n\+2"):
        models.create("cifar_resnet", depth=2)


def test_bad_v2_depth_lists_valid_depths():
    with pytest.raises(ValueError, match=r"9n\+2") as e:
        models.preact_resnet(57)
    assert "56" in str(e.value)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="resnet21") as e:
        models.create("resnet21")
    for name in models.names() + ["cifar_resnet", "preact_resnet"]:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="depth"):
        models.create("cifar_resnet")


def test_bad_options():
    with pytest.raises(ValueError, match="shortcut"):
        models.resnet20(shortcut="C")
    with pytest.raises(ValueError, match="stem"):
        models.resnet18(stem="tiny")
    with pytest.raises(ValueError, match="num_classes"):
        models.resnet20(num_classes=0)


# -- other backends --------------------------------------------------------------------------------------------

def test_cupy_forward_matches_numpy():
    if not minires.backend.cupy_available():
        pytest.skip("CuPy with a GPU is not available")
    model = models.resnet20().eval()
    x = images((2, 3, 32, 32))
    with minires.no_grad():
        expected = model(x).numpy()
        model.to("cupy")
        y = model(x.to("cupy"))
    assert y.backend == "cupy"
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-4, atol=1e-4)


# -- against PyTorch ------------------------------------------------------------------------------------------

def torch_reference_models():
    """Independent PyTorch definitions: torchvision's ResNet layout, the CIFAR v1 net, Keras' v2 net."""
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    class PadA(tnn.Module):
        def __init__(self, planes):
            super().__init__()
            self.planes = planes

        def forward(self, x):
            extra = self.planes - x.shape[1]
            return tnn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, extra // 2, extra - extra // 2))

    class Basic(tnn.Module):
        expansion = 1

        def __init__(self, cin, c, stride=1, downsample=None):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, c, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(c)
            self.relu = tnn.ReLU()
            self.conv2 = tnn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(c)
            self.downsample = downsample

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class Bottle(tnn.Module):
        expansion = 4

        def __init__(self, cin, c, stride=1, downsample=None):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, c, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(c)
            self.conv2 = tnn.Conv2d(c, c, 3, stride, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(c)
            self.conv3 = tnn.Conv2d(c, 4 * c, 1, bias=False)
            self.bn3 = tnn.BatchNorm2d(4 * c)
            self.relu = tnn.ReLU()
            self.downsample = downsample

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    def proj(cin, cout, stride):
        return tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

    class Net(tnn.Module):
        """torchvision's ResNet (stem 'imagenet' or 'cifar') and the CIFAR v1 nets (widths 16/32/64)."""

        def __init__(self, block, layers, widths, num_classes, stem, option="B"):
            super().__init__()
            first = widths[0]
            if stem == "imagenet":
                self.conv1 = tnn.Conv2d(3, first, 7, 2, 3, bias=False)
            else:
                self.conv1 = tnn.Conv2d(3, first, 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(first)
            self.relu = tnn.ReLU()
            self.maxpool = tnn.MaxPool2d(3, 2, 1) if stem == "imagenet" else tnn.Identity()
            cin = first
            for i, (n, c) in enumerate(zip(layers, widths)):
                stride = 1 if i == 0 else 2
                down = None
                if stride != 1 or cin != c * block.expansion:
                    down = PadA(c) if option == "A" else proj(cin, c * block.expansion, stride)
                blocks = [block(cin, c, stride, down)]
                cin = c * block.expansion
                blocks += [block(cin, c) for _ in range(n - 1)]
                setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
            self.stages = len(layers)
            self.fc = tnn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for i in range(self.stages):
                x = getattr(self, f"layer{i + 1}")(x)
            return self.fc(x.mean(dim=(2, 3)))

    class PreAct(tnn.Module):
        def __init__(self, cin, w, cout, stride, preact):
            super().__init__()
            self.bn1 = tnn.BatchNorm2d(cin) if preact else None
            self.conv1 = tnn.Conv2d(cin, w, 1, stride)
            self.bn2 = tnn.BatchNorm2d(w)
            self.conv2 = tnn.Conv2d(w, w, 3, 1, 1)
            self.bn3 = tnn.BatchNorm2d(w)
            self.conv3 = tnn.Conv2d(w, cout, 1)
            self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride)) if cin != cout else None

        def forward(self, x):
            r = tnn.functional.relu
            out = x if self.bn1 is None else r(self.bn1(x))
            out = self.conv3(r(self.bn3(self.conv2(r(self.bn2(self.conv1(out)))))))
            return out + (x if self.downsample is None else self.downsample(x))

    class KerasV2(tnn.Module):
        def __init__(self, n, num_classes=10):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1)
            self.bn1 = tnn.BatchNorm2d(16)
            for i, (cin, w, cout) in enumerate([(16, 16, 64), (64, 64, 128), (128, 128, 256)]):
                units = [PreAct(cin, w, cout, 1 if i == 0 else 2, i > 0)]
                units += [PreAct(cout, w, cout, 1, True) for _ in range(n - 1)]
                setattr(self, f"layer{i + 1}", tnn.Sequential(*units))
            self.bn_final = tnn.BatchNorm2d(256)
            self.fc = tnn.Linear(256, num_classes)

        def forward(self, x):
            r = tnn.functional.relu
            x = self.layer3(self.layer2(self.layer1(r(self.bn1(self.conv1(x))))))
            return self.fc(r(self.bn_final(x)).mean(dim=(2, 3)))

    return torch, {
        "resnet20": lambda: Net(Basic, [3, 3, 3], [16, 32, 64], 10, "cifar", option="A"),
        "resnet20-B": lambda: Net(Basic, [3, 3, 3], [16, 32, 64], 10, "cifar", option="B"),
        "resnet18": lambda: Net(Basic, [2, 2, 2, 2], [64, 128, 256, 512], 10, "cifar"),
        "resnet18-imagenet": lambda: Net(Basic, [2, 2, 2, 2], [64, 128, 256, 512], 1000, "imagenet"),
        "resnet50": lambda: Net(Bottle, [3, 4, 6, 3], [64, 128, 256, 512], 10, "cifar"),
        "resnet56v2": lambda: KerasV2(6),
    }


@pytest.mark.parametrize("name, build, size", [
    ("resnet20", lambda: models.resnet20(), 32),
    ("resnet20-B", lambda: models.resnet20(shortcut="B"), 32),
    ("resnet18", lambda: models.resnet18(), 32),
    ("resnet18-imagenet", lambda: models.resnet18(stem="imagenet"), 64),
    ("resnet50", lambda: models.resnet50(), 16),
    ("resnet56v2", lambda: models.resnet56v2(), 32),
])
def test_matches_pytorch(name, build, size):
    torch, reference = torch_reference_models()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torch's threads and NumPy's BLAS threads on 2 cores slow each other 10x
    try:
        compare_with_pytorch(torch, reference[name](), build(), size)
    finally:
        torch.set_num_threads(threads)


def compare_with_pytorch(torch, net, model, size):
    """Copy ``model``'s state into the PyTorch ``net`` (strict: same keys and shapes) and compare
    outputs in eval and train mode, and the running statistics after the train-mode pass."""
    rng = np.random.default_rng(0)
    for bn in (m for m in model.modules() if isinstance(m, minires.nn.BatchNorm2d)):
        # non-trivial statistics and affine parameters, so that eval mode is tested for real
        bn.running_mean[...] = rng.normal(0, 0.1, bn.num_features)
        bn.running_var[...] = rng.uniform(0.5, 1.5, bn.num_features)
        bn.weight.data[...] = rng.uniform(0.5, 1.5, bn.num_features)
        bn.bias.data[...] = rng.normal(0, 0.1, bn.num_features)
    state = model.state_dict()
    assert list(net.state_dict()) == list(state)  # same names, same order
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    x = images((2, 3, size, size), seed=1)
    net.eval()
    model.eval()
    with torch.no_grad(), minires.no_grad():
        expected = net(torch.from_numpy(x.numpy())).numpy()
        y = model(x).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-4)
    # train mode: batch statistics, and the same running-statistics update
    net.train()
    model.train()
    with torch.no_grad(), minires.no_grad():
        expected = net(torch.from_numpy(x.numpy())).numpy()
        y = model(x).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-3, atol=1e-4)
    after = net.state_dict()
    for key, value in model.state_dict().items():
        np.testing.assert_allclose(np.asarray(value), after[key].numpy(), rtol=1e-4, atol=1e-5, err_msg=key)
