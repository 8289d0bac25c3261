"""Issue 15, items 4, 5 and 9: no silent wrong number from a dtype.

- Item 4: ops that compute refuse integer, bool and complex inputs in one line that names the op
  and the dtype and says how to convert (a uint8 convolution of 200s gave 8; ResNet-8 on raw uint8
  images gave logits off by about 150); ops that only move values keep taking them, and integer
  max pooling starts from the dtype's minimum (int8 windows of negatives gave 0).
- Item 5: ``--eval-only`` refuses a checkpoint with invalid BatchNorm statistics (exit 2) and
  outputs that are not finite (exit 1) instead of printing an accuracy (it printed "test loss nan").
- Item 9: a float64 seed gradient on a float32 graph gave a float64 ``x.grad``.
"""
import re

import numpy as np
import pytest

import minires
import minires.functional as F
import minires.train as train
from minires import Tensor, nn
from minires.functional.winograd import conv2d_winograd
from minires.nn import init
from minires.serialization import save
from minires.training import CheckpointError, read_checkpoint

CONVERT = "x.astype('float32') / 255"
REFUSED = ["uint8", "int8", "int64", "bool", "complex64", "complex128"]


def refused(op, dtype):
    """pytest.raises for the one-line refusal of ``op`` on ``dtype``."""
    return pytest.raises(TypeError, match=rf"^{op}: got a {np.dtype(dtype)} array.*{re.escape(CONVERT)}")


def arr(shape, dtype, value=1):
    return np.full(shape, value).astype(dtype)


# --- item 4: arithmetic ops refuse integer, bool and complex inputs -----------------------------

def test_a_uint8_convolution_is_refused_instead_of_wrapping_around():
    """200 * 9 = 1800 wrapped to 8 in uint8 (conv2d); the float32 input gives 1800."""
    x, W = np.full((1, 1, 3, 3), 200, np.uint8), np.ones((1, 1, 3, 3), np.float32)
    for conv, name in ((F.conv2d, "conv2d"), (F.conv2d_simple, "conv2d_simple")):
        with refused(name, "uint8"):
            conv(Tensor(x), Tensor(W))
        assert conv(Tensor(x.astype("float32")), Tensor(W)).data.item() == 1800.0


OPS = {
    "conv2d": lambda x: F.conv2d(x, Tensor(arr((2, 3, 3, 3), "float32"))),
    "conv2d_simple": lambda x: F.conv2d_simple(x, Tensor(arr((2, 3, 3, 3), "float32"))),
    "conv2d_winograd": lambda x: conv2d_winograd(x, Tensor(arr((2, 3, 3, 3), "float32"))),
    "linear": lambda x: F.linear(F.flatten(x), Tensor(arr((5, 3 * 4 * 4), "float32"))),
    "batch_norm": lambda x: F.batch_norm(x, None, None, arr(3, "float32", 0), arr(3, "float32"), training=False),
    "relu": F.relu,
    "avg_pool2d": lambda x: F.avg_pool2d(x, 2),
    "global_avg_pool2d": F.global_avg_pool2d,
    "add": lambda x: F.add(Tensor(arr(x.shape, "float32")), x),
    "cross_entropy": lambda x: F.cross_entropy(F.flatten(x), np.zeros(2, np.int64)),
    "nll_loss": lambda x: F.nll_loss(F.flatten(x), np.zeros(2, np.int64)),
    "softmax": lambda x: F.softmax(x, dim=1),
    "log_softmax": lambda x: F.log_softmax(x, dim=1),
    "sigmoid": F.sigmoid,
    "tanh": F.tanh,
    "leaky_relu": F.leaky_relu,
    "dropout": lambda x: F.dropout(x, 0.5, training=True, rng=0),
}


@pytest.mark.parametrize("dtype", REFUSED)
@pytest.mark.parametrize("op", list(OPS))
def test_ops_that_compute_refuse_integer_bool_and_complex_inputs(op, dtype):
    x = Tensor(arr((2, 3, 4, 4), dtype, 3))
    with refused(op, dtype):
        OPS[op](x)
    y = OPS[op](Tensor(arr((2, 3, 4, 4), "float32", 3)))  # the same values in float32 pass
    assert y.dtype == np.float32


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_refuses_uint8_in_training_and_evaluation(training):
    bn = nn.BatchNorm2d(3)
    bn.running_mean[...], bn.running_var[...] = 100.0, 50.0
    bn.train(training)
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 5, 5)).astype(np.uint8)
    with refused("batch_norm", "uint8"):
        bn(Tensor(x))
    assert bn(Tensor(x.astype("float32"))).dtype == np.float32


