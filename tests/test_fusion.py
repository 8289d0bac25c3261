"""Folding batch norm into the convolution before it (Module.fuse): same outputs, fewer passes,
refolded when the weights change, and training untouched."""
import numpy as np
import pytest

import minires
import minires.functional as F
from minires import Tensor, models, nn, profiler
from minires.models.resnet import Bottleneck, projection
from minires.nn.fusion import conv_bn_pairs, fold_conv_bn
from minires.optim import SGD


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


class BottleneckNet(nn.Module):
    """One bottleneck block with a projection shortcut (three pairs + one in a Sequential)."""

    def __init__(self):
        super().__init__()
        self.block = Bottleneck(8, 4, stride=2, downsample=projection(8, 16, 2))

    def forward(self, x):
        return self.block(x)


BUILDERS = {
    "cifar option A": lambda: models.create("cifar_resnet", depth=8),
    "cifar option B": lambda: models.create("cifar_resnet", depth=8, shortcut="B"),
    "preact": lambda: models.create("preact_resnet", depth=11),
    "bottleneck": BottleneckNet,
    "resnet18 imagenet stem": lambda: models.create("resnet18", stem="imagenet", num_classes=10),
}
PAIRS = {"cifar option A": 7, "cifar option B": 9, "preact": 7, "bottleneck": 4, "resnet18 imagenet stem": 20}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_folded_outputs_match_unfolded_float64(name):
    minires.manual_seed(0)
    model = randomise_bn(BUILDERS[name]().astype(np.float64), 1)
    assert len(list(conv_bn_pairs(model))) == PAIRS[name]
    side = 40 if "imagenet" in name else 12
    x = np.random.default_rng(2).standard_normal((3, 3 if name != "bottleneck" else 8, side, side))
    expected = eval_output(model, x)
    calls = op_calls(model, x)
    model.fuse()
    got = eval_output(model, x)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    fused_calls = op_calls(model, x)
    assert fused_calls.get("BatchNormEvalFunction", 0) == calls["BatchNormEvalFunction"] - PAIRS[name]
    assert fused_calls["Conv2dFunction"] == calls["Conv2dFunction"]


def test_folded_outputs_match_unfolded_float32():
    minires.manual_seed(0)
    model = randomise_bn(models.create("resnet20"), 3)
    x = np.random.default_rng(4).standard_normal((4, 3, 32, 32)).astype(np.float32)
    expected = eval_output(model, x)
    got = eval_output(model.fuse(), x)
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


def test_weight_changes_are_refolded_and_training_is_untouched():
    minires.manual_seed(0)
    fused = randomise_bn(models.create("cifar_resnet", depth=8).astype(np.float64), 6).fuse()
    plain = randomise_bn(models.create("cifar_resnet", depth=8).astype(np.float64), 6)
    plain.load_state_dict(fused.state_dict())
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((4, 3, 12, 12)), rng.integers(0, 10, 4)
    np.testing.assert_allclose(eval_output(fused, x), eval_output(plain, x), rtol=1e-10, atol=1e-12)
    opts = [SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (fused, plain)]
    for _ in range(2):  # training steps: batch statistics, updated weights and running statistics
        for m, opt in zip((fused, plain), opts):
            m.train()
            loss = F.cross_entropy(m(Tensor(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
            np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)
        np.testing.assert_allclose(eval_output(fused, x), eval_output(plain, x), rtol=1e-10, atol=1e-12)
    # an in-place change made in eval mode is seen too
    for m in (fused, plain):
        m.conv1.weight.data *= 1.5
        m.layer1[0].bn2.running_var += 0.25
    np.testing.assert_allclose(eval_output(fused, x), eval_output(plain, x), rtol=1e-10, atol=1e-12)


def test_no_folding_while_recording_a_graph_or_after_unfuse():
    minires.manual_seed(0)
    model = randomise_bn(models.create("cifar_resnet", depth=8).astype(np.float64), 8).fuse().eval()
    x = np.random.default_rng(9).standard_normal((2, 3, 12, 12))
    out = model(Tensor(x))  # eval mode with gradients: the unfolded layers, so gamma gets a gradient
    out.sum().backward()
    assert model.bn1.weight.grad is not None and np.abs(model.bn1.weight.grad).max() > 0
    model.fuse(False)
    assert op_calls(model, x)["BatchNormEvalFunction"] == 7
