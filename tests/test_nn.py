"""nn layers and the Module API: gradient checks of every layer (input and parameters), residual
blocks end to end, parameters/buffers/state_dict, modes, backends."""
import re

import numpy as np
import pytest

import minires
from minires import Tensor, gradcheck
from minires import backend as mb
from minires import functional as F
from minires import nn
from minires.nn import Parameter

MODES = ["full", "directional"]


def leaf(backend, a, requires_grad=True, dtype=np.float64):
    return Tensor(mb.to_backend(np.asarray(a, dtype=dtype), backend), requires_grad=requires_grad)


def host(a):
    """A NumPy copy of a NumPy or CuPy array (or Tensor), independent of minires.backend.to_numpy."""
    a = a.data if isinstance(a, Tensor) else a
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def prepare(module, backend, seed=0):
    """float64 on ``backend``, with non-trivial BN affine parameters and running statistics."""
    module.astype("float64").to(backend)
    rng = np.random.default_rng(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.weight.data = mb.to_backend(rng.uniform(0.5, 1.5, c), backend)
            m.bias.data = mb.to_backend(rng.normal(0, 0.5, c), backend)
            m.running_mean = mb.to_backend(rng.normal(0, 0.5, c), backend)
            m.running_var = mb.to_backend(rng.uniform(0.5, 2.0, c), backend)
    return module


def check_module(module, x, mode, **kw):
    """gradcheck of module(x) with respect to x and every parameter."""
    params = list(module.parameters())
    return gradcheck(lambda inp, *ps: module(inp), [x] + params, mode=mode, **kw)


def distinct(rng, shape, spacing=0.05):
    n = int(np.prod(shape))
    return (rng.permutation(n) - n // 2 + 0.5).reshape(shape) * spacing  # half-integers: never 0


# =================================================================================================
# Each layer, gradchecked with respect to its input and parameters
# =================================================================================================

CONV_CASES = [  # (in, out, kernel, stride, padding, bias, input shape for full / directional)
    (2, 3, 3, 1, 1, True, (2, 2, 4, 5), (2, 2, 9, 8)),
    (2, 2, 1, 2, 0, False, (2, 2, 3, 4), (3, 2, 9, 9)),
    (1, 2, 7, 2, 3, False, (1, 1, 5, 6), (2, 1, 12, 11)),
    (2, 2, (3, 1), (1, 2), (1, 0), True, (1, 2, 4, 4), (2, 2, 8, 7)),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}-k{c[2]}-s{c[3]}-p{c[4]}-b{c[5]}")
def test_conv2d_layer_gradcheck(backend, mode, case):
    cin, cout, k, s, p, bias, small, big = case
    conv = prepare(nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=bias), backend)
    assert (conv.bias is not None) == bias
    rng = np.random.default_rng(1)
    if bias:
        conv.bias.data = mb.to_backend(rng.standard_normal(cout), backend)
    x = leaf(backend, rng.standard_normal(small if mode == "full" else big))
    assert check_module(conv, x, mode)
    assert conv.weight.grad is not None and conv.weight.grad.shape == conv.weight.shape


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind, shape_full, shape_dir", [("1d", (5, 3), (16, 6)),
                                                         ("2d", (2, 2, 2, 3), (4, 5, 4, 4))])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm_layer_gradcheck(backend, mode, kind, shape_full, shape_dir, training):
    shape = shape_full if mode == "full" else shape_dir
    layer = (nn.BatchNorm1d if kind == "1d" else nn.BatchNorm2d)(shape[1])
    prepare(layer, backend).train(training)
    x = leaf(backend, np.random.default_rng(2).standard_normal(shape) * 2 + 0.5)
    assert check_module(layer, x, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_layer_gradcheck(backend, mode, bias):
    n, i, o = (3, 4, 2) if mode == "full" else (8, 20, 10)
    layer = prepare(nn.Linear(i, o, bias=bias), backend)
    assert [name for name, _ in layer.named_parameters()] == (["weight", "bias"] if bias else ["weight"])
    x = leaf(backend, np.random.default_rng(3).standard_normal((n, i)))
    assert check_module(layer, x, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("make", [lambda: nn.MaxPool2d(2), lambda: nn.MaxPool2d(3, 2, 1),
                                  lambda: nn.AvgPool2d(2), lambda: nn.AvgPool2d((3, 2), (1, 2), (1, 0)),
                                  lambda: nn.GlobalAvgPool2d(), lambda: nn.ReLU(), lambda: nn.Flatten(),
                                  lambda: nn.Identity()],
                         ids=["max2", "max3s2p1", "avg2", "avg3x2", "gap", "relu", "flatten", "identity"])
def test_parameter_free_layer_gradcheck(backend, mode, make):
    layer = make().to(backend)
    assert list(layer.parameters()) == []
    shape = (1, 2, 4, 4) if mode == "full" else (2, 3, 9, 8)
    x = leaf(backend, distinct(np.random.default_rng(4), shape))  # no ties, nothing near 0
    assert check_module(layer, x, mode)


def test_sequential_gradcheck_with_explicit_grad_output(backend):
    net = prepare(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                                nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)), backend)
    rng = np.random.default_rng(5)
    x = leaf(backend, rng.standard_normal((3, 2, 6, 6)))
    g = mb.to_backend(rng.uniform(-2, 2, (3, 4)), backend)
    assert check_module(net, x, "directional", grad_output=g, n_directions=4)


