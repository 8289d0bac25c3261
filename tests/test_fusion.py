"""Folding batch norm into the convolution before it (nn.fuse_conv_bn): same outputs, fewer passes.
What the transform leaves alone (the original, later changes of it) is in test_fuse_transform.py."""
import numpy as np
import pytest

import minires
import minires.functional as F
from minires import Tensor, models, nn, profiler
from minires.models.resnet import Bottleneck, projection
from minires.models.wide import WideBasicBlock
from minires.nn.fusion import conv_bn_pairs, fold_conv_bn


def randomise_bn(model, seed):
    """Give every batch norm non-trivial gamma, beta and running statistics."""
    rng = np.random.default_rng(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data[...] = rng.uniform(0.5, 1.5, c)
            m.bias.data[...] = rng.uniform(-0.5, 0.5, c)
            m.running_mean[...] = rng.uniform(-0.3, 0.3, c)
            m.running_var[...] = rng.uniform(0.5, 2.0, c)
    return model


def eval_output(model, x):
    model.eval()
    with minires.no_grad():
        return model(Tensor(x)).data.copy()


def op_calls(model, x):
    """How often each op ran in one no_grad evaluation forward."""
    with profiler.profile() as prof:
        eval_output(model, x)
    return {op: calls for op, phase, calls, _, _ in prof.rows()}


class BlockNet(nn.Module):
    """One block on 8 input channels."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return self.block(x)


BUILDERS = {
    "cifar option A": lambda: models.create("cifar_resnet", depth=8),
    "cifar option B": lambda: models.create("cifar_resnet", depth=8, shortcut="B"),
    "preact": lambda: models.create("preact_resnet", depth=11),
    # three pairs + one in the projection's Sequential
    "bottleneck": lambda: BlockNet(Bottleneck(8, 4, stride=2, downsample=projection(8, 16, 2))),
    # ResNeXt's bottleneck: the 3x3 conv has 4 groups of 4 channels
    "resnext bottleneck": lambda: BlockNet(Bottleneck(8, 4, stride=2, downsample=projection(8, 16, 2),
                                                      groups=4, base_width=16)),
    # pre-activation: only conv1 -> bn2 is a pair (bn1 comes before a conv)
    "wide block": lambda: BlockNet(WideBasicBlock(8, 16, stride=2)),
    "resnet18 imagenet stem": lambda: models.create("resnet18", stem="imagenet", num_classes=10),
}
PAIRS = {"cifar option A": 7, "cifar option B": 9, "preact": 7, "bottleneck": 4, "resnext bottleneck": 4,
         "wide block": 1, "resnet18 imagenet stem": 20}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_folded_outputs_match_unfolded_float64(name):
    minires.manual_seed(0)
    model = randomise_bn(BUILDERS[name]().astype(np.float64), 1)
    assert len(list(conv_bn_pairs(model))) == PAIRS[name]
    side = 40 if "imagenet" in name else 12
    x = np.random.default_rng(2).standard_normal((3, 8 if isinstance(model, BlockNet) else 3, side, side))
    expected = eval_output(model, x)
    calls = op_calls(model, x)
    fused = nn.fuse_conv_bn(model)
    got = eval_output(fused, x)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert sum(isinstance(m, nn.Identity) for m in fused.modules()) == PAIRS[name]
    fused_calls = op_calls(fused, x)
    assert fused_calls.get("BatchNormEvalFunction", 0) == calls["BatchNormEvalFunction"] - PAIRS[name]
    assert fused_calls["Conv2dFunction"] == calls["Conv2dFunction"]


def test_folded_outputs_match_unfolded_float32():
    minires.manual_seed(0)
    model = randomise_bn(models.create("resnet20"), 3)
    x = np.random.default_rng(4).standard_normal((4, 3, 32, 32)).astype(np.float32)
    expected = eval_output(model, x)
    got = eval_output(nn.fuse_conv_bn(model.eval()), x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_fold_formula_matches_conv_then_batch_norm():
    rng = np.random.default_rng(5)
    x, W, b = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    gamma, beta = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    mean, var = rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    Wf, bf = fold_conv_bn(W, b, gamma, beta, mean, var, 1e-5)
    with minires.no_grad():
        expected = F.batch_norm(F.conv2d(Tensor(x), W, b, padding=1), gamma, beta, mean, var, training=False)
        got = F.conv2d(Tensor(x), Wf, bf, padding=1)
    np.testing.assert_allclose(got.data, expected.data, rtol=1e-12, atol=1e-12)
