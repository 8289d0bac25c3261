"""Folding batch norm into the convolution before it (nn.fuse_conv_bn): same outputs, fewer passes.
What the transform leaves alone (the original, later changes of it) is in test_fuse_transform.py."""
import numpy as np
import pytest

import minires
import minires.functional as F
from minires import Tensor, models, nn, profiler
from minires.nn.fusion import conv_bn_pairs, fold_conv_bn
from fusion_models import BUILDERS, BlockNet, build, randomise_bn


def eval_output(model, x):
    model.eval()
    with minires.no_grad():
        return model(Tensor(x)).data.copy()


def op_calls(model, x):
    """How often each op ran in one no_grad evaluation forward."""
    with profiler.profile() as prof:
        eval_output(model, x)
    return {op: calls for op, phase, calls, _, _ in prof.rows()}


PAIRS = {"cifar option A": 7, "cifar option B": 9, "preact": 7, "bottleneck": 4, "resnext bottleneck": 4,
         "wide block": 1, "resnet18 imagenet stem": 20}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_folded_outputs_match_unfolded_float64(name):
    model = build(name)
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