def test_a_resnet_refuses_raw_uint8_images():
    """ResNet-8 on raw uint8 CIFAR images gave logits 134 away from the same images in float32."""
    model = minires.models.cifar_resnet(8).eval()
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32)).astype(np.uint8)
    with minires.no_grad():
        with refused("conv2d", "uint8"):
            model(Tensor(images))
        logits = model(Tensor(images.astype("float32") / 255))
    assert logits.dtype == np.float32 and np.isfinite(logits.data).all()


def test_complex_parameters_are_refused_too():
    x = Tensor(arr((2, 3, 4, 4), "float32"))
    with refused("conv2d", "complex64"):
        F.conv2d(x, Tensor(arr((2, 3, 3, 3), "complex64")))
    with refused("linear", "complex128"):
        F.linear(F.flatten(x), Tensor(arr((5, 48), "float32")), Tensor(arr(5, "complex128")))


def test_shape_only_ops_keep_integers_exact():
    x = np.arange(2 * 2 * 4 * 4).reshape(2, 2, 4, 4).astype(np.uint8)
    assert F.flatten(Tensor(x)).data.tolist() == x.reshape(2, -1).tolist()
    assert Tensor(x).reshape(4, 16).data.dtype == np.uint8
    y = F.pad_channels(Tensor(x), 4, stride=2).data
    assert y.dtype == np.uint8 and (y[:, 1:3] == x[:, :, ::2, ::2]).all() and (y[:, [0, 3]] == 0).all()