# =================================================================================================
# Residual blocks built from the layers, checked end to end
# =================================================================================================

class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU after the add.

    Shortcut where the shape changes: "A" (subsample + zero channels) or "B" (1x1 conv + BN)."""

    def __init__(self, cin, cout, stride=1, option="B"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.cout, self.stride, self.option = cout, stride, option
        self.changes = stride != 1 or cin != cout
        if option == "B" and self.changes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if not self.changes:
            shortcut = x
        elif self.option == "A":
            shortcut = F.pad_channels(x, self.cout, self.stride)
        else:
            shortcut = self.downsample(x)
        return F.relu(F.add(out, shortcut))


class Bottleneck(nn.Module):
    """1x1 (w) - 3x3 (w, stride) - 1x1 (4w), BN after each, projection shortcut where needed."""

    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = 4 * width
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.project = stride != 1 or cin != cout
        if self.project:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(F.add(out, self.downsample(x) if self.project else x))


BLOCKS = {
    "basic-identity": (lambda: BasicBlock(3, 3, 1), (2, 3, 6, 6), (2, 3, 6, 6)),
    "basic-optionA": (lambda: BasicBlock(2, 4, 2, option="A"), (2, 2, 6, 5), (2, 4, 3, 3)),
    "basic-optionB": (lambda: BasicBlock(2, 4, 2, option="B"), (2, 2, 6, 6), (2, 4, 3, 3)),
    "bottleneck-projection": (lambda: Bottleneck(4, 2, 2), (2, 4, 5, 5), (2, 8, 3, 3)),
    "bottleneck-identity": (lambda: Bottleneck(8, 2, 1), (2, 8, 4, 4), (2, 8, 4, 4)),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", list(BLOCKS))
def test_residual_block_gradcheck(backend, name, training):
    make, in_shape, out_shape = BLOCKS[name]
    minires.manual_seed(0)
    block = prepare(make(), backend, seed=1).train(training)
    x = leaf(backend, np.random.default_rng(6).standard_normal(in_shape))
    y = block(x)
    assert y.shape == out_shape
    assert float(host(y).min()) >= 0.0
    assert check_module(block, x, "directional", n_directions=4)
    grads = [p.grad for p in block.parameters()]
    assert all(g is not None for g in grads) and x.grad is not None


def test_residual_block_gradient_reaches_both_branches(backend):
    """The identity shortcut carries the upstream gradient straight to x: with the residual branch's
    gradient cut (zero conv weights, eval mode), dL/dx equals the upstream gradient where out > 0."""
    block = prepare(BasicBlock(3, 3, 1), backend).eval()
    for conv in (block.conv1, block.conv2):
        conv.weight.data = conv.weight.data * 0
    x0 = np.random.default_rng(7).standard_normal((2, 3, 4, 4))
    x = leaf(backend, x0)
    y = block(x)
    g = np.random.default_rng(8).standard_normal(y.shape)
    y.backward(mb.to_backend(g, backend))
    out_pre = x0 + host(block.bn2.bias.data).reshape(1, 3, 1, 1) - (
        host(block.bn2.running_mean) * host(block.bn2.weight.data) / np.sqrt(host(block.bn2.running_var) + 1e-5)
    ).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(host(x.grad), g * (out_pre > 0), rtol=1e-10, atol=1e-12)


# =================================================================================================
# Module API
# =================================================================================================

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(BasicBlock(4, 4), BasicBlock(4, 8, 2))
        self.pool = nn.GlobalAvgPool2d()
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return self.fc(self.pool(self.layer1(x)))


def block_names(prefix, downsample=False):
    names = [f"{prefix}.conv1.weight", f"{prefix}.bn1.weight", f"{prefix}.bn1.bias",
             f"{prefix}.conv2.weight", f"{prefix}.bn2.weight", f"{prefix}.bn2.bias"]
    if downsample:
        names += [f"{prefix}.downsample.0.weight", f"{prefix}.downsample.1.weight", f"{prefix}.downsample.1.bias"]
    return names


BN_BUFFERS = ["running_mean", "running_var", "num_batches_tracked"]


def test_named_parameters_in_registration_order():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    expected = (["conv1.weight", "bn1.weight", "bn1.bias"] + block_names("layer1.0")
                + block_names("layer1.1", downsample=True) + ["fc.weight", "fc.bias"])
    assert names == expected
    params = list(net.parameters())
    assert [id(p) for p in params] == [id(p) for _, p in net.named_parameters()]
    assert all(isinstance(p, Parameter) and p.requires_grad for p in params)
    assert net.layer1[1].downsample[0].weight is dict(net.named_parameters())["layer1.1.downsample.0.weight"]
    assert sum(p.size for p in params) == (4 * 3 * 9 + 8 + 2 * (16 * 9 + 8) + (32 * 9 + 16 + 64 * 9 + 16 + 32 + 16)
                                           + 8 * 5 + 5)


def test_buffers_and_named_buffers():
    net = Net()
    names = [n for n, _ in net.named_buffers()]
    bns = (["bn1"] + [f"layer1.0.bn{i}" for i in (1, 2)] + [f"layer1.1.bn{i}" for i in (1, 2)]
           + ["layer1.1.downsample.1"])
    assert names == [f"{bn}.{b}" for bn in bns for b in BN_BUFFERS]
    assert len(list(net.buffers())) == len(names)
    bn = net.bn1
    np.testing.assert_array_equal(host(bn.running_mean), np.zeros(4))
    np.testing.assert_array_equal(host(bn.running_var), np.ones(4))
    assert host(bn.num_batches_tracked) == 0 and bn.num_batches_tracked.dtype == np.int64


def test_state_dict_order_own_params_then_buffers_then_children():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.child = nn.Linear(2, 3)          # a child registered first ...
            self.scale = Parameter(np.ones(3))    # ... then an own parameter
            self.register_buffer("count", np.zeros(()))
            self.norm = nn.BatchNorm1d(3)

    m = Mixed()
    assert list(m.state_dict()) == (["scale", "count", "child.weight", "child.bias", "norm.weight", "norm.bias"]
                                    + [f"norm.{b}" for b in BN_BUFFERS])
    net = Net()
    keys = list(net.state_dict())
    assert keys[:6] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                        "bn1.num_batches_tracked"]
    assert keys[6:9] == ["layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias"]
    assert "layer1.1.downsample.0.weight" in keys and "layer1.1.downsample.1.running_var" in keys
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    assert set(keys) == {n for n, _ in net.named_parameters()} | {n for n, _ in net.named_buffers()}


def test_load_state_dict_round_trip_copies_values():
    minires.manual_seed(1)
    a = Net()
    minires.manual_seed(2)
    b = Net()
    x = Tensor(np.random.default_rng(9).standard_normal((2, 3, 6, 6)).astype(np.float32))
    a.train()
    a(x)  # moves a's running statistics
    state = a.state_dict()
    missing, unexpected = b.load_state_dict(state)
    assert missing == [] and unexpected == []
    a.eval(), b.eval()
    np.testing.assert_array_equal(host(a(x)), host(b(x)))
    # loaded values are copies: changing the source does not change the target
    state["fc.bias"][...] = 123.0
    assert not np.any(host(b.fc.bias.data) == 123.0)
    assert host(b.bn1.num_batches_tracked) == 1
    # arrays of another dtype are cast to the model's dtype
    b.load_state_dict({k: np.asarray(v, dtype=np.float64) if v.dtype.kind == "f" else v for k, v in state.items()})
    assert b.fc.weight.dtype == np.float32 and b.bn1.running_var.dtype == np.float32


def test_load_state_dict_strict_errors():
    net = Net()
    state = net.state_dict()
    missing_state = {k: v for k, v in state.items() if k not in ("fc.bias", "bn1.running_var")}
    with pytest.raises(ValueError, match="missing") as info:
        net.load_state_dict(missing_state)
    assert "fc.bias" in str(info.value) and "bn1.running_var" in str(info.value)
    extra = dict(state)
    extra["fc.extra"] = np.zeros(2)
    extra["head.weight"] = np.zeros(2)
    with pytest.raises(ValueError, match="unexpected") as info:
        net.load_state_dict(extra)
    assert "fc.extra" in str(info.value) and "head.weight" in str(info.value)
    # strict=False tolerates both and reports them
    missing, unexpected = net.load_state_dict({**missing_state, "head.weight": np.zeros(2)}, strict=False)
    assert sorted(missing) == ["bn1.running_var", "fc.bias"] and unexpected == ["head.weight"]
    # a mis-shaped array is always an error that names the key and both shapes
    bad = dict(state)
    bad["fc.weight"] = np.zeros((5, 9), np.float32)
    for strict in (True, False):
        with pytest.raises(ValueError, match=re.escape("fc.weight") + ".*" + re.escape("(5, 9)") + ".*"
                           + re.escape("(5, 8)")):
            net.load_state_dict(bad, strict=strict)
    # nothing was loaded by the failing call
    np.testing.assert_array_equal(host(net.fc.weight.data), state["fc.weight"])


def test_train_eval_recursion():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    assert net.train() is net
    assert all(m.training for m in net.modules())
    net.train(False)
    assert not net.layer1[1].downsample[1].training
    assert len(list(net.modules())) == 1 + 2 + 1 + (1 + 4) + (1 + 4 + 1 + 2) + 1 + 1


def test_zero_grad(backend):
    net = prepare(nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1)), backend)
    x = leaf(backend, np.ones((4, 3)), requires_grad=False)
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_module_to_and_astype(backend):
    net = Net().to(backend)
    assert all(p.backend == backend for p in net.parameters())
    assert all(mb.backend_of(b) == backend for b in net.buffers())
    net.astype("float64")
    assert all(p.dtype == np.float64 for p in net.parameters())
    assert net.bn1.running_mean.dtype == np.float64 and net.bn1.num_batches_tracked.dtype == np.int64
    back = net.to("numpy")
    assert back is net
    assert all(isinstance(p.data, np.ndarray) for p in net.parameters())
    assert all(isinstance(b, np.ndarray) for b in net.buffers())
    with pytest.raises(ValueError, match="nonsense"):
        net.to("nonsense")


@pytest.mark.parametrize("kind, shape", [("1d", (8, 3)), ("2d", (4, 3, 2, 5))])
def test_batchnorm_running_stats_train_and_eval(backend, kind, shape):
    layer = (nn.BatchNorm1d if kind == "1d" else nn.BatchNorm2d)(3).to(backend)
    rng = np.random.default_rng(10)
    axes = (0,) if kind == "1d" else (0, 2, 3)
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(1, 4):
        x0 = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
        y = layer(leaf(backend, x0, dtype=np.float32))
        assert y.dtype == np.float32
        rm = 0.9 * rm + 0.1 * x0.astype(np.float64).mean(axis=axes)
        rv = 0.9 * rv + 0.1 * x0.astype(np.float64).var(axis=axes, ddof=1)
        np.testing.assert_allclose(host(layer.running_mean), rm, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(host(layer.running_var), rv, rtol=1e-5)
        assert int(host(layer.num_batches_tracked)) == step
    layer.eval()
    frozen = [host(b).copy() for b in layer.buffers()]
    x0 = (rng.standard_normal(shape) * 5).astype(np.float32)
    y = layer(leaf(backend, x0, dtype=np.float32))
    for before, after in zip(frozen, layer.buffers()):
        np.testing.assert_array_equal(before, host(after))
    shape_c = (1, 3) + (1,) * (len(shape) - 2)
    ref = (x0 - rm.reshape(shape_c)) / np.sqrt(rv.reshape(shape_c) + 1e-5)  # weight 1, bias 0
    np.testing.assert_allclose(host(y), ref, rtol=1e-4, atol=1e-4)


def test_batchnorm_rejects_wrong_rank():
    with pytest.raises(ValueError, match=re.escape("(2, 3, 4)")):
        nn.BatchNorm2d(3)(Tensor(np.ones((2, 3, 4))))
    with pytest.raises(ValueError, match=re.escape("(2, 3, 1, 1)")):
        nn.BatchNorm1d(3)(Tensor(np.ones((2, 3, 1, 1))))


def test_sequential_indexing_and_len():
    a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
    seq = nn.Sequential(a, b, c)
    assert len(seq) == 3
    assert seq[0] is a and seq[1] is b and seq[2] is c and seq[-1] is c
    assert list(seq) == [a, b, c]
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert len(nn.Sequential()) == 0
    x = Tensor(np.ones((4, 2), np.float32))
    np.testing.assert_allclose(host(seq(x)), host(c(b(a(x)))))


def test_attribute_registration_rules():
    m = nn.Linear(2, 3)
    with pytest.raises(TypeError):
        m.weight = np.zeros((3, 2))
    m.bias = None
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    m.extra = Parameter(np.ones(2))
    assert [n for n, _ in m.named_parameters()] == ["weight", "extra"]
    del m.extra
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    with pytest.raises(AttributeError):
        m.does_not_exist

    class Bad(nn.Module):
        def __init__(self):
            self.w = Parameter(np.ones(2))

    with pytest.raises(RuntimeError, match="super"):
        Bad()


def test_manual_seed_reproducible_init():
    minires.manual_seed(42)
    a = Net()
    minires.manual_seed(42)
    b = Net()
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(host(pa), host(pb))
    big = nn.Conv2d(64, 64, 3, bias=False)
    std = float(np.std(host(big.weight)))
    assert std == pytest.approx(np.sqrt(2.0 / (64 * 9)), rel=0.05)
    lin = nn.Linear(100, 50)
    assert float(np.abs(host(lin.weight)).max()) <= 0.1


# -- forward hooks ---------------------------------------------------------------------------------

def test_forward_hooks_see_and_may_replace_inputs_and_outputs():
    fc = nn.Linear(3, 2)
    x = Tensor(np.arange(6.0).reshape(2, 3))
    calls = []
    pre = fc.register_forward_pre_hook(lambda m, args: calls.append(("pre", m, args[0].shape)))
    post = fc.register_forward_hook(lambda m, args, out: calls.append(("post", m, args[0].shape, out.shape)))
    y = fc(x)
    assert calls == [("pre", fc, (2, 3)), ("post", fc, (2, 3), (2, 2))]
    np.testing.assert_allclose(y.data, x.data @ fc.weight.data.T + fc.bias.data)

    # a pre-hook's return value replaces the arguments, a forward hook's the output
    doubled = fc.register_forward_pre_hook(lambda m, args: args[0] * 2.0)
    seen = []
    fc.register_forward_hook(lambda m, args, out: seen.append(args[0].data.copy()))
    negated = fc.register_forward_hook(lambda m, args, out: -out)
    y2 = fc(x)
    np.testing.assert_allclose(seen[0], 2 * x.data)
    np.testing.assert_allclose(y2.data, -(2 * x.data @ fc.weight.data.T + fc.bias.data))

    for handle in (pre, post, doubled, negated):
        handle.remove()
    handle.remove()  # a second remove does nothing
    calls.clear()
    np.testing.assert_allclose(fc(x).data, y.data)
    assert calls == [] and len(seen) == 2  # only the hook never removed still runs


def test_forward_hooks_run_on_children_in_call_order_and_as_context_managers():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    order = []
    handles = [m.register_forward_hook(lambda m, args, out, name=name: order.append(name))
               for name, m in model.named_modules()]
    model(Tensor(np.ones((1, 4))))
    assert order == ["0", "1", "2", ""]  # a parent's forward hook runs after its children's
    for handle in handles:
        handle.remove()
    with model[1].register_forward_pre_hook(lambda m, args: order.append("pre")):
        model(Tensor(np.ones((1, 4))))
    model(Tensor(np.ones((1, 4))))
    assert order == ["0", "1", "2", "", "pre"]


def test_forward_hooks_and_backward():
    """A hook's replacement output stays in the graph: gradients flow through it."""
    fc = nn.Linear(3, 1, bias=False)
    fc.register_forward_hook(lambda m, args, out: out * 3.0)
    x = Tensor(np.array([[1.0, 2.0, -1.0]]))
    fc(x).sum().backward()
    np.testing.assert_allclose(fc.weight.grad, 3.0 * x.data)


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_, "U8", object])
def test_load_state_dict_refuses_values_that_are_not_real_numbers(dtype):
    """Complex, bool, string and object arrays were cast silently (or failed inside NumPy)."""
    net = Net()
    state = net.state_dict()
    bad = dict(state)
    bad["fc.weight"] = np.ones(state["fc.weight"].shape).astype(dtype)
    with pytest.raises(ValueError, match="not real numbers: " + re.escape("fc.weight")):
        net.load_state_dict(bad)
    with pytest.raises(ValueError, match="not real numbers"):
        net.load_state_dict(bad, strict=False)
    np.testing.assert_array_equal(host(net.fc.weight.data), state["fc.weight"])
