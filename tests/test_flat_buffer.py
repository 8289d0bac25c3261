"""The optimizer's flat buffers (issue 17, section 1; issue 19, section 2): every parameter's data
and grad stay views into them through every path that sets them, one step still trains the
model, a parameter without a gradient is neither decayed nor moved, and the fused update equals
the per-parameter update it replaced, bit for bit, over many steps in float64."""
import copy
import math

import numpy as np
import pytest

import minires.functional as F
from minires import distributed, models, nn
from minires.autograd import Tensor
from minires.nn import init
from minires.optim import SGD, Adam, AdamW
from minires.serialization import load, save


@pytest.fixture
def model():
    init.manual_seed(0)
    return models.cifar_resnet(8).astype(np.float64)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 10, 4)


def backward(model, seed=0):
    x, y = batch(seed)
    F.cross_entropy(model(Tensor(x)), y).backward()


def assert_in_buffer(model, optimizer):
    """Every .data and .grad (and the optimizer's state) shares memory with its flat buffer."""
    for name, p in model.named_parameters():
        flat, k = optimizer._where[id(p)]
        assert flat.holds(k), name
        assert np.shares_memory(p.data, flat.data) and p.data.shape == flat.shapes[k], name
        np.testing.assert_array_equal(p.data, flat.view(flat.data, k))
        if p.grad is not None:
            assert np.shares_memory(p.grad, flat.grad), name
        for key, value in optimizer.state.get(id(p), {}).items():
            if key != "step":
                assert np.shares_memory(value, flat.state[key]), (name, key)


def assert_a_step_trains(model, optimizer, seed=1):
    model.eval()  # running statistics: the output depends on the weights alone
    x, y = batch(seed)
    before = model(Tensor(x)).data.copy()
    model.train()
    optimizer.zero_grad()
    backward(model, seed)
    assert_in_buffer(model, optimizer)
    optimizer.step()
    model.eval()
    after = model(Tensor(x)).data
    model.train()
    assert np.abs(after - before).max() > 1e-6
    assert_in_buffer(model, optimizer)


KINDS = [lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True),
         lambda ps: AdamW(ps, lr=0.01, amsgrad=True)]


@pytest.mark.parametrize("make", KINDS, ids=["sgd", "adamw"])
def test_every_path_keeps_data_and_grad_in_the_buffer(model, make):
    optimizer = make(model.parameters())
    assert len(optimizer.flat_buffers) == 1
    flat = optimizer.flat_buffers[0]
    assert flat.data.size == sum(p.size for p in model.parameters())
    assert_in_buffer(model, optimizer)
    assert_a_step_trains(model, optimizer)

    # autograd accumulates into the views, in place
    optimizer.zero_grad()
    backward(model)
    once = [p.grad.copy() for p in model.parameters()]
    backward(model)
    assert all(np.allclose(p.grad, 2 * g, rtol=1e-12, atol=0) for p, g in zip(model.parameters(), once))
    assert_in_buffer(model, optimizer)

    # zero_grad: None keeps the views (flagged empty); set_to_none=False is one fill
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    backward(model)
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    assert_in_buffer(model, optimizer)
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert_a_step_trains(model, optimizer)

    # Module.load_state_dict copies into the views
    init.manual_seed(5)
    other = models.cifar_resnet(8).state_dict()
    model.load_state_dict(other)
    assert all(np.array_equal(v, other[k].astype(np.float64)) for k, v in model.state_dict().items())
    assert_in_buffer(model, optimizer)
    assert_a_step_trains(model, optimizer)

    # initialisers and plain assignments write in place; a wrong shape is refused in one line
    conv = model.conv1.weight
    init.kaiming_normal_(conv)
    conv.data = conv.data * 0.5
    model.fc.bias.grad = np.ones(model.fc.bias.shape)
    assert_in_buffer(model, optimizer)
    with pytest.raises(ValueError, match=r"shape \(16, 3, 3, 3\) .* shape \(2,\)"):
        conv.data = np.zeros(2)
    assert_a_step_trains(model, optimizer)

    # to() the backend it is on, and astype: the buffer (and the optimizer's state) as a whole
    model.to("numpy")
    assert_in_buffer(model, optimizer)
    model.astype(np.float32)
    assert optimizer.flat_buffers[0].data.dtype == np.float32
    assert all(p.dtype == np.float32 and p.grad is None for p in model.parameters())
    assert all(v.dtype == np.float32 for s in optimizer.state.values() for k, v in s.items() if k != "step")
    assert_in_buffer(model, optimizer)
    model.astype(np.float64)
    assert_a_step_trains(model, optimizer)

    # the optimizer's load_state_dict writes into its flat state
    saved = optimizer.state_dict()
    optimizer.load_state_dict(saved)
    assert_in_buffer(model, optimizer)
    assert_a_step_trains(model, optimizer)

    # fuse_conv_bn and deepcopy make models of their own, outside the buffer
    model.eval()
    for copied in (nn.fuse_conv_bn(model), copy.deepcopy(model)):
        assert not any(np.shares_memory(p.data, flat.data) for flat in optimizer.flat_buffers
                       for p in copied.parameters())
        copied.conv1.weight.data = np.zeros(copied.conv1.weight.shape)
    model.train()
    assert_in_buffer(model, optimizer)
    assert_a_step_trains(model, optimizer)

    # broadcast_state writes in place
    distributed.broadcast_state(model, Recorder())
    assert_in_buffer(model, optimizer)