@pytest.mark.parametrize("dtype", ["int8", "int32", "int64", "uint8"])
@pytest.mark.parametrize("padding", [0, 1])
def test_integer_max_pooling_starts_from_the_dtypes_minimum(dtype, padding):
    """int8 windows of negatives gave 0 (-inf cast to an integer), padding included."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    x = rng.integers(info.min, info.min // 2 + 1 if info.min else 100, (2, 3, 4, 4), endpoint=True).astype(dtype)
    y = F.max_pool2d(Tensor(x), 2, padding=padding).data
    expected = F.max_pool2d(Tensor(x.astype(np.float64)), 2, padding=padding).data
    assert y.dtype == np.dtype(dtype) and (y == expected).all()


@pytest.mark.parametrize("dtype", ["bool", "complex64"])
def test_max_pooling_refuses_bool_and_complex(dtype):
    with refused("max_pool2d", dtype):
        F.max_pool2d(Tensor(arr((1, 1, 2, 2), dtype)), 2)


def test_cross_entropy_labels_stay_integers():
    logits = Tensor(np.array([[2.0, 0.5, -1.0]], np.float32))
    for labels in (np.array([0], np.uint8), np.array([0], np.int64), [0]):
        assert F.cross_entropy(logits, labels).item() == pytest.approx(0.2413, abs=1e-4)
    with pytest.raises(ValueError, match="labels must be integers"):
        F.cross_entropy(logits, np.array([0.0]))


def test_float64_gradients_still_check():
    rng = np.random.default_rng(2)
    x = Tensor(rng.standard_normal((2, 3, 5, 5)), requires_grad=True)
    W = Tensor(rng.standard_normal((4, 3, 3, 3)), requires_grad=True)
    assert minires.gradcheck(lambda x, W: F.global_avg_pool2d(F.relu(F.conv2d(x, W, padding=1))), [x, W])


# --- item 5: --eval-only refuses invalid BatchNorm statistics and non-finite outputs ------------

TINY = ["--depth", "8", "--limit-test", "64", "--batch-size", "32", "--no-progress"]


@pytest.fixture
def checkpoint(_leave_globals_alone):
    """A weights-only checkpoint of a fresh ResNet-8 (``{"model": state_dict}``), as a dict to change
    and save; run() seeds the initialiser and may set the backend: both are restored afterwards."""
    init.manual_seed(0)
    return {"model": minires.models.cifar_resnet(8).state_dict()}


def eval_only(data_dir, checkpoint, path):
    save(checkpoint, path)
    return train.main([*TINY, "--data-dir", str(data_dir), "--eval-only", "--resume", str(path)])


def error_line(capsys):
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "test accuracy" not in captured.out
    # The checkpoints here are bare (no stored preprocessing): eval-only notes that it recomputes it.
    lines = [line for line in captured.err.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1, captured.err
    return lines[0]


def test_eval_only_of_a_sound_checkpoint_prints_its_accuracy(tiny_cifar10_dir, checkpoint, tmp_path, capsys):
    assert eval_only(tiny_cifar10_dir, checkpoint, tmp_path / "ok.npz") == 0
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("entry, value, message", [
    ("layer1.0.bn1.running_var", -0.5, "model/layer1.0.bn1.running_var holds a negative BatchNorm variance (-0.5)"),
    ("bn1.running_var", np.inf, "model/bn1.running_var holds nan or inf"),
    ("layer2.0.bn2.running_mean", np.nan, "model/layer2.0.bn2.running_mean holds nan or inf"),
])
def test_eval_only_refuses_invalid_batch_norm_statistics(tiny_cifar10_dir, checkpoint, tmp_path, capsys, entry,
                                                         value, message):
    """A negative running_var gave exit 0 and "test loss nan, test accuracy 12.50%"."""
    checkpoint["model"][entry][1] = value
    path = tmp_path / "bad.npz"
    assert eval_only(tiny_cifar10_dir, checkpoint, path) == 2
    assert f"checkpoint {path}: {message}" in error_line(capsys)


def test_read_checkpoint_refuses_a_negative_variance_for_a_resume_too(checkpoint, tmp_path):
    checkpoint["model"]["layer3.0.bn2.running_var"][0] = -1e-3
    save(checkpoint, tmp_path / "bad.npz")
    for training in (False, True):
        with pytest.raises(CheckpointError, match="model/layer3.0.bn2.running_var holds a negative"):
            read_checkpoint(tmp_path / "bad.npz", training=training)
    checkpoint["model"]["layer3.0.bn2.running_var"][0] = 0.0  # 0 is a valid variance (eps keeps it apart)
    save(checkpoint, tmp_path / "zero.npz")
    read_checkpoint(tmp_path / "zero.npz", training=False)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # one line, no NumPy warnings above it
def test_eval_only_refuses_outputs_that_are_not_finite(tiny_cifar10_dir, checkpoint, tmp_path, capsys):
    """Finite weights whose logits overflow float32: exit 1 (README: a test loss that is not finite
    stops the run), never an accuracy."""
    checkpoint["model"]["fc.weight"][...] = 3e38
    path = tmp_path / "huge.npz"
    assert eval_only(tiny_cifar10_dir, checkpoint, path) == 1
    line = error_line(capsys)
    assert f"checkpoint {path}: the test loss is nan" in line and "not finite" in line


# --- item 9: the seed gradient takes the output's dtype -----------------------------------------

def test_a_float64_seed_leaves_float32_gradients():
    x = Tensor(np.array([1.0, 2.0, 3.0], np.float32), requires_grad=True)
    y = x * x
    y.backward(np.array([1.0, 0.5, -2.0]))  # float64
    assert x.grad.dtype == np.float32 and x.grad.tolist() == [2.0, 2.0, -12.0]
    leaf = Tensor(np.ones(3, np.float32), requires_grad=True)
    leaf.backward([1, 2, 3])  # a list of ints, straight into a leaf
    assert leaf.grad.dtype == np.float32 and leaf.grad.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("seed, error, message", [
    ("abc", TypeError, "grad must be an array of real numbers, got dtype <U3"),
    (np.ones(3, np.complex64), TypeError, "grad must be an array of real numbers, got dtype complex64"),
    (np.ones(3, bool), TypeError, "grad must be an array of real numbers, got dtype bool"),
    ({"a": 1}, TypeError, "grad must be an array of real numbers"),
    (np.ones(4), ValueError, r"grad has shape \(4,\), tensor has shape \(3,\)"),
])
def test_a_bad_seed_is_refused(seed, error, message):
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    with pytest.raises(error, match=message):
        (x * 2.0).backward(seed)
    assert x.grad is None
