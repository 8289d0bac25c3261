"""Whole models on CuPy equal to the same models on NumPy, checkpoints that cross backends, and
the gradient checks the rest of the suite runs on NumPy only, on CuPy.

Each test builds one model on NumPy, copies its state to a twin on the backend under test and
runs both on the same batch: logits, loss, every gradient, the batch-norm running statistics and
the weights after SGD steps must agree. On NumPy (the twin is a second NumPy model) they must
be bit-equal, which checks the test itself and the NumPy path's determinism on every machine;
the CuPy case skips without a GPU (``benchmarks.gpu_check`` runs it on one). Tolerances are
relative norms per tensor, ||a - b|| / ||b||: float64 1e-9, the strict check (a wrong index or
dtype in a kernel is off by far more); float32 1e-3, with TF32 off (CuPy's default): cuBLAS and
OpenBLAS sum in different orders, and batch norm over a batch of 2 amplifies that.
"""
import numpy as np
import pytest

import minires
import minires.functional as F
from minires import Tensor, backend as mb, gradcheck, models
from minires.models.blocks import Bottleneck, projection
from minires.models.preact import PreActBottleneck
from minires.models.wide import WideBasicBlock
from minires.optim import SGD
from minires.serialization import load, save

TOLERANCE = {"float64": 1e-9, "float32": 1e-3}

MODELS = {
    "resnet20": lambda: models.resnet20(),
    "resnet18": lambda: models.resnet18(stem="cifar"),
}


def batch(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 32, 32)).astype(dtype), rng.integers(0, 10, n)


def twins(name, dtype, backend):
    """(reference on NumPy, twin on ``backend``) with the same weights and buffers."""
    minires.manual_seed(0)
    ref = MODELS[name]().to("numpy").astype(dtype)
    minires.manual_seed(1)  # different initial weights: only load_state_dict makes them equal
    twin = MODELS[name]().to(backend).astype(dtype)
    twin.load_state_dict(ref.state_dict())
    return ref, twin


def assert_close(actual, expected, backend, dtype, what):
    """Bit-equal on NumPy; within TOLERANCE[dtype] (relative norm) on CuPy."""
    actual, expected = mb.to_numpy(actual), mb.to_numpy(expected)
    assert actual.shape == expected.shape, what
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    if backend == "numpy":
        np.testing.assert_array_equal(actual, expected, err_msg=what)
        return
    scale = np.linalg.norm(expected.astype(np.float64))
    error = np.linalg.norm(actual.astype(np.float64) - expected.astype(np.float64))
    assert error <= TOLERANCE[dtype] * max(scale, 1e-30), f"{what}: relative error {error / max(scale, 1e-30):.3g}"


def module_of(model):
    """NumPy or CuPy, wherever the model's weights are."""
    return mb.get_array_module(next(model.parameters()).data)


def train_steps(model, x, y, steps=2):
    """``steps`` SGD steps (momentum, weight decay) on one batch; returns the logits and loss
    of the first step (the gradients of the last step stay in the parameters)."""
    xp = module_of(model)
    opt = SGD(list(model.parameters()), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    first = None
    for _ in range(steps):
        logits = model(Tensor(xp.asarray(x)))
        loss = F.cross_entropy(logits, xp.asarray(y))
        opt.zero_grad()
        loss.backward()
        if first is None:
            first = (logits.data, loss.data)
        opt.step()
    return first, opt


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["resnet20", pytest.param("resnet18", marks=pytest.mark.slow)])
def test_model_forward_backward_and_sgd_equal_numpy(backend, name, dtype):
    ref, twin = twins(name, dtype, backend)
    x, y = batch(4 if name == "resnet20" else 2, dtype)
    (ref_logits, ref_loss), _ = train_steps(ref, x, y)
    (logits, loss), _ = train_steps(twin, x, y)
    assert mb.backend_of(logits) == backend
    assert_close(logits, ref_logits, backend, dtype, "logits")
    assert_close(loss, ref_loss, backend, dtype, "loss")
    expected = dict(ref.named_parameters())
    for n, p in twin.named_parameters():
        assert_close(p.grad, expected[n].grad, backend, dtype, f"{n}.grad (second step)")
        assert_close(p.data, expected[n].data, backend, dtype, f"{n} after two SGD steps")
    ref_state = ref.state_dict()
    for k, v in twin.state_dict().items():
        if "running" in k:
            assert_close(v, ref_state[k], backend, dtype, k)


