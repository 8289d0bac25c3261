"""summary(): the layer table, its totals, and that the model is left as it was."""
import numpy as np
import pytest

from minires import functional as F
from minires import models, nn
from minires.model_summary import summary


def test_resnet20_totals():
    lines = []
    s = summary(models.resnet20(), (3, 32, 32), print_fn=lines.append)
    assert s.total_params == 269_722
    assert s.trainable_params == 269_722 and s.non_trainable_params == 0
    # conv: Ho*Wo*O*C*kh*kw per image, linear: in*out; REFERENCE.md: about 41M
    assert s.mult_adds == 40_551_040
    assert s.params_size_mb == pytest.approx(269_722 * 4 / 1e6)
    assert s.input_size_mb == pytest.approx(3 * 32 * 32 * 4 / 1e6)
    assert s.forward_backward_size_mb > 0
    assert s.total_size_mb == pytest.approx(s.input_size_mb + s.forward_backward_size_mb + s.params_size_mb)
    text = lines[0]
    assert text == str(s)
    for word in ["CifarResNet", "Conv2d", "BatchNorm2d", "ReLU", "Sequential", "BasicBlock", "PadShortcut",
                 "GlobalAvgPool2d", "Linear", "269,722", "40.55", "[1, 16, 32, 32]", "Params size (MB)"]:
        assert word in text, word


def test_rows():
    s = summary(models.resnet20(), (3, 32, 32), print_fn=None)
    root = s.rows[0]
    assert (root.name, root.type, root.depth, root.output_shape) == ("", "CifarResNet", 0, [1, 10])
    assert root.params == 269_722 and root.mult_adds == s.mult_adds
    by_name = {r.name: r for r in s.rows}
    conv = by_name["layer2.0.conv1"]
    assert (conv.type, conv.depth, conv.output_shape, conv.params) == ("Conv2d", 3, [1, 32, 16, 16], 32 * 16 * 9)
    assert conv.mult_adds == 16 * 16 * 32 * 16 * 9
    assert by_name["layer2.0.downsample"].output_shape == [1, 32, 16, 16]
    assert by_name["fc"].mult_adds == 640
    assert by_name["layer1"].mult_adds == sum(r.mult_adds for r in s.rows if r.name.startswith("layer1.")
                                                 and r.type == "Conv2d")
    # the block's ReLU module runs once (one row): the ReLU after the residual addition is fused
    # with it (F.add_relu), not a module call
    assert sum(r.name == "layer1.0.relu" for r in s.rows) == 1


def test_batch_size_scales_shapes_and_work():
    s1 = summary(models.resnet20(), (3, 32, 32), print_fn=None)
    s8 = summary(models.resnet20(), (3, 32, 32), batch_size=8, print_fn=None)
    assert s8.rows[0].output_shape == [8, 10]
    assert s8.mult_adds == 8 * s1.mult_adds
    assert s8.forward_backward_size_mb == pytest.approx(8 * s1.forward_backward_size_mb)
    assert s8.params_size_mb == s1.params_size_mb


def test_imagenet_resnet18():
    s = summary(models.resnet18(stem="imagenet"), (3, 224, 224), print_fn=None, max_depth=1)
    assert s.total_params == 11_689_512
    assert 1.80e9 < s.mult_adds < 1.83e9  # torchinfo: 1.81 G
    assert "MaxPool2d" in str(s) and "BasicBlock" not in str(s)  # max_depth=1 hides the blocks


def test_model_is_left_as_it_was():
    model = models.resnet20().train()
    model.layer1.eval()
    state = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    summary(model, (3, 32, 32), print_fn=None)
    assert model.training and not model.layer1.training and model.layer2.training
    assert all("forward" not in vars(m) for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)  # eval mode: no running-stat update


def test_failure_restores_the_model():
    model = models.resnet20()
    with pytest.raises(ValueError):
        summary(model, (4, 32, 32), print_fn=None)  # 4 channels into a 3-channel conv
    assert all("forward" not in vars(m) for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert model.training


def test_float64_model():
    s = summary(models.resnet20().astype("float64"), (3, 8, 8), dtype="float64", print_fn=None)
    assert s.params_size_mb == pytest.approx(269_722 * 8 / 1e6)
    assert s.rows[0].output_shape == [1, 10]


def test_observes_calls_with_forward_hooks_and_keeps_the_users_hooks():
    """summary never replaces a module's forward; hooks the user registered stay and still run."""

    class Checked(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 5)

        def forward(self, x):
            assert "forward" not in vars(self) and "forward" not in vars(self.fc)
            return self.fc(F.flatten(x))

    model = Checked()
    seen = []
    handle = model.fc.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    s = summary(model, (3, 2, 2), print_fn=None)
    assert [(r.name, r.type, r.output_shape) for r in s.rows] == [("", "Checked", [1, 5]), ("fc", "Linear", [1, 5])]
    assert s.mult_adds == 12 * 5 and seen == [(1, 5)]
    assert list(model.fc._forward_hooks) == [handle.id] and not model._forward_hooks