def test_to_and_astype_refuse_part_of_a_buffer(model):
    SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="share an optimizer's flat buffer .* call astype on the whole model"):
        model.fc.astype(np.float32)
    assert model.fc.weight.dtype == np.float64


class Recorder(distributed.Communicator):
    """One rank that remembers the size of every all-reduced buffer."""

    def __init__(self):
        super().__init__()
        self.messages = []

    def _allreduce(self, buf):
        self.messages.append(buf.size)

    def _broadcast(self, buf, root):
        pass


def test_the_all_reduce_is_one_message_over_the_flat_gradients(model):
    params = list(model.parameters())
    groups = [{"params": params[:5]}, {"params": params[5:], "weight_decay": 0.0}]
    optimizer = SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)
    comm = Recorder()
    reduce = distributed.GradientAllreducer(model.parameters(), comm, bucket_mb=0.01)  # buckets unused
    assert len(reduce.buckets) > 1
    optimizer.zero_grad()
    backward(model)
    grads = [p.grad.copy() for p in params]
    params[3].grad = None  # no gradient on this rank: zeros go into the sum
    reduce(0.25)
    assert comm.messages == [sum(p.size for p in params)]  # ONE message, both groups
    for i, (p, g) in enumerate(zip(params, grads)):
        np.testing.assert_array_equal(p.grad, np.zeros_like(g) if i == 3 else g * 0.25)
    assert_in_buffer(model, optimizer)
    reduce(0.0)
    assert all(not p.grad.any() for p in params)