@pytest.mark.parametrize("name", list(MODELS))
def test_eval_forward_equal_numpy(backend, name):
    ref, twin = twins(name, "float32", backend)
    x, _ = batch(3, "float32", seed=1)
    ref.eval()
    twin.eval()
    xp = mb.get_module(backend)
    with minires.no_grad():
        assert_close(twin(Tensor(xp.asarray(x))).data, ref(Tensor(x)).data, backend, "float32", "eval logits")
        # batch norm folded into the convolutions: the inference path train_step.py times
        expected = minires.nn.fuse_conv_bn(ref)(Tensor(x)).data
        folded = minires.nn.fuse_conv_bn(twin)(Tensor(xp.asarray(x))).data
        assert_close(folded, expected, backend, "float32", "folded eval logits")


@pytest.mark.parametrize("direction", ["to_numpy", "from_numpy"])
def test_checkpoint_crosses_backends_and_training_continues_alike(backend, direction, tmp_path):
    """A model and SGD state saved on one backend and loaded on the other: the next step gives
    the same weights as continuing where it was saved."""
    source, target = (backend, "numpy") if direction == "to_numpy" else ("numpy", backend)
    x, y = batch(4, "float32", seed=2)
    minires.manual_seed(0)
    model = models.resnet20().to(source)
    _, opt = train_steps(model, x, y, steps=1)
    save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ckpt.npz")
    loaded = load(tmp_path / "ckpt.npz")
    assert all(isinstance(v, np.ndarray) for v in loaded["model"].values())

    minires.manual_seed(1)
    resumed = models.resnet20().to(target)
    resumed.load_state_dict(loaded["model"])
    resumed_opt = SGD(list(resumed.parameters()), lr=0.1, momentum=0.9, weight_decay=1e-4)
    resumed_opt.load_state_dict(loaded["optimizer"])
    assert mb.backend_of(next(resumed.parameters()).data) == target
    for m, o in ((model, opt), (resumed, resumed_opt)):
        xp = module_of(m)
        m.train()
        loss = F.cross_entropy(m(Tensor(xp.asarray(x))), xp.asarray(y))
        o.zero_grad()
        loss.backward()
        o.step()
    expected = dict(model.named_parameters())
    for n, p in resumed.named_parameters():
        assert_close(p.data, expected[n].data, backend, "float32", f"{n} one step after resuming")


# -- gradient checks the rest of the suite runs on NumPy only ----------------------------------------

@pytest.fixture
def cupy_only():
    if not mb.cupy_available():
        pytest.skip("cupy backend unavailable: CuPy with a CUDA GPU is not installed on this machine")
    return "cupy"


BLOCKS = {  # (block, input shape): the blocks whose gradchecks elsewhere run on NumPy only
    "bottleneck": (lambda: Bottleneck(8, 4, stride=2, downsample=projection(8, 16, 2)), (2, 8, 4, 4)),
    "grouped": (lambda: Bottleneck(16, 8, stride=2, downsample=projection(16, 32, 2), groups=4, base_width=16),
                (2, 16, 5, 5)),
    "preact": (lambda: PreActBottleneck(8, 4, 16, stride=2), (2, 8, 6, 6)),
    "wide": (lambda: WideBasicBlock(4, 8, stride=2), (2, 4, 5, 5)),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_gradients_on_cupy(cupy_only, name):
    make, shape = BLOCKS[name]
    minires.manual_seed(0)
    block = make().to("cupy").astype("float64").train()
    x = Tensor(mb.to_backend(np.random.default_rng(4).standard_normal(shape), "cupy"), requires_grad=True)
    assert gradcheck(lambda x, *ps: block(x), [x] + list(block.parameters()), mode="directional", n_directions=4)


def test_repeated_integer_index_accumulates_on_cupy(cupy_only):
    """The backward of indexing with repeated integers is xp.add.at: an atomic scatter on CuPy."""
    x = Tensor(mb.to_backend(np.arange(4.0), "cupy"), requires_grad=True)
    index = mb.to_backend(np.array([0, 2, 0, 0]), "cupy")
    assert gradcheck(lambda t: t[index], [x])
    x.grad = None
    x[mb.to_backend(np.array([1, 1, 3]), "cupy")].sum().backward()
    np.testing.assert_array_equal(mb.to_numpy(x.grad), [0, 2, 0, 1])