def test_a_resumed_checkpoint_goes_on_exactly_in_the_buffer(model, tmp_path):
    """Model and optimizer state through an .npz into a fresh model and optimizer (as --resume)."""
    straight = copy.deepcopy(model)

    def run(m, optimizer, seeds):
        for seed in seeds:
            optimizer.zero_grad()
            backward(m, seed)
            optimizer.step()

    opt_straight = Adam(straight.parameters(), lr=0.01, weight_decay=1e-3, amsgrad=True)
    run(straight, opt_straight, range(6))
    optimizer = Adam(model.parameters(), lr=0.01, weight_decay=1e-3, amsgrad=True)
    run(model, optimizer, range(3))
    save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "last.npz")
    saved = load(tmp_path / "last.npz")
    init.manual_seed(1)
    resumed = models.cifar_resnet(8).astype(np.float64)
    opt_resumed = Adam(resumed.parameters(), lr=0.01, weight_decay=1e-3, amsgrad=True)
    resumed.load_state_dict(saved["model"])
    opt_resumed.load_state_dict(saved["optimizer"])
    assert_in_buffer(resumed, opt_resumed)
    run(resumed, opt_resumed, range(3, 6))
    for (k, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_a_second_optimizer_takes_the_parameters_over_and_the_first_still_works(model):
    first = SGD(model.parameters(), lr=0.1, momentum=0.9)
    second = SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert_in_buffer(model, second)
    assert not first.flat_buffers[0].holds(0)
    twin = copy.deepcopy(model)
    reference = SGD(twin.parameters(), lr=0.1, momentum=0.9)
    for seed in range(3):
        for m, optimizer in ((model, first), (twin, reference)):
            optimizer.zero_grad()
            backward(m, seed)
            optimizer.step()  # ``first`` copies its parameters in and out (staged)
    for a, b in zip(model.parameters(), twin.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    assert_in_buffer(model, second)


# --- the update: fused over the buffer == the per-parameter update it replaced -------------------

class Param:
    def __init__(self, data):
        self.data, self.grad = np.array(data, dtype=np.float64), None


def old_sgd_step(params, state, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    """minires's SGD.step before the flat buffer, one parameter at a time."""
    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        if weight_decay != 0:
            g = np.multiply(p.data, weight_decay)
            g += p.grad
        if momentum != 0:
            if id(p) not in state:
                buf = g.copy()
                state[id(p)] = buf
            else:
                buf = state[id(p)]
                buf *= momentum
                buf += g if dampening == 0 else (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p.data -= lr * g


def old_adam_step(params, state, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                  decoupled=False):
    """minires's Adam.step before the flat buffer, one parameter at a time."""
    beta1, beta2 = betas
    for p in params:
        if p.grad is None:
            continue
        s = state.setdefault(id(p), {"step": 0, "m": np.zeros_like(p.data), "v": np.zeros_like(p.data),
                                     "v_max": np.zeros_like(p.data)})
        s["step"] += 1
        t = s["step"]
        g = p.grad
        if weight_decay != 0:
            if decoupled:
                p.data *= 1 - lr * weight_decay
            else:
                g = np.multiply(p.data, weight_decay)
                g += p.grad
        m, v = s["m"], s["v"]
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * (g * g)
        if amsgrad:
            np.maximum(s["v_max"], v, out=s["v_max"])
            v = s["v_max"]
        denom = np.sqrt(v) / math.sqrt(1 - beta2 ** t)
        denom += eps
        p.data -= (lr / (1 - beta1 ** t)) * m / denom


SGD_CONFIGS = [dict(), dict(momentum=0.9), dict(momentum=0.9, weight_decay=5e-4, nesterov=True),
               dict(momentum=0.8, dampening=0.3, weight_decay=1e-2)]
ADAM_CONFIGS = [(kind, amsgrad, decay) for kind in (Adam, AdamW) for amsgrad in (False, True) for decay in (0.0, 0.05)]
SHAPES = [(4, 3, 3, 3), (4,), (4,), (5, 4), (3, 7001), (7,)]  # 21,003: the NumPy twins' blocks cross parameters


def gradients(steps=12):
    """Per step, a gradient per parameter, or None: parameter 2 has none in steps 3-6, parameter 5
    none before step 4 (a later start), every parameter none in step 8."""
    rng = np.random.default_rng(0)
    out = []
    for t in range(steps):
        grads = [rng.standard_normal(s) * (3.0 if t % 5 == 0 else 0.3) for s in SHAPES]
        if 3 <= t <= 6:
            grads[2] = None
        if t < 4:
            grads[5] = None
        if t == 8:
            grads = [None] * len(SHAPES)
        out.append(grads)
    return out


def compare(make_new, old_step, as_parameters):
    """The fused optimizer (over Parameters in its buffer, or plain objects staged) against the
    old per-parameter step, two groups, 12 steps: equal bit for bit after every step."""
    rng = np.random.default_rng(1)
    start = [rng.standard_normal(s) for s in SHAPES]
    new = [nn.Parameter(w.copy()) if as_parameters else Param(w) for w in start]
    old = [Param(w) for w in start]
    optimizer = make_new([{"params": new[:4]}, {"params": new[4:], "lr": 0.03}])
    state = {}
    for grads in gradients():
        for p, q, g in zip(new, old, grads):
            p.grad, q.grad = g, g
        optimizer.step()
        old_step(old[:4], state, 0.1)
        old_step(old[4:], state, 0.03)
        for p, q in zip(new, old):
            np.testing.assert_array_equal(p.data, q.data)
    assert not np.array_equal(new[0].data, start[0])
    np.testing.assert_array_equal(new[2].data, old[2].data)


@pytest.mark.parametrize("as_parameters", [True, False], ids=["in-buffer", "staged"])
@pytest.mark.parametrize("hyper", SGD_CONFIGS, ids=lambda h: "-".join(f"{k}{v}" for k, v in h.items()) or "plain")
def test_fused_sgd_equals_the_per_parameter_update(hyper, as_parameters):
    compare(lambda groups: SGD(groups, lr=0.1, **hyper),
            lambda params, state, lr: old_sgd_step(params, state, lr, **hyper), as_parameters)


@pytest.mark.parametrize("as_parameters", [True, False], ids=["in-buffer", "staged"])
@pytest.mark.parametrize("kind, amsgrad, decay", ADAM_CONFIGS,
                         ids=[f"{k.__name__}-amsgrad{int(a)}-wd{d}" for k, a, d in ADAM_CONFIGS])
def test_fused_adam_equals_the_per_parameter_update(kind, amsgrad, decay, as_parameters):
    hyper = dict(betas=(0.8, 0.9), eps=1e-6, weight_decay=decay, amsgrad=amsgrad)
    compare(lambda groups: kind(groups, lr=0.1, **hyper),
            lambda params, state, lr: old_adam_step(params, state, lr, decoupled=kind is AdamW, **hyper),
            as_parameters)


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
                                  lambda ps: AdamW(ps, lr=0.1, weight_decay=0.5, amsgrad=True)], ids=["sgd", "adamw"])
def test_a_parameter_without_a_gradient_is_neither_decayed_nor_moved(make):
    """In the middle of the buffer: the fused update is cut around it, its state does not advance."""
    a, b, c = nn.Parameter(np.array([1.0, -2.0])), nn.Parameter(np.array([3.0, 4.0])), nn.Parameter(np.array([5.0]))
    optimizer = make([a, b, c])
    for _ in range(3):
        a.grad, b.grad, c.grad = np.array([0.5, 0.5]), None, np.array([1.0])
        optimizer.step()
    assert b.data.tolist() == [3.0, 4.0] and b.grad is None
    assert 1 not in optimizer.state_dict()["state"] and sorted(optimizer.state_dict()["state"]) == [0, 2]
    assert a.data.tolist() != [1.0, -2.0] and c.data.tolist() != [5.0]
    assert_views([a, b, c], optimizer)


def assert_views(params, optimizer):
    flat = optimizer.flat_buffers[0]
    assert all(np.shares_memory(p.data, flat.data) for p in params)
